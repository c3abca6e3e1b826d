/**
 * ControlLink: the control connection between the two nodes' daemons of one
 * resource (DESIGN.md §7), and the one-time binding of the data link to it.
 *
 * Who connects
 *   Each node listens on its own address (`start()`). The node whose name
 *   sorts first is the dialer: it dials the peer and later opens the data
 *   link; the other only accepts. While this node wants a connection
 *   (`connect()`), the dialer redials with exponential backoff from
 *   `connectRetryMs` up to `connectRetryMaxMs` (reset once a session reaches
 *   Connected), and the acceptor accepts. After `disconnect()` the node is
 *   StandAlone: it neither dials nor accepts.
 *
 * Wire
 *   Every connection opens with 8 bytes naming its kind: "NRAIDCTL" (control)
 *   or "NRAIDDAT" (data link, followed by the 32-byte session token). Control
 *   messages are u32 LE length + protobuf Envelope (src/protocol/control.proto),
 *   at most 16 MiB each.
 *
 * Handshake (src/link/control-session.ts, src/link/auth.ts)
 *   Hello both ways (version major.minor, features, resource, node name,
 *   32-byte nonce). Versions first: the same major and minors at most one
 *   apart connect (a rolling upgrade) and the session speaks the lower minor;
 *   anything else is refused on both nodes with a VersionError naming both
 *   versions ('refused'). Then Auth both ways: HMAC-SHA256(secret,
 *   "nraid-auth-v1" | peer's nonce | own nonce | own name), compared in
 *   constant time. A wrong resource, node name, version or HMAC, a timeout
 *   (`handshakeTimeoutMs`), or any other message first drops the
 *   connection, logs the reason at warn and emits 'refused'. Nothing else is processed before the peer's Auth checks out.
 *   Features of the session = intersection of both Hellos.
 *   The dialer then sends SessionStart with a fresh data token; both send
 *   their NodeState. Different data sizes refuse the session (PeerError
 *   naming both sizes) on both nodes; redialing keeps its backoff.
 *
 * Data link
 *   Dialer: `openDataSocket()` connects, sends "NRAIDDAT" + token and
 *   resolves once the acceptor confirms (DataLinkAccepted on the control
 *   connection). Acceptor: 'dataSocket' fires for the connection carrying the
 *   current session's unused token; any other data connection is refused.
 *   Either socket is positioned right after preamble+token, paused, with its
 *   fd not being read, ready to be handed to native code; it belongs to the
 *   caller from then on (the link never closes it, and the caller must add an
 *   'error' listener). One data link per session: the token works once, a
 *   second `openDataSocket()` rejects, and a session whose data link does not
 *   come within `dataLinkTimeoutMs` of SessionStart is dropped.
 *
 * Liveness
 *   Once established both sides ping every `pingIntervalMs`; if nothing at
 *   all arrives for `pingTimeoutMs` the session is dead: 'disconnected' with
 *   reason 'ping timeout', sockets destroyed, redial per policy. A newly
 *   authenticated connection from the peer replaces an older session (the
 *   peer noticed the loss first).
 *
 * Requests (typed: ControlRequests, ControlNotices in src/protocol/control.ts)
 *   `request(kind, body, timeoutMs)` resolves with the peer handler's
 *   answer; rejects with RemoteError (the handler threw: same code and
 *   message), PeerError (timeout, session lost), StateError (not
 *   connected) or ProtocolError (an answer that breaks the protocol, such as
 *   a bad bitmap chunk sequence). `onRequest(kind, handler)` registers the
 *   answerer of a kind. The bitmap answer travels in chunks of at most
 *   bitmapChunkBytesMax and resolves once whole and checked.
 *   `notice(kind, body)` is one-way; the peer emits 'notice'.
 *
 * Faults
 *   `cut(reason)` ends the session as a network failure would: no Goodbye,
 *   the control connection reset, 'disconnected' and redial as for any
 *   loss. The data link belongs to the data plane by then; its owner tears it
 *   down on 'disconnected', as after any session loss.
 *
 * Files
 *   Here: wanting, dialing with backoff, accepting, and which session is current.
 *   link-options.ts        options, events, the check of the options
 *   incoming-connection.ts what an accepted connection is, from its preamble
 *   data-link.ts           the data link: opened by the dialer, accepted by the acceptor
 *   control-session.ts     one control connection (handshake, pings, requests)
 *
 * Events
 *   'connected' (SessionInfo: peer Hello, session protocol version, features, peer state)
 *   'peerState' (NodeState)                 every later state of the peer
 *   'disconnected' ({reason, error?})       an established session ended
 *   'refused' ({reason, error, remote})     a connection failed before it was established
 *   'dataSocket' (socket, SessionInfo)      acceptor: the data link of the session
 *   'notice' (ControlNotice)
 *   'connectionState' (StandAlone | Connecting | Connected)
 */
