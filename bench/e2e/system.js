'use strict';
/**
 * What the end-to-end benchmark needs from the machine: commands and
 * long-lived helper processes it starts (and only those), loop devices,
 * mounts, sparse files, free ports, and one cleanup stack that undoes all of
 * it in reverse order, also on failure and on Ctrl-C.
 *
 * Every cleanup step is synchronous, so the same stack serves the normal path
 * (unwind after each row), a signal handler and process 'exit'.
 */
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');

const COMMAND_TIMEOUT_MS_DEFAULT = 60_000;
const DAEMON_READY_TIMEOUT_MS = 15_000;
const DAEMON_EXIT_WAIT_MS = 5_000;
const UNMOUNT_ATTEMPTS_MAX = 25;
const UNMOUNT_RETRY_MS = 200;
const OUTPUT_TAIL_BYTES = 8192;

function log(message) {
  console.log(`[bench] ${message}`);
}

function warn(message) {
  console.error(`[bench] warning: ${message}`);
}

/** Blocks the thread; only for the synchronous cleanup path. */
function sleepSync(ms) {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function tail(text, bytes = OUTPUT_TAIL_BYTES) {
  return text.length > bytes ? `...${text.slice(-bytes)}` : text;
}

// ---- cleanup stack ----

class CleanupStack {
  constructor() {
    this.entries = [];
  }

  /** Registers a synchronous undo step; returns a function that runs it now (at most once). */
  defer(label, undo) {
    const entry = { label, undo, done: false };
    this.entries.push(entry);
    return () => this.runEntry(entry);
  }

  mark() {
    return this.entries.length;
  }

  /** Runs, newest first, every step registered since `mark`. */
  unwindTo(mark) {
    while (this.entries.length > mark) this.runEntry(this.entries.pop());
  }

  unwindAll() {
    this.unwindTo(0);
  }

  runEntry(entry) {
    if (entry.done) return;
    entry.done = true;
    try {
      entry.undo();
    } catch (error) {
      warn(`cleanup step "${entry.label}" failed: ${error.message}`);
    }
  }
}

const cleanup = new CleanupStack();

// ---- processes (only those this program starts) ----

/** Children started by runCommand (short-lived: fio, losetup, nraid CLI). */
const commandChildren = new Map();

/** True while `pid` (a child of ours) has not exited; a zombie counts as exited. */
function processAlive(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

function waitGoneSync(pid, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (processAlive(pid)) {
    if (Date.now() >= deadline) return false;
    sleepSync(50);
  }
  return true;
}

/** Sends `signal` to a child of ours by its PID, then waits; SIGKILL if it stays. */
function stopChildSync(child, name, signal = 'SIGTERM') {
  if (child.exitCode !== null || child.signalCode !== null || !processAlive(child.pid)) return;
  try {
    process.kill(child.pid, signal);
  } catch {
    return;
  }
  if (waitGoneSync(child.pid, DAEMON_EXIT_WAIT_MS)) return;
  warn(`${name} (pid ${child.pid}) ignored ${signal}; sending SIGKILL`);
  try {
    process.kill(child.pid, 'SIGKILL');
  } catch {
    return;
  }
  waitGoneSync(child.pid, DAEMON_EXIT_WAIT_MS);
}

/** Stops every command still running (for the signal handler). */
function stopCommandsSync() {
  for (const [child, name] of commandChildren) stopChildSync(child, name);
}

class CommandError extends Error {
  constructor(command, result) {
    const why = result.timedOut
      ? `timed out after ${result.durationMs} ms`
      : result.signal
        ? `was killed by ${result.signal}`
        : `exited with code ${result.code}`;
    const detail = (result.stderr.trim() || result.stdout.trim()).split('\n').slice(-6).join('\n');
    super(`\`${command}\` ${why}${detail ? `: ${detail}` : ''}`);
    this.name = 'CommandError';
    this.result = result;
  }
}

function commandLine(cmd, args) {
  return [cmd, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`)).join(' ');
}

/**
 * Runs a command to its end and collects its output. Never rejects for a
 * non-zero exit: `check: true` turns that into a CommandError.
 * `inherit: true` shows its output live instead (apt-get).
 */
function runCommand(cmd, args, options = {}) {
  const { timeoutMs = COMMAND_TIMEOUT_MS_DEFAULT, cwd, env, inherit = false, check = false } = options;
  const started = Date.now();
  return new Promise((resolve, reject) => {
    let child;
    try {
      child = spawn(cmd, args, { cwd, env, stdio: inherit ? ['ignore', 'inherit', 'inherit'] : ['ignore', 'pipe', 'pipe'] });
    } catch (error) {
      reject(error);
      return;
    }
    commandChildren.set(child, cmd);
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    if (!inherit) {
      child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
      child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
    }
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGTERM');
      setTimeout(() => child.exitCode === null && child.signalCode === null && child.kill('SIGKILL'), DAEMON_EXIT_WAIT_MS).unref();
    }, timeoutMs);
    child.on('error', (error) => {
      clearTimeout(timer);
      commandChildren.delete(child);
      const result = { code: null, signal: null, stdout, stderr: `${stderr}${error.message}`, timedOut, durationMs: Date.now() - started };
      if (check) reject(new CommandError(commandLine(cmd, args), result));
      else resolve(result);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      commandChildren.delete(child);
      const result = { code, signal, stdout, stderr, timedOut, durationMs: Date.now() - started };
      if (check && (code !== 0 || timedOut)) reject(new CommandError(commandLine(cmd, args), result));
      else resolve(result);
    });
  });
}

/** Synchronous run for short system commands (losetup, umount); used by cleanup steps. */
function runSync(cmd, args, timeoutMs = COMMAND_TIMEOUT_MS_DEFAULT) {
  const result = spawnSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs, stdio: ['ignore', 'pipe', 'pipe'] });
  if (result.error) throw result.error;
  return { code: result.status, signal: result.signal, stdout: result.stdout, stderr: result.stderr };
}

function checkSync(cmd, args, timeoutMs) {
  const result = runSync(cmd, args, timeoutMs);
  if (result.code !== 0) {
    throw new Error(`\`${commandLine(cmd, args)}\` exited with code ${result.code}: ${result.stderr.trim()}`);
  }
  return result.stdout;
}

/**
 * Starts a long-lived helper (nbdkit, nbdfuse) in its own process group, so
 * that Ctrl-C reaches only us and we take it down in order. Output goes to
 * `logPath`. Returns { child, pid, logTail() }.
 */
function startDaemon(name, cmd, args, logPath) {
  const logFd = fs.openSync(logPath, 'a');
  let child;
  try {
    child = spawn(cmd, args, { detached: true, stdio: ['ignore', logFd, logFd] });
  } finally {
    fs.closeSync(logFd);
  }
  child.on('error', () => {});
  log(`started ${name} (pid ${child.pid}): ${commandLine(cmd, args)}`);
  return {
    name,
    child,
    pid: child.pid,
    exited: () => child.exitCode !== null || child.signalCode !== null || !processAlive(child.pid),
    logTail: () => {
      try {
        return tail(fs.readFileSync(logPath, 'utf8').trim(), 2000);
      } catch {
        return '';
      }
    },
  };
}

/** Resolves once `ready()` is true; rejects when the daemon exits first or time runs out. */
async function waitReady(daemon, what, ready, timeoutMs = DAEMON_READY_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (ready()) return;
    if (daemon.exited()) throw new Error(`${daemon.name} exited before ${what}: ${daemon.logTail() || '(no output)'}`);
    if (Date.now() >= deadline) throw new Error(`${daemon.name} not ready after ${timeoutMs} ms (${what}): ${daemon.logTail() || '(no output)'}`);
    await sleep(50);
  }
}

