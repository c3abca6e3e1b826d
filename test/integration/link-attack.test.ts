/**
 * Issue 11: 1,000 garbage, oversized, silent, slow, wrong-secret, wrong-token
 * and not-the-peer connections to the acceptor's link port while replication
 * runs (protocol C, TLS on): replication stays Connected and goes on, the
 * daemon's RSS does not grow by more than a few MiB, its log grows by a
 * bounded amount, and every refusal is counted. Before the fix one crafted
 * message took the link down, eight silent connections kept the peer out, and
 * each refusal logged ~330 bytes with no rate limit. Then the peer
 * disconnects and reconnects while another 1,000 connections run: it gets
 * through before they end.
 *
 * The connections come from a separate process (bench/e2e/link-attack.js, 50
 * at a time), which the bench also runs for its throughput row
 * (nraid-C-attacked against nraid-C: the "within 10 %" target is a ratio
 * there, not a timing here).
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as http from 'http';
import * as path from 'path';
import { stringify as tomlStringify } from 'smol-toml';
import { freePorts, makeResource, NraidStatus, TestResource } from '../harness/cluster';
import { registerCleanup } from '../harness/cleanup';
import { RandomWriter, sha256Range } from '../harness/direct-io';
import { daemonLogSince, daemonLogSize, num, quiesce, waitEstablished, withDaemonLogs } from '../harness/helpers';
import { describeIntegration, REPO_ROOT } from '../harness/prereq';

const MiB = 1024 * 1024;
const ATTACK_CONNECTIONS = 1000;
const ATTACK_CONCURRENCY = 50;
const WARMUP_CONNECTIONS = 200;
/**
 * "A few MiB": what the daemon's memory outside the V8 heap (RSS less the heap V8 has committed, from the
 * daemon's own metrics) may grow by across the attack, after the warm-up. Before the fix one message grew
 * RSS by over 1 GB (a Buffer, outside the V8 heap); a leak of 12 KiB per connection would cross this. RSS
 * itself is not bounded this tightly: V8 commits young-generation pages as it likes, and the whole RSS
 * once grew by 14.5 MiB across a clean attack (CI, a loaded machine), with no leak behind it. Nor is the
 * FUSE frontend's arena counted: its buffers become resident (and locked) as its threads first serve a
 * request and go back when they idle, so the application's writes during the attack make up to 48 MiB
 * of it resident (seen: +46 MiB); it is the daemon's only locked memory, read from /proc/PID/smaps_rollup.
 */
const NON_HEAP_GROWTH_BYTES_MAX = 12 * MiB;
/** The V8 heap V8 has committed: its young generation alone may take some 48 MiB more between two scrapes. */
const HEAP_GROWTH_BYTES_MAX = 64 * MiB;
/** Open descriptors: every hostile connection closed (a keep-alive metrics connection and a status call may be open). */
const FD_GROWTH_MAX = 4;
/** The log of 1,000 refusals: rate-limited lines, not one per connection (before the fix ~330 bytes each, 330 kB). */
const LOG_GROWTH_BYTES_MAX = 24 * 1024;
/** Connections per second of the second attack: 1,000 last ~14 s, longer than a reconnect may take. */
const RECONNECT_ATTACK_RATE = 70;
/** The pre-authentication timeout is 2 s; the peer, which sends its preamble, Hello and Auth at once, needs far less. */
const RECONNECT_MS_MAX = 3000;
const ATTACKER = path.join(REPO_ROOT, 'bench', 'e2e', 'link-attack.js');

interface AttackSummary {
  connections: number;
  rounds: number;
  byKind: Record<string, { count: number; closedByPeer: number; capped: number; maxMs: number }>;
  elapsedMs: number;
}

interface ProcessMemory {
  rssBytes: number;
  heapBytes: number;
  /** Resident in locked mappings: the frontend's arena (native/fuse_frontend.cc). */
  lockedBytes: number;
  openFds: number;
}

