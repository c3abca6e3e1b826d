/**
 * Control link codec, auth and backoff in isolation: round trips of every
 * message and of every typed request, answer and notice (uint64 at its
 * limits), framing fed byte by byte, limits enforced before a body is
 * buffered, the version rule, the bitmap split into chunks and put back
 * together (and every broken chunk sequence refused), and the HMAC's
 * resistance to replay and reflection. The link over real sockets is in
 * control-link.test.ts.
 */
import { randomBytes } from 'crypto';
import { ConfigError, ProtocolError } from '../../src/errors';
import { bitmapChunkBytesMax, bitmapReplyBytesMax, controlMessageBytesMax } from '../../src/limits';
import { BitmapAssembler, bitmapChunks } from '../../src/protocol/bitmap-chunks';
import {
  BitmapChunk,
  CONTROL_NOTICE_KINDS,
  CONTROL_REQUEST_KINDS,
  ControlFrameReader,
  ControlMessage,
  NodeState,
  PROTOCOL_VERSION,
  decodeEnvelope,
  encodeFrame,
  parseProtocolVersion,
  sessionVersion,
  versionsCompatible,
} from '../../src/protocol/control';
import { authHmac, newNonce, verifyAuthHmac } from '../../src/link/auth';
import { Backoff } from '../../src/link/backoff';

const UINT64_MAX = (1n << 64n) - 1n;
const CONTROL_MESSAGE_SIZE_MAX_BYTES = controlMessageBytesMax;

const state: NodeState = {
  role: 'Primary',
  disk: 'UpToDate',
  dataSizeBytes: 1073741824n,
  uuids: { current: UINT64_MAX, bitmap: 0x8000000000000001n, history: [1n, (1n << 53n) + 1n] },
  flags: 0x80000005,
  protocol: 'B',
};

const chunk: BitmapChunk = {
  granularityBytes: 4096,
  totalBytes: 2 ** 40,
  offsetBytes: 2 ** 33,
  wordsBytes: 8000,
  words: randomBytes(100),
  lz4: true,
  last: false,
};

/** One of every typed request, answer and notice kind, with values at their limits. */
const typedSamples: ControlMessage[] = [
  { type: 'request', body: { id: 1, kind: 'bitmap', body: {} } },
  { type: 'request', body: { id: 2, kind: 'splitBrainFacts', body: {} } },
  { type: 'request', body: { id: 3, kind: 'promotePrepare', body: { requestId: UINT64_MAX, current: 0x8000000000000001n } } },
  { type: 'request', body: { id: 4, kind: 'switchover', body: {} } },
  { type: 'request', body: { id: 5, kind: 'switchoverPromote', body: { current: 7n } } },
  { type: 'request', body: { id: 0xffffffff, kind: 'resyncStart', body: { bytes: 1n << 40n, current: UINT64_MAX, history: [1n, 2n] } } },
  { type: 'response', body: { id: 1, ok: true, answer: { kind: 'bitmap', body: chunk } } },
  {
    type: 'response',
    body: {
      id: 2,
      ok: true,
      answer: {
        kind: 'splitBrainFacts',
        body: { node: 'alpha', primary: true, primarySinceMs: Number.MAX_SAFE_INTEGER, changedBytes: 4096, discardMyData: false },
      },
    },
  },
  { type: 'response', body: { id: 3, ok: true, answer: { kind: 'promotePrepare', body: { ok: false, reason: 'beta is Primary' } } } },
  { type: 'response', body: { id: 4, ok: true, answer: { kind: 'switchover', body: {} } } },
  { type: 'response', body: { id: 5, ok: true, answer: { kind: 'switchoverPromote', body: { ok: true, reason: '' } } } },
  { type: 'response', body: { id: 6, ok: true, answer: { kind: 'resyncStart', body: { ok: true } } } },
  { type: 'response', body: { id: 7, ok: false, errorCode: 'NRAID_ERR_STATE', errorMessage: 'no' } },
  { type: 'notice', body: { kind: 'resyncNone' } },
  { type: 'notice', body: { kind: 'resyncDone' } },
  { type: 'notice', body: { kind: 'adjust' } },
  { type: 'notice', body: { kind: 'promoteCommit', requestId: UINT64_MAX } },
  { type: 'notice', body: { kind: 'promoteAbort', requestId: 0n } },
  { type: 'notice', body: { kind: 'turnaround' } },
  { type: 'notice', body: { kind: 'resyncPause', paused: true } },
];

