/**
 * The asynchronous metadata calls of the Binding (superblockWrite,
 * bitmapPersist, activityLogReset, pipelineFlush, drain) on real parts: a
 * loop disk whose bytes are read back, a backing disk that stalls (the FUSE
 * volume of a second data plane in a child process, its I/O suspended on
 * command), and real TCP sockets to a peer that answers, stays silent or
 * hangs up. The event loop must keep running while they are pending: a
 * backing disk that stalls writes for 10 s must not stop the pings.
 */
import { ChildProcess, spawn, spawnSync } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as net from 'net';
import * as path from 'path';
import { computeLayout } from '../../src/metadata';
import { binding, DiskHandle, LinkAttachOptions, PipelineHandle } from '../../src/native';
import { makeTempSubdir, mountPoints, registerCleanup } from '../harness/cleanup';
import { LoopDisk, makeLoopDisk, makeSparseFile, SparseFile } from '../harness/loop';
import { pipelineLayout, pipelineOptions } from '../harness/pipeline';
import { describeIntegration, REPO_ROOT } from '../harness/prereq';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK_BYTES = 4 * KiB;
const DISK_BYTES = 64 * MiB;
const GRANULARITY_BYTES = 4 * KiB;
const METADATA_JOBS_MAX = binding.limits.metadataJobsMax;

type Settled = { status: 'fulfilled'; value: unknown; atMs: number } | { status: 'rejected'; code: string; message: string; atMs: number };

/** Watches a promise: its outcome (with the error's code) and when it came, without awaiting it. */
function watch(promise: Promise<unknown>): { readonly outcome: Settled | undefined; done: Promise<Settled> } {
  const started = Date.now();
  const box: { outcome: Settled | undefined } = { outcome: undefined };
  const done = promise.then(
    (value): Settled => (box.outcome = { status: 'fulfilled', value, atMs: Date.now() - started }),
    (error: { code?: string; message?: string }): Settled =>
      (box.outcome = { status: 'rejected', code: String(error.code), message: String(error.message), atMs: Date.now() - started }),
  );
  return {
    get outcome() {
      return box.outcome;
    },
    done,
  };
}

function randomBlock(): Buffer {
  return crypto.randomBytes(BLOCK_BYTES);
}

function createPipeline(disk: DiskHandle, sizeBytes: number): PipelineHandle {
  return binding.pipelineCreate(disk, pipelineOptions(computeLayout(sizeBytes, GRANULARITY_BYTES)));
}

// ---- a backing disk that stalls on command ---------------------------------------------------

/**
 * A second data plane in a child process serves a FUSE volume (a regular file
 * under our temp dir) from a sparse file; `stall(ms)` suspends its I/O, and
 * the child itself resumes it after `ms`, whatever this process is doing.
 */
const STALL_CHILD = `
const { binding } = require(process.argv[1]);
const options = JSON.parse(process.argv[2]);
const disk = binding.diskOpen(options.file, false);
const pipeline = binding.pipelineCreate(disk, { ...options.layout, onEvent: () => {} });
binding.frontendStart(pipeline, { mountPath: options.mountPath, source: 'nraid-test-stall', threads: 4, lockMemory: false });
const say = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
say({ ready: true });
let buffered = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  buffered += chunk;
  let i;
  while ((i = buffered.indexOf('\\n')) >= 0) {
    const [command, arg, arg2, arg3, arg4] = buffered.slice(0, i).split(' ');
    buffered = buffered.slice(i + 1);
    if (command === 'arm') {
      binding.generationArm(pipeline, Buffer.from(arg2, 'base64'), Number(arg));
      say({ armed: true });
    } else if (command === 'sbwrite') {
      binding.superblockWrite(pipeline, Buffer.from(arg2, 'base64'), Number(arg), Buffer.from(arg4, 'base64'), Number(arg3)).then(
        (written) => say({ sbwrite: written }),
        (error) => say({ sbwrite: 'error ' + error.code }),
      );
    } else if (command === 'take') {
      say({ take: binding.generationTake(pipeline, true) });
    } else if (command === 'stall') {
      binding.setSuspended(pipeline, true);
      setTimeout(() => binding.setSuspended(pipeline, false), Number(arg));
      say({ stalled: true });
    } else if (command === 'ask') {
      say({ suspendedWaits: binding.pipelineCounters(pipeline).suspendedWaits });
    }
  }
});
process.stdin.on('end', () => {
  binding.setSuspended(pipeline, false);
  binding.frontendStop(pipeline);
  binding.pipelineDestroy(pipeline);
  binding.diskClose(disk);
  process.exit(0);
});
`;

