/**
 * The integration-test harness itself, against real loop devices: disks come
 * and go without leaks, the O_DIRECT helpers move the bytes they claim to,
 * and RandomWriter's verification catches a byte changed behind its back.
 */
import { spawn } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as net from 'net';
import { parse as parseToml } from 'smol-toml';
import {
  cleanupAll,
  harnessTempDir,
  loopBackingFile,
  loopDevices,
  makeTempSubdir,
  mountPoints,
  pendingCleanups,
} from '../harness/cleanup';
import { makeResource } from '../harness/cluster';
import {
  BLOCK_BYTES,
  compareRanges,
  RandomWriter,
  readDirect,
  sha256Range,
  sizeOf,
  writeDirect,
} from '../harness/direct-io';
import { execOk, execTool } from '../harness/exec';
import { LoopDisk, losetupList, makeLoopDisk, makeSparseFile } from '../harness/loop';
import { checkPrerequisites, describeIntegration, findExecutable, Need, REPO_ROOT } from '../harness/prereq';
import { RangeSet } from '../harness/range-set';

const MiB = 1024 * 1024;

/** Lines of `losetup -a` that name one of `files`. */
async function ourLoopLines(files: string[]): Promise<string[]> {
  return (await losetupList()).filter((line) => files.some((f) => line.includes(f)));
}

/** Flips every bit of one byte of a file with a plain buffered write (the loop device reads through the file). */
function flipByteInFile(file: string, offset: number): { before: number; after: number } {
  const fd = fs.openSync(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, offset);
    const before = b[0];
    b[0] = before ^ 0xff;
    fs.writeSync(fd, b, 0, 1, offset);
    fs.fsyncSync(fd);
    return { before, after: b[0] };
  } finally {
    fs.closeSync(fd);
  }
}

describe('RangeSet (the writer model bookkeeping)', () => {
  test('adds, merges adjacent ranges, subtracts and answers coverage', () => {
    const s = new RangeSet();
    s.add(100, 200);
    s.add(300, 400);
    s.add(200, 250); // adjacent to the first: merges
    expect(s.ranges()).toEqual([
      { start: 100, end: 250 },
      { start: 300, end: 400 },
    ]);
    s.add(0, 50);
    s.add(240, 310); // bridges two ranges
    expect(s.ranges()).toEqual([
      { start: 0, end: 50 },
      { start: 100, end: 400 },
    ]);
    s.subtract(150, 160);
    expect(s.ranges()).toEqual([
      { start: 0, end: 50 },
      { start: 100, end: 150 },
      { start: 160, end: 400 },
    ]);
    expect(s.totalBytes).toBe(50 + 50 + 240);
    expect(s.covers(100, 150)).toBe(true);
    expect(s.covers(100, 151)).toBe(false);
    expect(s.intersects(150, 160)).toBe(false);
    expect(s.intersects(149, 160)).toBe(true);
    expect(s.within(40, 170)).toEqual([
      { start: 40, end: 50 },
      { start: 100, end: 150 },
      { start: 160, end: 170 },
    ]);
    s.subtract(0, 1000);
    expect(s.size).toBe(0);
  });

  test('matches a byte-array model under random operations', () => {
    const n = 2000;
    const model = new Uint8Array(n);
    const s = new RangeSet();
    let seed = 7;
    const rand = (m: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % m;
    };
    for (let i = 0; i < 3000; i++) {
      const a = rand(n);
      const b = a + rand(200);
      const add = rand(3) > 0;
      if (add) s.add(a, Math.min(b, n));
      else s.subtract(a, Math.min(b, n));
      for (let k = a; k < Math.min(b, n); k++) model[k] = add ? 1 : 0;
    }
    const fromModel: { start: number; end: number }[] = [];
    for (let k = 0; k < n; k++) {
      if (!model[k]) continue;
      const last = fromModel[fromModel.length - 1];
      if (last && last.end === k) last.end++;
      else fromModel.push({ start: k, end: k + 1 });
    }
    expect(s.ranges()).toEqual(fromModel);
  });
});