import * as dns from 'dns';
import { EventEmitter } from 'events';
import * as net from 'net';
import { ConfigError, InternalError, NraidError, PeerError, ProtocolError, StateError, TimeoutError, VersionError } from '../errors';
import { controlHandshakesPendingMax, controlHandshakesPerSourceMax, controlRequestTimeoutMsDefault } from '../limits';
import {
  CONTROL_PREAMBLE,
  ControlNotice,
  ControlNoticeKind,
  ControlNotices,
  ControlRequestKind,
  ControlRequests,
  HandlerResponses,
  ProtocolVersion,
  RequestOptions,
} from '../protocol/control';
import { Backoff } from './backoff';
import { ControlSession, RequestHandler, SessionEnd, SessionInfo } from './control-session';
import { acceptDataLink, openDataLink } from './data-link';
import { HalfOpenPool } from './half-open';
import { sortIncoming } from './incoming-connection';
import { RefusalKind, RefusalLog } from './refusal-log';
import { ConnectionState, ControlLinkEvents, ControlLinkOptions, LinkDisconnect, LinkTimings, checkLinkOptions } from './link-options';
import { closeSocket, remoteOf } from './socket-io';
export type { RefusalKind } from './refusal-log';
import { secureClient, secureServer } from './tls';

export type { LinkLog, LinkLogLevel, RequestHandler, SessionInfo } from './session-types';
export type { ConnectionState, ControlLinkEvents, ControlLinkOptions, LinkDisconnect, LinkRefusal, NodeAddress } from './link-options';

export class ControlLink extends EventEmitter<ControlLinkEvents> {
  /** Whether this node dials (its name sorts first) and opens the data link. */
  readonly isDialer: boolean;
  private readonly timings: LinkTimings;
  private readonly secret: Buffer;
  private readonly features: readonly string[];
  private readonly protocolVersion: ProtocolVersion;
  private readonly backoff: Backoff;
  private readonly handlers = new Map<ControlRequestKind, RequestHandler>();
  private server: net.Server | null = null;
  private wanting = false;
  private stopped = false;
  /** The authenticated session, established or about to be. */
  private session: ControlSession | null = null;
  /** Sessions not yet authenticated: the dialer's attempt, or connections accepted. */
  private readonly handshakes = new Set<ControlSession>();
  /** Sockets still reading their preamble or token, or dialing. */
  private readonly rawSockets = new Set<net.Socket>();
  private dialing = false;
  private dialTimer: NodeJS.Timeout | null = null;
  private lastConnectionState: ConnectionState = 'StandAlone';
  /** Incoming connections that have not proven the secret yet. */
  private readonly halfOpen: HalfOpenPool;
  /** The configured peer's addresses (its host resolved); anything else is closed before a byte is read. */
  private peerAddresses: Set<string> | null = null;
  private readonly refusals: RefusalLog;

