/**
 * The holder: one small process per resource (config daemon-restart-bound-ms
 * > 0), started by `nraid up`, that owns what must outlive the daemon. It is
 * the daemon's parent and keeps a duplicate of the daemon's /dev/fuse
 * descriptor (taken with pidfd_getfd when the daemon mounts the volume), so
 * that the FUSE connection, the mount and the loop device above it stay alive
 * when the daemon dies: the applications' requests wait in the kernel. The
 * next daemon is a standby started ahead (loaded, waiting for `go`, which
 * carries the descriptor's number: it takes it with pidfd_getfd), else one
 * started cold with the descriptor inherited; it takes the device back
 * (src/daemon.ts takeDeviceBack). If no daemon serves within the bound, it
 * ends the connection, so that pending and new requests fail with EIO, and
 * releases the device. On SIGHUP (`nraid restart`) it starts a fresh standby
 * and, once that has loaded, has the running daemon hand over. Under systemd
 * it keeps the descriptor in the fd store too (src/systemd.ts). It does
 * nothing per request.
 *
 *   node dist/src/holder.js <config> <node>
 */
import { ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ResourceConfig, loadConfig, localAndPeer } from './config';
import { readRecord } from './device';
import { EXIT_HANDED_OVER, HOLDER_ENV, HOLDER_FD_ENV, HOLDER_RESTART_ENV, HOLDER_STANDBY_ENV, RESTART_REFUSED_FILE, RestartNote, ToDaemon, ToHolder } from './holder-client';
import { daemonHandoverWaitMs, daemonNodeFlags, daemonRestartRetryMs, holderReleaseWaitMs, processExitPollMs } from './limits';
import { Logger, jsonLogger } from './log';
import { detachLoop, loopBackingFile } from './loop';
import { binding } from './native';
import { FUSE_FD_NAME, SYSTEMD_ENV_KEYS, notify, passedFds, removeStoredFd, storeFd } from './systemd';

export const HOLDER_PID_FILE = 'holder.pid';
/** Written when `nraid restart` is refused (the installed version did not load): { atMs, reason }; the CLI reports it. */
/** The descriptor number the held /dev/fuse has in each daemon (after stdin, stdout, stderr and the IPC channel). */
const INHERITED_FD = 4;

/** The holder's pid for a run dir, if one runs. */
export function runningHolder(runDir: string): number | null {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(path.join(runDir, HOLDER_PID_FILE), 'utf8').trim());
    process.kill(pid, 0);
  } catch {
    return null;
  }
  return Number.isInteger(pid) && pid > 0 ? pid : null;
}

/** The FUSE connection number of a mount (its anonymous device's minor), from mountinfo: a stat would wait on the dead server. */
function fuseConnectionOf(mountPath: string): string | null {
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const fields = line.split(' ');
    if (fields[4] === mountPath) return fields[2].split(':')[1] ?? null;
  }
  return null;
}

class Holder {
  private fuseFd: number | null = null;
  private daemon: ChildProcess | null = null;
  private serving = false;
  private everServed = false;
  private restarts = 0;
  /** Set while a daemon is being replaced: why, and since when the device has not been served. */
  private outage: { cause: string; sinceMs: number; boundTimer: NodeJS.Timeout } | null = null;
  private handoverAtMs: number | null = null;
  /** The next daemon, started ahead: loaded and waiting for `go` (ready once it said `standby`). */
  private standby: { child: ChildProcess; ready: boolean } | null = null;
  /** A `go` for the current daemon, woken before it said `standby`: sent when it does. */
  private pendingGo: ToDaemon | null = null;
  /** `nraid restart` asked: a fresh standby (the installed version) is loading; the handover follows once it is ready. */
  private replacing = false;
  private stopping = false;
  private readonly runDir: string;
  private readonly logPath: string;

  constructor(
    private readonly config: ResourceConfig,
    private readonly nodeName: string,
    private readonly log: Logger,
  ) {
    this.runDir = localAndPeer(config, nodeName).local.runDir;
    this.logPath = path.join(this.runDir, 'daemon.log');
  }

