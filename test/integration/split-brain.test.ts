/**
 * Split brain (failover issue, DESIGN.md §5): ten rounds of partition
 * (`disconnect` on both), promotion of the Secondary, distinct writes on both
 * sides (a region each and one region both write), heal (`connect` on both).
 * Every round the split brain is detected on both nodes (StandAlone,
 * splitBrain true, a `split-brain` line from `nraid events`, the split-brain
 * hook run with NRAID_EVENT=split-brain and the resource's name), nothing is
 * discarded while the operator has not chosen (each side still reads what it
 * wrote), and `secondary` + `connect --discard-my-data` on the victim (it
 * alternates) ends in a bitmap resync (a few MiB, not the device) after which
 * both disks are identical and hold the survivor's data. Then, on a second
 * pair, a victim that changed much while the survivor changed little: every
 * block the victim changed must come back from the survivor, whichever node
 * the survivor is.
 */
import { ChildProcess, spawn } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { makeTempSubdir } from '../harness/cleanup';
import { makeResource, NodeName, NRAID_BIN, TestResource } from '../harness/cluster';
import { compareRanges, readDirect, writeDirect } from '../harness/direct-io';
import { toolEnv } from '../harness/exec';
import { describeIntegration, REPO_ROOT } from '../harness/prereq';
import { bringUpPair, connectedUpToDate, daemonLogSince, daemonLogSize, FAST_FAILOVER_CONFIG, num, otherNode, settled, sleep, withDaemonLogs } from '../harness/helpers';

const MiB = 1024 * 1024;
const KiB = 1024;
const ROUNDS = 10;
const WINDOW = 4 * MiB;

/**
 * After a resolution: nothing left out of sync on the survivor and both
 * disks identical. Both are looked at before either is reported.
 */
async function expectResolved(r: TestResource, survivor: NodeName, dataSize: number, ctx: string): Promise<void> {
  const clean = await r.waitFor(survivor, settled, 3_000).catch(() => null);
  const cmp = await compareRanges(r.nodes.alpha.diskPath, r.nodes.beta.diskPath, 0, dataSize);
  if (clean === null || !cmp.equal) {
    const s = await r.status(survivor);
    throw new Error(
      `${ctx}: after the resolution the survivor ${survivor} reports replication ${s.replication}, outOfSyncBytes ${s.outOfSyncBytes}, ` +
        `resync ${JSON.stringify(s.resync)}; the disks ${cmp.equal ? 'agree' : `differ in ${cmp.mismatchBlocks} blocks: ${JSON.stringify(cmp.mismatches.slice(0, 5))}`}`,
    );
  }
}

/** `nraid events` for one node, collecting its JSON lines. */
class EventTap {
  readonly lines: Record<string, unknown>[] = [];
  private readonly child: ChildProcess;
  private buffer = '';
  private readonly closed: Promise<void>;

