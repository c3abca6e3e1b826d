/**
 * The fault proxy, proven with real sockets on 127.0.0.1: a target server
 * behind it (echo, or one that hands the test its side of each connection),
 * and for every fault a check that it happens, and only when armed.
 */
import * as crypto from 'crypto';
import * as net from 'net';
import { FaultProxy } from '../harness/fault-proxy';
import { sleep } from '../harness/helpers';

interface Target {
  port: number;
  /** Server-side sockets, in accept order. */
  sockets: net.Socket[];
  /** Bytes received per server-side socket. */
  received: Buffer[][];
  ended: boolean[];
  closed: boolean[];
  close(): Promise<void>;
}

async function startTarget(mode: 'echo' | 'hold'): Promise<Target> {
  const t: Target = {
    port: 0,
    sockets: [],
    received: [],
    ended: [],
    closed: [],
    close: async () => {
      for (const s of t.sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  const server = net.createServer({ allowHalfOpen: mode === 'hold' }, (s) => {
    const i = t.sockets.length;
    t.sockets.push(s);
    t.received.push([]);
    t.ended.push(false);
    t.closed.push(false);
    s.on('error', () => undefined);
    s.on('data', (d: Buffer) => {
      t.received[i].push(Buffer.from(d));
      if (mode === 'echo') s.write(d);
    });
    s.on('end', () => {
      t.ended[i] = true;
    });
    s.on('close', () => {
      t.closed[i] = true;
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.port = (server.address() as net.AddressInfo).port;
  return t;
}

interface Client {
  socket: net.Socket;
  chunks: Buffer[];
  ended: boolean;
  closed: boolean;
  error: NodeJS.ErrnoException | undefined;
  bytes(): Buffer;
}

function connect(port: number): Promise<Client> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
    const c: Client = {
      socket,
      chunks: [],
      ended: false,
      closed: false,
      error: undefined,
      bytes: () => Buffer.concat(c.chunks),
    };
    socket.on('data', (d: Buffer) => c.chunks.push(d));
    socket.on('end', () => {
      c.ended = true;
    });
    socket.on('close', () => {
      c.closed = true;
    });
    socket.on('error', (e: NodeJS.ErrnoException) => {
      c.error = e;
    });
    socket.once('connect', () => resolve(c));
    socket.once('error', reject);
  });
}

async function until(what: string, cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const total = (bufs: Buffer[]) => bufs.reduce((n, b) => n + b.length, 0);

/** Offsets at which two equal-length buffers differ. */
function diffOffsets(a: Buffer, b: Buffer): number[] {
  expect(a.length).toBe(b.length);
  const out: number[] = [];
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) out.push(i);
  return out;
}

describe('FaultProxy', () => {
  let target!: Target;
  let proxy!: FaultProxy;
  let port = 0;
  const clients: Client[] = [];

  async function client(): Promise<Client> {
    const c = await connect(port);
    clients.push(c);
    return c;
  }

  async function setup(mode: 'echo' | 'hold', maxBufferedBytes?: number): Promise<void> {
    target = await startTarget(mode);
    proxy = new FaultProxy({ targetHost: '127.0.0.1', targetPort: target.port, maxBufferedBytes });
    port = await proxy.listen();
  }

  afterEach(async () => {
    for (const c of clients.splice(0)) c.socket.destroy();
    await proxy?.close();
    await target?.close();
    proxy = undefined as unknown as FaultProxy;
    target = undefined as unknown as Target;
  });

  test('forwards bytes unchanged both ways, forwards half-close, and counts', async () => {
    await setup('echo');
    expect(port).toBeGreaterThan(0);
    expect(port).not.toBe(target.port);
    const c = await client();
    const payload = crypto.randomBytes(4 * 1024 * 1024);
    c.socket.end(payload);
    await until('echo of 4 MiB and FIN', () => c.ended);
    expect(c.bytes().equals(payload)).toBe(true);
    expect(target.ended[0]).toBe(true);
    const s = proxy.stats();
    expect(s.bytesToTarget).toBe(payload.length);
    expect(s.bytesToClient).toBe(payload.length);
    expect(s.bytesFromClient).toBe(payload.length);
    expect(s.connectionsAccepted).toBe(1);
    expect(s.bytesBuffered).toBe(0);
    expect(proxy.flips).toEqual([]);
    await until('both sides closed', () => c.closed && target.closed[0]);
    await proxy.waitFor((x) => x.connectionsActive === 0);
  });

  test('cut() destroys every proxied connection at once and the proxy keeps serving', async () => {
    await setup('echo');
    const a = await client();
    const b = await client();
    await until('two connections at the target', () => target.sockets.length === 2);
    expect(proxy.stats().connectionsActive).toBe(2);

    expect(proxy.cut()).toBe(2);

    await until('both clients closed', () => a.closed && b.closed);
    await until('both target sockets closed', () => target.closed[0] && target.closed[1]);
    expect(a.error?.code).toBe('ECONNRESET');
    expect(b.error?.code).toBe('ECONNRESET');
    const s = proxy.stats();
    expect(s.cuts).toBe(1);
    expect(s.connectionsCut).toBe(2);
    expect(s.connectionsActive).toBe(0);

    const c = await client();
    c.socket.write('after the cut');
    await until('echo after the cut', () => c.bytes().toString() === 'after the cut');
    expect(proxy.stats().connectionsAccepted).toBe(3);
  });

  test('cut({ reset: false }) closes with FIN instead of RST', async () => {
    await setup('echo');
    const a = await client();
    await until('connection at the target', () => target.sockets.length === 1);
    proxy.cut({ reset: false });
    // The test client allows half-open sockets, so a FIN shows as 'end', not 'close'.
    await until('client saw FIN', () => a.ended);
    await until('target side closed', () => target.closed[0]);
    expect(a.error).toBeUndefined();
  });

  test('refuse(true) resets new connections before they reach the target; existing ones go on', async () => {
    await setup('echo');
    const old = await client();
    await until('first connection at the target', () => target.sockets.length === 1);

    proxy.refuse(true);
    // The kernel completes the handshake before the proxy resets it, so the
    // client sees either a failed connect or a reset right after connecting.
    const refused = await connect(port).then(
      (c) => until('refused connection reset', () => c.closed).then(() => c.error?.code),
      (e: NodeJS.ErrnoException) => e.code,
    );
    expect(refused).toBe('ECONNRESET');
    await sleep(50);
    expect(target.sockets.length).toBe(1);
    expect(proxy.stats().connectionsRefused).toBe(1);
    expect(proxy.stats().connectionsAccepted).toBe(1);

    old.socket.write('still here');
    await until('old connection still echoes', () => old.bytes().toString() === 'still here');

    proxy.refuse(false);
    const fresh = await client();
    fresh.socket.write('welcome back');
    await until('new connection echoes', () => fresh.bytes().toString() === 'welcome back');
    expect(target.sockets.length).toBe(2);
  });

  test('stall(true) forwards nothing in either direction; stall(false) delivers all of it in order', async () => {
    await setup('hold');
    const c = await client();
    await until('connection at the target', () => target.sockets.length === 1);
    const server = target.sockets[0];

    proxy.stall(true);
    const up: Buffer[] = [];
    const down: Buffer[] = [];
    for (let i = 0; i < 20; i++) {
      const u = crypto.randomBytes(1000 + i);
      const d = crypto.randomBytes(2000 + i);
      up.push(u);
      down.push(d);
      c.socket.write(u);
      server.write(d);
      await sleep(5);
    }
    await proxy.waitFor((s) => s.bytesFromClient === total(up) && s.bytesFromTarget === total(down));
    await sleep(200);
    expect(total(target.received[0])).toBe(0);
    expect(c.chunks.length).toBe(0);
    expect(proxy.stats().bytesBuffered).toBe(total(up) + total(down));
    expect(proxy.stats().bytesToTarget).toBe(0);

    proxy.stall(false);
    await until('all bytes delivered', () => total(target.received[0]) === total(up) && total(c.chunks) === total(down));
    expect(Buffer.concat(target.received[0]).equals(Buffer.concat(up))).toBe(true);
    expect(c.bytes().equals(Buffer.concat(down))).toBe(true);
    expect(proxy.stats().bytesBuffered).toBe(0);
  });

  test('a stall beyond maxBufferedBytes pushes back on the sender and loses nothing', async () => {
    await setup('hold', 64 * 1024);
    const c = await client();
    await until('connection at the target', () => target.sockets.length === 1);
    proxy.stall(true);
    const payload = crypto.randomBytes(32 * 1024 * 1024);
    c.socket.write(payload);
    await sleep(500);
    const held = proxy.stats();
    // The proxy stopped reading; the rest waits in kernel buffers and in the client.
    expect(held.bytesFromClient).toBeLessThan(payload.length);
    expect(held.bytesBuffered).toBeLessThan(64 * 1024 + 4 * 1024 * 1024);
    expect(total(target.received[0])).toBe(0);
    proxy.stall(false);
    await until('all 32 MiB delivered', () => total(target.received[0]) === payload.length, 20_000);
    expect(Buffer.concat(target.received[0]).equals(payload)).toBe(true);
  });

  test('delay(ms) adds latency in each direction, keeps order, and delay(0) removes it', async () => {
    await setup('echo');
    const c = await client();
    const roundTrip = async (msg: string): Promise<number> => {
      const before = c.bytes().length;
      const t0 = Date.now();
      c.socket.write(msg);
      await until(`echo of ${msg}`, () => c.bytes().length === before + msg.length);
      return Date.now() - t0;
    };
    const fast = await roundTrip('warm-up');
    proxy.delay(150);
    const slow = await roundTrip('slow');
    expect(slow).toBeGreaterThanOrEqual(295); // 150 ms out, 150 ms back
    expect(slow).toBeLessThan(2000);

    const parts: string[] = [];
    for (let i = 0; i < 50; i++) {
      parts.push(`<${i}>`);
      c.socket.write(`<${i}>`);
      if (i % 10 === 0) await sleep(7);
    }
    const start = c.bytes().length;
    const expected = parts.join('');
    await until('50 delayed echoes', () => c.bytes().length === start + expected.length);
    expect(c.bytes().subarray(start).toString()).toBe(expected);

    proxy.delay(0);
    const again = await roundTrip('fast again');
    // Well under the 300 ms a delayed round trip takes, with room for a loaded machine.
    expect(again).toBeLessThan(200);
    expect(fast).toBeLessThan(200);
  });

  test('flipBits toTarget flips exactly the byte at afterBytes (counted from arming) and records it', async () => {
    await setup('hold');
    const first = await client();
    first.socket.write(Buffer.alloc(300));
    await until('300 bytes at the target', () => total(target.received[0] ?? []) === 300);
    first.socket.destroy();

    const c = await client();
    await until('second connection at the target', () => target.sockets.length === 2);
    c.socket.write(Buffer.alloc(100));
    await until('100 bytes on the second connection', () => total(target.received[1]) === 100);

    proxy.flipBits({ direction: 'toTarget', afterBytes: 1234, count: 1 });
    const payload = Buffer.alloc(10_000, 0x00);
    c.socket.write(payload);
    await until('payload at the target', () => total(target.received[1]) === 10_100);
    const got = Buffer.concat(target.received[1]).subarray(100);
    expect(diffOffsets(payload, got)).toEqual([1234]);
    expect(got[1234]).toBe(0x01);
    expect(proxy.flips).toEqual([
      {
        direction: 'toTarget',
        connectionId: 2,
        connectionOffset: 100 + 1234,
        streamOffset: 300 + 100 + 1234,
        bit: 0,
        before: 0x00,
        after: 0x01,
      },
    ]);
    expect(proxy.flipsPending('toTarget')).toBe(0);

    // Disarmed after `count` flips: more traffic passes clean.
    c.socket.write(payload);
    await until('second payload at the target', () => total(target.received[1]) === 20_100);
    expect(diffOffsets(payload, Buffer.concat(target.received[1]).subarray(10_100))).toEqual([]);
  });

  test('flipBits with count 3 corrupts one bit in each of the next 3 chunks, then stops', async () => {
    await setup('hold');
    const c = await client();
    await until('connection at the target', () => target.sockets.length === 1);
    proxy.flipBits({ direction: 'toTarget', afterBytes: 10, count: 3, bit: 4 });
    const chunk = Buffer.alloc(1000, 0xaa);
    for (let i = 1; i <= 5; i++) {
      c.socket.write(chunk);
      // Wait for each chunk to arrive so the proxy sees five separate reads.
      await until(`chunk ${i}`, () => total(target.received[0]) === i * 1000);
    }
    const got = Buffer.concat(target.received[0]);
    const sent = Buffer.concat([chunk, chunk, chunk, chunk, chunk]);
    expect(diffOffsets(sent, got)).toEqual([10, 1000, 2000]);
    for (const off of [10, 1000, 2000]) expect(got[off]).toBe(0xaa ^ 0x10);
    expect(proxy.flips.map((f) => [f.connectionOffset, f.streamOffset, f.before, f.after])).toEqual([
      [10, 10, 0xaa, 0xba],
      [1000, 1000, 0xaa, 0xba],
      [2000, 2000, 0xaa, 0xba],
    ]);
    // The client -> target direction only: nothing came back corrupted.
    expect(proxy.flipsPending('toTarget')).toBe(0);
    expect(proxy.flipsPending('toClient')).toBe(0);
  });

  test('flipBits toClient corrupts the target -> client direction only', async () => {
    await setup('hold');
    const c = await client();
    await until('connection at the target', () => target.sockets.length === 1);
    proxy.flipBits({ direction: 'toClient', afterBytes: 4095, count: 1, bit: 7 });
    const up = Buffer.alloc(8192, 0xff);
    c.socket.write(up);
    const down = Buffer.alloc(8192, 0xff);
    target.sockets[0].write(down);
    await until('both directions delivered', () => total(c.chunks) === 8192 && total(target.received[0]) === 8192);
    expect(diffOffsets(down, c.bytes())).toEqual([4095]);
    expect(c.bytes()[4095]).toBe(0x7f);
    expect(diffOffsets(up, Buffer.concat(target.received[0]))).toEqual([]);
    expect(proxy.flips).toHaveLength(1);
    expect(proxy.flips[0]).toMatchObject({ direction: 'toClient', connectionOffset: 4095, before: 0xff, after: 0x7f });
  });

  test('a target that refuses connections resets the client and is counted', async () => {
    const closedPort = await new Promise<number>((resolve) => {
      const s = net.createServer();
      s.listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    target = await startTarget('echo');
    proxy = new FaultProxy({ targetHost: '127.0.0.1', targetPort: closedPort });
    port = await proxy.listen();
    const c = await client();
    await until('client closed', () => c.closed);
    expect(c.error?.code).toBe('ECONNRESET');
    expect(proxy.stats().targetConnectFailures).toBe(1);
  });

  test('close() drops live connections and stops listening', async () => {
    await setup('echo');
    const c = await client();
    await until('connection at the target', () => target.sockets.length === 1);
    await proxy.close();
    await until('client saw FIN', () => c.ended || c.closed);
    await until('target side closed', () => target.closed[0]);
    await expect(connect(port)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  });

  test('rejects a non-loopback listen address', () => {
    expect(() => new FaultProxy({ targetHost: '127.0.0.1', targetPort: 1, listenHost: '0.0.0.0' })).toThrow(/loopback/);
  });
});
