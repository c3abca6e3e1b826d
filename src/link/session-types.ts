/**
 * What a control session is given (SessionConfig, the handlers of requests,
 * the log) and what it reports (SessionInfo once established, SessionEnd
 * once closed).
 */
import { NraidError } from '../errors';
import { ControlRequestKind, ControlRequests, HandlerResponses, NodeState, PeerHello, ProtocolVersion } from '../protocol/control';

export type LinkLogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LinkLog = (level: LinkLogLevel, msg: string, fields: Record<string, unknown>) => void;

/** Answers one kind of request from the peer; what it throws goes back as an error Response. */
export type RequestHandler<K extends ControlRequestKind = ControlRequestKind> = (
  body: ControlRequests[K]['request'],
) => HandlerResponses[K] | Promise<HandlerResponses[K]>;

export interface SessionConfig {
  dialer: boolean;
  resource: string;
  localName: string;
  peerName: string;
  secret: Buffer;
  /** The version announced in our Hello. */
  protocolVersion: ProtocolVersion;
  features: readonly string[];
  handshakeTimeoutMs: number;
  /** Time the peer has, from the start, to prove the secret (its Auth checked out). */
  preAuthTimeoutMs: number;
  pingIntervalMs: number;
  pingTimeoutMs: number;
  dataLinkTimeoutMs: number;
  getState: () => NodeState;
  findHandler: (kind: ControlRequestKind) => RequestHandler | undefined;
  log: LinkLog;
}

/** What both sides agreed on; given with 'connected'. */
export interface SessionInfo {
  /** Local counter, to tell sessions apart in logs and events. */
  id: number;
  /** Whether this node dialed (and so opens the data link). */
  dialer: boolean;
  /** "host:port" of the peer's end of the control connection. */
  remote: string;
  /** The peer's Hello (version, nonce) and Identity (resource, node name, features). */
  peerHello: PeerHello;
  /** The version this session speaks: the common major and the lower of both minors. */
  protocolVersion: ProtocolVersion;
  /** Features both sides offered, sorted. */
  features: string[];
  peerState: NodeState;
}

export interface SessionEnd {
  reason: string;
  /** Set when the session failed (peer, protocol, timeout); absent for a close this node chose. */
  error?: NraidError;
  /** The peer ended the session with a Goodbye (it is alive and chose to). */
  byPeer?: true;
  authenticated: boolean;
  established: boolean;
}

export type DataTokenCheck = 'accepted' | 'no-session-token' | 'mismatch' | 'used';
