declare module 'lz4' {
  /** LZ4 frame format. */
  export function encode(input: Buffer): Buffer;
  export function decode(input: Buffer): Buffer;
}
