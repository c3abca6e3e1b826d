/**
 * A man in the middle of the data link (issue 11, finding 4): follows the
 * stream toward the target frame by frame and, when armed, changes one byte
 * of the next WRITE payload and recomputes its payload crc32c and header
 * crc32c, so that every frame check still passes. Used by a FaultProxy made
 * with `frameAware: true` (rewriteNextWrite()).
 *
 * With TLS the stream after the data link's preamble and token is TLS records,
 * not frames: the rewriter then changes one byte of the next application-data
 * record, which is all a relay without the keys can do (it has no checksum to
 * fix). Either way it holds bytes back only up to the end of the unit
 * (frame or record) it is looking at, and forwards them in order.
 */
import { crc32c } from '../../src/native';
import { controlPreambleBytes, dataTokenBytes } from '../../src/limits';
import { fieldOffset, FrameLayout, readFrameLayout } from './frame-layout';

export interface RewriteRecord {
  /** Which connection (the proxy's number). */
  connectionId: number;
  /** frame: a WRITE's payload byte changed and its checksums fixed; tls: one byte of a TLS record changed. */
  mode: 'frame' | 'tls';
  /** frame: the WRITE's device offset + the changed byte's index; tls: the byte's position in the connection. */
  offsetBytes: number;
}

const tlsRecordHeaderBytes = 5;
const tlsHandshake = 0x16;
const tlsApplicationData = 0x17;

let layout: FrameLayout | null = null;

/** Splits one connection's stream toward the target into units, rewriting one when armed. */
export class FrameRewriter {
  private pending: Buffer = Buffer.alloc(0);
  private consumedBytes = 0;
  private phase: 'start' | 'after-token' | 'frames' | 'tls' | 'other' = 'start';

  constructor(
    private readonly connectionId: number,
    /** Asks whether a rewrite is armed; consumes it when true is returned by take(). */
    private readonly armed: { pending: number },
    private readonly record: (r: RewriteRecord) => void,
  ) {
    layout ??= readFrameLayout();
  }

  /** Takes a chunk; returns what may be forwarded now (possibly changed), keeping a partial unit back. */
  push(chunk: Buffer): Buffer {
    if (this.phase === 'other') return chunk;
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const out: Buffer[] = [];
    for (;;) {
      const size = this.nextUnitBytes();
      if (size === null || size > this.pending.length) break;
      const unit = Buffer.from(this.pending.subarray(0, size));
      this.pending = this.pending.subarray(size);
      this.maybeRewrite(unit);
      this.consumedBytes += size;
      out.push(unit);
      if (this.passThrough()) {
        out.push(this.pending);
        this.pending = Buffer.alloc(0);
        break;
      }
    }
    if (this.passThrough() && this.pending.length > 0) {
      out.push(this.pending);
      this.pending = Buffer.alloc(0);
    }
    return out.length === 1 ? out[0]! : Buffer.concat(out);
  }

  /** A control connection: not followed, passed on as it comes. */
  private passThrough(): boolean {
    return this.phase === 'other';
  }

  /** Bytes of the next unit, or null when not yet known. */
  private nextUnitBytes(): number | null {
    const l = layout!;
    if (this.phase === 'start') {
      const prefix = controlPreambleBytes + dataTokenBytes;
      if (this.pending.length < controlPreambleBytes) return null;
      if (this.pending.subarray(0, controlPreambleBytes).toString('latin1') !== 'NRAIDDAT') {
        this.phase = 'other'; // a control connection: not ours
        return null;
      }
      return prefix;
    }
    if (this.phase === 'after-token') {
      // After the token: TLS (its handshake record) or the frames themselves.
      if (this.pending.length === 0) return null;
      this.phase = this.pending[0] === tlsHandshake ? 'tls' : 'frames';
    }
    if (this.phase === 'tls') {
      if (this.pending.length < tlsRecordHeaderBytes) return null;
      return tlsRecordHeaderBytes + this.pending.readUInt16BE(3);
    }
    if (this.pending.length < l.headerBytes) return null;
    const type = this.pending.readUInt16LE(fieldOffset(l, 'type'));
    const length = this.pending.readUInt32LE(fieldOffset(l, 'length'));
    const typeName = Object.keys(l.types).find((name) => l.types[name] === type);
    const withPayload = typeName !== undefined && l.typesWithPayload.includes(typeName);
    return l.headerBytes + (withPayload ? length : 0);
  }

  private maybeRewrite(unit: Buffer): void {
    const l = layout!;
    if (this.phase === 'start') {
      this.phase = 'after-token';
      return;
    }
    if (this.armed.pending === 0) return;
    if (this.phase === 'tls') {
      if (unit[0] !== tlsApplicationData || unit.length <= tlsRecordHeaderBytes + 32) return;
      const index = tlsRecordHeaderBytes + Math.floor((unit.length - tlsRecordHeaderBytes) / 2);
      unit[index] ^= 0x5a;
      this.armed.pending -= 1;
      this.record({ connectionId: this.connectionId, mode: 'tls', offsetBytes: this.consumedBytes + index });
      return;
    }
    const type = unit.readUInt16LE(fieldOffset(l, 'type'));
    const length = unit.readUInt32LE(fieldOffset(l, 'length'));
    if (type !== l.types.WRITE || length === 0) return;
    const index = l.headerBytes + Math.floor(length / 2);
    unit[index] ^= 0x5a;
    unit.writeUInt32LE(crc32c(unit.subarray(l.headerBytes)), fieldOffset(l, 'payloadCrc'));
    const headerCrcAt = fieldOffset(l, 'headerCrc');
    unit.writeUInt32LE(crc32c(unit.subarray(0, headerCrcAt)), headerCrcAt);
    this.armed.pending -= 1;
    const deviceOffset = Number(unit.readBigUInt64LE(fieldOffset(l, 'offset')));
    this.record({ connectionId: this.connectionId, mode: 'frame', offsetBytes: deviceOffset + Math.floor(length / 2) });
  }
}
