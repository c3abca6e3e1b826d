/**
 * Fuzz target 2: the control-message decoder (src/protocol: the u32
 * length-prefixed protobuf Envelope, ControlFrameReader, the typed codecs,
 * and BitmapAssembler for bitmap answers). Inputs: arbitrary bytes, and
 * valid messages encoded then mutated, fed in arbitrary pieces.
 * Property: every message that comes out is a typed message that encodes
 * and decodes to itself; every refusal is an NraidError (ProtocolError),
 * never a TypeError, RangeError or plain Error; each case within its time
 * bound. A valid message round-trips exactly.
 * Canary: "every mutated frame decodes" must fail.
 */
import * as fc from 'fast-check';
import { NraidError, ProtocolError } from '../../src/errors';
import { controlNonceBytes, dataTokenBytes, controlHmacBytes, nameCharsMax, bitmapChunkBytesMax } from '../../src/limits';
import { BitmapAssembler, bitmapChunks } from '../../src/protocol/bitmap-chunks';
import {
  CONTROL_NOTICE_KINDS,
  ControlFrameReader,
  ControlMessage,
  Notice,
  Request,
  Response,
  decodeEnvelope,
  encodeFrame,
} from '../../src/protocol/control';
import { chunked, cuts, interestingU64, mutations, applyMutations } from './mutate';
import { expectCanaryFails, fuzz, fuzzCases, fuzzTimeLimitMs, jestTimeoutMs } from './fuzz-run';

const CI_CASES = 2000;
const CI_TIME_LIMIT_MS = 8000;
/** One case decodes at most a few frames of at most a few KiB: far below this. */
const CASE_TIME_MAX_MS = 1000;

// ---- valid messages ------------------------------------------------------------------

const u64 = interestingU64;
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const safe = fc.oneof(fc.constantFrom(0, 1, Number.MAX_SAFE_INTEGER), fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }));
/** 1 to nameCharsMax bytes of UTF-8 (protobuf strings are UTF-8; lone surrogates would not survive). */
const name = fc
  .string({ unit: 'grapheme', minLength: 1, maxLength: nameCharsMax })
  .filter((s) => Buffer.byteLength(s) >= 1 && Buffer.byteLength(s) <= nameCharsMax);
const text = fc.string({ unit: 'grapheme', maxLength: 200 });
const bytes = (n: number) => fc.uint8Array({ minLength: n, maxLength: n }).map((a) => Buffer.from(a));
const history = fc.tuple(u64, u64);

const requestArb: fc.Arbitrary<Request> = fc.oneof(
  fc.record({ id: u32, kind: fc.constant('bitmap' as const), body: fc.constant({}) }),
  fc.record({ id: u32, kind: fc.constant('splitBrainFacts' as const), body: fc.constant({}) }),
  fc.record({ id: u32, kind: fc.constant('promotePrepare' as const), body: fc.record({ requestId: u64, current: u64 }) }),
  fc.record({ id: u32, kind: fc.constant('switchover' as const), body: fc.constant({}) }),
  fc.record({ id: u32, kind: fc.constant('switchoverPromote' as const), body: fc.record({ current: u64 }) }),
  fc.record({ id: u32, kind: fc.constant('resyncStart' as const), body: fc.record({ bytes: u64, current: u64, history }) }),
) as fc.Arbitrary<Request>;

const bitmapChunkArb = fc.record({
  granularityBytes: u32,
  totalBytes: safe,
  offsetBytes: safe,
  wordsBytes: u32,
  words: fc.uint8Array({ maxLength: 256 }).map((a) => Buffer.from(a)),
  lz4: fc.boolean(),
  last: fc.boolean(),
});

