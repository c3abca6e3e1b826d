/**
 * The daemon's side of the holder (src/holder.ts): the inherited /dev/fuse
 * descriptor, the note about the restart that started this daemon, and the
 * messages on the IPC channel to the holder (Node's, the holder is the
 * parent). Nothing here runs per request.
 */
import { HeldFuse } from './device';
import { DaemonRestarts } from './state';

/** Set by the holder in every daemon it starts. */
export const HOLDER_ENV = 'NRAID_HOLDER';
/** The inherited descriptor number of the holder's /dev/fuse, set only while its connection is mounted. */
export const HOLDER_FD_ENV = 'NRAID_HOLDER_FD';
/** JSON of RestartNote: this daemon replaces one that died or handed over. */
export const HOLDER_RESTART_ENV = 'NRAID_HOLDER_RESTART';
/** Exit code of a daemon that handed the device over (`nraid restart`): the holder starts the next one. */
export const EXIT_HANDED_OVER = 75;

export interface RestartNote {
  count: number;
  cause: string;
  diedAtMs: number;
}

/** Daemon to holder. */
export type ToHolder =
  | { type: 'mounted'; fd: number }
  | { type: 'released' }
  | { type: 'ready'; pid: number; pauseMs: number | null; stale?: unknown }
  | { type: 'error'; error: unknown };

/** Holder to daemon. */
export type ToDaemon = { type: 'handover' };

export class HolderClient implements HeldFuse {
  fd: number | null;
  readonly restart: RestartNote | null;
  /** Set once this daemon serves, for status. */
  pauseMs: number | null = null;

  constructor(env: NodeJS.ProcessEnv) {
    const fd = env[HOLDER_FD_ENV];
    this.fd = fd === undefined || fd === '' ? null : Number(fd);
    const note = env[HOLDER_RESTART_ENV];
    this.restart = note === undefined || note === '' ? null : (JSON.parse(note) as RestartNote);
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

  restarts(): DaemonRestarts {
    return { count: this.restart?.count ?? 0, lastCause: this.restart?.cause ?? null, lastPauseMs: this.pauseMs };
  }
}

function send(message: ToHolder): void {
  if (process.send && process.connected) process.send(message);
}

/** The holder's client when a holder started this process, else null. */
export function holderClient(env: NodeJS.ProcessEnv = process.env): HolderClient | null {
  return env[HOLDER_ENV] === '1' && process.send !== undefined ? new HolderClient(env) : null;
}
