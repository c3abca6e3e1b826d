'use strict';
/**
 * Failover timings on loopback, the figures the failover issue asks for:
 * planned switchover (both directions, `nraid switchover` until the new
 * Primary's device exists) and forced promotion of the Secondary after kill -9
 * of the Primary's daemon (`nraid primary --force` wall time). Two nodes on
 * this machine, small sparse disks; everything is removed afterwards.
 */
const { execFileSync, spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const REPO_DIR = path.resolve(__dirname, '..');
const BIN = path.join(REPO_DIR, 'bin', 'nraid');
const DISK_BYTES = 128 << 20;

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

async function runFailoverBench({ rounds = 5, log = console.log } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nraid-failover-'));
  const resource = `fo${process.pid}`;
  const undo = [];
  const cli = (node, ...args) => {
    const started = process.hrtime.bigint();
    const result = spawnSync(process.execPath, [BIN, ...args, '-c', configPath, '-n', node], { encoding: 'utf8' });
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    if (result.status !== 0) throw new Error(`nraid ${args.join(' ')} on ${node}: ${result.stderr.trim()}`);
    return { ms, stdout: result.stdout };
  };
  const status = (node) => JSON.parse(cli(node, 'status', '--json').stdout);
  const waitFor = async (what, predicate, timeoutMs = 60_000) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        if (predicate()) return;
      } catch {
        // not up yet
      }
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };
  const configPath = path.join(dir, `${resource}.toml`);
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
    const lines = [`resource = "${resource}"`, `secret = "${crypto.randomBytes(12).toString('hex')}"`, 'connect-retry-ms = 100', 'ping-interval-ms = 200', 'ping-timeout-ms = 1000'];
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
    const switchoverMs = [];
    let primary = 'alpha';
    for (let i = 0; i < rounds * 2; i++) {
      const next = primary === 'alpha' ? 'beta' : 'alpha';
      // Alternate the node the command runs on: either may start a switchover.
      const { ms } = cli(i % 2 === 0 ? primary : next, 'switchover');
      if (!fs.existsSync(`/dev/nraid/${resource}-${next}`)) throw new Error(`after switchover, ${next} has no device`);
      switchoverMs.push(ms);
      primary = next;
      await waitFor('Established after switchover', () => status(primary).replication === 'Established' && status(primary).peerDisk === 'UpToDate');
    }
    const promoteMs = [];
    for (let i = 0; i < rounds; i++) {
      const survivor = primary === 'alpha' ? 'beta' : 'alpha';
      const victimPid = status(primary).pid;
      process.kill(victimPid, 'SIGKILL');
      await waitFor('the survivor to notice', () => status(survivor).connection !== 'Connected', 10_000);
      const { ms } = cli(survivor, 'primary', '--force');
      promoteMs.push(ms);
      cli(primary, 'up');
      await waitFor('the old primary to rejoin', () => status(survivor).replication === 'Established' && status(survivor).peerDisk === 'UpToDate');
      primary = survivor;
    }
    const result = {
      switchoverMsMedian: median(switchoverMs),
      switchoverMsMax: Math.max(...switchoverMs),
      forcedPromotionMsMedian: median(promoteMs),
      forcedPromotionMsMax: Math.max(...promoteMs),
      switchoverMs,
      forcedPromotionMs: promoteMs,
    };
    log(`switchover (CLI wall time, ${switchoverMs.length} runs): median ${result.switchoverMsMedian.toFixed(0)} ms, max ${result.switchoverMsMax.toFixed(0)} ms (target <= 3000 ms)`);
    log(`forced promotion after kill -9 (${promoteMs.length} runs): median ${result.forcedPromotionMsMedian.toFixed(0)} ms, max ${result.forcedPromotionMsMax.toFixed(0)} ms (target <= 1000 ms)`);
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
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

module.exports = { runFailoverBench };

if (require.main === module) {
  runFailoverBench().catch((error) => {
    console.error(`[bench] failover: ${error.message}`);
    process.exitCode = 1;
  });
}
