/**
 * Resync and verify rows (issue 12, Targets), ratios against baselines
 * measured in the same run, two nodes on 127.0.0.1, each disk a sparse file
 * used directly as the backing disk (so its holes show through SEEK_DATA):
 *
 *   full-sync     full-byte sync of a SIZE device full of data / a dd copy
 *                 between the same two backing files (1 MiB, direct I/O
 *                 both sides) (target >= 0.95, rate ratio), in SYNC-REPEAT
 *                 rounds of a dd copy then a sync (the first the initial
 *                 sync after a promotion, the others after invalidate on
 *                 the target), the median of the rounds' ratios. The sync
 *                 is timed on the source daemon's clock (status lastResync:
 *                 from the resync's start to its end); the time from the
 *                 admin call (promotion or invalidate, reconnect,
 *                 handshake) is in the row's note.
 *                 The target's file is written through before the sync
 *                 (other random data), as a partition has no holes: a
 *                 sync into a sparse file's holes allocates as it writes,
 *                 which dd's copy over the allocated file then does not
 *                 (measured: dd into a new sparse file took 1.2-1.45 x
 *                 its overwrite)
 *   verify        `nraid verify` of the full device after that full sync /
 *                 reading both backing files in parallel (dd, 1 MiB, direct)
 *                 (target >= 0.8, rate ratio)
 *   sparse-sync   initial sync of a SIZE device holding DATA bytes (random,
 *                 at the start) / the full-byte sync (target <= 0.15, time)
 *   p99-resync    the application's 4 KiB QD1 write p99 (fio) while a
 *                 resync of DIRTY bytes runs at default settings / the same
 *                 with no resync (target <= 2), and the resync's rate then
 *                 (target >= resync-min-rate-mib)
 *   rss-1t        the Primary daemon's peak RSS while it syncs a 1 TiB
 *                 sparse backing file (target <= 100 MiB)
 *   rejoin        after kill -9 of a Primary that wrote 64 MiB last (and
 *                 8 MiB in 16 places 2 s before), what its restart marks out
 *                 of sync / the device size (target: the hot extents, not
 *                 the whole device)
 *
 *   node bench/resync.js [--size 4G] [--data 256M] [--dirty 1G] [--rss-size 1T] [--rejoin-size 4G] [--fio-seconds 10] [--skip rss-1t,rejoin] [--tls off] [--verify-repeat 3] [--sync-repeat 3]
 *
 * `--tls off` runs every row with `tls = false` (the default config has TLS on,
 * and the targets mean it): on one 2-core machine both nodes' encryption and
 * decryption share the cores with both disks' I/O, which a dd copy does not pay.
 * `--verify-repeat N` times the verify and its baseline N times in turn (medians).
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

// Status over the admin socket (dist/, as bin/nraid runs it): a CLI process per poll costs seconds on a
// loaded machine, which would count in every timed row.
const { adminCall } = require('../dist/src/admin');
const runDirs = new Map(); // config path -> node -> run dir

async function status(configPath, node) {
  const runDir = runDirs.get(configPath)?.[node];
  if (runDir === undefined) return JSON.parse((await nraid(['status', '-c', configPath, '-n', node, '--json'])).stdout);
  return adminCall(path.join(runDir, 'admin.sock'), 'status', {}, undefined, 30_000);
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

/** Two nodes over sparse files of `sizeBytes`, alpha's holding `dataBytes` of data (and beta's, with `targetAllocated`, other data throughout); returns once both are up and Connected. */
let tlsOn = true;