const responseArb: fc.Arbitrary<Response> = fc.oneof(
  fc.record({ id: u32, ok: fc.constant(false as const), errorCode: text, errorMessage: text }),
  fc.record({
    id: u32,
    ok: fc.constant(true as const),
    answer: fc.oneof(
      fc.record({ kind: fc.constant('bitmap' as const), body: bitmapChunkArb }),
      fc.record({
        kind: fc.constant('splitBrainFacts' as const),
        body: fc.record({ node: text, primary: fc.boolean(), primarySinceMs: safe, changedBytes: safe, discardMyData: fc.boolean() }),
      }),
      fc.record({ kind: fc.constant('promotePrepare' as const), body: fc.record({ ok: fc.boolean(), reason: text }) }),
      fc.record({ kind: fc.constant('switchover' as const), body: fc.constant({}) }),
      fc.record({ kind: fc.constant('switchoverPromote' as const), body: fc.record({ ok: fc.boolean(), reason: text }) }),
      fc.record({ kind: fc.constant('resyncStart' as const), body: fc.record({ ok: fc.boolean() }) }),
    ),
  }),
) as fc.Arbitrary<Response>;

/** Notices with a body; every other kind is just its kind. */
const NOTICES_WITH_BODY = new Set(['promoteCommit', 'promoteAbort', 'resyncPause']);
const noticeArb: fc.Arbitrary<Notice> = fc.oneof(
  fc.constantFrom(...CONTROL_NOTICE_KINDS.filter((k) => !NOTICES_WITH_BODY.has(k)).map((kind) => ({ kind }))),
  fc.record({ kind: fc.constantFrom('promoteCommit' as const, 'promoteAbort' as const), requestId: u64 }),
  fc.record({ kind: fc.constant('resyncPause' as const), paused: fc.boolean() }),
) as fc.Arbitrary<Notice>;

const messageArb: fc.Arbitrary<ControlMessage> = fc.oneof(
  fc.record({
    type: fc.constant('hello' as const),
    body: fc.record({
      version: fc.record({ major: u32, minor: u32 }),
      nonce: bytes(controlNonceBytes),
    }),
  }),
  fc.record({
    type: fc.constant('identity' as const),
    body: fc.record({ resource: name, nodeName: name, features: fc.array(name, { maxLength: 4 }) }),
  }),
  fc.record({ type: fc.constant('auth' as const), body: fc.record({ hmac: bytes(controlHmacBytes) }) }),
  fc.record({ type: fc.constant('sessionStart' as const), body: fc.record({ dataToken: bytes(dataTokenBytes) }) }),
  fc.record({
    type: fc.constant('nodeState' as const),
    body: fc.record({
      role: fc.constantFrom('Primary' as const, 'Secondary' as const),
      disk: fc.constantFrom('Diskless' as const, 'Attaching' as const, 'Inconsistent' as const, 'Outdated' as const, 'Consistent' as const, 'UpToDate' as const),
      dataSizeBytes: u64,
      uuids: fc.record({ current: u64, bitmap: u64, history }),
      flags: u32,
      protocol: fc.constantFrom('A' as const, 'B' as const, 'C' as const),
    }),
  }),
  fc.record({ type: fc.constant('ping' as const), body: fc.record({ seq: u32 }) }),
  fc.record({ type: fc.constant('pong' as const), body: fc.record({ seq: u32 }) }),
  fc.record({ type: fc.constant('request' as const), body: requestArb }),
  fc.record({ type: fc.constant('response' as const), body: responseArb }),
  fc.record({ type: fc.constant('notice' as const), body: noticeArb }),
  fc.record({ type: fc.constant('dataLinkAccepted' as const), body: fc.constant({}) }),
  fc.record({ type: fc.constant('goodbye' as const), body: fc.record({ reason: text }) }),
) as fc.Arbitrary<ControlMessage>;

// ---- the harness -------------------------------------------------------------------------

type Verdict = { kind: 'messages'; messages: ControlMessage[] } | { kind: 'refused'; error: NraidError };

/**
 * Feeds `pieces` to a fresh ControlFrameReader, as a connection would, and
 * every bitmap answer to a BitmapAssembler. Anything thrown that is not an
 * NraidError, a decoded message that does not encode and decode to itself,
 * or a case over its time bound throws (the property fails).
 */
