/**
 * The only file that loads the addon (after TigerBeetle's Node client): one
 * typed Binding, crossed per control action or per batch, never per block.
 */
import { PrerequisiteError } from './errors';
import path from 'node:path';

/** Counters the data plane keeps; read in one call, never per I/O. */
export interface NativeCounters {
  writes: number;
  writeBytes: number;
  reads: number;
  readBytes: number;
  flushes: number;
  discards: number;
  discardBytes: number;
  zeroes: number;
  zeroBytes: number;
  ioErrors: number;
  requestsInFlight: number;
  writeLatencyUsTotal: number;
  sequence: number;
  epoch: number;
  frontendUnknownRequests: number;
  /** Times an idle frontend thread gave its buffer's and stack's pages back. */
  frontendTrims: number;
  /** Times the frontend's buffers turned to huge pages after large requests (back to small ones when idle). */
  frontendHugeSwitches: number;
  replicatedWrites: number;
  /** Writes done with no peer: their regions are set in the bitmap. */
  dirtyWrites: number;
  framesSent: number;
  bytesSent: number;
  /** Payload bytes the peer has written (its ACK_WRITE). */
  bytesAcked: number;
  /** Bytes queued or sent and not yet written by the peer. */
  lagBytes: number;
  /** Age of the oldest frame the peer has not yet written. */
  lagUs: number;
  framesInFlight: number;
  framesReceived: number;
  bytesReceived: number;
  bytesApplied: number;
  checksumErrors: number;
  protocolErrors: number;
  /** Source: resync data the peer has written. */
  resyncBytesDone: number;
  /** Checksum resync, sparse sync and verify (see native/link_io.h LinkCounters). */
  resyncDataBytesSent: number;
  resyncZeroBytesSent: number;
  resyncEqualBytes: number;
  zeroBytesApplied: number;
  digestBytesRead: number;
  verifyStartBytes: number;
  verifyStopBytes: number;
  verifyPositionBytes: number;
  verifyMismatchBytes: number;
  verifyMismatchTotalBytes: number;
  verifyBytesDoneTotal: number;
  /** Target: resync data received. */
  resyncBytesReceived: number;
  /** The rate the resync controller planned last (bytes per second; 0 when paused). */
  resyncPlannedRateBytes: number;
  /** Applications did I/O: the resync is held at its min rate. */
  resyncThrottled: boolean;
  resyncPaused: boolean;
  linkFailures: number;
  eventsDropped: number;
  outOfSyncBytes: number;
  suspendedWaits: number;
  /** Write latency histogram: entry i counts writes that took less than 2^i µs (the last one: the rest). */
  writeLatencyBuckets: number[];
  suspended: boolean;
  activityLogTransactions: number;
  activityLogHotExtents: number;
  linkAttached: boolean;
  linkFailed: boolean;
  resyncRunning: boolean;
  verifyRunning: boolean;
  /** on-io-error = detach: the backing disk failed and is no longer used. */
  diskless: boolean;
  localIoErrors: number;
  /** Requests the peer served alone while this node is Diskless. */
  peerReads: number;
  peerWrites: number;
}

/** The resync controller's settings (native ResyncControl); each one left out keeps its value. */
export interface ResyncSettings {
  planAheadMs?: number;
  fillTargetBytes?: number;
  maxRateBytes?: number;
  minRateBytes?: number;
  paused?: boolean;
}

/**
 * What the data plane reports: `link-lost` (detail: the reason), `resync-done` (detail: bytes sent),
 * `disk-failed` (detail: the error; under on-io-error = detach the data plane is Diskless from then on),
 * `verify-mismatch` (detail: "OFFSET+LENGTH ...") and `verify-done` (detail: the position reached).
 */
export type NativeEventType = 'link-lost' | 'resync-done' | 'generation-started' | 'disk-failed' | 'verify-mismatch' | 'verify-done';

export interface LinkAttachOptions {
  /** source: this node sends writes and resync data; target: it applies them. */
  mode: 'source' | 'target';
  /** The acceptor of the data connection sends HELLO first. */
  sendHelloFirst: boolean;
  protocol?: 'A' | 'B' | 'C';
  maxLagBytes?: number;
  maxLagMs?: number;
  /**
   * Target only: RS_DATA may be applied from the start, because the target's
   * resync state (Inconsistent, the new bitmap UUID) is on its disk already.
   * Default false: resync data before `allowResync` is a protocol error.
   */
  resyncAllowed?: boolean;
  /** TLS 1.3 on the data link (native/link_stream.h): a derived key, or PEM texts; null or left out: the clear. */
  tls?: { psk: Buffer } | { certPem: string; keyPem: string; caPem: string } | null;
}

/** An open backing device (O_DIRECT; O_EXCL for block devices). */
export interface DiskHandle {
  readonly __brand: 'DiskHandle';
}

