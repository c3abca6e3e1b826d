/**
 * Fuzz target 1: the data-frame decoder, through the native applier over a
 * real TCP socket. The target is a pipeline over a sparse backing file in a
 * child process (as data-link-frames.test.ts does for frames that may crash
 * it), attached as the daemon attaches it; this test is the source: it
 * answers the HELLO, then sends 1-4 frames built valid (WRITE, DISCARD,
 * ZEROES, BARRIER, RS_DATA, other types) and then mutated: a header field set
 * to a boundary value with the header crc sealed again or not, bytes flipped,
 * inserted, deleted, the frame cut short, garbage before or after.
 *
 * A model of the target's checks (native/frame.h frame_check_header, then
 * type, sequence, resync gate, payload crc: the order of Applier::receive_loop)
 * walks the same bytes and says, for each case, which frames are applied and
 * how the link ends. Property, case by case: the target ends the link as the
 * model says, with one counted error of the right kind (checksumErrors or
 * protocolErrors) and one link-lost event naming the reason, or "closed by
 * the peer" after a stream that was cut short; bytesApplied counts exactly
 * the applied payloads; the whole backing file (data area and metadata)
 * equals the model's copy, so no refused frame changed a byte; a stream with
 * nothing wrong gets exactly its acks; within a bound (no hang); the process
 * lives; its peak resident and virtual memory stay flat, whatever the length
 * fields say.
 * Canaries: "no frame is ever refused" and "every frame is refused" must fail.
 */
import { ChildProcess, spawn } from 'child_process';
import * as fc from 'fast-check';
import * as fs from 'fs';
import * as net from 'net';
import * as path from 'path';
import { computeLayout } from '../../src/metadata';
import { binding, NativeCounters } from '../../src/native';
import { fieldOffset, readFrameLayout } from '../harness/frame-layout';
import { makeSparseFile, SparseFile } from '../harness/loop';
import { pipelineLayout } from '../harness/pipeline';
import { describeIntegration, REPO_ROOT } from '../harness/prereq';
import { Mutation, applyMutations, interestingU32, interestingU64, mutation } from './mutate';
import { expectCanaryFails, fuzz, fuzzCases, fuzzTimeLimitMs, jestTimeoutMs } from './fuzz-run';

const CI_CASES = 240;
const CI_TIME_LIMIT_MS = 10_000;
/** One case is a few frames of at most 1 MiB over loopback and an 8 MiB comparison: far below this. */
const CASE_TIMEOUT_MS = 5000;
/** Peak resident memory may rise this much over the warmed-up baseline (the 64 receive buffers are allocated per link). */
const HWM_GROWTH_MAX_BYTES = 96 * 1024 * 1024;
/**
 * Peak virtual memory likewise, with room for malloc's per-thread arenas
 * (64 MiB each) as link threads come and go: an allocation sized by a 4 GiB
 * length field would pass it even untouched.
 */
const VM_PEAK_GROWTH_MAX_BYTES = 2048 * 1024 * 1024;
/**
 * Targets fuzzed at once, each a process with its own file: detaching a link
 * waits for io_destroy (tens of ms, idle), so lanes overlap the waits.
 * NRAID_FUZZ_LANES changes it for long runs (a run of lanes waits for its slowest).
 */
const LANES = lanesFromEnv(8);

function lanesFromEnv(fallback: number): number {
  const raw = process.env.NRAID_FUZZ_LANES;
  if (raw === undefined || raw === '') return fallback;
  const lanes = Number(raw);
  if (!Number.isInteger(lanes) || lanes < 1 || lanes > 64) throw new Error(`NRAID_FUZZ_LANES: expected an integer from 1 to 64, found '${raw}'`);
  return lanes;
}

const KiB = 1024;
const MiB = 1024 * KiB;
const FILE_BYTES = 8 * MiB;
const BLOCK = 4096;

// ---- frames (native/frame.h) --------------------------------------------------------------------

const FRAME = readFrameLayout();
const T = FRAME.types;
const HEADER_BYTES = FRAME.headerBytes;
const O = Object.fromEntries(FRAME.fields.map((f) => [f.name, f.offset])) as Record<string, number>;
const HEADER_CRC_AT = fieldOffset(FRAME, 'headerCrc');
const PAYLOAD_TYPES = new Set(FRAME.typesWithPayload.map((name) => T[name]));
/**
 * READ_REQUEST and READ_REPLY: a Diskless Primary reads through its peer (on-io-error = detach).
 * OV_REQUEST: a digest request (checksum resync, verify), answered by OV_REPLY.
 */
