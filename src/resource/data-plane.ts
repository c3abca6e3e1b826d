/**
 * The data plane of one resource, typed: the only caller of the pipeline
 * functions of `Binding`. Everything that touches the disk or waits on the
 * peer returns a promise that the native side settles through the
 * pipeline's thread-safe function, so the event loop never blocks on it.
 */
import { SystemError, isErrnoException, systemError as errnoError, toNraidError } from '../errors';
import { DiskHandle, FrontendOptions, NativeCounters, NativeEventType, PipelineHandle, ResyncSettings, binding } from '../native';
import { newestTransaction } from '../activity-log';
import { BackingDisk } from '../disk';
import type { NativeTls } from '../link/tls';
import { Superblock } from '../metadata';

export interface AttachOptions {
  mode: 'source' | 'target';
  sendHelloFirst: boolean;
  protocol: 'A' | 'B' | 'C';
  maxLagBytes: number;
  maxLagMs: number;
  /** A target lets resync data in only once its resync state is durable (allowResync). */
  resyncAllowed: boolean;
  /** TLS on the data link; null: the clear. */
  tls?: NativeTls | null;
}

/** A native error as a SystemError that keeps the errno (errors.ts's one conversion), else as an NraidError. */
function systemError(what: string, error: unknown): Error {
  if (isErrnoException(error)) return errnoError(what, error, 'see the daemon log; a disk error here needs the disk checked');
  return toNraidError(error);
}

export class DataPlane {
  private handle: PipelineHandle | null;

  constructor(disk: BackingDisk, sb: Superblock, onEvent: (type: NativeEventType, detail: string) => void) {
    this.handle = binding.pipelineCreate(disk.handle, {
      dataSizeBytes: sb.dataSizeBytes,
      bitmapGranularityBytes: sb.bitmapGranularityBytes,
      bitmapOffsetBytes: sb.bitmapOffsetBytes,
      activityLogOffsetBytes: sb.activityLogOffsetBytes,
      activityLogSizeBytes: sb.activityLogSizeBytes,
      activityExtentBytes: sb.activityExtentBytes,
      // Regression (torture seed 42, step 72): each run restarted at sequence 1, so after a second crash the
      // recovery (newestTransaction) took an older run's transaction and left this run's hot extents unmarked.
      activityLogSequenceStart: Number(newestTransaction(disk.read(sb.activityLogOffsetBytes, sb.activityLogSizeBytes))?.sequence ?? 0n),
      onEvent,
    });
  }

  private get h(): PipelineHandle {
    if (this.handle === null) throw new SystemError('the data plane is closed', 'EBADF', 9);
    return this.handle;
  }

  get open(): boolean {
    return this.handle !== null;
  }

  counters(): NativeCounters | null {
    return this.handle === null ? null : binding.pipelineCounters(this.handle);
  }

  outOfSyncBytes(): number {
    return this.counters()?.outOfSyncBytes ?? 0;
  }

  // --- bitmap and activity log ---
  /**
   * Bytes [offsetBytes, offsetBytes + lengthBytes) of the bitmap's words: a
   * chunk, never the whole 32 MiB per TiB; with `into`, read into its start
   * and returned as a view of it.
   */
  bitmapWords(offsetBytes: number, lengthBytes: number, into?: Buffer): Buffer {
    if (into === undefined) return binding.bitmapGet(this.h, offsetBytes, lengthBytes);
    return binding.bitmapGet(this.h, offsetBytes, lengthBytes, into).subarray(0, lengthBytes);
  }
  /** The bitmap from the on-disk area at `offsetBytes` of `disk`, read a chunk at a time in native code. */
  loadBitmap(disk: DiskHandle, offsetBytes: number): void {
    binding.bitmapLoad(this.h, disk, offsetBytes);
  }
  bitmapBytes(): number {
    return binding.bitmapSizeBytes(this.h);
  }
  /** `words` (whole u64 words) in place at `offsetBytes` of the bitmap. */
  replaceBitmap(words: Uint8Array, offsetBytes: number): void {
    binding.bitmapSet(this.h, 'replace', words, offsetBytes);
  }
  /** `words` (whole u64 words) OR-ed in at `offsetBytes` of the bitmap. */
  mergeBitmap(words: Uint8Array, offsetBytes: number): void {
    binding.bitmapSet(this.h, 'merge', words, offsetBytes);
  }
  /** The bits of data bytes [offsetBytes, offsetBytes + lengthBytes) set. */
  markRange(offsetBytes: number, lengthBytes: number): void {
    binding.bitmapSet(this.h, 'range', offsetBytes, lengthBytes);
  }
  markAll(): void {
    binding.bitmapSet(this.h, 'all');
  }
  clearBitmap(): void {
    binding.bitmapSet(this.h, 'clear');
  }
  /** The changed bitmap blocks to disk; durably with `flush`. */
  async persistBitmap(flush: boolean): Promise<number> {
    try {
      return await binding.bitmapPersist(this.h, flush);
    } catch (error) {
      throw systemError('writing the bitmap failed', error);
    }
  }
  async resetActivityLog(): Promise<void> {
    try {
      await binding.activityLogReset(this.h);
    } catch (error) {
      throw systemError('writing the activity log failed', error);
    }
  }

