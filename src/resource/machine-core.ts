/**
 * The state machine's vocabulary: its state, inputs and effects, and the
 * small helpers every transition uses. No I/O here or in the transitions
 * (machine.ts, roles.ts, sync.ts).
 */
import { NraidError } from '../errors';
import { flagBits } from '../metadata';
import { ConnectionState, DiskState, ReplicationState, Role } from '../state';
import { AfterSplitBrainPolicy, SplitBrainFacts, SyncDecision } from '../sync-decision';
import { MetadataChange, MetadataView, applyChange } from './metadata-change';

export type Protocol = 'A' | 'B' | 'C';

/** The peer's one-way notices, as the peer session delivers them. */
export type ControlNotice =
  | { kind: 'resyncNone' }
  | { kind: 'resyncDone' }
  | { kind: 'adjust' }
  | { kind: 'promoteCommit'; requestId: bigint }
  | { kind: 'promoteAbort'; requestId: bigint }
  | { kind: 'turnaround' };

/** The peer as its last NodeState described it. */
export interface PeerView {
  role: Role;
  disk: DiskState;
  uuids: { current: bigint; bitmap: bigint; history: readonly [bigint, bigint] };
  flags: number;
}

export interface SessionView {
  id: number;
  dialer: boolean;
  /** deciding: facts or the bitmap are being exchanged; ready: the data link may attach. */
  setup: 'deciding' | 'ready' | 'refused';
  direction: 'source' | 'target' | null;
  /** The target joined the source's generation: resync data may come in. */
  resyncAllowed: boolean;
  /** A data socket that arrived before the setup was ready (acceptor). */
  parkedSocket: number | null;
  attached: boolean;
  /** The source said resync-start, resync-none or resync-done in this session. */
  syncNoticed: boolean;
  /** Split brain: the peer's facts arrived, and this node answered the peer's request for its own. */
  peerFacts: SplitBrainFacts | null | undefined;
  factsAnswered: boolean;
}

export interface MachineConfig {
  resource: string;
  /** The exposed device's path, for messages. */
  device: string;
  local: string;
  peer: string;
  onNoPeer: 'continue' | 'suspend-io';
  /** detach: a failing backing disk makes this node Diskless (served by an UpToDate peer); pass-on: errors go up. */
  onIoError: 'detach' | 'pass-on';
  fencePeer: boolean;
  splitBrainHook: boolean;
  /** Role hooks configured: before-demote stops the services and unmounts, after-promote mounts and starts them. */
  roleHooks?: { beforeDemote: boolean; afterPromote: boolean };
  afterSb0pri: AfterSplitBrainPolicy;
  /** How long a peer that turned the session around as Primary still counts as Primary (its ping timeout). */
  peerGraceMs: number;
}

export interface MachineState {
  config: MachineConfig;
  protocol: Protocol;
  md: MetadataView;
  role: Role;
  connection: ConnectionState;
  replication: ReplicationState;
  session: SessionView | null;
  peer: PeerView | null;
  decision: SyncDecision | null;
  exposed: boolean;
  splitBrain: boolean;
  ioSuspended: boolean;
  discardMyData: boolean;
  /** The fresh UUID armed in the data plane for the first write without the peer. */
  armedGeneration: bigint | null;
  /** This node's promotion in progress: who asked, and the two-phase request id while connected. */
  promotion: Promotion | null;
  /** The command (or peer request) a running demotion answers. */
  demotion: Asker | null;
  /** After a promotion the peer asked for: what goes out once the fault point is passed. */
  afterPeerPromote: Effect[] | null;
  /** This node voted yes for the peer's promotion `requestId` and must not promote until it ends. */
  hold: bigint | null;
  /** demoting, draining, requested: this Primary hands over; delegated: this Secondary asked the Primary to. */
  switchover: { asker: Asker; phase: 'demoting' | 'draining' | 'requested' | 'delegated' } | null;
  switchoverUnknown: boolean;
  /** The peer, Primary, said it ends the session to turn the data link around: it is alive and Primary. */
  peerLeftAsPrimary: boolean;
  lastLinkError: string | null;
  changedBytes: number;
  primarySinceMsView: number;
  nextRequestId: bigint;
  stopping: boolean;
  /** on-io-error = detach: the backing disk failed and is not used (no data, no metadata writes) until attach. */
  diskless: boolean;
  /** What failed, for status and the log. */
  diskFailure: string | null;
  /** The peer is a Diskless Primary and this node started a generation of its own for it (peer-disk-lost). */
  peerDiskLost: boolean;
}

