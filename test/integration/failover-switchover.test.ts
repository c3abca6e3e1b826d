/**
 * Planned failover (failover issue): `switchover` moves the Primary role to
 * the peer with nothing lost, in both directions, run once on the Primary and
 * once on the Secondary. An ext4 made on alpha is intact on beta (files with
 * known sha256s, e2fsck -fn clean), written there, and intact again back on
 * alpha. Each switchover takes at most 3 s of wall time, the new Primary has
 * its device when the command returns, and afterwards both backing disks hold
 * the same bytes.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { makeTempSubdir, mountPoints } from '../harness/cleanup';
import { makeResource, NodeName, TestResource } from '../harness/cluster';
import { compareRanges, RandomWriter } from '../harness/direct-io';
import { execOk, execTool } from '../harness/exec';
import { describeIntegration } from '../harness/prereq';
import { bringUpPair, FAST_FAILOVER_CONFIG, fsckClean, otherNode, settled } from '../harness/helpers';

const MiB = 1024 * 1024;
const SWITCHOVER_MAX_MS = 3000;

function sha256(data: Buffer): string {
  return crypto.createHash('sha256').update(data).digest('hex');
}

/** Waits until both nodes are Established with nothing in flight, then compares their backing disks' data areas. */
async function expectDisksIdentical(r: TestResource): Promise<void> {
  const a = await r.waitFor('alpha', settled, 20_000);
  await r.waitFor('beta', settled, 20_000);
  const size = a.dataSizeBytes as number;
  expect(size).toBeGreaterThan(0);
  const cmp = await compareRanges(r.nodes.alpha.diskPath, r.nodes.beta.diskPath, 0, size);
  if (!cmp.equal) {
    throw new Error(`alpha's and beta's disks differ in ${cmp.mismatchBlocks} blocks: ${JSON.stringify(cmp.mismatches.slice(0, 5))}`);
  }
  expect(cmp.comparedBytes).toBe(size);
}

/** Runs `switchover` on `on`, asserts the wall time and that `newPrimary` holds the role and the device when it returns. */
async function switchover(r: TestResource, on: NodeName, newPrimary: NodeName): Promise<number> {
  const t0 = process.hrtime.bigint();
  const res = await r.run(on, 'switchover');
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (res.code !== 0) throw new Error(`switchover on ${on} exited ${res.code}: ${res.stderr}`);
  // Already true when the command returns: a script may mount right away.
  const p = await r.status(newPrimary);
  const s = await r.status(otherNode(newPrimary));
  expect({ node: newPrimary, role: p.role, exposed: p.exposed }).toEqual({ node: newPrimary, role: 'Primary', exposed: true });
  expect({ node: otherNode(newPrimary), role: s.role, exposed: s.exposed }).toEqual({ node: otherNode(newPrimary), role: 'Secondary', exposed: false });
  expect(fs.readlinkSync(r.nodes[newPrimary].device)).toBe(p.loopDevice);
  expect(fs.existsSync(r.nodes[otherNode(newPrimary)].device)).toBe(false);
  expect(ms).toBeLessThanOrEqual(SWITCHOVER_MAX_MS);
  return ms;
}

/** Every regular file under `root` (lost+found aside) with its sha256. */
function fileTree(root: string): Map<string, string> {
  const found = new Map<string, string>();
  const walk = (rel: string): void => {
    for (const entry of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const child = path.join(rel, entry.name);
      if (entry.isDirectory()) {
        if (child !== 'lost+found') walk(child);
      } else {
        found.set(child, sha256(fs.readFileSync(path.join(root, child))));
      }
    }
  };
  walk('');
  return found;
}

function writeFiles(root: string, tag: string, into: Map<string, string>): void {
  const sizes = [0, 1, 4095, 4096, 4097, 65_543, 300_000, MiB + 17, 2 * MiB];
  const dirs = [`${tag}`, `${tag}/x`, `${tag}/x/y`, `${tag}-z`];
  let n = 0;
  for (const dir of dirs) {
    fs.mkdirSync(path.join(root, dir), { recursive: true });
    for (let i = 0; i < 3; i++) {
      const size = sizes[n % sizes.length];
      const rel = path.join(dir, `f${n}-${size}.bin`);
      const data = crypto.randomBytes(size);
      fs.writeFileSync(path.join(root, rel), data);
      into.set(rel, sha256(data));
      n++;
    }
  }
}

