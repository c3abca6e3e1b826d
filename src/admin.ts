/**
 * The admin socket: the CLI talks to its node's daemon over a Unix socket
 * (mode 0600) in the run directory. Frames are a u32 little-endian length and
 * a msgpack body; a request is answered by exactly one reply, except `events`,
 * which streams event frames until the client hangs up.
 */
import fs from 'node:fs';
import net from 'node:net';
import { pack, unpack } from 'msgpackr';
import { ErrorReply, NotUpError, ProtocolError, RemoteError, errorReply } from './errors';

export const ADMIN_FRAME_BYTES_MAX = 4 << 20;
const FRAME_HEADER_BYTES = 4;

export interface AdminRequest {
  id: number;
  command: string;
  args: Record<string, unknown>;
}

export interface AdminReply {
  id: number;
  ok: boolean;
  result?: unknown;
  error?: ErrorReply;
  /** For streaming commands: one event; the reply with `ok` ends nothing. */
  event?: unknown;
}

export function encodeFrame(body: unknown): Buffer {
  const payload = pack(body);
  if (payload.length > ADMIN_FRAME_BYTES_MAX) {
    throw new ProtocolError(`admin frame of ${payload.length} bytes exceeds the limit of ${ADMIN_FRAME_BYTES_MAX}`);
  }
  const header = Buffer.alloc(FRAME_HEADER_BYTES);
  header.writeUInt32LE(payload.length, 0);
  return Buffer.concat([header, payload]);
}

/** Splits a byte stream into msgpack frames; throws ProtocolError on an oversized length. */
export class FrameReader {
  private pending: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): unknown[] {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const frames: unknown[] = [];
    while (this.pending.length >= FRAME_HEADER_BYTES) {
      const length = this.pending.readUInt32LE(0);
      if (length > ADMIN_FRAME_BYTES_MAX) {
        throw new ProtocolError(`admin frame length ${length} exceeds the limit of ${ADMIN_FRAME_BYTES_MAX}`);
      }
      if (this.pending.length < FRAME_HEADER_BYTES + length) break;
      frames.push(unpack(this.pending.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + length)));
      this.pending = this.pending.subarray(FRAME_HEADER_BYTES + length);
    }
    return frames;
  }
}

export type AdminHandler = (args: Record<string, unknown>, stream: AdminStream) => Promise<unknown> | unknown;

/** What a handler of a streaming command uses to send events; `closed` tells when the client left. */
export interface AdminStream {
  send(event: unknown): void;
  readonly closed: Promise<void>;
}

export class AdminServer {
  private readonly server: net.Server;
  private readonly handlers = new Map<string, AdminHandler>();
  private readonly sockets = new Set<net.Socket>();

  constructor(private readonly socketPath: string) {
    this.server = net.createServer((socket) => this.accept(socket));
  }

  on(command: string, handler: AdminHandler): void {
    this.handlers.set(command, handler);
  }

  async listen(): Promise<void> {
    fs.rmSync(this.socketPath, { force: true });
    const umask = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        this.server.once('error', reject);
        this.server.listen(this.socketPath, () => {
          this.server.off('error', reject);
          resolve();
        });
      });
    } finally {
      process.umask(umask);
    }
    fs.chmodSync(this.socketPath, 0o600);
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.end();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    fs.rmSync(this.socketPath, { force: true });
  }

  private accept(socket: net.Socket): void {
    this.sockets.add(socket);
    const reader = new FrameReader();
    let resolveClosed: () => void = () => {};
    const closed = new Promise<void>((resolve) => (resolveClosed = resolve));
    socket.on('close', () => {
      this.sockets.delete(socket);
      resolveClosed();
    });
    socket.on('error', () => socket.destroy());
    socket.on('data', (chunk) => {
      let frames: unknown[];
      try {
        frames = reader.push(chunk);
      } catch {
        socket.destroy();
        return;
      }
      for (const frame of frames) void this.dispatch(socket, frame as AdminRequest, closed);
    });
  }

  private async dispatch(socket: net.Socket, request: AdminRequest, closed: Promise<void>): Promise<void> {
    const write = (reply: AdminReply) => {
      if (!socket.destroyed) socket.write(encodeFrame(reply));
    };
    const id = typeof request?.id === 'number' ? request.id : 0;
    const handler = typeof request?.command === 'string' ? this.handlers.get(request.command) : undefined;
    if (handler === undefined) {
      write({ id, ok: false, error: { code: 'NRAID_ERR_USAGE', message: `the daemon does not know the command "${String(request?.command)}"` } });
      return;
    }
    const stream: AdminStream = { send: (event) => write({ id, ok: true, event }), closed };
    try {
      const result = await handler(request.args ?? {}, stream);
      write({ id, ok: true, result });
    } catch (error) {
      write({ id, ok: false, error: errorReply(error) });
    }
  }
}

/** One request, one reply. Throws NotUpError when no daemon listens on the socket. */
export async function adminCall(
  socketPath: string,
  command: string,
  args: Record<string, unknown> = {},
  onEvent?: (event: unknown) => void,
  timeoutMs = 60_000,
): Promise<unknown> {
  const socket = await adminConnect(socketPath);
  return new Promise((resolve, reject) => {
    const reader = new FrameReader();
    const timer = timeoutMs > 0 ? setTimeout(() => fail(new ProtocolError(`the daemon did not answer "${command}" within ${timeoutMs} ms`)), timeoutMs) : null;
    let settled = false;
    const fail = (error: Error) => {
      if (settled) return;
      settled = true;
      if (timer) clearTimeout(timer);
      socket.destroy();
      reject(error);
    };
    socket.on('data', (chunk) => {
      let frames: unknown[];
      try {
        frames = reader.push(chunk);
      } catch (error) {
        fail(error as Error);
        return;
      }
      for (const frame of frames as AdminReply[]) {
        if (frame.event !== undefined) {
          onEvent?.(frame.event);
          continue;
        }
        if (settled) return;
        settled = true;
        if (timer) clearTimeout(timer);
        socket.end();
        if (frame.ok) resolve(frame.result);
        else reject(new RemoteError(frame.error ?? { code: 'NRAID_ERR_INTERNAL', message: 'empty error reply' }));
      }
    });
    socket.on('error', (error) => fail(error));
    socket.on('close', () => fail(new ProtocolError(`the daemon closed the admin socket before answering "${command}"`)));
    socket.write(encodeFrame({ id: 1, command, args } satisfies AdminRequest));
  });
}

export function adminConnect(socketPath: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath);
    socket.once('connect', () => {
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT' || error.code === 'ECONNREFUSED') {
        reject(new NotUpError(`no daemon answers on ${socketPath}`));
      } else {
        reject(error);
      }
    });
  });
}
