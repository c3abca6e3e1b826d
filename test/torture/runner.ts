/**
 * The torture runner (issue 10, item 1): two nraid nodes in two network
 * namespaces (alpha in side a, beta in side b), alpha dialing beta through a
 * link relay in side a (link-relay.ts), a background writer on the Primary,
 * and a random schedule of faults drawn from a seed. After every step the
 * invariants are checked:
 *
 *  - no acknowledged write lost (LossModel): on every failover the new
 *    Primary's device is read back, and at every settle point both backing
 *    data areas; under protocol C a write acknowledged while replicating is
 *    durable on both nodes, under A/B (or while apart) only on the Primary;
 *  - never two Primaries while connected (RoleWatch samples both daemons
 *    every 100 ms the whole run), and a switchover never ends with two;
 *  - after every resync both data areas are identical (sha256 per block of
 *    both backing disks, once quiet);
 *  - no command or daemon hangs: every CLI call has a bound, every status
 *    sample must answer within DAEMON_ANSWER_MS, and the pair must converge
 *    (settle) within SETTLE_TIMEOUT_MS once the faults are undone.
 *
 * With `diskFaults` both backing disks are failing disks (nbdkit's error
 * filter behind nbdfuse) and one may fail under the writer: a Primary served
 * by its UpToDate peer, or a Secondary leaving, with no write failing.
 *
 * The schedule is a function of the seed and of what the runner saw, so a
 * replay (`--replay SEED:STEP`) re-runs the same steps up to STEP.
 */
import * as fs from 'fs';
import * as path from 'path';
import { adminCall } from '../../src/admin';
import { NodeName, NraidResult, NraidStatus } from '../harness/cluster';
import { mulberry32, RandomWriter, readRange, writeDirect } from '../harness/direct-io';
import { otherNode, reportedError, sleep } from '../harness/helpers';
import { startLinkRelay, LinkRelay } from '../harness/link-relay';
import { FailingDisk, makeFailingDisk } from '../harness/failing-disk';
import { makeNetnsPair, NetnsPair } from '../harness/netns';
import { makeNetnsResource, NetnsResource } from '../harness/netns-resource';
import { adminSocketOf, RoleWatch } from '../harness/role-watch';
import { AckWriter } from './ack-writer';
import { blockHash, LossModel, MODEL_BLOCK_BYTES, WriteEntries } from './loss-model';

const MiB = 1024 * 1024;
const NODES: readonly NodeName[] = ['alpha', 'beta'];

// tls = false: the relay flips bits inside frames and the checks count the frames that reach the
// target; under TLS every flip is a failed record instead (test/integration/link-tls.test.ts).
export const TORTURE_CONFIG = { 'ping-interval-ms': 400, 'ping-timeout-ms': 2000, 'connect-retry-ms': 200, tls: false } as const;
const DISK_BYTES = 72 * MiB;
const MAX_WRITE_BYTES = 1 * MiB;
const PORT = 7789;
const RELAY_PORT = 7790;

/** Bounds: a CLI call or a daemon answer slower than these is a hang (the machine is shared: generous, not lax). */
const CLI_BOUND_MS: Record<string, number> = { up: 60_000, down: 40_000, switchover: 40_000, primary: 30_000, default: 30_000 };
const DAEMON_ANSWER_MS = 8_000;
const STATUS_TIMEOUT_MS = 8_000;
const SETTLE_TIMEOUT_MS = 180_000;
const WATCH_INTERVAL_MS = 100;
/** A settle point at least every this many steps. */
const CONVERGE_EVERY_STEPS = 8;
/** The disk-fails step: how long the writer runs against the failing disk, and how long the node may take to go Diskless. */
const DISK_FAULT_WRITES_MS = [1500, 4000] as const;
const DISKLESS_TIMEOUT_MS = 15_000;

export type StepKind =
  | 'writes'
  | 'partition-both'
  | 'partition-one-way'
  | 'heal'
  | 'slow-link'
  | 'stall-link'
  | 'bit-flip'
  | 'kill'
  | 'kill-mid-resync'
  | 'up'
  | 'switchover'
  | 'switchover-kill'
  | 'promote'
  | 'disconnect'
  | 'connect'
  | 'adjust'
  | 'disk-fails'
  | 'converge';

export interface TortureOptions {
  seed: number;
  /** Stop drawing steps after this long (the final settle point still runs). */
  minutes?: number;
  /** Stop after this many steps (a replay: the step that failed). */
  maxSteps?: number;
  /** Print each step (default true). */
  verbose?: boolean;
  /**
   * Both nodes' backing disks are failing disks (test/harness/failing-disk.ts:
   * nbdkit's error filter behind nbdfuse) and the 'disk-fails' step is drawn:
   * one node's disk fails writes (sometimes reads too) while the writer runs.
   */
  diskFaults?: boolean;
  /**
   * After the run, prove the zero-loss check can fail: a write confirmed on
   * both nodes is overwritten on the Secondary's backing disk, then a
   * switchover; the failover check must catch it (summary.canary).
   */
  canary?: boolean;
  /** Step kinds drawn first, each as soon as it can run (the CI run: every main fault at least once). */
  mustCover?: readonly StepKind[];
  /** Where to copy the daemons' logs on a failure (default: a dir under /tmp named by seed and step). */
  logDir?: string;
}

export interface TortureSummary {
  seed: number;
  steps: number;
  elapsedMs: number;
  faults: Record<string, number>;
  checks: Record<string, number>;
  writesIssued: number;
  writesAcknowledged: number;
  writesFailed: number;
  bytesAcknowledged: number;
  writesLost: number;
  /** Writes acknowledged under C in a confirmed replication epoch: the ones a failover must not lose. */
  writesConfirmedOnBoth: number;
  failoversChecked: number;
  failoversUnchecked: number;
  settlePoints: number;
  notes: string[];
  /** With the canary option: whether the planted loss was caught. */
  canary?: 'caught' | 'missed' | 'not run';
  failure: null | { step: number; kind: string; message: string; replay: string; logs?: string };
}

export class TortureFailure extends Error {
  constructor(
    readonly check: string,
    message: string,
  ) {
    super(`${check}: ${message}`);
  }
}

type Status = NraidStatus & { linkFailures?: number; splitBrain?: boolean; exposed?: boolean; ioSuspended?: boolean; lagBytes?: number; writesInFlight?: number };