const samples: ControlMessage[] = [
  {
    type: 'hello',
    body: { version: { major: 2, minor: 0xffffffff }, nonce: randomBytes(32) },
  },
  { type: 'auth', body: { hmac: randomBytes(32) } },
  { type: 'identity', body: { resource: 'r0', nodeName: 'alpha', features: ['bitmap-lz4', 'x'] } },
  { type: 'sessionStart', body: { dataToken: randomBytes(32) } },
  { type: 'nodeState', body: state },
  { type: 'ping', body: { seq: 0xffffffff } },
  { type: 'pong', body: { seq: 7 } },
  ...typedSamples,
  { type: 'dataLinkAccepted', body: {} },
  { type: 'goodbye', body: { reason: 'bye' } },
];

function withoutPrefix(frame: Buffer): Buffer {
  return frame.subarray(4);
}

/** A bitmap of `bytes` bytes with every bit random (incompressible) or a few set (compressible). */
function bitmapWords(bytes: number, dense: boolean): Buffer {
  if (dense) return randomBytes(bytes);
  const words = Buffer.alloc(bytes);
  for (let i = 0; i < 200; i++) words[Math.floor(Math.random() * bytes)] = 1 << (i % 8);
  return words;
}

function assemble(chunks: BitmapChunk[]): ReturnType<BitmapAssembler['push']> {
  const assembler = new BitmapAssembler();
  let whole: ReturnType<BitmapAssembler['push']> = null;
  for (const one of chunks) whole = assembler.push(one);
  return whole;
}

