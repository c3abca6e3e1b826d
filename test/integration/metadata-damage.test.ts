/**
 * Metadata damage on a real resource (issue 10, item 5), through the CLI and
 * a loop device: a bit flipped with dd in the newest superblock slot, then
 * `up`; dump-md / restore-md round trip and refusals.
 *
 * Regression: a corrupt newest slot was skipped silently; the node came up
 * from the older slot (UpToDate after an Inconsistent write), logged a wrong
 * "crashed primary" warning and overwrote the corrupt slot (no evidence).
 */
import * as fs from 'fs';
import * as path from 'path';
import * as limits from '../../src/limits';
import { classifySlot, superblockSlotOffsetBytes } from '../../src/metadata';
import { freePorts, makeResource, TestResource } from '../harness/cluster';
import { readDirect, sizeOf, writeDirect } from '../harness/direct-io';
import { expectRefused } from '../harness/helpers';
import { describeIntegration } from '../harness/prereq';

const MiB = 1024 * 1024;

describeIntegration('metadata damage: a lost superblock slot, dump-md and restore-md', ['root', 'fuse', 'loop', 'dd', 'nraid-cli'], () => {
  let r: TestResource;
  let disk: string;
  let deviceBytes: number;
  let metricsPort: number;

  beforeAll(async () => {
    [metricsPort] = await freePorts(1);
    r = await makeResource({ nodes: 1, sizeBytes: 64 * MiB, extra: { 'metrics-port': metricsPort } });
    disk = r.nodes.alpha.diskPath;
    deviceBytes = await sizeOf(disk);
    await r.runOk('alpha', 'create-md');
  }, 30_000);

  afterAll(async () => {
    await r?.cleanup();
  }, 60_000);

  /** Both slots as they are on the disk now. */
  async function slots() {
    const area = await readDirect(disk, superblockSlotOffsetBytes(deviceBytes, 0), limits.superblockAreaBytes);
    return [0, 1].map((slot) =>
      classifySlot(area.subarray(slot * limits.superblockSlotBytes, (slot + 1) * limits.superblockSlotBytes), slot, superblockSlotOffsetBytes(deviceBytes, slot), deviceBytes),
    );
  }

  /** Flips one bit of `slot` with dd (O_DIRECT); returns the damaged image. */
  async function flipBit(slot: number, byte = 64): Promise<Buffer> {
    const offset = superblockSlotOffsetBytes(deviceBytes, slot);
    const image = await readDirect(disk, offset, limits.superblockSlotBytes);
    image[byte] ^= 0x10;
    await writeDirect(disk, offset, image);
    return image;
  }

  async function newestSlot(): Promise<number> {
    const [a, b] = await slots();
    expect(a.condition).toBe('valid');
    expect(b.condition).toBe('valid');
    return a.superblock!.sequence > b.superblock!.sequence ? 0 : 1;
  }

  test('a bit flip in the newest slot after an Inconsistent write: up reports it, stays Inconsistent, keeps the evidence', async () => {
    await r.runOk('alpha', 'up');
    await r.runOk('alpha', 'primary', ['--force']);
    await r.runOk('alpha', 'secondary');
    expect((await r.runOk('alpha', 'invalidate')).stdout).toContain('disk:Inconsistent');
    await r.runOk('alpha', 'down');

    const lost = await newestSlot();
    const damaged = await flipBit(lost);
    await r.runOk('alpha', 'up');
    const s = await r.status('alpha');
    expect(s.disk).toBe('Inconsistent');
    const reports = s.metadataDamage as Array<Record<string, unknown>>;
    expect(reports).toHaveLength(1);
    expect(reports[0]).toMatchObject({ area: 'superblock', slot: lost, condition: 'damaged', problem: expect.stringMatching(/bad checksum/) });

    // The evidence: the damaged bytes, kept in the run dir before anything was written over them.
    const evidence = fs.readdirSync(r.nodes.alpha.runDir).filter((f) => f.startsWith('metadata-damage-'));
    expect(evidence).toHaveLength(1);
    const kept = JSON.parse(fs.readFileSync(path.join(r.nodes.alpha.runDir, evidence[0]), 'utf8'));
    expect(Buffer.from(kept.superblockSlot.imageBase64, 'base64').equals(damaged)).toBe(true);
    expect(String(reports[0].action)).toContain(evidence[0]);
    const log = fs.readFileSync(path.join(r.nodes.alpha.runDir, 'daemon.log'), 'utf8');
    expect(log).toContain('metadata damage found');
    expect(log).not.toContain('crashed primary: activity-log extents');

    // The event (after exists) and the metric.
    const events = await r.run('alpha', 'events', [], { timeoutMs: 4_000 });
    const lines = events.stdout.trim().split('\n').map((line) => JSON.parse(line));
    expect(lines.slice(0, 2).map((e) => e.type)).toEqual(['exists', 'metadata-damage']);
    expect(lines[1].reports[0]).toMatchObject({ area: 'superblock', slot: lost });
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    expect(metrics).toMatch(/^nraid_metadata_damage\{[^}]*\} 1$/m);

    expectRefused(await r.run('alpha', 'dump-md'), 'NRAID_ERR_ALREADY_UP', ['dump-md works on a stopped resource only', 'nraid down']);
    expectRefused(await r.run('alpha', 'restore-md', ['--file', path.join(r.dir, 'none.json'), '--force']), 'NRAID_ERR_ALREADY_UP', [
      'restore-md works on a stopped resource only',
    ]);
    await r.runOk('alpha', 'down');
  }, 60_000);

  test('an UpToDate node whose newest slot is lost comes up Outdated, and will not promote without --force', async () => {
    await r.runOk('alpha', 'up');
    await r.runOk('alpha', 'primary', ['--force']);
    expect((await r.runOk('alpha', 'secondary')).stdout).toContain('disk:UpToDate');
    await r.runOk('alpha', 'down');

    await flipBit(await newestSlot(), 300);
    await r.runOk('alpha', 'up');
    const s = await r.status('alpha');
    expect(s.disk).toBe('Outdated');
    expect((s.metadataDamage as unknown[]).length).toBe(1);
    expectRefused(await r.run('alpha', 'primary'), 'NRAID_ERR_NOT_UP_TO_DATE', ['Outdated']);
    await r.runOk('alpha', 'down');
    // Outdated is on the disk, in both slots: the next start says so without any damage.
    expect((await slots()).map((slot) => slot.condition)).toEqual(['valid', 'valid']);
  }, 60_000);

  test('dump-md / restore-md: a dump restores over both slots damaged; refusals say why', async () => {
    const text = await r.runOk('alpha', 'dump-md');
    expect(text.stdout).toMatch(/superblock slot 0 at \d+: valid, sequence \d+, disk Outdated/);
    expect(text.stdout).toMatch(/bitmap: \d+ of \d+ bits set/);
    const dumped = JSON.parse((await r.runOk('alpha', 'dump-md', ['--json'])).stdout);
    const file = path.join(r.dir, 'alpha-md.json');
    fs.writeFileSync(file, JSON.stringify(dumped));

    expectRefused(await r.run('alpha', 'restore-md', ['--file', file]), 'NRAID_ERR_DISK_HAS_DATA', ['holds valid nraid metadata', '--force']);
    expectRefused(await r.run('alpha', 'restore-md'), 'NRAID_ERR_USAGE', ['needs --file FILE']);
    const otherSize = path.join(r.dir, 'other-size.json');
    fs.writeFileSync(otherSize, JSON.stringify({ ...dumped, deviceSizeBytes: dumped.deviceSizeBytes * 2 }));
    expectRefused(await r.run('alpha', 'restore-md', ['--file', otherSize, '--force']), 'NRAID_ERR_METADATA', ['restore-md writes a dump back to a device of the same size']);

    await flipBit(0);
    await flipBit(1);
    expectRefused(await r.run('alpha', 'up'), 'NRAID_ERR_METADATA', ['no valid nraid metadata', 'restore-md']);
    await r.runOk('alpha', 'restore-md', ['--file', file]);
    const restored = JSON.parse((await r.runOk('alpha', 'dump-md', ['--json'])).stdout);
    expect(restored.superblock).toEqual({ ...dumped.superblock, sequence: restored.superblock.sequence });
    expect(restored.bitmap).toEqual(dumped.bitmap);
    expect(fs.readdirSync(r.nodes.alpha.runDir).filter((f) => f.startsWith('metadata-before-restore-'))).toHaveLength(1);
  }, 60_000);
});
