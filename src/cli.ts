/**
 * The `nraid` command. Commands that need the daemon talk to it over the
 * admin socket; `create-md` and `up` work on the node directly.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { adminCall, adminSocketPath } from './admin';
import { ParsedArgs, parseArgs, usage } from './cli/args';
import { requireKernel } from './kernel';
import { NodeConfig, ResourceConfig, loadConfig, localAndPeer, resolveConfigPath, roleHookBudgetMs, secretWarnings } from './config';
import { ensurePrivateRunDir } from './run-dir';
import { EXIT_HANDED_OVER, HOLDER_ENV, RESTART_REFUSED_FILE, ToDaemon, isStandby, waitForGo } from './holder-client';
import type { HolderClient } from './holder-client';
import type { StaleCleanup } from './device';
import {
  AlreadyUpError,
  DaemonStartError,
  DiskError,
  NotRootError,
  NotUpError,
  PrerequisiteError,
  RemoteError,
  StaleDeviceError,
  StateError,
  TimeoutError,
  UsageError,
  errorReply,
  toNraidError,
} from './errors';
import { adminCallTimeoutMsDefault, daemonNodeFlags, daemonProbeTimeoutMs, downExitTimeoutMs, processExitPollMs, statusWatchIntervalMs, switchoverSettlePollMs, switchoverSettleWaitMs, upReadyTimeoutMs } from './limits';
import { jsonLogger } from './log';
import { ResourceStatus, formatBytes, statusLine } from './state';

// The daemon, the holder, the device and metadata code (and the native addon under them) load
// only in the commands that use them: a role command starts in a fraction of the time, which
// counts in a switchover's and a failover's total.

interface Context {
  args: ParsedArgs;
  config: ResourceConfig;
  local: NodeConfig;
}

function out(line: string): void {
  process.stdout.write(line + '\n');
}

function requireRoot(command: string): void {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new NotRootError(`nraid ${command} must run as root (it opens block devices, mounts FUSE and sets up loop devices); run it with sudo`);
  }
}

async function requireKernelSupport(): Promise<void> {
  const { requireLoopControl } = await import('./loop');
  if (!fs.existsSync('/dev/fuse')) {
    throw new PrerequisiteError('no /dev/fuse: this kernel has no FUSE support; load the fuse module (modprobe fuse) or use a kernel with FUSE');
  }
  requireLoopControl();
  // The kernel release against the feature table (LOOP_CONFIGURE, FUSE protocol versions).
  requireKernel();
}

function context(args: ParsedArgs): Context {
  const configPath = resolveConfigPath(args.resource, args.configPath);
  const config = loadConfig(configPath);
  if (args.resource !== undefined && args.resource !== config.resource) {
    throw new UsageError(`config ${configPath} is for resource "${config.resource}", not "${args.resource}"; check -c or the resource name`);
  }
  const { local } = localAndPeer(config, args.nodeName ?? os.hostname());
  return { args, config, local };
}

/** Role changes may run the role hooks (on both nodes for a switchover): their timeouts add to the wait. */
const ROLE_COMMANDS: ReadonlySet<string> = new Set(['primary', 'secondary', 'switchover']);

async function callDaemon(ctx: Context, command: string, args: Record<string, unknown> = {}): Promise<unknown> {
  const timeoutMs = adminCallTimeoutMsDefault + (ROLE_COMMANDS.has(command) ? roleHookBudgetMs(ctx.config.hooks) : 0);
  try {
    return await adminCall(adminSocketPath(ctx.local), command, args, undefined, timeoutMs);
  } catch (error) {
    if (error instanceof NotUpError) {
      throw new NotUpError(
        `resource ${ctx.config.resource} is not up on node ${ctx.local.name}${await deadDaemonHint(ctx)}; start it with nraid up -c ${ctx.config.path} -n ${ctx.local.name}`,
      );
    }
    throw error;
  }
}

/** When no daemon answers but one left its device record or admin socket: says it died (`down` or `up` cleans up). */
async function deadDaemonHint(ctx: Context): Promise<string> {
  const { readRecord } = await import('./device');
  const record = readRecord(ctx.local.runDir);
  if (record !== null) {
    return ` (its daemon, pid ${record.pid}, died and left its device ${record.loopDevice ?? record.mountPath}: nraid down cleans it up, and so does nraid up)`;
  }
  return fs.existsSync(adminSocketPath(ctx.local)) ? ' (its daemon died: nraid down cleans up after it)' : '';
}