/** Who waits for an answer: an admin command, or a request of the peer. */
export type Asker = { command: number } | { token: number };

export interface Promotion {
  asker: Asker | null;
  /** The two-phase request id while connected; null for a promotion without a vote. */
  requestId: bigint | null;
  force: boolean;
  minted: boolean;
  /** A switchover that failed before asking the peer: the role comes back, the command still fails. */
  failure: NraidError | null;
  /** The after-promote hook failed: the promotion is being undone (program promote-undo). */
  hookFailure?: NraidError;
}

export type Command =
  | { name: 'primary'; force: boolean }
  | { name: 'secondary'; holder: string | null }
  /** syncPercent: the resync's progress, for the refusal while one runs. */
  | { name: 'switchover'; holder: string | null; syncPercent: number | null }
  | { name: 'connect'; discardMyData: boolean; holder: string | null }
  | { name: 'disconnect' }
  | { name: 'invalidate' }
  | { name: 'resume-io' }
  | { name: 'adjust'; protocol: Protocol; onIoError?: 'detach' | 'pass-on' }
  /** Validates that a replaced disk may be attached now (the daemon re-opens it). */
  | { name: 'attach' }
  /** The operator takes the disk away (as on-io-error = detach would). */
  | { name: 'detach' }
  | { name: 'down'; holder: string | null };

export type PeerRequest =
  | { kind: 'promotePrepare'; requestId: bigint; current: bigint }
  | { kind: 'switchover'; holder: string | null }
  | { kind: 'switchoverPromote'; current: bigint }
  | { kind: 'resyncStart'; bytes: bigint; current: bigint; history: readonly [bigint, bigint] }
  | { kind: 'splitBrainFacts' };

export type Event =
  | { type: 'command'; id: number; command: Command }
  | { type: 'connection'; state: ConnectionState }
  | { type: 'session-up'; sessionId: number; dialer: boolean; peer: PeerView }
  | { type: 'session-down'; reason: string }
  | { type: 'peer-grace-over' }
  | { type: 'peer-state'; peer: PeerView }
  | { type: 'link-refused'; reason: string }
  | { type: 'peer-facts'; sessionId: number; facts: SplitBrainFacts | null }
  | { type: 'bitmap-merged'; sessionId: number; error: string | null }
  | { type: 'data-socket'; sessionId: number; socketId: number }
  | { type: 'data-attached'; sessionId: number; error: string | null }
  | { type: 'peer-request'; token: number; request: PeerRequest }
  | { type: 'peer-notice'; notice: ControlNotice }
  | { type: 'promote-vote'; requestId: bigint; ok: boolean; reason: string }
  /** refused: the peer answered that it did not promote; unknown: no answer came (timeout, link cut). */
  | { type: 'switchover-reply'; outcome: 'done' | 'refused' | 'unknown'; reason: string; error: NraidError | null }
  | { type: 'resync-start-reply'; sessionId: number; ok: boolean; reason: string }
  | { type: 'drained'; error: string | null }
  /** `disk`: the metadata store's view after the program (the store is the truth; a failed program may have skipped writes). */
  | { type: 'program-done'; tag: ProgramTag; error: NraidError | null; disk: { md: MetadataView; armed: bigint | null } }
  | { type: 'link-lost'; detail: string }
  | { type: 'resync-done'; bytes: number }
  | { type: 'generation-written'; md: MetadataView }
  /** After a fault point (tests): the link was cut there if the point was armed. */
  | { type: 'fault-passed'; name: string }
  | { type: 'facts-timeout'; sessionId: number }
  | { type: 'fence-done'; exitCode: number }
  /** The data plane's first error of the backing disk (detail: which I/O, the errno). */
  | { type: 'disk-failed'; detail: string }
  | { type: 'stop' };

