/**
 * Two network namespaces joined by a veth pair (DESIGN.md §10): a link the
 * test can cut both ways or one way, and heal, with nothing of it visible to
 * the host's network. Made for nraid daemons run inside (`netns-resource.ts`)
 * and reusable by any test that needs a real link it controls.
 *
 *   const pair = await makeNetnsPair({ tag: 'roles' });
 *   await pair.execOk('a', 'ip', ['addr']);            // ip netns exec <a> ip addr
 *   await pair.partition('both');                       // veth down at both ends
 *   await pair.partition('aToB');                       // what a sends is lost, b -> a still flows
 *   await pair.heal();
 *   await pair.destroy();                               // also done by cleanupAll()
 *
 * Addresses are 10.213.<subnet>.1 (side a) and .2 (side b) on a /24; each
 * namespace also has its loopback up. Neighbour entries are static, so a
 * one-way partition stays one way (no ARP traffic can erode or heal it).
 *
 * One-way partitions use a `pfifo limit 0` qdisc on the sending end (every
 * packet it would send is dropped there, silently to the peer): this kernel
 * has no iptables/nft, netem or tc drop action, and the fifo qdisc is always
 * built in. TCP over a one-way link stalls both ways after the first
 * retransmission timeout (the acks are lost too), as on a real network.
 *
 * Cleanup: destroy() kills -9 every process still inside the two namespaces
 * (they can only be processes this test started there), then deletes the
 * namespaces; the veth pair goes with them. Namespaces are named
 * `nraid-t<pid>-<n>-<tag>-a|b`; a pair left by a test process that was killed
 * (pid gone, nothing running inside) is deleted by the next makeNetnsPair().
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import { checkTag, registerCleanup } from './cleanup';
import { ExecOptions, ExecResult, execSyncQuiet, execTool, toolEnv } from './exec';

export type NetnsSide = 'a' | 'b';

/** Which traffic a partition drops: both ways, or only what one side sends. */
export type PartitionMode = 'both' | 'aToB' | 'bToA';

export interface NetnsEnd {
  side: NetnsSide;
  /** Namespace name (for `ip netns exec`). */
  ns: string;
  /** The veth end inside this namespace. */
  ifname: string;
  /** IPv4 address on the veth, without prefix length. */
  address: string;
  mac: string;
}

export interface NetnsPairOptions {
  /** Goes into the namespace names: [A-Za-z0-9_.-], at most 20 characters. */
  tag: string;
  /** Third octet of 10.213.<subnet>.0/24 (default: chosen per pair). Namespaces are isolated, so pairs may share one. */
  subnet?: number;
}

export interface NetnsPair {
  readonly tag: string;
  readonly a: NetnsEnd;
  readonly b: NetnsEnd;
  end(side: NetnsSide): NetnsEnd;
  /** The current partition, or null when the link is whole. */
  readonly partitioned: PartitionMode | null;
  /** Cuts the link: 'both' sets both veth ends down; 'aToB' drops everything a sends (b -> a still arrives). Heals a previous partition first. */
  partition(mode: PartitionMode): Promise<void>;
  /** Undoes any partition (veth ends up, no dropping qdisc). */
  heal(): Promise<void>;
  /** `ip netns exec <ns> file ...args`; resolves with the exit code whatever it is. */
  exec(side: NetnsSide, file: string, args: readonly string[], opts?: ExecOptions): Promise<ExecResult>;
  /** Like exec(), rejecting with stderr on a non-zero exit. */
  execOk(side: NetnsSide, file: string, args: readonly string[], opts?: ExecOptions): Promise<Buffer>;
  /** The argv that runs `file args` inside a namespace, for callers that spawn themselves. */
  command(side: NetnsSide, file: string, args: readonly string[]): [string, string[]];
  /** PIDs of the processes inside a namespace (`ip netns pids`). */
  pids(side: NetnsSide): Promise<number[]>;
  /** Kills -9 whatever still runs inside, deletes both namespaces (the veth goes with them). */
  destroy(): Promise<void>;
}

const NS_PREFIX = 'nraid-t';
const SUBNET_BASE = 10;
const SUBNET_SPAN = 240;
const IP_TIMEOUT_MS = 15_000;
let pairCounter = 0;

