/**
 * The torture runner in CI (issue 10, item 3): a short schedule with a fixed
 * seed (test/torture/runner.ts), two nodes in two network namespaces, alpha
 * dialing beta through the link relay. Each main fault kind is drawn first
 * (mustCover), then the seed's own schedule runs until the time is up, then
 * the final settle point. Asserts the summary: no invariant failed (no
 * acknowledged write lost, never two Primaries while connected, identical
 * data areas after every resync, no hang), enough steps, every main fault
 * hit (a failing backing disk included: nbdkit behind nbdfuse), writes acknowledged, failovers checked against the writer's log.
 *
 * Replay a failure outside jest with the command the failure message gives
 * (`npm run torture -- --replay SEED:STEP`).
 */
import { describeIntegration } from '../harness/prereq';
import { formatSummary, StepKind, Torture, TortureSummary } from '../torture/runner';

const SEED = 20261202;
const MINUTES = 1.5;
const MAIN_KINDS: readonly StepKind[] = ['writes', 'partition-both', 'partition-one-way', 'kill', 'switchover', 'switchover-kill', 'promote', 'slow-link', 'bit-flip', 'stall-link', 'adjust', 'kill-mid-resync', 'disk-fails'];
const MIN_STEPS = 15;

describeIntegration('torture: a short fixed-seed schedule', ['root', 'fuse', 'loop', 'ip-netns', 'nraid-cli', 'dd', 'nbdkit'], () => {
  let summary: TortureSummary;

  beforeAll(async () => {
    summary = await new Torture({ seed: SEED, minutes: MINUTES, mustCover: MAIN_KINDS, verbose: false, canary: true, diskFaults: true }).run();
    console.log(formatSummary(summary));
  }, 240_000);

  test('no invariant failed', () => {
    expect(summary.failure).toBeNull();
  });

  test(`at least ${MIN_STEPS} steps, each main fault kind hit, writes acknowledged and checked`, () => {
    const hit = (k: string): boolean => (summary.faults[k] ?? 0) > 0;
    expect({
      enoughSteps: summary.steps >= MIN_STEPS,
      partition: hit('partition-both') && hit('partition-one-way'),
      kill: hit('kill'),
      killMidSwitchover: hit('kill-mid-switchover'),
      switchover: hit('switchover'),
      promotion: hit('promotion-old-primary-dead') || hit('forced-promotion-old-primary-alive'),
      slowLink: hit('slow-link') && hit('stall-link'),
      bitFlipsDelivered: hit('bit-flips-delivered'),
      adjust: Object.keys(summary.faults).some((k) => k.startsWith('adjust-')),
      diskFails: Object.keys(summary.faults).some((k) => k.startsWith('disk-fails-')) && hit('disk-attached'),
      writesAcknowledged: summary.writesAcknowledged > 50,
      writesLost: summary.writesLost,
      failoversChecked: summary.failoversChecked > 0,
      settlePoints: summary.settlePoints > 1,
      writesConfirmedOnBoth: summary.writesConfirmedOnBoth > 0,
      // A confirmed write destroyed on purpose before a last failover: the check must catch it.
      canary: summary.canary,
    }).toEqual({
      enoughSteps: true,
      partition: true,
      kill: true,
      killMidSwitchover: true,
      switchover: true,
      promotion: true,
      slowLink: true,
      bitFlipsDelivered: true,
      adjust: true,
      diskFails: true,
      writesAcknowledged: true,
      writesLost: 0,
      failoversChecked: true,
      settlePoints: true,
      writesConfirmedOnBoth: true,
      canary: 'caught',
    });
  });
});
