/**
 * PostgreSQL on an nraid device (issue 14): the service hooks a node runs when
 * it gives up or takes the Primary role (stop postgres and unmount; fsck,
 * mount, start postgres), a minimal PostgreSQL client (the wire protocol's
 * simple query, trust authentication on loopback: no driver package), and a
 * writer that commits one row per transaction and logs each id only after
 * COMMIT returned. Used by test/integration/postgres-failover.test.ts and
 * bench/postgres.js (through dist/).
 *
 * Both nodes run on this machine, so each mounts at its own directory
 * (mnt-<node>); the database listens on one loopback port wherever it runs.
 */
import { execFile, execFileSync } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as path from 'path';
import { promisify } from 'util';
import { harnessTempDir, makeTempSubdir, mountPoints, registerCleanup } from './cleanup';
import { postgresBinDir } from './prereq';

const execFileAsync = promisify(execFile);

/** How long a hook may take in the tests (pg_ctl start waits for crash recovery). */
export const PG_HOOK_TIMEOUT_MS = 60_000;

export interface PgSite {
  /** Where the hooks, mount points and logs live (0711: postgres must pass through it). */
  dir: string;
  binDir: string;
  port: number;
  beforeDemote: string;
  afterPromote: string;
  /** Config `extra` for makeResource: the two role hooks and their timeouts. */
  hooksConfig: Record<string, unknown>;
  mountOf(node: string): string;
  dataDirOf(node: string): string;
  /** A file whose presence makes the named hook of `node` fail (exit 3) after its first steps. */
  failFlag(hook: 'before-demote' | 'after-promote', node: string): string;
}

/** Writes the hooks for PostgreSQL on `port`; nothing runs yet. */
export function makePgSite(port: number, tag = 'pg'): PgSite {
  const binDir = postgresBinDir();
  if (binDir === undefined) throw new Error('PostgreSQL not found under /usr/lib/postgresql/<major>/bin; run scripts/setup.sh');
  const dir = makeTempSubdir(tag);
  // The user postgres reaches its data dir through these (no listing: 0711).
  fs.chmodSync(harnessTempDir(), 0o711);
  fs.chmodSync(dir, 0o711);
  shareMounts(dir);
  // PostgreSQL's server logs (pg_ctl -l), written as postgres.
  const logs = path.join(dir, 'logs');
  fs.mkdirSync(logs);
  const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
  fs.chownSync(logs, uid, gid);
  const beforeDemote = path.join(dir, 'stop-services');
  const afterPromote = path.join(dir, 'start-services');
  const common = `set -u
MNT=${dir}/mnt-$NRAID_NODE
PGDATA=$MNT/pgdata
PG_CTL=${binDir}/pg_ctl
FAIL=${dir}/fail-$NRAID_EVENT-$NRAID_NODE
# Step timestamps (epoch ms) for bench/postgres.js: where a move spends its time.
step() { echo "$(date +%s%3N) $NRAID_NODE $NRAID_EVENT $1" >> ${dir}/steps.log; }
# Before initDatabase (the first promotion makes the device): nothing to stop or start yet.
[ -e ${dir}/initialized ] || exit 0
`;
  // before-demote: stop PostgreSQL (fast: sessions are cut, what was committed is on disk), unmount.
  fs.writeFileSync(
    beforeDemote,
    `#!/bin/bash
${common}
step start
if runuser -u postgres -- "$PG_CTL" -D "$PGDATA" status >/dev/null 2>&1; then
  runuser -u postgres -- "$PG_CTL" -D "$PGDATA" -m fast -w -t 30 stop || exit 1
fi
step pg-stopped
[ -e "$FAIL" ] && { echo "failing on purpose ($FAIL)"; exit 3; }
if mountpoint -q "$MNT"; then umount "$MNT" || exit 1; fi
step unmounted
exit 0
`,
    { mode: 0o755 },
  );
  // after-promote: fsck when needed (-p replays the journal, fixes what is safe), mount, start PostgreSQL (crash recovery runs here).
  fs.writeFileSync(
    afterPromote,
    `#!/bin/bash
${common}
step start
mkdir -p "$MNT"
if ! mountpoint -q "$MNT"; then
  e2fsck -p "$NRAID_DEVICE"; rc=$?
  [ $rc -le 1 ] || { echo "e2fsck -p $NRAID_DEVICE exited $rc: check it by hand"; exit 1; }
  step fscked
  mount -o noatime "$NRAID_DEVICE" "$MNT" || exit 1
  step mounted
fi
[ -e "$FAIL" ] && { echo "failing on purpose ($FAIL)"; exit 3; }
runuser -u postgres -- "$PG_CTL" -D "$PGDATA" -l ${logs}/postgres-$NRAID_NODE.log -w -t 50 start || exit 1
step pg-started
exit 0
`,
    { mode: 0o755 },
  );
  return {
    dir,
    binDir,
    port,
    beforeDemote,
    afterPromote,
    hooksConfig: {
      hooks: { 'before-demote': beforeDemote, 'after-promote': afterPromote, 'before-demote-timeout-ms': PG_HOOK_TIMEOUT_MS, 'after-promote-timeout-ms': PG_HOOK_TIMEOUT_MS },
    },
    mountOf: (node) => path.join(dir, `mnt-${node}`),
    dataDirOf: (node) => path.join(dir, `mnt-${node}`, 'pgdata'),
    failFlag: (hook, node) => path.join(dir, `fail-${hook}-${node}`),
  };
}

