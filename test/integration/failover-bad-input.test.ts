/**
 * Failover commands refused in the wrong state (failover issue): `primary` on
 * an Inconsistent disk without --force, `secondary` and `switchover` with the
 * device mounted, `switchover` while disconnected or while a resync runs,
 * `connect --discard-my-data` on a Primary whose device is mounted. Each
 * refusal: exit 1, one `error: <message> (<code>)` line on stderr whose
 * message says why, and nothing changed (role, exposed device, mount).
 * Also the no-peer policies: on-no-peer = "suspend-io" holds writes until
 * `resume-io`; a fence-peer hook that exits 0 lets writes go on, one that
 * exits 1 holds them until `resume-io`.
 */
import { ChildProcess, spawn } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { makeTempSubdir, mountPoints } from '../harness/cleanup';
import { makeResource, NraidStatus, TestResource } from '../harness/cluster';
import { BLOCK_BYTES, readDirect } from '../harness/direct-io';
import { execOk, execTool, toolEnv } from '../harness/exec';
import { describeIntegration } from '../harness/prereq';
import { bringUpPair, connectedUpToDate, expectRefused, FAST_FAILOVER_CONFIG, pathExists } from '../harness/helpers';

const MiB = 1024 * 1024;

/** Replicating with nothing out of sync (lag aside). */
const established = (s: NraidStatus): boolean => connectedUpToDate(s) && s.outOfSyncBytes === 0;

/**
 * `connect` on beta, then on alpha too: alpha (its name sorts first) is the
 * node that dials, and after being refused while beta was StandAlone it waits
 * out a growing backoff (up to 10 s); `connect` makes it dial now.
 */
async function reconnect(r: TestResource): Promise<void> {
  await r.runOk('beta', 'connect');
  await r.runOk('alpha', 'connect');
}

/** A dd writing `data` at `offset` with O_DIRECT, in the background. */
function startDd(device: string, offset: number, data: Buffer): { child: ChildProcess; done: Promise<{ code: number | null; stderr: string; atMs: number }> } {
  const child = spawn('dd', [`of=${device}`, `bs=${data.length}`, `seek=${offset}B`, 'iflag=fullblock', 'oflag=direct', 'conv=notrunc', 'status=none'], {
    stdio: ['pipe', 'ignore', 'pipe'],
    env: toolEnv(),
  });
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (s: string) => (stderr += s));
  child.stdin!.on('error', () => undefined);
  child.stdin!.end(data);
  const done = new Promise<{ code: number | null; stderr: string; atMs: number }>((resolve) =>
    child.on('close', (code) => resolve({ code, stderr, atMs: Date.now() })),
  );
  return { child, done };
}

/** Resolves with the value, or with 'pending' if it is not there within `ms`. */
async function within<T>(p: Promise<T>, ms: number): Promise<T | 'pending'> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<'pending'>((resolve) => (timer = setTimeout(() => resolve('pending'), ms)));
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}

