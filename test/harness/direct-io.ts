/**
 * Reading and writing block devices with O_DIRECT from tests, through dd
 * (coreutils), and RandomWriter: random aligned writes against a model of
 * what the device must hold afterwards.
 *
 * One dd per write was measured before choosing it: on the 2-core dev
 * machine 500 writes of 4 KiB..1 MiB (250 MiB) took about 5 s from node,
 * so no long-lived helper process is needed. dd gets the payload on stdin
 * (iflag=fullblock, so a short pipe read never becomes an unaligned direct
 * write) and seeks in bytes (seek=NB), so each write is one O_DIRECT write
 * of up to 1 MiB, like a filesystem's.
 */
import { spawn } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import { execOk, toolEnv } from './exec';
import { makeSparseFile, SparseFile } from './loop';
import { RangeSet } from './range-set';

export const BLOCK_BYTES = 4096;
export const MAX_WRITE_BYTES = 1024 * 1024;
/** readDirect returns one Buffer; larger ranges go through readRange/sha256Range. */
export const MAX_READ_BUFFER_BYTES = 256 * 1024 * 1024;
const CHUNK_BYTES = 1024 * 1024;

function assertAligned(what: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0 || value % BLOCK_BYTES !== 0) {
    throw new Error(`${what} must be a non-negative multiple of ${BLOCK_BYTES}, got ${value}`);
  }
}

export interface DirectWriteOptions {
  /** Kill dd after this long (default 60 s). A write stuck in the kernel may outlive the kill. */
  timeoutMs?: number;
}

/** Writes `data` at `offsetBytes` with O_DIRECT (one dd). Offset and length: multiples of 4096. */
export async function writeDirect(
  device: string,
  offsetBytes: number,
  data: Buffer,
  opts: DirectWriteOptions = {},
): Promise<void> {
  assertAligned('offsetBytes', offsetBytes);
  assertAligned('data.length', data.length);
  if (data.length === 0) return;
  await execOk(
    'dd',
    [
      `of=${device}`,
      `bs=${Math.min(data.length, MAX_WRITE_BYTES)}`,
      `seek=${offsetBytes}B`,
      'iflag=fullblock',
      'oflag=direct',
      'conv=notrunc,nocreat',
      'status=none',
    ],
    { input: data, timeoutMs: opts.timeoutMs },
  );
}

/** Reads [offsetBytes, offsetBytes + lengthBytes) with O_DIRECT; fails on a short read. */
export async function readDirect(device: string, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
  if (lengthBytes > MAX_READ_BUFFER_BYTES) {
    throw new Error(`readDirect of ${lengthBytes} bytes: use readRange or sha256Range above ${MAX_READ_BUFFER_BYTES}`);
  }
  const parts: Buffer[] = [];
  for await (const chunk of readRange(device, offsetBytes, lengthBytes, { direct: true })) parts.push(chunk);
  return Buffer.concat(parts, lengthBytes);
}

/** fsync()s the device (coreutils sync): a FLUSH to whatever is below. */
export async function flushDevice(device: string): Promise<void> {
  await execOk('sync', [device]);
}

/** Size of a block device (blockdev --getsize64) or a regular file. */
export async function sizeOf(pathOrDevice: string): Promise<number> {
  const st = await fs.promises.stat(pathOrDevice);
  if (!st.isBlockDevice()) return st.size;
  return Number((await execOk('blockdev', ['--getsize64', pathOrDevice])).toString().trim());
}

export interface ReadRangeOptions {
  /**
   * O_DIRECT reads through dd. Default: true for block devices when offset and
   * length are 4 KiB aligned (so a device's page cache can never answer),
   * false for regular files.
   */
  direct?: boolean;
  /** Size of each yielded chunk except the last (default 1 MiB, multiple of 4096). */
  chunkBytes?: number;
}

async function* rechunk(source: AsyncIterable<Buffer>, size: number): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let have = 0;
  for await (const piece of source) {
    let buf = piece;
    while (have + buf.length >= size) {
      const take = size - have;
      parts.push(buf.subarray(0, take));
      yield parts.length === 1 ? parts[0] : Buffer.concat(parts, size);
      parts = [];
      have = 0;
      buf = buf.subarray(take);
    }
    if (buf.length > 0) {
      parts.push(buf);
      have += buf.length;
    }
  }
  if (have > 0) yield Buffer.concat(parts, have);
}