const sorted = (m: Map<string, string>) => Object.fromEntries([...m].sort());

describeIntegration('failover: switchover', ['root', 'fuse', 'loop', 'dd', 'mkfs.ext4', 'e2fsck', 'nraid-cli'], () => {
  let r: TestResource;
  let mnt: string;
  const timings: number[] = [];

  beforeAll(async () => {
    r = await makeResource({ nodes: 2, sizeBytes: 160 * MiB, extra: FAST_FAILOVER_CONFIG });
    mnt = makeTempSubdir('mnt');
    await bringUpPair(r);
  }, 120_000);

  afterAll(async () => {
    if (mnt !== undefined && mountPoints().includes(mnt)) await execTool('umount', [mnt]);
    console.log(`switchover wall times (ms): ${timings.map((t) => t.toFixed(0)).join(', ')}`);
    await r?.cleanup();
  }, 60_000);

  test('ext4 across a switchover on the Primary and back on the Secondary: files intact, fsck clean, disks identical', async () => {
    const files = new Map<string, string>();
    await execOk('mkfs.ext4', ['-q', '-F', r.nodes.alpha.device]);
    await execOk('mount', [r.nodes.alpha.device, mnt]);
    writeFiles(mnt, 'one', files);
    await execOk('umount', [mnt]);

    // alpha -> beta, run on the Primary.
    timings.push(await switchover(r, 'alpha', 'beta'));
    await fsckClean(r.nodes.beta.device);
    await execOk('mount', [r.nodes.beta.device, mnt]);
    expect(sorted(fileTree(mnt))).toEqual(sorted(files));
    writeFiles(mnt, 'two', files);
    fs.rmSync(path.join(mnt, 'one', 'x', 'y'), { recursive: true });
    for (const k of [...files.keys()]) if (k.startsWith('one/x/y/')) files.delete(k);
    const changed = [...files.keys()].find((k) => k.startsWith('one-z/'))!;
    fs.appendFileSync(path.join(mnt, changed), 'appended on beta');
    files.set(changed, sha256(fs.readFileSync(path.join(mnt, changed))));
    await execOk('umount', [mnt]);
    await expectDisksIdentical(r);

    // beta -> alpha, run on the Secondary this time.
    timings.push(await switchover(r, 'alpha', 'alpha'));
    await fsckClean(r.nodes.alpha.device);
    await execOk('mount', [r.nodes.alpha.device, mnt]);
    expect(sorted(fileTree(mnt))).toEqual(sorted(files));
    await execOk('umount', [mnt]);
    await expectDisksIdentical(r);
  }, 120_000);

  test('raw writes just before each switchover are on the new Primary, both ways, from either side', async () => {
    const size = (await r.status('alpha')).dataSizeBytes as number;
    // The upper half: the ext4 above lives at the start and is not checked here.
    const region = { offsetBytes: Math.floor(size / 2 / MiB) * MiB, sizeBytes: 32 * MiB };
    const moves: [NodeName, NodeName][] = [
      ['beta', 'beta'],   // on the Secondary: beta takes over
      ['beta', 'alpha'],  // on the Primary: alpha takes over
      ['alpha', 'beta'],  // on the Primary
      ['alpha', 'alpha'], // on the Secondary
    ];
    let primary: NodeName = 'alpha';
    const w = await RandomWriter.create({ device: r.nodes.alpha.device, ...region, baseline: 'ignore', concurrency: 2, maxWriteBytes: 256 * 1024 });
    try {
      for (const [on, next] of moves) {
        // One model for the whole test; the writes go to whichever node is Primary.
        (w as unknown as { device: string }).device = r.nodes[primary].device;
        await w.run(40);
        timings.push(await switchover(r, on, next));
        primary = next;
        const onNew = await w.verify({ device: r.nodes[primary].device });
        if (!onNew.ok) throw new Error(`after switchover to ${primary}: ${onNew.summary}`);
        await expectDisksIdentical(r);
      }
    } finally {
      await w.close();
    }
    expect(w.log.length).toBe(160);
  }, 120_000);
});