async function daemonAnswers(node: NodeConfig): Promise<ResourceStatus | null> {
  try {
    return (await adminCall(adminSocketPath(node), 'status', {}, undefined, daemonProbeTimeoutMs)) as ResourceStatus;
  } catch (error) {
    if (error instanceof NotUpError) return null;
    throw error;
  }
}

/** create-md and up: a weak secret, or a config file others can read, is worth a warning (never the secret itself). */
function warnAboutSecret(ctx: Context): void {
  for (const line of secretWarnings(ctx.config)) process.stderr.write(`warning: ${line}\n`);
}

/** verify --start/--stop: bytes, or with a K, M, G or T suffix (powers of 1024). */
function parseOffset(value: string | undefined, option: string): number | undefined {
  if (value === undefined) return undefined;
  const match = /^(\d+)([KMGT]?)(i?B)?$/i.exec(value.trim());
  if (match === null) throw new UsageError(`verify ${option} "${value}": expected a byte offset such as 1073741824 or 1G; nothing started`);
  const scale = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }[match[2].toUpperCase() as '' | 'K' | 'M' | 'G' | 'T'];
  const bytes = Number(match[1]) * scale;
  if (!Number.isSafeInteger(bytes)) throw new UsageError(`verify ${option} "${value}" is too large; nothing started`);
  return bytes;
}

async function createMd(ctx: Context): Promise<void> {
  requireRoot('create-md');
  if ((await daemonAnswers(ctx.local)) !== null) {
    throw new AlreadyUpError(`resource ${ctx.config.resource} is up on node ${ctx.local.name}; run nraid down first: create-md never writes under a running daemon`);
  }
  warnAboutSecret(ctx);
  const [{ BackingDisk }, { createMetadata }] = await Promise.all([import('./disk'), import('./metadata')]);
  const disk = BackingDisk.open(ctx.local.disk, { configKey: `nodes.${ctx.local.name}.disk in ${ctx.config.path}` });
  try {
    const sb = createMetadata(disk, { resource: ctx.config.resource, node: ctx.local.name, force: ctx.args.force, assumeClean: ctx.args.assumeClean === true });
    out(`created nraid metadata on ${disk.path} for ${ctx.config.resource} (node ${ctx.local.name}): ${sb.dataSizeBytes} bytes of data`);
    if (ctx.args.assumeClean === true) {
      out('--assume-clean: UpToDate without an initial sync; run it on the peer too, and nraid verify once connected to find any real difference');
    }
  } finally {
    disk.close();
  }
}

