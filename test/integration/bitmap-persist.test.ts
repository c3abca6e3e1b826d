/**
 * The on-disk bitmap's write-back (binding.bitmapPersist), on a real sparse
 * file through the data plane's own disk handle: the first call writes every
 * block, later calls only the blocks that changed, and what is on disk is
 * always the in-memory bitmap, byte for byte.
 */
import * as fs from 'fs';
import { computeLayout } from '../../src/metadata';
import { binding, DiskHandle, PipelineHandle } from '../../src/native';
import { makeSparseFile, SparseFile } from '../harness/loop';
import { pipelineOptions } from '../harness/pipeline';
import { describeIntegration } from '../harness/prereq';

const KiB = 1024;
const MiB = 1024 * KiB;
const FILE_BYTES = 256 * MiB;
const GRANULARITY_BYTES = 4 * KiB;
const BLOCK_BYTES = 4 * KiB;

describeIntegration('bitmap write-back: only changed blocks, always the in-memory bitmap', ['nraid-cli'], () => {
  const layout = computeLayout(FILE_BYTES, GRANULARITY_BYTES);
  let file: SparseFile;
  let disk: DiskHandle;
  let pipeline: PipelineHandle;

  const onDisk = (): Buffer => {
    const words = binding.bitmapGet(pipeline);
    const out = Buffer.alloc(words.length);
    const fd = fs.openSync(file.file, 'r');
    try {
      fs.readSync(fd, out, 0, out.length, layout.bitmapOffsetBytes);
    } finally {
      fs.closeSync(fd);
    }
    return out;
  };

  /** A bitmap with the given bits set (bit i: bytes [i * granularity, +granularity)). */
  const withBits = (bits: number[]): Buffer => {
    const words = Buffer.alloc(binding.bitmapGet(pipeline).length);
    for (const bit of bits) words[bit >> 3] |= 1 << (bit & 7);
    return words;
  };

  beforeAll(async () => {
    file = await makeSparseFile(FILE_BYTES, 'bmpersist');
    // Garbage where the bitmap goes: the first write-back must replace all of it.
    const fd = fs.openSync(file.file, 'r+');
    try {
      fs.writeSync(fd, Buffer.alloc(64 * KiB, 0xa5), 0, 64 * KiB, layout.bitmapOffsetBytes);
    } finally {
      fs.closeSync(fd);
    }
    disk = binding.diskOpen(file.file, false);
    pipeline = binding.pipelineCreate(disk, pipelineOptions(layout));
  });

  afterAll(async () => {
    if (pipeline) binding.pipelineDestroy(pipeline);
    if (disk) binding.diskClose(disk);
    await file?.remove();
  });

  test('first every block, then nothing while unchanged, then exactly the changed blocks', async () => {
    const bitmapBytes = binding.bitmapGet(pipeline).length;
    const blocks = Math.ceil(bitmapBytes / BLOCK_BYTES);
    expect(blocks).toBeGreaterThan(1); // the case needs several blocks

    binding.bitmapSet(pipeline, 'replace', withBits([0, 5]));
    expect(await binding.bitmapPersist(pipeline, false)).toBe(blocks * BLOCK_BYTES);
    expect(onDisk().equals(binding.bitmapGet(pipeline))).toBe(true);

    expect(await binding.bitmapPersist(pipeline, true)).toBe(0);

    // One bit in the last block: one block written.
    const lastBlockBit = (blocks - 1) * BLOCK_BYTES * 8 + 3;
    binding.bitmapSet(pipeline, 'merge', withBits([lastBlockBit]));
    expect(await binding.bitmapPersist(pipeline, false)).toBe(BLOCK_BYTES);
    expect(onDisk().equals(binding.bitmapGet(pipeline))).toBe(true);

    // Cleared bits count as changes too (a resync clears them): the first block again.
    binding.bitmapSet(pipeline, 'replace', withBits([lastBlockBit]));
    expect(await binding.bitmapPersist(pipeline, true)).toBe(BLOCK_BYTES);
    const persisted = onDisk();
    expect(persisted.equals(binding.bitmapGet(pipeline))).toBe(true);
    expect(persisted[0]).toBe(0);
  });
});

/**
 * The bitmap's range API (issue 12's memory target: no whole copy of the
 * bitmap, 32 MiB per TiB, in JS): words read and written at an offset, ranges
 * of data marked, the on-disk bitmap loaded in chunks, and the bitmap's own
 * memory resident only where bits were set.
 */
