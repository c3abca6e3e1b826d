/**
 * A fault-injecting TCP proxy for the replication tests (DESIGN.md §10):
 * listens on 127.0.0.1, forwards each accepted connection to the target, and
 * on command cuts, refuses, stalls, delays or corrupts the traffic.
 *
 * Byte positions: every direction ('toTarget': client -> target, 'toClient':
 * target -> client) has a stream position that counts the bytes the proxy
 * has received in that direction over all connections since it started, and
 * each connection has its own position per direction. Faults are applied as
 * bytes arrive; forwarding keeps their order.
 */
import * as net from 'net';
import { performance } from 'perf_hooks';
import { registerCleanup, CleanupHandle } from './cleanup';
import { FrameRewriter, RewriteRecord } from './frame-rewriter';

export type Direction = 'toTarget' | 'toClient';

export interface FaultProxyOptions {
  targetHost: string;
  targetPort: number;
  /** Address to listen on; only loopback is allowed (default 127.0.0.1). */
  listenHost?: string;
  /**
   * Bytes buffered per connection and direction before the proxy stops
   * reading from the sender (default 16 MiB); the sender then sees TCP
   * back-pressure, as behind a real stalled link.
   */
  maxBufferedBytes?: number;
  /**
   * Follow each data link toward the target frame by frame (or TLS record by
   * record), so that rewriteNextWrite() can act as a man in the middle (frame-rewriter.ts).
   */
  frameAware?: boolean;
}

export interface FlipOptions {
  direction: Direction;
  /** Bytes to let pass in that direction (counted from this call) before the first flip. */
  afterBytes: number;
  /** Chunks to corrupt: the first at `afterBytes`, then the first byte of each following chunk. */
  count: number;
  /** Which bit to flip, 0 (least significant, default) .. 7. */
  bit?: number;
}

export interface FlipRecord {
  direction: Direction;
  /** Connection number (1 = first accepted). */
  connectionId: number;
  /** Position of the flipped byte within that connection's stream in this direction. */
  connectionOffset: number;
  /** Position of the flipped byte in the direction's stream over all connections. */
  streamOffset: number;
  bit: number;
  before: number;
  after: number;
}

export interface FaultProxyCounters {
  /** Bytes forwarded to the target / to the client. */
  bytesToTarget: number;
  bytesToClient: number;
  /** Bytes received from the client / from the target (the stream positions). */
  bytesFromClient: number;
  bytesFromTarget: number;
  /** Bytes received but not yet forwarded (stall, delay, back-pressure). */
  bytesBuffered: number;
  /** Connections proxied (refused ones not included). */
  connectionsAccepted: number;
  connectionsRefused: number;
  connectionsActive: number;
  /** Calls to cut(), and connections those calls destroyed. */
  cuts: number;
  connectionsCut: number;
  /** Connections whose target could not be reached. */
  targetConnectFailures: number;
}

interface Queued {
  data: Buffer;
  readyAtMs: number;
}

interface FlipState {
  thresholdOffset: number;
  remaining: number;
  bit: number;
}

class Pipe {
  readonly queue: Queued[] = [];
  queuedBytes = 0;
  receivedBytes = 0;
  sourceEnded = false;
  endSent = false;
  waitingDrain = false;
  pausedByUs = false;
  timer: NodeJS.Timeout | undefined;
  rewriter: FrameRewriter | undefined;

  constructor(
    readonly pair: Pair,
    readonly direction: Direction,
    readonly source: net.Socket,
    readonly sink: net.Socket,
  ) {}
}

class Pair {
  closed = false;
  readonly toTarget: Pipe;
  readonly toClient: Pipe;

  constructor(
    readonly id: number,
    readonly client: net.Socket,
    readonly target: net.Socket,
  ) {
    this.toTarget = new Pipe(this, 'toTarget', client, target);
    this.toClient = new Pipe(this, 'toClient', target, client);
  }
}