  constructor(private readonly options: ControlLinkOptions) {
    super();
    const settings = checkLinkOptions(options);
    this.timings = settings.timings;
    this.secret = settings.secret;
    this.features = settings.features;
    this.protocolVersion = settings.protocolVersion;
    this.isDialer = settings.isDialer;
    this.backoff = new Backoff(this.timings.connectRetryMs, this.timings.connectRetryMaxMs);
    this.refusals = new RefusalLog((level, msg, fields) => this.log(level, msg, fields));
    // A connection that made no progress for a quarter of its time is the first to make room.
    this.halfOpen = new HalfOpenPool(controlHandshakesPendingMax, controlHandshakesPerSourceMax, this.timings.preAuthTimeoutMs / 4);
  }

  /** Connections refused so far, per kind (for metrics). */
  refusedConnections(): Record<RefusalKind, number> {
    return this.refusals.counts();
  }

  // ------------------------------------------------------------- public

  /** Listens on the local address; resolves with the address bound (port 0 picks one). */
  start(): Promise<net.AddressInfo> {
    if (this.server) return Promise.reject(new StateError('the control link already listens; call start() once'));
    if (this.stopped) return Promise.reject(new StateError('the control link is stopped; make a new one'));
    const { host, port } = this.options.local;
    const server = net.createServer({ pauseOnConnect: true }, (socket) => this.onIncoming(socket));
    this.server = server;
    return this.resolvePeer().then(() => this.listen(server, host, port));
  }

  /** The peer's host as addresses; a host that does not resolve now is tried again on the next connection. */
  private resolvePeer(): Promise<void> {
    const { peer } = this.options;
    if (net.isIP(peer.host)) {
      this.peerAddresses = new Set([normalAddress(peer.host)]);
      return Promise.resolve();
    }
    return dns.promises.lookup(peer.host, { all: true }).then(
      (found) => {
        this.peerAddresses = new Set(found.map((entry) => normalAddress(entry.address)));
      },
      (error: NodeJS.ErrnoException) => {
        this.log('warn', `cannot resolve ${peer.name}'s host ${peer.host} (${error.code ?? error.message}); ` +
          'connections are refused until it resolves', {});
      },
    );
  }

  private listen(server: net.Server, host: string, port: number): Promise<net.AddressInfo> {
    return new Promise((resolve, reject) => {
      const onError = (error: NodeJS.ErrnoException): void => {
        this.server = null;
        reject(
          new ConfigError(
            `nodes.${this.options.local.name}.address: cannot listen on ${host}:${port} (${error.code ?? error.message}); ` +
              'check that the address is local and the port free',
          ),
        );
      };
      server.once('error', onError);
      server.listen(port, host, () => {
        server.off('error', onError);
        server.on('error', (error) => this.log('error', `control listener failed: ${error.message}`, {}));
        const address = server.address() as net.AddressInfo;
        this.log('info', `listening for ${this.options.peer.name} on ${address.address}:${address.port}`, {
          dialer: this.isDialer,
        });
        resolve(address);
      });
    });
  }

  /** The address listened on, once start() has resolved. */
  address(): net.AddressInfo | null {
    const address = this.server?.address();
    return address && typeof address === 'object' ? address : null;
  }

  get connectionState(): ConnectionState {
    if (!this.wanting) return 'StandAlone';
    return this.session?.established ? 'Connected' : 'Connecting';
  }

  /** The established session, or null. */
  get sessionInfo(): SessionInfo | null {
    return this.session?.established ? this.session.sessionInfo : null;
  }

  /** Round trip of the last answered ping of the current session. */
  get lastRttMs(): number | null {
    return this.session?.established ? this.session.lastRttMs : null;
  }

  /** Wants a connection: the dialer dials now, the acceptor accepts. */
  connect(): void {
    if (this.stopped) throw new StateError('the control link is stopped; make a new one');
    if (this.wanting) return;
    this.wanting = true;
    this.backoff.reset();
    this.log('info', this.isDialer ? `connecting to ${this.options.peer.name}` : `waiting for ${this.options.peer.name} to connect`, {});
    this.updateConnectionState();
    if (this.isDialer) this.scheduleDial(0);
  }

  /** Drops the session and stops wanting one: no dialing, incoming connections refused. */
  disconnect(reason = 'disconnect requested by the operator'): void {
    this.wanting = false;
    this.dropEverything(reason);
    this.updateConnectionState();
  }

