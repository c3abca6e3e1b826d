'use strict';
/**
 * The pause an application sees when the Primary's daemon is replaced while
 * it writes (issue 13): fio (4 KiB random writes, QD8, direct) on the
 * Primary's device across each event, its maximum completion latency taken
 * as the pause. Events: kill -9 of the daemon (the holder starts it again,
 * the new one takes the device back), and `nraid restart` (handover).
 * Targets: kill -9 median <= 1 s and max <= 2 s; restart <= 0.5 s. Two
 * nodes on loopback with a holder (daemon-restart-bound-ms); everything is
 * removed afterwards.
 */
const { execFileSync, spawn, spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const REPO_DIR = path.resolve(__dirname, '..');
const BIN = path.join(REPO_DIR, 'bin', 'nraid');
const DISK_BYTES = 128 << 20;
const BOUND_MS = 20_000;

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** fio across one event, stopped 1 s after it: resolves with its maximum completion latency in ms (the pause the application saw). */
async function fioAcross(device, jsonPath, event) {
  const fio = spawn('fio', ['--name=pause', `--filename=${device}`, '--rw=randwrite', '--bs=4k', '--direct=1', '--ioengine=libaio', '--iodepth=8',
    '--size=32M', '--time_based', '--runtime=900', '--output-format=json', `--output=${jsonPath}`], { stdio: 'ignore' });
  const done = new Promise((resolve) => fio.on('exit', resolve));
  await sleep(1000);
  await event();
  await sleep(1000);
  fio.kill('SIGINT');
  const code = await done;
  const text = fs.readFileSync(jsonPath, 'utf8');
  const job = JSON.parse(text.slice(text.indexOf('{'))).jobs[0];
  if (code !== 128 || job.error !== 0) throw new Error(`fio failed across the event (exit ${code}, error ${job.error})`);
  return job.write.clat_ns.max / 1e6;
}

/** The median of each start phase the restarted daemons logged ("serving again after a restart", src/daemon.ts). */
function restartPhases(logPath) {
  const byPhase = new Map();
  let restarts = 0;
  for (const line of fs.readFileSync(logPath, 'utf8').split('\n')) {
    if (!line.includes('serving again after a restart')) continue;
    const phases = JSON.parse(line).phasesMs ?? {};
    restarts += 1;
    for (const [name, ms] of Object.entries(phases)) byPhase.set(name, [...(byPhase.get(name) ?? []), ms]);
  }
  const result = { restarts };
  for (const [name, values] of byPhase) result[name] = median(values);
  return result;
}

async function runDaemonRestartBench({ kills = 20, restarts = 5, quiet = 3, log = console.log } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nraid-restart-'));
  const resource = `rs${process.pid}`;
  const undo = [];
  const configPath = path.join(dir, `${resource}.toml`);
  const cli = (node, ...args) => {
    const result = spawnSync(process.execPath, [BIN, ...args, '-c', configPath, '-n', node], { encoding: 'utf8' });
    if (result.status !== 0) throw new Error(`nraid ${args.join(' ')} on ${node}: ${result.stderr.trim()}`);
    return result.stdout;
  };
  const status = (node) => JSON.parse(cli(node, 'status', '--json'));
  const waitFor = async (what, predicate, timeoutMs = 60_000) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        if (predicate()) return;
      } catch {
        // not answering yet
      }
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await sleep(50);
    }
  };
  try {
    const disks = {};
    for (const node of ['alpha', 'beta']) {
      const image = path.join(dir, `${node}.img`);
      fs.writeFileSync(image, '');
      fs.truncateSync(image, DISK_BYTES);
      disks[node] = execFileSync('losetup', ['--find', '--show', '--direct-io=on', image], { encoding: 'utf8' }).trim();
      undo.push(() => execFileSync('losetup', ['-d', disks[node]]));
    }
    const ports = [await freePort(), await freePort()];
    const lines = [`resource = "${resource}"`, `secret = "${crypto.randomBytes(12).toString('hex')}"`, 'connect-retry-ms = 100', `daemon-restart-bound-ms = ${BOUND_MS}`];
    ['alpha', 'beta'].forEach((node, i) => {
      lines.push(`[nodes.${node}]`, `address = "127.0.0.1:${ports[i]}"`, `disk = "${disks[node]}"`, `device = "/dev/nraid/${resource}-${node}"`, `run-dir = "${path.join(dir, `run-${node}`)}"`);
    });
    fs.writeFileSync(configPath, lines.join('\n') + '\n');
    for (const node of ['alpha', 'beta']) {
      cli(node, 'create-md');
      cli(node, 'up');
      undo.push(() => spawnSync(process.execPath, [BIN, 'down', '-c', configPath, '-n', node]));
    }
    cli('alpha', 'primary', '--force');
    await waitFor('the initial sync', () => status('beta').disk === 'UpToDate' && status('alpha').replication === 'Established');
    const device = `/dev/nraid/${resource}-alpha`;
    // The baseline of the same run: fio's max completion latency across a window with no event
    // (what the load of the machine alone gives), as long as a restart's window.
    const quietMs = [];
    for (let i = 0; i < quiet; i++) quietMs.push(await fioAcross(device, path.join(dir, 'fio.json'), () => sleep(500)));
    const killMs = [];
    for (let i = 0; i < kills; i++) {
      killMs.push(await fioAcross(device, path.join(dir, 'fio.json'), async () => {
        const pid = status('alpha').pid;
        process.kill(pid, 'SIGKILL');
        await waitFor('the restarted daemon', () => status('alpha').pid !== pid, BOUND_MS);
      }));
    }
    const restartMs = [];
    for (let i = 0; i < restarts; i++) {
      restartMs.push(await fioAcross(device, path.join(dir, 'fio.json'), async () => cli('alpha', 'restart')));
    }
    const phases = restartPhases(path.join(dir, 'run-alpha', 'daemon.log'));
    const result = {
      quietMaxLatencyMsMedian: median(quietMs),
      killPauseMsMedian: median(killMs),
      killPauseMsMax: Math.max(...killMs),
      restartPauseMsMedian: median(restartMs),
      restartPauseMsMax: Math.max(...restartMs),
      killPauseMs: killMs,
      restartPauseMs: restartMs,
      quietMaxLatencyMs: quietMs,
      phasesMsMedian: phases,
      loadAverage: os.loadavg(),
    };
    const ratio = (ms) => (result.quietMaxLatencyMsMedian > 0 ? ` (${(ms / result.quietMaxLatencyMsMedian).toFixed(1)}x)` : '');
    log(`| event (fio max completion latency, ms) | runs | median | max | target |`);
    log(`|---|---|---|---|---|`);
    log(`| none (baseline, same run) | ${quietMs.length} | ${result.quietMaxLatencyMsMedian.toFixed(0)} | ${Math.max(...quietMs).toFixed(0)} | |`);
    log(`| kill -9 of the Primary's daemon | ${killMs.length} | ${result.killPauseMsMedian.toFixed(0)}${ratio(result.killPauseMsMedian)} | ${result.killPauseMsMax.toFixed(0)}${ratio(result.killPauseMsMax)} | median <= 1000, max <= 2000 |`);
    log(`| nraid restart | ${restartMs.length} | ${result.restartPauseMsMedian.toFixed(0)}${ratio(result.restartPauseMsMedian)} | ${result.restartPauseMsMax.toFixed(0)}${ratio(result.restartPauseMsMax)} | <= 500 |`);
    log(`pause across kill -9 of the Primary's daemon (fio max completion latency, ${killMs.length} runs): median ${result.killPauseMsMedian.toFixed(0)} ms, max ${result.killPauseMsMax.toFixed(0)} ms (target: median <= 1000, max <= 2000)`);
    log(`pause across nraid restart (${restartMs.length} runs): median ${result.restartPauseMsMedian.toFixed(0)} ms, max ${result.restartPauseMsMax.toFixed(0)} ms (target <= 500)`);
    log(`where the daemon's pause went (median ms per phase over ${phases.restarts} restarts, from its daemon.log): ${Object.entries(phases).filter(([k]) => k !== 'restarts').map(([k, v]) => `${k} ${v}`).join(', ')}`);
    log(`load average meanwhile: ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
    return result;
  } finally {
    for (const node of ['alpha', 'beta']) spawnSync(process.execPath, [BIN, 'secondary', '-c', configPath, '-n', node]);
    while (undo.length > 0) {
      try {
        undo.pop()();
      } catch {
        // keep going
      }
    }
    if (process.env.NRAID_BENCH_KEEP_LOG) fs.copyFileSync(path.join(dir, "run-alpha", "daemon.log"), process.env.NRAID_BENCH_KEEP_LOG);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

module.exports = { runDaemonRestartBench };

if (require.main === module) {
  const kills = Number(process.argv[2] ?? 20);
  const restarts = Number(process.argv[3] ?? 5);
  const startedAt = new Date().toISOString();
  runDaemonRestartBench({ kills, restarts }).then((result) => {
    // Run alone: its own results file (npm run bench puts these rows into its report instead).
    const file = path.join(__dirname, 'results', `daemon-restart-${startedAt.replace(/[:.]/g, '-').replace(/-\d+Z$/, 'Z')}.json`);
    fs.writeFileSync(file, JSON.stringify({ startedAt, finishedAt: new Date().toISOString(), kills, restarts, daemonRestart: result }, null, 2) + '\n');
    console.log(`results: ${path.relative(process.cwd(), file)}`);
  }).catch((error) => {
    console.error(`[bench] daemon restart: ${error.message}`);
    process.exitCode = 1;
  });
}
