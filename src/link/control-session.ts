/**
 * One control connection, from just after its preamble to its close:
 * handshake (Hello, Auth), session start (data token, states), then pings,
 * state updates, requests, responses and notices.
 *
 * Order of messages (control.proto says the same):
 *   both      Hello                      at once
 *   both      Auth                       once the peer's Hello checks out
 *   dialer    SessionStart, NodeState    once the peer's Auth checks out
 *   acceptor  NodeState                  once SessionStart is in
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
 * The session never retries or reconnects; ControlLink decides that from the
 * SessionEnd it emits ('closed'), exactly once.
 */
import { EventEmitter } from 'events';
import * as net from 'net';
import { NraidError, PeerError, ProtocolError, RemoteError, StateError, VersionError, errorReply } from '../errors';
import { controlErrorMessageCharsMax, controlRequestsPendingMax, controlSendQueueBytesMax } from '../limits';
import { BitmapAssembler, bitmapChunks, checkBitmapReply } from '../protocol/bitmap-chunks';
import {
  Answer,
  BitmapReply,
  ControlFrameReader,
  ControlMessage,
  ControlNotice,
  ControlRequestKind,
  ControlRequests,
  Hello,
  NodeState,
  ProtocolVersion,
  Request,
  Response,
  encodeFrame,
  formatVersion,
  sessionVersion,
  versionsCompatible,
} from '../protocol/control';
import { authHmac, newDataToken, newNonce, tokensEqual, verifyAuthHmac } from './auth';
import { closeSocket, remoteOf } from './socket-io';

export type LinkLogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LinkLog = (level: LinkLogLevel, msg: string, fields: Record<string, unknown>) => void;

/** Answers one kind of request from the peer; what it throws goes back as an error Response. */
export type RequestHandler<K extends ControlRequestKind = ControlRequestKind> = (
  body: ControlRequests[K]['request'],
) => ControlRequests[K]['response'] | Promise<ControlRequests[K]['response']>;

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
  peerHello: Hello;
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
  authenticated: boolean;
  established: boolean;
}

export type DataTokenCheck = 'accepted' | 'no-session-token' | 'mismatch' | 'used';

type Phase = 'awaitingHello' | 'awaitingAuth' | 'authenticated' | 'established' | 'closed';

interface PendingRequest {
  kind: ControlRequestKind;
  resolve: (answer: unknown) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
  /** For a bitmap request: the chunks so far. */
  assembler: BitmapAssembler | null;
}

