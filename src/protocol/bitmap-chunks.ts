/**
 * The bitmap answer of the control link in chunks: `bitmapChunks` splits a
 * bitmap (whole, or read a chunk at a time from a BitmapSource) into
 * BitmapChunks of at most bitmapChunkBytesMax words each
 * (lz4 block compressed when that is smaller, raw otherwise, so no chunk is
 * larger than the bound on the wire either); `BitmapAssembler` puts them back
 * together and checks every chunk against the ones before (granularity and
 * total size unchanged, offsets contiguous from 0, sizes within bounds, the
 * words decompress to their announced size, `last` exactly on the final one).
 * A chunk that breaks any of these throws ProtocolError.
 */
import lz4 from 'lz4';
import { ProtocolError } from '../errors';
import { bitmapChunkBytesMax, bitmapReplyBytesMax } from '../limits';
import type { BitmapChunk, BitmapPart, BitmapReply, BitmapSource } from './control';

const WORD_BYTES = 8;

/** The words of `reply` as a reader: a whole Buffer's views, or the BitmapSource itself. */
function wordsOf(reply: BitmapReply | BitmapSource): BitmapSource {
  if ('sizeBytes' in reply) return reply;
  const { words } = reply;
  if (!Buffer.isBuffer(words)) throw new ProtocolError('a bitmap answer needs its words as a Buffer');
  return { granularityBytes: reply.granularityBytes, sizeBytes: words.length, read: (offsetBytes, lengthBytes) => words.subarray(offsetBytes, offsetBytes + lengthBytes) };
}

/** Throws ProtocolError unless `reply` can be sent: whole u64 words, a granularity, within the bound. */
export function checkBitmapReply(reply: BitmapReply | BitmapSource): void {
  const source = wordsOf(reply);
  if (!(Number.isSafeInteger(reply.granularityBytes) && reply.granularityBytes > 0 && reply.granularityBytes < 2 ** 32)) {
    throw new ProtocolError(`a bitmap's granularity must be a u32 above 0 bytes, found ${reply.granularityBytes}`);
  }
  if (!Number.isSafeInteger(source.sizeBytes) || source.sizeBytes < 0 || source.sizeBytes % WORD_BYTES !== 0) {
    throw new ProtocolError(`a bitmap must be whole u64 words, found ${source.sizeBytes} bytes`);
  }
  if (source.sizeBytes > bitmapReplyBytesMax) {
    throw new ProtocolError(`a bitmap may have at most ${bitmapReplyBytesMax} bytes of words, found ${source.sizeBytes}`);
  }
}

/**
 * The chunks of `reply`, in order; reads (from a BitmapSource) and compresses
 * one chunk per step, so a sender can pace them and never holds more than one.
 * From a BitmapSource, a chunk's words are only valid until the next step
 * (one compression buffer serves them all): encode each chunk before taking
 * the next.
 */
export function* bitmapChunks(reply: BitmapReply | BitmapSource): Generator<BitmapChunk, void, void> {
  checkBitmapReply(reply);
  const source = wordsOf(reply);
  const reuse = 'sizeBytes' in reply;
  const totalBytes = source.sizeBytes;
  let scratch: Buffer | null = null;
  let offsetBytes = 0;
  do {
    const lengthBytes = Math.min(bitmapChunkBytesMax, totalBytes - offsetBytes);
    const words = lengthBytes > 0 ? source.read(offsetBytes, lengthBytes) : Buffer.alloc(0);
    if (words.length !== lengthBytes) throw new ProtocolError(`expected ${lengthBytes} bytes of bitmap words at ${offsetBytes}, read ${words.length}`);
    const bound = lz4.encodeBound(words.length);
    if (reuse) scratch ??= Buffer.allocUnsafe(lz4.encodeBound(bitmapChunkBytesMax));
    const packed = reuse ? scratch!.subarray(0, bound) : Buffer.allocUnsafe(bound);
    const packedBytes = words.length > 0 ? lz4.encodeBlock(words, packed) : 0;
    const compressed = packedBytes > 0 && packedBytes < words.length;
    offsetBytes += words.length;
    yield {
      granularityBytes: reply.granularityBytes,
      totalBytes,
      offsetBytes: offsetBytes - words.length,
      wordsBytes: words.length,
      words: compressed ? packed.subarray(0, packedBytes) : words,
      lz4: compressed,
      last: offsetBytes === totalBytes,
    };
  } while (offsetBytes < totalBytes);
}

/**
 * Reassembles one bitmap answer; push() returns the whole bitmap with the last
 * chunk. With a sink, each checked part goes there instead as it arrives (what
 * the sink throws fails the answer) and the last push() returns no words: a
 * daemon merges a peer's bitmap this way, never holding all of it.
 */
export class BitmapAssembler {
  private readonly parts: Buffer[] = [];
  private receivedBytes = 0;
  private first: BitmapChunk | null = null;
  private done = false;
  private scratch: Buffer | null = null;