export class Torture {
  readonly summary: TortureSummary;
  private r!: NetnsResource;
  private pair!: NetnsPair;
  private relay!: LinkRelay;
  private watch!: RoleWatch;
  private writer!: AckWriter;
  private rw!: RandomWriter;
  private model!: LossModel;
  private dataBytes = 0;
  private readonly random: () => number;
  private readonly up: Record<NodeName, boolean> = { alpha: false, beta: false };
  private readonly disconnected = new Set<NodeName>();
  private relayDegraded = false;
  /** With diskFaults: each node's failing disk. */
  private disks: Partial<Record<NodeName, FailingDisk>> = {};
  /** The node whose disk was made to fail and not yet healed and attached again (converge does). */
  private diskFault: NodeName | null = null;
  private protocol: 'A' | 'B' | 'C' = 'C';
  /** Replication epochs: a write counts as durable on the peer only if issued and acknowledged within one confirmed epoch. */
  private epoch = 0;
  private replicating: null | { epoch: number; primary: NodeName; linkFailures: number } = null;
  private pendingPeer: WriteEntries[] = [];
  private step = 0;
  private readonly drawn = new Set<StepKind>();
  private watchFrom = 0;
  private readonly t0 = Date.now();

  constructor(private readonly opts: TortureOptions) {
    const next = mulberry32(opts.seed >>> 0);
    this.random = () => next() / 2 ** 32;
    this.summary = {
      seed: opts.seed,
      steps: 0,
      elapsedMs: 0,
      faults: {},
      checks: {},
      writesIssued: 0,
      writesAcknowledged: 0,
      writesFailed: 0,
      bytesAcknowledged: 0,
      writesLost: 0,
      writesConfirmedOnBoth: 0,
      failoversChecked: 0,
      failoversUnchecked: 0,
      settlePoints: 0,
      notes: [],
      failure: null,
    };
  }

  // ------------------------------------------------------------------ utilities

  private log(m: string): void {
    if (this.opts.verbose !== false) process.stdout.write(`[torture +${((Date.now() - this.t0) / 1000).toFixed(1)}s step ${this.step}] ${m}\n`);
  }

  private note(m: string): void {
    this.log(`note: ${m}`);
    if (this.summary.notes.length < 200) this.summary.notes.push(`step ${this.step}: ${m}`);
  }

  private fault(kind: string): void {
    this.summary.faults[kind] = (this.summary.faults[kind] ?? 0) + 1;
  }

  private passed(check: string): void {
    this.summary.checks[check] = (this.summary.checks[check] ?? 0) + 1;
  }

