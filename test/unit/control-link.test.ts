/**
 * The control link over real TCP sockets on 127.0.0.1: two ControlLinks
 * (alpha dials, beta accepts), raw clients that misbehave, and a tiny relay
 * in the test that can record and stall traffic to play a dead network.
 */
import { randomBytes } from 'crypto';
import { EventEmitter } from 'events';
import * as net from 'net';
import { NraidError, PeerError, ProtocolError, RemoteError, StateError, VersionError } from '../../src/errors';
import { bitmapChunkBytesMax, controlMessageBytesMax, pingIntervalMsMin } from '../../src/limits';
import {
  CONTROL_PREAMBLE,
  ControlFrameReader,
  ControlMessage,
  ControlNotice,
  DATA_PREAMBLE,
  Hello,
  NodeState,
  PROTOCOL_VERSION,
  ProtocolVersion,
  encodeFrame,
} from '../../src/protocol/control';
import { ControlLink, ControlLinkOptions, LinkRefusal, SessionInfo } from '../../src/link/control-link';
import { authHmac, newNonce } from '../../src/link/auth';

const CONTROL_MESSAGE_SIZE_MAX_BYTES = controlMessageBytesMax;

const HOST = '127.0.0.1';
const SECRET = 'correct horse battery staple';
const PING_INTERVAL_MS = 100;
const PING_TIMEOUT_MS = 600;
const HANDSHAKE_TIMEOUT_MS = 400;
const CONNECT_RETRY_MS = 50;
/** Slack for event loop and scheduling delays on a busy test machine. */
const MARGIN_MS = 400;

// ------------------------------------------------------------ harness

interface LogEntry {
  level: string;
  msg: string;
  fields: Record<string, unknown>;
}

interface TestNode {
  link: ControlLink;
  logs: LogEntry[];
  state: NodeState;
  getStateCalls: number;
  refused: LinkRefusal[];
  connected: SessionInfo[];
}

const cleanups: Array<() => unknown> = [];

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

function makeState(overrides: Partial<NodeState> = {}): NodeState {
  return {
    role: 'Secondary',
    disk: 'UpToDate',
    dataSizeBytes: 1073741824n,
    uuids: { current: 0xdeadbeef00000001n, bitmap: 0n, history: [0x1234n, (1n << 63n) + 5n] },
    flags: 1,
    protocol: 'C',
    ...overrides,
  };
}

function makeNode(
  name: string,
  peer: { name: string; port: number },
  extra: Partial<ControlLinkOptions> & { state?: NodeState } = {},
): TestNode {
  const { state: initialState, ...linkExtra } = extra;
  const node = {
    logs: [] as LogEntry[],
    state: initialState ?? makeState(),
    getStateCalls: 0,
    refused: [] as LinkRefusal[],
    connected: [] as SessionInfo[],
  } as TestNode;
  node.link = new ControlLink({
    resource: 'r0',
    local: { name, host: HOST, port: 0 },
    peer: { name: peer.name, host: HOST, port: peer.port },
    secret: SECRET,
    pingIntervalMs: PING_INTERVAL_MS,
    pingTimeoutMs: PING_TIMEOUT_MS,
    connectRetryMs: CONNECT_RETRY_MS,
    handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS,
    getState: () => {
      node.getStateCalls++;
      return node.state;
    },
    log: (level, msg, fields) => node.logs.push({ level, msg, fields }),
    ...linkExtra,
  });
  node.link.on('refused', (refusal) => node.refused.push(refusal));
  node.link.on('connected', (info) => node.connected.push(info));
  cleanups.push(() => node.link.stop());
  return node;
}

/** beta listens (acceptor); alpha dials it, through `relay` when given. */
async function makePair(
  options: {
    alpha?: Partial<ControlLinkOptions> & { state?: NodeState };
    beta?: Partial<ControlLinkOptions> & { state?: NodeState };
    relay?: boolean;
  } = {},
): Promise<{ alpha: TestNode; beta: TestNode; relay: Relay | null; betaPort: number }> {
  const beta = makeNode('beta', { name: 'alpha', port: 1 }, options.beta);
  const betaPort = (await beta.link.start()).port;
  let relay: Relay | null = null;
  let dialPort = betaPort;
  if (options.relay) {
    relay = await Relay.start(betaPort);
    dialPort = relay.port;
  }
  const alpha = makeNode('alpha', { name: 'beta', port: dialPort }, options.alpha);
  await alpha.link.start();
  return { alpha, beta, relay, betaPort };
}

async function connectPair(alpha: TestNode, beta: TestNode): Promise<[SessionInfo, SessionInfo]> {
  const both = Promise.all([waitFor(alpha.link, 'connected'), waitFor(beta.link, 'connected')]);
  beta.link.connect();
  alpha.link.connect();
  const [[alphaInfo], [betaInfo]] = (await both) as [[SessionInfo], [SessionInfo]];
  return [alphaInfo, betaInfo];
}

function waitFor(emitter: EventEmitter, event: string, timeoutMs = 5000, filter: (...args: any[]) => boolean = () => true): Promise<any[]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, listener);
      reject(new Error(`no '${event}' within ${timeoutMs} ms`));
    }, timeoutMs);
    const listener = (...args: any[]): void => {
      if (!filter(...args)) return;
      clearTimeout(timer);
      emitter.off(event, listener);
      resolve(args);
    };
    emitter.on(event, listener);
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A raw TCP client that records what it receives and when the server closes. */
class RawClient {
  readonly received: Buffer[] = [];
  readonly closed: Promise<number>;
  private readonly reader = new ControlFrameReader({ preAuth: false });
  readonly messages: ControlMessage[] = [];
  private readonly messageWaiters: Array<() => void> = [];

