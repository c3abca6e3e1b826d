/**
 * The operator's hold on the resync: the controller's settings from the
 * config (at start and on `nraid adjust`), pause-sync / resume-sync on either
 * node (the peer is told with a ResyncPause notice), and the resync byte
 * counters that survive a daemon restart (a small file in the run dir).
 * The data plane runs the controller itself (native/replicator.cc).
 */
import fs from 'node:fs';
import path from 'node:path';
import { ResourceConfig } from '../config';
import { StateError } from '../errors';
import { NativeCounters } from '../native';
import { DataPlane } from './data-plane';

export const RESYNC_PAUSE_FEATURE = 'resync-pause';
const KiB = 1024;
const MiB = 1024 * KiB;

export type ResyncConfig = Pick<ResourceConfig, 'resyncPlanAheadMs' | 'resyncFillTargetKib' | 'resyncMaxRateMib' | 'resyncMinRateMib'>;

/** The native settings of a config's resync-* keys. */
export function resyncSettings(config: ResyncConfig): { planAheadMs: number; fillTargetBytes: number; maxRateBytes: number; minRateBytes: number } {
  return {
    planAheadMs: config.resyncPlanAheadMs,
    fillTargetBytes: config.resyncFillTargetKib * KiB,
    maxRateBytes: config.resyncMaxRateMib * MiB,
    minRateBytes: config.resyncMinRateMib * MiB,
  };
}

/** Resync bytes of earlier runs of the daemon on this node (the native counters start at 0 each run). */
interface CountersFile {
  sentBytes: number;
  receivedBytes: number;
}

export interface ResyncTotals {
  /** Resync data this node sent that the peer wrote, over every run. */
  sentBytes: number;
  /** Resync data this node received, over every run. */
  receivedBytes: number;
}

export class ResyncControl {
  /** This node's operator paused the resync (until resume-sync, across sessions). */
  pausedHere = false;
  /** The peer's operator paused it (until the peer resumes, or the session ends). */
  pausedByPeer = false;
  private base: CountersFile = { sentBytes: 0, receivedBytes: 0 };
  private savedTotals = '';
  private readonly file: string;

  constructor(
    private readonly plane: DataPlane,
    private readonly resource: string,
    runDir: string,
    private readonly log: (level: 'info' | 'warn', message: string, fields?: Record<string, unknown>) => void,
  ) {
    this.file = path.join(runDir, 'resync-counters.json');
    this.base = this.load();
  }

  /** The config's settings; a bad value throws before anything changed (the binding checks every one first). */
  configure(config: ResyncConfig): void {
    this.plane.setResync(resyncSettings(config));
  }

  get paused(): boolean {
    return this.pausedHere || this.pausedByPeer;
  }

  /**
   * pause-sync (true) or resume-sync (false) on this node. `replication`: the
   * node's now; `tellPeer` sends the notice and says whether the session
   * carries it. Throws StateError, and changes nothing, when there is nothing
   * to pause or resume.
   */
  setPausedHere(paused: boolean, replication: string, canTellPeer: boolean, tellPeer: (paused: boolean) => void): void {
    const r = this.resource;
    const syncing = replication === 'SyncSource' || replication === 'SyncTarget';
    if (paused) {
      if (!syncing) {
        throw new StateError(`cannot pause-sync ${r}: no resync is running on this node (replication ${replication}); nothing changed`);
      }
      if (this.pausedHere) throw new StateError(`cannot pause-sync ${r}: the resync is paused here already; nothing changed; resume it with nraid resume-sync`);
      if (replication === 'SyncTarget' && !canTellPeer) {
        throw new StateError(`cannot pause-sync ${r} on the sync target: the peer's nraid does not know the resync-pause notice; nothing changed; run nraid pause-sync on the sync source`);
      }
    } else if (!this.pausedHere) {
      const peer = this.pausedByPeer ? '; the peer paused it: run nraid resume-sync there' : '';
      throw new StateError(`cannot resume-sync ${r}: no resync was paused on this node (replication ${replication})${peer}; nothing changed`);
    }
    this.pausedHere = paused;
    this.apply();
    if (canTellPeer) tellPeer(paused);
    this.log('info', paused ? 'resync paused by the operator' : 'resync resumed by the operator', { replication });
  }

  /** The peer paused or resumed (its notice), or the session ended (false). */
  setPausedByPeer(paused: boolean): void {
    if (this.pausedByPeer === paused) return;
    this.pausedByPeer = paused;
    this.apply();
    this.log('info', paused ? 'resync paused by the peer' : 'resync resumed by the peer');
  }

  private apply(): void {
    if (this.plane.open) this.plane.setResync({ paused: this.paused });
  }

  totals(counters: NativeCounters | null): ResyncTotals {
    return {
      sentBytes: this.base.sentBytes + (counters?.resyncBytesDone ?? 0),
      receivedBytes: this.base.receivedBytes + (counters?.resyncBytesReceived ?? 0),
    };
  }

  /** Writes the totals when they moved (the daemon's persist timer and its shutdown). Best effort: a failure is logged. */
  save(counters: NativeCounters | null): void {
    const totals = this.totals(counters);
    const text = JSON.stringify(totals);
    if (text === this.savedTotals) return;
    try {
      const temp = `${this.file}.tmp`;
      fs.writeFileSync(temp, text, { mode: 0o600 });
      fs.renameSync(temp, this.file);
      this.savedTotals = text;
    } catch (error) {
      this.log('warn', 'could not save the resync counters', { file: this.file, error: (error as Error).message });
    }
  }

  private load(): CountersFile {
    let text: string;
    try {
      text = fs.readFileSync(this.file, 'utf8');
    } catch {
      return { sentBytes: 0, receivedBytes: 0 };
    }
    try {
      const parsed = JSON.parse(text) as Partial<CountersFile>;
      const sentBytes = Number(parsed.sentBytes);
      const receivedBytes = Number(parsed.receivedBytes);
      if (Number.isSafeInteger(sentBytes) && sentBytes >= 0 && Number.isSafeInteger(receivedBytes) && receivedBytes >= 0) {
        this.savedTotals = JSON.stringify({ sentBytes, receivedBytes });
        return { sentBytes, receivedBytes };
      }
    } catch {
      // fall through
    }
    this.log('warn', 'the resync counters file is damaged: counting from 0', { file: this.file });
    return { sentBytes: 0, receivedBytes: 0 };
  }
}