function decodeStream(pieces: readonly Buffer[], assemble = true): Verdict {
  const started = Date.now();
  const reader = new ControlFrameReader({ preAuth: false });
  const assembler = new BitmapAssembler();
  const messages: ControlMessage[] = [];
  let verdict: Verdict;
  try {
    for (const piece of pieces) messages.push(...reader.push(piece));
    for (const m of assemble ? messages : []) {
      if (m.type === 'response' && m.body.ok && m.body.answer.kind === 'bitmap') assembler.push(m.body.answer.body);
    }
    verdict = { kind: 'messages', messages };
  } catch (error) {
    if (!(error instanceof NraidError)) {
      throw new Error(`decoding threw ${error instanceof Error ? error.constructor.name : typeof error}, not an NraidError: ${String(error)}`);
    }
    if (!(error instanceof ProtocolError)) throw new Error(`decoding threw ${error.name} (${error.code}), expected a ProtocolError: ${error.message}`);
    if (error.message.length === 0) throw new Error('a ProtocolError without a message');
    verdict = { kind: 'refused', error };
  }
  const elapsedMs = Date.now() - started;
  if (elapsedMs > CASE_TIME_MAX_MS) throw new Error(`decoding ${pieces.length} pieces took ${elapsedMs} ms (bound ${CASE_TIME_MAX_MS} ms)`);
  // A decoded message is a typed message: it encodes, and decodes to itself.
  for (const m of messages) {
    let again: ControlMessage;
    try {
      again = decodeEnvelope(encodeFrame(m).subarray(4));
    } catch (error) {
      throw new Error(`a decoded ${m.type} does not encode again: ${String(error)}`);
    }
    expect(again).toEqual(m);
  }
  return verdict;
}

/** `bytes` bytes from a xorshift seeded with `seedValue`: every byte (dense) or about one in 500. */
function pseudoRandomWords(bytes: number, seedValue: number, dense: boolean): Buffer {
  const words = Buffer.alloc(bytes);
  let x = seedValue | 1;
  for (let i = 0; i < bytes; i += dense ? 1 : 1 + (x >>> 23)) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x & 0xff;
  }
  return words;
}

const framesArb = fc.array(messageArb, { minLength: 1, maxLength: 3 });

