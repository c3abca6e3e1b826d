/**
 * What each node's data area may hold, block by block, given every write the
 * torture writer issued and where each was acknowledged (the zero-loss
 * invariant, issue 10 item 1).
 *
 * Per 4 KiB block the model keeps the history of contents since the last
 * point both disks were known equal (a settle point): each entry is a hash of
 * a block's contents and the set of nodes on which it is known durable. An
 * entry is durable on the Primary that acknowledged it, and on the peer too
 * when it was acknowledged under protocol C inside a replication epoch the
 * runner confirmed (Connected and Established before the write started, and
 * no link failure counted by the time the epoch closed). A write that failed
 * or was in flight at a fault is an entry durable nowhere: it may or may not
 * have landed.
 *
 * A node may hold any entry from the last one durable on it onwards: it
 * cannot have lost what it acknowledged (or what its peer acknowledged for
 * it under C), and it may hold anything written later. Checked on every
 * failover (the new Primary's device) and at every settle point (both
 * backing disks, which must then be identical); a settle point collapses the
 * history to the one content both hold.
 */
import * as crypto from 'crypto';
import { NodeName } from '../harness/cluster';

export const MODEL_BLOCK_BYTES = 4096;
/** Entries kept per block between settle points; older ones are dropped (the block is then checked from the oldest kept). */
const HISTORY_MAX = 64;
const NODE_BIT: Record<NodeName, number> = { alpha: 1, beta: 2 };

export function blockHash(block: Buffer): string {
  return crypto.createHash('sha256').update(block).digest('hex').slice(0, 16);
}

export const ZERO_BLOCK_HASH = blockHash(Buffer.alloc(MODEL_BLOCK_BYTES));

export interface BlockViolation {
  block: number;
  offsetBytes: number;
  found: string;
  /** The hashes this node could have held, oldest first. */
  allowed: string[];
  /** Write indices behind the allowed entries (-1: the baseline or a settle point). */
  allowedWrites: number[];
}

/** A handle on the entries of one write, to mark them durable on the peer once its epoch is confirmed. */
export interface WriteEntries {
  writeIndex: number;
  entries: Array<{ block: number; entry: Entry }>;
}

interface Entry {
  hash: string;
  durableMask: number;
  writeIndex: number;
}

export class LossModel {
  readonly blocks: number;
  private readonly history: Entry[][];
  /** Nodes whose contents are unknown until the next settle point (forced promotion of an Inconsistent disk). */
  private readonly unknown = new Set<NodeName>();

  constructor(readonly dataBytes: number) {
    if (dataBytes % MODEL_BLOCK_BYTES !== 0) throw new Error(`data size ${dataBytes} is not a multiple of ${MODEL_BLOCK_BYTES}`);
    this.blocks = dataBytes / MODEL_BLOCK_BYTES;
    this.history = Array.from({ length: this.blocks }, () => [{ hash: ZERO_BLOCK_HASH, durableMask: 3, writeIndex: -1 }]);
  }

  /** A write is about to be issued: its contents become possible on both nodes. */
  issue(writeIndex: number, offsetBytes: number, data: Buffer): WriteEntries {
    const first = offsetBytes / MODEL_BLOCK_BYTES;
    const out: WriteEntries = { writeIndex, entries: [] };
    for (let i = 0; i * MODEL_BLOCK_BYTES < data.length; i++) {
      const entry: Entry = { hash: blockHash(data.subarray(i * MODEL_BLOCK_BYTES, (i + 1) * MODEL_BLOCK_BYTES)), durableMask: 0, writeIndex };
      const h = this.history[first + i];
      h.push(entry);
      if (h.length > HISTORY_MAX) h.splice(0, h.length - HISTORY_MAX);
      out.entries.push({ block: first + i, entry });
    }
    return out;
  }

