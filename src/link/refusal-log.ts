/**
 * Counts and logs the connections a link refuses, with a rate limit: the
 * first refusal of an interval is logged at once (its reason cut to
 * refusedReasonCharsMax), the others of the interval are only counted and
 * summed up in one line when it ends. A flood of garbage connections costs
 * a few lines per interval, not one per connection.
 */
import { refusedLogIntervalMs, refusedReasonCharsMax } from '../limits';
import { LinkLog } from './session-types';

/** Why a connection was refused, as metrics label it. */
export type RefusalKind = 'not-peer' | 'evicted' | 'malformed' | 'timeout' | 'auth' | 'version' | 'other';
export const REFUSAL_KINDS: readonly RefusalKind[] = ['not-peer', 'evicted', 'malformed', 'timeout', 'auth', 'version', 'other'];

export class RefusalLog {
  private readonly totals = new Map<RefusalKind, number>(REFUSAL_KINDS.map((kind) => [kind, 0]));
  private readonly suppressed = new Map<RefusalKind, number>();
  private windowStartMs = -Infinity;
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly log: LinkLog, private readonly intervalMs: number = refusedLogIntervalMs) {}

  /** Refusals so far, per kind. */
  counts(): Record<RefusalKind, number> {
    return Object.fromEntries(this.totals) as Record<RefusalKind, number>;
  }

  /** Counts one refusal and logs it unless one was logged less than an interval ago. */
  note(kind: RefusalKind, message: string, fields: Record<string, unknown>): void {
    this.totals.set(kind, this.totals.get(kind)! + 1);
    const nowMs = Date.now();
    if (nowMs - this.windowStartMs >= this.intervalMs) {
      this.flush();
      this.windowStartMs = nowMs;
      const cut = message.length > refusedReasonCharsMax ? `${message.slice(0, refusedReasonCharsMax - 3)}...` : message;
      this.log('warn', cut, { ...fields, refusal: kind });
      return;
    }
    this.suppressed.set(kind, (this.suppressed.get(kind) ?? 0) + 1);
    if (!this.timer) {
      this.timer = setTimeout(() => this.flush(), this.windowStartMs + this.intervalMs - nowMs);
      this.timer.unref();
    }
  }

  /** Logs the count of refusals not logged yet, if any. */
  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.suppressed.size === 0) return;
    const byKind = Object.fromEntries(this.suppressed);
    const count = [...this.suppressed.values()].reduce((sum, n) => sum + n, 0);
    this.suppressed.clear();
    this.windowStartMs = Date.now();
    this.log('warn', `refused ${count} more connections in the last ${Math.round(this.intervalMs / 1000)} s (not logged one by one)`, { refused: byKind });
  }
}
