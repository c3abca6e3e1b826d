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
}

/** An open backing device: O_DIRECT, aligned buffers inside the addon. */
export interface DiskHandle {
  readonly __brand: 'DiskHandle';
}

export interface DiskInfo {
  sizeBytes: number;
  isBlockDevice: boolean;
  logicalBlockBytes: number;
}

export interface Binding {
  crc32c(data: Uint8Array, seed?: number): number;
  readonly crc32cHardware: boolean;
}

function load(): Binding {
  const addonPath = path.join(__dirname, '..', '..', 'build', 'Release', 'nraid.node');
  const fallbackPath = path.join(__dirname, '..', 'build', 'Release', 'nraid.node');
  try {
    return require(addonPath) as Binding;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw error;
    return require(fallbackPath) as Binding;
  }
}

export const binding: Binding = load();

export function crc32c(data: Uint8Array, seed = 0): number {
  return binding.crc32c(data, seed);
}
