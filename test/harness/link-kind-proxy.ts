/**
 * A TCP proxy that tells nraid's control connection from its data connection
 * and delays each kind and direction on its own (DESIGN.md §7, §10). Every
 * nraid connection opens with 8 bytes naming its kind, "NRAIDCTL" (control)
 * or "NRAIDDAT" (data link); FaultProxy treats all connections alike, so it
 * cannot hold back only the control link while resync data flows. This one
 * can:
 *
 *   const proxy = new LinkKindProxy({ targetHost: '127.0.0.1', targetPort: beta.port });
 *   await proxy.listen();                       // give alpha `127.0.0.1:${proxy.port}` for beta
 *   proxy.onConnection = (kind) => { if (kind === 'data') proxy.delay('control', 'toTarget', 3000); };
 *   proxy.stats();                              // connections per kind, bytes per kind and direction
 *   await proxy.close();
 *
 * A delay applies to bytes that arrive after the call, also on connections
 * already open; order within a connection and direction is kept (a chunk
 * waits for the ones before it). Back-pressure passes through: while a sink
 * does not drain, its source is paused. Only loopback addresses are used.
 */
import * as net from 'net';
import { performance } from 'perf_hooks';
import { CleanupHandle, registerCleanup } from './cleanup';

export type LinkKind = 'control' | 'data' | 'unknown';
export type LinkDirection = 'toTarget' | 'toClient';

const PREAMBLE_BYTES = 8;
const PREAMBLES: Record<string, LinkKind> = { NRAIDCTL: 'control', NRAIDDAT: 'data' };
const KINDS: readonly LinkKind[] = ['control', 'data', 'unknown'];

export interface LinkKindProxyOptions {
  targetHost: string;
  targetPort: number;
}

export interface LinkKindProxyStats {
  connections: Record<LinkKind, number>;
  /** Bytes forwarded, per kind and direction. */
  bytes: Record<LinkKind, Record<LinkDirection, number>>;
  /** Bytes received but not yet forwarded. */
  bytesQueued: number;
  active: number;
}

interface Chunk {
  data: Buffer;
  readyAtMs: number;
}

class Leg {
  readonly queue: Chunk[] = [];
  timer: NodeJS.Timeout | undefined;
  waitingDrain = false;
  sourceEnded = false;

  constructor(
    readonly direction: LinkDirection,
    readonly source: net.Socket,
    readonly sink: net.Socket,
  ) {}
}

export class LinkKindProxy {
  /** Called once per accepted connection when its kind is known (after its first 8 bytes). */
  onConnection: ((kind: LinkKind) => void) | undefined;
  private server: net.Server | undefined;
  private cleanupHandle: CleanupHandle | undefined;
  private listenPort = 0;
  private readonly sockets = new Set<net.Socket>();
  private readonly delays: Record<LinkKind, Record<LinkDirection, number>> = {
    control: { toTarget: 0, toClient: 0 },
    data: { toTarget: 0, toClient: 0 },
    unknown: { toTarget: 0, toClient: 0 },
  };
  private readonly counters: LinkKindProxyStats = {
    connections: { control: 0, data: 0, unknown: 0 },
    bytes: {
      control: { toTarget: 0, toClient: 0 },
      data: { toTarget: 0, toClient: 0 },
      unknown: { toTarget: 0, toClient: 0 },
    },
    bytesQueued: 0,
    active: 0,
  };

  constructor(private readonly opts: LinkKindProxyOptions) {
    if (!['127.0.0.1', 'localhost', '::1'].includes(opts.targetHost)) {
      throw new Error(`LinkKindProxy forwards to loopback only, got ${opts.targetHost}`);
    }
  }

  get port(): number {
    if (this.listenPort === 0) throw new Error('LinkKindProxy: listen() first');
    return this.listenPort;
  }

