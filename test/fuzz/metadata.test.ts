/**
 * Fuzz target 3: the superblock parser (src/metadata.ts) and the
 * activity-log parser (src/activity-log.ts), on valid images and on mutated
 * ones (with the checksum left broken, or sealed again so that the checks
 * behind it are reached too).
 * Properties: a valid image round-trips; decoding a mutated image gives a
 * Superblock (which encodes again, or is refused by the encoder with a
 * MetadataError) or a MetadataError, never another throw; reading both slots
 * of a disk gives the newest valid one or a MetadataError; the activity log
 * gives the newest intact transaction or null (newestTransaction), every
 * record blank, valid or damaged with a reason (inspectActivityLog, what
 * recovery reads), and marking extents in a bitmap takes bounded time
 * whatever the transaction says.
 * Canaries: "every mutated superblock decodes" and "every mutated
 * activity log yields a transaction" must fail.
 */
import * as fc from 'fast-check';
import { MetadataError, NraidError } from '../../src/errors';
import * as limits from '../../src/limits';
import { ACTIVITY_MAGIC, ActivityTransaction, extentsToBitmap, inspectActivityLog, newestTransaction } from '../../src/activity-log';
import {
  DiskIO,
  Superblock,
  computeLayout,
  decodeSuperblock,
  encodeSuperblock,
  flagBits,
  inspectSuperblocks,
  layoutVersion,
  readSuperblock,
  superblockSlotOffsetBytes,
} from '../../src/metadata';
import { crc32c } from '../../src/native';
import { applyMutations, interestingU64, mutationsOf } from './mutate';
import { expectCanaryFails, fuzz, fuzzCases, fuzzTimeLimitMs, jestTimeoutMs } from './fuzz-run';

const CI_CASES = 2000;
const CI_TIME_LIMIT_MS = 8000;
/** Parsing one image, or marking up to 1000 extents in a 2 MiB bitmap: far below this. */
const CASE_TIME_MAX_MS = 1000;

const GiB = 1024 ** 3;
const TiB = 1024 * GiB;

// ---- superblocks -------------------------------------------------------------------------

const granularity = fc.integer({ min: Math.log2(limits.bitmapGranularityBytesMin), max: Math.log2(limits.bitmapGranularityBytesMax) }).map((e) => 2 ** e);
const backingSize = fc.oneof(
  fc.integer({ min: 16 * 1024 * 1024, max: 64 * GiB }),
  fc.integer({ min: 64 * GiB, max: 16 * TiB }).map((b) => b - (b % 512)),
);
const safe = fc.oneof(fc.constantFrom(0, 1, Number.MAX_SAFE_INTEGER), fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }));
/** 1 to 64 bytes of UTF-8 without NUL. */
const sbName = fc
  .string({ unit: 'grapheme', minLength: 1, maxLength: limits.superblockNameBytes })
  .filter((s) => !s.includes('\0') && Buffer.byteLength(s) >= 1 && Buffer.byteLength(s) <= limits.superblockNameBytes);
const flagsArb = fc.record(Object.fromEntries(Object.keys(flagBits).map((k) => [k, fc.boolean()]))) as fc.Arbitrary<Superblock['flags']>;

const superblockArb: fc.Arbitrary<Superblock> = fc
  .record({
    backingSizeBytes: backingSize,
    granularityBytes: granularity,
    flags: flagsArb,
    sequence: safe,
    current: interestingU64,
    bitmap: interestingU64,
    h0: interestingU64,
    h1: interestingU64,
    resource: sbName,
    node: sbName,
    createdAtMs: safe,
    primarySinceMs: safe,
  })
  .map((r) => {
    const layout = computeLayout(r.backingSizeBytes, r.granularityBytes);
    return {
      layoutVersion,
      flags: r.flags,
      sequence: r.sequence,
      dataSizeBytes: layout.dataSizeBytes,
      backingSizeBytes: layout.backingSizeBytes,
      bitmapGranularityBytes: layout.bitmapGranularityBytes,
      activityExtentBytes: layout.activityExtentBytes,
      bitmapOffsetBytes: layout.bitmapOffsetBytes,
      bitmapSizeBytes: layout.bitmapSizeBytes,
      activityLogOffsetBytes: layout.activityLogOffsetBytes,
      activityLogSizeBytes: layout.activityLogSizeBytes,
      uuids: { current: r.current, bitmap: r.bitmap, history: [r.h0, r.h1] as [bigint, bigint] },
      resource: r.resource,
      node: r.node,
      createdAtMs: r.createdAtMs,
      primarySinceMs: r.primarySinceMs,
    };
  });