describe('control codec', () => {
  test('every message survives encode and decode, uint64 values exactly', () => {
    for (const message of samples) {
      const decoded = decodeEnvelope(withoutPrefix(encodeFrame(message)));
      expect(decoded).toEqual(message);
    }
    const decodedState = decodeEnvelope(withoutPrefix(encodeFrame({ type: 'nodeState', body: state })));
    expect(decodedState.type).toBe('nodeState');
    if (decodedState.type === 'nodeState') {
      expect(decodedState.body.uuids.current).toBe(UINT64_MAX);
      expect(decodedState.body.uuids.history[1]).toBe((1n << 53n) + 1n);
      expect(decodedState.body.flags).toBe(0x80000005);
    }
  });

  test('a stream fed one byte at a time yields the same messages in order', () => {
    const stream = Buffer.concat(samples.map(encodeFrame));
    const reader = new ControlFrameReader({ preAuth: false });
    const out: ControlMessage[] = [];
    for (let i = 0; i < stream.length; i++) out.push(...reader.push(stream.subarray(i, i + 1)));
    expect(out).toEqual(samples);
    expect(reader.bufferedBytes).toBe(0);
  });

  test('many messages in one chunk, split mid-prefix, come out whole', () => {
    const stream = Buffer.concat(samples.map(encodeFrame));
    const reader = new ControlFrameReader({ preAuth: false });
    const out = [...reader.push(stream.subarray(0, 6)), ...reader.push(stream.subarray(6))];
    expect(out).toEqual(samples);
  });

  test('an oversized length prefix throws as soon as its 4 bytes are in', () => {
    const reader = new ControlFrameReader({ preAuth: false });
    const prefix = Buffer.alloc(4);
    prefix.writeUInt32LE(CONTROL_MESSAGE_SIZE_MAX_BYTES + 1);
    expect(reader.push(prefix.subarray(0, 3))).toEqual([]);
    expect(() => reader.push(prefix.subarray(3))).toThrow(ProtocolError);
    expect(() => new ControlFrameReader({ preAuth: false }).push(prefix)).toThrow(String(CONTROL_MESSAGE_SIZE_MAX_BYTES + 1));
  });

  test('a zero length, garbage bytes, an empty envelope and wrong sizes are protocol errors', () => {
    expect(() => new ControlFrameReader().push(Buffer.alloc(4))).toThrow(ProtocolError);
    expect(() => decodeEnvelope(Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff]))).toThrow(ProtocolError);
    // field 15 (unknown to this build), varint 1
    expect(() => decodeEnvelope(Buffer.from([0x78, 0x01]))).toThrow(/empty or unknown/);
    const shortNonce = encodeFrame({ type: 'auth', body: { hmac: randomBytes(31) } });
    expect(() => decodeEnvelope(withoutPrefix(shortNonce))).toThrow(/must be 32 bytes, found 31/);
    const noName: ControlMessage = { ...samples[2]!, body: { ...(samples[2]!.body as object), nodeName: '' } } as ControlMessage;
    expect(() => decodeEnvelope(withoutPrefix(encodeFrame(noName)))).toThrow(/node name/);
  });

  test('a node state with an unknown enum value is refused with what was found', () => {
    // Envelope field 4 (node_state), then its field 1 (role) = ROLE_PRIMARY: patch the value to 9
    const envelope = Buffer.from(withoutPrefix(encodeFrame({ type: 'nodeState', body: state })));
    expect(envelope.subarray(0, 1)).toEqual(Buffer.from([0x22]));
    expect(envelope.subarray(2, 4)).toEqual(Buffer.from([0x08, 0x01]));
    envelope[3] = 9;
    expect(() => decodeEnvelope(envelope)).toThrow(/role must be one of Primary, Secondary, found enum value 9/);
  });

  test('every request, answer and notice kind is covered by a sample, and the proto has no other', () => {
    const requests = typedSamples.filter((m) => m.type === 'request').map((m) => (m.type === 'request' ? m.body.kind : ''));
    const answers = typedSamples.map((m) => (m.type === 'response' && m.body.ok ? m.body.answer.kind : null)).filter(Boolean);
    const notices = typedSamples.filter((m) => m.type === 'notice').map((m) => (m.type === 'notice' ? m.body.kind : ''));
    expect(requests.sort()).toEqual([...CONTROL_REQUEST_KINDS].sort());
    expect(answers.sort()).toEqual([...CONTROL_REQUEST_KINDS].sort());
    expect(notices.sort()).toEqual([...CONTROL_NOTICE_KINDS].sort());
  });

  test('typed bodies reject what the proto cannot hold, with the field named', () => {
    const bad = (message: unknown): (() => Buffer) => () => encodeFrame(message as ControlMessage);
    expect(bad({ type: 'request', body: { id: 1, kind: 'resyncStart', body: { bytes: 1n, current: 1n, history: [1n] } } })).toThrow(
      /resyncStart.history needs 2 history UUIDs, found 1/,
    );
    expect(bad({ type: 'request', body: { id: 1, kind: 'promotePrepare', body: { requestId: -1n, current: 0n } } })).toThrow(
      /requestId must fit an unsigned 64-bit integer, found -1/,
    );
    expect(bad({ type: 'request', body: { id: 1, kind: 'roleChange', body: {} } })).toThrow(/request kind must be one of bitmap, .*found roleChange/);
    expect(bad({ type: 'notice', body: { kind: 'hint' } })).toThrow(/notice kind must be one of/);
    const facts = { node: 'a', primary: false, primarySinceMs: 1.5, changedBytes: 0, discardMyData: false };
    expect(bad({ type: 'response', body: { id: 1, ok: true, answer: { kind: 'splitBrainFacts', body: facts } } })).toThrow(
      /primarySinceMs must be a non-negative safe integer, found 1.5/,
    );
    // A Request (Envelope field 7) holding no kind this build knows: field 99 varint 1.
    expect(() => decodeEnvelope(Buffer.from([0x3a, 0x05, 0x08, 0x01, 0x98, 0x06, 0x01]))).toThrow(
      /expected a Request of one of the kinds bitmap, .*found none this node knows/,
    );
  });
});

