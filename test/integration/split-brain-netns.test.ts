/**
 * Split brain over a real partition (issue 10, item 2): two daemons in two
 * network namespaces joined by a veth (netns harness). alpha Primary and
 * Established; both veth ends go down; beta, seeing its peer gone, is
 * promoted; each side writes a region of its own while apart; the link comes
 * back. The split brain must be detected on both nodes (StandAlone,
 * splitBrain true, no resync), nothing discarded before the operator chooses;
 * then the documented commands (docs/operations.md, workflow 5: on the
 * victim beta `secondary` and `connect --discard-my-data`, on alpha `connect`
 * if StandAlone) end in a resync after which both backing disks are identical
 * and hold the survivor's data: what alpha wrote before and after the split,
 * and none of what beta wrote while apart.
 */
import * as crypto from 'crypto';
import { NraidStatus } from '../harness/cluster';
import { compareRanges, readDirect, writeDirect } from '../harness/direct-io';
import { connectedUpToDate, settled } from '../harness/helpers';
import { makeNetnsResource, NetnsResource } from '../harness/netns-resource';
import { describeIntegration } from '../harness/prereq';

const MiB = 1024 * 1024;
const CONFIG = { 'ping-interval-ms': 300, 'ping-timeout-ms': 1500, 'connect-retry-ms': 200 };
const BEFORE = { offsetBytes: 0, bytes: 2 * MiB };
const ALPHA_APART = { offsetBytes: 8 * MiB, bytes: 2 * MiB };
const BETA_APART = { offsetBytes: 16 * MiB, bytes: 2 * MiB };
/** Both write here while apart: the survivor's version must win. */
const BOTH_APART = { offsetBytes: 24 * MiB, bytes: 1 * MiB };

const data = (tag: string, bytes: number): Buffer => {
  const out = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 32) crypto.createHash('sha256').update(`${tag}:${i}`).digest().copy(out, i);
  return out;
};

describeIntegration('split brain over a real partition (network namespaces)', ['root', 'fuse', 'loop', 'ip-netns', 'nraid-cli', 'dd'], () => {
  let r: NetnsResource;

  beforeAll(async () => {
    r = await makeNetnsResource({ tag: 'sbrain', sizeBytes: 48 * MiB, extra: CONFIG });
    for (const n of ['alpha', 'beta'] as const) await r.runOk(n, 'create-md');
    for (const n of ['alpha', 'beta'] as const) await r.runOk(n, 'up');
    await r.waitFor('alpha', (s) => s.connection === 'Connected', 20_000);
    await r.runOk('alpha', 'primary', ['--force']);
    await r.waitFor('alpha', settled, 60_000);
    await r.waitFor('beta', connectedUpToDate, 20_000);
  }, 120_000);

  afterAll(async () => {
    await r?.cleanup();
  }, 90_000);

  test('detected on both nodes after the link returns; resolved with secondary + connect --discard-my-data on the victim; the survivor loses nothing', async () => {
    const alphaDev = r.base.nodes.alpha.device;
    const betaDev = r.base.nodes.beta.device;
    await writeDirect(alphaDev, BEFORE.offsetBytes, data('before', BEFORE.bytes));
    await r.waitFor('alpha', settled, 20_000);

    await r.pair.partition('both');
    await r.waitFor('beta', (s) => s.connection !== 'Connected', 15_000);
    await r.waitFor('alpha', (s) => s.connection !== 'Connected', 15_000);
    await r.runOk('beta', 'primary');
    await writeDirect(alphaDev, ALPHA_APART.offsetBytes, data('alpha-apart', ALPHA_APART.bytes));
    await writeDirect(alphaDev, BOTH_APART.offsetBytes, data('alpha-both', BOTH_APART.bytes));
    await writeDirect(betaDev, BETA_APART.offsetBytes, data('beta-apart', BETA_APART.bytes));
    await writeDirect(betaDev, BOTH_APART.offsetBytes, data('beta-both', BOTH_APART.bytes));

    await r.pair.heal();
    const isSplit = (s: NraidStatus): boolean => s.splitBrain === true && s.connection === 'StandAlone' && s.replication === 'Off';
    const [a, b] = await Promise.all([r.waitFor('alpha', isSplit, 30_000), r.waitFor('beta', isSplit, 30_000)]);
    // Nothing discarded before the operator chose: each side still reads what it wrote.
    const alphaReads = (await readDirect(alphaDev, ALPHA_APART.offsetBytes, ALPHA_APART.bytes)).equals(data('alpha-apart', ALPHA_APART.bytes));
    const betaReads = (await readDirect(betaDev, BETA_APART.offsetBytes, BETA_APART.bytes)).equals(data('beta-apart', BETA_APART.bytes));
    expect({ alpha: [a.role, a.syncDecision], beta: [b.role, b.syncDecision], alphaReads, betaReads }).toEqual({
      alpha: ['Primary', 'split-brain'],
      beta: ['Primary', 'split-brain'],
      alphaReads: true,
      betaReads: true,
    });

    // docs/operations.md, workflow 5: beta is the victim.
    await r.runOk('beta', 'secondary');
    await r.runOk('beta', 'connect', ['--discard-my-data']);
    if ((await r.status('alpha')).connection === 'StandAlone') await r.runOk('alpha', 'connect');
    const done = await r.waitFor('alpha', (s) => settled(s) && s.splitBrain !== true, 60_000);
    await r.waitFor('beta', (s) => connectedUpToDate(s) && s.splitBrain !== true && s.role === 'Secondary', 20_000);

    const dataSize = Number(done.dataSizeBytes);
    const cmp = await compareRanges(r.base.nodes.alpha.diskPath, r.base.nodes.beta.diskPath, 0, dataSize);
    const onBeta = async (region: { offsetBytes: number; bytes: number }, tag: string): Promise<boolean> =>
      (await readDirect(r.base.nodes.beta.diskPath, region.offsetBytes, region.bytes)).equals(data(tag, region.bytes));
    expect({
      identical: cmp.equal,
      mismatchBlocks: cmp.mismatchBlocks,
      before: await onBeta(BEFORE, 'before'),
      alphaApart: await onBeta(ALPHA_APART, 'alpha-apart'),
      bothApartIsAlphas: await onBeta(BOTH_APART, 'alpha-both'),
      betaApartGone: (await readDirect(r.base.nodes.beta.diskPath, BETA_APART.offsetBytes, BETA_APART.bytes)).equals(Buffer.alloc(BETA_APART.bytes)),
      syncDecision: done.syncDecision,
    }).toEqual({
      identical: true,
      mismatchBlocks: 0,
      before: true,
      alphaApart: true,
      bothApartIsAlphas: true,
      betaApartGone: true,
      syncDecision: 'bitmap',
    });
  }, 180_000);
});