  private pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.random() * xs.length) % xs.length];
  }

  private between(lo: number, hi: number): number {
    return lo + Math.floor(this.random() * (hi - lo + 1));
  }

  /** One CLI call inside the node's namespace, bounded: exceeding the bound is a hang. */
  private async cli(node: NodeName, command: string, flags: string[] = []): Promise<NraidResult> {
    const bound = CLI_BOUND_MS[command] ?? CLI_BOUND_MS.default;
    const t = Date.now();
    const res = await this.r.run(node, command, flags, { timeoutMs: bound });
    const ms = Date.now() - t;
    if (res.code === -1) throw new TortureFailure('no-hang', `nraid ${command} ${flags.join(' ')} on ${node} did not return within ${bound} ms`);
    this.passed('command-bounded');
    const err = reportedError(res);
    this.log(`${node}$ nraid ${command} ${flags.join(' ')} -> exit ${res.code}${err ? ` ${err.code}: ${err.message.slice(0, 160)}` : ''} (${ms} ms)`);
    return res;
  }

  /** Status over the admin socket (what `status --json` asks), or null when the daemon is not up. A daemon that is up but silent is a hang. */
  private async status(node: NodeName): Promise<Status | null> {
    try {
      return (await adminCall(adminSocketOf(this.r, node), 'status', {}, undefined, STATUS_TIMEOUT_MS)) as Status;
    } catch (e) {
      const msg = (e as Error).message;
      if (/did not answer/.test(msg)) {
        if (this.up[node]) throw new TortureFailure('no-hang', `${node}'s daemon did not answer status within ${STATUS_TIMEOUT_MS} ms`);
      }
      return null;
    }
  }

  private async waitStatus(node: NodeName, what: string, pred: (s: Status) => boolean, timeoutMs: number): Promise<Status | null> {
    const deadline = Date.now() + timeoutMs;
    let last: Status | null = null;
    for (;;) {
      last = await this.status(node);
      if (last && pred(last)) return last;
      if (Date.now() > deadline) {
        this.log(`waited ${timeoutMs} ms for ${node} ${what}; last ${describe(last)}`);
        return null;
      }
      await sleep(100);
    }
  }

  private logSize(node: NodeName): number {
    try {
      return fs.statSync(path.join(this.r.base.nodes[node].runDir, 'daemon.log')).size;
    } catch {
      return 0;
    }
  }

  /** Polls `node`'s daemon log from byte `from` until a line contains `needle`; false after timeoutMs. */
  private async waitLog(node: NodeName, from: number, needle: string, timeoutMs: number): Promise<boolean> {
    const file = path.join(this.r.base.nodes[node].runDir, 'daemon.log');
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      try {
        if (fs.readFileSync(file).subarray(from).includes(needle)) return true;
      } catch {
        // Not there yet.
      }
      await sleep(10);
    }
    return false;
  }

  private device(node: NodeName): string {
    return this.r.base.nodes[node].device;
  }

  /** The node's backing disk as its daemon sees it (the failing disk's file with diskFaults). */
  private diskFile(node: NodeName): string {
    return this.disks[node]?.file ?? this.r.base.nodes[node].diskPath;
  }

  private configPaths(): string[] {
    return [...new Set(NODES.map((n) => this.r.configPathOf(n)))];
  }

  // ------------------------------------------------------------------ setup

  async setup(): Promise<void> {
    this.pair = await makeNetnsPair({ tag: 'torture' });
    this.relay = await startLinkRelay(this.pair, 'a', { listen: `127.0.0.1:${RELAY_PORT}`, target: `${this.pair.b.address}:${PORT}` });
    // The nbdfuse mounts exist before any daemon starts: `ip netns exec` gives a daemon a copy of the host's mounts as they are then.
    const diskNodes: Record<string, unknown> = {};
    if (this.opts.diskFaults) {
      for (const n of NODES) {
        this.disks[n] = await makeFailingDisk(DISK_BYTES, `torture-${n}`);
        diskNodes[n] = { disk: this.disks[n]!.file };
      }
    }
    this.r = await makeNetnsResource({
      tag: 'torture',
      sizeBytes: DISK_BYTES,
      pair: this.pair,
      extra: { ...TORTURE_CONFIG, ...(this.opts.diskFaults ? { nodes: diskNodes } : {}) },
      // alpha dials (its name sorts first): through the relay; beta keeps the real addresses.
      perNode: { alpha: { nodes: { beta: { address: `127.0.0.1:${RELAY_PORT}` } } } },
    });
    for (const n of NODES) await this.cli(n, 'create-md').then((res) => this.expectOk(res, 'create-md'));
    for (const n of NODES) {
      this.expectOk(await this.cli(n, 'up'), 'up');
      this.up[n] = true;
    }
    await this.waitStatus('alpha', 'Connected', (s) => s.connection === 'Connected', 30_000);
    this.expectOk(await this.cli('alpha', 'primary', ['--force']), 'primary --force');
    const s = await this.waitStatus('alpha', 'settled after the initial sync', (x) => settledStatus(x), SETTLE_TIMEOUT_MS);
    if (!s) throw new TortureFailure('setup', 'the initial sync did not finish');
    this.dataBytes = Number(s.dataSizeBytes);
    this.model = new LossModel(this.dataBytes);
    const linkPath = path.join(this.r.base.dir, 'writer-target');
    this.rw = await RandomWriter.create({ device: linkPath, sizeBytes: this.dataBytes, seed: this.opts.seed, baseline: 'ignore', writeTimeoutMs: 30_000 });
    this.writer = new AckWriter(this.rw, this.model, linkPath, this.opts.seed, MAX_WRITE_BYTES);
    this.writer.epoch = () => this.epoch;
    this.writer.onAck = (w, node, issuedEpoch) => {
      this.model.durableOn(w, node);
      const rep = this.replicating;
      if (process.env.TORTURE_DEBUG) this.log(`ack ${w.writeIndex} on ${node} epoch ${issuedEpoch} now ${this.epoch} rep ${JSON.stringify(rep)} protocol ${this.protocol}`);
      if (rep && rep.epoch === issuedEpoch && this.epoch === issuedEpoch && rep.primary === node && this.protocol === 'C') this.pendingPeer.push(w);
    };
    this.watch = RoleWatch.start({ alpha: adminSocketOf(this.r, 'alpha'), beta: adminSocketOf(this.r, 'beta') }, { intervalMs: WATCH_INTERVAL_MS, answerTimeoutMs: DAEMON_ANSWER_MS });
    this.writer.resume('alpha', this.device('alpha'));
    await this.openEpoch();
  }

  private expectOk(res: NraidResult, what: string): void {
    if (res.code !== 0) throw new TortureFailure('setup', `${what} exited ${res.code}: ${res.stderr.trim() || res.stdout.trim()}`);
  }

  // ------------------------------------------------------------------ epochs

  /** Before any fault: confirm (or not) that the epoch's writes reached the peer. */
  private async closeEpoch(): Promise<void> {
    const rep = this.replicating;
    this.replicating = null;
    this.epoch++;
    const pending = this.pendingPeer;
    this.pendingPeer = [];
    if (!rep) return;
    const s = await this.status(rep.primary);
    const ok = s !== null && s.connection === 'Connected' && s.replication === 'Established' && s.linkFailures === rep.linkFailures && s.role === 'Primary';
    if (!ok) {
      this.log(`epoch of ${rep.primary} not confirmed (${describe(s)}): ${pending.length} writes count as durable on ${rep.primary} only`);
      return;
    }
    const peer = otherNode(rep.primary);
    for (const w of pending) this.model.durableOn(w, peer);
    this.summary.writesConfirmedOnBoth += pending.length;
  }

  /** After a step: if the writer's Primary replicates under C to an UpToDate peer, writes from now on count on both. */
  private async openEpoch(): Promise<void> {
    if (this.replicating !== null) return;  // still the one opened before a writes step: closeEpoch confirms it
    const p = this.writer.writingTo;
    if (p === null || this.protocol !== 'C') return;
    const s = await this.status(p);
    if (!s || s.role !== 'Primary' || s.connection !== 'Connected' || s.replication !== 'Established' || s.peerDisk !== 'UpToDate' || s.protocol !== 'C') {
      this.log(`no replication epoch: ${p} is ${describe(s)} protocol ${s?.protocol}`);
      return;
    }
    this.epoch++;
    this.replicating = { epoch: this.epoch, primary: p, linkFailures: Number(s.linkFailures) };
  }

  // ------------------------------------------------------------------ checks

  /** Two Primaries while connected, in the samples since the last call; daemons that kept a caller waiting. */
  private checkWatch(): void {
    const samples = this.watch.samples.slice(this.watchFrom);
    this.watchFrom = this.watch.samples.length;
    const connectedBoth = (s: (typeof samples)[number]): boolean => {
      const a = s.nodes.alpha.snapshot;
      const b = s.nodes.beta.snapshot;
      return a !== null && b !== null && a.role === 'Primary' && b.role === 'Primary' && (a.connection === 'Connected' || b.connection === 'Connected');
    };
    for (let i = 0; i < samples.length; i++) {
      const s = samples[i];
      for (const n of NODES) {
        const x = s.nodes[n].snapshot;
        if (x && x.role === 'Primary' && x.connection === 'Connected' && x.peerRole === 'Primary') {
          throw new TortureFailure('one-primary', `${n} is Primary and Connected to a Primary peer at ${s.atMs} ms: ${JSON.stringify(s.nodes)}`);
        }
        const err = s.nodes[n].error;
        if (err !== null && /did not answer/.test(err)) throw new TortureFailure('no-hang', `${n}'s daemon kept a status caller waiting ${s.nodes[n].answerMs} ms at ${s.atMs} ms: ${err}`);
      }
      if (i + 1 < samples.length && connectedBoth(s) && connectedBoth(samples[i + 1])) {
        throw new TortureFailure('one-primary', `both Primary while connected in two consecutive samples at ${s.atMs} ms: ${JSON.stringify(s.nodes)}`);
      }
    }
    this.passed('one-primary-while-connected');
    this.passed('daemons-answer');
  }

  /** Reads `node`'s exposed device (or its backing disk) and returns one hash per 4 KiB block. */
  private async blockHashes(file: string): Promise<string[]> {
    const hashes: string[] = [];
    let rest = Buffer.alloc(0);
    for await (const chunk of readRange(file, 0, this.dataBytes, { direct: true })) {
      const buf = rest.length ? Buffer.concat([rest, chunk]) : chunk;
      let i = 0;
      for (; i + MODEL_BLOCK_BYTES <= buf.length; i += MODEL_BLOCK_BYTES) hashes.push(blockHash(buf.subarray(i, i + MODEL_BLOCK_BYTES)));
      rest = Buffer.from(buf.subarray(i));
    }
    return hashes;
  }

  /** Checks hashes of `node`'s data against the model; throws with the lost writes. */
  private checkAgainstModel(node: NodeName, hashes: string[], what: string): void {
    const violations = [];
    const lostWrites = new Set<number>();
    for (let b = 0; b < hashes.length; b++) {
      const v = this.model.checkHash(node, b, hashes[b]);
      if (v) {
        violations.push(v);
        lostWrites.add(v.allowedWrites[0]);
      }
    }
    if (violations.length === 0) {
      this.passed(`no-write-lost`);
      return;
    }
    this.summary.writesLost += lostWrites.size;
    const first = violations.slice(0, 5).map((v) => `block ${v.block} (byte ${v.offsetBytes}): found ${v.found}, allowed ${v.allowed.join('|')} (writes ${v.allowedWrites.join(',')})`);
    throw new TortureFailure('no-write-lost', `${what}: ${violations.length} blocks of ${node} hold none of the contents they may hold (${lostWrites.size} acknowledged writes lost):\n  ${first.join('\n  ')}`);
  }

  /** The writer moves to `node`, which just became Primary: read back its device first. */
  private async failoverTo(node: NodeName, checked: boolean): Promise<void> {
    await this.writer.pause();
    if (checked && !this.model.isUnknown(node)) {
      const hashes = await this.blockHashes(this.device(node));
      this.checkAgainstModel(node, hashes, `failover to ${node}`);
      this.summary.failoversChecked++;
      this.log(`failover to ${node}: every acknowledged write is there`);
    } else {
      const hashes = await this.blockHashes(this.device(node));
      this.model.rebaseOn(node, hashes);
      this.summary.failoversUnchecked++;
      this.log(`failover to ${node} (forced onto data that was not UpToDate): not checked, its contents are the new truth`);
    }
    this.writer.resume(node, this.device(node));
  }

  // ------------------------------------------------------------------ state helpers

  private async statuses(): Promise<Record<NodeName, Status | null>> {
    const [a, b] = await Promise.all([this.status('alpha'), this.status('beta')]);
    return { alpha: a, beta: b };
  }

  private async primaries(): Promise<NodeName[]> {
    const s = await this.statuses();
    return NODES.filter((n) => s[n]?.role === 'Primary');
  }

  private linkWhole(): boolean {
    return this.pair.partitioned === null && !this.relayDegraded && this.disconnected.size === 0;
  }

  // ------------------------------------------------------------------ steps

  private drawStep(): StepKind {
    if (this.step % CONVERGE_EVERY_STEPS === 0) return 'converge';
    // A failed disk stays failed until converge heals and attaches it: only writes meanwhile. A Diskless
    // Primary that loses its peer cannot serve and refuses the session when the link comes back
    // (docs/operations.md): the way back from there is not modelled yet.
    if (this.diskFault !== null) {
      const k = this.random() < 0.5 ? 'writes' : 'converge';
      this.drawn.add(k);
      return k;
    }
    const bothUp = this.up.alpha && this.up.beta;
    const w: Array<[StepKind, number]> = [
      ['writes', 3],
      ['partition-both', this.pair.partitioned === null ? 1.5 : 0],
      ['partition-one-way', this.pair.partitioned === null ? 1 : 0],
      ['heal', this.pair.partitioned !== null || this.relayDegraded ? 2 : 0],
      ['slow-link', 1],
      ['stall-link', 0.7],
      // Only where bytes flow: a flip armed on a dead link would wait for the next step's traffic.
      ['bit-flip', bothUp && this.pair.partitioned === null && this.disconnected.size === 0 && this.writer.writingTo !== null ? 1.2 : 0],
      ['kill', this.up.alpha || this.up.beta ? 1.2 : 0],
      ['kill-mid-resync', bothUp && this.linkWhole() && this.writer.writingTo !== null ? 1 : 0],
      ['up', !this.up.alpha || !this.up.beta ? 3 : 0],
      ['switchover', bothUp && this.linkWhole() && this.writer.writingTo !== null ? 1.5 : 0],
      ['switchover-kill', bothUp && this.linkWhole() && this.writer.writingTo !== null ? 1 : 0],
      ['promote', this.writer.writingTo === null ? 4 : 1.5],
      ['disconnect', bothUp && this.disconnected.size === 0 ? 0.7 : 0],
      ['connect', this.disconnected.size > 0 ? 2 : 0],
      ['adjust', 0.7],
      // Only where a Primary has an UpToDate peer to serve it: a lone Primary's failing disk sends errors to the writer by design.
      ['disk-fails', this.opts.diskFaults && bothUp && this.linkWhole() && this.writer.writingTo !== null ? 1.5 : 0],
      ['converge', 0.8],
    ];
    const uncovered = (this.opts.mustCover ?? []).filter((k) => !this.drawn.has(k));
    const boosted = w.filter(([k, x]) => x > 0 && uncovered.includes(k));
    if (boosted.length > 0) {
      const k = boosted[Math.floor(this.random() * boosted.length) % boosted.length][0];
      this.drawn.add(k);
      return k;
    }
    const total = w.reduce((n, [, x]) => n + x, 0);
    let x = this.random() * total;
    for (const [k, weight] of w) {
      if (x < weight) {
        this.drawn.add(k);
        return k;
      }
      x -= weight;
    }
    return 'writes';
  }

  private async runStep(kind: StepKind): Promise<void> {
    switch (kind) {
      case 'writes': {
        const ms = this.between(300, 2500);
        this.log(`writes for ${ms} ms (to ${this.writer.writingTo ?? 'nobody: no Primary'})`);
        await sleep(ms);
        return;
      }
      case 'partition-both':
        this.fault('partition-both');
        await this.pair.partition('both');
        this.log('partition: both veth ends down');
        await sleep(this.between(0, 3000));
        return;
      case 'partition-one-way': {
        const mode = this.pick(['aToB', 'bToA'] as const);
        this.fault('partition-one-way');
        await this.pair.partition(mode);
        this.log(`partition: one way ${mode}`);
        await sleep(this.between(0, 3000));
        return;
      }
      case 'heal':
        this.fault('heal');
        await this.pair.heal();
        await this.relay.clear();
        this.relayDegraded = false;
        this.log('link healed, relay cleared');
        await sleep(this.between(0, 2000));
        return;
      case 'slow-link': {
        const delayMs = this.pick([0, 5, 20, 50, 150, 400]);
        const bytesPerSec = this.pick([0, 256 * 1024, 1 * MiB, 4 * MiB, 16 * MiB]);
        this.fault('slow-link');
        await this.relay.delay(delayMs);
        await this.relay.throttle(bytesPerSec);
        this.relayDegraded = delayMs > 0 || bytesPerSec > 0;
        this.log(`slow link: delay ${delayMs} ms, throttle ${bytesPerSec === 0 ? 'off' : `${bytesPerSec} B/s`}`);
        await sleep(this.between(500, 3000));
        return;
      }
      case 'stall-link': {
        const ms = this.between(300, 4000);
        this.fault('stall-link');
        await this.relay.stall(true);
        this.log(`link stalled for ${ms} ms`);
        await sleep(ms);
        await this.relay.stall(false);
        return;
      }
      case 'bit-flip': {
        // Mostly in the direction the Primary's writes go (alpha's data link runs alpha -> beta through the relay), some in the acks' direction.
        const fromPrimary = this.writer.writingTo === 'beta' ? 'toClient' : 'toTarget';
        const direction = this.random() < 0.75 ? fromPrimary : fromPrimary === 'toTarget' ? 'toClient' : 'toTarget';
        // The acks' direction carries 48-byte frames: a few KiB there is many frames.
        const afterBytes = direction === fromPrimary ? this.between(0, 64 * 1024) : this.between(0, 2048);
        const count = this.between(1, 3);
        this.fault('bit-flip');
        const receiver: NodeName = direction === 'toTarget' ? 'beta' : 'alpha';
        const seenBefore = flipEvidence(await this.status(receiver));
        const before = (await this.relay.stats()).flips;
        await this.relay.flip({ kind: 'data', direction, afterBytes, count, bit: this.between(0, 7) });
        this.log(`bit flips armed: ${count} on the data link ${direction === 'toTarget' ? 'alpha -> beta' : 'beta -> alpha'} after ${afterBytes} bytes`);
        const deadline = Date.now() + 6000;
        let delivered = 0;
        while (Date.now() < deadline) {
          delivered = (await this.relay.stats()).flips - before;
          if (delivered >= count) break;
          await sleep(100);
        }
        const st = await this.relay.stats();
        this.log(`${delivered} bit flips delivered (relay: data ${st.counters.fromClient.data} B alpha -> beta, ${st.counters.fromTarget.data} B back; ${st.counters.active} connections)`);
        if (delivered > 0) await this.expectFlipNoticed(receiver, seenBefore);
        return;
      }
      case 'kill': {
        const node = this.pick(NODES.filter((n) => this.up[n]));
        await this.kill(node, 'kill');
        return;
      }
      case 'kill-mid-resync':
        await this.killMidResync();
        return;
      case 'up': {
        const node = this.pick(NODES.filter((n) => !this.up[n]));
        await this.bringUp(node);
        return;
      }
      case 'switchover':
        await this.switchover(false);
        return;
      case 'switchover-kill':
        await this.switchover(true);
        return;
      case 'promote':
        await this.promote(false);
        return;
      case 'disconnect': {
        const node = this.pick(NODES);
        this.fault('disconnect');
        const res = await this.cli(node, 'disconnect');
        if (res.code === 0) this.disconnected.add(node);
        await sleep(this.between(0, 2000));
        return;
      }
      case 'connect': {
        const node = this.pick([...this.disconnected]);
        this.fault('connect');
        const res = await this.cli(node, 'connect');
        if (res.code === 0) this.disconnected.delete(node);
        return;
      }
      case 'adjust':
        await this.adjust(this.pick(['A', 'B', 'C', 'C', 'C'] as const));
        return;
      case 'disk-fails':
        await this.diskFails();
        return;
      case 'converge':
        await this.converge();
        return;
    }
  }

  /**
   * One node's disk fails writes (sometimes reads too) while the writer runs.
   * A Primary with an UpToDate connected peer goes Diskless and is served by
   * the peer: no write fails. A Secondary goes Diskless and leaves; the
   * Primary goes on: no write fails. Converge heals and attaches.
   */
  private async diskFails(): Promise<void> {
    const p = this.writer.writingTo!;
    const pre = await this.status(p);
    if (!pre || pre.role !== 'Primary' || pre.connection !== 'Connected' || pre.replication !== 'Established' || pre.peerDisk !== 'UpToDate') {
      this.log(`disk-fails skipped: no Primary served by an UpToDate peer (${p} is ${describe(pre)})`);
      return;
    }
    const node = this.pick(NODES);
    const role = node === p ? 'primary' : 'secondary';
    const reads = this.random() < 0.3;
    const disk = this.disks[node]!;
    const failedBefore = this.writer.counters.failed;
    this.fault(`disk-fails-${role}${reads ? '-reads-too' : ''}`);
    this.diskFault = node;
    disk.failWrites(true);
    if (reads) disk.failReads(true);
    const ms = this.between(...DISK_FAULT_WRITES_MS);
    this.log(`disk of ${node} (${role}) fails writes${reads ? ' and reads' : ''}; writes for ${ms} ms`);
    const s = await this.waitStatus(node, 'Diskless', (x) => x.disk === 'Diskless', DISKLESS_TIMEOUT_MS);
    if (!s) throw new TortureFailure('disk-fails', `${node}'s disk fails ${reads ? 'writes and reads' : 'writes'} while the writer runs on ${p}, but ${node} did not go Diskless within ${DISKLESS_TIMEOUT_MS} ms`);
    await sleep(ms);
    const now = await this.statuses();
    const failed = this.writer.counters.failed - failedBefore;
    if (failed > 0) {
      throw new TortureFailure('disk-fails', `${failed} writes failed after the ${role} ${node}'s disk failed; the Primary had an UpToDate connected peer, so none may fail (alpha ${describe(now.alpha)}; beta ${describe(now.beta)}; last error ${this.writer.recentErrors.slice(-1)[0] ?? '-'})`);
    }
    if (role === 'primary') {
      const x = now[node];
      if (!x || x.role !== 'Primary' || x.disk !== 'Diskless' || x.servedByPeer !== true) {
        throw new TortureFailure('disk-fails', `the Primary ${node} with a failed disk is not a Diskless Primary served by its peer: ${describe(x)} servedByPeer ${String(x?.servedByPeer)}`);
      }
    } else {
      const x = now[p];
      if (!x || x.role !== 'Primary' || x.disk !== 'UpToDate' || now[node]?.disk !== 'Diskless') {
        throw new TortureFailure('disk-fails', `after the Secondary ${node}'s disk failed, expected ${node} Diskless and ${p} an UpToDate Primary: ${node} ${describe(now[node])}; ${p} ${describe(x)}`);
      }
    }
    this.passed(`disk-fails-${role}-no-write-failed`);
  }

  /** Converge's part for a failed disk: heal it; a Diskless Primary switches over first; then attach. */
  private async repairDisk(): Promise<void> {
    const node = this.diskFault;
    if (node === null) return;
    this.disks[node]!.heal();
    let s = await this.status(node);
    if (s?.disk === 'Diskless' && s.role === 'Primary') {
      if (this.writer.writingTo === node) await this.writer.pause();
      const res = await this.cli(node, 'switchover');
      if (res.code !== 0) throw new TortureFailure('disk-repair', `switchover from the Diskless Primary ${node} refused: ${res.stderr.trim()}`);
      const q = otherNode(node);
      const ps = await this.waitStatus(q, 'Primary', (x) => x.role === 'Primary', 15_000);
      if (!ps) throw new TortureFailure('disk-repair', `after the switchover from the Diskless Primary ${node}, ${q} is not Primary`);
      await this.failoverTo(q, true);
      s = await this.waitStatus(node, 'Secondary', (x) => x.role === 'Secondary', 15_000);
    }
    if (s?.disk === 'Diskless') {
      const res = await this.cli(node, 'attach');
      if (res.code !== 0) throw new TortureFailure('disk-repair', `attach on the Diskless Secondary ${node} with its disk healed refused: ${res.stderr.trim()}`);
      this.fault('disk-attached');
    }
    this.diskFault = null;
  }

  /** A flipped bit on the data link must be noticed by the receiver: a checksum or protocol error, or at least the link dropped. */
  private async expectFlipNoticed(receiver: NodeName, before: number | null): Promise<void> {
    if (before === null) return;
    const s = await this.waitStatus(receiver, 'a checksum error or a link failure', (x) => (flipEvidence(x) ?? 0) > before, 5_000);
    if (!s) throw new TortureFailure('bit-flip-detected', `a bit flipped on the data link to ${receiver} left no trace there (checksumErrors, protocolErrors and linkFailures unchanged after 5 s)`);
    this.passed('bit-flip-detected');
  }

  private async kill(node: NodeName, kind: string): Promise<void> {
    this.fault(kind);
    await this.r.kill(node);
    this.up[node] = false;
    this.disconnected.delete(node);
    this.log(`kill -9 ${node}`);
    if (this.writer.writingTo === node) await this.writer.pause();
  }

  private async bringUp(node: NodeName): Promise<void> {
    this.fault('up');
    const res = await this.cli(node, 'up');
    if (res.code === 0) {
      this.up[node] = true;
      return;
    }
    this.note(`up on ${node} refused: ${res.stderr.trim().slice(0, 300)}`);
  }

  private async adjust(protocol: 'A' | 'B' | 'C'): Promise<void> {
    this.fault(`adjust-${protocol}`);
    for (const file of this.configPaths()) {
      const text = fs.readFileSync(file, 'utf8');
      fs.writeFileSync(file, text.replace(/^protocol = .*$/m, `protocol = "${protocol}"`), { mode: 0o600 });
    }
    this.protocol = protocol;
    for (const n of NODES.filter((x) => this.up[x])) await this.cli(n, 'adjust');
  }

  /** A resync runs (the Secondary disconnected while writes went on, the link throttled), then one node dies. */
  private async killMidResync(): Promise<void> {
    const p = this.writer.writingTo!;
    const s = otherNode(p);
    this.fault('kill-mid-resync');
    await this.cli(s, 'disconnect');
    await sleep(this.between(800, 2500));
    await this.relay.throttle(this.pick([512 * 1024, 2 * MiB]));
    this.relayDegraded = true;
    await this.cli(s, 'connect');
    const seen = await this.waitStatus(p, 'a resync', (x) => x.replication === 'SyncSource' || x.replication === 'SyncTarget', 10_000);
    if (!seen) this.note('kill-mid-resync: no resync seen within 10 s; killing anyway');
    else this.fault('kill-mid-resync-inside');
    await sleep(this.between(0, 600));
    await this.kill(this.pick(NODES), 'kill');
  }

  /** A planned switchover; with `kill`, kill -9 of either daemon at a random moment while it runs. */
  private async switchover(kill: boolean): Promise<void> {
    const p = this.writer.writingTo!;
    const q = otherNode(p);
    const pre = await this.statuses();
    if (!pre[p] || pre[p]!.role !== 'Primary' || pre[p]!.connection !== 'Connected') {
      this.log(`switchover skipped: ${p} is ${describe(pre[p])}`);
      return;
    }
    await this.writer.pause();
    this.fault(kill ? 'switchover-with-kill' : 'switchover');
    const victim = this.pick(NODES);
    const delayMs = this.between(0, 400);
    const logFrom = this.logSize(p);
    // From the moment the old Primary starts demoting (its log says so), 0..400 ms: inside the switchover, not before it.
    const killer = kill
      ? (async () => {
          const seen = await this.waitLog(p, logFrom, 'switchover: demoting', 10_000);
          await sleep(delayMs);
          await this.kill(victim, 'kill-mid-switchover');
          if (seen) this.fault('kill-mid-switchover-inside');
          this.log(`kill -9 ${victim} ${delayMs} ms after ${p} began demoting${seen ? '' : ' (its log never said so)'}`);
        })()
      : Promise.resolve();
    const res = await this.cli(p, 'switchover');
    await killer;
    const after = await this.statuses();
    if (this.up.alpha && this.up.beta && after.alpha?.role === 'Primary' && after.beta?.role === 'Primary') {
      throw new TortureFailure('one-primary', `switchover ended with two Primaries: ${describe(after.alpha)} / ${describe(after.beta)}`);
    }
    this.passed('switchover-not-two-primaries');
    if (after[q]?.role === 'Primary') await this.failoverTo(q, true);
    else if (after[p]?.role === 'Primary') this.writer.resume(p, this.device(p));
    else this.log(`after the switchover (exit ${res.code}) no node is Primary; the next promote or converge picks one`);
  }

  /**
   * Makes a Primary where the writer has none reachable: the old Primary dead,
   * partitioned or disconnected (a forced promotion with the old one away), or
   * no Primary at all. `primary` on an UpToDate disk, `primary --force` else.
   */
  private async promote(must: boolean): Promise<void> {
    const s = await this.statuses();
    const current = this.writer.writingTo;
    const currentLive = current !== null && this.up[current] && s[current]?.role === 'Primary';
    const candidates = NODES.filter((n) => this.up[n] && s[n] !== null && s[n]!.role !== 'Primary' && n !== current);
    const oldAway = current === null || !this.up[current] || s[current]?.connection !== 'Connected';
    if (candidates.length === 0 || (currentLive && !oldAway)) {
      if (must && !currentLive && current !== null && this.up[current] && s[current]?.role === 'Primary') this.writer.resume(current, this.device(current));
      this.log(`promote: nothing to do (writer on ${current ?? 'nobody'}, ${NODES.map((n) => `${n} ${describe(s[n])}`).join(', ')})`);
      return;
    }
    if (current !== null && currentLive && !must && this.random() < 0.5) {
      this.log('promote: the Primary is alive but away; not promoting this time');
      return;
    }
    // Converging: the UpToDate node if there is one (a forced promotion there is the promote step's business).
    const preferred = must ? candidates.filter((n) => s[n]!.disk === 'UpToDate') : [];
    const node = this.pick(preferred.length > 0 ? preferred : candidates);
    const upToDate = s[node]!.disk === 'UpToDate';
    this.fault(current !== null && this.up[current] ? 'forced-promotion-old-primary-alive' : 'promotion-old-primary-dead');
    const res = await this.cli(node, 'primary', upToDate ? [] : ['--force']);
    if (res.code !== 0) {
      const again = await this.cli(node, 'primary', ['--force']);
      if (again.code !== 0) {
        this.note(`primary --force on ${node} refused: ${again.stderr.trim().slice(0, 300)}`);
        return;
      }
      await this.failoverTo(node, false);
      return;
    }
    await this.failoverTo(node, upToDate);
  }

  /** Resolves a split brain the documented way: the victim demotes, connects with --discard-my-data; the survivor connects. */
  private async resolveSplitBrain(s: Record<NodeName, Status | null>): Promise<void> {
    const victim = this.pick(NODES);
    const survivor = otherNode(victim);
    this.fault('split-brain-resolved');
    this.log(`split brain: ${victim} is the victim, ${survivor} survives`);
    if (this.writer.writingTo === victim) await this.writer.pause();
    if (s[victim]?.ioSuspended) await this.cli(victim, 'resume-io');
    if (s[victim]?.role === 'Primary') {
      const res = await this.cli(victim, 'secondary');
      if (res.code !== 0) throw new TortureFailure('split-brain-resolution', `secondary on the victim ${victim} refused: ${res.stderr.trim()}`);
    }
    this.model.discard(victim);
    const c = await this.cli(victim, 'connect', ['--discard-my-data']);
    if (c.code !== 0) throw new TortureFailure('split-brain-resolution', `connect --discard-my-data on ${victim} refused: ${c.stderr.trim()}`);
    const sv = await this.status(survivor);
    if (sv?.connection === 'StandAlone') await this.cli(survivor, 'connect');
    this.disconnected.clear();
    const gone = await this.waitStatus(victim, 'split brain resolved', (x) => x.splitBrain !== true && x.connection === 'Connected', 30_000);
    if (!gone) this.note(`split brain on ${victim} not resolved 30 s after the documented commands`);
    if (sv?.role === 'Primary' && this.writer.writingTo !== survivor) await this.failoverTo(survivor, true);
  }

  /**
   * Undo every fault and wait until the pair is settled; then check both data
   * areas: identical, and each block one the model allows. A settle point.
   */
  private async converge(): Promise<void> {
    this.fault('converge');
    if (this.pair.partitioned !== null) await this.pair.heal();
    await this.relay.clear();
    this.relayDegraded = false;
    for (const n of NODES) if (!this.up[n]) await this.bringUp(n);
    await this.repairDisk();
    for (const n of [...this.disconnected]) {
      await this.cli(n, 'connect');
      this.disconnected.delete(n);
    }
    if (this.protocol !== 'C' && this.random() < 0.5) await this.adjust('C');
    const deadline = Date.now() + SETTLE_TIMEOUT_MS;
    let last: Record<NodeName, Status | null> = { alpha: null, beta: null };
    for (;;) {
      last = await this.statuses();
      const a = last.alpha;
      const b = last.beta;
      if (a?.splitBrain || b?.splitBrain) {
        await this.resolveSplitBrain(last);
        continue;
      }
      for (const n of NODES) {
        if (last[n]?.connection === 'StandAlone') {
          this.note(`${n} StandAlone without split brain (${last[n]?.lastLinkError ?? ''}); connect`);
          await this.cli(n, 'connect');
        }
      }
      const prim = NODES.filter((n) => last[n]?.role === 'Primary');
      if (prim.length === 2 && a?.connection !== 'Connected' && b?.connection !== 'Connected') {
        // Two Primaries apart (a promotion while the old Primary was away): they refuse to
        // connect until one steps down, as DRBD's after-sb-2pri = disconnect. The writer's
        // node keeps the role; the other one's writes become the split brain's victim.
        const victim = this.writer.writingTo === 'alpha' ? 'beta' : 'alpha';
        this.note(`both Primary and apart: ${victim} steps down (nraid secondary), then the split brain is resolved`);
        await this.cli(victim, 'secondary');
        continue;
      }
      const resyncing = NODES.some((n) => last[n]?.replication === 'SyncSource' || last[n]?.replication === 'SyncTarget');
      if (prim.length === 0 && a?.connection === 'Connected' && !resyncing) await this.promote(true);
      else if (prim.length === 1 && this.writer.writingTo !== prim[0]) await this.failoverTo(prim[0], true);
      else if (prim.length === 1 && settledStatus(last[prim[0]]!) && last[otherNode(prim[0])]?.disk === 'UpToDate') break;
      if (Date.now() > deadline) {
        throw new TortureFailure('converges', `the pair did not settle within ${SETTLE_TIMEOUT_MS} ms with every fault undone: alpha ${describe(a)}; beta ${describe(b)}`);
      }
      await sleep(250);
    }
    this.passed('converges');
    await this.settlePoint();
  }

  /** Writer paused, nothing in flight: both backing data areas identical and allowed by the model. */
  private async settlePoint(): Promise<void> {
    const p = this.writer.writingTo;
    await this.writer.pause();
    if (p !== null) {
      const q = await this.waitStatus(p, 'quiet', (s) => settledStatus(s), 60_000);
      if (!q) throw new TortureFailure('converges', `${p} did not become quiet after the writer stopped`);
    }
    const [ha, hb] = [await this.blockHashes(this.diskFile('alpha')), await this.blockHashes(this.diskFile('beta'))];
    const differ: number[] = [];
    for (let b = 0; b < ha.length; b++) if (ha[b] !== hb[b]) differ.push(b);
    if (differ.length > 0) {
      const detail = differ.slice(0, 10).map((b) => {
        const write = (h: string): string => String(this.model.whichWrite(b, h) ?? 'unknown contents');
        const w = this.rw.lastWriteAt(b * MODEL_BLOCK_BYTES);
        return `block ${b} (byte ${b * MODEL_BLOCK_BYTES}): alpha holds ${write(ha[b])}, beta holds ${write(hb[b])}; history since the last settle point ${this.model.describeBlock(b)}; last acknowledged write there #${w?.index ?? '-'} at ${w ? new Date(w.atMs).toISOString() : '-'}`;
      });
      throw new TortureFailure(
        'identical-after-resync',
        `the backing data areas differ in ${differ.length} of ${ha.length} blocks after the pair settled:\n  ${detail.join('\n  ')}`,
      );
    }
    this.passed('identical-after-resync');
    for (const n of NODES) this.checkAgainstModel(n, ha, `settle point (${n}'s backing disk)`);
    this.model.settle(ha);
    this.summary.settlePoints++;
    this.log(`settle point: both data areas identical (${ha.length} blocks), no acknowledged write lost`);
    if (p !== null) this.writer.resume(p, this.device(p));
  }

  // ------------------------------------------------------------------ the run

  async run(): Promise<TortureSummary> {
    const endAt = this.opts.minutes !== undefined ? this.t0 + this.opts.minutes * 60_000 : Infinity;
    try {
      await this.setup();
      for (this.step = 1; ; this.step++) {
        if (this.opts.maxSteps !== undefined && this.step > this.opts.maxSteps) break;
        if (this.opts.maxSteps === undefined && Date.now() >= endAt) break;
        const kind = this.drawStep();
        this.log(`--- ${kind}`);
        await this.closeEpoch();
        // A step without a fault keeps an epoch open while it runs: its writes are the ones that must reach the peer.
        if (kind === 'writes') await this.openEpoch();
        await this.runStep(kind);
        this.checkWatch();
        await this.openEpoch();
        this.summary.steps = this.step;
      }
      this.step = this.summary.steps + 1;
      this.log('--- final converge');
      await this.closeEpoch();
      await this.converge();
      this.checkWatch();
      if (this.opts.canary) this.summary.canary = await this.runCanary();

    } catch (e) {
      const kind = e instanceof TortureFailure ? e.check : 'runner-error';
      const message = e instanceof TortureFailure ? e.message : (e as Error).stack ?? String(e);
      this.summary.failure = { step: this.step, kind, message, replay: `npm run torture -- --replay ${this.opts.seed}:${this.step}` };
      this.summary.failure.logs = this.saveLogs();
    } finally {
      const relayStats = await this.relay?.stats().catch(() => undefined);
      if (relayStats) this.summary.faults['bit-flips-delivered'] = relayStats.flips;
      await this.watch?.stop();
      await this.writer?.close();
      this.fillCounters();
      this.summary.elapsedMs = Date.now() - this.t0;
    }
    return this.summary;
  }

  private async runCanary(): Promise<'caught' | 'missed' | 'not run'> {
    this.log('--- canary: a confirmed write destroyed on the Secondary, then a switchover');
    if (this.protocol !== 'C') await this.adjust('C');
    const p = this.writer.writingTo;
    if (p === null) return 'not run';
    const q = otherNode(p);
    await this.closeEpoch();
    await this.openEpoch();
    await sleep(2000);
    await this.closeEpoch();
    await this.writer.pause();
    const block = this.model.blockDurableOnBoth();
    if (block === undefined) return 'not run';
    const lostBefore = this.summary.writesLost;
    await writeDirect(this.diskFile(q), block * MODEL_BLOCK_BYTES, Buffer.alloc(MODEL_BLOCK_BYTES, 0xa5));
    const res = await this.cli(p, 'switchover');
    if (res.code !== 0) return 'not run';
    try {
      await this.failoverTo(q, true);
      return 'missed';
    } catch (e) {
      this.log(`canary caught: ${(e as Error).message.split('\n')[0]}`);
      return e instanceof TortureFailure && e.check === 'no-write-lost' ? 'caught' : 'missed';
    } finally {
      this.summary.writesLost = lostBefore;
    }
  }

  private fillCounters(): void {
    if (!this.writer) return;
    const c = this.writer.counters;
    this.summary.writesIssued = c.issued;
    this.summary.writesAcknowledged = c.acknowledged;
    this.summary.writesFailed = c.failed;
    this.summary.bytesAcknowledged = c.bytesAcknowledged;
  }

  private saveLogs(): string | undefined {
    if (!this.r) return undefined;
    const dir = this.opts.logDir ?? path.join('/tmp', `nraid-torture-${this.opts.seed}-step${this.step}-${process.pid}`);
    try {
      fs.mkdirSync(dir, { recursive: true });
      for (const n of NODES) {
        const log = path.join(this.r.base.nodes[n].runDir, 'daemon.log');
        if (fs.existsSync(log)) fs.copyFileSync(log, path.join(dir, `${n}-daemon.log`));
      }
      if (this.watch) fs.writeFileSync(path.join(dir, 'role-timeline.txt'), this.watch.timeline());
      return dir;
    } catch {
      return undefined;
    }
  }
}

