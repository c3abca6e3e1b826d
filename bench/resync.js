'use strict';
/**
 * Resync and verify rows (issue 12, targets of Deliver 5 and 6), ratios
 * against baselines measured in the same run, two nodes on 127.0.0.1, each
 * disk a sparse file used directly as the backing disk (so its holes show
 * through SEEK_DATA):
 *
 *   sparse-sync   initial sync of a SIZE device holding DATA bytes (random,
 *                 at the start) / full-byte sync of the same SIZE full of
 *                 data (target <= 0.15 at 4 GiB / 256 MiB)
 *   verify        `nraid verify` of the full device after that full sync /
 *                 reading both backing files in parallel (dd, 1 MiB, direct)
 *                 (target >= 0.8)
 *
 *   node bench/resync.js [--size 4G] [--data 256M]
 *
 * Everything is made under one temp dir and undone at the end (nraid down,
 * files removed), also on failure and Ctrl-C.
 */
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { configText, sweepSync } = require('./e2e/nraid-stack');
const { cleanup, freePorts, log, runCommand, runSync, sleep, warn } = require('./e2e/system');

const REPO = path.join(__dirname, '..');
const BIN = path.join(REPO, 'bin', 'nraid');
const MiB = 1024 * 1024;

function parseSize(text) {
  const m = /^(\d+)([KMGT]?)$/i.exec(text);
  if (m === null) throw new Error(`expected a size such as 4G or 256M, found "${text}"`);
  return Number(m[1]) * { '': 1, K: 1024, M: MiB, G: 1024 * MiB, T: 1024 * 1024 * MiB }[m[2].toUpperCase()];
}

function option(name, fallback) {
  const at = process.argv.indexOf(name);
  return at < 0 ? fallback : process.argv[at + 1];
}

async function nraid(args) {
  return runCommand(process.execPath, [BIN, ...args], { cwd: REPO, timeoutMs: 120_000, check: true });
}

async function status(configPath, node) {
  return JSON.parse((await nraid(['status', '-c', configPath, '-n', node, '--json'])).stdout);
}

