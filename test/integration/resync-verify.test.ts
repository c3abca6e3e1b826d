/**
 * Checksum resync, online verify with repair, and create-md --assume-clean
 * (resync issue 12, Deliver 4-6), on two daemons over loop devices:
 *
 *  - --assume-clean on both nodes of a new pair: both UpToDate with the same
 *    generation at once, no sync; beta's disk held junk in 3 blocks before,
 *    and verify must find exactly those;
 *  - 10 random 4 KiB blocks flipped directly on the Secondary's backing
 *    device: `nraid verify` reports runs covering exactly the 3 + 10 blocks,
 *    marks them out of sync (event, status, metrics), and `nraid resync`
 *    makes both data areas identical without a disconnect;
 *  - verify while fio writes to the Primary's device: no false difference;
 *  - csums = true, a bitmap marking 256 MiB (64 MiB in the default suite) of
 *    which 1 % really differs: RS_DATA bytes sent stay under 2 % of it, both
 *    data areas end equal;
 *  - bad input: verify on a Secondary with no peer, verify on the receiving
 *    side, --start past the end, resync with nothing marked: clear errors,
 *    nothing changed.
 */
import * as crypto from 'crypto';
import { makeResource, NodeName, NraidStatus, TestResource } from '../harness/cluster';
import { readDirect, sha256Range, writeDirect } from '../harness/direct-io';
import { execOk } from '../harness/exec';
import { describeIntegration } from '../harness/prereq';
import { cliError, connectedUpToDate, quiesce, withDaemonLogs } from '../harness/helpers';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 4 * KiB;
// The 256 MiB with NRAID_TEST_RESYNC_FULL=1 (npm run test:resync); 64 MiB in the default suite.
const MARKED_BYTES = (process.env.NRAID_TEST_RESYNC_FULL === '1' ? 256 : 64) * MiB;
const DISK_BYTES = MARKED_BYTES + 16 * MiB;
const NODES: NodeName[] = ['alpha', 'beta'];
const FAST = { 'ping-interval-ms': 500, 'ping-timeout-ms': 5000, 'connect-retry-ms': 100 };

interface Verify {
  running: boolean;
  positionBytes: number;
  stopBytes: number;
  mismatchBytes: number;
  mismatchRanges: string[];
}

/** The blocks named by "OFFSET+LENGTH" runs. */
function blocksOf(ranges: readonly string[]): number[] {
  const blocks: number[] = [];
  for (const range of ranges) {
    const [offset, length] = range.split('+').map(Number);
    for (let b = offset; b < offset + length; b += BLOCK) blocks.push(b / BLOCK);
  }
  return blocks.sort((a, b) => a - b);
}

/** `count` distinct random block numbers in [0, limitBytes). */
function randomBlocks(count: number, limitBytes: number, avoid: readonly number[] = []): number[] {
  const chosen = new Set<number>();
  while (chosen.size < count) {
    const b = crypto.randomInt(0, limitBytes / BLOCK);
    if (!avoid.includes(b)) chosen.add(b);
  }
  return [...chosen].sort((a, b) => a - b);
}

async function dataHashes(r: TestResource, dataSizeBytes: number): Promise<Record<NodeName, string>> {
  const [alpha, beta] = await Promise.all(NODES.map((n) => sha256Range(r.nodes[n].disk!.device, 0, dataSizeBytes)));
  return { alpha, beta };
}

async function runVerify(r: TestResource, flags: string[] = []): Promise<Verify> {
  await r.runOk('alpha', 'verify', flags);
  const s = await r.waitFor('alpha', (st) => (st.verify as Verify | null)?.running === false, 120_000);
  return s.verify as Verify;
}

