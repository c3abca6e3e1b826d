/**
 * Reading the activity log after a crash (the data plane writes it, see
 * native/activity_log.h): the newest valid transaction names every extent a
 * write may have been in flight to; those extents are marked out of sync.
 * Transaction layout (4096 bytes, little endian): magic u32 "NRAL", version
 * u32, sequence u64, count u32, extent size in 4 KiB units u32, reserved,
 * then count u32 extent numbers from byte 32, crc32c of bytes 0..4091 at 4092.
 */
import { activityExtentsMax, activityHeaderBytes, activityTransactionBytes, blockBytes } from './limits';
import { crc32c } from './native';

/** "NRAL" little endian; mirrors kActivityMagic in native/limits.h (test/unit/limits.test.ts compares them). */
export const ACTIVITY_MAGIC = 0x4c41524e;
/** Mirrors kActivityLayoutVersion in native/limits.h. */
export const ACTIVITY_LAYOUT_VERSION = 1;
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
 * time: the work is bounded by the bitmap's size, whatever the extent size
 * and numbers say (inspectActivityLog checks them for recovery; set one bit
 * at a time, 1000 extents of a huge extent size took minutes on a large
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

/** One record of the ring that is neither blank nor a valid transaction. */
export interface ActivityRecordDamage {
  index: number;
  problem: string;
  image: Buffer;
}

export interface ActivityLogInspection {
  /** The newest valid transaction, or null. */
  newest: ActivityTransaction | null;
  validRecords: number;
  blankRecords: number;
  damaged: ActivityRecordDamage[];
}

/** What the ring of a device with `extents` activity extents of `extentBytes` may hold. */
export interface ActivityLogShape {
  extentBytes: number;
  extents: number;
}

function recordProblem(record: Buffer, shape: ActivityLogShape): string | null {
  if (record.readUInt32LE(0) !== ACTIVITY_MAGIC) return 'no magic';
  const crcAt = activityTransactionBytes - CRC_BYTES;
  const stored = record.readUInt32LE(crcAt);
  const computed = crc32c(record.subarray(0, crcAt));
  if (stored !== computed) return `bad checksum (stored ${stored.toString(16)}, computed ${computed.toString(16)})`;
  const version = record.readUInt32LE(4);
  if (version !== ACTIVITY_LAYOUT_VERSION) return `layout version ${version}, expected ${ACTIVITY_LAYOUT_VERSION}`;
  const count = record.readUInt32LE(16);
  if (count > activityExtentsMax) return `${count} extents listed, at most ${activityExtentsMax} fit`;
  const extentBytes = record.readUInt32LE(20) * blockBytes;
  if (extentBytes !== shape.extentBytes) return `extent size ${extentBytes} bytes, expected ${shape.extentBytes}`;
  for (let i = 0; i < count; i++) {
    const extent = record.readUInt32LE(activityHeaderBytes + i * 4);
    if (extent >= shape.extents) return `extent ${extent} is past the last one (${shape.extents - 1})`;
  }
  return null;
}

/**
 * Every record of the ring: blank (all zeros: never written since create-md
 * or the last start), valid, or damaged (bad magic, checksum, version, count,
 * extent size or extent number). A torn record (a crash during its write) is
 * damage too: its sequence cannot be trusted, so it cannot be told from a
 * newest record that rotted, and a rotted newest record hides hot extents.
 */
export function inspectActivityLog(area: Buffer, shape: ActivityLogShape): ActivityLogInspection {
  const inspection: ActivityLogInspection = { newest: null, validRecords: 0, blankRecords: 0, damaged: [] };
  for (let offset = 0, index = 0; offset + activityTransactionBytes <= area.length; offset += activityTransactionBytes, index++) {
    const record = area.subarray(offset, offset + activityTransactionBytes);
    if (record.every((byte) => byte === 0)) {
      inspection.blankRecords++;
      continue;
    }
    const problem = recordProblem(record, shape);
    if (problem !== null) {
      inspection.damaged.push({ index, problem, image: Buffer.from(record) });
      continue;
    }
    inspection.validRecords++;
    const sequence = record.readBigUInt64LE(8);
    if (inspection.newest !== null && sequence <= inspection.newest.sequence) continue;
    const extents: number[] = [];
    for (let i = 0; i < record.readUInt32LE(16); i++) extents.push(record.readUInt32LE(activityHeaderBytes + i * 4));
    inspection.newest = { sequence, extentBytes: record.readUInt32LE(20) * blockBytes, extents };
  }
  return inspection;
}
