/**
 * Codec of the control link: the messages of control.proto as TypeScript
 * types, their framing (u32 little-endian length + one encoded Envelope) and
 * the encoders for the payload messages (Bitmap, ResyncControl, RoleChange)
 * that travel inside Request/Response/Notice payloads.
 *
 * The .proto file is parsed once, at load, with protobufjs (no generated
 * code). uint64 fields are bigint here; protobufjs's Long never leaks out.
 * Every decode checks what protobuf itself cannot (sizes of nonces, tokens
 * and HMACs, enum values, name lengths) and throws ProtocolError with what
 * was expected and what was found.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as protobuf from 'protobufjs';
import { ProtocolError } from '../errors';
import {
  CONTROL_LENGTH_PREFIX_BYTES,
  CONTROL_MESSAGE_SIZE_MAX_BYTES,
  DATA_TOKEN_BYTES,
  FEATURE_NAME_MAX_BYTES,
  FEATURES_MAX,
  HISTORY_UUIDS,
  HMAC_BYTES,
  NAME_MAX_BYTES,
  NONCE_BYTES,
  PREAMBLE_BYTES,
  REQUEST_KIND_MAX_BYTES,
} from '../link/limits-link';

/** Opens a control connection. */
export const CONTROL_PREAMBLE = Buffer.from('NRAIDCTL', 'ascii');
/** Opens a data link connection; DATA_TOKEN_BYTES of token follow. */
export const DATA_PREAMBLE = Buffer.from('NRAIDDAT', 'ascii');
/** Highest control protocol version this build speaks. */
export const PROTOCOL_VERSION = 1;
/** Lowest control protocol version this build speaks. */
export const PROTOCOL_VERSION_MIN = 1;
/**
 * Features this build offers in its Hello; a session uses the intersection of
 * both lists. Add a name here when the code behind it lands.
 */
export const CONTROL_FEATURES: readonly string[] = ['bitmap-lz4'];

if (CONTROL_PREAMBLE.length !== PREAMBLE_BYTES || DATA_PREAMBLE.length !== PREAMBLE_BYTES) {
  throw new Error(`preambles must be ${PREAMBLE_BYTES} bytes`);
}

// ---------------------------------------------------------------- types

export type Role = 'Primary' | 'Secondary';
export type DiskState = 'Diskless' | 'Attaching' | 'Inconsistent' | 'Outdated' | 'Consistent' | 'UpToDate';
export type ReplicationProtocol = 'A' | 'B' | 'C';

export interface GenerationUuids {
  current: bigint;
  bitmap: bigint;
  history: [bigint, bigint];
}

/** What each node tells the other about itself (DESIGN.md §5, §6). */
export interface NodeState {
  role: Role;
  disk: DiskState;
  dataSizeBytes: bigint;
  uuids: GenerationUuids;
  /** Superblock flag bits, as the metadata code defines them. */
  flags: number;
  protocol: ReplicationProtocol;
}

export interface Hello {
  protocolVersion: number;
  protocolVersionMin: number;
  features: string[];
  resource: string;
  nodeName: string;
  nonce: Buffer;
}
export interface Auth {
  hmac: Buffer;
}
export interface SessionStart {
  dataToken: Buffer;
}
export interface Ping {
  seq: number;
}
export interface Pong {
  seq: number;
}
export interface Request {
  id: number;
  kind: string;
  payload: Buffer;
}
export interface Response {
  id: number;
  ok: boolean;
  errorCode: string;
  errorMessage: string;
  payload: Buffer;
}
export interface Notice {
  kind: string;
  payload: Buffer;
}
export type DataLinkAccepted = Record<string, never>;
export interface Goodbye {
  reason: string;
}

