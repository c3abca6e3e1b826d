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
