/**
 * One control connection, from just after its preamble to its close:
 * handshake (Hello, Auth), session start (data token, states), then pings,
 * state updates, requests, responses and notices.
 *
 * Order of messages (control.proto says the same):
 *   both      Hello (version, nonce)     at once
 *   dialer    Auth                       once the acceptor's Hello checks out
 *   acceptor  Auth, Identity             once the dialer's Auth checks out
 *   dialer    Identity, SessionStart,    once the acceptor's Auth checks out,
 *             NodeState                  then once its Identity does
 *   acceptor  NodeState                  once Identity and SessionStart are in
 * The caller proves the secret first (src/link/auth.ts): the acceptor, which
 * anyone can reach, reveals nothing computed from the secret, and no name,
 * to a client that has not. Until the peer's Auth checks out the reader
 * takes only a Hello and an Auth of at most controlPreAuthMessageBytesMax
 * each, and the peer has preAuthTimeoutMs for it.
 * The session is established when the peer's NodeState has come and the data
 * sizes agree; only then do pings, requests and notices flow. Anything out of
 * order, or any message at all before the peer's Auth is verified, closes the
 * connection with the reason.
 *
 * Versions: the peer's Hello must announce a compatible protocol version
 * (versionsCompatible: same major, minors at most one apart), or the
 * connection closes with a VersionError naming both versions; this is
 * checked first, before the names. The session speaks the lower minor.
 *
 * Requests are typed (ControlRequests in src/protocol/control.ts). The bitmap
 * answer leaves as chunks (src/protocol/bitmap-chunks.ts), one per socket
 * drain, so a large bitmap neither floods the send queue nor blocks the
 * event loop; messages sent meanwhile queue behind it, so the order of
 * messages on the wire is the order they were sent.
 *
 * Here: the order of messages and the session's timers. Next to it:
 *   peer-checks.ts       what the peer's Hello and state must satisfy
 *   pending-requests.ts  requests this node asked, until answered
 *   send-queue.ts        frames in order, streamed answers one per drain
 *   session-types.ts     SessionConfig, SessionInfo, SessionEnd
 *
 * The session never retries or reconnects; ControlLink decides that from the
 * SessionEnd it emits ('closed'), exactly once.
 */
import { EventEmitter } from 'events';
import * as net from 'net';
import { InternalError, NraidError, PeerError, ProtocolError, StateError, errorReply } from '../errors';
import { controlErrorMessageCharsMax } from '../limits';
import { bitmapChunks, checkBitmapReply } from '../protocol/bitmap-chunks';
import {
  Answer,
  BitmapReply,
  BitmapSource,
  ControlFrameReader,
  ControlMessage,
  ControlNotice,
  ControlRequestKind,
  ControlRequests,
  Hello,
  Identity,
  NodeState,
  ProtocolVersion,
  Request,
  RequestOptions,
  encodeFrame,
  sessionVersion,
} from '../protocol/control';
import { AuthRole, authHmac, newDataToken, newNonce, tokensEqual, verifyAuthHmac } from './auth';
import { HelloExpectations, checkDataSizes, checkPeerHello, checkPeerIdentity, sharedFeatures } from './peer-checks';
import { PendingRequests } from './pending-requests';
import { SendQueue } from './send-queue';
import { DataTokenCheck, SessionConfig, SessionEnd, SessionInfo } from './session-types';
import { closeSocket, remoteOf, resetSocket } from './socket-io';

export type { DataTokenCheck, LinkLog, LinkLogLevel, RequestHandler, SessionConfig, SessionEnd, SessionInfo } from './session-types';

type Phase = 'awaitingHello' | 'awaitingAuth' | 'awaitingIdentity' | 'authenticated' | 'established' | 'closed';

interface SessionEvents {
  authenticated: [];
  established: [info: SessionInfo];
  peerState: [state: NodeState];
  notice: [notice: ControlNotice];
  dataLinkAccepted: [];
  closed: [end: SessionEnd];
}

let nextSessionId = 1;