describe('protocol version', () => {
  test('this build speaks 3.0 (2.0 plus the handshake in which the caller proves the secret first)', () => {
    expect(PROTOCOL_VERSION).toEqual({ major: 3, minor: 0 });
  });

  test('same major and minors at most one apart are compatible, both ways; the session speaks the lower minor', () => {
    const v = (major: number, minor: number) => ({ major, minor });
    expect(versionsCompatible(v(2, 0), v(2, 0))).toBe(true);
    expect(versionsCompatible(v(2, 0), v(2, 1))).toBe(true);
    expect(versionsCompatible(v(2, 1), v(2, 0))).toBe(true);
    expect(versionsCompatible(v(2, 3), v(2, 5))).toBe(false);
    expect(versionsCompatible(v(2, 5), v(2, 3))).toBe(false);
    expect(versionsCompatible(v(2, 0), v(3, 0))).toBe(false);
    expect(versionsCompatible(v(2, 0), v(1, 0))).toBe(false);
    expect(sessionVersion(v(2, 4), v(2, 3))).toEqual(v(2, 3));
    expect(sessionVersion(v(2, 3), v(2, 4))).toEqual(v(2, 3));
  });

  test('a version given as text (NRAID_TEST_PROTOCOL_VERSION) parses, or fails naming what was found', () => {
    expect(parseProtocolVersion('2.1')).toEqual({ major: 2, minor: 1 });
    expect(parseProtocolVersion(' 3.0\n')).toEqual({ major: 3, minor: 0 });
    expect(() => parseProtocolVersion('2')).toThrow(/expected major.minor such as 2.0, found "2"/);
    expect(() => parseProtocolVersion('2.x')).toThrow(ConfigError);
  });

  test('a protocol 1 Hello (version range in fields 1 and 2) decodes as 1.0, and ours reads as 2..2 to a 1.x node', () => {
    // Envelope field 1 (hello): protocol_version = 1, protocol_version_min = 1, resource, node name, nonce.
    const hello = Buffer.concat([
      Buffer.from([0x08, 0x01, 0x10, 0x01, 0x22, 0x02]), Buffer.from('r0'), Buffer.from([0x2a, 0x01]), Buffer.from('a'),
      Buffer.from([0x32, 0x20]), randomBytes(32),
    ]);
    const decoded = decodeEnvelope(Buffer.concat([Buffer.from([0x0a, hello.length]), hello]));
    expect(decoded.type === 'hello' && decoded.body.version).toEqual({ major: 1, minor: 0 });
    const ours = withoutPrefix(encodeFrame(samples[0]!));
    // field 1 = 2 (a 1.x node's highest version), field 2 = 2 (its lowest): 1.x refuses too
    expect(ours.subarray(2, 6)).toEqual(Buffer.from([0x08, 0x02, 0x10, 0x02]));
  });
});

