'use strict';
/**
 * PostgreSQL failover timings (issue 14), two nodes on loopback, protocol C:
 *
 * - planned switchover with the role hooks (stop PostgreSQL, unmount; fsck,
 *   mount, start PostgreSQL): from `nraid switchover` to the first
 *   transaction committed on the other node (target <= 5 s; today's
 *   DRBD-based procedure by hand: about a minute);
 * - forced failover: kill -9 of the Primary's daemon and PostgreSQL, then
 *   from `nraid primary --force` on the survivor (its hook replays the
 *   journal, mounts, starts PostgreSQL, which recovers) to the first commit
 *   there (target <= 10 s), and the committed rows lost (target 0).
 *
 * The baseline in the same run: PostgreSQL's own stop + start on the same
 * ext4 on the same nraid device without any role change (what the hooks cost
 * at least), so the rows read as ratios against it. A writer commits one row
 * per transaction throughout and logs an id only after COMMIT returned.
 *
 * Uses the test harness compiled by `tsc` (npm run bench builds it): the
 * same hooks and writer as test/integration/postgres-failover.test.ts.
 * Standalone: `node bench/postgres.js [--rounds N]` (root, PostgreSQL installed).
 */
const fs = require('node:fs');
const path = require('node:path');

const DIST = path.resolve(__dirname, '..', 'dist', 'test', 'harness');

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

