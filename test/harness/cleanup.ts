/**
 * The harness's registry of everything a test made (loop devices, sparse
 * files, resources, temp dirs), undone in reverse order by cleanupAll().
 *
 * cleanupAll() runs:
 *  - after every test file that imports the harness (a root-level afterAll
 *    added when this module loads under jest; hooks inside describe blocks run
 *    before it);
 *  - at process exit and on SIGINT/SIGTERM, synchronously (execFileSync), as a
 *    fallback. Under jest the test file's `process` is a sandbox copy whose
 *    'exit' never fires, so the handlers go on the real process object.
 *
 * Everything lives in one per-process directory, os.tmpdir()/nraid-test-<pid>-<random>.
 * After the registry is undone, a sweep unmounts any mount and detaches any
 * loop device whose mount point or backing file lies inside that directory:
 * they can only be ours (or made by a daemon a test started), so a fixture
 * that forgot one still leaves nothing behind. Nothing outside it is touched.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as vm from 'vm';
import { execSyncQuiet } from './exec';

export interface CleanupHandle {
  readonly label: string;
  /** Undo now (once); later calls and cleanupAll() skip it. */
  run(): Promise<void>;
  /** Drop from the registry without undoing. */
  forget(): void;
}

interface Entry {
  label: string;
  undoAsync: () => Promise<void>;
  undoSync: () => void;
  state: 'pending' | 'running' | 'done';
  promise?: Promise<void>;
}

const entries: Entry[] = [];
let tempDir: string | undefined;

/**
 * Registers an undo action. `undoAsync` is what cleanupAll() and run() call;
 * `undoSync` is the exit-time fallback. Both must tolerate the thing being
 * gone already.
 */
export function registerCleanup(label: string, undoAsync: () => Promise<void>, undoSync: () => void): CleanupHandle {
  const entry: Entry = { label, undoAsync, undoSync, state: 'pending' };
  entries.push(entry);
  installExitHandlers();
  return {
    label,
    run: () => runEntry(entry),
    forget: () => {
      entry.state = 'done';
      removeEntry(entry);
    },
  };
}

function removeEntry(entry: Entry): void {
  const i = entries.indexOf(entry);
  if (i >= 0) entries.splice(i, 1);
}

function runEntry(entry: Entry): Promise<void> {
  if (entry.state === 'done') return Promise.resolve();
  if (entry.promise) return entry.promise;
  entry.state = 'running';
  entry.promise = (async () => {
    try {
      await entry.undoAsync();
    } finally {
      entry.state = 'done';
      removeEntry(entry);
    }
  })();
  return entry.promise;
}

