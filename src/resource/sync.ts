/**
 * The session with the peer: the sync decision at the handshake, split-brain
 * facts, the data link, the resync's start and end, notices, and the end of
 * a session. Pure transitions (see machine.ts).
 */
import { flagBits } from '../metadata';
import { DiskState, Role } from '../state';
import { SideView, decideSync, decidedInSync, resolveSplitBrain } from '../sync-decision';
import {
  ControlNotice,
  Effect,
  Input,
  MachineState,
  PeerView,
  Step,
  armGeneration,
  disarmGeneration,
  diskState,
  persist,
  resolveUnknownSwitchover,
  resumeIo,
  splitBrainFacts,
  suspendIo,
} from './machine-core';
import { disklessSession, peerDiskless } from './disk-failure';
export function sideView(role: Role, disk: DiskState, uuids: PeerView['uuids'], crashedPrimary: boolean): SideView {
  return { uuids, disk, primary: role === 'Primary', crashedPrimary };
}

export function sessionUp(s: MachineState, fx: Effect[], event: { sessionId: number; dialer: boolean; peer: PeerView }, input: Input): Step {
  s.peer = event.peer;
  s.peerLeftAsPrimary = false;
  s.session = { id: event.sessionId, dialer: event.dialer, setup: 'deciding', direction: null, resyncAllowed: false, parkedSocket: null, attached: false, syncNoticed: false, peerFacts: undefined, factsAnswered: false };
  peerDiskless(s, fx, input);
  const diskless = disklessSession(s, input);
  if (diskless !== null) {
    // No resync either way: the UpToDate side keeps its data and its generation.
    s.decision = null;
    if (s.switchoverUnknown) resolveUnknownSwitchover(s, fx);
    if ('refuse' in diskless) {
      if (diskless.standAlone) return refuseSession(s, fx, diskless.refuse);
      s.session = { ...s.session, setup: 'refused' };
      s.lastLinkError = diskless.refuse;
      fx.push({ kind: 'log', level: 'warn', message: 'session dropped', fields: { reason: diskless.refuse } });
      fx.push({ kind: 'drop-session', reason: diskless.refuse });
      return { state: s, effects: fx };
    }
    fx.push({ kind: 'log', level: 'info', message: 'peer connected', fields: { peer: s.config.peer, decision: 'diskless', direction: diskless.direction } });
    s.session = { ...s.session, direction: diskless.direction };
    return setupReady(s, fx);
  }
  s.decision = decideSync(
    sideView(s.role, diskState(s), s.md.uuids, s.md.flags.crashedPrimary),
    sideView(event.peer.role, event.peer.disk, event.peer.uuids, (event.peer.flags & flagBits.crashedPrimary) !== 0),
  );
  if (s.switchoverUnknown) resolveUnknownSwitchover(s, fx);
  if (s.decision.kind === 'split-brain') {
    fx.push({ kind: 'request-facts', sessionId: event.sessionId }, { kind: 'arm-facts-timeout', sessionId: event.sessionId });
    return { state: s, effects: fx };
  }
  return decided(s, fx, input);
}

/** Both sides have each other's facts (or the peer left): decide, and both refuse or both resolve alike. */
export function splitBrainDecided(s: MachineState, fx: Effect[], input: Input): Step {
  const session = s.session!;
  if (session.setup !== 'deciding' || session.peerFacts === undefined || !session.factsAnswered) return { state: s, effects: fx };
  if (session.peerFacts !== null) s.decision = resolveSplitBrain(s.decision!, splitBrainFacts(s, input), session.peerFacts, s.config.afterSb0pri);
  return decided(s, fx, input);
}

