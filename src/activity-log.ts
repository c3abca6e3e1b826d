/**
 * Reading the activity log after a crash (the data plane writes it, see
 * native/activity_log.h): the newest valid transaction names every extent a
 * write may have been in flight to; those extents are marked out of sync.
 * Transaction layout (4096 bytes, little endian): magic u32 "NRAL", version
 * u32, sequence u64, count u32, extent size in 4 KiB units u32, reserved,
 * then count u32 extent numbers from byte 32, crc32c of bytes 0..4091 at 4092.
 */
import { activityHeaderBytes, activityTransactionBytes, blockBytes } from './limits';
import { crc32c } from './native';

/** "NRAL" little endian; mirrors kActivityMagic in native/limits.h (test/unit/limits.test.ts compares them). */
export const ACTIVITY_MAGIC = 0x4c41524e;
/** The u32 crc32c that ends a transaction. */
const CRC_BYTES = 4;

export interface ActivityTransaction {
  sequence: bigint;
  extentBytes: number;
  extents: number[];
}

/** The newest transaction whose checksum holds, or null when there is none (a new or clean log). */
export function newestTransaction(area: Buffer): ActivityTransaction | null {
  let best: ActivityTransaction | null = null;
  for (let offset = 0; offset + activityTransactionBytes <= area.length; offset += activityTransactionBytes) {
    const slot = area.subarray(offset, offset + activityTransactionBytes);
    if (slot.readUInt32LE(0) !== ACTIVITY_MAGIC) continue;
    const crcAt = activityTransactionBytes - CRC_BYTES;
    if (crc32c(slot.subarray(0, crcAt)) !== slot.readUInt32LE(crcAt)) continue;
    const count = slot.readUInt32LE(16);
    if (activityHeaderBytes + count * 4 > crcAt) continue;
    const sequence = slot.readBigUInt64LE(8);
    if (best !== null && sequence <= best.sequence) continue;
    const extents: number[] = [];
    for (let i = 0; i < count; i++) extents.push(slot.readUInt32LE(activityHeaderBytes + i * 4));
    best = { sequence, extentBytes: slot.readUInt32LE(20) * blockBytes, extents };
  }
  return best;
}

/**
 * Bitmap words (little-endian u64, the on-disk layout) with every block of the
 * extents set. The extents become runs of bits, merged, then set a byte at a
 * time: the work is bounded by the bitmap's size, whatever the transaction's
 * extent size and numbers say (a transaction is checksummed, not trusted: one
 * bit at a time, 1000 extents of a huge extent size took minutes on a large
 * device, with the event loop blocked).
 */
export function extentsToBitmap(extents: readonly number[], extentBytes: number, granularityBytes: number, dataSizeBytes: number, wordsBytes: number): Buffer {
  const words = Buffer.alloc(wordsBytes);
  const bits = Math.min(Math.ceil(dataSizeBytes / granularityBytes), wordsBytes * 8);
  const runs: Array<[number, number]> = [];
  for (const extent of extents) {
    const first = Math.floor((extent * extentBytes) / granularityBytes);
    const end = Math.min(bits, Math.floor(((extent + 1) * extentBytes) / granularityBytes));
    if (first < end) runs.push([first, end]);
  }
  runs.sort((a, b) => a[0] - b[0]);
  let covered = 0;
  for (const [first, end] of runs) {
    if (end <= covered) continue;
    setBits(words, Math.max(first, covered), end);
    covered = end;
  }
  return words;
}

/**
 * Sets bits [from, end) (bit i is bit i % 8 of byte i / 8): loose bits at the
 * edges, whole bytes between. Division, not `>> 3`: a bitmap of more than
 * 2^31 bits (8 TiB of data at 4 KiB) has bit numbers past 32-bit shifts.
 */
function setBits(words: Buffer, from: number, end: number): void {
  let bit = from;
  for (; bit < end && bit % 8 !== 0; bit++) words[Math.floor(bit / 8)] |= 1 << bit % 8;
  const wholeBytesEnd = Math.floor(end / 8);
  if (bit / 8 < wholeBytesEnd) {
    words.fill(0xff, bit / 8, wholeBytesEnd);
    bit = wholeBytesEnd * 8;
  }
  for (; bit < end; bit++) words[Math.floor(bit / 8)] |= 1 << bit % 8;
}
