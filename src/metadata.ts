/**
 * Internal metadata at the end of the backing device (DESIGN.md §2).
 *
 * Layout, from the end of the device rounded down to whole blocks:
 *
 *   [0, dataSize)                 data: what the exposed device shows
 *   [bitmapOffset, +bitmapSize)   dirty bitmap, 1 bit per granularity, whole blocks
 *   [alOffset, +1 MiB)            activity log
 *   [end - 8 KiB, end - 4 KiB)    superblock slot 0
 *   [end - 4 KiB, end)            superblock slot 1
 *
 * A superblock write goes to the slot that does not hold the newest valid
 * copy, so a torn write never destroys the last good one; a read checks both
 * slots (magic, crc32c, layout) and takes the valid one with the highest
 * sequence. A slot that is not valid is classified (classifySlot): blank
 * (never written, or zeroed), torn (a write that did not complete), or
 * damaged (anything else); src/resource/metadata-damage.ts decides what a
 * node may believe after that, and docs/CONTRACTS.md says why.
 */
import crypto from 'node:crypto';
import { DiskError, DiskHasDataError, InternalError, MetadataError } from './errors';
import * as limits from './limits';
import { crc32c } from './native';

/** The backing device, block-aligned I/O only: the daemon passes a native O_DIRECT handle, tests a file. */
export interface DiskIO {
  readonly path: string;
  readonly sizeBytes: number;
  /** offsetBytes and lengthBytes are multiples of limits.blockBytes. */
  read(offsetBytes: number, lengthBytes: number): Buffer;
  /** offsetBytes and data.length are multiples of limits.blockBytes. */
  write(offsetBytes: number, data: Buffer): void;
  flush(): void;
}

export interface Layout {
  /** As the device reports it. */
  backingSizeBytes: number;
  /** backingSizeBytes rounded down to whole blocks: the metadata ends here. */
  usableSizeBytes: number;
  dataSizeBytes: number;
  bitmapGranularityBytes: number;
  activityExtentBytes: number;
  bitmapOffsetBytes: number;
  bitmapSizeBytes: number;
  activityLogOffsetBytes: number;
  activityLogSizeBytes: number;
  /** Start of slot 0; slot 1 follows. */
  superblockOffsetBytes: number;
  /** Everything past the data: bitmap, activity log, superblock slots (and any slack). */
  metadataSizeBytes: number;
}

export interface SuperblockFlags {
  consistent: boolean;
  wasUpToDate: boolean;
  wasPrimary: boolean;
  crashedPrimary: boolean;
  resyncInProgress: boolean;
  peerOutdated: boolean;
  fullSyncNeeded: boolean;
  outdated: boolean;
}

/** Generation UUIDs (DESIGN.md §5); 0n means none. */
export interface GenerationUuids {
  current: bigint;
  bitmap: bigint;
  history: [bigint, bigint];
}

export interface Superblock {
  layoutVersion: number;
  flags: SuperblockFlags;
  /** Bumped on every write; the valid slot with the highest one wins. */
  sequence: number;
  dataSizeBytes: number;
  backingSizeBytes: number;
  bitmapGranularityBytes: number;
  activityExtentBytes: number;
  bitmapOffsetBytes: number;
  bitmapSizeBytes: number;
  activityLogOffsetBytes: number;
  activityLogSizeBytes: number;
  uuids: GenerationUuids;
  resource: string;
  node: string;
  createdAtMs: number;
  /** When this node last became Primary (0: never); after-sb-0pri discard-younger-primary compares it. */
  primarySinceMs: number;
}

export type DiskState = 'Inconsistent' | 'Outdated' | 'Consistent' | 'UpToDate';

export const superblockMagic = 'NRAIDMD1';
export const layoutVersion = 1;
/** The current UUID of a freshly created disk, as in DRBD. */
export const UUID_JUST_CREATED = 4n;

export const flagBits: Readonly<Record<keyof SuperblockFlags, number>> = {
  consistent: 1,
  wasUpToDate: 2,
  wasPrimary: 4,
  crashedPrimary: 8,
  resyncInProgress: 16,
  peerOutdated: 32,
  fullSyncNeeded: 64,
  outdated: 128,
};
const flagNames = Object.keys(flagBits) as Array<keyof SuperblockFlags>;
const flagMaskKnown = flagNames.reduce((mask, name) => mask | flagBits[name], 0);

