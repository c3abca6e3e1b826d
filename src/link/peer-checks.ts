/**
 * What a control session checks of its peer: that its Hello announces a
 * compatible protocol version (checked first) and a fresh nonce; once it is
 * authenticated, that its Identity names the expected resource and node; which features both offered; and that both
 * nodes hold the same data size. Each check throws an NraidError saying what
 * was expected, what was found and what to do.
 */
import { PeerError, VersionError } from '../errors';
import { Hello, Identity, NodeState, ProtocolVersion, formatVersion, versionsCompatible } from '../protocol/control';
import { tokensEqual } from './auth';

/** What this node expects of the peer's Hello and Identity. */
export interface HelloExpectations {
  resource: string;
  localName: string;
  peerName: string;
  /** The version announced in our Hello. */
  protocolVersion: ProtocolVersion;
  /** The nonce of our Hello, which the peer's must not repeat. */
  ownNonce: Buffer;
  /** "host:port" of the peer's end, for the messages. */
  remote: string;
}

/**
 * Throws VersionError or PeerError unless `hello` announces a compatible
 * version and a fresh nonce. A Hello names nobody: `who` is how the messages
 * call its sender (the configured peer on the dialer, "the client" on the
 * acceptor).
 */
export function checkPeerHello(hello: Hello, expected: HelloExpectations, who: string): void {
  const { remote } = expected;
  const local = expected.protocolVersion;
  if (!versionsCompatible(local, hello.version)) {
    const peerNewer = hello.version.major > local.major || (hello.version.major === local.major && hello.version.minor > local.minor);
    const lagging = peerNewer ? `this node (${expected.localName})` : expected.peerName;
    const target = peerNewer ? hello.version : local;
    throw new VersionError(
      `control protocol versions do not match: this node (${expected.localName}) speaks ${formatVersion(local)}, ` +
        `${who} at ${remote} speaks ${formatVersion(hello.version)}; nodes need the same major ` +
        `version and minors at most one apart: upgrade ${lagging} to a ${target.major}.x release ` +
        `(${formatVersion(target)} or within one minor of it), then connect again`,
    );
  }
  if (tokensEqual(expected.ownNonce, hello.nonce)) {
    throw new PeerError(
      `expected a fresh nonce from ${who} at ${remote}, found our own: a reflection attempt ` +
        'or a connection looped back to this node; check the peer address',
    );
  }
}

/** Throws PeerError unless the authenticated peer's `identity` is the configured resource and peer node. */
export function checkPeerIdentity(identity: Identity, expected: HelloExpectations): void {
  const { remote } = expected;
  if (identity.resource !== expected.resource) {
    throw new PeerError(
      `expected resource ${expected.resource}, found ${identity.nodeName} at ${remote} announcing resource ` +
        `${identity.resource} (it knows the secret); check the address and the resource name in both nodes' config`,
    );
  }
  if (identity.nodeName !== expected.peerName) {
    throw new PeerError(
      `expected the peer node ${expected.peerName}, found a node calling itself ${identity.nodeName} at ` +
        `${remote} (it knows the secret); check the [nodes] sections of both nodes' config`,
    );
  }
}

/** The features of a session: those both nodes offered, once each, sorted. */
export function sharedFeatures(own: readonly string[], offered: readonly string[]): string[] {
  const offeredSet = new Set(offered);
  return [...new Set(own)].filter((feature) => offeredSet.has(feature)).sort();
}

/** Throws PeerError unless both nodes hold the same data size. */
export function checkDataSizes(names: { localName: string; peerName: string }, local: NodeState, peer: NodeState): void {
  if (local.dataSizeBytes === peer.dataSizeBytes) return;
  throw new PeerError(
    `peer ${names.peerName} has ${peer.dataSizeBytes} bytes of data, ${names.localName} has ` +
      `${local.dataSizeBytes}; both nodes need the same data size: check the disks and run create-md`,
  );
}
