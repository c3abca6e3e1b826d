/** DESIGN.md §6: DRBD's vocabulary, which operators already read. */
export type Role = 'Primary' | 'Secondary';
export type PeerRole = Role | 'Unknown';
export type ConnectionState =
  | 'StandAlone'
  | 'Connecting'
  | 'Connected'
  | 'Disconnecting'
  | 'NetworkFailure'
  | 'ProtocolError';
export type ReplicationState =
  | 'Off'
  | 'Established'
  | 'SyncSource'
  | 'SyncTarget'
  | 'PausedSyncS'
  | 'PausedSyncT'
  | 'VerifyS'
  | 'VerifyT';
export type DiskState = 'Diskless' | 'Attaching' | 'Inconsistent' | 'Outdated' | 'Consistent' | 'UpToDate';
export type PeerDiskState = DiskState | 'DUnknown';

/** What `status --json` prints and `events` streams. */
export interface ResourceStatus {
  resource: string;
  node: string;
  peer: string;
  role: Role;
  disk: DiskState;
  connection: ConnectionState;
  replication: ReplicationState;
  peerRole: PeerRole;
  peerDisk: PeerDiskState;
  outOfSyncBytes: number;
  protocol: 'A' | 'B' | 'C';
  device: string;
  exposed: boolean;
  loopDevice: string | null;
  backingDisk: string;
  dataSizeBytes: number;
  uuids: { current: string; bitmap: string; history: [string, string] };
  writes: number;
  writeBytes: number;
  reads: number;
  readBytes: number;
  flushes: number;
  ioErrors: number;
  requestsInFlight: number;
  /** Payload bytes sent to the peer, and those it has written. */
  bytesSent: number;
  bytesAcked: number;
  bytesReceived: number;
  bytesApplied: number;
  /** Frames sent or queued that the peer has not yet written. */
  writesInFlight: number;
  /** How far the peer trails (protocol A: bounded by max-lag-bytes and max-lag-ms). */
  lagBytes: number;
  lagSeconds: number;
  checksumErrors: number;
  protocolErrors: number;
  linkFailures: number;
  resync: ResyncProgress | null;
  /** Resync data this node sent (and the peer wrote) / received, over every run of the daemon here. */
  resyncSentBytesTotal: number;
  resyncReceivedBytesTotal: number;
  lastLinkError: string | null;
  syncDecision: string | null;
  /** Detected at the last handshake and not yet resolved: see connect --discard-my-data. */
  splitBrain: boolean;
  /** on-no-peer = suspend-io or a failed fence-peer hook holds new writes. */
  ioSuspended: boolean;
  discardMyData: boolean;
  /** A switchover's answer was lost: this node stays Secondary until the peer says who is Primary. */
  switchoverUnknown: boolean;
  /** on-io-error = detach: why the disk was detached (disk is Diskless), else null. */
  diskFailure: string | null;
  /** Diskless and served by the UpToDate peer: no error reaches the application. */
  servedByPeer: boolean;
  localIoErrors: number;
  peerReads: number;
  peerWrites: number;
  pid: number;
  /** Metadata damage found when the daemon started (empty when none): see docs/CONTRACTS.md "Metadata damage". */
  metadataDamage: MetadataDamageReport[];
  /** The running or last online verify on this node (null: none since the daemon started). */
  verify?: VerifyProgress | null;
  /** What resyncs of this session sent: data bytes, bytes covered by zero frames, bytes found equal by digest. */
  resyncSent?: { dataBytes: number; zeroBytes: number; equalBytes: number };
  /** The last resync of this daemon that ended (finished or cut short), on its own clock; null: none yet. */
  lastResync?: LastResync | null;
  /** Restarts of this resource's daemon by its holder (daemon-restart-bound-ms); null without a holder. */
  daemonRestarts?: DaemonRestarts | null;
}

