/**
 * `npm run torture -- --minutes N --seed S [--replay S:STEP] [--no-disk-faults] [--quiet]`
 * (package.json: tsc, then node dist/test/torture/main.js). Runs the torture
 * runner (runner.ts), prints its summary, and exits 1 if an invariant failed
 * (the summary then gives the seed, the step and the --replay command). The
 * harness's cleanup registry undoes everything at the end, and on Ctrl-C.
 */
import { cleanupAll } from '../harness/cleanup';
import { formatSummary, StepKind, Torture } from './runner';

const USAGE = 'usage: npm run torture -- [--minutes N] [--seed S] [--replay S:STEP] [--cover KIND,KIND] [--canary] [--no-disk-faults] [--quiet]';

function parseArgs(argv: string[]): { minutes?: number; seed: number; maxSteps?: number; verbose: boolean; cover: StepKind[]; canary: boolean; diskFaults: boolean } {
  let minutes: number | undefined;
  let seed: number | undefined;
  let maxSteps: number | undefined;
  let verbose = true;
  let cover: StepKind[] = [];
  let canary = false;
  // On by default: both backing disks are failing disks (nbdkit + nbdfuse) and the disk-fails step is drawn.
  let diskFaults = true;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value; ${USAGE}`);
      return v;
    };
    if (a === '--minutes') minutes = Number(value());
    else if (a === '--seed') seed = Number(value());
    else if (a === '--replay') {
      const m = /^(\d+):(\d+)$/.exec(value());
      if (!m) throw new Error(`--replay takes SEED:STEP; ${USAGE}`);
      seed = Number(m[1]);
      maxSteps = Number(m[2]);
    } else if (a === '--quiet') verbose = false;
    else if (a === '--canary') canary = true;
    else if (a === '--no-disk-faults') diskFaults = false;
    else if (a === '--cover') cover = value().split(',') as StepKind[];
    else throw new Error(`unknown argument ${a}; ${USAGE}`);
  }
  if (minutes !== undefined && !(minutes > 0)) throw new Error(`--minutes must be > 0; ${USAGE}`);
  if (seed !== undefined && !(Number.isInteger(seed) && seed >= 0 && seed < 2 ** 32)) throw new Error(`--seed must be an integer 0..2^32-1; ${USAGE}`);
  return { minutes: maxSteps === undefined ? minutes ?? 5 : undefined, seed: seed ?? Math.floor(Math.random() * 2 ** 31), maxSteps, verbose, cover, canary, diskFaults };
}

async function main(): Promise<number> {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n`);
    return 2;
  }
  if (process.getuid?.() !== 0) {
    process.stderr.write('the torture runner needs root (loop devices, network namespaces)\n');
    return 2;
  }
  process.stdout.write(`torture: seed ${args.seed}, ${args.maxSteps !== undefined ? `replay up to step ${args.maxSteps}` : `${args.minutes} minutes`}\n`);
  const summary = await new Torture({ seed: args.seed, minutes: args.minutes, maxSteps: args.maxSteps, verbose: args.verbose, mustCover: args.cover, canary: args.canary, diskFaults: args.diskFaults }).run();
  let cleanupProblem: string | undefined;
  await cleanupAll().catch((e: Error) => (cleanupProblem = e.message));
  process.stdout.write(formatSummary(summary) + '\n');
  if (cleanupProblem) process.stdout.write(`cleanup: ${cleanupProblem}\n`);
  return summary.failure || cleanupProblem ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e: Error) => {
    process.stderr.write(`${e.stack ?? e.message}\n`);
    process.exit(1);
  },
);