const RANGED_TYPES = new Set([T.WRITE, T.RS_DATA, T.DISCARD, T.ZEROES, T.READ_REQUEST, T.READ_REPLY, T.OV_REQUEST]);
/** What the target takes from the source, in sequence. */
const ORDERED_TYPES = new Set([T.WRITE, T.DISCARD, T.ZEROES, T.BARRIER, T.RS_DATA, T.READ_REQUEST, T.OV_REQUEST]);
/** OV_REPLY: one 8-byte digest per 4 KiB block of at most one request (native/limits.h kDigestReplyBytesMax). */
const DIGEST_BYTES = 8;
const DIGEST_REPLY_BYTES_MAX = (FRAME.payloadBytesMax / BLOCK) * DIGEST_BYTES;
/** The header's fields as mutation targets (the crc last: set, it is never sealed over). */
const HEADER_FIELDS = FRAME.fields.map((f) => ({ offset: f.offset, bytes: f.bytes as 2 | 4 | 8 }));

interface Header {
  magic: number;
  type: number;
  flags: number;
  seq: bigint;
  epoch: bigint;
  offset: bigint;
  length: number;
  payloadCrc: number;
  requestId: number;
  headerCrc: number;
}

function decodeHeader(b: Buffer): Header {
  return {
    magic: b.readUInt32LE(O.magic),
    type: b.readUInt16LE(O.type),
    flags: b.readUInt16LE(O.flags),
    seq: b.readBigUInt64LE(O.seq),
    epoch: b.readBigUInt64LE(O.epoch),
    offset: b.readBigUInt64LE(O.offset),
    length: b.readUInt32LE(O.length),
    payloadCrc: b.readUInt32LE(O.payloadCrc),
    requestId: b.readUInt32LE(O.requestId),
    headerCrc: b.readUInt32LE(O.headerCrc),
  };
}

function seal(header: Buffer): void {
  header.writeUInt32LE(binding.crc32c(header.subarray(0, HEADER_CRC_AT)), HEADER_CRC_AT);
}

interface FrameSpec {
  type: number;
  flags: number;
  epoch: bigint;
  offsetBlocks: number;
  lengthBlocks: number;
  requestId: number;
  payloadSeed: number;
}

/** A payload of `bytes` from a seed (xorshift), never all zero: fast for 1 MiB. */
function payloadOf(bytes: number, seedValue: number): Buffer {
  const b = Buffer.allocUnsafeSlow(bytes); // its own ArrayBuffer, so the word view below is aligned
  const words = new Int32Array(b.buffer, 0, bytes >>> 2); // little-endian words on x86 and arm64
  let x = seedValue | 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x;
  }
  for (let i = bytes - (bytes % 4); i < bytes; i++) b[i] = i;
  if (bytes > 0) b[0] |= 1;
  return b;
}

function encodeFrame(spec: FrameSpec, seq: number): Buffer {
  const hasPayload = PAYLOAD_TYPES.has(spec.type);
  const lengthBytes = spec.lengthBlocks * BLOCK;
  const payload = hasPayload ? payloadOf(lengthBytes, spec.payloadSeed) : Buffer.alloc(0);
  const h = Buffer.alloc(HEADER_BYTES);
  h.writeUInt32LE(FRAME.magic, O.magic);
  h.writeUInt16LE(spec.type, O.type);
  h.writeUInt16LE(spec.flags, O.flags);
  h.writeBigUInt64LE(BigInt(seq), O.seq);
  h.writeBigUInt64LE(spec.epoch, O.epoch);
  h.writeBigUInt64LE(BigInt(spec.offsetBlocks * BLOCK), O.offset);
  h.writeUInt32LE(RANGED_TYPES.has(spec.type) ? lengthBytes : 0, O.length);
  h.writeUInt32LE(hasPayload ? binding.crc32c(payload) : 0, O.payloadCrc);
  h.writeUInt32LE(spec.requestId, O.requestId);
  seal(h);
  return Buffer.concat([h, payload]);
}

// ---- the model of the target ----------------------------------------------------------------------

type Reason = 'magic' | 'headerCrc' | 'type' | 'length' | 'range' | 'misaligned' | 'unexpectedType' | 'sequence' | 'resync' | 'payloadCrc' | 'eof';

const REASON_TEXT: Record<Reason, RegExp> = {
  magic: /frame rejected: bad magic/,
  headerCrc: /frame rejected: bad header checksum/,
  type: /frame rejected: unknown frame type/,
  length: /frame rejected: length over the limit/,
  range: /frame rejected: range outside the data area/,
  misaligned: /frame rejected: range not aligned to 4 KiB blocks/,
  unexpectedType: /frame rejected: type \d+ is not expected from the source/,
  sequence: /frame rejected: sequence \d+, expected \d+/,
  resync: /frame rejected: resync data arrived before the target recorded its resync state/,
  payloadCrc: /frame rejected: payload checksum mismatch/,
  eof: /data link closed by the peer/,
};
const CHECKSUM_REASONS = new Set<Reason>(['headerCrc', 'payloadCrc']);

interface Applied {
  type: number;
  seq: bigint;
  flags: number;
  offset: number;
  length: number;
  payload: Buffer | null;
}