describe('bitmap chunks', () => {
  test.each([
    ['sparse (compresses)', false],
    ['random (sent raw)', true],
  ])('a 1 MiB %s bitmap splits into chunks within the bound and comes back identical', (_name, dense) => {
    const words = bitmapWords(1024 * 1024 + 8 * 3, dense);
    const chunks = [...bitmapChunks({ granularityBytes: 65536, words })];
    expect(chunks.length).toBe(Math.ceil(words.length / bitmapChunkBytesMax));
    for (const [index, one] of chunks.entries()) {
      expect(one.wordsBytes).toBeLessThanOrEqual(bitmapChunkBytesMax);
      expect(one.words.length).toBeLessThanOrEqual(bitmapChunkBytesMax);
      expect(one.offsetBytes).toBe(index * bitmapChunkBytesMax);
      expect(one.last).toBe(index === chunks.length - 1);
      expect(one.lz4).toBe(!dense);
      // each chunk survives the wire encoding
      const frame = encodeFrame({ type: 'response', body: { id: 9, ok: true, answer: { kind: 'bitmap', body: one } } });
      expect(frame.length).toBeLessThan(bitmapChunkBytesMax + 64);
    }
    const whole = assemble(chunks);
    expect(whole?.granularityBytes).toBe(65536);
    expect(whole?.words.equals(words)).toBe(true);
  });

  test.each([
    ['sparse (compresses)', false],
    ['random (sent raw)', true],
  ])('a %s BitmapSource is read a chunk at a time into the same chunks, and a sink gets them back part by part', (_name, dense) => {
    // Regression (issue 12): a daemon answered and merged whole bitmaps, 32 MiB per TiB each, in JS.
    const words = bitmapWords(3 * bitmapChunkBytesMax + 24, dense);
    const reads: Array<[number, number]> = [];
    const source = {
      granularityBytes: 4096,
      sizeBytes: words.length,
      read: (offsetBytes: number, lengthBytes: number) => {
        reads.push([offsetBytes, lengthBytes]);
        return Buffer.from(words.subarray(offsetBytes, offsetBytes + lengthBytes));
      },
    };
    // A chunk's words are valid until the next step: each is copied (as encoding it would).
    const fromSource: BitmapChunk[] = [];
    for (const one of bitmapChunks(source)) fromSource.push({ ...one, words: Buffer.from(one.words) });
    expect(reads).toEqual([[0, bitmapChunkBytesMax], [bitmapChunkBytesMax, bitmapChunkBytesMax], [2 * bitmapChunkBytesMax, bitmapChunkBytesMax], [3 * bitmapChunkBytesMax, 24]]);
    expect(fromSource).toEqual([...bitmapChunks({ granularityBytes: 4096, words })]);

    const merged = Buffer.alloc(words.length);
    const parts: number[] = [];
    const assembler = new BitmapAssembler((part) => {
      expect({ granularityBytes: part.granularityBytes, totalBytes: part.totalBytes }).toEqual({ granularityBytes: 4096, totalBytes: words.length });
      parts.push(part.offsetBytes);
      part.words.copy(merged, part.offsetBytes);
    });
    let end: ReturnType<BitmapAssembler['push']> = null;
    for (const one of fromSource) end = assembler.push(one);
    expect(end).toEqual({ granularityBytes: 4096, words: Buffer.alloc(0) });
    expect(parts).toEqual([0, 1, 2, 3].map((i) => i * bitmapChunkBytesMax));
    expect(merged.equals(words)).toBe(true);

    // What the sink throws fails the answer at that chunk.
    const refusing = new BitmapAssembler(() => {
      throw new ProtocolError('not this bitmap');
    });
    expect(() => refusing.push(fromSource[0]!)).toThrow('not this bitmap');
  });

  test('a BitmapSource that is not whole words or reads short is not sent', () => {
    const read = (_o: number, l: number) => Buffer.alloc(l);
    expect(() => [...bitmapChunks({ granularityBytes: 4096, sizeBytes: 12, read })]).toThrow(/whole u64 words, found 12 bytes/);
    expect(() => [...bitmapChunks({ granularityBytes: 4096, sizeBytes: bitmapReplyBytesMax + 8, read })]).toThrow(ProtocolError);
    expect(() => [...bitmapChunks({ granularityBytes: 4096, sizeBytes: 16, read: () => Buffer.alloc(8) })]).toThrow(/expected 16 bytes of bitmap words at 0, read 8/);
  });

  test('an empty bitmap is one empty last chunk', () => {
    const chunks = [...bitmapChunks({ granularityBytes: 4096, words: Buffer.alloc(0) })];
    expect(chunks).toEqual([{ granularityBytes: 4096, totalBytes: 0, offsetBytes: 0, wordsBytes: 0, words: Buffer.alloc(0), lz4: false, last: true }]);
    expect(assemble(chunks)).toEqual({ granularityBytes: 4096, words: Buffer.alloc(0) });
  });

  test('a bitmap that is not whole words, has no granularity, or is too large is not sent', () => {
    expect(() => [...bitmapChunks({ granularityBytes: 4096, words: Buffer.alloc(12) })]).toThrow(/whole u64 words, found 12 bytes/);
    expect(() => [...bitmapChunks({ granularityBytes: 0, words: Buffer.alloc(8) })]).toThrow(/granularity must be a u32 above 0/);
    const huge = { granularityBytes: 4096, words: { length: bitmapReplyBytesMax + 8 } as unknown as Buffer };
    expect(() => bitmapChunks(huge).next()).toThrow(ProtocolError);
  });

  test('every broken chunk sequence is refused with a ProtocolError saying what was expected', () => {
    const words = bitmapWords(3 * bitmapChunkBytesMax, false);
    const good = [...bitmapChunks({ granularityBytes: 4096, words })];
    expect(good.length).toBe(3);
    const [a, b, c] = good as [BitmapChunk, BitmapChunk, BitmapChunk];
    const cases: Array<[string, BitmapChunk[], RegExp]> = [
      ['out of order', [a, c, b], /expected the bitmap chunk at offset 65536, found one at offset 131072 \(out of order\)/],
      ['a chunk repeated', [a, a], /expected the bitmap chunk at offset 65536, found one at offset 0/],
      ['not starting at 0', [b], /at offset 0, found one at offset 65536/],
      ['oversized words', [{ ...a, wordsBytes: bitmapChunkBytesMax + 8 }], /at most 65536 bytes, found 65544 bytes of words/],
      ['oversized on the wire', [{ ...a, words: Buffer.alloc(bitmapChunkBytesMax + 1) }], /at most 65536 bytes, found 65536 bytes of words \(65537 on the wire\)/],
      ['last flag too early', [{ ...a, last: true }], /expected more bitmap chunks after 65536 of 196608 bytes, found the last flag/],
      ['last flag missing', [a, b, { ...c, last: false }], /expected the last flag on the chunk that ends the bitmap at 196608 bytes/],
      ['a chunk after the last', [a, b, c, c], /no bitmap chunk after the last one/],
      ['total changes', [a, { ...b, totalBytes: 8 * bitmapChunkBytesMax }], /announce 196608 bytes at 4096 bytes per bit, found a chunk announcing 524288/],
      ['granularity changes', [a, { ...b, granularityBytes: 8192 }], /found a chunk announcing 196608 bytes at 8192/],
      ['beyond the end', [a, b, { ...c, offsetBytes: 131072, wordsBytes: 65544 }], /at most 65536 bytes|end at 196608 bytes/],
      ['bad lz4', [{ ...a, words: Buffer.from([0xff, 0xff, 0xff]) }], /expected 65536 bytes of bitmap words from 3 bytes of lz4/],
      ['lz4 of the wrong size', [{ ...a, wordsBytes: 65528 }], /expected 65528 bytes of bitmap words from/],
      ['raw of the wrong size', [{ ...a, lz4: false }], /expected 65536 bytes of raw bitmap words, found/],
      ['total too large', [{ ...a, totalBytes: bitmapReplyBytesMax + 8 }], /at most 536870912 bytes, found one of 536870920 bytes/],
      ['no granularity', [{ ...a, granularityBytes: 0 }], /granularity above 0 bytes, found 0/],
    ];
    for (const [name, sequence, message] of cases) {
      let thrown: unknown = null;
      try {
        assemble(sequence);
      } catch (error) {
        thrown = error;
      }
      expect([name, thrown instanceof ProtocolError]).toEqual([name, true]);
      expect([name, (thrown as Error).message]).toEqual([name, expect.stringMatching(message)]);
    }
  });
});