async function waitForFile(file: string, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const text = fs.readFileSync(file, 'utf8');
      if (text.includes('\nEND\n')) return text;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`${file} was not written within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describeIntegration('failover: refusals and no-peer policies', ['root', 'fuse', 'loop', 'dd', 'mkfs.ext4', 'nraid-cli'], () => {
  describe('refused in the wrong state', () => {
    let r: TestResource;
    let mnt: string;

    beforeAll(async () => {
      r = await makeResource({ nodes: 2, sizeBytes: 128 * MiB, extra: FAST_FAILOVER_CONFIG });
      mnt = makeTempSubdir('mnt');
    }, 60_000);

    afterAll(async () => {
      if (mnt !== undefined && mountPoints().includes(mnt)) await execTool('umount', [mnt]);
      await r?.cleanup();
    }, 60_000);

    test('primary on an Inconsistent disk without --force: NRAID_ERR_NOT_UP_TO_DATE, nothing exposed', async () => {
      for (const n of ['alpha', 'beta'] as const) await r.runOk(n, 'create-md');
      for (const n of ['alpha', 'beta'] as const) await r.runOk(n, 'up');
      await r.waitFor('alpha', (s) => s.connection === 'Connected', 15_000);
      for (const n of ['alpha', 'beta'] as const) {
        const before = await r.status(n);
        expect(before).toMatchObject({ role: 'Secondary', disk: 'Inconsistent', exposed: false });
        expectRefused(await r.run(n, 'primary'), 'NRAID_ERR_NOT_UP_TO_DATE', ['Inconsistent', '--force', 'wait']);
        const after = await r.status(n);
        expect(after).toMatchObject({ role: 'Secondary', disk: 'Inconsistent', exposed: false, connection: 'Connected' });
        expect(after.uuids).toEqual(before.uuids);
        expect(pathExists(r.nodes[n].device)).toBe(false);
      }
      // --force is the way out the message names: it works, and the pair syncs.
      await r.runOk('alpha', 'primary', ['--force']);
      await r.waitFor('alpha', established, 60_000);
      await r.waitFor('beta', established, 15_000);
    }, 120_000);

    test('secondary with the device mounted: NRAID_ERR_DEVICE_BUSY naming the mount point; still Primary and mounted', async () => {
      const device = r.nodes.alpha.device;
      await execOk('mkfs.ext4', ['-q', '-F', device]);
      await execOk('mount', [device, mnt]);
      fs.writeFileSync(path.join(mnt, 'marker'), 'still here\n');
      const msg = expectRefused(await r.run('alpha', 'secondary'), 'NRAID_ERR_DEVICE_BUSY', [mnt]);
      expect(msg).toContain(device);
      const s = await r.status('alpha');
      expect(s).toMatchObject({ role: 'Primary', exposed: true, connection: 'Connected', replication: 'Established' });
      expect(mountPoints()).toContain(mnt);
      expect(fs.readFileSync(path.join(mnt, 'marker'), 'utf8')).toBe('still here\n');
      expect(fs.readlinkSync(device)).toBe(s.loopDevice);
    }, 60_000);

    test('switchover with the device mounted: NRAID_ERR_DEVICE_BUSY naming the mount point; roles unchanged', async () => {
      for (const n of ['alpha', 'beta'] as const) {
        expectRefused(await r.run(n, 'switchover'), 'NRAID_ERR_DEVICE_BUSY', [mnt, 'unmount']);
        expect(await r.status('alpha')).toMatchObject({ role: 'Primary', exposed: true, peerRole: 'Secondary' });
        expect(await r.status('beta')).toMatchObject({ role: 'Secondary', exposed: false, peerRole: 'Primary' });
        expect(mountPoints()).toContain(mnt);
      }
    }, 60_000);

    test('connect --discard-my-data on a Primary with its device mounted: refused naming the device; nothing changed', async () => {
      const msg = expectRefused(await r.run('alpha', 'connect', ['--discard-my-data']), 'NRAID_ERR_STATE', [
        r.nodes.alpha.device,
        'Primary',
        mnt,
      ]);
      expect(msg).toMatch(/secondary/);
      const s = await r.status('alpha');
      expect(s).toMatchObject({ role: 'Primary', exposed: true, discardMyData: false, connection: 'Connected', replication: 'Established' });
      expect(mountPoints()).toContain(mnt);
      // The refusal changed nothing the peer sees either: a later reconnect is not a discard.
      expect(await r.status('beta')).toMatchObject({ discardMyData: false, role: 'Secondary' });
      expect(fs.readFileSync(path.join(mnt, 'marker'), 'utf8')).toBe('still here\n');
    }, 60_000);

    test('switchover while disconnected: refused, says the peer is not connected; roles unchanged', async () => {
      await execOk('umount', [mnt]);
      await r.runOk('alpha', 'disconnect');
      await r.waitFor('alpha', (s) => s.connection === 'StandAlone', 10_000);
      await r.waitFor('beta', (s) => s.connection !== 'Connected', 10_000);
      for (const n of ['alpha', 'beta'] as const) {
        expectRefused(await r.run(n, 'switchover'), 'NRAID_ERR_STATE', ['peer is not connected']);
      }
      expect(await r.status('alpha')).toMatchObject({ role: 'Primary', exposed: true, connection: 'StandAlone' });
      expect(await r.status('beta')).toMatchObject({ role: 'Secondary', exposed: false });
      // Back together: the nodes reconnect and end Established with the same roles.
      await r.runOk('alpha', 'connect');
      await r.waitFor('alpha', established, 20_000);
      expect(await r.status('beta')).toMatchObject({ role: 'Secondary', peerRole: 'Primary' });
    }, 60_000);
  });

  describe('switchover while a resync runs', () => {
    let r: TestResource;

    beforeAll(async () => {
      r = await makeResource({ nodes: 2, sizeBytes: 1024 * MiB, extra: FAST_FAILOVER_CONFIG });
    }, 60_000);

    afterAll(async () => {
      await r?.cleanup();
    }, 120_000);

    test('refused on the SyncSource and on the SyncTarget, mentioning the sync; roles unchanged', async () => {
      for (const n of ['alpha', 'beta'] as const) await r.runOk(n, 'create-md');
      for (const n of ['alpha', 'beta'] as const) await r.runOk(n, 'up');
      await r.waitFor('alpha', (s) => s.connection === 'Connected', 15_000);
      await r.runOk('alpha', 'primary', ['--force']);
      // The initial full sync of 1 GiB: long enough to be caught in the act.
      const src = await r.waitFor('alpha', (s) => s.replication === 'SyncSource', 10_000);
      expect(src.outOfSyncBytes).toBeGreaterThan(0);
      const onSource = await r.run('alpha', 'switchover');
      const onTarget = await r.run('beta', 'switchover');
      const stillSyncing = await r.status('alpha');
      if (stillSyncing.replication !== 'SyncSource') {
        throw new Error(`the resync ended before the refusals could be checked (status ${JSON.stringify(stillSyncing)}); make the disk bigger`);
      }
      expectRefused(onSource, 'NRAID_ERR_STATE', ['SyncSource', /% done/, 'Established']);
      expectRefused(onTarget, 'NRAID_ERR_STATE', [/SyncTarget|Inconsistent/]);
      expect(stillSyncing).toMatchObject({ role: 'Primary', exposed: true, peerRole: 'Secondary' });
      expect(await r.status('beta')).toMatchObject({ role: 'Secondary', exposed: false, disk: 'Inconsistent' });
      expect(pathExists(r.nodes.beta.device)).toBe(false);
    }, 120_000);
  });

  describe('on-no-peer = suspend-io', () => {
    let r: TestResource;
    let dd: ChildProcess | undefined;

    beforeAll(async () => {
      r = await makeResource({ nodes: 2, sizeBytes: 128 * MiB, extra: { ...FAST_FAILOVER_CONFIG, 'on-no-peer': 'suspend-io' } });
      await bringUpPair(r, established);
    }, 120_000);

    afterAll(async () => {
      // A write still held would keep the device busy and make `down` refuse.
      await r?.run('alpha', 'resume-io').catch(() => undefined);
      if (dd && dd.exitCode === null && dd.signalCode === null) dd.kill('SIGKILL');
      await r?.cleanup();
    }, 60_000);

    test('losing the connected peer holds writes on the Primary until resume-io; nothing is lost', async () => {
      const device = r.nodes.alpha.device;
      const before = Buffer.alloc(MiB, 0x11);
      await execOk('dd', [`of=${device}`, `bs=${MiB}`, 'seek=0', 'oflag=direct', 'status=none'], { input: before });
      expect((await r.status('alpha')).ioSuspended).toBe(false);

      await r.runOk('beta', 'disconnect');
      await r.waitFor('alpha', (s) => s.connection !== 'Connected' && s.ioSuspended === true, 10_000);
      const data = crypto.randomBytes(MiB);
      const w = startDd(device, 8 * MiB, data);
      dd = w.child;
      expect(await within(w.done, 2000)).toBe('pending');
      const held = await r.status('alpha');
      expect(held).toMatchObject({ role: 'Primary', ioSuspended: true });
      // Reads are not what is held: the earlier data reads back.
      expect((await readDirect(device, 0, MiB)).equals(before)).toBe(true);

      const resumedAt = Date.now();
      await r.runOk('alpha', 'resume-io');
      const result = await within(w.done, 10_000);
      if (result === 'pending') throw new Error('the held write did not finish within 10 s of resume-io');
      expect(result.code).toBe(0);
      expect(result.atMs).toBeGreaterThanOrEqual(resumedAt);
      expect((await r.status('alpha')).ioSuspended).toBe(false);
      expect((await readDirect(device, 8 * MiB, MiB)).equals(data)).toBe(true);
      // A second resume-io has nothing to do and says so.
      expectRefused(await r.run('alpha', 'resume-io'), 'NRAID_ERR_STATE', ['not suspended']);

      // The peer comes back and gets what it missed.
      await reconnect(r);
      await r.waitFor('alpha', established, 20_000);
      await r.waitFor('beta', established, 10_000);
      expect((await readDirect(r.nodes.beta.diskPath, 8 * MiB, MiB)).equals(data)).toBe(true);
    }, 60_000);
  });

  describe('fence-peer hook', () => {
    let r: TestResource;
    let dir: string;
    let dd: ChildProcess | undefined;

    const hookOut = () => path.join(dir, 'fence.env');
    const exitCodeFile = () => path.join(dir, 'fence.exit');

    beforeAll(async () => {
      dir = makeTempSubdir('fence');
      const script = path.join(dir, 'fence-peer.sh');
      fs.writeFileSync(
        script,
        `#!/bin/sh\nenv | grep '^NRAID_' > ${hookOut()}.tmp\necho END >> ${hookOut()}.tmp\nmv ${hookOut()}.tmp ${hookOut()}\nexit $(cat ${exitCodeFile()})\n`,
        { mode: 0o755 },
      );
      fs.writeFileSync(exitCodeFile(), '0\n');
      r = await makeResource({ nodes: 2, sizeBytes: 128 * MiB, extra: { ...FAST_FAILOVER_CONFIG, hooks: { 'fence-peer': script } } });
      await bringUpPair(r, established);
    }, 120_000);

    afterAll(async () => {
      await r?.run('alpha', 'resume-io').catch(() => undefined);
      if (dd && dd.exitCode === null && dd.signalCode === null) dd.kill('SIGKILL');
      await r?.cleanup();
    }, 60_000);

    test('the hook exits 0: it ran with the situation in its environment, and writes go on', async () => {
      fs.writeFileSync(exitCodeFile(), '0\n');
      fs.rmSync(hookOut(), { force: true });
      await r.runOk('beta', 'disconnect');
      const env = await waitForFile(hookOut(), 10_000);
      expect(env).toContain('NRAID_EVENT=fence-peer\n');
      expect(env).toContain(`NRAID_RESOURCE=${r.name}\n`);
      expect(env).toContain('NRAID_NODE=alpha\n');
      expect(env).toContain('NRAID_PEER=beta\n');
      expect(env).toContain('NRAID_ROLE=Primary\n');
      await r.waitFor('alpha', (s) => s.ioSuspended === false, 5_000);
      const data = crypto.randomBytes(MiB);
      const w = startDd(r.nodes.alpha.device, 4 * MiB, data);
      dd = w.child;
      const result = await within(w.done, 5_000);
      if (result === 'pending') throw new Error('a write after a successful fence-peer hook did not finish within 5 s');
      expect(result.code).toBe(0);
      expect((await readDirect(r.nodes.alpha.device, 4 * MiB, MiB)).equals(data)).toBe(true);
      await reconnect(r);
      await r.waitFor('alpha', established, 20_000);
      expect((await readDirect(r.nodes.beta.diskPath, 4 * MiB, MiB)).equals(data)).toBe(true);
    }, 60_000);

    test('the hook exits 1: writes are held until resume-io', async () => {
      fs.writeFileSync(exitCodeFile(), '1\n');
      fs.rmSync(hookOut(), { force: true });
      await r.runOk('beta', 'disconnect');
      await waitForFile(hookOut(), 10_000);
      // The hook's answer has arrived; give the daemon a moment to act on it.
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(await r.status('alpha')).toMatchObject({ ioSuspended: true, role: 'Primary' });
      const data = crypto.randomBytes(BLOCK_BYTES * 16);
      const w = startDd(r.nodes.alpha.device, 12 * MiB, data);
      dd = w.child;
      expect(await within(w.done, 2000)).toBe('pending');
      expect((await r.status('alpha')).ioSuspended).toBe(true);
      await r.runOk('alpha', 'resume-io');
      const result = await within(w.done, 10_000);
      if (result === 'pending') throw new Error('the held write did not finish within 10 s of resume-io');
      expect(result.code).toBe(0);
      expect((await readDirect(r.nodes.alpha.device, 12 * MiB, data.length)).equals(data)).toBe(true);
      await reconnect(r);
      await r.waitFor('alpha', established, 20_000);
      expect((await readDirect(r.nodes.beta.diskPath, 12 * MiB, data.length)).equals(data)).toBe(true);
    }, 60_000);
  });
});
