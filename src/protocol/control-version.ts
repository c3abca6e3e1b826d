/**
 * Version rules of the control protocol: the version this build speaks, which
 * peer versions may connect, the version a session speaks, and the features a
 * node offers in its Hello (a session uses those both offered).
 */
import { ConfigError } from '../errors';

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
export const PROTOCOL_VERSION: ProtocolVersion = Object.freeze({ major: 3, minor: 0 });

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
 *   resync-pause: the ResyncPause notice (pause-sync / resume-sync on either node).
 */
export const CONTROL_FEATURES: readonly string[] = ['resync-pause'];