async function ip(args: readonly string[]): Promise<string> {
  const r = await execTool('ip', args, { timeoutMs: IP_TIMEOUT_MS });
  if (r.code !== 0) throw new Error(`ip ${args.join(' ')} exited ${r.code}: ${r.stderr.toString().trim()}`);
  return r.stdout.toString();
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function listNamespaces(): string[] {
  try {
    return fs.readdirSync('/run/netns');
  } catch {
    return [];
  }
}

function nsPidsSync(ns: string): number[] {
  try {
    const out = execFileSync('ip', ['netns', 'pids', ns], { env: toolEnv(), timeout: IP_TIMEOUT_MS, stdio: ['ignore', 'pipe', 'ignore'] });
    return parsePids(out.toString());
  } catch {
    return [];
  }
}

function parsePids(text: string): number[] {
  return text
    .split(/\s+/)
    .filter((s) => /^\d+$/.test(s))
    .map(Number);
}

/** Deletes pairs left by harness processes that no longer exist and have nothing running inside. */
function sweepStaleNamespaces(): void {
  for (const ns of listNamespaces()) {
    const m = /^nraid-t(\d+)-\d+-.*-[ab]$/.exec(ns);
    if (!m || processAlive(Number(m[1]))) continue;
    if (nsPidsSync(ns).length > 0) continue;  // someone still runs there: not ours to judge
    execSyncQuiet('ip', ['netns', 'del', ns]);
  }
}

function killInside(ns: string): number[] {
  const pids = nsPidsSync(ns);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Gone meanwhile.
    }
  }
  return pids;
}

function deleteNamespaceSync(ns: string): string | undefined {
  if (!listNamespaces().includes(ns)) return undefined;
  return execSyncQuiet('ip', ['netns', 'del', ns]);
}

async function waitGone(pids: number[], timeoutMs: number): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  let left = pids.filter(processAlive);
  while (left.length > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
    left = left.filter(processAlive);
  }
  return left;
}

