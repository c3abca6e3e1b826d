/**
 * What nraid tells systemd when a unit runs it (contrib/systemd/nraid@.service,
 * Type=notify, FileDescriptorStoreMax=1): READY=1 once the device serves, and
 * the holder's /dev/fuse descriptor kept in the service's file-descriptor
 * store (FDSTORE=1, sd_notify(3)), so that the mounted device outlives a death
 * of the holder too: systemd passes the descriptor back to the restarted
 * service (LISTEN_FDS, LISTEN_FDNAMES, from descriptor 3 on; sd_listen_fds(3)).
 * Outside systemd (no NOTIFY_SOCKET) every call does nothing.
 */
import { binding } from './native';

/** The name the FUSE connection's descriptor has in the fd store (FDNAME=). */
export const FUSE_FD_NAME = 'nraid-fuse';
/** systemd's first passed descriptor (SD_LISTEN_FDS_START). */
const LISTEN_FDS_START = 3;
/** What systemd sets for the service's main process; never for the processes it starts. */
export const SYSTEMD_ENV_KEYS = ['NOTIFY_SOCKET', 'LISTEN_FDS', 'LISTEN_PID', 'LISTEN_FDNAMES'] as const;

/** Sends `state` (and descriptor `fd`) to NOTIFY_SOCKET; false when not under systemd. */
export function notify(state: string, fd: number | null = null, env: NodeJS.ProcessEnv = process.env): boolean {
  const socket = env.NOTIFY_SOCKET;
  if (socket === undefined || socket === '') return false;
  binding.sdNotify(socket, state, fd ?? -1);
  return true;
}

/** Keeps `fd` in the service's fd store under `name`, replacing what that name held. */
export function storeFd(fd: number, name: string, env: NodeJS.ProcessEnv = process.env): boolean {
  if (!notify(`FDSTOREREMOVE=1\nFDNAME=${name}`, null, env)) return false;
  return notify(`FDSTORE=1\nFDNAME=${name}`, fd, env);
}

/** Drops what the fd store holds under `name`. */
export function removeStoredFd(name: string, env: NodeJS.ProcessEnv = process.env): boolean {
  return notify(`FDSTOREREMOVE=1\nFDNAME=${name}`, null, env);
}

/** The descriptors systemd passed to this process (its fd store, given back after a restart), by name. */
export function passedFds(env: NodeJS.ProcessEnv = process.env, pid: number = process.pid): Map<string, number> {
  const fds = new Map<string, number>();
  if (Number(env.LISTEN_PID) !== pid) return fds;
  const count = Number(env.LISTEN_FDS ?? '0');
  if (!Number.isInteger(count) || count <= 0) return fds;
  const names = (env.LISTEN_FDNAMES ?? '').split(':');
  for (let i = 0; i < count; i++) fds.set(names[i] || `unknown-${i}`, LISTEN_FDS_START + i);
  return fds;
}
