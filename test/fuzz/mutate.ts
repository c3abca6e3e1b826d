/**
 * Byte-level mutations of a valid image or message, as fast-check values (so
 * they shrink and replay): bit flips, bytes set, u32/u64 fields overwritten
 * with the values that break length checks, truncation, insertion and
 * deletion. Positions are fractions of the input's length, so one mutation
 * list fits inputs of any size.
 */
import * as fc from 'fast-check';

/** Lengths and counts that sit on or just past the bounds decoders check. */
export const INTERESTING_U32 = [
  0, 1, 2, 3, 4, 7, 8, 31, 32, 33, 0x7f, 0x80, 0xff, 0x100, 0xfff, 0x1000, 0x1001, 0xffff, 0x10000, 0x10001,
  0xfffff, 0x100000, 0x100001, 0xffffff, 0x1000000, 0x1000001, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff,
];

export const interestingU32 = fc.oneof(fc.constantFrom(...INTERESTING_U32), fc.integer({ min: 0, max: 0xffffffff }));

export const interestingU64 = fc.oneof(
  interestingU32.map((v) => BigInt(v)),
  fc.constantFrom(1n << 32n, (1n << 53n) - 1n, 1n << 53n, (1n << 63n) - 1n, 1n << 63n, (1n << 64n) - 4096n, (1n << 64n) - 1n),
  fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
);

export type Mutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'set'; at: number; value: number }
  | { kind: 'u32'; at: number; value: number }
  | { kind: 'u64'; at: number; value: bigint }
  | { kind: 'truncate'; at: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'delete'; at: number; count: number }
  | { kind: 'overwrite'; at: number; bytes: Uint8Array }
  /** A field of a known layout: `offset` in bytes, not a fraction. */
  | { kind: 'field'; offset: number; bytes: 2 | 4 | 8; value: bigint };

/** A position as a fraction of the length: shrinks towards the start. */
const at = fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true });

export const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('flip' as const), at, bit: fc.integer({ min: 0, max: 7 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('set' as const), at, value: fc.constantFrom(0, 0xff, 0x7f, 0x80, 1) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('u32' as const), at, value: interestingU32 }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('u64' as const), at, value: interestingU64 }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('truncate' as const), at }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('insert' as const), at, bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('delete' as const), at, count: fc.integer({ min: 1, max: 16 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('overwrite' as const), at, bytes: fc.uint8Array({ minLength: 1, maxLength: 64 }) }) },
);

export const mutations = fc.array(mutation, { minLength: 1, maxLength: 4 });

/** A field of `layout` ({ offset, bytes } each) set to a value that breaks length and range checks. */
export function fieldMutation(layout: ReadonlyArray<{ offset: number; bytes: 2 | 4 | 8 }>): fc.Arbitrary<Mutation> {
  return fc.record({
    kind: fc.constant('field' as const),
    field: fc.constantFrom(...layout),
    value: interestingU64,
  }).map(({ field, value }) => ({ kind: 'field' as const, offset: field.offset, bytes: field.bytes, value: value & ((1n << BigInt(field.bytes * 8)) - 1n) }));
}

/** Mutations that mostly hit the fields of `layout`, sometimes anywhere. */
export function mutationsOf(layout: ReadonlyArray<{ offset: number; bytes: 2 | 4 | 8 }>): fc.Arbitrary<Mutation[]> {
  return fc.array(fc.oneof({ weight: 3, arbitrary: fieldMutation(layout) }, { weight: 2, arbitrary: mutation }), { minLength: 1, maxLength: 4 });
}

/** `input` with `list` applied in order (a copy; the input is not changed). */
export function applyMutations(input: Uint8Array, list: readonly Mutation[]): Buffer {
  let b = Buffer.from(input);
  for (const m of list) {
    const pos = m.kind === 'field' ? m.offset : Math.floor(m.at * b.length);
    switch (m.kind) {
      case 'flip':
        if (b.length > 0) b[pos] ^= 1 << m.bit;
        break;
      case 'set':
        if (b.length > 0) b[pos] = m.value;
        break;
      case 'u32':
        if (b.length >= 4) b.writeUInt32LE(m.value >>> 0, Math.min(pos, b.length - 4));
        break;
      case 'u64':
        if (b.length >= 8) b.writeBigUInt64LE(m.value, Math.min(pos, b.length - 8));
        break;
      case 'truncate':
        b = b.subarray(0, pos);
        break;
      case 'insert':
        b = Buffer.concat([b.subarray(0, pos), Buffer.from(m.bytes), b.subarray(pos)]);
        break;
      case 'delete':
        b = Buffer.concat([b.subarray(0, pos), b.subarray(pos + m.count)]);
        break;
      case 'field':
        if (m.offset + m.bytes <= b.length) {
          if (m.bytes === 2) b.writeUInt16LE(Number(m.value), m.offset);
          else if (m.bytes === 4) b.writeUInt32LE(Number(m.value), m.offset);
          else b.writeBigUInt64LE(m.value, m.offset);
        }
        break;
      case 'overwrite':
        b = Buffer.from(b);
        Buffer.from(m.bytes).copy(b, pos);
        break;
    }
  }
  return Buffer.from(b);
}

/** Splits `bytes` at the given fractions: how a stream may arrive in reads. */
export function chunked(bytes: Buffer, cuts: readonly number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => Math.floor(c * bytes.length)))].filter((p) => p > 0 && p < bytes.length).sort((x, y) => x - y);
  const chunks: Buffer[] = [];
  let from = 0;
  for (const p of points) {
    chunks.push(bytes.subarray(from, p));
    from = p;
  }
  chunks.push(bytes.subarray(from));
  return chunks;
}

export const cuts = fc.array(at, { maxLength: 6 });