describe('checkPrerequisites and describeIntegration', () => {
  test('reports what is missing, in words, and nothing that is present', () => {
    expect(checkPrerequisites(['dd'])).toEqual(findExecutable('dd') ? [] : [expect.stringMatching(/^dd /)]);
    expect(checkPrerequisites(['fio'])).toEqual(findExecutable('fio') ? [] : ['fio (apt-get install fio) not found on PATH']);
    expect(checkPrerequisites(['no-such-need' as Need])).toEqual(['unknown prerequisite "no-such-need"']);
    expect(checkPrerequisites(['root'])).toEqual(process.getuid?.() === 0 ? [] : [expect.stringMatching(/^root/)]);
  });

  test('a missing need fails the suite under CI=true and skips it, with a warning, elsewhere', async () => {
    const dir = makeTempSubdir('probe');
    try {
      fs.writeFileSync(
        path.join(dir, 'probe.test.ts'),
        `import { describeIntegration, Need } from ${JSON.stringify(path.join(REPO_ROOT, 'test', 'harness', 'prereq'))};\n` +
          `describeIntegration('probe', ['no-such-need' as Need], () => { test('body', () => { throw new Error('the body ran'); }); });\n`,
      );
      fs.writeFileSync(
        path.join(dir, 'jest.config.js'),
        `module.exports = ${JSON.stringify({
          rootDir: dir,
          testEnvironment: 'node',
          transform: { '^.+\\.ts$': [require.resolve('ts-jest'), { tsconfig: path.join(REPO_ROOT, 'tsconfig.json'), diagnostics: false }] },
        })};\n`,
      );
      const jestBin = path.join(REPO_ROOT, 'node_modules', 'jest', 'bin', 'jest.js');
      const runProbe = (ci: string) =>
        execTool(process.execPath, [jestBin, '-c', path.join(dir, 'jest.config.js')], {
          cwd: dir,
          env: { ...process.env, CI: ci, FORCE_COLOR: '0', NO_COLOR: '1' },
          timeoutMs: 60_000,
        });
      const [underCi, outside] = await Promise.all([runProbe('true'), runProbe('')]);
      const ciText = underCi.stderr.toString() + underCi.stdout.toString();
      expect(underCi.code).toBe(1);
      expect(ciText).toContain('integration test "probe" cannot run, missing: unknown prerequisite "no-such-need"');
      expect(ciText).toMatch(/Tests:\s+1 failed, 1 total/);
      expect(ciText).not.toContain('the body ran');
      const outText = outside.stderr.toString() + outside.stdout.toString();
      expect(outside.code).toBe(0);
      expect(outText).toContain('skipping integration test "probe": missing unknown prerequisite "no-such-need"');
      expect(outText).toMatch(/Tests:\s+1 skipped, 1 total/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describeIntegration('test harness on real loop devices', ['root', 'loop', 'dd'], () => {
  jest.setTimeout(120_000);

  test('makeLoopDisk attaches a sparse file of the asked size; detach removes device and file', async () => {
    const disk = await makeLoopDisk(16 * MiB, 'hx-attach');
    expect(disk.device).toMatch(/^\/dev\/loop\d+$/);
    expect(disk.file.startsWith(harnessTempDir() + '/')).toBe(true);
    const st = fs.statSync(disk.file);
    expect(st.size).toBe(16 * MiB);
    expect(st.blocks * 512).toBeLessThan(MiB); // sparse
    expect(fs.statSync(disk.device).isBlockDevice()).toBe(true);
    expect(await sizeOf(disk.device)).toBe(16 * MiB);
    expect(loopBackingFile(disk.device)).toBe(disk.file);
    expect(await ourLoopLines([disk.file])).toHaveLength(1);
    expect(pendingCleanups()).toContain(`loop device ${disk.device} (${disk.file})`);

    await disk.detach();
    expect(loopBackingFile(disk.device)).not.toBe(disk.file);
    expect(await ourLoopLines([disk.file])).toEqual([]);
    expect(fs.existsSync(disk.file)).toBe(false);
    expect(pendingCleanups().filter((l) => l.includes(disk.file))).toEqual([]);
    await disk.detach(); // twice is harmless
  });

  test('writeDirect / readDirect round-trip at aligned offsets; sha256Range agrees with node crypto', async () => {
    const disk = await makeLoopDisk(8 * MiB, 'hx-dio');
    try {
      const a = crypto.randomBytes(MiB + 3 * BLOCK_BYTES);
      const b = crypto.randomBytes(BLOCK_BYTES);
      await writeDirect(disk.device, 3 * BLOCK_BYTES, a);
      await writeDirect(disk.device, 7 * MiB, b);
      expect((await readDirect(disk.device, 3 * BLOCK_BYTES, a.length)).equals(a)).toBe(true);
      expect((await readDirect(disk.device, 7 * MiB, BLOCK_BYTES)).equals(b)).toBe(true);
      // Around the write: still zero.
      expect((await readDirect(disk.device, 0, 3 * BLOCK_BYTES)).equals(Buffer.alloc(3 * BLOCK_BYTES))).toBe(true);

      // The backing file holds the same bytes (the write went through the device).
      const fromFile = Buffer.alloc(a.length);
      const fd = fs.openSync(disk.file, 'r');
      fs.readSync(fd, fromFile, 0, a.length, 3 * BLOCK_BYTES);
      fs.closeSync(fd);
      expect(fromFile.equals(a)).toBe(true);

      const whole = await readDirect(disk.device, 0, 8 * MiB);
      const expected = crypto.createHash('sha256').update(whole).digest('hex');
      expect(await sha256Range(disk.device, 0, 8 * MiB)).toBe(expected);
      expect(await sha256Range(disk.file, 0, 8 * MiB)).toBe(expected); // buffered path, regular file
      expect(await sha256Range(disk.device, 3 * BLOCK_BYTES, a.length)).toBe(
        crypto.createHash('sha256').update(a).digest('hex'),
      );
      // Unaligned ranges are read buffered rather than refused.
      expect(await sha256Range(disk.device, 3 * BLOCK_BYTES + 1, 100)).toBe(
        crypto.createHash('sha256').update(a.subarray(1, 101)).digest('hex'),
      );

      await expect(writeDirect(disk.device, 100, b)).rejects.toThrow(/multiple of 4096/);
      await expect(writeDirect(disk.device, 0, Buffer.alloc(100))).rejects.toThrow(/multiple of 4096/);
      await expect(readDirect(disk.device, 8 * MiB - BLOCK_BYTES, 2 * BLOCK_BYTES)).rejects.toThrow(/short read/);
      await expect(writeDirect(disk.device, 8 * MiB, b)).rejects.toThrow(/dd/);
    } finally {
      await disk.detach();
    }
  });

  test('sha256Range streams a range larger than any buffer it keeps', async () => {
    const file = await makeSparseFile(1024 * MiB, 'hx-big');
    try {
      const tail = crypto.randomBytes(BLOCK_BYTES);
      const fd = fs.openSync(file.file, 'r+');
      fs.writeSync(fd, tail, 0, tail.length, 1024 * MiB - BLOCK_BYTES);
      fs.closeSync(fd);
      const hash = crypto.createHash('sha256');
      const zeros = Buffer.alloc(MiB);
      for (let i = 0; i < 1023; i++) hash.update(zeros);
      hash.update(Buffer.alloc(MiB - BLOCK_BYTES));
      hash.update(tail);
      const heapBefore = process.memoryUsage().rss;
      expect(await sha256Range(file.file, 0, 1024 * MiB)).toBe(hash.digest('hex'));
      expect(process.memoryUsage().rss - heapBefore).toBeLessThan(256 * MiB);
    } finally {
      await file.remove();
    }
  });

  test('compareRanges reports exactly the differing blocks between two devices', async () => {
    const [x, y] = [await makeLoopDisk(4 * MiB, 'hx-cmp-x'), await makeLoopDisk(4 * MiB, 'hx-cmp-y')];
    try {
      const data = crypto.randomBytes(4 * MiB);
      await writeDirect(x.device, 0, data);
      await writeDirect(y.device, 0, data);
      expect(await compareRanges(x.device, y.device, 0, 4 * MiB)).toEqual({
        equal: true,
        comparedBytes: 4 * MiB,
        mismatchBlocks: 0,
        mismatches: [],
      });
      const bad = Buffer.from(data.subarray(MiB, MiB + 2 * BLOCK_BYTES));
      bad[5] ^= 1;
      bad[BLOCK_BYTES + 9] ^= 1;
      await writeDirect(y.device, MiB, bad);
      const last = Buffer.from(data.subarray(4 * MiB - BLOCK_BYTES));
      last[BLOCK_BYTES - 1] ^= 0x80;
      await writeDirect(y.device, 4 * MiB - BLOCK_BYTES, last);
      const r = await compareRanges(x.device, y.device, 0, 4 * MiB);
      expect(r.equal).toBe(false);
      expect(r.mismatchBlocks).toBe(3);
      expect(r.mismatches).toEqual([
        { offsetBytes: MiB, lengthBytes: 2 * BLOCK_BYTES, firstByteOffset: MiB + 5, expected: data[MiB + 5], found: data[MiB + 5] ^ 1 },
        {
          offsetBytes: 4 * MiB - BLOCK_BYTES,
          lengthBytes: BLOCK_BYTES,
          firstByteOffset: 4 * MiB - 1,
          expected: data[4 * MiB - 1],
          found: data[4 * MiB - 1] ^ 0x80,
        },
      ]);
    } finally {
      await y.detach();
      await x.detach();
    }
  });

  describe('RandomWriter', () => {
    let disk: LoopDisk;
    let writer: RandomWriter;

    beforeAll(async () => {
      disk = await makeLoopDisk(128 * MiB, 'hx-rw');
      writer = await RandomWriter.create({ device: disk.device, sizeBytes: 128 * MiB, concurrency: 2 });
    });
    afterAll(async () => {
      await writer?.close();
      await disk?.detach();
    });

    test('writes 64 MiB at random and the device matches the model byte for byte', async () => {
      const t0 = Date.now();
      let bytes = 0;
      let writes = 0;
      while (bytes < 64 * MiB) {
        const s = await writer.run(16);
        bytes += s.bytes;
        writes += s.writes;
        expect(s.failures).toBe(0);
      }
      const writeMs = Date.now() - t0;
      expect(writer.log).toHaveLength(writes);
      for (const w of writer.log) {
        expect(w.offsetBytes % BLOCK_BYTES).toBe(0);
        expect(w.lengthBytes).toBeGreaterThanOrEqual(BLOCK_BYTES);
        expect(w.lengthBytes).toBeLessThanOrEqual(MiB);
        expect(w.offsetBytes + w.lengthBytes).toBeLessThanOrEqual(128 * MiB);
      }
      // Random offsets overlap: some bytes were written twice, some never.
      expect(writer.written.totalBytes).toBeLessThan(bytes);
      expect(writer.written.totalBytes).toBeGreaterThan(16 * MiB);

      const t1 = Date.now();
      const report = await writer.verify();
      const verifyMs = Date.now() - t1;
      expect(report.summary).toMatch(/bytes match/);
      expect(report.ok).toBe(true);
      expect(report.checkedBytes).toBe(128 * MiB);
      expect(report.mismatchBlocks).toBe(0);
      console.log(
        `RandomWriter: ${writes} writes, ${(bytes / MiB).toFixed(1)} MiB in ${writeMs} ms; ` +
          `verify of 128 MiB in ${verifyMs} ms (seed ${writer.seed})`,
      );
      expect(writeMs).toBeLessThan(60_000);

      // The model really holds the data: spot-check the last write against its regenerated contents.
      const last = writer.log[writer.log.length - 1];
      const onDevice = await readDirect(disk.device, last.offsetBytes, last.lengthBytes);
      expect(onDevice.equals(writer.dataFor(last.index, last.lengthBytes))).toBe(true);
    });

    test('a byte changed behind its back is found, in a written and in a never-written block', async () => {
      const last = writer.log[writer.log.length - 1];
      const target = last.offsetBytes + Math.floor(last.lengthBytes / 2) + 3;
      const flipped = flipByteInFile(disk.file, target);

      const holes: { start: number; end: number }[] = [];
      let pos = 0;
      for (const r of writer.written.ranges()) {
        if (r.start > pos) holes.push({ start: pos, end: r.start });
        pos = r.end;
      }
      if (pos < 128 * MiB) holes.push({ start: pos, end: 128 * MiB });
      expect(holes.length).toBeGreaterThan(0);
      const hole = holes[0].start + 17;
      flipByteInFile(disk.file, hole);

      const report = await writer.verify();
      expect(report.ok).toBe(false);
      expect(report.mismatchBlocks).toBe(2);
      const byOffset = [...report.mismatches].sort((p, q) => p.firstByteOffset - q.firstByteOffset);
      const expectedRuns = [
        {
          firstByteOffset: target,
          offsetBytes: target - (target % BLOCK_BYTES),
          lengthBytes: BLOCK_BYTES,
          expected: flipped.before,
          found: flipped.after,
          lastWrite: last,
        },
        {
          firstByteOffset: hole,
          offsetBytes: hole - (hole % BLOCK_BYTES),
          lengthBytes: BLOCK_BYTES,
          expected: 0,
          found: 0xff,
          lastWrite: undefined,
        },
      ].sort((p, q) => p.firstByteOffset - q.firstByteOffset);
      expect(byOffset).toEqual(expectedRuns);
      expect(report.summary).toContain(`byte ${target}`);
      expect(report.summary).toContain(`write #${last.index}`);
      await expect(writer.verifyOrThrow()).rejects.toThrow(/2 of 32768 checked 4 KiB blocks differ/);

      // Verifying only the range around the hole sees one of them.
      const around = await writer.verify({ offsetBytes: hole - (hole % BLOCK_BYTES), lengthBytes: BLOCK_BYTES });
      expect(around.mismatchBlocks).toBe(1);

      // Put both bytes back: clean again.
      flipByteInFile(disk.file, target);
      flipByteInFile(disk.file, hole);
      expect((await writer.verify()).ok).toBe(true);
    });

    test("baseline 'ignore' checks written bytes only; a failed write makes its range uncertain until rewritten", async () => {
      const small = await makeLoopDisk(4 * MiB, 'hx-rw-small');
      // The region claims 8 MiB of a 4 MiB device, so writes past 4 MiB fail.
      const w = await RandomWriter.create({ device: small.device, sizeBytes: 8 * MiB, baseline: 'ignore', seed: 1 });
      try {
        await writeDirect(small.device, 0, Buffer.alloc(4 * MiB, 0x5a)); // not zero, not in the model
        await w.writeAt(MiB, 64 * 1024);
        await expect(w.writeAt(4 * MiB - 8 * 1024, 16 * 1024)).rejects.toThrow(/dd/);
        expect(w.failures).toHaveLength(1);
        expect(w.uncertain.ranges()).toEqual([{ start: 4 * MiB - 8 * 1024, end: 4 * MiB + 8 * 1024 }]);

        const r1 = await w.verify({ offsetBytes: 0, lengthBytes: 4 * MiB });
        expect(r1.ok).toBe(true);
        expect(r1.checkedBytes).toBe(64 * 1024);
        expect(r1.uncertainBytes).toBe(8 * 1024);

        // An acknowledged write over the uncertain blocks makes them certain again.
        await w.writeAt(4 * MiB - 8 * 1024, 8 * 1024);
        expect(w.uncertain.ranges()).toEqual([{ start: 4 * MiB, end: 4 * MiB + 8 * 1024 }]);
        const r2 = await w.verify({ offsetBytes: 0, lengthBytes: 4 * MiB });
        expect(r2.ok).toBe(true);
        expect(r2.checkedBytes).toBe(72 * 1024);

        // A change inside a written range is caught; one outside is not this baseline's business.
        flipByteInFile(small.file, MiB + 100);
        flipByteInFile(small.file, 2 * MiB);
        const r3 = await w.verify({ offsetBytes: 0, lengthBytes: 4 * MiB });
        expect(r3.mismatchBlocks).toBe(1);
        expect(r3.mismatches[0].firstByteOffset).toBe(MiB + 100);

        // run() with onError 'record' keeps going past failures.
        const s = await w.run(40, { onError: 'record' });
        expect(s.writes + s.failures).toBe(40);
        expect(s.failures).toBeGreaterThan(0);
        expect(w.failures.length).toBe(1 + s.failures);
        await expect(w.run(40)).rejects.toThrow(/seed 1/);
      } finally {
        await w.close();
        await small.detach();
      }
    });

    test('the same seed gives the same writes', async () => {
      const small = await makeLoopDisk(8 * MiB, 'hx-rw-seed');
      const made: RandomWriter[] = [];
      try {
        for (let i = 0; i < 2; i++) {
          const w = await RandomWriter.create({ device: small.device, sizeBytes: 8 * MiB, seed: 12345 });
          made.push(w);
          await w.run(10);
        }
        const [p, q] = made;
        expect(q.log.map((w) => [w.offsetBytes, w.lengthBytes])).toEqual(p.log.map((w) => [w.offsetBytes, w.lengthBytes]));
        expect(q.dataFor(3, 8192).equals(p.dataFor(3, 8192))).toBe(true);
        expect(q.dataFor(3, 8192).equals(q.dataFor(4, 8192))).toBe(false);
        await expect(sha256Range(p.modelFile, 0, 8 * MiB)).resolves.toBe(await sha256Range(q.modelFile, 0, 8 * MiB));
        expect((await q.verify()).ok).toBe(true);
      } finally {
        for (const w of made) await w.close();
        await small.detach();
      }
    });
  });

  describe('makeResource (cluster fixture)', () => {
    test('writes a two-node config on 127.0.0.1 with distinct free ports, disks and paths; extra merges and deletes', async () => {
      const r = await makeResource({
        nodes: 2,
        sizeBytes: 32 * MiB,
        protocol: 'B',
        extra: { 'ping-timeout-ms': 700, secret: null, nodes: { beta: { 'run-dir': null } } },
      });
      try {
        expect(r.name).toMatch(new RegExp(`^t${process.pid}r\\d+[0-9a-f]{4}$`));
        const parsed = parseToml(fs.readFileSync(r.configPath, 'utf8')) as Record<string, any>;
        expect(parsed.resource).toBe(r.name);
        expect(parsed.protocol).toBe('B');
        expect(parsed['ping-timeout-ms']).toBe(700);
        expect(parsed.secret).toBeUndefined();
        expect(Object.keys(parsed.nodes).sort()).toEqual(['alpha', 'beta']);
        const { alpha, beta } = r.nodes;
        expect(parsed.nodes.alpha).toEqual({
          address: `127.0.0.1:${alpha.port}`,
          disk: alpha.disk!.device,
          device: `/dev/nraid/${r.name}-alpha`,
          'run-dir': alpha.runDir,
        });
        expect(parsed.nodes.beta['run-dir']).toBeUndefined();
        expect(parsed.nodes.beta.disk).toBe(beta.disk!.device);
        expect(alpha.port).not.toBe(beta.port);
        expect(alpha.disk!.device).not.toBe(beta.disk!.device);
        expect(await sizeOf(beta.disk!.device)).toBe(32 * MiB);
        // The ports were free when chosen: we can bind them.
        for (const port of [alpha.port, beta.port]) {
          const server = net.createServer();
          await new Promise<void>((resolve, reject) => {
            server.once('error', reject);
            server.listen(port, '127.0.0.1', () => resolve());
          });
          await new Promise<void>((resolve) => server.close(() => resolve()));
        }
      } finally {
        await r.cleanup();
      }
      expect(fs.existsSync(r.dir)).toBe(false);
      expect(fs.existsSync(r.nodes.alpha.disk!.file)).toBe(false);
      expect(await ourLoopLines([r.nodes.alpha.disk!.file, r.nodes.beta.disk!.file])).toEqual([]);
    });

    test('with nodes: 1 only alpha gets a disk; beta stays in the config', async () => {
      const r = await makeResource({ nodes: 1, sizeBytes: 16 * MiB });
      try {
        expect(r.activeNodes).toEqual(['alpha']);
        expect(r.nodes.beta.disk).toBeUndefined();
        const parsed = parseToml(fs.readFileSync(r.configPath, 'utf8')) as Record<string, any>;
        expect(parsed.nodes.beta.disk).toBe(r.nodes.beta.diskPath);
        expect(fs.existsSync(r.nodes.beta.diskPath)).toBe(false);
        expect(parsed.protocol).toBe('C');
      } finally {
        await r.cleanup();
      }
    });
  });

  describeIntegration('makeResource with the real CLI', ['root', 'loop', 'dd', 'fuse', 'nraid-cli'], () => {
    test('create-md, up, primary --force: status and the device work; cleanup leaves no device, mount or daemon', async () => {
      const r = await makeResource({ nodes: 1, sizeBytes: 64 * MiB });
      const files = [r.nodes.alpha.disk!.file];
      try {
        const bad = await r.run('alpha', 'no-such-command');
        expect(bad.code).toBe(1);
        expect(bad.stderr).toMatch(/^error: .*\(NRAID_ERR_USAGE\)/);

        await r.runOk('alpha', 'create-md');
        await r.runOk('alpha', 'up');
        await r.runOk('alpha', 'primary', ['--force']);
        const s = await r.waitFor('alpha', (x) => x.role === 'Primary' && x.disk === 'UpToDate', 20_000);
        expect(s.resource).toBe(r.name);
        expect(s.node).toBe('alpha');
        expect(s.device).toBe(r.nodes.alpha.device);
        await expect(r.waitFor('alpha', (x) => x.role === 'Secondary', 300)).rejects.toThrow(/timed out after 300 ms; last: .*Primary/);

        const data = crypto.randomBytes(MiB);
        await writeDirect(r.nodes.alpha.device, 4 * MiB, data);
        expect((await readDirect(r.nodes.alpha.device, 4 * MiB, MiB)).equals(data)).toBe(true);
      } finally {
        await r.cleanup();
      }
      expect(fs.existsSync(r.nodes.alpha.device)).toBe(false);
      expect(await ourLoopLines(files)).toEqual([]);
      expect(loopDevices().filter((l) => l.backingFile.startsWith(r.dir))).toEqual([]);
      expect(mountPoints().filter((m) => m.startsWith(r.dir))).toEqual([]);
      expect(fs.existsSync(r.dir)).toBe(false);
    });

    test('after kill -9 of a Primary, cleanup still detaches its exposed loop device (over the dead FUSE file)', async () => {
      const r = await makeResource({ nodes: 1, sizeBytes: 64 * MiB });
      let exposed = '';
      try {
        await r.runOk('alpha', 'create-md');
        await r.runOk('alpha', 'up');
        await r.runOk('alpha', 'primary', ['--force']);
        const s = await r.waitFor('alpha', (x) => x.role === 'Primary' && typeof x.loopDevice === 'string', 20_000);
        exposed = s.loopDevice as string;
        expect(loopBackingFile(exposed)).toMatch(new RegExp(`^${r.dir}/`));
        process.kill(s.pid as number, 'SIGKILL');
        for (let i = 0; i < 100 && fs.existsSync(`/proc/${s.pid as number}`); i++) await new Promise((res) => setTimeout(res, 50));
      } finally {
        await r.cleanup().catch(() => undefined); // `down` of a dead daemon may complain; what is left is checked below
      }
      // Before the fix the sweep unmounted the FUSE mount lazily first, the loop's backing path
      // turned into "/", and the loop device stayed attached.
      expect(exposed).not.toBe('');
      expect(loopBackingFile(exposed)).toBeUndefined();
      expect(mountPoints().filter((m) => m.startsWith(r.dir))).toEqual([]);
    });
  });

  test('cleanupAll detaches and removes everything the harness made, and nothing outside its temp dir', async () => {
    // A loop device of ours that the harness did not make and must not touch.
    const outsideDir = fs.mkdtempSync(path.join(fs.realpathSync(os.tmpdir()), `nraid-outside-${process.pid}-`));
    const outsideFile = path.join(outsideDir, 'outside.img');
    fs.writeFileSync(outsideFile, Buffer.alloc(MiB));
    const outside = (await execOk('losetup', ['--find', '--show', outsideFile])).toString().trim();
    try {
      const a = await makeLoopDisk(4 * MiB, 'hx-clean-a');
      const b = await makeLoopDisk(4 * MiB, 'hx-clean-b');
      const f = await makeSparseFile(MiB, 'hx-clean-f');
      // Attached behind the registry's back, as a daemon under test might: found by the temp-dir sweep.
      const strayFile = path.join(harnessTempDir(), 'stray.img');
      fs.writeFileSync(strayFile, Buffer.alloc(MiB));
      const stray = (await execOk('losetup', ['--find', '--show', strayFile])).toString().trim();
      const ours = [a.file, b.file, strayFile];
      expect(await ourLoopLines(ours)).toHaveLength(3);
      const dir = harnessTempDir();

      await cleanupAll();

      expect(await ourLoopLines(ours)).toEqual([]);
      expect(loopBackingFile(a.device)).not.toBe(a.file);
      expect(loopBackingFile(b.device)).not.toBe(b.file);
      expect(loopBackingFile(stray)).not.toBe(strayFile);
      for (const file of [a.file, b.file, f.file, strayFile]) expect(fs.existsSync(file)).toBe(false);
      expect(fs.existsSync(dir)).toBe(false);
      expect(pendingCleanups()).toEqual([]);
      expect(loopBackingFile(outside)).toBe(outsideFile);
      expect(await ourLoopLines([outsideFile])).toHaveLength(1);
    } finally {
      if (loopBackingFile(outside) === outsideFile) await execOk('losetup', ['-d', outside]);
      fs.rmSync(outsideDir, { recursive: true, force: true });
    }
  });

  describe('exit-time cleanup in a separate process', () => {
    // A child process loads the harness (transpiled on the fly), makes a loop
    // disk, and then ends without calling cleanupAll: by exit() or by SIGTERM.
    const childScript = (ending: 'exit' | 'sigterm') => `
      const fs = require('fs');
      const ts = require(${JSON.stringify(path.join(REPO_ROOT, 'node_modules', 'typescript'))});
      require.extensions['.ts'] = (m, filename) => {
        const out = ts.transpileModule(fs.readFileSync(filename, 'utf8'), {
          compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
        });
        m._compile(out.outputText, filename);
      };
      const { makeLoopDisk } = require(${JSON.stringify(path.join(REPO_ROOT, 'test', 'harness', 'loop.ts'))});
      makeLoopDisk(4 * 1024 * 1024, 'hx-child').then((d) => {
        process.stdout.write(JSON.stringify({ device: d.device, file: d.file }) + '\\n');
        if (${JSON.stringify(ending)} === 'exit') process.exit(3);
        setInterval(() => undefined, 1000);
      });
    `;

    for (const ending of ['exit', 'sigterm'] as const) {
      test(`a process that ends by ${ending} leaves no loop device or file behind`, async () => {
        const child = spawn(process.execPath, ['-e', childScript(ending)], { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        let err = '';
        child.stdout.on('data', (d: Buffer) => (out += d.toString()));
        child.stderr.on('data', (d: Buffer) => (err += d.toString()));
        const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
          child.on('exit', (code, signal) => resolve({ code, signal })),
        );
        try {
          const deadline = Date.now() + 30_000;
          while (!out.includes('\n') && child.exitCode === null) {
            if (Date.now() > deadline) throw new Error(`child printed nothing; stderr: ${err}`);
            await new Promise((r) => setTimeout(r, 20));
          }
          const made = JSON.parse(out.split('\n')[0]) as { device: string; file: string };
          expect(made.file).toContain(`nraid-test-${child.pid}-`);
          if (ending === 'sigterm') {
            expect(loopBackingFile(made.device)).toBe(made.file);
            child.kill('SIGTERM');
          }
          const how = await exited;
          if (ending === 'exit') expect(how.code).toBe(3);
          else expect(how.signal).toBe('SIGTERM');
          expect(loopBackingFile(made.device)).not.toBe(made.file);
          expect(await ourLoopLines([made.file])).toEqual([]);
          expect(fs.existsSync(made.file)).toBe(false);
          expect(fs.existsSync(path.dirname(made.file))).toBe(false);
          expect(err).toBe('');
        } finally {
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
        }
      });
    }
  });
});
