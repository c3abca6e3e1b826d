/**
 * Online verify and its repair (DESIGN.md §8), the owner that runs them: the
 * data plane compares digests of both sides range by range (native, OV_REQUEST
 * / OV_REPLY), marks differing blocks out of sync and reports them; this owner
 * checks the request, reports (log, event, hook), remembers where an
 * interrupted verify stopped (in the run dir, so a restarted daemon resumes
 * too), and starts the repair (`nraid resync`), which sends exactly the
 * marked blocks without a new session.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { StateError, UsageError } from '../errors';
import { runHook } from '../hooks';
import { Logger } from '../log';
import { VerifyProgress } from '../state';
import { DataPlane } from './data-plane';
import { MachineState } from './machine';

const blockBytes = 4096;

export interface VerifyOwners {
  plane: DataPlane;
  state: () => MachineState;
  dataSizeBytes: number;
  runDir: string;
  log: Logger;
  emit: (event: Record<string, unknown>) => void;
  outOfSyncHook: string | null;
  hookEnv: (event: string) => Record<string, string>;
}

interface Saved {
  startBytes: number;
  stopBytes: number;
  positionBytes: number;
}

export class Verifier {
  private clock: { startedAtMs: number; startBytes: number } | null = null;
  private last: { mismatchBytes: number; ranges: string[]; positionBytes: number; stopBytes: number } | null = null;
  private saveTimer: NodeJS.Timeout | null = null;

  constructor(private readonly o: VerifyOwners) {}

  private get savedPath(): string {
    return path.join(this.o.runDir, 'verify-position.json');
  }

  private saved(): Saved | null {
    try {
      const parsed = JSON.parse(fs.readFileSync(this.savedPath, 'utf8')) as Saved;
      return Number.isSafeInteger(parsed.positionBytes) && Number.isSafeInteger(parsed.stopBytes) ? parsed : null;
    } catch {
      return null;
    }
  }

  private save(value: Saved | null): void {
    try {
      if (value === null) fs.rmSync(this.savedPath, { force: true });
      else fs.writeFileSync(this.savedPath, JSON.stringify(value));
    } catch (error) {
      this.o.log.warn('cannot record the verify position', { error: (error as Error).message });
    }
  }

  /** Why this node cannot run a verify or a repair now, or null. */
  private refusal(what: string): string | null {
    const s = this.o.state();
    const r = s.config.resource;
    const on = `${what} ${r} on ${s.config.local}`;
    if (s.connection !== 'Connected' || s.session?.setup !== 'ready' || s.peer === null) {
      return `cannot ${on}: not connected to the peer (connection ${s.connection}); both disks are compared over the data link, so connect first (nraid connect)`;
    }
    if (s.session.direction !== 'source') {
      return `cannot ${on}: this node receives the data link; run it on ${s.config.peer}, which sends it`;
    }
    if (s.replication !== 'Established') {
      return `cannot ${on}: replication is ${s.replication}; wait until the resync ends (nraid status)`;
    }
    return null;
  }

  /**
   * `nraid verify [--start N] [--stop N]`: from `start` (default: where an
   * interrupted verify stopped, else 0) to `stop` (default: the end).
   */
  start(args: { start?: number; stop?: number }): VerifyProgress {
    const size = this.o.dataSizeBytes;
    for (const [name, value] of [['--start', args.start], ['--stop', args.stop]] as const) {
      if (value === undefined) continue;
      if (!Number.isSafeInteger(value) || value < 0 || value % blockBytes !== 0) {
        throw new UsageError(`verify ${name} ${String(value)}: expected a byte offset that is a multiple of 4096; nothing started`);
      }
      if (value > size) {
        throw new UsageError(`verify ${name} ${value} is past the end of the data (${size} bytes); expected 0..${size}; nothing started`);
      }
    }
    const saved = args.start === undefined ? this.saved() : null;
    const resume = saved !== null && saved.positionBytes < saved.stopBytes && saved.stopBytes <= size && (args.stop === undefined || args.stop === saved.stopBytes);
    const start = args.start ?? (resume ? saved.positionBytes : 0);
    const stop = args.stop ?? (resume ? saved.stopBytes : size);
    if (start >= stop) {
      throw new UsageError(`verify --start ${start} is not before --stop ${stop}; expected start < stop <= ${size}; nothing started`);
    }
    const refused = this.refusal('verify');
    if (refused !== null) throw new StateError(refused);
    if (this.o.plane.counters()?.verifyRunning === true) throw new StateError('a verify runs already; nraid status shows its progress');
    if (!this.o.plane.startVerify(start, stop)) {
      throw new StateError('cannot verify now: the data link is down or a resync runs; try again when nraid status says Established');
    }
    this.clock = { startedAtMs: Date.now(), startBytes: start };
    this.last = { mismatchBytes: 0, ranges: [], positionBytes: start, stopBytes: stop };
    this.save({ startBytes: start, stopBytes: stop, positionBytes: start });
    this.saveTimer ??= setInterval(() => this.savePosition(), 2000);
    this.o.log.info('verify started', { startBytes: start, stopBytes: stop, resumed: resume && args.start === undefined });
    this.o.emit({ type: 'verify-started', startBytes: start, stopBytes: stop });
    return this.progress()!;
  }

  private savePosition(): void {
    const c = this.o.plane.counters();
    if (c === null || this.last === null) return;
    this.save({ startBytes: c.verifyStartBytes, stopBytes: c.verifyStopBytes, positionBytes: c.verifyPositionBytes });
  }

  /** `nraid resync`: sends exactly the blocks marked out of sync, in this session. */
  repair(): { outOfSyncBytes: number } {
    const refused = this.refusal('resync');
    if (refused !== null) throw new StateError(refused);
    const c = this.o.plane.counters();
    if (c === null || c.outOfSyncBytes === 0) {
      throw new StateError('nothing to resync: no block is marked out of sync (run nraid verify to find differences)');
    }
    if (c.verifyRunning) throw new StateError('a verify runs; wait until it ends (nraid status), then resync');
    if (!this.o.plane.startResync({ repair: true })) throw new StateError('cannot resync now: the data link is down or a resync runs');
    this.o.log.info('repair resync started', { outOfSyncBytes: c.outOfSyncBytes });
    this.o.emit({ type: 'repair-started', outOfSyncBytes: c.outOfSyncBytes });
    return { outOfSyncBytes: c.outOfSyncBytes };
  }

  /** The data plane's verify-mismatch and verify-done events. */
  onNative(type: 'verify-mismatch' | 'verify-done', detail: string): void {
    const s = this.o.state();
    if (type === 'verify-mismatch') {
      const ranges = detail.split(' ').filter((r) => r.length > 0);
      for (const range of ranges) {
        const [offset, length] = range.split('+').map(Number);
        this.o.log.warn('verify: blocks differ, marked out of sync', { offsetBytes: offset, lengthBytes: length });
        if (this.last !== null && this.last.ranges.length < 1000) this.last.ranges.push(range);
        if (this.last !== null) this.last.mismatchBytes += length;
      }
      this.o.emit({ type: 'out-of-sync', resource: s.config.resource, node: s.config.local, ranges });
      return;
    }
    const position = Number(detail);
    if (this.saveTimer !== null) clearInterval(this.saveTimer);
    this.saveTimer = null;
    const last = this.last;
    const finished = last !== null && position >= last.stopBytes;
    if (last !== null) last.positionBytes = position;
    // Finished: nothing to resume. Stopped early: the next verify starts here.
    this.save(finished || last === null ? null : { startBytes: this.clock?.startBytes ?? 0, stopBytes: last.stopBytes, positionBytes: position });
    const mismatchBytes = last?.mismatchBytes ?? 0;
    this.o.log[mismatchBytes > 0 ? 'warn' : 'info'](finished ? 'verify finished' : 'verify stopped', { positionBytes: position, mismatchBytes });
    this.o.emit({ type: 'verify-done', resource: s.config.resource, node: s.config.local, finished, positionBytes: position, mismatchBytes });
    if (mismatchBytes > 0 && this.o.outOfSyncHook !== null) {
      const env = { ...this.o.hookEnv('out-of-sync'), NRAID_OUT_OF_SYNC_BYTES: String(mismatchBytes), NRAID_OUT_OF_SYNC_RANGES: (last?.ranges ?? []).join(' ') };
      runHook(this.o.outOfSyncHook, env, this.o.log).catch((error: Error) => this.o.log.warn('out-of-sync hook failed', { error: error.message }));
    }
  }

  /** For status: the running or last verify. */
  progress(): VerifyProgress | null {
    const c = this.o.plane.counters();
    if (c === null || this.last === null) return null;
    const running = c.verifyRunning;
    const position = running ? c.verifyPositionBytes : this.last.positionBytes;
    const start = this.clock?.startBytes ?? 0;
    const total = this.last.stopBytes - start;
    const done = Math.max(0, position - start);
    const elapsedS = Math.max(0.001, (Date.now() - (this.clock?.startedAtMs ?? Date.now())) / 1000);
    const rate = done / elapsedS;
    const left = Math.max(0, this.last.stopBytes - position);
    return {
      running,
      startBytes: start,
      stopBytes: this.last.stopBytes,
      positionBytes: position,
      percent: total <= 0 ? 100 : Math.min(100, (100 * done) / total),
      bytesLeft: left,
      rateBytesPerSec: Math.round(rate),
      etaSeconds: running && rate > 0 ? left / rate : null,
      mismatchBytes: running ? c.verifyMismatchBytes : this.last.mismatchBytes,
      mismatchRanges: [...this.last.ranges],
    };
  }

  close(): void {
    if (this.saveTimer !== null) clearInterval(this.saveTimer);
    this.saveTimer = null;
  }
}