/**
 * Streams [offsetBytes, offsetBytes + lengthBytes) of a file or device in
 * chunks of `chunkBytes` (the last may be shorter). Throws if fewer bytes
 * than asked for exist. Breaking out of the loop early stops the reader.
 */
export async function* readRange(
  pathOrDevice: string,
  offsetBytes: number,
  lengthBytes: number,
  opts: ReadRangeOptions = {},
): AsyncGenerator<Buffer> {
  if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0) throw new Error(`bad offsetBytes ${offsetBytes}`);
  if (!Number.isSafeInteger(lengthBytes) || lengthBytes < 0) throw new Error(`bad lengthBytes ${lengthBytes}`);
  const chunkBytes = opts.chunkBytes ?? CHUNK_BYTES;
  assertAligned('chunkBytes', chunkBytes);
  if (lengthBytes === 0) return;
  const aligned = offsetBytes % BLOCK_BYTES === 0 && lengthBytes % BLOCK_BYTES === 0;
  const direct = opts.direct ?? (aligned && fs.statSync(pathOrDevice).isBlockDevice());
  let got = 0;
  if (!direct) {
    const stream = fs.createReadStream(pathOrDevice, {
      start: offsetBytes,
      end: offsetBytes + lengthBytes - 1,
      highWaterMark: chunkBytes,
    });
    try {
      for await (const chunk of rechunk(stream as AsyncIterable<Buffer>, chunkBytes)) {
        got += chunk.length;
        yield chunk;
      }
    } finally {
      stream.destroy();
    }
  } else {
    assertAligned('offsetBytes', offsetBytes);
    assertAligned('lengthBytes', lengthBytes);
    const child = spawn(
      'dd',
      [`if=${pathOrDevice}`, `bs=${CHUNK_BYTES}`, `skip=${offsetBytes}B`, `count=${lengthBytes}B`, 'iflag=direct', 'status=none'],
      { stdio: ['ignore', 'pipe', 'pipe'], env: toolEnv() },
    );
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (s: string) => {
      if (stderr.length < 4096) stderr += s;
    });
    const exited = new Promise<string | undefined>((resolve) => {
      child.on('error', (e) => resolve(e.message));
      child.on('close', (code, signal) => resolve(code === 0 ? undefined : `exit ${code ?? signal}`));
    });
    try {
      for await (const chunk of rechunk(child.stdout as AsyncIterable<Buffer>, chunkBytes)) {
        got += chunk.length;
        yield chunk;
      }
      const failure = await exited;
      if (failure !== undefined) throw new Error(`dd if=${pathOrDevice} failed (${failure}): ${stderr.trim()}`);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  }
  if (got !== lengthBytes) {
    throw new Error(`short read of ${pathOrDevice}: asked for ${lengthBytes} bytes at ${offsetBytes}, got ${got}`);
  }
}

/** sha256 (hex) of a range of a file or device, streamed (fine for GiB). */
export async function sha256Range(
  pathOrDevice: string,
  offsetBytes: number,
  lengthBytes: number,
  opts: ReadRangeOptions = {},
): Promise<string> {
  const hash = crypto.createHash('sha256');
  for await (const chunk of readRange(pathOrDevice, offsetBytes, lengthBytes, opts)) hash.update(chunk);
  return hash.digest('hex');
}

export interface BlockMismatch {
  /** First byte of the run of differing 4 KiB blocks. */
  offsetBytes: number;
  lengthBytes: number;
  /** First differing byte in the run, with both values. */
  firstByteOffset: number;
  expected: number;
  found: number;
}

export interface CompareReport {
  equal: boolean;
  comparedBytes: number;
  mismatchBlocks: number;
  /** Runs of differing blocks, at most MAX_REPORTED_MISMATCHES. */
  mismatches: BlockMismatch[];
}

export const MAX_REPORTED_MISMATCHES = 100;

