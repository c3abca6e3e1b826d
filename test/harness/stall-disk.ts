/**
 * A backing disk whose writes the test can stall and release (DESIGN.md §10:
 * a slow or hung disk under a daemon). nraid accepts a regular file as `disk`;
 * this one lives on an ext4 filesystem the harness made on its own loop device
 * and mounted inside the harness temp dir. `stall()` is `fsfreeze -f` on that
 * filesystem: every write to the file blocks in the kernel (O_DIRECT ones too,
 * the writer sits in state D and cannot be killed), reads go on. `release()`
 * is `fsfreeze -u`.
 *
 *   const disk = await makeStallDisk(256 << 20, 'alpha');
 *   // config: nodes.alpha.disk = disk.file
 *   await disk.stall();  ...  await disk.release();
 *
 * Cleanup thaws first, always: each stall() registers its own thaw, newer
 * than anything made before it, so cleanupAll() thaws before it stops the
 * daemons whose writes hang (a `down` against a frozen disk would hang too).
 * Then the file is removed, the filesystem unmounted and the loop detached.
 */
import * as fs from 'fs';
import * as path from 'path';
import { CleanupHandle, makeTempSubdir, registerCleanup } from './cleanup';
import { execOk, execSyncQuiet } from './exec';
import { LoopDisk, makeLoopDisk } from './loop';

/** Room for ext4's own metadata and journal around the disk file. */
const FS_OVERHEAD_BYTES = 64 << 20;

export interface StallDisk {
  /** The regular file to give nraid as `disk` (sparse, `sizeBytes` long). */
  file: string;
  sizeBytes: number;
  /** Where the ext4 filesystem holding `file` is mounted. */
  mountPoint: string;
  /** The loop device under that filesystem. */
  fsDevice: string;
  /** Whether writes are stalled now. */
  readonly stalled: boolean;
  /** Freezes the filesystem: writes to `file` block until release(). Rejects if already stalled. */
  stall(): Promise<void>;
  /** Thaws the filesystem; the blocked writes complete. A no-op when not stalled. */
  release(): Promise<void>;
  /** Thaws, removes the file, unmounts and detaches (tolerates each being gone). */
  remove(): Promise<void>;
}

function thawSync(mountPoint: string): void {
  // "Invalid argument" means it was not frozen: nothing to do.
  execSyncQuiet('fsfreeze', ['-u', mountPoint], 10_000);
}

function isMounted(mountPoint: string): boolean {
  return fs
    .readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .some((line) => line.split(' ')[1] === mountPoint);
}

/** A disk file of `sizeBytes` on its own freezable ext4 filesystem; `tag` names its files. */
export async function makeStallDisk(sizeBytes: number, tag: string): Promise<StallDisk> {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % 4096 !== 0) {
    throw new Error(`sizeBytes must be a positive multiple of 4096, got ${sizeBytes}`);
  }
  const fsBytes = Math.ceil((sizeBytes * 1.05 + FS_OVERHEAD_BYTES) / 4096) * 4096;
  const loop: LoopDisk = await makeLoopDisk(fsBytes, `${tag}-stallfs`);
  const mountPoint = makeTempSubdir(`${tag}-stallmnt`);
  const file = path.join(mountPoint, 'disk.img');
  let stalled = false;
  let thawHandle: CleanupHandle | undefined;

  const undoSync = (): void => {
    thawSync(mountPoint);
    fs.rmSync(file, { force: true });
    if (isMounted(mountPoint)) execSyncQuiet('umount', [mountPoint], 15_000);
  };
  const undoAsync = async (): Promise<void> => {
    thawSync(mountPoint);
    stalled = false;
    thawHandle?.forget();
    await fs.promises.rm(file, { force: true });
    if (isMounted(mountPoint)) await execOk('umount', [mountPoint], { timeoutMs: 30_000 });
    fs.rmSync(mountPoint, { recursive: true, force: true });
  };

  try {
    await execOk('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', loop.device], { timeoutMs: 60_000 });
    await execOk('mount', ['-t', 'ext4', loop.device, mountPoint], { timeoutMs: 30_000 });
  } catch (e) {
    if (isMounted(mountPoint)) await execOk('umount', [mountPoint]).catch(() => undefined);
    await loop.detach();
    throw e;
  }
  // Newer than the loop disk's entry: unmounted before the loop is detached.
  const handle = registerCleanup(`stall disk ${file} on ${loop.device}`, undoAsync, undoSync);
  const fd = fs.openSync(file, 'wx', 0o600);
  try {
    fs.ftruncateSync(fd, sizeBytes);
  } finally {
    fs.closeSync(fd);
  }

  return {
    file,
    sizeBytes,
    mountPoint,
    fsDevice: loop.device,
    get stalled() {
      return stalled;
    },
    stall: async () => {
      if (stalled) throw new Error(`stall disk ${file}: expected it running, found it already stalled`);
      // Registered before the freeze: whatever happens next, cleanup thaws before anything older.
      thawHandle = registerCleanup(
        `thaw ${mountPoint}`,
        async () => {
          thawSync(mountPoint);
          stalled = false;
        },
        () => thawSync(mountPoint),
      );
      stalled = true;
      await execOk('fsfreeze', ['-f', mountPoint], { timeoutMs: 30_000 });
    },
    release: async () => {
      if (!stalled) return;
      await execOk('fsfreeze', ['-u', mountPoint], { timeoutMs: 30_000 });
      stalled = false;
      thawHandle?.forget();
      thawHandle = undefined;
    },
    remove: async () => {
      await handle.run();
      await loop.detach();
    },
  };
}
