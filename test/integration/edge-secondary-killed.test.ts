/**
 * Issue 10 item 6, a Secondary killed with -9 during protocol C writes: the
 * Primary's writes must go on (a write waits at most about the ping timeout,
 * then completes), the bitmap must record what the peer missed (status
 * outOfSyncBytes covers every write made while it was away), and when the
 * Secondary comes back a resync makes both data areas identical (sha256).
 */
import { makeResource, TestResource } from '../harness/cluster';
import { BLOCK_BYTES, mulberry32, RandomWriter, sha256Range } from '../harness/direct-io';
import { describeIntegration } from '../harness/prereq';
import { RangeSet } from '../harness/range-set';
import { bringUpPair, FAST_FAILOVER_CONFIG, num, processAlive, settled, until, withDaemonLogs } from '../harness/helpers';

const MiB = 1024 * 1024;
const WORKERS = 4;
/** Each worker writes in its own slice, so that no two writes in flight overlap. */
const SLICE_BYTES = 8 * MiB;
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
  let writer: RandomWriter | undefined;

  beforeAll(async () => {
    r = await makeResource({ nodes: 2, sizeBytes: 48 * MiB, protocol: 'C', extra: { ...FAST_FAILOVER_CONFIG } });
    await bringUpPair(r);
  }, 90_000);

  afterAll(async () => {
    await writer?.close();
    await r?.cleanup();
  }, 60_000);

  test('the Primary writes on after the ping timeout, the bitmap covers what beta missed, and the resync makes both disks identical', async () => {
    await withDaemonLogs(r, async () => {
      writer = await RandomWriter.create({ device: r.nodes.alpha.device, sizeBytes: WORKERS * SLICE_BYTES, maxWriteBytes: WRITE_BYTES_MAX });
      const w = writer;
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
      const running = Promise.all(Array.from({ length: WORKERS }, (_, i) => worker(i)));

      // Replicated writes first, then the kill while they run.
      await until('20 replicated writes', () => writes.length >= 20, 30_000);
      const beta = await r.status('beta');
      const betaPid = num(beta, 'pid');
      const killMs = Date.now();
      process.kill(betaPid, 'SIGKILL');
      await until(`beta (pid ${betaPid}) gone`, () => !processAlive(betaPid), 5_000);
      const away = await r.waitFor('alpha', (s) => s.connection !== 'Connected', PING_TIMEOUT_MS + 10_000);
      const awayMs = Date.now();
      expect(away.role).toBe('Primary');
      // Writes go on while beta is away.
      await until('30 writes after the peer was declared gone', () => writes.filter((x) => x.startMs > awayMs).length >= 30, 30_000);
      stop = true;
      await running;

      // No write failed, and none waited much longer than the ping timeout.
      expect(w.failures).toEqual([]);
      const slowestMs = Math.max(...writes.map((x) => x.endMs - x.startMs));
      expect(slowestMs).toBeLessThan(PING_TIMEOUT_MS + WRITE_LATENCY_SLACK_MS);
      // Writes started before the kill completed after it: they were in flight to the dead peer.
      expect(writes.filter((x) => x.startMs < killMs).length).toBeGreaterThan(0);

      // The bitmap covers every write made while beta was away (4 KiB granularity: the union of their ranges).
      const missed = new RangeSet();
      for (const x of writes) if (x.startMs >= awayMs) missed.add(x.offsetBytes, x.offsetBytes + x.lengthBytes);
      const alone = await r.status('alpha');
      expect(alone.connection).not.toBe('Connected');
      expect(num(alone, 'outOfSyncBytes')).toBeGreaterThanOrEqual(missed.totalBytes);
      console.log(
        `secondary-killed: ${writes.length} writes (seed ${w.seed}), slowest ${slowestMs} ms, peer gone after ${awayMs - killMs} ms, ` +
          `${missed.totalBytes} bytes written while away, outOfSyncBytes ${num(alone, 'outOfSyncBytes')}`,
      );

      // beta comes back: a resync, then both data areas are identical.
      await r.runOk('beta', 'up');
      const a = await r.waitFor('alpha', settled, 60_000);
      await r.waitFor('beta', settled, 15_000);
      const dataSizeBytes = num(a, 'dataSizeBytes');
      const [alphaSum, betaSum] = [await sha256Range(r.nodes.alpha.diskPath, 0, dataSizeBytes), await sha256Range(r.nodes.beta.diskPath, 0, dataSizeBytes)];
      expect(betaSum).toBe(alphaSum);
      await w.verifyOrThrow();
      await w.verifyOrThrow({ device: r.nodes.beta.diskPath });
    });
  }, 120_000);
});
