/**
 * PostgreSQL on nraid (issue 14): the application moves with the device.
 * PostgreSQL 15 runs on ext4 on the Primary's device (trust on a loopback
 * port); a writer commits one row per transaction and logs each id only
 * after COMMIT returned. Then
 *  (a) `nraid switchover`, whose hooks stop PostgreSQL and unmount on the old
 *      Primary and fsck, mount and start it on the new one: the first commit
 *      on the other node follows within seconds and every logged row is there;
 *  (b) a failing hook on either side: the switchover fails with
 *      NRAID_ERR_HOOK_FAILED, both nodes stay where they were and the
 *      database serves again from the old Primary;
 *  (c) kill -9 of the Primary's daemon and of PostgreSQL, `primary --force`
 *      on the other node: its hook replays the journal, mounts and starts
 *      PostgreSQL, which recovers; under protocol C every logged row is there.
 * The killed node rejoins as the sync target. NRAID_TEST_PG_SWITCHOVERS and
 * NRAID_TEST_PG_KILLS set the iterations (2 each in the suite).
 */
import * as fs from 'fs';
import { freePorts, makeResource, NodeName, TestResource } from '../harness/cluster';
import { bringUpPair, cliError, connectedUpToDate, otherNode, sleep, until, withDaemonLogs } from '../harness/helpers';
import { CommitWriter, initDatabase, killPostgres, makePgSite, missingCommitted, PgSite, postmasterPid, unmountStale } from '../harness/postgres';
import { describeOptIn } from '../harness/prereq';

const MiB = 1024 * 1024;
const SWITCHOVERS = Number(process.env.NRAID_TEST_PG_SWITCHOVERS ?? 2);
const KILLS = Number(process.env.NRAID_TEST_PG_KILLS ?? 2);
/** Targets of issue 14 (reported; the assertions only bound a hang, timings are the bench's). */
const SWITCHOVER_TARGET_MS = 5_000;
const FAILOVER_TARGET_MS = 10_000;
const COMMIT_WAIT_MS = 60_000;

/**
 * Behind NRAID_TEST_POSTGRES=1 (npm run test:postgres): it takes 3-6 min on
 * the loaded machine; postgres-failover-short.test.ts is the one-move variant
 * (NRAID_TEST_POSTGRES_SHORT=1). The "one committed row
 * lost per role move" it used to report was its own check racing the writer
 * (missingCommitted in the harness), not a loss.
 */

