/**
 * docs/operations.md, workflow by workflow: the commands the guide shows, run
 * on two nodes on this machine (with -c/-n added, the fixture's device paths
 * for /dev/nraid/r0 and its backing loop disks for /dev/sdb1), checking the
 * outcome the guide promises. A cheap guard first: every `nraid <command>`
 * the guide shows is one the CLI knows, every command line in its examples
 * parses, and (last test) every one of those command lines was run here.
 */
import { ChildProcess, spawn } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as http from 'http';
import * as path from 'path';
import { stringify as tomlStringify } from 'smol-toml';
import { loopBackingFile, makeTempSubdir, mountPoints, registerCleanup } from '../harness/cleanup';
import { freePorts, makeResource, mergeConfig, NodeName, NRAID_BIN, NraidResult, NraidStatus, TestResource } from '../harness/cluster';
import { compareRanges, writeDirect } from '../harness/direct-io';
import { execOk, execSyncQuiet, execTool, toolEnv } from '../harness/exec';
import { makeLoopDisk } from '../harness/loop';
import { describeIntegration, REPO_ROOT } from '../harness/prereq';
import { parseArgs, usage } from '../../src/cli/args';
import { FAST_FAILOVER_CONFIG, fsckClean, processAlive, sleep } from '../harness/helpers';

const MiB = 1024 * 1024;
/** What the resyncs of this daemon covered as a SyncSource: data bytes and bytes sent as zero frames (issue 12). */
const resyncCovered = (s: NraidStatus): number => {
  const sent = s.resyncSent as { dataBytes: number; zeroBytes: number } | undefined;
  return (sent?.dataBytes ?? 0) + (sent?.zeroBytes ?? 0);
};
const DISK_BYTES = 40 * MiB;
const GUIDE = path.join(REPO_ROOT, 'docs', 'operations.md');
const NEEDS = ['root', 'loop', 'fuse', 'dd', 'mkfs.ext4', 'e2fsck', 'nraid-cli'] as const;

// ---- the guide's commands ---------------------------------------------------

interface GuideCommand {
  /** As written, e.g. "nraid connect --discard-my-data r0". */
  text: string;
  /** "connect --discard-my-data": command and flags, sorted, without the resource. */
  key: string;
}

/** `alpha# ...` / `beta# ...` lines of the guide's code blocks that run nraid. */
function guideCommandLines(): GuideCommand[] {
  const text = fs.readFileSync(GUIDE, 'utf8');
  const found: GuideCommand[] = [];
  let inBlock = false;
  for (const line of text.split('\n')) {
    if (line.startsWith('```')) {
      inBlock = !inBlock;
      continue;
    }
    if (!inBlock) continue;
    const m = /^(alpha|beta)#\s+(.*)$/.exec(line);
    if (m === null) continue;
    for (const part of m[2].split(';')) {
      // A comment, then a shell redirection ("> r0-alpha.md.json") are not the command's.
      const command = part.replace(/\s#.*$/, '').replace(/\s[<>|].*$/, '').trim();
      if (!command.startsWith('nraid ')) continue;
      const argv = command.split(/\s+/).slice(1);
      found.push({ text: command, key: commandKey(argv) });
    }
  }
  return found;
}

function commandKey(argv: readonly string[]): string {
  const words = argv.filter((a) => a !== 'r0');
  const [command, ...flags] = words;
  return [command, ...flags.sort()].join(' ');
}

let workflowsDefined = 0;
let workflowsDone = 0;

/** A workflow test: counted, so that the last test knows whether all of them ran to the end. */
function workflow(name: string, fn: () => Promise<void>, timeoutMs: number): void {
  workflowsDefined += 1;
  test(
    name,
    async () => {
      await fn();
      workflowsDone += 1;
    },
    timeoutMs,
  );
}

/** What this file ran through run(): "connect --discard-my-data", "status --json", ... */
const ran = new Set<string>();

function run(r: TestResource, node: NodeName, command: string, flags: readonly string[] = [], configPath?: string): Promise<NraidResult> {
  // A file argument counts by its name: the guide writes r0-alpha.md.json, the test a path in its own dir.
  ran.add([command, ...flags.map((f) => (f.includes('/') ? path.basename(f) : f)).sort()].join(' '));
  if (configPath === undefined) return r.run(node, command, flags);
  return r.nraid([command, r.name, '-c', configPath, '-n', node, ...flags]);
}

async function runOk(r: TestResource, node: NodeName, command: string, flags: readonly string[] = [], configPath?: string): Promise<string> {
  const res = await run(r, node, command, flags, configPath);
  if (res.code !== 0) throw new Error(`nraid ${command} ${flags.join(' ')} on ${node} exited ${res.code}: ${res.stderr.trim() || res.stdout.trim()}`);
  return res.stdout.trim();
}

/** The one "error: <message> (<code>)" line of a refused command. */
function refusal(res: NraidResult): { message: string; code: string } {
  const m = /^error: (.*) \((NRAID_ERR_[A-Z_]+)\)\n$/s.exec(res.stderr);
  if (res.code !== 1 || m === null) throw new Error(`expected a refusal; got exit ${res.code}, stderr ${JSON.stringify(res.stderr)}, stdout ${JSON.stringify(res.stdout)}`);
  return { message: m[1], code: m[2] };
}

// ---- fixtures -----------------------------------------------------------------

const healthy = (s: NraidStatus): boolean =>
  s.connection === 'Connected' && s.replication === 'Established' && s.disk === 'UpToDate' && s.peerDisk === 'UpToDate';

/** Rewrites the fixture's config with `extra` merged in (before `up`, like editing /etc/nraid/r0.toml). */
function rewriteConfig(r: TestResource, extra: Record<string, unknown>, file = r.configPath): void {
  mergeConfig(r.config, extra);
  fs.writeFileSync(file, tomlStringify(r.config) + '\n', { mode: 0o600 });
}

/** Two nodes up and connected, alpha Primary with its first full sync done. */
async function healthyPair(extra: Record<string, unknown> = {}, before?: (r: TestResource) => void): Promise<TestResource> {
  const r = await makeResource({ nodes: 2, sizeBytes: DISK_BYTES, extra: { ...FAST_FAILOVER_CONFIG, ...extra } });
  before?.(r);
  for (const n of ['alpha', 'beta'] as const) await runOk(r, n, 'create-md');
  for (const n of ['alpha', 'beta'] as const) await runOk(r, n, 'up');
  await r.waitFor('alpha', (s) => s.connection === 'Connected', 15_000);
  await runOk(r, 'alpha', 'primary', ['--force']);
  await r.waitFor('beta', healthy, 30_000);
  await r.waitFor('alpha', (s) => healthy(s) && s.role === 'Primary', 10_000);
  return r;
}

async function dataSize(r: TestResource): Promise<number> {
  return (await r.status('alpha')).dataSizeBytes as number;
}

/** Both backing disks' data areas hold the same bytes (O_DIRECT reads). */
async function expectIdentical(r: TestResource, alphaDisk = r.nodes.alpha.diskPath, betaDisk = r.nodes.beta.diskPath): Promise<void> {
  const size = await dataSize(r);
  const report = await compareRanges(alphaDisk, betaDisk, 0, size);
  if (!report.equal) throw new Error(`data areas differ in ${report.mismatchBlocks} blocks: ${JSON.stringify(report.mismatches.slice(0, 5))}`);
  expect(report.comparedBytes).toBe(size);
}

/** Mount points this file made, unmounted in afterEach whatever happened. */
const mounted: string[] = [];

async function mount(device: string, dir: string, options?: string): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  await execOk('mount', options === undefined ? [device, dir] : ['-o', options, device, dir]);
  mounted.push(dir);
}

