/**
 * The only file that loads the addon (after TigerBeetle's Node client): one
 * typed Binding, crossed per control action or per batch, never per block.
 */
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
  /** mlock of buffers and stacks, PR_SET_IO_FLUSHER: a block server must not wait on reclaim. */
  lockMemory: boolean;
}

/** A native failure: `code` is the errno name (ENOENT, EBUSY, ...). */
export interface NativeError extends Error {
  code: string;
  errno: number;
}

export interface Binding {
  crc32c(data: Uint8Array, seed?: number): number;
  readonly crc32cHardware: boolean;
  readonly limits: {
    blockBytes: number;
    requestBytesMax: number;
    frontendThreadsMin: number;
    frontendThreadsDefault: number;
    frontendThreadsMax: number;
  };

  diskOpen(path: string, readOnly: boolean): DiskHandle;
  diskInfo(disk: DiskHandle): DiskInfo;
  /** Offsets and lengths are multiples of 4096. Blocking: metadata only, never data. */
  diskRead(disk: DiskHandle, offsetBytes: number, lengthBytes: number): Buffer;
  diskWrite(disk: DiskHandle, offsetBytes: number, data: Uint8Array): void;
  diskFlush(disk: DiskHandle): void;
  diskClose(disk: DiskHandle): void;

  pipelineCreate(disk: DiskHandle, options: { dataSizeBytes: number }): PipelineHandle;
  pipelineCounters(pipeline: PipelineHandle): NativeCounters;
  pipelineFlush(pipeline: PipelineHandle): void;
  /** Stops the frontend if it runs; the disk stays open. */
  pipelineDestroy(pipeline: PipelineHandle): void;

  /** umount2(2) with UMOUNT_NOFOLLOW, and MNT_DETACH when `lazy`. */
  unmount(path: string, lazy: boolean): void;

  frontendStart(pipeline: PipelineHandle, options: FrontendOptions): void;
  frontendStop(pipeline: PipelineHandle): void;
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
  throw new Error(`the nraid addon is not built (looked for ${candidates.join(', ')}); run npm ci`);
}

export const binding: Binding = load();

export function crc32c(data: Uint8Array, seed = 0): number {
  return binding.crc32c(data, seed);
}

export function isNativeError(error: unknown): error is NativeError {
  return error instanceof Error && typeof (error as NativeError).code === 'string';
}