describeIntegration('bitmap ranges: read, merge, replace and load a part at a time', ['nraid-cli'], () => {
  const layout = computeLayout(FILE_BYTES, GRANULARITY_BYTES);
  let file: SparseFile;
  let disk: DiskHandle;
  let pipeline: PipelineHandle;

  beforeAll(async () => {
    file = await makeSparseFile(FILE_BYTES, 'bmrange');
    disk = binding.diskOpen(file.file, false);
    pipeline = binding.pipelineCreate(disk, pipelineOptions(layout));
  });

  afterAll(async () => {
    if (pipeline) binding.pipelineDestroy(pipeline);
    if (disk) binding.diskClose(disk);
    await file?.remove();
  });

  const patterned = (bytes: number, seed: number): Buffer => {
    const out = Buffer.alloc(bytes);
    for (let i = 0; i < bytes; i++) out[i] = (i * 131 + seed * 17) & 0xff;
    return out;
  };

  test('get, replace and merge at an offset touch exactly those words; clear and range do what they say', () => {
    const size = binding.bitmapSizeBytes(pipeline);
    expect(size).toBe(binding.bitmapGet(pipeline).length);
    expect(size).toBe(Math.ceil(layout.dataSizeBytes / GRANULARITY_BYTES / 64) * 8);
    binding.bitmapSet(pipeline, 'clear');
    const model = Buffer.alloc(size);

    expect(size).toBeGreaterThan(6 * KiB);
    const a = patterned(4 * KiB + 8, 1);
    binding.bitmapSet(pipeline, 'replace', a, 2 * KiB);
    a.copy(model, 2 * KiB);
    expect(binding.bitmapGet(pipeline).equals(model)).toBe(true);
    expect(binding.bitmapGet(pipeline, 2 * KiB, a.length).equals(a)).toBe(true);

    const b = patterned(64, 2);
    binding.bitmapSet(pipeline, 'merge', b, 2 * KiB + 32);
    for (let i = 0; i < b.length; i++) model[2 * KiB + 32 + i] |= b[i];
    expect(binding.bitmapGet(pipeline).equals(model)).toBe(true);

    // Into a caller's buffer: the words at its start, the rest left alone.
    const into = Buffer.alloc(128, 0xee);
    expect(binding.bitmapGet(pipeline, 2 * KiB, 64, into)).toBe(into);
    expect(into.subarray(0, 64).equals(model.subarray(2 * KiB, 2 * KiB + 64))).toBe(true);
    expect(into.subarray(64).every((x) => x === 0xee)).toBe(true);

    // range: the bits of data bytes [5 * granule + 1, 9 * granule) are bits 5..8.
    binding.bitmapSet(pipeline, 'clear');
    expect(binding.bitmapGet(pipeline).every((x) => x === 0)).toBe(true);
    binding.bitmapSet(pipeline, 'range', 5 * GRANULARITY_BYTES + 1, 4 * GRANULARITY_BYTES - 1);
    const words = binding.bitmapGet(pipeline, 0, 8);
    expect(words.readBigUInt64LE(0)).toBe(0b1_1110_0000n);
    expect(binding.pipelineCounters(pipeline).outOfSyncBytes).toBe(4 * GRANULARITY_BYTES);
  });

  test('bits past the end of the data are never set, through merge, replace or range', () => {
    const size = binding.bitmapSizeBytes(pipeline);
    const bits = Math.ceil(layout.dataSizeBytes / GRANULARITY_BYTES);
    binding.bitmapSet(pipeline, 'clear');
    binding.bitmapSet(pipeline, 'merge', Buffer.alloc(8, 0xff), size - 8);
    const tailBits = bits % 64 === 0 ? 64 : bits % 64;
    const expected = tailBits === 64 ? 0xffffffffffffffffn : (1n << BigInt(tailBits)) - 1n;
    expect(binding.bitmapGet(pipeline, size - 8, 8).readBigUInt64LE(0)).toBe(expected);
    binding.bitmapSet(pipeline, 'replace', Buffer.alloc(8, 0xff), size - 8);
    expect(binding.bitmapGet(pipeline, size - 8, 8).readBigUInt64LE(0)).toBe(expected);
    expect(binding.pipelineCounters(pipeline).outOfSyncBytes).toBe(Math.min(tailBits * GRANULARITY_BYTES, layout.dataSizeBytes));
  });

  test('bad ranges are refused with a RangeError and change nothing', () => {
    binding.bitmapSet(pipeline, 'clear');
    binding.bitmapSet(pipeline, 'range', 0, GRANULARITY_BYTES);
    const before = binding.bitmapGet(pipeline);
    const size = before.length;
    expect(() => binding.bitmapGet(pipeline, 4, 8)).toThrow(/whole words within the bitmap's/);
    expect(() => binding.bitmapGet(pipeline, size, 8)).toThrow(/found offset \d+ and length 8/);
    expect(() => binding.bitmapSet(pipeline, 'merge', Buffer.alloc(16, 0xff), size - 8)).toThrow(/within the bitmap's/);
    expect(() => binding.bitmapSet(pipeline, 'replace', Buffer.alloc(12), 0)).toThrow(/whole words within the bitmap's/);
    expect(() => binding.bitmapSet(pipeline, 'replace', Buffer.alloc(size - 8))).toThrow(/expected \d+ bytes within/);
    expect(() => binding.bitmapSet(pipeline, 'range', layout.dataSizeBytes, 1)).toThrow(/within the \d+ data bytes/);
    expect(() => binding.bitmapGet(pipeline, 0, 64, Buffer.alloc(8))).toThrow(/room for 64 bytes/);
    expect(() => binding.bitmapLoad(pipeline, disk, FILE_BYTES)).toThrow(/past the end/);
    expect(binding.bitmapGet(pipeline).equals(before)).toBe(true);
  });

  test('bitmapLoad reads the on-disk bitmap (a real file) in chunks: the in-memory bitmap is what the disk holds, and write-back then has nothing to write', async () => {
    const size = binding.bitmapSizeBytes(pipeline);
    binding.bitmapSet(pipeline, 'clear');
    await binding.bitmapPersist(pipeline, true); // zeros on disk, and none of the bitmap's blocks left to write
    const onDisk = patterned(size, 7);
    const fd = fs.openSync(file.file, 'r+');
    try {
      fs.writeSync(fd, onDisk, 0, onDisk.length, layout.bitmapOffsetBytes);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    binding.bitmapLoad(pipeline, disk, layout.bitmapOffsetBytes);
    const bits = Math.ceil(layout.dataSizeBytes / GRANULARITY_BYTES);
    const expected = Buffer.from(onDisk);
    if (bits % 64 !== 0) expected.writeBigUInt64LE(expected.readBigUInt64LE(size - 8) & ((1n << BigInt(bits % 64)) - 1n), size - 8);
    expect(binding.bitmapGet(pipeline).equals(expected)).toBe(true);
    // Every block changed from the zeros written: all written back, then nothing more.
    expect(await binding.bitmapPersist(pipeline, true)).toBe(Math.ceil(size / BLOCK_BYTES) * BLOCK_BYTES);
    expect(await binding.bitmapPersist(pipeline, true)).toBe(0);
    // Loading the same again changes no word: nothing to write back.
    binding.bitmapLoad(pipeline, disk, layout.bitmapOffsetBytes);
    expect(await binding.bitmapPersist(pipeline, true)).toBe(0);
  });
});

describeIntegration('bitmap memory: a 1 TiB device costs no resident bitmap until bits are set', ['nraid-cli'], () => {
  const TiB = 1024 * 1024 * MiB;
  const layout = computeLayout(TiB, GRANULARITY_BYTES);
  let file: SparseFile;
  let disk: DiskHandle;
  let pipeline: PipelineHandle | undefined;

  const rssBytes = (): number => Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'))![1]) * KiB;

  beforeAll(async () => {
    file = await makeSparseFile(TiB, 'bmtib');
    disk = binding.diskOpen(file.file, false);
  });

  afterAll(async () => {
    if (pipeline) binding.pipelineDestroy(pipeline);
    if (disk) binding.diskClose(disk);
    await file?.remove();
  });

  test('creating the data plane adds well under the 32 MiB bitmap; setting every bit makes it resident (the canary)', () => {
    const bitmapBytes = Math.ceil(layout.dataSizeBytes / GRANULARITY_BYTES / 8);
    expect(bitmapBytes).toBeGreaterThan(31 * MiB);
    const before = rssBytes();
    pipeline = binding.pipelineCreate(disk, pipelineOptions(layout));
    expect(binding.pipelineCounters(pipeline).outOfSyncBytes).toBe(0); // reads every word: still not resident
    const created = rssBytes();
    expect(created - before).toBeLessThan(8 * MiB);
    binding.bitmapSet(pipeline, 'all');
    const marked = rssBytes();
    expect(marked - created).toBeGreaterThan(bitmapBytes * 0.9);
    console.log(`1 TiB data plane: +${((created - before) / MiB).toFixed(1)} MiB created, +${((marked - created) / MiB).toFixed(1)} MiB with every bit set`);
  });
});
