'use strict';
/**
 * A JavaScript mirror of the 48-byte data-link frame header of native/frame.h
 * (the real codec, in the data plane), for the micro benchmark: encoded into
 * and decoded from one preallocated buffer (a sender or receiver keeps one
 * per connection), no allocation per frame; little endian throughout.
 *
 *   0 magic u32 | 4 type u16 | 6 flags u16 | 8 seq u64 | 16 epoch u64 |
 *   24 offset u64 | 32 length u32 | 36 payloadCrc u32 | 40 requestId u32 |
 *   44 headerCrc u32 (crc32c of bytes 0..43)
 *
 * Hand-written, and checked: test/unit/frame-codec.test.ts reads frame.h and
 * limits.h (magic, types, flags, field offsets, which types carry a payload,
 * the payload bound) and fails when anything here differs. A check, not
 * code generation, so that the benchmark stays one plain file that runs
 * without a build step.
 *
 * u64 fields travel as JavaScript numbers: values above 2^53 - 1 are refused
 * on both sides rather than rounded.
 */
const FRAME_MAGIC = 0x3144524e; // "NRD1"
const FRAME_HEADER_BYTES = 48;
/** The header crc32c covers the bytes before it: offsetof(FrameHeader, header_crc). */
const FRAME_HEADER_SIGNED_BYTES = 44;
/** kRequestBytesMax: the largest payload (WRITE, RS_DATA, OV_REPLY). */
const FRAME_PAYLOAD_BYTES_MAX = 1024 * 1024;

const FrameType = Object.freeze({
  WRITE: 1,
  DISCARD: 2,
  ZEROES: 3,
  BARRIER: 4,
  ACK_RECV: 5,
  ACK_WRITE: 6,
  BARRIER_ACK: 7,
  RS_DATA: 8,
  RS_REQUEST: 9,
  RS_IS_IN_SYNC: 10,
  OV_REQUEST: 11,
  OV_REPLY: 12,
  HELLO: 13,
  READ_REQUEST: 14,
  READ_REPLY: 15,
});
const FRAME_TYPE_MAX = FrameType.READ_REPLY;

const FrameFlag = Object.freeze({
  WANT_RECV_ACK: 1,
  WANT_WRITE_ACK: 2,
  RESYNC: 4,
  READ_ERROR: 8,
});

/** frame_has_payload(): only these types are followed by `length` bytes of payload; for the rest length is a range. */
const FRAME_TYPES_WITH_PAYLOAD = Object.freeze([FrameType.WRITE, FrameType.RS_DATA, FrameType.OV_REPLY, FrameType.READ_REPLY]);

const OFFSET = Object.freeze({
  magic: 0,
  type: 4,
  flags: 6,
  seq: 8,
  epoch: 16,
  offset: 24,
  length: 32,
  payloadCrc: 36,
  requestId: 40,
  headerCrc: 44,
});

const TWO_POW_32 = 0x100000000;
/** High word of Number.MAX_SAFE_INTEGER (2^53 - 1). */
const SAFE_HIGH_MAX = 0x1fffff;

/** A header that fails a check; the code is ProtocolError's in src/errors.ts, as a bad frame is on the link. */
class FrameHeaderError extends Error {
  constructor(message) {
    super(message);
    this.name = 'FrameHeaderError';
    this.code = 'NRAID_ERR_PROTOCOL';
  }
}

function assertU64(name, value) {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`frame header ${name}: expected an integer in [0, 2^53), found ${value}`);
  }
}

function assertU32(name, value) {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new RangeError(`frame header ${name}: expected an integer in [0, 2^32), found ${value}`);
  }
}

class FrameHeaderCodec {
  /**
   * @param {(data: Uint8Array, seed?: number) => number} crc32c  the addon's crc32c
   * @param {Buffer} [bytes]  the 48-byte buffer this codec encodes into and decodes from
   */
  constructor(crc32c, bytes = Buffer.alloc(FRAME_HEADER_BYTES)) {
    if (bytes.length !== FRAME_HEADER_BYTES) {
      throw new RangeError(`frame header buffer: expected ${FRAME_HEADER_BYTES} bytes, found ${bytes.length}`);
    }
    this.crc32c = crc32c;
    this.bytes = bytes;
    this.signed = bytes.subarray(0, FRAME_HEADER_SIGNED_BYTES);
  }