  /** The write was acknowledged by `node`'s device (it is durable there: an ack after a flush, or O_DIRECT on a write-through path). */
  durableOn(w: WriteEntries, node: NodeName): void {
    for (const { entry } of w.entries) entry.durableMask |= NODE_BIT[node];
  }

  /** Contents of `node` unknown until the next settle point. */
  forget(node: NodeName): void {
    this.unknown.add(node);
  }

  isUnknown(node: NodeName): boolean {
    return this.unknown.has(node);
  }

  /**
   * `node` discarded its own changes (connect --discard-my-data, or it is a
   * resync target that will become a copy of its peer): what only it held no
   * longer binds it.
   */
  discard(node: NodeName): void {
    const bit = NODE_BIT[node];
    for (const h of this.history) for (const e of h) e.durableMask &= ~bit;
  }

  private allowedFrom(block: number, node: NodeName): number {
    const h = this.history[block];
    const bit = NODE_BIT[node];
    for (let i = h.length - 1; i >= 0; i--) if (h[i].durableMask & bit) return i;
    return 0;
  }

  /** Checks one block of `node`'s contents; undefined if allowed. */
  checkBlock(node: NodeName, block: number, contents: Buffer): BlockViolation | undefined {
    return this.checkHash(node, block, blockHash(contents));
  }

  /** checkBlock with the block's hash (blockHash) already computed. */
  checkHash(node: NodeName, block: number, found: string): BlockViolation | undefined {
    if (this.unknown.has(node)) return undefined;
    const h = this.history[block];
    const from = this.allowedFrom(block, node);
    for (let i = from; i < h.length; i++) if (h[i].hash === found) return undefined;
    return {
      block,
      offsetBytes: block * MODEL_BLOCK_BYTES,
      found,
      allowed: h.slice(from).map((e) => e.hash),
      allowedWrites: h.slice(from).map((e) => e.writeIndex),
    };
  }

  /** A block whose newest content is a write durable on both nodes (for the runner's canary), or undefined. */
  blockDurableOnBoth(): number | undefined {
    for (let b = 0; b < this.blocks; b++) {
      const h = this.history[b];
      const last = h[h.length - 1];
      if (last.writeIndex >= 0 && last.durableMask === 3) return b;
    }
    return undefined;
  }

  /** For a report: which write of the block's history holds `hash` ('settle' for the content of the last settle point, undefined if none). */
  whichWrite(block: number, hash: string): number | 'baseline' | undefined {
    const e = [...this.history[block]].reverse().find((x) => x.hash === hash);
    if (!e) return undefined;
    return e.writeIndex < 0 ? 'baseline' : e.writeIndex;
  }

  /** For a report: the block's history, oldest first (write index or -1, and where each is durable). */
  describeBlock(block: number): string {
    return this.history[block].map((e) => `${e.writeIndex}${e.durableMask & 1 ? 'a' : ''}${e.durableMask & 2 ? 'b' : ''}`).join(' ');
  }

  /** Both disks hold `hashes` (one per block) and are equal: the history collapses to that. */
  settle(hashes: readonly string[]): void {
    if (hashes.length !== this.blocks) throw new Error(`settle with ${hashes.length} block hashes, expected ${this.blocks}`);
    for (let b = 0; b < this.blocks; b++) {
      const last = this.history[b].find((e) => e.hash === hashes[b]);
      this.history[b] = [{ hash: hashes[b], durableMask: 3, writeIndex: last?.writeIndex ?? -1 }];
    }
    this.unknown.clear();
  }

  /** `node` holds `hashes` and is the only truth now (a forced promotion): its history restarts there, the other's is unknown. */
  rebaseOn(node: NodeName, hashes: readonly string[]): void {
    for (let b = 0; b < this.blocks; b++) this.history[b] = [{ hash: hashes[b], durableMask: NODE_BIT[node], writeIndex: -1 }];
    this.unknown.clear();
    this.unknown.add(node === 'alpha' ? 'beta' : 'alpha');
  }
}
