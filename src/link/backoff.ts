/**
 * Exponential redial backoff with jitter: the first delay is `initialMs`,
 * each failure multiplies it by connectRetryFactor up to `maxMs`, and a
 * session that reaches Connected resets it. Jitter keeps two daemons that
 * failed together from redialing in lockstep.
 */
import { connectRetryFactor, connectRetryJitter } from '../limits';

export class Backoff {
  private nextMs: number;

  constructor(private readonly initialMs: number, private readonly maxMs: number, private readonly random: () => number = Math.random) {
    this.nextMs = initialMs;
  }

  /** The delay before the next attempt; grows the one after. */
  next(): number {
    const baseMs = this.nextMs;
    this.nextMs = Math.min(this.maxMs, Math.max(1, baseMs) * connectRetryFactor);
    return Math.round(Math.min(this.maxMs, baseMs * (1 + connectRetryJitter * this.random())));
  }

  reset(): void {
    this.nextMs = this.initialMs;
  }
}
