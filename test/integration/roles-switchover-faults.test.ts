/**
 * Regression (role-change issue, "switchover can produce two Primaries"): if
 * the peer promoted but its reply was lost (a timeout, or the link cut after
 * the peer acted), the old Primary re-promoted itself while disconnected, and
 * both were Primary. Pinned here with the daemon's fault points: env
 * NRAID_FAULT_POINTS at `nraid up` names points where the daemon cuts its
 * links to the peer abruptly (control and data, no goodbye) and logs
 * `fault point <name> hit`, then reconnects as after any network failure.
 * `nraid switchover` runs on the Primary, alpha, once per point:
 *
 *   switchover:after-demote        (alpha)  the request never left: exit 1 (STATE or PEER), alpha Primary again, beta never Primary
 *   switchover:after-drain         (alpha)  the same
 *   switchover:peer-before-promote (beta)   exit 1 SWITCHOVER_UNKNOWN; alpha stays Secondary, beta never promotes;
 *                                           after the reconnect no Primary, switchoverUnknown false, primary on alpha works
 *   switchover:peer-after-promote  (beta)   the reply is lost: alpha's daemon reports the outcome unknown, never re-promotes,
 *                                           and learns on the reconnect that beta is Primary; the CLI waits for that
 *                                           (bounded) and exits 0; beta the only Primary, Established, both UpToDate
 *
 * Both daemons are watched every 50 ms throughout (RoleWatch): never both
 * Primary, connected or not. With a byte-level FaultProxy the lost reply is
 * not deterministic (the proxy sees bytes, not messages, and cannot sit
 * between two nodes of one config), so the fault point stands for it.
 */
import * as fs from 'fs';
import * as path from 'path';
import { makeResource, nraid, NodeName, NraidResult, NraidStatus, TestResource } from '../harness/cluster';
import { describeIntegration } from '../harness/prereq';
import { adminSocketOf, RoleWatch } from '../harness/role-watch';
import { reportedError } from '../harness/helpers';

const MiB = 1024 * 1024;
const FAST = { 'connect-retry-ms': 100, 'ping-interval-ms': 200, 'ping-timeout-ms': 1000 };
const FAULT_ENV = 'NRAID_FAULT_POINTS';

const connected = (s: NraidStatus): boolean => s.connection === 'Connected' && s.replication === 'Established' && s.disk === 'UpToDate' && s.peerDisk === 'UpToDate';

function daemonLog(r: TestResource, node: NodeName): string {
  try {
    return fs.readFileSync(path.join(r.nodes[node].runDir, 'daemon.log'), 'utf8');
  } catch {
    return '';
  }
}

/** Lines of `node`'s daemon log written since `fromBytes`. */
function logSince(r: TestResource, node: NodeName, fromBytes: number): string {
  return daemonLog(r, node).slice(fromBytes);
}

interface Scenario {
  point: string;
  /** The node whose daemon holds the fault point. */
  on: NodeName;
}

interface Observed {
  faultHit: boolean;
  exitCode: number;
  errorCode: string | null;
  /** Right after the command returned. */
  roles: Record<NodeName, string>;
  alphaExposed: boolean;
  /** Whether alpha, once seen Secondary during the switchover, was seen Primary again. */
  alphaRepromoted: boolean;
  betaEverPrimary: boolean;
  twoPrimaries: string[];
}

