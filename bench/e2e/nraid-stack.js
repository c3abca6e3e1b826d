'use strict';
/**
 * nraid rows: nodes on 127.0.0.1 driven through the `nraid` CLI
 * (docs/CONTRACTS.md), each node's disk a direct-I/O loop device over its own
 * sparse file, every node's run-dir inside the row's directory.
 *
 *   nodes ['alpha']          single node: create-md, up, primary --force
 *   nodes ['alpha', 'beta']  replication: both up, primary --force on alpha,
 *                            then wait until beta is UpToDate (initial sync)
 *
 * With `attack`, bench/e2e/link-attack.js runs from the end of setup to the
 * teardown (1,000 hostile connections to beta's link port over each fio
 * job's time, at most 50 at once, in its own process): the row's numbers are
 * replication under attack.
 *
 * `down` is registered before `up`, so a failed row still takes its daemons
 * down. If `down` fails or leaves something behind, the sweep removes what
 * this row created: processes whose command line names this row's config
 * file (a path unique to this run), loop devices and mounts under the row's
 * directory, and the row's device symlink.
 */
const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const {
  attachLoop,
  cleanup,
  commandLine,
  createSparseFile,
  detachLoopSync,
  freePorts,
  log,
  loopsUnder,
  mountsUnder,
  processAlive,
  runCommand,
  runSync,
  sleep,
  unmountSync,
  waitGoneSync,
  warn,
} = require('./system');

const NODE_NAMES = ['alpha', 'beta'];
const CLI_TIMEOUT_MS = 120_000;
const DEVICE_WAIT_MS = 15_000;
const CONNECT_WAIT_MS = 60_000;
const SYNC_WAIT_MS = 600_000;
const SYNC_POLL_MS = 1000;
const SYNC_REPORT_MS = 10_000;

let resourceCounter = 0;

function nraidCli(ctx) {
  const bin = path.join(ctx.repoDir, 'bin', 'nraid');
  return {
    bin,
    async run(args, { timeoutMs = CLI_TIMEOUT_MS, quiet = false } = {}) {
      if (!quiet) log(`nraid ${args.join(' ')}`);
      return runCommand(process.execPath, [bin, ...args], { cwd: ctx.repoDir, timeoutMs, check: true });
    },
    runSync(args, timeoutMs = CLI_TIMEOUT_MS) {
      log(`nraid ${args.join(' ')}`);
      return runSync(process.execPath, [bin, ...args], timeoutMs);
    },
  };
}

function tomlString(value) {
  return JSON.stringify(value);
}

function configText({ resource, protocol, secret, nodes, tls = true, restartBoundMs = 0 }) {
  const lines = [
    '# written by bench/e2e/nraid-stack.js for one benchmark row',
    `resource = ${tomlString(resource)}`,
    `protocol = ${tomlString(protocol)}`,
    `secret = ${tomlString(secret)}`,
    `tls = ${tls ? 'true' : 'false'}`,
  ];
  if (restartBoundMs > 0) lines.push(`daemon-restart-bound-ms = ${restartBoundMs}`);
  for (const node of nodes) {
    lines.push(
      '',
      `[nodes.${node.name}]`,
      `address = ${tomlString(node.address)}`,
      `disk = ${tomlString(node.disk)}`,
      `device = ${tomlString(node.device)}`,
      `run-dir = ${tomlString(node.runDir)}`,
    );
  }
  return `${lines.join('\n')}\n`;
}

