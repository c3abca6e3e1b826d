/**
 * The exposed device: the FUSE volume mounted on a file in the run directory,
 * a direct-I/O loop device on it, and the configured path as a symlink to the
 * loop device. Also the cleanup a daemon killed with -9 left behind.
 */
import fs from 'node:fs';
import path from 'node:path';
import { AlreadyUpError, ConfigError, DeviceBusyError, StaleDeviceError, isErrnoException, systemError, toNraidError } from './errors';
import { processExitPollMs, staleDaemonExitWaitMs } from './limits';
import { attachLoop, detachLoop, loopBackingFile, readLoopDio } from './loop';
import { FrontendOptions, binding } from './native';
import { ensurePrivateRunDir } from './run-dir';

export interface DeviceRecord {
  pid: number;
  mountPath: string;
  loopDevice: string | null;
  devicePath: string;
  /** Set by a daemon that handed the device to the holder (`nraid restart`): the next daemon takes it while this pid may still be exiting. */
  handedOver?: boolean;
}

/** What exposure needs of the data plane: its frontend, and a flush before the loop device goes. */
export interface DeviceFrontend {
  /** Returns the /dev/fuse descriptor it serves. */
  startFrontend(options: FrontendOptions): number | void;
  stopFrontend(): void;
  flush(): Promise<void>;
}

export interface ExposeOptions {
  frontend: DeviceFrontend;
  runDir: string;
  devicePath: string;
  source: string;
  threads: number;
  blockBytes: number;
  lockMemory: boolean;
  /** The holder, when one keeps the FUSE connection for this daemon (src/holder.ts). */
  held?: HeldFuse | null;
}

/** The daemon's side of the holder: the connection it keeps, and what it is told. */
export interface HeldFuse {
  /** The holder's /dev/fuse descriptor, inherited, whose connection is mounted here already; null: none. */
  fd: number | null;
  /** The volume is mounted and served through `fd` (this process's): the holder takes a duplicate. */
  mounted(fd: number): void;
  /** The volume is gone (unexposed): the holder lets its duplicate go. */
  released(): void;
}

const RECORD_FILE = 'device.json';
const MOUNT_FILE = 'volume';

export function mountPathOf(runDir: string): string {
  return path.join(runDir, MOUNT_FILE);
}

export function readRecord(runDir: string): DeviceRecord | null {
  try {
    return JSON.parse(fs.readFileSync(path.join(runDir, RECORD_FILE), 'utf8')) as DeviceRecord;
  } catch {
    return null;
  }
}

/** `nraid restart`: this daemon serves the device no more; the next one may take it before this process has exited. */
export function markHandedOver(runDir: string, record: DeviceRecord): void {
  writeRecord(runDir, { ...record, handedOver: true });
}

function writeRecord(runDir: string, record: DeviceRecord): void {
  const file = path.join(runDir, RECORD_FILE);
  fs.writeFileSync(`${file}.tmp`, JSON.stringify(record));
  fs.renameSync(`${file}.tmp`, file);
}

function removeRecord(runDir: string): void {
  fs.rmSync(path.join(runDir, RECORD_FILE), { force: true });
}

export function isMounted(mountPath: string): boolean {
  const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  return mounts.split('\n').some((line) => line.split(' ')[4] === mountPath);
}

/**
 * The device a dead daemon left mounted over the holder's connection, to be
 * served again: its record, its loop device still on this run dir's volume,
 * the volume still mounted. Null when any of it is missing.
 */
export function adoptableRecord(runDir: string, held: HeldFuse | null | undefined): DeviceRecord | null {
  if (held?.fd == null) return null;
  const record = readRecord(runDir);
  if (record === null || record.loopDevice === null || record.pid === process.pid || (record.handedOver !== true && mayBeDaemon(record.pid))) return null;
  if (!isMounted(record.mountPath) || loopBackingFile(record.loopDevice) !== record.mountPath) return null;
  return record;
}

