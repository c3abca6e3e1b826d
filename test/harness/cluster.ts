/**
 * A fixture for one nraid resource on this machine (docs/CONTRACTS.md): two
 * nodes, alpha and beta, on 127.0.0.1 with free ports, backing loop disks, a
 * TOML config, devices at /dev/nraid/<resource>-<node> and run dirs inside the
 * harness temp dir. The CLI is driven as a user would: `node bin/nraid ...`.
 *
 *   const r = await makeResource({ nodes: 2, sizeBytes: 64 << 20 });
 *   await r.runOk('alpha', 'create-md'); await r.runOk('alpha', 'up');
 *   await r.waitFor('alpha', (s) => s.connection === 'Connected', 10_000);
 *   ...
 *   await r.cleanup();   // also done by cleanupAll()
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as net from 'net';
import * as path from 'path';
import { stringify as tomlStringify } from 'smol-toml';
import { makeTempSubdir, registerCleanup, sweepDir } from './cleanup';
import { execSyncQuiet, execTool, toolEnv } from './exec';
import { LoopDisk, LoopDiskOptions, makeLoopDisk } from './loop';
import { REPO_ROOT } from './prereq';

export type NodeName = 'alpha' | 'beta';
export const NODE_NAMES: readonly NodeName[] = ['alpha', 'beta'];
export const NRAID_BIN = path.join(REPO_ROOT, 'bin', 'nraid');
export const DEVICE_DIR = '/dev/nraid';

export interface NraidResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface NraidRunOptions {
  /** Kill the CLI after this long (default 60 s); code is then -1. */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  input?: string;
}

/** Runs `node <repo>/bin/nraid ...args` and resolves with its exit code and output (never rejects on a non-zero exit). */
export async function nraid(args: readonly string[], opts: NraidRunOptions = {}): Promise<NraidResult> {
  const r = await execTool(process.execPath, [NRAID_BIN, ...args], {
    timeoutMs: opts.timeoutMs ?? 60_000,
    env: toolEnv(opts.env),
    input: opts.input,
    cwd: REPO_ROOT,
  });
  return { code: r.code, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/** `status --json` (docs/CONTRACTS.md); fields beyond the contract pass through. */
export interface NraidStatus {
  resource: string;
  node: string;
  role: 'Primary' | 'Secondary' | string;
  disk: string;
  connection: string;
  replication: string;
  peerRole?: string;
  peerDisk?: string;
  outOfSyncBytes?: number;
  device?: string;
  dataSizeBytes?: number;
  protocol?: string;
  [key: string]: unknown;
}

export interface ResourceOptions {
  /** Nodes with a backing disk (1: only alpha; beta is in the config but never started). */
  nodes: 1 | 2;
  /** Size of each backing disk (data area plus nraid's metadata). */
  sizeBytes: number;
  protocol?: 'A' | 'B' | 'C';
  /**
   * Deep-merged into the config before it is written, e.g.
   * `{ 'ping-timeout-ms': 500, nodes: { beta: { address: '127.0.0.1:7' } } }`.
   * A null value deletes the key (to test a default).
   */
  extra?: Record<string, unknown>;
  /** Passed to makeLoopDisk for each backing disk. */
  loop?: LoopDiskOptions;
}

export interface NodeFixture {
  name: NodeName;
  port: number;
  address: string;
  /** The backing loop disk; undefined for beta when nodes = 1. */
  disk: LoopDisk | undefined;
  /** Path given as `disk` in the config. */
  diskPath: string;
  /** /dev/nraid/<resource>-<node> */
  device: string;
  runDir: string;
}

export interface TestResource {
  name: string;
  /** Temp dir holding the config and the run dirs. */
  dir: string;
  configPath: string;
  /** The config object as written (after `extra`). */
  config: Record<string, unknown>;
  nodes: Record<NodeName, NodeFixture>;
  /** Nodes that have a disk and may be started. */
  activeNodes: NodeName[];
  /** Raw CLI run: `node bin/nraid ...args`. */
  nraid(args: readonly string[], opts?: NraidRunOptions): Promise<NraidResult>;
  /** `nraid <command> <resource> -c <config> -n <node> ...flags`. */
  run(node: NodeName, command: string, flags?: readonly string[], opts?: NraidRunOptions): Promise<NraidResult>;
  /** Like run(), rejecting with the CLI's stderr on a non-zero exit. */
  runOk(node: NodeName, command: string, flags?: readonly string[], opts?: NraidRunOptions): Promise<NraidResult>;
  /** Parsed `status --json`; rejects if the command fails or prints no JSON object. */
  status(node: NodeName): Promise<NraidStatus>;
  /** Polls status(node) until `predicate` holds; rejects after timeoutMs with the last status or error. */
  waitFor(node: NodeName, predicate: (s: NraidStatus) => boolean, timeoutMs: number): Promise<NraidStatus>;
  /** `down` on every node (errors ignored), then removes disks, device links and files. */
  cleanup(): Promise<void>;
}

let resourceCounter = 0;

/** Free TCP ports on 127.0.0.1, distinct from each other (all held until every one is found). */
export async function freePorts(count: number): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const server = net.createServer();
      servers.push(server);
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, '127.0.0.1', () => resolve());
      });
    }
    return servers.map((s) => (s.address() as net.AddressInfo).port);
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => (s.listening ? s.close(() => resolve()) : resolve()))));
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Deep merge of `extra` into `base` (in place); null deletes. */
export function mergeConfig(base: Record<string, unknown>, extra: Record<string, unknown>): Record<string, unknown> {
  for (const [k, v] of Object.entries(extra)) {
    if (v === null) delete base[k];
    else if (isPlainObject(v) && isPlainObject(base[k])) mergeConfig(base[k] as Record<string, unknown>, v);
    else base[k] = v;
  }
  return base;
}