/** The write pipeline over one disk, and the frontend that feeds it. */
export interface PipelineHandle {
  readonly __brand: 'PipelineHandle';
}

export interface DiskInfo {
  path: string;
  sizeBytes: number;
  isBlockDevice: boolean;
  logicalBlockBytes: number;
}

export interface FrontendOptions {
  /** An existing regular file; the FUSE volume is mounted onto it. */
  mountPath: string;
  /** Shown as the source in /proc/mounts, so a stale mount can be recognised. */
  source: string;
  threads: number;
  /** mlock (as touched: MLOCK_ONFAULT) of buffers and stacks, PR_SET_IO_FLUSHER: a block server must not wait on reclaim. */
  lockMemory: boolean;
  /** A /dev/fuse descriptor the holder keeps open (inherited); unset: open a new one. */
  fuseFd?: number;
  /** That descriptor's connection is mounted already: no mount, FUSE_NOTIFY_RESEND, serve. */
  adopt?: boolean;
}

/**
 * A native failure: `code` is the errno name (ENOENT, EBUSY, ...). The
 * asynchronous calls reject with these too; besides the disk's own errors:
 * ENOTCONN (the data link failed, was detached, or none was attached),
 * ETIMEDOUT (the peer did not answer in time), ECANCELED (pipelineDestroy
 * came first), EAGAIN (too many metadata jobs outstanding: a stalled disk).
 */
export interface NativeError extends Error {
  code: string;
  errno: number;
}

export interface Binding {
  crc32c(data: Uint8Array, seed?: number): number;
  readonly crc32cHardware: boolean;
  /** Tests only: one data-link TLS record sealed from `pieces` with traffic secret `secret` at record number `seq`. */
  recordSeal(suite: RecordSuiteName, secret: Uint8Array, seq: number, pieces: Uint8Array[]): Uint8Array;
  /** Tests only: a record opened; `rc` 0, or a negative errno (-EBADMSG: the tag did not match). */
  recordOpen(suite: RecordSuiteName, secret: Uint8Array, seq: number, record: Uint8Array): { rc: number; type: number; plain: Uint8Array };
  readonly limits: {
    blockBytes: number;
    requestBytesMax: number;
    frontendThreadsMin: number;
    frontendThreadsDefault: number;
    frontendThreadsMax: number;
    sectorBytes: number;
    bitmapGranularityBytesMin: number;
    bitmapGranularityBytesMax: number;
    activityExtentBytes: number;
    /** Protocol A's defaults when LinkAttachOptions leave them out. */
    maxLagBytesDefault: number;
    maxLagMsDefault: number;
    /** Data-plane events queued to JavaScript before new ones are dropped (eventsDropped). */
    eventQueueMax: number;
    /** Metadata jobs (superblockWrite ... drain) outstanding per pipeline; one more rejects EAGAIN. */
    metadataJobsMax: number;
    /** The resync controller's bounds and defaults (src/limits.ts resync*, in config units there). */
    resyncPlanAheadMsMin: number;
    resyncPlanAheadMsMax: number;
    resyncPlanAheadMsDefault: number;
    resyncFillTargetBytesMin: number;
    resyncFillTargetBytesMax: number;
    resyncFillTargetBytesDefault: number;
    resyncRateBytesMin: number;
    resyncRateBytesMax: number;
    resyncMaxRateBytesDefault: number;
    resyncMinRateBytesDefault: number;
  };

  diskOpen(path: string, readOnly: boolean): DiskHandle;
  diskInfo(disk: DiskHandle): DiskInfo;
  /** Offsets and lengths are multiples of 4096. Blocking: metadata only, never data. */
  diskRead(disk: DiskHandle, offsetBytes: number, lengthBytes: number): Buffer;
  diskWrite(disk: DiskHandle, offsetBytes: number, data: Uint8Array): void;
  diskFlush(disk: DiskHandle): void;
  diskClose(disk: DiskHandle): void;

