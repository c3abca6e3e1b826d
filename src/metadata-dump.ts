/**
 * `nraid dump-md` and `nraid restore-md` (as drbdmeta's): the metadata of a
 * stopped resource as a JSON document that an operator can keep, read, edit
 * and write back. The dump holds both superblock slots (decoded, with their
 * condition and their bytes), the activity log (summary and every non-blank
 * record's bytes) and the bitmap (summary and the set bit ranges). restore-md
 * writes the dump's `superblock` (the newest valid slot at dump time, or what
 * the operator edited there) to both slots, the bitmap from its ranges and the
 * activity-log records as they were.
 */
import { inspectActivityLog } from './activity-log';
import { DiskHasDataError, MetadataError } from './errors';
import * as limits from './limits';
import {
  DiskIO,
  SlotCondition,
  Superblock,
  SuperblockFlags,
  computeLayout,
  decodeSuperblock,
  diskStateOf,
  encodeSuperblock,
  flagBits,
  formatBytes,
  inspectSuperblocks,
  newestSlot,
  superblockSlotOffsetBytes,
} from './metadata';

export const DUMP_FORMAT = 'nraid-metadata-dump';
export const DUMP_VERSION = 1;

/** A superblock as JSON: UUIDs as 16 hex digits, everything else as in `Superblock`. */
export type SuperblockJson = Omit<Superblock, 'uuids'> & {
  uuids: { current: string; bitmap: string; history: [string, string] };
};

export interface SlotDump {
  slot: number;
  offsetBytes: number;
  condition: SlotCondition;
  problem: string | null;
  /** The disk state the slot records, when valid. */
  disk: string | null;
  superblock: SuperblockJson | null;
  imageBase64: string;
}

export interface MetadataDump {
  format: typeof DUMP_FORMAT;
  version: typeof DUMP_VERSION;
  dumpedAt: string;
  device: string;
  deviceSizeBytes: number;
  /** The newest valid slot's superblock: what restore-md writes. Null when neither slot is valid. */
  superblock: SuperblockJson | null;
  superblocks: SlotDump[];
  activityLog:
    | {
        offsetBytes: number;
        validRecords: number;
        blankRecords: number;
        damaged: Array<{ index: number; problem: string }>;
        newest: { sequence: string; extents: number[] } | null;
        /** Every record that is not blank, valid or not, with its bytes. */
        records: Array<{ index: number; imageBase64: string }>;
      }
    | { unreadable: string }
    | null;
  bitmap:
    | {
        offsetBytes: number;
        granularityBytes: number;
        bits: number;
        bitsSet: number;
        outOfSyncBytes: number;
        /** [first bit, number of bits] of every run of set bits. */
        setRanges: Array<[number, number]>;
      }
    | { unreadable: string }
    | null;
}

function uuidHex(uuid: bigint): string {
  return uuid.toString(16).padStart(16, '0');
}

export function superblockToJson(sb: Superblock): SuperblockJson {
  return {
    ...sb,
    flags: { ...sb.flags },
    uuids: { current: uuidHex(sb.uuids.current), bitmap: uuidHex(sb.uuids.bitmap), history: [uuidHex(sb.uuids.history[0]), uuidHex(sb.uuids.history[1])] },
  };
}

function parseUuid(field: string, value: unknown): bigint {
  if (typeof value !== 'string' || !/^[0-9a-fA-F]{1,16}$/.test(value)) {
    throw new MetadataError(`dump field superblock.uuids.${field} must be 1 to 16 hex digits; found ${JSON.stringify(value)}; fix the dump`);
  }
  return BigInt(`0x${value}`);
}