/** The superblock's fields (src/metadata.ts `at`): u32s at 8 and 12, u64s from 16 to 120, primarySinceMs after the names. */
const SB_FIELDS = [
  { offset: 8, bytes: 4 as const },
  { offset: 12, bytes: 4 as const },
  ...Array.from({ length: 14 }, (_, i) => ({ offset: 16 + i * 8, bytes: 8 as const })),
  { offset: 128 + 2 * limits.superblockNameBytes, bytes: 8 as const },
];
const sbMutations = mutationsOf(SB_FIELDS);

/** Seals `image` again (crc32c of the first 4092 bytes at 4092), so that a mutation reaches the checks behind the checksum. */
function reseal(image: Buffer, blockBytes: number): Buffer {
  if (image.length !== blockBytes) return image;
  const sealed = Buffer.from(image);
  sealed.writeUInt32LE(crc32c(sealed.subarray(0, blockBytes - 4)), blockBytes - 4);
  return sealed;
}

type SbVerdict = { ok: true; superblock: Superblock } | { ok: false; error: MetadataError };

/** decodeSuperblock, with every throw that is not a MetadataError, and a case over its bound, turned into a failure. */
function decodeChecked(image: Buffer): SbVerdict {
  const started = Date.now();
  let verdict: SbVerdict;
  try {
    verdict = { ok: true, superblock: decodeSuperblock(image) };
  } catch (error) {
    if (!(error instanceof MetadataError)) throw new Error(`decodeSuperblock threw ${String(error)}, not a MetadataError`);
    verdict = { ok: false, error };
  }
  const elapsedMs = Date.now() - started;
  if (elapsedMs > CASE_TIME_MAX_MS) throw new Error(`decodeSuperblock took ${elapsedMs} ms`);
  if (verdict.ok) {
    // A superblock that decodes is one this nraid could write: it encodes to
    // an image that decodes to it, or the encoder refuses it with a MetadataError.
    let again: Buffer | null = null;
    try {
      again = encodeSuperblock(verdict.superblock);
    } catch (error) {
      if (!(error instanceof MetadataError)) throw new Error(`encodeSuperblock of a decoded superblock threw ${String(error)}`);
    }
    if (again !== null) expect(decodeSuperblock(again)).toEqual(verdict.superblock);
  }
  return verdict;
}

/** The superblock area of a device of `sizeBytes` in memory; reads elsewhere are zeros. */
class SuperblockAreaDisk implements DiskIO {
  readonly path = 'fuzz-disk';
  constructor(
    readonly sizeBytes: number,
    private readonly slots: [Buffer, Buffer],
  ) {}
  read(offsetBytes: number, lengthBytes: number): Buffer {
    const out = Buffer.alloc(lengthBytes);
    for (let slot = 0; slot < 2; slot++) {
      const at = superblockSlotOffsetBytes(this.sizeBytes, slot) - offsetBytes;
      if (at >= 0 && at < lengthBytes) this.slots[slot].copy(out, at);
    }
    return out;
  }
  write(): void {
    throw new Error('the fuzz disk is read-only');
  }
  flush(): void {}
}

// ---- activity log --------------------------------------------------------------------------

const AL_CRC_AT = limits.activityTransactionBytes - 4;

/** One transaction as native/activity_log.cc writes it (docs/CONTRACTS.md, "Activity-log transaction"). */
function encodeTransaction(t: { sequence: bigint; extents: number[]; extentUnits: number }): Buffer {
  const b = Buffer.alloc(limits.activityTransactionBytes);
  b.writeUInt32LE(ACTIVITY_MAGIC, 0);
  b.writeUInt32LE(1, 4);
  b.writeBigUInt64LE(t.sequence, 8);
  b.writeUInt32LE(t.extents.length, 16);
  b.writeUInt32LE(t.extentUnits, 20);
  t.extents.forEach((e, i) => b.writeUInt32LE(e, limits.activityHeaderBytes + i * 4));
  b.writeUInt32LE(crc32c(b.subarray(0, AL_CRC_AT)), AL_CRC_AT);
  return b;
}

