/**
 * `status --json` as a pure snapshot: the machine's state, the data plane's
 * counters and the superblock, read and never changed.
 */
import { NativeCounters } from '../native';
import { Superblock } from '../metadata';
import { LastResync, ResourceStatus } from '../state';
import { MachineState, diskState, peerServes } from './machine';
import { DamageReport } from './metadata-damage';
import { ResyncTotals } from './resync-control';

export interface ResyncClock {
  /** source: counts resyncBytesDone (written by the peer); target: resyncTargetBytes (data and zero frames received). */
  direction: 'source' | 'target';
  totalBytes: number;
  startedAtMs: number;
  doneBaseBytes: number;
}

export interface StatusFacts {
  state: MachineState;
  counters: NativeCounters | null;
  superblock: Superblock | null;
  resync: ResyncClock | null;
  device: string;
  backingDisk: string;
  exposed: boolean;
  loopDevice: string | null;
  nowMs: number;
  /** Resync bytes over every run of the daemon (src/resource/resync-control.ts); absent: this run's. */
  resyncTotals?: ResyncTotals;
  /** pause-sync on either node; absent: not paused. */
  resyncPaused?: boolean;
  /** Found at start by the metadata store (empty when none); absent: none. */
  metadataDamage?: readonly DamageReport[];
}

function hex(uuid: bigint): string {
  return uuid.toString(16).padStart(16, '0');
}

/** What a sync target has of its resync: data received and ranges zeroed by zero frames. */
export function resyncTargetBytes(c: NativeCounters): number {
  return c.resyncBytesReceived + c.zeroBytesApplied;
}

/** What a resync did from its start to `nowMs`, counted as `status` counts its progress. */
function resyncBytesDone(clock: ResyncClock, c: NativeCounters): number {
  return Math.max(0, (clock.direction === 'source' ? c.resyncBytesDone : resyncTargetBytes(c)) - clock.doneBaseBytes);
}

/** The record of a resync that ended at `nowMs` (`finished`: it reached the end). */
export function endedResync(clock: ResyncClock, c: NativeCounters | null, finished: boolean, nowMs: number): LastResync {
  const bytes = c === null ? 0 : resyncBytesDone(clock, c);
  const seconds = Math.max(0.001, (nowMs - clock.startedAtMs) / 1000);
  return { direction: clock.direction, finished, bytes, seconds, rateBytesPerSec: Math.round(bytes / seconds), endedAt: new Date(nowMs).toISOString() };
}

function resyncProgress(f: StatusFacts): ResourceStatus['resync'] {
  const c = f.counters;
  if (f.resync === null || c === null || f.state.session?.direction !== f.resync.direction) return null;
  const source = f.resync.direction === 'source';
  const done = resyncBytesDone(f.resync, c);
  // The source's bitmap is what is left; the target knows the total the source announced.
  const left = source ? c.outOfSyncBytes : Math.max(0, f.resync.totalBytes - done);
  const elapsedS = Math.max(0.001, (f.nowMs - f.resync.startedAtMs) / 1000);
  const rate = done / elapsedS;
  const total = Math.max(f.resync.totalBytes, done + left);
  return {
    percent: total === 0 ? 100 : Math.min(100, (100 * (total - left)) / total),
    bytesLeft: left,
    bytesDone: done,
    rateBytesPerSec: Math.round(rate),
    etaSeconds: rate > 0 && f.resyncPaused !== true ? left / rate : null,
    direction: f.resync.direction,
    paused: f.resyncPaused === true,
    throttled: c.resyncThrottled,
  };
}

export function snapshot(f: StatusFacts): ResourceStatus {
  const { state: s, counters: c, superblock: sb } = f;
  // Connected means what an operator reads it as: the handshake is done and the session was
  // accepted. While both sides still compare generations and roles (a split brain, two
  // Primaries), the link is up but nothing is agreed: that is still Connecting. Found by the
  // torture runner (seed 20261202): a Primary showed Connected to a Primary peer for the
  // moment before it refused the session.
  const connected = s.connection === 'Connected' && s.peer !== null && s.session?.setup === 'ready';
  return {
    resource: s.config.resource,
    node: s.config.local,
    peer: s.config.peer,
    role: s.role,
    disk: sb === null ? 'Diskless' : diskState(s),
    connection: s.connection === 'Connected' && !connected ? 'Connecting' : s.connection,
    replication: s.replication,
    peerRole: connected ? s.peer!.role : 'Unknown',
    peerDisk: connected ? s.peer!.disk : 'DUnknown',
    outOfSyncBytes: c?.outOfSyncBytes ?? 0,
    protocol: s.protocol,
    device: f.device,
    exposed: f.exposed,
    loopDevice: f.loopDevice,
    backingDisk: f.backingDisk,
    dataSizeBytes: sb?.dataSizeBytes ?? 0,
    uuids: {
      current: hex(sb?.uuids.current ?? 0n),
      bitmap: hex(sb?.uuids.bitmap ?? 0n),
      history: [hex(sb?.uuids.history[0] ?? 0n), hex(sb?.uuids.history[1] ?? 0n)],
    },
    writes: c?.writes ?? 0,
    writeBytes: c?.writeBytes ?? 0,
    reads: c?.reads ?? 0,
    readBytes: c?.readBytes ?? 0,
    flushes: c?.flushes ?? 0,
    ioErrors: c?.ioErrors ?? 0,
    requestsInFlight: c?.requestsInFlight ?? 0,
    bytesSent: c?.bytesSent ?? 0,
    bytesAcked: c?.bytesAcked ?? 0,
    bytesReceived: c?.bytesReceived ?? 0,
    bytesApplied: c?.bytesApplied ?? 0,
    writesInFlight: c?.framesInFlight ?? 0,
    lagBytes: c?.lagBytes ?? 0,
    lagSeconds: (c?.lagUs ?? 0) / 1e6,
    checksumErrors: c?.checksumErrors ?? 0,
    protocolErrors: c?.protocolErrors ?? 0,
    linkFailures: c?.linkFailures ?? 0,
    resync: resyncProgress(f),
    resyncSentBytesTotal: f.resyncTotals?.sentBytes ?? c?.resyncBytesDone ?? 0,
    resyncReceivedBytesTotal: f.resyncTotals?.receivedBytes ?? c?.resyncBytesReceived ?? 0,
    lastLinkError: s.lastLinkError,
    syncDecision: s.decision?.kind ?? null,
    splitBrain: s.splitBrain,
    ioSuspended: s.ioSuspended,
    discardMyData: s.discardMyData,
    switchoverUnknown: s.switchoverUnknown,
    diskFailure: s.diskFailure,
    servedByPeer: s.diskless && peerServes(s),
    localIoErrors: c?.localIoErrors ?? 0,
    peerReads: c?.peerReads ?? 0,
    peerWrites: c?.peerWrites ?? 0,
    pid: process.pid,
    metadataDamage: (f.metadataDamage ?? []).map((report) => ({ ...report })),
  };
}

/** The fields whose changes are events (counters are not). */
export const EVENT_KEYS = ['role', 'disk', 'connection', 'replication', 'peerRole', 'peerDisk', 'exposed', 'loopDevice', 'protocol', 'syncDecision', 'splitBrain', 'ioSuspended', 'switchoverUnknown', 'servedByPeer'] as const;