async function up(ctx: Context): Promise<void> {
  let woken: HolderClient | undefined;
  if (ctx.args.foreground && isStandby()) {
    // A standby (src/holder.ts): everything is loaded now (the role commands load the daemon's
    // modules lazily), so that a woken standby serves at once; the config is read again when woken.
    await Promise.all([import('./daemon'), import('./systemd'), import('./native')]);
    woken = await waitForGo();
    ctx = context(ctx.args);
  }
  requireRoot('up');
  await requireKernelSupport();
  if (!fs.existsSync(ctx.local.disk)) {
    throw new DiskError(`backing device ${ctx.local.disk} does not exist (it may have vanished); check nodes.${ctx.local.name}.disk in ${ctx.config.path}`);
  }
  const running = await daemonAnswers(ctx.local);
  if (running !== null) {
    throw new AlreadyUpError(`resource ${ctx.config.resource} is already up on node ${ctx.local.name} (daemon pid ${running.pid}); nothing to do, or run nraid down first`);
  }
  warnAboutSecret(ctx);
  if (ctx.args.foreground) {
    // With a holder configured, the foreground process (systemd's main process) is the holder; its daemon runs as its child.
    if (ctx.config.daemonRestartBoundMs > 0 && process.env[HOLDER_ENV] !== '1') return (await import('./holder')).main([ctx.config.path, ctx.local.name]);
    return runForeground(ctx, woken);
  }
  ensurePrivateRunDir(ctx.local.runDir);
  const logPath = path.join(ctx.local.runDir, 'daemon.log');
  const logFd = fs.openSync(logPath, 'a');
  // With daemon-restart-bound-ms, the holder (src/holder.ts) starts the daemon and outlives it.
  const held = ctx.config.daemonRestartBoundMs > 0;
  const child = spawn(
    process.execPath,
    held
      ? [...daemonNodeFlags, path.join(__dirname, 'holder.js'), ctx.config.path, ctx.local.name]
      : [...daemonNodeFlags, path.join(__dirname, '..', '..', 'bin', 'nraid'), 'up', '--foreground', '-c', ctx.config.path, '-n', ctx.local.name],
    { detached: true, stdio: ['ignore', logFd, logFd, 'ipc'] },
  );
  let daemonPid = child.pid;
  fs.closeSync(logFd);
  let stale: StaleCleanup = { cleaned: [], left: [] };
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new TimeoutError(`the daemon did not report ready within ${upReadyTimeoutMs} ms; see ${logPath}`)),
      upReadyTimeoutMs,
    );
    child.once('message', (message: { ready?: boolean; stale?: StaleCleanup; pid?: number; error?: { code: string; message: string } }) => {
      clearTimeout(timer);
      if (message.stale !== undefined) stale = message.stale;
      if (message.pid !== undefined) daemonPid = message.pid;
      if (message.ready) resolve();
      else if (message.error !== undefined) reject(new RemoteError(message.error));
      else reject(new DaemonStartError(`the daemon reported neither ready nor an error; see ${logPath}`));
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new DaemonStartError(`the daemon exited with code ${code} before it was ready; see ${logPath}`));
    });
  });
  child.removeAllListeners();
  child.disconnect();
  child.unref();
  const holderNote = held ? `, holder pid ${child.pid}` : '';
  out(`${ctx.config.resource} is up on node ${ctx.local.name} (daemon pid ${daemonPid}${holderNote}, log ${logPath})`);
  // What a killed daemon left: on stderr, so that stdout stays the one line scripts read.
  for (const line of stale.cleaned) process.stderr.write(`note: ${line}\n`);
  for (const line of stale.left) process.stderr.write(`warning: ${line}; until then nraid primary refuses (NRAID_ERR_STALE_DEVICE), and nraid down cleans the rest afterwards\n`);
}