describeIntegration('roles: switchover fault points', ['root', 'fuse', 'loop', 'nraid-cli'], () => {
  let r: TestResource;
  let watch: RoleWatch | undefined;

  /** Both daemons up with these fault points, connected, alpha Primary, nothing out of sync. */
  async function start(points: Partial<Record<NodeName, string>>): Promise<void> {
    for (const n of ['alpha', 'beta'] as const) {
      await r.runOk(n, 'up', [], { env: points[n] !== undefined ? { [FAULT_ENV]: points[n] } : {} });
    }
    await r.waitFor('alpha', connected, 20_000);
    await r.runOk('alpha', 'primary');
    await r.waitFor('beta', (s) => connected(s) && s.peerRole === 'Primary', 20_000);
  }

  /** Runs `switchover` on alpha with `sc` armed; returns what was seen up to the command's return, the watch still running. */
  async function switchoverWithFault(sc: Scenario): Promise<{ res: NraidResult; observed: Observed; watch: RoleWatch }> {
    const logStart = daemonLog(r, sc.on).length;
    await start({ [sc.on]: sc.point });
    const w = RoleWatch.start({ alpha: adminSocketOf(r, 'alpha'), beta: adminSocketOf(r, 'beta') }, { intervalMs: 50 });
    watch = w;
    const res = await r.run('alpha', 'switchover', [], { timeoutMs: 60_000 });
    const [a, b] = await Promise.all([r.status('alpha'), r.status('beta')]);
    const observed: Observed = {
      faultHit: logSince(r, sc.on, logStart).includes(`fault point ${sc.point} hit`),
      exitCode: res.code,
      errorCode: reportedError(res)?.code ?? null,
      roles: { alpha: a.role, beta: b.role },
      alphaExposed: a.exposed === true,
      alphaRepromoted: false,
      betaEverPrimary: false,
      twoPrimaries: [],
    };
    return { res, observed, watch: w };
  }

  /** Lets the watch run until the nodes have reconnected and `done` holds on both, then stops it and fills in what it saw. */
  async function settle(w: RoleWatch, observed: Observed, done: (s: NraidStatus) => boolean): Promise<Record<NodeName, NraidStatus>> {
    let final: Record<NodeName, NraidStatus>;
    try {
      final = { alpha: await r.waitFor('alpha', done, 20_000), beta: await r.waitFor('beta', done, 20_000) };
    } finally {
      await w.stop();
      let alphaWasSecondary = false;
      for (const s of w.samples) {
        const role = s.nodes.alpha.snapshot?.role;
        if (role === 'Secondary') alphaWasSecondary = true;
        if (role === 'Primary' && alphaWasSecondary) observed.alphaRepromoted = true;
        if (s.nodes.beta.snapshot?.role === 'Primary') observed.betaEverPrimary = true;
      }
      observed.twoPrimaries = w.twoPrimaries();
      console.log(`timeline (${w.samples.length} samples):\n${w.timeline()}`);
    }
    return final;
  }

  beforeAll(async () => {
    r = await makeResource({ nodes: 2, sizeBytes: 64 * MiB, extra: FAST });
    for (const n of ['alpha', 'beta'] as const) await r.runOk(n, 'create-md');
    for (const n of ['alpha', 'beta'] as const) await r.runOk(n, 'up');
    await r.waitFor('alpha', (s) => s.connection === 'Connected', 20_000);
    await r.runOk('alpha', 'primary', ['--force']);
    await r.waitFor('beta', connected, 60_000);
    // Each test starts its daemons with its own fault points.
    for (const n of ['alpha', 'beta'] as const) await r.runOk(n, 'down');
  }, 120_000);

  afterEach(async () => {
    await watch?.stop();
    watch = undefined;
    for (const n of ['alpha', 'beta'] as const) await r.run(n, 'down', [], { timeoutMs: 30_000 });
  }, 60_000);

  afterAll(async () => {
    await r?.cleanup();
  }, 60_000);

  for (const point of ['switchover:after-demote', 'switchover:after-drain'] as const) {
    test(`${point} on alpha: the request never left, so alpha is Primary again and beta never promoted`, async () => {
      const { res, observed, watch: w } = await switchoverWithFault({ point, on: 'alpha' });
      const final = await settle(w, observed, (s) => connected(s)).catch((e: Error) => e);
      const primaries = final instanceof Error ? final.message : (['alpha', 'beta'] as const).filter((n) => final[n].role === 'Primary');
      expect({ ...observed, errorCode: ['NRAID_ERR_STATE', 'NRAID_ERR_PEER'].includes(observed.errorCode ?? '') ? 'STATE|PEER' : observed.errorCode, primaries }).toEqual({
        faultHit: true,
        exitCode: 1,
        errorCode: 'STATE|PEER',
        roles: { alpha: 'Primary', beta: 'Secondary' },
        alphaExposed: true,
        // It demoted itself and took the role back; the Secondary moment may fall between two samples.
        alphaRepromoted: expect.any(Boolean),
        betaEverPrimary: false,
        twoPrimaries: [],
        primaries: ['alpha'],
      });
      expect(res.stderr + res.stdout).not.toMatch(/switchover outcome unknown/);
    }, 90_000);
  }

  test('switchover:peer-before-promote on beta: outcome unknown, alpha stays Secondary, beta never promotes; after the reconnect primary on alpha works', async () => {
    const { res, observed, watch: w } = await switchoverWithFault({ point: 'switchover:peer-before-promote', on: 'beta' });
    const err = reportedError(res);
    const final = await settle(w, observed, (s) => connected(s)).catch((e: Error) => e);
    const after =
      final instanceof Error
        ? final.message
        : { roles: { alpha: final.alpha.role, beta: final.beta.role }, alphaSwitchoverUnknown: final.alpha.switchoverUnknown };
    expect({
      ...observed,
      mentionsUnknown: /switchover outcome unknown/.test(err?.message ?? ''),
      namesBeta: (err?.message ?? '').includes('beta'),
      after,
    }).toEqual({
      faultHit: true,
      exitCode: 1,
      errorCode: 'NRAID_ERR_SWITCHOVER_UNKNOWN',
      roles: { alpha: 'Secondary', beta: 'Secondary' },
      alphaExposed: false,
      alphaRepromoted: false,
      betaEverPrimary: false,
      twoPrimaries: [],
      mentionsUnknown: true,
      namesBeta: true,
      after: { roles: { alpha: 'Secondary', beta: 'Secondary' }, alphaSwitchoverUnknown: false },
    });
    // The operator's next step works once the nodes are back together.
    await r.runOk('alpha', 'primary');
    const a = await r.status('alpha');
    expect({ role: a.role, exposed: a.exposed }).toEqual({ role: 'Primary', exposed: true });
  }, 90_000);

  test('switchover:peer-after-promote on beta (the reply is lost): outcome unknown, alpha never re-promotes, beta is the one Primary after the reconnect', async () => {
    const { res, observed, watch: w } = await switchoverWithFault({ point: 'switchover:peer-after-promote', on: 'beta' });
    const final = await settle(w, observed, (s) => connected(s) && s.role !== s.peerRole).catch((e: Error) => e);
    // The whole daemon log of this test's run: the unknown outcome came before the CLI returned.
    const alphaLog = daemonLog(r, 'alpha');
    const after =
      final instanceof Error
        ? final.message
        : {
            roles: { alpha: final.alpha.role, beta: final.beta.role },
            alphaSwitchoverUnknown: final.alpha.switchoverUnknown,
            replication: [final.alpha.replication, final.beta.replication],
            disks: [final.alpha.disk, final.beta.disk],
          };
    // beta's role right after the command may still be settling; the watch and `after` judge it.
    expect({
      ...observed,
      roles: { alpha: observed.roles.alpha },
      mentionsUnknown: alphaLog.includes('switchover outcome unknown'),
      resolvedBeta: alphaLog.includes('switchover outcome resolved: beta is Primary'),
      after,
    }).toEqual({
      faultHit: true,
      exitCode: 0,
      errorCode: null,
      roles: { alpha: 'Secondary' },
      alphaExposed: false,
      alphaRepromoted: false,
      betaEverPrimary: true,
      twoPrimaries: [],
      mentionsUnknown: true,
      resolvedBeta: true,
      after: {
        roles: { alpha: 'Secondary', beta: 'Primary' },
        alphaSwitchoverUnknown: false,
        replication: ['Established', 'Established'],
        disks: ['UpToDate', 'UpToDate'],
      },
    });
  }, 90_000);
});