  /** Starts listening on 127.0.0.1 (a free port); resolves with the port. */
  async listen(): Promise<number> {
    const server = net.createServer((client) => this.accept(client));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    this.listenPort = (server.address() as net.AddressInfo).port;
    this.cleanupHandle = registerCleanup(
      `link-kind proxy 127.0.0.1:${this.listenPort}`,
      () => this.shutdown(),
      () => this.destroyAll(),
    );
    return this.listenPort;
  }

  /** Holds back bytes of `kind` going `direction` by `ms` from their arrival (0: none). */
  delay(kind: LinkKind, direction: LinkDirection, ms: number): void {
    if (!Number.isFinite(ms) || ms < 0) throw new Error(`LinkKindProxy: bad delay ${ms}`);
    this.delays[kind][direction] = ms;
  }

  stats(): LinkKindProxyStats {
    return JSON.parse(JSON.stringify(this.counters)) as LinkKindProxyStats;
  }

  async close(): Promise<void> {
    if (this.cleanupHandle) await this.cleanupHandle.run();
    else await this.shutdown();
  }

  private destroyAll(): void {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    this.server?.close();
  }

  private async shutdown(): Promise<void> {
    const server = this.server;
    this.destroyAll();
    if (server?.listening) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private accept(client: net.Socket): void {
    const target = net.connect({ host: this.opts.targetHost, port: this.opts.targetPort });
    this.sockets.add(client);
    this.sockets.add(target);
    this.counters.active++;
    let kind: LinkKind | undefined;
    let prefix = Buffer.alloc(0);
    let closed = false;
    const close = (): void => {
      if (closed) return;
      closed = true;
      this.counters.active--;
      for (const leg of [toTarget, toClient]) {
        if (leg.timer) clearTimeout(leg.timer);
        for (const c of leg.queue) this.counters.bytesQueued -= c.data.length;
        leg.queue.length = 0;
      }
      client.destroy();
      target.destroy();
      this.sockets.delete(client);
      this.sockets.delete(target);
    };
    const toTarget = new Leg('toTarget', client, target);
    const toClient = new Leg('toClient', target, client);
    const kindNow = (): LinkKind => kind ?? 'unknown';

    const pump = (leg: Leg): void => {
      if (closed || leg.waitingDrain) return;
      if (leg.timer) {
        clearTimeout(leg.timer);
        leg.timer = undefined;
      }
      while (leg.queue.length > 0) {
        const head = leg.queue[0];
        const waitMs = head.readyAtMs - performance.now();
        if (waitMs > 0) {
          leg.timer = setTimeout(() => pump(leg), Math.ceil(waitMs));
          return;
        }
        leg.queue.shift();
        this.counters.bytesQueued -= head.data.length;
        this.counters.bytes[kindNow()][leg.direction] += head.data.length;
        if (!leg.sink.write(head.data)) {
          leg.waitingDrain = true;
          leg.source.pause();
          leg.sink.once('drain', () => {
            leg.waitingDrain = false;
            leg.source.resume();
            pump(leg);
          });
          return;
        }
      }
      if (leg.sourceEnded) leg.sink.end();
    };

    const enqueue = (leg: Leg, data: Buffer): void => {
      this.counters.bytesQueued += data.length;
      leg.queue.push({ data, readyAtMs: performance.now() + this.delays[kindNow()][leg.direction] });
      pump(leg);
    };

    client.on('data', (data: Buffer) => {
      if (kind === undefined) {
        prefix = Buffer.concat([prefix, data]);
        if (prefix.length < PREAMBLE_BYTES) return;
        kind = PREAMBLES[prefix.subarray(0, PREAMBLE_BYTES).toString('latin1')] ?? 'unknown';
        this.counters.connections[kind]++;
        this.onConnection?.(kind);
        data = prefix;
      }
      enqueue(toTarget, data);
    });
    target.on('data', (data: Buffer) => enqueue(toClient, data));
    for (const leg of [toTarget, toClient]) {
      leg.source.on('end', () => {
        leg.sourceEnded = true;
        pump(leg);
      });
    }
    for (const s of [client, target]) {
      s.on('error', close);
      s.on('close', close);
    }
  }
}