/** The transaction header: version, sequence, count, extent units, reserved; and the first extent numbers. */
const AL_FIELDS = [
  { offset: 4, bytes: 4 as const },
  { offset: 8, bytes: 8 as const },
  { offset: 16, bytes: 4 as const },
  { offset: 20, bytes: 4 as const },
  { offset: 24, bytes: 8 as const },
  { offset: 32, bytes: 4 as const },
  { offset: 36, bytes: 4 as const },
];
const alMutations = mutationsOf(AL_FIELDS);

const EXTENT_UNITS = limits.activityExtentBytes / limits.blockBytes;
/** A small log (8 slots) keeps each case fast; the parser does not care how many slots there are. */
const AL_SLOTS = 8;
/** The bitmap the extents are marked in: a 64 GiB device at 32 KiB granularity (256 KiB of words). */
const AL_DATA_BYTES = 64 * GiB;
const AL_GRANULARITY_BYTES = 32 * 1024;
const AL_WORDS_BYTES = Math.ceil(AL_DATA_BYTES / AL_GRANULARITY_BYTES / 8);

const transactionArb = fc.record({
  sequence: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
  extents: fc.array(fc.integer({ min: 0, max: AL_DATA_BYTES / limits.activityExtentBytes - 1 }), { maxLength: 40 }),
  extentUnits: fc.constant(EXTENT_UNITS),
});

const logArb = fc.array(fc.option(transactionArb, { freq: 3 }), { minLength: AL_SLOTS, maxLength: AL_SLOTS });

function logImage(slots: ReadonlyArray<Parameters<typeof encodeTransaction>[0] | null>): Buffer {
  return Buffer.concat(slots.map((t) => (t === null ? Buffer.alloc(limits.activityTransactionBytes) : encodeTransaction(t))));
}

/** What recover() does with the log after a Primary's crash, timed. Throws on a non-Nraid error or over the bound. */
function recoverChecked(area: Buffer): ActivityTransaction | null {
  const started = Date.now();
  let transaction: ActivityTransaction | null;
  try {
    transaction = newestTransaction(area);
    // What recovery reads: every record blank, valid or damaged (with a reason), and the newest valid one.
    const inspection = inspectActivityLog(area, { extentBytes: limits.activityExtentBytes, extents: AL_DATA_BYTES / limits.activityExtentBytes });
    const records = Math.floor(area.length / limits.activityTransactionBytes);
    expect(inspection.blankRecords + inspection.validRecords + inspection.damaged.length).toBe(records);
    for (const d of inspection.damaged) expect(d.problem.length).toBeGreaterThan(0);
    if (inspection.newest !== null) {
      expect(inspection.newest.extentBytes).toBe(limits.activityExtentBytes);
      for (const e of inspection.newest.extents) expect(e).toBeLessThan(AL_DATA_BYTES / limits.activityExtentBytes);
      extentsToBitmap(inspection.newest.extents, inspection.newest.extentBytes, AL_GRANULARITY_BYTES, AL_DATA_BYTES, AL_WORDS_BYTES);
    }
    if (transaction !== null) {
      expect(transaction.extents.length).toBeLessThanOrEqual((AL_CRC_AT - limits.activityHeaderBytes) / 4);
      const words = extentsToBitmap(transaction.extents, transaction.extentBytes || limits.activityExtentBytes, AL_GRANULARITY_BYTES, AL_DATA_BYTES, AL_WORDS_BYTES);
      expect(words.length).toBe(AL_WORDS_BYTES);
    }
  } catch (error) {
    if (error instanceof NraidError) return null;
    throw error;
  }
  const elapsedMs = Date.now() - started;
  if (elapsedMs > CASE_TIME_MAX_MS) throw new Error(`reading the activity log and marking its extents took ${elapsedMs} ms (bound ${CASE_TIME_MAX_MS} ms)`);
  return transaction;
}

// ---- the properties ----------------------------------------------------------------------------