/** Processes (not us) whose command line contains `needle`. */
function processesNaming(needle) {
  const found = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const cmdline = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').join(' ');
      if (cmdline.includes(needle)) found.push({ pid: Number(entry), cmdline: cmdline.trim() });
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

/** Removes what an nraid row left behind; returns descriptions of what it found. */
function sweepSync({ dir, configPath, devices }) {
  const found = [];
  for (const proc of processesNaming(configPath)) {
    found.push(`process ${proc.pid} (${proc.cmdline})`);
    try {
      process.kill(proc.pid, 'SIGTERM');
    } catch {
      continue;
    }
    if (!waitGoneSync(proc.pid, 10_000) && processAlive(proc.pid)) {
      warn(`process ${proc.pid} ignored SIGTERM; sending SIGKILL`);
      try {
        process.kill(proc.pid, 'SIGKILL');
      } catch {
        // gone
      }
      waitGoneSync(proc.pid, 5000);
    }
  }
  for (const loop of loopsUnder(dir)) {
    // The rows' own disk loops (backing *.img) are detached by their own cleanup step.
    if (loop.backingFile.endsWith('.img')) continue;
    found.push(`loop device ${loop.device} on ${loop.backingFile}`);
    detachLoopSync(loop.device, loop.backingFile);
  }
  for (const mountPoint of mountsUnder(dir)) {
    found.push(`mount ${mountPoint}`);
    unmountSync(mountPoint);
  }
  for (const device of devices) {
    let stat = null;
    try {
      stat = fs.lstatSync(device);
    } catch {
      continue;
    }
    found.push(`device ${device}`);
    if (stat.isSymbolicLink()) fs.rmSync(device, { force: true });
  }
  return found;
}

async function waitForPath(filePath, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (!fs.existsSync(filePath)) {
    if (Date.now() >= deadline) throw new Error(`${filePath} did not appear within ${timeoutMs} ms`);
    await sleep(100);
  }
}

async function status(cli, configPath, node, quiet = false) {
  const result = await cli.run(['status', '-c', configPath, '-n', node, '--json'], { quiet });
  return JSON.parse(result.stdout);
}

/** Waits until the secondary is UpToDate and replication is Established (initial sync done). */
async function waitForSync(cli, configPath, primary) {
  const started = Date.now();
  let lastReport = started;
  log(`waiting until the peer is connected and UpToDate (nraid status every ${SYNC_POLL_MS} ms)`);
  for (;;) {
    const s = await status(cli, configPath, primary, true);
    if (s.connection === 'Connected' && s.replication === 'Established' && s.peerDisk === 'UpToDate') return s;
    if (s.connection !== 'Connected' && Date.now() - started > CONNECT_WAIT_MS) {
      throw new Error(`peer did not connect within ${CONNECT_WAIT_MS / 1000} s: connection ${s.connection}, replication ${s.replication}, peer disk ${s.peerDisk}`);
    }
    if (Date.now() - started > SYNC_WAIT_MS) {
      throw new Error(`peer not in sync after ${SYNC_WAIT_MS / 1000} s: connection ${s.connection}, replication ${s.replication}, peer disk ${s.peerDisk}`);
    }
    if (Date.now() - lastReport >= SYNC_REPORT_MS) {
      lastReport = Date.now();
      log(`waiting for sync: ${s.connection}/${s.replication}, peer ${s.peerDisk}, ${s.outOfSyncBytes} bytes out of sync`);
    }
    await sleep(SYNC_POLL_MS);
  }
}

/**
 * The attacker of an `attack` row: started after setup, stopped (SIGTERM, then
 * SIGKILL) at teardown; its summary lands in `notes.attack`.
 */
function startAttack(ctx, port, resource, notes) {
  const script = path.join(__dirname, 'link-attack.js');
  // 1,000 connections over each fio job's time (ramp and runtime), all along the row.
  const jobSeconds = ctx.timing ? ctx.timing.rampSeconds + ctx.timing.runtimeSeconds : 12;
  const rate = Math.ceil(1000 / jobSeconds);
  const summaryPath = path.join(ctx.dir, 'link-attack.json');
  const args = [script, '--port', String(port), '--connections', '1000', '--concurrency', '50', '--rate', String(rate), '--resource', resource, '--rounds', '0', '--summary', summaryPath];
  log(`attack: node ${args.map((a) => path.relative(ctx.repoDir, a) || a).join(' ')}`);
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk) => (stdout += chunk));
  child.stderr.on('data', (chunk) => (stderr += chunk));
  cleanup.defer(`stop the link attacker (pid ${child.pid})`, () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      if (!waitGoneSync(child.pid, 5000)) {
        child.kill('SIGKILL');
        waitGoneSync(child.pid, 5000);
      }
    }
    // Read here, synchronously: the row's notes are saved before the child's output events would run.
    try {
      notes.attack = JSON.parse(fs.readFileSync(summaryPath, 'utf8'));
    } catch {
      notes.attack = { error: `link-attack.js left no summary: ${stderr.trim() || stdout.trim() || 'no output'}` };
    }
  });
  return child;
}

/**
 * @param {{ id: string, title: string, nodes: string[], protocol?: 'A'|'B'|'C', tls?: boolean, attack?: boolean, compareTo?: string }} options
 *   nodes: the nodes that get a disk and a daemon; the first one becomes primary.
 *   compareTo: the row whose values this one's targets are ratios of (report.js).
 */