async function umount(dir: string): Promise<void> {
  await execOk('umount', [dir]);
  mounted.splice(mounted.indexOf(dir), 1);
}

async function umountAll(): Promise<void> {
  for (const dir of mounted.splice(0).reverse()) {
    if (mountPoints().includes(dir)) await execTool('umount', [dir]);
  }
}

/** Writes `count` files of random bytes; returns name -> sha256. */
function writeFiles(dir: string, prefix: string, count: number, bytes = 256 * 1024): Map<string, string> {
  const hashes = new Map<string, string>();
  for (let i = 0; i < count; i++) {
    const data = crypto.randomBytes(bytes);
    const name = `${prefix}-${i}`;
    fs.writeFileSync(path.join(dir, name), data);
    hashes.set(name, crypto.createHash('sha256').update(data).digest('hex'));
  }
  return hashes;
}

function expectFiles(dir: string, hashes: Map<string, string>): void {
  for (const [name, hash] of hashes) {
    expect({ name, hash: crypto.createHash('sha256').update(fs.readFileSync(path.join(dir, name))).digest('hex') }).toEqual({ name, hash });
  }
}

async function mkfs(device: string): Promise<void> {
  await execOk('mkfs.ext4', ['-q', '-F', device]);
}

/** kill -9 of the daemon `nraid up` started for `node` (its pid from status): the server dies. */
async function killDaemon(r: TestResource, node: NodeName): Promise<void> {
  const pid = (await r.status(node)).pid as number;
  expect(processAlive(pid)).toBe(true);
  process.kill(pid, 'SIGKILL');
  for (let i = 0; i < 200 && processAlive(pid); i++) await sleep(25);
  expect(processAlive(pid)).toBe(false);
}

/** `nraid events` (or `status --watch`) running in the background, its output lines collected. */
class Tap {
  readonly lines: string[] = [];
  private readonly child: ChildProcess;
  private buffer = '';
  private exited: Promise<void>;

  constructor(r: TestResource, node: NodeName, args: string[], configPath = r.configPath) {
    ran.add([args[0], ...args.slice(1).sort()].join(' '));
    this.child = spawn(process.execPath, [NRAID_BIN, args[0], r.name, '-c', configPath, '-n', node, ...args.slice(1)], {
      env: toolEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.exited = new Promise((resolve) => this.child.once('exit', () => resolve()));
    this.child.stdout!.on('data', (chunk: Buffer) => {
      this.buffer += chunk.toString();
      let nl: number;
      while ((nl = this.buffer.indexOf('\n')) >= 0) {
        this.lines.push(this.buffer.slice(0, nl));
        this.buffer = this.buffer.slice(nl + 1);
      }
    });
  }

  json(): Record<string, unknown>[] {
    return this.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  async waitFor(predicate: (lines: string[]) => boolean, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate(this.lines)) {
      if (Date.now() > deadline) throw new Error(`no such output within ${timeoutMs} ms; got ${JSON.stringify(this.lines.slice(-10))}`);
      await sleep(50);
    }
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGTERM');
    await this.exited;
  }
}

function httpGet(port: number, urlPath: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: urlPath }, (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve(body));
      })
      .on('error', reject);
  });
}

function sample(body: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of body.split('\n')) {
    const m = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (m === null || m[1] !== name) continue;
    if (Object.entries(labels).every(([k, v]) => (m[2] ?? '').includes(`${k}="${v}"`))) return Number(m[3]);
  }
  return undefined;
}

/** A status line, the guide's format: "<res> role:.. disk:.. peer:.. peer-disk:.. connection:.. replication:..[ optional]". */
function statusFields(line: string, resource: string): Record<string, string> {
  const [name, ...parts] = line.trim().split(' ');
  expect(name).toBe(resource);
  const fields: Record<string, string> = {};
  for (const part of parts) {
    const colon = part.indexOf(':');
    fields[part.slice(0, colon)] = part.slice(colon + 1);
  }
  return fields;
}

// ---- the guard ------------------------------------------------------------------