async function pair(dir, tag, sizeBytes, dataBytes, { targetAllocated = false } = {}) {
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
  if (targetAllocated) fillData(nodes[1].disk, sizeBytes);
  const configPath = path.join(dir, `${resource}.toml`);
  fs.writeFileSync(configPath, configText({ resource, protocol: 'C', secret: crypto.randomBytes(16).toString('hex'), nodes, tls: tlsOn }), { mode: 0o600 });
  runDirs.set(configPath, Object.fromEntries(nodes.map((n) => [n.name, n.runDir])));
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
  // Over the admin socket: the CLI's own start (seconds under load) is not the sync's time.
  await adminCall(path.join(p.nodes[0].runDir, 'admin.sock'), 'primary', { force: true }, undefined, 60_000);
  let sourceSeconds = null; // when status first showed SyncSource: what went before is the promotion and the handshake
  let throttledPolls = 0; // polls that found the resync held to its min rate by application I/O on the Primary
  const s = await until('sync', async () => {
    const st = await status(p.configPath, 'alpha');
    if (sourceSeconds === null && st.replication === 'SyncSource') sourceSeconds = Number(process.hrtime.bigint() - started) / 1e9;
    if (st.resync?.throttled) throttledPolls++;
    return inSync(st) ? st : null;
  });
  return { seconds: Number(process.hrtime.bigint() - started) / 1e9, sourceSeconds, throttledPolls, sent: s.resyncSent };
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function seconds(started) {
  return Number(process.hrtime.bigint() - started) / 1e9;
}

async function dd(args) {
  await runCommand('dd', [...args, 'status=none'], { timeoutMs: 3_600_000, check: true });
}

/** fio 4 KiB QD1 random writes (direct) on `device` for `runtimeSeconds`: the write clat p99 in ms. */
async function fioP99(device, runtimeSeconds, sizeBytes) {
  const { stdout } = await runCommand('fio', ['--name=p99', `--filename=${device}`, '--rw=randwrite', '--bs=4k', '--iodepth=1', '--ioengine=psync', '--direct=1',
    '--time_based', `--runtime=${runtimeSeconds}`, `--size=${sizeBytes}`, '--output-format=json'], { timeoutMs: (runtimeSeconds + 120) * 1000, check: true });
  const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0];
  return { p99Ms: job.write.clat_ns.percentile['99.000000'] / 1e6, iops: job.write.iops };
}

function rssBytes(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m === null ? 0 : Number(m[1]) * 1024;
}

/** The pair is in sync, as the Primary (alpha) sees it. */
function inSync(st) {
  return st.replication === 'Established' && st.peerDisk === 'UpToDate' && st.outOfSyncBytes === 0;
}

async function established(configPath) {
  const st = await status(configPath, 'alpha');
  return inSync(st) ? st : null;
}