/**
 * Makes `dir` a shared mount of its own, so the filesystems the hooks mount
 * under it are shared too, as on a systemd host (where / is shared). This
 * host's / is private: a mount namespace that another program makes while our
 * ext4 is mounted (the torture runner's daemons under `ip netns exec`) would
 * keep a private copy of the mount that our umount never reaches, holding the
 * device open (the before-demote hook's unmount then fails the switchover:
 * "held exclusively by a program"). `ip netns exec` makes its copies slaves,
 * and a slave sees our umount.
 */
function shareMounts(dir: string): void {
  execFileSync('mount', ['--bind', dir, dir]);
  const undo = () => {
    if (mountPoints().includes(dir)) execFileSync('umount', ['-l', dir]);
  };
  registerCleanup(`shared mount ${dir}`, async () => undo(), undo);
  execFileSync('mount', ['--make-shared', dir]);
}

async function run(file: string, args: readonly string[], timeoutMs = 120_000): Promise<string> {
  try {
    const { stdout } = await execFileAsync(file, args as string[], { timeout: timeoutMs, encoding: 'utf8' });
    return stdout;
  } catch (e) {
    const err = e as { stderr?: string; stdout?: string; message: string };
    throw new Error(`${file} ${args.join(' ')} failed: ${(err.stderr || err.stdout || err.message).trim()}`);
  }
}

/**
 * On the Primary `node` (its device exposed, no hooks run yet): ext4, initdb,
 * PostgreSQL settings, then the hook starts it and the table is made.
 */
export async function initDatabase(site: PgSite, node: string, device: string): Promise<void> {
  const mnt = site.mountOf(node);
  await run('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', device]);
  fs.mkdirSync(mnt, { recursive: true });
  await run('mount', ['-o', 'noatime', device, mnt]);
  const pgdata = site.dataDirOf(node);
  fs.mkdirSync(pgdata, { mode: 0o700 });
  await run('chown', ['postgres:postgres', pgdata]);
  // --no-sync: the umount below writes everything back (one sync instead of one fsync per file through the device).
  await run('runuser', ['-u', 'postgres', '--', path.join(site.binDir, 'initdb'), '-D', pgdata, '--auth=trust', '-U', 'postgres', '--no-instructions', '-E', 'UTF8', '--locale=C', '--no-sync']);
  fs.appendFileSync(
    path.join(pgdata, 'postgresql.conf'),
    [
      '# nraid PostgreSQL failover test',
      `port = ${site.port}`,
      "listen_addresses = '127.0.0.1'",
      "unix_socket_directories = ''",
      'shared_buffers = 16MB',
      'max_connections = 20',
      'min_wal_size = 32MB',
      'max_wal_size = 64MB',
      'fsync = on',
      'synchronous_commit = on',
      'full_page_writes = on',
      // Crash recovery first fsyncs every file of the data directory, one by one (seconds through
      // ext4 on the loop device); syncfs(2) does the same in one call on Linux >= 5.8.
      'recovery_init_sync_method = syncfs',
      '',
    ].join('\n'),
  );
  await run('umount', [mnt]);
  fs.writeFileSync(path.join(site.dir, 'initialized'), '');
  await startServices(site, node, device);
  const client = await PgClient.connect(site.port);
  try {
    await client.query('CREATE TABLE committed (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())');
  } finally {
    client.close();
  }
}

/** The after-promote hook run by hand, with the environment the daemon gives it (the first start). */
export async function startServices(site: PgSite, node: string, device: string): Promise<void> {
  try {
    await execFileAsync(site.afterPromote, [], {
      timeout: PG_HOOK_TIMEOUT_MS,
      encoding: 'utf8',
      env: { ...process.env, NRAID_EVENT: 'after-promote', NRAID_NODE: node, NRAID_DEVICE: device },
    });
  } catch (e) {
    const log = path.join(site.dir, 'logs', `postgres-${node}.log`);
    const tail = fs.existsSync(log) ? fs.readFileSync(log, 'utf8').slice(-2000) : '(no log)';
    throw new Error(`${site.afterPromote} failed: ${(e as Error).message}; PostgreSQL's log ends: ${tail}`);
  }
}

