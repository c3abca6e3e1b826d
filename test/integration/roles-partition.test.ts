/**
 * Regression (role-change issue, "a partition not yet detected wedges the
 * daemon"): with the link down but before the ping timeout, `nraid
 * switchover` (also `secondary`, `down`) blocked the daemon's event loop on a
 * flush that waited for the peer, and the daemon answered nothing for
 * minutes.
 *
 * Two daemons in two network namespaces joined by a veth (netns harness),
 * ping-timeout-ms 3000. alpha Primary, connected, Established; both veth ends
 * go down; at once one command runs on alpha (one test each: switchover,
 * secondary, down). Each must return within ping-timeout + 5 s; meanwhile
 * alpha's daemon is asked for its status every 200 ms and must answer each
 * time within 2 s; beta is never Primary. Afterwards the outcome is checked
 * (switchover: alpha still Primary, or Secondary if it said
 * NRAID_ERR_SWITCHOVER_UNKNOWN; secondary: Secondary if it exited 0, an
 * error code if not; down: the daemon gone if it exited 0), the link comes
 * back and the nodes reconnect (not after down). Status is asked over the
 * admin socket (the call `nraid status` makes), so a slow CLI start on a
 * loaded machine cannot pass for a wedged daemon.
 */
import { NodeName, nraid, NraidResult, NraidStatus } from '../harness/cluster';
import { makeNetnsResource, NetnsResource } from '../harness/netns-resource';
import { describeIntegration } from '../harness/prereq';
import { adminSocketOf, RoleWatch } from '../harness/role-watch';
import { processAlive, reportedError } from '../harness/helpers';

const MiB = 1024 * 1024;
const PING_TIMEOUT_MS = 3000;
const CONFIG = { 'ping-interval-ms': 500, 'ping-timeout-ms': PING_TIMEOUT_MS, 'connect-retry-ms': 200 };
const COMMAND_BUDGET_MS = PING_TIMEOUT_MS + 5000;
const STATUS_ANSWER_MS = 2000;
const STATUS_POLL_MS = 200;

const established = (s: NraidStatus): boolean =>
  s.connection === 'Connected' && s.replication === 'Established' && s.disk === 'UpToDate' && s.peerDisk === 'UpToDate';

interface Run {
  res: NraidResult;
  ms: number;
  watch: RoleWatch;
  /** Samples of alpha taken while the command ran. */
  during: RoleWatch['samples'];
}

