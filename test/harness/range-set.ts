/**
 * A set of byte ranges [start, end), kept sorted, disjoint and coalesced.
 * Used by RandomWriter to know which bytes were written and which are
 * uncertain (a write that failed may or may not have landed).
 */
export interface Range {
  start: number;
  end: number;
}

export class RangeSet {
  private readonly starts: number[] = [];
  private readonly ends: number[] = [];

  /** Index of the first range whose end is > pos. */
  private firstEndingAfter(pos: number): number {
    let lo = 0;
    let hi = this.ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ends[mid] > pos) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  add(start: number, end: number): void {
    if (end <= start) return;
    // Ranges touching [start, end) (including adjacent ones) merge into it.
    const i = this.firstEndingAfter(start - 1);
    let j = i;
    let s = start;
    let e = end;
    while (j < this.starts.length && this.starts[j] <= end) {
      s = Math.min(s, this.starts[j]);
      e = Math.max(e, this.ends[j]);
      j++;
    }
    this.starts.splice(i, j - i, s);
    this.ends.splice(i, j - i, e);
  }

  subtract(start: number, end: number): void {
    if (end <= start) return;
    const i = this.firstEndingAfter(start);
    let j = i;
    const keepStarts: number[] = [];
    const keepEnds: number[] = [];
    while (j < this.starts.length && this.starts[j] < end) {
      if (this.starts[j] < start) {
        keepStarts.push(this.starts[j]);
        keepEnds.push(start);
      }
      if (this.ends[j] > end) {
        keepStarts.push(end);
        keepEnds.push(this.ends[j]);
      }
      j++;
    }
    this.starts.splice(i, j - i, ...keepStarts);
    this.ends.splice(i, j - i, ...keepEnds);
  }

  /** True if every byte of [start, end) is in the set. */
  covers(start: number, end: number): boolean {
    if (end <= start) return true;
    const i = this.firstEndingAfter(start);
    return i < this.starts.length && this.starts[i] <= start && this.ends[i] >= end;
  }

  /** True if any byte of [start, end) is in the set. */
  intersects(start: number, end: number): boolean {
    if (end <= start) return false;
    const i = this.firstEndingAfter(start);
    return i < this.starts.length && this.starts[i] < end;
  }

  /** The parts of the set inside [start, end). */
  within(start: number, end: number): Range[] {
    const out: Range[] = [];
    for (let i = this.firstEndingAfter(start); i < this.starts.length && this.starts[i] < end; i++) {
      out.push({ start: Math.max(start, this.starts[i]), end: Math.min(end, this.ends[i]) });
    }
    return out;
  }

  ranges(): Range[] {
    return this.starts.map((s, i) => ({ start: s, end: this.ends[i] }));
  }

  get totalBytes(): number {
    let n = 0;
    for (let i = 0; i < this.starts.length; i++) n += this.ends[i] - this.starts[i];
    return n;
  }

  get size(): number {
    return this.starts.length;
  }
}