// ---- files ----

function createSparseFile(filePath, sizeBytes) {
  const fd = fs.openSync(filePath, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  try {
    fs.ftruncateSync(fd, sizeBytes);
  } finally {
    fs.closeSync(fd);
  }
  cleanup.defer(`remove ${filePath}`, () => fs.rmSync(filePath, { force: true }));
  return filePath;
}

// ---- mounts ----

function unescapeMountPath(field) {
  return field.replace(/\\([0-7]{3})/g, (_, octal) => String.fromCharCode(parseInt(octal, 8)));
}

/** Mount points (from /proc/self/mountinfo) at or below `dir`, deepest first. */
function mountsUnder(dir) {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => unescapeMountPath(line.split(' ')[4]))
    .filter((mountPoint) => mountPoint === dir || mountPoint.startsWith(prefix))
    .sort((a, b) => b.length - a.length);
}

function isMounted(mountPoint) {
  return mountsUnder(mountPoint).includes(mountPoint);
}

/** Unmounts a mount of ours; retries while it is busy (a loop device letting go). */
function unmountSync(mountPoint) {
  for (let attempt = 1; isMounted(mountPoint); attempt++) {
    const result = runSync('umount', [mountPoint]);
    if (result.code === 0) return;
    if (attempt >= UNMOUNT_ATTEMPTS_MAX) {
      warn(`umount ${mountPoint} keeps failing (${result.stderr.trim()}); detaching it lazily`);
      runSync('umount', ['-l', mountPoint]);
      return;
    }
    sleepSync(UNMOUNT_RETRY_MS);
  }
}

// ---- loop devices ----

function loopName(device) {
  return path.basename(device);
}