interface Verdict {
  /** Frames the target takes, in order (a BARRIER too: it is acknowledged). */
  applied: Applied[];
  /** How the link ends once our side has sent everything and closed: a refusal, or end of stream. */
  end: Reason;
  /** The sequence number the next frame would need. */
  nextSeq: bigint;
}

function checkHeader(h: Header, raw: Buffer, dataSizeBytes: number): Reason | null {
  if (h.magic !== FRAME.magic) return 'magic';
  if (binding.crc32c(raw.subarray(0, HEADER_CRC_AT)) !== h.headerCrc) return 'headerCrc';
  if (h.type === 0 || h.type > FRAME.typeMax) return 'type';
  if (PAYLOAD_TYPES.has(h.type) && h.length > FRAME.payloadBytesMax) return 'length';
  // The reply must fit one frame.
  if ((h.type === T.READ_REQUEST || h.type === T.OV_REQUEST) && h.length > FRAME.payloadBytesMax) return 'length';
  const ranged = RANGED_TYPES.has(h.type);
  const size = BigInt(dataSizeBytes);
  if (
    h.type === T.OV_REPLY &&
    (h.length > DIGEST_REPLY_BYTES_MAX || h.length % DIGEST_BYTES !== 0 || h.offset % BigInt(BLOCK) !== 0n || h.offset > size ||
      BigInt((h.length / DIGEST_BYTES) * BLOCK) > size - h.offset)
  ) {
    return 'length';
  }
  if (ranged && (h.offset > size || BigInt(h.length) > size - h.offset)) return 'range';
  if (ranged && (h.offset % BigInt(BLOCK) !== 0n || h.length % BLOCK !== 0)) return 'misaligned';
  return null;
}

/** What Applier::receive_loop does with `stream` (after the HELLO exchange), the stream then closed by the source. */
function modelTarget(stream: Buffer, dataSizeBytes: number, resyncAllowed: boolean): Verdict {
  const applied: Applied[] = [];
  let at = 0;
  let expected = 1n;
  for (;;) {
    if (stream.length - at < HEADER_BYTES) return { applied, end: 'eof', nextSeq: expected };
    const raw = stream.subarray(at, at + HEADER_BYTES);
    const h = decodeHeader(raw);
    at += HEADER_BYTES;
    const bad = checkHeader(h, raw, dataSizeBytes);
    if (bad !== null) return { applied, end: bad, nextSeq: expected };
    if (!ORDERED_TYPES.has(h.type)) return { applied, end: 'unexpectedType', nextSeq: expected };
    if (h.seq !== expected) return { applied, end: 'sequence', nextSeq: expected };
    expected++;
    // A resync's zero frame (ZEROES with the resync flag) is resync data too.
    const resyncData = h.type === T.RS_DATA || (h.type === T.ZEROES && (h.flags & FRAME.flags.RESYNC) !== 0);
    if (resyncData && !resyncAllowed) return { applied, end: 'resync', nextSeq: expected };
    let payload: Buffer | null = null;
    if (PAYLOAD_TYPES.has(h.type)) {
      if (stream.length - at < h.length) return { applied, end: 'eof', nextSeq: expected };
      payload = stream.subarray(at, at + h.length);
      at += h.length;
      if (binding.crc32c(payload) !== h.payloadCrc) return { applied, end: 'payloadCrc', nextSeq: expected };
    }
    applied.push({ type: h.type, seq: h.seq, flags: h.flags, offset: Number(h.offset), length: h.length, payload });
  }
}

/** The backing file after `applied`: writes land, DISCARD and ZEROES read back as zeros (a punched hole, a zeroed range); reads change nothing. */
function applyToModel(model: Buffer, applied: readonly Applied[]): void {
  for (const a of applied) {
    if (a.payload !== null) a.payload.copy(model, a.offset);
    else if (a.type === T.DISCARD || a.type === T.ZEROES) model.fill(0, a.offset, a.offset + a.length);
  }
}

/** The acks a clean stream earns: ACK_RECV where asked (flag 1), ACK_WRITE for every applied range, BARRIER_ACK per barrier. */
function expectedAcks(applied: readonly Applied[]): string[] {
  const acks: string[] = [];
  for (const a of applied) {
    if (a.type === T.BARRIER) {
      acks.push(`${T.BARRIER_ACK}:${a.seq}`);
      continue;
    }
    if (a.type === T.READ_REQUEST) {
      acks.push(`${T.READ_REPLY}:${a.seq}`);
      continue;
    }
    if (a.type === T.OV_REQUEST) {
      acks.push(`${T.OV_REPLY}:${a.seq}`);
      continue;
    }
    if ((a.flags & FRAME.flags.WANT_RECV_ACK) !== 0) acks.push(`${T.ACK_RECV}:${a.seq}`);
    acks.push(`${T.ACK_WRITE}:${a.seq}`);
  }
  return acks.sort();
}