/**
 * Compares the same range of two files/devices 4 KiB block by block, reading
 * both in lockstep. `skip(start, end)` may exclude blocks from the check.
 * `expected` is the first argument (reported as `expected`).
 */
export async function compareRanges(
  expectedPath: string,
  foundPath: string,
  offsetBytes: number,
  lengthBytes: number,
  opts: { expectedOffsetBytes?: number; skip?: (start: number, end: number) => boolean } = {},
): Promise<CompareReport> {
  assertAligned('offsetBytes', offsetBytes);
  assertAligned('lengthBytes', lengthBytes);
  const expectedOffset = opts.expectedOffsetBytes ?? offsetBytes;
  const a = readRange(expectedPath, expectedOffset, lengthBytes);
  const b = readRange(foundPath, offsetBytes, lengthBytes);
  const report: CompareReport = { equal: true, comparedBytes: 0, mismatchBlocks: 0, mismatches: [] };
  let pos = offsetBytes;
  try {
    for (;;) {
      const [ra, rb] = await Promise.all([a.next(), b.next()]);
      if (ra.done || rb.done) {
        if (!ra.done || !rb.done) throw new Error('compareRanges: streams ended at different places');
        break;
      }
      const ca = ra.value;
      const cb = rb.value;
      if (!ca.equals(cb)) {
        for (let k = 0; k < ca.length; k += BLOCK_BYTES) {
          const start = pos + k;
          if (opts.skip?.(start, start + BLOCK_BYTES)) continue;
          const ea = ca.subarray(k, k + BLOCK_BYTES);
          const eb = cb.subarray(k, k + BLOCK_BYTES);
          if (ea.equals(eb)) continue;
          report.mismatchBlocks += 1;
          const last = report.mismatches[report.mismatches.length - 1];
          if (last && last.offsetBytes + last.lengthBytes === start) {
            last.lengthBytes += BLOCK_BYTES;
          } else if (report.mismatches.length < MAX_REPORTED_MISMATCHES) {
            let i = 0;
            while (ea[i] === eb[i]) i++;
            report.mismatches.push({
              offsetBytes: start,
              lengthBytes: BLOCK_BYTES,
              firstByteOffset: start + i,
              expected: ea[i],
              found: eb[i],
            });
          }
        }
      }
      report.comparedBytes += ca.length;
      pos += ca.length;
    }
  } finally {
    await Promise.all([a.return(undefined), b.return(undefined)]);
  }
  report.equal = report.mismatchBlocks === 0;
  return report;
}

// --- RandomWriter ------------------------------------------------------------

/** mulberry32: a small seeded PRNG, so a failing run can be replayed from its seed. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

export interface RandomWriterOptions {
  /** What to write to (any block device or file that takes O_DIRECT). */
  device: string;
  /** Start of the region the writer may touch (default 0). Multiple of 4096. */
  offsetBytes?: number;
  /** Length of that region. Multiple of 4096. */
  sizeBytes: number;
  /** Write sizes are drawn uniformly in [min, max], in 4 KiB steps. Default 4 KiB..1 MiB. */
  minWriteBytes?: number;
  maxWriteBytes?: number;
  /** Seed for offsets, sizes and contents (default: random; printed in reports). */
  seed?: number;
  /**
   * What bytes never written must hold: 'zero' (a fresh sparse disk) or
   * 'ignore' (only written bytes are checked).
   */
  baseline?: 'zero' | 'ignore';
  /** Writes in flight at once (default 1). In-flight writes never overlap. */
  concurrency?: number;
  /** Per-write dd timeout (default 60 s). */
  writeTimeoutMs?: number;
}

export interface WriteRecord {
  /** Number of the write; its contents are dataFor(index, lengthBytes). */
  index: number;
  offsetBytes: number;
  lengthBytes: number;
  /** Date.now() when the write was acknowledged (or failed). */
  atMs: number;
}

export interface FailedWrite extends WriteRecord {
  error: string;
}

export interface RunSummary {
  writes: number;
  bytes: number;
  failures: number;
  elapsedMs: number;
}

export interface Mismatch extends BlockMismatch {
  /** The last acknowledged write that covered firstByteOffset, if any. */
  lastWrite?: WriteRecord;
}

