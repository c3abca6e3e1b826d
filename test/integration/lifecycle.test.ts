/**
 * A resource's life on one node (foundation issue, acceptance list part 2):
 * `down` leaves nothing behind; a daemon killed with -9 (run with
 * `up --foreground`, so that its PID is the daemon's) leaves a stale FUSE
 * mount and loop device that the next `up` removes itself; `secondary` and
 * `down` refuse while the device is mounted, naming the mount point, and
 * change nothing.
 */
import { ChildProcess, spawn } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { harnessTempDir, loopBackingFile, loopDevices, makeTempSubdir, mountPoints } from '../harness/cleanup';
import { makeResource, NRAID_BIN, TestResource } from '../harness/cluster';
import { BLOCK_BYTES, readDirect, writeDirect } from '../harness/direct-io';
import { execOk, execTool, toolEnv } from '../harness/exec';
import { describeIntegration, REPO_ROOT } from '../harness/prereq';
import { cliError, processAlive } from '../harness/helpers';

const MiB = 1024 * 1024;

function volumeOf(r: TestResource): string {
  return path.join(r.nodes.alpha.runDir, 'volume');
}

function lstatOrNull(p: string): fs.Stats | null {
  try {
    return fs.lstatSync(p);
  } catch {
    return null;
  }
}

/** How many times `mountPath` appears as a mount point in /proc/self/mountinfo. */
function mountCount(mountPath: string): number {
  return mountPoints().filter((m) => m === mountPath).length;
}

/** Loop devices whose backing file is `file`. */
function loopsOn(file: string): string[] {
  return loopDevices()
    .filter((l) => l.backingFile === file)
    .map((l) => l.device);
}

/** Everything `down` must have removed, as a list of what is left (empty when clean). */
function leftovers(r: TestResource, pid: number): string[] {
  const left: string[] = [];
  const volume = volumeOf(r);
  for (const loop of loopsOn(volume)) left.push(`loop device ${loop} still on ${volume}`);
  if (mountCount(volume) > 0) left.push(`FUSE mount on ${volume} still in /proc/self/mountinfo`);
  if (lstatOrNull(r.nodes.alpha.device) !== null) left.push(`device path ${r.nodes.alpha.device} still exists`);
  const socket = path.join(r.nodes.alpha.runDir, 'admin.sock');
  if (lstatOrNull(socket) !== null) left.push(`admin socket ${socket} still exists`);
  if (processAlive(pid)) left.push(`daemon pid ${pid} still alive`);
  return left;
}

/** The backing disk can be opened exclusively: nobody (no daemon) holds it. */
function backingIsFree(r: TestResource): boolean {
  try {
    fs.closeSync(fs.openSync(r.nodes.alpha.diskPath, fs.constants.O_RDONLY | fs.constants.O_EXCL));
    return true;
  } catch {
    return false;
  }
}

function patterned(bytes: number): Buffer {
  const b = crypto.randomBytes(bytes);
  for (let i = 0; i < bytes; i += BLOCK_BYTES) b[i] |= 1;
  return b;
}