  start(): void {
    fs.writeFileSync(path.join(this.runDir, HOLDER_PID_FILE), `${process.pid}\n`);
    process.on('SIGHUP', () => this.replace());
    // Under systemd, a holder that died left the FUSE connection in the fd store: the first daemon takes the device back.
    const stored = passedFds().get(FUSE_FD_NAME);
    if (stored !== undefined) {
      this.fuseFd = stored;
      this.log.warn('systemd handed back the FUSE connection a previous holder kept in its fd store', { fd: stored });
    }
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      process.on(signal, () => {
        this.stopping = true;
        this.dropStandby();
        this.daemon?.kill('SIGTERM');
        if (this.daemon === null) this.finish(0);
      });
    }
    this.daemon = this.spawnDaemon(null);
  }

  /**
   * Starts a daemon process: cold (`note`: why, the descriptor inherited) or,
   * with `standby`, one that loads and waits for `go` (src/holder-client.ts).
   */
  private spawnDaemon(note: RestartNote | null, standby = false): ChildProcess {
    const logFd = fs.openSync(this.logPath, 'a');
    const env: NodeJS.ProcessEnv = { ...process.env, [HOLDER_ENV]: '1', [HOLDER_STANDBY_ENV]: standby ? '1' : '' };
    for (const key of SYSTEMD_ENV_KEYS) delete env[key]; // systemd talks to the holder, its main process
    const inherit = !standby && this.fuseFd !== null;
    env[HOLDER_FD_ENV] = inherit ? String(INHERITED_FD) : '';
    env[HOLDER_RESTART_ENV] = note === null ? '' : JSON.stringify({ ...note, spawnedAtMs: Date.now() });
    // NRAID_TEST_DAEMON_ENTRY: another script to run as the daemon (tests make it unrunnable).
    const entry = process.env.NRAID_TEST_DAEMON_ENTRY || path.join(__dirname, '..', '..', 'bin', 'nraid');
    const child = spawn(
      process.execPath,
      [...daemonNodeFlags, entry, 'up', '--foreground', '-c', this.config.path, '-n', this.nodeName],
      { stdio: ['ignore', logFd, logFd, 'ipc', inherit ? this.fuseFd! : 'ignore'], env },
    );
    fs.closeSync(logFd);
    child.on('message', (message: ToHolder & { ready?: boolean; error?: unknown }) => this.onMessage(child, message));
    child.on('exit', (code, signal) => this.onExit(child, code, signal));
    // An unhandled 'error' would end the holder, and with it the device.
    child.on('error', (error) => this.log.warn('a daemon process failed', { pid: child.pid, error: error.message }));
    return child;
  }

  /** A message to a daemon; one that is gone (its exit is handled on its own) is not an error of the holder. */
  private send(child: ChildProcess, message: ToDaemon): void {
    if (!child.connected) return;
    child.send(message, (error: Error | null) => {
      if (error) this.log.warn('cannot reach the daemon', { pid: child.pid, message: message.type, error: error.message });
    });
  }

  /** A standby while the daemon serves, so that its death costs no node start and no module load. */
  private ensureStandby(): void {
    if (this.standby !== null || this.stopping) return;
    this.standby = { child: this.spawnDaemon(null, true), ready: false };
  }

  private dropStandby(): void {
    if (this.standby === null) return;
    this.standby.child.kill('SIGTERM');
    this.standby = null;
  }

  /**
   * The next daemon serves in place of the one gone (`note`): the standby when
   * there is one (woken with the holder's descriptor), else a cold start.
   */
  private startNext(note: RestartNote): void {
    const standby = this.standby;
    this.standby = null;
    if (standby === null) {
      this.daemon = this.spawnDaemon(note);
      return;
    }
    this.daemon = standby.child;
    this.pendingGo = { type: 'go', fd: this.fuseFd, note };
    if (standby.ready) this.sendGo();
  }

  private sendGo(): void {
    const go = this.pendingGo;
    this.pendingGo = null;
    if (go === null || go.type !== 'go' || this.daemon === null) return;
    this.send(this.daemon, { ...go, fd: this.fuseFd, note: { ...go.note, spawnedAtMs: Date.now() } });
  }

  private onMessage(child: ChildProcess, message: ToHolder & { ready?: boolean; error?: unknown }): void {
    if (message.type === 'standby') {
      if (this.standby?.child === child) {
        this.standby.ready = true;
        if (this.replacing) this.askHandover();
      } else if (child === this.daemon) {
        this.sendGo();
      }
      return;
    }
    if (child !== this.daemon) return;
    if (message.type === 'mounted') {
      const taken = binding.takeFd(child.pid!, message.fd);
      if (this.fuseFd !== null) fs.closeSync(this.fuseFd);
      this.fuseFd = taken;
      this.log.info('holding the FUSE connection of the mounted volume', { daemonPid: child.pid });
      this.systemd(() => storeFd(taken, FUSE_FD_NAME), 'keep the FUSE connection in the fd store');
    } else if (message.type === 'released') {
      this.dropFuse();
    } else if (message.type === 'handed-over') {
      // The disk and the admin socket are closed: the next daemon need not wait for this process's exit.
      this.daemonGone(child, 'restart', this.handoverAtMs ?? Date.now());
    } else if (message.ready === true) {
      this.serving = true;
      if (this.outage !== null) {
        clearTimeout(this.outage.boundTimer);
        this.log.info('the daemon serves again', { daemonPid: child.pid, cause: this.outage.cause, pauseMs: Date.now() - this.outage.sinceMs, restarts: this.restarts });
        this.outage = null;
      }
      if (!this.everServed && process.send) {
        process.send({ ready: true, stale: (message as { stale?: unknown }).stale, pid: child.pid, holderPid: process.pid });
        process.disconnect();
      }
      if (!this.everServed) this.systemd(() => notify('READY=1'), 'report ready');
      this.everServed = true;
      this.ensureStandby();
    } else if (message.error !== undefined && !this.everServed && process.send) {
      process.send({ error: message.error });
    }
  }

  private onExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.standby?.child === child) {
      // Not serving yet, so nothing is lost; the next restart is a cold one, and serving brings a new standby.
      if (!this.stopping) this.log.warn('the standby daemon exited; the next restart starts one cold', { pid: child.pid, code, signal });
      this.standby = null;
      if (this.replacing) this.replaceFailed(`the installed version did not start (exited with ${signal ?? `code ${code}`}; see above in this log)`);
      return;
    }
    if (child !== this.daemon) return;
    const handedOver = code === EXIT_HANDED_OVER && this.handoverAtMs !== null;
    if (this.stopping || (code === 0 && !handedOver)) {
      this.daemon = null;
      this.log.info('the daemon went down; the holder ends', { daemonPid: child.pid });
      return this.finish(0);
    }
    if (!this.everServed) {
      // The first daemon never served: `nraid up` reports its failure; nothing to keep.
      this.daemon = null;
      return this.finish(code ?? 1);
    }
    this.daemonGone(child, handedOver ? 'restart' : signal !== null ? `killed by ${signal}` : `exited with code ${code}`, handedOver ? this.handoverAtMs! : Date.now());
  }

  /** The serving daemon is gone (died, or handed over at `sinceMs`): the next one starts at once. */
  private daemonGone(child: ChildProcess, cause: string, sinceMs: number): void {
    this.daemon = null;
    this.serving = false;
    this.pendingGo = null;
    if (this.outage === null) {
      const boundTimer = setTimeout(() => this.giveUp(), this.config.daemonRestartBoundMs - (Date.now() - sinceMs));
      this.outage = { cause, sinceMs, boundTimer };
      this.log.warn('the daemon is gone; starting it again', {
        daemonPid: child.pid,
        cause,
        boundMs: this.config.daemonRestartBoundMs,
        holdingFuse: this.fuseFd !== null,
        standby: this.standby === null ? null : this.standby.ready ? 'ready' : 'loading',
      });
      this.handoverAtMs = null;
      this.restarts += 1;
      this.startNext({ count: this.restarts, cause, diedAtMs: sinceMs });
      return;
    }
    // A replacement that died before it served: try again (cold), until the bound.
    this.log.warn('the new daemon exited before it served', { daemonPid: child.pid, exitCode: child.exitCode, signal: child.signalCode });
    const outage = this.outage;
    setTimeout(() => {
      if (this.outage !== outage || this.daemon !== null) return;
      this.restarts += 1;
      this.startNext({ count: this.restarts, cause: outage.cause, diedAtMs: outage.sinceMs });
    }, daemonRestartRetryMs);
  }

  /**
   * `nraid restart`: a fresh standby runs the installed version; once it is
   * loaded, the running daemon answers what it carries, hands over and exits,
   * and the standby serves at once. A standby that does not start leaves the
   * running daemon serving (a broken install does not take the device down).
   */
  private replace(): void {
    if (this.daemon === null || !this.serving || this.handoverAtMs !== null || this.replacing) {
      this.log.warn('restart asked while no daemon serves or a restart is under way; nothing to replace');
      return;
    }
    this.replacing = true;
    fs.rmSync(path.join(this.runDir, RESTART_REFUSED_FILE), { force: true });
    this.dropStandby();
    this.standby = { child: this.spawnDaemon(null, true), ready: false };
    const standby = this.standby.child;
    setTimeout(() => {
      if (this.replacing && this.standby?.child === standby && !this.standby.ready) {
        this.dropStandby();
        this.replaceFailed(`the installed version did not load within ${daemonHandoverWaitMs} ms`);
      }
    }, daemonHandoverWaitMs).unref();
  }

  private replaceFailed(why: string): void {
    this.replacing = false;
    this.log.error(`restart refused: ${why}; the running daemon keeps serving`, { daemonPid: this.daemon?.pid });
    try {
      fs.writeFileSync(path.join(this.runDir, RESTART_REFUSED_FILE), JSON.stringify({ atMs: Date.now(), reason: why }) + '\n');
    } catch (error) {
      this.log.warn('cannot note the refused restart for nraid restart', { error: (error as Error).message });
    }
  }

  private askHandover(): void {
    this.replacing = false;
    const child = this.daemon;
    if (child === null || !this.serving) return;
    this.handoverAtMs = Date.now();
    this.send(child, { type: 'handover' });
    setTimeout(() => {
      if (child.exitCode === null && child.signalCode === null) {
        this.log.error(`the daemon did not hand over and exit within ${daemonHandoverWaitMs} ms; killing it`, { daemonPid: child.pid });
        child.kill('SIGKILL');
      }
    }, daemonHandoverWaitMs).unref();
  }

  /**
   * No daemon served within the bound: end the connection (every waiting
   * request fails, the applications see EIO instead of hanging), then release
   * the device as far as nothing uses it. The peer's on-no-peer and fencing
   * policy then applies as after a crash of this node.
   */
  private giveUp(): void {
    this.log.error(`no daemon served within daemon-restart-bound-ms (${this.config.daemonRestartBoundMs} ms); failing pending I/O with EIO and releasing the device`, {
      cause: this.outage?.cause,
    });
    this.stopping = true;
    this.dropStandby();
    this.daemon?.kill('SIGKILL');
    const record = readRecord(this.runDir);
    const connection = record === null ? null : fuseConnectionOf(record.mountPath);
    if (connection !== null) {
      try {
        fs.writeFileSync(`/sys/fs/fuse/connections/${connection}/abort`, '1');
      } catch {
        // fusectl not mounted: closing the last descriptor below ends the connection too.
      }
    }
    this.dropFuse();
    if (record?.loopDevice != null) {
      // In use, LOOP_CLR_FD only sets autoclear; the openers' requests fail now, so most close at once.
      detachLoop(record.loopDevice);
      const deadline = Date.now() + holderReleaseWaitMs;
      while (loopBackingFile(record.loopDevice) === record.mountPath && Date.now() < deadline) {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, processExitPollMs);
      }
      if (loopBackingFile(record.loopDevice) !== record.mountPath) {
        try {
          binding.unmount(record.mountPath, true);
        } catch (error) {
          this.log.warn('cannot unmount the FUSE volume', { error: (error as Error).message });
        }
        try {
          if (fs.readlinkSync(record.devicePath) === record.loopDevice) fs.rmSync(record.devicePath);
        } catch {
          // gone already
        }
        fs.rmSync(path.join(this.runDir, 'device.json'), { force: true });
      } else {
        this.log.warn(`loop device ${record.loopDevice} is still in use; it goes at its last close, nraid down cleans up the rest`);
      }
    }
    this.finish(1);
  }

  private dropFuse(): void {
    if (this.fuseFd === null) return;
    fs.closeSync(this.fuseFd);
    this.fuseFd = null;
    this.systemd(() => removeStoredFd(FUSE_FD_NAME), 'drop the FUSE connection from the fd store');
  }

  /** A notification to systemd (src/systemd.ts); one that fails is logged, nothing else depends on it. */
  private systemd(send: () => boolean, what: string): void {
    try {
      send();
    } catch (error) {
      this.log.warn(`cannot ${what} (sd_notify)`, { error: (error as Error).message });
    }
  }

  private finish(code: number): void {
    this.dropStandby();
    this.dropFuse();
    if (this.outage !== null) clearTimeout(this.outage.boundTimer);
    fs.rmSync(path.join(this.runDir, HOLDER_PID_FILE), { force: true });
    process.exit(code);
  }
}

/** Runs the holder in this process until its daemon goes down (the process then exits). */
export function main(argv: string[]): Promise<void> {
  const [configPath, nodeName] = argv;
  const config = loadConfig(configPath);
  const log = jsonLogger({ resource: config.resource, node: nodeName, process: 'holder' });
  new Holder(config, nodeName, log).start();
  return new Promise(() => {});
}

if (require.main === module) void main(process.argv.slice(2));