describe('operations guide: its commands are commands the CLI knows', () => {
  const text = fs.readFileSync(GUIDE, 'utf8');
  const known = new Set(
    usage()
      .split('\n')
      .filter((l) => /^ {2}[a-z-]+ {2,}/.test(l))
      .map((l) => l.trim().split(/\s+/)[0]),
  );

  test('the CLI lists the commands the guide relies on (the parsing below is not vacuous)', () => {
    for (const c of ['create-md', 'up', 'down', 'primary', 'secondary', 'switchover', 'connect', 'status', 'events', 'invalidate', 'resume-io']) {
      expect(known).toContain(c);
    }
  });

  test('every `nraid <command>` the guide mentions is a command usage() lists', () => {
    const mentioned = [...text.matchAll(/`nraid ([a-z][a-z-]*)/g)].map((m) => m[1]);
    expect(mentioned.length).toBeGreaterThan(30);
    expect(mentioned.filter((c) => !known.has(c))).toEqual([]);
  });

  test('every command line of the examples parses and names r0', () => {
    const lines = guideCommandLines();
    expect(lines.length).toBeGreaterThan(15);
    for (const { text: line } of lines) {
      const parsed = parseArgs(line.split(/\s+/).slice(1));
      expect({ line, resource: parsed.resource }).toEqual({ line, resource: 'r0' });
    }
  });
});

// ---- the workflows ------------------------------------------------------------

describeIntegration('operations guide workflows', NEEDS, () => {
  afterEach(async () => {
    await umountAll();
  });

  describe('1. check status, then 2. planned failover on the same pair', () => {
    let r: TestResource;
    let metricsConfig: string;
    let metricsPort: number;

    beforeAll(async () => {
      r = await makeResource({ nodes: 2, sizeBytes: DISK_BYTES, extra: FAST_FAILOVER_CONFIG });
      // metrics-port is one key for both nodes, which share 127.0.0.1 here: only alpha gets it.
      [metricsPort] = await freePorts(1);
      metricsConfig = path.join(r.dir, 'alpha-metrics.toml');
      fs.writeFileSync(metricsConfig, tomlStringify({ ...r.config, 'metrics-port': metricsPort }) + '\n', { mode: 0o600 });
    });

    afterAll(async () => {
      await umountAll();
      await r?.cleanup();
    });

    workflow('1: status line, --json, events, --watch and metrics show what the guide says', async () => {
      await runOk(r, 'alpha', 'create-md');
      await runOk(r, 'beta', 'create-md');
      await runOk(r, 'alpha', 'up', [], metricsConfig);
      await runOk(r, 'beta', 'up');
      await r.waitFor('beta', (s) => s.connection === 'Connected', 15_000);

      const events = new Tap(r, 'beta', ['events']);
      try {
        await events.waitFor((l) => l.length >= 1, 10_000);
        await runOk(r, 'alpha', 'primary', ['--force']);
        await r.waitFor('beta', healthy, 30_000);
        await events.waitFor((l) => l.some((x) => x.includes('"disk":"UpToDate"')), 10_000);
        const ev = events.json();
        expect(ev[0]).toMatchObject({ type: 'exists', resource: r.name, node: 'beta', peer: 'alpha', role: 'Secondary', disk: 'Inconsistent', connection: 'Connected' });
        // The sync target reports its progress too (resync-progress, about once a second, issue 12).
        const changes = ev.slice(1).filter((e) => e.type !== 'resync-progress');
        expect(changes.every((e) => e.type === 'change' && e.resource === r.name && e.node === 'beta')).toBe(true);
        expect(changes).toContainEqual(expect.objectContaining({ peerRole: 'Primary' }));
        expect(changes).toContainEqual(expect.objectContaining({ replication: 'SyncTarget' }));
        expect(changes).toContainEqual(expect.objectContaining({ syncDecision: 'full' }));
        const done = changes.findIndex((e) => e.disk === 'UpToDate');
        expect(done).toBeGreaterThan(changes.findIndex((e) => e.replication === 'SyncTarget'));
        // Only moved fields: no counters in change lines.
        expect(changes.some((e) => 'writes' in e || 'bytesReceived' in e)).toBe(false);
      } finally {
        await events.stop();
      }

      const alphaLine = await runOk(r, 'alpha', 'status');
      const betaLine = await runOk(r, 'beta', 'status');
      expect(alphaLine).toBe(`${r.name} role:Primary disk:UpToDate peer:Secondary peer-disk:UpToDate connection:Connected replication:Established device:${r.nodes.alpha.device}`);
      expect(betaLine).toBe(`${r.name} role:Secondary disk:UpToDate peer:Primary peer-disk:UpToDate connection:Connected replication:Established`);

      // --json: every field the guide names is there, and the guide names every field there is.
      const json = JSON.parse(await runOk(r, 'alpha', 'status', ['--json'])) as Record<string, unknown>;
      const guide = fs.readFileSync(GUIDE, 'utf8');
      const undocumented = Object.keys(json).filter((k) => !new RegExp(`\\b${k}\\b`).test(guide));
      expect(undocumented).toEqual([]);
      for (const k of ['resource', 'node', 'peer', 'role', 'disk', 'connection', 'replication', 'peerRole', 'peerDisk', 'outOfSyncBytes', 'protocol', 'device', 'exposed',
        'loopDevice', 'backingDisk', 'dataSizeBytes', 'uuids', 'writes', 'writeBytes', 'reads', 'readBytes', 'flushes', 'ioErrors', 'requestsInFlight', 'bytesSent',
        'bytesAcked', 'bytesReceived', 'bytesApplied', 'writesInFlight', 'lagBytes', 'lagSeconds', 'checksumErrors', 'protocolErrors', 'linkFailures', 'resync',
        'lastLinkError', 'syncDecision', 'splitBrain', 'ioSuspended', 'discardMyData', 'pid']) {
        expect(json).toHaveProperty(k);
      }
      expect(json).toMatchObject({ role: 'Primary', disk: 'UpToDate', syncDecision: 'full', resync: null, outOfSyncBytes: 0, exposed: true });

      // Prometheus (alpha only, see above).
      const body = await httpGet(metricsPort, '/metrics');
      const names = [...guide.matchAll(/`(nraid_[a-z_]+)/g)].map((m) => m[1]);
      expect(names.length).toBeGreaterThan(15);
      for (const name of new Set(names)) expect({ name, present: body.includes(`\n${name}`) || body.startsWith(name) }).toEqual({ name, present: true });
      expect(sample(body, 'nraid_primary', { node: 'alpha' })).toBe(1);
      expect(sample(body, 'nraid_peer_primary')).toBe(0);
      expect(sample(body, 'nraid_connection_state', { state: 'Connected' })).toBe(1);
      expect(sample(body, 'nraid_replication_state', { state: 'Established' })).toBe(1);
      expect(sample(body, 'nraid_disk_state', { state: 'UpToDate' })).toBe(1);
      expect(sample(body, 'nraid_io_suspended')).toBe(0);

      // Apart: peer Unknown/DUnknown, Connecting vs StandAlone, out-of-sync appears; back: it resyncs and goes away.
      await runOk(r, 'beta', 'disconnect');
      await r.waitFor('alpha', (s) => s.connection === 'Connecting', 10_000);
      await writeDirect(r.nodes.alpha.device, 0, crypto.randomBytes(MiB));
      const apart = statusFields(await runOk(r, 'alpha', 'status'), r.name);
      expect(apart).toEqual({ role: 'Primary', disk: 'UpToDate', peer: 'Unknown', 'peer-disk': 'DUnknown', connection: 'Connecting', replication: 'Off', 'out-of-sync': '1.0MiB', device: r.nodes.alpha.device });
      expect(statusFields(await runOk(r, 'beta', 'status'), r.name)).toMatchObject({ connection: 'StandAlone', peer: 'Unknown' });
      await runOk(r, 'beta', 'connect');
      await r.waitFor('alpha', (s) => healthy(s) && s.outOfSyncBytes === 0, 15_000);
      expect(statusFields(await runOk(r, 'alpha', 'status'), r.name)).not.toHaveProperty('out-of-sync');
      await expectIdentical(r);

      // --watch: a line a second until interrupted.
      const watch = new Tap(r, 'beta', ['status', '--watch']);
      try {
        await watch.waitFor((l) => l.length >= 2, 5_000);
      } finally {
        await watch.stop();
      }
      for (const l of watch.lines) expect(l).toBe(betaLine);

      // Not up: the error the guide shows, and its --json form.
      await runOk(r, 'beta', 'down');
      const notUp = refusal(await run(r, 'beta', 'status'));
      expect(notUp).toEqual({ code: 'NRAID_ERR_NOT_UP', message: `resource ${r.name} is not up on node beta; start it with nraid up -c ${r.configPath} -n beta` });
      const notUpJson = await run(r, 'beta', 'status', ['--json']);
      expect(notUpJson.code).toBe(1);
      expect(JSON.parse(notUpJson.stdout)).toEqual({ error: { code: 'NRAID_ERR_NOT_UP', message: notUp.message } });
      expect(refusal(await run(r, 'beta', 'events'))).toEqual({ code: 'NRAID_ERR_NOT_UP', message: notUp.message });
      await runOk(r, 'beta', 'up');
      await r.waitFor('beta', healthy, 30_000);
    }, 120_000);

    workflow('2: switchover refuses while mounted; after umount it swaps the roles (from either node) and the files follow', async () => {
      const mntA = path.join(r.dir, 'mnt-alpha');
      const mntB = path.join(r.dir, 'mnt-beta');
      await mkfs(r.nodes.alpha.device);
      await mount(r.nodes.alpha.device, mntA);
      const files = writeFiles(mntA, 'queue', 8);

      const busy = refusal(await run(r, 'alpha', 'switchover'));
      expect(busy.code).toBe('NRAID_ERR_DEVICE_BUSY');
      expect(busy.message).toBe(`cannot switch over ${r.name}: device ${r.nodes.alpha.device} is in use (mounted at ${mntA}); stop the services and unmount it first, or configure hooks.before-demote`);
      expect((await r.status('alpha')).role).toBe('Primary');
      expect(mountPoints()).toContain(mntA);

      await umount(mntA);
      const out = await runOk(r, 'alpha', 'switchover');
      expect(out).toBe(`${r.name} role:Secondary disk:UpToDate peer:Primary peer-disk:UpToDate connection:Connected replication:Established`);
      expect(await r.status('beta')).toMatchObject({ role: 'Primary', exposed: true, disk: 'UpToDate' });
      await mount(r.nodes.beta.device, mntB);
      expectFiles(mntB, files);
      const more = writeFiles(mntB, 'after-switchover', 4);
      await umount(mntB);

      // "works from either node": now from the Secondary (alpha); it prints alpha's line.
      const back = await runOk(r, 'alpha', 'switchover');
      expect(statusFields(back, r.name)).toMatchObject({ role: 'Primary', peer: 'Secondary', device: r.nodes.alpha.device });
      expect((await r.status('beta')).role).toBe('Secondary');
      await fsckClean(r.nodes.alpha.device);
      await mount(r.nodes.alpha.device, mntA);
      expectFiles(mntA, files);
      expectFiles(mntA, more);
      await umount(mntA);

      // The two-step way.
      await runOk(r, 'alpha', 'secondary');
      await runOk(r, 'beta', 'primary');
      await r.waitFor('alpha', (s) => healthy(s) && s.peerRole === 'Primary', 10_000);
      await expectIdentical(r);
    }, 120_000);
  });

  describe('3. unplanned failover and 4. the old Primary returns', () => {
    let r: TestResource;
    let files: Map<string, string>;
    let afterFailover: Map<string, string>;
    let betaChanged = 0;
    afterAll(async () => {
      await umountAll();
      await r?.cleanup();
    });

    workflow('3: the Primary dies; primary on the survivor (UpToDate, no --force needed) serves every file', async () => {
      r = await healthyPair();
      const mntA = path.join(r.dir, 'mnt-alpha');
      // The filesystem was made long before the crash: without mkfs's discard of the whole
      // device, which would put every extent of this small disk in the activity log.
      await execOk('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', r.nodes.alpha.device]);
      await mount(r.nodes.alpha.device, mntA);
      files = writeFiles(mntA, 'pg', 10);
      await umount(mntA);

      await killDaemon(r, 'alpha');
      await r.waitFor('beta', (s) => s.connection === 'Connecting', 10_000);
      expect(await runOk(r, 'beta', 'status')).toBe(`${r.name} role:Secondary disk:UpToDate peer:Unknown peer-disk:DUnknown connection:Connecting replication:Off`);

      const promoted = await runOk(r, 'beta', 'primary');
      expect(promoted).toBe(`${r.name} role:Primary disk:UpToDate peer:Unknown peer-disk:DUnknown connection:Connecting replication:Off device:${r.nodes.beta.device}`);
      await fsckClean(r.nodes.beta.device);
      const mntB = path.join(r.dir, 'mnt-beta');
      await mount(r.nodes.beta.device, mntB);
      expectFiles(mntB, files);
      afterFailover = writeFiles(mntB, 'after-failover', 6);
      await umount(mntB);
      betaChanged = (await r.status('beta')).outOfSyncBytes as number;
      expect(betaChanged).toBeGreaterThan(0);
    }, 120_000);

    workflow('4: up on the old Primary cleans up, joins as Secondary and resyncs only what differs', async () => {
      const size = await dataSize(r).catch(async () => (await r.status('beta')).dataSizeBytes as number);
      const volume = path.join(r.nodes.alpha.runDir, 'volume');
      expect(mountPoints()).toContain(volume); // what the crash left

      const up = await runOk(r, 'alpha', 'up');
      expect(up).toMatch(new RegExp(`^${r.name} is up on node alpha \\(daemon pid \\d+, log ${r.nodes.alpha.runDir}/daemon.log\\)$`));
      const a = await r.waitFor('alpha', healthy, 30_000);
      expect(a.role).toBe('Secondary');
      expect(a.peerRole).toBe('Primary');
      expect(a.splitBrain).toBe(false);
      expect(a.syncDecision).toBe('bitmap');
      expect(mountPoints()).not.toContain(volume);
      const log = fs.readFileSync(path.join(r.nodes.alpha.runDir, 'daemon.log'), 'utf8');
      expect(log).toContain('detached stale loop device');
      expect(log).toContain('unmounted stale FUSE volume');
      const crashed = log
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as { message: string; extents?: number })
        .find((e) => e.message === 'crashed primary: activity-log extents marked out of sync');
      expect(crashed?.extents).toBeGreaterThan(0);
      // Only what differs: beta's writes since the failover and alpha's activity-log extents, not the device.
      const received = a.bytesReceived as number;
      expect(received).toBeGreaterThan(0);
      expect(received).toBeLessThanOrEqual(crashed!.extents! * 4 * MiB + betaChanged);
      expect(received).toBeLessThan(size);
      expect(await runOk(r, 'alpha', 'status')).toBe(`${r.name} role:Secondary disk:UpToDate peer:Primary peer-disk:UpToDate connection:Connected replication:Established`);
      await expectIdentical(r);

      // Back to alpha with workflow 2; every file of both eras is there.
      await runOk(r, 'beta', 'switchover');
      const mntA = path.join(r.dir, 'mnt-alpha');
      await fsckClean(r.nodes.alpha.device);
      await mount(r.nodes.alpha.device, mntA);
      expectFiles(mntA, files);
      expectFiles(mntA, afterFailover);
      await umount(mntA);
    }, 120_000);
  });

  describe('3. on-no-peer = "suspend-io" and the fence-peer hook', () => {
    let r: TestResource;
    let envFile: string;
    afterAll(async () => {
      // down of a Primary with suspended I/O hangs its daemon (docs/operations.md, Known gaps): resume first.
      if (r !== undefined) await r.run('alpha', 'resume-io').catch(() => undefined);
      await r?.cleanup();
    });

    workflow('losing the peer suspends writes and runs fence-peer with its environment; resume-io lets them go; the peer resyncs them', async () => {
      r = await healthyPair({}, (res) => {
        envFile = path.join(res.dir, 'fence.env');
        const hook = path.join(res.dir, 'fence-peer.sh');
        fs.writeFileSync(hook, `#!/bin/sh\nenv | grep '^NRAID_' | sort > '${envFile}'\nexit 1\n`, { mode: 0o700 });
        rewriteConfig(res, { 'on-no-peer': 'suspend-io', hooks: { 'fence-peer': hook } });
      });
      await killDaemon(r, 'beta');
      await r.waitFor('alpha', (s) => s.ioSuspended === true, 10_000);
      expect(statusFields(await runOk(r, 'alpha', 'status'), r.name)).toMatchObject({ io: 'suspended', connection: 'Connecting' });
      for (let i = 0; i < 100 && !fs.existsSync(envFile); i++) await sleep(50);
      const env = fs.readFileSync(envFile, 'utf8');
      for (const line of ['NRAID_EVENT=fence-peer', `NRAID_RESOURCE=${r.name}`, 'NRAID_NODE=alpha', 'NRAID_PEER=beta', `NRAID_PEER_ADDRESS=${r.nodes.beta.address}`, 'NRAID_ROLE=Primary', 'NRAID_DISK=UpToDate']) {
        expect(env.split('\n')).toContain(line);
      }

      // A write waits while suspended...
      const block = crypto.randomBytes(64 * 1024);
      let written = false;
      const writing = writeDirect(r.nodes.alpha.device, 4 * MiB, block).then(() => (written = true));
      await sleep(1000);
      expect(written).toBe(false);
      expect((await r.status('alpha')).ioSuspended).toBe(true); // the hook failed: still suspended
      // ...and completes after resume-io.
      const resumed = await runOk(r, 'alpha', 'resume-io');
      expect(statusFields(resumed, r.name)).not.toHaveProperty('io');
      await writing;
      expect(written).toBe(true);

      // The Secondary comes back (same disk): it resyncs what it missed.
      await runOk(r, 'beta', 'up');
      await r.waitFor('beta', healthy, 30_000);
      await r.waitFor('alpha', (s) => healthy(s) && s.outOfSyncBytes === 0 && !s.ioSuspended, 10_000);
      await expectIdentical(r);
    }, 120_000);
  });

  describe('5. split brain', () => {
    let r: TestResource;
    let hookDir: string;
    const taps: Tap[] = [];
    afterAll(async () => {
      for (const t of taps) await t.stop();
      await umountAll();
      await r?.cleanup();
    });

    workflow('detected, nothing discarded; secondary + connect --discard-my-data on the victim, connect on the survivor: bitmap resync, survivor wins', async () => {
      r = await healthyPair({}, (res) => {
        hookDir = path.join(res.dir, 'hook-out');
        fs.mkdirSync(hookDir);
        const hook = path.join(res.dir, 'split-brain.sh');
        fs.writeFileSync(hook, `#!/bin/sh\nenv | grep '^NRAID_' | sort > '${hookDir}'/"$NRAID_NODE.env"\n`, { mode: 0o700 });
        rewriteConfig(res, { hooks: { 'split-brain': hook } });
      });
      const mntA = path.join(r.dir, 'mnt-alpha');
      const mntB = path.join(r.dir, 'mnt-beta');
      await mkfs(r.nodes.alpha.device);
      await mount(r.nodes.alpha.device, mntA);
      const common = writeFiles(mntA, 'common', 4);
      await umount(mntA);

      // The link breaks (here: disconnect on alpha); beta is promoted although alpha lives; both write.
      await runOk(r, 'alpha', 'disconnect');
      await r.waitFor('beta', (s) => s.connection !== 'Connected', 10_000);
      await runOk(r, 'beta', 'primary');
      await mount(r.nodes.beta.device, mntB);
      const onBeta = writeFiles(mntB, 'beta-only', 3);
      await umount(mntB);
      await mount(r.nodes.alpha.device, mntA);
      const onAlpha = writeFiles(mntA, 'alpha-only', 3);
      await umount(mntA);

      taps.push(new Tap(r, 'alpha', ['events']), new Tap(r, 'beta', ['events']));
      await Promise.all(taps.map((t) => t.waitFor((l) => l.length >= 1, 10_000)));
      // The link is back.
      await runOk(r, 'alpha', 'connect');
      const deadline = Date.now() + 15_000;
      let seen: Record<NodeName, NraidStatus> = { alpha: await r.status('alpha'), beta: await r.status('beta') };
      while (!seen.alpha.splitBrain && !seen.beta.splitBrain && Date.now() < deadline) {
        await sleep(100);
        seen = { alpha: await r.status('alpha'), beta: await r.status('beta') };
      }
      await sleep(500);
      seen = { alpha: await r.status('alpha'), beta: await r.status('beta') };
      const detectors = (['alpha', 'beta'] as const).filter((n) => seen[n].splitBrain);
      expect(detectors.length).toBeGreaterThan(0);
      for (const n of ['alpha', 'beta'] as const) expect(seen[n].connection).not.toBe('Connected');
      for (const n of detectors) {
        expect(seen[n].connection).toBe('StandAlone');
        expect(seen[n].lastLinkError).toMatch(/^split brain: both moved on from generation [0-9a-f]+; choose the node whose changes to drop and run nraid connect --discard-my-data there$/);
        expect(statusFields(await runOk(r, n, 'status'), r.name)).toMatchObject({ 'split-brain': 'yes', connection: 'StandAlone', role: 'Primary' });
        await taps[n === 'alpha' ? 0 : 1].waitFor((l) => l.some((x) => x.includes('"type":"split-brain"')), 5_000);
        const event = taps[n === 'alpha' ? 0 : 1].json().find((e) => e.type === 'split-brain');
        expect(event).toMatchObject({ resource: r.name, node: n, peer: n === 'alpha' ? 'beta' : 'alpha' });
        const envPath = path.join(hookDir, `${n}.env`);
        for (let i = 0; i < 100 && !fs.existsSync(envPath); i++) await sleep(50);
        const env = fs.readFileSync(envPath, 'utf8').split('\n');
        expect(env).toEqual(expect.arrayContaining(['NRAID_EVENT=split-brain', `NRAID_RESOURCE=${r.name}`, `NRAID_NODE=${n}`, 'NRAID_ROLE=Primary']));
      }
      if (detectors.length === 1) {
        console.warn(`split brain detected on ${detectors[0]} only; the other node shows ${seen[detectors[0] === 'alpha' ? 'beta' : 'alpha'].connection} (see Known gaps in docs/operations.md)`);
      }

      // Nothing is discarded: each side still has its own files.
      await mount(r.nodes.alpha.device, mntA, 'ro');
      expectFiles(mntA, onAlpha);
      expect(fs.existsSync(path.join(mntA, 'beta-only-0'))).toBe(false);
      await umount(mntA);
      await mount(r.nodes.beta.device, mntB, 'ro');
      expectFiles(mntB, onBeta);
      expect(fs.existsSync(path.join(mntB, 'alpha-only-0'))).toBe(false);
      await umount(mntB);

      const betaBefore = (await r.status('beta')).bytesReceived as number;
      // The victim is beta. Refused while it is still Primary:
      expect(refusal(await run(r, 'beta', 'connect', ['--discard-my-data'])).code).toBe('NRAID_ERR_STATE');
      if ((await r.status('beta')).ioSuspended) await runOk(r, 'beta', 'resume-io');
      await runOk(r, 'beta', 'secondary');
      await runOk(r, 'beta', 'connect', ['--discard-my-data']);
      if ((await r.status('alpha')).connection === 'StandAlone') await runOk(r, 'alpha', 'connect');

      const b = await r.waitFor('beta', healthy, 30_000);
      const a = await r.waitFor('alpha', (s) => healthy(s) && s.outOfSyncBytes === 0, 10_000);
      expect(a).toMatchObject({ role: 'Primary', splitBrain: false, syncDecision: 'bitmap' });
      expect(b).toMatchObject({ role: 'Secondary', splitBrain: false, syncDecision: 'bitmap' });
      expect((b.bytesReceived as number) - betaBefore).toBeGreaterThan(0);
      expect((b.bytesReceived as number) - betaBefore).toBeLessThan((b.dataSizeBytes as number) / 2);
      expect(await runOk(r, 'beta', 'status')).toBe(`${r.name} role:Secondary disk:UpToDate peer:Primary peer-disk:UpToDate connection:Connected replication:Established`);
      await expectIdentical(r);
      await fsckClean(r.nodes.alpha.device);
      await mount(r.nodes.alpha.device, mntA);
      expectFiles(mntA, common);
      expectFiles(mntA, onAlpha);
      expect(fs.existsSync(path.join(mntA, 'beta-only-0'))).toBe(false);
      await umount(mntA);
    }, 150_000);
  });

  describe('5. after-sb-0pri resolves a split brain with no Primary by itself', () => {
    let r: TestResource;
    afterAll(async () => {
      await r?.cleanup();
    });

    workflow('discard-least-changes: the node that changed less becomes the target, no operator needed, no hook', async () => {
      let hookRan = '';
      r = await healthyPair({ 'after-sb-0pri': 'discard-least-changes' }, (res) => {
        hookRan = path.join(res.dir, 'split-brain-hook-ran');
        const hook = path.join(res.dir, 'split-brain.sh');
        fs.writeFileSync(hook, `#!/bin/sh\ntouch '${hookRan}'\n`, { mode: 0o700 });
        rewriteConfig(res, { hooks: { 'split-brain': hook } });
      });
      await runOk(r, 'alpha', 'disconnect');
      await r.waitFor('beta', (s) => s.connection !== 'Connected', 10_000);
      // alpha (still Primary) changes 64 KiB; beta, promoted meanwhile, 4 MiB; both demote.
      await writeDirect(r.nodes.alpha.device, 0, crypto.randomBytes(64 * 1024));
      await runOk(r, 'beta', 'primary');
      const betaData = crypto.randomBytes(4 * MiB);
      await writeDirect(r.nodes.beta.device, 8 * MiB, betaData);
      await runOk(r, 'alpha', 'secondary');
      await runOk(r, 'beta', 'secondary');

      await runOk(r, 'alpha', 'connect');
      const a = await r.waitFor('alpha', healthy, 30_000);
      await r.waitFor('beta', (s) => healthy(s) && s.outOfSyncBytes === 0, 10_000);
      expect(a.splitBrain).toBe(false);
      expect(a.syncDecision).toBe('bitmap');
      const logs = ['alpha', 'beta'].map((n) => fs.readFileSync(path.join(r.nodes[n as NodeName].runDir, 'daemon.log'), 'utf8')).join('');
      expect(logs).toContain('split brain resolved by after-sb-0pri discard-least-changes: alpha discards its changes');
      expect(logs).not.toContain('running hook');
      expect(fs.existsSync(hookRan)).toBe(false);
      await expectIdentical(r);
      const report = await compareRanges(r.nodes.beta.diskPath, r.nodes.alpha.diskPath, 8 * MiB, 4 * MiB);
      expect(report.equal).toBe(true);
    }, 120_000);
  });

  describe('3. a survivor that is not UpToDate, and 6. how a failing disk shows (one node)', () => {
    let r: TestResource;
    let undo: { run(): Promise<void> } | undefined;
    afterAll(async () => {
      await r?.cleanup();
      await undo?.run();
    });

    workflow('primary refuses an Inconsistent disk as the guide shows, primary --force promotes it; a failing disk: writes fail, ioErrors / nraid_io_errors_total count them', async () => {
      // A disk that fails: a loop device on a file in a 12 MiB tmpfs, which fills up.
      const dir = makeTempSubdir('og-failing');
      const fsDir = path.join(dir, 'tmpfs');
      fs.mkdirSync(fsDir);
      await execOk('mount', ['-t', 'tmpfs', '-o', 'size=12m', 'og-failing', fsDir]);
      const file = path.join(fsDir, 'disk.img');
      let loop: string | undefined;
      const detach = () => {
        if (loop !== undefined && loopBackingFile(loop) === file) execSyncQuiet('losetup', ['-d', loop]);
        if (mountPoints().includes(fsDir)) execSyncQuiet('umount', [fsDir]);
      };
      undo = registerCleanup(`failing disk ${file}`, async () => detach(), detach);
      fs.writeFileSync(file, '');
      fs.truncateSync(file, DISK_BYTES);
      loop = (await execOk('losetup', ['-f', '--show', file])).toString().trim();

      const [metricsPort] = await freePorts(1);
      r = await makeResource({ nodes: 1, sizeBytes: DISK_BYTES, extra: { ...FAST_FAILOVER_CONFIG, 'metrics-port': metricsPort } });
      rewriteConfig(r, { nodes: { alpha: { disk: loop } } });
      await runOk(r, 'alpha', 'create-md');
      await runOk(r, 'alpha', 'up');

      // 3: an Inconsistent disk (here: never synced) is not promoted without --force.
      const refused = refusal(await run(r, 'alpha', 'primary'));
      expect(refused.code).toBe('NRAID_ERR_NOT_UP_TO_DATE');
      expect(refused.message).toBe(
        `cannot promote ${r.name}: local disk is Inconsistent; connect to an UpToDate peer and wait for the resync, or use --force to accept this data as the newest`,
      );
      expect(await r.status('alpha')).toMatchObject({ role: 'Secondary', exposed: false });
      expect(statusFields(await runOk(r, 'alpha', 'primary', ['--force']), r.name)).toMatchObject({ role: 'Primary', disk: 'UpToDate', device: r.nodes.alpha.device });

      // 6: the disk fails under the Primary.
      const dd = await execTool('dd', ['if=/dev/zero', `of=${r.nodes.alpha.device}`, 'bs=1M', 'count=24', 'oflag=direct', 'status=none']);
      expect(dd.code).not.toBe(0);
      const s = await r.status('alpha');
      expect(s.ioErrors as number).toBeGreaterThan(0);
      expect(sample(await httpGet(metricsPort, '/metrics'), 'nraid_io_errors_total')).toBe(s.ioErrors);
    }, 60_000);
  });

  describe('6. replace a failed disk, then 7. replace a failed server, on the same pair', () => {
    let r: TestResource;
    let size: number;
    let mntA: string;
    const files = new Map<string, string>();
    beforeAll(async () => {
      r = await healthyPair();
      size = await dataSize(r);
      mntA = path.join(r.dir, 'mnt-alpha');
      await mkfs(r.nodes.alpha.device);
    });
    afterAll(async () => {
      await umountAll();
      await r?.cleanup();
    });

    workflow('6: down, new disk at the configured path, create-md, up: full sync from the peer, identical, UpToDate', async () => {
      await mount(r.nodes.alpha.device, mntA);
      for (const [k, v] of writeFiles(mntA, 'spool', 8)) files.set(k, v);

      expect(await runOk(r, 'beta', 'down')).toBe(`${r.name} is down on node beta`);
      // The "new disk": every byte replaced (random, so no old metadata and no filesystem signature).
      await execOk('dd', ['if=/dev/urandom', `of=${r.nodes.beta.diskPath}`, 'bs=1M', `count=${DISK_BYTES / MiB}`, 'oflag=direct', 'status=none']);
      const coveredBefore = resyncCovered(await r.status('alpha'));
      const created = await runOk(r, 'beta', 'create-md');
      expect(created).toBe(`created nraid metadata on ${r.nodes.beta.diskPath} for ${r.name} (node beta): ${size} bytes of data`);
      await runOk(r, 'beta', 'up');
      // alpha goes on serving meanwhile.
      for (const [k, v] of writeFiles(mntA, 'during-sync', 2)) files.set(k, v);
      const b = await r.waitFor('beta', healthy, 30_000);
      expect(b.syncDecision).toBe('full');
      const synced = await r.waitFor('alpha', (s) => healthy(s) && s.outOfSyncBytes === 0, 10_000);
      // A full sync: the whole data area, as bytes or (where it reads as zeros) as zero frames.
      expect(resyncCovered(synced) - coveredBefore).toBeGreaterThanOrEqual(size);
      await umount(mntA);
      await expectIdentical(r);
      await mount(r.nodes.alpha.device, mntA, 'ro');
      expectFiles(mntA, files);
      await umount(mntA);
    }, 120_000);

    workflow('7: the Secondary dies; a new one with the same config (its disk elsewhere) gets a full sync; a disk of another size is refused', async () => {
      await mount(r.nodes.alpha.device, mntA);
      await killDaemon(r, 'beta');
      await r.waitFor('alpha', (s) => s.connection === 'Connecting', 10_000);
      for (const [k, v] of writeFiles(mntA, 'alone', 4)) files.set(k, v); // alpha serves alone meanwhile

      // The new server: empty /run, a new disk. First one of the wrong size.
      fs.rmSync(r.nodes.beta.runDir, { recursive: true, force: true });
      const wrong = await makeLoopDisk(DISK_BYTES + 8 * MiB, `${r.name}-beta-wrong`);
      rewriteConfig(r, { nodes: { beta: { disk: wrong.device } } });
      await runOk(r, 'beta', 'create-md');
      await runOk(r, 'beta', 'up');
      const refused = await r.waitFor('beta', (s) => /same data size/.test(String(s.lastLinkError)), 15_000);
      expect(refused.connection).not.toBe('Connected');
      expect(refused.lastLinkError).toMatch(/has \d+ bytes of data, .* has \d+; both nodes need the same data size/);
      await runOk(r, 'beta', 'down');

      const coveredBefore = resyncCovered(await r.status('alpha'));
      const disk = await makeLoopDisk(DISK_BYTES, `${r.name}-beta-new`);
      rewriteConfig(r, { nodes: { beta: { disk: disk.device } } });
      await runOk(r, 'beta', 'create-md');
      await runOk(r, 'beta', 'up');
      const b = await r.waitFor('beta', healthy, 30_000);
      expect(b).toMatchObject({ role: 'Secondary', syncDecision: 'full', dataSizeBytes: size });
      const synced = await r.waitFor('alpha', (s) => healthy(s) && s.outOfSyncBytes === 0, 10_000);
      // A full sync: the whole data area, as bytes or (where it reads as zeros) as zero frames.
      expect(resyncCovered(synced) - coveredBefore).toBeGreaterThanOrEqual(size);
      await umount(mntA);
      await expectIdentical(r, r.nodes.alpha.diskPath, disk.device);
      await mount(r.nodes.alpha.device, mntA, 'ro');
      expectFiles(mntA, files);
      await umount(mntA);
    }, 120_000);
  });

  describe('9. take a backup from the Secondary, then 8. force a full resync, on the same pair', () => {
    let r: TestResource;
    let size: number;
    afterAll(async () => {
      await umountAll();
      await r?.cleanup();
    });

    workflow('9: fsfreeze, down, mount -o ro,noload the backing disk, copy, umount, up: the copy equals the originals, the node resyncs what it missed', async () => {
      r = await healthyPair();
      size = await dataSize(r);
      const mntA = path.join(r.dir, 'mnt-alpha');
      const backup = path.join(r.dir, 'mnt-backup');
      const copy = path.join(r.dir, 'backup-copy');
      await mkfs(r.nodes.alpha.device);
      await mount(r.nodes.alpha.device, mntA);
      const files = writeFiles(mntA, 'log', 10);

      await execOk('fsfreeze', ['-f', mntA]);
      try {
        expect(await runOk(r, 'beta', 'down')).toBe(`${r.name} is down on node beta`);
      } finally {
        await execOk('fsfreeze', ['-u', mntA]);
      }
      await mount(r.nodes.beta.diskPath, backup, 'ro,noload');
      fs.cpSync(backup, copy, { recursive: true, filter: (src) => path.basename(src) !== 'lost+found' });
      await umount(backup);
      const missed = writeFiles(mntA, 'while-down', 4); // alpha goes on meanwhile
      expectFiles(copy, files);
      expect(fs.existsSync(path.join(copy, 'while-down-0'))).toBe(false);

      await runOk(r, 'beta', 'up');
      const b = await r.waitFor('beta', healthy, 30_000);
      expect(b.syncDecision).toBe('bitmap');
      expect(b.bytesReceived as number).toBeGreaterThan(0);
      expect(b.bytesReceived as number).toBeLessThan(size / 2);
      expect(await runOk(r, 'beta', 'status')).toBe(`${r.name} role:Secondary disk:UpToDate peer:Primary peer-disk:UpToDate connection:Connected replication:Established`);
      await r.waitFor('alpha', (s) => healthy(s) && s.outOfSyncBytes === 0, 10_000);
      await umount(mntA);
      await expectIdentical(r);
      await mount(r.nodes.alpha.device, mntA, 'ro');
      expectFiles(mntA, missed);
      await umount(mntA);
    }, 120_000);

    workflow('8: invalidate is refused on the Primary; on the Secondary it fetches every byte and repairs a silent difference', async () => {
      const refused = refusal(await run(r, 'alpha', 'invalidate'));
      expect(refused).toEqual({ code: 'NRAID_ERR_STATE', message: `cannot invalidate ${r.name} on alpha: it is Primary; run nraid secondary first (or invalidate the peer instead)` });

      // beta's copy goes bad behind nraid's back: nothing notices.
      await runOk(r, 'beta', 'down');
      await writeDirect(r.nodes.beta.diskPath, 2 * MiB, crypto.randomBytes(MiB));
      await runOk(r, 'beta', 'up');
      await r.waitFor('beta', healthy, 30_000);
      expect((await compareRanges(r.nodes.alpha.diskPath, r.nodes.beta.diskPath, 0, size)).mismatchBlocks).toBe(MiB / 4096);

      const before = resyncCovered(await r.status('alpha'));
      const out = await runOk(r, 'beta', 'invalidate');
      expect(statusFields(out, r.name)).toMatchObject({ role: 'Secondary', disk: 'Inconsistent' });
      await r.waitFor('beta', healthy, 30_000);
      // Every byte of the data area once: as data, or as zero frames where alpha's disk reads as zeros.
      const copied = resyncCovered(await r.waitFor('alpha', (s) => healthy(s) && s.outOfSyncBytes === 0, 10_000)) - before;
      expect(copied).toBeGreaterThanOrEqual(size);
      expect(copied).toBeLessThan(size * 1.1);
      await expectIdentical(r);
    }, 120_000);
  });

  describe('damaged metadata', () => {
    let r: TestResource;
    beforeAll(async () => {
      r = await makeResource({ nodes: 2, sizeBytes: DISK_BYTES, extra: { ...FAST_FAILOVER_CONFIG } });
    });
    afterAll(async () => {
      await r?.cleanup();
    });

    workflow('dump-md prints both slots, --json saves them; restore-md is refused while up and over valid metadata, then writes the dump back', async () => {
      await runOk(r, 'alpha', 'create-md');
      expect(await runOk(r, 'alpha', 'dump-md')).toMatch(/superblock slot 0 at \d+: valid[\s\S]*superblock slot 1 at \d+: valid/);
      const dump = await runOk(r, 'alpha', 'dump-md', ['--json']);
      const file = path.join(r.dir, 'r0-alpha.md.json');
      fs.writeFileSync(file, dump + '\n');
      await runOk(r, 'alpha', 'up');
      expect(refusal(await run(r, 'alpha', 'restore-md', ['--file', file])).code).toBe('NRAID_ERR_ALREADY_UP');
      await runOk(r, 'alpha', 'down');
      expect(refusal(await run(r, 'alpha', 'restore-md', ['--file', file])).code).toBe('NRAID_ERR_DISK_HAS_DATA');
      await runOk(r, 'alpha', 'restore-md', ['--file', file, '--force']);
      const dumped = JSON.parse(dump);
      const restored = JSON.parse(await runOk(r, 'alpha', 'dump-md', ['--json']));
      expect(restored.superblock).toEqual({ ...dumped.superblock, sequence: restored.superblock.sequence });
      expect(restored.bitmap).toEqual(dumped.bitmap);
    }, 60_000);
  });

  test('every nraid command line the guide shows was run above', () => {
    if (workflowsDone < workflowsDefined) {
      // Some workflow failed (reported above) or was filtered out with -t: nothing to judge.
      console.warn(`only ${workflowsDone} of ${workflowsDefined} workflow tests completed; not checking the guide's commands against them`);
      return;
    }
    const missing = guideCommandLines().filter((c) => !ran.has(c.key)).map((c) => c.text);
    expect([...new Set(missing)]).toEqual([]);
  });
});