  pipelineCreate(
    disk: DiskHandle,
    options: {
      dataSizeBytes: number;
      bitmapGranularityBytes: number;
      bitmapOffsetBytes: number;
      activityLogOffsetBytes: number;
      activityLogSizeBytes: number;
      activityExtentBytes: number;
      /** The newest activity-log sequence on disk: this run's transactions continue above it (default 0). */
      activityLogSequenceStart?: number;
      onEvent: (type: NativeEventType, detail: string) => void;
    },
  ): PipelineHandle;
  pipelineCounters(pipeline: PipelineHandle): NativeCounters;
  /**
   * Local fdatasync, then, when a data link in source mode is attached, a
   * barrier the peer must acknowledge (under B and C), off the JS thread.
   * Covers every superblockWrite/bitmapPersist/activityLogReset submitted
   * before it. Rejects ENOTCONN (after the local flush succeeded) when that
   * link has failed, or fails or is detached meanwhile: promptly, never after
   * TCP gives up. With no source link attached at the call: the local flush only.
   */
  pipelineFlush(pipeline: PipelineHandle): Promise<void>;
  /**
   * pipelineFlush, then waits until nothing is in flight to the peer
   * (framesInFlight == 0 and lagBytes == 0), on a condition variable in the
   * data plane. Rejects ENOTCONN when the link fails or is detached (or no
   * source link is attached), ETIMEDOUT after `timeoutMs` from the call
   * (at most one day: more throws a RangeError).
   */
  drain(pipeline: PipelineHandle, timeoutMs: number): Promise<void>;
  /**
   * Stops the frontend if it runs and detaches the link; the disk stays open.
   * Pending metadata jobs settle: a flush or drain waiting for the peer with
   * ENOTCONN, one that never started with ECANCELED; a disk write already
   * under way finishes first (this call waits for it).
   */
  pipelineDestroy(pipeline: PipelineHandle): void;

  /** Hands a connected TCP socket to the data plane (the descriptor is dup()ed). */
  linkAttach(pipeline: PipelineHandle, fd: number, options: LinkAttachOptions): void;
  /** Stops the data link; writes in flight are marked dirty. */
  linkDetach(pipeline: PipelineHandle, reason: string): void;
  /**
   * The target's resync state (Inconsistent, the new bitmap UUID) is durable:
   * its data link may apply RS_DATA from now on. Until then (see
   * LinkAttachOptions.resyncAllowed) resync data fails the link as a protocol
   * error and is never applied. Throws ENOTCONN without a target link.
   */
  allowResync(pipeline: PipelineHandle): void;
  setProtocol(pipeline: PipelineHandle, protocol: 'A' | 'B' | 'C'): void;
  /**
   * Starts sending every region set in the bitmap (source side); false without a live link, or
   * while a resync or verify runs. `csums`: digests first, data only where they differ;
   * `repair`: after a verify, the marked blocks as ordinary writes (no resync state on the target).
   */
  resyncStart(pipeline: PipelineHandle, options?: { csums?: boolean; repair?: boolean }): boolean;
  /**
   * Online verify of [startBytes, stopBytes) (4 KiB-aligned; RangeError otherwise): events
   * `verify-mismatch` (detail: "OFFSET+LENGTH ...", those blocks marked out of sync) and
   * `verify-done` (detail: the position reached). False without a live source link, or while a
   * resync or verify runs.
   */
  verifyStart(pipeline: PipelineHandle, startBytes: number, stopBytes: number): boolean;
  /** Stops a running verify after the ranges in flight; `verify-done` says where. */
  verifyStop(pipeline: PipelineHandle): void;
  /**
   * The resync controller's settings and pause, with or without a link (a
   * running resync takes them at its next step). Throws RangeError on a value
   * outside native/limits.h; then nothing changed.
   */
  resyncSet(pipeline: PipelineHandle, settings: ResyncSettings): void;
  /**
   * Bytes [offsetBytes, offsetBytes + lengthBytes) of the dirty bitmap as
   * little-endian u64 words (the on-disk layout), by default all of it. Take
   * it in chunks: the whole bitmap is 32 MiB per TiB of data. Throws
   * RangeError unless both are whole words within the bitmap. With `into`,
   * the words go there (from its start) and `into` is returned.
   */
  bitmapGet(pipeline: PipelineHandle, offsetBytes?: number, lengthBytes?: number): Buffer;
  bitmapGet<T extends Uint8Array>(pipeline: PipelineHandle, offsetBytes: number, lengthBytes: number, into: T): T;
  /**
   * Replaces the bitmap with the on-disk one at `offsetBytes` of `disk`, read
   * in chunks into one native buffer (no whole copy anywhere). Throws on a
   * read error (then the bitmap holds what was read so far).
   */
  bitmapLoad(pipeline: PipelineHandle, disk: DiskHandle, offsetBytes: number): void;
  /** The dirty bitmap's size in bytes (whole u64 words). */
  bitmapSizeBytes(pipeline: PipelineHandle): number;
  /**
   * replace/merge: `words` written or OR-ed in place at `offsetBytes` of the
   * bitmap (whole words); without an offset `words` is the whole bitmap (or
   * longer: the on-disk area). all: every bit set. clear: none.
   */
  bitmapSet(pipeline: PipelineHandle, mode: 'replace' | 'merge', words: Uint8Array, offsetBytes?: number): void;
  bitmapSet(pipeline: PipelineHandle, mode: 'all' | 'clear'): void;
  /** range: the bits covering data bytes [offsetBytes, offsetBytes + lengthBytes) set. */
  bitmapSet(pipeline: PipelineHandle, mode: 'range', offsetBytes: number, lengthBytes: number): void;
  /**
   * A new generation starts on the first write without a peer: the data plane
   * writes this superblock image at `offsetBytes` (durably) just before it.
   */
  generationArm(pipeline: PipelineHandle, image: Uint8Array, offsetBytes: number): void;
  /** Disarms; says whether the image was still armed, already written, or there was none. */
  generationTake(pipeline: PipelineHandle, peek?: boolean): 'none' | 'armed' | 'written';
  /** on-no-peer = suspend-io: while suspended, new requests wait in the data plane. */
  setSuspended(pipeline: PipelineHandle, suspended: boolean): void;
  setOnIoError(pipeline: PipelineHandle, policy: 'detach' | 'pass-on'): void;
  /** The source link's peer is UpToDate and Established: it may serve a Diskless node. */
  setPeerServes(pipeline: PipelineHandle, serves: boolean): void;
  /** `nraid detach`: stop using the disk now (Diskless); reported as `disk-failed` with `why`. */
  detachDisk(pipeline: PipelineHandle, why: string): void;
  /**
   * Writes an empty activity-log transaction durably (a new Primary starts
   * with no hot extents), off the JS thread. Rejects EBUSY while writes pin
   * hot extents.
   */
  activityLogReset(pipeline: PipelineHandle): Promise<void>;
  /**
   * Writes back the on-disk bitmap blocks that changed since last written (all
   * of them the first time), serialized with the activity log's evictions;
   * with `flush` durably. Off the JS thread; resolves with the bytes written.
   */
  bitmapPersist(pipeline: PipelineHandle, flush: boolean): Promise<number>;
  /**
   * pwrite of one superblock slot image (4096 bytes, at a block-aligned
   * offset past the data area) + fdatasync, on the pipeline's metadata
   * thread, ordered with the data plane's own armed-generation write (never
   * both at once). Jobs of this kind, bitmapPersist and activityLogReset run
   * one at a time in the order submitted. With a generation armed, `successor`
   * is the armed image prepared to follow this one: it replaces the armed image
   * atomically with the write. Resolves 0 when written, 1 (nothing written)
   * when the data plane had started the armed generation first.
   */
  superblockWrite(pipeline: PipelineHandle, image: Uint8Array, offsetBytes: number, successor?: Uint8Array, successorOffsetBytes?: number): Promise<number>;