  constructor(r: TestResource, node: NodeName) {
    this.child = spawn(process.execPath, [NRAID_BIN, 'events', r.name, '-c', r.configPath, '-n', node], {
      cwd: REPO_ROOT,
      env: toolEnv(),
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    this.child.stdout!.setEncoding('utf8');
    this.child.stdout!.on('data', (s: string) => {
      this.buffer += s;
      let i: number;
      while ((i = this.buffer.indexOf('\n')) >= 0) {
        const line = this.buffer.slice(0, i);
        this.buffer = this.buffer.slice(i + 1);
        if (line.trim() !== '') this.lines.push(JSON.parse(line) as Record<string, unknown>);
      }
    });
    this.closed = new Promise((resolve) => this.child.on('close', () => resolve()));
  }

  ofType(type: string): Record<string, unknown>[] {
    return this.lines.filter((l) => l.type === type);
  }

  async waitFor(what: string, predicate: () => boolean, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate()) {
      if (Date.now() > deadline) throw new Error(`events: ${what} not seen within ${timeoutMs} ms; lines: ${JSON.stringify(this.lines.slice(-10))}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGTERM');
    await this.closed;
  }
}

/** Distinct, recognisable content for (round, writer, region). */
function content(round: number, who: string, region: string, bytes: number): Buffer {
  const seed = crypto.createHash('sha256').update(`${round}:${who}:${region}`).digest();
  const out = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 32) seed.copy(out, i, 0, Math.min(32, bytes - i));
  for (let i = 0; i < bytes; i += 4096) out.writeUInt32LE(i, i);
  return out;
}

async function expectBytes(device: string, offset: number, expected: Buffer, what: string): Promise<void> {
  const found = await readDirect(device, offset, expected.length);
  if (!found.equals(expected)) {
    let i = 0;
    while (found[i] === expected[i]) i++;
    throw new Error(`${what}: ${device} at ${offset} differs from what was written (first at +${i})`);
  }
}

describeIntegration('failover: split brain', ['root', 'fuse', 'loop', 'dd', 'nraid-cli'], () => {
  let r: TestResource;
  let hookDir: string;
  const taps = {} as Record<NodeName, EventTap>;
  const resyncBytes: number[] = [];
  let roundsDetected = 0;

  beforeAll(async () => {
    hookDir = makeTempSubdir('sbhook');
    const script = path.join(hookDir, 'split-brain.sh');
    // One file per run, named after the node: the environment the daemon gave the hook.
    fs.writeFileSync(script, `#!/bin/sh\nf=${hookDir}/run-$NRAID_NODE-$$\nenv > $f.tmp\nmv $f.tmp $f.env\nexit 0\n`, { mode: 0o755 });
    r = await makeResource({ nodes: 2, sizeBytes: 64 * MiB, extra: { ...FAST_FAILOVER_CONFIG, hooks: { 'split-brain': script } } });
    await bringUpPair(r);
    for (const n of ['alpha', 'beta'] as const) taps[n] = new EventTap(r, n);
    // The tap is subscribed once it has the `exists` line.
    for (const n of ['alpha', 'beta'] as const) await taps[n].waitFor('exists', () => taps[n].ofType('exists').length === 1, 10_000);
  }, 120_000);

  afterAll(async () => {
    for (const n of ['alpha', 'beta'] as const) await taps[n]?.stop();
    if (resyncBytes.length > 0) console.log(`split-brain resolutions: bitmap resync bytes per round ${resyncBytes.join(', ')}`);
    await r?.cleanup();
  }, 60_000);

  const hookRuns = (): { node: string; env: string }[] =>
    fs
      .readdirSync(hookDir)
      .filter((f) => f.endsWith('.env'))
      .map((f) => ({ node: f.split('-')[1], env: fs.readFileSync(path.join(hookDir, f), 'utf8') }));

  test(`${ROUNDS} rounds: detected every time, nothing lost before the choice, the victim (alternating) resyncs from the survivor`, async () => {
    let primary: NodeName = 'alpha';
    const dataSize = (await r.status('alpha')).dataSizeBytes as number;
    expect(dataSize).toBeGreaterThanOrEqual(ROUNDS * WINDOW);
    for (let round = 0; round < ROUNDS; round++) {
      primary = await withDaemonLogs(r, () => playRound(round, primary, dataSize));
    }
  }, 240_000);

  async function playRound(round: number, primary: NodeName, dataSize: number): Promise<NodeName> {
    const old = primary;
    const promoted = otherNode(old);
    // Alternate: the newly promoted node is the victim in even rounds, the old Primary in odd ones.
    const victim = round % 2 === 0 ? promoted : old;
    const survivor = otherNode(victim);
    const base = round * WINDOW;
    const own = { [old]: base, [promoted]: base + MiB } as Record<NodeName, number>;
    const overlap = base + 2 * MiB;
    const regionBytes = MiB;
    const overlapBytes = 256 * KiB;
    const ctx = `round ${round} (old Primary ${old}, promoted ${promoted}, victim ${victim})`;

    // What both disks hold before the partition.
    const baseline = content(round, 'both', 'baseline', WINDOW);
    await writeDirect(r.nodes[old].device, base, baseline);
    await r.waitFor(old, settled, 10_000);

    // Partition, and promote the other side.
    await Promise.all([r.runOk(old, 'disconnect'), r.runOk(promoted, 'disconnect')]);
    await Promise.all([old, promoted].map((n) => r.waitFor(n, (s) => s.connection === 'StandAlone', 10_000)));
    await r.runOk(promoted, 'primary', round % 4 < 2 ? [] : ['--force']);

    // Both write: a region each, and one region both write with different data.
    const written = {} as Record<NodeName, { own: Buffer; overlap: Buffer }>;
    await Promise.all(
      [old, promoted].map(async (n) => {
        written[n] = { own: content(round, n, 'own', regionBytes), overlap: content(round, n, 'overlap', overlapBytes) };
        await writeDirect(r.nodes[n].device, own[n], written[n].own);
        await writeDirect(r.nodes[n].device, overlap, written[n].overlap);
      }),
    );

    // Heal.
    const hooksBefore = hookRuns().length;
    const eventsBefore = { alpha: taps.alpha.ofType('split-brain').length, beta: taps.beta.ofType('split-brain').length };
    await Promise.all([r.runOk('alpha', 'connect'), r.runOk('beta', 'connect')]);
    const detectedOn = async (n: NodeName): Promise<void> => {
      const s = await r.waitFor(n, (x) => x.splitBrain === true && x.connection === 'StandAlone', 15_000).catch((e: Error) => {
        throw new Error(`${ctx}: split brain not detected on ${n}: ${e.message}`);
      });
      expect({ ctx, n, role: s.role, syncDecision: s.syncDecision }).toEqual({ ctx, n, role: 'Primary', syncDecision: 'split-brain' });
      await taps[n].waitFor(`${ctx}: split-brain event on ${n}`, () => taps[n].ofType('split-brain').length > eventsBefore[n], 5_000);
      const ev = taps[n].ofType('split-brain').at(-1)!;
      expect(ev).toMatchObject({ type: 'split-brain', resource: r.name, node: n, peer: otherNode(n) });
      expect(taps[n].ofType('split-brain').length).toBe(eventsBefore[n] + 1);
    };
    await Promise.all([detectedOn('alpha'), detectedOn('beta')]);
    // The hook ran on both nodes, once each.
    const deadline = Date.now() + 5_000;
    while (hookRuns().length < hooksBefore + 2 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
    expect({ ctx, hookRuns: hookRuns().length }).toEqual({ ctx, hookRuns: hooksBefore + 2 });
    roundsDetected++;

    // Nothing discarded yet: each side reads what it wrote, and the other side's region as before.
    for (const n of [old, promoted]) {
      const dev = r.nodes[n].device;
      await expectBytes(dev, own[n], written[n].own, `${ctx}: ${n}'s own region before the choice`);
      await expectBytes(dev, overlap, written[n].overlap, `${ctx}: ${n}'s overlap region before the choice`);
      const o = otherNode(n);
      await expectBytes(dev, own[o], baseline.subarray(own[o] - base, own[o] - base + regionBytes), `${ctx}: ${n} sees none of ${o}'s writes`);
    }

    // The operator chooses: the victim gives up its changes.
    const logFrom = { alpha: daemonLogSize(r, 'alpha'), beta: daemonLogSize(r, 'beta') };
    await r.runOk(victim, 'secondary');
    await r.runOk(victim, 'connect', ['--discard-my-data']);
    await r.runOk(survivor, 'connect');
    const [sv, vs] = await Promise.all([r.waitFor(survivor, connectedUpToDate, 20_000), r.waitFor(victim, connectedUpToDate, 20_000)]);
    await expectResolved(r, survivor, dataSize, ctx);
    expect({ ctx, role: sv.role, splitBrain: sv.splitBrain, syncDecision: sv.syncDecision }).toEqual({ ctx, role: 'Primary', splitBrain: false, syncDecision: 'bitmap' });
    expect({ ctx, role: vs.role, splitBrain: vs.splitBrain, syncDecision: vs.syncDecision, discardMyData: vs.discardMyData }).toEqual({
      ctx,
      role: 'Secondary',
      splitBrain: false,
      syncDecision: 'bitmap',
      discardMyData: false,
    });

    // The survivor's data on both; the victim's own writes are gone.
    const dev = r.nodes[survivor].device;
    await expectBytes(dev, own[survivor], written[survivor].own, `${ctx}: the survivor's region`);
    await expectBytes(dev, overlap, written[survivor].overlap, `${ctx}: the overlap holds the survivor's data`);
    await expectBytes(dev, own[victim], baseline.subarray(own[victim] - base, own[victim] - base + regionBytes), `${ctx}: the victim's region is back to the survivor's`);
    await expectBytes(r.nodes[victim].diskPath, overlap, written[survivor].overlap, `${ctx}: the victim's disk holds the survivor's overlap`);
    // A bitmap resync: what either side wrote since the split, not the device.
    const started = daemonLogSince(r, survivor, logFrom[survivor]).filter((l) => l.message === 'resync started');
    expect({ ctx, resyncs: started.length }).toEqual({ ctx, resyncs: 1 });
    const bytes = Number(started[0].bytes);
    resyncBytes.push(bytes);
    const changed = 2 * regionBytes + overlapBytes;
    expect(bytes).toBeGreaterThanOrEqual(changed);
    expect(bytes).toBeLessThanOrEqual(changed + 2 * MiB);
    expect(bytes).toBeLessThan(dataSize / 10);

    return survivor;
  }

  test('the split-brain hook ran on both nodes every round with NRAID_EVENT=split-brain and the resource name', () => {
    const runs = hookRuns();
    expect(roundsDetected).toBeGreaterThan(0);
    expect(runs.filter((h) => h.node === 'alpha').length).toBe(roundsDetected);
    expect(runs.filter((h) => h.node === 'beta').length).toBe(roundsDetected);
    for (const h of runs) {
      expect(h.env).toMatch(/^NRAID_EVENT=split-brain$/m);
      expect(h.env).toMatch(new RegExp(`^NRAID_RESOURCE=${r.name}$`, 'm'));
      expect(h.env).toMatch(new RegExp(`^NRAID_NODE=${h.node}$`, 'm'));
      expect(h.env).toMatch(new RegExp(`^NRAID_PEER=${otherNode(h.node as NodeName)}$`, 'm'));
    }
  });

  /**
   * Regression test for a resync that forgets the victim's changes: the sync
   * source asks the target for its bitmap and merges it, but the node that
   * accepts the data link (beta: alpha's name sorts first, so alpha dials and
   * opens it) attaches the link and decides "resync none" or starts the resync
   * from its own bits before that merge; bits merged afterwards are never
   * sent. Found: beta Established and UpToDate with outOfSyncBytes stuck at
   * the victim's 4 MiB, and the victim's disk still holding its discarded
   * data. The survivor writes a single block, so that its own resync is over
   * before the merge arrives.
   */
  describe('the victim changed more than the survivor', () => {
    let q: TestResource;
    let dataSize = 0;
    const detections: { ctx: string; alpha: string; beta: string }[] = [];

    beforeAll(async () => {
      q = await makeResource({ nodes: 2, sizeBytes: 64 * MiB, extra: FAST_FAILOVER_CONFIG });
      await bringUpPair(q);
      dataSize = num(await q.status('alpha'), 'dataSizeBytes');
    }, 120_000);

    afterAll(async () => {
      await q?.cleanup();
    }, 60_000);

    test.each([
      { survivor: 'alpha' as NodeName, victim: 'beta' as NodeName, at: 8 * MiB },
      { survivor: 'beta' as NodeName, victim: 'alpha' as NodeName, at: 24 * MiB },
    ])('survivor $survivor wrote 4 KiB, victim $victim wrote 4 MiB: all of the victim\'s changes are overwritten', ({ survivor, victim, at }) =>
      withDaemonLogs(q, async () => {
        const ctx = `survivor ${survivor}, victim ${victim}`;
        // alpha is Primary (each case ends so): partition, and promote beta too.
        expect((await q.status('alpha')).role).toBe('Primary');
        await Promise.all([q.runOk('alpha', 'disconnect'), q.runOk('beta', 'disconnect')]);
        await Promise.all((['alpha', 'beta'] as const).map((n) => q.waitFor(n, (s) => s.connection === 'StandAlone', 10_000)));
        await q.runOk('beta', 'primary');
        // One block on the survivor (a node that writes nothing has not moved on: no split brain), 4 MiB on the victim.
        const small = content(99, survivor, 'small', 4 * KiB);
        await writeDirect(q.nodes[survivor].device, at + 4 * MiB, small);
        for (let i = 0; i < 4; i++) await writeDirect(q.nodes[victim].device, at + i * MiB, content(99, victim, `big${i}`, MiB));

        await Promise.all([q.runOk('alpha', 'connect'), q.runOk('beta', 'connect')]);
        // One node reporting it is enough to go on; whether both did is the last test's business.
        const deadline = Date.now() + 15_000;
        let bothSince: number | null = null;
        for (;;) {
          const [a, b] = await Promise.all([q.status('alpha'), q.status('beta')]);
          const seen = { alpha: `${a.connection} splitBrain=${a.splitBrain}`, beta: `${b.connection} splitBrain=${b.splitBrain}` };
          const one = (a.splitBrain === true || b.splitBrain === true) && a.connection !== 'Connected' && b.connection !== 'Connected';
          if (one) bothSince ??= Date.now();
          if (a.splitBrain === true && b.splitBrain === true && a.connection === 'StandAlone' && b.connection === 'StandAlone') {
            detections.push({ ctx, ...seen });
            break;
          }
          // Given 3 s after the first node reported it, the other node has had ample time.
          if (bothSince !== null && Date.now() - bothSince > 3_000) {
            detections.push({ ctx, ...seen });
            break;
          }
          if (Date.now() > deadline) throw new Error(`${ctx}: no split brain reported: ${JSON.stringify(seen)}`);
          await sleep(100);
        }
        await q.runOk(victim, 'secondary');
        await q.runOk(victim, 'connect', ['--discard-my-data']);
        await q.runOk(survivor, 'connect');
        await Promise.all([q.waitFor(survivor, connectedUpToDate, 20_000), q.waitFor(victim, connectedUpToDate, 20_000)]);
        await expectResolved(q, survivor, dataSize, ctx);
        await expectBytes(q.nodes[victim].diskPath, at, Buffer.alloc(4 * MiB), `${ctx}: the victim's changes are gone from its disk`);
        await expectBytes(q.nodes[victim].diskPath, at + 4 * MiB, small, `${ctx}: the survivor's block on the victim's disk`);
        if (survivor === 'beta') await q.runOk('alpha', 'switchover');
      }),
    60_000);

    /**
     * Regression test for a split brain seen by one node only (seen here under
     * load before 0f722bf): both nodes ask
     * each other for their split-brain facts; the first to get its answer
     * refuses the session and closes it, and the other's request dies with the
     * session, so that node logs no detection, raises no event, runs no hook,
     * reports splitBrain false and stays Connecting. (A split-brain hook delays
     * the refusal by its spawn, which hides this; this pair has none.)
     */
    test('each split brain above was reported by both nodes (StandAlone, splitBrain true)', () => {
      expect(detections.length).toBe(2);
      for (const d of detections) {
        expect(d).toEqual({ ctx: d.ctx, alpha: 'StandAlone splitBrain=true', beta: 'StandAlone splitBrain=true' });
      }
    });
  });
});