/** What waits to be written: a whole frame, or the frames of a streamed answer, made one at a time. */
type Outgoing = Buffer | Iterator<Buffer, void>;

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
  private nextRequestId = 1;
  private readonly pending = new Map<number, PendingRequest>();
  /** Frames not yet handed to the socket, in order; non-empty only while a streamed answer waits for a drain. */
  private readonly outbox: Outgoing[] = [];
  private outboxBytes = 0;
  private awaitingDrain = false;

  constructor(private readonly socket: net.Socket, private readonly config: SessionConfig) {
    super();
    this.remote = remoteOf(socket);
  }

  /**
   * Sends our Hello and starts reading, beginning with `initial` (bytes read
   * with the preamble). Call once, after the listeners are attached: a
   * failure in `initial` emits 'closed' from here.
   */
  start(initial: Buffer): void {
    const { socket, config } = this;
    if (this.handshakeTimer || this.phase !== 'awaitingHello') throw new Error('ControlSession.start() called twice');
    this.handshakeTimer = setTimeout(() => this.onHandshakeTimeout(), config.handshakeTimeoutMs);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => this.onPeerClosed('closed the connection'));
    socket.on('close', () => this.onPeerClosed('connection closed'));
    socket.on('error', (error: Error) => this.onPeerClosed(`connection failed (${error.message})`));
    this.send({
      type: 'hello',
      body: {
        version: config.protocolVersion,
        features: [...config.features],
        resource: config.resource,
        nodeName: config.localName,
        nonce: this.ownNonce,
      },
    });
    if (initial.length > 0) this.onData(initial);
    socket.resume();
  }

  get authenticated(): boolean {
    return this.phase === 'authenticated' || this.phase === 'established';
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
    let messages: ControlMessage[];
    try {
      messages = this.reader.push(chunk);
    } catch (error) {
      this.fail(asNraidError(error));
      return;
    }
    for (const message of messages) {
      if ((this.phase as Phase) === 'closed') return;
      try {
        this.onMessage(message);
      } catch (error) {
        this.fail(asNraidError(error));
      }
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

  private onHello(hello: Hello): void {
    const { config } = this;
    const local = config.protocolVersion;
    if (!versionsCompatible(local, hello.version)) {
      const peerNewer = hello.version.major > local.major || (hello.version.major === local.major && hello.version.minor > local.minor);
      const lagging = peerNewer ? `this node (${config.localName})` : hello.nodeName;
      const target = peerNewer ? hello.version : local;
      throw new VersionError(
        `control protocol versions do not match: this node (${config.localName}) speaks ${formatVersion(local)}, ` +
          `${hello.nodeName} at ${this.remote} speaks ${formatVersion(hello.version)}; nodes need the same major ` +
          `version and minors at most one apart: upgrade ${lagging} to a ${target.major}.x release ` +
          `(${formatVersion(target)} or within one minor of it), then connect again`,
      );
    }
    if (hello.resource !== config.resource) {
      throw new PeerError(
        `expected resource ${config.resource}, found ${hello.nodeName} at ${this.remote} announcing resource ` +
          `${hello.resource}; check the address and the resource name in both nodes' config`,
      );
    }
    if (hello.nodeName !== config.peerName) {
      throw new PeerError(
        `expected the peer node ${config.peerName}, found a node calling itself ${hello.nodeName} at ` +
          `${this.remote}; check the [nodes] sections of both nodes' config`,
      );
    }
    if (tokensEqual(this.ownNonce, hello.nonce)) {
      throw new PeerError(
        `expected a fresh nonce from ${hello.nodeName} at ${this.remote}, found our own: a reflection attempt ` +
          'or a connection looped back to this node; check the peer address',
      );
    }
    this.peerHello = hello;
    this.protocolVersion = sessionVersion(local, hello.version);
    const offered = new Set(hello.features);
    this.features = [...new Set(config.features)].filter((feature) => offered.has(feature)).sort();
    this.phase = 'awaitingAuth';
    this.send({ type: 'auth', body: { hmac: authHmac(config.secret, hello.nonce, this.ownNonce, config.localName) } });
  }

  private onAuth(hmac: Buffer): void {
    const { config } = this;
    const hello = this.peerHello!;
    if (!verifyAuthHmac(config.secret, this.ownNonce, hello.nonce, hello.nodeName, hmac)) {
      throw new PeerError(
        `authentication failed: ${hello.nodeName} at ${this.remote} answered with an HMAC that does not match ` +
          "the shared secret; check that `secret` is the same in both nodes' config",
      );
    }
    this.phase = 'authenticated';
    this.emit('authenticated');
    if ((this.phase as Phase) !== 'authenticated') return; // the link may have closed us
    if (config.dialer) {
      this.dataToken = newDataToken();
      this.send({ type: 'sessionStart', body: { dataToken: this.dataToken } });
      this.sendOwnState();
    }
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
      peerHello: this.peerHello!,
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
        this.onResponse(message.body);
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
      case 'sessionStart':
        throw this.outOfOrder('a message of an established session', message.type);
    }
  }

  private onGoodbye(reason: string): void {
    const error = new PeerError(`${this.config.peerName} closed the session: ${reason || 'no reason given'}`);
    this.finish({ reason: error.message, error }, false);
  }

  private checkDataSizes(local: NodeState, peer: NodeState): void {
    if (local.dataSizeBytes === peer.dataSizeBytes) return;
    throw new PeerError(
      `peer ${this.config.peerName} has ${peer.dataSizeBytes} bytes of data, ${this.config.localName} has ` +
        `${local.dataSizeBytes}; both nodes need the same data size: check the disks and run create-md`,
    );
  }

  private outOfOrder(expected: string, found: string): ProtocolError {
    const who = this.peerHello ? `${this.peerHello.nodeName} at ${this.remote}` : this.remote;
    return new ProtocolError(`expected ${expected} from ${who}, found ${found}; dropping the connection`);
  }

  // ---------------------------------------------------------- requests

  request<K extends ControlRequestKind>(kind: K, body: ControlRequests[K]['request'], timeoutMs: number): Promise<ControlRequests[K]['response']> {
    if (this.phase !== 'established') {
      return Promise.reject(new StateError(`cannot send request '${kind}' to ${this.config.peerName}: the session is not established`));
    }
    if (this.pending.size >= controlRequestsPendingMax) {
      return Promise.reject(
        new PeerError(
          `cannot send request '${kind}' to ${this.config.peerName}: ${controlRequestsPendingMax} requests already wait ` +
            'for an answer; the peer is not answering',
        ),
      );
    }
    let id = this.nextRequestId;
    while (this.pending.has(id)) id = (id % 0xffffffff) + 1;
    this.nextRequestId = (id % 0xffffffff) + 1;
    return new Promise<ControlRequests[K]['response']>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(
          new PeerError(
            `expected an answer from ${this.config.peerName} to request '${kind}' within ${timeoutMs} ms, found ` +
              'none; the peer is slow or its handler hangs',
          ),
        );
      }, timeoutMs);
      const assembler = kind === 'bitmap' ? new BitmapAssembler() : null;
      this.pending.set(id, { kind, resolve: resolve as (answer: unknown) => void, reject, timer, assembler });
      try {
        this.send({ type: 'request', body: { id, kind, body } as Request });
      } catch (error) {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(error);
      }
    });
  }

  private onResponse(response: Response): void {
    const pending = this.pending.get(response.id);
    if (!pending) {
      // Once per answer: the rest of an abandoned bitmap's chunks pass in silence.
      const laterChunk = response.ok && response.answer.kind === 'bitmap' && response.answer.body.offsetBytes > 0;
      if (!laterChunk) this.config.log('debug', 'response to a request that is no longer waiting (timed out or failed)', { id: response.id });
      return;
    }
    const settle = (): void => {
      this.pending.delete(response.id);
      clearTimeout(pending.timer);
    };
    if (!response.ok) {
      settle();
      pending.reject(new RemoteError({ code: response.errorCode || 'NRAID_ERR', message: response.errorMessage }));
      return;
    }
    const { answer } = response;
    if (answer.kind !== pending.kind) {
      settle();
      pending.reject(
        new ProtocolError(
          `expected ${this.config.peerName}'s answer to request '${pending.kind}' (id ${response.id}), found an answer ` +
            `of kind '${answer.kind}'`,
        ),
      );
      return;
    }
    if (answer.kind !== 'bitmap') {
      settle();
      pending.resolve(answer.body);
      return;
    }
    let whole: BitmapReply | null;
    try {
      whole = pending.assembler!.push(answer.body);
    } catch (error) {
      settle();
      pending.reject(error as Error);
      return;
    }
    if (whole === null) return;
    settle();
    pending.resolve(whole);
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
        const reply = answer as BitmapReply;
        checkBitmapReply(reply);
        this.enqueue(this.bitmapFrames(id, reply));
        return;
      }
      this.send({ type: 'response', body: { id, ok: true, answer: { kind, body: answer } as Answer } });
    } catch (error) {
      // An answer that does not encode (wrong shape, too large): tell the asker instead of leaving it to time out.
      this.sendError(id, error);
    }
  }

  private *bitmapFrames(id: number, reply: BitmapReply): Generator<Buffer, void, void> {
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
    this.enqueue(encodeFrame(message));
  }

  /** Writes in order: a frame at once unless a streamed answer waits for a drain; a stream one frame per drain. */
  private enqueue(item: Outgoing): void {
    this.outbox.push(item);
    if (Buffer.isBuffer(item)) this.outboxBytes += item.length;
    this.pump();
  }

  private pump(): void {
    while (!this.awaitingDrain && this.outbox.length > 0) {
      if (this.phase === 'closed' || this.socket.destroyed) return;
      const head = this.outbox[0]!;
      let frame: Buffer;
      if (Buffer.isBuffer(head)) {
        this.outbox.shift();
        this.outboxBytes -= head.length;
        frame = head;
      } else {
        let next: IteratorResult<Buffer, void>;
        try {
          next = head.next();
        } catch (error) {
          // A streamed answer that cannot go on: the asker would wait for chunks that never come.
          this.fail(asNraidError(error));
          return;
        }
        if (next.done) {
          this.outbox.shift();
          continue;
        }
        frame = next.value;
      }
      const flowing = this.socket.write(frame);
      if (!flowing && !Buffer.isBuffer(head)) {
        this.awaitingDrain = true;
        this.socket.once('drain', () => {
          this.awaitingDrain = false;
          this.pump();
        });
      }
    }
    const queuedBytes = this.socket.writableLength + this.outboxBytes;
    if (queuedBytes > controlSendQueueBytesMax) {
      this.fail(
        new PeerError(
          `${this.config.peerName} at ${this.remote} is not reading: ${queuedBytes} bytes wait to be ` +
            `sent, more than ${controlSendQueueBytesMax}; dropping the session`,
        ),
      );
    }
  }

  // ------------------------------------------------------- timers, end

  private onHandshakeTimeout(): void {
    const expected = this.phase === 'awaitingHello' ? 'Hello' : this.phase === 'awaitingAuth' ? 'Auth' : 'session start and state';
    this.fail(
      new PeerError(
        `expected ${expected} from ${this.peerHello?.nodeName ?? 'the peer'} at ${this.remote} within ` +
          `${this.config.handshakeTimeoutMs} ms (handshake timeout), found none; dropping the connection`,
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
    const who = this.peerHello?.nodeName ?? (this.config.dialer ? this.config.peerName : 'the client');
    const stage = this.phase === 'established' ? '' : ' during the handshake';
    const hint = this.authenticated || this.phase === 'established' ? '' : "; if this repeats, check `secret` and the resource name in both nodes' config";
    this.fail(new PeerError(`${who} at ${this.remote}: ${how}${stage}${hint}`));
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

  private finish(end: { reason: string; error?: NraidError }, goodbye: boolean, reset = false): void {
    if (this.phase === 'closed') return;
    const authenticated = this.authenticated;
    const established = this.phase === 'established';
    this.outbox.length = 0;
    this.outboxBytes = 0;
    if (goodbye && authenticated && !this.socket.destroyed && this.socket.writable) {
      try {
        this.socket.write(encodeFrame({ type: 'goodbye', body: { reason: end.reason.slice(0, controlErrorMessageCharsMax) } }));
      } catch {
        // the reason is only a courtesy to the peer's log
      }
    }
    this.phase = 'closed';
    this.clearHandshakeTimer();
    for (const timer of [this.silenceTimer, this.dataLinkTimer]) if (timer) clearTimeout(timer);
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.silenceTimer = this.dataLinkTimer = this.pingTimer = null;
    for (const [id, pending] of this.pending) {
      clearTimeout(pending.timer);
      pending.reject(
        new PeerError(`the session with ${this.config.peerName} ended before it answered request '${pending.kind}' (id ${id}): ${end.reason}`),
      );
    }
    this.pending.clear();
    if (reset) this.socket.resetAndDestroy();
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
