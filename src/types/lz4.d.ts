declare module 'lz4' {
  /** LZ4 frame format. */
  export function encode(input: Buffer): Buffer;
  export function decode(input: Buffer): Buffer;
  /** Largest size of `inputBytes` bytes after block compression. */
  export function encodeBound(inputBytes: number): number;
  /** LZ4 block format: compresses `input` into `output`; returns the bytes written (0: did not fit). */
  export function encodeBlock(input: Buffer, output: Buffer): number;
  /** Decompresses one block into `output`; returns the bytes written, negative when the input is malformed. */
  export function decodeBlock(input: Buffer, output: Buffer): number;
}