function parseStatus(stdout: string): NraidStatus {
  const text = stdout.trim();
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    // Tolerate log lines before the object: take the last line that parses.
    const line = text
      .split('\n')
      .reverse()
      .find((l) => l.trim().startsWith('{'));
    value = line === undefined ? undefined : JSON.parse(line);
  }
  if (!isPlainObject(value)) throw new Error(`status --json printed no JSON object: ${JSON.stringify(text.slice(0, 500))}`);
  return value as NraidStatus;
}

/** Removes `link` if it is a symlink (the device link a daemon failed to remove). */
function removeDeviceLink(link: string): void {
  try {
    if (fs.lstatSync(link).isSymbolicLink()) fs.unlinkSync(link);
  } catch {
    // Gone already.
  }
}

/** PIDs (other than ours) whose command line mentions `needle` (diagnostics only: nothing is killed). */
export function processesMentioning(needle: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(needle)) pids.push(Number(entry));
    } catch {
      // Exited meanwhile.
    }
  }
  return pids;
}

/** Creates disks, ports and the config for one resource; starts nothing. */
export async function makeResource(opts: ResourceOptions): Promise<TestResource> {
  if (opts.nodes !== 1 && opts.nodes !== 2) throw new Error(`nodes must be 1 or 2, got ${opts.nodes}`);
  resourceCounter += 1;
  // The pid alone repeats: jest runs many files in one process, and pids are reused within minutes.
  const name = `t${process.pid}r${resourceCounter}${crypto.randomBytes(2).toString('hex')}`;
  const dir = makeTempSubdir(name);
  const activeNodes: NodeName[] = opts.nodes === 2 ? ['alpha', 'beta'] : ['alpha'];
  const disks: LoopDisk[] = [];
  try {
    const [alphaPort, betaPort] = await freePorts(2);
    const nodes = {} as Record<NodeName, NodeFixture>;
    for (const [node, port] of [
      ['alpha', alphaPort],
      ['beta', betaPort],
    ] as const) {
      const active = activeNodes.includes(node);
      const disk = active ? await makeLoopDisk(opts.sizeBytes, `${name}-${node}`, opts.loop) : undefined;
      if (disk) disks.push(disk);
      const runDir = path.join(dir, `${node}-run`);
      nodes[node] = {
        name: node,
        port,
        address: `127.0.0.1:${port}`,
        disk,
        diskPath: disk ? disk.device : path.join(dir, `${node}-has-no-disk`),
        device: `${DEVICE_DIR}/${name}-${node}`,
        runDir,
      };
    }
    const config: Record<string, unknown> = {
      resource: name,
      protocol: opts.protocol ?? 'C',
      secret: crypto.randomBytes(16).toString('hex'),
      nodes: Object.fromEntries(
        NODE_NAMES.map((n) => [
          n,
          { address: nodes[n].address, disk: nodes[n].diskPath, device: nodes[n].device, 'run-dir': nodes[n].runDir },
        ]),
      ),
    };
    if (opts.extra) mergeConfig(config, opts.extra);
    const configPath = path.join(dir, `${name}.toml`);
    fs.writeFileSync(configPath, tomlStringify(config) + '\n', { mode: 0o600 });

    const run = (node: NodeName, command: string, flags: readonly string[] = [], o?: NraidRunOptions) =>
      nraid([command, name, '-c', configPath, '-n', node, ...flags], o);

    const downAll = async (): Promise<string[]> => {
      const problems: string[] = [];
      for (const node of activeNodes) {
        // A node never brought up may refuse `down`: only what remains afterwards matters.
        await run(node, 'down', [], { timeoutMs: 30_000 }).catch(() => undefined);
        removeDeviceLink(nodes[node].device);
      }
      problems.push(...sweepDir(dir));
      let leftover = processesMentioning(name);
      for (let i = 0; i < 50 && leftover.length > 0; i++) {
        await new Promise((r) => setTimeout(r, 100));
        leftover = processesMentioning(name);
      }
      if (leftover.length > 0) problems.push(`processes still mention ${name} after down: ${leftover.join(', ')} (not killed)`);
      return problems;
    };

    const cleanupHandle = registerCleanup(
      `resource ${name} (${dir})`,
      async () => {
        const problems = await downAll();
        for (const d of [...disks].reverse()) await d.detach();
        fs.rmSync(dir, { recursive: true, force: true });
        if (problems.length > 0) throw new Error(problems.join('; '));
      },
      () => {
        for (const node of activeNodes) {
          execSyncQuiet(process.execPath, [NRAID_BIN, 'down', name, '-c', configPath, '-n', node], 15_000);
          removeDeviceLink(nodes[node].device);
        }
        // The disks' own entries (older) run next; the temp dir sweep follows.
      },
    );

    const resource: TestResource = {
      name,
      dir,
      configPath,
      config,
      nodes,
      activeNodes,
      nraid: (args, o) => nraid(args, o),
      run,
      runOk: async (node, command, flags = [], o) => {
        const r = await run(node, command, flags, o);
        if (r.code !== 0) {
          throw new Error(`nraid ${command} ${name} -n ${node} ${flags.join(' ')} exited ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
        }
        return r;
      },
      status: async (node) => {
        const r = await run(node, 'status', ['--json'], { timeoutMs: 15_000 });
        if (r.code !== 0) throw new Error(`nraid status ${name} -n ${node} exited ${r.code}: ${r.stderr.trim()}`);
        return parseStatus(r.stdout);
      },
      waitFor: async (node, predicate, timeoutMs) => {
        const deadline = Date.now() + timeoutMs;
        let last: NraidStatus | undefined;
        let lastError: string | undefined;
        for (;;) {
          try {
            last = await resource.status(node);
            lastError = undefined;
            if (predicate(last)) return last;
          } catch (e) {
            lastError = (e as Error).message;
          }
          if (Date.now() >= deadline) {
            const seen = lastError ?? JSON.stringify(last);
            throw new Error(`waitFor(${name} ${node}) timed out after ${timeoutMs} ms; last: ${seen}`);
          }
          await new Promise((r) => setTimeout(r, 100));
        }
      },
      cleanup: () => cleanupHandle.run(),
    };
    return resource;
  } catch (e) {
    for (const d of [...disks].reverse()) await d.detach().catch(() => undefined);
    fs.rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}