async function runForeground(ctx: Context, held?: HolderClient): Promise<void> {
  const { Daemon } = await import('./daemon');
  const log = jsonLogger({ resource: ctx.config.resource, node: ctx.local.name });
  const daemon = new Daemon({ config: ctx.config, nodeName: ctx.local.name, log, lockMemory: process.env.NRAID_NO_MLOCK !== '1', held });
  try {
    await daemon.start();
  } catch (error) {
    if (process.send) process.send({ error: errorReply(error) });
    throw error;
  }
  const onSignal = (signal: string) => {
    log.info(`received ${signal}, going down`);
    daemon.resumeIoForShutdown();
    daemon.down().catch((error: Error) => log.error('down on signal failed', { error: error.message }));
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  if (process.send && daemon.held !== null) {
    // The holder keeps the channel: it hears of mounts, and asks for a handover (nraid restart).
    process.send({ type: 'ready', ready: true, stale: daemon.staleAtStart, pid: process.pid, pauseMs: daemon.held.pauseMs });
    process.on('message', (message: ToDaemon) => {
      if (message?.type !== 'handover') return;
      log.info('the holder asks for a handover (nraid restart)');
      daemon
        .handOver()
        .then(() => process.exit(EXIT_HANDED_OVER))
        .catch((error: Error) => {
          log.error('handover failed', { error: error.message });
          process.exit(1);
        });
    });
  } else if (process.send) {
    process.send({ ready: true, stale: daemon.staleAtStart });
    process.disconnect();
  }
  // Run by systemd without a holder (contrib/systemd, Type=notify): the device serves now.
  if (daemon.held === null) {
    try {
      (await import('./systemd')).notify('READY=1');
    } catch (error) {
      log.warn('cannot report ready to systemd (sd_notify)', { error: (error as Error).message });
    }
  }
  await daemon.whenStopped();
  // The holder's channel would keep this process alive; the holder ends when we exit (code 0).
  if (daemon.held !== null && process.connected) process.disconnect();
  process.off('SIGTERM', onSignal);
  process.off('SIGINT', onSignal);
}

/**
 * `nraid restart`: the holder replaces the running daemon with the installed
 * version while the device stays mounted and in use. Prints the new daemon's
 * pid and the pause once it answers.
 */
/** The holder's reason for refusing a restart asked at `askedAtMs` or later, or null. */
function restartRefusal(runDir: string, askedAtMs: number): string | null {
  try {
    const note = JSON.parse(fs.readFileSync(path.join(runDir, RESTART_REFUSED_FILE), 'utf8')) as { atMs: number; reason: string };
    return note.atMs >= askedAtMs ? note.reason : null;
  } catch {
    return null;
  }
}

async function restart(ctx: Context): Promise<void> {
  requireRoot('restart');
  const status = await daemonAnswers(ctx.local);
  if (status === null) {
    throw new NotUpError(`resource ${ctx.config.resource} is not up on node ${ctx.local.name}; start it with nraid up -c ${ctx.config.path} -n ${ctx.local.name}`);
  }
  const holderPid = (await import('./holder')).runningHolder(ctx.local.runDir);
  if (holderPid === null) {
    throw new StateError(
      `resource ${ctx.config.resource} runs without a holder on node ${ctx.local.name} (daemon-restart-bound-ms is 0 or was when it came up); ` +
        'a restart would take the device away: set daemon-restart-bound-ms in the config, then nraid down and nraid up once',
    );
  }
  const askedAtMs = Date.now();
  process.kill(holderPid, 'SIGHUP');
  const deadline = Date.now() + upReadyTimeoutMs;
  while (Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, processExitPollMs));
    const refused = restartRefusal(ctx.local.runDir, askedAtMs);
    if (refused !== null) {
      throw new StateError(
        `cannot restart ${ctx.config.resource} on node ${ctx.local.name}: ${refused}; the running daemon (pid ${status.pid}) keeps serving and nothing changed; ` +
          `fix the installation (see ${path.join(ctx.local.runDir, 'daemon.log')}) and run nraid restart again`,
      );
    }
    const next = await daemonAnswers(ctx.local).catch(() => null);
    if (next !== null && next.pid !== status.pid) {
      const pause = next.daemonRestarts?.lastPauseMs;
      out(`${ctx.config.resource} restarted on node ${ctx.local.name}: daemon pid ${status.pid} -> ${next.pid}${pause == null ? '' : ` (device paused ${pause} ms)`}`);
      return;
    }
  }
  throw new TimeoutError(`no new daemon answered within ${upReadyTimeoutMs} ms after the restart; see ${path.join(ctx.local.runDir, 'daemon.log')}`);
}

async function down(ctx: Context): Promise<void> {
  requireRoot('down');
  const status = await daemonAnswers(ctx.local);
  if (status === null) return downAfterDeath(ctx);
  await callDaemon(ctx, 'down');
  await waitForExit(status.pid);
  // A daemon killed before this one may have left a device that this one could not clean at its start.
  const { cleanupStale } = await import('./device');
  const stale = cleanupStale(ctx.local.runDir, ctx.local.device);
  for (const line of stale.cleaned) out(line);
  out(`${ctx.config.resource} is down on node ${ctx.local.name}`);
  if (stale.left.length > 0) {
    throw new StaleDeviceError(`${ctx.config.resource} is down on node ${ctx.local.name}, but not everything is clean: ${stale.left.join('; ')}; then run nraid down again to remove the rest`);
  }
}

/**
 * No daemon answers: one may have been killed (kill -9, OOM, a crash). Cleans
 * what it left (loop device, FUSE mount, device link, device record, admin
 * socket), says what, and keeps its log. Nothing left at all: not up, as before.
 */
