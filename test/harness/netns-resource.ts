/**
 * One nraid resource whose two daemons run in the two namespaces of a
 * NetnsPair (netns.ts): alpha in side a, beta in side b, talking over the veth
 * at 10.213.<subnet>.1 and .2, so a test can cut the link under them.
 *
 *   const r = await makeNetnsResource({ tag: 'part', sizeBytes: 64 << 20, extra: { 'ping-timeout-ms': 3000 } });
 *   await r.runOk('alpha', 'create-md'); await r.runOk('alpha', 'up');
 *   await r.pair.partition('both');
 *   await r.cleanup();                      // also done by cleanupAll()
 *
 * Every CLI run goes through `ip netns exec`: a daemon started that way gets
 * its own mount namespace (ip netns exec remounts /sys), so its FUSE mount is
 * invisible from the host while its loop device and its admin socket (a path
 * in the run dir) are not. Hence the cleanup order: `down` inside the
 * namespace; then kill -9 of each daemon this fixture saw start (by the pid it
 * reported), then detaching any exposed loop device a killed daemon left over
 * its FUSE file; then the plain resource cleanup (disks, files) and, by the
 * registry's order, the namespaces.
 */
import * as fs from 'fs';
import * as path from 'path';
import { stringify as tomlStringify } from 'smol-toml';
import { loopDevices, registerCleanup } from './cleanup';
import { execSyncQuiet, execTool, toolEnv } from './exec';
import { NetnsPair, NetnsSide, makeNetnsPair } from './netns';
import { NRAID_BIN, NodeName, NraidResult, NraidRunOptions, NraidStatus, ResourceOptions, TestResource, makeResource, mergeConfig } from './cluster';
import { REPO_ROOT } from './prereq';
import { readRecord } from '../../src/device';

export interface NetnsResourceOptions {
  /** Names the namespaces (see NetnsPairOptions.tag). */
  tag: string;
  sizeBytes: number;
  protocol?: ResourceOptions['protocol'];
  /** Merged into the config after the addresses (see ResourceOptions.extra). */
  extra?: Record<string, unknown>;
  /** Use this pair instead of making one (the fixture then does not destroy it). */
  pair?: NetnsPair;
  /**
   * Per-node config: merged into a copy of the config that only that node's
   * commands read (e.g. alpha dialing beta through a link relay). Without it
   * both nodes read the one config file.
   */
  perNode?: Partial<Record<NodeName, Record<string, unknown>>>;
}

export interface NetnsResource {
  /** The plain fixture underneath: config, disks, run dirs (its run() would run on the host: use this object's). */
  base: TestResource;
  name: string;
  pair: NetnsPair;
  side: Record<NodeName, NetnsSide>;
  /** `nraid <command> <resource> -c <config> -n <node> ...flags` inside the node's namespace. */
  run(node: NodeName, command: string, flags?: readonly string[], opts?: NraidRunOptions): Promise<NraidResult>;
  runOk(node: NodeName, command: string, flags?: readonly string[], opts?: NraidRunOptions): Promise<NraidResult>;
  /** Parsed `status --json`, run inside the node's namespace. */
  status(node: NodeName, timeoutMs?: number): Promise<NraidStatus>;
  waitFor(node: NodeName, predicate: (s: NraidStatus) => boolean, timeoutMs: number): Promise<NraidStatus>;
  /** The config file a node's commands read (base.configPath unless `perNode` gave it its own). */
  configPathOf(node: NodeName): string;
  /** The pid of the node's daemon as last seen (from `up` or a status), if any. */
  daemonPid(node: NodeName): number | undefined;
  /** kill -9 of the node's daemon by its pid (the last resort). Resolves once it is gone. */
  kill(node: NodeName): Promise<void>;
  cleanup(): Promise<void>;
}

const PORT = 7789;
const DOWN_TIMEOUT_MS = 20_000;