/** The dump's superblock as a Superblock; every field checked (encodeSuperblock and decodeSuperblock check the rest). */
export function superblockFromJson(json: unknown): Superblock {
  if (typeof json !== 'object' || json === null) throw new MetadataError('dump has no superblock object; a dump of metadata with no valid slot cannot be restored');
  const j = json as Record<string, unknown>;
  const numberOf = (name: string): number => {
    const value = j[name];
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
      throw new MetadataError(`dump field superblock.${name} must be a whole number of at least 0; found ${JSON.stringify(value)}; fix the dump`);
    }
    return value;
  };
  const flagsJson = j.flags as Record<string, unknown> | undefined;
  if (typeof flagsJson !== 'object' || flagsJson === null) throw new MetadataError('dump field superblock.flags must be an object of booleans; fix the dump');
  const flags = {} as SuperblockFlags;
  for (const name of Object.keys(flagBits) as Array<keyof SuperblockFlags>) {
    if (typeof flagsJson[name] !== 'boolean') throw new MetadataError(`dump field superblock.flags.${name} must be true or false; found ${JSON.stringify(flagsJson[name])}; fix the dump`);
    flags[name] = flagsJson[name] as boolean;
  }
  const uuids = j.uuids as Record<string, unknown> | undefined;
  if (typeof uuids !== 'object' || uuids === null || !Array.isArray(uuids.history) || uuids.history.length !== 2) {
    throw new MetadataError('dump field superblock.uuids must hold current, bitmap and history (two entries); fix the dump');
  }
  for (const name of ['resource', 'node']) {
    if (typeof j[name] !== 'string') throw new MetadataError(`dump field superblock.${name} must be a string; fix the dump`);
  }
  return {
    layoutVersion: numberOf('layoutVersion'),
    flags,
    sequence: numberOf('sequence'),
    dataSizeBytes: numberOf('dataSizeBytes'),
    backingSizeBytes: numberOf('backingSizeBytes'),
    bitmapGranularityBytes: numberOf('bitmapGranularityBytes'),
    activityExtentBytes: numberOf('activityExtentBytes'),
    bitmapOffsetBytes: numberOf('bitmapOffsetBytes'),
    bitmapSizeBytes: numberOf('bitmapSizeBytes'),
    activityLogOffsetBytes: numberOf('activityLogOffsetBytes'),
    activityLogSizeBytes: numberOf('activityLogSizeBytes'),
    uuids: {
      current: parseUuid('current', uuids.current),
      bitmap: parseUuid('bitmap', uuids.bitmap),
      history: [parseUuid('history[0]', uuids.history[0]), parseUuid('history[1]', uuids.history[1])],
    },
    resource: j.resource as string,
    node: j.node as string,
    createdAtMs: numberOf('createdAtMs'),
    primarySinceMs: numberOf('primarySinceMs'),
  };
}

/** Runs of set bits among the first `bits` bits (little-endian bit order, as the on-disk bitmap). */
export function setBitRanges(bitmap: Buffer, bits: number): Array<[number, number]> {
  const ranges: Array<[number, number]> = [];
  let start = -1;
  for (let byte = 0; byte * 8 < bits; byte++) {
    const value = bitmap[byte];
    if ((value === 0 && start < 0) || (value === 0xff && start >= 0 && byte * 8 + 8 <= bits)) continue;
    for (let bit = byte * 8; bit < Math.min(bits, byte * 8 + 8); bit++) {
      const set = (value & (1 << (bit & 7))) !== 0;
      if (set && start < 0) start = bit;
      if (!set && start >= 0) {
        ranges.push([start, bit - start]);
        start = -1;
      }
    }
  }
  if (start >= 0) ranges.push([start, bits - start]);
  return ranges;
}

/** A bitmap of `sizeBytes` with the ranges set; ranges past `bits` are a MetadataError. */
export function bitmapFromRanges(ranges: unknown, bits: number, sizeBytes: number): Buffer {
  if (!Array.isArray(ranges)) throw new MetadataError('dump field bitmap.setRanges must be a list of [first bit, count]; fix the dump');
  const bitmap = Buffer.alloc(sizeBytes);
  for (const range of ranges) {
    const [first, count] = Array.isArray(range) ? range : [];
    if (!Number.isSafeInteger(first) || !Number.isSafeInteger(count) || first < 0 || count < 1 || first + count > bits) {
      throw new MetadataError(`dump field bitmap.setRanges holds ${JSON.stringify(range)}; expected [first bit, count] within ${bits} bits; fix the dump`);
    }
    for (let bit = first; bit < first + count; bit++) bitmap[bit >> 3] |= 1 << (bit & 7);
  }
  return bitmap;
}