async function downAfterDeath(ctx: Context): Promise<void> {
  const { cleanupStale } = await import('./device');
  const stale = cleanupStale(ctx.local.runDir, ctx.local.device);
  const socket = adminSocketPath(ctx.local);
  if (fs.existsSync(socket)) {
    fs.rmSync(socket, { force: true });
    stale.cleaned.push(`removed stale admin socket ${socket}`);
  }
  if (stale.cleaned.length === 0 && stale.left.length === 0) {
    throw new NotUpError(`resource ${ctx.config.resource} is not up on node ${ctx.local.name}, and no daemon left anything behind; nothing to do`);
  }
  for (const line of stale.cleaned) out(line);
  if (stale.left.length > 0) {
    throw new StaleDeviceError(
      `no daemon runs ${ctx.config.resource} on node ${ctx.local.name}, and not everything a killed one left can be cleaned: ${stale.left.join('; ')}; then run nraid down again to remove the rest`,
    );
  }
  out(`${ctx.config.resource} is down on node ${ctx.local.name} (its daemon had died; cleaned what it left, kept its log ${path.join(ctx.local.runDir, 'daemon.log')})`);
}

/**
 * A switchover's answer can reach this node just as the new Primary turns the
 * session around (the data link runs from the Primary), so the status in the
 * answer may show the link down for a moment. The operator wants to see the
 * pair replicating again: wait for that, bounded, and print what is there then.
 */
async function afterTurnaround(ctx: Context, answered: ResourceStatus): Promise<ResourceStatus> {
  const replicating = (s: ResourceStatus): boolean => s.connection === 'Connected' && s.replication !== 'Off';
  if (replicating(answered)) return answered;
  const deadline = Date.now() + switchoverSettleWaitMs;
  let latest = answered;
  while (Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, switchoverSettlePollMs));
    const s = await daemonAnswers(ctx.local).catch(() => null);
    if (s === null) break;
    latest = s;
    if (replicating(s)) break;
  }
  return latest;
}

/**
 * The peer's answer to a switchover and the turnaround of its session race:
 * when the session ends first, the daemon reports the outcome unknown and
 * learns it as soon as the nodes reconnect (usually within milliseconds).
 * Wait for that, bounded: the switchover succeeded if the peer is Primary
 * then; otherwise, or if nothing is learned in time, the original error stands.
 */
async function outcomeOnceKnown(ctx: Context, error: unknown): Promise<ResourceStatus> {
  if (toNraidError(error).code !== 'NRAID_ERR_SWITCHOVER_UNKNOWN') throw error;
  const deadline = Date.now() + switchoverSettleWaitMs;
  while (Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, switchoverSettlePollMs));
    const s = await daemonAnswers(ctx.local).catch(() => null);
    if (s === null) break;
    if (s.switchoverUnknown) continue;
    if (s.role === 'Secondary' && s.connection === 'Connected' && s.peerRole === 'Primary') return s;
    break;
  }
  throw error;
}

async function waitForExit(pid: number, timeoutMs = downExitTimeoutMs): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, processExitPollMs));
  }
  throw new TimeoutError(`daemon pid ${pid} did not exit within ${timeoutMs} ms after down; see its log, and stop it with kill ${pid} if it hangs`);
}

const PROGRESS_BAR_CHARS = 30;

/** `[#######.......] 42.0% 1.2GiB left 95.3MiB/s eta 13s` */
export function progressBar(status: ResourceStatus): string | null {
  if (status.resync === null) return null;
  const filled = Math.round((status.resync.percent / 100) * PROGRESS_BAR_CHARS);
  const eta = status.resync.etaSeconds === null ? '?' : `${Math.ceil(status.resync.etaSeconds)}s`;
  return (
    `[${'#'.repeat(filled)}${'.'.repeat(PROGRESS_BAR_CHARS - filled)}] ${status.resync.percent.toFixed(1)}% ` +
    `${formatBytes(status.resync.bytesLeft)} left ${formatBytes(status.resync.rateBytesPerSec)}/s eta ${eta}`
  );
}

async function status(ctx: Context): Promise<void> {
  if (!ctx.args.watch) {
    const result = (await callDaemon(ctx, 'status')) as ResourceStatus;
    out(ctx.args.json ? JSON.stringify(result, null, 2) : statusLine(result));
    return;
  }
  // --watch: a line a second (JSON lines with --json), with a progress bar while a resync runs.
  for (;;) {
    const result = (await callDaemon(ctx, 'status')) as ResourceStatus;
    if (ctx.args.json) {
      out(JSON.stringify(result));
    } else {
      out(statusLine(result));
      const bar = progressBar(result);
      if (bar !== null) out(`  ${bar}`);
    }
    await new Promise((resolve) => setTimeout(resolve, statusWatchIntervalMs));
  }
}

