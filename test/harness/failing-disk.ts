/**
 * A backing disk that starts failing reads or writes on command (DESIGN.md
 * §10, issue 10 item 3), made of well-kept tools rather than our own code:
 * nbdkit's `file` plugin over a sparse file, behind its `error` filter, served
 * as a regular file by nbdfuse. The error filter fails every request of a kind
 * (error-*-rate=1) while its trigger file exists, so `failWrites(true)` is a
 * touch and `failWrites(false)` an unlink: no restart, no lost state.
 *
 *   const disk = await makeFailingDisk(64 << 20, 'alpha');
 *   // config: nodes.alpha.disk = disk.file   (nraid accepts a regular file)
 *   disk.failWrites(true);  ...  disk.failReads(true);  ...  disk.heal();
 *
 * Checked on this kernel (failing-disk.test.ts): O_DIRECT reads and writes of
 * disk.file reach nbdkit (nbdfuse opens it with direct I/O, no page cache in
 * between), and an injected error comes back to the caller as EIO at once,
 * not at a later fsync. Writes, zeroes and trims fail together; flushes never.
 *
 * Cleanup: the FUSE mount is unmounted (lazily if a daemon still holds the
 * file: the daemon's own cleanup is newer and runs first), which ends nbdfuse
 * and its nbdkit; the nbdfuse process is then killed by its pid if it is still
 * there; the files go with the harness temp dir.
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { makeTempSubdir, registerCleanup } from './cleanup';
import { execSyncQuiet, execTool, toolEnv } from './exec';

/** How long nbdfuse may take to mount and show the file at its full size. */
const START_TIMEOUT_MS = 15_000;

export interface FailingDisk {
  /** The regular file to give nraid as `disk` (served by nbdfuse; `sizeBytes` long). */
  file: string;
  /** The sparse file under nbdkit that holds the data. */
  backingFile: string;
  sizeBytes: number;
  /** The nbdfuse process (nbdkit runs under it). */
  pid: number;
  /** While on, every write, zero and trim of `file` fails with EIO. */
  failWrites(on: boolean): void;
  /** While on, every read of `file` fails with EIO. */
  failReads(on: boolean): void;
  /** Both off. */
  heal(): void;
  readonly failing: { reads: boolean; writes: boolean };
  /** Unmounts, ends nbdfuse, removes the files (tolerates each being gone). */
  remove(): Promise<void>;
}

function isMounted(mountPoint: string): boolean {
  return fs
    .readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .some((line) => line.split(' ')[1] === mountPoint);
}

function toggle(trigger: string, on: boolean): void {
  if (on) fs.writeFileSync(trigger, '');
  else fs.rmSync(trigger, { force: true });
}

/** A failing-on-command disk file of `sizeBytes` (a multiple of 4096); `tag` names its files. */
export async function makeFailingDisk(sizeBytes: number, tag: string): Promise<FailingDisk> {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % 4096 !== 0) {
    throw new Error(`sizeBytes must be a positive multiple of 4096, got ${sizeBytes}`);
  }
  const dir = makeTempSubdir(`${tag}-failing`);
  const backingFile = path.join(dir, 'backing.img');
  const mountPoint = path.join(dir, 'mnt');
  const file = path.join(mountPoint, 'disk');
  const writeTrigger = path.join(dir, 'fail-writes');
  const readTrigger = path.join(dir, 'fail-reads');
  fs.mkdirSync(mountPoint);
  const fd = fs.openSync(backingFile, 'wx', 0o600);
  try {
    fs.ftruncateSync(fd, sizeBytes);
  } finally {
    fs.closeSync(fd);
  }
  const log = fs.openSync(path.join(dir, 'nbdfuse.log'), 'a');
  // nbdfuse mounts `file` and runs nbdkit with its socket on stdin (-s); both end at the unmount.
  const child: ChildProcess = spawn(
    'nbdfuse',
    [
      file,
      '--command', 'nbdkit', '-s', '--filter=error', 'file', backingFile,
      'error=EIO',
      'error-pwrite-rate=1', `error-pwrite-file=${writeTrigger}`,
      'error-zero-rate=1', `error-zero-file=${writeTrigger}`,
      'error-trim-rate=1', `error-trim-file=${writeTrigger}`,
      'error-pread-rate=1', `error-pread-file=${readTrigger}`,
    ],
    { stdio: ['ignore', log, log], env: toolEnv() },
  );
  fs.closeSync(log);
  child.unref();
  const pid = child.pid;
  if (pid === undefined) throw new Error('nbdfuse could not be started (is it installed? scripts/setup.sh installs it)');
  let exited = false;
  child.once('exit', () => (exited = true));

  const undoSync = (): void => {
    toggle(writeTrigger, false);
    toggle(readTrigger, false);
    if (isMounted(mountPoint) && execSyncQuiet('umount', [mountPoint], 15_000) !== undefined) execSyncQuiet('umount', ['-l', mountPoint], 15_000);
    try {
      if (!exited) process.kill(pid, 'SIGKILL');
    } catch {
      // Gone already.
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };
  const undoAsync = async (): Promise<void> => {
    toggle(writeTrigger, false);
    toggle(readTrigger, false);
    if (isMounted(mountPoint)) {
      const plain = await execTool('umount', [mountPoint], { timeoutMs: 30_000 });
      if (plain.code !== 0) await execTool('umount', ['-l', mountPoint], { timeoutMs: 30_000 });
    }
    for (let i = 0; i < 100 && !exited; i++) await new Promise((resolve) => setTimeout(resolve, 20));
    if (!exited) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Gone already.
      }
    }
    await fs.promises.rm(dir, { recursive: true, force: true });
  };
  const handle = registerCleanup(`failing disk ${file} (nbdfuse pid ${pid})`, undoAsync, undoSync);

  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (isMounted(mountPoint) && fs.existsSync(file) && fs.statSync(file).size === sizeBytes) break;
    if (exited || Date.now() > deadline) {
      await handle.run();
      const output = fs.existsSync(path.join(dir, 'nbdfuse.log')) ? fs.readFileSync(path.join(dir, 'nbdfuse.log'), 'utf8') : '';
      throw new Error(`nbdfuse did not serve ${file} within ${START_TIMEOUT_MS} ms (exited: ${exited}): ${output}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }

  const failing = { reads: false, writes: false };
  return {
    file,
    backingFile,
    sizeBytes,
    pid,
    failWrites: (on) => {
      toggle(writeTrigger, on);
      failing.writes = on;
    },
    failReads: (on) => {
      toggle(readTrigger, on);
      failing.reads = on;
    },
    heal: () => {
      toggle(writeTrigger, false);
      toggle(readTrigger, false);
      failing.reads = failing.writes = false;
    },
    get failing() {
      return { ...failing };
    },
    remove: () => handle.run(),
  };
}
