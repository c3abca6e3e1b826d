/**
 * Values between the typed messages and the plain objects protobufjs encodes:
 * uint64 as bigint (protobufjs's Long never leaks out), safe integers, bytes,
 * names and enums, each checked for what protobuf itself cannot check, with a
 * ProtocolError saying what was expected and what was found.
 */
import { ProtocolError } from '../errors';
import { generationHistoryUuids } from '../limits';

/** A message as protobufjs encodes and decodes it. */
export type Wire = Record<string, unknown>;

export interface LongLike {
  low: number;
  high: number;
}

const UINT64_MAX = (1n << 64n) - 1n;

export function toWireUint64(value: bigint, field: string): LongLike {
  if (value < 0n || value > UINT64_MAX) {
    throw new ProtocolError(`${field} must fit an unsigned 64-bit integer, found ${value}`);
  }
  return { low: Number(value & 0xffffffffn) | 0, high: Number(value >> 32n) | 0 };
}

export function fromWireUint64(value: unknown): bigint {
  if (typeof value === 'number') return BigInt(value);
  if (typeof value === 'bigint') return value;
  const long = value as LongLike;
  return (BigInt(long.high >>> 0) << 32n) | BigInt(long.low >>> 0);
}

export function toBuffer(value: unknown): Buffer {
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  if (Array.isArray(value)) return Buffer.from(value as number[]);
  return Buffer.alloc(0);
}

export function expectBytes(value: unknown, sizeBytes: number, field: string): Buffer {
  const bytes = toBuffer(value);
  if (bytes.length !== sizeBytes) {
    throw new ProtocolError(`${field} must be ${sizeBytes} bytes, found ${bytes.length}`);
  }
  return bytes;
}

export function expectName(value: unknown, maxBytes: number, field: string): string {
  const text = typeof value === 'string' ? value : '';
  const sizeBytes = Buffer.byteLength(text, 'utf8');
  if (sizeBytes === 0 || sizeBytes > maxBytes) {
    throw new ProtocolError(`${field} must be 1 to ${maxBytes} bytes of UTF-8, found ${sizeBytes} bytes`);
  }
  return text;
}

/** Two-way mapping between a proto enum's numbers and the TypeScript names. */
export class EnumMap<T extends string> {
  private readonly toNumber = new Map<T, number>();
  private readonly toName = new Map<number, T>();
  constructor(private readonly what: string, pairs: ReadonlyArray<readonly [T, number]>) {
    for (const [name, value] of pairs) {
      this.toNumber.set(name, value);
      this.toName.set(value, name);
    }
  }
  encode(name: T): number {
    const value = this.toNumber.get(name);
    if (value === undefined) {
      throw new ProtocolError(`${this.what} must be one of ${[...this.toNumber.keys()].join(', ')}, found ${String(name)}`);
    }
    return value;
  }
  decode(value: unknown): T {
    const name = typeof value === 'number' ? this.toName.get(value) : undefined;
    if (name === undefined) {
      throw new ProtocolError(`${this.what} must be one of ${[...this.toNumber.keys()].join(', ')}, found enum value ${String(value)}`);
    }
    return name;
  }
}

export function toSafeNumber(value: unknown, field: string): number {
  const big = fromWireUint64(value ?? 0);
  if (big > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new ProtocolError(`${field} must be at most ${Number.MAX_SAFE_INTEGER}, found ${big}`);
  }
  return Number(big);
}

export function fromSafeNumber(value: number, field: string): LongLike {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new ProtocolError(`${field} must be a non-negative safe integer, found ${value}`);
  }
  return toWireUint64(BigInt(value), field);
}

export function historyToWire(history: readonly bigint[], field: string): LongLike[] {
  if (history.length !== generationHistoryUuids) {
    throw new ProtocolError(`${field} needs ${generationHistoryUuids} history UUIDs, found ${history.length}`);
  }
  return history.map((uuid, index) => toWireUint64(uuid, `${field}[${index}]`));
}

export function historyFromWire(value: unknown, field: string): [bigint, bigint] {
  const history = Array.isArray(value) ? value : [];
  if (history.length !== generationHistoryUuids) {
    throw new ProtocolError(`${field} must carry ${generationHistoryUuids} history UUIDs, found ${history.length}`);
  }
  return [fromWireUint64(history[0]), fromWireUint64(history[1])];
}