async function role(ctx: Context, command: 'primary' | 'secondary'): Promise<void> {
  requireRoot(command);
  const result = (await callDaemon(ctx, command, { force: ctx.args.force })) as ResourceStatus;
  out(statusLine(result));
}

async function events(ctx: Context): Promise<void> {
  try {
    await adminCall(adminSocketPath(ctx.local), 'events', {}, (event) => out(JSON.stringify(event)), 0);
  } catch (error) {
    if (error instanceof NotUpError) {
      throw new NotUpError(`resource ${ctx.config.resource} is not up on node ${ctx.local.name}; start it with nraid up -c ${ctx.config.path} -n ${ctx.local.name}`);
    }
    throw error;
  }
}

export async function main(argv: string[]): Promise<number> {
  let json = argv.includes('--json');
  try {
    const args = parseArgs(argv);
    json = args.json;
    if (args.command === 'help' || args.help) {
      out(usage(args.command === 'help' ? args.resource : args.command));
      return 0;
    }
    if (args.command === 'demo') {
      const { runDemo } = await import('./demo');
      return await runDemo();
    }
    // Before the config is read: it is root's file (it holds the secret), and the message should say why.
    if (args.command !== 'status' && args.command !== 'events') requireRoot(args.command);
    const ctx = context(args);
    switch (args.command) {
      case 'create-md':
        await createMd(ctx);
        break;
      case 'up':
        await up(ctx);
        break;
      case 'restart':
        await restart(ctx);
        break;
      case 'down':
        await down(ctx);
        break;
      case 'primary':
      case 'secondary':
        await role(ctx, args.command);
        break;
      case 'status':
        await status(ctx);
        break;
      case 'events':
        await events(ctx);
        break;
      case 'switchover': {
        requireRoot(args.command);
        const result = (await callDaemon(ctx, args.command, {}).catch((error: unknown) => outcomeOnceKnown(ctx, error))) as ResourceStatus;
        out(statusLine(await afterTurnaround(ctx, result)));
        break;
      }
      case 'connect':
      case 'disconnect':
      case 'adjust':
      case 'resume-io':
      case 'pause-sync':
      case 'resume-sync':
      case 'attach':
      case 'detach':
      case 'invalidate': {
        requireRoot(args.command);
        const result = (await callDaemon(ctx, args.command, { discardMyData: args.discardMyData })) as ResourceStatus;
        out(statusLine(result));
        break;
      }
      case 'verify': {
        const result = (await callDaemon(ctx, 'verify', { start: parseOffset(args.start, '--start'), stop: parseOffset(args.stop, '--stop') })) as ResourceStatus;
        out(statusLine(result));
        const v = result.verify;
        if (v) out(`verify: ${v.startBytes}..${v.stopBytes} started; nraid status shows its progress, nraid events the differences`);
        break;
      }
      case 'resync': {
        const result = (await callDaemon(ctx, 'resync', {})) as ResourceStatus;
        out(statusLine(result));
        break;
      }
      case 'dump-md':
      case 'restore-md': {
        const metadataContext = {
          config: ctx.config,
          local: ctx.local,
          json: args.json,
          force: args.force,
          file: args.file,
          runningPid: async () => (await daemonAnswers(ctx.local))?.pid ?? null,
          out,
        };
        const { dumpMd, restoreMd } = await import('./cli/metadata-commands');
        await (args.command === 'dump-md' ? dumpMd(metadataContext) : restoreMd(metadataContext));
        break;
      }
      default:
        throw new UsageError(`nraid ${args.command} is not available in this version; see nraid help`);
    }
    return 0;
  } catch (error) {
    const { code, message } = errorReply(error);
    if (json) process.stdout.write(JSON.stringify({ error: { code, message } }) + '\n');
    else process.stderr.write(`error: ${message} (${code})\n`);
    if (process.env.NRAID_DEBUG) process.stderr.write(`${debugStack(error)}\n`);
    return 1;
  }
}

/** NRAID_DEBUG=1: the stack of the error and of what caused it. */
function debugStack(error: unknown): string {
  const e = toNraidError(error);
  const cause = typeof e.cause === 'object' && e.cause !== null && 'stack' in e.cause ? `\ncaused by: ${String(e.cause.stack)}` : '';
  return `${e.stack}${cause}`;
}
