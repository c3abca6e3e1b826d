/**
 * A failing backing disk (issue 10 item 3) and on-io-error: under `detach` a
 * Primary whose disk fails goes Diskless and keeps serving reads and writes
 * through its UpToDate peer, with no error reaching the application and no
 * acknowledged write lost; under `pass-on` the application sees EIO; a
 * Secondary whose disk fails leaves, the Primary's bitmap records what it
 * misses, and `nraid attach` brings the disk back with a resync.
 */
import * as fs from 'fs';
import {
  FailingDisk,
  NraidStatus,
  RandomWriter,
  TestResource,
  bringUpPair,
  describeIntegration,
  makeFailingDisk,
  makeResource,
  num,
  readDirect,
  sha256Range,
  withDaemonLogs,
  writeDirect,
} from '../harness';

// Small, so that bring-up syncs and verifies stay short (the CI budget of this file is 120 s).
const SIZE_BYTES = 32 << 20;
const WRITER_BYTES = 8 << 20;

async function resourceOn(disks: { alpha?: FailingDisk; beta?: FailingDisk }, extra: Record<string, unknown> = {}, count: 1 | 2 = 2): Promise<TestResource> {
  const nodes: Record<string, unknown> = {};
  if (disks.alpha) nodes.alpha = { disk: disks.alpha.file };
  if (disks.beta) nodes.beta = { disk: disks.beta.file };
  return makeResource({ nodes: count, sizeBytes: SIZE_BYTES, protocol: 'C', extra: { ...extra, nodes, 'connect-retry-ms': 100 } });
}

function dataSize(s: NraidStatus): number {
  return num(s, 'dataSizeBytes');
}