export function decided(s: MachineState, fx: Effect[], input: Input): Step {
  const decision = s.decision!;
  const session = s.session!;
  const peer = s.peer!;
  fx.push({ kind: 'log', level: 'info', message: 'peer connected', fields: { peer: s.config.peer, decision: decision.kind, reason: decision.reason } });
  if (decision.kind === 'split-brain') reportSplitBrain(s, fx, decision.reason);
  if (decision.kind !== 'split-brain' && s.role === 'Primary' && peer.role === 'Primary') {
    return refuseSession(s, fx, 'both nodes are Primary; demote one with nraid secondary');
  }
  if (decision.kind === 'split-brain' || decision.kind === 'unrelated') {
    return refuseSession(
      s,
      fx,
      decision.kind === 'split-brain'
        ? `split brain: ${decision.reason}; choose the node whose changes to drop and run nraid connect --discard-my-data there`
        : `unrelated data: ${decision.reason}; run create-md on the node that should receive a full sync`,
    );
  }
  const source = decision.source !== null ? decision.source === 'local' : s.role === 'Primary' || (peer.role !== 'Primary' && session.dialer);
  if (s.role === 'Primary' && !source) return refuseSession(s, fx, `this node is Primary but its data is older than the peer's (${decision.reason})`);
  s.session = { ...session, direction: source ? 'source' : 'target' };
  if (source) {
    // A target that was invalidated (or never completed a full sync) gets every block; its own
    // dirty regions come back too. The merged bitmap is made durable before anything is sent.
    const all = decision.kind === 'full' || (peer.flags & flagBits.fullSyncNeeded) !== 0;
    fx.push({ kind: 'merge-peer-bitmap', sessionId: session.id, all });
    return { state: s, effects: fx };
  }
  // Target: when the generations differ, what arrives makes this disk differ from the one it
  // records; record Inconsistent first (the source's generation is joined at resyncStart).
  if (decision.kind !== 'none' && (s.md.flags.consistent || !s.md.flags.resyncInProgress)) persist(s, fx, { kind: 'target-begins' });
  void input;
  return setupReady(s, fx);
}

export function refuseSession(s: MachineState, fx: Effect[], reason: string): Step {
  s.session = { ...s.session!, setup: 'refused' };
  s.lastLinkError = reason;
  fx.push({ kind: 'log', level: 'warn', message: 'session refused', fields: { reason } });
  fx.push({ kind: 'link-disconnect', reason });
  fx.push({ kind: 'emit', event: { lastLinkError: reason, connection: 'StandAlone' } });
  return { state: s, effects: fx };
}

export function setupReady(s: MachineState, fx: Effect[]): Step {
  const session = s.session!;
  s.session = { ...session, setup: 'ready' };
  if (session.dialer) fx.push({ kind: 'open-data', sessionId: session.id });
  else if (session.parkedSocket !== null) return dataSocket(s, fx, session.id, session.parkedSocket);
  return { state: s, effects: fx };
}

export function dataSocket(s: MachineState, fx: Effect[], sessionId: number, socketId: number): Step {
  const session = s.session;
  if (session === null || session.id !== sessionId || session.setup === 'refused' || session.attached) {
    fx.push({ kind: 'discard-socket', socketId });
    return { state: s, effects: fx };
  }
  if (session.setup !== 'ready') {
    if (session.parkedSocket !== null) fx.push({ kind: 'discard-socket', socketId: session.parkedSocket });
    s.session = { ...session, parkedSocket: socketId };
    return { state: s, effects: fx };
  }
  s.session = { ...session, parkedSocket: null, attached: true };
  fx.push({ kind: 'attach-data', sessionId, socketId, direction: session.direction!, sendHelloFirst: !session.dialer, resyncAllowed: session.resyncAllowed });
  return { state: s, effects: fx };
}

export function dataAttached(s: MachineState, fx: Effect[], event: { sessionId: number; error: string | null }, input: Input): Step {
  const session = s.session;
  if (session === null || session.id !== event.sessionId) return { state: s, effects: fx };
  if (event.error !== null) {
    fx.push({ kind: 'drop-session', reason: event.error });
    return { state: s, effects: fx };
  }
  fx.push({ kind: 'log', level: 'info', message: 'data link attached', fields: { direction: session.direction, protocol: s.protocol } });
  s.lastLinkError = null;
  if (session.direction === 'source' && s.ioSuspended) resumeIo(s, fx, 'the peer is back');
  // A Primary keeps a generation armed while it replicates: a write the peer never confirms
  // completes only after it (DESIGN.md §5), however fast the link fails.
  if (session.direction === 'source' && s.role === 'Primary') armGeneration(s, fx, input);
  else disarmGeneration(s, fx);
  s.splitBrain = false;
  if (session.direction === 'source') {
    if (input.outOfSyncBytes === 0) {
      s.replication = 'Established';
      fx.push({ kind: 'notice', notice: { kind: 'resyncNone' } });
      finishAsSource(s, fx, input);
    } else {
      // The target joins this generation and opens its gate; data follows its yes.
      fx.push({ kind: 'request-resync-start', sessionId: session.id, bytes: input.outOfSyncBytes, current: s.md.uuids.current, history: s.md.uuids.history });
    }
  } else if (!session.syncNoticed) {
    // A target is a SyncTarget until the source says what it sends or that there is nothing.
    s.replication = 'SyncTarget';
  }
  return { state: s, effects: fx };
}

