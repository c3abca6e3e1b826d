/**
 * Codec of the control link: the messages of control.proto as TypeScript
 * types (the typed requests, answers and notices the daemon uses among
 * them), the protocol version and its compatibility rule, and the framing
 * (u32 little-endian length + one encoded Envelope).
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
import { ConfigError, ProtocolError } from '../errors';
import {
  controlErrorMessageCharsMax,
  controlFeatureNameBytesMax,
  controlFeaturesMax,
  controlHmacBytes,
  controlLengthPrefixBytes,
  controlMessageBytesMax,
  controlNonceBytes,
  controlPreambleBytes,
  dataTokenBytes,
  generationHistoryUuids,
  nameCharsMax,
} from '../limits';

/** Opens a control connection. */
export const CONTROL_PREAMBLE = Buffer.from('NRAIDCTL', 'ascii');
/** Opens a data link connection; dataTokenBytes of token follow. */
export const DATA_PREAMBLE = Buffer.from('NRAIDDAT', 'ascii');

export interface ProtocolVersion {
  major: number;
  minor: number;
}
/**
 * The control protocol this build speaks. Bump the minor for an addition an
 * older minor can live without (a new optional field, message or kind that
 * is only sent when the session's minor has it); bump the major for anything
 * else. See docs/CONTRACTS.md.
 */
export const PROTOCOL_VERSION: ProtocolVersion = Object.freeze({ major: 2, minor: 0 });

/** True when a peer at `peer` may connect to `local`: same major and minors at most 1 apart. */
export function versionsCompatible(local: ProtocolVersion, peer: ProtocolVersion): boolean {
  return local.major === peer.major && Math.abs(local.minor - peer.minor) <= 1;
}

/** The version a session of two compatible peers speaks: their major, the lower minor. */
export function sessionVersion(local: ProtocolVersion, peer: ProtocolVersion): ProtocolVersion {
  return { major: local.major, minor: Math.min(local.minor, peer.minor) };
}

export function formatVersion(version: ProtocolVersion): string {
  return `${version.major}.${version.minor}`;
}

/** Parses "major.minor", as NRAID_TEST_PROTOCOL_VERSION gives it; throws ConfigError naming what was found. */
export function parseProtocolVersion(text: string): ProtocolVersion {
  const match = /^(\d{1,9})\.(\d{1,9})$/.exec(text.trim());
  if (!match) throw new ConfigError(`protocol version: expected major.minor such as 2.0, found ${JSON.stringify(text)}`);
  return { major: Number(match[1]), minor: Number(match[2]) };
}
/**
 * Features this build offers in its Hello; a session uses the intersection of
 * both lists. Add a name here when the code behind it lands.
 */
export const CONTROL_FEATURES: readonly string[] = ['bitmap-lz4'];