export interface VerifyReport {
  ok: boolean;
  device: string;
  offsetBytes: number;
  lengthBytes: number;
  /** Bytes whose value the model knows and that were checked. */
  checkedBytes: number;
  /** Bytes skipped because a failed write may or may not have reached them. */
  uncertainBytes: number;
  mismatchBlocks: number;
  mismatches: Mismatch[];
  seed: number;
  /** One paragraph for a failure message. */
  summary: string;
}

/**
 * Writes random data at random 4 KiB-aligned offsets and keeps a model of what
 * the region must contain: a sparse image file (same size as the region) that
 * receives every acknowledged write, plus the set of written ranges and the set
 * of uncertain ones (writes that failed). verify() compares every byte of a
 * device range with the model.
 */
export class RandomWriter {
  readonly device: string;
  readonly offsetBytes: number;
  readonly sizeBytes: number;
  readonly seed: number;
  readonly baseline: 'zero' | 'ignore';
  /** Acknowledged writes, in order of acknowledgement. */
  readonly log: WriteRecord[] = [];
  readonly failures: FailedWrite[] = [];
  readonly written = new RangeSet();
  readonly uncertain = new RangeSet();

  private readonly minBlocks: number;
  private readonly maxBlocks: number;
  private readonly concurrency: number;
  private readonly writeTimeoutMs: number | undefined;
  private readonly random: () => number;
  private readonly key: Buffer;
  private nextIndex = 0;
  private readonly inFlight = new Map<number, { start: number; end: number }>();

  private constructor(
    opts: RandomWriterOptions,
    private readonly model: SparseFile,
    private readonly modelFd: fs.promises.FileHandle,
  ) {
    this.device = opts.device;
    this.offsetBytes = opts.offsetBytes ?? 0;
    this.sizeBytes = opts.sizeBytes;
    this.seed = (opts.seed ?? crypto.randomInt(0, 2 ** 31)) >>> 0;
    this.baseline = opts.baseline ?? 'zero';
    const min = opts.minWriteBytes ?? BLOCK_BYTES;
    const max = opts.maxWriteBytes ?? MAX_WRITE_BYTES;
    assertAligned('minWriteBytes', min);
    assertAligned('maxWriteBytes', max);
    if (min < BLOCK_BYTES || max < min || max > this.sizeBytes) {
      throw new Error(`need ${BLOCK_BYTES} <= minWriteBytes (${min}) <= maxWriteBytes (${max}) <= sizeBytes (${this.sizeBytes})`);
    }
    this.minBlocks = min / BLOCK_BYTES;
    this.maxBlocks = max / BLOCK_BYTES;
    this.concurrency = opts.concurrency ?? 1;
    if (!Number.isInteger(this.concurrency) || this.concurrency < 1 || this.concurrency > 64) {
      throw new Error(`concurrency must be 1..64, got ${opts.concurrency}`);
    }
    this.writeTimeoutMs = opts.writeTimeoutMs;
    this.random = mulberry32(this.seed);
    this.key = crypto.createHash('sha256').update(`nraid-random-writer:${this.seed}`).digest().subarray(0, 16);
  }

  static async create(opts: RandomWriterOptions): Promise<RandomWriter> {
    assertAligned('offsetBytes', opts.offsetBytes ?? 0);
    assertAligned('sizeBytes', opts.sizeBytes);
    if (opts.sizeBytes === 0) throw new Error('sizeBytes must be > 0');
    const model = await makeSparseFile(opts.sizeBytes, 'model');
    const fd = await fs.promises.open(model.file, 'r+');
    return new RandomWriter(opts, model, fd);
  }

  /** The model image: byte i is what device byte offsetBytes + i must hold. */
  get modelFile(): string {
    return this.model.file;
  }

  /** Contents of write `index` (AES-128-CTR keystream from the seed: fast, never repeats). */
  dataFor(index: number, lengthBytes: number): Buffer {
    const iv = Buffer.alloc(16);
    iv.writeUInt32BE(index >>> 0, 0);
    iv.writeUInt32BE(Math.floor(index / 2 ** 32) >>> 0, 4);
    const cipher = crypto.createCipheriv('aes-128-ctr', this.key, iv);
    return cipher.update(Buffer.alloc(lengthBytes));
  }

