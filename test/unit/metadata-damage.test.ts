/**
 * Metadata damage (issue 10, item 5), the pure decisions: how a slot is
 * classified (blank, torn, damaged), which slot a node starts from and how
 * far it may trust it, which changes must survive a lost slot, what the
 * activity log means, and dump-md/restore-md on a real sparse file.
 *
 * Regression: a corrupt newest superblock slot was skipped silently and the
 * node came up from the older slot, e.g. UpToDate after an Inconsistent write.
 */
import fc from 'fast-check';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ACTIVITY_LAYOUT_VERSION, ACTIVITY_MAGIC, inspectActivityLog } from '../../src/activity-log';
import { parseArgs, usage } from '../../src/cli/args';
import { DiskHasDataError, MetadataError, UsageError } from '../../src/errors';
import * as limits from '../../src/limits';
import { classifySlot, createMetadata, diskStateOf, encodeSuperblock, inspectSuperblocks, superblockSlotOffsetBytes, type DiskIO, type Superblock } from '../../src/metadata';
import { bitmapFromRanges, dumpMetadata, parseDump, restoreMetadata, setBitRanges } from '../../src/metadata-dump';
import { crc32c } from '../../src/native';
import { applyChange, mustSurviveLostSlot, type MetadataChange } from '../../src/resource/metadata-change';
import { decideActivityLog, decideOpen, superblockReport } from '../../src/resource/metadata-damage';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const SECTOR = 512;

class FileDisk implements DiskIO {
  private readonly fd: number;
  constructor(readonly path: string, readonly sizeBytes: number) {
    this.fd = fs.openSync(path, 'r+');
  }
  read(offsetBytes: number, lengthBytes: number): Buffer {
    const buf = Buffer.alloc(lengthBytes);
    fs.readSync(this.fd, buf, 0, lengthBytes, offsetBytes);
    return buf;
  }
  write(offsetBytes: number, data: Buffer): void {
    if (offsetBytes % limits.blockBytes !== 0 || data.length % limits.blockBytes !== 0) throw new MetadataError(`unaligned write at ${offsetBytes}+${data.length}`);
    fs.writeSync(this.fd, data, 0, data.length, offsetBytes);
  }
  flush(): void {
    fs.fsyncSync(this.fd);
  }
  close(): void {
    fs.closeSync(this.fd);
  }
}