describeIntegration('failing disk', ['root', 'fuse', 'loop', 'dd', 'nraid-cli', 'nbdkit'], () => {
  jest.setTimeout(90_000);

  test('the harness: O_DIRECT errors of the failing disk reach the caller as EIO, and stop when healed', async () => {
    const disk = await makeFailingDisk(8 << 20, 'probe');
    try {
      const block = Buffer.alloc(4096, 0x5a);
      await writeDirect(disk.file, 0, block);
      disk.failWrites(true);
      await expect(writeDirect(disk.file, 4096, block)).rejects.toThrow(/Input\/output error/);
      expect((await readDirect(disk.file, 0, 4096)).equals(block)).toBe(true);
      disk.failReads(true);
      await expect(readDirect(disk.file, 0, 4096)).rejects.toThrow(/Input\/output error/);
      disk.heal();
      await writeDirect(disk.file, 4096, block);
      expect((await readDirect(disk.file, 4096, 4096)).equals(block)).toBe(true);
    } finally {
      await disk.remove();
    }
    expect(fs.existsSync(disk.file)).toBe(false);
  });

  test('detach: a Secondary whose disk fails leaves and is attached again; then the Primary whose disk fails writes, then reads, is served by its peer, hands over and is attached again', async () => {
    // Both disks can fail: one bring-up for both halves (the CI budget of this file is 120 s).
    const diskA = await makeFailingDisk(SIZE_BYTES, 'det-alpha');
    const diskB = await makeFailingDisk(SIZE_BYTES, 'det-beta');
    const r = await resourceOn({ alpha: diskA, beta: diskB });
    const identical = async (size: number) => {
      const [a, b] = await Promise.all([sha256Range(diskA.file, 0, size), sha256Range(diskB.file, 0, size)]);
      expect(b).toBe(a);
    };
    try {
      await bringUpPair(r);
      const device = r.nodes.alpha.device;
      const writer = await RandomWriter.create({ device, sizeBytes: WRITER_BYTES, maxWriteBytes: 128 << 10, concurrency: 4 });
      await writer.run(20);

      // 1. The Secondary's disk fails: it leaves, the Primary goes on (run() throws on any failed write) and records what beta misses.
      diskB.failWrites(true);
      await writer.run(30);
      await withDaemonLogs(r, async () => {
        const beta = await r.waitFor('beta', (s) => s.disk === 'Diskless' && s.connection === 'StandAlone', 15_000);
        expect(beta.role).toBe('Secondary');
        const alpha = await r.waitFor('alpha', (s) => s.connection !== 'Connected', 15_000);
        expect(alpha.disk).toBe('UpToDate');
        expect(num(alpha, 'outOfSyncBytes')).toBeGreaterThan(0);
        // A disk that still fails is refused by attach, and the node stays Diskless.
        diskB.failReads(true);
        const early = await r.run('beta', 'attach');
        expect(early.code).toBe(1);
        expect(early.stderr).toMatch(/Input\/output error|EIO/);
        expect((await r.status('beta')).disk).toBe('Diskless');
        // The same disk works again: attach, resync from the Primary's bitmap.
        diskB.heal();
        await r.runOk('beta', 'attach');
        await r.waitFor('alpha', (s) => s.connection === 'Connected' && s.replication === 'Established' && s.outOfSyncBytes === 0 && s.peerDisk === 'UpToDate' && s.writesInFlight === 0, 60_000);
        const after = await r.waitFor('beta', (s) => s.disk === 'UpToDate' && s.replication === 'Established', 30_000);
        await identical(dataSize(after));
        await writer.verifyOrThrow({ device: diskB.file });
        // The operator's detach does the same with no error: Diskless, away; attach brings it back.
        await r.runOk('beta', 'detach');
        await r.waitFor('beta', (s) => s.disk === 'Diskless' && s.connection === 'StandAlone', 15_000);
        await writer.run(6);
        await r.runOk('beta', 'attach');
        await r.waitFor('alpha', (s) => s.replication === 'Established' && s.outOfSyncBytes === 0 && s.peerDisk === 'UpToDate' && s.writesInFlight === 0, 30_000);
        await r.waitFor('beta', (s) => s.disk === 'UpToDate' && s.replication === 'Established', 30_000);
        await writer.verifyOrThrow({ device: diskB.file });
      });

      // 2. The Primary's disk fails writes: Diskless, every write goes to beta, none fails.
      diskA.failWrites(true);
      await writer.run(30);
      const diskless = await r.waitFor('alpha', (s) => s.disk === 'Diskless', 10_000);
      expect(diskless.role).toBe('Primary');
      expect(diskless.servedByPeer).toBe(true);
      expect(diskless.diskFailure).toMatch(/Input\/output error/);
      expect(num(diskless, 'localIoErrors')).toBeGreaterThan(0);
      expect(num(diskless, 'peerWrites')).toBeGreaterThan(0);
      const beta = await r.status('beta');
      expect(beta.peerDisk).toBe('Diskless');
      expect(beta.disk).toBe('UpToDate');
      // Reads fail too now; they come from the peer (the disk is not read any more either way).
      diskA.failReads(true);
      await writer.run(10);
      await writer.verifyOrThrow();
      expect(num(await r.status('alpha'), 'peerReads')).toBeGreaterThan(0);
      // Every acknowledged write is on the peer's disk.
      await writer.verifyOrThrow({ device: diskB.file });
      // Attach is refused while Primary, with what to do.
      const attach = await r.run('alpha', 'attach');
      expect(attach.code).toBe(1);
      expect(attach.stderr).toMatch(/switch over first/);

      // 3. The way back: hand over to beta, then attach the disk (here the same one, working again,
      // with its stale metadata): beta started a generation of its own when alpha went Diskless,
      // so alpha's disk is behind and gets every block.
      await withDaemonLogs(r, async () => {
        await r.runOk('alpha', 'switchover');
        await r.waitFor('alpha', (s) => s.role === 'Secondary' && s.connection === 'StandAlone', 15_000);
        diskA.heal();
        await r.runOk('alpha', 'attach');
        await r.waitFor('beta', (s) => s.role === 'Primary' && s.replication === 'Established' && s.outOfSyncBytes === 0 && s.peerDisk === 'UpToDate', 30_000);
        const attached = await r.waitFor('alpha', (s) => s.disk === 'UpToDate' && s.replication === 'Established', 30_000);
        await identical(dataSize(attached));
        await writer.verifyOrThrow({ device: diskA.file });
      });
    } finally {
      diskA.heal();
      diskB.heal();
      await r.cleanup();
      await diskA.remove();
      await diskB.remove();
    }
  }, 180_000);

  test('pass-on: the application sees EIO, the disk stays attached, the error is counted', async () => {
    const disk = await makeFailingDisk(SIZE_BYTES, 'pass-alpha');
    // One node: pass-on never involves the peer, and a bring-up without a sync is quicker.
    const r = await resourceOn({ alpha: disk }, { 'on-io-error': 'pass-on' }, 1);
    try {
      await r.runOk('alpha', 'create-md');
      await r.runOk('alpha', 'up');
      await r.runOk('alpha', 'primary', ['--force']);
      const device = r.nodes.alpha.device;
      await writeDirect(device, 0, Buffer.alloc(64 << 10, 1));
      disk.failWrites(true);
      await expect(writeDirect(device, 1 << 20, Buffer.alloc(64 << 10, 2))).rejects.toThrow(/Input\/output error/);
      disk.failWrites(false);
      const s = await r.status('alpha');
      expect(s.disk).toBe('UpToDate');
      expect(num(s, 'localIoErrors')).toBeGreaterThan(0);
      await writeDirect(device, 2 << 20, Buffer.alloc(64 << 10, 3));
      // The operator's detach is refused where nothing could serve the data.
      const detach = await r.run('alpha', 'detach');
      expect(detach.code).toBe(1);
      expect(detach.stderr).toMatch(/not an UpToDate peer that could serve/);
      expect((await r.status('alpha')).disk).toBe('UpToDate');
    } finally {
      disk.heal();
      await r.cleanup();
      await disk.remove();
    }
  });
});