/**
 * Serves the device a dead daemon left over the holder's connection: no new
 * mount, the same loop device and link; the kernel resends what that daemon
 * read and never answered (FUSE_NOTIFY_RESEND).
 */
function adoptDevice(options: ExposeOptions, record: DeviceRecord): DeviceRecord {
  try {
    options.frontend.startFrontend({
      mountPath: record.mountPath,
      source: options.source,
      threads: options.threads,
      lockMemory: options.lockMemory,
      fuseFd: options.held!.fd!,
      adopt: true,
    });
  } catch (error) {
    if (!isErrnoException(error)) throw toNraidError(error);
    throw systemError(`cannot serve the held FUSE volume ${record.mountPath} again`, error, 'the kernel must have FUSE_NOTIFY_RESEND (Linux >= 6.9); nraid down cleans up, then nraid up');
  }
  const adopted: DeviceRecord = { pid: process.pid, mountPath: record.mountPath, loopDevice: record.loopDevice, devicePath: options.devicePath };
  writeRecord(options.runDir, adopted);
  let linked: string | null = null;
  try {
    linked = fs.readlinkSync(options.devicePath);
  } catch {
    // missing: made below
  }
  if (linked !== record.loopDevice) {
    fs.mkdirSync(path.dirname(options.devicePath), { recursive: true });
    fs.rmSync(options.devicePath, { force: true });
    fs.symlinkSync(record.loopDevice!, options.devicePath);
  }
  return adopted;
}

/** Mounts the FUSE volume, attaches the loop device, links the device path. */
export function exposeDevice(options: ExposeOptions): DeviceRecord {
  const adoptable = adoptableRecord(options.runDir, options.held);
  if (adoptable !== null) return adoptDevice(options, adoptable);
  const mountPath = mountPathOf(options.runDir);
  // What a killed daemon left goes first; a filesystem still mounted on its loop device stops
  // everything (a second device under the same filesystem, next to the stale mount, misleads).
  const stale = cleanupStale(options.runDir, options.devicePath);
  if (stale.left.length > 0) throw new StaleDeviceError(`cannot expose ${options.devicePath}: ${stale.left.join('; ')}`);
  checkDevicePathFree(options.devicePath);
  ensurePrivateRunDir(options.runDir);
  fs.writeFileSync(mountPath, '', { mode: 0o600 });
  fs.chmodSync(mountPath, 0o600); // an old volume file keeps its mode otherwise
  const record: DeviceRecord = { pid: process.pid, mountPath, loopDevice: null, devicePath: options.devicePath };
  writeRecord(options.runDir, record);
  try {
    const fd = options.frontend.startFrontend({
      mountPath,
      source: options.source,
      threads: options.threads,
      lockMemory: options.lockMemory,
    });
    if (typeof fd === 'number') options.held?.mounted(fd);
  } catch (error) {
    if (!isErrnoException(error)) throw toNraidError(error);
    throw systemError(
      `cannot mount the FUSE volume on ${mountPath}`,
      error,
      'check that /dev/fuse exists, that nraid runs as root, and that locked memory is not limited (ulimit -l)',
    );
  }
  try {
    record.loopDevice = attachLoop({ filePath: mountPath, blockBytes: options.blockBytes });
    writeRecord(options.runDir, record);
    fs.mkdirSync(path.dirname(options.devicePath), { recursive: true });
    fs.rmSync(options.devicePath, { force: true });
    fs.symlinkSync(record.loopDevice, options.devicePath);
  } catch (error) {
    if (record.loopDevice !== null) detachLoop(record.loopDevice);
    options.frontend.stopFrontend();
    options.held?.released();
    removeRecord(options.runDir);
    if (isErrnoException(error)) {
      throw systemError(`cannot link the device path ${options.devicePath} to the loop device`, error, 'check the "device" path in the config');
    }
    throw toNraidError(error);
  }
  return record;
}