  // --- metadata ---
  /** False, writing nothing, when the armed generation was started first (adopt it, then prepare again). */
  async writeSuperblock(image: Uint8Array, offsetBytes: number, successor?: { image: Uint8Array; offsetBytes: number }): Promise<boolean> {
    try {
      return (await binding.superblockWrite(this.h, image, offsetBytes, successor?.image, successor?.offsetBytes)) === 0;
    } catch (error) {
      throw systemError('writing the superblock failed', error);
    }
  }
  armGeneration(image: Uint8Array, offsetBytes: number): void {
    binding.generationArm(this.h, image, offsetBytes);
  }
  takeGeneration(peek = false): 'none' | 'armed' | 'written' {
    return this.handle === null ? 'none' : binding.generationTake(this.handle, peek);
  }

  // --- flushes ---
  async flush(): Promise<void> {
    try {
      await binding.pipelineFlush(this.h);
    } catch (error) {
      throw systemError('flushing failed', error);
    }
  }
  /** Flush, then wait until the peer has written everything sent. */
  async drain(timeoutMs: number): Promise<void> {
    try {
      await binding.drain(this.h, timeoutMs);
    } catch (error) {
      throw systemError('draining to the peer failed', error);
    }
  }

  // --- the data link ---
  attach(fd: number, options: AttachOptions): void {
    binding.linkAttach(this.h, fd, options);
  }
  detach(reason: string): void {
    if (this.handle !== null) binding.linkDetach(this.handle, reason);
  }
  allowResync(): void {
    binding.allowResync(this.h);
  }
  startResync(options: { csums?: boolean; repair?: boolean } = {}): boolean {
    return binding.resyncStart(this.h, options);
  }
  startVerify(startBytes: number, stopBytes: number): boolean {
    return binding.verifyStart(this.h, startBytes, stopBytes);
  }
  stopVerify(): void {
    binding.verifyStop(this.h);
  }
  setResync(settings: ResyncSettings): void {
    binding.resyncSet(this.h, settings);
  }
  setProtocol(protocol: 'A' | 'B' | 'C'): void {
    binding.setProtocol(this.h, protocol);
  }
  setSuspended(suspended: boolean): void {
    binding.setSuspended(this.h, suspended);
  }
  setOnIoError(policy: 'detach' | 'pass-on'): void {
    binding.setOnIoError(this.h, policy);
  }
  detachDisk(why: string): void {
    binding.detachDisk(this.h, why);
  }
  setPeerServes(serves: boolean): void {
    if (this.handle !== null) binding.setPeerServes(this.handle, serves);
  }

  // --- the frontend (device exposure) ---
  startFrontend(options: FrontendOptions): number {
    return binding.frontendStart(this.h, options);
  }
  /** The frontend's memory, mapped in the background for the first promotion (see Binding.frontendPrepare). */
  prepareFrontend(threads: number): void {
    binding.frontendPrepare(threads);
  }
  stopFrontend(): void {
    binding.frontendStop(this.h);
  }
  /** Stops serving, leaves the mount and the connection to the holder. */
  releaseFrontend(): void {
    binding.frontendRelease(this.h);
  }

  destroy(): void {
    if (this.handle === null) return;
    binding.pipelineDestroy(this.handle);
    this.handle = null;
  }
}
