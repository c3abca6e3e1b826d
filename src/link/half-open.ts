/**
 * The incoming connections of a link that have not proven the secret yet
 * (reading their preamble or token, or in the handshake), bounded
 * altogether and per source address.
 *
 * When a bound is reached the newcomer is admitted and another connection
 * is closed: first those that stalled (no progress for `staleMs`), least
 * progress and oldest first; only when none has stalled, the oldest of those
 * that got least far, counting a fresh connection that has sent nothing yet
 * like one that sent its preamble. Refusing the newcomer instead would let
 * anyone who renews a few silent connections keep the real peer out for as
 * long as they like; this way the peer, which sends its preamble, Hello and
 * Auth at once, gets through unless the pool is turned over faster than one
 * round trip.
 */
export interface HalfOpenEntry {
  /** The source address (no port). */
  source: string;
  /** How far it got: 0 nothing read yet, 1 preamble, 2 Hello. */
  progress: () => number;
  /** Closes it, for making room; `reason` says why. */
  evict: (reason: string) => void;
}

export class HalfOpenPool {
  private readonly entries = new Map<object, Tracked>();
  private nextOrder = 0;

  constructor(private readonly totalMax: number, private readonly perSourceMax: number, private readonly staleMs: number) {}

  get size(): number {
    return this.entries.size;
  }

  /** Admits `key`, evicting first what makes room; returns how many were evicted. */
  admit(key: object, entry: HalfOpenEntry): number {
    let evicted = 0;
    for (;;) {
      const sameSource: Tracked[] = [...this.entries.values()].filter((e) => e.source === entry.source);
      if (sameSource.length >= this.perSourceMax) {
        this.evictLeast(sameSource, `${this.perSourceMax} connections from ${entry.source} were already in their handshake`);
      } else if (this.entries.size >= this.totalMax) {
        this.evictLeast([...this.entries.values()], `${this.totalMax} connections were already in their handshake`);
      } else {
        break;
      }
      evicted++;
    }
    this.entries.set(key, { ...entry, order: this.nextOrder++, lastProgress: entry.progress(), lastProgressMs: Date.now() });
    return evicted;
  }

  /** `key` proved the secret, or is gone. */
  release(key: object): void {
    this.entries.delete(key);
  }

  /** Lower is closed first: stalled connections by progress, then fresh ones (nothing read yet counts as a preamble). */
  private rank(entry: Tracked, nowMs: number): number {
    const progress = entry.progress();
    if (progress !== entry.lastProgress) {
      entry.lastProgress = progress;
      entry.lastProgressMs = nowMs;
    }
    if (nowMs - entry.lastProgressMs >= this.staleMs) return progress;
    return 10 + Math.max(progress, 1);
  }

  private evictLeast(candidates: Tracked[], why: string): void {
    const nowMs = Date.now();
    let least = candidates[0]!;
    let leastRank = this.rank(least, nowMs);
    for (const candidate of candidates.slice(1)) {
      const rank = this.rank(candidate, nowMs);
      if (rank < leastRank || (rank === leastRank && candidate.order < least.order)) {
        least = candidate;
        leastRank = rank;
      }
    }
    for (const [key, entry] of this.entries) {
      if (entry === least) this.entries.delete(key);
    }
    least.evict(`closed to make room for a newer connection: ${why}`);
  }
}

type Tracked = HalfOpenEntry & { order: number; lastProgress: number; lastProgressMs: number };