// Made here, not in beforeAll: describe bodies make their disks when the file loads.
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nraid-md-damage-'));
const disks: FileDisk[] = [];
afterAll(() => {
  for (const disk of disks) disk.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

function sparseDisk(sizeBytes = SIZE): FileDisk {
  const file = path.join(dir, `disk-${disks.length}.img`);
  fs.writeFileSync(file, '');
  fs.truncateSync(file, sizeBytes);
  const disk = new FileDisk(file, sizeBytes);
  disks.push(disk);
  return disk;
}

/** A created disk's superblock, with `edit` applied. */
function superblockOf(disk: FileDisk, edit: Partial<Superblock> = {}): Superblock {
  const sb = createMetadata(disk, { resource: 'r0', node: 'alpha', force: true });
  return { ...sb, ...edit };
}

const upToDate = { consistent: true, wasUpToDate: true, wasPrimary: false, crashedPrimary: false, resyncInProgress: false, peerOutdated: false, fullSyncNeeded: false, outdated: false };

function flipBit(image: Buffer, byte: number, bit = 0): Buffer {
  const copy = Buffer.from(image);
  copy[byte] ^= 1 << bit;
  return copy;
}

/** `fromNew` sectors taken from `newer`, the rest from `older`: a write torn at sector boundaries. */
function tear(newer: Buffer, older: Buffer, fromNew: number[]): Buffer {
  const out = Buffer.from(older);
  for (const sector of fromNew) newer.copy(out, sector * SECTOR, sector * SECTOR, (sector + 1) * SECTOR);
  return out;
}

describe('a superblock slot is valid, blank, torn or damaged', () => {
  const disk = sparseDisk();
  const sb = superblockOf(disk, { flags: upToDate, sequence: 7 });
  const image = encodeSuperblock(sb);
  const classify = (buf: Buffer) => classifySlot(buf, 1, 0, SIZE);

  test('a written slot is valid; all zeros is blank, not damage', () => {
    expect(classify(image).condition).toBe('valid');
    expect(classify(image).superblock?.sequence).toBe(7);
    const blank = classify(Buffer.alloc(limits.superblockSlotBytes));
    expect(blank.condition).toBe('blank');
    expect(blank.superblock).toBeNull();
  });

  test('a bit flip after a complete write is damage (every sector carries the same write stamp)', () => {
    for (const byte of [12, 40, 130, 1000, 4000, 4093]) {
      const slot = classify(flipBit(image, byte));
      expect(slot.condition).toBe('damaged');
      expect(slot.problem).toMatch(/bad checksum/);
    }
  });

  test('bad magic, impossible layout and a resized device are damage', () => {
    expect(classify(flipBit(image, 0)).problem).toBe('no magic');
    const badLayout = classify(encodeSuperblock({ ...sb, dataSizeBytes: sb.dataSizeBytes - limits.blockBytes }));
    expect(badLayout.condition).toBe('damaged');
    expect(badLayout.problem).toMatch(/dataSizeBytes .* disagrees/);
    const resized = classifySlot(image, 0, 0, SIZE * 2);
    expect(resized.condition).toBe('damaged');
    expect(resized.problem).toMatch(/was it resized/);
  });

  test('a write torn at sector boundaries is told apart: two stamps, one or two writes apart', () => {
    const older = encodeSuperblock({ ...sb, sequence: 5, flags: { ...upToDate, wasPrimary: true } });
    for (const fromNew of [[0], [0, 1, 2], [1, 2, 3, 4, 5, 6, 7], [7]]) {
      const slot = classify(tear(image, older, fromNew));
      expect(slot.condition).toBe('torn');
      expect(slot.problem).toMatch(/torn write/);
    }
    // Stamps far apart are no torn write of this slot: damage.
    const ancient = encodeSuperblock({ ...sb, sequence: 1 });
    expect(classify(tear(image, ancient, [0, 1])).condition).toBe('damaged');
  });
});

describe('which slot a node starts from, and how far it trusts it', () => {
  const disk = sparseDisk();
  const base = superblockOf(disk);
  const slotOf = (slot: number, sb: Superblock | null, condition: 'valid' | 'blank' | 'damaged' | 'torn' = 'valid') => {
    const image = sb === null ? Buffer.alloc(limits.superblockSlotBytes) : encodeSuperblock(sb);
    const state = classifySlot(condition === 'damaged' || condition === 'torn' ? flipBit(image, 200) : image, slot, 0, SIZE);
    expect(state.condition).toBe(condition === 'torn' ? 'damaged' : condition);
    return state;
  };

  test('both valid: the newest, nothing lost', () => {
    const d = decideOpen([slotOf(0, { ...base, sequence: 4 }), slotOf(1, { ...base, sequence: 5, flags: upToDate })])!;
    expect(d.chosen.slot).toBe(1);
    expect(d.lost).toBeNull();
    expect(d.downgrade).toBe(false);
    expect(superblockReport(d)).toBeNull();
  });

  test('the other slot blank: nraid never leaves one, so it was zeroed and may have held the newest write', () => {
    const d = decideOpen([slotOf(0, { ...base, sequence: 4, flags: upToDate }), slotOf(1, null, 'blank')])!;
    expect(d.lost?.slot).toBe(1);
    expect(d.downgrade).toBe(true);
    expect(superblockReport(d)).toMatchObject({ slot: 1, condition: 'zeroed' });
  });

  test('an UpToDate slot next to a damaged one comes up Outdated: the lost write may have been a downgrade', () => {
    const d = decideOpen([slotOf(0, { ...base, sequence: 4, flags: upToDate }), slotOf(1, { ...base, sequence: 5 }, 'damaged')])!;
    expect(d.chosen.slot).toBe(0);
    expect(d.lost?.slot).toBe(1);
    expect(d.downgrade).toBe(true);
    expect(d.replayActivityLog).toBe(true);
    const after = applyChange(d.chosen.superblock, { kind: 'damage-noted' });
    expect(diskStateOf(after)).toBe('Outdated');
    const report = superblockReport(d)!;
    expect(report).toMatchObject({ area: 'superblock', slot: 1, condition: 'damaged' });
    expect(report.action).toMatch(/Outdated/);
  });

  test('an Inconsistent slot stays Inconsistent (no better, no worse); a Consistent one becomes Outdated', () => {
    const inconsistent = decideOpen([slotOf(0, { ...base, sequence: 5 }, 'damaged'), slotOf(1, { ...base, sequence: 4 })])!;
    expect(inconsistent.downgrade).toBe(false);
    expect(inconsistent.lost?.slot).toBe(0);
    expect(diskStateOf(applyChange(base, { kind: 'damage-noted' }))).toBe('Inconsistent');
    const consistent = { ...upToDate, wasUpToDate: false };
    expect(decideOpen([slotOf(0, { ...base, flags: consistent }), slotOf(1, base, 'damaged')])!.downgrade).toBe(true);
    expect(diskStateOf(applyChange({ ...base, flags: consistent }, { kind: 'damage-noted' }))).toBe('Outdated');
  });

  test('no valid slot: no decision (the store refuses to start)', () => {
    expect(decideOpen([slotOf(0, base, 'damaged'), slotOf(1, null, 'blank')])).toBeNull();
  });
});

describe('changes a lost slot must never undo are written to both slots', () => {
  const cases: Array<[MetadataChange, boolean]> = [
    [{ kind: 'target-begins' }, true],
    [{ kind: 'target-joins', current: 9n, history: [0n, 0n] }, true],
    [{ kind: 'invalidated' }, true],
    [{ kind: 'forced-promotion', fresh: 9n }, true],
    [{ kind: 'generation-written', fresh: 9n }, true],
    [{ kind: 'damage-noted' }, true],
    [{ kind: 'target-done', current: 9n, history: [0n, 0n] }, false],
    [{ kind: 'became-primary', atMs: 1 }, false],
    [{ kind: 'became-secondary' }, false],
    [{ kind: 'source-done' }, false],
    [{ kind: 'crash-noted' }, false],
  ];
  test.each(cases)('%o: both slots %s', (change, both) => {
    expect(mustSurviveLostSlot(change)).toBe(both);
  });
});

/** One activity-log record as native/activity_log.cc writes it. */
function alRecord(sequence: number, extents: number[], extentUnits = limits.activityExtentBytes / limits.blockBytes): Buffer {
  const rec = Buffer.alloc(limits.activityTransactionBytes);
  rec.writeUInt32LE(ACTIVITY_MAGIC, 0);
  rec.writeUInt32LE(ACTIVITY_LAYOUT_VERSION, 4);
  rec.writeBigUInt64LE(BigInt(sequence), 8);
  rec.writeUInt32LE(extents.length, 16);
  rec.writeUInt32LE(extentUnits, 20);
  extents.forEach((e, i) => rec.writeUInt32LE(e, limits.activityHeaderBytes + i * 4));
  rec.writeUInt32LE(crc32c(rec.subarray(0, rec.length - 4)), rec.length - 4);
  return rec;
}

describe('activity-log damage', () => {
  const shape = { extentBytes: limits.activityExtentBytes, extents: 16 };
  const ring = (records: Buffer[]) => Buffer.concat([...records, Buffer.alloc((8 - records.length) * limits.activityTransactionBytes)]);

  test('valid, blank and damaged records are counted; the newest valid one is found', () => {
    const area = ring([alRecord(1, [0]), alRecord(2, [0, 3]), flipBit(alRecord(3, [5]), 40), alRecord(4, [99]), alRecord(5, [1], 7)]);
    const inspection = inspectActivityLog(area, shape);
    expect(inspection.validRecords).toBe(2);
    expect(inspection.blankRecords).toBe(3);
    expect(inspection.damaged.map((d) => [d.index, d.problem])).toEqual([
      [2, expect.stringMatching(/bad checksum/)],
      [3, expect.stringMatching(/extent 99 is past the last one/)],
      [4, expect.stringMatching(/extent size/)],
    ]);
    expect(inspection.newest?.extents).toEqual([0, 3]);
  });

  test('consulted only after a possible Primary crash; damage or an unreadable log means the whole device', () => {
    const clean = inspectActivityLog(ring([alRecord(1, [2, 3])]), shape);
    const damaged = inspectActivityLog(ring([alRecord(1, [2]), flipBit(alRecord(2, [3]), 100)]), shape);
    expect(decideActivityLog(damaged, false, shape.extentBytes)).toEqual({ kind: 'none' });
    expect(decideActivityLog(clean, true, shape.extentBytes)).toEqual({ kind: 'extents', extents: [2, 3], extentBytes: shape.extentBytes });
    expect(decideActivityLog(damaged, true, shape.extentBytes)).toMatchObject({ kind: 'all', reason: expect.stringMatching(/1 damaged activity-log record/) });
    expect(decideActivityLog(null, true, shape.extentBytes)).toMatchObject({ kind: 'all', reason: expect.stringMatching(/could not be read/) });
    expect(decideActivityLog(inspectActivityLog(ring([]), shape), true, shape.extentBytes)).toEqual({ kind: 'none' });
  });
});

test('create-md does not overwrite damaged nraid metadata without --force (restore-md may still repair it)', () => {
  const disk = sparseDisk();
  createMetadata(disk, { resource: 'r0', node: 'alpha', force: false });
  for (const slot of [0, 1]) {
    const offset = superblockSlotOffsetBytes(disk.sizeBytes, slot);
    disk.write(offset, flipBit(disk.read(offset, limits.blockBytes), 90));
  }
  expect(() => createMetadata(disk, { resource: 'r0', node: 'alpha', force: false })).toThrow(/holds damaged nraid metadata \(slot 0: bad checksum.*restore-md/);
  expect(createMetadata(disk, { resource: 'r0', node: 'alpha', force: true }).resource).toBe('r0');
});

describe('dump-md and restore-md', () => {
  test('bitmap ranges: set bits and ranges convert both ways', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 64 }), fc.integer({ min: 0, max: 7 }), (bytes, trim) => {
        const bits = bytes.length * 8 - trim;
        const bitmap = Buffer.from(bytes);
        const ranges = setBitRanges(bitmap, bits);
        const back = bitmapFromRanges(ranges, bits, bytes.length);
        for (let bit = 0; bit < bits; bit++) expect((back[bit >> 3] >> (bit & 7)) & 1).toBe((bitmap[bit >> 3] >> (bit & 7)) & 1);
      }),
      { numRuns: 300 },
    );
  });

  test('a dump restores onto another disk of the same size: same superblock, bitmap and activity log', () => {
    const source = sparseDisk();
    const created = createMetadata(source, { resource: 'r0', node: 'alpha', force: false });
    const bitmap = Buffer.alloc(limits.blockBytes);
    bitmap[0] = 0b1011;
    bitmap[100] = 0xff;
    source.write(created.bitmapOffsetBytes, bitmap);
    source.write(created.activityLogOffsetBytes + 3 * limits.activityTransactionBytes, alRecord(3, [1, 2]));
    const dump = parseDump(JSON.stringify(dumpMetadata(source)), 'dump.json');
    expect(dump.bitmap).toMatchObject({ bitsSet: 11, outOfSyncBytes: 11 * limits.bitmapGranularityBytes });
    expect(dump.activityLog).toMatchObject({ validRecords: 1, newest: { sequence: '3', extents: [1, 2] } });

    const target = sparseDisk();
    const restored = restoreMetadata(target, dump, { resource: 'r0', force: false });
    const again = dumpMetadata(target);
    expect(again.superblock).toEqual({ ...dump.superblock, sequence: restored.sequence });
    expect(again.superblocks.map((s) => s.condition)).toEqual(['valid', 'valid']);
    expect(again.bitmap).toEqual(dump.bitmap);
    expect(again.activityLog).toEqual(dump.activityLog);
  });

  test('restore-md refuses: another size, another resource, valid metadata without --force, not a dump', () => {
    const source = sparseDisk();
    createMetadata(source, { resource: 'r0', node: 'alpha', force: false });
    const dump = dumpMetadata(source);
    expect(() => restoreMetadata(sparseDisk(SIZE * 2), dump, { resource: 'r0', force: true })).toThrow(/dump is of a 67108864-byte device/);
    expect(() => restoreMetadata(sparseDisk(), dump, { resource: 'r1', force: true })).toThrow(/the dump is of resource "r0", not "r1"/);
    const valid = sparseDisk();
    createMetadata(valid, { resource: 'r0', node: 'alpha', force: false });
    const before = fs.readFileSync(valid.path);
    expect(() => restoreMetadata(valid, dump, { resource: 'r0', force: false })).toThrow(DiskHasDataError);
    expect(fs.readFileSync(valid.path).equals(before)).toBe(true);
    expect(restoreMetadata(valid, dump, { resource: 'r0', force: true }).resource).toBe('r0');
    expect(() => parseDump('{"format":"something"}', 'f.json')).toThrow(/not an nraid metadata dump/);
    expect(() => parseDump('not json', 'f.json')).toThrow(/is not JSON/);
    expect(() => parseDump(JSON.stringify({ ...dump, bitmap: 'x' }), 'f.json')).toThrow(/bitmap must be an object or null/);
    expect(() => parseDump(JSON.stringify({ ...dump, activityLog: { records: 3 } }), 'f.json')).toThrow(/activityLog.records must be a list/);
    const edited = { ...dump, superblock: { ...dump.superblock!, dataSizeBytes: 5 } };
    expect(() => restoreMetadata(sparseDisk(), edited, { resource: 'r0', force: true })).toThrow(MetadataError);
  });

  test('restore-md needs no --force over damaged metadata, and repairs it', () => {
    const source = sparseDisk();
    createMetadata(source, { resource: 'r0', node: 'alpha', force: false });
    const dump = dumpMetadata(source);
    const offset = superblockSlotOffsetBytes(source.sizeBytes, 1);
    source.write(offset, flipBit(source.read(offset, limits.blockBytes), 300));
    expect(inspectSuperblocks(source).map((s) => s.condition)).toEqual(['valid', 'damaged']);
    restoreMetadata(source, dump, { resource: 'r0', force: false });
    expect(inspectSuperblocks(source).map((s) => s.condition)).toEqual(['valid', 'valid']);
  });
});

describe('the dump-md and restore-md command lines', () => {
  test('restore-md takes --file and --force; dump-md takes --json; no other command takes --file', () => {
    expect(parseArgs(['restore-md', 'r0', '--file', 'r0.json', '--force'])).toMatchObject({ command: 'restore-md', resource: 'r0', file: 'r0.json', force: true });
    expect(parseArgs(['dump-md', 'r0', '--json'])).toMatchObject({ command: 'dump-md', resource: 'r0', json: true });
    expect(() => parseArgs(['dump-md', 'r0', '--file', 'x'])).toThrow(UsageError);
    expect(() => parseArgs(['status', 'r0', '--file', 'x'])).toThrow(/nraid status does not take --file FILE/);
    expect(() => parseArgs(['restore-md', 'r0', '--file'])).toThrow(/needs a FILE/);
    expect(usage()).toMatch(/dump-md +print this node's metadata/);
    expect(usage('restore-md')).toContain('usage: nraid restore-md [resource] [-c FILE] [-n NAME] [--force] [--file FILE]');
  });
});