describe('fuzz: superblock and activity-log parsers', () => {
  const cases = fuzzCases(CI_CASES);
  const timeLimitMs = fuzzTimeLimitMs(CI_TIME_LIMIT_MS);

  test(
    'a valid superblock round-trips exactly',
    async () => {
      await fuzz(
        'superblock: round trip',
        fc.property(superblockArb, (sb) => {
          expect(decodeChecked(encodeSuperblock(sb))).toEqual({ ok: true, superblock: sb });
        }),
        { cases: Math.ceil(cases / 4), timeLimitMs: timeLimitMs / 6 },
      );
    },
    jestTimeoutMs(CI_TIME_LIMIT_MS),
  );

  test(
    'a mutated superblock (checksum broken or sealed again) decodes to a Superblock or a MetadataError',
    async () => {
      await fuzz(
        'superblock: mutated',
        fc.property(superblockArb, sbMutations, fc.boolean(), (sb, list, sealAgain) => {
          const image = applyMutations(encodeSuperblock(sb), list);
          decodeChecked(sealAgain ? reseal(image, limits.superblockSlotBytes) : image);
        }),
        { cases, timeLimitMs: timeLimitMs / 3 },
      );
    },
    jestTimeoutMs(CI_TIME_LIMIT_MS),
  );

  test(
    'both slots of a disk, either mutated: the newest valid superblock or a MetadataError',
    async () => {
      await fuzz(
        'superblock: two slots',
        fc.property(superblockArb, fc.nat(5), fc.option(sbMutations), fc.option(sbMutations), fc.boolean(), (sb, older, m0, m1, sealAgain) => {
          const mutate = (image: Buffer, list: typeof m0) => {
            if (list === null) return image;
            const mutated = applyMutations(image, list);
            return sealAgain ? reseal(mutated, limits.superblockSlotBytes) : mutated;
          };
          const slot0 = mutate(encodeSuperblock(sb), m0);
          const slot1 = mutate(encodeSuperblock({ ...sb, sequence: Math.max(0, sb.sequence - older) }), m1);
          const disk = new SuperblockAreaDisk(sb.backingSizeBytes, [slot0, slot1]);
          try {
            const states = inspectSuperblocks(disk);
            const found = readSuperblock(disk);
            const valid = states.filter((s) => s.superblock !== null).map((s) => s.superblock!.sequence);
            expect(found.sequence).toBe(Math.max(...valid));
            // An intact slot is never passed over for an older one (a sealed mutation may well look newer).
            if (m0 === null) expect(found.sequence).toBeGreaterThanOrEqual(sb.sequence);
          } catch (error) {
            if (!(error instanceof MetadataError)) throw new Error(`reading two slots threw ${String(error)}, not a MetadataError`);
            expect(m0 !== null && m1 !== null).toBe(true);
          }
        }),
        { cases: Math.ceil(cases / 4), timeLimitMs: timeLimitMs / 6 },
      );
    },
    jestTimeoutMs(CI_TIME_LIMIT_MS),
  );

  test(
    'a valid activity log gives its newest transaction',
    async () => {
      await fuzz(
        'activity log: round trip',
        fc.property(logArb, (slots) => {
          const found = recoverChecked(logImage(slots));
          const written = slots.filter((t) => t !== null);
          if (written.length === 0) return expect(found).toBeNull();
          const maxSeq = written.reduce((m, t) => (t!.sequence > m ? t!.sequence : m), -1n);
          expect(found?.sequence).toBe(maxSeq);
          // The first slot holding that sequence wins a tie.
          const first = written.find((t) => t!.sequence === maxSeq)!;
          expect(found).toEqual({ sequence: maxSeq, extentBytes: limits.activityExtentBytes, extents: first.extents });
        }),
        { cases: Math.ceil(cases / 4), timeLimitMs: timeLimitMs / 6 },
      );
    },
    jestTimeoutMs(CI_TIME_LIMIT_MS),
  );

  test(
    'a mutated activity log (checksums broken or sealed again): a transaction or null, in bounded time',
    async () => {
      await fuzz(
        'activity log: mutated',
        fc.property(logArb, fc.nat(AL_SLOTS - 1), alMutations, fc.boolean(), (slots, slot, list, sealAgain) => {
          const area = logImage(slots);
          const at = slot * limits.activityTransactionBytes;
          const mutated = applyMutations(area.subarray(at, at + limits.activityTransactionBytes), list);
          const fixed = sealAgain ? reseal(mutated, limits.activityTransactionBytes) : mutated;
          recoverChecked(Buffer.concat([area.subarray(0, at), fixed, area.subarray(at + limits.activityTransactionBytes)]));
        }),
        { cases, timeLimitMs: timeLimitMs / 6 },
      );
    },
    jestTimeoutMs(CI_TIME_LIMIT_MS),
  );

  test('canaries: "every mutated superblock decodes" and "every mutated log yields a transaction" fail', async () => {
    const [sb, list] = await expectCanaryFails(
      'superblock',
      fc.property(superblockArb, sbMutations, (s, l) => decodeChecked(applyMutations(encodeSuperblock(s), l)).ok),
      500,
    );
    expect(decodeChecked(applyMutations(encodeSuperblock(sb), list)).ok).toBe(false);
    await expectCanaryFails(
      'activity log',
      fc.property(transactionArb, alMutations, (t, l) => recoverChecked(applyMutations(encodeTransaction(t), l)) !== null),
      500,
    );
  });
});

