/**
 * Issue 10 item 6, a Secondary killed with -9 during protocol C writes: the
 * Primary's writes must go on (a write waits at most about the ping timeout,
 * then completes), the bitmap must record what the peer missed (status
 * outOfSyncBytes covers every write made while it was away), and when the
 * Secondary comes back a resync makes both data areas identical (sha256).
 *
 * Twice: a plain kill -9 (the kernel closes the peer's sockets, so the
 * Primary learns at once), and a Secondary frozen first (SIGSTOP: its kernel
 * still accepts bytes but nothing answers, as when a server hangs or loses
 * power), so only the ping timeout can release the writes waiting for its
 * acknowledgements; it is killed while frozen.
 */
import { adminCall } from '../../src/admin';
import { makeResource, NraidStatus, TestResource } from '../harness/cluster';
import { BLOCK_BYTES, mulberry32, RandomWriter, sha256Range } from '../harness/direct-io';
import { describeIntegration } from '../harness/prereq';
import { RangeSet } from '../harness/range-set';
import { adminSocketOf } from '../harness/role-watch';
import { bringUpPair, FAST_FAILOVER_CONFIG, num, processAlive, settled, until, withDaemonLogs } from '../harness/helpers';

const MiB = 1024 * 1024;
const WORKERS = 4;
/** Each worker writes in its own slice, so that no two writes in flight overlap. */
const SLICE_BYTES = 4 * MiB;
const WRITE_BYTES_MAX = 256 * 1024;
const PING_TIMEOUT_MS = FAST_FAILOVER_CONFIG['ping-timeout-ms'];
/** Slack over the ping timeout for a write on a loaded 2-core machine (a dd per write). */
const WRITE_LATENCY_SLACK_MS = 3000;

interface TimedWrite {
  startMs: number;
  endMs: number;
  offsetBytes: number;
  lengthBytes: number;
}

