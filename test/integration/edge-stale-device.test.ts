/**
 * Issue 10 item 6, what a killed daemon leaves, seen as a new user would.
 *
 * Regression: after kill -9 of a Primary with ext4 mounted, `down` answered
 * NOT_UP and cleaned nothing; `up` logged "detached stale loop device" while
 * the loop device stayed attached (LOOP_CLR_FD on a busy loop device only
 * sets autoclear) and ext4 stayed mounted on it; `primary` then exposed a
 * second loop device under the same filesystem next to the stale,
 * emergency-read-only mount. Now each step says what is left and what to do,
 * and `primary` refuses (NRAID_ERR_STALE_DEVICE, even with --force) until the
 * stale mount is gone. The Primary was killed without promoting its peer: it
 * comes back as Secondary, and once promoted again the pair resyncs to
 * identical data areas.
 *
 * A copy of the stale mount in another mount namespace (private propagation)
 * keeps the loop device after the umount here: primary names that namespace's
 * process and the nsenter command.
 *
 * And `down` after a daemon died with nothing mounted: it removes the loop
 * device, the FUSE mount, the device link, the device record and the admin
 * socket, lists each, keeps the log, and exits 0 (also when the record's pid
 * now belongs to another program). A daemon killed in its own mount namespace
 * (ip netns exec) leaves a loop device whose backing file reads "/": the next
 * up finds it by the record and detaches it.
 */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { loopBackingFile, loopDevices, makeTempSubdir, mountPoints } from '../harness/cleanup';
import { makeResource, NodeName, NraidResult, TestResource } from '../harness/cluster';
import { BLOCK_BYTES, readDirect, sha256Range, writeDirect } from '../harness/direct-io';
import { execOk, execTool } from '../harness/exec';
import { makeNetnsResource, NetnsResource } from '../harness/netns-resource';
import { describeIntegration } from '../harness/prereq';
import { bringUpPair, expectRefused, FAST_FAILOVER_CONFIG, fsckClean, num, pathExists, processAlive, settled, until, withDaemonLogs } from '../harness/helpers';

const MiB = 1024 * 1024;

function volumeOf(r: TestResource, node: NodeName): string {
  return path.join(r.nodes[node].runDir, 'volume');
}

function loopsOn(file: string): string[] {
  return loopDevices()
    .filter((l) => l.backingFile === file)
    .map((l) => l.device);
}

async function kill9(r: TestResource, node: NodeName): Promise<number> {
  const pid = num(await r.status(node), 'pid');
  process.kill(pid, 'SIGKILL');
  await until(`daemon pid ${pid} gone`, () => !processAlive(pid), 15_000);
  return pid;
}