function parseStatus(stdout: string): NraidStatus {
  const text = stdout.trim();
  // The whole output (status --json pretty-prints), else the last line that is an object (log lines before it).
  for (const candidate of [text, ...text.split('\n').reverse()]) {
    if (!candidate.trim().startsWith('{')) continue;
    try {
      const value = JSON.parse(candidate) as unknown;
      if (typeof value === 'object' && value !== null && !Array.isArray(value)) return value as NraidStatus;
    } catch {
      // Not this one.
    }
  }
  throw new Error(`status --json printed no JSON object: ${JSON.stringify(text.slice(0, 500))}`);
}

/** True while `pid` runs and its command line still names the resource (not a reused pid). */
function daemonRuns(pid: number, resource: string): boolean {
  try {
    const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && cmdline.includes(resource);
  } catch {
    return false;
  }
}

async function waitExit(pid: number, resource: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (daemonRuns(pid, resource)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

export async function makeNetnsResource(opts: NetnsResourceOptions): Promise<NetnsResource> {
  const ownPair = opts.pair === undefined;
  const pair = opts.pair ?? (await makeNetnsPair({ tag: opts.tag }));
  const side: Record<NodeName, NetnsSide> = { alpha: 'a', beta: 'b' };
  const extra: Record<string, unknown> = {
    nodes: {
      alpha: { address: `${pair.a.address}:${PORT}` },
      beta: { address: `${pair.b.address}:${PORT}` },
    },
  };
  const base = await makeResource({ nodes: 2, sizeBytes: opts.sizeBytes, protocol: opts.protocol, extra: opts.extra ? mergeConfig(extra, opts.extra) : extra });
  const name = base.name;
  const configPaths: Record<NodeName, string> = { alpha: base.configPath, beta: base.configPath };
  for (const node of ['alpha', 'beta'] as const) {
    const own = opts.perNode?.[node];
    if (own === undefined) continue;
    configPaths[node] = path.join(base.dir, `${name}-${node}.toml`);
    const config = mergeConfig(JSON.parse(JSON.stringify(base.config)) as Record<string, unknown>, own);
    fs.writeFileSync(configPaths[node], tomlStringify(config) + '\n', { mode: 0o600 });
  }
  const pids: Partial<Record<NodeName, number>> = {};
  /** Exposed loop devices seen in status: a killed daemon leaves its own behind. */
  const exposed = new Set<string>();

  const run = async (node: NodeName, command: string, flags: readonly string[] = [], o: NraidRunOptions = {}): Promise<NraidResult> => {
    const [file, argv] = pair.command(side[node], process.execPath, [NRAID_BIN, command, name, '-c', configPaths[node], '-n', node, ...flags]);
    const r = await execTool(file, argv, { timeoutMs: o.timeoutMs ?? 60_000, env: toolEnv(o.env), input: o.input, cwd: REPO_ROOT });
    const res = { code: r.code, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
    const m = command === 'up' && res.code === 0 ? /daemon pid (\d+)/.exec(res.stdout) : null;
    if (m) pids[node] = Number(m[1]);
    return res;
  };

  const status = async (node: NodeName, timeoutMs = 15_000): Promise<NraidStatus> => {
    const r = await run(node, 'status', ['--json'], { timeoutMs });
    if (r.code !== 0) throw new Error(`nraid status ${name} -n ${node} (in ${pair.end(side[node]).ns}) exited ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
    const s = parseStatus(r.stdout);
    if (typeof s.pid === 'number') pids[node] = s.pid;
    if (typeof s.loopDevice === 'string') exposed.add(s.loopDevice);
    return s;
  };

  const kill = async (node: NodeName): Promise<void> => {
    const pid = pids[node];
    if (pid === undefined || !daemonRuns(pid, name)) return;
    // The loop device it exposed, also one no status saw yet: its FUSE volume dies with the
    // daemon's mount namespace, so only the record names it (it reads "/" from the host).
    const record = readRecord(base.nodes[node].runDir);
    if (record !== null && typeof record.loopDevice === 'string') exposed.add(record.loopDevice);
    process.kill(pid, 'SIGKILL');
    if (!(await waitExit(pid, name, 10_000))) throw new Error(`daemon ${pid} of ${name} on ${node} still runs 10 s after kill -9`);
  };

  /** Detaches loop devices a daemon of ours exposed and left behind (its FUSE file is in our run dir, or gone with its namespace). */
  const detachLeftLoops = (): string[] => {
    const problems: string[] = [];
    const attached = new Map(loopDevices().map((l) => [l.device, l.backingFile]));
    for (const dev of exposed) {
      const backing = attached.get(dev);
      if (backing === undefined) continue;
      // The exposed file is <run-dir>/<something>; seen from the host through a dead mount namespace it may read "/".
      const ours = backing.startsWith(base.dir + '/') || backing === '/' || backing.includes(name);
      if (!ours) continue;  // the number is someone else's now
      const err = execSyncQuiet('losetup', ['-d', dev]);
      if (err !== undefined && loopDevices().some((l) => l.device === dev && l.backingFile === backing)) problems.push(`losetup -d ${dev} (${backing}): ${err}`);
    }
    return problems;
  };

  const downAll = async (): Promise<string[]> => {
    const problems: string[] = [];
    for (const node of ['alpha', 'beta'] as const) {
      const pid = pids[node];
      if (pid === undefined || !daemonRuns(pid, name)) continue;
      await run(node, 'down', [], { timeoutMs: DOWN_TIMEOUT_MS }).catch(() => undefined);
      if (await waitExit(pid, name, 5_000)) continue;
      // The last resort: its down did not finish (a wedged daemon is what some tests look for).
      await kill(node).catch((e: Error) => problems.push(e.message));
    }
    problems.push(...detachLeftLoops());
    return problems;
  };

  const handle = registerCleanup(
    `netns resource ${name}`,
    async () => {
      const problems = await downAll();
      try {
        await base.cleanup();
      } catch (e) {
        problems.push((e as Error).message);
      }
      if (ownPair) await pair.destroy().catch((e: Error) => problems.push(e.message));
      if (problems.length > 0) throw new Error(problems.join('; '));
    },
    () => {
      for (const node of ['alpha', 'beta'] as const) {
        const pid = pids[node];
        if (pid === undefined || !daemonRuns(pid, name)) continue;
        const [file, argv] = pair.command(side[node], process.execPath, [NRAID_BIN, 'down', name, '-c', configPaths[node], '-n', node]);
        execSyncQuiet(file, argv, DOWN_TIMEOUT_MS);
        if (daemonRuns(pid, name)) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // Gone.
          }
        }
      }
      detachLeftLoops();
      // The base resource and the pair have their own (older) entries, which run next.
    },
  );

  const resource: NetnsResource = {
    base,
    name,
    pair,
    side,
    run,
    runOk: async (node, command, flags = [], o) => {
      const r = await run(node, command, flags, o);
      if (r.code !== 0) {
        throw new Error(`nraid ${command} ${name} -n ${node} ${flags.join(' ')} (in ${pair.end(side[node]).ns}) exited ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
      }
      return r;
    },
    status,
    waitFor: async (node, predicate, timeoutMs) => {
      const deadline = Date.now() + timeoutMs;
      let last: NraidStatus | undefined;
      let lastError: string | undefined;
      for (;;) {
        try {
          last = await status(node);
          lastError = undefined;
          if (predicate(last)) return last;
        } catch (e) {
          lastError = (e as Error).message;
        }
        if (Date.now() >= deadline) throw new Error(`waitFor(${name} ${node}) timed out after ${timeoutMs} ms; last: ${lastError ?? JSON.stringify(last)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    configPathOf: (node) => configPaths[node],
    daemonPid: (node) => pids[node],
    kill,
    cleanup: () => handle.run(),
  };
  return resource;
}