/** A holder's bound in the held rows (issue 13): the default config has no holder. */
const HELD_RESTART_BOUND_MS = 5000;

function nraidStack({ id, title, nodes, protocol = 'C', tls = true, attack = false, held = false, compareTo = null }) {
  return {
    id,
    title,
    compareTo,
    description: `nraid via bin/nraid: ${nodes.join(' + ')}${nodes.length > 1 ? `, protocol ${protocol}, ${tls ? 'TLS 1.3 (PSK)' : 'no TLS'}` : ''}, disks = loop dio over sparse files${held ? `; a holder keeps the FUSE connection (daemon-restart-bound-ms = ${HELD_RESTART_BOUND_MS})` : ''}${attack ? '; 1,000 hostile connections to beta\'s port per fio job (bench/e2e/link-attack.js)' : ''}`,
    async setup(ctx) {
      const cli = nraidCli(ctx);
      if (!fs.existsSync(cli.bin)) throw new Error(`${cli.bin} does not exist (is the CLI written and built?)`);

      resourceCounter += 1;
      const resource = `nb${process.pid}r${resourceCounter}`;
      const ports = await freePorts(NODE_NAMES.length);
      const primary = nodes[0];
      const configNodes = [];
      for (const [index, name] of NODE_NAMES.entries()) {
        const used = nodes.includes(name);
        let disk = path.join(ctx.dir, `${name}-disk-not-used`);
        if (used) {
          const file = createSparseFile(path.join(ctx.dir, `${name}.img`), ctx.sizeBytes);
          disk = (await attachLoop(file, { directIo: true })).device;
        }
        const runDir = path.join(ctx.dir, `run-${name}`);
        fs.mkdirSync(runDir);
        configNodes.push({
          name,
          address: `127.0.0.1:${ports[index]}`,
          disk,
          device: name === primary ? `/dev/nraid/${resource}-bench` : `/dev/nraid/${resource}-bench-${name}`,
          runDir,
        });
      }
      const configPath = path.join(ctx.dir, `${resource}.toml`);
      fs.writeFileSync(configPath, configText({ resource, protocol, secret: crypto.randomBytes(16).toString('hex'), nodes: configNodes, tls, restartBoundMs: held ? HELD_RESTART_BOUND_MS : 0 }), { mode: 0o600 });
      log(`config ${configPath}: resource ${resource}, ${configNodes.map((n) => `${n.name} ${n.address} disk ${n.disk}`).join('; ')}`);

      // Registered first, so it runs after every `down` below.
      const devices = configNodes.map((n) => n.device);
      cleanup.defer(`sweep what ${resource} left`, () => {
        const left = sweepSync({ dir: ctx.dir, configPath, devices });
        if (left.length > 0) warn(`nraid ${resource} left behind (now removed): ${left.join('; ')}`);
      });

      for (const node of nodes) await cli.run(['create-md', '-c', configPath, '-n', node, '--force']);
      for (const node of nodes) {
        cleanup.defer(`nraid down ${resource} on ${node}`, () => {
          const result = cli.runSync(['down', '-c', configPath, '-n', node]);
          if (result.code !== 0) {
            warn(`\`${commandLine('nraid', ['down', '-c', configPath, '-n', node])}\` exited with code ${result.code}: ${(result.stderr || result.stdout).trim()}`);
          }
        });
        await cli.run(['up', '-c', configPath, '-n', node]);
      }
      await cli.run(['primary', '--force', '-c', configPath, '-n', primary]);
      const device = configNodes.find((n) => n.name === primary).device;
      let state = nodes.length > 1 ? await waitForSync(cli, configPath, primary) : null;
      await waitForPath(device, DEVICE_WAIT_MS);
      if (state === null) {
        try {
          state = await status(cli, configPath, primary);
        } catch (error) {
          warn(`nraid status failed (row continues): ${error.message}`);
        }
      }
      const notes = { resource, protocol, tls, held, nodes, configPath, status: state };
      if (attack) {
        const beta = configNodes.find((n) => n.name === 'beta');
        startAttack(ctx, Number(beta.address.split(':').pop()), resource, notes);
      }
      return { device, notes };
    },
  };
}

module.exports = { configText, nraidStack, sweepSync };
