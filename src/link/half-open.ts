/**
 * The incoming connections of a link that have not proven the secret yet
 * (reading their preamble or token, or in the handshake), bounded
 * altogether and per source address.
 *
 * When a bound is reached the newcomer is admitted and the connection that
 * got least far is closed (the oldest among equals): silent connections go
 * first, then those stuck after their Hello. Refusing the newcomer instead
 * would let anyone who renews a few silent connections keep the real peer
 * out for as long as they like; this way the peer, which sends its preamble,
 * Hello and Auth at once, gets through unless the pool is turned over
 * faster than one round trip.
 */
export interface HalfOpenEntry {
  /** The source address (no port). */
  source: string;
  /** How far it got: higher is further (0: nothing read yet). */
  progress: () => number;
  /** Closes it, for making room; `reason` says why. */
  evict: (reason: string) => void;
}

export class HalfOpenPool {
  private readonly entries = new Map<object, HalfOpenEntry & { sinceMs: number; order: number }>();
  private nextOrder = 0;

  constructor(private readonly totalMax: number, private readonly perSourceMax: number) {}

  get size(): number {
    return this.entries.size;
  }

  /** Admits `key`, evicting first what makes room; returns how many were evicted. */
  admit(key: object, entry: HalfOpenEntry): number {
    let evicted = 0;
    for (;;) {
      const sameSource = [...this.entries.values()].filter((e) => e.source === entry.source);
      if (sameSource.length >= this.perSourceMax) {
        this.evictLeast(sameSource, `${this.perSourceMax} connections from ${entry.source} were already in their handshake`);
      } else if (this.entries.size >= this.totalMax) {
        this.evictLeast([...this.entries.values()], `${this.totalMax} connections were already in their handshake`);
      } else {
        break;
      }
      evicted++;
    }
    this.entries.set(key, { ...entry, sinceMs: Date.now(), order: this.nextOrder++ });
    return evicted;
  }

  /** `key` proved the secret, or is gone. */
  release(key: object): void {
    this.entries.delete(key);
  }

  private evictLeast(candidates: Array<HalfOpenEntry & { order: number }>, why: string): void {
    let least = candidates[0]!;
    let leastProgress = least.progress();
    for (const candidate of candidates.slice(1)) {
      const progress = candidate.progress();
      if (progress < leastProgress || (progress === leastProgress && candidate.order < least.order)) {
        least = candidate;
        leastProgress = progress;
      }
    }
    for (const [key, entry] of this.entries) {
      if (entry === least) this.entries.delete(key);
    }
    least.evict(`closed to make room for a newer connection: ${why}`);
  }
}