/** The source's generation after a resync: the bitmap UUID goes to history. */
export function finishAsSource(s: MachineState, fx: Effect[], input: Input): void {
  if ((s.md.uuids.bitmap !== 0n || s.md.flags.crashedPrimary) && s.connection === 'Connected') persist(s, fx, { kind: 'source-done' });
  fx.push({ kind: 'persist-bitmap' }, { kind: 'send-state' });
  // In step again: the next write the peer misses starts a new generation.
  if (s.role === 'Primary') armGeneration(s, fx, input);
}

export function peerNotice(s: MachineState, fx: Effect[], notice: ControlNotice, input: Input): Step {
  switch (notice.kind) {
    case 'resyncNone':
    case 'resyncDone': {
      if (s.session !== null) s.session = { ...s.session, syncNoticed: true };
      s.replication = 'Established';
      const peer = s.peer;
      // Not after "both disks are new": nothing was ever sent; the next session full-syncs.
      const inSync = s.decision !== null && decidedInSync(s.decision);
      if (s.session?.direction === 'target' && peer !== null && peer.disk === 'UpToDate' && inSync) {
        fx.push({ kind: 'clear-bitmap' });
        persist(s, fx, { kind: 'target-done', current: peer.uuids.current, history: peer.uuids.history });
        fx.push({ kind: 'persist-bitmap' });
        s.discardMyData = false;
        fx.push({ kind: 'send-state' });
        if (notice.kind === 'resyncDone') fx.push({ kind: 'log', level: 'info', message: 'resync finished: UpToDate' });
      }
      return { state: s, effects: fx };
    }
    case 'adjust':
      fx.push({ kind: 'log', level: 'info', message: 'the peer changed its config: run nraid adjust here too if the protocol changed' });
      return { state: s, effects: fx };
    case 'promoteCommit':
    case 'promoteAbort':
      if (s.hold === notice.requestId) s.hold = null;
      return { state: s, effects: fx };
    case 'turnaround':
      s.peerLeftAsPrimary = s.role === 'Secondary';
      return { state: s, effects: fx };
  }
  void input;
  return { state: s, effects: fx };
}

function reportSplitBrain(s: MachineState, fx: Effect[], reason: string): void {
  if (s.splitBrain) return;
  s.splitBrain = true;
  fx.push({ kind: 'log', level: 'error', message: 'split brain detected: both nodes wrote since their last common generation; nothing is discarded', fields: { reason } });
  fx.push({ kind: 'emit', event: { splitBrain: true, lastLinkError: reason } });
  fx.push({ kind: 'emit', event: { type: 'split-brain', resource: s.config.resource, node: s.config.local, peer: s.config.peer, reason } });
  if (s.config.splitBrainHook) fx.push({ kind: 'run-hook', hook: 'split-brain', reason });
}

export function sessionDown(s: MachineState, fx: Effect[], reason: string, input: Input): Step {
  fx.push({ kind: 'log', level: 'warn', message: 'peer disconnected', fields: { reason } });
  if (s.hold !== null && s.role === 'Secondary') {
    // This node promised the peer not to promote itself, and neither promoteCommit nor
    // promoteAbort came: the peer may be Primary now. A new Primary turns the session around by
    // closing it, and that close can arrive before its turnaround notice: without this, a
    // `primary` here a moment later (no peer, so no vote) made two Primaries.
    s.peerLeftAsPrimary = true;
  }
  if (s.peerLeftAsPrimary) {
    // The peer became Primary and turns the data link around by reconnecting: it is alive and
    // Primary, and a promotion here without the vote could make two Primaries. Bounded.
    fx.push({ kind: 'arm-peer-grace', ms: s.config.peerGraceMs });
  }
  if (s.session?.setup === 'deciding' && s.decision?.kind === 'split-brain') {
    // The peer found the split brain too and refused first: it stands here as well.
    reportSplitBrain(s, fx, s.decision.reason);
    s.lastLinkError = `split brain: ${s.decision.reason}; choose the node whose changes to drop and run nraid connect --discard-my-data there`;
    fx.push({ kind: 'link-disconnect', reason: s.lastLinkError });
  }
  const wasConnected = s.session !== null;
  s.session = null;
  s.replication = 'Off';
  s.peer = null;
  s.hold = null;
  if (wasConnected && s.role === 'Primary') {
    armGeneration(s, fx, input);
    if (s.config.onNoPeer === 'suspend-io' || s.config.fencePeer) {
      suspendIo(s, fx, s.config.fencePeer ? 'fencing the peer' : 'on-no-peer = suspend-io');
      if (s.config.fencePeer) fx.push({ kind: 'run-hook', hook: 'fence-peer', reason });
    }
  }
  fx.push({ kind: 'persist-bitmap' });
  return { state: s, effects: fx };
}