  constructor(private readonly sink?: (part: BitmapPart) => void) {}

  push(chunk: BitmapChunk): BitmapReply | null {
    if (this.done) throw new ProtocolError('expected no bitmap chunk after the last one, found another');
    const first = this.first ?? chunk;
    if (this.first === null) {
      if (!(chunk.granularityBytes > 0)) throw new ProtocolError(`expected a bitmap granularity above 0 bytes, found ${chunk.granularityBytes}`);
      if (chunk.totalBytes % WORD_BYTES !== 0 || chunk.totalBytes > bitmapReplyBytesMax) {
        throw new ProtocolError(
          `expected a bitmap of whole u64 words and at most ${bitmapReplyBytesMax} bytes, found one of ${chunk.totalBytes} bytes`,
        );
      }
      this.first = chunk;
    }
    if (chunk.granularityBytes !== first.granularityBytes || chunk.totalBytes !== first.totalBytes) {
      throw new ProtocolError(
        `expected every bitmap chunk to announce ${first.totalBytes} bytes at ${first.granularityBytes} bytes per bit, ` +
          `found a chunk announcing ${chunk.totalBytes} bytes at ${chunk.granularityBytes}`,
      );
    }
    if (chunk.offsetBytes !== this.receivedBytes) {
      throw new ProtocolError(`expected the bitmap chunk at offset ${this.receivedBytes}, found one at offset ${chunk.offsetBytes} (out of order)`);
    }
    if (chunk.wordsBytes > bitmapChunkBytesMax || chunk.words.length > bitmapChunkBytesMax) {
      throw new ProtocolError(
        `expected a bitmap chunk of at most ${bitmapChunkBytesMax} bytes, found ${chunk.wordsBytes} bytes of words ` +
          `(${chunk.words.length} on the wire)`,
      );
    }
    if (chunk.wordsBytes % WORD_BYTES !== 0 || (chunk.wordsBytes === 0 && chunk.totalBytes > 0)) {
      throw new ProtocolError(`expected a bitmap chunk of whole u64 words, found ${chunk.wordsBytes} bytes`);
    }
    const endBytes = this.receivedBytes + chunk.wordsBytes;
    if (endBytes > chunk.totalBytes) {
      throw new ProtocolError(`expected the bitmap chunks to end at ${chunk.totalBytes} bytes, found a chunk ending at ${endBytes}`);
    }
    if (chunk.last !== (endBytes === chunk.totalBytes)) {
      throw new ProtocolError(
        chunk.last
          ? `expected more bitmap chunks after ${endBytes} of ${chunk.totalBytes} bytes, found the last flag`
          : `expected the last flag on the chunk that ends the bitmap at ${endBytes} bytes, found it unset`,
      );
    }
    if (this.sink !== undefined) {
      // The sink takes each part before the next arrives: one scratch buffer for every chunk, so a
      // large bitmap leaves no trail of garbage (32 MiB per TiB) waiting for a collection.
      this.scratch ??= Buffer.allocUnsafe(bitmapChunkBytesMax);
      const words = unpack(chunk, this.scratch);
      this.sink({ granularityBytes: first.granularityBytes, totalBytes: first.totalBytes, offsetBytes: this.receivedBytes, words });
    } else {
      this.parts.push(unpack(chunk));
    }
    this.receivedBytes = endBytes;
    if (!chunk.last) return null;
    this.done = true;
    if (this.sink !== undefined) return { granularityBytes: first.granularityBytes, words: Buffer.alloc(0) };
    return { granularityBytes: first.granularityBytes, words: this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, endBytes) };
  }
}

/** The chunk's words: a copy, or with `scratch` (for a sink that takes them at once) a view of the chunk or of scratch. */
function unpack(chunk: BitmapChunk, scratch?: Buffer): Buffer {
  if (!chunk.lz4) {
    if (chunk.words.length !== chunk.wordsBytes) {
      throw new ProtocolError(`expected ${chunk.wordsBytes} bytes of raw bitmap words, found ${chunk.words.length}`);
    }
    if (scratch !== undefined) return chunk.words;
    return Buffer.from(chunk.words); // a copy: the chunk may be a view of a larger receive buffer
  }
  const words = scratch !== undefined ? scratch.subarray(0, chunk.wordsBytes) : Buffer.allocUnsafe(chunk.wordsBytes);
  let decodedBytes: number;
  try {
    decodedBytes = lz4.decodeBlock(chunk.words, words);
  } catch (error) {
    decodedBytes = -1;
  }
  if (decodedBytes !== chunk.wordsBytes) {
    throw new ProtocolError(
      `expected ${chunk.wordsBytes} bytes of bitmap words from ${chunk.words.length} bytes of lz4, found ` +
        (decodedBytes < 0 ? 'bytes that do not decompress' : `${decodedBytes} bytes`),
    );
  }
  return words;
}
