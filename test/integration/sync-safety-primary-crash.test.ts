/**
 * Regression (control-plane issue, defect 1): a sync target could become
 * UpToDate without the data. On a new pair whose Primary holds data,
 * `primary --force` started the full sync; kill -9 of that Primary's daemon
 * 0.2-0.8 s later and `nraid up` again left the target reporting UpToDate and
 * Established after it had received only part of the data: the data areas
 * differed. Fixed behaviour: whenever the target reports its disk UpToDate,
 * its data area equals the source's.
 *
 * Each round: a fresh pair (both disks new), alpha's data area filled with
 * random bytes on its backing device, `primary --force` on alpha, kill -9 of
 * alpha's daemon at a seeded random moment 0.1-1.0 s later, `up` alpha again.
 * The restarted alpha must come back Secondary (crashed primary, never Primary
 * by itself); if the pair then has no sync source it is made Primary again
 * (without --force: its disk is the UpToDate one). Once both are Established
 * and neither syncs (or a bound passes), beta's disk UpToDate means its data
 * area hashes like alpha's.
 *
 * Beta is checked twice: right after the kill (alpha dead, nothing changes
 * beta's disk: UpToDate must mean alpha's bytes) and once the pair settles.
 *
 * ROUNDS is 2 in the suite, not the 20 (NRAID_TEST_ROUNDS=20 runs them): a round costs about 30 s on the
 * shared 2-core machine (two create-md, two up, 256 MiB of random data, a
 * full sync, up to four 768 MiB hashes, cleanup). It was 6 until the fault
 * campaign: the torture runner's CI schedule now kills nodes mid-resync too,
 * and the suite must stay under 25 minutes. On the code before the fix 5 of 8 rounds failed (seed
 * 1102087265): right after the kill beta said Inconsistent, as it should, but
 * once alpha was up again (Secondary) the pair went Established with beta
 * UpToDate and no resync, its data area different from alpha's; so 6 rounds
 * miss the defect with a chance of about (3/8)^6 < 0.3 %. Seed: NRAID_TEST_SEED, else random,
 * printed either way.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import { makeResource, NodeName, NraidStatus, TestResource } from '../harness/cluster';
import { mulberry32, sha256Range } from '../harness/direct-io';
import { describeIntegration } from '../harness/prereq';
import { processAlive, sleep } from '../harness/helpers';

const MiB = 1024 * 1024;
/**
 * Backing disk: about 768 MiB of data plus room for the metadata. The full
 * sync runs at 250-400 MB/s here, so it lasts 2-3 s and every kill at 0.1-1.0
 * s lands in it. A third of it is random (FILL_EVERY), spread over the whole
 * area, so that wherever the sync stands, part of what it has not sent differs.
 */
const DISK_BYTES = 784 * MiB;
const FILL_CHUNK_BYTES = 1 * MiB;
const FILL_EVERY_BYTES = 3 * MiB;
/** NRAID_TEST_ROUNDS=20 runs the full count (about 10 minutes); CI runs 2. */
const ROUNDS = Number(process.env.NRAID_TEST_ROUNDS ?? 2);
const KILL_AFTER_MIN_MS = 100;
const KILL_AFTER_MAX_MS = 1000;
const SETTLE_MS = 90_000;
const FAST = { 'connect-retry-ms': 100, 'ping-interval-ms': 200, 'ping-timeout-ms': 1000 };
const NODES: NodeName[] = ['alpha', 'beta'];

/** A seeded generator in [0, 1), so a failing round can be replayed. */
function seededRandom(seed: number): () => number {
  const next = mulberry32(seed);
  return () => next() / 4294967296;
}

/** Random bytes in the first FILL_CHUNK_BYTES of every FILL_EVERY_BYTES of `device`'s first `dataSizeBytes`, made durable. */
function fillRandom(device: string, dataSizeBytes: number): void {
  const fd = fs.openSync(device, 'r+');
  try {
    for (let at = 0; at + FILL_CHUNK_BYTES <= dataSizeBytes; at += FILL_EVERY_BYTES) {
      fs.writeSync(fd, crypto.randomBytes(FILL_CHUNK_BYTES), 0, FILL_CHUNK_BYTES, at);
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function num(s: NraidStatus, key: string): number {
  const v = s[key];
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`status of ${s.node}: expected ${key} to be a number, found ${JSON.stringify(v)}`);
  return v;
}

const syncing = (s: NraidStatus): boolean => /Sync/.test(s.replication);
const settled = (s: NraidStatus): boolean => s.connection === 'Connected' && s.replication === 'Established' && !syncing(s);
const brief = (s: NraidStatus): string => `${s.node}: ${s.role}/${s.disk}/${s.connection}/${s.replication} peer ${s.peerRole}/${s.peerDisk}`;

async function statusOrNull(r: TestResource, n: NodeName): Promise<NraidStatus | null> {
  return r.status(n).catch(() => null);
}

/** Polls both until both are settled or `timeoutMs` passes; returns the last statuses. */
async function waitBothSettled(r: TestResource, timeoutMs: number): Promise<{ alpha: NraidStatus | null; beta: NraidStatus | null; settled: boolean }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [alpha, beta] = await Promise.all(NODES.map((n) => statusOrNull(r, n)));
    const both = alpha !== null && beta !== null && settled(alpha) && settled(beta);
    if (both || Date.now() >= deadline) return { alpha, beta, settled: both };
    await sleep(200);
  }
}

