/**
 * The receiving end of control framing: a byte stream in, whole control
 * messages out.
 */
import { ProtocolError } from '../errors';
import { controlLengthPrefixBytes, controlMessageBytesMax } from '../limits';
import { decodeEnvelope } from './control-codec';
import { ControlMessage } from './control-messages';

/**
 * Splits a byte stream into control messages. A length prefix above
 * controlMessageBytesMax throws as soon as its 4 bytes are in,
 * before any body is buffered. A large body is copied once, into a buffer
 * of its announced size.
 */
export class ControlFrameReader {
  private readonly header = Buffer.alloc(controlLengthPrefixBytes);
  private headerFilledBytes = 0;
  private body: Buffer | null = null;
  private bodyFilledBytes = 0;

  /** Bytes of a partial message held back, waiting for the rest. */
  get bufferedBytes(): number {
    return this.headerFilledBytes + this.bodyFilledBytes;
  }

  /** Feeds bytes; returns the messages they complete, in order. Throws ProtocolError. */
  push(chunk: Buffer): ControlMessage[] {
    const messages: ControlMessage[] = [];
    let offset = 0;
    while (offset < chunk.length) {
      if (this.body === null) {
        if (this.headerFilledBytes === 0 && chunk.length - offset >= controlLengthPrefixBytes) {
          const sizeBytes = this.checkedLength(chunk.readUInt32LE(offset));
          const start = offset + controlLengthPrefixBytes;
          if (chunk.length - start >= sizeBytes) {
            messages.push(decodeEnvelope(chunk.subarray(start, start + sizeBytes)));
            offset = start + sizeBytes;
            continue;
          }
          this.body = Buffer.allocUnsafe(sizeBytes);
          this.bodyFilledBytes = 0;
          offset = start;
          continue;
        }
        const takeBytes = Math.min(controlLengthPrefixBytes - this.headerFilledBytes, chunk.length - offset);
        chunk.copy(this.header, this.headerFilledBytes, offset, offset + takeBytes);
        this.headerFilledBytes += takeBytes;
        offset += takeBytes;
        if (this.headerFilledBytes < controlLengthPrefixBytes) break;
        this.headerFilledBytes = 0;
        const sizeBytes = this.checkedLength(this.header.readUInt32LE(0));
        this.body = Buffer.allocUnsafe(sizeBytes);
        this.bodyFilledBytes = 0;
      }
      const takeBytes = Math.min(this.body.length - this.bodyFilledBytes, chunk.length - offset);
      chunk.copy(this.body, this.bodyFilledBytes, offset, offset + takeBytes);
      this.bodyFilledBytes += takeBytes;
      offset += takeBytes;
      if (this.bodyFilledBytes === this.body.length) {
        const body = this.body;
        this.body = null;
        this.bodyFilledBytes = 0;
        messages.push(decodeEnvelope(body));
      }
    }
    return messages;
  }

  private checkedLength(sizeBytes: number): number {
    if (sizeBytes > controlMessageBytesMax) {
      throw new ProtocolError(
        `expected a control message of at most ${controlMessageBytesMax} bytes, found a length prefix ` +
          `of ${sizeBytes}; the peer is not nraid or is broken`,
      );
    }
    if (sizeBytes === 0) {
      throw new ProtocolError('expected a control message, found a length prefix of 0');
    }
    return sizeBytes;
  }
}