interface MessageBodies {
  hello: Hello;
  auth: Auth;
  sessionStart: SessionStart;
  nodeState: NodeState;
  ping: Ping;
  pong: Pong;
  request: Request;
  response: Response;
  notice: Notice;
  dataLinkAccepted: DataLinkAccepted;
  goodbye: Goodbye;
}
export type ControlMessageType = keyof MessageBodies;
/** One control message: `type` names the Envelope member, `body` holds it. */
export type ControlMessage = { [K in ControlMessageType]: { type: K; body: MessageBodies[K] } }[ControlMessageType];

// ------------------------------------------------------- the .proto schema

function loadSchema(): protobuf.Root {
  // Next to this file when run from src/ by ts-jest; from dist/src/protocol
  // the build leaves the .proto in src/protocol, three levels up.
  const candidates = [
    path.join(__dirname, 'control.proto'),
    path.join(__dirname, '..', '..', '..', 'src', 'protocol', 'control.proto'),
  ];
  for (const file of candidates) {
    if (fs.existsSync(file)) return protobuf.parse(fs.readFileSync(file, 'utf8'), { keepCase: false }).root;
  }
  throw new Error(`control.proto not found; looked at ${candidates.join(', ')}; the package is incomplete, reinstall nraid`);
}

const root = loadSchema();
const EnvelopeType = root.lookupType('nraid.control.Envelope');
const BitmapType = root.lookupType('nraid.control.Bitmap');
const ResyncControlType = root.lookupType('nraid.control.ResyncControl');
const RoleChangeType = root.lookupType('nraid.control.RoleChange');

if (!protobuf.util.Long) {
  throw new Error('protobufjs runs without Long support; uint64 fields (sizes, UUIDs) would lose precision');
}

const MESSAGE_TYPES: readonly ControlMessageType[] = [
  'hello', 'auth', 'sessionStart', 'nodeState', 'ping', 'pong',
  'request', 'response', 'notice', 'dataLinkAccepted', 'goodbye',
];
for (const type of MESSAGE_TYPES) {
  if (!EnvelopeType.fields[type]) throw new Error(`control.proto Envelope lacks field ${type}`);
}

// ------------------------------------------------------------ helpers

interface LongLike {
  low: number;
  high: number;
}

const UINT64_MAX = (1n << 64n) - 1n;

function toWireUint64(value: bigint, field: string): LongLike {
  if (value < 0n || value > UINT64_MAX) {
    throw new ProtocolError(`${field} must fit an unsigned 64-bit integer, found ${value}`);
  }
  return { low: Number(value & 0xffffffffn) | 0, high: Number(value >> 32n) | 0 };
}

function fromWireUint64(value: unknown): bigint {
  if (typeof value === 'number') return BigInt(value);
  if (typeof value === 'bigint') return value;
  const long = value as LongLike;
  return (BigInt(long.high >>> 0) << 32n) | BigInt(long.low >>> 0);
}

function toBuffer(value: unknown): Buffer {
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  if (Array.isArray(value)) return Buffer.from(value as number[]);
  return Buffer.alloc(0);
}

function expectBytes(value: unknown, sizeBytes: number, field: string): Buffer {
  const bytes = toBuffer(value);
  if (bytes.length !== sizeBytes) {
    throw new ProtocolError(`${field} must be ${sizeBytes} bytes, found ${bytes.length}`);
  }
  return bytes;
}

function expectName(value: unknown, maxBytes: number, field: string): string {
  const text = typeof value === 'string' ? value : '';
  const sizeBytes = Buffer.byteLength(text, 'utf8');
  if (sizeBytes === 0 || sizeBytes > maxBytes) {
    throw new ProtocolError(`${field} must be 1 to ${maxBytes} bytes of UTF-8, found ${sizeBytes} bytes`);
  }
  return text;
}