interface StallingDisk {
  /** The FUSE volume: open it with diskOpen like any backing device (its size: diskInfo). */
  path: string;
  /** The sparse file the child's pipeline writes to. */
  backingFile: string;
  /** The child's pipeline: generationArm, superblockWrite with a successor, generationTake(peek). */
  arm(offsetBytes: number, image: Buffer): Promise<void>;
  superblockWrite(offsetBytes: number, image: Buffer, successorOffsetBytes: number, successor: Buffer): Promise<number | string>;
  generationPeek(): Promise<string>;
  /** Suspends the volume's I/O; the child resumes it after `ms`. */
  stall(ms: number): Promise<void>;
  /** How many requests have waited in the suspended data plane so far. */
  suspendedWaits(): Promise<number>;
  stop(): Promise<void>;
}

async function startStallingDisk(tag: string): Promise<StallingDisk> {
  const backing: SparseFile = await makeSparseFile(DISK_BYTES, tag);
  const dir = makeTempSubdir(tag);
  const mountPath = path.join(dir, 'volume');
  fs.writeFileSync(mountPath, '', { mode: 0o600 });
  const layout = computeLayout(DISK_BYTES, GRANULARITY_BYTES);
  const child: ChildProcess = spawn(
    process.execPath,
    ['-e', STALL_CHILD, path.join(REPO_ROOT, 'dist', 'src', 'native.js'), JSON.stringify({ file: backing.file, mountPath, layout: pipelineLayout(layout) })],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let stdout = '';
  let stderr = '';
  let exited: string | undefined;
  const waiters: (() => void)[] = [];
  child.stdin!.on('error', () => undefined);
  child.stdout!.setEncoding('utf8').on('data', (s: string) => {
    stdout += s;
    waiters.splice(0).forEach((w) => w());
  });
  child.stderr!.setEncoding('utf8').on('data', (s: string) => {
    if (stderr.length < 16384) stderr += s;
  });
  const exit = new Promise<void>((resolve) =>
    child.on('exit', (code, signal) => {
      exited = signal !== null ? `signal ${signal}` : `exit code ${code}`;
      waiters.splice(0).forEach((w) => w());
      resolve();
    }),
  );
  const cleanup = registerCleanup(
    `stalling disk child ${child.pid} serving ${mountPath}`,
    async () => {
      if (exited === undefined) {
        child.stdin!.end();
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exit;
        clearTimeout(timer);
      }
      if (mountPoints().includes(mountPath)) binding.unmount(mountPath, true);
      await backing.remove();
    },
    () => {
      if (exited === undefined) child.kill('SIGKILL');
      if (mountPoints().includes(mountPath)) binding.unmount(mountPath, true);
      fs.rmSync(backing.file, { force: true });
    },
  );
  const nextLine = async (timeoutMs = 10_000): Promise<Record<string, unknown>> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = stdout.indexOf('\n');
      if (i >= 0) {
        const line = stdout.slice(0, i);
        stdout = stdout.slice(i + 1);
        return JSON.parse(line) as Record<string, unknown>;
      }
      if (exited !== undefined) throw new Error(`the stalling-disk child ended (${exited}); stderr: ${stderr}`);
      const leftMs = deadline - Date.now();
      if (leftMs <= 0) throw new Error(`the stalling-disk child said nothing within ${timeoutMs} ms; stderr: ${stderr}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, leftMs);
        waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  };
  await nextLine();
  return {
    path: mountPath,
    backingFile: backing.file,
    arm: async (offsetBytes, image) => {
      child.stdin!.write(`arm ${offsetBytes} ${image.toString('base64')}\n`);
      await nextLine();
    },
    superblockWrite: async (offsetBytes, image, successorOffsetBytes, successor) => {
      child.stdin!.write(`sbwrite ${offsetBytes} ${image.toString('base64')} ${successorOffsetBytes} ${successor.toString('base64')}\n`);
      return (await nextLine()).sbwrite as number | string;
    },
    generationPeek: async () => {
      child.stdin!.write('take\n');
      return (await nextLine()).take as string;
    },
    stall: async (ms) => {
      child.stdin!.write(`stall ${ms}\n`);
      await nextLine();
    },
    suspendedWaits: async () => {
      child.stdin!.write('ask\n');
      return (await nextLine()).suspendedWaits as number;
    },
    stop: () => cleanup.run(),
  };
}

// ---- a peer on the data link, driven by hand (native/frame.h) ----------------------------------

const FRAME_MAGIC = 0x3144524e;
const HEADER_BYTES = 48;
const T_BARRIER = 4;
const T_ACK_WRITE = 6;
const T_BARRIER_ACK = 7;
const T_HELLO = 13;

function encodeHeader(type: number, seq = 0n, epoch = 0n, requestId = 0): Buffer {
  const h = Buffer.alloc(HEADER_BYTES);
  h.writeUInt32LE(FRAME_MAGIC, 0);
  h.writeUInt16LE(type, 4);
  h.writeBigUInt64LE(seq, 8);
  h.writeBigUInt64LE(epoch, 16);
  h.writeUInt32LE(requestId, 40);
  h.writeUInt32LE(binding.crc32c(h.subarray(0, 44)), 44);
  return h;
}

/** answers: acks every frame; silent: sends HELLO, then reads and answers nothing; mute: not even HELLO. */
type PeerMode = 'answers' | 'silent' | 'mute';

interface Peer {
  /** The peer's socket: destroy() it to hang up. */
  socket: net.Socket;
  framesSeen(): number;
  close(): void;
}

/**
 * A TCP connection whose one end goes to the pipeline as its source link.
 * The peer sends HELLO; then it either answers every frame (ACK_WRITE,
 * BARRIER_ACK) or reads nothing at all.
 */
async function attachSource(pipeline: PipelineHandle, mode: PeerMode): Promise<Peer> {
  const server = net.createServer({ pauseOnConnect: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  try {
    const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
    const peer = net.connect({ host: '127.0.0.1', port: (server.address() as net.AddressInfo).port });
    peer.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      peer.once('connect', () => resolve());
      peer.once('error', reject);
    });
    const ours = await accepted;
    ours.on('error', () => undefined);
    const fd = (ours as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (typeof fd !== 'number' || fd < 0) throw new Error('the accepted socket has no file descriptor');
    const options: LinkAttachOptions = { mode: 'source', sendHelloFirst: false, protocol: 'C', maxLagBytes: 64 * MiB, maxLagMs: 60_000 };
    try {
      binding.linkAttach(pipeline, fd, options);
    } finally {
      ours.destroy();
    }
    let frames = 0;
    if (mode === 'answers') {
      let buffered = Buffer.alloc(0);
      peer.on('data', (chunk: Buffer) => {
        buffered = Buffer.concat([buffered, chunk]);
        while (buffered.length >= HEADER_BYTES) {
          const type = buffered.readUInt16LE(4);
          const length = type === 1 || type === 8 ? buffered.readUInt32LE(32) : 0;
          if (buffered.length < HEADER_BYTES + length) break;
          const seq = buffered.readBigUInt64LE(8);
          const epoch = buffered.readBigUInt64LE(16);
          const requestId = buffered.readUInt32LE(40);
          buffered = buffered.subarray(HEADER_BYTES + length);
          frames++;
          if (type === T_BARRIER) peer.write(encodeHeader(T_BARRIER_ACK, seq, epoch, requestId));
          else if (type !== T_HELLO) peer.write(encodeHeader(T_ACK_WRITE, seq, epoch, requestId));
        }
      });
    } else {
      peer.pause(); // reads nothing: what the pipeline sends stays in the socket buffers
    }
    if (mode !== 'mute') peer.write(encodeHeader(T_HELLO));
    return { socket: peer, framesSeen: () => frames, close: () => peer.destroy() };
  } finally {
    server.close();
  }
}

async function until(what: string, predicate: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

// ---- the tests --------------------------------------------------------------------------------

describeIntegration('native async metadata calls on a loop disk', ['root', 'loop'], () => {
  const layout = computeLayout(DISK_BYTES, GRANULARITY_BYTES);
  let loop: LoopDisk;
  let disk: DiskHandle;
  let pipeline: PipelineHandle | null = null;

  beforeAll(async () => {
    loop = await makeLoopDisk(DISK_BYTES, 'nasync', { directIo: true });
    disk = binding.diskOpen(loop.device, false);
  });

  afterEach(() => {
    if (pipeline !== null) binding.pipelineDestroy(pipeline);
    pipeline = null;
  });

  afterAll(async () => {
    if (disk) binding.diskClose(disk);
    await loop?.detach();
  });

  test('each call resolves and its bytes are on the disk: superblock slots, bitmap, activity log; the flush counts', async () => {
    const p = (pipeline = createPipeline(disk, DISK_BYTES));
    const slot0 = randomBlock();
    const slot1 = randomBlock();
    await expect(binding.superblockWrite(p, slot0, layout.superblockOffsetBytes)).resolves.toBe(0);
    await expect(binding.superblockWrite(p, slot1, layout.superblockOffsetBytes + BLOCK_BYTES)).resolves.toBe(0);
    expect(binding.diskRead(disk, layout.superblockOffsetBytes, BLOCK_BYTES).equals(slot0)).toBe(true);
    expect(binding.diskRead(disk, layout.superblockOffsetBytes + BLOCK_BYTES, BLOCK_BYTES).equals(slot1)).toBe(true);

    const words = Buffer.alloc(binding.bitmapGet(p).length);
    words[0] = 0b1001;
    words[words.length - 1] = 0x80;
    binding.bitmapSet(p, 'replace', words);
    const bitmapBlocks = Math.ceil(words.length / BLOCK_BYTES);
    await expect(binding.bitmapPersist(p, true)).resolves.toBe(bitmapBlocks * BLOCK_BYTES);
    expect(binding.diskRead(disk, layout.bitmapOffsetBytes, bitmapBlocks * BLOCK_BYTES).subarray(0, words.length).equals(binding.bitmapGet(p))).toBe(true);
    await expect(binding.bitmapPersist(p, true)).resolves.toBe(0); // nothing changed since

    // The activity log's area starts zeroed: after the reset exactly one transaction is there, naming no extent.
    const transactions0 = binding.pipelineCounters(p).activityLogTransactions;
    await expect(binding.activityLogReset(p)).resolves.toBeUndefined();
    expect(binding.pipelineCounters(p).activityLogTransactions).toBe(transactions0 + 1);
    const area = binding.diskRead(disk, layout.activityLogOffsetBytes, layout.activityLogSizeBytes);
    const found: { magic: number; extents: number; crcOk: boolean }[] = [];
    for (let at = 0; at < area.length; at += BLOCK_BYTES) {
      const tx = area.subarray(at, at + BLOCK_BYTES);
      if (tx.readUInt32LE(0) === 0) continue;
      found.push({ magic: tx.readUInt32LE(0), extents: tx.readUInt32LE(16), crcOk: binding.crc32c(tx.subarray(0, BLOCK_BYTES - 4)) === tx.readUInt32LE(BLOCK_BYTES - 4) });
    }
    expect(found).toEqual([{ magic: 0x4c41524e, extents: 0, crcOk: true }]);

    const flushes0 = binding.pipelineCounters(p).flushes;
    await expect(binding.pipelineFlush(p)).resolves.toBeUndefined();
    expect(binding.pipelineCounters(p).flushes).toBe(flushes0 + 1);
  });

  test('a superblock slot over the data area or past the disk is refused before any job starts', () => {
    const p = (pipeline = createPipeline(disk, DISK_BYTES));
    for (const offset of [0, layout.dataSizeBytes - BLOCK_BYTES, DISK_BYTES, layout.superblockOffsetBytes + 512]) {
      expect(() => binding.superblockWrite(p, randomBlock(), offset)).toThrow(/superblockWrite: the superblock image's offset \d+ is not a block-aligned slot/);
    }
    expect(() => binding.superblockWrite(p, Buffer.alloc(512), layout.superblockOffsetBytes)).toThrow(/4096-byte/);
  });

  test('disk jobs complete in submission order, flushes in theirs, and a flush settles after the disk jobs submitted before it', async () => {
    const p = (pipeline = createPipeline(disk, DISK_BYTES));
    const order: string[] = [];
    const all: Promise<unknown>[] = [];
    for (let round = 0; round < 5; round++) {
      binding.bitmapSet(p, 'merge', Buffer.alloc(binding.bitmapGet(p).length, round + 1));
      all.push(binding.superblockWrite(p, randomBlock(), layout.superblockOffsetBytes).then(() => order.push(`sb${round}`)));
      all.push(binding.bitmapPersist(p, false).then(() => order.push(`bm${round}`)));
      all.push(binding.pipelineFlush(p).then(() => order.push(`flush${round}`)));
    }
    await Promise.all(all);
    // Two lanes (disk jobs; flushes): a flush may settle after later disk jobs, never before earlier ones.
    expect(order.filter((x) => !x.startsWith('flush'))).toEqual([0, 1, 2, 3, 4].flatMap((r) => [`sb${r}`, `bm${r}`]));
    expect(order.filter((x) => x.startsWith('flush'))).toEqual([0, 1, 2, 3, 4].map((r) => `flush${r}`));
    for (let round = 0; round < 5; round++) {
      expect(order.indexOf(`flush${round}`)).toBeGreaterThan(order.indexOf(`bm${round}`));
    }
  });

  test(`at most ${METADATA_JOBS_MAX} jobs outstanding: one more is rejected with EAGAIN, and the rest still resolve`, async () => {
    const p = (pipeline = createPipeline(disk, DISK_BYTES));
    // Nothing settles before this synchronous loop ends: completions need the JS thread.
    const jobs = Array.from({ length: METADATA_JOBS_MAX + 3 }, () => watch(binding.pipelineFlush(p)));
    const outcomes = await Promise.all(jobs.map((j) => j.done));
    expect(outcomes.slice(0, METADATA_JOBS_MAX).every((o) => o.status === 'fulfilled')).toBe(true);
    const refused = outcomes.slice(METADATA_JOBS_MAX);
    expect(refused.map((o) => o.status === 'rejected' && o.code)).toEqual(['EAGAIN', 'EAGAIN', 'EAGAIN']);
    expect(refused[0].status === 'rejected' && refused[0].message).toMatch(new RegExp(`${METADATA_JOBS_MAX} metadata jobs are outstanding already`));
    await expect(binding.pipelineFlush(p)).resolves.toBeUndefined(); // room again
  });

  test('drain without a link rejects ENOTCONN; with a peer that answers it resolves with nothing in flight', async () => {
    const p = (pipeline = createPipeline(disk, DISK_BYTES));
    await expect(binding.drain(p, 1000)).rejects.toMatchObject({ code: 'ENOTCONN', errno: 107 });
    expect(() => binding.drain(p, 25 * 3600 * 1000)).toThrow(/drain: timeoutMs 90000000 is over the limit/);
    const peer = await attachSource(p, 'answers');
    try {
      await expect(binding.drain(p, 5000)).resolves.toBeUndefined();
      const c = binding.pipelineCounters(p);
      expect({ framesInFlight: c.framesInFlight, lagBytes: c.lagBytes, linkFailed: c.linkFailed }).toEqual({ framesInFlight: 0, lagBytes: 0, linkFailed: false });
      expect(peer.framesSeen()).toBeGreaterThanOrEqual(1); // the barrier reached the peer
      await expect(binding.pipelineFlush(p)).resolves.toBeUndefined();
    } finally {
      binding.linkDetach(p, 'test done');
      peer.close();
    }
  });

  test('a peer that reads nothing (or never says HELLO): drain rejects ETIMEDOUT at its deadline and the link stays up', async () => {
    const p = (pipeline = createPipeline(disk, DISK_BYTES));
    const peer = await attachSource(p, 'silent');
    try {
      const started = Date.now();
      await expect(binding.drain(p, 700)).rejects.toMatchObject({ code: 'ETIMEDOUT' });
      const elapsedMs = Date.now() - started;
      expect(elapsedMs).toBeGreaterThanOrEqual(650);
      expect(elapsedMs).toBeLessThan(3000);
      const c = binding.pipelineCounters(p);
      expect({ linkAttached: c.linkAttached, linkFailed: c.linkFailed }).toEqual({ linkAttached: true, linkFailed: false });
      expect(c.framesInFlight).toBeGreaterThanOrEqual(1); // the barrier nobody acknowledged
    } finally {
      binding.linkDetach(p, 'test done');
      peer.close();
    }
    // A peer that never even sends HELLO: the barrier cannot be queued; the deadline still holds.
    const mute = await attachSource(p, 'mute');
    try {
      const started = Date.now();
      await expect(binding.drain(p, 400)).rejects.toMatchObject({ code: 'ETIMEDOUT' });
      expect(Date.now() - started).toBeGreaterThanOrEqual(350);
      expect(Date.now() - started).toBeLessThan(3000);
      expect(binding.pipelineCounters(p).framesInFlight).toBe(0); // nothing was queued
    } finally {
      binding.linkDetach(p, 'test done');
      mute.close();
    }
  });

  test('40 rounds of jobs racing attach, hang-up, detach and destroy: every job settles, each with an outcome it may have', async () => {
    const seen = new Map<string, number>();
    const allowed: Record<string, string[]> = {
      superblock: ['ok', 'ECANCELED'],
      bitmap: ['ok', 'ECANCELED'],
      flush: ['ok', 'ENOTCONN', 'ECANCELED'],
      drain: ['ok', 'ENOTCONN', 'ETIMEDOUT', 'ECANCELED'],
    };
    const problems: string[] = [];
    for (let round = 0; round < 40; round++) {
      const p = createPipeline(disk, DISK_BYTES);
      const peer = await attachSource(p, round % 2 === 0 ? 'answers' : 'silent');
      const jobs: [string, ReturnType<typeof watch>][] = [];
      for (let i = 0; i < 6; i++) {
        jobs.push(['superblock', watch(binding.superblockWrite(p, randomBlock(), layout.superblockOffsetBytes + (i % 2) * BLOCK_BYTES))]);
        jobs.push(['bitmap', watch(binding.bitmapPersist(p, i % 2 === 0))]);
        jobs.push(['flush', watch(binding.pipelineFlush(p))]);
        jobs.push(['drain', watch(binding.drain(p, 50))]);
      }
      // The ending races the jobs: at once, after a turn of the loop, or after some of them settled.
      if (round % 4 === 1) await new Promise((r) => setImmediate(r));
      if (round % 4 === 2) await new Promise((r) => setTimeout(r, 5));
      if (round % 3 === 0) peer.socket.destroy();
      if (round % 5 === 0) binding.linkDetach(p, 'race');
      binding.pipelineDestroy(p);
      peer.close();
      for (const [kind, job] of jobs) {
        const outcome = await job.done;
        const name = outcome.status === 'fulfilled' ? 'ok' : outcome.code;
        seen.set(`${kind} ${name}`, (seen.get(`${kind} ${name}`) ?? 0) + 1);
        if (!allowed[kind].includes(name)) problems.push(`round ${round}: ${kind} settled ${name}`);
      }
    }
    expect(problems).toEqual([]);
    // The races did happen both ways: some of each kind ran, some were cut off.
    expect(seen.get('superblock ok')).toBeGreaterThan(0);
    expect(seen.get('flush ok')).toBeGreaterThan(0);
    expect((seen.get('drain ENOTCONN') ?? 0) + (seen.get('drain ECANCELED') ?? 0)).toBeGreaterThan(0);
  }, 120_000);

  test('a flush or drain waiting for a silent peer settles ENOTCONN promptly on linkDetach, on a hang-up, and on pipelineDestroy', async () => {
    const p = createPipeline(disk, DISK_BYTES);
    pipeline = p;
    // linkDetach
    let peer = await attachSource(p, 'silent');
    const flush = watch(binding.pipelineFlush(p));
    const drain = watch(binding.drain(p, 60_000));
    await new Promise((r) => setTimeout(r, 300));
    expect([flush.outcome, drain.outcome]).toEqual([undefined, undefined]); // both wait for the peer
    let detachedAt = Date.now();
    binding.linkDetach(p, 'operator');
    for (const job of [flush, drain]) {
      const outcome = await job.done;
      expect(outcome).toMatchObject({ status: 'rejected', code: 'ENOTCONN' });
      expect(Date.now() - detachedAt).toBeLessThan(1000);
    }
    expect(flush.outcome?.status === 'rejected' && flush.outcome.message).toMatch(/local disk is flushed, but the data link failed or was detached/);
    peer.close();

    // the peer hangs up
    peer = await attachSource(p, 'silent');
    const drain2 = watch(binding.drain(p, 60_000));
    await new Promise((r) => setTimeout(r, 200));
    expect(drain2.outcome).toBeUndefined();
    detachedAt = Date.now();
    peer.socket.destroy();
    expect(await drain2.done).toMatchObject({ status: 'rejected', code: 'ENOTCONN' });
    expect(Date.now() - detachedAt).toBeLessThan(1000);
    binding.linkDetach(p, 'test');

    // pipelineDestroy
    peer = await attachSource(p, 'silent');
    const drain3 = watch(binding.drain(p, 60_000));
    await new Promise((r) => setTimeout(r, 200));
    expect(drain3.outcome).toBeUndefined();
    binding.pipelineDestroy(p);
    pipeline = null;
    expect(await drain3.done).toMatchObject({ status: 'rejected', code: 'ENOTCONN' });
    peer.close();
  });
});

/** Submits 30 jobs of every kind and exits `delayMs` later, with no pipelineDestroy. */
const EXIT_CHILD = `
const { binding } = require(process.argv[1]);
const options = JSON.parse(process.argv[2]);
const disk = binding.diskOpen(options.file, false);
const pipeline = binding.pipelineCreate(disk, { ...options.layout, onEvent: () => {} });
binding.bitmapSet(pipeline, 'all');
for (let i = 0; i < 30; i++) {
  const job = i % 3 === 0 ? binding.bitmapPersist(pipeline, true)
    : i % 3 === 1 ? binding.superblockWrite(pipeline, Buffer.alloc(4096, i), options.superblockOffsetBytes)
    : binding.pipelineFlush(pipeline);
  job.catch(() => {});
}
if (options.delayMs === 0) process.exit(0);
setTimeout(() => process.exit(0), options.delayMs);
`;

describeIntegration('native async metadata calls when the process exits', ['root'], () => {
  test('a process that exits with metadata jobs pending or finishing ends cleanly (no abort, no crash)', async () => {
    const file = await makeSparseFile(DISK_BYTES, 'nexit');
    try {
      const layout = computeLayout(DISK_BYTES, GRANULARITY_BYTES);
      const ends: string[] = [];
      for (const delayMs of [0, 0, 1, 2, 3, 5, 10, 0]) {
        const options = { file: file.file, layout: pipelineLayout(layout), superblockOffsetBytes: layout.superblockOffsetBytes, delayMs };
        const run = spawnSync(process.execPath, ['-e', EXIT_CHILD, path.join(REPO_ROOT, 'dist', 'src', 'native.js'), JSON.stringify(options)], {
          encoding: 'utf8',
          timeout: 20_000,
        });
        ends.push(`delay ${delayMs}: ${run.signal ?? run.status}${run.stderr ? ` (${run.stderr.trim()})` : ''}`);
      }
      expect(ends).toEqual([0, 0, 1, 2, 3, 5, 10, 0].map((d) => `delay ${d}: 0`));
    } finally {
      await file.remove();
    }
  }, 120_000);
});

describeIntegration('native async metadata calls on a backing disk that stalls', ['root', 'fuse'], () => {
  let stalling: StallingDisk;
  let disk: DiskHandle | null = null;
  let sizeBytes = 0;
  let layout: ReturnType<typeof computeLayout>;

  beforeAll(async () => {
    stalling = await startStallingDisk('nstall');
    disk = binding.diskOpen(stalling.path, false);
    sizeBytes = binding.diskInfo(disk).sizeBytes;
    layout = computeLayout(sizeBytes, GRANULARITY_BYTES);
  }, 30_000);

  afterAll(async () => {
    if (disk !== null) binding.diskClose(disk);
    await stalling?.stop();
  }, 30_000);

  test('writes stalled for 10 s: the event loop keeps running (TCP pings keep their pace), then every call resolves', async () => {
    const p = createPipeline(disk!, sizeBytes);
    // A ping over real TCP every 100 ms, answered by an echo server in this process.
    const server = net.createServer((s) => s.pipe(s));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    const client = net.connect({ host: '127.0.0.1', port: (server.address() as net.AddressInfo).port });
    await new Promise<void>((resolve) => client.once('connect', () => resolve()));
    const answeredAt: number[] = [];
    client.on('data', (chunk: Buffer) => {
      for (let i = 0; i < chunk.length; i++) answeredAt.push(Date.now());
    });
    const pinger = setInterval(() => client.write('p'), 100);
    try {
      const STALL_MS = 10_000;
      await stalling.stall(STALL_MS);
      const waits0 = await stalling.suspendedWaits();
      const stallStarted = Date.now();
      const image = randomBlock();
      binding.bitmapSet(p, 'all');
      const jobs = {
        superblock: watch(binding.superblockWrite(p, image, layout.superblockOffsetBytes)),
        bitmap: watch(binding.bitmapPersist(p, true)),
        reset: watch(binding.activityLogReset(p)),
        flush: watch(binding.pipelineFlush(p)),
      };
      await until('the superblock write to wait in the stalled disk', async () => (await stalling.suspendedWaits()) > waits0);
      await new Promise((r) => setTimeout(r, STALL_MS / 2));
      expect(Object.values(jobs).map((j) => j.outcome)).toEqual([undefined, undefined, undefined, undefined]);
      const outcomes = await Promise.all(Object.values(jobs).map((j) => j.done));
      const stalledMs = Date.now() - stallStarted;
      expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', 'fulfilled', 'fulfilled', 'fulfilled']);
      expect(stalledMs).toBeGreaterThanOrEqual(STALL_MS - 1000);

      // The pings during the stall: about one per 100 ms, never a gap the control link's timeout would notice.
      const during = answeredAt.filter((t) => t >= stallStarted && t <= stallStarted + stalledMs);
      expect(during.length).toBeGreaterThan((stalledMs / 100) * 0.7);
      const gaps = during.slice(1).map((t, i) => t - during[i]);
      expect(Math.max(...gaps)).toBeLessThan(1000);

      expect(binding.diskRead(disk!, layout.superblockOffsetBytes, BLOCK_BYTES).equals(image)).toBe(true);
    } finally {
      clearInterval(pinger);
      client.destroy();
      server.close();
      binding.pipelineDestroy(p);
    }
  }, 60_000);

  test('pipelineDestroy with jobs pending: the disk write under way finishes, the queued ones and a flush behind them reject ECANCELED', async () => {
    const p = createPipeline(disk!, sizeBytes);
    await stalling.stall(2000);
    const waits0 = await stalling.suspendedWaits();
    const image = randomBlock();
    const running = watch(binding.superblockWrite(p, image, layout.superblockOffsetBytes + BLOCK_BYTES));
    await until('the superblock write to wait in the stalled disk', async () => (await stalling.suspendedWaits()) > waits0);
    const queued = [watch(binding.bitmapPersist(p, true)), watch(binding.activityLogReset(p)), watch(binding.pipelineFlush(p))];
    binding.pipelineDestroy(p); // waits for the write under way: the child resumes the disk on its own
    expect(await running.done).toMatchObject({ status: 'fulfilled' });
    const outcomes = await Promise.all(queued.map((j) => j.done));
    expect(outcomes.map((o) => o.status === 'rejected' && o.code)).toEqual(['ECANCELED', 'ECANCELED', 'ECANCELED']);
    expect(outcomes[0].status === 'rejected' && outcomes[0].message).toMatch(/the pipeline was destroyed before the job ran/);
    expect(binding.diskRead(disk!, layout.superblockOffsetBytes + BLOCK_BYTES, BLOCK_BYTES).equals(image)).toBe(true);
  }, 30_000);

  test('the armed generation: a superblock write replaces it with its successor; a write without a peer writes that successor; a later superblock write finds it started and writes nothing (1)', async () => {
    // The child's own pipeline (over the sparse file behind the FUSE volume) with its own layout.
    const child = computeLayout(DISK_BYTES, GRANULARITY_BYTES);
    const slot0 = child.superblockOffsetBytes;
    const slot1 = slot0 + BLOCK_BYTES;
    const readSlot = (offsetBytes: number): Buffer => {
      const fd = fs.openSync(stalling.backingFile, 'r');
      try {
        const out = Buffer.alloc(BLOCK_BYTES);
        expect(fs.readSync(fd, out, 0, BLOCK_BYTES, offsetBytes)).toBe(BLOCK_BYTES);
        return out;
      } finally {
        fs.closeSync(fd);
      }
    };
    const [armed, written, successor, later, laterSuccessor] = [randomBlock(), randomBlock(), randomBlock(), randomBlock(), randomBlock()];

    await stalling.arm(slot0, armed);
    expect(await stalling.generationPeek()).toBe('armed');
    await expect(stalling.superblockWrite(slot1, written, slot0, successor)).resolves.toBe(0);
    expect(readSlot(slot1).equals(written)).toBe(true);
    expect(readSlot(slot0).equals(armed)).toBe(false); // armed, not written yet
    expect(await stalling.generationPeek()).toBe('armed');

    // A write with no peer starts the generation: what is written is the successor, never the stale armed image.
    const fd = fs.openSync(stalling.path, 'r+');
    try {
      fs.writeSync(fd, randomBlock(), 0, BLOCK_BYTES, 0);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    expect(await stalling.generationPeek()).toBe('written');
    expect(readSlot(slot0).equals(successor)).toBe(true);

    // The store's next write comes too late: nothing is written, and it says so.
    await expect(stalling.superblockWrite(slot1, later, slot0, laterSuccessor)).resolves.toBe(1);
    expect(readSlot(slot1).equals(written)).toBe(true);
    expect(readSlot(slot0).equals(successor)).toBe(true);
  }, 60_000);
});