/** Byte offsets inside a superblock slot; all integers little endian. */
const at = {
  magic: 0, // 8 bytes
  layoutVersion: 8, // u32
  flags: 12, // u32
  sequence: 16, // u64
  dataSizeBytes: 24,
  backingSizeBytes: 32,
  bitmapGranularityBytes: 40,
  activityExtentBytes: 48,
  bitmapOffsetBytes: 56,
  bitmapSizeBytes: 64,
  activityLogOffsetBytes: 72,
  activityLogSizeBytes: 80,
  uuidCurrent: 88,
  uuidBitmap: 96,
  uuidHistory0: 104,
  uuidHistory1: 112,
  createdAtMs: 120,
  resource: 128,
  primarySinceMs: 128 + 2 * limits.superblockNameBytes, // u64, after the names // superblockNameBytes
  node: 128 + limits.superblockNameBytes, // superblockNameBytes
  crc32c: limits.superblockSlotBytes - 4, // u32 over bytes [0, 4092)
} as const;

if (at.primarySinceMs + 8 > at.crc32c) {
  throw new InternalError(`src/metadata.ts: expected the superblock fields to end before the checksum at ${at.crc32c}, found them ending at ${at.primarySinceMs + 8}; fix the layout`);
}

/**
 * Every 512-byte sector of a slot carries the slot's sequence at this offset
 * (the write stamp; sector 7's ends just before the crc32c). A device may tear
 * a 4 KiB write at sector boundaries: the sectors then carry two stamps, the
 * new write's and the one before it in that slot; a slot changed after a
 * complete write (a bit flip, a stray write) carries one stamp, or garbage.
 * Slots written before stamps existed carry zeros there (still valid).
 */
const stampOffsetInSectorBytes = 500;
const stampSectors = limits.superblockSlotBytes / limits.sectorBytes;
if (at.primarySinceMs + 8 > stampOffsetInSectorBytes || (stampSectors - 1) * limits.sectorBytes + stampOffsetInSectorBytes + 8 > at.crc32c) {
  throw new InternalError('src/metadata.ts: expected the write stamps to fit between the fields and the checksum; fix stampOffsetInSectorBytes');
}

/** The u64 fields that hold byte counts and times (numbers in TS, safe integers on disk). */
const numberFields = [
  'sequence',
  'dataSizeBytes',
  'backingSizeBytes',
  'bitmapGranularityBytes',
  'activityExtentBytes',
  'bitmapOffsetBytes',
  'bitmapSizeBytes',
  'activityLogOffsetBytes',
  'activityLogSizeBytes',
  'createdAtMs',
  'primarySinceMs',
] as const;

const u64Max = (1n << 64n) - 1n;

// --- Layout --------------------------------------------------------------------

function roundUp(value: number, multiple: number): number {
  return Math.ceil(value / multiple) * multiple;
}

function roundDown(value: number, multiple: number): number {
  return Math.floor(value / multiple) * multiple;
}

/** Bitmap bytes for `dataSizeBytes`: one bit per granularity, rounded up to whole blocks. */
export function bitmapBytesFor(dataSizeBytes: number, granularityBytes: number = limits.bitmapGranularityBytes): number {
  const bits = Math.ceil(dataSizeBytes / granularityBytes);
  return roundUp(Math.ceil(bits / 8), limits.blockBytes);
}

function isValidGranularity(granularityBytes: number): boolean {
  return (
    Number.isSafeInteger(granularityBytes) &&
    granularityBytes >= limits.bitmapGranularityBytesMin &&
    granularityBytes <= limits.bitmapGranularityBytesMax &&
    (granularityBytes & (granularityBytes - 1)) === 0
  );
}