// ---- inputs -----------------------------------------------------------------------------------------

type FrameMutation =
  | { kind: 'none' }
  | { kind: 'field'; field: number; value: bigint; reseal: boolean }
  | { kind: 'bytes'; list: Mutation[] }
  | { kind: 'cut'; at: number };

interface CaseInput {
  resyncAllowed: boolean;
  frames: Array<{ spec: FrameSpec; mutation: FrameMutation }>;
  garbageBefore: Uint8Array | null;
  garbageAfter: Uint8Array | null;
}

function caseArb(dataBlocks: number): fc.Arbitrary<CaseInput> {
  const specArb: fc.Arbitrary<FrameSpec> = fc.record({
    type: fc.oneof(
      { weight: 6, arbitrary: fc.constant(T.WRITE) },
      { weight: 1, arbitrary: fc.constantFrom(T.DISCARD, T.ZEROES, T.BARRIER, T.RS_DATA, T.READ_REQUEST, T.OV_REQUEST) },
      { weight: 1, arbitrary: fc.oneof(fc.integer({ min: 0, max: FRAME.typeMax + 1 }), fc.integer({ min: 0, max: 0xffff })) },
    ),
    flags: fc.oneof({ weight: 4, arbitrary: fc.constantFrom(2, 3, 6, 7) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) }),
    epoch: fc.oneof(fc.constant(1n), interestingU64),
    offsetBlocks: fc.integer({ min: 0, max: dataBlocks - 1 }),
    lengthBlocks: fc.oneof(
      { weight: 8, arbitrary: fc.integer({ min: 0, max: 16 }) },
      { weight: 1, arbitrary: fc.constant(FRAME.payloadBytesMax / BLOCK) },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: FRAME.payloadBytesMax / BLOCK }) },
    ),
    requestId: fc.integer({ min: 0, max: 0xffffffff }),
    payloadSeed: fc.integer(),
  });
  const mutationArb: fc.Arbitrary<FrameMutation> = fc.oneof(
    { weight: 3, arbitrary: fc.constant({ kind: 'none' as const }) },
    {
      weight: 4,
      arbitrary: fc.record({
        kind: fc.constant('field' as const),
        field: fc.nat(HEADER_FIELDS.length - 1),
        value: fc.oneof(interestingU32.map((v) => BigInt(v)), interestingU64, fc.constantFrom(BigInt(FRAME.magic), 4096n, 100n, 1000n)),
        reseal: fc.boolean(),
      }),
    },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('bytes' as const), list: fc.array(mutation, { minLength: 1, maxLength: 3 }) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('cut' as const), at: fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }) }) },
  );
  return fc.record({
    resyncAllowed: fc.boolean(),
    frames: fc.array(fc.record({ spec: specArb, mutation: mutationArb }), { minLength: 1, maxLength: 4 }),
    garbageBefore: fc.oneof({ weight: 9, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 64 }) }),
    garbageAfter: fc.oneof({ weight: 9, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 64 }) }),
  });
}

function mutateFrame(frame: Buffer, m: FrameMutation): Buffer {
  switch (m.kind) {
    case 'none':
      return frame;
    case 'field': {
      const f = HEADER_FIELDS[m.field];
      const out = Buffer.from(frame);
      const value = m.value & ((1n << BigInt(f.bytes * 8)) - 1n);
      if (f.bytes === 2) out.writeUInt16LE(Number(value), f.offset);
      else if (f.bytes === 4) out.writeUInt32LE(Number(value), f.offset);
      else out.writeBigUInt64LE(value, f.offset);
      if (m.reseal && f.offset !== HEADER_CRC_AT) seal(out.subarray(0, HEADER_BYTES));
      return out;
    }
    case 'bytes':
      return applyMutations(frame, m.list);
    case 'cut':
      return frame.subarray(0, Math.floor(m.at * frame.length));
  }
}

function streamOf(input: CaseInput): Buffer {
  const parts: Buffer[] = [];
  if (input.garbageBefore !== null) parts.push(Buffer.from(input.garbageBefore));
  input.frames.forEach((f, i) => parts.push(mutateFrame(encodeFrame(f.spec, i + 1), f.mutation)));
  if (input.garbageAfter !== null) parts.push(Buffer.from(input.garbageAfter));
  return Buffer.concat(parts);
}

// ---- the target, in a child process ----------------------------------------------------------------