describe('regressions found by the activity-log fuzz target', () => {
  /** The marking as it was (one bit at a time, `>> 3`), for small bitmaps: the new one must agree with it there. */
  function extentsToBitmapBefore(extents: readonly number[], extentBytes: number, granularityBytes: number, dataSizeBytes: number, wordsBytes: number): Buffer {
    const words = Buffer.alloc(wordsBytes);
    const bits = Math.ceil(dataSizeBytes / granularityBytes);
    for (const extent of extents) {
      const first = Math.floor((extent * extentBytes) / granularityBytes);
      const last = Math.min(bits, Math.floor(((extent + 1) * extentBytes) / granularityBytes)) - 1;
      for (let bit = first; bit <= last; bit++) words[bit >> 3] |= 1 << (bit & 7);
    }
    return words;
  }

  // Regression: a checksummed transaction whose extent-size field is huge
  // (0xffffffff blocks) made every extent cover the whole bitmap, and
  // extentsToBitmap set it one bit at a time per extent: 1000 extents on a
  // 64 GiB device took ~3 s, on a multi-TiB device minutes to hours, with the
  // daemon's event loop blocked in recover() before anything was served.
  test('1000 extents of a huge extent size are marked in bounded time', () => {
    const started = Date.now();
    const words = extentsToBitmap(new Array(1000).fill(0), 0xffffffff * limits.blockBytes, 4096, TiB, TiB / 4096 / 8);
    expect(Date.now() - started).toBeLessThan(CASE_TIME_MAX_MS);
    expect(words.every((b) => b === 0xff)).toBe(true);
  });

  // Regression: bit numbers past 2^31 (a bitmap of more than 256 MiB: more
  // than 8 TiB of data at 4 KiB granularity) went through `bit >> 3`, which
  // turned them negative: the extents of a crashed Primary beyond 8 TiB were
  // silently not marked out of sync, so they were never resynced.
  test('an extent past 8 TiB of data is marked (bit numbers above 2^31)', () => {
    const dataSizeBytes = 8 * TiB + 64 * 1024 * 1024;
    const wordsBytes = Math.ceil(dataSizeBytes / 4096 / 8);
    const extent = 8 * TiB / limits.activityExtentBytes + 3; // 12 MiB past 8 TiB
    const words = extentsToBitmap([extent], limits.activityExtentBytes, 4096, dataSizeBytes, wordsBytes);
    const firstByte = (extent * limits.activityExtentBytes) / 4096 / 8;
    const extentBytesInBitmap = limits.activityExtentBytes / 4096 / 8;
    expect(words.subarray(firstByte, firstByte + extentBytesInBitmap).every((b) => b === 0xff)).toBe(true);
    expect(words[firstByte - 1]).toBe(0);
    expect(words[firstByte + extentBytesInBitmap]).toBe(0);
  });

  test('on bitmaps below 2^31 bits the marking is what it was, for any extents, extent size and granularity', () => {
    fc.assert(
      fc.property(
        fc.array(fc.nat(300), { maxLength: 20 }),
        fc.integer({ min: 1, max: 2048 }).map((units) => units * limits.blockBytes),
        fc.integer({ min: 12, max: 20 }).map((e) => 2 ** e),
        fc.integer({ min: 1, max: 1 << 30 }),
        (extents, extentBytes, granularityBytes, dataSizeBytes) => {
          const wordsBytes = Math.ceil(Math.ceil(dataSizeBytes / granularityBytes) / 64) * 8;
          const now = extentsToBitmap(extents, extentBytes, granularityBytes, dataSizeBytes, wordsBytes);
          expect(now.equals(extentsToBitmapBefore(extents, extentBytes, granularityBytes, dataSizeBytes, wordsBytes))).toBe(true);
        },
      ),
      { numRuns: 300 },
    );
  });
});