/** "4 MiB", "1036 KiB", "5000 bytes": exact, in the largest unit that divides. */
export function formatBytes(bytes: number): string {
  const units: Array<[string, number]> = [
    ['GiB', 1 << 30],
    ['MiB', 1 << 20],
    ['KiB', 1 << 10],
  ];
  for (const [unit, size] of units) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size} ${unit}`;
  }
  return `${bytes} bytes`;
}

/** The smallest backing device nraid accepts at this granularity. */
export function backingSizeMinBytes(granularityBytes: number = limits.bitmapGranularityBytes): number {
  return limits.dataSizeMinBytes + bitmapBytesFor(limits.dataSizeMinBytes, granularityBytes) + limits.activityLogBytes + limits.superblockAreaBytes;
}

/**
 * Where everything goes on a device of `backingSizeBytes`. The data area is
 * the largest whole number of blocks whose bitmap still fits before the
 * activity log. Too small a device is a DiskError naming `diskPath`.
 */
export function computeLayout(
  backingSizeBytes: number,
  granularityBytes: number = limits.bitmapGranularityBytes,
  diskPath = 'backing device',
): Layout {
  if (!isValidGranularity(granularityBytes)) {
    throw new MetadataError(
      `bitmap granularity must be a power of two from ${limits.bitmapGranularityBytesMin} to ${limits.bitmapGranularityBytesMax} bytes; found ${granularityBytes}; ` +
        'choose one in that range',
    );
  }
  if (!Number.isSafeInteger(backingSizeBytes) || backingSizeBytes < 0) {
    throw new DiskError(`${diskPath}: size must be a whole number of bytes; found ${backingSizeBytes}`);
  }
  const usableSizeBytes = roundDown(backingSizeBytes, limits.blockBytes);
  const minimumBytes = backingSizeMinBytes(granularityBytes);
  if (usableSizeBytes < minimumBytes) {
    const metadataBytes = minimumBytes - limits.dataSizeMinBytes;
    throw new DiskError(
      `${diskPath} has ${backingSizeBytes} bytes; nraid needs at least ${minimumBytes} ` +
        `(${formatBytes(limits.dataSizeMinBytes)} of data plus ${formatBytes(metadataBytes)} of metadata); use a larger device`,
    );
  }
  const superblockOffsetBytes = usableSizeBytes - limits.superblockAreaBytes;
  const activityLogOffsetBytes = superblockOffsetBytes - limits.activityLogBytes;
  // Data and bitmap share [0, activityLogOffsetBytes): start from the bitmap of
  // the whole span, then grow the data while its bitmap still fits. A bitmap
  // block covers 32768 granules, so this loop runs at most a few times.
  let dataSizeBytes = activityLogOffsetBytes - bitmapBytesFor(activityLogOffsetBytes, granularityBytes);
  for (let step = 0; ; step++) {
    if (step > 4) {
      throw new InternalError(`computeLayout(${backingSizeBytes}, ${granularityBytes}): expected the data size to settle within 4 steps, found it still growing; this is a bug in nraid`);
    }
    const grown = dataSizeBytes + limits.blockBytes;
    if (grown + bitmapBytesFor(grown, granularityBytes) > activityLogOffsetBytes) break;
    dataSizeBytes = grown;
  }
  const bitmapSizeBytes = bitmapBytesFor(dataSizeBytes, granularityBytes);
  if (dataSizeBytes < limits.dataSizeMinBytes || dataSizeBytes % limits.blockBytes !== 0) {
    throw new InternalError(
      `computeLayout(${backingSizeBytes}, ${granularityBytes}): expected a data size of whole blocks and at least ${limits.dataSizeMinBytes} bytes, ` +
        `found ${dataSizeBytes}; this is a bug in nraid`,
    );
  }
  return {
    backingSizeBytes,
    usableSizeBytes,
    dataSizeBytes,
    bitmapGranularityBytes: granularityBytes,
    activityExtentBytes: limits.activityExtentBytes,
    bitmapOffsetBytes: activityLogOffsetBytes - bitmapSizeBytes,
    bitmapSizeBytes,
    activityLogOffsetBytes,
    activityLogSizeBytes: limits.activityLogBytes,
    superblockOffsetBytes,
    metadataSizeBytes: usableSizeBytes - dataSizeBytes,
  };
}

/** Byte offset of superblock slot 0 or 1 on a device of `sizeBytes`. */
export function superblockSlotOffsetBytes(sizeBytes: number, slot: number): number {
  return roundDown(sizeBytes, limits.blockBytes) - limits.superblockAreaBytes + slot * limits.superblockSlotBytes;
}

// --- Superblock encoding -----------------------------------------------------------

function encodeName(field: 'resource' | 'node', value: string): Buffer {
  const bytes = Buffer.from(value, 'utf8');
  if (value === '' || value.includes('\0') || bytes.length > limits.superblockNameBytes) {
    throw new MetadataError(
      `superblock ${field} name must be 1 to ${limits.superblockNameBytes} bytes of UTF-8 without NUL; found ${JSON.stringify(value)} (${bytes.length} bytes)`,
    );
  }
  return bytes;
}

/** The 4096-byte slot image of `sb`, crc32c included. */
export function encodeSuperblock(sb: Superblock): Buffer {
  const buf = Buffer.alloc(limits.superblockSlotBytes);
  buf.write(superblockMagic, at.magic, 'latin1');
  buf.writeUInt32LE(sb.layoutVersion, at.layoutVersion);
  let flags = 0;
  for (const name of flagNames) if (sb.flags[name]) flags |= flagBits[name];
  buf.writeUInt32LE(flags >>> 0, at.flags);
  for (const name of numberFields) {
    const value = sb[name];
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new MetadataError(`superblock field ${name} must be a whole number from 0 to ${Number.MAX_SAFE_INTEGER}; found ${value}`);
    }
    buf.writeBigUInt64LE(BigInt(value), at[name]);
  }
  const uuids: Array<[string, bigint, number]> = [
    ['current', sb.uuids.current, at.uuidCurrent],
    ['bitmap', sb.uuids.bitmap, at.uuidBitmap],
    ['history[0]', sb.uuids.history[0], at.uuidHistory0],
    ['history[1]', sb.uuids.history[1], at.uuidHistory1],
  ];
  for (const [name, value, offset] of uuids) {
    if (value < 0n || value > u64Max) throw new MetadataError(`superblock uuid ${name} must fit in 64 bits; found ${value}`);
    buf.writeBigUInt64LE(value, offset);
  }
  encodeName('resource', sb.resource).copy(buf, at.resource);
  encodeName('node', sb.node).copy(buf, at.node);
  for (let sector = 0; sector < stampSectors; sector++) {
    buf.writeBigUInt64LE(BigInt(sb.sequence), sector * limits.sectorBytes + stampOffsetInSectorBytes);
  }
  buf.writeUInt32LE(crc32c(buf.subarray(0, at.crc32c)), at.crc32c);
  return buf;
}

type Decoded = { ok: true; superblock: Superblock } | { ok: false; problem: string };

function decodeName(buf: Buffer, offset: number): string {
  const field = buf.subarray(offset, offset + limits.superblockNameBytes);
  const end = field.indexOf(0);
  return field.subarray(0, end < 0 ? field.length : end).toString('utf8');
}

function hex(value: number): string {
  return `0x${value.toString(16).padStart(8, '0')}`;
}

/** Checks a slot image and says, in a few words, what is wrong with it. */
function decodeSlot(buf: Buffer): Decoded {
  if (buf.length !== limits.superblockSlotBytes) {
    return { ok: false, problem: `${buf.length} bytes instead of ${limits.superblockSlotBytes}` };
  }
  if (buf.toString('latin1', at.magic, at.magic + superblockMagic.length) !== superblockMagic) {
    return { ok: false, problem: 'no magic' };
  }
  const storedCrc = buf.readUInt32LE(at.crc32c);
  const computedCrc = crc32c(buf.subarray(0, at.crc32c));
  if (storedCrc !== computedCrc) {
    return { ok: false, problem: `bad checksum (stored ${hex(storedCrc)}, computed ${hex(computedCrc)})` };
  }
  const version = buf.readUInt32LE(at.layoutVersion);
  if (version !== layoutVersion) {
    return { ok: false, problem: `layout version ${version}, but this nraid reads version ${layoutVersion}; use a matching nraid` };
  }
  const flagWord = buf.readUInt32LE(at.flags);
  const unknownFlags = (flagWord & ~flagMaskKnown) >>> 0;
  if (unknownFlags !== 0) return { ok: false, problem: `unknown flag bits ${hex(unknownFlags)}` };
  const numbers = {} as Record<(typeof numberFields)[number], number>;
  for (const name of numberFields) {
    const value = buf.readBigUInt64LE(at[name]);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) return { ok: false, problem: `${name} ${value} is too large` };
    numbers[name] = Number(value);
  }
  const flags = {} as SuperblockFlags;
  for (const name of flagNames) flags[name] = (flagWord & flagBits[name]) !== 0;
  const superblock: Superblock = {
    layoutVersion: version,
    flags,
    ...numbers,
    uuids: {
      current: buf.readBigUInt64LE(at.uuidCurrent),
      bitmap: buf.readBigUInt64LE(at.uuidBitmap),
      history: [buf.readBigUInt64LE(at.uuidHistory0), buf.readBigUInt64LE(at.uuidHistory1)],
    },
    resource: decodeName(buf, at.resource),
    node: decodeName(buf, at.node),
  };
  const layoutProblem = checkLayout(superblock);
  if (layoutProblem !== null) return { ok: false, problem: layoutProblem };
  return { ok: true, superblock };
}

/** A checksummed superblock whose layout fields disagree with its own size was written by a broken nraid. */
function checkLayout(sb: Superblock): string | null {
  if (!isValidGranularity(sb.bitmapGranularityBytes)) return `bitmap granularity ${sb.bitmapGranularityBytes} is not valid`;
  if (sb.activityExtentBytes !== limits.activityExtentBytes) {
    return `activity extent ${sb.activityExtentBytes} bytes, but this nraid uses ${limits.activityExtentBytes}`;
  }
  let expected: Layout;
  try {
    expected = computeLayout(sb.backingSizeBytes, sb.bitmapGranularityBytes);
  } catch (error) {
    return `backing size ${sb.backingSizeBytes} is not valid (${(error as Error).message})`;
  }
  const fields = [
    'dataSizeBytes',
    'bitmapOffsetBytes',
    'bitmapSizeBytes',
    'activityLogOffsetBytes',
    'activityLogSizeBytes',
  ] as const;
  for (const name of fields) {
    if (sb[name] !== expected[name]) return `${name} ${sb[name]} disagrees with the layout of a ${sb.backingSizeBytes}-byte device (${expected[name]})`;
  }
  return null;
}

/** Decodes one slot image; anything wrong (magic, checksum, version, layout) is a MetadataError. */
export function decodeSuperblock(buf: Buffer): Superblock {
  const decoded = decodeSlot(buf);
  if (!decoded.ok) throw new MetadataError(`invalid nraid superblock: ${decoded.problem}`);
  return decoded.superblock;
}

// --- Reading and writing ---------------------------------------------------------

/**
 * What a slot holds: valid; blank (all zeros: never written, or zeroed, e.g.
 * by a discard); torn (a write that did not complete: see the write stamps
 * above); damaged (bad magic, checksum, layout or impossible values, with a
 * complete write behind it, or one we cannot tell).
 */
export type SlotCondition = 'valid' | 'blank' | 'torn' | 'damaged';

export interface SlotState {
  slot: number;
  offsetBytes: number;
  superblock: Superblock | null;
  /** Why the slot is not usable, or null when it is. */
  problem: string | null;
  condition: SlotCondition;
  /** The slot's bytes as read: the evidence, kept before anything overwrites it. */
  image: Buffer;
}

/** The distinct write stamps of a slot image, in sector order. */
function writeStamps(buf: Buffer): bigint[] {
  const stamps: bigint[] = [];
  for (let sector = 0; sector < stampSectors; sector++) stamps.push(buf.readBigUInt64LE(sector * limits.sectorBytes + stampOffsetInSectorBytes));
  return stamps;
}

/**
 * A slot that failed its checks is torn when its sectors carry exactly two
 * write stamps, one or two sequences apart (two when the slots take turns,
 * one for the first write after create-md or restore-md, which leave both
 * slots alike), both non-zero, and its first sector's stamp equals its own
 * sequence field (that sector is one whole write). Anything else is damage.
 * A bit flip that happens to turn one stamp into such a neighbour reads as
 * torn: the label can be wrong then, never the handling (both count as a
 * possibly lost newest write).
 */
function looksTorn(buf: Buffer): boolean {
  if (buf.toString('latin1', at.magic, at.magic + superblockMagic.length) !== superblockMagic) return false;
  const stamps = writeStamps(buf);
  const distinct = [...new Set(stamps)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  if (distinct.length !== 2 || distinct[0] === 0n) return false;
  const gap = distinct[1] - distinct[0];
  return (gap === 1n || gap === 2n) && stamps[0] === buf.readBigUInt64LE(at.sequence);
}

/** Classifies one slot image read from a device of `deviceSizeBytes`. */
export function classifySlot(image: Buffer, slot: number, offsetBytes: number, deviceSizeBytes: number): SlotState {
  const state: SlotState = { slot, offsetBytes, superblock: null, problem: null, condition: 'valid', image };
  if (image.every((byte) => byte === 0)) {
    return { ...state, condition: 'blank', problem: 'blank (never written, or zeroed)' };
  }
  const decoded = decodeSlot(image);
  if (!decoded.ok) {
    const torn = image.length === limits.superblockSlotBytes && looksTorn(image);
    return { ...state, condition: torn ? 'torn' : 'damaged', problem: torn ? `torn write (${decoded.problem}; its sectors hold two writes)` : decoded.problem };
  }
  if (roundDown(decoded.superblock.backingSizeBytes, limits.blockBytes) !== roundDown(deviceSizeBytes, limits.blockBytes)) {
    return {
      ...state,
      condition: 'damaged',
      problem: `written for a ${decoded.superblock.backingSizeBytes}-byte device, but this one has ${deviceSizeBytes} bytes (was it resized?)`,
    };
  }
  return { ...state, superblock: decoded.superblock };
}

/** Both superblock slots of `disk`, each valid or with the reason it is not. */
export function inspectSuperblocks(disk: DiskIO): SlotState[] {
  const usableSizeBytes = roundDown(disk.sizeBytes, limits.blockBytes);
  if (usableSizeBytes < limits.superblockAreaBytes) {
    throw new MetadataError(`no valid nraid metadata on ${disk.path} (it has only ${disk.sizeBytes} bytes); run nraid create-md on a larger device`);
  }
  const offsetBytes = superblockSlotOffsetBytes(disk.sizeBytes, 0);
  const area = disk.read(offsetBytes, limits.superblockAreaBytes);
  const slots: SlotState[] = [];
  for (let slot = 0; slot < limits.superblockSlots; slot++) {
    const start = slot * limits.superblockSlotBytes;
    const image = Buffer.from(area.subarray(start, start + limits.superblockSlotBytes));
    slots.push(classifySlot(image, slot, offsetBytes + start, disk.sizeBytes));
  }
  return slots;
}

/** The valid slot with the highest sequence (slot 0 on a tie), or null. */
export function newestSlot(slots: readonly SlotState[]): SlotState | null {
  let newest: SlotState | null = null;
  for (const state of slots) {
    if (state.superblock === null) continue;
    if (newest === null || state.superblock.sequence > newest.superblock!.sequence) newest = state;
  }
  return newest;
}

/** The newest valid superblock; neither slot valid is a MetadataError naming both problems. */
export function readSuperblock(disk: DiskIO): Superblock {
  const slots = inspectSuperblocks(disk);
  const newest = newestSlot(slots);
  if (newest !== null) return newest.superblock!;
  const problems = slots.map((s) => `slot ${s.slot}: ${s.problem}`).join(', ');
  throw new MetadataError(`no valid nraid metadata on ${disk.path} (${problems}); run nraid create-md`);
}

/**
 * Writes `sb` into the slot that does not hold the newest valid copy, with a
 * sequence above every valid one, and flushes. Returns `sb` with that sequence.
 */
export function writeSuperblock(disk: DiskIO, sb: Superblock): Superblock {
  const prepared = prepareSuperblockWrite(disk, sb);
  disk.write(prepared.offsetBytes, prepared.image);
  disk.flush();
  return prepared.superblock;
}

/** What writeSuperblock would write, and where, without writing it (the data plane may write it later). */
export function prepareSuperblockWrite(disk: DiskIO, sb: Superblock): { superblock: Superblock; image: Buffer; offsetBytes: number } {
  if (roundDown(sb.backingSizeBytes, limits.blockBytes) !== roundDown(disk.sizeBytes, limits.blockBytes)) {
    throw new MetadataError(
      `superblock for a ${sb.backingSizeBytes}-byte device cannot go on ${disk.path}, which has ${disk.sizeBytes} bytes; run nraid create-md for this device`,
    );
  }
  const slots = inspectSuperblocks(disk);
  const newest = newestSlot(slots);
  const target = newest === null ? 0 : 1 - newest.slot;
  const sequence = Math.max(sb.sequence, newest?.superblock?.sequence ?? 0) + 1;
  const superblock: Superblock = { ...sb, sequence };
  return { superblock, image: encodeSuperblock(superblock), offsetBytes: superblockSlotOffsetBytes(disk.sizeBytes, target) };
}

// --- Signatures of data nraid would destroy ----------------------------------------

interface Signature {
  what: string;
  offsetBytes: number;
  magic: Buffer;
}

const latin1 = (s: string): Buffer => Buffer.from(s, 'latin1');

/** Checked in order; the first that matches names what the device holds. */
const signatures: readonly Signature[] = [
  { what: 'a LUKS encrypted volume', offsetBytes: 0, magic: latin1('LUKS\xba\xbe') },
  { what: 'an XFS filesystem', offsetBytes: 0, magic: latin1('XFSB') },
  { what: 'a btrfs filesystem', offsetBytes: 65600, magic: latin1('_BHRfS_M') },
  { what: 'a swap area', offsetBytes: 4086, magic: latin1('SWAPSPACE2') },
  { what: 'a swap area', offsetBytes: 4086, magic: latin1('SWAP-SPACE') },
  { what: 'an LVM2 physical volume', offsetBytes: 0, magic: latin1('LABELONE') },
  { what: 'an LVM2 physical volume', offsetBytes: 512, magic: latin1('LABELONE') },
  { what: 'an LVM2 physical volume', offsetBytes: 1024, magic: latin1('LABELONE') },
  { what: 'an LVM2 physical volume', offsetBytes: 1536, magic: latin1('LABELONE') },
  { what: 'a Linux RAID (md) member', offsetBytes: 0, magic: Buffer.from([0xfc, 0x4e, 0x2b, 0xa9]) },
  { what: 'a Linux RAID (md) member', offsetBytes: 4096, magic: Buffer.from([0xfc, 0x4e, 0x2b, 0xa9]) },
  { what: 'an ISO 9660 filesystem', offsetBytes: 32769, magic: latin1('CD001') },
  { what: 'a GPT partition table', offsetBytes: 512, magic: latin1('EFI PART') },
  { what: 'a GPT partition table', offsetBytes: 4096, magic: latin1('EFI PART') },
  { what: 'an NTFS filesystem', offsetBytes: 3, magic: latin1('NTFS    ') },
  { what: 'a FAT filesystem', offsetBytes: 82, magic: latin1('FAT32   ') },
  { what: 'a FAT filesystem', offsetBytes: 54, magic: latin1('FAT16   ') },
  { what: 'a FAT filesystem', offsetBytes: 54, magic: latin1('FAT12   ') },
];

function matchesAt(head: Buffer, offsetBytes: number, magic: Buffer): boolean {
  return offsetBytes + magic.length <= head.length && head.subarray(offsetBytes, offsetBytes + magic.length).equals(magic);
}

/** ext2, ext3 or ext4 from the superblock at 1024 (magic 0xEF53 at 1080), by feature flags. */
function extFilesystem(head: Buffer): string | null {
  const superblockBytes = 1024;
  if (head.length < superblockBytes + 104 || head.readUInt16LE(superblockBytes + 56) !== 0xef53) return null;
  const compat = head.readUInt32LE(superblockBytes + 92);
  const incompat = head.readUInt32LE(superblockBytes + 96);
  const roCompat = head.readUInt32LE(superblockBytes + 100);
  const ext4Incompat = 0x40 | 0x80 | 0x200 | 0x2000 | 0x8000; // extents, 64bit, flex_bg, csum_seed, inline_data
  const ext4RoCompat = 0x8 | 0x10 | 0x20 | 0x40 | 0x400; // huge_file, gdt_csum, dir_nlink, extra_isize, metadata_csum
  if ((incompat & ext4Incompat) !== 0 || (roCompat & ext4RoCompat) !== 0) return 'an ext4 filesystem';
  if ((compat & 0x4) !== 0) return 'an ext3 filesystem'; // has_journal
  return 'an ext2 filesystem';
}

/** A DOS (MBR) partition table: 0x55AA at 510 and at least one partition entry with a type. */
function dosPartitionTable(head: Buffer): boolean {
  if (head.length < 512 || head[510] !== 0x55 || head[511] !== 0xaa) return false;
  for (let entry = 0; entry < 4; entry++) {
    const base = 446 + entry * 16;
    if (head[base + 4] !== 0 && head.readUInt32LE(base + 12) !== 0) return true; // type and sector count
  }
  return false;
}

/**
 * What the first bytes of a device say it holds ("an ext4 filesystem", "a GPT
 * partition table", ...), or null. `head` is the first signatureProbeBytes.
 */
export function detectSignature(head: Buffer): string | null {
  for (const signature of signatures) {
    if (matchesAt(head, signature.offsetBytes, signature.magic)) return signature.what;
  }
  const ext = extFilesystem(head);
  if (ext !== null) return ext;
  if (dosPartitionTable(head)) return 'a DOS partition table';
  return null;
}

// --- create-md -----------------------------------------------------------------

export interface CreateOptions {
  resource: string;
  node: string;
  force: boolean;
  bitmapGranularityBytes?: number;
  /**
   * --assume-clean, on both nodes of a brand-new pair: UpToDate at once, with
   * the same generation on both (assumeCleanUuid), so no initial sync runs.
   */
  assumeClean?: boolean;
}

/**
 * The generation both nodes of a new pair start with after create-md
 * --assume-clean: derived from what both share (the resource's name and data
 * size), since they are not connected when it is written. Above 0xffff like a
 * minted one; a new Primary generation replaces it on the first write apart.
 */
export function assumeCleanUuid(resource: string, dataSizeBytes: number): bigint {
  const digest = crypto.createHash('sha256').update(`nraid assume-clean\0${resource}\0${dataSizeBytes}`).digest();
  const uuid = digest.readBigUInt64LE(0);
  return uuid > 0xffffn ? uuid : uuid | 0x10000n;
}

const noFlags: SuperblockFlags = {
  consistent: false,
  wasUpToDate: false,
  wasPrimary: false,
  crashedPrimary: false,
  resyncInProgress: false,
  peerOutdated: false,
  fullSyncNeeded: false,
  outdated: false,
};

/** Disk state from the persisted flags, before the peer has a say. */
export function diskStateOf(sb: Superblock): DiskState {
  if (!sb.flags.consistent) return 'Inconsistent';
  if (sb.flags.outdated) return 'Outdated';
  if (sb.flags.wasUpToDate) return 'UpToDate';
  return 'Consistent';
}

/**
 * Writes fresh metadata: zeroed bitmap and activity log, then the same
 * superblock (Inconsistent, current UUID = UUID_JUST_CREATED) in both slots.
 * Never writes into the data area. Without `force`, refuses a device that
 * holds nraid metadata or a filesystem/partition signature.
 */
export function createMetadata(disk: DiskIO, opts: CreateOptions): Superblock {
  encodeName('resource', opts.resource);
  encodeName('node', opts.node);
  const layout = computeLayout(disk.sizeBytes, opts.bitmapGranularityBytes, disk.path);
  const slots = inspectSuperblocks(disk);
  const existing = newestSlot(slots)?.superblock ?? null;
  if (!opts.force) {
    if (existing !== null) {
      const held = `nraid metadata of resource "${existing.resource}" (node "${existing.node}", disk ${diskStateOf(existing)})`;
      if (existing.resource !== opts.resource) {
        throw new DiskHasDataError(
          `${disk.path} holds ${held}, another resource than "${opts.resource}"; nraid create-md would destroy it; use --force if that is what you want`,
        );
      }
      throw new DiskHasDataError(
        `${disk.path} already holds ${held}; nraid create-md would reset its generation UUIDs and mark it Inconsistent; use --force if that is what you want`,
      );
    }
    // Damaged nraid metadata may still be repaired from a dump: not overwritten without --force.
    const damaged = slots.find((s) => (s.condition === 'damaged' || s.condition === 'torn') && s.image.toString('latin1', at.magic, at.magic + superblockMagic.length) === superblockMagic);
    if (damaged !== undefined) {
      throw new DiskHasDataError(
        `${disk.path} holds damaged nraid metadata (slot ${damaged.slot}: ${damaged.problem}); nraid restore-md from a saved dump repairs it, ` +
          'nraid dump-md shows it; use create-md --force to start over (the data then needs a full sync)',
      );
    }
    const found = detectSignature(disk.read(0, limits.signatureProbeBytes));
    if (found !== null) {
      throw new DiskHasDataError(`${disk.path} holds ${found}; nraid create-md would destroy it; use --force if that is what you want`);
    }
  }

  const zeroes = Buffer.alloc(limits.metadataWriteChunkBytes);
  for (let offset = layout.dataSizeBytes; offset < layout.superblockOffsetBytes; offset += zeroes.length) {
    const length = Math.min(zeroes.length, layout.superblockOffsetBytes - offset);
    disk.write(offset, length === zeroes.length ? zeroes : zeroes.subarray(0, length));
  }
  disk.flush();

  // Above every sequence still on the disk, so a crash between the two slot
  // writes can never let the old metadata win.
  const sequence = slots.reduce((max, s) => Math.max(max, s.superblock?.sequence ?? 0), 0) + 1;
  const superblock: Superblock = {
    layoutVersion,
    flags: opts.assumeClean === true ? { ...noFlags, consistent: true, wasUpToDate: true } : { ...noFlags },
    sequence,
    dataSizeBytes: layout.dataSizeBytes,
    backingSizeBytes: layout.backingSizeBytes,
    bitmapGranularityBytes: layout.bitmapGranularityBytes,
    activityExtentBytes: layout.activityExtentBytes,
    bitmapOffsetBytes: layout.bitmapOffsetBytes,
    bitmapSizeBytes: layout.bitmapSizeBytes,
    activityLogOffsetBytes: layout.activityLogOffsetBytes,
    activityLogSizeBytes: layout.activityLogSizeBytes,
    uuids: {
      current: opts.assumeClean === true ? assumeCleanUuid(opts.resource, layout.dataSizeBytes) : UUID_JUST_CREATED,
      bitmap: 0n,
      history: [0n, 0n],
    },
    resource: opts.resource,
    node: opts.node,
    createdAtMs: Date.now(),
    primarySinceMs: 0,
  };
  const image = encodeSuperblock(superblock);
  for (let slot = 0; slot < limits.superblockSlots; slot++) {
    disk.write(superblockSlotOffsetBytes(disk.sizeBytes, slot), image);
  }
  disk.flush();
  return superblock;
}