/** Refuses a device path that exists and is not a symlink nraid could have made. */
function checkDevicePathFree(devicePath: string): void {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(devicePath);
  } catch {
    return;
  }
  if (!stat.isSymbolicLink()) {
    throw new ConfigError(`device path ${devicePath} exists and is not a symlink made by nraid; choose another "device" in the config or remove it`);
  }
  const target = fs.readlinkSync(devicePath);
  const backing = loopBackingFile(target);
  if (backing !== null && isMounted(backing)) {
    throw new ConfigError(
      `device path ${devicePath} already points to ${target}, which another nraid volume (${backing}) serves; ` +
        'two resources or nodes on one machine need different "device" paths',
    );
  }
}

/**
 * Who holds the exposed device, if anyone: a mount point, an exclusive
 * opener, or a process with it open (found in /proc/<pid>/fd, as fuser does);
 * null when it is free.
 */
export function deviceHolder(loopDevice: string): string | null {
  let fd: number | null = null;
  try {
    fd = fs.openSync(loopDevice, fs.constants.O_RDONLY | fs.constants.O_EXCL);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EBUSY') return null;
    const name = path.basename(loopDevice);
    const mount = fs
      .readFileSync('/proc/self/mounts', 'utf8')
      .split('\n')
      .map((line) => line.split(' '))
      .find((fields) => fields[0] === loopDevice || fields[0] === `/dev/${name}`);
    if (mount) return `mounted at ${mount[1]}`;
  } finally {
    if (fd !== null) fs.closeSync(fd);
  }
  const opener = processHolding(loopDevice);
  return opener ?? (fd === null ? 'held exclusively by a program (see fuser -v)' : null);
}

/** The first process (other than this one) with `device` open, as "pid N (comm)". */
function processHolding(device: string): string | null {
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    let fds: string[];
    try {
      fds = fs.readdirSync(`/proc/${entry}/fd`);
    } catch {
      continue;
    }
    for (const fdName of fds) {
      try {
        if (fs.readlinkSync(`/proc/${entry}/fd/${fdName}`) === device) {
          let comm = '?';
          try {
            comm = fs.readFileSync(`/proc/${entry}/comm`, 'utf8').trim();
          } catch {
            // gone meanwhile
          }
          return `held open by pid ${entry} (${comm})`;
        }
      } catch {
        // fd closed meanwhile
      }
    }
  }
  return null;
}

/**
 * Takes the device away. Refuses while it is open, so that no writer loses its
 * disk. Flushes first, off the event loop (the data plane's flush).
 */
export async function unexposeDevice(record: DeviceRecord, frontend: DeviceFrontend, runDir: string, held?: HeldFuse | null): Promise<void> {
  if (record.loopDevice !== null) {
    const holder = deviceHolder(record.loopDevice);
    if (holder !== null) {
      throw new DeviceBusyError(`device ${record.devicePath} (${record.loopDevice}) is in use: ${holder}; unmount or close it first`);
    }
    await frontend.flush();
    detachLoop(record.loopDevice);
  }
  removeSymlinkTo(record.devicePath, record.loopDevice);
  frontend.stopFrontend();
  held?.released();
  removeRecord(runDir);
}

function removeSymlinkTo(devicePath: string, loopDevice: string | null): void {
  try {
    if (fs.lstatSync(devicePath).isSymbolicLink() && (loopDevice === null || fs.readlinkSync(devicePath) === loopDevice)) {
      fs.rmSync(devicePath);
    }
  } catch {
    // already gone
  }
}

/** Alive and not a zombie: a process killed with -9 takes a moment to release its FUSE connection. */
function processAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/**
 * Whether `pid` may still be the daemon that wrote the record: alive and an
 * nraid process. A pid reused by an unrelated program (the record outlived
 * its daemon for long) is not waited for, and never named as one to kill.
 */
function mayBeDaemon(pid: number): boolean {
  if (!processAlive(pid)) return false;
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('nraid');
  } catch {
    return false;
  }
}

function waitForExit(pid: number): boolean {
  const deadline = Date.now() + staleDaemonExitWaitMs;
  while (mayBeDaemon(pid)) {
    if (Date.now() > deadline) return false;
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, processExitPollMs);
  }
  return true;
}

