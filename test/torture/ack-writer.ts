/**
 * The torture runner's application: a background writer that issues random
 * O_DIRECT writes (4 KiB..1 MiB, through RandomWriter.writeAt, so contents
 * are reproducible from the seed) to whatever node is the Primary now, with a
 * flush every few writes, and tells the LossModel what it issued and where
 * each write was acknowledged.
 *
 * It writes through a symlink the runner points at the Primary's device
 * (/dev/nraid/<resource>-<node>); dd runs with conv=nocreat, so a device link
 * that went away fails the write instead of creating a file. The runner
 * pauses the writer (waiting for writes in flight) before it demotes or
 * restarts the node it writes to; a kill -9 happens under load on purpose.
 */
import * as fs from 'fs';
import { NodeName } from '../harness/cluster';
import { BLOCK_BYTES, flushDevice, mulberry32, RandomWriter } from '../harness/direct-io';
import { LossModel, WriteEntries } from './loss-model';

const CONCURRENCY = 2;
const FLUSH_EVERY_WRITES = 8;
const WRITE_TIMEOUT_MS = 30_000;
const IDLE_POLL_MS = 20;

export interface WriterCounters {
  issued: number;
  acknowledged: number;
  failed: number;
  flushes: number;
  bytesAcknowledged: number;
  /** The slowest write acknowledged or failed, ms. */
  slowestMs: number;
}

export class AckWriter {
  readonly counters: WriterCounters = { issued: 0, acknowledged: 0, failed: 0, flushes: 0, bytesAcknowledged: 0, slowestMs: 0 };
  /** Last errors of failed writes (for the report). */
  readonly recentErrors: string[] = [];
  private target: NodeName | null = null;
  private running = true;
  private readonly inFlight = new Map<number, { start: number; end: number }>();
  private readonly workers: Promise<void>[];
  private readonly random: () => number;
  private wake: (() => void) | undefined;
  /** Called at each acknowledgement with the write's entries and the node that acknowledged it. */
  onAck: (w: WriteEntries, node: NodeName, issuedInEpoch: number) => void = () => undefined;
  /** The runner's replication epoch, read when a write is issued. */
  epoch: () => number = () => 0;

  constructor(
    private readonly writer: RandomWriter,
    private readonly model: LossModel,
    private readonly linkPath: string,
    seed: number,
    private readonly maxWriteBytes: number,
  ) {
    this.random = mulberry32(seed ^ 0x5eed1e55);
    this.workers = Array.from({ length: CONCURRENCY }, () => this.loop());
  }

  /** Starts writing to `node`'s device (its /dev/nraid link). */
  resume(node: NodeName, device: string): void {
    try {
      fs.unlinkSync(this.linkPath);
    } catch {
      // None yet.
    }
    fs.symlinkSync(device, this.linkPath);
    this.target = node;
    this.wake?.();
  }

  /** Stops issuing writes and waits for those in flight. */
  async pause(): Promise<void> {
    this.target = null;
    while (this.inFlight.size > 0) await new Promise((r) => setTimeout(r, 5));
  }

  get writingTo(): NodeName | null {
    return this.target;
  }

  async close(): Promise<void> {
    this.running = false;
    this.target = null;
    this.wake?.();
    await Promise.all(this.workers);
  }

  private pick(): { offsetBytes: number; lengthBytes: number } | undefined {
    const regionBlocks = this.model.dataBytes / BLOCK_BYTES;
    const maxBlocks = this.maxWriteBytes / BLOCK_BYTES;
    for (let attempt = 0; attempt < 16; attempt++) {
      // Mostly small writes, some large: a filesystem's mix.
      const blocks = this.random() % 4 === 0 ? 1 + (this.random() % maxBlocks) : 1 + (this.random() % 16);
      const block = this.random() % (regionBlocks - blocks + 1);
      const start = block * BLOCK_BYTES;
      const end = start + blocks * BLOCK_BYTES;
      let overlaps = false;
      for (const r of this.inFlight.values()) if (r.start < end && start < r.end) overlaps = true;
      if (!overlaps) return { offsetBytes: start, lengthBytes: end - start };
    }
    return undefined;
  }

  private async loop(): Promise<void> {
    let sinceFlush = 0;
    while (this.running) {
      const node = this.target;
      if (node === null) {
        await new Promise<void>((r) => {
          this.wake = r;
          setTimeout(r, IDLE_POLL_MS);
        });
        continue;
      }
      const place = this.pick();
      if (place === undefined) {
        await new Promise((r) => setTimeout(r, 1));
        continue;
      }
      // writeAt takes the writer's next index synchronously: all writes go through here, so it is the count issued.
      const index = this.counters.issued++;
      const entries = this.model.issue(index, place.offsetBytes, this.writer.dataFor(index, place.lengthBytes));
      const epoch = this.epoch();
      this.inFlight.set(index, { start: place.offsetBytes, end: place.offsetBytes + place.lengthBytes });
      const t0 = Date.now();
      try {
        const rec = await this.writer.writeAt(place.offsetBytes, place.lengthBytes);
        if (rec.index !== index) throw new Error(`torture writer: RandomWriter gave write index ${rec.index}, expected ${index}`);
        this.counters.acknowledged++;
        this.counters.bytesAcknowledged += place.lengthBytes;
        this.onAck(entries, node, epoch);
      } catch (e) {
        this.counters.failed++;
        this.recentErrors.push(`write #${index} to ${node}: ${(e as Error).message.split('\n')[0].slice(0, 200)}`);
        if (this.recentErrors.length > 20) this.recentErrors.shift();
      } finally {
        this.counters.slowestMs = Math.max(this.counters.slowestMs, Date.now() - t0);
        this.inFlight.delete(index);
      }
      if (++sinceFlush >= FLUSH_EVERY_WRITES && this.target === node) {
        sinceFlush = 0;
        await flushDevice(this.linkPath).then(
          () => this.counters.flushes++,
          () => undefined,
        );
      }
    }
  }
}

export const WRITER_WRITE_TIMEOUT_MS = WRITE_TIMEOUT_MS;