async function until(what, predicate, timeoutMs = 1_800_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs / 1000} s`);
    await sleep(100);
  }
}

/** Writes `bytes` of random-looking data at the start of `file` (a 1 MiB random block, each MiB made distinct). */
function fillData(file, bytes) {
  const block = crypto.randomBytes(MiB);
  const fd = fs.openSync(file, 'r+');
  try {
    for (let at = 0; at < bytes; at += MiB) {
      block.writeBigUInt64LE(BigInt(at), 0);
      fs.writeSync(fd, block, 0, Math.min(MiB, bytes - at), at);
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Two nodes over sparse files of `sizeBytes`, alpha's holding `dataBytes` of data; returns once alpha is Primary (the sync starts). */
async function pair(dir, tag, sizeBytes, dataBytes) {
  const resource = `rb${process.pid}${tag}`;
  const ports = await freePorts(2);
  const nodes = ['alpha', 'beta'].map((name, i) => {
    const disk = path.join(dir, `${tag}-${name}.disk`);
    fs.writeFileSync(disk, '');
    fs.truncateSync(disk, sizeBytes);
    const runDir = path.join(dir, `${tag}-run-${name}`);
    fs.mkdirSync(runDir);
    return { name, address: `127.0.0.1:${ports[i]}`, disk, device: `/dev/nraid/${resource}-${name}`, runDir };
  });
  fillData(nodes[0].disk, dataBytes);
  const configPath = path.join(dir, `${resource}.toml`);
  fs.writeFileSync(configPath, configText({ resource, protocol: 'C', secret: crypto.randomBytes(16).toString('hex'), nodes }), { mode: 0o600 });
  cleanup.defer(`sweep ${resource}`, () => sweepSync({ dir, configPath, devices: nodes.map((n) => n.device) }));
  for (const n of nodes) await nraid(['create-md', '--force', '-c', configPath, '-n', n.name]);
  for (const n of nodes) {
    cleanup.defer(`down ${resource} ${n.name}`, () => runSync(process.execPath, [BIN, 'down', '-c', configPath, '-n', n.name], 60_000));
    await nraid(['up', '-c', configPath, '-n', n.name]);
  }
  await until('connected', async () => (await status(configPath, 'alpha')).connection === 'Connected', 60_000);
  return { configPath, nodes };
}

async function timedSync(p) {
  const started = process.hrtime.bigint();
  await nraid(['primary', '--force', '-c', p.configPath, '-n', 'alpha']);
  const s = await until('sync', async () => {
    const st = await status(p.configPath, 'alpha');
    return st.replication === 'Established' && st.peerDisk === 'UpToDate' && st.outOfSyncBytes === 0 ? st : null;
  });
  return { seconds: Number(process.hrtime.bigint() - started) / 1e9, sent: s.resyncSent };
}

async function main() {
  const sizeBytes = parseSize(option('--size', '4G'));
  const dataBytes = parseSize(option('--data', '256M'));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nraid-bench-resync-'));
  cleanup.defer(`remove ${dir}`, () => fs.rmSync(dir, { recursive: true, force: true }));
  const rows = [];
  try {
    log(`full-byte sync: ${sizeBytes} bytes, all data`);
    const full = await pair(dir, 'full', sizeBytes, sizeBytes);
    const fullSync = await timedSync(full);
    log(`full-byte sync: ${fullSync.seconds.toFixed(2)} s (${JSON.stringify(fullSync.sent)})`);

    // Verify of the full device against reading both backing files in parallel.
    const dataSize = (await status(full.configPath, 'alpha')).dataSizeBytes;
    const readStarted = process.hrtime.bigint();
    await Promise.all(full.nodes.map((n) => runCommand('dd', [`if=${n.disk}`, 'of=/dev/null', 'bs=1M', 'iflag=direct', `count=${Math.floor(dataSize / MiB)}`, 'status=none'], { timeoutMs: 1_800_000, check: true })));
    const readSeconds = Number(process.hrtime.bigint() - readStarted) / 1e9;
    const verifyStarted = process.hrtime.bigint();
    await nraid(['verify', '-c', full.configPath, '-n', 'alpha']);
    const v = await until('verify', async () => {
      const st = await status(full.configPath, 'alpha');
      return st.verify && !st.verify.running ? st.verify : null;
    });
    const verifySeconds = Number(process.hrtime.bigint() - verifyStarted) / 1e9;
    if (v.mismatchBytes !== 0) throw new Error(`verify after a full sync found ${v.mismatchBytes} bytes differing`);
    rows.push({ row: 'verify', seconds: verifySeconds, baseline: 'read both disks in parallel', baselineSeconds: readSeconds, ratio: readSeconds / verifySeconds, target: '>= 0.8 (rate ratio)' });

    log(`sparse sync: ${sizeBytes} bytes, ${dataBytes} of data`);
    const sparse = await pair(dir, 'sparse', sizeBytes, dataBytes);
    const sparseSync = await timedSync(sparse);
    rows.push({ row: 'sparse-sync', seconds: sparseSync.seconds, sent: sparseSync.sent, baseline: 'full-byte sync', baselineSeconds: fullSync.seconds, ratio: sparseSync.seconds / fullSync.seconds, target: '<= 0.15 (time ratio)' });
  } finally {
    cleanup.unwindAll();
  }
  for (const r of rows) {
    log(`${r.row}: ${r.seconds.toFixed(2)} s vs ${r.baseline} ${r.baselineSeconds.toFixed(2)} s: ${r.ratio.toFixed(3)} (target ${r.target})${r.sent ? ` sent ${JSON.stringify(r.sent)}` : ''}`);
  }
  const out = path.join(__dirname, 'results', `resync-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(out, JSON.stringify({ sizeBytes, dataBytes, rows, load: os.loadavg() }, null, 2) + '\n');
  log(`results: ${out}`);
}

process.on('SIGINT', () => {
  cleanup.unwindAll();
  process.exit(130);
});
main().catch((error) => {
  warn(error.stack ?? String(error));
  cleanup.unwindAll();
  process.exit(1);
});