function bytesOfRanges(ranges: ReadonlyArray<[number, number]>, granularityBytes: number, dataSizeBytes: number): number {
  let total = 0;
  for (const [first, count] of ranges) total += Math.min((first + count) * granularityBytes, dataSizeBytes) - first * granularityBytes;
  return total;
}

/** Reads everything nraid keeps at the end of `disk`; a read that fails is noted in the dump, not thrown. */
export function dumpMetadata(disk: DiskIO, nowMs = Date.now()): MetadataDump {
  const slots = inspectSuperblocks(disk);
  const newest = newestSlot(slots)?.superblock ?? null;
  const dump: MetadataDump = {
    format: DUMP_FORMAT,
    version: DUMP_VERSION,
    dumpedAt: new Date(nowMs).toISOString(),
    device: disk.path,
    deviceSizeBytes: disk.sizeBytes,
    superblock: newest === null ? null : superblockToJson(newest),
    superblocks: slots.map((s) => ({
      slot: s.slot,
      offsetBytes: s.offsetBytes,
      condition: s.condition,
      problem: s.problem,
      disk: s.superblock === null ? null : diskStateOf(s.superblock),
      superblock: s.superblock === null ? null : superblockToJson(s.superblock),
      imageBase64: s.image.toString('base64'),
    })),
    activityLog: null,
    bitmap: null,
  };
  if (newest === null) return dump;
  try {
    const area = disk.read(newest.activityLogOffsetBytes, newest.activityLogSizeBytes);
    const inspection = inspectActivityLog(area, { extentBytes: newest.activityExtentBytes, extents: Math.ceil(newest.dataSizeBytes / newest.activityExtentBytes) });
    const records: Array<{ index: number; imageBase64: string }> = [];
    for (let index = 0; index * limits.activityTransactionBytes < area.length; index++) {
      const record = area.subarray(index * limits.activityTransactionBytes, (index + 1) * limits.activityTransactionBytes);
      if (!record.every((byte) => byte === 0)) records.push({ index, imageBase64: record.toString('base64') });
    }
    dump.activityLog = {
      offsetBytes: newest.activityLogOffsetBytes,
      validRecords: inspection.validRecords,
      blankRecords: inspection.blankRecords,
      damaged: inspection.damaged.map((d) => ({ index: d.index, problem: d.problem })),
      newest: inspection.newest === null ? null : { sequence: inspection.newest.sequence.toString(), extents: inspection.newest.extents },
      records,
    };
  } catch (error) {
    dump.activityLog = { unreadable: (error as Error).message };
  }
  try {
    const bits = Math.ceil(newest.dataSizeBytes / newest.bitmapGranularityBytes);
    const setRanges = setBitRanges(disk.read(newest.bitmapOffsetBytes, newest.bitmapSizeBytes), bits);
    dump.bitmap = {
      offsetBytes: newest.bitmapOffsetBytes,
      granularityBytes: newest.bitmapGranularityBytes,
      bits,
      bitsSet: setRanges.reduce((sum, [, count]) => sum + count, 0),
      outOfSyncBytes: bytesOfRanges(setRanges, newest.bitmapGranularityBytes, newest.dataSizeBytes),
      setRanges,
    };
  } catch (error) {
    dump.bitmap = { unreadable: (error as Error).message };
  }
  return dump;
}

function flagList(flags: SuperblockFlags): string {
  const set = (Object.keys(flags) as Array<keyof SuperblockFlags>).filter((name) => flags[name]);
  return set.length === 0 ? 'none' : set.join(',');
}