const TARGET_SCRIPT = `
const fs = require('fs');
const net = require('net');
const { binding } = require(process.argv[1]);
const options = JSON.parse(process.argv[2]);
let events = [];
let resyncAllowed = false;
const disk = binding.diskOpen(options.file, false);
const pipeline = binding.pipelineCreate(disk, { ...options.layout, onEvent: (type, detail) => events.push({ type, detail }) });
const server = net.createServer({ pauseOnConnect: true }, (socket) => {
  socket.on('error', () => {});
  binding.linkAttach(pipeline, socket._handle.fd, { mode: 'target', sendHelloFirst: true, resyncAllowed });
  socket.destroy();
});
function memory() {
  const status = fs.readFileSync('/proc/self/status', 'utf8');
  const kib = (name) => Number((new RegExp(name + ':\\\\s+(\\\\d+) kB').exec(status) || [0, 0])[1]) * 1024;
  return { hwmBytes: kib('VmHWM'), rssBytes: kib('VmRSS'), vmPeakBytes: kib('VmPeak') };
}
let lastFailures = binding.pipelineCounters(pipeline).linkFailures;
function answer(reply) { process.stdout.write(JSON.stringify(reply) + '\\n'); }
let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  input += chunk;
  for (let nl = input.indexOf('\\n'); nl >= 0; nl = input.indexOf('\\n')) {
    const command = JSON.parse(input.slice(0, nl));
    input = input.slice(nl + 1);
    if (command.op === 'detach') {
      if (typeof command.allowResync === 'boolean') resyncAllowed = command.allowResync;
      // A failed link's 'link-lost' event is on its way to this thread: wait for it (bounded), then detach.
      const deadline = Date.now() + 2000;
      const settle = () => {
        const failures = binding.pipelineCounters(pipeline).linkFailures;
        const lost = events.filter((e) => e.type === 'link-lost').length;
        if (lost < failures - lastFailures && Date.now() < deadline) return setTimeout(settle, 1);
        binding.linkDetach(pipeline, 'case done');
        lastFailures = failures;
        const reply = { counters: binding.pipelineCounters(pipeline), events, memory: memory() };
        events = [];
        answer(reply);
      };
      settle();
    }
  }
});
process.stdin.on('end', () => {
  binding.linkDetach(pipeline, 'done');
  binding.pipelineDestroy(pipeline);
  binding.diskClose(disk);
  process.exit(0);
});
server.listen(0, '127.0.0.1', () => answer({ port: server.address().port, memory: memory() }));
`;

interface Memory {
  hwmBytes: number;
  rssBytes: number;
  vmPeakBytes: number;
}

interface TargetReport {
  counters: NativeCounters;
  events: { type: string; detail: string }[];
  memory: Memory;
}

class TargetProcess {
  private stdout = '';
  private stderrText = '';
  private exitText: string | null = null;
  private waiters: (() => void)[] = [];
  private exited: Promise<void>;
  port = 0;
  baseline: Memory | null = null;
  /** What the target's next link is told about resync (set by detach). */
  resyncAllowedNext: boolean | null = null;

  private constructor(private readonly child: ChildProcess) {
    child.stdin!.on('error', () => undefined);
    child.stdout!.setEncoding('utf8').on('data', (s: string) => {
      this.stdout += s;
      this.waiters.splice(0).forEach((w) => w());
    });
    child.stderr!.setEncoding('utf8').on('data', (s: string) => {
      if (this.stderrText.length < 16384) this.stderrText += s;
    });
    this.exited = new Promise((resolve) =>
      child.on('exit', (code, signal) => {
        this.exitText = signal !== null ? `signal ${signal}` : `exit code ${code}`;
        this.waiters.splice(0).forEach((w) => w());
        resolve();
      }),
    );
  }

  static async start(file: string, layout: ReturnType<typeof computeLayout>): Promise<TargetProcess> {
    const nativeJs = path.join(REPO_ROOT, 'dist', 'src', 'native.js');
    const child = spawn(process.execPath, ['-e', TARGET_SCRIPT, nativeJs, JSON.stringify({ file, layout: pipelineLayout(layout) })], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const target = new TargetProcess(child);
    const first = (await target.line(10_000)) as { port: number };
    target.port = first.port;
    return target;
  }

  get alive(): boolean {
    return this.exitText === null;
  }

  describeDeath(): string {
    return `the target process died (${this.exitText}); its stderr: ${this.stderrText.trim().split('\n').slice(-3).join(' | ')}`;
  }

  private async line(timeoutMs: number): Promise<unknown> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const nl = this.stdout.indexOf('\n');
      if (nl >= 0) {
        const text = this.stdout.slice(0, nl);
        this.stdout = this.stdout.slice(nl + 1);
        return JSON.parse(text);
      }
      if (this.exitText !== null) throw new Error(this.describeDeath());
      const leftMs = deadline - Date.now();
      if (leftMs <= 0) throw new Error(`the target process did not answer within ${timeoutMs} ms (a hang?)`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, leftMs);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Detaches the link (if any) and reports; `allowResync` is for the next link the target accepts. */
  async detach(allowResync?: boolean): Promise<TargetReport> {
    this.child.stdin!.write(`${JSON.stringify({ op: 'detach', allowResync })}\n`);
    const report = (await this.line(CASE_TIMEOUT_MS)) as TargetReport;
    this.counters = report.counters;
    return report;
  }

  /** The counters of the last report: where the next case starts. */
  counters: NativeCounters | null = null;

  async stop(): Promise<void> {
    if (this.exitText !== null) return;
    this.child.stdin!.end();
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(timer);
  }
}

// ---- the source's end of one case ---------------------------------------------------------------------

/** Frames the target sends (acks), and when it closes. */
class AckReader {
  private buffered = Buffer.alloc(0);
  readonly acks: Header[] = [];
  /** READ_REPLY frames with their data. */
  readonly replies: { header: Header; payload: Buffer }[] = [];
  closed = false;
  private wake: (() => void) | null = null;