function loopBackingFile(device) {
  try {
    return fs.readFileSync(`/sys/block/${loopName(device)}/loop/backing_file`, 'utf8').trim();
  } catch {
    return null;
  }
}

function loopDirectIo(device) {
  try {
    return fs.readFileSync(`/sys/block/${loopName(device)}/loop/dio`, 'utf8').trim() === '1';
  } catch {
    return null;
  }
}

/** Detaches `device` only while it is still bound to `backingFile` (never someone else's). */
function detachLoopSync(device, backingFile) {
  const current = loopBackingFile(device);
  if (current === null) return;
  if (current !== backingFile && current !== `${backingFile} (deleted)`) {
    warn(`${device} now belongs to ${current}, not to ${backingFile}; left alone`);
    return;
  }
  checkSync('losetup', ['-d', device]);
}

/** Attaches `file` to a free loop device and registers its detach. Returns { device, directIo }. */
async function attachLoop(file, { directIo, sectorSize }) {
  const args = ['--find', '--show', ...(directIo ? ['--direct-io=on'] : []), ...(sectorSize ? ['--sector-size', String(sectorSize)] : []), file];
  const result = await runCommand('losetup', args, { check: true });
  const device = result.stdout.trim();
  if (!/^\/dev\/loop\d+$/.test(device)) throw new Error(`losetup printed "${device}", expected /dev/loopN`);
  const backingFile = fs.realpathSync(file);
  cleanup.defer(`detach ${device}`, () => detachLoopSync(device, backingFile));
  const dio = loopDirectIo(device);
  log(`attached ${device} over ${file}${directIo ? ` (direct I/O ${dio ? 'on' : 'REFUSED: buffered'})` : ''}`);
  if (directIo && dio !== true) warn(`${device} fell back to buffered I/O: its numbers include the page cache`);
  return { device, directIo: dio };
}

/** Loop devices whose backing file lies under `dir`. */
function loopsUnder(dir) {
  const result = runSync('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE']);
  if (result.code !== 0 || !result.stdout.trim()) return [];
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  return JSON.parse(result.stdout)
    .loopdevices.filter((l) => l['back-file'] && l['back-file'].startsWith(prefix))
    .map((l) => ({ device: l.name, backingFile: l['back-file'].replace(/ \(deleted\)$/, '') }));
}

// ---- network ----

/** `count` distinct TCP ports that were free on 127.0.0.1 a moment ago. */
async function freePorts(count) {
  const servers = [];
  try {
    for (let i = 0; i < count; i++) {
      const server = net.createServer();
      await new Promise((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
      servers.push(server);
    }
    return servers.map((s) => s.address().port);
  } finally {
    await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  }
}

// ---- tools ----

function which(name) {
  for (const dir of (process.env.PATH || '/usr/sbin:/usr/bin:/sbin:/bin').split(':')) {
    const candidate = path.join(dir, name);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

/** Installs the Debian packages of missing tools: apt-get update, then apt-get install. */
async function ensureTools(tools) {
  const missing = tools.filter((t) => !which(t.command));
  if (missing.length === 0) {
    log(`tools present: ${tools.map((t) => t.command).join(', ')}`);
    return;
  }
  if (!which('apt-get')) {
    throw new Error(`missing ${missing.map((t) => t.command).join(', ')} and no apt-get to install them`);
  }
  const packages = [...new Set(missing.map((t) => t.package))];
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  log(`missing ${missing.map((t) => t.command).join(', ')}: running apt-get update`);
  await runCommand('apt-get', ['update'], { env, inherit: true, check: true, timeoutMs: 600_000 });
  log(`installing ${packages.join(' ')} with apt-get`);
  await runCommand('apt-get', ['install', '-y', '--no-install-recommends', ...packages], { env, inherit: true, check: true, timeoutMs: 900_000 });
  const stillMissing = tools.filter((t) => !which(t.command));
  if (stillMissing.length > 0) throw new Error(`still missing after apt-get install: ${stillMissing.map((t) => t.command).join(', ')}`);
}

/** First line of `cmd --version`, or null. */
function toolVersion(cmd) {
  try {
    const result = runSync(cmd, ['--version'], 10_000);
    return (result.stdout || result.stderr).split('\n')[0].trim() || null;
  } catch {
    return null;
  }
}

module.exports = {
  CommandError,
  attachLoop,
  checkSync,
  cleanup,
  commandLine,
  createSparseFile,
  ensureTools,
  freePorts,
  isMounted,
  log,
  loopBackingFile,
  loopsUnder,
  detachLoopSync,
  mountsUnder,
  processAlive,
  runCommand,
  runSync,
  sleep,
  sleepSync,
  startDaemon,
  stopChildSync,
  stopCommandsSync,
  toolVersion,
  unmountSync,
  waitGoneSync,
  waitReady,
  warn,
  which,
};