/** The dump for a person: one line per slot, the activity log, the bitmap. */
export function formatDump(dump: MetadataDump): string {
  const lines: string[] = [];
  const owner = dump.superblock === null ? 'no valid superblock' : `resource ${dump.superblock.resource}, node ${dump.superblock.node}`;
  lines.push(`nraid metadata on ${dump.device} (${owner}), device ${dump.deviceSizeBytes} bytes, dumped ${dump.dumpedAt}`);
  for (const s of dump.superblocks) {
    const head = `superblock slot ${s.slot} at ${s.offsetBytes}: ${s.condition}`;
    if (s.superblock === null) {
      lines.push(`${head}: ${s.problem}`);
      continue;
    }
    const sb = s.superblock;
    lines.push(
      `${head}, sequence ${sb.sequence}, disk ${s.disk}, flags ${flagList(sb.flags)}, ` +
        `uuids current ${sb.uuids.current} bitmap ${sb.uuids.bitmap} history ${sb.uuids.history.join(' ')}, data ${sb.dataSizeBytes} bytes`,
    );
  }
  const al = dump.activityLog;
  if (al === null) lines.push('activity log: not read (no valid superblock says where it is)');
  else if ('unreadable' in al) lines.push(`activity log: unreadable: ${al.unreadable}`);
  else {
    const newest = al.newest === null ? 'no transaction' : `newest sequence ${al.newest.sequence} names ${al.newest.extents.length} extent(s)`;
    lines.push(`activity log: ${al.validRecords} valid, ${al.blankRecords} blank, ${al.damaged.length} damaged record(s); ${newest}`);
    for (const d of al.damaged) lines.push(`  record ${d.index}: damaged: ${d.problem}`);
  }
  const bm = dump.bitmap;
  if (bm === null) lines.push('bitmap: not read (no valid superblock says where it is)');
  else if ('unreadable' in bm) lines.push(`bitmap: unreadable: ${bm.unreadable}`);
  else lines.push(`bitmap: ${bm.bitsSet} of ${bm.bits} bits set (granularity ${formatBytes(bm.granularityBytes)}): ${bm.outOfSyncBytes} bytes out of sync`);
  return lines.join('\n');
}

/** Parses a dump file's text; anything else is a MetadataError saying what was found. */
export function parseDump(text: string, source: string): MetadataDump {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new MetadataError(`${source} is not JSON (${(error as Error).message}); restore-md reads what nraid dump-md --json wrote`);
  }
  const j = json as Partial<MetadataDump> | null;
  if (typeof j !== 'object' || j === null || j.format !== DUMP_FORMAT || j.version !== DUMP_VERSION) {
    throw new MetadataError(`${source} is not an nraid metadata dump of version ${DUMP_VERSION} (format ${JSON.stringify(j?.format)}, version ${JSON.stringify(j?.version)}); restore-md reads what nraid dump-md --json wrote`);
  }
  if (!Number.isSafeInteger(j.deviceSizeBytes)) throw new MetadataError(`${source}: deviceSizeBytes must be a whole number; fix the dump`);
  for (const area of ['activityLog', 'bitmap'] as const) {
    if (j[area] !== null && typeof j[area] !== 'object') throw new MetadataError(`${source}: ${area} must be an object or null; fix the dump`);
  }
  const al = j.activityLog;
  if (al && !('unreadable' in al) && !Array.isArray(al.records)) throw new MetadataError(`${source}: activityLog.records must be a list; fix the dump`);
  return j as MetadataDump;
}

export interface RestoreOptions {
  resource: string;
  force: boolean;
  /** Runs after every check passed, before the first write (restore-md keeps the current metadata there). */
  beforeWrite?: () => void;
}

/**
 * Writes `dump` to `disk`: checks first (same device size and layout, the
 * resource of the config, a superblock that encodes and decodes), refuses
 * valid current metadata without `force`; then the bitmap, the activity
 * log, a flush, and the superblock in both slots with a sequence above every
 * one on the disk, and a flush. Returns the superblock written.
 */
