/**
 * HMAC-SHA256 challenge-response of the control link, in which the caller
 * proves the secret first.
 *
 * Each side sends a fresh random nonce in its Hello (which carries nothing
 * else but the protocol version). Then, in this order:
 *
 *   dialer   -> Auth  HMAC-SHA256(secret, "nraid-auth-v3" | "dialer"   | acceptor's nonce | dialer's nonce)
 *   acceptor -> Auth  HMAC-SHA256(secret, "nraid-auth-v3" | "acceptor" | dialer's nonce   | acceptor's nonce)
 *
 * The acceptor, which anyone can reach, sends its HMAC only after the
 * dialer's checked out: a stranger who connects never obtains a value
 * computed from the secret that it could test guesses against offline. The
 * dialer sends its HMAC only to the address it was configured to dial.
 *
 * - Replay: the receiver's nonce is new on every connection, so an Auth
 *   recorded from an earlier session never matches.
 * - Reflection: the role is part of the HMAC, so an Auth sent back to its
 *   author (or handed from one role to the other) does not match; a Hello
 *   whose nonce equals ours is refused before.
 * Labels and nonces have fixed sizes, so the concatenation is unambiguous.
 * Comparison is constant-time (crypto.timingSafeEqual).
 */
import { InternalError } from '../errors';
import { createHmac, randomBytes, timingSafeEqual } from 'crypto';
import { controlHmacBytes, controlNonceBytes, dataTokenBytes } from '../limits';

export const AUTH_LABEL = Buffer.from('nraid-auth-v3', 'ascii');

/** Who computes an HMAC: the node that dialed the connection, or the one that accepted it. */
export type AuthRole = 'dialer' | 'acceptor';
const ROLE_LABELS: Record<AuthRole, Buffer> = {
  dialer: Buffer.from('dialer\0\0', 'ascii'),
  acceptor: Buffer.from('acceptor', 'ascii'),
};

export function newNonce(): Buffer {
  return randomBytes(controlNonceBytes);
}

export function newDataToken(): Buffer {
  return randomBytes(dataTokenBytes);
}

/** The HMAC the side playing `senderRole` sends, having received `receiverNonce`. */
export function authHmac(secret: Buffer, senderRole: AuthRole, receiverNonce: Buffer, senderNonce: Buffer): Buffer {
  if (receiverNonce.length !== controlNonceBytes || senderNonce.length !== controlNonceBytes) {
    throw new InternalError(`auth nonces must be ${controlNonceBytes} bytes`);
  }
  return createHmac('sha256', secret)
    .update(AUTH_LABEL)
    .update(ROLE_LABELS[senderRole])
    .update(receiverNonce)
    .update(senderNonce)
    .digest();
}

/** Whether `hmac` proves that the peer, playing `peerRole` and having sent `peerNonce`, answered our `ownNonce` with the secret. */
export function verifyAuthHmac(secret: Buffer, peerRole: AuthRole, ownNonce: Buffer, peerNonce: Buffer, hmac: Buffer): boolean {
  const expected = authHmac(secret, peerRole, ownNonce, peerNonce);
  return hmac.length === controlHmacBytes && timingSafeEqual(expected, hmac);
}

/** Constant-time equality of two tokens of the same expected size. */
export function tokensEqual(expected: Buffer, found: Buffer): boolean {
  return expected.length === found.length && timingSafeEqual(expected, found);
}