export class FaultProxy {
  private readonly targetHost: string;
  private readonly targetPort: number;
  private readonly listenHost: string;
  private readonly maxBufferedBytes: number;
  private server: net.Server | undefined;
  private cleanupHandle: CleanupHandle | undefined;
  private listenPort = 0;
  private readonly pairs = new Set<Pair>();
  private nextId = 1;
  private refusing = false;
  private stalled = false;
  private delayMs = 0;
  private readonly flipState: Record<Direction, FlipState | undefined> = { toTarget: undefined, toClient: undefined };
  private readonly counters: FaultProxyCounters = {
    bytesToTarget: 0,
    bytesToClient: 0,
    bytesFromClient: 0,
    bytesFromTarget: 0,
    bytesBuffered: 0,
    connectionsAccepted: 0,
    connectionsRefused: 0,
    connectionsActive: 0,
    cuts: 0,
    connectionsCut: 0,
    targetConnectFailures: 0,
  };
  /** Every bit flipped so far, in order. */
  readonly flips: FlipRecord[] = [];
  /** Every rewrite of a frame (or TLS record) so far, in order (frameAware only). */
  readonly rewrites: RewriteRecord[] = [];
  private readonly rewriteArmed = { pending: 0 };
  private readonly frameAware: boolean;

  constructor(opts: FaultProxyOptions) {
    this.targetHost = opts.targetHost;
    this.targetPort = opts.targetPort;
    this.listenHost = opts.listenHost ?? '127.0.0.1';
    this.maxBufferedBytes = opts.maxBufferedBytes ?? 16 * 1024 * 1024;
    this.frameAware = opts.frameAware ?? false;
    if (!/^127\.\d+\.\d+\.\d+$/.test(this.listenHost)) {
      throw new Error(`FaultProxy listens on loopback only, got ${this.listenHost}`);
    }
    if (!Number.isInteger(this.targetPort) || this.targetPort <= 0 || this.targetPort > 65535) {
      throw new Error(`bad targetPort ${opts.targetPort}`);
    }
  }