describeIntegration('checksum resync, online verify and repair, --assume-clean', ['root', 'loop', 'fuse', 'nraid-cli'], () => {
  let r: TestResource;
  let dataSizeBytes = 0;
  const junk = randomBlocks(3, 64 * MiB);

  beforeAll(async () => {
    r = await makeResource({ nodes: 2, sizeBytes: DISK_BYTES, extra: { ...FAST, csums: true } });
    // Junk on beta before create-md: --assume-clean takes the disks as they are.
    for (const b of junk) await writeDirect(r.nodes.beta.disk!.device, b * BLOCK, crypto.randomBytes(BLOCK));
    for (const n of NODES) await r.runOk(n, 'create-md', ['--assume-clean']);
    for (const n of NODES) await r.runOk(n, 'up');
    const alpha = await r.waitFor('alpha', connectedUpToDate, 60_000);
    await r.waitFor('beta', connectedUpToDate, 60_000);
    dataSizeBytes = Number(alpha.dataSizeBytes);
    await r.runOk('alpha', 'primary'); // UpToDate: no --force needed
  }, 180_000);

  afterAll(async () => {
    await r?.cleanup();
  }, 60_000);

  test('--assume-clean: both UpToDate with the same generation, no sync; verify finds the junk', async () => {
    const alpha = await r.status('alpha');
    const beta = await r.status('beta');
    expect(alpha.syncDecision).toBe('none');
    expect(alpha.disk).toBe('UpToDate');
    expect(beta.disk).toBe('UpToDate');
    expect((alpha.uuids as { current: string }).current).toBe((beta.uuids as { current: string }).current);
    expect(alpha.outOfSyncBytes).toBe(0);

    // Bad input first: beta receives the data link; --start past the end; nothing to resync.
    const onTarget = await r.run('beta', 'verify');
    expect(cliError(onTarget).code).toBe('NRAID_ERR_STATE');
    expect(cliError(onTarget).message).toMatch(/run it on alpha/);
    const past = await r.run('alpha', 'verify', ['--start', String(dataSizeBytes + BLOCK)]);
    expect(cliError(past).code).toBe('NRAID_ERR_USAGE');
    expect(cliError(past).message).toMatch(/past the end/);
    const nothing = await r.run('alpha', 'resync');
    expect(cliError(nothing).message).toMatch(/nothing to resync/);
    expect(((await r.status('alpha')).verify ?? null)).toBeNull();

    const v = await runVerify(r);
    expect(v.positionBytes).toBe(dataSizeBytes);
    expect(blocksOf(v.mismatchRanges)).toEqual(junk);
    expect(v.mismatchBytes).toBe(junk.length * BLOCK);
    expect((await r.status('alpha')).outOfSyncBytes).toBe(junk.length * BLOCK);
    await r.runOk('alpha', 'resync');
    await r.waitFor('alpha', (s) => s.outOfSyncBytes === 0 && s.lagBytes === 0, 60_000);
    const hashes = await dataHashes(r, dataSizeBytes);
    expect(hashes.beta).toBe(hashes.alpha);
  }, 240_000);

  test('10 blocks flipped on the Secondary: verify reports exactly them, resync repairs them without a disconnect', async () => {
    // Some data first, so that a flipped block differs from something real.
    await writeDirect(r.nodes.alpha.device, 0, crypto.randomBytes(16 * MiB));
    await quiesce(r);
    const flipped = randomBlocks(10, dataSizeBytes);
    for (const b of flipped) {
      const block = await readDirect(r.nodes.beta.disk!.device, b * BLOCK, BLOCK);
      block[crypto.randomInt(0, BLOCK)] ^= 0x10;
      await writeDirect(r.nodes.beta.disk!.device, b * BLOCK, block);
    }
    const failuresBefore = (await r.status('alpha')).linkFailures;
    const v = await runVerify(r);
    expect(blocksOf(v.mismatchRanges)).toEqual(flipped);
    const alpha = await r.status('alpha');
    expect(alpha.outOfSyncBytes).toBe(10 * BLOCK);
    await r.runOk('alpha', 'resync');
    await r.waitFor('alpha', (s) => s.outOfSyncBytes === 0 && s.lagBytes === 0, 60_000);
    const after = await r.status('alpha');
    expect(after.linkFailures).toBe(failuresBefore); // repaired in the same session
    expect(after.replication).toBe('Established');
    const hashes = await dataHashes(r, dataSizeBytes);
    expect(hashes.beta).toBe(hashes.alpha);
    // Nothing left to find.
    expect((await runVerify(r)).mismatchBytes).toBe(0);
  }, 240_000);

  test('verify while fio writes to the device: no false differences', async () => {
    const fio = execOk('fio', [
      '--name=verify-load', `--filename=${r.nodes.alpha.device}`, '--rw=randwrite', '--bs=4k', '--direct=1',
      '--ioengine=libaio', '--iodepth=8', '--time_based', '--runtime=6', `--size=${dataSizeBytes}`, '--randrepeat=0',
    ], { timeoutMs: 60_000 });
    await new Promise((resolve) => setTimeout(resolve, 500));
    const v = await runVerify(r);
    await fio;
    expect(v.positionBytes).toBe(dataSizeBytes);
    expect(v.mismatchRanges).toEqual([]);
    expect(v.mismatchBytes).toBe(0);
    expect((await quiesce(r)).outOfSyncBytes).toBe(0);
  }, 120_000);

  test(`csums: ${MARKED_BYTES / MiB} MiB marked, 1 % differs: at most 2 % of it sent as data`, () => withDaemonLogs(r, async () => {
    const data = crypto.randomBytes(MARKED_BYTES);
    await writeDirect(r.nodes.alpha.device, 0, data, { timeoutMs: 240_000 });
    await quiesce(r, 120_000);
    await r.runOk('beta', 'disconnect');
    await r.waitFor('alpha', (s) => s.connection !== 'Connected', 15_000);

    // Bad input: a Secondary with no peer.
    const lonely = await r.run('beta', 'verify');
    expect(cliError(lonely).code).toBe('NRAID_ERR_STATE');
    expect(cliError(lonely).message).toMatch(/not connected/);

    // The same bytes again, 1 % of the blocks changed: every bit of the marked range is set.
    const changed = randomBlocks(Math.round((MARKED_BYTES / BLOCK) * 0.01), MARKED_BYTES);
    for (const b of changed) crypto.randomFillSync(data, b * BLOCK, BLOCK);
    await writeDirect(r.nodes.alpha.device, 0, data, { timeoutMs: 240_000 });
    expect((await r.status('alpha')).outOfSyncBytes).toBeGreaterThanOrEqual(MARKED_BYTES);
    const before = (await r.status('alpha')).resyncSent as { dataBytes: number; equalBytes: number };

    await r.runOk('beta', 'connect');
    const done = await r.waitFor('alpha', (s: NraidStatus) => connectedUpToDate(s) && s.replication === 'Established' && s.outOfSyncBytes === 0, 120_000);
    const sent = done.resyncSent as { dataBytes: number; equalBytes: number };
    const dataBytes = sent.dataBytes - before.dataBytes;
    expect(dataBytes).toBeGreaterThanOrEqual(changed.length * BLOCK);
    expect(dataBytes).toBeLessThanOrEqual(0.02 * MARKED_BYTES);
    expect(sent.equalBytes - before.equalBytes).toBeGreaterThanOrEqual(0.97 * MARKED_BYTES);
    const hashes = await dataHashes(r, dataSizeBytes);
    expect(hashes.beta).toBe(hashes.alpha);
  }), 480_000);
});