describeIntegration('roles: a partition not yet detected', ['root', 'fuse', 'loop', 'ip-netns', 'nraid-cli'], () => {
  let r: NetnsResource;
  let watch: RoleWatch | undefined;

  /** Link whole, both connected and Established, alpha the Primary with its device, beta Secondary. */
  async function alphaPrimaryConnected(): Promise<void> {
    if (r.pair.partitioned !== null) await r.pair.heal();
    const a = await r.waitFor('alpha', established, 30_000);
    const b = await r.waitFor('beta', established, 10_000);
    if (b.role === 'Primary') await r.runOk('beta', 'secondary');
    if (a.role !== 'Primary') await r.runOk('alpha', 'primary');
    await r.waitFor('beta', (s) => established(s) && s.role === 'Secondary' && s.peerRole === 'Primary', 15_000);
    const s = await r.status('alpha');
    expect({ role: s.role, exposed: s.exposed, replication: s.replication }).toEqual({ role: 'Primary', exposed: true, replication: 'Established' });
  }

  /** Cuts the link both ways and at once runs `command` on alpha, alpha's status polled throughout. */
  async function runPartitioned(command: string): Promise<Run> {
    await alphaPrimaryConnected();
    const w = RoleWatch.start({ alpha: adminSocketOf(r, 'alpha'), beta: adminSocketOf(r, 'beta') }, { intervalMs: STATUS_POLL_MS, answerTimeoutMs: STATUS_ANSWER_MS });
    watch = w;
    await r.pair.partition('both');
    const t0 = Date.now();
    const sampleFrom = w.samples.length;
    // Killed a little past the budget (exit -1): enough to tell "late" from "on time" without spending the file's time.
    const res = await r.run('alpha', command, [], { timeoutMs: COMMAND_BUDGET_MS + 4000 });
    const ms = Date.now() - t0;
    const during = w.samples.slice(sampleFrom);
    console.log(`${command} under a fresh partition: exit ${res.code} after ${ms} ms; ${res.stderr.trim() || res.stdout.trim()}`);
    return { res, ms, watch: w, during };
  }

  /** alpha's answers while the command ran: the slowest, and those that were not an answer. */
  function alphaAnswers(run: Run, allowGone: boolean): { slowestMs: number; silent: string[] } {
    let slowestMs = 0;
    const silent: string[] = [];
    for (const s of run.during) {
      const a = s.nodes.alpha;
      slowestMs = Math.max(slowestMs, a.answerMs);
      // After down, "no daemon answers" (socket gone) is an answer too: the daemon stopped, it is not wedged.
      if (a.error !== null && !(allowGone && /no daemon answers/.test(a.error))) silent.push(`${s.atMs} ms: ${a.error}`);
    }
    return { slowestMs, silent };
  }

  const betaWasPrimary = (w: RoleWatch): boolean => w.samples.some((s) => s.nodes.beta.snapshot?.role === 'Primary');

  beforeAll(async () => {
    r = await makeNetnsResource({ tag: 'part', sizeBytes: 64 * MiB, extra: CONFIG });
    for (const n of ['alpha', 'beta'] as const) await r.runOk(n, 'create-md');
    for (const n of ['alpha', 'beta'] as const) await r.runOk(n, 'up');
    await r.waitFor('alpha', (s) => s.connection === 'Connected', 20_000);
    await r.runOk('alpha', 'primary', ['--force']);
    await r.waitFor('beta', established, 60_000);
  }, 120_000);

  afterEach(async () => {
    await watch?.stop();
    watch = undefined;
  });

  afterAll(async () => {
    await r?.cleanup();
  }, 90_000);

  test('switchover: returns in time, alpha keeps answering, alpha still Primary (or Secondary with SWITCHOVER_UNKNOWN), beta never Primary; they reconnect', async () => {
    const run = await runPartitioned('switchover');
    const answers = alphaAnswers(run, false);
    const a = await r.status('alpha', 4000).catch((e: Error) => e);
    const err = reportedError(run.res);
    const alphaRole = a instanceof Error ? a.message : a.role;
    const outcomeOk = (alphaRole === 'Primary' && err?.code !== 'NRAID_ERR_SWITCHOVER_UNKNOWN') || (alphaRole === 'Secondary' && err?.code === 'NRAID_ERR_SWITCHOVER_UNKNOWN');
    console.log(`switchover outcome: exit ${run.res.code} ${err?.code ?? '-'}, alpha ${alphaRole}`);
    await r.pair.heal();
    const back = await Promise.all((['alpha', 'beta'] as NodeName[]).map((n) => r.waitFor(n, established, 30_000).then((s) => s.connection, (e: Error) => e.message)));
    await run.watch.stop();
    expect({
      withinBudget: run.ms <= COMMAND_BUDGET_MS,
      failed: run.res.code !== 0,
      slowestStatusUnder2s: answers.slowestMs < STATUS_ANSWER_MS,
      silent: answers.silent,
      outcomeOk,
      betaEverPrimary: betaWasPrimary(run.watch),
      twoPrimaries: run.watch.twoPrimaries(),
      back,
    }).toEqual({
      withinBudget: true,
      failed: true,  // beta is unreachable: the switchover cannot have happened
      slowestStatusUnder2s: true,
      silent: [],
      outcomeOk: true,
      betaEverPrimary: false,
      twoPrimaries: [],
      back: ['Connected', 'Connected'],
    });
  }, 120_000);

  test('secondary: returns in time, alpha keeps answering, Secondary if it exited 0 (a refusal says why), beta never Primary; they reconnect', async () => {
    const run = await runPartitioned('secondary');
    const answers = alphaAnswers(run, false);
    const a = await r.status('alpha', 4000).catch((e: Error) => e);
    const alphaRole = a instanceof Error ? a.message : a.role;
    const err = reportedError(run.res);
    // exit 0: demoted. A refusal must say why; where it leaves the role is only recorded (beta's role is what matters).
    const outcomeOk = (run.res.code === 0 && alphaRole === 'Secondary') || (run.res.code === 1 && err !== null && (alphaRole === 'Primary' || alphaRole === 'Secondary'));
    console.log(`secondary outcome: exit ${run.res.code} ${err?.code ?? '-'}, alpha ${alphaRole}`);
    await r.pair.heal();
    const back = await Promise.all((['alpha', 'beta'] as NodeName[]).map((n) => r.waitFor(n, established, 30_000).then((s) => s.connection, (e: Error) => e.message)));
    await run.watch.stop();
    expect({
      withinBudget: run.ms <= COMMAND_BUDGET_MS,
      slowestStatusUnder2s: answers.slowestMs < STATUS_ANSWER_MS,
      silent: answers.silent,
      outcomeOk,
      betaEverPrimary: betaWasPrimary(run.watch),
      twoPrimaries: run.watch.twoPrimaries(),
      back,
    }).toEqual({
      withinBudget: true,
      slowestStatusUnder2s: true,
      silent: [],
      outcomeOk: true,
      betaEverPrimary: false,
      twoPrimaries: [],
      back: ['Connected', 'Connected'],
    });
  }, 120_000);

  test('down: returns in time, alpha answers (or is gone) throughout, the daemon exits if it said so, beta never Primary', async () => {
    const run = await runPartitioned('down');
    const answers = alphaAnswers(run, true);
    const pid = r.daemonPid('alpha');
    const exited = pid === undefined ? 'no pid' : !processAlive(pid);
    console.log(`down outcome: exit ${run.res.code} ${reportedError(run.res)?.code ?? '-'}, daemon exited ${exited}`);
    await run.watch.stop();
    await r.pair.heal();
    expect({
      withinBudget: run.ms <= COMMAND_BUDGET_MS,
      slowestStatusUnder2s: answers.slowestMs < STATUS_ANSWER_MS,
      silent: answers.silent,
      // exit 0 means the daemon is gone; a refusal leaves it running and answering.
      daemonMatchesExit: run.res.code === 0 ? exited === true : run.res.code === 1 && exited === false,
      betaEverPrimary: betaWasPrimary(run.watch),
    }).toEqual({
      withinBudget: true,
      slowestStatusUnder2s: true,
      silent: [],
      daemonMatchesExit: true,
      betaEverPrimary: false,
    });
  }, 120_000);
});
