/**
 * The receiving end of control framing: a byte stream in, whole control
 * messages out.
 */
import { ProtocolError } from '../errors';
import { controlLengthPrefixBytes, controlMessageBytesMax, controlPreAuthMessageBytesMax } from '../limits';
import { decodeEnvelope } from './control-codec';
import { ControlMessage, ControlMessageType } from './control-messages';

/**
 * Envelope field numbers (control.proto) of the messages accepted before the
 * peer is authenticated, with protobuf wire type 2: their one-byte tag.
 */
const PRE_AUTH_TAGS: ReadonlyMap<number, ControlMessageType> = new Map([
  [(1 << 3) | 2, 'hello'],
  [(2 << 3) | 2, 'auth'],
]);

/**
 * Splits a byte stream into control messages.
 *
 * Until `authenticated()` is called the reader is in its pre-authentication
 * mode (a connection from anyone): a length prefix above
 * controlPreAuthMessageBytesMax throws as soon as its 4 bytes are in, and a
 * body whose first byte is not the tag of a Hello or an Auth throws before
 * it is decoded. Nothing larger than that bound is ever buffered for an
 * unauthenticated peer. Afterwards the bound is controlMessageBytesMax.
 * A large body is copied once, into a buffer of its announced size.
 */
export class ControlFrameReader {
  private readonly header = Buffer.alloc(controlLengthPrefixBytes);
  private headerFilledBytes = 0;
  private body: Buffer | null = null;
  private bodyFilledBytes = 0;
  private preAuth: boolean;

  /** `preAuth: false` skips the pre-authentication bounds (for tests of framing alone). */
  constructor(options: { preAuth?: boolean } = {}) {
    this.preAuth = options.preAuth ?? true;
  }

  /** Bytes of a partial message held back, waiting for the rest. */
  get bufferedBytes(): number {
    return this.headerFilledBytes + this.bodyFilledBytes;
  }

  /** The largest message accepted now. */
  get messageBytesMax(): number {
    return this.preAuth ? controlPreAuthMessageBytesMax : controlMessageBytesMax;
  }

  /** The peer proved the secret: lift the pre-authentication bounds. */
  authenticated(): void {
    this.preAuth = false;
  }

  /** Feeds bytes; returns the messages they complete, in order. Throws ProtocolError. */
  push(chunk: Buffer): ControlMessage[] {
    const messages: ControlMessage[] = [];
    this.feed(chunk, (message) => {
      messages.push(message);
      return true;
    });
    return messages;
  }

  /**
   * Feeds bytes and hands each message to `onMessage` as soon as it is whole,
   * so that the handler can lift the bounds (`authenticated()`) before the
   * next length prefix is read, or stop (return false) before anything more
   * is looked at. Throws ProtocolError.
   */
  feed(chunk: Buffer, onMessage: (message: ControlMessage) => boolean): void {
    let offset = 0;
    while (offset < chunk.length) {
      if (this.body === null) {
        if (this.headerFilledBytes === 0 && chunk.length - offset >= controlLengthPrefixBytes) {
          const sizeBytes = this.checkedLength(chunk.readUInt32LE(offset));
          const start = offset + controlLengthPrefixBytes;
          if (chunk.length - start >= sizeBytes) {
            offset = start + sizeBytes;
            if (!onMessage(this.decode(chunk.subarray(start, start + sizeBytes)))) return;
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
        if (!onMessage(this.decode(body))) return;
      }
    }
  }

  private decode(body: Buffer): ControlMessage {
    if (this.preAuth && !PRE_AUTH_TAGS.has(body[0]!)) {
      throw new ProtocolError(
        `expected a Hello or an Auth before authentication, found an Envelope starting with byte 0x${body[0]!.toString(16)} ` +
          `(${body.length} bytes); the client is not an nraid peer of this version`,
      );
    }
    return decodeEnvelope(body);
  }

  private checkedLength(sizeBytes: number): number {
    const sizeBytesMax = this.messageBytesMax;
    if (sizeBytes > sizeBytesMax) {
      const when = this.preAuth ? ' before authentication (a Hello or an Auth)' : '';
      throw new ProtocolError(
        `expected a control message of at most ${sizeBytesMax} bytes${when}, found a length prefix ` +
          `of ${sizeBytes}; the peer is not nraid or is broken`,
      );
    }
    if (sizeBytes === 0) {
      throw new ProtocolError('expected a control message, found a length prefix of 0');
    }
    return sizeBytes;
  }
}