/** What the shell supplies with every event: time and a fresh UUID, so step() stays pure. */
export interface Input {
  event: Event;
  nowMs: number;
  fresh: bigint;
  /** The data plane's out-of-sync bytes now (for the resync decision and split-brain facts). */
  outOfSyncBytes: number;
}

export type ProgramTag = 'promote' | 'promote-undo' | 'demote' | 'switchover-demote';

/**
 * Why a role hook runs: `switch` is part of a role change (its failure fails the
 * program); `restore` brings the services back after a demotion that did not
 * happen; `cleanup` stops what a failed after-promote hook started. The last two
 * are best effort: a failure is logged.
 */
export type RoleHookPurpose = 'switch' | 'restore' | 'cleanup';

export type Effect =
  /** To a command: the status snapshot, or the error. To a peer request: `body`, or the error. */
  | { kind: 'reply'; to: Asker; body?: unknown; error: NraidError | null }
  | { kind: 'persist'; change: MetadataChange }
  | { kind: 'persist-bitmap' }
  | { kind: 'activity-log-reset' }
  | { kind: 'expose' }
  | { kind: 'unexpose' }
  | { kind: 'drain' }
  | { kind: 'arm-generation'; fresh: bigint }
  | { kind: 'disarm-generation' }
  | { kind: 'send-state' }
  | { kind: 'notice'; notice: ControlNotice }
  | { kind: 'request-facts'; sessionId: number }
  | { kind: 'merge-peer-bitmap'; sessionId: number; all: boolean }
  | { kind: 'request-promote'; requestId: bigint; current: bigint }
  | { kind: 'request-switchover' }
  | { kind: 'request-switchover-promote'; current: bigint }
  | { kind: 'request-resync-start'; sessionId: number; bytes: number; current: bigint; history: readonly [bigint, bigint] }
  | { kind: 'open-data'; sessionId: number }
  | { kind: 'attach-data'; sessionId: number; socketId: number; direction: 'source' | 'target'; sendHelloFirst: boolean; resyncAllowed: boolean }
  | { kind: 'discard-socket'; socketId: number }
  | { kind: 'allow-resync'; bytes?: number }
  | { kind: 'start-resync' }
  | { kind: 'clear-bitmap' }
  /** Every bit set: the peer's disk (gone) misses everything. */
  | { kind: 'mark-all' }
  | { kind: 'drop-session'; reason: string }
  | { kind: 'link-connect' }
  | { kind: 'link-disconnect'; reason: string }
  | { kind: 'suspend-io'; reason: string }
  | { kind: 'resume-io'; reason: string }
  | { kind: 'run-hook'; hook: 'fence-peer' | 'split-brain'; reason: string }
  | { kind: 'run-role-hook'; hook: 'before-demote' | 'after-promote'; purpose: RoleHookPurpose }
  | { kind: 'set-protocol'; protocol: Protocol }
  | { kind: 'set-on-io-error'; policy: 'detach' | 'pass-on' }
  | { kind: 'detach-disk'; why: string }
  | { kind: 'fault-point'; name: string }
  | { kind: 'arm-facts-timeout'; sessionId: number }
  | { kind: 'arm-peer-grace'; ms: number }
  | { kind: 'log'; level: 'info' | 'warn' | 'error'; message: string; fields?: Record<string, unknown> }
  | { kind: 'emit'; event: Record<string, unknown> };

export interface Step {
  state: MachineState;
  effects: Effect[];
  /** When set, the effects are one program: the shell dispatches program-done with this tag after them. */
  tag?: ProgramTag;
}

/** NodeState flag bit (beyond the superblock's): this node asked to be the split-brain victim. */
export const FLAG_DISCARD_MY_DATA = 1 << 16;

export function diskState(state: MachineState): DiskState {
  if (state.diskless) return 'Diskless';
  const { flags } = state.md;
  if (!flags.consistent) return 'Inconsistent';
  if (flags.outdated) return 'Outdated';
  if (flags.wasUpToDate) return 'UpToDate';
  return 'Consistent';
}

export function flagWord(state: MachineState): number {
  let word = 0;
  for (const [name, bit] of Object.entries(flagBits)) if (state.md.flags[name as keyof typeof flagBits]) word |= bit;
  if (state.discardMyData) word |= FLAG_DISCARD_MY_DATA;
  return word;
}