/** The postmaster's pid of `node`'s data dir, or null when it is not running there. */
export function postmasterPid(site: PgSite, node: string): number | null {
  try {
    const pid = Number(fs.readFileSync(path.join(site.dataDirOf(node), 'postmaster.pid'), 'utf8').split('\n')[0]);
    return Number.isInteger(pid) && pid > 0 && fs.existsSync(`/proc/${pid}`) ? pid : null;
  } catch {
    return null;
  }
}

/** The postmaster and every process it started, killed with -9 (a crash of the application's node). */
export function killPostgres(pid: number): number[] {
  const victims = [pid, ...childrenOf(pid)];
  for (const p of victims) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  return victims;
}

function childrenOf(pid: number): number[] {
  const found: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) found.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

/** Unmounts what a killed node left mounted (lazy: its FUSE server is dead). */
export async function unmountStale(site: PgSite, node: string): Promise<void> {
  const mnt = site.mountOf(node);
  const mounted = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').some((line) => line.split(' ')[1] === mnt);
  if (mounted) await run('umount', ['-l', mnt]);
}

// --- A minimal client: startup, trust authentication, simple query -------------------------------

export class PgError extends Error {}

/** One connection speaking protocol 3.0; one query at a time. */
export class PgClient {
  private buffer = Buffer.alloc(0);
  private waiter: { resolve: (rows: string[][]) => void; reject: (e: Error) => void; rows: string[][]; error: string | null } | null = null;
  private closedWith: Error | null = null;

  private constructor(private readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    const fail = (why: string) => {
      this.closedWith ??= new PgError(`connection to PostgreSQL lost: ${why}`);
      const w = this.waiter;
      this.waiter = null;
      w?.reject(this.closedWith);
    };
    socket.on('error', (e) => fail(e.message));
    socket.on('close', () => fail('closed'));
  }