export class ControlSession extends EventEmitter<SessionEvents> {
  readonly id = nextSessionId++;
  readonly remote: string;
  private phase: Phase = 'awaitingHello';
  private readonly reader = new ControlFrameReader();
  private readonly ownNonce = newNonce();
  private peerHello: Hello | null = null;
  private peerIdentity: Identity | null = null;
  /** The peer's Auth checked out: it knows the secret. */
  private peerProven = false;
  private preAuthTimer: NodeJS.Timeout | null = null;
  private protocolVersion: ProtocolVersion | null = null;
  private features: string[] = [];
  private peerState: NodeState | null = null;
  private info: SessionInfo | null = null;
  /** Dialer: minted at authentication. Acceptor: from SessionStart. */
  private dataToken: Buffer | null = null;
  private dataTokenUsed = false;
  private awaitingDataLinkAccepted = false;
  private handshakeTimer: NodeJS.Timeout | null = null;
  private silenceTimer: NodeJS.Timeout | null = null;
  private pingTimer: NodeJS.Timeout | null = null;
  private dataLinkTimer: NodeJS.Timeout | null = null;
  private pingSeq = 0;
  private lastPingSentAtMs = 0;
  /** Round trip of the last answered ping. */
  lastRttMs: number | null = null;
  private readonly pending: PendingRequests;
  private readonly sendQueue: SendQueue;

  constructor(private readonly socket: net.Socket, private readonly config: SessionConfig) {
    super();
    this.remote = remoteOf(socket);
    this.pending = new PendingRequests(config.peerName, config.log);
    this.sendQueue = new SendQueue(
      socket,
      `${config.peerName} at ${this.remote}`,
      () => this.phase === 'closed',
      (error) => this.fail(asNraidError(error)),
    );
  }

