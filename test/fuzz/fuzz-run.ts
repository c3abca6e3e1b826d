/**
 * How every fuzz target runs (docs/testing.md, "Fuzzing"): fast-check with a
 * case count from NRAID_FUZZ_CASES (small in the suite, 100000 under
 * `npm run fuzz`), a time bound on the whole run, a seed that is printed and
 * can be replayed (NRAID_FUZZ_SEED), and canaries: properties that MUST fail,
 * so that a harness that stopped reaching the decoder (a generator that only
 * makes valid input, a check that always passes) is noticed.
 */
import * as fc from 'fast-check';

/** Cases per target unless NRAID_FUZZ_CASES says otherwise; each target passes its own CI size. */
export function fuzzCases(ciCases: number): number {
  const raw = process.env.NRAID_FUZZ_CASES;
  if (raw === undefined || raw === '') return ciCases;
  const cases = Number(raw);
  if (!Number.isSafeInteger(cases) || cases < 1) throw new Error(`NRAID_FUZZ_CASES must be a whole number above 0, found "${raw}"`);
  return cases;
}

/** The suite's bound on one target's run; NRAID_FUZZ_TIME_LIMIT_S overrides it (the 100k runs take minutes). */
export function fuzzTimeLimitMs(ciLimitMs: number): number {
  const raw = process.env.NRAID_FUZZ_TIME_LIMIT_S;
  if (raw !== undefined && raw !== '') return Number(raw) * 1000;
  return process.env.NRAID_FUZZ_CASES !== undefined && process.env.NRAID_FUZZ_CASES !== '' ? 60 * 60 * 1000 : ciLimitMs;
}

/** A jest timeout that outlasts the time bound (and the shrinking after a failure). */
export function jestTimeoutMs(ciLimitMs: number): number {
  return fuzzTimeLimitMs(ciLimitMs) * 2 + 30_000;
}

function seed(): number {
  const raw = process.env.NRAID_FUZZ_SEED;
  return raw !== undefined && raw !== '' ? Number(raw) : Math.floor(Math.random() * 0x7fffffff);
}

export interface FuzzOutcome {
  target: string;
  runs: number;
  durationMs: number;
  interrupted: boolean;
  seed: number;
}

/** One line per run, for the report: target, cases, time, seed. */
function report(outcome: FuzzOutcome): void {
  const line =
    `fuzz ${outcome.target}: ${outcome.runs} cases in ${(outcome.durationMs / 1000).toFixed(1)} s` +
    `${outcome.interrupted ? ' (stopped by the time bound)' : ''}, seed ${outcome.seed}`;
  process.stdout.write(`${line}\n`);
}

/**
 * Runs `property` for `cases` cases within `timeLimitMs`; throws fast-check's
 * report (with seed and counterexample path, for NRAID_FUZZ_SEED replays) on
 * a failure. Returns what ran.
 */
export async function fuzz<Ts>(
  target: string,
  property: fc.IAsyncPropertyWithHooks<Ts> | fc.IPropertyWithHooks<Ts>,
  options: { cases: number; timeLimitMs: number; caseTimeoutMs?: number },
): Promise<FuzzOutcome> {
  const started = Date.now();
  const parameters: fc.Parameters<Ts> = {
    numRuns: options.cases,
    seed: seed(),
    plugins: [fc.interruptAfterTimeLimit(options.timeLimitMs), ...(options.caseTimeoutMs ? [fc.timeout(options.caseTimeoutMs)] : [])],
  };
  const details = await fc.check(property as fc.IAsyncProperty<Ts>, parameters);
  const outcome: FuzzOutcome = {
    target,
    runs: details.numRuns,
    durationMs: Date.now() - started,
    interrupted: details.interrupted,
    seed: details.seed,
  };
  report(outcome);
  if (details.failed) {
    const why = details.errorInstance instanceof Error ? details.errorInstance.message : String(details.errorInstance);
    // Counterexamples can hold megabytes (a 1 MiB command name): the report keeps the start of each.
    const shortened = (text: string) => text.replace(/(\d+,){64,}/g, (run) => `${run.slice(0, 200)}... (${run.split(',').length} values),`);
    throw new Error(
      `fuzz ${target} failed (replay: NRAID_FUZZ_SEED=${details.seed}): ${why.slice(0, 2000)}\n${shortened(fc.defaultReportMessage(details) ?? '').slice(0, 4000)}`,
    );
  }
  if (details.numRuns === 0) throw new Error(`fuzz ${target}: no case ran within ${options.timeLimitMs} ms; the harness is too slow or stuck`);
  return outcome;
}

/**
 * A canary: `property` states something false about the target ("no frame
 * is ever refused"), so it must fail within `cases` cases. Returns the
 * counterexample; throws when the property held, which means the harness no
 * longer reaches what it claims to test.
 */
export async function expectCanaryFails<Ts>(
  target: string,
  property: fc.IAsyncPropertyWithHooks<Ts> | fc.IPropertyWithHooks<Ts>,
  cases: number,
): Promise<Ts> {
  const details = await fc.check(property as fc.IAsyncProperty<Ts>, { numRuns: cases, seed: seed(), endOnFailure: true });
  if (!details.failed || details.counterexample === null) {
    throw new Error(`canary of fuzz ${target} held for ${details.numRuns} cases, but it must fail: the harness no longer reaches the decoder`);
  }
  // It must fail by its verdict (returning false), not because the harness threw.
  const why = details.errorInstance instanceof Error ? details.errorInstance.message : String(details.errorInstance);
  if (!/returning false/i.test(why)) throw new Error(`canary of fuzz ${target} failed for another reason than its verdict: ${why}`);
  return details.counterexample;
}