describeIntegration('sync safety: the Primary crashes during the first full sync', ['root', 'fuse', 'loop', 'dd', 'nraid-cli'], () => {
  const seed = Number(process.env.NRAID_TEST_SEED ?? crypto.randomInt(2 ** 31));
  const random = seededRandom(seed);

  test(`${ROUNDS} rounds: beta never reports UpToDate with data that differs from alpha's (seed ${seed})`, async () => {
    // eslint-disable-next-line no-console
    console.log(`sync-safety-primary-crash: seed ${seed} (replay with NRAID_TEST_SEED=${seed})`);
    const failures: string[] = [];
    const notes: string[] = [];
    for (let round = 1; round <= ROUNDS; round++) {
      const killAfterMs = Math.round(KILL_AFTER_MIN_MS + random() * (KILL_AFTER_MAX_MS - KILL_AFTER_MIN_MS));
      const r = await makeResource({ nodes: 2, sizeBytes: DISK_BYTES, protocol: 'C', extra: FAST });
      try {
        for (const n of NODES) await r.runOk(n, 'create-md');
        for (const n of NODES) await r.runOk(n, 'up');
        const a0 = await r.waitFor('alpha', (s) => s.connection === 'Connected', 30_000);
        await r.waitFor('beta', (s) => s.connection === 'Connected', 30_000);
        const dataSizeBytes = num(a0, 'dataSizeBytes');
        // Alpha "holds data": random bytes straight onto its backing device (it is an idle Secondary).
        fillRandom(r.nodes.alpha.disk!.device, dataSizeBytes);
        const pid = num(a0, 'pid');

        await r.runOk('alpha', 'primary', ['--force']);
        await sleep(killAfterMs);
        process.kill(pid, 'SIGKILL');
        const beforeKill = await statusOrNull(r, 'beta');
        for (let i = 0; i < 100 && processAlive(pid); i++) await sleep(50);
        if (processAlive(pid)) throw new Error(`round ${round}: alpha's daemon ${pid} still runs 5 s after SIGKILL`);

        // The source is gone: beta's disk no longer changes. If it says UpToDate, it must hold alpha's data.
        const orphan = await r.waitFor('beta', (s) => s.connection !== 'Connected', 15_000);
        if (orphan.disk === 'UpToDate') {
          const [alphaHash, betaHash] = await Promise.all(NODES.map((n) => sha256Range(r.nodes[n].disk!.device, 0, dataSizeBytes)));
          if (alphaHash !== betaHash) {
            failures.push(
              `round ${round}: kill after ${killAfterMs} ms: with alpha dead, beta reports ${brief(orphan)} but its data area differs from alpha's`,
            );
          }
        }

        await r.runOk('alpha', 'up');
        const back = await r.status('alpha');
        if (back.role !== 'Secondary') failures.push(`round ${round}: the restarted alpha came back ${back.role} by itself (expected Secondary)`);

        let end = await waitBothSettled(r, 20_000);
        let promoted = false;
        if (!end.settled || end.beta?.disk !== 'UpToDate') {
          // No sync source (two Secondaries) or a target still waiting: alpha holds the data, make it Primary.
          const p = await r.run('alpha', 'primary');
          promoted = p.code === 0;
          if (!promoted) notes.push(`round ${round}: primary on alpha exited ${p.code}: ${p.stderr.trim()}`);
          end = await waitBothSettled(r, SETTLE_MS);
        }
        const line =
          `round ${round}: kill after ${killAfterMs} ms (beta then ${beforeKill ? brief(beforeKill) : '?'}); ` +
          `end ${end.alpha ? brief(end.alpha) : 'alpha ?'}; ${end.beta ? brief(end.beta) : 'beta ?'}${promoted ? ' (alpha promoted again)' : ''}`;
        notes.push(line);

        const beta = await r.status('beta');
        if (beta.disk === 'UpToDate') {
          const [alphaHash, betaHash] = await Promise.all(NODES.map((n) => sha256Range(r.nodes[n].disk!.device, 0, dataSizeBytes)));
          if (alphaHash !== betaHash) failures.push(`${line}: beta reports UpToDate but its data area differs from alpha's (sha256 ${betaHash} vs ${alphaHash})`);
        } else if (end.settled) {
          failures.push(`${line}: both settled but beta is ${beta.disk}, not UpToDate`);
        } else {
          failures.push(`${line}: did not settle within ${SETTLE_MS} ms`);
        }
      } finally {
        await r.cleanup();
      }
    }
    // eslint-disable-next-line no-console
    console.log(notes.join('\n'));
    if (failures.length > 0) throw new Error(`seed ${seed}: ${failures.length} of ${ROUNDS} rounds failed:\n${failures.join('\n')}`);
  }, 600_000);
});