  /**
   * Disconnects and stops listening. Resolves once the listening socket is
   * closed; connections still lingering close on their own (within
   * socketLingerMs), and data sockets handed out stay the caller's.
   */
  stop(): Promise<void> {
    this.stopped = true;
    this.disconnect('the daemon is stopping');
    this.refusals.flush();
    const server = this.server;
    this.server = null;
    if (!server) return Promise.resolve();
    return new Promise((resolve) => {
      server.close();
      setImmediate(resolve);
    });
  }

  /** Sends the current local state (getState()) to the peer, if a session is up. */
  sendState(): void {
    this.session?.sendState();
  }

  /** Asks the peer; resolves with its handler's answer (see Requests above). */
  request<K extends ControlRequestKind>(
    kind: K,
    body: ControlRequests[K]['request'],
    timeoutMs: number = controlRequestTimeoutMsDefault,
    options: RequestOptions = {},
  ): Promise<ControlRequests[K]['response']> {
    const session = this.session;
    if (!session?.established) {
      return Promise.reject(
        new StateError(
          `cannot send request '${kind}' to ${this.options.peer.name}: not connected (connection is ` +
            `${this.connectionState}); wait for the connection or run nraid connect`,
        ),
      );
    }
    return session.request(kind, body, timeoutMs, options);
  }

  /** Registers the handler of one request kind; returns a function that removes it. */
  onRequest<K extends ControlRequestKind>(
    kind: K,
    handler: (body: ControlRequests[K]['request']) => HandlerResponses[K] | Promise<HandlerResponses[K]>,
  ): () => void {
    if (this.handlers.has(kind)) throw new InternalError(`a handler for request kind '${kind}' is already registered`);
    this.handlers.set(kind, handler as RequestHandler);
    return () => {
      if (this.handlers.get(kind) === handler) this.handlers.delete(kind);
    };
  }

  /** Sends a one-way notice; false when no session is established. */
  notice<K extends ControlNoticeKind>(kind: K, body: ControlNotices[K]): boolean {
    return this.session?.established ? this.session.notice({ ...body, kind } as ControlNotice) : false;
  }

  /**
   * Tears the links down at once as a network failure would, for fault-point
   * tests: no Goodbye, the control connection reset, connections still in
   * their handshake destroyed. 'disconnected' follows for an established
   * session, and the dialer redials per policy (this node still wants the
   * connection). The data link, owned by the data plane, goes down with the
   * session through its owner's handling of 'disconnected'.
   */
  cut(reason: string): void {
    this.log('warn', `cutting the links to ${this.options.peer.name}: ${reason}`, {});
    // With an error, so a dial in progress fails like any other and is retried per policy.
    for (const socket of [...this.rawSockets]) socket.destroy(new PeerError(`connection cut: ${reason}`));
    for (const session of [...this.handshakes]) session.cut(reason);
    this.session?.cut(reason);
  }

  /**
   * Dialer only: opens this session's data link. Resolves with the socket
   * positioned after preamble+token, paused and not reading, once the
   * acceptor confirmed it. A failure also drops the session (it is useless
   * without its data link), which then reconnects per policy.
   */
  openDataSocket(): Promise<net.Socket> {
    const { peer } = this.options;
    if (!this.isDialer) {
      return Promise.reject(
        new StateError(`${this.options.local.name} accepts the data link from ${peer.name}; listen for 'dataSocket' instead`),
      );
    }
    const session = this.session;
    if (!session?.established) {
      return Promise.reject(new StateError(`cannot open the data link to ${peer.name}: not connected (connection is ${this.connectionState})`));
    }
    const token = session.takeDataToken();
    if (!token) {
      return Promise.reject(new StateError(`the data link of session ${session.id} with ${peer.name} is already open; one per session`));
    }
    return openDataLink(session, token, { ...peer, ...bindTo(this.options.local.host) }, this.timings.dataLinkTimeoutMs, this.rawSockets, (level, msg, fields) =>
      this.log(level, msg, fields),
    );
  }

