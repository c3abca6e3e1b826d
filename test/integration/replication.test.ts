/**
 * Replication between two daemons on this machine (DESIGN.md §3, §4, §7, §10;
 * replication issue, acceptance list parts 1 and 4):
 *
 *  - for each protocol A, B and C: 64 MiB of random O_DIRECT writes through (256 MiB
 *    until the fault campaign's tests needed the suite's time, 128 MiB until the resync wave's)
 *    the Primary's device, flushes in between; afterwards both backing data
 *    areas hash the same and the Secondary's holds exactly what was written.
 *    Counters on the way: bytesSent/bytesAcked rise and end equal to the bytes
 *    written, lag fields are numbers;
 *  - `nraid adjust` after a protocol change in the config switches the data
 *    plane while connected (with the link stalled by a FaultProxy, a write
 *    completes at once under A and waits under B and C), without dropping the
 *    connection;
 *  - a peer with the wrong secret, and a peer whose data size differs, are
 *    refused with messages that say so;
 *  - a Secondary whose backing disk has 4 KiB sectors under a Primary with
 *    512-byte sectors: a 512-byte write through the Primary's device must not
 *    kill it (it did: the applier passed the frame to an assert() in
 *    LocalDisk::write, SIGABRT).
 */
import * as fs from 'fs';
import * as path from 'path';
import { stringify as tomlStringify } from 'smol-toml';
import { makeResource, mergeConfig, NodeName, NraidStatus, TestResource } from '../harness/cluster';
import { flushDevice, RandomWriter, readDirect, sha256Range, writeDirect } from '../harness/direct-io';
import { FaultProxy } from '../harness/fault-proxy';
import { LoopDisk, makeLoopDisk } from '../harness/loop';
import { describeIntegration } from '../harness/prereq';
import { execOk } from '../harness/exec';
import { connectedUpToDate, num, quiesce, sleep, waitEstablished } from '../harness/helpers';

const MiB = 1024 * 1024;
const NODES: NodeName[] = ['alpha', 'beta'];
/** Quick redials, so that refusals and reconnects show within seconds; pings tolerant of a loaded machine. */
const FAST = { 'ping-interval-ms': 500, 'ping-timeout-ms': 5000, 'connect-retry-ms': 100 };

/** How many threads of process `pid` carry each name (/proc/<pid>/task/<tid>/comm). */
function threadNames(pid: number): Map<string, number> {
  const names = new Map<string, number>();
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const name = fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
      names.set(name, (names.get(name) ?? 0) + 1);
    } catch {
      // The thread ended meanwhile.
    }
  }
  return names;
}

// ---- local helpers -------------------------------------------------------------------

/** Writes a config file next to the resource's: its config object with `patch` merged in. */
function writeConfig(r: TestResource, fileName: string, patch: Record<string, unknown>): string {
  const config = mergeConfig(JSON.parse(JSON.stringify(r.config)) as Record<string, unknown>, patch);
  const file = path.join(r.dir, fileName);
  fs.writeFileSync(file, tomlStringify(config) + '\n', { mode: 0o600 });
  return file;
}

/** `nraid <command> <resource> -c <configPath> -n <node>`, rejecting on a non-zero exit. */
async function runWith(r: TestResource, configPath: string, node: NodeName, command: string, flags: string[] = []): Promise<string> {
  const res = await r.nraid([command, r.name, '-c', configPath, '-n', node, ...flags]);
  if (res.code !== 0) throw new Error(`nraid ${command} -c ${configPath} -n ${node} exited ${res.code}: ${res.stderr.trim() || res.stdout.trim()}`);
  return res.stdout;
}

/** sha256 of both backing disks' data areas [0, dataSizeBytes), read with O_DIRECT. */
async function dataHashes(r: TestResource, dataSizeBytes: number): Promise<Record<NodeName, string>> {
  const [alpha, beta] = await Promise.all(NODES.map((n) => sha256Range(r.nodes[n].disk!.device, 0, dataSizeBytes)));
  return { alpha, beta };
}

/** create-md on both, up (alpha with its own config if given), primary --force on alpha, full sync done. */
async function bringUp(r: TestResource, alphaConfig = r.configPath): Promise<void> {
  for (const n of NODES) await r.runOk(n, 'create-md');
  await runWith(r, alphaConfig, 'alpha', 'up');
  await r.runOk('beta', 'up');
  await r.runOk('alpha', 'primary', ['--force']);
  await waitEstablished(r);
}

