/**
 * The messages of the control link (control.proto) as TypeScript types: the
 * handshake and session messages, a node's state, and the typed requests,
 * answers and notices the daemon uses among them. Adding a request or notice
 * kind starts here (ControlRequests, ControlNotices); the compiler then asks
 * for its codec in control-request-codecs.ts.
 */
import { ProtocolVersion } from './control-version';
import type { SplitBrainFacts } from '../sync-decision';

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

/** First message each way, before authentication: nothing but a version and a fresh nonce. */
export interface Hello {
  /** The version the sender speaks. */
  version: ProtocolVersion;
  nonce: Buffer;
}
/** Who the sender is, sent only once the peer is authenticated (after the peer's Auth checked out). */
export interface Identity {
  resource: string;
  nodeName: string;
  features: string[];
}
/** The peer as a session knows it once established: its Hello and its Identity. */
export type PeerHello = Hello & Identity;
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

/** What a node tells its peer in a split brain, for the after-sb policies (defined with them). */
export type { SplitBrainFacts };
/** The whole dirty bitmap: little-endian u64 words, `granularityBytes` of data per bit. */
export interface BitmapReply {
  granularityBytes: number;
  words: Buffer;
}
/**
 * A bitmap answer read a chunk at a time as it is sent (what a daemon
 * answers: its bitmap is 32 MiB per TiB of data, and a whole copy in JS
 * would stay resident): `read` returns bytes [offsetBytes, offsetBytes +
 * lengthBytes) of `sizeBytes` of words.
 */
export interface BitmapSource {
  granularityBytes: number;
  sizeBytes: number;
  read(offsetBytes: number, lengthBytes: number): Buffer;
}
/** One checked, decompressed part of a bitmap answer, for a request's onBitmapPart sink. */
export interface BitmapPart {
  granularityBytes: number;
  totalBytes: number;
  offsetBytes: number;
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
/** What a handler may answer per kind: the response, or for bitmap also a BitmapSource. */
export type HandlerResponses = { [K in ControlRequestKind]: K extends 'bitmap' ? BitmapReply | BitmapSource : ControlRequests[K]['response'] };
/** Per request: with onBitmapPart, a bitmap answer's parts go there as they arrive (and the answer resolves with no words). */
export interface RequestOptions {
  onBitmapPart?: (part: BitmapPart) => void;
}

export interface ControlNotices {
  resyncNone: Record<string, never>;
  resyncDone: Record<string, never>;
  adjust: Record<string, never>;
  promoteCommit: { requestId: bigint };
  promoteAbort: { requestId: bigint };
  /** The sender just became Primary and ends the session to reconnect as the data link's source. */
  turnaround: Record<string, never>;
  /** The sender's operator paused (or resumed) the resync: pause-sync / resume-sync. Only in sessions with the feature "resync-pause". */
  resyncPause: { paused: boolean };
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
  identity: Identity;
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