  private draw(n: number): number {
    // n can exceed 2^32 blocks only beyond 16 TiB; one draw is enough.
    return this.random() % n;
  }

  private pick(): { offsetBytes: number; lengthBytes: number } | undefined {
    const regionBlocks = this.sizeBytes / BLOCK_BYTES;
    for (let attempt = 0; attempt < 64; attempt++) {
      const blocks = this.minBlocks + this.draw(this.maxBlocks - this.minBlocks + 1);
      const block = this.draw(regionBlocks - blocks + 1);
      const start = this.offsetBytes + block * BLOCK_BYTES;
      const end = start + blocks * BLOCK_BYTES;
      let overlaps = false;
      for (const r of this.inFlight.values()) {
        if (r.start < end && start < r.end) overlaps = true;
      }
      if (!overlaps) return { offsetBytes: start, lengthBytes: end - start };
    }
    return undefined;
  }

  /**
   * One write of dataFor(index) at an explicit place. Rejects if the device
   * write fails (the range is then uncertain in the model).
   */
  async writeAt(offsetBytes: number, lengthBytes: number): Promise<WriteRecord> {
    const index = this.nextIndex++;
    return this.doWrite(index, offsetBytes, lengthBytes);
  }

  private async doWrite(index: number, offsetBytes: number, lengthBytes: number): Promise<WriteRecord> {
    assertAligned('offsetBytes', offsetBytes);
    assertAligned('lengthBytes', lengthBytes);
    const start = offsetBytes;
    const end = offsetBytes + lengthBytes;
    if (start < this.offsetBytes || end > this.offsetBytes + this.sizeBytes || lengthBytes === 0) {
      throw new Error(`write [${start}, ${end}) is outside the region [${this.offsetBytes}, ${this.offsetBytes + this.sizeBytes})`);
    }
    const data = this.dataFor(index, lengthBytes);
    try {
      await writeDirect(this.device, offsetBytes, data, { timeoutMs: this.writeTimeoutMs });
    } catch (e) {
      this.uncertain.add(start, end);
      const failed: FailedWrite = { index, offsetBytes, lengthBytes, atMs: Date.now(), error: (e as Error).message };
      this.failures.push(failed);
      throw e;
    }
    const record: WriteRecord = { index, offsetBytes, lengthBytes, atMs: Date.now() };
    const { bytesWritten } = await this.modelFd.write(data, 0, lengthBytes, start - this.offsetBytes);
    if (bytesWritten !== lengthBytes) throw new Error(`model write of ${lengthBytes} bytes wrote ${bytesWritten}`);
    this.written.add(start, end);
    this.uncertain.subtract(start, end);
    this.log.push(record);
    return record;
  }