describe('bitmap chunk sequences, mutated', () => {
  // Bounded fuzz: any change to the order or the metadata of a valid chunk sequence either
  // rejects with ProtocolError or yields the very same words; never another error, never other words.
  test('2000 seeded mutations: ProtocolError or the original words', () => {
    let seed = 0x5eed;
    const random = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const originals = [8, 3 * bitmapChunkBytesMax, 2 * bitmapChunkBytesMax + 24].map((bytes) => bitmapWords(bytes, false));
    const fields: Array<keyof BitmapChunk> = ['granularityBytes', 'totalBytes', 'offsetBytes', 'wordsBytes', 'lz4', 'last'];
    let rejected = 0;
    let unchanged = 0;
    for (let round = 0; round < 2000; round++) {
      const words = originals[random(originals.length)]!;
      const chunks = [...bitmapChunks({ granularityBytes: 4096, words })].map((one) => ({ ...one }));
      switch (random(4)) {
        case 0: { // swap two chunks
          const [i, j] = [random(chunks.length), random(chunks.length)];
          [chunks[i], chunks[j]] = [chunks[j]!, chunks[i]!];
          break;
        }
        case 1: // drop one
          chunks.splice(random(chunks.length), 1);
          break;
        case 2: // repeat one
          chunks.splice(random(chunks.length), 0, chunks[random(chunks.length)]!);
          break;
        default: { // change one field of one chunk
          const one = chunks[random(chunks.length)]! as unknown as Record<string, unknown>;
          const field = fields[random(fields.length)]!;
          if (typeof one[field] === 'boolean') one[field] = !one[field];
          else one[field] = [0, 8, (one[field] as number) + 8, (one[field] as number) - 8, bitmapChunkBytesMax * 4][random(5)];
        }
      }
      try {
        const whole = assemble(chunks);
        expect(whole === null || whole.words.equals(words)).toBe(true);
        unchanged++;
      } catch (error) {
        expect(error).toBeInstanceOf(ProtocolError);
        rejected++;
      }
    }
    // canary: the mutations did break sequences, and some (e.g. swapping a chunk with itself) did not
    expect(rejected).toBeGreaterThan(500);
    expect(unchanged).toBeGreaterThan(0);
  });
});

