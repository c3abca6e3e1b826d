#!/usr/bin/env node
'use strict';
/**
 * npm run bench: micro benchmarks (benny), then end-to-end fio runs on one
 * row per block stack (raw loop, nbdkit+nbdfuse, nraid, ...), a table with
 * ratios against the raw row, and bench/results/<timestamp>.json.
 *
 * Runs as root (loop devices, mounts). Installs fio, nbdkit and nbdfuse with
 * apt-get when they are missing. Everything it creates lives in one temp
 * directory and is removed at the end, on failure and on Ctrl-C.
 */
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { runFailoverBench } = require('./failover');
const { runPostgresBench } = require('./postgres');
const { runDaemonRestartBench } = require('./daemon-restart');
const { runResyncBench } = require('./resync');
const { runMicro } = require('./micro');
const { TIMING_FULL, TIMING_QUICK, WORKLOADS, runFio } = require('./e2e/fio');
const { BASELINE_ROW, DEFAULT_ROWS, STACKS, stackById } = require('./e2e/stacks');
const system = require('./e2e/system');
const { addRatios, formatMetric, formatTable, saveResults } = require('./report');

const { cleanup, log, warn } = system;
const REPO_DIR = path.resolve(__dirname, '..');
const SIZE_BYTES_DEFAULT = 2 * 1024 ** 3;
const FREE_SPACE_MARGIN_BYTES = 512 * 1024 ** 2;
const TOOLS = [
  { command: 'fio', package: 'fio' },
  { command: 'nbdkit', package: 'nbdkit' },
  { command: 'nbdfuse', package: 'nbdfuse' },
  { command: 'losetup', package: 'mount' },
  { command: 'cc', package: 'gcc' }, // builds the floor row's server (e2e/fuse-floor.c)
];

const USAGE = `usage: node bench/run.js [options]

  --quick            CI size: ~3 s per fio job, short micro benchmarks
  --rows LIST        comma-separated rows (default ${DEFAULT_ROWS.join(',')});
                     available: ${STACKS.map((s) => s.id).join(', ')}
  --size SIZE        sparse backing file per row (default 2G; K/M/G suffixes)
  --dir DIR          where the temp directory goes (default ${os.tmpdir()});
                     its filesystem is the "disk" every row measures
  --runtime S        seconds measured per fio job (default ${TIMING_FULL.runtimeSeconds}, quick ${TIMING_QUICK.runtimeSeconds})
  --ramp S           seconds run and discarded before each job (default ${TIMING_FULL.rampSeconds}, quick ${TIMING_QUICK.rampSeconds})
  --repeat N         run every row N times, rows interleaved; the table shows medians
  --no-micro         skip the benny micro benchmarks
  --no-e2e           skip the fio rows and the failover timings (no root needed)
  --no-failover      skip the switchover and forced-promotion timings
  --no-postgres      skip the PostgreSQL switchover and forced-failover timings (bench/postgres.js)
  --no-resync        skip the resync and verify rows (bench/resync.js: full sync vs dd, sparse sync,
                     p99 under resync, verify vs parallel read, RSS on 1 TiB, rejoin after a crash)
  --strict           exit 1 when any row fails (default: only when the baseline row fails)
  -h, --help         this text`;

function parseSize(text) {
  const match = /^(\d+(?:\.\d+)?)([KMGT]?)(?:i?B)?$/i.exec(text);
  if (!match) throw new Error(`--size: expected e.g. 2G or 512M, found "${text}"`);
  const scale = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }[match[2].toUpperCase()];
  const bytes = Math.floor((Number(match[1]) * scale) / 1048576) * 1048576;
  if (bytes < 64 * 1048576) throw new Error(`--size: at least 64M, found "${text}"`);
  return bytes;
}

function parseWhole(name, text, min, max) {
  const value = Number(text);
  if (!Number.isInteger(value) || value < min || value > max) throw new Error(`${name}: expected a whole number ${min}..${max}, found "${text}"`);
  return value;
}