  /**
   * Sends our Hello and starts reading, beginning with `initial` (bytes read
   * with the preamble). Call once, after the listeners are attached: a
   * failure in `initial` emits 'closed' from here.
   */
  start(initial: Buffer): void {
    const { socket, config } = this;
    if (this.handshakeTimer || this.phase !== 'awaitingHello') throw new InternalError('ControlSession.start() called twice');
    this.handshakeTimer = setTimeout(() => this.onHandshakeTimeout(), config.handshakeTimeoutMs);
    this.preAuthTimer = setTimeout(() => this.onPreAuthTimeout(), Math.min(config.preAuthTimeoutMs, config.handshakeTimeoutMs));
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => this.onPeerClosed('closed the connection'));
    socket.on('close', () => this.onPeerClosed('connection closed'));
    socket.on('error', (error: Error) => this.onPeerClosed(`connection failed (${error.message})`));
    this.send({
      type: 'hello',
      body: { version: config.protocolVersion, nonce: this.ownNonce },
    });
    if (initial.length > 0) this.onData(initial);
    socket.resume();
  }

  get authenticated(): boolean {
    return this.phase === 'authenticated' || this.phase === 'established';
  }

  /** How far the handshake got, for choosing which half-open connection to close first: 1 preamble only, 2 Hello, 3 proven. */
  get handshakeProgress(): number {
    if (this.peerProven) return 3;
    return this.phase === 'awaitingHello' ? 1 : 2;
  }

  /** Whether the peer proved the secret (its Auth checked out), even if the session went no further. */
  get proven(): boolean {
    return this.peerProven;
  }

  get established(): boolean {
    return this.phase === 'established';
  }

  get closed(): boolean {
    return this.phase === 'closed';
  }

  get sessionInfo(): SessionInfo | null {
    return this.info;
  }

  // ------------------------------------------------------------ inbound

  private onData(chunk: Buffer): void {
    if (this.phase === 'closed') return;
    this.silenceTimer?.refresh();
    try {
      // One message at a time: the reader's bounds are lifted (onAuth) before it reads the next length prefix.
      this.reader.feed(chunk, (message) => {
        this.onMessage(message);
        return (this.phase as Phase) !== 'closed';
      });
    } catch (error) {
      this.fail(asNraidError(error));
    }
  }

  private onMessage(message: ControlMessage): void {
    switch (this.phase) {
      case 'awaitingHello':
        if (message.type !== 'hello') throw this.outOfOrder('Hello', message.type);
        this.onHello(message.body);
        return;
      case 'awaitingAuth':
        if (message.type !== 'auth') throw this.outOfOrder('Auth', message.type);
        this.onAuth(message.body.hmac);
        return;
      case 'awaitingIdentity':
        if (message.type !== 'identity') throw this.outOfOrder('Identity', message.type);
        this.onIdentity(message.body);
        return;
      case 'authenticated':
        this.onSessionStartPhase(message);
        return;
      case 'established':
        this.onEstablishedMessage(message);
        return;
      case 'closed':
        return;
    }
  }

  private expectations(): HelloExpectations {
    const { config } = this;
    return {
      resource: config.resource,
      localName: config.localName,
      peerName: config.peerName,
      protocolVersion: config.protocolVersion,
      ownNonce: this.ownNonce,
      remote: this.remote,
    };
  }

  private get peerRole(): AuthRole {
    return this.config.dialer ? 'acceptor' : 'dialer';
  }

  private onHello(hello: Hello): void {
    const { config } = this;
    checkPeerHello(hello, this.expectations(), this.who());
    this.peerHello = hello;
    this.protocolVersion = sessionVersion(config.protocolVersion, hello.version);
    this.phase = 'awaitingAuth';
    // The caller proves the secret first; the acceptor answers only a proven dialer (onAuth).
    if (config.dialer) this.send({ type: 'auth', body: { hmac: authHmac(config.secret, 'dialer', hello.nonce, this.ownNonce) } });
  }

  private onAuth(hmac: Buffer): void {
    const { config } = this;
    const hello = this.peerHello!;
    if (!verifyAuthHmac(config.secret, this.peerRole, this.ownNonce, hello.nonce, hmac)) {
      throw new PeerError(
        `authentication failed: ${this.who()} at ${this.remote} answered with an HMAC that does not match ` +
          "the shared secret; check that `secret` is the same in both nodes' config",
      );
    }
    this.peerProven = true;
    this.reader.authenticated();
    if (this.preAuthTimer) clearTimeout(this.preAuthTimer);
    this.preAuthTimer = null;
    this.phase = 'awaitingIdentity';
    if (!config.dialer) this.send({ type: 'auth', body: { hmac: authHmac(config.secret, 'acceptor', hello.nonce, this.ownNonce) } });
    this.send({ type: 'identity', body: { resource: config.resource, nodeName: config.localName, features: [...config.features] } });
  }

  private onIdentity(identity: Identity): void {
    const { config } = this;
    checkPeerIdentity(identity, this.expectations());
    this.peerIdentity = identity;
    this.features = sharedFeatures(config.features, identity.features);
    this.phase = 'authenticated';
    this.emit('authenticated');
    if ((this.phase as Phase) !== 'authenticated') return; // the link may have closed us
    if (config.dialer) {
      this.dataToken = newDataToken();
      this.send({ type: 'sessionStart', body: { dataToken: this.dataToken } });
      this.sendOwnState();
    }
  }

  /** How messages name the peer: its name once it told it, else the configured peer (dialer) or "the client". */
  private who(): string {
    return this.peerIdentity?.nodeName ?? (this.config.dialer ? this.config.peerName : 'the client');
  }

  private onSessionStartPhase(message: ControlMessage): void {
    const { config } = this;
    if (message.type === 'goodbye') {
      this.onGoodbye(message.body.reason);
      return;
    }
    if (!config.dialer && this.dataToken === null) {
      if (message.type !== 'sessionStart') throw this.outOfOrder('SessionStart', message.type);
      this.dataToken = message.body.dataToken;
      this.dataLinkTimer = setTimeout(() => this.onDataLinkTimeout(), config.dataLinkTimeoutMs);
      this.sendOwnState();
      return;
    }
    if (message.type !== 'nodeState') throw this.outOfOrder('NodeState', message.type);
    this.checkDataSizes(config.getState(), message.body);
    this.peerState = message.body;
    this.establish();
  }

  private establish(): void {
    const { config } = this;
    this.phase = 'established';
    this.clearHandshakeTimer();
    this.silenceTimer = setTimeout(() => this.onSilence(), config.pingTimeoutMs);
    this.pingTimer = setInterval(() => this.sendPing(), config.pingIntervalMs);
    this.info = {
      id: this.id,
      dialer: config.dialer,
      remote: this.remote,
      peerHello: { ...this.peerHello!, ...this.peerIdentity! },
      protocolVersion: this.protocolVersion!,
      features: [...this.features],
      peerState: this.peerState!,
    };
    this.emit('established', this.info);
  }

  private onEstablishedMessage(message: ControlMessage): void {
    switch (message.type) {
      case 'nodeState':
        this.checkDataSizes(this.config.getState(), message.body);
        this.peerState = message.body;
        if (this.info) this.info.peerState = message.body;
        this.emit('peerState', message.body);
        return;
      case 'ping':
        this.send({ type: 'pong', body: { seq: message.body.seq } });
        return;
      case 'pong':
        if (message.body.seq === this.pingSeq) this.lastRttMs = Date.now() - this.lastPingSentAtMs;
        return;
      case 'request':
        this.onRequest(message.body);
        return;
      case 'response':
        this.pending.onResponse(message.body);
        return;
      case 'notice':
        this.emit('notice', message.body);
        return;
      case 'dataLinkAccepted':
        if (!this.config.dialer || !this.awaitingDataLinkAccepted) {
          throw new ProtocolError(
            `expected DataLinkAccepted only on the dialer after it opened the data link, found one from ` +
              `${this.config.peerName} at ${this.remote}`,
          );
        }
        this.awaitingDataLinkAccepted = false;
        this.emit('dataLinkAccepted');
        return;
      case 'goodbye':
        this.onGoodbye(message.body.reason);
        return;
      case 'hello':
      case 'auth':
      case 'identity':
      case 'sessionStart':
        throw this.outOfOrder('a message of an established session', message.type);
    }
  }

  private onGoodbye(reason: string): void {
    const error = new PeerError(`${this.config.peerName} closed the session: ${reason || 'no reason given'}`);
    this.finish({ reason: error.message, error, byPeer: true }, false);
  }

  private checkDataSizes(local: NodeState, peer: NodeState): void {
    checkDataSizes(this.config, local, peer);
  }

  private outOfOrder(expected: string, found: string): ProtocolError {
    return new ProtocolError(`expected ${expected} from ${this.who()} at ${this.remote}, found ${found}; dropping the connection`);
  }

  // ---------------------------------------------------------- requests

  /** Asks the peer; see PendingRequests.ask. Rejects with StateError unless the session is established. */
  request<K extends ControlRequestKind>(
    kind: K,
    body: ControlRequests[K]['request'],
    timeoutMs: number,
    options: RequestOptions = {},
  ): Promise<ControlRequests[K]['response']> {
    if (this.phase !== 'established') {
      return Promise.reject(new StateError(`cannot send request '${kind}' to ${this.config.peerName}: the session is not established`));
    }
    return this.pending.ask(kind, body, timeoutMs, (request) => this.send({ type: 'request', body: request }), options);
  }

  private onRequest(request: Request): void {
    const { id, kind } = request;
    const handler = this.config.findHandler(kind);
    if (!handler) {
      this.sendError(id, new ProtocolError(
        `${this.config.localName} has no handler for request '${kind}'; the nodes may run different nraid versions`,
      ));
      return;
    }
    let result: Promise<unknown>;
    try {
      result = Promise.resolve(handler(request.body as never));
    } catch (error) {
      result = Promise.reject(error);
    }
    result.then(
      (answer) => this.sendAnswer(id, kind, answer),
      (error: unknown) => this.sendError(id, error),
    );
  }

  private sendAnswer(id: number, kind: ControlRequestKind, answer: unknown): void {
    if (this.phase !== 'established') return;
    try {
      if (kind === 'bitmap') {
        const reply = answer as BitmapReply | BitmapSource;
        checkBitmapReply(reply);
        this.sendQueue.enqueue(this.bitmapFrames(id, reply));
        return;
      }
      this.send({ type: 'response', body: { id, ok: true, answer: { kind, body: answer } as Answer } });
    } catch (error) {
      // An answer that does not encode (wrong shape, too large): tell the asker instead of leaving it to time out.
      this.sendError(id, error);
    }
  }

  private *bitmapFrames(id: number, reply: BitmapReply | BitmapSource): Generator<Buffer, void, void> {
    for (const chunk of bitmapChunks(reply)) {
      yield encodeFrame({ type: 'response', body: { id, ok: true, answer: { kind: 'bitmap', body: chunk } } });
    }
  }

  private sendError(id: number, error: unknown): void {
    if (this.phase !== 'established') return;
    const reply = errorReply(error);
    try {
      this.send({
        type: 'response',
        body: { id, ok: false, errorCode: reply.code, errorMessage: reply.message.slice(0, controlErrorMessageCharsMax) },
      });
    } catch (sendError) {
      this.fail(asNraidError(sendError));
    }
  }

  notice(notice: ControlNotice): boolean {
    if (this.phase !== 'established') return false;
    this.send({ type: 'notice', body: notice });
    return true;
  }

  // -------------------------------------------------------- data token

  /** Dialer: the token for the data link, once per session; null once taken. */
  takeDataToken(): Buffer | null {
    if (!this.config.dialer || this.phase !== 'established' || this.dataToken === null || this.dataTokenUsed) return null;
    this.dataTokenUsed = true;
    this.awaitingDataLinkAccepted = true;
    return this.dataToken;
  }

  /** Acceptor: checks a data link's token; 'accepted' once, for the right token only. */
  consumeDataToken(token: Buffer): DataTokenCheck {
    if (this.config.dialer || !this.authenticated || this.dataToken === null) return 'no-session-token';
    if (!tokensEqual(this.dataToken, token)) return 'mismatch';
    if (this.dataTokenUsed) return 'used';
    this.dataTokenUsed = true;
    if (this.dataLinkTimer) clearTimeout(this.dataLinkTimer);
    this.dataLinkTimer = null;
    return 'accepted';
  }

  /** Acceptor: tells the dialer its data link is accepted. */
  sendDataLinkAccepted(): void {
    this.send({ type: 'dataLinkAccepted', body: {} });
  }

  // ---------------------------------------------------------- outbound

  /** Sends the local state, when the session has reached the point where states flow. */
  sendState(): void {
    const statesFlow = this.phase === 'established' || (this.phase === 'authenticated' && this.dataToken !== null);
    if (!statesFlow) return;
    const state = this.config.getState();
    if (this.peerState) {
      try {
        this.checkDataSizes(state, this.peerState);
      } catch (error) {
        this.fail(asNraidError(error));
        return;
      }
    }
    this.send({ type: 'nodeState', body: state });
  }

  private sendOwnState(): void {
    this.send({ type: 'nodeState', body: this.config.getState() });
  }

  private sendPing(): void {
    this.pingSeq = (this.pingSeq + 1) >>> 0;
    this.lastPingSentAtMs = Date.now();
    this.send({ type: 'ping', body: { seq: this.pingSeq } });
  }

  private send(message: ControlMessage): void {
    if (this.phase === 'closed' || this.socket.destroyed) return;
    this.sendQueue.enqueue(encodeFrame(message));
  }

  // ------------------------------------------------------- timers, end

  private onHandshakeTimeout(): void {
    const expected = { awaitingHello: 'Hello', awaitingAuth: 'Auth', awaitingIdentity: 'Identity' }[this.phase as string] ?? 'session start and state';
    this.fail(
      new PeerError(
        `expected ${expected} from ${this.who()} at ${this.remote} within ` +
          `${this.config.handshakeTimeoutMs} ms (handshake timeout), found none; dropping the connection`,
      ),
    );
  }

  private onPreAuthTimeout(): void {
    this.preAuthTimer = null;
    if (this.peerProven) return;
    const expected = this.phase === 'awaitingHello' ? 'Hello' : 'Auth';
    const timeoutMs = Math.min(this.config.preAuthTimeoutMs, this.config.handshakeTimeoutMs);
    this.fail(
      new PeerError(
        `expected ${expected} from ${this.who()} at ${this.remote} within ${timeoutMs} ms (handshake timeout ` +
          'before authentication), found none; dropping the connection',
      ),
    );
  }

  private onSilence(): void {
    this.fail(
      new PeerError(
        `ping timeout: nothing from ${this.config.peerName} at ${this.remote} for ${this.config.pingTimeoutMs} ms; ` +
          'the peer or the network is down',
      ),
      'ping timeout',
    );
  }

  private onDataLinkTimeout(): void {
    this.fail(
      new PeerError(
        `expected the data link from ${this.config.peerName} within ${this.config.dataLinkTimeoutMs} ms of the ` +
          'session start, found none; dropping the session',
      ),
    );
  }

  private onPeerClosed(how: string): void {
    if (this.phase === 'closed') return;
    const stage = this.phase === 'established' ? '' : ' during the handshake';
    // The dialer sent its Auth and the acceptor went away without one: it refused our secret.
    const afterOurAuth = this.config.dialer && this.phase === 'awaitingAuth' ? ' after our Auth, without proving the secret' : '';
    const hint = this.peerProven ? '' : "; if this repeats, check `secret` and the resource name in both nodes' config";
    this.fail(new PeerError(`${this.who()} at ${this.remote}: ${how}${stage}${afterOurAuth}${hint}`));
  }

  /** Closes on a failure; an authenticated peer gets a Goodbye with the reason. */
  private fail(error: NraidError, reason: string = error.message): void {
    this.finish({ reason, error }, true);
  }

  /** Closes this session on this node's decision (operator, replaced, shutdown); tells the peer why. */
  close(reason: string, error?: NraidError): void {
    this.finish(error ? { reason, error } : { reason }, true);
  }

  /**
   * Ends the session as a network failure would: no Goodbye, nothing more
   * written, the connection reset at once (the peer sees ECONNRESET).
   */
  cut(reason: string): void {
    this.finish({ reason, error: new PeerError(`connection cut: ${reason}`) }, false, true);
  }

  private finish(end: { reason: string; error?: NraidError; byPeer?: true }, goodbye: boolean, reset = false): void {
    if (this.phase === 'closed') return;
    // A proven peer gets the reason; a stranger gets nothing.
    const authenticated = this.peerProven;
    const established = this.phase === 'established';
    this.sendQueue.clear();
    if (goodbye && authenticated && !this.socket.destroyed && this.socket.writable) {
      try {
        this.socket.write(encodeFrame({ type: 'goodbye', body: { reason: end.reason.slice(0, controlErrorMessageCharsMax) } }));
      } catch {
        // the reason is only a courtesy to the peer's log
      }
    }
    this.phase = 'closed';
    this.clearHandshakeTimer();
    for (const timer of [this.silenceTimer, this.dataLinkTimer, this.preAuthTimer]) if (timer) clearTimeout(timer);
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.silenceTimer = this.dataLinkTimer = this.pingTimer = this.preAuthTimer = null;
    this.pending.rejectAll(end.reason);
    if (reset) resetSocket(this.socket);
    else closeSocket(this.socket);
    this.emit('closed', { ...end, authenticated, established });
  }

  private clearHandshakeTimer(): void {
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
  }
}

function asNraidError(error: unknown): NraidError {
  if (error instanceof NraidError) return error;
  return new ProtocolError(`control message handling failed: ${error instanceof Error ? error.message : String(error)}`);
}