/** Random writes in batches, each followed by a flush of the device, until `totalBytes` are written. */
async function writeWithFlushes(
  writer: RandomWriter,
  device: string,
  totalBytes: number,
  batchWrites: number,
  afterBatch: () => Promise<void> = async () => undefined,
): Promise<{ bytes: number; writes: number; flushes: number }> {
  const done = { bytes: 0, writes: 0, flushes: 0 };
  while (done.bytes < totalBytes) {
    const batch = await writer.run(batchWrites);
    done.bytes += batch.bytes;
    done.writes += batch.writes;
    await flushDevice(device);
    done.flushes += 1;
    await afterBatch();
  }
  return done;
}

function daemonLog(r: TestResource, node: NodeName): string {
  try {
    return fs.readFileSync(path.join(r.nodes[node].runDir, 'daemon.log'), 'utf8');
  } catch {
    return '';
  }
}

/** The process exists and is not a zombie (a dead daemon may wait a while for its reaper). */
function processRunning(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

function countLines(text: string, pattern: RegExp): number {
  return text.split('\n').filter((l) => pattern.test(l)).length;
}

// ---- tests -----------------------------------------------------------------------------

describeIntegration('replication between two daemons', ['root', 'fuse', 'loop', 'dd', 'nraid-cli'], () => {
  test.each(['A', 'B', 'C'] as const)(
    'protocol %s: 128 MiB of random O_DIRECT writes with flushes arrive intact; bytesSent/bytesAcked rise and match',
    async (protocol) => {
      const r = await makeResource({ nodes: 2, sizeBytes: 96 * MiB, protocol, extra: FAST });
      try {
        await bringUp(r);
        const a0 = await r.status('alpha');
        const b0 = await r.status('beta');
        expect([a0.protocol, b0.protocol]).toEqual([protocol, protocol]);
        // The data plane's threads carry their names (top -H, perf): the Primary
        // serves the device and takes acks, the Secondary receives and reaps.
        const threadsAlpha = threadNames(a0.pid as number);
        const threadsBeta = threadNames(b0.pid as number);
        expect({ fuse: (threadsAlpha.get('nraid-fuse') ?? 0) > 0, acks: threadsAlpha.get('nraid-acks'), receive: threadsAlpha.get('nraid-receive') }).toEqual({ fuse: true, acks: 1, receive: undefined });
        expect({ receive: threadsBeta.get('nraid-receive'), reap: threadsBeta.get('nraid-reap'), acks: threadsBeta.get('nraid-acks'), fuse: threadsBeta.get('nraid-fuse') }).toEqual({ receive: 1, reap: 1, acks: undefined, fuse: undefined });
        const dataSizeBytes = num(a0, 'dataSizeBytes');
        const device = r.nodes.alpha.device;
        const writer = await RandomWriter.create({ device, sizeBytes: dataSizeBytes, concurrency: 4 });
        try {
          const samples: NraidStatus[] = [a0];
          const w = await writeWithFlushes(writer, device, 64 * MiB, 32, async () => {
            samples.push(await r.status('alpha'));
          });
          const a1 = await quiesce(r);
          const b1 = await r.status('beta');
          const context = `protocol ${protocol}, seed ${writer.seed}, ${w.writes} writes of ${w.bytes} bytes, ${w.flushes} flushes`;

          // The counters rise while the writes go out...
          const sent = samples.map((s) => num(s, 'bytesSent'));
          const acked = samples.map((s) => num(s, 'bytesAcked'));
          for (let i = 1; i < samples.length; i++) {
            expect(sent[i]).toBeGreaterThan(sent[i - 1]);
            expect(acked[i]).toBeGreaterThan(acked[i - 1]);
            expect(acked[i]).toBeLessThanOrEqual(sent[i]);
          }
          for (const s of samples) {
            expect(num(s, 'lagBytes')).toBeGreaterThanOrEqual(0);
            expect(num(s, 'lagSeconds')).toBeGreaterThanOrEqual(0);
          }
          // ...and account for every byte written, once: no resync, no loss, nothing else.
          expect({
            sent: num(a1, 'bytesSent') - num(a0, 'bytesSent'),
            acked: num(a1, 'bytesAcked') - num(a0, 'bytesAcked'),
            applied: num(b1, 'bytesApplied') - num(b0, 'bytesApplied'),
            lagBytes: num(a1, 'lagBytes'),
            lagSeconds: num(a1, 'lagSeconds'),
          }).toEqual({ sent: w.bytes, acked: w.bytes, applied: w.bytes, lagBytes: 0, lagSeconds: 0 });
          expect(num(a1, 'flushes') - num(a0, 'flushes')).toBeGreaterThanOrEqual(w.flushes);
          for (const [s0, s1] of [
            [a0, a1],
            [b0, b1],
          ]) {
            expect({ node: s1.node, linkFailures: num(s1, 'linkFailures'), checksumErrors: num(s1, 'checksumErrors'), protocolErrors: num(s1, 'protocolErrors') }).toEqual({
              node: s0.node,
              linkFailures: num(s0, 'linkFailures'),
              checksumErrors: 0,
              protocolErrors: 0,
            });
            expect(connectedUpToDate(s1)).toBe(true);
          }
          expect(num(a1, 'outOfSyncBytes')).toBe(0);

          const hashes = await dataHashes(r, dataSizeBytes);
          if (hashes.alpha !== hashes.beta) throw new Error(`${context}: data areas differ: alpha ${hashes.alpha}, beta ${hashes.beta}`);
          const onBeta = await writer.verify({ device: r.nodes.beta.disk!.device });
          if (!onBeta.ok) throw new Error(`${context}: ${onBeta.summary}`);
        } finally {
          await writer.close();
        }
      } finally {
        await r.cleanup();
      }
    },
    240_000,
  );

  test('nraid adjust switches the protocol while connected: the data plane follows, the connection stays', async () => {
    const r = await makeResource({ nodes: 2, sizeBytes: 96 * MiB, protocol: 'C', extra: { ...FAST, 'ping-timeout-ms': 6000 } });
    const proxy = new FaultProxy({ targetHost: '127.0.0.1', targetPort: r.nodes.beta.port });
    try {
      // Alpha dials beta through the proxy, so that the link can be stalled; beta reads the resource's file.
      await proxy.listen();
      const alphaConfigFor = (protocol: string) =>
        writeConfig(r, 'alpha.toml', { protocol, nodes: { beta: { address: `127.0.0.1:${proxy.port}` } } });
      const setProtocol = (protocol: 'A' | 'B' | 'C'): string => {
        fs.writeFileSync(r.configPath, tomlStringify(mergeConfig(JSON.parse(JSON.stringify(r.config)), { protocol })) + '\n', { mode: 0o600 });
        return alphaConfigFor(protocol);
      };
      const alphaConfig = alphaConfigFor('C');
      await bringUp(r, alphaConfig);
      const device = r.nodes.alpha.device;

      /** One 64 KiB write while the proxy forwards nothing: does it complete before the link moves again? */
      let probeOffset = 0;
      const probeStalled = async (): Promise<{ completedWhileStalled: boolean; ms: number }> => {
        const offset = (probeOffset += MiB);
        proxy.stall(true);
        const t0 = Date.now();
        const write = writeDirect(device, offset, Buffer.alloc(64 * 1024, offset / MiB)).then(() => Date.now() - t0);
        try {
          const early = await Promise.race([write, sleep(1500).then(() => null)]);
          return { completedWhileStalled: early !== null, ms: early ?? -1 };
        } finally {
          proxy.stall(false);
          await write;
        }
      };

      const s0 = { alpha: await r.status('alpha'), beta: await r.status('beta') };
      // Sessions so far (the forced promotion renegotiates once): adjust must add none.
      const sessions0 = countLines(daemonLog(r, 'alpha'), /"peer connected"/);
      const drops0 = countLines(daemonLog(r, 'alpha'), /"peer disconnected"/);
      expect(sessions0).toBeGreaterThanOrEqual(1);
      const unchangedConnection = async (): Promise<void> => {
        for (const n of NODES) {
          const s = await r.status(n);
          expect({ node: n, connection: s.connection, replication: s.replication, linkFailures: s.linkFailures }).toEqual({
            node: n,
            connection: 'Connected',
            replication: 'Established',
            linkFailures: s0[n].linkFailures,
          });
        }
        expect(countLines(daemonLog(r, 'alpha'), /"peer connected"/)).toBe(sessions0);
        expect(countLines(daemonLog(r, 'alpha'), /"peer disconnected"/)).toBe(drops0);
      };

      // C: the write waits for the peer's disk, which it cannot reach.
      expect(await probeStalled()).toMatchObject({ completedWhileStalled: false });

      // C -> A, adjust run on alpha: the peer re-reads its config too.
      setProtocol('A');
      await r.runOk('alpha', 'adjust');
      for (const n of NODES) await r.waitFor(n, (s) => s.protocol === 'A', 10_000);
      await unchangedConnection();
      const underA = await probeStalled();
      expect(underA).toMatchObject({ completedWhileStalled: true });

      // A -> B, adjust run on beta.
      setProtocol('B');
      await r.runOk('beta', 'adjust');
      for (const n of NODES) await r.waitFor(n, (s) => s.protocol === 'B', 10_000);
      await unchangedConnection();
      expect(await probeStalled()).toMatchObject({ completedWhileStalled: false });

      // Writes keep replicating under the new protocol.
      const dataSizeBytes = num(s0.alpha, 'dataSizeBytes');
      const writer = await RandomWriter.create({ device, sizeBytes: dataSizeBytes, baseline: 'ignore', concurrency: 2 });
      try {
        const w = await writeWithFlushes(writer, device, 16 * MiB, 16);
        await quiesce(r);
        await unchangedConnection();
        const a1 = await r.status('alpha');
        expect(num(a1, 'bytesAcked') - num(s0.alpha, 'bytesAcked')).toBe(w.bytes + 3 * 64 * 1024);
        const hashes = await dataHashes(r, dataSizeBytes);
        expect(hashes.beta).toBe(hashes.alpha);
        const onBeta = await writer.verify({ device: r.nodes.beta.disk!.device });
        if (!onBeta.ok) throw new Error(onBeta.summary);
      } finally {
        await writer.close();
      }
    } finally {
      await r.cleanup();
      await proxy.close();
    }
  }, 120_000);

  // Regression: the Primary exposed its own disk's logical block size (512), so a 512-byte
  // O_DIRECT write was a legal request there; the Secondary's applier handed that frame to
  // LocalDisk::write on a 4 KiB-sector disk, whose assert() aborted the Secondary's daemon.
  // Now the device always has 4 KiB logical blocks, and misaligned frames are protocol errors.
  test('a Secondary with 4 KiB sectors under a Primary with 512-byte sectors: the device has 4 KiB blocks, writes replicate', async () => {
    const betaDisk = await makeLoopDisk(96 * MiB, 'repl-4kn', { sectorSizeBytes: 4096 });
    const r = await makeResource({ nodes: 2, sizeBytes: 96 * MiB, extra: FAST });
    try {
      const betaConfig = writeConfig(r, 'beta-4kn.toml', { nodes: { beta: { disk: betaDisk.device } } });
      await r.runOk('alpha', 'create-md');
      await runWith(r, betaConfig, 'beta', 'create-md');
      await r.runOk('alpha', 'up');
      await runWith(r, betaConfig, 'beta', 'up');
      await r.runOk('alpha', 'primary', ['--force']);
      await waitEstablished(r);
      const betaPid = num(await r.status('beta'), 'pid');
      const device = r.nodes.alpha.device;
      expect((await execOk('blockdev', ['--getss', device])).toString().trim()).toBe('4096');

      // A 512-byte direct write is refused by the kernel before it reaches nraid.
      const sector = Buffer.alloc(512, 0x3c);
      await expect(
        execOk('dd', [`of=${device}`, 'bs=512', 'seek=1', 'count=1', 'oflag=direct', 'conv=notrunc', 'status=none'], { input: sector }),
      ).rejects.toThrow();
      const block = Buffer.alloc(4096, 0x5a);
      await execOk('dd', [`of=${device}`, 'bs=4096', 'seek=3', 'count=1', 'oflag=direct', 'conv=notrunc', 'status=none'], { input: block });
      await flushDevice(device).catch(() => undefined);
      await sleep(500);
      const alive = processRunning(betaPid);
      const betaLog = daemonLog(r, 'beta').trim().split('\n').slice(-2).join(' | ');
      if (!alive) throw new Error(`beta's daemon (pid ${betaPid}) died; the end of its log: ${betaLog}`);
      const beta = await r.status('beta');
      expect(beta.connection).toBe('Connected');
      await quiesce(r);
      const dataSizeBytes = num(beta, 'dataSizeBytes');
      // beta's disk here is the 4Kn one, not the fixture's.
      const [alphaHash, betaHash] = await Promise.all([
        sha256Range(r.nodes.alpha.disk!.device, 0, dataSizeBytes),
        sha256Range(betaDisk.device, 0, dataSizeBytes),
      ]);
      expect(betaHash).toBe(alphaHash);
      expect((await readDirect(betaDisk.device, 3 * 4096, 4096)).equals(block)).toBe(true);
    } finally {
      await r.cleanup();
      await betaDisk.detach();
    }
  }, 120_000);

  describe('refused peers', () => {
    let r: TestResource;
    let otherDisk: LoopDisk;
    const otherSizeBytes = 80 * MiB;

    beforeAll(async () => {
      // Made before the resource, so that the resource (and its daemons) are undone first.
      otherDisk = await makeLoopDisk(otherSizeBytes, 'repl-size');
      r = await makeResource({ nodes: 2, sizeBytes: 96 * MiB, extra: FAST });
      for (const n of NODES) await r.runOk(n, 'create-md');
      await r.runOk('alpha', 'up');
      await r.runOk('alpha', 'primary', ['--force']);
    });

    afterAll(async () => {
      await r?.cleanup();
      await otherDisk?.detach();
    });

    /** Polls both nodes for `ms`: neither may reach Connected. Returns the last statuses. */
    async function neverConnected(ms: number, betaConfig: string): Promise<Record<NodeName, NraidStatus>> {
      const deadline = Date.now() + ms;
      let last: Record<NodeName, NraidStatus> | undefined;
      while (Date.now() < deadline || last === undefined) {
        const alpha = await r.status('alpha');
        const beta = JSON.parse(await runWith(r, betaConfig, 'beta', 'status', ['--json'])) as NraidStatus;
        for (const s of [alpha, beta]) {
          if (s.connection === 'Connected' || s.replication !== 'Off') {
            throw new Error(`${s.node} reached connection ${s.connection}, replication ${s.replication}: the peer should have been refused`);
          }
        }
        last = { alpha, beta };
        await sleep(200);
      }
      return last;
    }

    test('a peer with a different secret is refused: never Connected, the dialer is told to check the secret, the acceptor logs the failed proof', async () => {
      const betaConfig = writeConfig(r, 'beta-wrong-secret.toml', { secret: `${String(r.config.secret)}-not-the-same` });
      await runWith(r, betaConfig, 'beta', 'up');
      try {
        const last = await neverConnected(4000, betaConfig);
        // The dialer (alpha) proves the secret first (handshake 3.0); beta, finding the proof wrong,
        // closes without a word (a stranger learns nothing): alpha can only point at the secret.
        expect(last.alpha.lastLinkError).toMatch(/during the handshake.*check `secret`/);
        expect(last.alpha.connection).toBe('Connecting');
        const betaSays = `${String(last.beta.lastLinkError)}\n${daemonLog(r, 'beta')}`;
        // With TLS (default), the key derived from the secret fails first: OpenSSL's PSK binder check.
        expect(betaSays).toMatch(/authentication|HMAC|secret|binder does not verify/i);
      } finally {
        await runWith(r, betaConfig, 'beta', 'down');
      }
    });

    test('a peer whose data size differs is refused with both sizes in the message; no data crosses', async () => {
      const betaConfig = writeConfig(r, 'beta-other-disk.toml', { nodes: { beta: { disk: otherDisk.device } } });
      await runWith(r, betaConfig, 'beta', 'create-md');
      // Data on alpha that must not reach beta's disk.
      const pattern = Buffer.alloc(MiB, 0xa5);
      await writeDirect(r.nodes.alpha.device, 0, pattern);
      await flushDevice(r.nodes.alpha.device);
      await runWith(r, betaConfig, 'beta', 'up');
      try {
        // A fresh dial (the earlier refusals grew alpha's backoff).
        await r.runOk('alpha', 'disconnect');
        await r.runOk('alpha', 'connect');
        const alphaSize = num(await r.status('alpha'), 'dataSizeBytes');
        const betaSize = num(JSON.parse(await runWith(r, betaConfig, 'beta', 'status', ['--json'])) as NraidStatus, 'dataSizeBytes');
        expect(betaSize).toBeLessThan(alphaSize);
        const bothSizes = (text: unknown) => typeof text === 'string' && text.includes(String(alphaSize)) && text.includes(String(betaSize));
        await r.waitFor('alpha', (s) => bothSizes(s.lastLinkError), 15_000);
        const last = await neverConnected(3000, betaConfig);
        expect(bothSizes(last.alpha.lastLinkError)).toBe(true);
        const betaSays = `${String(last.beta.lastLinkError)}\n${daemonLog(r, 'beta')}`;
        expect(betaSays).toContain(String(alphaSize));
        expect(betaSays).toContain(String(betaSize));
        expect((await readDirect(otherDisk.device, 0, MiB)).equals(Buffer.alloc(MiB))).toBe(true);
      } finally {
        await runWith(r, betaConfig, 'beta', 'down');
      }
    });
  });
});
