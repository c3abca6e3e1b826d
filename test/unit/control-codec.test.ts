/**
 * Control link codec, auth and backoff in isolation: round trips of every
 * message (uint64 at its limits), framing fed byte by byte, limits enforced
 * before a body is buffered, and the HMAC's resistance to replay and
 * reflection. The link over real sockets is in control-link.test.ts.
 */
import { randomBytes } from 'crypto';
import { ProtocolError } from '../../src/errors';
import {
  ControlFrameReader,
  ControlMessage,
  NodeState,
  decodeBitmapChunk,
  decodeEnvelope,
  decodeResyncControl,
  decodeRoleChange,
  encodeBitmapChunk,
  encodeFrame,
  encodeResyncControl,
  encodeRoleChange,
} from '../../src/protocol/control';
import { authHmac, newNonce, verifyAuthHmac } from '../../src/link/auth';
import { Backoff } from '../../src/link/backoff';
import { CONTROL_MESSAGE_SIZE_MAX_BYTES } from '../../src/link/limits-link';

const UINT64_MAX = (1n << 64n) - 1n;

const state: NodeState = {
  role: 'Primary',
  disk: 'UpToDate',
  dataSizeBytes: 1073741824n,
  uuids: { current: UINT64_MAX, bitmap: 0x8000000000000001n, history: [1n, (1n << 53n) + 1n] },
  flags: 0x80000005,
  protocol: 'B',
};

const samples: ControlMessage[] = [
  {
    type: 'hello',
    body: {
      protocolVersion: 3,
      protocolVersionMin: 1,
      features: ['bitmap-lz4', 'x'],
      resource: 'r0',
      nodeName: 'alpha',
      nonce: randomBytes(32),
    },
  },
  { type: 'auth', body: { hmac: randomBytes(32) } },
  { type: 'sessionStart', body: { dataToken: randomBytes(32) } },
  { type: 'nodeState', body: state },
  { type: 'ping', body: { seq: 0xffffffff } },
  { type: 'pong', body: { seq: 7 } },
  { type: 'request', body: { id: 42, kind: 'role-change', payload: Buffer.from([1, 2, 3]) } },
  { type: 'response', body: { id: 42, ok: false, errorCode: 'NRAID_ERR_STATE', errorMessage: 'no', payload: Buffer.alloc(0) } },
  { type: 'notice', body: { kind: 'hint', payload: Buffer.from('abc') } },
  { type: 'dataLinkAccepted', body: {} },
  { type: 'goodbye', body: { reason: 'bye' } },
];

function withoutPrefix(frame: Buffer): Buffer {
  return frame.subarray(4);
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
    const reader = new ControlFrameReader();
    const out: ControlMessage[] = [];
    for (let i = 0; i < stream.length; i++) out.push(...reader.push(stream.subarray(i, i + 1)));
    expect(out).toEqual(samples);
    expect(reader.bufferedBytes).toBe(0);
  });

  test('many messages in one chunk, split mid-prefix, come out whole', () => {
    const stream = Buffer.concat(samples.map(encodeFrame));
    const reader = new ControlFrameReader();
    const out = [...reader.push(stream.subarray(0, 6)), ...reader.push(stream.subarray(6))];
    expect(out).toEqual(samples);
  });

  test('an oversized length prefix throws as soon as its 4 bytes are in', () => {
    const reader = new ControlFrameReader();
    const prefix = Buffer.alloc(4);
    prefix.writeUInt32LE(CONTROL_MESSAGE_SIZE_MAX_BYTES + 1);
    expect(reader.push(prefix.subarray(0, 3))).toEqual([]);
    expect(() => reader.push(prefix.subarray(3))).toThrow(ProtocolError);
    expect(() => new ControlFrameReader().push(prefix)).toThrow(String(CONTROL_MESSAGE_SIZE_MAX_BYTES + 1));
  });

  test('a zero length, garbage bytes, an empty envelope and wrong sizes are protocol errors', () => {
    expect(() => new ControlFrameReader().push(Buffer.alloc(4))).toThrow(ProtocolError);
    expect(() => decodeEnvelope(Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff]))).toThrow(ProtocolError);
    // field 15 (unknown to this build), varint 1
    expect(() => decodeEnvelope(Buffer.from([0x78, 0x01]))).toThrow(/empty or unknown/);
    const shortNonce = encodeFrame({ type: 'auth', body: { hmac: randomBytes(31) } });
    expect(() => decodeEnvelope(withoutPrefix(shortNonce))).toThrow(/must be 32 bytes, found 31/);
    const noName: ControlMessage = { ...samples[0]!, body: { ...(samples[0]!.body as object), nodeName: '' } } as ControlMessage;
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

  test('payload messages round trip and reject bad values', () => {
    const chunk = {
      offsetBits: 64n * 1000n,
      countBits: (1n << 40n) + 3n,
      granularityBytes: 4096,
      wordsBytes: 8000,
      wordsLz4: randomBytes(100),
      last: true,
    };
    expect(decodeBitmapChunk(encodeBitmapChunk(chunk))).toEqual(chunk);
    expect(() => encodeBitmapChunk({ ...chunk, offsetBits: 65n })).toThrow(/multiple of 64/);
    const control = {
      action: 'pause' as const,
      mode: 'verify' as const,
      startOffsetBytes: 0n,
      endOffsetBytes: UINT64_MAX,
      rateBytesPerSec: 100n << 20n,
    };
    expect(decodeResyncControl(encodeResyncControl(control))).toEqual(control);
    const change = { transactionId: 9, phase: 'commit' as const, role: 'Secondary' as const, force: true };
    expect(decodeRoleChange(encodeRoleChange(change))).toEqual(change);
    expect(() => decodeRoleChange(Buffer.alloc(0))).toThrow(/role change phase must be one of/);
  });
});

describe('auth HMAC', () => {
  const secret = Buffer.from('s3cret');
  const alphaNonce = newNonce();
  const betaNonce = newNonce();

  test('the HMAC alpha sends verifies on beta', () => {
    const hmac = authHmac(secret, betaNonce, alphaNonce, 'alpha');
    expect(verifyAuthHmac(secret, betaNonce, alphaNonce, 'alpha', hmac)).toBe(true);
  });

  test('another secret, a replay against a new nonce, and a reflection all fail', () => {
    const hmac = authHmac(secret, betaNonce, alphaNonce, 'alpha');
    expect(verifyAuthHmac(Buffer.from('other'), betaNonce, alphaNonce, 'alpha', hmac)).toBe(false);
    expect(verifyAuthHmac(secret, newNonce(), alphaNonce, 'alpha', hmac)).toBe(false);
    // beta's own Auth sent back to beta as if from alpha
    const betaHmac = authHmac(secret, alphaNonce, betaNonce, 'beta');
    expect(verifyAuthHmac(secret, betaNonce, alphaNonce, 'alpha', betaHmac)).toBe(false);
    expect(verifyAuthHmac(secret, betaNonce, alphaNonce, 'alpha', hmac.subarray(0, 31))).toBe(false);
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