function parseArgs(argv) {
  const options = { quick: false, rows: DEFAULT_ROWS, sizeBytes: SIZE_BYTES_DEFAULT, dir: os.tmpdir(), micro: true, e2e: true, failover: true, postgres: true, resync: true, strict: false, runtime: null, ramp: null, repeat: 1 };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].startsWith('--') && argv[i].includes('=') ? argv[i].split(/=(.*)/s, 2) : [argv[i], undefined];
    const value = () => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new Error(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case '--quick': options.quick = true; break;
      case '--rows': options.rows = value().split(',').map((s) => s.trim()).filter(Boolean); break;
      case '--size': options.sizeBytes = parseSize(value()); break;
      case '--dir': options.dir = path.resolve(value()); break;
      case '--runtime': options.runtime = parseWhole('--runtime', value(), 1, 3600); break;
      case '--ramp': options.ramp = parseWhole('--ramp', value(), 0, 600); break;
      case '--repeat': options.repeat = parseWhole('--repeat', value(), 1, 20); break;
      case '--no-micro': options.micro = false; break;
      case '--no-e2e': options.e2e = false; break;
      case '--no-failover': options.failover = false; break;
      case '--no-postgres': options.postgres = false; break;
      case '--no-resync': options.resync = false; break;
      case '--strict': options.strict = true; break;
      case '-h': case '--help': options.help = true; break;
      default: throw new Error(`unknown option "${argv[i]}"\n\n${USAGE}`);
    }
  }
  for (const id of options.rows) {
    if (!stackById(id)) throw new Error(`--rows: unknown row "${id}"; available: ${STACKS.map((s) => s.id).join(', ')}`);
  }
  const base = options.quick ? TIMING_QUICK : TIMING_FULL;
  options.timing = { runtimeSeconds: options.runtime ?? base.runtimeSeconds, rampSeconds: options.ramp ?? base.rampSeconds };
  return options;
}

/** Ctrl-C, kill and crashes: stop our commands, then undo everything, newest first. */
function installSignalHandlers() {
  let handling = false;
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(signal, () => {
      if (handling) return;
      handling = true;
      console.error(`\n[bench] ${signal}: stopping and cleaning up`);
      system.stopCommandsSync();
      cleanup.unwindAll();
      process.exit(130);
    });
  }
  process.on('exit', () => cleanup.unwindAll());
}

function hostInfo(dir) {
  const cpus = os.cpus();
  let fsType = null;
  try {
    fsType = system.runSync('findmnt', ['--noheadings', '--output', 'FSTYPE,SOURCE', '--target', dir]).stdout.trim();
  } catch {
    // unknown
  }
  return {
    hostname: os.hostname(),
    kernel: os.release(),
    cpus: cpus.length,
    cpuModel: cpus[0] ? cpus[0].model : null,
    memoryBytes: os.totalmem(),
    node: process.version,
    tempFilesystem: fsType,
  };
}

function newestMtimeMs(dir, suffix) {
  let newest = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestMtimeMs(full, suffix));
    else if (entry.name.endsWith(suffix)) newest = Math.max(newest, fs.statSync(full).mtimeMs);
  }
  return newest;
}

/** The nraid rows run dist/ through bin/nraid: say so when dist/ is older than src/. */
function warnIfStaleBuild(rows) {
  if (!rows.some((id) => id.startsWith('nraid'))) return;
  const cli = path.join(REPO_DIR, 'dist', 'src', 'cli.js');
  try {
    if (fs.statSync(cli).mtimeMs < newestMtimeMs(path.join(REPO_DIR, 'src'), '.ts')) {
      warn(`${path.relative(REPO_DIR, cli)} is older than src/: the nraid rows run the old build (npm run build:ts)`);
    }
  } catch {
    // no dist yet: the nraid row will say what is missing
  }
}

