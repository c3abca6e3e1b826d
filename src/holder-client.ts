/**
 * The daemon's side of the holder (src/holder.ts): the holder's /dev/fuse
 * descriptor, the note about the restart that started this daemon, and the
 * messages on the IPC channel to the holder (Node's, the holder is the
 * parent). A daemon is started cold (the descriptor inherited, the note in
 * its environment) or comes from a standby: a daemon process started ahead,
 * loaded and waiting, that the holder wakes with `go` (the descriptor taken
 * from the holder, the note in the message). Nothing here runs per request.
 */
import { performance } from 'node:perf_hooks';
import { HeldFuse } from './device';
import { DaemonRestarts } from './state';

/** Set by the holder in every daemon it starts. */
export const HOLDER_ENV = 'NRAID_HOLDER';
/** The inherited descriptor number of the holder's /dev/fuse, set only while its connection is mounted. */
export const HOLDER_FD_ENV = 'NRAID_HOLDER_FD';
/** JSON of RestartNote: this daemon replaces one that died or handed over. */
export const HOLDER_RESTART_ENV = 'NRAID_HOLDER_RESTART';
/** Set in a standby: it loads, says `standby`, and waits for the holder's `go` before it touches anything. */
export const HOLDER_STANDBY_ENV = 'NRAID_HOLDER_STANDBY';
/** Exit code of a daemon that handed the device over (`nraid restart`): the holder starts the next one. */
export const EXIT_HANDED_OVER = 75;

export interface RestartNote {
  count: number;
  cause: string;
  diedAtMs: number;
  /** When the holder spawned this daemon (after diedAtMs: the holder's own reaction). */
  spawnedAtMs?: number;
}

/** Daemon to holder. */
export type ToHolder =
  | { type: 'mounted'; fd: number }
  | { type: 'released' }
  | { type: 'ready'; pid: number; pauseMs: number | null; stale?: unknown }
  | { type: 'error'; error: unknown }
  /** A standby is loaded and waits for `go`. */
  | { type: 'standby' }
  /** `nraid restart`: the disk and the admin socket are closed, the device is the holder's; the process exits next. */
  | { type: 'handed-over' };

/** Holder to daemon. */
export type ToDaemon =
  | { type: 'handover' }
  /** To a standby: serve now. `fd`: the holder's descriptor number of the held /dev/fuse (null when none is mounted). */
  | { type: 'go'; fd: number | null; note: RestartNote };

export class HolderClient implements HeldFuse {
  fd: number | null;
  readonly restart: RestartNote | null;
  /** Woken from standby: its node start and module load were before the death, not in the pause. */
  readonly fromStandby: boolean;
  /** Set once this daemon serves, for status. */
  pauseMs: number | null = null;
  /** Wall-clock marks of this daemon's start, in order (see phases()). */
  private readonly marks: Array<[string, number]> = [];

  constructor(fd: number | null, restart: RestartNote | null, fromStandby: boolean) {
    this.fd = fd;
    this.restart = restart;
    this.fromStandby = fromStandby;
    if (fromStandby) this.marks.push(['wake', Date.now()]);
    // Node's own start (exec to bootstrap done), then our modules and the config up to here.
    else this.marks.push(['nodeBoot', performance.timeOrigin + performance.nodeTiming.bootstrapComplete], ['modules', Date.now()]);
  }

  /** A daemon started cold by the holder: the descriptor inherited, the note in the environment. */
  static fromEnv(env: NodeJS.ProcessEnv): HolderClient {
    const fd = env[HOLDER_FD_ENV];
    const note = env[HOLDER_RESTART_ENV];
    return new HolderClient(fd === undefined || fd === '' ? null : Number(fd), note === undefined || note === '' ? null : (JSON.parse(note) as RestartNote), false);
  }

  /** Notes that a phase of the start ended now. */
  mark(phase: string): void {
    this.marks.push([phase, Date.now()]);
  }

  /**
   * Where the pause went, in ms per phase, from the death (or handover) of the
   * previous daemon: the holder's reaction (spawn), node's start, module load,
   * then each phase marked by the daemon. Null for the first daemon.
   */
  phases(): Record<string, number> | null {
    if (this.restart === null) return null;
    const phases: Record<string, number> = {};
    let previous = this.restart.diedAtMs;
    if (this.restart.spawnedAtMs !== undefined) {
      phases.spawn = this.restart.spawnedAtMs - previous;
      previous = this.restart.spawnedAtMs;
    }
    for (const [name, atMs] of this.marks) {
      phases[name] = Math.round(atMs - previous);
      previous = atMs;
    }
    return phases;
  }

  mounted(fd: number): void {
    send({ type: 'mounted', fd });
  }

  released(): void {
    this.fd = null;
    send({ type: 'released' });
  }

  /** Called when this daemon serves (after start, and after it took the device back). */
  serving(): void {
    if (this.restart !== null) this.pauseMs = Date.now() - this.restart.diedAtMs;
  }

  /** `nraid restart`: this daemon has closed what the next one opens; the holder wakes it now. */
  handedOver(): void {
    send({ type: 'handed-over' });
  }

  restarts(): DaemonRestarts {
    return { count: this.restart?.count ?? 0, lastCause: this.restart?.cause ?? null, lastPauseMs: this.pauseMs };
  }
}

function send(message: ToHolder): void {
  if (process.send && process.connected) process.send(message);
}

/** The holder's client when a holder started this process cold, else null. */
export function holderClient(env: NodeJS.ProcessEnv = process.env): HolderClient | null {
  return env[HOLDER_ENV] === '1' && process.send !== undefined ? HolderClient.fromEnv(env) : null;
}

/** In the run directory: why the holder refused the last `nraid restart` (the installed version did not load). */
export const RESTART_REFUSED_FILE = 'restart-refused.json';

/** True in a standby the holder started ahead (src/holder.ts). */
export function isStandby(env: NodeJS.ProcessEnv = process.env): boolean {
  return env[HOLDER_ENV] === '1' && env[HOLDER_STANDBY_ENV] === '1' && process.send !== undefined;
}

/**
 * In a standby: says it is loaded, then waits for the holder's `go` and takes
 * the holder's /dev/fuse descriptor (pidfd_getfd on the parent). Touches
 * nothing of the resource before that. A holder gone meanwhile ends the
 * standby: it has nothing to serve.
 */
export async function waitForGo(): Promise<HolderClient> {
  const { binding } = await import('./native');
  return new Promise((resolve, reject) => {
    const onDisconnect = () => process.exit(0);
    const onMessage = (message: ToDaemon) => {
      if (message?.type !== 'go') return;
      process.off('message', onMessage);
      process.off('disconnect', onDisconnect);
      try {
        resolve(new HolderClient(message.fd === null ? null : binding.takeFd(process.ppid, message.fd), message.note, true));
      } catch (error) {
        reject(error);
      }
    };
    process.on('message', onMessage);
    process.on('disconnect', onDisconnect);
    send({ type: 'standby' });
  });
}