describeIntegration('lifecycle: down, kill -9 and a busy device', ['root', 'fuse', 'loop', 'dd', 'mkfs.ext4', 'e2fsck', 'nraid-cli'], () => {
  describe('down', () => {
    let r: TestResource;

    beforeAll(async () => {
      r = await makeResource({ nodes: 1, sizeBytes: 32 * MiB });
      await r.runOk('alpha', 'create-md');
    }, 60_000);

    afterAll(async () => {
      await r?.cleanup();
    }, 60_000);

    test('down of a Primary leaves no loop device, FUSE mount, device path, admin socket or daemon', async () => {
      await r.runOk('alpha', 'up');
      await r.runOk('alpha', 'primary', ['--force']);
      const s = await r.status('alpha');
      const pid = s.pid as number;
      // While up, every one of them is there: the checks below can see them.
      const volume = volumeOf(r);
      expect(loopsOn(volume)).toEqual([s.loopDevice]);
      expect(mountCount(volume)).toBe(1);
      expect(fs.readlinkSync(r.nodes.alpha.device)).toBe(s.loopDevice);
      expect(lstatOrNull(path.join(r.nodes.alpha.runDir, 'admin.sock'))?.isSocket()).toBe(true);
      expect(processAlive(pid)).toBe(true);
      expect(backingIsFree(r)).toBe(false);
      await writeDirect(r.nodes.alpha.device, 0, patterned(MiB));

      const down = await r.run('alpha', 'down');
      expect(down.stderr).toBe('');
      expect(down.code).toBe(0);
      expect(leftovers(r, pid)).toEqual([]);
      expect(backingIsFree(r)).toBe(true);
      // And the CLI agrees that nothing runs.
      expect(cliError(await r.run('alpha', 'status')).code).toBe('NRAID_ERR_NOT_UP');
      const json = await r.run('alpha', 'status', ['--json']);
      expect(json.code).toBe(1);
      expect(JSON.parse(json.stdout)).toMatchObject({ error: { code: 'NRAID_ERR_NOT_UP' } });
    }, 60_000);

    test('down of a Secondary that was never promoted leaves nothing either', async () => {
      await r.runOk('alpha', 'up');
      const pid = (await r.status('alpha')).pid as number;
      expect(processAlive(pid)).toBe(true);
      await r.runOk('alpha', 'down');
      expect(leftovers(r, pid)).toEqual([]);
      expect(backingIsFree(r)).toBe(true);
    }, 60_000);
  });

  describe('kill -9 of a daemon run with up --foreground', () => {
    let r: TestResource;
    let child: ChildProcess | undefined;
    let childExited: Promise<void> | undefined;

    beforeAll(async () => {
      r = await makeResource({ nodes: 1, sizeBytes: 32 * MiB });
      await r.runOk('alpha', 'create-md');
    }, 60_000);

    afterAll(async () => {
      // Only the PID this test started, and only if it still runs.
      if (child?.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await childExited;
      }
      await r?.cleanup();
    }, 60_000);

    test('the next up removes the stale mount and loop device, and primary (no --force) works again', async () => {
      const logPath = path.join(harnessTempDir(), `${r.name}-foreground.log`);
      const logFd = fs.openSync(logPath, 'a');
      try {
        child = spawn(process.execPath, [NRAID_BIN, 'up', r.name, '-c', r.configPath, '-n', 'alpha', '--foreground'], {
          cwd: REPO_ROOT,
          env: toolEnv(),
          stdio: ['ignore', logFd, logFd],
        });
      } finally {
        fs.closeSync(logFd);
      }
      const started = child;
      childExited = new Promise((resolve) => started.once('exit', () => resolve()));
      const log = () => fs.readFileSync(logPath, 'utf8');

      // The daemon is that very process.
      const s0 = await r.waitFor('alpha', () => true, 30_000).catch((e: Error) => {
        throw new Error(`${e.message}\nforeground log:\n${log()}`);
      });
      expect(s0.pid).toBe(started.pid);

      await r.runOk('alpha', 'primary', ['--force']);
      const s1 = await r.status('alpha');
      expect(s1).toMatchObject({ role: 'Primary', disk: 'UpToDate', exposed: true });
      const oldLoop = s1.loopDevice as string;
      const volume = volumeOf(r);
      expect(loopBackingFile(oldLoop)).toBe(volume);
      const before = patterned(2 * MiB);
      await writeDirect(r.nodes.alpha.device, 4 * MiB, before);

      started.kill('SIGKILL');
      await childExited;
      expect(started.signalCode).toBe('SIGKILL');
      // What a crash leaves: the mount, the loop device on it, the device link.
      expect(mountCount(volume)).toBe(1);
      expect(loopBackingFile(oldLoop)).toBe(volume);

      const up = await r.run('alpha', 'up');
      if (up.code !== 0) throw new Error(`up after kill -9 exited ${up.code}: ${up.stderr}\nforeground log:\n${log()}`);
      const s2 = await r.status('alpha');
      expect(s2.pid).not.toBe(started.pid);
      // Primary until the crash, with an UpToDate disk: it stays UpToDate, not exposed yet.
      expect(s2).toMatchObject({ role: 'Secondary', disk: 'UpToDate', exposed: false });
      expect(loopBackingFile(oldLoop)).not.toBe(volume);
      expect(loopsOn(volume)).toEqual([]);
      expect(mountCount(volume)).toBe(0);
      expect(lstatOrNull(r.nodes.alpha.device)).toBeNull();

      // An UpToDate disk is promoted without --force.
      await r.runOk('alpha', 'primary');
      const s3 = await r.status('alpha');
      expect(s3).toMatchObject({ role: 'Primary', disk: 'UpToDate', exposed: true });
      expect(loopsOn(volume)).toEqual([s3.loopDevice]);
      expect(mountCount(volume)).toBe(1);
      expect(fs.readlinkSync(r.nodes.alpha.device)).toBe(s3.loopDevice);

      // The device works: what was acknowledged before the kill is there, new writes land.
      expect((await readDirect(r.nodes.alpha.device, 4 * MiB, 2 * MiB)).equals(before)).toBe(true);
      const after = patterned(MiB);
      await writeDirect(r.nodes.alpha.device, 12 * MiB, after);
      expect((await readDirect(r.nodes.alpha.device, 12 * MiB, MiB)).equals(after)).toBe(true);

      const pid = s3.pid as number;
      await r.runOk('alpha', 'down');
      expect(leftovers(r, pid)).toEqual([]);
      expect((await readDirect(r.nodes.alpha.diskPath, 4 * MiB, 2 * MiB)).equals(before)).toBe(true);
      expect((await readDirect(r.nodes.alpha.diskPath, 12 * MiB, MiB)).equals(after)).toBe(true);
    }, 90_000);
  });

  describe('a mounted device', () => {
    let r: TestResource;
    let mnt: string;

    beforeAll(async () => {
      r = await makeResource({ nodes: 1, sizeBytes: 64 * MiB });
      await r.runOk('alpha', 'create-md');
      await r.runOk('alpha', 'up');
      await r.runOk('alpha', 'primary', ['--force']);
      await execOk('mkfs.ext4', ['-q', '-F', r.nodes.alpha.device]);
      mnt = makeTempSubdir('mnt');
      await execOk('mount', [r.nodes.alpha.device, mnt]);
      fs.writeFileSync(path.join(mnt, 'before'), 'written before the refused commands\n');
    }, 60_000);

    afterAll(async () => {
      if (mnt !== undefined && mountPoints().includes(mnt)) await execTool('umount', [mnt]);
      await r?.cleanup();
    }, 60_000);

    /** Role, exposure, loop device, daemon and mount: what a refused command must leave as it was. */
    async function snapshot(): Promise<Record<string, unknown>> {
      const s = await r.status('alpha');
      return {
        role: s.role,
        disk: s.disk,
        exposed: s.exposed,
        loopDevice: s.loopDevice,
        pid: s.pid,
        link: fs.readlinkSync(r.nodes.alpha.device),
        mounted: mountPoints().includes(mnt),
      };
    }

    async function stillWorks(name: string): Promise<void> {
      const file = path.join(mnt, name);
      const data = crypto.randomBytes(256 * 1024);
      const fd = fs.openSync(file, 'w');
      try {
        fs.writeSync(fd, data);
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      expect(fs.readFileSync(file).equals(data)).toBe(true);
    }

    test('secondary is refused with NRAID_ERR_DEVICE_BUSY naming the mount point, and nothing changes', async () => {
      const before = await snapshot();
      expect(before).toMatchObject({ role: 'Primary', exposed: true, mounted: true });
      const e = cliError(await r.run('alpha', 'secondary'));
      expect(e.code).toBe('NRAID_ERR_DEVICE_BUSY');
      expect(e.message).toContain(mnt);
      expect(await snapshot()).toEqual(before);
      await stillWorks('after-secondary');
    }, 60_000);

    test('down is refused with NRAID_ERR_DEVICE_BUSY naming the mount point, and nothing changes', async () => {
      const before = await snapshot();
      expect(before).toMatchObject({ role: 'Primary', exposed: true, mounted: true });
      const e = cliError(await r.run('alpha', 'down'));
      expect(e.message).toContain(mnt);
      expect(await snapshot()).toEqual(before);
      await stillWorks('after-down');
      expect(e.code).toBe('NRAID_ERR_DEVICE_BUSY');
    }, 60_000);

    test('once unmounted, secondary and down succeed and the files are on the device', async () => {
      await execOk('umount', [mnt]);
      await r.runOk('alpha', 'secondary');
      expect(await r.status('alpha')).toMatchObject({ role: 'Secondary', exposed: false });
      expect(lstatOrNull(r.nodes.alpha.device)).toBeNull();
      const pid = (await r.status('alpha')).pid as number;
      await r.runOk('alpha', 'down');
      expect(leftovers(r, pid)).toEqual([]);
      // The filesystem written through nraid is on the backing disk: fsck it there.
      const fsck = await execTool('e2fsck', ['-fn', r.nodes.alpha.diskPath]);
      expect({ code: fsck.code, out: fsck.stdout.toString() }).toMatchObject({ code: 0 });
    }, 60_000);
  });

  describe('a device held open by a program (not mounted)', () => {
    let r: TestResource;

    beforeAll(async () => {
      r = await makeResource({ nodes: 1, sizeBytes: 32 * MiB });
      await r.runOk('alpha', 'create-md');
      await r.runOk('alpha', 'up');
      await r.runOk('alpha', 'primary', ['--force']);
    }, 60_000);

    afterAll(async () => {
      await r?.cleanup();
    }, 60_000);

    // Regression: deviceHolder() only notices exclusive holders (a mount, an
    // O_EXCL open), so `secondary` took the device away under a program that
    // had it open with a plain open(2): its later writes went nowhere.
    test('secondary and down are refused with NRAID_ERR_DEVICE_BUSY while a program has the device open', async () => {
      const s0 = await r.status('alpha');
      const fd = fs.openSync(r.nodes.alpha.device, 'r+');
      try {
        const secondary = await r.run('alpha', 'secondary');
        const s1 = await r.status('alpha');
        expect({ role: s1.role, exposed: s1.exposed, loopDevice: s1.loopDevice }).toEqual({
          role: 'Primary',
          exposed: true,
          loopDevice: s0.loopDevice,
        });
        expect(cliError(secondary).code).toBe('NRAID_ERR_DEVICE_BUSY');
        expect(cliError(await r.run('alpha', 'down')).code).toBe('NRAID_ERR_DEVICE_BUSY');
        expect(await r.status('alpha')).toMatchObject({ role: 'Primary', exposed: true, pid: s0.pid });
        // The program's writes still reach the disk.
        const block = crypto.randomBytes(BLOCK_BYTES);
        fs.writeSync(fd, block, 0, BLOCK_BYTES, 0);
        fs.fdatasyncSync(fd);
        expect((await readDirect(r.nodes.alpha.diskPath, 0, BLOCK_BYTES)).equals(block)).toBe(true);
      } finally {
        fs.closeSync(fd);
      }
      await r.runOk('alpha', 'secondary');
    }, 60_000);
  });
});
