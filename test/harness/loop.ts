/**
 * Backing disks for integration tests: sparse files in the harness temp dir,
 * optionally attached as loop devices. Everything made here is registered
 * with cleanupAll() (see cleanup.ts).
 */
import * as fs from 'fs';
import * as path from 'path';
import { checkTag, harnessTempDir, loopBackingFile, registerCleanup } from './cleanup';
import { execOk, execSyncQuiet } from './exec';

export { cleanupAll } from './cleanup';

export const SECTOR_BYTES = 512;

export interface SparseFile {
  file: string;
  sizeBytes: number;
  /** Deletes the file (tolerates it being gone). */
  remove(): Promise<void>;
}

export interface LoopDisk {
  /** The sparse backing file. */
  file: string;
  /** /dev/loopN */
  device: string;
  sizeBytes: number;
  /** Detaches the device (if it still shows our file) and deletes the file. */
  detach(): Promise<void>;
}

export interface LoopDiskOptions {
  /** losetup --direct-io=on (default off: a plain buffered loop). */
  directIo?: boolean;
  /** Sector size the device reports (losetup --sector-size), default 512. */
  sectorSizeBytes?: number;
}

let fileCounter = 0;

function createSparse(sizeBytes: number, tag: string): string {
  checkTag(tag);
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % SECTOR_BYTES !== 0) {
    throw new Error(`sizeBytes must be a positive multiple of ${SECTOR_BYTES}, got ${sizeBytes}`);
  }
  fileCounter += 1;
  const file = path.join(harnessTempDir(), `${tag}-${fileCounter}.img`);
  const fd = fs.openSync(file, 'wx', 0o600);
  try {
    fs.ftruncateSync(fd, sizeBytes);
  } finally {
    fs.closeSync(fd);
  }
  return file;
}

function removeFileSync(file: string): void {
  fs.rmSync(file, { force: true });
}

/** A sparse file of `sizeBytes` (reads as zeros), for file-backed disks. */
export async function makeSparseFile(sizeBytes: number, tag: string): Promise<SparseFile> {
  const file = createSparse(sizeBytes, tag);
  const handle = registerCleanup(
    `sparse file ${file}`,
    async () => fs.promises.rm(file, { force: true }),
    () => removeFileSync(file),
  );
  return { file, sizeBytes, remove: () => handle.run() };
}

/**
 * Detaches `device` only while it still shows `file` as its backing file: a
 * number we freed may already belong to someone else. Waits (up to 5 s) for the
 * kernel to finish; a device that stays (held open by someone) is left with
 * autoclear set by losetup and goes away on last close.
 */
async function detachIfOurs(device: string, file: string): Promise<void> {
  if (loopBackingFile(device) !== file) return;
  try {
    await execOk('losetup', ['-d', device]);
  } catch (e) {
    if (loopBackingFile(device) === file) throw e;
    return;
  }
  for (let i = 0; i < 50 && loopBackingFile(device) === file; i++) {
    await new Promise((r) => setTimeout(r, 100));
  }
}

function detachIfOursSync(device: string, file: string): void {
  if (loopBackingFile(device) !== file) return;
  const err = execSyncQuiet('losetup', ['-d', device]);
  if (err !== undefined && loopBackingFile(device) === file) {
    process.stderr.write(`nraid harness: losetup -d ${device} failed: ${err}\n`);
  }
}

/**
 * A sparse file of `sizeBytes` attached with `losetup --find --show`.
 * `tag` names the file (<tmp>/<tag>-<n>.img) so leftovers say whose they are.
 */
export async function makeLoopDisk(sizeBytes: number, tag: string, opts: LoopDiskOptions = {}): Promise<LoopDisk> {
  const file = createSparse(sizeBytes, tag);
  const fileHandle = registerCleanup(
    `sparse file ${file}`,
    async () => fs.promises.rm(file, { force: true }),
    () => removeFileSync(file),
  );
  const args = ['--find', '--show'];
  if (opts.directIo) args.push('--direct-io=on');
  if (opts.sectorSizeBytes !== undefined) args.push('--sector-size', String(opts.sectorSizeBytes));
  args.push(file);
  let device: string;
  try {
    device = (await execOk('losetup', args)).toString().trim();
  } catch (e) {
    await fileHandle.run();
    throw e;
  }
  if (!/^\/dev\/loop\d+$/.test(device) || loopBackingFile(device) !== file) {
    await fileHandle.run();
    throw new Error(`losetup --find --show ${file} printed ${JSON.stringify(device)}, which is not attached to it`);
  }
  const loopHandle = registerCleanup(
    `loop device ${device} (${file})`,
    () => detachIfOurs(device, file),
    () => detachIfOursSync(device, file),
  );
  return {
    file,
    device,
    sizeBytes,
    detach: async () => {
      await loopHandle.run();
      await fileHandle.run();
    },
  };
}

/** Lines of `losetup -a` (for before/after comparisons; filter to your own files). */
export async function losetupList(): Promise<string[]> {
  const out = (await execOk('losetup', ['-a'])).toString();
  return out.split('\n').filter((l) => l.trim() !== '');
}