/** Creates two namespaces and a veth pair between them, addresses set, links up, static neighbours. */
export async function makeNetnsPair(opts: NetnsPairOptions): Promise<NetnsPair> {
  checkTag(opts.tag);
  if (opts.tag.length > 20) throw new Error(`netns tag must be at most 20 characters, got ${JSON.stringify(opts.tag)}`);
  sweepStaleNamespaces();
  pairCounter += 1;
  const n = pairCounter;
  const subnet = opts.subnet ?? SUBNET_BASE + ((process.pid + n) % SUBNET_SPAN);
  if (!Number.isInteger(subnet) || subnet < 0 || subnet > 255) throw new Error(`subnet must be 0..255, got ${subnet}`);
  const base = `${NS_PREFIX}${process.pid}-${n}-${opts.tag}`;
  // Interface names: at most 15 characters (IFNAMSIZ), unique on this host while in the root namespace.
  const ifBase = `nr${process.pid.toString(36)}${n.toString(36)}`;
  const mk = (side: NetnsSide, host: number): NetnsEnd => ({
    side,
    ns: `${base}-${side}`,
    ifname: `${ifBase}${side}`,
    address: `10.213.${subnet}.${host}`,
    mac: '',
  });
  const a = mk('a', 1);
  const b = mk('b', 2);
  let current: PartitionMode | null = null;
  let destroyed = false;

  const undoSync = (): void => {
    for (const end of [a, b]) killInside(end.ns);
    for (const end of [a, b]) deleteNamespaceSync(end.ns);
    // Only if creation stopped half way: a veth end still in the root namespace.
    for (const end of [a, b]) if (fs.existsSync(`/sys/class/net/${end.ifname}`)) execSyncQuiet('ip', ['link', 'del', end.ifname]);
  };

  const destroyAsync = async (): Promise<void> => {
    destroyed = true;
    const problems: string[] = [];
    const killed = [...killInside(a.ns), ...killInside(b.ns)];
    const stuck = await waitGone(killed, 10_000);
    if (stuck.length > 0) problems.push(`processes ${stuck.join(', ')} inside ${base}-a|b did not die after kill -9`);
    for (const end of [a, b]) {
      const err = deleteNamespaceSync(end.ns);
      if (err !== undefined) problems.push(`ip netns del ${end.ns}: ${err}`);
    }
    for (const end of [a, b]) {
      if (fs.existsSync(`/sys/class/net/${end.ifname}`)) {
        const err = execSyncQuiet('ip', ['link', 'del', end.ifname]);
        if (err !== undefined) problems.push(`ip link del ${end.ifname}: ${err}`);
      }
    }
    if (problems.length > 0) throw new Error(problems.join('; '));
  };

  // Static, so a one-way partition stays one way; an admin `link down` flushes them, heal() sets them again.
  const setNeighbours = async (): Promise<void> => {
    for (const [self, peer] of [
      [a, b],
      [b, a],
    ] as const) {
      await ip(['-n', self.ns, 'neigh', 'replace', peer.address, 'lladdr', peer.mac, 'dev', self.ifname, 'nud', 'permanent']);
    }
  };

  const handle = registerCleanup(`netns pair ${base}-a|b`, destroyAsync, undoSync);
  try {
    for (const end of [a, b]) await ip(['netns', 'add', end.ns]);
    await ip(['link', 'add', a.ifname, 'type', 'veth', 'peer', 'name', b.ifname]);
    for (const end of [a, b]) {
      await ip(['link', 'set', end.ifname, 'netns', end.ns]);
      await ip(['-n', end.ns, 'addr', 'add', `${end.address}/24`, 'dev', end.ifname]);
      await ip(['-n', end.ns, 'link', 'set', 'lo', 'up']);
      await ip(['-n', end.ns, 'link', 'set', end.ifname, 'up']);
      const link = JSON.parse(await ip(['-n', end.ns, '-j', 'link', 'show', 'dev', end.ifname])) as Array<{ address: string }>;
      end.mac = link[0].address;
    }
    await setNeighbours();
  } catch (e) {
    await handle.run().catch(() => undefined);
    throw e;
  }

  const endOf = (side: NetnsSide): NetnsEnd => (side === 'a' ? a : b);
  const command = (side: NetnsSide, file: string, args: readonly string[]): [string, string[]] => [
    'ip',
    ['netns', 'exec', endOf(side).ns, file, ...args],
  ];

  const heal = async (): Promise<void> => {
    if (destroyed) throw new Error(`netns pair ${base} is destroyed`);
    for (const end of [a, b]) {
      // `replace` then `del` leaves the default qdisc whether or not a dropping one was there.
      await ip(['netns', 'exec', end.ns, 'tc', 'qdisc', 'replace', 'dev', end.ifname, 'root', 'pfifo', 'limit', '1000']);
      await ip(['netns', 'exec', end.ns, 'tc', 'qdisc', 'del', 'dev', end.ifname, 'root']);
      await ip(['-n', end.ns, 'link', 'set', end.ifname, 'up']);
    }
    await setNeighbours();
    current = null;
  };

  const pair: NetnsPair = {
    tag: opts.tag,
    a,
    b,
    end: endOf,
    get partitioned() {
      return current;
    },
    partition: async (mode) => {
      if (current !== null) await heal();
      if (mode === 'both') {
        // Both ends, as the brief's operator would pull a cable: each side sees its carrier go.
        await Promise.all([a, b].map((end) => ip(['-n', end.ns, 'link', 'set', end.ifname, 'down'])));
      } else if (mode === 'aToB' || mode === 'bToA') {
        const sender = mode === 'aToB' ? a : b;
        await ip(['netns', 'exec', sender.ns, 'tc', 'qdisc', 'replace', 'dev', sender.ifname, 'root', 'pfifo', 'limit', '0']);
      } else {
        throw new Error(`partition mode must be 'both', 'aToB' or 'bToA', got ${JSON.stringify(mode)}`);
      }
      current = mode;
    },
    heal,
    exec: (side, file, args, o = {}) => {
      const [f, argv] = command(side, file, args);
      return execTool(f, argv, { ...o, env: o.env ?? toolEnv() });
    },
    execOk: async (side, file, args, o = {}) => {
      const [f, argv] = command(side, file, args);
      const r = await execTool(f, argv, { ...o, env: o.env ?? toolEnv() });
      if (r.code !== 0) throw new Error(`${argv.join(' ')} exited ${r.code}: ${r.stderr.toString().trim()}`);
      return r.stdout;
    },
    command,
    pids: async (side) => {
      const r = await execTool('ip', ['netns', 'pids', endOf(side).ns], { timeoutMs: IP_TIMEOUT_MS });
      return r.code === 0 ? parsePids(r.stdout.toString()) : [];
    },
    destroy: () => handle.run(),
  };
  return pair;
}