describeIntegration('a killed daemon\'s device', ['root', 'fuse', 'loop', 'dd', 'mkfs.ext4', 'e2fsck', 'ip-netns', 'nraid-cli'], () => {
  describe('a Primary killed with ext4 mounted, its peer not promoted', () => {
    let r: TestResource;
    let parent: string | undefined;
    let mnt: string;

    beforeAll(async () => {
      r = await makeResource({ nodes: 2, sizeBytes: 48 * MiB, protocol: 'C', extra: { ...FAST_FAILOVER_CONFIG } });
      await bringUpPair(r);
      // The filesystem goes under a shared mount of our own: a mount namespace that another test
      // makes meanwhile (ip netns exec copies every mount, as a slave) then sees our umount too,
      // where a copy of a mount under a private parent would keep the loop device open.
      parent = makeTempSubdir('stale-parent');
      await execOk('mount', ['--bind', parent, parent]);
      await execOk('mount', ['--make-shared', parent]);
      mnt = path.join(parent, 'mnt');
      fs.mkdirSync(mnt);
    }, 90_000);

    afterAll(async () => {
      if (mnt !== undefined && mountPoints().includes(mnt)) await execTool('umount', ['-l', mnt]);
      if (parent !== undefined && mountPoints().includes(parent)) await execTool('umount', ['-l', parent]);
      await r?.cleanup();
    }, 60_000);

    test('down, up and primary say what is left and what to do; primary refuses until the stale mount is gone; then the pair resyncs', async () => {
      await withDaemonLogs(r, async () => {
        await execOk('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', r.nodes.alpha.device]);
        await execOk('mount', [r.nodes.alpha.device, mnt]);
        fs.writeFileSync(path.join(mnt, 'before'), 'written before the kill\n');
        await execOk('sync', ['-f', path.join(mnt, 'before')]);
        const volume = volumeOf(r, 'alpha');
        const staleLoop = (await r.status('alpha')).loopDevice as string;
        const deadPid = await kill9(r, 'alpha');
        // What the crash left: the loop device under the mounted ext4, the FUSE volume under it.
        expect(loopBackingFile(staleLoop)).toBe(volume);
        expect(mountPoints()).toEqual(expect.arrayContaining([mnt, volume]));

        // status: not up, and it says the daemon died and what cleans up.
        expectRefused(await r.run('alpha', 'status'), 'NRAID_ERR_NOT_UP', [`pid ${deadPid}`, 'died', staleLoop, 'nraid down']);

        // down: cleans what it can, names the mount and the command, exits non-zero.
        const down = await r.run('alpha', 'down');
        expectRefused(down, 'NRAID_ERR_STALE_DEVICE', [staleLoop, mnt, `umount ${mnt}`, 'ext4', 'nraid down again']);
        expect(down.stdout).toContain(`removed stale admin socket ${path.join(r.nodes.alpha.runDir, 'admin.sock')}`);
        expect(down.stdout).not.toContain('detached');
        // Still attached (the kernel detaches it at its last close), the FUSE volume still mounted.
        expect(loopBackingFile(staleLoop)).toBe(volume);
        expect(fs.readFileSync(`/sys/block/${path.basename(staleLoop)}/loop/autoclear`, 'utf8').trim()).toBe('1');
        expect(mountPoints()).toEqual(expect.arrayContaining([mnt, volume]));

        // up: comes back as Secondary; stdout one line, stderr a warning with the mount point; no false "detached".
        const up = await r.run('alpha', 'up');
        expect(up.code).toBe(0);
        expect(up.stdout.trim().split('\n')).toHaveLength(1);
        expect(up.stderr).toMatch(new RegExp(`^warning: loop device ${staleLoop} .*umount ${mnt}.*NRAID_ERR_STALE_DEVICE`, 'm'));
        expect(up.stderr).not.toContain('detached');
        const back = await r.waitFor('alpha', (s) => s.connection === 'Connected' && s.replication === 'Established', 30_000);
        expect(back).toMatchObject({ role: 'Secondary', exposed: false, peerRole: 'Secondary' });
        expect(await r.status('beta')).toMatchObject({ role: 'Secondary' });

        // primary: refused while ext4 is mounted on the stale loop device, --force too; nothing changes.
        expectRefused(await r.run('alpha', 'primary'), 'NRAID_ERR_STALE_DEVICE', [staleLoop, `umount ${mnt}`]);
        expectRefused(await r.run('alpha', 'primary', ['--force']), 'NRAID_ERR_STALE_DEVICE', [staleLoop, mnt]);
        expect(await r.status('alpha')).toMatchObject({ role: 'Secondary', exposed: false, loopDevice: null });
        expect(loopsOn(volume)).toEqual([staleLoop]);
        expect(pathExists(r.nodes.alpha.device)).toBe(false);

        // down of the live Secondary: it goes down, and says what an earlier crash left (exit 1); up warns again.
        const liveDown = await r.run('alpha', 'down');
        expect(liveDown.stdout).toContain(`${r.name} is down on node alpha`);
        expectRefused(liveDown, 'NRAID_ERR_STALE_DEVICE', [staleLoop, `umount ${mnt}`]);
        expect(loopBackingFile(staleLoop)).toBe(volume);
        const upAgain = await r.run('alpha', 'up');
        expect({ code: upAgain.code, warned: upAgain.stderr.includes(`warning: loop device ${staleLoop}`) }).toEqual({ code: 0, warned: true });
        await r.waitFor('alpha', (s) => s.connection === 'Connected' && s.replication === 'Established', 30_000);

        // A mount namespace made with private propagation holds a copy of the mount: the umount here
        // does not reach it, and primary names that namespace's process and the command for it.
        const holder = spawn('unshare', ['-m', '--propagation', 'private', 'sleep', '120'], { stdio: 'ignore' });
        const holderExited = new Promise((resolve) => holder.once('exit', resolve));
        try {
          const ownNs = fs.readlinkSync('/proc/self/ns/mnt');
          await until('the holder in its own mount namespace', () => {
            try {
              return fs.readlinkSync(`/proc/${holder.pid}/ns/mnt`) !== ownNs && fs.readFileSync(`/proc/${holder.pid}/comm`, 'utf8').trim() === 'sleep';
            } catch {
              return false;
            }
          }, 15_000);
          await execOk('umount', [mnt]);
          expect(loopBackingFile(staleLoop)).toBe(volume);
          expectRefused(await r.run('alpha', 'primary'), 'NRAID_ERR_STALE_DEVICE', [`in the mount namespace of pid ${holder.pid} (sleep)`, `nsenter -t ${holder.pid} -m umount ${mnt}`]);
        } finally {
          holder.kill('SIGKILL');
          await holderExited;
        }

        // With the last copy gone, the stale loop device goes away by itself, and primary works.
        await until(`${staleLoop} detached after umount`, () => loopBackingFile(staleLoop) !== volume, 15_000);
        await r.runOk('alpha', 'primary');
        const promoted = await r.status('alpha');
        expect(promoted).toMatchObject({ role: 'Primary', exposed: true });
        expect(loopsOn(volume)).toEqual([promoted.loopDevice]);
        expect(mountPoints().filter((m) => m === volume)).toHaveLength(1);

        // The filesystem: the file synced before the kill is there, and fsck is clean after the journal replay.
        await execOk('mount', [r.nodes.alpha.device, mnt]);
        expect(fs.readFileSync(path.join(mnt, 'before'), 'utf8')).toBe('written before the kill\n');
        fs.writeFileSync(path.join(mnt, 'after'), 'written after the promotion\n');
        await execOk('umount', [mnt]);
        await fsckClean(r.nodes.alpha.device);

        // Both data areas identical once the pair settles.
        const a = await r.waitFor('alpha', settled, 60_000);
        await r.waitFor('beta', settled, 15_000);
        const dataSizeBytes = num(a, 'dataSizeBytes');
        expect(await sha256Range(r.nodes.beta.diskPath, 0, dataSizeBytes)).toBe(await sha256Range(r.nodes.alpha.diskPath, 0, dataSizeBytes));
      });
    }, 120_000);
  });

  describe('down after the daemon died, nothing mounted', () => {
    let r: TestResource;

    beforeAll(async () => {
      r = await makeResource({ nodes: 1, sizeBytes: 32 * MiB });
      await r.runOk('alpha', 'create-md');
    }, 60_000);

    afterAll(async () => {
      await r?.cleanup();
    }, 60_000);

    test('down removes the loop device, FUSE mount, device link, record and admin socket, says so, keeps the log and exits 0', async () => {
      await r.runOk('alpha', 'up');
      await r.runOk('alpha', 'primary', ['--force']);
      const loop = (await r.status('alpha')).loopDevice as string;
      const block = Buffer.alloc(BLOCK_BYTES, 0x5a);
      await writeDirect(r.nodes.alpha.device, 8 * MiB, block);
      await kill9(r, 'alpha');
      const runDir = r.nodes.alpha.runDir;
      const volume = volumeOf(r, 'alpha');
      expect(loopBackingFile(loop)).toBe(volume);

      // The dead daemon's pid now belongs to another program (pids are reused): not a daemon to wait for.
      const other = spawn('sleep', ['60'], { stdio: 'ignore' });
      const otherExited = new Promise((resolve) => other.once('exit', resolve));
      let down: NraidResult;
      try {
        const recordFile = path.join(runDir, 'device.json');
        fs.writeFileSync(recordFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(recordFile, 'utf8')), pid: other.pid }));
        // Taken for the daemon, it would be waited for (10 s), then down would fail naming it as one to kill.
        down = await r.run('alpha', 'down');
        expect(processAlive(other.pid!)).toBe(true);
      } finally {
        other.kill('SIGKILL');
        await otherExited;
      }
      expect({ code: down.code, stderr: down.stderr }).toEqual({ code: 0, stderr: '' });
      expect(down.stdout.trim().split('\n')).toEqual([
        `detached stale loop device ${loop}`,
        `unmounted stale FUSE volume ${volume}`,
        `removed stale admin socket ${path.join(runDir, 'admin.sock')}`,
        `${r.name} is down on node alpha (its daemon had died; cleaned what it left, kept its log ${path.join(runDir, 'daemon.log')})`,
      ]);
      expect(loopsOn(volume)).toEqual([]);
      expect(mountPoints()).not.toContain(volume);
      expect(pathExists(r.nodes.alpha.device)).toBe(false);
      expect(pathExists(path.join(runDir, 'device.json'))).toBe(false);
      expect(pathExists(path.join(runDir, 'admin.sock'))).toBe(false);
      expect(pathExists(path.join(runDir, 'daemon.log'))).toBe(true);
      // The acknowledged write is on the backing disk.
      expect((await readDirect(r.nodes.alpha.diskPath, 8 * MiB, BLOCK_BYTES)).equals(block)).toBe(true);

      // Nothing left: a second down is NOT_UP, as for a resource that never ran; up starts clean.
      expectRefused(await r.run('alpha', 'down'), 'NRAID_ERR_NOT_UP', ['nothing to do']);
      const up = await r.run('alpha', 'up');
      expect({ code: up.code, stderr: up.stderr }).toEqual({ code: 0, stderr: '' });
      await r.runOk('alpha', 'down');
    }, 60_000);
  });

  describe('a daemon in its own mount namespace (ip netns exec), killed while Primary', () => {
    let r: NetnsResource;

    beforeAll(async () => {
      r = await makeNetnsResource({ tag: 'stale', sizeBytes: 32 * MiB });
      await r.runOk('alpha', 'create-md');
    }, 60_000);

    afterAll(async () => {
      await r?.cleanup();
    }, 60_000);

    // Regression: its FUSE volume went with its mount namespace, so its loop device's backing
    // file reads "/" and the next up did not recognise it: one loop device leaked per kill.
    test('the next up finds its loop device by its record and detaches it', async () => {
      await r.runOk('alpha', 'up');
      await r.runOk('alpha', 'primary', ['--force']);
      const loop = (await r.status('alpha')).loopDevice as string;
      await r.kill('alpha');
      await until(`${loop} backing file reads / once the namespace is gone`, () => loopBackingFile(loop) === '/', 15_000);

      const up = await r.run('alpha', 'up');
      expect({ code: up.code, stderr: up.stderr }).toEqual({ code: 0, stderr: `note: detached stale loop device ${loop}\n` });
      expect(loopBackingFile(loop)).toBeUndefined();
      expect(await r.status('alpha')).toMatchObject({ role: 'Secondary', exposed: false });
      await r.runOk('alpha', 'down');
    }, 60_000);
  });
});
