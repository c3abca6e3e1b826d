/**
 * Regression (found by the torture runner, seed 42 step 72: after the pair
 * settled, 5 blocks differed between the disks): each daemon run restarted
 * its activity-log sequence at 1, while the ring on disk still held the
 * previous run's transactions with higher sequences. After a second crash
 * of a Primary, recovery takes the transaction with the highest sequence,
 * an older run's, so the extents this run had just written were not marked
 * out of sync and the resync skipped them: the nodes stayed different while
 * both said UpToDate.
 *
 * One node, no peer: Primary, writes to extents 0..5, kill -9; up, Primary,
 * a write to extent 12, kill -9. The newest transaction on disk (what the
 * next `up` recovers from) must name extent 12 (before the fix: the first
 * run's [0..5]).
 */
import { newestTransaction } from '../../src/activity-log';
import { computeLayout } from '../../src/metadata';
import { makeResource, TestResource } from '../harness/cluster';
import { readDirect, writeDirect } from '../harness/direct-io';
import { processAlive, until } from '../harness/helpers';
import { describeIntegration } from '../harness/prereq';

const MiB = 1024 * 1024;
const DISK_BYTES = 64 * MiB;
const EXTENT_BYTES = 4 * MiB;
const FIRST_RUN_EXTENTS = [0, 1, 2, 3, 4, 5];
const SECOND_RUN_EXTENT = 12;

describeIntegration('activity log: a new run continues the sequence of the ring on disk', ['root', 'fuse', 'loop', 'nraid-cli', 'dd'], () => {
  let r: TestResource;

  afterAll(async () => {
    await r?.cleanup();
  }, 60_000);

  const crash = async (): Promise<void> => {
    const pid = Number((await r.status('alpha')).pid);
    process.kill(pid, 'SIGKILL');
    await until(`daemon ${pid} gone`, () => !processAlive(pid), 10_000);
  };

  const onDiskNewest = async (): Promise<number[]> => {
    const layout = computeLayout(DISK_BYTES);
    const area = await readDirect(r.nodes.alpha.diskPath, layout.activityLogOffsetBytes, layout.activityLogSizeBytes);
    return newestTransaction(area)?.extents ?? [];
  };

  test('after the second crash the newest transaction names what the second run wrote', async () => {
    r = await makeResource({ nodes: 1, sizeBytes: DISK_BYTES });
    await r.runOk('alpha', 'create-md');
    await r.runOk('alpha', 'up');
    await r.runOk('alpha', 'primary', ['--force']);
    for (const e of FIRST_RUN_EXTENTS) await writeDirect(r.nodes.alpha.device, e * EXTENT_BYTES, Buffer.alloc(4096, 1));
    await crash();
    await r.runOk('alpha', 'up');
    await r.runOk('alpha', 'primary', ['--force']);
    await writeDirect(r.nodes.alpha.device, SECOND_RUN_EXTENT * EXTENT_BYTES, Buffer.alloc(4096, 2));
    await crash();
    const newest = await onDiskNewest();
    expect({ newestNamesSecondRun: newest.includes(SECOND_RUN_EXTENT), newest }).toEqual({ newestNamesSecondRun: true, newest });
  }, 120_000);
});