  /** umount2(2) with UMOUNT_NOFOLLOW, and MNT_DETACH when `lazy`. */
  unmount(path: string, lazy: boolean): void;

  /** Returns the /dev/fuse descriptor it serves (the holder takes a duplicate of it). */
  frontendStart(pipeline: PipelineHandle, options: FrontendOptions): number;
  /**
   * Maps (without touching) the buffers and stacks of `threads` frontend
   * workers on a native thread of its own, for the next frontendStart of this
   * process (kept across frontends). Their pages become resident, and locked
   * with lockMemory, only as the threads touch them, and a thread idle for
   * 10 s gives them back (issue 12: 62 MiB at 48 threads was resident and
   * locked whether or not a thread ever served). Returns at once.
   */
  frontendPrepare(threads: number): void;
  frontendStop(pipeline: PipelineHandle): void;
  /** Stops serving and leaves the mount to the holder (`nraid restart`). */
  frontendRelease(pipeline: PipelineHandle): void;
  /** pidfd_getfd: a duplicate of descriptor `fd` of process `pid` (the holder takes the daemon's /dev/fuse). */
  takeFd(pid: number, fd: number): number;
  /** sd_notify(3): `state` to systemd's NOTIFY_SOCKET, with descriptor `fd` attached unless -1 (FDSTORE=1). */
  sdNotify(socketPath: string, state: string, fd: number): void;
}

function load(): Binding {
  // dist/src/native.js in a build, src/native.ts under ts-jest.
  const candidates = [
    path.join(__dirname, '..', '..', 'build', 'Release', 'nraid.node'),
    path.join(__dirname, '..', 'build', 'Release', 'nraid.node'),
  ];
  for (const candidate of candidates) {
    try {
      return require(candidate) as Binding;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw error;
    }
  }
  throw new PrerequisiteError(`the nraid addon is not built (looked for ${candidates.join(', ')}); run npm ci`);
}

export const binding: Binding = load();

/** The data link's record ciphers (TLS 1.3 suites), as the test hooks name them. */
export type RecordSuiteName = 'aes-128-gcm' | 'aes-256-gcm' | 'chacha20-poly1305';

export function crc32c(data: Uint8Array, seed = 0): number {
  return binding.crc32c(data, seed);
}

export function isNativeError(error: unknown): error is NativeError {
  return error instanceof Error && typeof (error as NativeError).code === 'string';
}
