/**
 * Small helpers the integration tests share, written once: reading a CLI
 * refusal, the status predicates a test waits for, numbers from a status,
 * whether a process is alive, waiting by polling, and the daemons' logs
 * attached to a failure.
 */
import * as fs from 'fs';
import * as path from 'path';
import type { NodeName, NraidResult, NraidStatus, TestResource } from './cluster';
import { execOk, execTool } from './exec';

/**
 * Config keys for tests of failover: quick redials, and a peer declared dead
 * within a second (`extra` of makeResource).
 */
export const FAST_FAILOVER_CONFIG: Readonly<Record<string, number>> = { 'connect-retry-ms': 100, 'ping-interval-ms': 200, 'ping-timeout-ms': 1000 };

// ---- files -----------------------------------------------------------------------------

/** Whether `p` exists (a dangling symlink counts: lstat, not stat). */
export function pathExists(p: string): boolean {
  try {
    fs.lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

// ---- time ------------------------------------------------------------------------------

/** Resolves after `ms`. For pacing a test's own load, never to wait for nraid: poll a condition with until() or waitFor(). */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `predicate` every `pollMs` until it holds; rejects after `timeoutMs` naming `what`. */
export async function until(what: string, predicate: () => boolean, timeoutMs: number, pollMs = 10): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(pollMs);
  }
}

// ---- processes -------------------------------------------------------------------------

/** Alive and not a zombie (a process killed with -9 is a zombie until its parent reaps it). */
export function processAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) [ZX]/s.test(stat);
  } catch {
    return false;
  }
}

// ---- the CLI ---------------------------------------------------------------------------

/** The one "error: <message> (<code>)" line of a failed CLI run (exit code 1); throws when the run did not fail that way. */
export function cliError(r: NraidResult): { message: string; code: string } {
  const m = /^error: ([^\n]*) \((NRAID_ERR_[A-Z_]+)\)\n$/.exec(r.stderr);
  if (r.code !== 1 || m === null) {
    throw new Error(
      `expected exit code 1 and one "error: <message> (<code>)" line on stderr; got exit ${r.code}, ` +
        `stderr ${JSON.stringify(r.stderr)}, stdout ${JSON.stringify(r.stdout)}`,
    );
  }
  return { message: m[1], code: m[2] };
}

/**
 * The error a CLI run reported, or null when it reported none (it succeeded, or
 * was killed): `--json`'s {"error":{code,message}} on stdout, or the
 * `error: <message> (<code>)` line on stderr. For runs that may go either way.
 */
export function reportedError(r: NraidResult): { code: string; message: string } | null {
  for (const line of r.stdout.split('\n').reverse()) {
    if (!line.trim().startsWith('{')) continue;
    try {
      const v = JSON.parse(line) as { error?: { code: string; message: string } };
      if (v.error) return v.error;
    } catch {
      // not the error object
    }
  }
  const m = /error: ([\s\S]*) \((NRAID_[A-Z_]+)\)\s*$/.exec(r.stderr.trim());
  return m ? { code: m[2], message: m[1] } : null;
}

/** Asserts a refusal with `code` whose message contains (string) or matches (RegExp) each of `mentions`; returns the message. */
export function expectRefused(r: NraidResult, code: string, mentions: readonly (string | RegExp)[]): string {
  const e = cliError(r);
  expect({ code: e.code, message: e.message }).toEqual({ code, message: e.message });
  for (const m of mentions) {
    if (typeof m === 'string') expect(e.message).toContain(m);
    else expect(e.message).toMatch(m);
  }
  return e.message;
}

// ---- status ----------------------------------------------------------------------------

/** A numeric field of a status; throws naming the node and field when it is missing or not a number. */
export function num(s: NraidStatus, key: string): number {
  const v = s[key];
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw new Error(`status of ${s.node}: expected ${key} to be a number, found ${JSON.stringify(v)}`);
  }
  return v;
}

/** Connected and Established with both disks UpToDate (out-of-sync bytes and lag aside: checked on their own). */
export function connectedUpToDate(s: NraidStatus): boolean {
  return s.connection === 'Connected' && s.replication === 'Established' && s.disk === 'UpToDate' && s.peerDisk === 'UpToDate';
}