  /**
   * `count` random writes, `concurrency` at a time. With onError 'throw'
   * (default) the first failed write stops the run and rejects; with 'record'
   * failures are counted and the run goes on.
   */
  async run(count: number, opts: { onError?: 'throw' | 'record' } = {}): Promise<RunSummary> {
    const onError = opts.onError ?? 'throw';
    const t0 = Date.now();
    const summary: RunSummary = { writes: 0, bytes: 0, failures: 0, elapsedMs: 0 };
    let started = 0;
    let stopError: Error | undefined;
    const worker = async (): Promise<void> => {
      while (started < count && stopError === undefined) {
        const place = this.pick();
        if (place === undefined) {
          await new Promise((r) => setTimeout(r, 1));
          continue;
        }
        const index = this.nextIndex++;
        started++;
        this.inFlight.set(index, { start: place.offsetBytes, end: place.offsetBytes + place.lengthBytes });
        try {
          await this.doWrite(index, place.offsetBytes, place.lengthBytes);
          summary.writes++;
          summary.bytes += place.lengthBytes;
        } catch (e) {
          summary.failures++;
          if (onError === 'throw' && stopError === undefined) stopError = e as Error;
        } finally {
          this.inFlight.delete(index);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.concurrency, Math.max(count, 1)) }, worker));
    summary.elapsedMs = Date.now() - t0;
    if (stopError !== undefined) {
      throw new Error(`RandomWriter (seed ${this.seed}) write failed after ${summary.writes} writes: ${stopError.message}`);
    }
    return summary;
  }

  /** The last acknowledged write covering `offsetBytes`, if any. */
  lastWriteAt(offsetBytes: number): WriteRecord | undefined {
    for (let i = this.log.length - 1; i >= 0; i--) {
      const w = this.log[i];
      if (w.offsetBytes <= offsetBytes && offsetBytes < w.offsetBytes + w.lengthBytes) return w;
    }
    return undefined;
  }

  /**
   * Compares `device` (default: the one written to; e.g. the peer's backing
   * disk after a failover) with the model over [offsetBytes, +lengthBytes)
   * (default: the whole region). Reads the device with O_DIRECT.
   */
  async verify(opts: { device?: string; offsetBytes?: number; lengthBytes?: number } = {}): Promise<VerifyReport> {
    const device = opts.device ?? this.device;
    const from = opts.offsetBytes ?? this.offsetBytes;
    const length = opts.lengthBytes ?? this.offsetBytes + this.sizeBytes - from;
    const to = from + length;
    if (from < this.offsetBytes || to > this.offsetBytes + this.sizeBytes) {
      throw new Error(`verify range [${from}, ${to}) is outside the region`);
    }
    const skip = (start: number, end: number): boolean =>
      this.uncertain.intersects(start, end) || (this.baseline === 'ignore' && !this.written.intersects(start, end));
    const cmp = await compareRanges(this.model.file, device, from, length, {
      expectedOffsetBytes: from - this.offsetBytes,
      skip,
    });
    const uncertainBytes = this.uncertain.within(from, to).reduce((n, r) => n + r.end - r.start, 0);
    const checked = new RangeSet();
    if (this.baseline === 'zero') checked.add(from, to);
    else for (const r of this.written.within(from, to)) checked.add(r.start, r.end);
    for (const r of this.uncertain.within(from, to)) checked.subtract(r.start, r.end);
    const mismatches: Mismatch[] = cmp.mismatches.map((m) => ({ ...m, lastWrite: this.lastWriteAt(m.firstByteOffset) }));
    const report: VerifyReport = {
      ok: cmp.equal,
      device,
      offsetBytes: from,
      lengthBytes: length,
      checkedBytes: checked.totalBytes,
      uncertainBytes,
      mismatchBlocks: cmp.mismatchBlocks,
      mismatches,
      seed: this.seed,
      summary: '',
    };
    report.summary = describeVerify(report, this.log.length);
    return report;
  }

  /** verify(), rejecting with the report's summary when anything differs. */
  async verifyOrThrow(opts: { device?: string; offsetBytes?: number; lengthBytes?: number } = {}): Promise<VerifyReport> {
    const report = await this.verify(opts);
    if (!report.ok) throw new Error(report.summary);
    return report;
  }

  /** Closes and deletes the model. */
  async close(): Promise<void> {
    await this.modelFd.close().catch(() => undefined);
    await this.model.remove();
  }
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(2, '0')}`;
}

function describeVerify(r: VerifyReport, writes: number): string {
  const head = `verify ${r.device} [${r.offsetBytes}, ${r.offsetBytes + r.lengthBytes}) after ${writes} writes (seed ${r.seed})`;
  if (r.ok) return `${head}: ${r.checkedBytes} bytes match, ${r.uncertainBytes} uncertain`;
  const lines = r.mismatches.slice(0, 10).map((m) => {
    const w = m.lastWrite
      ? `last written by write #${m.lastWrite.index} [${m.lastWrite.offsetBytes}, +${m.lastWrite.lengthBytes})`
      : 'never written (expected baseline)';
    return `  [${m.offsetBytes}, +${m.lengthBytes}): byte ${m.firstByteOffset} expected ${hex(m.expected)} found ${hex(m.found)}; ${w}`;
  });
  const more = r.mismatches.length > 10 ? `\n  ... and ${r.mismatches.length - 10} more runs` : '';
  return `${head}: ${r.mismatchBlocks} of ${r.checkedBytes / BLOCK_BYTES} checked 4 KiB blocks differ\n${lines.join('\n')}${more}`;
}