describeOptIn('NRAID_TEST_POSTGRES', 'it takes 3-6 minutes', 'PostgreSQL on nraid: switchover with hooks, forced failover after kill -9', ['root', 'fuse', 'loop', 'mkfs.ext4', 'e2fsck', 'nraid-cli', 'postgresql'], () => {
  let r: TestResource;
  let site: PgSite;
  let writer: CommitWriter;
  let primary: NodeName = 'alpha';
  const timings: string[] = [];

  /** Some commits after `sinceMs`, then every logged id must be in the table. */
  async function expectAllCommitted(ctx: string, sinceMs: number): Promise<void> {
    const first = await writer.waitCommitSince(sinceMs, COMMIT_WAIT_MS);
    await until(`${ctx}: 20 commits`, () => writer.committed.filter((c) => c.atMs >= first.atMs).length >= 20, COMMIT_WAIT_MS);
    const { missing, checked } = await missingCommitted(writer, site.port);
    expect({ ctx, logged: checked > 0, missing: missing.slice(0, 20) }).toEqual({ ctx, logged: true, missing: [] });
  }

  beforeAll(async () => {
    const [port] = await freePorts(1);
    site = makePgSite(port);
    // The default ping timeout (5 s): exposing the device blocks the new Primary's event loop for a moment, which
    // under PostgreSQL's fsyncs on a loaded machine outlasted FAST_FAILOVER_CONFIG's 1 s (the switchover's answer
    // was then lost: outcome unknown). A killed daemon's sockets close at once, so the survivor needs no ping to notice.
    r = await makeResource({ nodes: 2, sizeBytes: 192 * MiB, protocol: 'C', extra: { 'connect-retry-ms': 100, ...site.hooksConfig } });
    await bringUpPair(r);
    await initDatabase(site, 'alpha', r.nodes.alpha.device);
    writer = new CommitWriter(port);
    writer.start();
    await writer.waitCommitSince(0, COMMIT_WAIT_MS);
  }, 240_000);

  afterAll(async () => {
    await writer?.stop();
    if (timings.length > 0) console.log(`PostgreSQL on nraid (protocol C), ${writer.committed.length} rows committed:\n${timings.join('\n')}`);
    if (r === undefined) return;
    // PostgreSQL stopped and unmounted before `down` (which refuses a device in use).
    for (const node of ['alpha', 'beta'] as const) {
      const pid = postmasterPid(site, node);
      if (pid !== null) killPostgres(pid);
    }
    await sleep(200);
    for (const node of ['alpha', 'beta'] as const) await unmountStale(site, node).catch(() => undefined);
    await r.cleanup();
  }, 120_000);

  test(`${SWITCHOVERS} switchovers move PostgreSQL with its data; every committed row is on the new Primary`, async () => {
    for (let i = 0; i < SWITCHOVERS; i++) {
      const from = primary;
      const to = otherNode(from);
      const ctx = `switchover ${i} ${from} -> ${to}`;
      // What the last promotion's hook wrote before its session turned around is resynced first.
      await Promise.all([r.waitFor(from, connectedUpToDate, 60_000), r.waitFor(to, connectedUpToDate, 60_000)]);
      const t0 = Date.now();
      const result = await withDaemonLogs(r, () => r.run(from, 'switchover', [], { timeoutMs: 120_000 }));
      if (result.code !== 0) throw new Error(`${ctx}: nraid switchover exited ${result.code}: ${result.stderr}`);
      const commandMs = Date.now() - t0;
      const first = await writer.waitCommitAfterMove(t0, COMMIT_WAIT_MS);
      const [a, b] = await Promise.all([r.status(from), r.status(to)]);
      expect({ ctx, from: a.role, to: b.role, mounted: fs.existsSync(`${site.dataDirOf(to)}/PG_VERSION`), left: fs.existsSync(`${site.dataDirOf(from)}/PG_VERSION`) }).toEqual({
        ctx,
        from: 'Secondary',
        to: 'Primary',
        mounted: true,
        left: false,
      });
      await expectAllCommitted(ctx, t0);
      const ms = first.atMs - t0;
      timings.push(`  ${ctx}: command ${commandMs} ms, first commit on ${to} ${ms} ms after the command (target ${SWITCHOVER_TARGET_MS} ms)`);
      primary = to;
    }
  }, 120_000 + SWITCHOVERS * 60_000);

  test.each(['after-promote', 'before-demote'] as const)('a failing %s hook aborts the switchover: both nodes stay where they were, PostgreSQL serves again', async (hook) => {
    const from = primary;
    const to = otherNode(from);
    const ctx = `${hook} failing`;
    await Promise.all([r.waitFor(from, connectedUpToDate, 60_000), r.waitFor(to, connectedUpToDate, 60_000)]);
    const flag = site.failFlag(hook, hook === 'after-promote' ? to : from);
    fs.writeFileSync(flag, '');
    try {
      const t0 = Date.now();
      const result = await r.run(from, 'switchover', [], { timeoutMs: 120_000 });
      const err = cliError(result);
      // A hook of this node fails the command with its own code; the peer's failing hook comes back as its refusal.
      const code = hook === 'before-demote' ? 'NRAID_ERR_HOOK_FAILED' : 'NRAID_ERR_STATE';
      expect({ ctx, exit: result.code !== 0, code: err.code }).toEqual({ ctx, exit: true, code });
      expect(err.message).toContain(`the ${hook} hook`);
      expect(err.message).toContain(hook === 'before-demote' ? `${from} stays Primary, the after-promote hook ran to bring the services back` : `${from} is still Primary`);
      const [a, b] = await Promise.all([r.waitFor(from, connectedUpToDate, 30_000), r.waitFor(to, connectedUpToDate, 30_000)]);
      expect({ ctx, from: a.role, to: b.role, toExposed: b.exposed }).toEqual({ ctx, from: 'Primary', to: 'Secondary', toExposed: false });
      // The database is back on the old Primary with every row.
      await expectAllCommitted(ctx, Date.now());
      timings.push(`  ${ctx}: switchover refused, commits again on ${from} ${(writer.firstCommitSince(t0)?.atMs ?? NaN) - t0} ms after the command`);
    } finally {
      fs.rmSync(flag, { force: true });
    }
  }, 120_000);

  test(`${KILLS} forced failovers after kill -9 of the Primary's daemon and PostgreSQL: recovery on the survivor, zero committed rows lost`, async () => {
    for (let i = 0; i < KILLS; i++) {
      const victim = primary;
      const survivor = otherNode(victim);
      const ctx = `kill ${i}: ${victim} killed, ${survivor} forced`;
      const committedBefore = writer.committed.length;
      await until(`${ctx}: commits before the kill`, () => writer.committed.length >= committedBefore + 50, COMMIT_WAIT_MS);
      const daemonPid = (await r.status(victim)).pid as number;
      const pgPid = postmasterPid(site, victim);
      expect({ ctx, postgresRunning: pgPid !== null }).toEqual({ ctx, postgresRunning: true });
      const killedAt = Date.now();
      const killed = killPostgres(pgPid!);
      process.kill(daemonPid, 'SIGKILL');
      const loggedAtKill = writer.committed.length;
      await r.waitFor(survivor, (s) => s.connection !== 'Connected', 10_000);
      // Both nodes share one machine here: the killed postmaster must be gone (its lock file's pid,
      // its shared memory) before PostgreSQL starts on the survivor, as it would be on another server.
      await until(`${ctx}: killed processes gone (reaped: PostgreSQL takes a zombie postmaster for a live one)`, () => [...killed, daemonPid].every((p) => !fs.existsSync(`/proc/${p}`)), 30_000);
      const t0 = Date.now();
      const promote = await withDaemonLogs(r, () => r.run(survivor, 'primary', ['--force'], { timeoutMs: 120_000 }));
      if (promote.code !== 0) throw new Error(`${ctx}: primary --force exited ${promote.code}: ${promote.stderr}`);
      const promoteMs = Date.now() - t0;
      const first = await writer.waitCommitAfterMove(killedAt, COMMIT_WAIT_MS);
      const { missing } = await missingCommitted(writer, site.port);
      expect({ ctx, loggedAtKill: loggedAtKill > committedBefore, missing: missing.slice(0, 20) }).toEqual({ ctx, loggedAtKill: true, missing: [] });
      timings.push(`  ${ctx}: primary --force ${promoteMs} ms (with fsck, mount, PostgreSQL recovery), first commit ${first.atMs - t0} ms after it (target ${FAILOVER_TARGET_MS} ms), lost 0 of ${loggedAtKill}`);

      // The killed node: its dead mount goes, it comes back as the sync target.
      await unmountStale(site, victim);
      await r.runOk(victim, 'up');
      const [s, v] = await Promise.all([r.waitFor(survivor, connectedUpToDate, 60_000), r.waitFor(victim, connectedUpToDate, 60_000)]);
      expect({ ctx, survivor: s.role, victim: v.role }).toEqual({ ctx, survivor: 'Primary', victim: 'Secondary' });
      await expectAllCommitted(ctx, Date.now());
      primary = survivor;
    }
  }, 120_000 + KILLS * 90_000);
});