describeIntegration('a Secondary killed during protocol C writes', ['root', 'fuse', 'loop', 'dd', 'nraid-cli'], () => {
  let r: TestResource;
  const writers: RandomWriter[] = [];
  let frozenPid: number | undefined;

  beforeAll(async () => {
    r = await makeResource({ nodes: 2, sizeBytes: 32 * MiB, protocol: 'C', extra: { ...FAST_FAILOVER_CONFIG } });
    await bringUpPair(r);
  }, 90_000);

  afterAll(async () => {
    // A daemon this test froze must not outlive it frozen (cleanup's down would wait on it).
    if (frozenPid !== undefined && processAlive(frozenPid)) process.kill(frozenPid, 'SIGKILL');
    for (const w of writers) await w.close();
    await r?.cleanup();
  }, 60_000);

  /** alpha's status straight from its admin socket (no CLI process per sample), polled every 20 ms until `predicate` holds. */
  async function alphaUntil(predicate: (s: NraidStatus) => boolean, timeoutMs: number): Promise<NraidStatus> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = (await adminCall(adminSocketOf(r, 'alpha'), 'status', {})) as NraidStatus;
      if (predicate(s)) return s;
      if (Date.now() > deadline) throw new Error(`alpha: timed out after ${timeoutMs} ms; last status ${JSON.stringify(s)}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  /**
   * Writes from WORKERS workers while `fault` takes beta away; returns once 20
   * writes started after alpha declared beta gone. Checks the latency bound,
   * the bitmap, then brings beta back and compares both data areas.
   */
  async function writeThroughLoss(label: string, fault: (betaPid: number) => Promise<void>): Promise<void> {
    const w = await RandomWriter.create({ device: r.nodes.alpha.device, sizeBytes: WORKERS * SLICE_BYTES, maxWriteBytes: WRITE_BYTES_MAX, baseline: 'ignore' });
    writers.push(w);
    const writes: TimedWrite[] = [];
    let stop = false;
    const random = mulberry32(w.seed);
    const rand = (n: number): number => random() % n;
    const worker = async (slice: number): Promise<void> => {
      while (!stop) {
        const lengthBytes = (1 + rand(WRITE_BYTES_MAX / BLOCK_BYTES)) * BLOCK_BYTES;
        const offsetBytes = slice * SLICE_BYTES + rand((SLICE_BYTES - lengthBytes) / BLOCK_BYTES + 1) * BLOCK_BYTES;
        const startMs = Date.now();
        await w.writeAt(offsetBytes, lengthBytes);
        writes.push({ startMs, endMs: Date.now(), offsetBytes, lengthBytes });
      }
    };
    const running = Promise.all(Array.from({ length: WORKERS }, (_, i) => worker(i))).finally(() => (stop = true));
    try {
      // Replicated writes first, then the fault while they run.
      await until('10 replicated writes', () => writes.length >= 10 || stop, 30_000);
      const betaPid = num(await r.status('beta'), 'pid');
      const faultMs = Date.now();
      await fault(betaPid);
      const away = await alphaUntil((s) => s.connection !== 'Connected', PING_TIMEOUT_MS + 10_000);
      const awayMs = Date.now();
      expect(away.role).toBe('Primary');
      // Writes go on while beta is away.
      await until('20 writes after the peer was declared gone', () => writes.filter((x) => x.startMs > awayMs).length >= 20 || stop, 30_000);
      stop = true;
      await running;

      // No write failed, and none waited much longer than the ping timeout.
      expect(w.failures).toEqual([]);
      const slowestMs = Math.max(...writes.map((x) => x.endMs - x.startMs));
      expect(slowestMs).toBeLessThan(PING_TIMEOUT_MS + WRITE_LATENCY_SLACK_MS);
      // Writes were in flight when the fault hit, and completed after it.
      expect(writes.filter((x) => x.startMs < faultMs && x.endMs > faultMs).length).toBeGreaterThan(0);

      // The bitmap covers every write made while beta was away (4 KiB granularity: the union of their ranges).
      const missed = new RangeSet();
      for (const x of writes) if (x.startMs >= awayMs) missed.add(x.offsetBytes, x.offsetBytes + x.lengthBytes);
      const alone = await alphaUntil(() => true, 5_000);
      expect(alone.connection).not.toBe('Connected');
      expect(num(alone, 'outOfSyncBytes')).toBeGreaterThanOrEqual(missed.totalBytes);
      console.log(
        `${label}: ${writes.length} writes (seed ${w.seed}), slowest ${slowestMs} ms, peer declared gone ${awayMs - faultMs} ms after the fault, ` +
          `${missed.totalBytes} bytes written while away, outOfSyncBytes ${num(alone, 'outOfSyncBytes')}`,
      );
    } finally {
      stop = true;
      await running.catch(() => undefined);
    }

    // beta comes back: a resync, then both data areas are identical and hold every acknowledged write.
    await r.runOk('beta', 'up');
    const a = await r.waitFor('alpha', settled, 60_000);
    await r.waitFor('beta', settled, 15_000);
    const dataSizeBytes = num(a, 'dataSizeBytes');
    expect(await sha256Range(r.nodes.beta.diskPath, 0, dataSizeBytes)).toBe(await sha256Range(r.nodes.alpha.diskPath, 0, dataSizeBytes));
    await w.verifyOrThrow();
    await w.verifyOrThrow({ device: r.nodes.beta.diskPath });
  }

  test('kill -9: the Primary writes on, the bitmap covers what beta missed, and the resync makes both disks identical', async () => {
    await withDaemonLogs(r, () =>
      writeThroughLoss('secondary-killed', async (pid) => {
        process.kill(pid, 'SIGKILL');
        await until(`beta (pid ${pid}) gone`, () => !processAlive(pid), 15_000);
      }),
    );
  }, 120_000);

  test('frozen, then kill -9: writes wait at most about the ping timeout, then complete; same bitmap and resync', async () => {
    await withDaemonLogs(r, () =>
      writeThroughLoss('secondary-frozen', async (pid) => {
        frozenPid = pid;
        process.kill(pid, 'SIGSTOP');
        // Killed only once alpha gave up on it: until then its sockets stay open and silent.
        await alphaUntil((s) => s.connection !== 'Connected', PING_TIMEOUT_MS + 10_000);
        process.kill(pid, 'SIGKILL');
        await until(`beta (pid ${pid}) gone`, () => !processAlive(pid), 15_000);
        frozenPid = undefined;
      }),
    );
  }, 120_000);
});
