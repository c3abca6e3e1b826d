/**
 * bench/frame-codec.js hand-codes the data link's frame header; it had gone
 * stale (no HELLO type, a "reserved" word at 40 that must be zero where the
 * data plane puts the request id, a 1 MiB bound on DISCARD ranges). Here it
 * is checked against native/frame.h and native/limits.h as parsed from the
 * source (test/harness/frame-layout.ts) and against the addon's limits, and
 * the parser is checked against frame.h's own static_asserts.
 */
import * as fs from 'fs';
import { binding } from '../../src/native';
import { FRAME_H, fieldOffset, readFrameLayout } from '../harness/frame-layout';
import { LIMITS_H, evaluateConstant } from '../harness/native-source';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const codec = require('../../bench/frame-codec') as {
  FRAME_HEADER_BYTES: number;
  FRAME_HEADER_SIGNED_BYTES: number;
  FRAME_MAGIC: number;
  FRAME_PAYLOAD_BYTES_MAX: number;
  FRAME_TYPE_MAX: number;
  FRAME_TYPES_WITH_PAYLOAD: readonly number[];
  FrameFlag: Record<string, number>;
  FrameType: Record<string, number>;
  OFFSET: Record<string, number>;
  FrameHeaderCodec: new (crc32c: (data: Uint8Array) => number, bytes?: Buffer) => {
    bytes: Buffer;
    encode(header: Record<string, number>): Buffer;
    decode(into: Record<string, number>): Record<string, number>;
  };
  FrameHeaderError: new (message: string) => Error & { code: string };
};

const layout = readFrameLayout();
const crc32c = (data: Uint8Array): number => binding.crc32c(data);

describe('the frame layout parsed from native/frame.h', () => {
  test("agrees with frame.h's own static_asserts (sizeof, offsetof), so the parser reads C as the compiler does", () => {
    expect(layout.asserted.sizeofHeader).toBe(layout.headerBytes);
    expect(Object.keys(layout.asserted.offsets).length).toBeGreaterThan(0);
    for (const [name, offset] of Object.entries(layout.asserted.offsets)) expect({ name, offset: fieldOffset(layout, name) }).toEqual({ name, offset });
  });

  test('names every type of DESIGN.md §7, the HELLO of the handshake and the Diskless read pair', () => {
    expect(Object.keys(layout.types)).toEqual([
      'WRITE', 'DISCARD', 'ZEROES', 'BARRIER', 'ACK_RECV', 'ACK_WRITE', 'BARRIER_ACK',
      'RS_DATA', 'RS_REQUEST', 'RS_IS_IN_SYNC', 'OV_REQUEST', 'OV_REPLY', 'HELLO', 'READ_REQUEST', 'READ_REPLY',
    ]);
    expect(layout.typeMax).toBe(Math.max(...Object.values(layout.types)));
  });

  test('the payload bound is the addon\'s requestBytesMax', () => {
    expect(layout.payloadBytesMax).toBe(binding.limits.requestBytesMax);
  });

  test('a change to frame.h changes the parsed layout (canary: the comparisons below can fail)', () => {
    const frame = fs.readFileSync(FRAME_H, 'utf8');
    const limits = fs.readFileSync(LIMITS_H, 'utf8');
    const wider = readFrameLayout(frame.replace('uint32_t request_id;', 'uint64_t request_id;'), limits);
    expect(wider.headerBytes).toBe(56);
    expect(fieldOffset(wider, 'headerCrc')).toBe(48);
    const renumbered = readFrameLayout(frame.replace('kFrameHello = 13', 'kFrameHello = 14'), limits);
    expect(renumbered.types.HELLO).toBe(14);
    expect(() => readFrameLayout(frame.replace('uint16_t flags;', 'bool flags;'), limits)).toThrow('fixed-width integer');
  });

  test('constant expressions: literals with suffixes, shifts past 32 bits, names defined before; nothing else', () => {
    const known = new Map([['kA', 4096]]);
    expect(evaluateConstant('4ull << 20', known)).toBe(4 * 1024 * 1024);
    expect(evaluateConstant('1u << 40', known)).toBe(2 ** 40);
    expect(evaluateConstant('0x3144524E', known)).toBe(0x3144524e);
    expect(evaluateConstant('kA + 1', known)).toBe(4097);
    expect(evaluateConstant('static_cast<uint64_t>(kA) * 1048576', known)).toBe(4096 * 1048576);
    expect(() => evaluateConstant('static_cast<float>(kA)', known)).toThrow('unknown name static_cast');
    expect(() => evaluateConstant('kB', known)).toThrow('unknown name kB');
    expect(() => evaluateConstant('1; 2', known)).toThrow('expected integers and operators');
  });
});