  /** Connects as postgres to the database postgres on 127.0.0.1:`port`. */
  static connect(port: number, timeoutMs = 5_000): Promise<PgClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new PgError(`no answer from PostgreSQL on port ${port} within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('error', (e) => {
        clearTimeout(timer);
        reject(new PgError(`cannot connect to PostgreSQL on port ${port}: ${e.message}`));
      });
      socket.once('connect', () => {
        const client = new PgClient(socket);
        const params = Buffer.from('user\0postgres\0database\0postgres\0\0');
        const startup = Buffer.alloc(8 + params.length);
        startup.writeInt32BE(startup.length, 0);
        startup.writeInt32BE(196608, 4);
        params.copy(startup, 8);
        client.expect().then(
          () => {
            clearTimeout(timer);
            resolve(client);
          },
          (e: Error) => {
            clearTimeout(timer);
            socket.destroy();
            reject(e);
          },
        );
        socket.write(startup);
      });
    });
  }

  /** Runs `sql` (autocommit: one statement is one transaction); resolves after ReadyForQuery, i.e. after COMMIT returned. */
  query(sql: string): Promise<string[][]> {
    const body = Buffer.from(`${sql}\0`);
    const message = Buffer.alloc(5 + body.length);
    message.write('Q', 0);
    message.writeInt32BE(4 + body.length, 1);
    body.copy(message, 5);
    const answered = this.expect();
    this.socket.write(message);
    return answered;
  }

  close(): void {
    this.socket.destroy();
  }

  private expect(): Promise<string[][]> {
    if (this.closedWith !== null) return Promise.reject(this.closedWith);
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject, rows: [], error: null };
    });
  }

  private onData(chunk: Buffer): void {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    while (this.buffer.length >= 5) {
      const type = String.fromCharCode(this.buffer[0]);
      const length = this.buffer.readInt32BE(1);
      if (this.buffer.length < 1 + length) return;
      const body = this.buffer.subarray(5, 1 + length);
      this.buffer = this.buffer.subarray(1 + length);
      this.onMessage(type, body);
    }
  }

  private onMessage(type: string, body: Buffer): void {
    const w = this.waiter;
    if (type === 'R' && body.readInt32BE(0) !== 0) {
      this.closedWith = new PgError(`PostgreSQL asks for authentication ${body.readInt32BE(0)}; the test cluster uses trust on loopback`);
      this.socket.destroy();
      return;
    }
    if (w === null) return;
    if (type === 'D') {
      const row: string[] = [];
      let at = 2;
      for (let i = 0; i < body.readInt16BE(0); i++) {
        const n = body.readInt32BE(at);
        at += 4;
        row.push(n < 0 ? '' : body.subarray(at, at + n).toString('utf8'));
        if (n > 0) at += n;
      }
      w.rows.push(row);
    } else if (type === 'E') {
      const fields = body.toString('utf8').split('\0');
      w.error = fields.filter((f) => f.startsWith('M') || f.startsWith('C')).map((f) => f.slice(1)).join(' ');
    } else if (type === 'Z') {
      this.waiter = null;
      if (w.error !== null) w.reject(new PgError(w.error));
      else w.resolve(w.rows);
    }
  }
}

// --- The writer ------------------------------------------------------------------------------------

/**
 * Commits one row per transaction, ids 1, 2, 3, ...; an id is logged only
 * after its COMMIT returned. A lost connection is retried every few ms with
 * the next id (the lost one's outcome is unknown: it may or may not be there).
 */
export class CommitWriter {
  /** Ids whose COMMIT returned, and when; `connectedAtMs`: when their connection was opened. */
  readonly committed: { id: number; atMs: number; connectedAtMs: number }[] = [];
  /** When each connection was lost. */
  readonly lostAtMs: number[] = [];
  readonly uncertain: number[] = [];
  private nextId = 1;
  private stopped = false;
  private running: Promise<void> | null = null;
  connectionsLost = 0;

  constructor(private readonly port: number) {}

  start(): void {
    this.stopped = false;
    this.running = this.loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.running;
    this.running = null;
  }

  /** The first commit at or after `sinceMs` (epoch ms), or null. */
  firstCommitSince(sinceMs: number): { id: number; atMs: number } | null {
    return this.committed.find((c) => c.atMs >= sinceMs) ?? null;
  }

  /**
   * The first commit on a connection opened after the first connection lost
   * at or after `sinceMs`: the database serving again after it moved (the old
   * server keeps committing until its hook stops it). Null until then.
   */
  firstCommitAfterMove(sinceMs: number): { id: number; atMs: number } | null {
    const lost = this.lostAtMs.find((t) => t >= sinceMs);
    if (lost === undefined) return null;
    return this.committed.find((c) => c.connectedAtMs >= lost) ?? null;
  }

  async waitCommitAfterMove(sinceMs: number, timeoutMs: number): Promise<{ id: number; atMs: number }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.firstCommitAfterMove(sinceMs);
      if (found !== null) return found;
      if (Date.now() > deadline) throw new Error(`no transaction committed on a new connection within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  /** Resolves when a commit at or after `sinceMs` is logged. */
  async waitCommitSince(sinceMs: number, timeoutMs: number): Promise<{ id: number; atMs: number }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.firstCommitSince(sinceMs);
      if (found !== null) return found;
      if (Date.now() > deadline) throw new Error(`no transaction committed within ${timeoutMs} ms (last committed id ${this.committed.at(-1)?.id ?? 'none'})`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      let client: PgClient;
      let connectedAtMs: number;
      try {
        client = await PgClient.connect(this.port, 2_000);
        connectedAtMs = Date.now();
      } catch {
        await new Promise((r) => setTimeout(r, 20));
        continue;
      }
      try {
        while (!this.stopped) {
          const id = this.nextId++;
          try {
            await client.query(`INSERT INTO committed (id) VALUES (${id})`);
          } catch (e) {
            this.uncertain.push(id);
            throw e;
          }
          this.committed.push({ id, atMs: Date.now(), connectedAtMs });
        }
      } catch {
        this.connectionsLost++;
        this.lostAtMs.push(Date.now());
      } finally {
        client.close();
      }
    }
  }
}

/** Every id in the table (on whichever node serves `port` now). */
export async function committedIds(port: number): Promise<Set<number>> {
  const client = await PgClient.connect(port, 10_000);
  try {
    const rows = await client.query('SELECT id FROM committed');
    return new Set(rows.map((r) => Number(r[0])));
  } finally {
    client.close();
  }
}

/**
 * The ids logged before the check began that the table (on whichever node
 * serves `port` now) lacks, and how many were checked.
 *
 * Regression: the check read the writer's log after the SELECT returned, while
 * the writer kept committing; a row whose COMMIT returned after the SELECT took
 * its snapshot counted as missing, so every switchover and forced failover
 * seemed to lose exactly one committed row, always the newest (it was in the
 * new Primary's WAL). Only ids logged before the query are checked.
 */
export async function missingCommitted(writer: CommitWriter, port: number): Promise<{ missing: number[]; checked: number }> {
  const logged = writer.committed.slice();
  const present = await committedIds(port);
  return { missing: logged.filter((c) => !present.has(c.id)).map((c) => c.id), checked: logged.length };
}