/** The daemon's process metrics (prom-client's defaults, served beside nraid's). */
function lockedBytes(pid: number): number {
  const m = /^Locked:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
  if (m === null) throw new Error(`no Locked line in /proc/${pid}/smaps_rollup`);
  return Number(m[1]) * 1024;
}

async function processMemory(metricsPort: number, pid: number): Promise<ProcessMemory> {
  const text = await httpGet(`http://127.0.0.1:${metricsPort}/metrics`);
  const value = (name: string): number => {
    const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
    if (m === null) throw new Error(`the daemon's metrics on port ${metricsPort} have no ${name}`);
    return Number(m[1]);
  };
  return { rssBytes: value('process_resident_memory_bytes'), heapBytes: value('nodejs_heap_size_total_bytes'), lockedBytes: lockedBytes(pid), openFds: value('process_open_fds') };
}

function httpGet(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get(url, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (body += chunk));
        res.on('end', () => resolve(body));
      })
      .on('error', reject);
  });
}

/** Sum of nraid_link_refused_connections_total over its reasons, and the reasons seen. */
async function refusedTotal(metricsPort: number): Promise<{ total: number; reasons: Record<string, number> }> {
  const text = await httpGet(`http://127.0.0.1:${metricsPort}/metrics`);
  const reasons: Record<string, number> = {};
  for (const m of text.matchAll(/^nraid_link_refused_connections_total\{[^}]*reason="([^"]+)"[^}]*\} (\d+)$/gm)) {
    reasons[m[1]!] = Number(m[2]);
  }
  return { total: Object.values(reasons).reduce((a, b) => a + b, 0), reasons };
}

/** Runs the attacker process to its end; its summary. */
function runAttacker(port: number, resource: string, extra: string[] = []): { child: ChildProcess; done: Promise<AttackSummary> } {
  const child = spawn(process.execPath, [ATTACKER, '--port', String(port), '--connections', String(ATTACK_CONNECTIONS), '--concurrency', String(ATTACK_CONCURRENCY), '--resource', resource, ...extra], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const kill = (): void => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  const handle = registerCleanup(`link attacker pid ${child.pid}`, async () => kill(), kill);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const done = new Promise<AttackSummary>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => {
      handle.forget();
      if (code !== 0) reject(new Error(`link-attack.js exited with ${code}: ${stderr.trim()}`));
      else resolve(JSON.parse(stdout.trim()) as AttackSummary);
    });
  });
  return { child, done };
}