describe('auth HMAC', () => {
  const secret = Buffer.from('s3cret');
  const alphaNonce = newNonce();
  const betaNonce = newNonce();

  test('the HMAC the dialer sends verifies on the acceptor, and the other way round', () => {
    const hmac = authHmac(secret, 'dialer', betaNonce, alphaNonce);
    expect(verifyAuthHmac(secret, 'dialer', betaNonce, alphaNonce, hmac)).toBe(true);
    const answer = authHmac(secret, 'acceptor', alphaNonce, betaNonce);
    expect(verifyAuthHmac(secret, 'acceptor', alphaNonce, betaNonce, answer)).toBe(true);
  });

  test('another secret, a replay against a new nonce, a reflection and a swapped role all fail', () => {
    const hmac = authHmac(secret, 'dialer', betaNonce, alphaNonce);
    expect(verifyAuthHmac(Buffer.from('other'), 'dialer', betaNonce, alphaNonce, hmac)).toBe(false);
    expect(verifyAuthHmac(secret, 'dialer', newNonce(), alphaNonce, hmac)).toBe(false);
    // the dialer's Auth sent back to the dialer as if it were the acceptor's
    expect(verifyAuthHmac(secret, 'acceptor', alphaNonce, betaNonce, hmac)).toBe(false);
    // the acceptor's own Auth (same nonces in its order) offered as a dialer's
    const betaHmac = authHmac(secret, 'acceptor', betaNonce, alphaNonce);
    expect(verifyAuthHmac(secret, 'dialer', betaNonce, alphaNonce, betaHmac)).toBe(false);
    expect(verifyAuthHmac(secret, 'dialer', betaNonce, alphaNonce, hmac.subarray(0, 31))).toBe(false);
  });
});

describe('redial backoff', () => {
  test('doubles from the first delay, caps, and resets', () => {
    const backoff = new Backoff(50, 1000, () => 0);
    expect([1, 2, 3, 4, 5, 6, 7].map(() => backoff.next())).toEqual([50, 100, 200, 400, 800, 1000, 1000]);
    backoff.reset();
    expect(backoff.next()).toBe(50);
    const jittered = new Backoff(100, 1000, () => 1);
    expect(jittered.next()).toBe(120);
  });
});
