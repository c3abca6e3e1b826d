/**
 * Tells what an accepted connection is from the bytes it opens with:
 * "NRAIDCTL" for a control connection, "NRAIDDAT" and the data link token for
 * a data link; anything else, or too little within the handshake timeout,
 * is a refusal with what was expected and what was found.
 */
import * as net from 'net';
import { NraidError, PeerError, ProtocolError } from '../errors';
import { controlPreambleBytes, dataTokenBytes } from '../limits';
import { CONTROL_PREAMBLE, DATA_PREAMBLE } from '../protocol/control';
import { readPrefix } from './socket-io';

/** What became of one accepted connection; exactly one is called, once. */
export interface IncomingOutcome {
  /** A control connection; `rest` is what came after the preamble. */
  control(rest: Buffer): void;
  /** A data link with its token; `rest` is what came after the token. */
  data(token: Buffer, rest: Buffer): void;
  /** Neither, or not in time. */
  refused(error: NraidError): void;
}

/** Reads the preamble (and for a data link the token) of `socket` within `timeoutMs` altogether. */
export function sortIncoming(socket: net.Socket, timeoutMs: number, outcome: IncomingOutcome): void {
  const deadlineMs = Date.now() + timeoutMs;
  readPrefix(socket, controlPreambleBytes, Buffer.alloc(0), timeoutMs, (result) => {
    if (!result.ok) {
      outcome.refused(prefixFailure('the 8-byte preamble NRAIDCTL or NRAIDDAT', result, timeoutMs));
      return;
    }
    if (result.prefix.equals(CONTROL_PREAMBLE)) {
      outcome.control(result.rest);
      return;
    }
    if (result.prefix.equals(DATA_PREAMBLE)) {
      const leftMs = Math.max(1, deadlineMs - Date.now());
      readPrefix(socket, dataTokenBytes, result.rest, leftMs, (tokenResult) => {
        if (!tokenResult.ok) {
          outcome.refused(prefixFailure(`the ${dataTokenBytes}-byte data link token`, tokenResult, timeoutMs));
          return;
        }
        outcome.data(tokenResult.prefix, tokenResult.rest);
      });
      return;
    }
    outcome.refused(
      new ProtocolError(
        `expected the preamble NRAIDCTL or NRAIDDAT, found ${describeBytes(result.prefix)}; the client is not an nraid peer`,
      ),
    );
  });
}

function prefixFailure(
  expected: string,
  result: { reason: 'timeout' | 'closed' | 'error'; receivedBytes: number; error?: Error },
  timeoutMs: number,
): NraidError {
  if (result.reason === 'timeout') {
    return new PeerError(`expected ${expected} within ${timeoutMs} ms (handshake timeout), found ${result.receivedBytes} bytes`);
  }
  const how = result.reason === 'error' ? `failed (${result.error?.message ?? 'unknown error'})` : 'closed';
  return new PeerError(`expected ${expected}, found the connection ${how} after ${result.receivedBytes} bytes`);
}

function describeBytes(bytes: Buffer): string {
  const printable = /^[\x20-\x7e]*$/.test(bytes.toString('latin1'));
  return printable ? `"${bytes.toString('latin1')}"` : `bytes ${bytes.toString('hex')}`;
}
