/**
 * Watches both nodes' status while a role change runs: every `intervalMs`
 * it asks both daemons for `status` (the same admin-socket call `nraid status
 * --json` makes, without starting a CLI process per sample, so a sample takes
 * milliseconds and ~50 ms sampling is real) and keeps every answer with the
 * time it took. Then `twoPrimaries()` says whether the nodes were ever both
 * Primary, and `slowest()` how long a daemon kept a caller waiting.
 *
 *   const watch = RoleWatch.start({ alpha: sockA, beta: sockB }, { intervalMs: 50 });
 *   ... the switchover ...
 *   await watch.stop();
 *   expect(watch.twoPrimaries()).toEqual([]);
 *
 * What counts as two Primaries: one sample pair is two separate questions,
 * so a pair that says "both Primary" may straddle a correct hand-over (alpha
 * asked just before it demoted, beta just after it promoted). It counts when
 * it holds in two consecutive ticks (the defect this looks for, a second
 * Primary that stays, cannot hide from that), or when one node answers
 * Primary while it is Connected to a peer it sees as Primary (one snapshot,
 * no straddling possible).
 */
import * as path from 'path';
import { adminCall } from '../../src/admin';
import { NodeName, NraidStatus, TestResource } from './cluster';

/** A node's admin socket (`admin.sock` in its run dir, as the daemon makes it); `r` may be a netns resource (its `base`). */
export function adminSocketOf(r: TestResource | { base: TestResource }, node: NodeName): string {
  const t = 'base' in r ? r.base : r;
  return path.join(t.nodes[node].runDir, 'admin.sock');
}

export interface RoleSnapshot {
  role: string;
  connection: string;
  peerRole: string;
  exposed: boolean;
  disk: string;
  replication: string;
  switchoverUnknown?: unknown;
}

export interface RoleSample {
  /** ms since the watch started, when the questions went out. */
  atMs: number;
  /** What each node answered, or the error (a timeout, not up). */
  nodes: Record<NodeName, { snapshot: RoleSnapshot | null; error: string | null; answerMs: number }>;
}

export interface RoleWatchOptions {
  intervalMs?: number;
  /** A sample that takes longer is recorded as an error (default 2000 ms). */
  answerTimeoutMs?: number;
}

function snapshotOf(s: NraidStatus): RoleSnapshot {
  return {
    role: s.role,
    connection: s.connection,
    peerRole: String(s.peerRole),
    exposed: s.exposed === true,
    disk: s.disk,
    replication: s.replication,
    switchoverUnknown: s.switchoverUnknown,
  };
}

const both = (s: RoleSample): boolean => s.nodes.alpha.snapshot?.role === 'Primary' && s.nodes.beta.snapshot?.role === 'Primary';

export class RoleWatch {
  readonly samples: RoleSample[] = [];
  private running = true;
  private readonly done: Promise<void>;
  private readonly t0 = Date.now();

  private constructor(
    private readonly sockets: Record<NodeName, string>,
    private readonly opts: Required<RoleWatchOptions>,
  ) {
    this.done = this.loop();
  }

  static start(sockets: Record<NodeName, string>, opts: RoleWatchOptions = {}): RoleWatch {
    return new RoleWatch(sockets, { intervalMs: opts.intervalMs ?? 50, answerTimeoutMs: opts.answerTimeoutMs ?? 2000 });
  }

  private async ask(node: NodeName): Promise<RoleSample['nodes'][NodeName]> {
    const t = Date.now();
    try {
      const s = (await adminCall(this.sockets[node], 'status', {}, undefined, this.opts.answerTimeoutMs)) as NraidStatus;
      return { snapshot: snapshotOf(s), error: null, answerMs: Date.now() - t };
    } catch (e) {
      return { snapshot: null, error: (e as Error).message, answerMs: Date.now() - t };
    }
  }

  private async loop(): Promise<void> {
    while (this.running) {
      const atMs = Date.now() - this.t0;
      const [alpha, beta] = await Promise.all([this.ask('alpha'), this.ask('beta')]);
      this.samples.push({ atMs, nodes: { alpha, beta } });
      if (!this.running) break;
      await new Promise((r) => setTimeout(r, this.opts.intervalMs));
    }
  }

  /** Stops after the sample in progress. */
  async stop(): Promise<void> {
    this.running = false;
    await this.done;
  }

  /** Every moment the nodes were both Primary (see the file comment), as readable lines; [] if none. */
  twoPrimaries(): string[] {
    const found: string[] = [];
    for (let i = 0; i < this.samples.length; i++) {
      const s = this.samples[i];
      if (both(s) && i + 1 < this.samples.length && both(this.samples[i + 1])) {
        found.push(`both Primary at ${s.atMs} ms and at ${this.samples[i + 1].atMs} ms: ${this.describe(s)}`);
      }
      for (const node of ['alpha', 'beta'] as const) {
        const x = s.nodes[node].snapshot;
        if (x && x.role === 'Primary' && x.connection === 'Connected' && x.peerRole === 'Primary') {
          found.push(`${node} at ${s.atMs} ms is Primary, Connected to a Primary peer: ${this.describe(s)}`);
        }
      }
    }
    return found;
  }

  /** The longest answer time of `node` and the sample where it happened (a timed-out sample counts with its wait and error). */
  slowest(node: NodeName): { answerMs: number; atMs: number; error: string | null } {
    let worst = { answerMs: 0, atMs: 0, error: null as string | null };
    for (const s of this.samples) {
      const n = s.nodes[node];
      if (n.answerMs > worst.answerMs) worst = { answerMs: n.answerMs, atMs: s.atMs, error: n.error };
    }
    return worst;
  }

  /** Samples in which `node` did not answer, with why. */
  failures(node: NodeName): Array<{ atMs: number; error: string }> {
    return this.samples.filter((s) => s.nodes[node].error !== null).map((s) => ({ atMs: s.atMs, error: s.nodes[node].error as string }));
  }

  /** Distinct consecutive states, for failure messages and logs: "0ms alpha Primary/Connected beta Secondary/Connected; ...". */
  timeline(): string {
    const lines: string[] = [];
    let last = '';
    for (const s of this.samples) {
      const d = this.describe(s);
      if (d !== last) lines.push(`${s.atMs}ms ${d}`);
      last = d;
    }
    return lines.join('\n');
  }

  private describe(s: RoleSample): string {
    return (['alpha', 'beta'] as const)
      .map((n) => {
        const x = s.nodes[n];
        if (x.snapshot === null) return `${n} (${x.error?.slice(0, 80)})`;
        return `${n} ${x.snapshot.role}/${x.snapshot.connection}${x.snapshot.exposed ? '/exposed' : ''}`;
      })
      .join(' ');
  }
}