export function initialState(config: MachineConfig, md: MetadataView, protocol: Protocol): MachineState {
  return {
    config,
    protocol,
    md,
    role: 'Secondary',
    connection: 'StandAlone',
    replication: 'Off',
    session: null,
    peer: null,
    decision: null,
    exposed: false,
    splitBrain: false,
    ioSuspended: false,
    discardMyData: false,
    armedGeneration: null,
    promotion: null,
    demotion: null,
    afterPeerPromote: null,
    hold: null,
    switchover: null,
    switchoverUnknown: false,
    peerLeftAsPrimary: false,
    lastLinkError: null,
    changedBytes: 0,
    primarySinceMsView: md.primarySinceMs,
    nextRequestId: 1n,
    stopping: false,
    diskless: false,
    diskFailure: null,
    peerDiskLost: false,
  };
}

export const connected = (s: MachineState): boolean => s.connection === 'Connected' && s.session !== null && s.peer !== null;

export function answer(fx: Effect[], to: Asker, error: NraidError | null, body?: unknown): void {
  fx.push({ kind: 'reply', to, body, error });
}

export function persist(s: MachineState, fx: Effect[], change: MetadataChange): void {
  s.md = applyChange(s.md, change);
  fx.push({ kind: 'persist', change });
}

/**
 * A Primary starts a new generation with the first write its peer does not
 * confirm (DESIGN.md §5): armed here whenever it is Primary, with or without
 * the peer, and written by the data plane before that write completes, also
 * when the link fails under writes already sent. A Primary that never writes
 * while apart keeps its generation.
 */
export function armGeneration(s: MachineState, fx: Effect[], input: Input): void {
  // Diskless, nothing is written here: the generation this node knows stays the one it last shared.
  if (s.diskless) return;
  if (s.md.uuids.bitmap !== 0n || s.armedGeneration !== null) return;
  s.armedGeneration = input.fresh;
  fx.push({ kind: 'arm-generation', fresh: input.fresh });
  fx.push({ kind: 'log', level: 'info', message: 'generation armed: the first write the peer does not confirm starts it', fields: { next: input.fresh.toString(16) } });
}

export function disarmGeneration(s: MachineState, fx: Effect[]): void {
  if (s.armedGeneration === null) return;
  s.armedGeneration = null;
  fx.push({ kind: 'disarm-generation' });
}

export function suspendIo(s: MachineState, fx: Effect[], reason: string): void {
  if (s.ioSuspended) return;
  s.ioSuspended = true;
  fx.push({ kind: 'suspend-io', reason }, { kind: 'emit', event: { ioSuspended: true } });
}

export function resumeIo(s: MachineState, fx: Effect[], reason: string): void {
  if (!s.ioSuspended) return;
  s.ioSuspended = false;
  fx.push({ kind: 'resume-io', reason }, { kind: 'emit', event: { ioSuspended: false } });
}

export function resolveUnknownSwitchover(s: MachineState, fx: Effect[]): void {
  if (!connected(s)) return;
  s.switchoverUnknown = false;
  const done = s.peer!.role === 'Primary';
  fx.push({
    kind: 'log',
    level: done ? 'info' : 'warn',
    message: done ? `switchover outcome resolved: ${s.config.peer} is Primary` : `switchover outcome resolved: ${s.config.peer} did not promote; no node is Primary, run nraid primary where the services should run`,
  });
  fx.push({ kind: 'emit', event: { switchoverUnknown: false } });
}

export function splitBrainFacts(s: MachineState, input: Input): SplitBrainFacts {
  return { node: s.config.local, primary: s.role === 'Primary', primarySinceMs: s.md.primarySinceMs, changedBytes: input.outOfSyncBytes, discardMyData: s.discardMyData };
}

/**
 * A Diskless node is served by its peer only while this holds: the data link runs
 * from it (Primary, or demoting in a switchover) to a peer that is UpToDate, and
 * replication is Established
 * (the runner tells the data plane after every step).
 */
export function peerServes(s: MachineState): boolean {
  return (
    connected(s) && s.session!.direction === 'source' && s.session!.attached &&
    s.replication === 'Established' && s.peer!.disk === 'UpToDate'
  );
}
