/**
 * Issue 12 (part A): the resync's rate controller, pause-sync/resume-sync,
 * progress on both nodes, and a resync that resumes where it stopped.
 *
 * Defects pinned down: a killed sync target or source made the resync start
 * over (the bitmap's cleared bits reached the disk only every 2 s); progress
 * was reported on the SyncSource only; nothing could pause a resync; an
 * application write racing the resync of its region must survive on both
 * nodes.
 *
 * One pair of loop disks goes through the stages in order (each stage
 * starts from where the last one left the pair), resync-max-rate-mib low
 * enough that a stage can act at ~40 % of a resync. The default suite runs
 * it on 64 MiB disks at 4 MiB/s (every size a quarter); NRAID_TEST_RESYNC_FULL=1
 * (npm run test:resync) on 256 MiB disks at 16 MiB/s, two racing rounds.
 */
import type { ResyncProgress } from '../../src/state';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { makeResource, NodeName, NraidStatus, TestResource } from '../harness/cluster';
import { RandomWriter } from '../harness/direct-io';
import { adminCall } from '../../src/admin';
import { describeIntegration } from '../harness/prereq';
import { cliError, num, processAlive, sleep, until } from '../harness/helpers';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const FULL = process.env.NRAID_TEST_RESYNC_FULL === '1';
// Sizes in MiB are multiplied by this: 1 in the full run, 1/4 in the default suite's.
const SCALE = FULL ? 1 : 0.25;
const DISK_BYTES = 256 * SCALE * MiB;
// Slow enough that a stage can act at ~40 % of a resync; `setMaxRate` speeds up what is left.
const SLOW_MIB = 16 * SCALE;
const FAST_MIB = 4096;
const LINK = { 'connect-retry-ms': 100, 'ping-interval-ms': 200, 'ping-timeout-ms': 2000, 'resync-max-rate-mib': SLOW_MIB, 'resync-min-rate-mib': SLOW_MIB };

const progress = (s: NraidStatus): ResyncProgress | null => (s.resync as ResyncProgress | null) ?? null;
const established = (s: NraidStatus): boolean =>
  s.connection === 'Connected' && s.replication === 'Established' && s.disk === 'UpToDate' && s.peerDisk === 'UpToDate' && s.outOfSyncBytes === 0;