  private constructor(readonly socket: net.Socket, startedAtMs: number, parseControl: boolean) {
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => {
      this.received.push(chunk);
      if (parseControl) {
        let bytes = chunk;
        if (this.received.length === 1 && chunk.subarray(0, 8).equals(CONTROL_PREAMBLE)) bytes = chunk.subarray(8);
        this.messages.push(...this.reader.push(bytes));
        for (const wake of this.messageWaiters.splice(0)) wake();
      }
    });
    this.closed = new Promise((resolve) => socket.on('close', () => resolve(Date.now() - startedAtMs)));
  }

  static connect(port: number, parseControl = false): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const startedAtMs = Date.now();
      const socket = net.connect({ host: HOST, port }, () => resolve(new RawClient(socket, startedAtMs, parseControl)));
      socket.once('error', reject);
      cleanups.push(() => socket.destroy());
    });
  }

  async nextMessage(type: ControlMessage['type'], timeoutMs = 2000): Promise<ControlMessage> {
    const deadlineMs = Date.now() + timeoutMs;
    for (;;) {
      const index = this.messages.findIndex((message) => message.type === type);
      if (index >= 0) return this.messages.splice(index, 1)[0]!;
      if (Date.now() > deadlineMs) throw new Error(`no ${type} message within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        this.messageWaiters.push(resolve);
        setTimeout(resolve, 50);
      });
    }
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }
}

/**
 * A TCP relay: forwards each connection to `targetPort` and records what
 * the client sent and what it got back. stall() stops forwarding in both directions without
 * closing anything (a dead network); resume() forwards again and resets the
 * connections that lived through the stall, as a rebooted middlebox would.
 */
class Relay {
  readonly connections: Array<{ client: net.Socket; upstream: net.Socket; clientBytes: Buffer[]; upstreamBytes: Buffer[] }> = [];
  private stalled = false;
  private stalledConnections = new Set<number>();

  private constructor(private readonly server: net.Server, readonly port: number, private readonly targetPort: number) {
    server.on('connection', (client) => this.onConnection(client));
  }

  static async start(targetPort: number): Promise<Relay> {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, HOST, () => resolve()));
    const relay = new Relay(server, (server.address() as net.AddressInfo).port, targetPort);
    cleanups.push(() => relay.close());
    return relay;
  }

  private onConnection(client: net.Socket): void {
    const upstream = net.connect({ host: HOST, port: this.targetPort });
    const connection = { client, upstream, clientBytes: [] as Buffer[], upstreamBytes: [] as Buffer[] };
    const index = this.connections.push(connection) - 1;
    for (const socket of [client, upstream]) socket.on('error', () => undefined);
    client.on('data', (chunk: Buffer) => {
      connection.clientBytes.push(chunk);
      upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      connection.upstreamBytes.push(chunk);
      client.write(chunk);
    });
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    if (this.stalled) this.stallConnection(index);
  }

  private stallConnection(index: number): void {
    const { client, upstream } = this.connections[index]!;
    client.pause();
    upstream.pause();
    this.stalledConnections.add(index);
  }

  stall(): void {
    this.stalled = true;
    this.connections.forEach((_, index) => this.stallConnection(index));
  }

  resume(): void {
    this.stalled = false;
    for (const index of this.stalledConnections) {
      const { client, upstream } = this.connections[index]!;
      client.resetAndDestroy();
      upstream.resetAndDestroy();
    }
    this.stalledConnections.clear();
  }

  close(): Promise<void> {
    for (const { client, upstream } of this.connections) {
      client.destroy();
      upstream.destroy();
    }
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

function warnings(node: TestNode): string[] {
  return node.logs.filter((entry) => entry.level === 'warn').map((entry) => entry.msg);
}

// ---------------------------------------------------------------- tests

describe('ControlLink between two nodes', () => {
  test('connects, negotiates features, exchanges states and state changes', async () => {
    const { alpha, beta } = await makePair({
      alpha: { features: ['a-only', 'bitmap-lz4', 'shared'], state: makeState({ role: 'Primary' }) },
      beta: { features: ['shared', 'bitmap-lz4', 'b-only'] },
    });
    expect(alpha.link.isDialer).toBe(true);
    expect(beta.link.isDialer).toBe(false);
    expect(alpha.link.connectionState).toBe('StandAlone');

    const [alphaInfo, betaInfo] = await connectPair(alpha, beta);
    expect(alphaInfo.peerHello.nodeName).toBe('beta');
    expect(betaInfo.peerHello.nodeName).toBe('alpha');
    expect(alphaInfo.features).toEqual(['bitmap-lz4', 'shared']);
    expect(betaInfo.features).toEqual(['bitmap-lz4', 'shared']);
    expect(alphaInfo.protocolVersion).toEqual(PROTOCOL_VERSION);
    expect(betaInfo.protocolVersion).toEqual(PROTOCOL_VERSION);
    expect(alphaInfo.peerHello.version).toEqual(PROTOCOL_VERSION);
    expect(alphaInfo.peerState).toEqual(beta.state);
    expect(betaInfo.peerState).toEqual(alpha.state);
    expect(betaInfo.peerState.uuids.history[1]).toBe((1n << 63n) + 5n);
    expect(alpha.link.connectionState).toBe('Connected');
    expect(beta.link.connectionState).toBe('Connected');

    beta.state = makeState({ role: 'Primary', uuids: { current: 2n ** 64n - 1n, bitmap: 7n, history: [1n, 2n] } });
    const update = waitFor(alpha.link, 'peerState');
    beta.link.sendState();
    const [peerState] = await update;
    expect(peerState).toEqual(beta.state);
    expect(alpha.link.sessionInfo?.peerState).toEqual(beta.state);
  });

  test('stays connected while idle: pings keep a healthy session alive past the ping timeout', async () => {
    const { alpha, beta } = await makePair();
    await connectPair(alpha, beta);
    let disconnects = 0;
    alpha.link.on('disconnected', () => disconnects++);
    beta.link.on('disconnected', () => disconnects++);
    await sleep(3 * PING_TIMEOUT_MS);
    expect(disconnects).toBe(0);
    expect(alpha.link.connectionState).toBe('Connected');
    expect(alpha.link.lastRttMs).not.toBeNull();
    expect(alpha.link.lastRttMs!).toBeLessThan(PING_TIMEOUT_MS);
  });

  test('a wrong secret is refused on both sides with a logged reason, and no state is exchanged', async () => {
    const { alpha, beta } = await makePair({ beta: { secret: 'not the same secret' } });
    const refusedAlpha = waitFor(alpha.link, 'refused');
    const refusedBeta = waitFor(beta.link, 'refused');
    beta.link.connect();
    alpha.link.connect();
    const [[alphaRefusal], [betaRefusal]] = (await Promise.all([refusedAlpha, refusedBeta])) as [[LinkRefusal], [LinkRefusal]];
    // alpha proves first; beta checks, refuses, and never answers with an HMAC of its own.
    expect(alphaRefusal.reason).toMatch(/beta at .*: .* after our Auth, without proving the secret; if this repeats, check `secret`/);
    expect(betaRefusal.reason).toMatch(/authentication failed: the client at .* HMAC that does not match the shared secret/);
    expect(alphaRefusal.error).toBeInstanceOf(PeerError);
    expect(alphaRefusal.trusted).toBe(true); // alpha dialed beta: its lastLinkError may say so
    expect(betaRefusal.trusted).toBe(false); // an anonymous client: counted and logged, no lastLinkError
    expect(warnings(beta).some((msg) => msg.includes('authentication failed'))).toBe(true);
    expect(warnings(alpha).some((msg) => msg.includes('without proving the secret'))).toBe(true);
    expect(beta.link.refusedConnections().auth).toBeGreaterThanOrEqual(1);
    await sleep(300); // alpha redials meanwhile; every attempt must fail the same way
    expect(alpha.getStateCalls).toBe(0);
    expect(beta.getStateCalls).toBe(0);
    expect(alpha.connected).toHaveLength(0);
    expect(beta.connected).toHaveLength(0);
    expect(beta.refused.length).toBeGreaterThanOrEqual(2);
    expect(beta.refused.every((refusal) => /authentication failed/.test(refusal.reason))).toBe(true);
  });

  test('a wrong resource or node name is refused once the peer proved the secret, naming both', async () => {
    const { alpha, beta } = await makePair({ alpha: { resource: 'r1' } });
    const refused = waitFor(beta.link, 'refused');
    beta.link.connect();
    alpha.link.connect();
    const [refusal] = (await refused) as [LinkRefusal];
    expect(refusal.reason).toMatch(/expected resource r0, found alpha at .* announcing resource r1 \(it knows the secret\)/);
    expect(refusal.trusted).toBe(true);
    expect(beta.getStateCalls).toBe(0);

    const raw = await RawClient.connect(beta.link.address()!.port, true);
    const refusedName = waitFor(beta.link, 'refused', 2000, (r: LinkRefusal) => /gamma/.test(r.reason));
    await proveSecret(raw);
    raw.write(encodeFrame({ type: 'identity', body: { resource: 'r0', nodeName: 'gamma', features: [] } }));
    const [nameRefusal] = (await refusedName) as [LinkRefusal];
    expect(nameRefusal.reason).toMatch(/expected the peer node alpha, found a node calling itself gamma/);
    await raw.closed;
  });

  test('different data sizes are refused on both sides with both sizes, and redialing backs off', async () => {
    const { alpha, beta } = await makePair({
      alpha: { state: makeState({ dataSizeBytes: 1048576000n }) },
      beta: { state: makeState({ dataSizeBytes: 1073741824n }) },
    });
    const refusedAlpha = waitFor(alpha.link, 'refused');
    const refusedBeta = waitFor(beta.link, 'refused');
    const startedAtMs = Date.now();
    beta.link.connect();
    alpha.link.connect();
    const [[alphaRefusal], [betaRefusal]] = (await Promise.all([refusedAlpha, refusedBeta])) as [[LinkRefusal], [LinkRefusal]];
    expect(alphaRefusal.reason).toBe(
      'peer beta has 1073741824 bytes of data, alpha has 1048576000; both nodes need the same data size: ' +
        'check the disks and run create-md',
    );
    expect(betaRefusal.reason).toBe(
      'peer alpha has 1048576000 bytes of data, beta has 1073741824; both nodes need the same data size: ' +
        'check the disks and run create-md',
    );
    expect(alphaRefusal.error).toBeInstanceOf(PeerError);
    expect(alphaRefusal.error.code).toBe('NRAID_ERR_PEER');
    await sleep(1500 - (Date.now() - startedAtMs));
    // backoff 50, 100, 200, 400, 800 ms (+ up to 20%): at most 5 attempts in 1.5 s, not a tight loop
    const attempts = beta.refused.filter((refusal) => /bytes of data/.test(refusal.reason)).length;
    expect(attempts).toBeGreaterThanOrEqual(2);
    expect(attempts).toBeLessThanOrEqual(6);
    expect(alpha.connected).toHaveLength(0);
    expect(beta.connected).toHaveLength(0);
  });
});

describe('ControlLink refuses clients that are not a proper peer', () => {
  let beta: TestNode;
  let port: number;

  beforeEach(async () => {
    beta = makeNode('beta', { name: 'alpha', port: 1 });
    port = (await beta.link.start()).port;
    beta.link.connect();
  });

  async function expectRefused(raw: RawClient, pattern: RegExp, withinMs: number): Promise<LinkRefusal> {
    const [refusal] = (await waitFor(beta.link, 'refused', withinMs + MARGIN_MS)) as [LinkRefusal];
    expect(refusal.reason).toMatch(pattern);
    const closedAfterMs = await raw.closed;
    expect(closedAfterMs).toBeLessThan(withinMs + MARGIN_MS + 1000);
    expect(beta.getStateCalls).toBe(0);
    expect(beta.link.connectionState).toBe('Connecting');
    return refusal;
  }

  test('garbage instead of a preamble, at once', async () => {
    const raw = await RawClient.connect(port);
    const refused = expectRefused(raw, /expected the preamble NRAIDCTL or NRAIDDAT, found "GET \/ HT"/, 100);
    raw.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    await refused;
    expect(warnings(beta).some((msg) => msg.includes('GET / HT'))).toBe(true);
  });

  test('a valid preamble, then garbage', async () => {
    const raw = await RawClient.connect(port);
    const refused = expectRefused(raw, /do not decode/, 100);
    // The tag of a Hello (so it passes the check before decoding), then a length that does not decode.
    const garbage = Buffer.from([5, 0, 0, 0, 0x0a, 0xff, 0xff, 0xff, 0xff]);
    raw.write(Buffer.concat([CONTROL_PREAMBLE, garbage]));
    const refusal = await refused;
    expect(refusal.error.code).toBe('NRAID_ERR_PROTOCOL');
  });

  test('a valid preamble, then a well-formed message that is not Hello', async () => {
    const raw = await RawClient.connect(port, true);
    const refused = expectRefused(raw, /expected a Hello or an Auth before authentication, found an Envelope starting with byte 0x22/, 100);
    raw.write(Buffer.concat([CONTROL_PREAMBLE, encodeFrame({ type: 'nodeState', body: makeState() })]));
    await refused;
    // beta spoke first (its Hello) and nothing after
    expect(raw.messages.map((message) => message.type)).toEqual(['hello']);
  });

  test('an oversized length prefix, before any body arrives', async () => {
    const raw = await RawClient.connect(port);
    const refused = expectRefused(raw, /at most 1024 bytes before authentication \(a Hello or an Auth\), found a length prefix of 4294967295/, 100);
    raw.write(Buffer.concat([CONTROL_PREAMBLE, Buffer.from([0xff, 0xff, 0xff, 0xff])]));
    await refused;
  });

  test('nothing at all, until the handshake timeout', async () => {
    const raw = await RawClient.connect(port);
    const startedAtMs = Date.now();
    await expectRefused(raw, /expected the 8-byte preamble .* within 400 ms \(handshake timeout\), found 0 bytes/, HANDSHAKE_TIMEOUT_MS);
    expect(Date.now() - startedAtMs).toBeGreaterThanOrEqual(HANDSHAKE_TIMEOUT_MS - 20);
  });

  test('a preamble and then silence, until the handshake timeout', async () => {
    const raw = await RawClient.connect(port);
    const startedAtMs = Date.now();
    const refused = expectRefused(raw, /expected Hello from .* within 400 ms \(handshake timeout\)/, HANDSHAKE_TIMEOUT_MS);
    raw.write(CONTROL_PREAMBLE);
    await refused;
    expect(Date.now() - startedAtMs).toBeGreaterThanOrEqual(HANDSHAKE_TIMEOUT_MS - 20);
  });

  test('a Hello echoing our nonce is refused as a reflection', async () => {
    const echo = await RawClient.connect(port, true);
    echo.write(CONTROL_PREAMBLE);
    const betaHello = (await echo.nextMessage('hello')).body as Hello;
    const refusedEcho = expectRefused(echo, /found our own: a reflection attempt/, 100);
    echo.write(encodeFrame({ type: 'hello', body: { ...betaHello } }));
    await refusedEcho;
  });

  test('a client that knows the secret gets through; without it, never past Auth', async () => {
    // Positive control for the raw client: with the right HMAC the same client reaches SessionStart.
    const raw = await RawClient.connect(port, true);
    await proveSecret(raw);
    raw.write(encodeFrame({ type: 'identity', body: { resource: 'r0', nodeName: 'alpha', features: [] } }));
    raw.write(encodeFrame({ type: 'sessionStart', body: { dataToken: randomBytes(32) } }));
    const state = await raw.nextMessage('nodeState');
    expect(state.body).toEqual(beta.state);
    expect(beta.getStateCalls).toBe(1);
  });
});

/**
 * Plays alpha's part up to beta's Auth and Identity: Hello, then alpha's Auth
 * over beta's nonce. Returns beta's Identity.
 */
async function proveSecret(raw: RawClient, version: ProtocolVersion = PROTOCOL_VERSION): Promise<ControlMessage> {
  const ownNonce = newNonce();
  raw.write(Buffer.concat([CONTROL_PREAMBLE, encodeFrame({ type: 'hello', body: { version, nonce: ownNonce } })]));
  const betaHello = (await raw.nextMessage('hello')).body as Hello;
  raw.write(encodeFrame({ type: 'auth', body: { hmac: authHmac(Buffer.from(SECRET), 'dialer', betaHello.nonce, ownNonce) } }));
  await raw.nextMessage('auth');
  return raw.nextMessage('identity');
}

describe('ControlLink replay and data link binding', () => {
  test('an Auth recorded from a previous session is refused when replayed', async () => {
    const { alpha, beta, relay, betaPort } = await makePair({ relay: true });
    await connectPair(alpha, beta);
    const recorded = Buffer.concat(relay!.connections[0]!.clientBytes);
    expect(recorded.subarray(0, 8)).toEqual(CONTROL_PREAMBLE);
    const disconnected = waitFor(beta.link, 'disconnected');
    alpha.link.disconnect();
    await disconnected;

    const raw = await RawClient.connect(betaPort, true);
    const refused = waitFor(beta.link, 'refused');
    raw.write(recorded); // preamble, Hello, Auth, SessionStart, NodeState of the old session
    const [refusal] = (await refused) as [LinkRefusal];
    expect(refusal.reason).toMatch(/authentication failed: the client at .* does not match the shared secret/);
    await raw.closed;
    expect(beta.connected).toHaveLength(1);
    expect(beta.link.connectionState).toBe('Connecting');
  });

  test('the data token opens exactly one data link; reused or wrong tokens are refused', async () => {
    const { alpha, beta, relay, betaPort } = await makePair({ relay: true });
    await connectPair(alpha, beta);
    const dataSockets: net.Socket[] = [];
    beta.link.on('dataSocket', (socket: net.Socket) => {
      socket.on('error', () => undefined);
      dataSockets.push(socket);
      cleanups.push(() => socket.destroy());
    });

    const wrong = await RawClient.connect(betaPort);
    const refusedWrong = waitFor(beta.link, 'refused');
    wrong.write(Buffer.concat([DATA_PREAMBLE, randomBytes(32)]));
    expect(((await refusedWrong)[0] as LinkRefusal).reason).toMatch(/token does not match/);
    await wrong.closed;

    const accepted = waitFor(beta.link, 'dataSocket');
    const alphaSocket = await alpha.link.openDataSocket();
    alphaSocket.on('error', () => undefined);
    cleanups.push(() => alphaSocket.destroy());
    const [betaSocket] = (await accepted) as [net.Socket];
    // Neither socket reads its fd: bytes wait in the kernel for the data plane.
    expect((alphaSocket as any)._handle.reading).toBe(false);
    expect((betaSocket as any)._handle.reading).toBe(false);
    expect(betaSocket.readableLength).toBe(0);

    // Positioned right after preamble+token: the first bytes read are the first bytes written.
    const fromAlpha = new Promise<Buffer>((resolve) => betaSocket.once('data', resolve));
    betaSocket.resume();
    alphaSocket.write('NRD1 frame');
    expect((await fromAlpha).toString()).toBe('NRD1 frame');
    const fromBeta = new Promise<Buffer>((resolve) => alphaSocket.once('data', resolve));
    alphaSocket.resume();
    betaSocket.write('ack');
    expect((await fromBeta).toString()).toBe('ack');

    await expect(alpha.link.openDataSocket()).rejects.toThrow(StateError);
    await expect(beta.link.openDataSocket()).rejects.toThrow(/listen for 'dataSocket'/);

    // Replay the token alpha sent (sniffed by the relay) on a new connection.
    const dataConnection = relay!.connections.find((c) => Buffer.concat(c.clientBytes).subarray(0, 8).equals(DATA_PREAMBLE))!;
    const token = Buffer.concat(dataConnection.clientBytes).subarray(8, 40);
    const reuse = await RawClient.connect(betaPort);
    const refusedReuse = waitFor(beta.link, 'refused');
    reuse.write(Buffer.concat([DATA_PREAMBLE, token]));
    expect(((await refusedReuse)[0] as LinkRefusal).reason).toMatch(/token was already used; one data link per session/);
    await reuse.closed;

    expect(dataSockets).toHaveLength(1);
    expect(alpha.link.connectionState).toBe('Connected');
    expect(beta.link.connectionState).toBe('Connected');
  });

  test('a session whose data link never comes is dropped after the data link timeout', async () => {
    const { alpha, beta } = await makePair({ beta: { dataLinkTimeoutMs: 300 } });
    await connectPair(alpha, beta);
    const [end] = await waitFor(beta.link, 'disconnected', 300 + MARGIN_MS);
    expect(end.reason).toMatch(/expected the data link from alpha within 300 ms/);
  });
});

describe('ControlLink liveness, requests and policy', () => {
  test('a silent peer is declared dead within the ping timeout, and the link comes back', async () => {
    const { alpha, beta, relay } = await makePair({ relay: true });
    await connectPair(alpha, beta);
    const alphaDown = waitFor(alpha.link, 'disconnected', PING_TIMEOUT_MS + MARGIN_MS);
    const betaDown = waitFor(beta.link, 'disconnected', PING_TIMEOUT_MS + MARGIN_MS);
    const stalledAtMs = Date.now();
    relay!.stall();
    const [[alphaEnd], [betaEnd]] = await Promise.all([alphaDown, betaDown]);
    const elapsedMs = Date.now() - stalledAtMs;
    expect(alphaEnd.reason).toBe('ping timeout');
    expect(betaEnd.reason).toBe('ping timeout');
    expect(alphaEnd.error.message).toMatch(/nothing from beta at .* for 600 ms/);
    expect(elapsedMs).toBeGreaterThanOrEqual(PING_TIMEOUT_MS - PING_INTERVAL_MS - 50);
    expect(elapsedMs).toBeLessThanOrEqual(PING_TIMEOUT_MS + MARGIN_MS);
    expect(alpha.link.connectionState).toBe('Connecting');

    await sleep(500); // alpha keeps redialing into the dead network
    const back = Promise.all([waitFor(alpha.link, 'connected', 5000), waitFor(beta.link, 'connected', 5000)]);
    relay!.resume();
    await back;
    expect(alpha.connected).toHaveLength(2);
    expect(alpha.link.connectionState).toBe('Connected');
  });

  test('requests round trip both ways; handler errors keep their code, missing handlers and timeouts reject clearly', async () => {
    const { alpha, beta } = await makePair();
    beta.link.onRequest('switchoverPromote', ({ current }) => ({ ok: true, reason: `beta promotes at ${current}` }));
    beta.link.onRequest('promotePrepare', () => {
      throw new StateError('cannot promote r0: local disk is Inconsistent');
    });
    beta.link.onRequest('switchover', () => new Promise<Record<string, never>>(() => undefined));
    alpha.link.onRequest('switchoverPromote', async ({ current }) => ({ ok: false, reason: `alpha refuses ${current}` }));
    expect(() => alpha.link.onRequest('switchoverPromote', () => ({ ok: true, reason: '' }))).toThrow(/already registered/);

    await expect(alpha.link.request('switchoverPromote', { current: 1n })).rejects.toThrow(/not connected/);
    await connectPair(alpha, beta);

    expect(await alpha.link.request('switchoverPromote', { current: 7n })).toEqual({ ok: true, reason: 'beta promotes at 7' });
    expect(await beta.link.request('switchoverPromote', { current: 8n })).toEqual({ ok: false, reason: 'alpha refuses 8' });

    const refused = alpha.link.request('promotePrepare', { requestId: 1n, current: 2n });
    await expect(refused).rejects.toBeInstanceOf(RemoteError);
    await expect(refused).rejects.toBeInstanceOf(NraidError);
    await expect(refused).rejects.toMatchObject({ code: 'NRAID_ERR_STATE', message: 'cannot promote r0: local disk is Inconsistent' });
    await expect(alpha.link.request('resyncStart', { bytes: 1n, current: 1n, history: [0n, 0n] })).rejects.toMatchObject({
      code: 'NRAID_ERR_PROTOCOL',
      message: expect.stringMatching(/beta has no handler for request 'resyncStart'/),
    });
    // a handler answering with the wrong shape: the asker hears why instead of waiting for its timeout
    beta.link.onRequest('splitBrainFacts', () => ({ node: 'beta', primary: false, primarySinceMs: -1, changedBytes: 0, discardMyData: false }));
    await expect(alpha.link.request('splitBrainFacts', {}, 2000)).rejects.toMatchObject({
      code: 'NRAID_ERR_PROTOCOL',
      message: expect.stringMatching(/primarySinceMs must be a non-negative safe integer, found -1/),
    });

    const startedAtMs = Date.now();
    const timedOut = alpha.link.request('switchover', {}, 200);
    await expect(timedOut).rejects.toBeInstanceOf(PeerError);
    await expect(timedOut).rejects.toThrow(/expected an answer from beta to request 'switchover' within 200 ms/);
    expect(Date.now() - startedAtMs).toBeGreaterThanOrEqual(195);
    expect(Date.now() - startedAtMs).toBeLessThan(200 + MARGIN_MS);
    expect(alpha.link.connectionState).toBe('Connected');

    // A request in flight when the session ends is rejected, not left hanging.
    const pending = alpha.link.request('switchover', {}, 10_000);
    beta.link.disconnect();
    await expect(pending).rejects.toThrow(/ended before it answered request 'switchover'/);
    expect(alpha.link.notice('adjust', {})).toBe(false);
  });

  test('disconnect() on the dialer stops redialing; connect() resumes', async () => {
    const { alpha, beta, relay } = await makePair({ relay: true });
    await connectPair(alpha, beta);
    const alphaDown = waitFor(alpha.link, 'disconnected');
    const betaDown = waitFor(beta.link, 'disconnected');
    alpha.link.disconnect();
    const [[alphaEnd], [betaEnd]] = await Promise.all([alphaDown, betaDown]);
    expect(alphaEnd.reason).toBe('disconnect requested by the operator');
    expect(alphaEnd.error).toBeUndefined();
    expect(betaEnd.reason).toBe('alpha closed the session: disconnect requested by the operator');
    expect(alpha.link.connectionState).toBe('StandAlone');

    const connectionsBefore = relay!.connections.length;
    await sleep(10 * CONNECT_RETRY_MS + 300);
    expect(relay!.connections.length).toBe(connectionsBefore);
    expect(beta.link.connectionState).toBe('Connecting');

    const back = waitFor(beta.link, 'connected');
    alpha.link.connect();
    await back;
    expect(relay!.connections.length).toBe(connectionsBefore + 1);
  });

  test('disconnect() on the acceptor refuses the dialer until connect()', async () => {
    const { alpha, beta } = await makePair();
    await connectPair(alpha, beta);
    const refused = waitFor(beta.link, 'refused', 3000);
    const alphaRefused = waitFor(alpha.link, 'refused', 3000);
    const alphaDown = waitFor(alpha.link, 'disconnected');
    beta.link.disconnect();
    const [alphaEnd] = await alphaDown;
    expect(alphaEnd.reason).toBe('beta closed the session: disconnect requested by the operator');
    const [refusal] = (await refused) as [LinkRefusal];
    expect(refusal.reason).toMatch(/beta is StandAlone \(disconnected\) and accepts no connection/);
    const [alphaRefusal] = (await alphaRefused) as [LinkRefusal];
    expect(alphaRefusal.reason).toMatch(/beta at .*: closed the connection during the handshake/);

    const back = waitFor(alpha.link, 'connected', 5000);
    beta.link.connect();
    await back;
    expect(beta.link.connectionState).toBe('Connected');
  });

  test('invalid timings are rejected with the config key', () => {
    expect(
      () =>
        new ControlLink({
          resource: 'r0',
          local: { name: 'alpha', host: HOST, port: 0 },
          peer: { name: 'beta', host: HOST, port: 1 },
          secret: SECRET,
          pingIntervalMs: 5000,
          pingTimeoutMs: 5000,
          getState: () => makeState(),
          log: () => undefined,
        }),
    ).toThrow(new RegExp(`ping-interval-ms: expected at least ${pingIntervalMsMin} and below ping-timeout-ms \\(5000\\), found 5000`));
    expect(
      () =>
        new ControlLink({
          resource: 'r0',
          local: { name: 'alpha', host: HOST, port: 0 },
          peer: { name: 'alpha', host: HOST, port: 1 },
          secret: '',
          getState: () => makeState(),
          log: () => undefined,
        }),
    ).toThrow(NraidError);
  });
});

// ------------------------------------------------- versions and typed requests

/** A hand-driven alpha: Hello (announcing `version`), Auth, SessionStart, NodeState; beta then counts it as connected. */
async function rawAlpha(beta: TestNode, version: ProtocolVersion = PROTOCOL_VERSION): Promise<RawClient> {
  const raw = await RawClient.connect(beta.link.address()!.port, true);
  const connected = waitFor(beta.link, 'connected');
  await proveSecret(raw, version);
  raw.write(encodeFrame({ type: 'identity', body: { resource: 'r0', nodeName: 'alpha', features: [] } }));
  raw.write(encodeFrame({ type: 'sessionStart', body: { dataToken: randomBytes(32) } }));
  raw.write(encodeFrame({ type: 'nodeState', body: makeState() }));
  await connected;
  return raw;
}

describe('ControlLink protocol versions (rolling upgrade)', () => {
  test.each([
    ['the peer runs the next minor', { major: 2, minor: 0 }, { major: 2, minor: 1 }, { major: 2, minor: 0 }],
    ['the peer runs the previous minor', { major: 2, minor: 5 }, { major: 2, minor: 4 }, { major: 2, minor: 4 }],
  ])('%s: connects, and both sides speak the lower minor', async (_name, alphaVersion, betaVersion, expected) => {
    const { alpha, beta } = await makePair({ alpha: { protocolVersion: alphaVersion }, beta: { protocolVersion: betaVersion } });
    const [alphaInfo, betaInfo] = await connectPair(alpha, beta);
    expect(alphaInfo.protocolVersion).toEqual(expected);
    expect(betaInfo.protocolVersion).toEqual(expected);
    expect(alphaInfo.peerHello.version).toEqual(betaVersion);
    expect(betaInfo.peerHello.version).toEqual(alphaVersion);
    // typed requests work across the two minors
    beta.link.onRequest('switchoverPromote', ({ current }) => ({ ok: current === 5n, reason: '' }));
    expect(await alpha.link.request('switchoverPromote', { current: 5n })).toEqual({ ok: true, reason: '' });
  });

  test.each([
    ['two minors apart', { major: 2, minor: 0 }, { major: 2, minor: 2 }, /this node \(alpha\) speaks 2\.0, beta at .* speaks 2\.2;.*upgrade this node \(alpha\) to a 2\.x release/, /this node \(beta\) speaks 2\.2, the client at .* speaks 2\.0;.*upgrade alpha to a 2\.x release/],
    ['another major', { major: 2, minor: 0 }, { major: 3, minor: 0 }, /this node \(alpha\) speaks 2\.0, beta at .* speaks 3\.0;.*upgrade this node \(alpha\) to a 3\.x release/, /this node \(beta\) speaks 3\.0, the client at .* speaks 2\.0;.*upgrade alpha to a 3\.x release/],
  ])('%s: refused on both sides with a VersionError naming both versions', async (_name, alphaVersion, betaVersion, alphaPattern, betaPattern) => {
    const { alpha, beta } = await makePair({ alpha: { protocolVersion: alphaVersion }, beta: { protocolVersion: betaVersion } });
    const refusals = Promise.all([
      waitFor(alpha.link, 'refused', 3000, (r: LinkRefusal) => r.error instanceof VersionError),
      waitFor(beta.link, 'refused', 3000, (r: LinkRefusal) => r.error instanceof VersionError),
    ]);
    beta.link.connect();
    alpha.link.connect();
    const [[alphaRefusal], [betaRefusal]] = (await refusals) as [[LinkRefusal], [LinkRefusal]];
    expect(alphaRefusal.error.code).toBe('NRAID_ERR_VERSION');
    expect(alphaRefusal.reason).toMatch(alphaPattern);
    expect(betaRefusal.error.code).toBe('NRAID_ERR_VERSION');
    expect(betaRefusal.reason).toMatch(betaPattern);
    // refused before authentication: no state left either node
    expect(alpha.getStateCalls).toBe(0);
    expect(beta.getStateCalls).toBe(0);
    expect(alpha.connected).toHaveLength(0);
    expect(beta.connected).toHaveLength(0);
    expect(warnings(beta).some((msg) => /speaks 2\.0/.test(msg))).toBe(true);
  });

  test('a protocol 1 client (version range 1..1, no minor) is refused as 1.0', async () => {
    const beta = makeNode('beta', { name: 'alpha', port: 1 });
    await beta.link.start();
    beta.link.connect();
    const raw = await RawClient.connect(beta.link.address()!.port, true);
    const refused = waitFor(beta.link, 'refused');
    raw.write(CONTROL_PREAMBLE);
    // Envelope field 1 (hello): protocol_version = 1, protocol_version_min = 1, resource r0, node alpha, nonce
    const hello = Buffer.concat([
      Buffer.from([0x08, 0x01, 0x10, 0x01, 0x22, 0x02]), Buffer.from('r0'), Buffer.from([0x2a, 0x05]), Buffer.from('alpha'),
      Buffer.from([0x32, 0x20]), randomBytes(32),
    ]);
    const envelope = Buffer.concat([Buffer.from([0x0a, hello.length]), hello]);
    const prefix = Buffer.alloc(4);
    prefix.writeUInt32LE(envelope.length);
    raw.write(Buffer.concat([prefix, envelope]));
    const [refusal] = (await refused) as [LinkRefusal];
    expect(refusal.error).toBeInstanceOf(VersionError);
    expect(refusal.reason).toMatch(/speaks 3\.0, the client at .* speaks 1\.0/);
    await raw.closed;
  });
});

describe('ControlLink typed requests and notices', () => {
  test('every request kind round trips both ways over real sockets, with its typed body', async () => {
    const { alpha, beta } = await makePair();
    const seen: Array<[string, string, unknown]> = [];
    for (const [name, node] of [['alpha', alpha], ['beta', beta]] as const) {
      const words = Buffer.alloc(64);
      words.writeBigUInt64LE(0x8000000000000001n, 8);
      node.link.onRequest('bitmap', (body) => {
        seen.push([name, 'bitmap', body]);
        return { granularityBytes: 4096, words };
      });
      node.link.onRequest('splitBrainFacts', (body) => {
        seen.push([name, 'splitBrainFacts', body]);
        return { node: name, primary: name === 'alpha', primarySinceMs: 1_700_000_000_123, changedBytes: 8192, discardMyData: false };
      });
      node.link.onRequest('promotePrepare', async (body) => {
        seen.push([name, 'promotePrepare', body]);
        return { ok: body.current !== 0n, reason: body.current !== 0n ? '' : 'no generation' };
      });
      node.link.onRequest('switchover', (body) => {
        seen.push([name, 'switchover', body]);
        return {};
      });
      node.link.onRequest('switchoverPromote', (body) => {
        seen.push([name, 'switchoverPromote', body]);
        return { ok: false, reason: `${name} is Inconsistent` };
      });
      node.link.onRequest('resyncStart', (body) => {
        seen.push([name, 'resyncStart', body]);
        return { ok: body.history[1] === (1n << 63n) };
      });
    }
    await connectPair(alpha, beta);
    for (const [asker, answerer] of [[alpha, 'beta'], [beta, 'alpha']] as const) {
      const bitmap = await asker.link.request('bitmap', {});
      expect(bitmap.granularityBytes).toBe(4096);
      expect(bitmap.words.length).toBe(64);
      expect(bitmap.words.readBigUInt64LE(8)).toBe(0x8000000000000001n);
      expect(await asker.link.request('splitBrainFacts', {})).toEqual({
        node: answerer, primary: answerer === 'alpha', primarySinceMs: 1_700_000_000_123, changedBytes: 8192, discardMyData: false,
      });
      expect(await asker.link.request('promotePrepare', { requestId: 2n ** 64n - 1n, current: 9n })).toEqual({ ok: true, reason: '' });
      expect(await asker.link.request('promotePrepare', { requestId: 1n, current: 0n })).toEqual({ ok: false, reason: 'no generation' });
      expect(await asker.link.request('switchover', {})).toEqual({});
      expect(await asker.link.request('switchoverPromote', { current: 3n })).toEqual({ ok: false, reason: `${answerer} is Inconsistent` });
      expect(await asker.link.request('resyncStart', { bytes: 1n << 40n, current: 5n, history: [4n, 1n << 63n] })).toEqual({ ok: true });
    }
    expect(seen.filter(([name]) => name === 'beta').map(([, kind, body]) => [kind, body])).toEqual([
      ['bitmap', {}],
      ['splitBrainFacts', {}],
      ['promotePrepare', { requestId: 2n ** 64n - 1n, current: 9n }],
      ['promotePrepare', { requestId: 1n, current: 0n }],
      ['switchover', {}],
      ['switchoverPromote', { current: 3n }],
      ['resyncStart', { bytes: 1n << 40n, current: 5n, history: [4n, 1n << 63n] }],
    ]);
    expect(seen.filter(([name]) => name === 'alpha')).toHaveLength(7);
  });

  test('every notice kind arrives typed, in order', async () => {
    const { alpha, beta } = await makePair();
    await connectPair(alpha, beta);
    const received: ControlNotice[] = [];
    const all = new Promise<void>((resolve) =>
      beta.link.on('notice', (notice) => {
        received.push(notice);
        if (notice.kind === 'promoteAbort') resolve();
      }),
    );
    expect(alpha.link.notice('resyncNone', {})).toBe(true);
    expect(alpha.link.notice('resyncDone', {})).toBe(true);
    expect(alpha.link.notice('adjust', {})).toBe(true);
    expect(alpha.link.notice('promoteCommit', { requestId: 2n ** 64n - 1n })).toBe(true);
    expect(alpha.link.notice('promoteAbort', { requestId: 7n })).toBe(true);
    await all;
    expect(received).toEqual([
      { kind: 'resyncNone' },
      { kind: 'resyncDone' },
      { kind: 'adjust' },
      { kind: 'promoteCommit', requestId: 2n ** 64n - 1n },
      { kind: 'promoteAbort', requestId: 7n },
    ]);
    const commit = received[3]!;
    if (commit.kind === 'promoteCommit') expect(commit.requestId).toBe(2n ** 64n - 1n);
  });

  test('a 1 MiB bitmap of random bits crosses in several chunks, none above the bound, and arrives identical', async () => {
    const { alpha, beta, relay } = await makePair({ relay: true });
    const words = randomBytes(1024 * 1024);
    beta.link.onRequest('bitmap', () => ({ granularityBytes: 65536, words }));
    await connectPair(alpha, beta);
    const bitmap = await alpha.link.request('bitmap', {});
    expect(bitmap.granularityBytes).toBe(65536);
    expect(bitmap.words.equals(words)).toBe(true);
    // On the wire from beta: 16 Responses of one chunk each, none above the bound.
    const fromBeta = new ControlFrameReader({ preAuth: false }).push(Buffer.concat(relay!.connections[0]!.upstreamBytes));
    const chunks = fromBeta.flatMap((message) =>
      message.type === 'response' && message.body.ok && message.body.answer.kind === 'bitmap' ? [message.body.answer.body] : [],
    );
    expect(chunks.map((chunk) => chunk.offsetBytes)).toEqual([...Array(16).keys()].map((index) => index * bitmapChunkBytesMax));
    for (const chunk of chunks) {
      expect(chunk.words.length).toBeLessThanOrEqual(bitmapChunkBytesMax);
      expect(chunk.lz4).toBe(false); // random bits do not compress: sent raw
    }
  });

  test('messages sent while a bitmap answer waits for the peer to read leave after its last chunk', async () => {
    // This test is about order, not liveness: 16 MiB through the relay takes seconds on a loaded
    // 2-core machine, and the pings queued behind it must not end the session meanwhile.
    const slow = { pingIntervalMs: 1000, pingTimeoutMs: 30_000 };
    const { alpha, beta, relay } = await makePair({ relay: true, alpha: slow, beta: slow });
    const words = randomBytes(16 * 1024 * 1024); // more than the socket buffers hold
    let noticeSent: Promise<boolean> | null = null;
    beta.link.onRequest('bitmap', () => {
      // the relay stops reading from beta: the answer backs up in beta's outbox
      relay!.connections[0]!.upstream.pause();
      noticeSent = new Promise<boolean>((resolve) =>
        setTimeout(() => {
          const sent = beta.link.notice('adjust', {});
          relay!.connections[0]!.upstream.resume();
          resolve(sent);
        }, 50),
      );
      return { granularityBytes: 4096, words };
    });
    await connectPair(alpha, beta);
    const notices: ControlNotice[] = [];
    alpha.link.on('notice', (notice) => notices.push(notice));
    const bitmap = await alpha.link.request('bitmap', {});
    expect(await noticeSent!).toBe(true);
    expect(bitmap.words.equals(words)).toBe(true);
    if (notices.length === 0) await waitFor(alpha.link, 'notice');
    expect(notices).toEqual([{ kind: 'adjust' }]);
    const fromBeta = new ControlFrameReader({ preAuth: false }).push(Buffer.concat(relay!.connections[0]!.upstreamBytes));
    const order = fromBeta.filter((message) => message.type === 'response' || message.type === 'notice').map((message) => message.type);
    expect(order).toEqual([...Array<string>(256).fill('response'), 'notice']);
  });

  test('a forged out-of-order or oversized bitmap chunk rejects the request with a ProtocolError', async () => {
    const beta = makeNode('beta', { name: 'alpha', port: 1 });
    await beta.link.start();
    beta.link.connect();
    const raw = await rawAlpha(beta);
    const chunkOf = (offsetBytes: number, wordsBytes: number, last: boolean): ControlMessage => ({
      type: 'response',
      body: {
        id: 0,
        ok: true,
        answer: {
          kind: 'bitmap',
          body: { granularityBytes: 4096, totalBytes: 3 * bitmapChunkBytesMax, offsetBytes, wordsBytes, words: Buffer.alloc(wordsBytes), lz4: false, last },
        },
      },
    });
    const answer = async (chunks: ControlMessage[]): Promise<void> => {
      const request = await raw.nextMessage('request');
      for (const chunk of chunks) {
        if (chunk.type === 'response') chunk.body.id = request.type === 'request' ? request.body.id : 0;
        raw.write(encodeFrame(chunk));
      }
    };

    const outOfOrder = beta.link.request('bitmap', {}, 2000);
    await answer([chunkOf(0, bitmapChunkBytesMax, false), chunkOf(2 * bitmapChunkBytesMax, bitmapChunkBytesMax, true)]);
    await expect(outOfOrder).rejects.toBeInstanceOf(ProtocolError);
    await expect(outOfOrder).rejects.toThrow(/expected the bitmap chunk at offset 65536, found one at offset 131072 \(out of order\)/);

    const oversized = beta.link.request('bitmap', {}, 2000);
    await answer([chunkOf(0, 2 * bitmapChunkBytesMax, false)]);
    await expect(oversized).rejects.toBeInstanceOf(ProtocolError);
    await expect(oversized).rejects.toThrow(/expected a bitmap chunk of at most 65536 bytes, found 131072 bytes of words/);

    const wrongKind = beta.link.request('bitmap', {}, 2000);
    const request = await raw.nextMessage('request');
    const id = request.type === 'request' ? request.body.id : 0;
    raw.write(encodeFrame({ type: 'response', body: { id, ok: true, answer: { kind: 'resyncStart', body: { ok: true } } } }));
    await expect(wrongKind).rejects.toThrow(/expected alpha's answer to request 'bitmap' \(id \d+\), found an answer of kind 'resyncStart'/);

    // Positive control: the same hand-made chunks, in order, resolve.
    const good = beta.link.request('bitmap', {}, 2000);
    await answer([0, 1, 2].map((index) => chunkOf(index * bitmapChunkBytesMax, bitmapChunkBytesMax, index === 2)));
    expect((await good).words.length).toBe(3 * bitmapChunkBytesMax);
    expect(beta.link.connectionState).toBe('Connected');
  });

  test('cut() drops both sides at once without a Goodbye, and the link comes back', async () => {
    const { alpha, beta } = await makePair();
    await connectPair(alpha, beta);
    beta.link.onRequest('switchover', () => new Promise<Record<string, never>>(() => undefined));
    const pending = alpha.link.request('switchover', {}, 10_000);
    const disconnects = Promise.all([waitFor(alpha.link, 'disconnected'), waitFor(beta.link, 'disconnected')]);
    const reconnected = Promise.all([waitFor(alpha.link, 'connected'), waitFor(beta.link, 'connected')]);
    const startedAtMs = Date.now();
    alpha.link.cut('fault point: after prepare');
    const [[alphaEnd], [betaEnd]] = (await disconnects) as [[{ reason: string; error?: NraidError }], [{ reason: string; error?: NraidError }]];
    expect(Date.now() - startedAtMs).toBeLessThan(MARGIN_MS);
    expect(alphaEnd.reason).toMatch(/fault point: after prepare/);
    expect(alphaEnd.error).toBeInstanceOf(PeerError);
    // beta learns of it as of a network failure: a reset, not alpha's Goodbye
    expect(betaEnd.reason).not.toMatch(/closed the session/);
    expect(betaEnd.error).toBeInstanceOf(PeerError);
    await expect(pending).rejects.toThrow(/ended before it answered request 'switchover'/);
    await reconnected;
    expect(alpha.link.connectionState).toBe('Connected');
  });
});

// ------------------------------------------ before authentication (issue 11)

describe('ControlLink before authentication (issue 11 findings 1, 2, 3, 5)', () => {
  /** Connects from `localAddress` (another loopback address than the peer's) and writes `bytes`. */
  /** Connects from `localAddress` (another loopback address than the peer's), writes `bytes`; resolves once closed. */
  function connectFrom(port: number, localAddress: string, bytes: Buffer): Promise<{ closedAfterMs: number; received: Buffer[] }> {
    return new Promise((resolve) => {
      const startedAtMs = Date.now();
      const received: Buffer[] = [];
      const socket = net.connect({ host: HOST, port, localAddress }, () => socket.write(bytes));
      socket.on('data', (chunk: Buffer) => received.push(chunk));
      socket.on('error', () => undefined);
      socket.on('close', () => resolve({ closedAfterMs: Date.now() - startedAtMs, received }));
      cleanups.push(() => socket.destroy());
    });
  }

  test('finding 1: a length prefix above 1 KiB (an old 16 MiB one) is refused on its 4 bytes, nothing buffered', async () => {
    // Regression: before authentication any message of up to 16 MiB was accepted and decoded whole; one
    // crafted message blocked the event loop for seconds and grew the heap past 1 GB.
    const beta = makeNode('beta', { name: 'alpha', port: 1 });
    const port = (await beta.link.start()).port;
    beta.link.connect();
    const raw = await RawClient.connect(port);
    const refused = waitFor(beta.link, 'refused', 1000);
    const prefix = Buffer.alloc(4);
    prefix.writeUInt32LE(controlMessageBytesMax - 1);
    raw.write(Buffer.concat([CONTROL_PREAMBLE, prefix, Buffer.from([0x0a])])); // a Hello's tag, then the rest would follow
    const [refusal] = (await refused) as [LinkRefusal];
    expect(refusal.reason).toMatch(new RegExp(`at most 1024 bytes before authentication .* found a length prefix of ${controlMessageBytesMax - 1}`));
    expect(await raw.closed).toBeLessThan(1000 + MARGIN_MS);
    expect(beta.link.refusedConnections().malformed).toBe(1);
  });

  test('finding 2: silent connections renewed all the time do not keep the real peer out', async () => {
    // Regression: eight silent connections (a preamble, then nothing), renewed as they timed out, held
    // every handshake slot and the peer could not reconnect for as long as that lasted.
    // The attackers run in this process too and keep its event loop busy: a handshake timeout with room.
    const handshakeTimeoutMs = 2000;
    const { alpha, beta, betaPort } = await makePair({ alpha: { handshakeTimeoutMs }, beta: { handshakeTimeoutMs } });
    let attacking = true;
    const silent = async (): Promise<void> => {
      while (attacking) {
        const raw = await RawClient.connect(betaPort);
        raw.write(CONTROL_PREAMBLE);
        await raw.closed;
      }
    };
    beta.link.connect();
    const attackers = [...Array(24).keys()].map(() => silent());
    await sleep(handshakeTimeoutMs / 2); // the pool is full of silent connections, gone stale, before alpha dials
    const startedAtMs = Date.now();
    const connected = Promise.all([waitFor(alpha.link, 'connected'), waitFor(beta.link, 'connected')]);
    alpha.link.connect();
    await connected;
    const tookMs = Date.now() - startedAtMs;
    attacking = false;
    expect(tookMs).toBeLessThan(handshakeTimeoutMs);
    expect(beta.link.refusedConnections().evicted).toBeGreaterThan(0);
    expect(alpha.link.connectionState).toBe('Connected');
    // the attackers' loops end as their connections are evicted or time out
    await Promise.race([Promise.all(attackers), sleep(handshakeTimeoutMs + MARGIN_MS)]);
  });

  test('finding 3: the acceptor sends no HMAC and no name to a client that has not proven the secret', async () => {
    // Regression: the listening node sent its HMAC over the caller's nonce, and its resource and node
    // name, before verifying the caller: one captured reply let anyone grind the secret offline.
    const beta = makeNode('beta', { name: 'alpha', port: 1 });
    const port = (await beta.link.start()).port;
    beta.link.connect();
    const raw = await RawClient.connect(port, true);
    raw.write(Buffer.concat([CONTROL_PREAMBLE, encodeFrame({ type: 'hello', body: { version: PROTOCOL_VERSION, nonce: newNonce() } })]));
    await raw.nextMessage('hello');
    await sleep(150);
    expect(raw.messages).toEqual([]); // nothing after beta's Hello until we prove the secret
    const bytes = Buffer.concat(raw.received);
    for (const name of ['r0', 'beta', 'alpha']) expect(bytes.includes(Buffer.from(name))).toBe(false);
    const refused = waitFor(beta.link, 'refused');
    raw.write(encodeFrame({ type: 'auth', body: { hmac: randomBytes(32) } }));
    const [refusal] = (await refused) as [LinkRefusal];
    expect(refusal.reason).toMatch(/authentication failed: the client at/);
    await raw.closed;
    expect(raw.messages.map((message) => message.type)).toEqual([]); // still no Auth of beta's
  });

  test('finding 5: 200 garbage connections log a few lines, are counted, and are not trusted for lastLinkError', async () => {
    // Regression: each refused connection logged ~330 bytes with no rate limit, and anonymous garbage
    // overwrote lastLinkError.
    const beta = makeNode('beta', { name: 'alpha', port: 1 });
    const port = (await beta.link.start()).port;
    beta.link.connect();
    for (let i = 0; i < 200; i += 20) {
      await Promise.all([...Array(20).keys()].map(async () => {
        const raw = await RawClient.connect(port);
        raw.write(Buffer.from('GET / HTTP/1.1\r\n\r\n'));
        await raw.closed;
      }));
    }
    expect(beta.link.refusedConnections().malformed).toBe(200);
    expect(beta.refused).toHaveLength(200);
    expect(beta.refused.every((refusal) => !refusal.trusted)).toBe(true);
    expect(warnings(beta).length).toBeLessThanOrEqual(2);
    const logBytes = beta.logs.reduce((sum, entry) => sum + entry.msg.length + JSON.stringify(entry.fields).length, 0);
    expect(logBytes).toBeLessThan(2000);
  });

  test('a connection from an address other than the peer\'s is reset before a byte is read', async () => {
    const beta = makeNode('beta', { name: 'alpha', port: 1 });
    const port = (await beta.link.start()).port;
    beta.link.connect();
    const stranger = await connectFrom(port, '127.0.0.2', Buffer.concat([CONTROL_PREAMBLE, encodeFrame({ type: 'hello', body: { version: PROTOCOL_VERSION, nonce: newNonce() } })]));
    expect(stranger.closedAfterMs).toBeLessThan(MARGIN_MS);
    expect(stranger.received).toEqual([]); // not even beta's Hello
    expect(beta.link.refusedConnections()['not-peer']).toBe(1);
    expect(beta.refused).toEqual([]);
    expect(warnings(beta).some((msg) => /refused connection from 127\.0\.0\.2:\d+: not alpha's address \(127\.0\.0\.1\)/.test(msg))).toBe(true);
  });
});
