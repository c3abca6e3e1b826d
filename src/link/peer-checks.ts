/**
 * What a control session checks of its peer: that its Hello announces a
 * compatible protocol version (checked first), the expected resource and
 * node name and a fresh nonce; which features both offered; and that both
 * nodes hold the same data size. Each check throws an NraidError saying what
 * was expected, what was found and what to do.
 */
import { PeerError, VersionError } from '../errors';
import { Hello, NodeState, ProtocolVersion, formatVersion, versionsCompatible } from '../protocol/control';
import { tokensEqual } from './auth';

/** What this node expects of the peer's Hello. */
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

/** Throws VersionError or PeerError unless `hello` is the expected peer's, at a compatible version. */
export function checkPeerHello(hello: Hello, expected: HelloExpectations): void {
  const { remote } = expected;
  const local = expected.protocolVersion;
  if (!versionsCompatible(local, hello.version)) {
    const peerNewer = hello.version.major > local.major || (hello.version.major === local.major && hello.version.minor > local.minor);
    const lagging = peerNewer ? `this node (${expected.localName})` : hello.nodeName;
    const target = peerNewer ? hello.version : local;
    throw new VersionError(
      `control protocol versions do not match: this node (${expected.localName}) speaks ${formatVersion(local)}, ` +
        `${hello.nodeName} at ${remote} speaks ${formatVersion(hello.version)}; nodes need the same major ` +
        `version and minors at most one apart: upgrade ${lagging} to a ${target.major}.x release ` +
        `(${formatVersion(target)} or within one minor of it), then connect again`,
    );
  }
  if (hello.resource !== expected.resource) {
    throw new PeerError(
      `expected resource ${expected.resource}, found ${hello.nodeName} at ${remote} announcing resource ` +
        `${hello.resource}; check the address and the resource name in both nodes' config`,
    );
  }
  if (hello.nodeName !== expected.peerName) {
    throw new PeerError(
      `expected the peer node ${expected.peerName}, found a node calling itself ${hello.nodeName} at ` +
        `${remote}; check the [nodes] sections of both nodes' config`,
    );
  }
  if (tokensEqual(expected.ownNonce, hello.nonce)) {
    throw new PeerError(
      `expected a fresh nonce from ${hello.nodeName} at ${remote}, found our own: a reflection attempt ` +
        'or a connection looped back to this node; check the peer address',
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