/** The rows; `log` gets progress lines. */
async function runResyncBench({ sizeBytes, dataBytes, dirtyBytes, rssSizeBytes, rejoinSizeBytes, fioSeconds, skip = [], tls = true, verifyRepeat = 1, syncRepeat = 3, log: say = log }) {
  tlsOn = tls;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nraid-bench-resync-'));
  cleanup.defer(`remove ${dir}`, () => fs.rmSync(dir, { recursive: true, force: true }));
  const rows = [];
  const row = (r) => {
    rows.push({ ...r, tls: tlsOn });
    say(`${r.row}${tlsOn ? '' : ' (tls off)'}: ${r.value} vs ${r.baseline} ${r.baselineValue}: ${r.ratio.toFixed(3)} (target ${r.target})${r.note ? `; ${r.note}` : ''}`);
  };
  const step = async (name, fn) => {
    if (skip.includes(name)) return;
    try {
      await fn();
    } catch (error) {
      warn(`${name} FAILED: ${error.message}`);
      rows.push({ row: name, error: error.message });
    }
  };
  try {
    let fullSync = null;
    await step('full-sync', async () => {
      say(`full-byte sync: ${sizeBytes} bytes, all data; ${syncRepeat} round(s) of a dd copy then a full sync`);
      const full = await pair(dir, 'full', sizeBytes, sizeBytes, { targetAllocated: true });
      const dataSize = (await status(full.configPath, 'alpha')).dataSizeBytes;
      const count = Math.floor(dataSize / MiB);
      // dd between the same two backing files (their data areas; the metadata behind them is not touched).
      const ddCopy = async () => {
        const ddStarted = process.hrtime.bigint();
        await dd([`if=${full.nodes[0].disk}`, `of=${full.nodes[1].disk}`, 'bs=1M', 'iflag=direct', 'oflag=direct', 'conv=notrunc', `count=${count}`]);
        return seconds(ddStarted);
      };
      // Rounds of a dd copy and then a full sync, in turn (this machine's disk varies by ±15-30 % from
      // one minute to the next: the ratio is the median of the rounds' own ratios). The first sync is
      // the initial one, after the promotion; the others follow `invalidate` on the target. The sync's
      // throughput is timed on the source daemon's clock, from the resync's start to its end (status
      // lastResync, as DRBD's "Resync done (total N sec)"); the time from the admin call, promotion or
      // invalidate, reconnect and handshake included, is reported beside it.
      const rounds = [];
      for (let i = 0; i < syncRepeat; i++) {
        const ddSeconds = await ddCopy();
        let sync;
        if (i === 0) {
          sync = await timedSync(full);
          fullSync = sync; // the sparse row's baseline: an initial sync, timed as that one is (from the promotion)
        } else {
          const endedBefore = (await status(full.configPath, 'alpha')).lastResync?.endedAt;
          const started = process.hrtime.bigint();
          await adminCall(path.join(full.nodes[1].runDir, 'admin.sock'), 'invalidate', {}, undefined, 60_000);
          let throttledPolls = 0;
          await until('resync after invalidate', async () => {
            const st = await status(full.configPath, 'alpha');
            if (st.resync?.throttled) throttledPolls++;
            return inSync(st) && st.lastResync?.endedAt !== endedBefore ? st : null;
          });
          sync = { seconds: seconds(started), throttledPolls };
        }
        const last = (await status(full.configPath, 'alpha')).lastResync;
        if (!last?.finished || last.direction !== 'source') throw new Error(`round ${i + 1}: the source recorded no finished resync (${JSON.stringify(last)})`);
        const ratio = (last.bytes / last.seconds) / (dataSize / ddSeconds);
        rounds.push({ ddSeconds, syncSeconds: last.seconds, syncBytes: last.bytes, endToEndSeconds: sync.seconds, throttledPolls: sync.throttledPolls, ratio });
        say(`  round ${i + 1}: dd ${ddSeconds.toFixed(2)} s, sync ${last.seconds.toFixed(2)} s of ${(last.bytes / MiB).toFixed(0)} MiB (${sync.seconds.toFixed(2)} s from the ${i === 0 ? 'promotion' : 'invalidate'} call; throttled by application I/O in ${sync.throttledPolls} of the 100 ms polls): ${ratio.toFixed(3)}`);
      }
      // Verify of the full device against reading both backing files in parallel, `verifyRepeat`
      // times in turn (medians: on a busy machine one pair of timings says little).
      const readTimes = [];
      const verifyTimes = [];
      for (let i = 0; i < verifyRepeat; i++) {
        const readStarted = process.hrtime.bigint();
        await Promise.all(full.nodes.map((n) => dd([`if=${n.disk}`, 'of=/dev/null', 'bs=1M', 'iflag=direct', `count=${count}`])));
        readTimes.push(seconds(readStarted));
        const verifyStarted = process.hrtime.bigint();
        // Over the admin socket, as the sync's promotion: a CLI process's start (seconds under load) is not the verify's time.
        await adminCall(path.join(full.nodes[0].runDir, 'admin.sock'), 'verify', {}, undefined, 60_000);
        const v = await until('verify', async () => {
          const st = await status(full.configPath, 'alpha');
          return st.verify && !st.verify.running && st.verify.positionBytes >= dataSize ? st.verify : null;
        });
        verifyTimes.push(seconds(verifyStarted));
        if (v.mismatchBytes !== 0) throw new Error(`verify after a full sync found ${v.mismatchBytes} bytes differing`);
      }
      const readSeconds = median(readTimes);
      const verifySeconds = median(verifyTimes);
      const ratios = rounds.map((r) => r.ratio);
      row({ row: 'full-sync', value: `${median(rounds.map((r) => r.syncSeconds)).toFixed(2)} s`, baseline: 'dd copy', baselineValue: `${median(rounds.map((r) => r.ddSeconds)).toFixed(2)} s`,
        ratio: median(ratios), target: '>= 0.95 (rate ratio)',
        note: `${rounds.length > 1 ? `median of ${rounds.length} rounds (${ratios.map((x) => x.toFixed(2)).join(', ')}); ` : ''}sync timed on the source's clock; from the admin call ${rounds.map((r) => r.endToEndSeconds.toFixed(2)).join('/')} s (the first after a promotion: SyncSource seen after ${fullSync.sourceSeconds?.toFixed(2)} s)`, rounds });
      row({ row: 'verify', value: `${verifySeconds.toFixed(2)} s`, baseline: 'read both disks in parallel', baselineValue: `${readSeconds.toFixed(2)} s`, ratio: readSeconds / verifySeconds, target: '>= 0.8 (rate ratio)',
        note: verifyRepeat > 1 ? `medians of ${verifyRepeat}: verify ${verifyTimes.map((t) => t.toFixed(2)).join('/')} s, read ${readTimes.map((t) => t.toFixed(2)).join('/')} s` : undefined });
      for (const n of full.nodes) await nraid(['down', '-c', full.configPath, '-n', n.name]);
      for (const n of full.nodes) fs.rmSync(n.disk, { force: true });
    });

    await step('sparse-sync', async () => {
      say(`sparse sync: ${sizeBytes} bytes, ${dataBytes} of data`);
      const sparse = await pair(dir, 'sparse', sizeBytes, dataBytes);
      const sparseSync = await timedSync(sparse);
      if (fullSync !== null) {
        row({ row: 'sparse-sync', value: `${sparseSync.seconds.toFixed(2)} s`, baseline: 'full-byte sync', baselineValue: `${fullSync.seconds.toFixed(2)} s`, ratio: sparseSync.seconds / fullSync.seconds, target: '<= 0.15 (time ratio)', note: `sent ${JSON.stringify(sparseSync.sent)}` });
      }

      // p99 of the application's writes with and without a resync running (alpha Primary, default settings).
      const device = sparse.nodes[0].device;
      const fioBytes = Math.min(dirtyBytes, 1024 * MiB);
      const quiet = await fioP99(device, fioSeconds, fioBytes);
      await nraid(['disconnect', '-c', sparse.configPath, '-n', 'beta']);
      await until('disconnected', async () => (await status(sparse.configPath, 'alpha')).connection !== 'Connected', 60_000);
      await dd(['if=/dev/urandom', `of=${device}`, 'bs=1M', 'oflag=direct', `seek=${Math.floor(dataBytes / MiB)}`, `count=${Math.floor(dirtyBytes / MiB)}`]);
      await nraid(['connect', '-c', sparse.configPath, '-n', 'beta']);
      const syncing = await until('resync running', async () => {
        const st = await status(sparse.configPath, 'alpha');
        return st.replication === 'SyncSource' ? st : null;
      }, 60_000);
      const before = syncing.outOfSyncBytes;
      const started = process.hrtime.bigint();
      const busy = await fioP99(device, fioSeconds, fioBytes);
      const busySeconds = seconds(started);
      const after = await status(sparse.configPath, 'alpha');
      const rateMib = (before - after.outOfSyncBytes) / MiB / busySeconds;
      const stillSyncing = after.replication === 'SyncSource';
      row({ row: 'p99-resync', value: `${busy.p99Ms.toFixed(2)} ms`, baseline: 'no resync', baselineValue: `${quiet.p99Ms.toFixed(2)} ms`, ratio: busy.p99Ms / quiet.p99Ms, target: '<= 2',
        note: `resync ${rateMib.toFixed(1)} MiB/s meanwhile (min rate 16)${stillSyncing ? '' : ', it ended before fio did'}; iops ${quiet.iops.toFixed(0)} -> ${busy.iops.toFixed(0)}` });
      await until('resynced', () => established(sparse.configPath));
      for (const n of sparse.nodes) await nraid(['down', '-c', sparse.configPath, '-n', n.name]);
      for (const n of sparse.nodes) fs.rmSync(n.disk, { force: true });
    });

    await step('rss-1t', async () => {
      say(`RSS: a ${rssSizeBytes}-byte sparse backing file, Primary, syncing`);
      const big = await pair(dir, 'rss', rssSizeBytes, 0);
      const pid = (await status(big.configPath, 'alpha')).pid;
      let peak = rssBytes(pid);
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          peak = Math.max(peak, rssBytes(pid));
          await sleep(100);
        }
      })();
      const sync = await timedSync(big).finally(() => (sampling = false));
      await sampler;
      peak = Math.max(peak, rssBytes(pid));
      row({ row: 'rss-1t', value: `${(peak / MiB).toFixed(1)} MiB`, baseline: 'target', baselineValue: '100 MiB', ratio: peak / (100 * MiB), target: '<= 1', note: `sync of ${rssSizeBytes} bytes took ${sync.seconds.toFixed(1)} s (${JSON.stringify(sync.sent)})` });
      for (const n of big.nodes) await nraid(['down', '-c', big.configPath, '-n', n.name]);
      for (const n of big.nodes) fs.rmSync(n.disk, { force: true });
    });

    await step('rejoin', async () => {
      const hotBytes = 64 * MiB;
      say(`rejoin: a ${rejoinSizeBytes}-byte device, 8 MiB written in each sixteenth of its first half, then ${hotBytes} hot; kill -9 of the Primary`);
      const p = await pair(dir, 'rejoin', rejoinSizeBytes, 0);
      await timedSync(p);
      const device = p.nodes[0].device;
      // Writes spread over the device long before the crash (replicated, acknowledged), then a hot region last.
      for (let at = 0; at + 8 * MiB <= rejoinSizeBytes / 2; at += rejoinSizeBytes / 32) {
        await dd(['if=/dev/urandom', `of=${device}`, 'bs=1M', 'oflag=direct', `seek=${at / MiB}`, 'count=8']);
      }
      await sleep(2000);
      await dd(['if=/dev/urandom', `of=${device}`, 'bs=1M', 'oflag=direct', `seek=${Math.floor(rejoinSizeBytes / MiB / 2)}`, `count=${hotBytes / MiB}`]);
      const pid = (await status(p.configPath, 'alpha')).pid;
      process.kill(pid, 'SIGKILL');
      await until('killed', async () => !fs.existsSync(`/proc/${pid}`), 30_000);
      await nraid(['up', '-c', p.configPath, '-n', 'alpha']);
      let marked = 0;
      await until('rejoined', async () => {
        const [a, b] = await Promise.all([status(p.configPath, 'alpha'), status(p.configPath, 'beta')]);
        marked = Math.max(marked, a.outOfSyncBytes, b.outOfSyncBytes);
        return a.connection === 'Connected' && a.outOfSyncBytes === 0 && b.outOfSyncBytes === 0 && a.disk === 'UpToDate' && b.disk === 'UpToDate';
      }, 600_000);
      const dataSize = (await status(p.configPath, 'alpha')).dataSizeBytes;
      row({ row: 'rejoin', value: `${(marked / MiB).toFixed(0)} MiB marked`, baseline: 'device', baselineValue: `${(dataSize / MiB).toFixed(0)} MiB`, ratio: marked / dataSize, target: `the hot extents (${hotBytes / MiB} MiB written last, ratio ${(hotBytes / dataSize).toFixed(3)}), not the whole device` });
      for (const n of p.nodes) await nraid(['down', '-c', p.configPath, '-n', n.name]);
    });
  } finally {
    cleanup.unwindAll();
  }
  return rows;
}