  /** Starts listening (port 0 = any free port) and resolves with the port. */
  listen(port = 0): Promise<number> {
    if (this.server) throw new Error('FaultProxy.listen called twice');
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: false }, (socket) => this.onConnection(socket));
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, this.listenHost, () => {
        server.removeListener('error', reject);
        server.on('error', () => undefined);
        this.listenPort = (server.address() as net.AddressInfo).port;
        this.cleanupHandle = registerCleanup(
          `fault proxy 127.0.0.1:${this.listenPort} -> ${this.targetHost}:${this.targetPort}`,
          () => this.shutdown(),
          () => {
            for (const p of this.pairs) this.destroyPair(p, true);
            server.close();
          },
        );
        resolve(this.listenPort);
      });
    });
  }

  /** The listening port (0 before listen()). */
  get port(): number {
    return this.listenPort;
  }

  /** A snapshot of the counters. */
  stats(): FaultProxyCounters {
    let buffered = 0;
    for (const p of this.pairs) buffered += p.toTarget.queuedBytes + p.toClient.queuedBytes;
    return { ...this.counters, bytesBuffered: buffered, connectionsActive: this.pairs.size };
  }

  /** Destroys every proxied connection now (RST by default; `reset: false` closes with FIN). */
  cut(opts: { reset?: boolean } = {}): number {
    this.counters.cuts += 1;
    let n = 0;
    for (const pair of [...this.pairs]) {
      this.destroyPair(pair, opts.reset ?? true);
      n++;
    }
    this.counters.connectionsCut += n;
    return n;
  }

  /**
   * While on, new connections are accepted and reset at once, never reaching
   * the target (the listener stays bound, so nobody else can take the port).
   * Existing connections are not touched.
   */
  refuse(on: boolean): void {
    this.refusing = on;
  }

  /** While on, nothing is forwarded in either direction; bytes received are buffered. */
  stall(on: boolean): void {
    this.stalled = on;
    if (!on) for (const pair of this.pairs) this.pumpBoth(pair);
  }

  /** Holds every chunk received from now on for `ms` before forwarding it (0 = off). Order is kept. */
  delay(ms: number): void {
    if (!Number.isFinite(ms) || ms < 0) throw new Error(`bad delay ${ms}`);
    this.delayMs = ms;
  }

  /**
   * Arms bit flips in one direction (replacing an earlier arming of that
   * direction). The byte at position `afterBytes` (counted from now, over all
   * connections) gets the first flip; each of the next `count - 1` chunks
   * received then gets one flip in its first byte. Every flip is recorded in
   * `flips`.
   */
  flipBits(opts: FlipOptions): void {
    const bit = opts.bit ?? 0;
    if (!Number.isInteger(bit) || bit < 0 || bit > 7) throw new Error(`bad bit ${opts.bit}`);
    if (!Number.isSafeInteger(opts.afterBytes) || opts.afterBytes < 0) throw new Error(`bad afterBytes ${opts.afterBytes}`);
    if (!Number.isSafeInteger(opts.count) || opts.count < 0) throw new Error(`bad count ${opts.count}`);
    const position = opts.direction === 'toTarget' ? this.counters.bytesFromClient : this.counters.bytesFromTarget;
    this.flipState[opts.direction] = { thresholdOffset: position + opts.afterBytes, remaining: opts.count, bit };
  }

  /** Flips still armed in `direction`. */
  flipsPending(direction: Direction): number {
    return this.flipState[direction]?.remaining ?? 0;
  }

  /** Polls the counters until `predicate` holds; rejects after `timeoutMs`. */
  async waitFor(predicate: (c: FaultProxyCounters) => boolean, timeoutMs = 5000): Promise<FaultProxyCounters> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const c = this.stats();
      if (predicate(c)) return c;
      if (Date.now() > deadline) throw new Error(`FaultProxy.waitFor timed out after ${timeoutMs} ms; counters ${JSON.stringify(c)}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Stops listening and destroys every connection. */
  async close(): Promise<void> {
    if (this.cleanupHandle) await this.cleanupHandle.run();
    else await this.shutdown();
  }

  private async shutdown(): Promise<void> {
    const server = this.server;
    for (const pair of [...this.pairs]) this.destroyPair(pair, false);
    if (!server || !server.listening) return;
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  // --- connection handling ---------------------------------------------------

  private onConnection(client: net.Socket): void {
    client.on('error', () => undefined);
    if (this.refusing) {
      this.counters.connectionsRefused += 1;
      client.resetAndDestroy();
      return;
    }
    this.counters.connectionsAccepted += 1;
    const target = net.connect({ host: this.targetHost, port: this.targetPort, allowHalfOpen: true });
    target.on('error', () => undefined);
    client.setNoDelay(true);
    target.setNoDelay(true);
    const pair = new Pair(this.nextId++, client, target);
    this.pairs.add(pair);
    if (this.frameAware) pair.toTarget.rewriter = new FrameRewriter(pair.id, this.rewriteArmed, (r) => this.rewrites.push(r));
    let targetConnected = false;
    target.once('connect', () => {
      targetConnected = true;
      this.pump(pair.toTarget);
    });
    target.once('error', () => {
      if (!targetConnected) this.counters.targetConnectFailures += 1;
    });
    for (const pipe of [pair.toTarget, pair.toClient]) {
      pipe.source.on('data', (chunk: Buffer) => this.onData(pipe, chunk));
      pipe.source.on('end', () => {
        pipe.sourceEnded = true;
        this.pump(pipe);
      });
    }
    // A socket that fails (RST, EPIPE, refused) takes its partner down with a
    // reset; one that closes cleanly has already passed its FIN on (half-close
    // is forwarded), so its partner is left to finish on its own.
    let cleanCloses = 0;
    const onClose = (hadError: boolean): void => {
      if (hadError) {
        this.destroyPair(pair, true);
        return;
      }
      cleanCloses += 1;
      if (cleanCloses === 2) this.destroyPair(pair, false);
    };
    client.on('close', onClose);
    target.on('close', onClose);
  }

  /**
   * frameAware only: the next WRITE toward the target gets one payload byte
   * changed with both its crc32c values recomputed; with TLS on the link,
   * one byte of the next application-data record is changed instead.
   */
  rewriteNextWrite(): void {
    if (!this.frameAware) throw new Error('rewriteNextWrite: make the FaultProxy with frameAware: true');
    this.rewriteArmed.pending += 1;
  }

  private onData(pipe: Pipe, received: Buffer): void {
    if (pipe.pair.closed) return;
    let chunk = received;
    if (pipe.rewriter !== undefined) {
      chunk = pipe.rewriter.push(received);
      if (chunk.length === 0) return;
    }
    const c = this.counters;
    const streamOffset = pipe.direction === 'toTarget' ? c.bytesFromClient : c.bytesFromTarget;
    const flip = this.flipState[pipe.direction];
    if (flip && flip.remaining > 0 && streamOffset + chunk.length > flip.thresholdOffset) {
      const i = Math.max(flip.thresholdOffset - streamOffset, 0);
      const before = chunk[i];
      chunk[i] = before ^ (1 << flip.bit);
      this.flips.push({
        direction: pipe.direction,
        connectionId: pipe.pair.id,
        connectionOffset: pipe.receivedBytes + i,
        streamOffset: streamOffset + i,
        bit: flip.bit,
        before,
        after: chunk[i],
      });
      flip.remaining -= 1;
      flip.thresholdOffset = streamOffset + chunk.length;
    }
    if (pipe.direction === 'toTarget') c.bytesFromClient += chunk.length;
    else c.bytesFromTarget += chunk.length;
    pipe.receivedBytes += chunk.length;
    pipe.queue.push({ data: chunk, readyAtMs: performance.now() + this.delayMs });
    pipe.queuedBytes += chunk.length;
    if (pipe.queuedBytes > this.maxBufferedBytes && !pipe.pausedByUs) {
      pipe.pausedByUs = true;
      pipe.source.pause();
    }
    this.pump(pipe);
  }

  private pumpBoth(pair: Pair): void {
    this.pump(pair.toTarget);
    this.pump(pair.toClient);
  }

  private pump(pipe: Pipe): void {
    if (pipe.pair.closed || this.stalled || pipe.waitingDrain || pipe.timer !== undefined) return;
    if (pipe.sink.connecting) return; // the 'connect' handler pumps again
    while (pipe.queue.length > 0) {
      const head = pipe.queue[0];
      const waitMs = head.readyAtMs - performance.now();
      if (waitMs > 0) {
        pipe.timer = setTimeout(() => {
          pipe.timer = undefined;
          this.pump(pipe);
        }, Math.ceil(waitMs));
        return;
      }
      pipe.queue.shift();
      pipe.queuedBytes -= head.data.length;
      if (pipe.direction === 'toTarget') this.counters.bytesToTarget += head.data.length;
      else this.counters.bytesToClient += head.data.length;
      const more = pipe.sink.write(head.data);
      if (pipe.pausedByUs && pipe.queuedBytes <= this.maxBufferedBytes / 2) {
        pipe.pausedByUs = false;
        pipe.source.resume();
      }
      if (!more) {
        pipe.waitingDrain = true;
        pipe.sink.once('drain', () => {
          pipe.waitingDrain = false;
          this.pump(pipe);
        });
        return;
      }
    }
    if (pipe.sourceEnded && !pipe.endSent) {
      pipe.endSent = true;
      pipe.sink.end();
    }
  }

  private destroyPair(pair: Pair, reset: boolean): void {
    if (pair.closed) return;
    pair.closed = true;
    this.pairs.delete(pair);
    for (const pipe of [pair.toTarget, pair.toClient]) {
      if (pipe.timer !== undefined) clearTimeout(pipe.timer);
      pipe.timer = undefined;
      pipe.queue.length = 0;
      pipe.queuedBytes = 0;
    }
    for (const socket of [pair.client, pair.target]) {
      if (socket.destroyed) continue;
      if (!reset) {
        socket.destroy();
        continue;
      }
      try {
        socket.resetAndDestroy();
      } catch {
        socket.destroy();
      }
    }
  }
}