/** What the holder saw of the daemon's restarts (src/holder.ts). */
export interface DaemonRestarts {
  /** Daemons started after the first one died or handed over. */
  count: number;
  /** Why the last one went: "killed by SIGKILL", "exited with code 1", "restart" (nraid restart); null before any. */
  lastCause: string | null;
  /** From the death (or handover) of the last daemon until this one served again. */
  lastPauseMs: number | null;
}

/** One damaged metadata area (the shape of src/resource/metadata-damage.ts DamageReport). */
export interface MetadataDamageReport {
  area: 'superblock' | 'activity-log' | 'bitmap';
  slot: number | null;
  /** zeroed: a superblock slot that nraid wrote is all zeros now. */
  condition: 'torn' | 'damaged' | 'zeroed' | 'unreadable';
  problem: string;
  action: string;
}

export interface ResyncProgress {
  percent: number;
  bytesLeft: number;
  bytesDone: number;
  rateBytesPerSec: number;
  etaSeconds: number | null;
  /** This node sends (source) or receives (target). */
  direction: 'source' | 'target';
  /** pause-sync on either node holds it. */
  paused: boolean;
  /** Applications do I/O on the source: the resync runs at its min rate. */
  throttled: boolean;
}

/** A resync that ended, timed from its start (source: when it starts to send; target: once its Inconsistent state is on disk) to its end. */
export interface LastResync {
  direction: 'source' | 'target';
  /** Reached the end (the bitmap clean, the target UpToDate), or cut short (the link lost, the session dropped). */
  finished: boolean;
  /** Progress in that time, counted as ResyncProgress.bytesDone counts it. */
  bytes: number;
  seconds: number;
  rateBytesPerSec: number;
  /** When it ended (ISO 8601). */
  endedAt: string;
}

export interface VerifyProgress {
  running: boolean;
  startBytes: number;
  stopBytes: number;
  /** Everything before it is compared. */
  positionBytes: number;
  percent: number;
  bytesLeft: number;
  rateBytesPerSec: number;
  etaSeconds: number | null;
  /** Found to differ (and marked out of sync) by this verify. */
  mismatchBytes: number;
  /** "OFFSET+LENGTH" of each differing run (the first 1000). */
  mismatchRanges: string[];
}

/** One line per resource, in the style of DRBD's status. */
export function statusLine(status: ResourceStatus): string {
  const parts = [
    status.resource,
    `role:${status.role}`,
    `disk:${status.disk}`,
    `peer:${status.peerRole}`,
    `peer-disk:${status.peerDisk}`,
    `connection:${status.connection}`,
    `replication:${status.replication}`,
  ];
  if (status.resync) {
    const eta = status.resync.etaSeconds === null ? '?' : `${Math.ceil(status.resync.etaSeconds)}s`;
    parts.push(`sync:${status.resync.percent.toFixed(1)}% eta:${eta}`);
    if (status.resync.paused) parts.push('sync:paused');
  }
  if (status.verify?.running) {
    const eta = status.verify.etaSeconds === null ? '?' : `${Math.ceil(status.verify.etaSeconds)}s`;
    parts.push(`verify:${status.verify.percent.toFixed(1)}% eta:${eta}`);
  }
  if (status.outOfSyncBytes > 0) parts.push(`out-of-sync:${formatBytes(status.outOfSyncBytes)}`);
  if (status.protocol === 'A' && status.lagBytes > 0) parts.push(`lag:${formatBytes(status.lagBytes)}`);
  if (status.splitBrain) parts.push('split-brain:yes');
  if (status.ioSuspended) parts.push('io:suspended');
  if (status.switchoverUnknown) parts.push('switchover:unknown');
  if (status.diskFailure !== null) parts.push(status.servedByPeer ? 'io:via-peer' : 'io:failing');
  if (status.metadataDamage?.length) parts.push(`metadata-damage:${status.metadataDamage.map((d) => d.area).join(',')}`);
  if (status.exposed) parts.push(`device:${status.device}`);
  return parts.join(' ');
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(1)}${units[unit]}`;
}