describeIntegration('1,000 hostile connections while replication runs (issue 11)', ['root', 'fuse', 'loop', 'dd', 'nraid-cli'], () => {
  let r: TestResource | undefined;
  let writer: RandomWriter | undefined;

  afterAll(async () => {
    await writer?.close();
    await r?.cleanup();
  }, 60_000);

  test('replication stays Connected and goes on; RSS, log and counters stay bounded; disks identical', async () => {
    const [alphaMetricsPort, metricsPort] = await freePorts(2);
    r = await makeResource({ nodes: 2, sizeBytes: 32 * MiB, protocol: 'C' });
    const res = r;
    // metrics-port is one key for both nodes, which share 127.0.0.1 here: each gets its own config with its own port.
    const ports = { alpha: alphaMetricsPort!, beta: metricsPort! };
    for (const n of ['alpha', 'beta'] as const) await res.runOk(n, 'create-md');
    for (const n of ['alpha', 'beta'] as const) {
      const config = path.join(res.dir, `${n}-metrics.toml`);
      fs.writeFileSync(config, tomlStringify({ ...res.config, 'metrics-port': ports[n] }) + '\n', { mode: 0o600 });
      const up = await res.nraid(['up', res.name, '-c', config, '-n', n]);
      if (up.code !== 0) throw new Error(`up ${n} -c ${config}: ${up.stderr}`);
    }
    await res.runOk('alpha', 'primary', ['--force']);
    const established = await waitEstablished(res, 60_000);
    const dataSizeBytes = num(established, 'dataSizeBytes');
    writer = await RandomWriter.create({ device: res.nodes.alpha.device, sizeBytes: dataSizeBytes, concurrency: 2, maxWriteBytes: 256 * 1024 });
    const w = writer;

    await withDaemonLogs(res, async () => {
      // Warm: the data plane's buffers are in use, and a first 200 hostile connections have grown the daemons'
      // heaps and malloc arenas to what 50 at once need, before RSS is taken: what the 1,000 add after that is growth.
      await w.run(16);
      const warmup = runAttacker(res.nodes.beta.port, res.name, ['--connections', String(WARMUP_CONNECTIONS)]);
      expect((await warmup.done).connections).toBe(WARMUP_CONNECTIONS);
      const a0 = await res.status('alpha');
      const b0 = await res.status('beta');
      const memory0 = { alpha: await processMemory(ports.alpha, num(a0, 'pid')), beta: await processMemory(ports.beta, num(b0, 'pid')) };
      const log0 = { alpha: daemonLogSize(res, 'alpha'), beta: daemonLogSize(res, 'beta') };
      const refused0 = await refusedTotal(metricsPort!);

      const attack = runAttacker(res.nodes.beta.port, res.name);
      let attacking = true;
      const notConnected: string[] = [];
      const watch = (async () => {
        while (attacking) {
          for (const n of ['alpha', 'beta'] as const) {
            const s: NraidStatus = await res.status(n);
            if (s.connection !== 'Connected' || s.replication !== 'Established') notConnected.push(`${n}: ${s.connection}/${s.replication} ${String(s.lastLinkError ?? '')}`);
          }
          await new Promise((resolve) => setTimeout(resolve, 1000));
        }
      })();
      let writesDuringAttack = 0;
      const writing = (async () => {
        while (attacking) writesDuringAttack += (await w.run(8)).writes;
      })();
      let summary: AttackSummary;
      try {
        summary = await attack.done;
      } finally {
        attacking = false;
        await Promise.all([watch, writing]);
      }

      // The attack happened as described: every connection made and closed by the node, none left to the cap.
      expect(summary.connections).toBe(ATTACK_CONNECTIONS);
      for (const [kind, k] of Object.entries(summary.byKind)) {
        expect({ kind, capped: k.capped, closedByPeer: k.closedByPeer }).toEqual({ kind, capped: 0, closedByPeer: k.count });
      }
      // Each refused connection is counted once (an evicted one was counted as "evicted" and again as "other").
      const refused1 = await refusedTotal(metricsPort!);
      expect(refused1.total - refused0.total).toBe(ATTACK_CONNECTIONS);

      // Replication stayed up and kept going.
      expect(notConnected).toEqual([]);
      expect(writesDuringAttack).toBeGreaterThan(0);
      const a1 = await res.status('alpha');
      const b1 = await res.status('beta');
      for (const [s0, s1] of [[a0, a1], [b0, b1]] as const) {
        expect(s1.connection).toBe('Connected');
        expect(num(s1, 'linkFailures')).toBe(num(s0, 'linkFailures'));
        expect(num(s1, 'protocolErrors')).toBe(num(s0, 'protocolErrors'));
        expect(s1.lastLinkError ?? null).toEqual(s0.lastLinkError ?? null);
      }
      expect(num(a1, 'bytesAcked')).toBeGreaterThan(num(a0, 'bytesAcked'));

      const memory1 = { alpha: await processMemory(ports.alpha, num(a1, 'pid')), beta: await processMemory(ports.beta, num(b1, 'pid')) };
      const growth = (n: 'alpha' | 'beta') => {
        const [m0, m1] = [memory0[n], memory1[n]];
        return { rss: m1.rssBytes - m0.rssBytes, heap: m1.heapBytes - m0.heapBytes, locked: m1.lockedBytes - m0.lockedBytes, nonHeap: m1.rssBytes - m1.heapBytes - m1.lockedBytes - (m0.rssBytes - m0.heapBytes - m0.lockedBytes), fds: m1.openFds - m0.openFds };
      };
      const memoryGrowth = { alpha: growth('alpha'), beta: growth('beta') };
      const logGrowth = { alpha: daemonLogSize(res, 'alpha') - log0.alpha, beta: daemonLogSize(res, 'beta') - log0.beta };
      console.log(`link attack: ${JSON.stringify({ attack: summary, refused: refused1.reasons, memoryGrowth, logGrowthBytes: logGrowth, writesDuringAttack })}`);
      for (const n of ['beta', 'alpha'] as const) {
        const g = memoryGrowth[n];
        // Named by node: a failure says which daemon grew.
        expect({ node: n, nonHeapWithinBound: g.nonHeap <= NON_HEAP_GROWTH_BYTES_MAX, heapWithinBound: g.heap <= HEAP_GROWTH_BYTES_MAX, fdsWithinBound: g.fds <= FD_GROWTH_MAX, growth: g }).toEqual({
          node: n,
          nonHeapWithinBound: true,
          heapWithinBound: true,
          fdsWithinBound: true,
          growth: g,
        });
      }
      expect(logGrowth.beta).toBeLessThanOrEqual(LOG_GROWTH_BYTES_MAX);
      expect(logGrowth.alpha).toBeLessThanOrEqual(LOG_GROWTH_BYTES_MAX);

      // Finding 2 with real daemons: the peer reconnects while 1,000 more connections (paced over ~14 s) hold
      // at the handshake slots, and gets through at once (the CLI steps around it are slow on a loaded machine,
      // so the time taken is read from alpha's own log: from "connecting to beta" to "connected to beta").
      const secondStartedMs = Date.now();
      const second = runAttacker(res.nodes.beta.port, res.name, ['--rate', String(RECONNECT_ATTACK_RATE)]);
      await new Promise((resolve) => setTimeout(resolve, 1000)); // the pool is busy with attackers first
      await res.runOk('alpha', 'disconnect');
      await res.waitFor('beta', (s) => s.connection !== 'Connected', 15_000);
      const reconnectLogFrom = daemonLogSize(res, 'alpha');
      await res.runOk('alpha', 'connect');
      await waitEstablished(res, 30_000);
      const secondSummary = await second.done;
      expect(secondSummary.connections).toBe(ATTACK_CONNECTIONS);
      const lines = daemonLogSince(res, 'alpha', reconnectLogFrom);
      const timeOf = (message: string): number => {
        const line = lines.find((l) => l.message === message);
        if (line === undefined) throw new Error(`alpha logged no "${message}" after connect; it logged: ${lines.map((l) => String(l.message)).join(' | ')}`);
        return Date.parse(String(line.time));
      };
      const dialedAtMs = timeOf('connecting to beta');
      const connectedAtMs = timeOf('connected to beta');
      const attackEndedAtMs = secondStartedMs + secondSummary.elapsedMs; // the attacker started after secondStartedMs: it ended later
      console.log(`link attack: alpha dialed ${dialedAtMs - secondStartedMs} ms into the second attack and was connected ${connectedAtMs - dialedAtMs} ms later; the attack ran ${secondSummary.elapsedMs} ms`);
      expect(connectedAtMs - dialedAtMs).toBeLessThan(RECONNECT_MS_MAX);
      expect(connectedAtMs).toBeLessThan(attackEndedAtMs);

      // Every acknowledged write is on both disks.
      await quiesce(res);
      const [alphaHash, betaHash] = await Promise.all(
        (['alpha', 'beta'] as const).map((n) => sha256Range(res.nodes[n].disk!.device, 0, dataSizeBytes)),
      );
      expect(betaHash).toBe(alphaHash);
      const report = await w.verify({ device: res.nodes.beta.disk!.device });
      if (!report.ok) throw new Error(`beta lacks acknowledged writes: ${report.summary}`);
    });
  }, 180_000);
});