  // ---------------------------------------------------------- dialing

  private scheduleDial(delayMs: number): void {
    if (!this.isDialer || !this.wanting || this.stopped) return;
    if (this.dialTimer || this.dialing || this.session) return;
    if (delayMs > 0) this.log('debug', `redialing ${this.options.peer.name} in ${delayMs} ms`, {});
    this.dialTimer = setTimeout(() => {
      this.dialTimer = null;
      this.dial();
    }, delayMs);
  }

  private dial(): void {
    if (!this.wanting || this.stopped || this.dialing || this.session) return;
    const { peer } = this.options;
    this.dialing = true;
    // From our own address, which is the one the peer accepts connections from.
    const socket = net.connect({ host: peer.host, port: peer.port, ...bindTo(this.options.local.host) });
    this.rawSockets.add(socket);
    const timer = setTimeout(
      () => socket.destroy(new TimeoutError(`no TCP connection within ${this.timings.handshakeTimeoutMs} ms`)),
      this.timings.handshakeTimeoutMs,
    );
    const onError = (error: NodeJS.ErrnoException): void => {
      clearTimeout(timer);
      this.rawSockets.delete(socket);
      this.dialing = false;
      const delayMs = this.backoff.next();
      this.log('info', `cannot reach ${peer.name} at ${peer.host}:${peer.port} (${error.code ?? error.message}); retrying in ${delayMs} ms`, {});
      this.scheduleDial(delayMs);
    };
    socket.once('error', onError);
    socket.once('close', () => clearTimeout(timer));
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', onError);
      this.rawSockets.delete(socket);
      socket.setNoDelay(true);
      socket.write(CONTROL_PREAMBLE);
      const linkTls = this.options.tls ?? null;
      this.startSession(linkTls === null ? socket : secureClient(socket, linkTls), Buffer.alloc(0));
    });
  }

  // --------------------------------------------------------- accepting

  private onIncoming(socket: net.Socket): void {
    if (this.stopped) {
      socket.destroy();
      return;
    }
    socket.on('error', () => undefined); // reported through readPrefix or the session
    const remote = remoteOf(socket);
    const source = normalAddress(socket.remoteAddress ?? '');
    if (this.peerAddresses === null) {
      // The peer's host did not resolve at start: try again, with the socket paused (nothing read).
      void this.resolvePeer().then(() => this.admitIncoming(socket, remote, source));
      return;
    }
    this.admitIncoming(socket, remote, source);
  }

  private admitIncoming(socket: net.Socket, remote: string, source: string): void {
    if (socket.destroyed) return;
    if (!this.peerAddresses?.has(source)) {
      // Before reading a byte: only the configured peer may take any of our time.
      socket.resetAndDestroy();
      const { peer } = this.options;
      this.noteRefusal('not-peer', `refused connection from ${remote}: not ${peer.name}'s address (${peer.host})`, remote);
      return;
    }
    socket.setNoDelay(true);
    this.rawSockets.add(socket);
    const pooled = { stage: 0, evicted: false };
    this.halfOpen.admit(socket, {
      source,
      progress: () => pooled.stage,
      evict: (why) => {
        pooled.evicted = true;
        this.rawSockets.delete(socket);
        socket.resetAndDestroy();
        this.noteRefusal('evicted', `closed connection from ${remote} before its preamble: ${why}`, remote);
      },
    });
    sortIncoming(socket, this.timings.preAuthTimeoutMs, {
      control: (rest) => {
        this.rawSockets.delete(socket);
        this.halfOpen.release(socket);
        this.onControlConnection(socket, remote, source, rest);
      },
      data: (token, rest) => {
        this.rawSockets.delete(socket);
        this.halfOpen.release(socket);
        this.onDataConnection(socket, remote, token, rest);
      },
      refused: (error) => {
        this.rawSockets.delete(socket);
        this.halfOpen.release(socket);
        // An evicted socket was counted as such; its reading then fails too, and is not a second refusal.
        if (pooled.evicted) return;
        this.refuse(socket, remote, error);
      },
    });
  }

  private onControlConnection(socket: net.Socket, remote: string, source: string, rest: Buffer): void {
    const { local, peer } = this.options;
    if (!this.wanting) {
      this.refuse(socket, remote, new PeerError(
        `${local.name} is StandAlone (disconnected) and accepts no connection; run nraid connect on ${local.name} to allow it`,
      ));
      return;
    }
    if (this.isDialer) {
      this.refuse(socket, remote, new PeerError(
        `${local.name} dials ${peer.name} and accepts no control connection; the node whose name sorts first dials: ` +
          'check that both nodes use the same config',
      ));
      return;
    }
    const linkTls = this.options.tls ?? null;
    const session = linkTls === null ? this.startSession(socket, Buffer.alloc(0)) : this.startSession(secureServer(socket, rest, linkTls), Buffer.alloc(0));
    this.halfOpen.admit(session, {
      source,
      progress: () => session.handshakeProgress,
      evict: (why) => {
        this.handshakes.delete(session);
        session.cut(why);
      },
    });
    session.once('authenticated', () => this.halfOpen.release(session));
    session.once('closed', () => this.halfOpen.release(session));
    session.start(linkTls === null ? rest : Buffer.alloc(0));
  }

  private onDataConnection(socket: net.Socket, remote: string, token: Buffer, rest: Buffer): void {
    const { local, peer } = this.options;
    if (this.isDialer) {
      this.refuse(socket, remote, new PeerError(`${local.name} opens the data link itself and accepts none; check that both nodes use the same config`));
      return;
    }
    const session = this.session;
    if (!session) {
      this.refuse(socket, remote, new PeerError(`data link from ${remote} refused: no authenticated session with ${peer.name}`));
      return;
    }
    acceptDataLink(session, socket, remote, token, rest, {
      peerName: peer.name,
      refuse: (refused, from, error) => this.refuse(refused, from, error),
      accepted: (accepted, info) => this.emit('dataSocket', accepted, info),
      log: (level, msg, fields) => this.log(level, msg, fields),
    });
  }

  /** Refuses a connection that has not proven the secret: closed, counted, logged with the rate limit. */
  private refuse(socket: net.Socket, remote: string, error: NraidError): void {
    closeSocket(socket);
    this.noteRefusal(refusalKind(error), `refused connection from ${remote}: ${error.message}`, remote, error);
  }

  private noteRefusal(kind: RefusalKind, message: string, remote: string, error?: NraidError): void {
    this.refusals.note(kind, message, { remote, code: error?.code });
    if (error) this.emit('refused', { reason: error.message, error, remote, trusted: false });
  }

  // ---------------------------------------------------------- sessions

  /** Makes the session of a control connection; the dialer's starts at once, an incoming one once pooled. */
  private startSession(socket: net.Socket, initial: Buffer): ControlSession {
    const { resource, local, peer, getState, log } = this.options;
    if (this.isDialer) this.dialing = true;
    socket.removeAllListeners('error');
    const session = new ControlSession(
      socket,
      {
        dialer: this.isDialer,
        resource,
        localName: local.name,
        peerName: peer.name,
        secret: this.secret,
        protocolVersion: this.protocolVersion,
        features: this.features,
        handshakeTimeoutMs: this.timings.handshakeTimeoutMs,
        preAuthTimeoutMs: this.timings.preAuthTimeoutMs,
        pingIntervalMs: this.timings.pingIntervalMs,
        pingTimeoutMs: this.timings.pingTimeoutMs,
        dataLinkTimeoutMs: this.timings.dataLinkTimeoutMs,
        getState,
        findHandler: (kind) => this.handlers.get(kind),
        log,
      },
    );
    this.handshakes.add(session);
    session.on('authenticated', () => this.onAuthenticated(session));
    session.on('established', (info) => this.onEstablished(session, info));
    session.on('peerState', (state) => this.emit('peerState', state));
    session.on('notice', (notice) => {
      if (this.session === session) this.emit('notice', notice);
    });
    session.on('closed', (end) => this.onSessionClosed(session, end));
    if (this.isDialer) session.start(initial);
    return session;
  }

  private onAuthenticated(session: ControlSession): void {
    this.handshakes.delete(session);
    const { peer } = this.options;
    this.log('info', `${peer.name} at ${session.remote} authenticated`, { session: session.id });
    const previous = this.session;
    this.session = session;
    if (previous) previous.close(`replaced by a newer connection from ${peer.name} (session ${session.id})`);
  }

  private onEstablished(session: ControlSession, info: SessionInfo): void {
    if (this.session !== session) return;
    this.backoff.reset();
    this.log('info', `connected to ${this.options.peer.name}`, {
      session: session.id,
      remote: info.remote,
      protocolVersion: `${info.protocolVersion.major}.${info.protocolVersion.minor}`,
      features: info.features,
      peerRole: info.peerState.role,
      peerDisk: info.peerState.disk,
    });
    this.updateConnectionState();
    this.emit('connected', info);
  }

  private onSessionClosed(session: ControlSession, end: SessionEnd): void {
    this.handshakes.delete(session);
    if (this.session === session) this.session = null;
    if (this.isDialer) this.dialing = false; // the dialer has one connection at a time
    const fields = { session: session.id, remote: session.remote, code: end.error?.code };
    if (end.established) {
      this.log(end.error ? 'warn' : 'info', `disconnected from ${this.options.peer.name}: ${end.reason}`, fields);
      this.updateConnectionState();
      const event: LinkDisconnect = end.error ? { reason: end.reason, error: end.error } : { reason: end.reason };
      if (end.byPeer) event.byPeer = true;
      this.emit('disconnected', event);
    } else if (end.error && (end.authenticated || this.isDialer)) {
      // A peer that proved the secret, or the one we dialed: worth the operator's attention.
      this.log('warn', `refused connection with ${session.remote}: ${end.reason}`, fields);
      this.emit('refused', { reason: end.reason, error: end.error, remote: session.remote, trusted: true });
    } else if (end.error) {
      this.noteRefusal(refusalKind(end.error), `refused connection with ${session.remote}: ${end.reason}`, session.remote, end.error);
    } else {
      this.log('info', `closed connection with ${session.remote}: ${end.reason}`, fields);
    }
    if (this.isDialer && !this.dialing && !this.session) this.scheduleDial(this.backoff.next());
  }

  private dropEverything(reason: string): void {
    if (this.dialTimer) clearTimeout(this.dialTimer);
    this.dialTimer = null;
    for (const socket of this.rawSockets) socket.destroy();
    this.rawSockets.clear();
    this.dialing = false;
    for (const session of [...this.handshakes]) session.close(reason);
    this.session?.close(reason);
  }

  private updateConnectionState(): void {
    const state = this.connectionState;
    if (state === this.lastConnectionState) return;
    this.lastConnectionState = state;
    this.emit('connectionState', state);
  }

  private log(level: 'debug' | 'info' | 'warn' | 'error', msg: string, fields: Record<string, unknown>): void {
    this.options.log(level, msg, { resource: this.options.resource, peer: this.options.peer.name, ...fields });
  }
}


/** An address as sockets report it: IPv4-mapped IPv6 as plain IPv4. */
function normalAddress(address: string): string {
  return address.startsWith('::ffff:') && net.isIPv4(address.slice(7)) ? address.slice(7) : address;
}

/** Binds outgoing connections to `host` when it is one address (not a wildcard or a name). */
function bindTo(host: string): { localAddress?: string } {
  if (!net.isIP(host) || host === '0.0.0.0' || host === '::') return {};
  return { localAddress: host };
}

function refusalKind(error: NraidError): RefusalKind {
  if (error instanceof VersionError) return 'version';
  if (/closed to make room/.test(error.message)) return 'evicted';
  if (error instanceof ProtocolError) return 'malformed';
  if (/authentication failed/.test(error.message)) return 'auth';
  if (/timeout/.test(error.message)) return 'timeout';
  return 'other';
}
