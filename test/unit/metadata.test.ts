import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DiskError, DiskHasDataError, MetadataError } from '../../src/errors';
import * as limits from '../../src/limits';
import {
  backingSizeMinBytes,
  bitmapBytesFor,
  computeLayout,
  createMetadata,
  decodeSuperblock,
  detectSignature,
  diskStateOf,
  encodeSuperblock,
  flagBits,
  formatBytes,
  inspectSuperblocks,
  readSuperblock,
  superblockSlotOffsetBytes,
  UUID_JUST_CREATED,
  writeSuperblock,
  type DiskIO,
  type Superblock,
  type SuperblockFlags,
} from '../../src/metadata';
import { crc32c } from '../../src/native';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

/** A DiskIO over a real (sparse) file, holding the interface's alignment rules, logging every write. */
class FileDisk implements DiskIO {
  readonly writes: Array<{ offsetBytes: number; lengthBytes: number }> = [];
  flushes = 0;
  private readonly fd: number;

  constructor(readonly path: string, readonly sizeBytes: number) {
    this.fd = fs.openSync(path, 'r+');
  }

  private checkAligned(offsetBytes: number, lengthBytes: number): void {
    if (offsetBytes % limits.blockBytes !== 0 || lengthBytes % limits.blockBytes !== 0) {
      throw new Error(`unaligned I/O at ${offsetBytes}+${lengthBytes}`);
    }
    if (offsetBytes < 0 || offsetBytes + lengthBytes > this.sizeBytes) {
      throw new Error(`I/O at ${offsetBytes}+${lengthBytes} past the end (${this.sizeBytes})`);
    }
  }

  read(offsetBytes: number, lengthBytes: number): Buffer {
    this.checkAligned(offsetBytes, lengthBytes);
    const buf = Buffer.alloc(lengthBytes);
    const got = fs.readSync(this.fd, buf, 0, lengthBytes, offsetBytes);
    if (got !== lengthBytes) throw new Error(`short read: ${got} of ${lengthBytes}`);
    return buf;
  }

  write(offsetBytes: number, data: Buffer): void {
    this.checkAligned(offsetBytes, data.length);
    this.writes.push({ offsetBytes, lengthBytes: data.length });
    fs.writeSync(this.fd, data, 0, data.length, offsetBytes);
  }

