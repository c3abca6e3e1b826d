/**
 * The single-node product end to end, through the CLI and the exposed device
 * (foundation issue, acceptance list part 1): create-md, up, primary --force
 * on a one-node resource; random O_DIRECT I/O read back identical and found
 * byte for byte in the backing device's data area after `down`; what
 * `status --json` reports; ext4 on the device surviving umount, fsck and a
 * remount; discards and write-zeroes reaching the backing device; flushes
 * reaching the daemon.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { makeTempSubdir, mountPoints } from '../harness/cleanup';
import { makeResource, TestResource } from '../harness/cluster';
import { BLOCK_BYTES, flushDevice, RandomWriter, readDirect, sizeOf, writeDirect } from '../harness/direct-io';
import { execOk, execTool } from '../harness/exec';
import { describeIntegration } from '../harness/prereq';

const MiB = 1024 * 1024;

/** The data size create-md reports ("...: N bytes of data"). */
function reportedDataSize(stdout: string): number {
  const m = /: (\d+) bytes of data/.exec(stdout);
  if (!m) throw new Error(`create-md printed no data size: ${JSON.stringify(stdout)}`);
  return Number(m[1]);
}

/** create-md, up, primary --force; returns the data size create-md reported. */
async function bringUpPrimary(r: TestResource): Promise<number> {
  const created = await r.runOk('alpha', 'create-md');
  const dataSizeBytes = reportedDataSize(created.stdout);
  await r.runOk('alpha', 'up');
  await r.runOk('alpha', 'primary', ['--force']);
  return dataSizeBytes;
}

/** Where two buffers first differ, for failure messages; undefined when equal. */
function firstDifference(expected: Buffer, found: Buffer): string | undefined {
  if (expected.equals(found)) return undefined;
  if (expected.length !== found.length) return `length ${found.length}, expected ${expected.length}`;
  let i = 0;
  while (expected[i] === found[i]) i++;
  return `byte ${i}: found 0x${found[i].toString(16)}, expected 0x${expected[i].toString(16)}`;
}

function expectSameBytes(what: string, expected: Buffer, found: Buffer): void {
  const diff = firstDifference(expected, found);
  if (diff !== undefined) throw new Error(`${what} differs from what was written: ${diff}`);
}

function loopName(device: string): string {
  const m = /^\/dev\/(loop\d+)$/.exec(device);
  if (!m) throw new Error(`not a loop device: ${device}`);
  return m[1];
}

function sha256(data: Buffer): string {
  return crypto.createHash('sha256').update(data).digest('hex');
}