/** What a stale-device cleanup did, and what it could not do. */
export interface StaleCleanup {
  /** One line per thing removed ("detached stale loop device /dev/loop3"). */
  cleaned: string[];
  /** One line per thing left in place, each saying why and what to do. */
  left: string[];
}

/** Loop devices whose backing file is `file` (found in sysfs: the record may be missing). */
export function loopsBackedBy(file: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync('/sys/block').filter((name) => name.startsWith('loop'));
  } catch {
    return [];
  }
  return names.map((name) => `/dev/${name}`).filter((device) => loopBackingFile(device) === file);
}

/**
 * The recorded loop device of a dead daemon whose FUSE volume went with its
 * mount namespace (a daemon started by `ip netns exec`, then killed): sysfs
 * then shows its backing file as "/", and LOOP_GET_STATUS64 fails (it stats
 * the dead volume). Taken as ours when the record names it, it still reads
 * "/" and it uses direct I/O (as every nraid loop device does): while it is
 * attached, no other program can have been given that loop device.
 */
function recordedLoopWithoutMount(record: DeviceRecord | null): string | null {
  if (record?.loopDevice == null || loopBackingFile(record.loopDevice) !== '/') return null;
  return readLoopDio(record.loopDevice) === true ? record.loopDevice : null;
}

interface DeviceMount {
  mountPoint: string;
  fsType: string;
}

function majorMinorOf(device: string): string | null {
  try {
    return fs.readFileSync(`/sys/block/${path.basename(device)}/dev`, 'utf8').trim();
  } catch {
    return null;
  }
}

function mountsIn(mountinfo: string, majorMinor: string): DeviceMount[] {
  return mountinfo
    .split('\n')
    .map((line) => line.split(' '))
    .filter((fields) => fields[2] === majorMinor)
    .map((fields) => ({ mountPoint: fields[4], fsType: fields[fields.indexOf('-') + 1] ?? '?' }));
}

/** Mount points (and filesystem types) of a block device in this mount namespace, found by its major:minor. */
export function mountsOf(device: string): DeviceMount[] {
  const majorMinor = majorMinorOf(device);
  return majorMinor === null ? [] : mountsIn(fs.readFileSync('/proc/self/mountinfo', 'utf8'), majorMinor);
}

/**
 * Mounts of a block device in other mount namespaces, one process named per
 * namespace. A namespace made while the filesystem was mounted (ip netns
 * exec, unshare -m) holds a copy of the mount, which an umount here does not
 * reach when the mount is private: the device stays in use.
 */
function mountsElsewhere(device: string): { pid: string; comm: string; mounts: DeviceMount[] }[] {
  const majorMinor = majorMinorOf(device);
  if (majorMinor === null) return [];
  let own: string;
  try {
    own = fs.readlinkSync('/proc/self/ns/mnt');
  } catch {
    return [];
  }
  const seen = new Set<string>([own]);
  const found: { pid: string; comm: string; mounts: DeviceMount[] }[] = [];
  for (const pid of fs.readdirSync('/proc').filter((entry) => /^\d+$/.test(entry))) {
    try {
      const ns = fs.readlinkSync(`/proc/${pid}/ns/mnt`);
      if (seen.has(ns)) continue;
      seen.add(ns);
      const mounts = mountsIn(fs.readFileSync(`/proc/${pid}/mountinfo`, 'utf8'), majorMinor);
      if (mounts.length > 0) found.push({ pid, comm: fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim(), mounts });
    } catch {
      // gone meanwhile, or a kernel thread
    }
  }
  return found;
}