/** The per-process temp dir (created on first use, real path, mode 0700). */
export function harnessTempDir(): string {
  if (tempDir !== undefined && fs.existsSync(tempDir)) return tempDir;
  const name = `nraid-test-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  const dir = path.join(fs.realpathSync(os.tmpdir()), name);
  fs.mkdirSync(dir, { mode: 0o700 });
  tempDir = dir;
  installExitHandlers();
  return dir;
}

/** A fresh subdirectory of the temp dir, e.g. for one resource. */
export function makeTempSubdir(tag: string): string {
  checkTag(tag);
  return fs.mkdtempSync(path.join(harnessTempDir(), `${tag}-`));
}

export function checkTag(tag: string): void {
  if (!/^[A-Za-z0-9_.-]{1,40}$/.test(tag)) {
    throw new Error(`harness tag must be 1-40 characters of [A-Za-z0-9_.-], got ${JSON.stringify(tag)}`);
  }
}

/** Labels of what is still registered (for tests and diagnostics). */
export function pendingCleanups(): string[] {
  return entries.filter((e) => e.state !== 'done').map((e) => e.label);
}

/**
 * Undoes everything registered, newest first, then sweeps the temp dir and
 * removes it. Rejects, after doing all it can, if something could not be
 * undone (a leak the suite should see).
 */
export async function cleanupAll(): Promise<void> {
  const problems: string[] = [];
  for (const entry of [...entries].reverse()) {
    try {
      await runEntry(entry);
    } catch (e) {
      problems.push(`${entry.label}: ${(e as Error).message}`);
    }
  }
  if (tempDir !== undefined) {
    problems.push(...sweepDir(tempDir));
    if (problems.length === 0) {
      try {
        fs.rmSync(tempDir, { recursive: true, force: true });
        tempDir = undefined;
      } catch (e) {
        problems.push(`remove ${tempDir}: ${(e as Error).message}`);
      }
    }
  }
  if (problems.length > 0) throw new Error(`harness cleanup left things behind:\n  ${problems.join('\n  ')}`);
}

function cleanupAllSync(): void {
  for (const entry of [...entries].reverse()) {
    if (entry.state === 'done') continue;
    entry.state = 'done';
    try {
      entry.undoSync();
    } catch (e) {
      process.stderr.write(`nraid harness: exit cleanup of ${entry.label} failed: ${(e as Error).message}\n`);
    }
  }
  entries.length = 0;
  if (tempDir !== undefined) {
    const problems = sweepDir(tempDir);
    for (const p of problems) process.stderr.write(`nraid harness: ${p}\n`);
    if (problems.length === 0) {
      try {
        fs.rmSync(tempDir, { recursive: true, force: true });
      } catch {
        // Reported by nothing further: we are exiting.
      }
    }
    tempDir = undefined;
  }
}

/** Parses /proc/self/mountinfo into mount points (octal escapes decoded). */
export function mountPoints(): string[] {
  let text: string;
  try {
    text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  return text
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => l.split(' ')[4].replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))));
}

export interface LoopInfo {
  device: string;
  backingFile: string;
}

/** Every attached loop device with its backing file, read from sysfs. */
export function loopDevices(): LoopInfo[] {
  const out: LoopInfo[] = [];
  let names: string[];
  try {
    names = fs.readdirSync('/sys/block').filter((n) => /^loop\d+$/.test(n));
  } catch {
    return out;
  }
  for (const n of names) {
    try {
      const backing = fs.readFileSync(`/sys/block/${n}/loop/backing_file`, 'utf8').trim();
      out.push({ device: `/dev/${n}`, backingFile: backing.replace(/ \(deleted\)$/, '') });
    } catch {
      // Not attached (no loop/ directory) or gone meanwhile.
    }
  }
  return out;
}

/** The backing file of `device` if it is attached, else undefined. */
export function loopBackingFile(device: string): string | undefined {
  const m = /^\/dev\/(loop\d+)$/.exec(device);
  if (!m) throw new Error(`not a loop device path: ${device}`);
  try {
    return fs.readFileSync(`/sys/block/${m[1]}/loop/backing_file`, 'utf8').trim().replace(/ \(deleted\)$/, '');
  } catch {
    return undefined;
  }
}

function inside(dir: string, p: string): boolean {
  return p === dir || p.startsWith(dir + '/');
}

/**
 * Detaches every loop device whose backing file lies inside `dir` and
 * unmounts every mount point inside it. Returns what could not be undone.
 *
 * Loop devices go first: a loop device over a FUSE file (a crashed daemon's
 * exposed device) keeps that mount busy, and once the mount is gone lazily
 * its backing path reads "/" and no longer names `dir`. One over a mounted
 * filesystem's image detaches when that is unmounted (losetup sets autoclear).
 */
export function sweepDir(dir: string): string[] {
  const problems: string[] = [];
  const loops = loopDevices().filter((l) => inside(dir, l.backingFile));
  for (const loop of loops) execSyncQuiet('losetup', ['-d', loop.device]);
  const mounts = mountPoints()
    .filter((m) => inside(dir, m))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) {
    if (execSyncQuiet('umount', [m]) !== undefined) {
      const err = execSyncQuiet('umount', ['-l', m]);
      if (err !== undefined) problems.push(`umount ${m}: ${err}`);
    }
  }
  for (const loop of loops) {
    if (loopBackingFile(loop.device) !== loop.backingFile) continue;  // gone, or now someone else's
    const err = execSyncQuiet('losetup', ['-d', loop.device]);
    if (err !== undefined && loopBackingFile(loop.device) === loop.backingFile) {
      problems.push(`losetup -d ${loop.device} (${loop.backingFile}): ${err}`);
    }
  }
  return problems;
}

// --- exit handlers on the real process object --------------------------------

interface GlobalState {
  handlers: Set<() => void>;
  installed: boolean;
}

const STATE_KEY = Symbol.for('nraid.test-harness.cleanup.v1');

function realProcess(): NodeJS.Process {
  try {
    // Under jest, `process` is a per-file sandbox copy; the vm module's own
    // context is the real one.
    const p = vm.runInThisContext('process') as NodeJS.Process;
    if (p && typeof p.on === 'function') return p;
  } catch {
    // Fall through.
  }
  return process;
}

let myHandlerAdded = false;

function installExitHandlers(): void {
  if (myHandlerAdded) return;
  myHandlerAdded = true;
  const real = realProcess() as NodeJS.Process & { [STATE_KEY]?: GlobalState };
  let state = real[STATE_KEY];
  if (!state) {
    const s: GlobalState = { handlers: new Set(), installed: false };
    state = s;
    real[STATE_KEY] = s;
  }
  state.handlers.add(cleanupAllSync);
  if (state.installed) return;
  state.installed = true;
  const s = state;
  const runAll = (): void => {
    for (const h of s.handlers) {
      try {
        h();
      } catch {
        // Keep going: every registry gets its turn.
      }
    }
    s.handlers.clear();
  };
  real.on('exit', runAll);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    const onSignal = (): void => {
      runAll();
      real.removeListener(sig, onSignal);
      // If nobody else handles the signal, die of it as we would have.
      if (real.listenerCount(sig) === 0) real.kill(real.pid, sig);
    };
    real.on(sig, onSignal);
  }
}

// Under jest, undo what each test file made when that file ends.
if (typeof afterAll === 'function') {
  try {
    afterAll(() => cleanupAll(), 120_000);
  } catch {
    // Imported from inside a test or hook: the exit handlers remain.
  }
}