export function restoreMetadata(disk: DiskIO, dump: MetadataDump, opts: RestoreOptions): Superblock {
  const blockRound = (bytes: number): number => Math.floor(bytes / limits.blockBytes) * limits.blockBytes;
  if (blockRound(dump.deviceSizeBytes) !== blockRound(disk.sizeBytes)) {
    throw new MetadataError(
      `the dump is of a ${dump.deviceSizeBytes}-byte device (${dump.device}), but ${disk.path} has ${disk.sizeBytes} bytes; ` +
        'restore-md writes a dump back to a device of the same size (to move data, use create-md and a full sync)',
    );
  }
  const wanted = superblockFromJson(dump.superblock);
  if (wanted.resource !== opts.resource) {
    throw new MetadataError(`the dump is of resource "${wanted.resource}", not "${opts.resource}"; restore it with that resource's config, or use create-md`);
  }
  if (blockRound(wanted.backingSizeBytes) !== blockRound(disk.sizeBytes)) {
    throw new MetadataError(`the dump's superblock is for a ${wanted.backingSizeBytes}-byte device, but ${disk.path} has ${disk.sizeBytes} bytes; fix the dump`);
  }
  const layout = computeLayout(disk.sizeBytes, wanted.bitmapGranularityBytes, disk.path);
  // The checks of a read: a dump edited into nonsense is refused here, before anything is written.
  decodeSuperblock(encodeSuperblock(wanted));
  if (wanted.dataSizeBytes !== layout.dataSizeBytes || wanted.bitmapOffsetBytes !== layout.bitmapOffsetBytes || wanted.activityLogOffsetBytes !== layout.activityLogOffsetBytes) {
    throw new MetadataError(`the dump's layout (data ${wanted.dataSizeBytes} bytes) does not fit ${disk.path} (data ${layout.dataSizeBytes} bytes); nothing written`);
  }

  const current = inspectSuperblocks(disk);
  const valid = current.filter((s) => s.condition === 'valid');
  const broken = current.filter((s) => s.condition === 'torn' || s.condition === 'damaged');
  if (!opts.force && valid.length > 0 && broken.length === 0) {
    const sb = newestSlot(current)!.superblock!;
    throw new DiskHasDataError(
      `${disk.path} holds valid nraid metadata (resource "${sb.resource}", disk ${diskStateOf(sb)}, sequence ${sb.sequence}); ` +
        'restore-md would replace it; use --force if that is what you want',
    );
  }

  const bits = Math.ceil(layout.dataSizeBytes / layout.bitmapGranularityBytes);
  const bm = dump.bitmap;
  // A dump whose bitmap could not be read restores as "everything out of sync".
  const bitmap = bm !== null && !('unreadable' in bm) ? bitmapFromRanges(bm.setRanges, bits, layout.bitmapSizeBytes) : bitmapFromRanges([[0, bits]], bits, layout.bitmapSizeBytes);
  const activityLog = Buffer.alloc(layout.activityLogSizeBytes);
  const al = dump.activityLog;
  if (al !== null && !('unreadable' in al)) {
    for (const record of al.records) {
      const bytes = Buffer.from(String(record.imageBase64), 'base64');
      const at = Number(record.index) * limits.activityTransactionBytes;
      if (bytes.length !== limits.activityTransactionBytes || !Number.isSafeInteger(record.index) || record.index < 0 || at >= activityLog.length) {
        throw new MetadataError(`dump activity-log record ${JSON.stringify(record.index)} is not one ${limits.activityTransactionBytes}-byte record of the ring; fix the dump`);
      }
      bytes.copy(activityLog, at);
    }
  }
  opts.beforeWrite?.();
  for (let offset = 0; offset < bitmap.length; offset += limits.metadataWriteChunkBytes) {
    disk.write(layout.bitmapOffsetBytes + offset, bitmap.subarray(offset, Math.min(bitmap.length, offset + limits.metadataWriteChunkBytes)));
  }
  disk.write(layout.activityLogOffsetBytes, activityLog);
  disk.flush();
  const sequence = Math.max(wanted.sequence, ...current.map((s) => s.superblock?.sequence ?? 0)) + 1;
  const written: Superblock = { ...wanted, sequence };
  const finalImage = encodeSuperblock(written);
  for (let slot = 0; slot < limits.superblockSlots; slot++) disk.write(superblockSlotOffsetBytes(disk.sizeBytes, slot), finalImage);
  disk.flush();
  return written;
}