export function settledStatus(s: Status): boolean {
  return (
    s.role === 'Primary' &&
    s.connection === 'Connected' &&
    s.replication === 'Established' &&
    s.disk === 'UpToDate' &&
    s.peerDisk === 'UpToDate' &&
    s.outOfSyncBytes === 0 &&
    (s.lagBytes ?? 0) === 0 &&
    (s.writesInFlight ?? 0) === 0
  );
}

/** What a receiver counts when it notices a corrupted frame (null when it is not up). */
function flipEvidence(s: Status | null): number | null {
  if (!s) return null;
  return Number(s.checksumErrors ?? 0) + Number(s.protocolErrors ?? 0) + Number(s.linkFailures ?? 0);
}

function describe(s: Status | null | undefined): string {
  if (!s) return 'not up';
  return `${s.role}/${s.disk}/${s.connection}/${s.replication} peer ${s.peerRole}/${s.peerDisk} oos ${s.outOfSyncBytes}${s.splitBrain ? ' split-brain' : ''}`;
}

export function formatSummary(s: TortureSummary): string {
  const lines = [
    `torture seed ${s.seed}: ${s.steps} steps in ${(s.elapsedMs / 60_000).toFixed(1)} min — ${s.failure ? 'FAILED' : 'all invariants held'}`,
    `  faults: ${Object.entries(s.faults).sort().map(([k, v]) => `${k} ${v}`).join(', ') || 'none'}`,
    `  checks passed: ${Object.entries(s.checks).sort().map(([k, v]) => `${k} ${v}`).join(', ') || 'none'}`,
    `  writes: ${s.writesIssued} issued, ${s.writesAcknowledged} acknowledged (${(s.bytesAcknowledged / MiB).toFixed(1)} MiB), ${s.writesFailed} failed (unacknowledged), ${s.writesLost} acknowledged writes lost`,
    `  ${s.writesConfirmedOnBoth} writes confirmed on both nodes (protocol C, replicating)`,
    `  failovers: ${s.failoversChecked} checked, ${s.failoversUnchecked} forced onto non-UpToDate data (not checked); settle points ${s.settlePoints}`,
  ];
  if (s.canary !== undefined) lines.push(`  canary (a confirmed write destroyed on purpose before a failover): ${s.canary}`);
  if (s.notes.length) lines.push(`  notes (${s.notes.length}):`, ...s.notes.slice(0, 40).map((n) => `    ${n}`));
  if (s.failure) {
    lines.push(`  FAILURE at step ${s.failure.step} (${s.failure.kind}): ${s.failure.message}`);
    lines.push(`  replay: ${s.failure.replay}`);
    if (s.failure.logs) lines.push(`  daemon logs: ${s.failure.logs}`);
  }
  return lines.join('\n');
}