/** The temp directory of the run; removed last, never while something is mounted below it. */
function makeRunDir(parent, sizeBytes, rows) {
  fs.mkdirSync(parent, { recursive: true });
  const dir = fs.mkdtempSync(path.join(parent, `nraid-bench-${process.pid}-`));
  cleanup.defer(`remove ${dir}`, () => {
    const mounts = system.mountsUnder(dir);
    if (mounts.length > 0) {
      warn(`not removing ${dir}: still mounted below it: ${mounts.join(', ')}`);
      return;
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const needBytes = sizeBytes * Math.max(...rows.map((id) => (id.startsWith('nraid-') ? 2 : 1))) + FREE_SPACE_MARGIN_BYTES;
  const stat = fs.statfsSync(dir);
  const freeBytes = stat.bavail * stat.bsize;
  if (freeBytes < needBytes) {
    throw new Error(`${dir} has ${(freeBytes / 1024 ** 3).toFixed(1)} GiB free; the rows may fill ${(needBytes / 1024 ** 3).toFixed(1)} GiB (use --dir or --size)`);
  }
  return dir;
}

/** One pass of one row: set the stack up, run every workload, tear it down. */
async function runRound(stack, dir, options) {
  const round = { ok: false, error: null, setupMs: null, notes: null, results: {} };
  fs.mkdirSync(dir);
  const mark = cleanup.mark();
  try {
    const started = Date.now();
    const { device, notes } = await stack.setup({ id: stack.id, dir, sizeBytes: options.sizeBytes, repoDir: REPO_DIR, timing: options.timing });
    round.setupMs = Date.now() - started;
    round.notes = Object.assign(notes ?? {}, { device }); // the same object: a row may add to it until teardown
    for (const workload of WORKLOADS) {
      const load1 = os.loadavg()[0];
      log(`fio ${workload.title} on ${device} (${options.timing.rampSeconds ? `${options.timing.rampSeconds} s ramp + ` : ''}${options.timing.runtimeSeconds} s; load ${load1.toFixed(1)})`);
      const result = await runFio(workload, device, options.timing);
      round.results[workload.id] = { ...result, hostLoad1Before: load1, hostLoad1After: os.loadavg()[0] };
      log(`  ${workload.metrics.map((m) => `${m.title} ${formatMetric(m, result[m.id])}`).join(', ')}`);
    }
    round.ok = true;
  } catch (error) {
    round.error = error.message;
    console.error(`[bench] row ${stack.id} FAILED: ${error.message}`);
  } finally {
    log(`tearing down ${stack.id}`);
    cleanup.unwindTo(mark);
    system.runSync('sync', ['-f', path.dirname(dir)]);
  }
  return round;
}

function median(values) {
  const sorted = values.filter((v) => typeof v === 'number').sort((a, b) => a - b);
  if (sorted.length === 0) return null;
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/** A row's table values: per metric, the median over the rounds that measured it. */
function summarizeRow(stack, rounds) {
  const passed = rounds.filter((r) => r.ok);
  const failed = rounds.filter((r) => !r.ok);
  const results = {};
  for (const workload of WORKLOADS) {
    const measured = rounds.map((r) => r.results[workload.id]).filter(Boolean);
    if (measured.length === 0) continue;
    results[workload.id] = {};
    for (const key of Object.keys(measured[0])) {
      if (typeof measured[0][key] === 'number') results[workload.id][key] = median(measured.map((m) => m[key]));
    }
  }
  return {
    id: stack.id,
    title: stack.title,
    description: stack.description,
    compareTo: stack.compareTo || null,
    ok: passed.length > 0,
    error: failed.length > 0 ? failed.map((r) => r.error).filter((e, i, all) => all.indexOf(e) === i).join(' | ') : null,
    roundsPassed: passed.length,
    roundsFailed: failed.length,
    notes: (passed[passed.length - 1] || rounds[rounds.length - 1]).notes,
    results,
    rounds,
  };
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  if (options.help) {
    console.log(USAGE);
    return 0;
  }
  const startedAt = new Date();
  const report = {
    schema: 1,
    startedAt: startedAt.toISOString(),
    finishedAt: null,
    options: { quick: options.quick, rows: options.rows, sizeBytes: options.sizeBytes, timing: options.timing, repeat: options.repeat },
    host: null,
    tools: null,
    micro: null,
    e2e: null,
  };
  installSignalHandlers();
  let exitCode = 0;

  if (options.e2e) {
    if (process.getuid() !== 0) throw new Error('the end-to-end rows need root (loop devices, mounts): run with sudo, or pass --no-e2e');
    log('checking tools: fio, nbdkit, nbdfuse, losetup');
    await system.ensureTools(TOOLS);
    report.tools = Object.fromEntries(['fio', 'nbdkit', 'nbdfuse', 'losetup'].map((t) => [t, system.toolVersion(t)]));
  }

  if (options.micro) {
    console.log('\n== micro benchmarks (benny)');
    try {
      report.micro = await runMicro({ quick: options.quick });
    } catch (error) {
      console.error(`[bench] micro benchmarks FAILED: ${error.message}`);
      report.micro = { error: error.message };
      exitCode = 1;
    }
  }

  if (options.e2e) {
    warnIfStaleBuild(options.rows);
    const runDir = makeRunDir(options.dir, options.sizeBytes, options.rows);
    report.host = hostInfo(runDir);
    log(`temp directory ${runDir} on ${report.host.tempFilesystem}; ${options.repeat > 1 ? `${options.repeat} rounds of ` : ''}${options.rows.length} rows x ${WORKLOADS.length} fio jobs of ${options.timing.rampSeconds + options.timing.runtimeSeconds} s`);
    if (os.loadavg()[0] > os.cpus().length) warn(`load average ${os.loadavg()[0].toFixed(1)} on ${os.cpus().length} CPUs: other work competes, the numbers will be noisy (--repeat helps)`);
    const roundsByRow = new Map(options.rows.map((id) => [id, []]));
    for (let round = 1; round <= options.repeat; round++) {
      for (const id of options.rows) {
        const stack = stackById(id);
        console.log(`\n== ${stack.title}${options.repeat > 1 ? ` (round ${round}/${options.repeat})` : ''}: ${stack.description}`);
        roundsByRow.get(id).push(await runRound(stack, path.join(runDir, `${id}-${round}`), options));
      }
    }
    const rows = options.rows.map((id) => summarizeRow(stackById(id), roundsByRow.get(id)));
    addRatios(rows, WORKLOADS, BASELINE_ROW);
    report.e2e = {
      baselineRow: BASELINE_ROW,
      workloads: WORKLOADS.map((w) => ({ id: w.id, title: w.title, fio: w.fio, metrics: w.metrics })),
      rows,
    };
    const medianOf = options.repeat > 1 ? `, median of ${options.repeat} rounds` : '';
    console.log(`\n== end to end (fio, libaio, direct=1, numjobs=1, ${options.timing.runtimeSeconds} s per job${medianOf})\n`);
    console.log(formatTable(rows, WORKLOADS, BASELINE_ROW));
    const baseline = rows.find((r) => r.id === BASELINE_ROW);
    if ((baseline && !baseline.ok) || (options.strict && rows.some((r) => !r.ok))) exitCode = 1;
    cleanup.unwindAll();
    if (options.failover) {
      console.log('\n== failover (two nodes on loopback)');
      try {
        report.failover = await runFailoverBench({ rounds: options.quick ? 2 : 5, log: (line) => console.log(line) });
      } catch (error) {
        console.error(`[bench] failover FAILED: ${error.message}`);
        report.failover = { error: error.message };
        if (options.strict) exitCode = 1;
      }
      console.log('\n== daemon restart (pause seen by fio across kill -9 and nraid restart of the Primary\'s daemon)');
      try {
        report.daemonRestart = await runDaemonRestartBench({ kills: options.quick ? 3 : 20, restarts: options.quick ? 2 : 5, log: (line) => console.log(line) });
      } catch (error) {
        console.error(`[bench] daemon restart FAILED: ${error.message}`);
        report.daemonRestart = { error: error.message };
        if (options.strict) exitCode = 1;
      }
    }
    if (options.resync) {
      console.log('\n== resync and verify (two nodes on loopback, sparse backing files; bench/resync.js)');
      try {
        const G = 1024 ** 3;
        const M = 1024 ** 2;
        report.resync = await runResyncBench(options.quick
          ? { sizeBytes: 512 * M, dataBytes: 32 * M, dirtyBytes: 128 * M, rssSizeBytes: 64 * G, rejoinSizeBytes: 1 * G, fioSeconds: 3, syncRepeat: 1, log: (line) => console.log(line) }
          : { sizeBytes: 4 * G, dataBytes: 256 * M, dirtyBytes: 1 * G, rssSizeBytes: 1024 * G, rejoinSizeBytes: 4 * G, fioSeconds: 10, syncRepeat: 3, log: (line) => console.log(line) });
        if (options.strict && report.resync.some((r) => r.error)) exitCode = 1;
      } catch (error) {
        console.error(`[bench] resync FAILED: ${error.message}`);
        report.resync = { error: error.message };
        if (options.strict) exitCode = 1;
      }
    }
    if (options.postgres) {
      console.log('\n== PostgreSQL: switchover with hooks, forced failover after kill -9 (protocol C, to the first commit)');
      try {
        report.postgres = await runPostgresBench({ rounds: options.quick ? 1 : 3, log: (line) => console.log(line) });
      } catch (error) {
        console.error(`[bench] postgres FAILED: ${error.message}`);
        report.postgres = { error: error.message };
        if (options.strict) exitCode = 1;
      }
    }
  } else {
    report.host = hostInfo(os.tmpdir());
  }

  report.finishedAt = new Date().toISOString();
  const file = saveResults(report, startedAt);
  console.log(`\nresults: ${path.relative(process.cwd(), file)} (and bench/results/latest.json)`);
  return exitCode;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error) => {
    console.error(`[bench] error: ${error.message}`);
    cleanup.unwindAll();
    process.exitCode = 1;
  },
);