/** What keeps a stale loop device in use, and what to do about it. */
function staleUseOf(loopDevice: string): { what: string; todo: string } {
  const mounts = mountsOf(loopDevice);
  const elsewhere = mountsElsewhere(loopDevice);
  if (mounts.length > 0 || elsewhere.length > 0) {
    const fsType = (mounts[0] ?? elsewhere[0].mounts[0]).fsType;
    const places = mounts.map((m) => m.mountPoint);
    const todo = places.map((p) => `umount ${p}`);
    for (const e of elsewhere) {
      places.push(...e.mounts.map((m) => `${m.mountPoint} in the mount namespace of pid ${e.pid} (${e.comm})`));
      todo.push(...e.mounts.map((m) => `nsenter -t ${e.pid} -m umount ${m.mountPoint}`));
    }
    return {
      what: `a filesystem (${fsType}) is mounted on it at ${places.join(', ')}, and its I/O fails since the daemon died`,
      todo: `stop the programs that use it and unmount it (${todo.join(', ')}, or umount -l if it stays busy)`,
    };
  }
  let holders: string[] = [];
  try {
    holders = fs.readdirSync(`/sys/block/${path.basename(loopDevice)}/holders`);
  } catch {
    // no holders directory: not a stacked device
  }
  if (holders.length > 0) return { what: `it is used by ${holders.map((h) => `/dev/${h}`).join(', ')}`, todo: `remove those devices (dmsetup remove, mdadm --stop)` };
  const holder = deviceHolder(loopDevice);
  return { what: holder ?? 'it is still open', todo: `close it (fuser -v ${loopDevice} shows who has it open)` };
}

/**
 * After kill -9 a daemon leaves a mount whose connection is gone, a loop
 * device on it and the symlink. Removes what is free, only if the record's
 * process is dead and only what is still ours (a loop device whose backing
 * file is this run directory's volume). A loop device still in use (a
 * filesystem mounted on it) cannot be detached: it is marked to go away at
 * its last close (the kernel's autoclear), and the FUSE volume under it stays
 * mounted, so that it can still be found (a lazy unmount would hide whose it
 * is); `left` says what remains and what to do. Never reports as done what
 * sysfs does not show done.
 */
export function cleanupStale(runDir: string, devicePath: string): StaleCleanup {
  const record = readRecord(runDir);
  const report: StaleCleanup = { cleaned: [], left: [] };
  const mountPath = record?.mountPath ?? mountPathOf(runDir);
  if (record !== null && record.pid !== process.pid && !waitForExit(record.pid)) {
    throw new AlreadyUpError(
      `run directory ${runDir} belongs to daemon pid ${record.pid}, which is still running but does not answer; ` +
        `stop it (kill ${record.pid}) and try again`,
    );
  }
  const owner = record !== null && record.pid !== process.pid ? `daemon pid ${record.pid}` : 'a daemon';
  let busy = 0;
  const recorded = record !== null && record.pid !== process.pid ? recordedLoopWithoutMount(record) : null;
  for (const loop of [...loopsBackedBy(mountPath), ...(recorded === null ? [] : [recorded])]) {
    const backing = loopBackingFile(loop);
    // Free: detached at once. In use: LOOP_CLR_FD only sets autoclear (detached at its last close).
    detachLoop(loop);
    removeSymlinkTo(devicePath, loop);
    if (loopBackingFile(loop) !== backing) {
      report.cleaned.push(`detached stale loop device ${loop}`);
      continue;
    }
    busy += 1;
    const use = staleUseOf(loop);
    report.left.push(`loop device ${loop} of ${owner}, which died, is still in use: ${use.what}; ${use.todo}: the loop device then goes away by itself`);
  }
  if (record) removeSymlinkTo(record.devicePath, record.loopDevice);
  if (busy === 0 && isMounted(mountPath)) {
    try {
      binding.unmount(mountPath, true);
      report.cleaned.push(`unmounted stale FUSE volume ${mountPath}`);
    } catch (error) {
      if (!isErrnoException(error)) throw toNraidError(error);
      if (error.code !== 'EINVAL') {
        throw systemError(`cannot unmount the stale FUSE volume ${mountPath}`, error, `unmount it by hand (umount -l ${mountPath}) and run nraid up again`);
      }
    }
  }
  if (record && busy === 0) removeRecord(runDir);
  return report;
}