  /** Writes `header` (without headerCrc; requestId defaults to 0) into this.bytes and signs it; returns this.bytes. */
  encode(header) {
    const b = this.bytes;
    if (!(header.type >= 1 && header.type <= FRAME_TYPE_MAX && Number.isInteger(header.type))) {
      throw new RangeError(`frame header type: expected 1..${FRAME_TYPE_MAX}, found ${header.type}`);
    }
    if (!(header.flags >= 0 && header.flags <= 0xffff && Number.isInteger(header.flags))) {
      throw new RangeError(`frame header flags: expected a u16, found ${header.flags}`);
    }
    assertU64('seq', header.seq);
    assertU64('epoch', header.epoch);
    assertU64('offset', header.offset);
    assertU32('length', header.length);
    assertU32('payloadCrc', header.payloadCrc);
    const requestId = header.requestId ?? 0;
    assertU32('requestId', requestId);
    if (FRAME_TYPES_WITH_PAYLOAD.includes(header.type) && header.length > FRAME_PAYLOAD_BYTES_MAX) {
      throw new RangeError(`frame header length: a payload of at most ${FRAME_PAYLOAD_BYTES_MAX} bytes, found ${header.length}`);
    }
    b.writeUInt32LE(FRAME_MAGIC, OFFSET.magic);
    b.writeUInt16LE(header.type, OFFSET.type);
    b.writeUInt16LE(header.flags, OFFSET.flags);
    writeU64(b, OFFSET.seq, header.seq);
    writeU64(b, OFFSET.epoch, header.epoch);
    writeU64(b, OFFSET.offset, header.offset);
    b.writeUInt32LE(header.length, OFFSET.length);
    b.writeUInt32LE(header.payloadCrc, OFFSET.payloadCrc);
    b.writeUInt32LE(requestId, OFFSET.requestId);
    b.writeUInt32LE(this.crc32c(this.signed), OFFSET.headerCrc);
    return b;
  }

  /**
   * Checks and reads this.bytes into `into` (reused by the caller). A header
   * that fails any check throws FrameHeaderError and must not be used.
   */
  decode(into) {
    const b = this.bytes;
    const magic = b.readUInt32LE(OFFSET.magic);
    if (magic !== FRAME_MAGIC) {
      throw new FrameHeaderError(`bad frame magic: expected 0x${FRAME_MAGIC.toString(16)}, found 0x${magic.toString(16)}`);
    }
    const headerCrc = b.readUInt32LE(OFFSET.headerCrc);
    const computedCrc = this.crc32c(this.signed);
    if (headerCrc !== computedCrc) {
      throw new FrameHeaderError(`bad frame header crc32c: header says 0x${headerCrc.toString(16)}, bytes give 0x${computedCrc.toString(16)}`);
    }
    const type = b.readUInt16LE(OFFSET.type);
    if (type < 1 || type > FRAME_TYPE_MAX) throw new FrameHeaderError(`unknown frame type ${type}`);
    const length = b.readUInt32LE(OFFSET.length);
    if (FRAME_TYPES_WITH_PAYLOAD.includes(type) && length > FRAME_PAYLOAD_BYTES_MAX) {
      throw new FrameHeaderError(`frame length: a payload of at most ${FRAME_PAYLOAD_BYTES_MAX} bytes, found ${length}`);
    }
    into.type = type;
    into.flags = b.readUInt16LE(OFFSET.flags);
    into.seq = readU64(b, OFFSET.seq, 'seq');
    into.epoch = readU64(b, OFFSET.epoch, 'epoch');
    into.offset = readU64(b, OFFSET.offset, 'offset');
    into.length = length;
    into.payloadCrc = b.readUInt32LE(OFFSET.payloadCrc);
    into.requestId = b.readUInt32LE(OFFSET.requestId);
    into.headerCrc = headerCrc;
    return into;
  }
}

function writeU64(b, at, value) {
  b.writeUInt32LE(value % TWO_POW_32, at);
  b.writeUInt32LE(Math.floor(value / TWO_POW_32), at + 4);
}

function readU64(b, at, name) {
  const high = b.readUInt32LE(at + 4);
  if (high > SAFE_HIGH_MAX) throw new FrameHeaderError(`frame ${name} above 2^53 - 1 (high word 0x${high.toString(16)})`);
  return high * TWO_POW_32 + b.readUInt32LE(at);
}

module.exports = {
  FRAME_HEADER_BYTES,
  FRAME_HEADER_SIGNED_BYTES,
  FRAME_MAGIC,
  FRAME_PAYLOAD_BYTES_MAX,
  FRAME_TYPE_MAX,
  FRAME_TYPES_WITH_PAYLOAD,
  FrameFlag,
  FrameHeaderCodec,
  FrameHeaderError,
  FrameType,
  OFFSET,
};
