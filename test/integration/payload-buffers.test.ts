/**
 * Where a Secondary's received payloads live (native/io_buffers.h): a large
 * payload (a resync chunk, a 1 MiB write) in huge pages, so that its direct
 * write is one disk request and not two (a 1 MiB buffer of scattered 4 KiB
 * pages is more segments than a request takes: split, as a full sync's
 * requests were, 620-960 KiB, at 0.8 of a dd copy); a small payload in small
 * pages, so that 4 KiB writes do not make a 2 MiB huge page resident each.
 *
 * Measured on the Secondary's daemon: AnonHugePages in /proc/PID/smaps_rollup.
 */
import * as fs from 'fs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { makeResource, TestResource } from '../harness/cluster';
import { describeIntegration } from '../harness/prereq';

const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;

function anonHugeBytes(pid: number): number {
  const m = /^AnonHugePages:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
  if (m === null) throw new Error(`no AnonHugePages line in /proc/${pid}/smaps_rollup`);
  return Number(m[1]) * KiB;
}

describeIntegration('payload buffers: large payloads in huge pages, small ones in small pages', ['root', 'fuse', 'loop', 'dd', 'nraid-cli'], () => {
  let r: TestResource;

  beforeAll(async () => {
    r = await makeResource({ nodes: 2, sizeBytes: 96 * MiB, protocol: 'C' });
    // No initial sync (its chunks would make the large buffers resident before the test looks).
    for (const node of ['alpha', 'beta'] as const) {
      await r.runOk(node, 'create-md', ['--assume-clean']);
      await r.runOk(node, 'up');
    }
    await r.waitFor('alpha', (s) => s.connection === 'Connected', 60_000);
    await r.runOk('alpha', 'primary');
    await r.waitFor('alpha', (s) => s.replication === 'Established' && s.peerDisk === 'UpToDate', 60_000);
  }, 120_000);

  afterAll(async () => {
    await r?.cleanup();
  }, 60_000);

  test('4 KiB writes leave the Secondary without a new huge page; 1 MiB writes land in huge pages', async () => {
    const thp = fs.readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8');
    expect(thp).not.toMatch(/\[never\]/); // transparent huge pages off: nothing here can be seen

    const secondary = (await r.status('beta')).pid as number;
    expect(secondary).toBeGreaterThan(0);
    const before = anonHugeBytes(secondary);

    // 256 writes of 4 KiB, each acknowledged by the Secondary (protocol C) before the next.
    await run('dd', ['if=/dev/urandom', `of=${r.nodes.alpha.device}`, 'bs=4k', 'count=256', 'seek=1000', 'oflag=direct', 'status=none']);
    const afterSmall = anonHugeBytes(secondary);
    // All in huge pages, the first would have made one resident (2 MiB); only other memory of the
    // process (node's heap) may move, and not by a whole huge page of ours.
    expect(afterSmall - before).toBeLessThan(2 * MiB);

    await run('dd', ['if=/dev/urandom', `of=${r.nodes.alpha.device}`, 'bs=1M', 'count=16', 'oflag=direct', 'status=none']);
    const afterLarge = anonHugeBytes(secondary);
    expect(afterLarge - afterSmall).toBeGreaterThanOrEqual(2 * MiB);

    const [alpha, beta] = await Promise.all(
      (['alpha', 'beta'] as const).map(async (node) => (await run('sh', ['-c', `head -c ${16 * MiB} "$1" | sha256sum`, 'sha', r.nodes[node].diskPath])).stdout),
    );
    expect(beta).toBe(alpha);
  }, 120_000);
});