async function runPostgresBench({ rounds = 3, log = console.log } = {}) {
  const { freePorts, makeResource } = require(path.join(DIST, 'cluster'));
  const { bringUpPair, connectedUpToDate, otherNode, until } = require(path.join(DIST, 'helpers'));
  const pg = require(path.join(DIST, 'postgres'));
  const { cleanupAll } = require(path.join(DIST, 'cleanup'));
  const { postgresBinDir } = require(path.join(DIST, 'prereq'));
  if (postgresBinDir() === undefined) throw new Error('PostgreSQL is not installed (/usr/lib/postgresql/<major>/bin); run scripts/setup.sh');

  const [port] = await freePorts(1);
  const site = pg.makePgSite(port, 'pgbench');
  const r = await makeResource({ nodes: 2, sizeBytes: 192 << 20, protocol: 'C', extra: { 'connect-retry-ms': 100, ...site.hooksConfig } });
  const writer = new pg.CommitWriter(port);
  const result = { rounds, baselineRestartMs: [], switchoverMs: [], forcedFailoverMs: [], promoteCommandMs: [], rowsLost: 0, rowsCommitted: 0 };
  try {
    await bringUpPair(r);
    await pg.initDatabase(site, 'alpha', r.nodes.alpha.device);
    writer.start();
    await writer.waitCommitSince(0, 60_000);
    let primary = 'alpha';
    const env = (node, event) => ({ ...process.env, NRAID_EVENT: event, NRAID_NODE: node, NRAID_DEVICE: r.nodes[node].device });
    const { execFileSync } = require('node:child_process');
    const settle = async () => {
      // Both Established and UpToDate (a switchover's hook writes are resynced first), then some commits.
      await Promise.all(['alpha', 'beta'].map((node) => r.waitFor(node, connectedUpToDate, 60_000)));
      const since = Date.now();
      await until('commits', () => writer.committed.filter((c) => c.atMs >= since).length >= 20, 60_000);
    };
    for (let i = 0; i < rounds; i++) {
      // Baseline: the same hooks on the same node, no role change.
      await settle();
      let t0 = Date.now();
      execFileSync(site.beforeDemote, [], { env: env(primary, 'before-demote'), stdio: 'ignore' });
      execFileSync(site.afterPromote, [], { env: env(primary, 'after-promote'), stdio: 'ignore' });
      result.baselineRestartMs.push((await writer.waitCommitAfterMove(t0, 60_000)).atMs - t0);

      // Planned switchover with the hooks.
      await settle();
      t0 = Date.now();
      const so = await r.run(primary, 'switchover', [], { timeoutMs: 120_000 });
      if (so.code !== 0) throw new Error(`switchover ${primary}: ${so.stderr.trim()}`);
      result.switchoverMs.push((await writer.waitCommitAfterMove(t0, 60_000)).atMs - t0);
      primary = otherNode(primary);

      // Forced failover after kill -9 of the Primary's daemon and PostgreSQL.
      await settle();
      const victim = primary;
      const survivor = otherNode(victim);
      const daemonPid = (await r.status(victim)).pid;
      const killedAt = Date.now();
      const killed = pg.killPostgres(pg.postmasterPid(site, victim));
      process.kill(daemonPid, 'SIGKILL');
      await r.waitFor(survivor, (s) => s.connection !== 'Connected', 10_000);
      // One machine for both nodes: the killed postmaster (its lock file's pid, its shared memory)
      // must be gone before PostgreSQL starts on the survivor, as on another server it would be.
      await until('killed processes gone (reaped: PostgreSQL takes a zombie postmaster for a live one)', () => [...killed, daemonPid].every((p) => !fs.existsSync(`/proc/${p}`)), 30_000);
      t0 = Date.now();
      const promote = await r.run(survivor, 'primary', ['--force'], { timeoutMs: 120_000 });
      if (promote.code !== 0) {
        const pgLog = path.join(site.dir, 'logs', `postgres-${survivor}.log`);
        const tail = fs.existsSync(pgLog) ? fs.readFileSync(pgLog, 'utf8').slice(-1500) : '(no log)';
        throw new Error(`primary --force on ${survivor}: ${promote.stderr.trim()}; PostgreSQL's log ends: ${tail}`);
      }
      result.promoteCommandMs.push(Date.now() - t0);
      result.forcedFailoverMs.push((await writer.waitCommitAfterMove(killedAt, 60_000)).atMs - t0);
      result.rowsLost += (await pg.missingCommitted(writer, port)).missing.length;
      await pg.unmountStale(site, victim);
      await r.runOk(victim, 'up');
      await Promise.all([r.waitFor(survivor, connectedUpToDate, 60_000), r.waitFor(victim, connectedUpToDate, 60_000)]);
      primary = survivor;
      log(
        `  round ${i + 1}/${rounds}: restart in place ${result.baselineRestartMs[i]} ms, switchover ${result.switchoverMs[i]} ms, ` +
          `forced failover ${result.forcedFailoverMs[i]} ms (primary --force ${result.promoteCommandMs[i]} ms), lost so far ${result.rowsLost}`,
      );
    }
    result.rowsCommitted = writer.committed.length;
  } finally {
    await writer.stop();
    for (const node of ['alpha', 'beta']) {
      const pid = pg.postmasterPid(site, node);
      if (pid !== null) pg.killPostgres(pid);
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
    for (const node of ['alpha', 'beta']) await pg.unmountStale(site, node).catch(() => undefined);
    await r.cleanup();
    await cleanupAll();
  }
  const base = median(result.baselineRestartMs);
  result.median = {
    baselineRestartMs: base,
    switchoverMs: median(result.switchoverMs),
    forcedFailoverMs: median(result.forcedFailoverMs),
    switchoverRatio: Number((median(result.switchoverMs) / base).toFixed(2)),
    forcedFailoverRatio: Number((median(result.forcedFailoverMs) / base).toFixed(2)),
  };
  log(
    `  medians: PostgreSQL restart in place ${base} ms (baseline); switchover to first commit ${result.median.switchoverMs} ms ` +
      `(${result.median.switchoverRatio}x, target <= 5000 ms); forced failover to first commit ${result.median.forcedFailoverMs} ms ` +
      `(${result.median.forcedFailoverRatio}x, target <= 10000 ms); ${result.rowsLost} of ${result.rowsCommitted} committed rows lost (target 0)`,
  );
  return result;
}

module.exports = { runPostgresBench };

if (require.main === module) {
  const i = process.argv.indexOf('--rounds');
  const rounds = i > 0 ? Number(process.argv[i + 1]) : 3;
  runPostgresBench({ rounds }).then(
    (result) => console.log(JSON.stringify(result.median)),
    (error) => {
      console.error(`postgres bench FAILED: ${error.stack}`);
      process.exitCode = 1;
    },
  );
}