describe('bench/frame-codec.js matches native/frame.h', () => {
  test('magic, header size, signed bytes and payload bound', () => {
    expect({
      magic: codec.FRAME_MAGIC,
      headerBytes: codec.FRAME_HEADER_BYTES,
      signedBytes: codec.FRAME_HEADER_SIGNED_BYTES,
      payloadBytesMax: codec.FRAME_PAYLOAD_BYTES_MAX,
    }).toEqual({
      magic: layout.magic,
      headerBytes: layout.headerBytes,
      signedBytes: fieldOffset(layout, 'headerCrc'),
      payloadBytesMax: layout.payloadBytesMax,
    });
  });

  test('every type number, the largest type, the flags and the types with a payload', () => {
    expect({ ...codec.FrameType }).toEqual(layout.types);
    expect(codec.FRAME_TYPE_MAX).toBe(layout.typeMax);
    expect({ ...codec.FrameFlag }).toEqual(layout.flags);
    expect([...codec.FRAME_TYPES_WITH_PAYLOAD].sort((a, b) => a - b)).toEqual(layout.typesWithPayload.map((t) => layout.types[t]).sort((a, b) => a - b));
  });

  test('every field at its C offset', () => {
    expect({ ...codec.OFFSET }).toEqual(Object.fromEntries(layout.fields.map((f) => [f.name, f.offset])));
  });

  test('an encoded header reads back at the C offsets, sealed as frame_seal() seals it', () => {
    const c = new codec.FrameHeaderCodec(crc32c);
    const header = { type: layout.types.WRITE, flags: layout.flags.WANT_WRITE_ACK, seq: 2 ** 40 + 3, epoch: 9, offset: 1 << 30, length: 8192, payloadCrc: 0xdeadbeef, requestId: 77 };
    const bytes = c.encode(header);
    expect(bytes.length).toBe(layout.headerBytes);
    const at = (name: string) => fieldOffset(layout, name);
    expect({
      magic: bytes.readUInt32LE(at('magic')),
      type: bytes.readUInt16LE(at('type')),
      flags: bytes.readUInt16LE(at('flags')),
      seq: Number(bytes.readBigUInt64LE(at('seq'))),
      epoch: Number(bytes.readBigUInt64LE(at('epoch'))),
      offset: Number(bytes.readBigUInt64LE(at('offset'))),
      length: bytes.readUInt32LE(at('length')),
      payloadCrc: bytes.readUInt32LE(at('payloadCrc')),
      requestId: bytes.readUInt32LE(at('requestId')),
      headerCrc: bytes.readUInt32LE(at('headerCrc')),
    }).toEqual({ magic: layout.magic, ...header, headerCrc: crc32c(bytes.subarray(0, at('headerCrc'))) });
    expect(c.decode({})).toEqual({ ...header, headerCrc: bytes.readUInt32LE(at('headerCrc')) });
  });

  test('what the data plane sends decodes: a HELLO, an ack echoing its request id, a DISCARD range over 1 MiB', () => {
    const c = new codec.FrameHeaderCodec(crc32c);
    const headers: Array<Record<string, number>> = [
      { type: layout.types.HELLO, flags: 0, seq: 0, epoch: 0, offset: 0, length: 0, payloadCrc: 0 },
      { type: layout.types.ACK_WRITE, flags: 0, seq: 5, epoch: 1, offset: 0, length: 0, payloadCrc: 0, requestId: 128 },
      { type: layout.types.DISCARD, flags: layout.flags.WANT_WRITE_ACK, seq: 6, epoch: 1, offset: 0, length: 64 * layout.payloadBytesMax, payloadCrc: 0 },
    ];
    for (const header of headers) {
      c.encode(header);
      expect(c.decode({})).toMatchObject(header);
    }
  });

  test('refuses what frame_check_header refuses: bad magic, bad header crc, unknown type, a payload over the bound', () => {
    const c = new codec.FrameHeaderCodec(crc32c);
    const good = { type: layout.types.WRITE, flags: 0, seq: 1, epoch: 1, offset: 0, length: 4096, payloadCrc: 0 };
    const refusal = (mutate: (b: Buffer) => void): string => {
      c.encode(good);
      mutate(c.bytes);
      try {
        c.decode({});
      } catch (error) {
        expect((error as { code: string }).code).toBe('NRAID_ERR_PROTOCOL');
        return (error as Error).message;
      }
      return 'accepted';
    };
    const reseal = (b: Buffer) => b.writeUInt32LE(crc32c(b.subarray(0, fieldOffset(layout, 'headerCrc'))), fieldOffset(layout, 'headerCrc'));
    expect(refusal((b) => b.writeUInt32LE(layout.magic ^ 1, fieldOffset(layout, 'magic')))).toContain('bad frame magic');
    expect(refusal((b) => (b[fieldOffset(layout, 'seq')] ^= 1))).toContain('bad frame header crc32c');
    expect(refusal((b) => {
      b.writeUInt16LE(layout.typeMax + 1, fieldOffset(layout, 'type'));
      reseal(b);
    })).toContain(`unknown frame type ${layout.typeMax + 1}`);
    expect(refusal((b) => {
      b.writeUInt32LE(layout.payloadBytesMax + 4096, fieldOffset(layout, 'length'));
      reseal(b);
    })).toContain(`at most ${layout.payloadBytesMax} bytes`);
    expect(refusal(() => undefined)).toBe('accepted');
  });
});