if (CONTROL_PREAMBLE.length !== controlPreambleBytes || DATA_PREAMBLE.length !== controlPreambleBytes) {
  throw new Error(`preambles must be ${controlPreambleBytes} bytes`);
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
  /** The version the sender speaks. */
  version: ProtocolVersion;
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

/** What a node tells its peer in a split brain, for the after-sb policies. */
export interface SplitBrainFacts {
  node: string;
  primary: boolean;
  primarySinceMs: number;
  changedBytes: number;
  discardMyData: boolean;
}
/** The whole dirty bitmap: little-endian u64 words, `granularityBytes` of data per bit. */
export interface BitmapReply {
  granularityBytes: number;
  words: Buffer;
}
/** A node's answer to a promotion request; `reason` is '' when ok. */
export interface PromoteVote {
  ok: boolean;
  reason: string;
}

/** Typed request kinds: request body and response body. */
export interface ControlRequests {
  bitmap: { request: Record<string, never>; response: BitmapReply };
  splitBrainFacts: { request: Record<string, never>; response: SplitBrainFacts };
  /** Two-phase promotion, phase 1: may the sender become Primary? The receiver votes and, if ok,
   *  holds a promise not to promote itself until promoteCommit/promoteAbort or the session ends. */
  promotePrepare: { request: { requestId: bigint; current: bigint }; response: PromoteVote };
  /** A Secondary asks the Primary to run a switchover to it. */
  switchover: { request: Record<string, never>; response: Record<string, never> };
  /** Old Primary (already demoted, drained) asks the peer to promote at generation `current`. */
  switchoverPromote: { request: { current: bigint }; response: PromoteVote };
  /** Source to target before any resync data: the target records Inconsistent + the source's
   *  generation durably, then answers; only then does the source send. */
  resyncStart: { request: { bytes: bigint; current: bigint; history: [bigint, bigint] }; response: { ok: boolean } };
}
export type ControlRequestKind = keyof ControlRequests;

export interface ControlNotices {
  resyncNone: Record<string, never>;
  resyncDone: Record<string, never>;
  adjust: Record<string, never>;
  promoteCommit: { requestId: bigint };
  promoteAbort: { requestId: bigint };
}
export type ControlNoticeKind = keyof ControlNotices;
/** The fields of a body; an empty body (Record<string, never>) adds none, so that `kind` stays usable. */
type BodyFields<T> = T extends Record<string, never> ? unknown : T;
export type ControlNotice = { [K in ControlNoticeKind]: { kind: K } & BodyFields<ControlNotices[K]> }[ControlNoticeKind];

/**
 * One chunk of a bitmap answer on the wire (control.proto BitmapChunk): bytes
 * [offsetBytes, offsetBytes + wordsBytes) of a bitmap of totalBytes, lz4
 * block compressed when `lz4`. src/protocol/bitmap-chunks.ts splits and
 * reassembles.
 */
export interface BitmapChunk {
  granularityBytes: number;
  totalBytes: number;
  offsetBytes: number;
  wordsBytes: number;
  words: Buffer;
  lz4: boolean;
  last: boolean;
}

/** What one Response carries per kind: the answer itself, or for bitmap one chunk of it. */
export type ResponseBodies = { [K in ControlRequestKind]: K extends 'bitmap' ? BitmapChunk : ControlRequests[K]['response'] };

/** A Request on the wire: one kind and its body. */
export type Request = { [K in ControlRequestKind]: { id: number; kind: K; body: ControlRequests[K]['request'] } }[ControlRequestKind];
/** A successful Response's content: the request's kind and its answer (or chunk). */
export type Answer = { [K in ControlRequestKind]: { kind: K; body: ResponseBodies[K] } }[ControlRequestKind];
export type Response =
  | { id: number; ok: true; answer: Answer }
  | { id: number; ok: false; errorCode: string; errorMessage: string };
export type Notice = ControlNotice;
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
  if (state.uuids.history.length !== generationHistoryUuids) {
    throw new ProtocolError(`node state needs ${generationHistoryUuids} history UUIDs, found ${state.uuids.history.length}`);
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
  if (history.length !== generationHistoryUuids) {
    throw new ProtocolError(`node state must carry ${generationHistoryUuids} history UUIDs, found ${history.length}`);
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

// ------------------------------------------- typed requests, answers, notices

/** Converts one typed body to the plain object protobufjs encodes, and back, checking what the proto cannot. */
interface Codec<T> {
  toWire(value: T): Wire;
  fromWire(wire: Wire): T;
}

const EMPTY: Codec<Record<string, never>> = {
  toWire: () => ({}),
  fromWire: () => ({}),
};

function toSafeNumber(value: unknown, field: string): number {
  const big = fromWireUint64(value ?? 0);
  if (big > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new ProtocolError(`${field} must be at most ${Number.MAX_SAFE_INTEGER}, found ${big}`);
  }
  return Number(big);
}

function fromSafeNumber(value: number, field: string): LongLike {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new ProtocolError(`${field} must be a non-negative safe integer, found ${value}`);
  }
  return toWireUint64(BigInt(value), field);
}

function historyToWire(history: readonly bigint[], field: string): LongLike[] {
  if (history.length !== generationHistoryUuids) {
    throw new ProtocolError(`${field} needs ${generationHistoryUuids} history UUIDs, found ${history.length}`);
  }
  return history.map((uuid, index) => toWireUint64(uuid, `${field}[${index}]`));
}

function historyFromWire(value: unknown, field: string): [bigint, bigint] {
  const history = Array.isArray(value) ? value : [];
  if (history.length !== generationHistoryUuids) {
    throw new ProtocolError(`${field} must carry ${generationHistoryUuids} history UUIDs, found ${history.length}`);
  }
  return [fromWireUint64(history[0]), fromWireUint64(history[1])];
}

const PROMOTE_VOTE: Codec<PromoteVote> = {
  toWire: (vote) => ({ ok: Boolean(vote.ok), reason: String(vote.reason ?? '').slice(0, controlErrorMessageCharsMax) }),
  fromWire: (wire) => ({ ok: Boolean(wire.ok), reason: String(wire.reason ?? '') }),
};

const REQUEST_ID: Codec<{ requestId: bigint }> = {
  toWire: (body) => ({ requestId: toWireUint64(body.requestId, 'requestId') }),
  fromWire: (wire) => ({ requestId: fromWireUint64(wire.requestId ?? 0) }),
};

const REQUEST_CODECS: { [K in ControlRequestKind]: Codec<ControlRequests[K]['request']> } = {
  bitmap: EMPTY,
  splitBrainFacts: EMPTY,
  promotePrepare: {
    toWire: (body) => ({ requestId: toWireUint64(body.requestId, 'requestId'), current: toWireUint64(body.current, 'current') }),
    fromWire: (wire) => ({ requestId: fromWireUint64(wire.requestId ?? 0), current: fromWireUint64(wire.current ?? 0) }),
  },
  switchover: EMPTY,
  switchoverPromote: {
    toWire: (body) => ({ current: toWireUint64(body.current, 'current') }),
    fromWire: (wire) => ({ current: fromWireUint64(wire.current ?? 0) }),
  },
  resyncStart: {
    toWire: (body) => ({
      bytes: toWireUint64(body.bytes, 'bytes'),
      current: toWireUint64(body.current, 'current'),
      history: historyToWire(body.history, 'resyncStart.history'),
    }),
    fromWire: (wire) => ({
      bytes: fromWireUint64(wire.bytes ?? 0),
      current: fromWireUint64(wire.current ?? 0),
      history: historyFromWire(wire.history, 'resyncStart.history'),
    }),
  },
};

const RESPONSE_CODECS: { [K in ControlRequestKind]: Codec<ResponseBodies[K]> } = {
  bitmap: {
    toWire: (chunk) => ({
      granularityBytes: chunk.granularityBytes >>> 0,
      totalBytes: fromSafeNumber(chunk.totalBytes, 'bitmap totalBytes'),
      offsetBytes: fromSafeNumber(chunk.offsetBytes, 'bitmap offsetBytes'),
      wordsBytes: chunk.wordsBytes >>> 0,
      words: chunk.words,
      lz4: chunk.lz4,
      last: chunk.last,
    }),
    fromWire: (wire) => ({
      granularityBytes: Number(wire.granularityBytes ?? 0),
      totalBytes: toSafeNumber(wire.totalBytes, 'bitmap chunk totalBytes'),
      offsetBytes: toSafeNumber(wire.offsetBytes, 'bitmap chunk offsetBytes'),
      wordsBytes: Number(wire.wordsBytes ?? 0),
      words: toBuffer(wire.words),
      lz4: Boolean(wire.lz4),
      last: Boolean(wire.last),
    }),
  },
  splitBrainFacts: {
    toWire: (facts) => ({
      node: String(facts.node),
      primary: Boolean(facts.primary),
      primarySinceMs: fromSafeNumber(facts.primarySinceMs, 'primarySinceMs'),
      changedBytes: fromSafeNumber(facts.changedBytes, 'changedBytes'),
      discardMyData: Boolean(facts.discardMyData),
    }),
    fromWire: (wire) => ({
      node: String(wire.node ?? ''),
      primary: Boolean(wire.primary),
      primarySinceMs: toSafeNumber(wire.primarySinceMs, 'primarySinceMs'),
      changedBytes: toSafeNumber(wire.changedBytes, 'changedBytes'),
      discardMyData: Boolean(wire.discardMyData),
    }),
  },
  promotePrepare: PROMOTE_VOTE,
  switchover: EMPTY,
  switchoverPromote: PROMOTE_VOTE,
  resyncStart: {
    toWire: (reply) => ({ ok: Boolean(reply.ok) }),
    fromWire: (wire) => ({ ok: Boolean(wire.ok) }),
  },
};

const NOTICE_CODECS: { [K in ControlNoticeKind]: Codec<ControlNotices[K]> } = {
  resyncNone: EMPTY,
  resyncDone: EMPTY,
  adjust: EMPTY,
  promoteCommit: REQUEST_ID,
  promoteAbort: REQUEST_ID,
};

/** Every request kind, in the order of control.proto. */
export const CONTROL_REQUEST_KINDS = Object.keys(REQUEST_CODECS) as ControlRequestKind[];
/** Every notice kind, in the order of control.proto. */
export const CONTROL_NOTICE_KINDS = Object.keys(NOTICE_CODECS) as ControlNoticeKind[];

// The proto's oneofs and the TypeScript kinds name the same members.
for (const [message, kinds] of [
  ['Request', CONTROL_REQUEST_KINDS],
  ['Response', CONTROL_REQUEST_KINDS],
  ['Notice', CONTROL_NOTICE_KINDS],
] as const) {
  const oneof = root.lookupType(`nraid.control.${message}`).oneofs?.kind;
  const members = oneof ? [...oneof.oneof].sort() : [];
  const expected = [...kinds].sort();
  if (members.join(',') !== expected.join(',')) {
    throw new Error(`control.proto ${message}.kind has ${members.join(', ')}; control.ts expects ${expected.join(', ')}`);
  }
}

/** The oneof member a decoded Request/Response/Notice holds, or throws naming what was found. */
function presentKind<K extends string>(wire: Wire, kinds: readonly K[], what: string): K {
  const kind = wire.kind;
  if (typeof kind === 'string' && (kinds as readonly string[]).includes(kind)) return kind as K;
  throw new ProtocolError(
    `expected a ${what} of one of the kinds ${kinds.join(', ')}, found none this node knows; ` +
      'the peer sends a kind its session version does not have (a bug of the newer node)',
  );
}

function requestToWire(request: Request): Wire {
  const codec = REQUEST_CODECS[request.kind] as Codec<unknown> | undefined;
  if (!codec) throw new ProtocolError(`request kind must be one of ${CONTROL_REQUEST_KINDS.join(', ')}, found ${String(request.kind)}`);
  return { id: request.id >>> 0, [request.kind]: codec.toWire(request.body) };
}

function requestFromWire(wire: Wire): Request {
  const kind = presentKind(wire, CONTROL_REQUEST_KINDS, 'Request');
  const body = (REQUEST_CODECS[kind] as Codec<unknown>).fromWire((wire[kind] ?? {}) as Wire);
  return { id: Number(wire.id ?? 0), kind, body } as Request;
}

function responseToWire(response: Response): Wire {
  if (!response.ok) {
    return {
      id: response.id >>> 0,
      ok: false,
      errorCode: response.errorCode,
      errorMessage: response.errorMessage.slice(0, controlErrorMessageCharsMax),
    };
  }
  const { kind, body } = response.answer;
  const codec = RESPONSE_CODECS[kind] as Codec<unknown> | undefined;
  if (!codec) throw new ProtocolError(`response kind must be one of ${CONTROL_REQUEST_KINDS.join(', ')}, found ${String(kind)}`);
  return { id: response.id >>> 0, ok: true, [kind]: codec.toWire(body) };
}

function responseFromWire(wire: Wire): Response {
  const id = Number(wire.id ?? 0);
  if (!wire.ok) {
    return { id, ok: false, errorCode: String(wire.errorCode ?? ''), errorMessage: String(wire.errorMessage ?? '') };
  }
  const kind = presentKind(wire, CONTROL_REQUEST_KINDS, 'Response');
  const body = (RESPONSE_CODECS[kind] as Codec<unknown>).fromWire((wire[kind] ?? {}) as Wire);
  return { id, ok: true, answer: { kind, body } as Answer };
}

function noticeToWire(notice: Notice): Wire {
  const { kind, ...body } = notice;
  const codec = NOTICE_CODECS[kind] as Codec<unknown> | undefined;
  if (!codec) throw new ProtocolError(`notice kind must be one of ${CONTROL_NOTICE_KINDS.join(', ')}, found ${String(kind)}`);
  return { [kind]: codec.toWire(body) };
}

function noticeFromWire(wire: Wire): Notice {
  const kind = presentKind(wire, CONTROL_NOTICE_KINDS, 'Notice');
  const body = (NOTICE_CODECS[kind] as Codec<object>).fromWire((wire[kind] ?? {}) as Wire);
  return { ...body, kind } as Notice;
}

// ------------------------------------------------- envelope members

function helloToWire(hello: Hello): Wire {
  return {
    protocolMajor: hello.version.major >>> 0,
    protocolMajorMin: hello.version.major >>> 0,
    protocolMinor: hello.version.minor >>> 0,
    features: hello.features,
    resource: hello.resource,
    nodeName: hello.nodeName,
    nonce: hello.nonce,
  };
}

function bodyToWire(message: ControlMessage): Wire {
  switch (message.type) {
    case 'hello':
      return helloToWire(message.body);
    case 'nodeState':
      return nodeStateToWire(message.body);
    case 'request':
      return requestToWire(message.body);
    case 'response':
      return responseToWire(message.body);
    case 'notice':
      return noticeToWire(message.body);
    case 'auth':
    case 'sessionStart':
    case 'ping':
    case 'pong':
    case 'dataLinkAccepted':
    case 'goodbye':
      return message.body as unknown as Wire;
  }
}

function bodyFromWire(type: ControlMessageType, wire: Wire): ControlMessage {
  switch (type) {
    case 'hello': {
      const features = Array.isArray(wire.features) ? (wire.features as unknown[]) : [];
      if (features.length > controlFeaturesMax) {
        throw new ProtocolError(`Hello may list at most ${controlFeaturesMax} features, found ${features.length}`);
      }
      return {
        type,
        body: {
          version: { major: Number(wire.protocolMajor ?? 0), minor: Number(wire.protocolMinor ?? 0) },
          features: features.map((feature) => expectName(feature, controlFeatureNameBytesMax, 'Hello feature name')),
          resource: expectName(wire.resource, nameCharsMax, 'Hello resource'),
          nodeName: expectName(wire.nodeName, nameCharsMax, 'Hello node name'),
          nonce: expectBytes(wire.nonce, controlNonceBytes, 'Hello nonce'),
        },
      };
    }
    case 'auth':
      return { type, body: { hmac: expectBytes(wire.hmac, controlHmacBytes, 'Auth hmac') } };
    case 'sessionStart':
      return { type, body: { dataToken: expectBytes(wire.dataToken, dataTokenBytes, 'SessionStart data token') } };
    case 'nodeState':
      return { type, body: nodeStateFromWire(wire) };
    case 'ping':
      return { type, body: { seq: Number(wire.seq ?? 0) } };
    case 'pong':
      return { type, body: { seq: Number(wire.seq ?? 0) } };
    case 'request':
      return { type, body: requestFromWire(wire) };
    case 'response':
      return { type, body: responseFromWire(wire) };
    case 'notice':
      return { type, body: noticeFromWire(wire) };
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
  if (envelope.length > controlMessageBytesMax) {
    throw new ProtocolError(
      `control message ${message.type} encodes to ${envelope.length} bytes, more than the limit of ` +
        `${controlMessageBytesMax}; send it in smaller pieces`,
    );
  }
  const frame = Buffer.allocUnsafe(controlLengthPrefixBytes + envelope.length);
  frame.writeUInt32LE(envelope.length, 0);
  frame.set(envelope, controlLengthPrefixBytes);
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

