/**
 * Loop devices through ioctl(2) (the `ioctl` package): attach a file with
 * LOOP_CONFIGURE and direct I/O, check that the kernel really uses direct
 * I/O, detach with LOOP_CLR_FD.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import ioctl from 'ioctl';
import { PrerequisiteError, isErrnoException, systemError, toNraidError } from './errors';
import { loopAttachAttemptsMax } from './limits';

const LOOP_CTL_GET_FREE = 0x4c82;
const LOOP_CLR_FD = 0x4c01;
const LOOP_CONFIGURE = 0x4c0a;
const LO_FLAGS_DIRECT_IO = 16;
/** struct loop_config: fd u32, block_size u32, struct loop_info64 (232 bytes), __reserved u64[8]. */
const LOOP_CONFIG_BYTES = 4 + 4 + 232 + 64;
const LOOP_INFO_FLAGS_OFFSET = 8 + 40 + 12;
const LOOP_INFO_FILE_NAME_OFFSET = 8 + 40 + 16;
const LOOP_FILE_NAME_BYTES = 64;

export interface LoopAttachOptions {
  /** The file to put under the loop device; opened O_RDWR | O_DIRECT. */
  filePath: string;
  /** The logical block size the device shows: the backing disk's. */
  blockBytes: number;
}

export function loopConfig(fd: number, blockBytes: number, fileName: string): Buffer {
  const config = Buffer.alloc(LOOP_CONFIG_BYTES);
  config.writeUInt32LE(fd, 0);
  config.writeUInt32LE(blockBytes, 4);
  config.writeUInt32LE(LO_FLAGS_DIRECT_IO, LOOP_INFO_FLAGS_OFFSET);
  config.write(fileName.slice(0, LOOP_FILE_NAME_BYTES - 1), LOOP_INFO_FILE_NAME_OFFSET, 'utf8');
  return config;
}

/** Throws PrerequisiteError when the kernel has no loop devices (no /dev/loop-control). */
export function requireLoopControl(): void {
  if (!fs.existsSync('/dev/loop-control')) {
    throw new PrerequisiteError('no /dev/loop-control: this kernel has no loop device support; load the loop module (modprobe loop)');
  }
}

/** Attaches `filePath` to a free loop device with direct I/O; returns /dev/loopN. */
export function attachLoop(options: LoopAttachOptions): string {
  requireLoopControl();
  try {
    return attachFreeLoop(options);
  } catch (error) {
    if (!isErrnoException(error)) throw toNraidError(error);
    throw systemError(
      `cannot attach a loop device to ${options.filePath} (${error.syscall ?? 'ioctl'})`,
      error,
      'check that nraid runs as root and that loop devices are available (losetup -f)',
    );
  }
}

function attachFreeLoop(options: LoopAttachOptions): string {
  const fileFd = fs.openSync(options.filePath, fs.constants.O_RDWR | fs.constants.O_DIRECT);
  const controlFd = fs.openSync('/dev/loop-control', 'r+');
  try {
    for (let attempt = 1; ; attempt++) {
      const index = ioctl(controlFd, LOOP_CTL_GET_FREE);
      const device = `/dev/loop${index}`;
      ensureLoopNode(device);
      const loopFd = fs.openSync(device, 'r+');
      try {
        ioctl(loopFd, LOOP_CONFIGURE, loopConfig(fileFd, options.blockBytes, options.filePath));
      } catch (error) {
        // Another program took this free device between GET_FREE and CONFIGURE.
        if ((error as NodeJS.ErrnoException).code === 'EBUSY' && attempt < loopAttachAttemptsMax) continue;
        throw error;
      } finally {
        fs.closeSync(loopFd);
      }
      const dio = readLoopDio(device);
      if (dio !== true) {
        detachLoop(device);
        throw new PrerequisiteError(
          `loop device ${device} on ${options.filePath} fell back to buffered I/O (loop/dio reads ${dio === null ? 'nothing' : '0'}); ` +
            'nraid needs direct I/O so that no write is acknowledged from the page cache; check that the kernel supports direct I/O on FUSE files',
        );
      }
      return device;
    }
  } finally {
    fs.closeSync(controlFd);
    fs.closeSync(fileFd);
  }
}

/**
 * Makes the node /dev/loopN when it is missing. In a container the loop
 * devices the kernel adds appear in the host's devtmpfs, not in the
 * container's /dev (docker/README.md): the numbers come from
 * /sys/block/loopN/dev, and the container needs CAP_MKNOD and access to
 * block major 7 (`--device-cgroup-rule 'b 7:* rwm'`).
 */
export function ensureLoopNode(device: string): void {
  if (fs.existsSync(device)) return;
  const sysDev = `/sys/block/${path.basename(device)}/dev`;
  let numbers: string[];
  try {
    numbers = fs.readFileSync(sysDev, 'utf8').trim().split(':');
  } catch {
    return; // no such loop device: the open that follows says so
  }
  try {
    execFileSync('mknod', ['-m', '0660', device, 'b', numbers[0], numbers[1]], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (error) {
    if (fs.existsSync(device)) return; // made by someone else meanwhile
    const said = String((error as { stderr?: Buffer }).stderr ?? error).trim();
    throw new PrerequisiteError(
      `${device} exists in the kernel (${sysDev} reads ${numbers.join(':')}) but not in this /dev, and mknod failed: ${said}; ` +
        "in a container, give CAP_MKNOD and allow block major 7 (--cap-add MKNOD --device-cgroup-rule 'b 7:* rwm'), or bind-mount the host's loop devices",
    );
  }
}

/** True when /sys/block/loopN/loop/dio reads 1; null when the device has no loop attributes. */
export function readLoopDio(device: string): boolean | null {
  const name = device.replace(/^\/dev\//, '');
  try {
    return fs.readFileSync(`/sys/block/${name}/loop/dio`, 'utf8').trim() === '1';
  } catch {
    return null;
  }
}

/** The file behind a loop device, or null when it is not attached. */
export function loopBackingFile(device: string): string | null {
  const name = device.replace(/^\/dev\//, '');
  try {
    return fs.readFileSync(`/sys/block/${name}/loop/backing_file`, 'utf8').trim();
  } catch {
    return null;
  }
}

/** Detaches a loop device; a device that is already free is fine. */
export function detachLoop(device: string): void {
  if (loopBackingFile(device) !== null) ensureLoopNode(device);
  let loopFd: number;
  try {
    loopFd = fs.openSync(device, 'r');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw detachError(device, error);
  }
  try {
    ioctl(loopFd, LOOP_CLR_FD, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENXIO') throw detachError(device, error);
  } finally {
    fs.closeSync(loopFd);
  }
}

function detachError(device: string, error: unknown): Error {
  if (!isErrnoException(error)) return toNraidError(error);
  return systemError(`cannot detach loop device ${device}`, error, `see who holds it (fuser -v ${device}) and detach it by hand (losetup -d ${device})`);
}
