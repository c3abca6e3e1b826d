/**
 * The one-time binding of the data link to a control session. The dialer
 * opens it (openDataLink: connect, "NRAIDDAT" + the session's token, wait for
 * DataLinkAccepted); the acceptor checks the token of an incoming data
 * connection against the session and hands the socket over
 * (acceptDataLink). Either way the socket ends up positioned right after
 * preamble+token, paused, with its fd not being read, ready for native code.
 */
import * as net from 'net';
import { NraidError, PeerError, ProtocolError } from '../errors';
import { DATA_PREAMBLE } from '../protocol/control';
import type { ControlSession } from './control-session';
import { LinkLog, SessionEnd, SessionInfo } from './session-types';
import { stopReading } from './socket-io';

export interface DataLinkPeer {
  name: string;
  host: string;
  port: number;
  /** Our own address to connect from, the one the peer accepts. */
  localAddress?: string;
}

/**
 * Dialer: connects to `peer` and sends the preamble and `token` (taken from
 * `session`); resolves with the socket once the acceptor confirmed it. The
 * socket is in `tracked` while it is being opened. A failure or no answer
 * within `timeoutMs` also closes the session (useless without its data link).
 */
export function openDataLink(
  session: ControlSession,
  token: Buffer,
  peer: DataLinkPeer,
  timeoutMs: number,
  tracked: Set<net.Socket>,
  log: LinkLog,
): Promise<net.Socket> {
  return new Promise<net.Socket>((resolve, reject) => {
    const socket = new net.Socket();
    socket.pause(); // never read: the fd goes to native code with every byte still in the kernel
    tracked.add(socket);
    let settled = false;
    const cleanup = (): void => {
      settled = true;
      clearTimeout(timer);
      tracked.delete(socket);
      socket.off('error', onError);
      session.off('dataLinkAccepted', onAccepted);
      session.off('closed', onClosed);
    };
    const fail = (error: NraidError): void => {
      if (settled) return;
      cleanup();
      socket.destroy();
      reject(error);
      session.close(error.message, error);
    };
    const onAccepted = (): void => {
      if (settled) return;
      cleanup();
      log('info', `data link to ${peer.name} open`, { session: session.id, local: `${socket.localAddress}:${socket.localPort}` });
      resolve(socket);
    };
    const onError = (error: Error): void =>
      fail(new PeerError(`cannot open the data link to ${peer.name} at ${peer.host}:${peer.port}: ${error.message}`));
    const onClosed = (end: SessionEnd): void =>
      fail(new PeerError(`the session with ${peer.name} ended before its data link was accepted: ${end.reason}`));
    const timer = setTimeout(
      () =>
        fail(
          new PeerError(
            `expected ${peer.name} to accept the data link within ${timeoutMs} ms, found no answer; ` +
              'dropping the session',
          ),
        ),
      timeoutMs,
    );
    socket.on('error', onError);
    session.on('dataLinkAccepted', onAccepted);
    session.on('closed', onClosed);
    const from = peer.localAddress === undefined ? {} : { localAddress: peer.localAddress };
    socket.connect({ host: peer.host, port: peer.port, ...from }, () => {
      if (settled) return;
      socket.setNoDelay(true);
      socket.write(Buffer.concat([DATA_PREAMBLE, token]));
    });
  });
}

/** Where acceptDataLink reports to. */
export interface DataLinkAcceptance {
  peerName: string;
  /** The connection is not this session's data link; close it and report `error`. */
  refuse(socket: net.Socket, remote: string, error: NraidError): void;
  /** The session's data link, once the session is established; the socket is the caller's from then on. */
  accepted(socket: net.Socket, info: SessionInfo): void;
  log: LinkLog;
}

/**
 * Acceptor: takes `socket` as the data link of `session` if it carried the
 * session's unused token and nothing after it; confirms to the dialer
 * (DataLinkAccepted) and hands the socket over, or refuses it.
 */
export function acceptDataLink(
  session: ControlSession,
  socket: net.Socket,
  remote: string,
  token: Buffer,
  rest: Buffer,
  to: DataLinkAcceptance,
): void {
  if (rest.length > 0) {
    to.refuse(socket, remote, new ProtocolError(
      `expected nothing after the data link token until it is accepted, found ${rest.length} more bytes from ${remote}`,
    ));
    return;
  }
  const check = session.consumeDataToken(token);
  if (check !== 'accepted') {
    const why = {
      'no-session-token': `session ${session.id} has no data token yet`,
      mismatch: `the token does not match session ${session.id}'s`,
      used: `session ${session.id}'s token was already used; one data link per session`,
    }[check];
    to.refuse(socket, remote, new PeerError(`data link from ${remote} refused: ${why}`));
    return;
  }
  // The stream machinery restarts the fd read once more on the next tick
  // (maybeReadMore); stop it after that, and only then let the dialer send.
  setImmediate(() => handOver(session, socket, remote, to));
}

function handOver(session: ControlSession, socket: net.Socket, remote: string, to: DataLinkAcceptance): void {
  stopReading(socket);
  if (session.closed || socket.destroyed || socket.readableLength > 0) {
    if (socket.readableLength > 0) {
      to.refuse(socket, remote, new ProtocolError(
        `expected nothing after the data link token until it is accepted, found ${socket.readableLength} more bytes from ${remote}`,
      ));
    } else {
      socket.destroy();
    }
    return;
  }
  socket.removeAllListeners('error');
  session.sendDataLinkAccepted();
  const info = session.sessionInfo;
  to.log('info', `data link from ${to.peerName} accepted`, { session: session.id, remote });
  if (info) {
    to.accepted(socket, info);
  } else {
    // Authenticated but not yet established: hand it over once the session is.
    const onEstablished = (established: SessionInfo): void => {
      session.off('closed', onClosed);
      to.accepted(socket, established);
    };
    const onClosed = (): void => {
      session.off('established', onEstablished);
      socket.destroy();
    };
    session.once('established', onEstablished);
    session.once('closed', onClosed);
  }
}
