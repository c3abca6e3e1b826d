/**
 * The holder: one small process per resource (config daemon-restart-bound-ms
 * > 0), started by `nraid up`, that owns what must outlive the daemon. It is
 * the daemon's parent and keeps a duplicate of the daemon's /dev/fuse
 * descriptor (taken with pidfd_getfd when the daemon mounts the volume), so
 * that the FUSE connection, the mount and the loop device above it stay alive
 * when the daemon dies: the applications' requests wait in the kernel. It
 * starts the daemon again, handing the descriptor down by inheritance; the new
 * daemon takes the device back (src/daemon.ts takeDeviceBack). If no daemon
 * serves within the bound, it ends the connection, so that pending and new
 * requests fail with EIO, and releases the device. It also replaces a running
 * daemon on SIGHUP (`nraid restart`). It does nothing per request.
 *
 *   node dist/src/holder.js <config> <node>
 */
import { ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ResourceConfig, loadConfig, localAndPeer } from './config';
import { readRecord } from './device';
import { EXIT_HANDED_OVER, HOLDER_ENV, HOLDER_FD_ENV, HOLDER_RESTART_ENV, RestartNote, ToDaemon, ToHolder } from './holder-client';
import { daemonHandoverWaitMs, daemonRestartRetryMs, holderReleaseWaitMs, processExitPollMs } from './limits';
import { Logger, jsonLogger } from './log';
import { detachLoop, loopBackingFile } from './loop';
import { binding } from './native';

export const HOLDER_PID_FILE = 'holder.pid';
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
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      process.on(signal, () => {
        this.stopping = true;
        this.daemon?.kill('SIGTERM');
        if (this.daemon === null) this.finish(0);
      });
    }
    this.spawnDaemon(null);
  }

  private spawnDaemon(note: RestartNote | null): void {
    const logFd = fs.openSync(this.logPath, 'a');
    const env: NodeJS.ProcessEnv = { ...process.env, [HOLDER_ENV]: '1' };
    env[HOLDER_FD_ENV] = this.fuseFd === null ? '' : String(INHERITED_FD);
    env[HOLDER_RESTART_ENV] = note === null ? '' : JSON.stringify(note);
    // NRAID_TEST_DAEMON_ENTRY: another script to run as the daemon (tests make it unrunnable).
    const entry = process.env.NRAID_TEST_DAEMON_ENTRY || path.join(__dirname, '..', '..', 'bin', 'nraid');
    const child = spawn(
      process.execPath,
      [entry, 'up', '--foreground', '-c', this.config.path, '-n', this.nodeName],
      { stdio: ['ignore', logFd, logFd, 'ipc', this.fuseFd ?? 'ignore'], env },
    );
    fs.closeSync(logFd);
    this.daemon = child;
    child.on('message', (message: ToHolder & { ready?: boolean; error?: unknown }) => this.onMessage(child, message));
    child.on('exit', (code, signal) => this.onExit(child, code, signal));
  }

  private onMessage(child: ChildProcess, message: ToHolder & { ready?: boolean; error?: unknown }): void {
    if (child !== this.daemon) return;
    if (message.type === 'mounted') {
      const taken = binding.takeFd(child.pid!, message.fd);
      if (this.fuseFd !== null) fs.closeSync(this.fuseFd);
      this.fuseFd = taken;
      this.log.info('holding the FUSE connection of the mounted volume', { daemonPid: child.pid });
    } else if (message.type === 'released') {
      this.dropFuse();
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
      this.everServed = true;
    } else if (message.error !== undefined && !this.everServed && process.send) {
      process.send({ error: message.error });
    }
  }

  private onExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (child !== this.daemon) return;
    this.daemon = null;
    this.serving = false;
    const handedOver = code === EXIT_HANDED_OVER && this.handoverAtMs !== null;
    if (this.stopping || (code === 0 && !handedOver)) {
      this.log.info('the daemon went down; the holder ends', { daemonPid: child.pid });
      return this.finish(0);
    }
    if (!this.everServed) {
      // The first daemon never served: `nraid up` reports its failure; nothing to keep.
      return this.finish(code ?? 1);
    }
    const cause = handedOver ? 'restart' : signal !== null ? `killed by ${signal}` : `exited with code ${code}`;
    if (this.outage === null) {
      const sinceMs = handedOver ? this.handoverAtMs! : Date.now();
      const boundTimer = setTimeout(() => this.giveUp(), this.config.daemonRestartBoundMs - (Date.now() - sinceMs));
      this.outage = { cause, sinceMs, boundTimer };
      this.log.warn('the daemon is gone; starting it again', { daemonPid: child.pid, cause, boundMs: this.config.daemonRestartBoundMs, holdingFuse: this.fuseFd !== null });
      this.handoverAtMs = null;
      this.restarts += 1;
      this.spawnDaemon({ count: this.restarts, cause, diedAtMs: sinceMs });
      return;
    }
    // A replacement that died before it served: try again, until the bound.
    this.log.warn('the new daemon exited before it served', { daemonPid: child.pid, code, signal });
    const outage = this.outage;
    setTimeout(() => {
      if (this.outage !== outage || this.daemon !== null) return;
      this.restarts += 1;
      this.spawnDaemon({ count: this.restarts, cause: outage.cause, diedAtMs: outage.sinceMs });
    }, daemonRestartRetryMs);
  }

  /** `nraid restart`: the running daemon answers what it carries, hands over and exits; the next one starts at once. */
  private replace(): void {
    if (this.daemon === null || !this.serving || this.handoverAtMs !== null) {
      this.log.warn('restart asked while no daemon serves; nothing to replace');
      return;
    }
    this.handoverAtMs = Date.now();
    const child = this.daemon;
    child.send({ type: 'handover' } satisfies ToDaemon);
    setTimeout(() => {
      if (this.daemon === child) {
        this.log.error(`the daemon did not hand over within ${daemonHandoverWaitMs} ms; killing it`, { daemonPid: child.pid });
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
  }

  private finish(code: number): void {
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