  flush(): void {
    this.flushes++;
    fs.fsyncSync(this.fd);
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

let dir: string;
const opened: FileDisk[] = [];

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nraid-md-'));
});
afterAll(() => {
  for (const disk of opened) disk.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

let fileCount = 0;
/** A fresh sparse file of `sizeBytes`, opened as a FileDisk. */
function sparseDisk(sizeBytes: number): FileDisk {
  const file = path.join(dir, `disk-${fileCount++}.img`);
  fs.writeFileSync(file, '');
  fs.truncateSync(file, sizeBytes);
  const disk = new FileDisk(file, sizeBytes);
  opened.push(disk);
  return disk;
}

function hashOf(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

function rawWrite(disk: FileDisk, offsetBytes: number, data: Buffer): void {
  const fd = fs.openSync(disk.path, 'r+');
  fs.writeSync(fd, data, 0, data.length, offsetBytes);
  fs.closeSync(fd);
}

function rawRead(disk: FileDisk, offsetBytes: number, lengthBytes: number): Buffer {
  const fd = fs.openSync(disk.path, 'r');
  const buf = Buffer.alloc(lengthBytes);
  fs.readSync(fd, buf, 0, lengthBytes, offsetBytes);
  fs.closeSync(fd);
  return buf;
}

const allFlagsFalse: SuperblockFlags = {
  consistent: false,
  wasUpToDate: false,
  wasPrimary: false,
  crashedPrimary: false,
  resyncInProgress: false,
  peerOutdated: false,
  fullSyncNeeded: false,
  outdated: false,
};

/** A superblock for a device of `backingSizeBytes` with distinctive values in every field. */
function sampleSuperblock(backingSizeBytes = 64 * MiB + 512, granularityBytes = limits.bitmapGranularityBytes): Superblock {
  const layout = computeLayout(backingSizeBytes, granularityBytes);
  return {
    layoutVersion: 1,
    flags: { ...allFlagsFalse, consistent: true, wasPrimary: true, fullSyncNeeded: true },
    sequence: 41,
    dataSizeBytes: layout.dataSizeBytes,
    backingSizeBytes,
    bitmapGranularityBytes: layout.bitmapGranularityBytes,
    activityExtentBytes: layout.activityExtentBytes,
    bitmapOffsetBytes: layout.bitmapOffsetBytes,
    bitmapSizeBytes: layout.bitmapSizeBytes,
    activityLogOffsetBytes: layout.activityLogOffsetBytes,
    activityLogSizeBytes: layout.activityLogSizeBytes,
    uuids: { current: 0xfedcba9876543211n, bitmap: 0x1234n, history: [(1n << 64n) - 1n, 7n] },
    resource: 'mail-queue',
    node: 'alpha',
    createdAtMs: 1_732_000_000_123,
    primarySinceMs: 1_700_000_123_456,
  };
}

/** Re-seals a slot image after a test edits it, so only the edited field is wrong. */
function reseal(buf: Buffer): Buffer {
  buf.writeUInt32LE(crc32c(buf.subarray(0, 4092)), 4092);
  return buf;
}

describe('computeLayout', () => {
  const sizes = [
    backingSizeMinBytes(),
    backingSizeMinBytes() + 1,
    backingSizeMinBytes() + 4095,
    backingSizeMinBytes() + 4096,
    100 * MiB + 777,
    1 * GiB,
    10 * GiB + 12345,
    1 * TiB,
    16 * TiB + 4096 * 3 + 9,
  ];

  test.each(sizes)('%d bytes: areas are adjacent, aligned and the data area is maximal', (size) => {
    const layout = computeLayout(size);
    const usable = Math.floor(size / 4096) * 4096;
    expect(layout.backingSizeBytes).toBe(size);
    expect(layout.usableSizeBytes).toBe(usable);
    expect(layout.superblockOffsetBytes).toBe(usable - 8 * KiB);
    expect(layout.activityLogOffsetBytes).toBe(layout.superblockOffsetBytes - MiB);
    expect(layout.activityLogSizeBytes).toBe(MiB);
    expect(layout.bitmapOffsetBytes + layout.bitmapSizeBytes).toBe(layout.activityLogOffsetBytes);
    expect(layout.dataSizeBytes % 4096).toBe(0);
    expect(layout.bitmapOffsetBytes % 4096).toBe(0);
    expect(layout.bitmapSizeBytes % 4096).toBe(0);
    expect(layout.dataSizeBytes).toBeGreaterThanOrEqual(limits.dataSizeMinBytes);
    expect(layout.dataSizeBytes).toBeLessThanOrEqual(layout.bitmapOffsetBytes);
    // The bitmap has a bit for every 4 KiB of data, and no whole spare block.
    expect(layout.bitmapSizeBytes * 8 * 4096).toBeGreaterThanOrEqual(layout.dataSizeBytes);
    expect((layout.bitmapSizeBytes - 4096) * 8 * 4096).toBeLessThan(layout.dataSizeBytes);
    // One more block of data would not leave room for its bitmap.
    const grown = layout.dataSizeBytes + 4096;
    expect(grown + bitmapBytesFor(grown)).toBeGreaterThan(layout.activityLogOffsetBytes);
    expect(layout.metadataSizeBytes).toBe(usable - layout.dataSizeBytes);
  });

  test('1 GiB, worked by hand', () => {
    // avail = 1 GiB - 1 MiB - 8 KiB = 1072685056; a bitmap for ~1 GiB is 262144 bits = 32 KiB.
    const layout = computeLayout(GiB);
    expect(layout.dataSizeBytes).toBe(1072685056 - 32 * KiB);
    expect(layout.bitmapSizeBytes).toBe(32 * KiB);
    expect(layout.bitmapOffsetBytes).toBe(1072685056 - 32 * KiB);
  });

  test('the smallest device has exactly 4 MiB of data and one bitmap block', () => {
    const layout = computeLayout(backingSizeMinBytes());
    expect(backingSizeMinBytes()).toBe(4 * MiB + 4 * KiB + MiB + 8 * KiB);
    expect(layout.dataSizeBytes).toBe(4 * MiB);
    expect(layout.bitmapSizeBytes).toBe(4 * KiB);
  });

  test('a coarser granularity shrinks the bitmap', () => {
    const fine = computeLayout(TiB);
    const coarse = computeLayout(TiB, 64 * KiB);
    expect(coarse.bitmapGranularityBytes).toBe(64 * KiB);
    expect(coarse.bitmapSizeBytes * 16).toBeLessThanOrEqual(fine.bitmapSizeBytes + 16 * 4096);
    expect(coarse.bitmapSizeBytes * 8 * 64 * KiB).toBeGreaterThanOrEqual(coarse.dataSizeBytes);
    expect(coarse.dataSizeBytes).toBeGreaterThan(fine.dataSizeBytes);
  });

  test.each([0, 4 * MiB, backingSizeMinBytes() - 4096, backingSizeMinBytes() - 1])('%d bytes is too small', (size) => {
    const call = () => computeLayout(size, undefined, '/dev/sdz');
    expect(call).toThrow(DiskError);
    expect(call).toThrow(
      `/dev/sdz has ${size} bytes; nraid needs at least ${backingSizeMinBytes()} (4 MiB of data plus 1036 KiB of metadata); use a larger device`,
    );
  });

  test('a size that is not a whole number is a DiskError', () => {
    expect(() => computeLayout(8 * MiB + 0.5)).toThrow(DiskError);
    expect(() => computeLayout(-1)).toThrow(DiskError);
  });

  test.each([0, 512, 3 * 4096, 2 * MiB, 4096.5])('granularity %d is refused', (granularity) => {
    expect(() => computeLayout(GiB, granularity)).toThrow(MetadataError);
  });

  test('formatBytes', () => {
    expect(formatBytes(4 * MiB)).toBe('4 MiB');
    expect(formatBytes(1036 * KiB)).toBe('1036 KiB');
    expect(formatBytes(2 * GiB)).toBe('2 GiB');
    expect(formatBytes(1000)).toBe('1000 bytes');
  });
});

describe('superblock encoding', () => {
  test('round trip keeps every field', () => {
    const sb = sampleSuperblock();
    expect(decodeSuperblock(encodeSuperblock(sb))).toEqual(sb);
  });

  test('round trip with a non-default granularity and names of 64 UTF-8 bytes', () => {
    const sb = { ...sampleSuperblock(3 * GiB + 5, 16 * KiB), resource: 'r'.repeat(64), node: `é${'n'.repeat(62)}` };
    expect(Buffer.byteLength(sb.node)).toBe(64);
    expect(decodeSuperblock(encodeSuperblock(sb))).toEqual(sb);
  });

  test.each(Object.keys(flagBits) as Array<keyof SuperblockFlags>)('flag %s sets its bit only and survives a round trip', (name) => {
    const sb = { ...sampleSuperblock(), flags: { ...allFlagsFalse, [name]: true } };
    const buf = encodeSuperblock(sb);
    expect(buf.readUInt32LE(12)).toBe(flagBits[name]);
    expect(decodeSuperblock(buf).flags).toEqual(sb.flags);
  });

  test('the slot image has the documented fields at their offsets', () => {
    const sb = sampleSuperblock();
    const buf = encodeSuperblock(sb);
    expect(buf.length).toBe(4096);
    expect(buf.toString('latin1', 0, 8)).toBe('NRAIDMD1');
    expect(buf.readUInt32LE(8)).toBe(1);
    expect(buf.readBigUInt64LE(16)).toBe(BigInt(sb.sequence));
    expect(buf.readBigUInt64LE(24)).toBe(BigInt(sb.dataSizeBytes));
    expect(buf.readBigUInt64LE(32)).toBe(BigInt(sb.backingSizeBytes));
    expect(buf.readUInt32LE(4092)).toBe(crc32c(buf.subarray(0, 4092)));
    expect(buf.indexOf(Buffer.from('mail-queue'))).toBeGreaterThan(0);
  });

  test('names that do not fit are refused', () => {
    expect(() => encodeSuperblock({ ...sampleSuperblock(), resource: 'r'.repeat(65) })).toThrow(MetadataError);
    expect(() => encodeSuperblock({ ...sampleSuperblock(), node: `é${'n'.repeat(63)}` })).toThrow('(65 bytes)');
    expect(() => encodeSuperblock({ ...sampleSuperblock(), node: '' })).toThrow(MetadataError);
    expect(() => encodeSuperblock({ ...sampleSuperblock(), node: 'a\0b' })).toThrow(MetadataError);
  });

  test('numbers and uuids out of range are refused', () => {
    expect(() => encodeSuperblock({ ...sampleSuperblock(), sequence: -1 })).toThrow('field sequence');
    expect(() => encodeSuperblock({ ...sampleSuperblock(), createdAtMs: 1.5 })).toThrow('field createdAtMs');
    expect(() => encodeSuperblock({ ...sampleSuperblock(), dataSizeBytes: 2 ** 53 })).toThrow(MetadataError);
    const sb = sampleSuperblock();
    expect(() => encodeSuperblock({ ...sb, uuids: { ...sb.uuids, bitmap: 1n << 64n } })).toThrow('uuid bitmap');
    expect(() => encodeSuperblock({ ...sb, uuids: { ...sb.uuids, current: -1n } })).toThrow('uuid current');
  });

  test('decode refuses a wrong length', () => {
    expect(() => decodeSuperblock(Buffer.alloc(512))).toThrow('512 bytes instead of 4096');
  });

  test('decode refuses a slot without magic', () => {
    expect(() => decodeSuperblock(Buffer.alloc(4096))).toThrow('invalid nraid superblock: no magic');
  });

  test('decode refuses any flipped bit as a bad checksum', () => {
    const good = encodeSuperblock(sampleSuperblock());
    for (const offset of [8, 20, 130, 3000, 4091, 4094]) {
      const bad = Buffer.from(good);
      bad[offset] ^= 0x10;
      expect(() => decodeSuperblock(bad)).toThrow(MetadataError);
      expect(() => decodeSuperblock(bad)).toThrow('bad checksum');
    }
  });

  test('decode refuses another layout version', () => {
    const buf = encodeSuperblock(sampleSuperblock());
    buf.writeUInt32LE(2, 8);
    expect(() => decodeSuperblock(reseal(buf))).toThrow('layout version 2, but this nraid reads version 1');
  });

  test('decode refuses unknown flag bits', () => {
    const buf = encodeSuperblock(sampleSuperblock());
    buf.writeUInt32LE(0x80000101, 12);
    expect(() => decodeSuperblock(reseal(buf))).toThrow('unknown flag bits 0x80000100');
  });

  test('decode refuses layout fields that disagree with the backing size', () => {
    const buf = encodeSuperblock(sampleSuperblock());
    buf.writeBigUInt64LE(BigInt(4 * MiB), 24); // dataSizeBytes
    expect(() => decodeSuperblock(reseal(buf))).toThrow('dataSizeBytes 4194304 disagrees with the layout');
    const other = encodeSuperblock(sampleSuperblock());
    other.writeBigUInt64LE(BigInt(8 * MiB), 48); // activityExtentBytes
    expect(() => decodeSuperblock(reseal(other))).toThrow('activity extent 8388608 bytes');
    const tiny = encodeSuperblock(sampleSuperblock());
    tiny.writeBigUInt64LE(4096n, 32); // backingSizeBytes
    expect(() => decodeSuperblock(reseal(tiny))).toThrow('backing size 4096 is not valid');
  });

  test('decode refuses a u64 beyond safe integers', () => {
    const buf = encodeSuperblock(sampleSuperblock());
    buf.writeBigUInt64LE(1n << 60n, 16); // sequence
    expect(() => decodeSuperblock(reseal(buf))).toThrow('sequence 1152921504606846976 is too large');
  });
});

describe('reading and writing superblocks', () => {
  const size = 64 * MiB;

  function freshDisk(): { disk: FileDisk; sb: Superblock } {
    const disk = sparseDisk(size);
    const sb = createMetadata(disk, { resource: 'r0', node: 'alpha', force: false });
    return { disk, sb };
  }

  function slotSequences(disk: DiskIO): Array<number | null> {
    return inspectSuperblocks(disk).map((s) => s.superblock?.sequence ?? null);
  }

  test('a fresh device has no metadata: both slots say why', () => {
    const disk = sparseDisk(size);
    const call = () => readSuperblock(disk);
    expect(call).toThrow(MetadataError);
    expect(call).toThrow(`no valid nraid metadata on ${disk.path} (slot 0: blank (never written, or zeroed), slot 1: blank (never written, or zeroed)); run nraid create-md`);
  });

  test('create-md fills both slots; each write alternates and bumps the sequence', () => {
    const { disk, sb } = freshDisk();
    expect(slotSequences(disk)).toEqual([sb.sequence, sb.sequence]);
    expect(readSuperblock(disk)).toEqual(sb);

    const first = writeSuperblock(disk, { ...sb, flags: { ...sb.flags, consistent: true } });
    expect(first.sequence).toBe(sb.sequence + 1);
    expect(slotSequences(disk)).toEqual([sb.sequence, sb.sequence + 1]);
    expect(readSuperblock(disk)).toEqual(first);

    const second = writeSuperblock(disk, { ...first, flags: { ...first.flags, wasUpToDate: true } });
    expect(second.sequence).toBe(sb.sequence + 2);
    expect(slotSequences(disk)).toEqual([sb.sequence + 2, sb.sequence + 1]);
    expect(readSuperblock(disk)).toEqual(second);
    expect(diskStateOf(readSuperblock(disk))).toBe('UpToDate');
  });

  test('a write flushes, and writes only its slot', () => {
    const { disk, sb } = freshDisk();
    disk.writes.length = 0;
    const flushesBefore = disk.flushes;
    writeSuperblock(disk, sb);
    expect(disk.writes).toEqual([{ offsetBytes: size - 4096, lengthBytes: 4096 }]);
    expect(disk.flushes).toBe(flushesBefore + 1);
  });

  test('a stale sequence passed in still lands above the newest on disk', () => {
    const { disk, sb } = freshDisk();
    const newer = writeSuperblock(disk, sb);
    const again = writeSuperblock(disk, { ...sb, sequence: 0 });
    expect(again.sequence).toBe(newer.sequence + 1);
  });

  test('a torn newest slot falls back to the previous copy', () => {
    const { disk, sb } = freshDisk();
    const older = writeSuperblock(disk, { ...sb, flags: { ...sb.flags, consistent: true } }); // slot 1
    const newer = writeSuperblock(disk, { ...older, flags: { ...older.flags, outdated: true } }); // slot 0
    expect(readSuperblock(disk)).toEqual(newer);
    // Tear slot 0: its second half never reached the disk.
    rawWrite(disk, superblockSlotOffsetBytes(size, 0) + 2048, Buffer.alloc(2048));
    expect(readSuperblock(disk)).toEqual(older);
    const slots = inspectSuperblocks(disk);
    expect(slots[0].superblock).toBeNull();
    expect(slots[0].problem).toMatch(/^bad checksum/);
    expect(slots[1].problem).toBeNull();
  });

  test('a corrupt older slot does not hide the newest', () => {
    const { disk, sb } = freshDisk();
    const newer = writeSuperblock(disk, { ...sb, flags: { ...sb.flags, consistent: true } }); // slot 1
    rawWrite(disk, superblockSlotOffsetBytes(size, 0) + 100, Buffer.from([0xff]));
    expect(readSuperblock(disk)).toEqual(newer);
  });

  test('after a torn slot, the next write goes into the torn slot and keeps the good one', () => {
    const { disk, sb } = freshDisk();
    const good = writeSuperblock(disk, sb); // slot 1, sequence 2
    rawWrite(disk, superblockSlotOffsetBytes(size, 0), Buffer.alloc(4096, 0xee)); // slot 0 destroyed
    const goodImage = rawRead(disk, superblockSlotOffsetBytes(size, 1), 4096);
    const next = writeSuperblock(disk, good);
    expect(rawRead(disk, superblockSlotOffsetBytes(size, 1), 4096).equals(goodImage)).toBe(true);
    expect(slotSequences(disk)).toEqual([next.sequence, good.sequence]);
  });

  test('both slots corrupt is a MetadataError naming each problem', () => {
    const { disk } = freshDisk();
    rawWrite(disk, superblockSlotOffsetBytes(size, 0) + 300, Buffer.from('garbage'));
    rawWrite(disk, superblockSlotOffsetBytes(size, 1), Buffer.alloc(8));
    const call = () => readSuperblock(disk);
    expect(call).toThrow(MetadataError);
    expect(call).toThrow(new RegExp(`^no valid nraid metadata on ${disk.path} \\(slot 0: bad checksum \\(stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}\\), slot 1: no magic\\); run nraid create-md$`));
  });

  test('a device whose size ends in a partial block finds its metadata at the last whole block', () => {
    const disk = sparseDisk(size + 1000);
    const sb = createMetadata(disk, { resource: 'r0', node: 'alpha', force: false });
    expect(sb.backingSizeBytes).toBe(size + 1000);
    expect(inspectSuperblocks(disk)[1].offsetBytes).toBe(size - 4096);
    expect(readSuperblock(disk)).toEqual(sb);
  });

  test('metadata written for another device size is refused (resized device)', () => {
    const disk = sparseDisk(size);
    const foreign = encodeSuperblock({ ...sampleSuperblock(size * 2), sequence: 9 });
    rawWrite(disk, superblockSlotOffsetBytes(size, 0), foreign);
    rawWrite(disk, superblockSlotOffsetBytes(size, 1), foreign);
    expect(() => readSuperblock(disk)).toThrow(`slot 0: written for a ${size * 2}-byte device, but this one has ${size} bytes (was it resized?)`);
  });

  test('writing a superblock made for another size is refused and writes nothing', () => {
    const { disk } = freshDisk();
    disk.writes.length = 0;
    expect(() => writeSuperblock(disk, sampleSuperblock(size * 2))).toThrow(MetadataError);
    expect(disk.writes).toEqual([]);
  });

  test('a device too small for even the superblocks', () => {
    const disk = sparseDisk(4096);
    expect(() => readSuperblock(disk)).toThrow(MetadataError);
  });
});

describe('detectSignature', () => {
  const probe = (): Buffer => Buffer.alloc(limits.signatureProbeBytes);

  function ext(compat: number, incompat: number, roCompat: number): Buffer {
    const head = probe();
    head.writeUInt16LE(0xef53, 1080);
    head.writeUInt32LE(compat, 1024 + 92);
    head.writeUInt32LE(incompat, 1024 + 96);
    head.writeUInt32LE(roCompat, 1024 + 100);
    return head;
  }

  function at(offset: number, bytes: Buffer | string): Buffer {
    const head = probe();
    (typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes).copy(head, offset);
    return head;
  }

  function mbr(type: number, sectors: number): Buffer {
    const head = probe();
    head[510] = 0x55;
    head[511] = 0xaa;
    head[446 + 4] = type;
    head.writeUInt32LE(sectors, 446 + 12);
    return head;
  }

  test('zeroes hold nothing', () => {
    expect(detectSignature(probe())).toBeNull();
    expect(detectSignature(Buffer.alloc(0))).toBeNull();
  });

  test.each([
    ['ext4 (extents)', ext(0x4, 0x40, 0), 'an ext4 filesystem'],
    ['ext4 (metadata_csum only)', ext(0x4, 0x2, 0x400), 'an ext4 filesystem'],
    ['ext3', ext(0x4, 0x2, 0x1), 'an ext3 filesystem'],
    ['ext2', ext(0, 0x2, 0x1), 'an ext2 filesystem'],
    ['XFS', at(0, 'XFSB'), 'an XFS filesystem'],
    ['btrfs', at(65600, '_BHRfS_M'), 'a btrfs filesystem'],
    ['swap', at(4086, 'SWAPSPACE2'), 'a swap area'],
    ['LUKS', at(0, 'LUKS\xba\xbe'), 'a LUKS encrypted volume'],
    ['LVM2 in sector 1', at(512, 'LABELONE'), 'an LVM2 physical volume'],
    ['md 1.2', at(4096, Buffer.from([0xfc, 0x4e, 0x2b, 0xa9])), 'a Linux RAID (md) member'],
    ['GPT', at(512, 'EFI PART'), 'a GPT partition table'],
    ['ISO 9660', at(32769, 'CD001'), 'an ISO 9660 filesystem'],
    ['NTFS', at(3, 'NTFS    '), 'an NTFS filesystem'],
    ['FAT32', at(82, 'FAT32   '), 'a FAT filesystem'],
    ['DOS partition table', mbr(0x83, 2048), 'a DOS partition table'],
  ])('%s', (_, head, expected) => {
    expect(detectSignature(head)).toBe(expected);
  });

  test('0x55AA with only empty partition entries is not a partition table', () => {
    expect(detectSignature(mbr(0, 0))).toBeNull();
    expect(detectSignature(mbr(0x83, 0))).toBeNull();
  });

  test('a magic cut off by a short head is not matched, and nothing throws', () => {
    expect(detectSignature(at(65600, '_BHRfS_M').subarray(0, 65604))).toBeNull();
    expect(detectSignature(ext(0x4, 0x40, 0).subarray(0, 1090))).toBeNull();
  });

  const mkfs = ['mkfs.ext4', 'mkswap'].filter((tool) => {
    try {
      execFileSync('which', [tool], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  });

  test.each([
    ['mkfs.ext4', ['-q', '-F'], 'an ext4 filesystem'],
    ['mkfs.ext4', ['-q', '-F', '-t', 'ext2'], 'an ext2 filesystem'],
    ['mkfs.ext4', ['-q', '-F', '-t', 'ext3'], 'an ext3 filesystem'],
    ['mkswap', ['-q'], 'a swap area'],
  ])('the real %s %j is recognized', (tool, args, expected) => {
    if (!mkfs.includes(tool)) {
      console.warn(`${tool} is not installed; skipped`);
      return;
    }
    const disk = sparseDisk(16 * MiB);
    execFileSync(tool, [...args, disk.path], { stdio: 'ignore' });
    expect(detectSignature(disk.read(0, limits.signatureProbeBytes))).toBe(expected);
  });
});

describe('createMetadata', () => {
  const size = 32 * MiB + 4096 * 5 + 17;

  test('writes the documented fresh superblock into both slots', () => {
    const disk = sparseDisk(size);
    const before = Date.now();
    const sb = createMetadata(disk, { resource: 'r0', node: 'alpha', force: false });
    const layout = computeLayout(size);
    expect(sb.flags).toEqual(allFlagsFalse);
    expect(diskStateOf(sb)).toBe('Inconsistent');
    expect(sb.uuids).toEqual({ current: UUID_JUST_CREATED, bitmap: 0n, history: [0n, 0n] });
    expect(UUID_JUST_CREATED).toBe(4n);
    expect(sb.resource).toBe('r0');
    expect(sb.node).toBe('alpha');
    expect(sb.sequence).toBe(1);
    expect(sb.createdAtMs).toBeGreaterThanOrEqual(before);
    expect(sb.createdAtMs).toBeLessThanOrEqual(Date.now());
    expect(sb.dataSizeBytes).toBe(layout.dataSizeBytes);
    expect(sb.bitmapOffsetBytes).toBe(layout.bitmapOffsetBytes);
    const slot0 = rawRead(disk, superblockSlotOffsetBytes(size, 0), 4096);
    const slot1 = rawRead(disk, superblockSlotOffsetBytes(size, 1), 4096);
    expect(slot0.equals(slot1)).toBe(true);
    expect(decodeSuperblock(slot0)).toEqual(sb);
    expect(readSuperblock(disk)).toEqual(sb);
  });

  test('zeroes the bitmap and activity log, never touches the data area, and flushes', () => {
    const disk = sparseDisk(size);
    const layout = computeLayout(size);
    // Data the operator has, and stale garbage in the metadata area.
    rawWrite(disk, 0, Buffer.alloc(MiB, 0x5a));
    rawWrite(disk, layout.dataSizeBytes - 4096, Buffer.alloc(4096, 0x6b));
    rawWrite(disk, layout.dataSizeBytes, Buffer.alloc(layout.superblockOffsetBytes - layout.dataSizeBytes, 0xff));
    const dataBefore = crypto.createHash('sha256').update(rawRead(disk, 0, layout.dataSizeBytes)).digest('hex');

    createMetadata(disk, { resource: 'r0', node: 'alpha', force: false });

    for (const w of disk.writes) expect(w.offsetBytes).toBeGreaterThanOrEqual(layout.dataSizeBytes);
    for (const w of disk.writes) expect(w.lengthBytes).toBeLessThanOrEqual(limits.metadataWriteChunkBytes);
    const dataAfter = crypto.createHash('sha256').update(rawRead(disk, 0, layout.dataSizeBytes)).digest('hex');
    expect(dataAfter).toBe(dataBefore);
    const bitmapAndLog = rawRead(disk, layout.dataSizeBytes, layout.superblockOffsetBytes - layout.dataSizeBytes);
    expect(bitmapAndLog.equals(Buffer.alloc(bitmapAndLog.length))).toBe(true);
    expect(disk.flushes).toBeGreaterThanOrEqual(1);
    // The superblocks are written after the zeroes, and flushed after them.
    const lastTwo = disk.writes.slice(-2).map((w) => w.offsetBytes);
    expect(lastTwo).toEqual([superblockSlotOffsetBytes(size, 0), superblockSlotOffsetBytes(size, 1)]);
  });

  test('a device too small is a DiskError and stays byte-identical', () => {
    const disk = sparseDisk(backingSizeMinBytes() - 4096);
    rawWrite(disk, 12345, Buffer.from('keep me'));
    const before = hashOf(disk.path);
    const call = () => createMetadata(disk, { resource: 'r0', node: 'alpha', force: true });
    expect(call).toThrow(DiskError);
    expect(call).toThrow(`${disk.path} has ${backingSizeMinBytes() - 4096} bytes; nraid needs at least ${backingSizeMinBytes()}`);
    expect(hashOf(disk.path)).toBe(before);
    expect(disk.writes).toEqual([]);
  });

  test('names that do not fit the superblock are refused before anything is written', () => {
    const disk = sparseDisk(size);
    expect(() => createMetadata(disk, { resource: 'r'.repeat(65), node: 'alpha', force: true })).toThrow(MetadataError);
    expect(disk.writes).toEqual([]);
  });

  const signatureCases: Array<[string, (disk: FileDisk) => void, string]> = [
    ['ext4', (d) => {
      const sb = Buffer.alloc(1024);
      sb.writeUInt16LE(0xef53, 56);
      sb.writeUInt32LE(0x40, 96);
      rawWrite(d, 1024, sb);
    }, 'an ext4 filesystem'],
    ['XFS', (d) => rawWrite(d, 0, Buffer.from('XFSB')), 'an XFS filesystem'],
    ['btrfs', (d) => rawWrite(d, 65600, Buffer.from('_BHRfS_M')), 'a btrfs filesystem'],
    ['swap', (d) => rawWrite(d, 4086, Buffer.from('SWAPSPACE2')), 'a swap area'],
    ['LUKS', (d) => rawWrite(d, 0, Buffer.from('LUKS\xba\xbe', 'latin1')), 'a LUKS encrypted volume'],
    ['LVM2', (d) => rawWrite(d, 512, Buffer.from('LABELONE')), 'an LVM2 physical volume'],
    ['GPT', (d) => rawWrite(d, 512, Buffer.from('EFI PART')), 'a GPT partition table'],
    ['DOS', (d) => {
      const sector = Buffer.alloc(512);
      sector[446 + 4] = 0x83;
      sector.writeUInt32LE(2048, 446 + 12);
      sector[510] = 0x55;
      sector[511] = 0xaa;
      rawWrite(d, 0, sector);
    }, 'a DOS partition table'],
  ];

  test.each(signatureCases)('refuses %s without --force and leaves the device byte-identical', (_, plant, what) => {
    const disk = sparseDisk(size);
    plant(disk);
    const before = hashOf(disk.path);
    const call = () => createMetadata(disk, { resource: 'r0', node: 'alpha', force: false });
    expect(call).toThrow(DiskHasDataError);
    expect(call).toThrow(`${disk.path} holds ${what}; nraid create-md would destroy it; use --force if that is what you want`);
    expect(disk.writes).toEqual([]);
    expect(hashOf(disk.path)).toBe(before);
  });

  test.each(signatureCases)('with --force writes over %s only in the metadata area', (_, plant, what) => {
    const disk = sparseDisk(size);
    plant(disk);
    const layout = computeLayout(size);
    const head = rawRead(disk, 0, limits.signatureProbeBytes);
    createMetadata(disk, { resource: 'r0', node: 'alpha', force: true });
    expect(rawRead(disk, 0, limits.signatureProbeBytes).equals(head)).toBe(true);
    expect(detectSignature(head)).toBe(what);
    for (const w of disk.writes) expect(w.offsetBytes).toBeGreaterThanOrEqual(layout.dataSizeBytes);
    expect(readSuperblock(disk).resource).toBe('r0');
  });

  test('refuses metadata of another resource, naming it, and leaves the device byte-identical', () => {
    const disk = sparseDisk(size);
    createMetadata(disk, { resource: 'web', node: 'beta', force: false });
    disk.writes.length = 0;
    const before = hashOf(disk.path);
    const call = () => createMetadata(disk, { resource: 'r0', node: 'alpha', force: false });
    expect(call).toThrow(DiskHasDataError);
    expect(call).toThrow(`holds nraid metadata of resource "web" (node "beta", disk Inconsistent), another resource than "r0"`);
    expect(call).toThrow('use --force');
    expect(disk.writes).toEqual([]);
    expect(hashOf(disk.path)).toBe(before);
  });

  test('refuses metadata of the same resource, saying what would be reset', () => {
    const disk = sparseDisk(size);
    const sb = createMetadata(disk, { resource: 'r0', node: 'alpha', force: false });
    writeSuperblock(disk, { ...sb, flags: { ...sb.flags, consistent: true, wasUpToDate: true } });
    const before = hashOf(disk.path);
    const call = () => createMetadata(disk, { resource: 'r0', node: 'alpha', force: false });
    expect(call).toThrow(`already holds nraid metadata of resource "r0" (node "alpha", disk UpToDate); nraid create-md would reset`);
    expect(hashOf(disk.path)).toBe(before);
  });

  test('nraid metadata is reported before a filesystem made on the nraid device', () => {
    const disk = sparseDisk(size);
    createMetadata(disk, { resource: 'web', node: 'beta', force: false });
    rawWrite(disk, 0, Buffer.from('XFSB'));
    expect(() => createMetadata(disk, { resource: 'r0', node: 'alpha', force: false })).toThrow('nraid metadata of resource "web"');
  });

  test('--force over old metadata resets it with a sequence above the old one', () => {
    const disk = sparseDisk(size);
    let sb = createMetadata(disk, { resource: 'web', node: 'beta', force: false });
    for (let i = 0; i < 3; i++) sb = writeSuperblock(disk, { ...sb, flags: { ...sb.flags, consistent: true } });
    const fresh = createMetadata(disk, { resource: 'r0', node: 'alpha', force: true });
    expect(fresh.sequence).toBe(sb.sequence + 1);
    expect(fresh.flags.consistent).toBe(false);
    expect(readSuperblock(disk)).toEqual(fresh);
    expect(inspectSuperblocks(disk).map((s) => s.superblock?.resource)).toEqual(['r0', 'r0']);
  });

  test('--force zeroes a dirty bitmap left by the old metadata', () => {
    const disk = sparseDisk(size);
    const sb = createMetadata(disk, { resource: 'r0', node: 'alpha', force: false });
    rawWrite(disk, sb.bitmapOffsetBytes, Buffer.alloc(4096, 0xff));
    createMetadata(disk, { resource: 'r0', node: 'alpha', force: true });
    expect(rawRead(disk, sb.bitmapOffsetBytes, 4096).equals(Buffer.alloc(4096))).toBe(true);
  });
});

describe('diskStateOf', () => {
  const withFlags = (flags: Partial<SuperblockFlags>): Superblock => ({
    ...sampleSuperblock(),
    flags: { ...allFlagsFalse, ...flags },
  });

  test.each<[Partial<SuperblockFlags>, string]>([
    [{}, 'Inconsistent'],
    [{ wasUpToDate: true }, 'Inconsistent'],
    [{ outdated: true }, 'Inconsistent'],
    [{ consistent: true }, 'Consistent'],
    [{ consistent: true, wasUpToDate: true }, 'UpToDate'],
    [{ consistent: true, outdated: true }, 'Outdated'],
    [{ consistent: true, wasUpToDate: true, outdated: true }, 'Outdated'],
  ])('%j -> %s', (flags, state) => {
    expect(diskStateOf(withFlags(flags))).toBe(state);
  });
});