/** connectedUpToDate, nothing out of sync and nothing sent that the peer has not written. */
export function settled(s: NraidStatus): boolean {
  return connectedUpToDate(s) && s.outOfSyncBytes === 0 && s.lagBytes === 0 && s.writesInFlight === 0;
}

export function otherNode(n: NodeName): NodeName {
  return n === 'alpha' ? 'beta' : 'alpha';
}

/** alpha Established with nothing out of sync, beta Established; resolves with alpha's status. */
export async function waitEstablished(r: TestResource, timeoutMs = 60_000): Promise<NraidStatus> {
  const alpha = await r.waitFor('alpha', (s) => connectedUpToDate(s) && s.outOfSyncBytes === 0, timeoutMs);
  await r.waitFor('beta', connectedUpToDate, timeoutMs);
  return alpha;
}

/** Everything alpha (the Primary) sent is on the peer's disk: nothing queued, in flight or unacknowledged. */
export function quiesce(r: TestResource, timeoutMs = 30_000): Promise<NraidStatus> {
  return r.waitFor('alpha', (s) => s.lagBytes === 0 && s.writesInFlight === 0 && s.requestsInFlight === 0, timeoutMs);
}

/** create-md and up on both nodes, alpha promoted with --force, waits until both are `ready` (the initial sync done). */
export async function bringUpPair(r: TestResource, ready: (s: NraidStatus) => boolean = settled): Promise<void> {
  for (const n of ['alpha', 'beta'] as const) await r.runOk(n, 'create-md');
  for (const n of ['alpha', 'beta'] as const) await r.runOk(n, 'up');
  await r.waitFor('alpha', (s) => s.connection === 'Connected', 15_000);
  await r.runOk('alpha', 'primary', ['--force']);
  await r.waitFor('alpha', ready, 60_000);
  await r.waitFor('beta', ready, 15_000);
}

// ---- filesystems ---------------------------------------------------------------------

/** e2fsck -f -n of an unmounted ext4 device, after dropping its buffer cache; rejects with e2fsck's output unless it is clean. */
export async function fsckClean(device: string): Promise<void> {
  await execOk('blockdev', ['--flushbufs', device]);
  const fsck = await execTool('e2fsck', ['-f', '-n', device]);
  if (fsck.code !== 0) throw new Error(`e2fsck -f -n ${device} exited ${fsck.code}:\n${fsck.stdout.toString()}${fsck.stderr.toString()}`);
}

// ---- daemon logs -----------------------------------------------------------------------

function daemonLogPath(r: TestResource, node: NodeName): string {
  return path.join(r.nodes[node].runDir, 'daemon.log');
}

/** Bytes in a node's daemon log so far (0 when there is none yet). */
export function daemonLogSize(r: TestResource, node: NodeName): number {
  try {
    return fs.statSync(daemonLogPath(r, node)).size;
  } catch {
    return 0;
  }
}

/** The JSON lines of a node's daemon log written since `fromByte`. */
export function daemonLogSince(r: TestResource, node: NodeName, fromByte: number): Record<string, unknown>[] {
  let text: string;
  try {
    text = fs.readFileSync(daemonLogPath(r, node)).subarray(fromByte).toString('utf8');
  } catch {
    return [];
  }
  return text
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

const DAEMON_LOG_TAIL_LINES = 40;

/** Runs `fn`; a failure carries both daemons' log lines (debug aside, the last 40) written meanwhile: their own account of it. */
export async function withDaemonLogs<T>(r: TestResource, fn: () => Promise<T>): Promise<T> {
  const from = { alpha: daemonLogSize(r, 'alpha'), beta: daemonLogSize(r, 'beta') };
  try {
    return await fn();
  } catch (e) {
    const tail = (['alpha', 'beta'] as const)
      .map((n) => {
        const lines = daemonLogSince(r, n, from[n])
          .filter((l) => l.level !== 'debug')
          .map((l) => {
            const { time, level, message, resource: _r, node: _n, ...rest } = l;
            return `${time} ${level} ${message} ${JSON.stringify(rest)}`;
          });
        return `--- ${n} daemon log meanwhile (last ${DAEMON_LOG_TAIL_LINES} lines):\n${lines.slice(-DAEMON_LOG_TAIL_LINES).join('\n')}`;
      })
      .join('\n');
    if (typeof e === 'object' && e !== null && typeof (e as Error).message === 'string') (e as Error).message += `\n${tail}`;
    throw e;
  }
}