describe('fuzz: control-message decoder', () => {
  const cases = fuzzCases(CI_CASES);
  const timeLimitMs = fuzzTimeLimitMs(CI_TIME_LIMIT_MS);

  test(
    'valid messages round-trip exactly, in any pieces',
    async () => {
      await fuzz(
        'control codec: round trip',
        fc.property(framesArb, cuts, (messages, at) => {
          const stream = Buffer.concat(messages.map((m) => encodeFrame(m)));
          const verdict = decodeStream(chunked(stream, at), false);
          expect(verdict).toEqual({ kind: 'messages', messages });
        }),
        { cases: Math.ceil(cases / 4), timeLimitMs: timeLimitMs / 4 },
      );
    },
    jestTimeoutMs(CI_TIME_LIMIT_MS),
  );

  test(
    'mutated valid messages: typed messages or a ProtocolError, nothing else',
    async () => {
      await fuzz(
        'control codec: mutated messages',
        fc.property(framesArb, mutations, cuts, (messages, list, at) => {
          const stream = applyMutations(Buffer.concat(messages.map((m) => encodeFrame(m))), list);
          decodeStream(chunked(stream, at));
        }),
        { cases, timeLimitMs: timeLimitMs / 2 },
      );
    },
    jestTimeoutMs(CI_TIME_LIMIT_MS),
  );

  test(
    'arbitrary bytes (after a plausible length prefix or none): typed messages or a ProtocolError',
    async () => {
      const body = fc.uint8Array({ maxLength: 512 }).map((a) => Buffer.from(a));
      const framed = fc.tuple(fc.option(fc.integer({ min: -8, max: 8 })), body).map(([skew, b]) => {
        if (skew === null) return b;
        const prefix = Buffer.alloc(4);
        prefix.writeUInt32LE(Math.max(0, b.length + skew));
        return Buffer.concat([prefix, b]);
      });
      await fuzz(
        'control codec: arbitrary bytes',
        fc.property(fc.array(framed, { minLength: 1, maxLength: 3 }), cuts, (frames, at) => {
          decodeStream(chunked(Buffer.concat(frames), at));
        }),
        { cases: Math.ceil(cases / 4), timeLimitMs: timeLimitMs / 4 },
      );
    },
    jestTimeoutMs(CI_TIME_LIMIT_MS),
  );

  test(
    'bitmap answers: a whole bitmap in chunks comes back exactly; chunks with a field changed give the bitmap or a ProtocolError',
    async () => {
      const chunkField = fc.record({
        index: fc.nat(),
        field: fc.constantFrom('granularityBytes', 'totalBytes', 'offsetBytes', 'wordsBytes', 'words', 'lz4', 'last', 'drop', 'repeat'),
        value: fc.oneof(fc.integer({ min: 0, max: 0xffffffff }), fc.constantFrom(0, 8, bitmapChunkBytesMax, bitmapChunkBytesMax + 8, Number.MAX_SAFE_INTEGER)),
        words: fc.uint8Array({ maxLength: 64 }),
      });
      const bitmap = fc.record({
        granularityBytes: fc.constantFrom(4096, 65536, 1 << 20),
        // Sparse (compresses, so lz4 chunks) or dense (does not, so raw chunks); made from a seed, fast.
        words: fc.tuple(fc.integer({ min: 0, max: (3 * bitmapChunkBytesMax) / 8 }), fc.integer(), fc.boolean()).map(([n, seedValue, dense]) =>
          pseudoRandomWords(n * 8, seedValue, dense),
        ),
      });
      await fuzz(
        'control codec: bitmap chunks',
        fc.property(bitmap, fc.array(chunkField, { maxLength: 2 }), (reply, changes) => {
          const chunks = [...bitmapChunks(reply)].map((c) => ({ ...c }));
          for (const change of changes) {
            if (chunks.length === 0) break;
            const i = change.index % chunks.length;
            const c = chunks[i] as unknown as Record<string, unknown>;
            if (change.field === 'drop') chunks.splice(i, 1);
            else if (change.field === 'repeat') chunks.splice(i, 0, { ...chunks[i] });
            else if (change.field === 'words') c.words = Buffer.from(change.words);
            else if (change.field === 'lz4' || change.field === 'last') c[change.field] = !c[change.field];
            else c[change.field] = change.value;
          }
          const assembler = new BitmapAssembler();
          let whole = null;
          try {
            for (const c of chunks) whole = assembler.push(c);
          } catch (error) {
            if (!(error instanceof ProtocolError)) throw new Error(`BitmapAssembler threw ${String(error)}, not a ProtocolError`);
            return;
          }
          if (changes.length === 0) {
            expect(whole?.granularityBytes).toBe(reply.granularityBytes);
            expect(whole?.words.equals(reply.words)).toBe(true);
          }
          // Whatever the changes, what it returns is the announced size.
          if (whole !== null) expect(whole.words.length).toBe(chunks[0]?.totalBytes);
        }),
        { cases: Math.ceil(cases / 4), timeLimitMs: timeLimitMs / 4 },
      );
    },
    jestTimeoutMs(CI_TIME_LIMIT_MS),
  );

  test('canary: "every mutated message decodes" fails, and a refusal is a ProtocolError', async () => {
    const counterexample = await expectCanaryFails(
      'control codec',
      fc.property(framesArb, mutations, (messages, list) => {
        const stream = applyMutations(Buffer.concat(messages.map((m) => encodeFrame(m))), list);
        return decodeStream([stream]).kind === 'messages';
      }),
      500,
    );
    const [messages, list] = counterexample;
    const verdict = decodeStream([applyMutations(Buffer.concat(messages.map((m) => encodeFrame(m))), list)]);
    expect(verdict.kind).toBe('refused');
    if (verdict.kind === 'refused') expect(verdict.error).toBeInstanceOf(ProtocolError);
  });

  // The bitmap answer's bound is checked before its words are decompressed:
  // this pins it for the fuzzer's sake (a chunk announcing more is refused).
  test('a bitmap chunk announcing more than bitmapChunkBytesMax of words is refused before anything is allocated', () => {
    const assembler = new BitmapAssembler();
    expect(() =>
      assembler.push({ granularityBytes: 4096, totalBytes: 8 * bitmapChunkBytesMax, offsetBytes: 0, wordsBytes: 0xfffffff8, words: Buffer.alloc(8), lz4: true, last: false }),
    ).toThrow(ProtocolError);
  });
});
