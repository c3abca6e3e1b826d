/**
 * What a ControlLink is given (ControlLinkOptions) and what it reports (its
 * events), and the check of the options: names, secret, timings and the
 * protocol version to announce, each refused with a ConfigError naming the
 * setting.
 */
import * as net from 'net';
import { ConfigError, NraidError } from '../errors';
import {
  connectRetryBackoffMsMax,
  connectRetryMsDefault,
  controlPreAuthTimeoutMsDefault,
  dataLinkTimeoutMsDefault,
  handshakeTimeoutMsDefault,
  nameCharsMax,
  pingIntervalMsDefault,
  pingIntervalMsMin,
  pingTimeoutMsDefault,
} from '../limits';
import { CONTROL_FEATURES, ControlNotice, NodeState, PROTOCOL_VERSION, ProtocolVersion } from '../protocol/control';
import { LinkLog, SessionInfo } from './session-types';
import type { LinkTls } from './tls';

export interface NodeAddress {
  name: string;
  host: string;
  port: number;
}

export interface ControlLinkOptions {
  resource: string;
  local: NodeAddress;
  peer: NodeAddress;
  /** The config's shared `secret`. */
  secret: string | Buffer;
  /** TLS on the control link (src/link/tls.ts); null or left out: the clear (`tls = false`). */
  tls?: LinkTls | null;
  pingIntervalMs?: number;
  pingTimeoutMs?: number;
  /** First redial delay; doubles per failure up to connectRetryMaxMs. */
  connectRetryMs?: number;
  connectRetryMaxMs?: number;
  handshakeTimeoutMs?: number;
  /** Time an incoming connection has to prove the secret; default controlPreAuthTimeoutMsDefault, capped by handshakeTimeoutMs. */
  preAuthTimeoutMs?: number;
  dataLinkTimeoutMs?: number;
  /** Features to offer; defaults to CONTROL_FEATURES. */
  features?: readonly string[];
  /**
   * The protocol version to announce; defaults to PROTOCOL_VERSION. Tests
   * (and the daemon's NRAID_TEST_PROTOCOL_VERSION) announce another one to
   * play a node of another release.
   */
  protocolVersion?: ProtocolVersion;
  getState: () => NodeState;
  log: LinkLog;
}

export type ConnectionState = 'StandAlone' | 'Connecting' | 'Connected';

export interface LinkDisconnect {
  reason: string;
  /** Set when the session failed; absent when this node chose to end it. */
  error?: NraidError;
  /** The peer ended the session with a Goodbye (it is alive and chose to). */
  byPeer?: true;
}

export interface LinkRefusal {
  reason: string;
  error: NraidError;
  /** "host:port" of the far end. */
  remote: string;
  /**
   * Whether the reason comes from someone this node trusts to tell it about
   * the link: a peer that proved the secret, or the connection this node
   * dialed itself (to the configured address). Only these reach
   * `lastLinkError`; refusals of anonymous connections are counted and
   * logged (rate-limited), nothing more.
   */
  trusted: boolean;
}

export interface ControlLinkEvents {
  connected: [info: SessionInfo];
  peerState: [state: NodeState];
  disconnected: [event: LinkDisconnect];
  refused: [event: LinkRefusal];
  dataSocket: [socket: net.Socket, info: SessionInfo];
  notice: [notice: ControlNotice];
  connectionState: [state: ConnectionState];
}

/** The link's timings, defaults filled in. */
export interface LinkTimings {
  pingIntervalMs: number;
  pingTimeoutMs: number;
  connectRetryMs: number;
  connectRetryMaxMs: number;
  handshakeTimeoutMs: number;
  preAuthTimeoutMs: number;
  dataLinkTimeoutMs: number;
}

/** The options a link runs with, checked and with defaults filled in. */
export interface LinkSettings {
  timings: LinkTimings;
  secret: Buffer;
  features: readonly string[];
  protocolVersion: ProtocolVersion;
  /** Whether this node dials (its name sorts first) and opens the data link. */
  isDialer: boolean;
}

/** Checks `options` and fills in the defaults; throws ConfigError naming the setting that is wrong. */
export function checkLinkOptions(options: ControlLinkOptions): LinkSettings {
  const { resource, local, peer } = options;
  for (const [key, name] of [['resource', resource], [`nodes.${local.name}`, local.name], [`nodes.${peer.name}`, peer.name]] as const) {
    const sizeBytes = Buffer.byteLength(name, 'utf8');
    if (sizeBytes === 0 || sizeBytes > nameCharsMax) {
      throw new ConfigError(`${key}: expected a name of 1 to ${nameCharsMax} bytes, found ${sizeBytes} bytes`);
    }
  }
  if (local.name === peer.name) {
    throw new ConfigError(`nodes: expected two nodes with different names, found ${local.name} twice; name each node once`);
  }
  const secret = Buffer.isBuffer(options.secret) ? options.secret : Buffer.from(options.secret, 'utf8');
  if (secret.length === 0) {
    throw new ConfigError('secret: expected a shared secret, found an empty one; set the same `secret` on both nodes');
  }
  const t: LinkTimings = {
    pingIntervalMs: options.pingIntervalMs ?? pingIntervalMsDefault,
    pingTimeoutMs: options.pingTimeoutMs ?? pingTimeoutMsDefault,
    connectRetryMs: options.connectRetryMs ?? connectRetryMsDefault,
    connectRetryMaxMs: options.connectRetryMaxMs ?? Math.max(connectRetryBackoffMsMax, options.connectRetryMs ?? 0),
    handshakeTimeoutMs: options.handshakeTimeoutMs ?? handshakeTimeoutMsDefault,
    preAuthTimeoutMs: Math.min(options.preAuthTimeoutMs ?? controlPreAuthTimeoutMsDefault, options.handshakeTimeoutMs ?? handshakeTimeoutMsDefault),
    dataLinkTimeoutMs: options.dataLinkTimeoutMs ?? dataLinkTimeoutMsDefault,
  };
  if (!(t.pingIntervalMs >= pingIntervalMsMin && t.pingIntervalMs < t.pingTimeoutMs)) {
    throw new ConfigError(
      `ping-interval-ms: expected at least ${pingIntervalMsMin} and below ping-timeout-ms (${t.pingTimeoutMs}), ` +
        `found ${t.pingIntervalMs}; pings must come several times per timeout`,
    );
  }
  for (const [key, valueMs] of [
    ['connect-retry-ms', t.connectRetryMs],
    ['handshake timeout', t.handshakeTimeoutMs],
    ['pre-authentication timeout', t.preAuthTimeoutMs],
    ['data link timeout', t.dataLinkTimeoutMs],
  ] as const) {
    if (!(Number.isFinite(valueMs) && valueMs > 0)) throw new ConfigError(`${key}: expected a time above 0 ms, found ${valueMs}`);
  }
  if (t.connectRetryMaxMs < t.connectRetryMs) {
    throw new ConfigError(`connect retry cap: expected at least connect-retry-ms (${t.connectRetryMs}), found ${t.connectRetryMaxMs}`);
  }
  const features = options.features ?? CONTROL_FEATURES;
  const protocolVersion = options.protocolVersion ?? PROTOCOL_VERSION;
  if (![protocolVersion.major, protocolVersion.minor].every((part) => Number.isInteger(part) && part >= 0 && part < 2 ** 32)) {
    throw new ConfigError(`protocol version: expected major and minor as u32 integers, found ${protocolVersion.major}.${protocolVersion.minor}`);
  }
  return { timings: t, secret, features, protocolVersion, isDialer: local.name < peer.name };
}