/** Two-way mapping between a proto enum's numbers and the TypeScript names. */
class EnumMap<T extends string> {
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

function enumPairs<T extends string>(enumName: string, names: Record<T, string>): Array<[T, number]> {
  const protoEnum = root.lookupEnum(enumName);
  return (Object.keys(names) as T[]).map((name) => {
    const value = protoEnum.values[names[name]];
    if (value === undefined) throw new Error(`control.proto ${enumName} lacks ${names[name]}`);
    return [name, value];
  });
}

const ROLES = new EnumMap<Role>('role', enumPairs('nraid.control.Role', {
  Primary: 'ROLE_PRIMARY',
  Secondary: 'ROLE_SECONDARY',
}));
const DISKS = new EnumMap<DiskState>('disk state', enumPairs('nraid.control.Disk', {
  Diskless: 'DISK_DISKLESS',
  Attaching: 'DISK_ATTACHING',
  Inconsistent: 'DISK_INCONSISTENT',
  Outdated: 'DISK_OUTDATED',
  Consistent: 'DISK_CONSISTENT',
  UpToDate: 'DISK_UP_TO_DATE',
}));
const PROTOCOLS = new EnumMap<ReplicationProtocol>('replication protocol', enumPairs('nraid.control.ReplicationProtocol', {
  A: 'PROTOCOL_A',
  B: 'PROTOCOL_B',
  C: 'PROTOCOL_C',
}));

// ----------------------------------------------------- to and from wire

type Wire = Record<string, unknown>;

function nodeStateToWire(state: NodeState): Wire {
  if (state.uuids.history.length !== HISTORY_UUIDS) {
    throw new ProtocolError(`node state needs ${HISTORY_UUIDS} history UUIDs, found ${state.uuids.history.length}`);
  }
  return {
    role: ROLES.encode(state.role),
    disk: DISKS.encode(state.disk),
    dataSizeBytes: toWireUint64(state.dataSizeBytes, 'dataSizeBytes'),
    uuids: {
      current: toWireUint64(state.uuids.current, 'uuids.current'),
      bitmap: toWireUint64(state.uuids.bitmap, 'uuids.bitmap'),
      history: state.uuids.history.map((uuid, index) => toWireUint64(uuid, `uuids.history[${index}]`)),
    },
    flags: state.flags >>> 0,
    protocol: PROTOCOLS.encode(state.protocol),
  };
}

function nodeStateFromWire(wire: Wire): NodeState {
  const uuids = (wire.uuids ?? {}) as Wire;
  const history = Array.isArray(uuids.history) ? uuids.history : [];
  if (history.length !== HISTORY_UUIDS) {
    throw new ProtocolError(`node state must carry ${HISTORY_UUIDS} history UUIDs, found ${history.length}`);
  }
  return {
    role: ROLES.decode(wire.role),
    disk: DISKS.decode(wire.disk),
    dataSizeBytes: fromWireUint64(wire.dataSizeBytes ?? 0),
    uuids: {
      current: fromWireUint64(uuids.current ?? 0),
      bitmap: fromWireUint64(uuids.bitmap ?? 0),
      history: [fromWireUint64(history[0]), fromWireUint64(history[1])],
    },
    flags: Number(wire.flags ?? 0) >>> 0,
    protocol: PROTOCOLS.decode(wire.protocol),
  };
}

function bodyToWire(message: ControlMessage): Wire {
  switch (message.type) {
    case 'nodeState':
      return nodeStateToWire(message.body);
    case 'hello':
    case 'auth':
    case 'sessionStart':
    case 'ping':
    case 'pong':
    case 'request':
    case 'response':
    case 'notice':
    case 'dataLinkAccepted':
    case 'goodbye':
      return message.body as unknown as Wire;
  }
}

function bodyFromWire(type: ControlMessageType, wire: Wire): ControlMessage {
  switch (type) {
    case 'hello': {
      const features = Array.isArray(wire.features) ? (wire.features as unknown[]) : [];
      if (features.length > FEATURES_MAX) {
        throw new ProtocolError(`Hello may list at most ${FEATURES_MAX} features, found ${features.length}`);
      }
      return {
        type,
        body: {
          protocolVersion: Number(wire.protocolVersion ?? 0),
          protocolVersionMin: Number(wire.protocolVersionMin ?? 0),
          features: features.map((feature) => expectName(feature, FEATURE_NAME_MAX_BYTES, 'Hello feature name')),
          resource: expectName(wire.resource, NAME_MAX_BYTES, 'Hello resource'),
          nodeName: expectName(wire.nodeName, NAME_MAX_BYTES, 'Hello node name'),
          nonce: expectBytes(wire.nonce, NONCE_BYTES, 'Hello nonce'),
        },
      };
    }
    case 'auth':
      return { type, body: { hmac: expectBytes(wire.hmac, HMAC_BYTES, 'Auth hmac') } };
    case 'sessionStart':
      return { type, body: { dataToken: expectBytes(wire.dataToken, DATA_TOKEN_BYTES, 'SessionStart data token') } };
    case 'nodeState':
      return { type, body: nodeStateFromWire(wire) };
    case 'ping':
      return { type, body: { seq: Number(wire.seq ?? 0) } };
    case 'pong':
      return { type, body: { seq: Number(wire.seq ?? 0) } };
    case 'request':
      return {
        type,
        body: {
          id: Number(wire.id ?? 0),
          kind: expectName(wire.kind, REQUEST_KIND_MAX_BYTES, 'Request kind'),
          payload: toBuffer(wire.payload),
        },
      };
    case 'response':
      return {
        type,
        body: {
          id: Number(wire.id ?? 0),
          ok: Boolean(wire.ok),
          errorCode: String(wire.errorCode ?? ''),
          errorMessage: String(wire.errorMessage ?? ''),
          payload: toBuffer(wire.payload),
        },
      };
    case 'notice':
      return {
        type,
        body: { kind: expectName(wire.kind, REQUEST_KIND_MAX_BYTES, 'Notice kind'), payload: toBuffer(wire.payload) },
      };
    case 'dataLinkAccepted':
      return { type, body: {} };
    case 'goodbye':
      return { type, body: { reason: String(wire.reason ?? '') } };
  }
}

// ----------------------------------------------------------- framing

/** One control message as it goes on the wire: u32 LE length, then the Envelope. */
export function encodeFrame(message: ControlMessage): Buffer {
  const envelope = EnvelopeType.encode({ [message.type]: bodyToWire(message) }).finish();
  if (envelope.length > CONTROL_MESSAGE_SIZE_MAX_BYTES) {
    throw new ProtocolError(
      `control message ${message.type} encodes to ${envelope.length} bytes, more than the limit of ` +
        `${CONTROL_MESSAGE_SIZE_MAX_BYTES}; send it in smaller pieces`,
    );
  }
  const frame = Buffer.allocUnsafe(CONTROL_LENGTH_PREFIX_BYTES + envelope.length);
  frame.writeUInt32LE(envelope.length, 0);
  frame.set(envelope, CONTROL_LENGTH_PREFIX_BYTES);
  return frame;
}

/** Decodes one Envelope (without its length prefix). */
export function decodeEnvelope(bytes: Uint8Array): ControlMessage {
  let decoded: protobuf.Message;
  try {
    decoded = EnvelopeType.decode(bytes);
  } catch (error) {
    throw new ProtocolError(
      `expected a protobuf Envelope of ${bytes.length} bytes, found bytes that do not decode ` +
        `(${(error as Error).message}); the peer is not nraid or is broken`,
    );
  }
  const wire = decoded as unknown as Wire;
  const present = MESSAGE_TYPES.filter((name) => wire[name] !== undefined && wire[name] !== null);
  if (present.length > 1) {
    throw new ProtocolError(`expected an Envelope holding one message, found ${present.length} (${present.join(', ')})`);
  }
  const type = present[0];
  if (type === undefined) {
    throw new ProtocolError(
      `expected an Envelope holding one message, found an empty or unknown one (${bytes.length} bytes); ` +
        'the peer may run a newer nraid',
    );
  }
  return bodyFromWire(type, wire[type] as Wire);
}

/**
 * Splits a byte stream into control messages. A length prefix above
 * CONTROL_MESSAGE_SIZE_MAX_BYTES throws as soon as its 4 bytes are in,
 * before any body is buffered. A large body is copied once, into a buffer
 * of its announced size.
 */
export class ControlFrameReader {
  private readonly header = Buffer.alloc(CONTROL_LENGTH_PREFIX_BYTES);
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
        if (this.headerFilledBytes === 0 && chunk.length - offset >= CONTROL_LENGTH_PREFIX_BYTES) {
          const sizeBytes = this.checkedLength(chunk.readUInt32LE(offset));
          const start = offset + CONTROL_LENGTH_PREFIX_BYTES;
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
        const takeBytes = Math.min(CONTROL_LENGTH_PREFIX_BYTES - this.headerFilledBytes, chunk.length - offset);
        chunk.copy(this.header, this.headerFilledBytes, offset, offset + takeBytes);
        this.headerFilledBytes += takeBytes;
        offset += takeBytes;
        if (this.headerFilledBytes < CONTROL_LENGTH_PREFIX_BYTES) break;
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
    if (sizeBytes > CONTROL_MESSAGE_SIZE_MAX_BYTES) {
      throw new ProtocolError(
        `expected a control message of at most ${CONTROL_MESSAGE_SIZE_MAX_BYTES} bytes, found a length prefix ` +
          `of ${sizeBytes}; the peer is not nraid or is broken`,
      );
    }
    if (sizeBytes === 0) {
      throw new ProtocolError('expected a control message, found a length prefix of 0');
    }
    return sizeBytes;
  }
}

// ------------------------------------------------- payload messages

/** One chunk of the dirty bitmap (see control.proto Bitmap). */
export interface BitmapChunk {
  offsetBits: bigint;
  countBits: bigint;
  granularityBytes: number;
  /** Size of the little-endian u64 words before lz4 compression. */
  wordsBytes: number;
  wordsLz4: Buffer;
  last: boolean;
}

export type ResyncAction = 'start' | 'pause' | 'resume' | 'stop' | 'done';
export type ResyncMode = 'bitmap' | 'full' | 'checksum' | 'verify';

export interface ResyncControl {
  action: ResyncAction;
  mode: ResyncMode;
  startOffsetBytes: bigint;
  /** Exclusive; 0n means to the end of the data. */
  endOffsetBytes: bigint;
  /** 0n lets the rate controller decide. */
  rateBytesPerSec: bigint;
}

export type RoleChangePhase = 'prepare' | 'commit' | 'abort';

export interface RoleChange {
  transactionId: number;
  phase: RoleChangePhase;
  /** The sender's role after the change. */
  role: Role;
  force: boolean;
}

const RESYNC_ACTIONS = new EnumMap<ResyncAction>('resync action', enumPairs('nraid.control.ResyncAction', {
  start: 'RESYNC_ACTION_START',
  pause: 'RESYNC_ACTION_PAUSE',
  resume: 'RESYNC_ACTION_RESUME',
  stop: 'RESYNC_ACTION_STOP',
  done: 'RESYNC_ACTION_DONE',
}));
const RESYNC_MODES = new EnumMap<ResyncMode>('resync mode', enumPairs('nraid.control.ResyncMode', {
  bitmap: 'RESYNC_MODE_BITMAP',
  full: 'RESYNC_MODE_FULL',
  checksum: 'RESYNC_MODE_CHECKSUM',
  verify: 'RESYNC_MODE_VERIFY',
}));
const ROLE_CHANGE_PHASES = new EnumMap<RoleChangePhase>('role change phase', enumPairs('nraid.control.RoleChangePhase', {
  prepare: 'ROLE_CHANGE_PHASE_PREPARE',
  commit: 'ROLE_CHANGE_PHASE_COMMIT',
  abort: 'ROLE_CHANGE_PHASE_ABORT',
}));

function decodePayload(type: protobuf.Type, bytes: Uint8Array): Wire {
  try {
    return type.decode(bytes) as unknown as Wire;
  } catch (error) {
    throw new ProtocolError(`expected a ${type.name} payload, found ${bytes.length} bytes that do not decode (${(error as Error).message})`);
  }
}

function encodePayload(type: protobuf.Type, wire: Wire): Buffer {
  const bytes = type.encode(wire).finish();
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export function encodeBitmapChunk(chunk: BitmapChunk): Buffer {
  if (chunk.offsetBits % 64n !== 0n) {
    throw new ProtocolError(`bitmap chunk offset must be a multiple of 64 bits, found ${chunk.offsetBits}`);
  }
  return encodePayload(BitmapType, {
    offsetBits: toWireUint64(chunk.offsetBits, 'offsetBits'),
    countBits: toWireUint64(chunk.countBits, 'countBits'),
    granularityBytes: chunk.granularityBytes >>> 0,
    wordsBytes: chunk.wordsBytes >>> 0,
    wordsLz4: chunk.wordsLz4,
    last: chunk.last,
  });
}

export function decodeBitmapChunk(bytes: Uint8Array): BitmapChunk {
  const wire = decodePayload(BitmapType, bytes);
  const chunk: BitmapChunk = {
    offsetBits: fromWireUint64(wire.offsetBits ?? 0),
    countBits: fromWireUint64(wire.countBits ?? 0),
    granularityBytes: Number(wire.granularityBytes ?? 0),
    wordsBytes: Number(wire.wordsBytes ?? 0),
    wordsLz4: toBuffer(wire.wordsLz4),
    last: Boolean(wire.last),
  };
  if (chunk.offsetBits % 64n !== 0n) {
    throw new ProtocolError(`bitmap chunk offset must be a multiple of 64 bits, found ${chunk.offsetBits}`);
  }
  if (chunk.granularityBytes === 0) throw new ProtocolError('bitmap chunk granularity must be above 0 bytes, found 0');
  return chunk;
}

export function encodeResyncControl(control: ResyncControl): Buffer {
  return encodePayload(ResyncControlType, {
    action: RESYNC_ACTIONS.encode(control.action),
    mode: RESYNC_MODES.encode(control.mode),
    startOffsetBytes: toWireUint64(control.startOffsetBytes, 'startOffsetBytes'),
    endOffsetBytes: toWireUint64(control.endOffsetBytes, 'endOffsetBytes'),
    rateBytesPerSec: toWireUint64(control.rateBytesPerSec, 'rateBytesPerSec'),
  });
}

export function decodeResyncControl(bytes: Uint8Array): ResyncControl {
  const wire = decodePayload(ResyncControlType, bytes);
  return {
    action: RESYNC_ACTIONS.decode(wire.action),
    mode: RESYNC_MODES.decode(wire.mode),
    startOffsetBytes: fromWireUint64(wire.startOffsetBytes ?? 0),
    endOffsetBytes: fromWireUint64(wire.endOffsetBytes ?? 0),
    rateBytesPerSec: fromWireUint64(wire.rateBytesPerSec ?? 0),
  };
}

export function encodeRoleChange(change: RoleChange): Buffer {
  return encodePayload(RoleChangeType, {
    transactionId: change.transactionId >>> 0,
    phase: ROLE_CHANGE_PHASES.encode(change.phase),
    role: ROLES.encode(change.role),
    force: change.force,
  });
}

export function decodeRoleChange(bytes: Uint8Array): RoleChange {
  const wire = decodePayload(RoleChangeType, bytes);
  return {
    transactionId: Number(wire.transactionId ?? 0),
    phase: ROLE_CHANGE_PHASES.decode(wire.phase),
    role: ROLES.decode(wire.role),
    force: Boolean(wire.force),
  };
}