async function main() {
  const options = {
    sizeBytes: parseSize(option('--size', '4G')),
    dataBytes: parseSize(option('--data', '256M')),
    dirtyBytes: parseSize(option('--dirty', '1G')),
    rssSizeBytes: parseSize(option('--rss-size', '1T')),
    rejoinSizeBytes: parseSize(option('--rejoin-size', '4G')),
    fioSeconds: Number(option('--fio-seconds', '10')),
    // Steps to leave out: full-sync (also verify; sparse-sync then has no baseline), sparse-sync (also p99-resync), rss-1t, rejoin.
    skip: option('--skip', '').split(',').filter(Boolean),
    tls: option('--tls', 'on') !== 'off',
    verifyRepeat: Number(option('--verify-repeat', '1')),
    // Rounds of a dd copy then a full sync (full-sync row: the median of their ratios).
    syncRepeat: Number(option('--sync-repeat', '3')),
  };
  const rows = await runResyncBench(options);
  const out = path.join(__dirname, 'results', `resync-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(out, JSON.stringify({ ...options, rows, load: os.loadavg() }, null, 2) + '\n');
  log(`results: ${out}`);
  if (rows.some((r) => r.error)) process.exitCode = 1;
}

module.exports = { runResyncBench };

if (require.main === module) {
  process.on('SIGINT', () => {
    cleanup.unwindAll();
    process.exit(130);
  });
  main().catch((error) => {
    warn(error.stack ?? String(error));
    cleanup.unwindAll();
    process.exit(1);
  });
}