describeIntegration(
  'single node: CLI, device and backing disk',
  ['root', 'fuse', 'loop', 'dd', 'mkfs.ext4', 'e2fsck', 'nraid-cli'],
  () => {
    describe('random O_DIRECT I/O through the device', () => {
      let r: TestResource;
      let dataSizeBytes: number;
      let writer: RandomWriter | undefined;

      beforeAll(async () => {
        r = await makeResource({ nodes: 1, sizeBytes: 64 * MiB });
        dataSizeBytes = await bringUpPrimary(r);
      }, 60_000);

      afterAll(async () => {
        await writer?.close();
        await r?.cleanup();
      }, 60_000);

      test('status --json shows a StandAlone Primary with an UpToDate disk exposed at the device path', async () => {
        // The config names a peer (beta) that never starts: after `up` the node
        // looks for it (Connecting, as DRBD does); `disconnect` makes it StandAlone.
        const looking = await r.status('alpha');
        expect(['Connecting', 'StandAlone']).toContain(looking.connection);
        expect(looking).toMatchObject({ role: 'Primary', disk: 'UpToDate', replication: 'Off', peerRole: 'Unknown' });
        await r.runOk('alpha', 'disconnect');
        const s = await r.status('alpha');
        expect(s).toMatchObject({
          resource: r.name,
          node: 'alpha',
          role: 'Primary',
          disk: 'UpToDate',
          connection: 'StandAlone',
          replication: 'Off',
          dataSizeBytes,
          device: r.nodes.alpha.device,
        });
        // create-md's data area: whole 4 KiB blocks, with room left for the metadata.
        expect(dataSizeBytes % BLOCK_BYTES).toBe(0);
        expect(dataSizeBytes).toBeGreaterThan(56 * MiB);
        expect(dataSizeBytes).toBeLessThan(64 * MiB);
        // The device path is a symlink to the loop device status names, and that
        // loop device shows exactly the data area.
        const target = fs.readlinkSync(r.nodes.alpha.device);
        expect(target).toMatch(/^\/dev\/loop\d+$/);
        expect(s.loopDevice).toBe(target);
        expect(await sizeOf(r.nodes.alpha.device)).toBe(dataSizeBytes);
      });

      test('the loop device under the device path does direct I/O on the FUSE volume', () => {
        const name = loopName(fs.readlinkSync(r.nodes.alpha.device));
        expect(fs.readFileSync(`/sys/block/${name}/loop/dio`, 'utf8').trim()).toBe('1');
        expect(fs.readFileSync(`/sys/block/${name}/loop/backing_file`, 'utf8').trim()).toBe(
          path.join(r.nodes.alpha.runDir, 'volume'),
        );
      });

      test('random writes at random 4 KiB-aligned offsets and sizes read back identical', async () => {
        const before = await r.status('alpha');
        writer = await RandomWriter.create({
          device: r.nodes.alpha.device,
          sizeBytes: dataSizeBytes,
          minWriteBytes: BLOCK_BYTES,
          maxWriteBytes: MiB,
          concurrency: 4,
        });
        const summary = await writer.run(120);
        expect(summary.writes).toBe(120);
        expect(summary.failures).toBe(0);
        // Every byte of the device: written ranges hold the last write, the rest zeroes.
        const report = await writer.verify();
        if (!report.ok) throw new Error(report.summary);
        expect(report.checkedBytes).toBe(dataSizeBytes);

        // Every written byte went through the daemon's pipeline.
        const after = await r.status('alpha');
        expect(Number(after.writes) - Number(before.writes)).toBeGreaterThanOrEqual(120);
        expect(Number(after.writeBytes) - Number(before.writeBytes)).toBe(summary.bytes);
        expect(after.ioErrors).toBe(0);
      }, 90_000);

      test('a write beyond the data area is refused and the metadata survives it', async () => {
        await expect(writeDirect(r.nodes.alpha.device, dataSizeBytes, Buffer.alloc(BLOCK_BYTES, 0xa5))).rejects.toThrow();
        const s = await r.status('alpha');
        expect(s.role).toBe('Primary');
        expect(s.dataSizeBytes).toBe(dataSizeBytes);
      });

      test('after down the backing data area [0, dataSizeBytes) holds exactly the written bytes', async () => {
        if (writer === undefined) throw new Error('the random-write test did not run');
        await r.runOk('alpha', 'down');
        const backing = r.nodes.alpha.diskPath;
        const report = await writer.verify({ device: backing });
        if (!report.ok) throw new Error(`backing device: ${report.summary}`);
        expect(report.checkedBytes).toBe(dataSizeBytes);
        expect(report.uncertainBytes).toBe(0);
        // The metadata is intact too: the resource comes up again, UpToDate, same size.
        await r.runOk('alpha', 'up');
        const s = await r.status('alpha');
        expect(s).toMatchObject({ role: 'Secondary', disk: 'UpToDate', dataSizeBytes });
        await r.runOk('alpha', 'down');
      }, 60_000);
    });

    describe('ext4 on the device', () => {
      let r: TestResource;
      let mnt: string;

      beforeAll(async () => {
        r = await makeResource({ nodes: 1, sizeBytes: 128 * MiB });
        await bringUpPrimary(r);
        mnt = makeTempSubdir('mnt');
      }, 60_000);

      afterAll(async () => {
        if (mnt !== undefined && mountPoints().includes(mnt)) await execTool('umount', [mnt]);
        await r?.cleanup();
      }, 60_000);

      test('mkfs, a file tree, umount, e2fsck -fn clean, remount: every file reads back intact', async () => {
        const device = r.nodes.alpha.device;
        await execOk('mkfs.ext4', ['-q', '-F', device]);
        await execOk('mount', [device, mnt]);

        const sizes = [0, 1, 511, 4095, 4096, 4097, 65_536 + 7, 300_000, MiB, 3 * MiB + 123];
        const dirs = ['a', 'a/b', 'a/b/c', 'd', 'e/f'];
        const expected = new Map<string, string>();
        let n = 0;
        for (const dir of dirs) {
          fs.mkdirSync(path.join(mnt, dir), { recursive: true });
          for (let i = 0; i < 4; i++) {
            const size = sizes[n % sizes.length];
            const rel = path.join(dir, `file-${n}-${size}.bin`);
            const data = crypto.randomBytes(size);
            fs.writeFileSync(path.join(mnt, rel), data);
            expected.set(rel, sha256(data));
            n++;
          }
        }
        await execOk('sync', ['-f', mnt]);
        await execOk('umount', [mnt]);
        // Drop the block device's cache, so that fsck and the remount read through nraid.
        await execOk('blockdev', ['--flushbufs', device]);

        const fsck = await execTool('e2fsck', ['-fn', device]);
        if (fsck.code !== 0) {
          throw new Error(`e2fsck -fn ${device} exited ${fsck.code}:\n${fsck.stdout.toString()}${fsck.stderr.toString()}`);
        }

        const readsBefore = Number((await r.status('alpha')).readBytes);
        await execOk('mount', [device, mnt]);
        const found = new Map<string, string>();
        const walk = (rel: string): void => {
          for (const entry of fs.readdirSync(path.join(mnt, rel), { withFileTypes: true })) {
            const child = path.join(rel, entry.name);
            if (entry.isDirectory()) {
              if (child !== 'lost+found') walk(child);
            } else {
              found.set(child, sha256(fs.readFileSync(path.join(mnt, child))));
            }
          }
        };
        walk('');
        expect(Object.fromEntries([...found].sort())).toEqual(Object.fromEntries([...expected].sort()));
        // The files came from the daemon, not from a cache above it.
        const readsAfter = Number((await r.status('alpha')).readBytes);
        expect(readsAfter - readsBefore).toBeGreaterThanOrEqual(3 * MiB);
        await execOk('umount', [mnt]);
      }, 120_000);
    });

    describe('discard, write-zeroes and flush', () => {
      let r: TestResource;
      let data: Buffer;
      const regionBytes = 16 * MiB;
      // Deliberately not MiB-aligned: 4 KiB granules at both ends.
      const discard = { offset: 4 * MiB + 12 * 1024, length: MiB + 20 * 1024 };
      const zeroes = { offset: 9 * MiB + 4096, length: 2 * MiB - 8192 };

      beforeAll(async () => {
        r = await makeResource({ nodes: 1, sizeBytes: 64 * MiB });
        await bringUpPrimary(r);
        data = crypto.randomBytes(regionBytes);
        // No zero 4 KiB block in the data: a zeroed range cannot look untouched.
        for (let i = 0; i < regionBytes; i += BLOCK_BYTES) data[i] |= 1;
        for (let offset = 0; offset < regionBytes; offset += MiB) {
          await writeDirect(r.nodes.alpha.device, offset, data.subarray(offset, offset + MiB));
        }
      }, 60_000);

      afterAll(async () => {
        await r?.cleanup();
      }, 60_000);

      /** What [0, regionBytes) must hold after both commands. */
      function expectedAfter(): Buffer {
        const e = Buffer.from(data);
        e.fill(0, discard.offset, discard.offset + discard.length);
        e.fill(0, zeroes.offset, zeroes.offset + zeroes.length);
        return e;
      }

      test('blkdiscard and blkdiscard -z zero exactly their ranges, on the device and on the backing disk', async () => {
        const device = r.nodes.alpha.device;
        const backing = r.nodes.alpha.diskPath;
        expectSameBytes('backing disk before discard', data, await readDirect(backing, 0, regionBytes));

        await execOk('blkdiscard', ['-o', String(discard.offset), '-l', String(discard.length), device]);
        await execOk('blkdiscard', ['-z', '-o', String(zeroes.offset), '-l', String(zeroes.length), device]);

        const want = expectedAfter();
        // The backing device while up: O_DIRECT without O_EXCL gets past the daemon's exclusive open.
        expectSameBytes('backing disk [0, 16 MiB) after discard and write-zeroes', want, await readDirect(backing, 0, regionBytes));
        expectSameBytes('device [0, 16 MiB) after discard and write-zeroes', want, await readDirect(device, 0, regionBytes));
        // Spelled out for the two ranges and their neighbours.
        for (const range of [discard, zeroes]) {
          const got = await readDirect(backing, range.offset, range.length);
          expect(got.equals(Buffer.alloc(range.length))).toBe(true);
          const left = await readDirect(backing, range.offset - 64 * 1024, 64 * 1024);
          const right = await readDirect(backing, range.offset + range.length, 64 * 1024);
          expectSameBytes('data before the range', data.subarray(range.offset - 64 * 1024, range.offset), left);
          expectSameBytes('data after the range', data.subarray(range.offset + range.length, range.offset + range.length + 64 * 1024), right);
        }
      }, 60_000);

      test('sync and fdatasync on the device succeed and raise the flushes counter', async () => {
        const device = r.nodes.alpha.device;
        const s0 = await r.status('alpha');
        await flushDevice(device); // coreutils sync DEVICE: fsync(2)
        const s1 = await r.status('alpha');
        expect(Number(s1.flushes)).toBeGreaterThan(Number(s0.flushes));

        // A buffered write made durable by fdatasync(2) reaches the backing disk.
        const block = crypto.randomBytes(BLOCK_BYTES);
        const offset = 20 * MiB;
        const fd = fs.openSync(device, 'r+');
        try {
          expect(fs.writeSync(fd, block, 0, block.length, offset)).toBe(block.length);
          fs.fdatasyncSync(fd);
        } finally {
          fs.closeSync(fd);
        }
        const s2 = await r.status('alpha');
        expect(Number(s2.flushes)).toBeGreaterThan(Number(s1.flushes));
        expect(s2.ioErrors).toBe(0);
        expectSameBytes('backing disk after fdatasync', block, await readDirect(r.nodes.alpha.diskPath, offset, BLOCK_BYTES));
      }, 60_000);

      test('after down the backing disk still holds the data with both ranges zeroed', async () => {
        await r.runOk('alpha', 'down');
        expectSameBytes('backing disk [0, 16 MiB) after down', expectedAfter(), await readDirect(r.nodes.alpha.diskPath, 0, regionBytes));
      }, 60_000);
    });
  },
);
