/**
 * The run directory of a node (`run-dir`): the admin socket, the FUSE
 * volume file, the device record and the daemon's log live there, so it is
 * private. Created with mode 0700, or, when it exists, corrected to be owned
 * by the daemon's user (root) with mode 0700; a path that is not a directory
 * (a symlink included) or that cannot be corrected is refused before
 * anything is started.
 */
import fs from 'node:fs';
import { ConfigError, isErrnoException } from './errors';

/** Makes `runDir` a private directory (owner: this process's user, mode 0700); throws ConfigError naming what it found. */
export function ensurePrivateRunDir(runDir: string): void {
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;
  try {
    fs.mkdirSync(runDir, { recursive: true, mode: 0o700 });
    const found = fs.lstatSync(runDir);
    if (!found.isDirectory()) {
      throw new ConfigError(
        `run-dir ${runDir}: expected a directory, found ${found.isSymbolicLink() ? 'a symbolic link' : 'another kind of file'}; ` +
          'remove it, or set run-dir to a directory only root uses',
      );
    }
    if (found.uid !== uid || found.gid !== gid) fs.chownSync(runDir, uid, gid);
    if ((found.mode & 0o7777) !== 0o700) fs.chmodSync(runDir, 0o700);
    const now = fs.lstatSync(runDir);
    if (now.uid !== uid || (now.mode & 0o7777) !== 0o700) {
      throw new ConfigError(
        `run-dir ${runDir}: expected owner ${uid} and mode 0700 after correcting it, found owner ${now.uid} and mode ` +
          `0${(now.mode & 0o7777).toString(8)}; set run-dir to a directory on a filesystem that keeps owners and modes`,
      );
    }
  } catch (error) {
    if (!isErrnoException(error)) throw error;
    throw new ConfigError(
      `run-dir ${runDir}: cannot make it a private directory (owner ${uid}, mode 0700): ${error.code} (${error.message}); ` +
        'nraid refuses to start with a run directory others can read or write: fix it, or set run-dir elsewhere',
    );
  }
}
