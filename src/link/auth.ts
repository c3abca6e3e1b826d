/**
 * HMAC-SHA256 challenge-response of the control link.
 *
 * Each side sends a fresh random nonce in its Hello and proves it knows the
 * shared secret with
 *
 *   HMAC-SHA256(secret, "nraid-auth-v1" | receiver's nonce | sender's nonce | sender's node name)
 *
 * - Replay: the receiver's nonce is new on every connection, so an Auth
 *   recorded from an earlier session never matches.
 * - Reflection: an Auth sent back to its author does not match either,
 *   because the nonces come in the other order and the name is the author's
 *   own, not the peer's; a Hello whose nonce equals ours is refused before.
 * Nonces have a fixed size and the name comes last, so the concatenation is
 * unambiguous. Comparison is constant-time (crypto.timingSafeEqual).
 */
import { InternalError } from '../errors';
import { createHmac, randomBytes, timingSafeEqual } from 'crypto';
import { controlHmacBytes, controlNonceBytes, dataTokenBytes } from '../limits';

export const AUTH_LABEL = Buffer.from('nraid-auth-v1', 'ascii');

export function newNonce(): Buffer {
  return randomBytes(controlNonceBytes);
}

export function newDataToken(): Buffer {
  return randomBytes(dataTokenBytes);
}

/** The HMAC a node named `senderName` sends, having received `receiverNonce`. */
export function authHmac(secret: Buffer, receiverNonce: Buffer, senderNonce: Buffer, senderName: string): Buffer {
  if (receiverNonce.length !== controlNonceBytes || senderNonce.length !== controlNonceBytes) {
    throw new InternalError(`auth nonces must be ${controlNonceBytes} bytes`);
  }
  return createHmac('sha256', secret)
    .update(AUTH_LABEL)
    .update(receiverNonce)
    .update(senderNonce)
    .update(Buffer.from(senderName, 'utf8'))
    .digest();
}

/** Whether `hmac` proves that `peerName`, who sent `peerNonce`, answered our `ownNonce` with the secret. */
export function verifyAuthHmac(secret: Buffer, ownNonce: Buffer, peerNonce: Buffer, peerName: string, hmac: Buffer): boolean {
  const expected = authHmac(secret, ownNonce, peerNonce, peerName);
  return hmac.length === controlHmacBytes && timingSafeEqual(expected, hmac);
}

/** Constant-time equality of two tokens of the same expected size. */
export function tokensEqual(expected: Buffer, found: Buffer): boolean {
  return expected.length === found.length && timingSafeEqual(expected, found);
}