describeIntegration(`resync control (${FULL ? 'full: 256 MiB' : 'short: 64 MiB; the full run is npm run test:resync'}): rate, pause, progress on both nodes, resume after kill -9`, ['root', 'fuse', 'loop', 'dd', 'nraid-cli'], () => {
  let r: TestResource;

  beforeAll(async () => {
    r = await makeResource({ nodes: 2, sizeBytes: DISK_BYTES, protocol: 'C', extra: LINK });
  });
  afterAll(async () => {
    await r?.cleanup();
  }, 120_000);

  /** Status over the admin socket: the CLI takes a second or more on a loaded machine, a resync stage less. */
  async function fast(node: NodeName): Promise<NraidStatus> {
    return (await adminCall(path.join(r.nodes[node].runDir, 'admin.sock'), 'status', {}, undefined, 10_000)) as NraidStatus;
  }

  async function waitFast(node: NodeName, what: string, predicate: (s: NraidStatus) => boolean, timeoutMs: number): Promise<NraidStatus> {
    const deadline = Date.now() + timeoutMs;
    let last: NraidStatus | string = 'no answer';
    for (;;) {
      try {
        last = await fast(node);
        if (predicate(last)) return last;
      } catch (error) {
        last = (error as Error).message;
      }
      if (Date.now() > deadline) throw new Error(`${node}: ${what} not seen within ${timeoutMs} ms; last: ${JSON.stringify(last)}`);
      await sleep(50);
    }
  }

  /** Rewrites resync-max-rate-mib in the config and runs adjust on the nodes that are up. */
  async function setMaxRate(mib: number, nodes: readonly NodeName[]): Promise<void> {
    const text = fs.readFileSync(r.configPath, 'utf8');
    fs.writeFileSync(r.configPath, text.replace(/^resync-max-rate-mib = \d+$/m, `resync-max-rate-mib = ${mib}`));
    for (const node of nodes) await r.runOk(node, 'adjust');
  }

  /** Rewrites resync-max-rate-mib and resync-min-rate-mib in the config and runs adjust on `nodes`. */
  async function setRates(maxMib: number, minMib: number, nodes: readonly NodeName[]): Promise<void> {
    const text = fs.readFileSync(r.configPath, 'utf8');
    fs.writeFileSync(r.configPath, text.replace(/^resync-max-rate-mib = \d+$/m, `resync-max-rate-mib = ${maxMib}`).replace(/^resync-min-rate-mib = \d+$/m, `resync-min-rate-mib = ${minMib}`));
    for (const node of nodes) await r.runOk(node, 'adjust');
  }

  async function dataSha(node: NodeName): Promise<string> {
    const size = num(await fast(node), 'dataSizeBytes');
    // sha256sum over buffered reads: the harness's O_DIRECT reader takes half a minute here under load.
    const { stdout } = await run('sh', ['-c', `head -c ${size} "$1" | sha256sum`, 'sha', r.nodes[node].diskPath]);
    return stdout.split(' ')[0]!;
  }

  async function expectIdentical(): Promise<void> {
    const [alpha, beta] = await Promise.all([dataSha('alpha'), dataSha('beta')]);
    expect(beta).toBe(alpha);
  }

  async function writeRandom(node: NodeName, offsetMiB: number, countMiB: number): Promise<void> {
    await run('dd', ['if=/dev/urandom', `of=${r.nodes[node].device}`, 'bs=1M', `seek=${offsetMiB}`, `count=${countMiB}`, 'oflag=direct', 'status=none']);
  }

  async function kill9(node: NodeName): Promise<void> {
    const pid = num(await r.status(node), 'pid');
    process.kill(pid, 'SIGKILL');
    await until(`${node} (pid ${pid}) gone`, () => !processAlive(pid), 15_000);
  }

  test('initial full sync with progress on both nodes, pause on the target, kill -9 of the target at ~40 %: identical data, resent ≤ 10 %', async () => {
    await r.runOk('alpha', 'create-md');
    await r.runOk('alpha', 'up');
    await r.runOk('alpha', 'primary', ['--force']);
    await writeRandom('alpha', 0, 64 * SCALE);
    await r.runOk('alpha', 'secondary');

    // Bad input: nothing to pause or resume on a node with no resync.
    const noResync = await r.run('alpha', 'pause-sync');
    expect(noResync.code).not.toBe(0);
    expect(cliError(noResync)).toEqual({ code: 'NRAID_ERR_STATE', message: expect.stringMatching(/no resync is running on this node.*nothing changed/) as unknown });
    const notPaused = await r.run('alpha', 'resume-sync');
    expect(cliError(notPaused).message).toMatch(/no resync was paused on this node.*nothing changed/);
    expect((await r.status('alpha')).resyncPaused ?? false).toBe(false);

    await r.runOk('beta', 'create-md');
    await r.runOk('beta', 'up');
    const betaSyncing = await waitFast('beta', 'resync at 5 %', (s) => (progress(s)?.percent ?? 0) >= 5, 30_000);
    const alphaSyncing = await fast('alpha');
    const total = num(alphaSyncing, 'dataSizeBytes');
    // Progress on both nodes: the target's from what the source announced and what arrived.
    expect(progress(betaSyncing)).toMatchObject({ direction: 'target', paused: false });
    expect(progress(betaSyncing)!.bytesLeft).toBeGreaterThan(0);
    expect(progress(betaSyncing)!.bytesLeft).toBeLessThanOrEqual(total);
    expect(progress(alphaSyncing)).toMatchObject({ direction: 'source', paused: false, throttled: false });
    const sentBefore = num(alphaSyncing, 'bytesSent');

    // Paused on the target: the source stops sending (what was in flight still lands).
    await r.runOk('beta', 'pause-sync');
    const again = await r.run('beta', 'pause-sync');
    expect(cliError(again).message).toMatch(/paused here already/);
    const fromAlpha = await r.run('alpha', 'resume-sync');
    expect(cliError(fromAlpha).message).toMatch(/the peer paused it: run nraid resume-sync there/);
    await waitFast('alpha', 'paused', (s) => progress(s)?.paused === true, 5_000);
    await sleep(300);
    const held = num(await fast('alpha'), 'resyncSentBytesTotal');
    await sleep(700);
    const alphaPaused = await fast('alpha');
    expect(num(alphaPaused, 'resyncSentBytesTotal')).toBe(held);
    expect(progress(alphaPaused)!.etaSeconds).toBeNull();
    expect(alphaPaused.replication).toBe('SyncSource');
    await r.runOk('beta', 'resume-sync');
    await waitFast('alpha', 'resumed', (s) => progress(s)?.paused === false && num(s, 'resyncSentBytesTotal') > held, 5_000);

    // Killed at ~40 %: the target comes back and the resync goes on from the source's bitmap.
    await waitFast('beta', 'resync at 40 %', (s) => (progress(s)?.percent ?? 0) >= 40, 30_000);
    await kill9('beta');
    await r.runOk('beta', 'up');
    await setMaxRate(FAST_MIB, ['alpha', 'beta']);
    await r.waitFor('alpha', established, 60_000);
    await r.waitFor('beta', established, 15_000);
    const sent = num(await r.status('alpha'), 'bytesSent') - sentBefore;
    const doneBefore = total - progress(betaSyncing)!.bytesLeft;
    expect(sent + doneBefore).toBeLessThanOrEqual(1.1 * total);
    await expectIdentical();
  }, 240_000);

  test('kill -9 of the sync source at ~40 %: it comes back and finishes, resent ≤ 10 %; resync counters survive its restart', async () => {
    await r.runOk('beta', 'disconnect');
    await r.waitFor('alpha', (s) => s.connection !== 'Connected', 10_000);
    await r.runOk('alpha', 'primary');
    await writeRandom('alpha', 32 * SCALE, 96 * SCALE);
    await r.runOk('alpha', 'secondary');
    await setMaxRate(SLOW_MIB, ['alpha']);
    const dirty = num(await r.status('alpha'), 'outOfSyncBytes');
    expect(dirty).toBeGreaterThanOrEqual(96 * SCALE * MiB);
    const receivedBefore = num(await r.status('beta'), 'resyncReceivedBytesTotal');
    await r.runOk('beta', 'connect');
    const alphaSyncing = await waitFast('alpha', 'resync at 40 %', (s) => (progress(s)?.percent ?? 0) >= 40, 30_000);
    const sentTotalBefore = num(alphaSyncing, 'resyncSentBytesTotal');
    expect(sentTotalBefore).toBeGreaterThan(0);
    await kill9('alpha');
    // The target saw its resync cut short: recorded as such, with what arrived before.
    const cut = await r.waitFor('beta', (s) => s.connection !== 'Connected' && s.lastResync != null, 15_000);
    expect(cut.lastResync).toMatchObject({ direction: 'target', finished: false });
    expect(num(cut.lastResync as NraidStatus, 'bytes')).toBeGreaterThan(0);
    await setMaxRate(FAST_MIB, []);
    await r.runOk('alpha', 'up');
    // Counted over both runs: the restarted daemon starts from what it saved.
    expect(num(await r.status('alpha'), 'resyncSentBytesTotal')).toBeGreaterThanOrEqual(sentTotalBefore - 16 * SCALE * MiB);
    await r.waitFor('beta', established, 60_000);
    await r.waitFor('alpha', established, 15_000);
    const received = num(await r.status('beta'), 'resyncReceivedBytesTotal') - receivedBefore;
    expect(received).toBeGreaterThanOrEqual(dirty);
    expect(received).toBeLessThanOrEqual(1.1 * dirty);
    // Both ends timed the resumed resync on their own clocks (status lastResync, the log's "resync done").
    const [alphaDone, betaDone] = [await r.status('alpha'), await r.status('beta')];
    expect(alphaDone.lastResync).toMatchObject({ direction: 'source', finished: true });
    expect(betaDone.lastResync).toMatchObject({ direction: 'target', finished: true });
    for (const done of [alphaDone, betaDone]) {
      const last = done.lastResync as NraidStatus;
      expect(num(last, 'bytes')).toBeGreaterThan(0);
      expect(num(last, 'bytes')).toBeLessThanOrEqual(dirty);
      expect(num(last, 'rateBytesPerSec')).toBeCloseTo(num(last, 'bytes') / num(last, 'seconds'), -3);
    }
    await expectIdentical();
  }, 180_000);

  // The racing rounds take over a minute even on 64 MiB disks (each round disconnects, writes, reconnects):
  // in the full run only (npm run test:resync).
  if (!FULL) console.warn('skipping the racing-writes rounds: set NRAID_TEST_RESYNC_FULL=1 to run them (npm run test:resync)');
  (FULL ? test : test.skip)('application writes racing the resync of their own regions: the newer data survives on both nodes; the resync is throttled meanwhile', async () => {
    // The last round runs with resync-min-rate-mib = resync-max-rate-mib = FAST_MIB: applications do not
    // hold the rate down, so the source reads ahead (several chunks, each region locked) while the writes race.
    const rounds = FULL ? 3 : 1;
    const regionBytes = 48 * SCALE * MiB;
    await setMaxRate(SLOW_MIB, ['alpha', 'beta']); // ~1 s per round's resync: the writer outlasts it
    for (let round = 0; round < rounds; round++) {
      const readAhead = round === 2;
      if (readAhead) await setRates(FAST_MIB, FAST_MIB, ['alpha', 'beta']);
      await r.runOk('beta', 'disconnect');
      await r.waitFor('alpha', (s) => s.connection !== 'Connected', 10_000);
      await r.runOk('alpha', 'primary');
      const writer = await RandomWriter.create({
        device: r.nodes.alpha.device,
        offsetBytes: 16 * SCALE * MiB * round,
        sizeBytes: regionBytes,
        minWriteBytes: 4096,
        maxWriteBytes: 256 * 1024,
        seed: 1200 + round,
        baseline: 'ignore',
        concurrency: 4,
      });
      await writer.run(160); // apart: these regions are what the resync sends
      const racing = writer.run(300); // while the same regions resync
      await r.runOk('beta', 'connect');
      let throttledSeen = false;
      let writing = true;
      const watch = (async () => {
        while (writing) {
          const s = await fast('alpha');
          if (progress(s)?.throttled) throttledSeen = true;
          await sleep(50);
        }
      })();
      await racing;
      writing = false;
      await watch;
      await r.waitFor('alpha', established, 60_000);
      await r.waitFor('beta', established, 15_000);
      // At full speed the resync may end between two looks.
      if (!readAhead) expect(throttledSeen).toBe(true);
      const local = await writer.verify();
      expect(local.mismatches).toEqual([]);
      const peer = await writer.verify({ device: r.nodes.beta.diskPath });
      expect(peer.mismatches).toEqual([]);
      await r.runOk('alpha', 'secondary');
      await writer.close();
    }
    await setRates(FAST_MIB, SLOW_MIB, ['alpha', 'beta']);
    await expectIdentical();
  }, 300_000);

  test('adjust: a resync-* value out of bounds is refused and nothing changes', async () => {
    const original = fs.readFileSync(r.configPath, 'utf8');
    expect(original).toMatch(/^resync-max-rate-mib = \d+$/m);
    try {
      fs.writeFileSync(r.configPath, original.replace(/^resync-max-rate-mib = \d+$/m, 'resync-max-rate-mib = 48').replace(/^resync-min-rate-mib = \d+$/m, 'resync-min-rate-mib = 64'));
      const refused = await r.run('alpha', 'adjust');
      expect(cliError(refused)).toEqual({ code: 'NRAID_ERR_CONFIG', message: expect.stringContaining('must not exceed resync-max-rate-mib (48)') as unknown });
      fs.writeFileSync(r.configPath, original.replace(/^resync-max-rate-mib = \d+$/m, 'resync-max-rate-mib = 0'));
      expect(cliError(await r.run('alpha', 'adjust')).code).toBe('NRAID_ERR_CONFIG');
    } finally {
      fs.writeFileSync(r.configPath, original);
    }
    await r.runOk('alpha', 'adjust');
    expect(established(await r.status('alpha'))).toBe(true);
  }, 60_000);
});