  constructor(socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buffered = Buffer.concat([this.buffered, chunk]);
      while (this.buffered.length >= HEADER_BYTES) {
        const h = decodeHeader(this.buffered.subarray(0, HEADER_BYTES));
        // A READ_REPLY carries the data read (unless it says READ_ERROR), an OV_REPLY the digests.
        const payloadBytes =
          (h.type === T.READ_REPLY && (h.flags & FRAME.flags.READ_ERROR) === 0) || h.type === T.OV_REPLY ? h.length : 0;
        if (this.buffered.length < HEADER_BYTES + payloadBytes) break;
        this.acks.push(h);
        if (payloadBytes > 0) this.replies.push({ header: h, payload: Buffer.from(this.buffered.subarray(HEADER_BYTES, HEADER_BYTES + payloadBytes)) });
        this.buffered = this.buffered.subarray(HEADER_BYTES + payloadBytes);
      }
      this.poke();
    });
    const closed = () => {
      this.closed = true;
      this.poke();
    };
    socket.on('end', closed);
    socket.on('close', closed);
    socket.on('error', closed);
  }

  private poke(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  /** Waits until `done()` holds; throws after CASE_TIMEOUT_MS (a hang). */
  async until(what: string, done: () => boolean): Promise<void> {
    const deadline = Date.now() + CASE_TIMEOUT_MS;
    while (!done()) {
      const leftMs = deadline - Date.now();
      if (leftMs <= 0) throw new Error(`no ${what} within ${CASE_TIMEOUT_MS} ms (a hang?); acks so far: ${this.acks.map((a) => `${a.type}:${a.seq}`).join(' ')}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, leftMs);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }
}

interface CaseResult {
  verdict: Verdict;
  report: TargetReport;
  acks: string[] | null;
}

// ---- the properties ----------------------------------------------------------------------------------------

/** One target process with its own backing file and the model of that file. */
interface Lane {
  file: SparseFile;
  fd: number;
  target: TargetProcess;
  /** What the backing file must hold: every byte, metadata included. */
  model: Buffer;
  /** The buffer the file is read into; it and `model` swap after each case (no 8 MiB allocation per case). */
  spare: Buffer;
}

describeIntegration('fuzz: data-frame decoder through the native applier', ['nraid-cli'], () => {
  const layout = computeLayout(FILE_BYTES, BLOCK);
  const dataSizeBytes = layout.dataSizeBytes;
  const cases = fuzzCases(CI_CASES);
  const timeLimitMs = fuzzTimeLimitMs(CI_TIME_LIMIT_MS);
  const lanes: Lane[] = [];

  const readAll = (lane: Lane): Buffer => {
    const out = lane.spare;
    const n = fs.readSync(lane.fd, out, 0, FILE_BYTES, 0);
    if (n !== FILE_BYTES) throw new Error(`short read of ${lane.file.file}: ${n} of ${FILE_BYTES} bytes`);
    return out;
  };

  async function runCase(lane: Lane, input: CaseInput): Promise<CaseResult> {
    const target = lane.target;
    if (!target.alive) throw new Error(target.describeDeath());
    const before = target.counters === null || target.resyncAllowedNext !== input.resyncAllowed ? (await target.detach(input.resyncAllowed)).counters : target.counters;
    target.resyncAllowedNext = input.resyncAllowed;
    const stream = streamOf(input);
    const verdict = modelTarget(stream, dataSizeBytes, input.resyncAllowed);

    const socket = net.connect({ host: '127.0.0.1', port: target.port });
    socket.on('error', () => undefined);
    const reader = new AckReader(socket);
    let acks: string[] | null = null;
    try {
      await reader.until('HELLO from the target', () => reader.acks.length >= 1 || reader.closed);
      const hello = reader.acks.shift();
      if (hello?.type !== T.HELLO) throw new Error(`expected HELLO from the target, found ${hello === undefined ? 'a close' : `type ${hello.type}`}`);
      socket.write(encodeFrame({ type: T.HELLO, flags: 0, epoch: 0n, offsetBlocks: 0, lengthBlocks: 0, requestId: 0, payloadSeed: 0 }, 0));
      socket.write(stream);
      if (verdict.end === 'eof' && stream.length === verdict.applied.reduce((n, a) => n + HEADER_BYTES + (a.payload?.length ?? 0), 0)) {
        // Nothing wrong and nothing cut: a barrier after it must come back with exactly the acks earned.
        const barrierSeq = verdict.nextSeq;
        socket.write(encodeFrame({ type: T.BARRIER, flags: 0, epoch: 1n, offsetBlocks: 0, lengthBlocks: 0, requestId: 0, payloadSeed: 0 }, Number(barrierSeq)));
        await reader.until('BARRIER_ACK', () => reader.closed || reader.acks.some((a) => a.type === T.BARRIER_ACK && a.seq === barrierSeq));
        const withBarrier = [...verdict.applied, { type: T.BARRIER, seq: barrierSeq, flags: 0, offset: 0, length: 0, payload: null }];
        acks = reader.acks.map((a) => `${a.type}:${a.seq}`).sort();
        expect(acks).toEqual(expectedAcks(withBarrier));
      }
      socket.end();
      await reader.until('close from the target', () => reader.closed);
    } finally {
      socket.destroy();
    }
    const report = await target.detach();
    if (!target.alive) throw new Error(target.describeDeath());

    // Every byte of the backing file is what the applied frames make it.
    applyToModel(lane.model, verdict.applied);
    const now = readAll(lane);
    const differs = !now.equals(lane.model);
    let first = 0;
    if (differs) while (now[first] === lane.model[first]) first++;
    lane.spare = lane.model;
    lane.model = now; // the next case starts from what is there, whatever this one found
    if (differs) {
      throw new Error(`the backing file differs from the model at byte ${first} (data area ends at ${dataSizeBytes}); verdict ${verdict.end}, ${verdict.applied.length} frames applied`);
    }

    // The link ended as the model says, counted once, reported once.
    const d = (name: 'checksumErrors' | 'protocolErrors' | 'bytesApplied' | 'linkFailures') => report.counters[name] - before[name];
    expect({
      checksumErrors: d('checksumErrors'),
      protocolErrors: d('protocolErrors'),
      bytesApplied: d('bytesApplied'),
      linkFailures: d('linkFailures'),
    }).toEqual({
      checksumErrors: CHECKSUM_REASONS.has(verdict.end) ? 1 : 0,
      protocolErrors: verdict.end !== 'eof' && !CHECKSUM_REASONS.has(verdict.end) ? 1 : 0,
      bytesApplied: verdict.applied.reduce((n, a) => n + (a.payload?.length ?? 0), 0),
      linkFailures: 1,
    });
    expect(report.events.map((e) => e.type)).toEqual(['link-lost']);
    if (!REASON_TEXT[verdict.end].test(report.events[0].detail)) {
      throw new Error(`the model expected the link to end with ${verdict.end} (${REASON_TEXT[verdict.end]}), the target said: ${report.events[0].detail}`);
    }

    // Memory stays flat, whatever the length fields said.
    const base = target.baseline!;
    if (report.memory.hwmBytes - base.hwmBytes > HWM_GROWTH_MAX_BYTES || report.memory.vmPeakBytes - base.vmPeakBytes > VM_PEAK_GROWTH_MAX_BYTES) {
      throw new Error(`the target's memory grew: ${JSON.stringify(report.memory)} against the baseline ${JSON.stringify(base)}`);
    }
    return { verdict, report, acks };
  }

  let failuresShown = 0;

  /**
   * `inputs[i]` on lane i, all at once. Every lane is waited for, even after
   * one fails: a lane's next case must not start while its last one runs.
   * The first failures are printed as they happen (fast-check reports only
   * the shrunk one).
   */
  async function runCases(inputs: readonly CaseInput[]): Promise<CaseResult[]> {
    const settled = await Promise.allSettled(inputs.map((input, i) => runCase(lanes[i], input)));
    const failed = settled.findIndex((r) => r.status === 'rejected');
    if (failed < 0) return settled.map((r) => (r as PromiseFulfilledResult<CaseResult>).value);
    const reason = (settled[failed] as PromiseRejectedResult).reason;
    if (failuresShown++ < 3) process.stdout.write(`fuzz data frames: lane ${failed} failed: ${String(reason).slice(0, 1500)}\n`);
    throw reason;
  }

  beforeAll(async () => {
    for (let i = 0; i < LANES; i++) {
      const file = await makeSparseFile(FILE_BYTES, `fuzz-frames-${i}`);
      const fd = fs.openSync(file.file, 'r');
      const target = await TargetProcess.start(file.file, layout);
      lanes.push({ file, fd, target, model: Buffer.alloc(FILE_BYTES), spare: Buffer.alloc(FILE_BYTES) });
    }
    // Warm up: four frames of 1 MiB on each lane; the memory baseline is taken after them.
    const warm: CaseInput = {
      resyncAllowed: false,
      frames: Array.from({ length: 4 }, (_, i) => ({
        spec: { type: T.WRITE, flags: 2, epoch: 1n, offsetBlocks: i * 256, lengthBlocks: 256, requestId: i, payloadSeed: i + 1 },
        mutation: { kind: 'none' as const },
      })),
      garbageBefore: null,
      garbageAfter: null,
    };
    for (const lane of lanes) lane.target.baseline = { hwmBytes: Number.MAX_SAFE_INTEGER, rssBytes: 0, vmPeakBytes: Number.MAX_SAFE_INTEGER };
    await runCases(lanes.map(() => warm));
    for (const lane of lanes) lane.target.baseline = (await lane.target.detach()).memory;
  }, 60_000);

  afterAll(async () => {
    for (const lane of lanes) {
      await lane.target.stop();
      fs.closeSync(lane.fd);
      await lane.file.remove();
    }
  });

  test(
    'every frame is applied or refused as the model says, counted, reported, with the file exactly as the model has it',
    async () => {
      const outcome = await fuzz(
        'data frames',
        fc.asyncProperty(fc.array(caseArb(dataSizeBytes / BLOCK), { minLength: LANES, maxLength: LANES }), async (inputs) => {
          await runCases(inputs);
        }),
        { cases: Math.ceil(cases / LANES), timeLimitMs, caseTimeoutMs: 4 * CASE_TIMEOUT_MS },
      );
      process.stdout.write(`fuzz data frames: ${outcome.runs * LANES} frame cases (${outcome.runs} runs of ${LANES} lanes)\n`);
      for (const lane of lanes) {
        const memory = (await lane.target.detach()).memory;
        const base = lane.target.baseline!;
        process.stdout.write(
          `fuzz data frames: target memory: peak RSS ${(memory.hwmBytes / MiB).toFixed(1)} MiB (baseline ${(base.hwmBytes / MiB).toFixed(1)}), ` +
            `peak virtual ${(memory.vmPeakBytes / MiB).toFixed(1)} MiB (baseline ${(base.vmPeakBytes / MiB).toFixed(1)})\n`,
        );
      }
    },
    jestTimeoutMs(CI_TIME_LIMIT_MS),
  );

  // Regression: a DISCARD or ZEROES frame of length 0 passed every check and
  // reached fallocate(), which refuses a zero length with EINVAL: the target
  // dropped the link with "write to the target's disk failed: Invalid
  // argument", a peer's frame taken for a failing local disk.
  test('DISCARD and ZEROES of length 0 are applied as nothing and acknowledged; the link stays up', async () => {
    const frame = (type: number, offsetBlocks: number) => ({
      spec: { type, flags: 2, epoch: 1n, offsetBlocks, lengthBlocks: 0, requestId: 9, payloadSeed: 0 },
      mutation: { kind: 'none' as const },
    });
    const result = await runCase(lanes[0], {
      resyncAllowed: false,
      frames: [frame(T.DISCARD, 8), frame(T.ZEROES, 16), frame(T.DISCARD, dataSizeBytes / BLOCK)],
      garbageBefore: null,
      garbageAfter: null,
    });
    expect(result.verdict.end).toBe('eof');
    expect(result.acks).toEqual(expectedAcks([...result.verdict.applied, { type: T.BARRIER, seq: 4n, flags: 0, offset: 0, length: 0, payload: null }]));
    expect(result.report.events[0].detail).toMatch(/closed by the peer/);
  });

  // Regression: a stream that ended inside a frame's payload was reported as
  // "data link receive: Broken pipe" (the EPIPE of the reader's end of
  // stream, spelled as a send failure), while the same end between frames
  // reads "data link closed by the peer".
  test('a stream cut inside a payload ends the link as "closed by the peer", with nothing applied or counted', async () => {
    const result = await runCase(lanes[0], {
      resyncAllowed: false,
      frames: [
        {
          spec: { type: T.WRITE, flags: 2, epoch: 1n, offsetBlocks: 40, lengthBlocks: 4, requestId: 1, payloadSeed: 7 },
          mutation: { kind: 'cut', at: 0.5 },
        },
      ],
      garbageBefore: null,
      garbageAfter: null,
    });
    expect(result.verdict).toMatchObject({ end: 'eof', applied: [] });
    expect(result.report.events[0].detail).toBe('data link closed by the peer');
  });

  test('canaries: "no frame is ever refused" and "every frame is refused" fail', async () => {
    const arb = caseArb(dataSizeBytes / BLOCK);
    const refused = await expectCanaryFails('data frames (never refused)', fc.asyncProperty(arb, async (input) => (await runCase(lanes[0], input)).verdict.end === 'eof'), 200);
    expect((await runCase(lanes[0], refused[0])).report.events[0].detail).toMatch(/^frame rejected/);
    await expectCanaryFails('data frames (always refused)', fc.asyncProperty(arb, async (input) => (await runCase(lanes[0], input)).verdict.end !== 'eof'), 200);
  }, 120_000);
});
