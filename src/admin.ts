/**
 * The admin socket: the CLI talks to its node's daemon over a Unix socket
 * (mode 0600) in the run directory. Frames are a u32 little-endian length and
 * a msgpack body; a request is answered by exactly one reply, except `events`,
 * which streams event frames until the client hangs up.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { pack, unpack } from 'msgpackr';
import type { NodeConfig } from './config';
import { ErrorReply, NotUpError, ProtocolError, RemoteError, TimeoutError, UsageError, errorReply, isErrnoException, systemError, toNraidError } from './errors';
import { adminCallTimeoutMsDefault, adminFrameBytesMax } from './limits';

export const ADMIN_SOCKET = 'admin.sock';

/** The admin socket of a node's daemon, in its run directory. */
export function adminSocketPath(node: NodeConfig): string {
  return path.join(node.runDir, ADMIN_SOCKET);
}

/** The u32 little-endian length before each msgpack body. */
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
  if (payload.length > adminFrameBytesMax) {
    throw new ProtocolError(
      `admin frame: expected at most ${adminFrameBytesMax} bytes (limits.adminFrameBytesMax), found ${payload.length}; ` +
        'the reply is too large to send, which is a bug: report it with the command',
    );
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
      if (length > adminFrameBytesMax) {
        throw new ProtocolError(
          `admin frame: expected a length of at most ${adminFrameBytesMax} bytes, found ${length}; ` +
            'the other end does not speak the nraid admin protocol (is the socket path right?)',
        );
      }
      if (this.pending.length < FRAME_HEADER_BYTES + length) break;
      frames.push(decodeBody(this.pending.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + length)));
      this.pending = this.pending.subarray(FRAME_HEADER_BYTES + length);
    }
    return frames;
  }
}

function decodeBody(body: Buffer): unknown {
  try {
    return unpack(body);
  } catch (error) {
    throw new ProtocolError(
      `admin frame: expected a msgpack body of ${body.length} bytes, found bytes that do not decode (${(error as Error).message}); ` +
        'the other end does not speak the nraid admin protocol (is the socket path right?)',
      { cause: error },
    );
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
        const refused = (error: Error) =>
          reject(
            isErrnoException(error)
              ? systemError(`cannot listen on the admin socket ${this.socketPath}`, error, 'check that the run directory exists and is writable by root')
              : toNraidError(error),
          );
        this.server.once('error', refused);
        this.server.listen(this.socketPath, () => {
          this.server.off('error', refused);
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
      // dispatch settles every failure itself; a rejection left over would end the daemon.
      for (const frame of frames) void this.dispatch(socket, frame as AdminRequest, closed).catch(() => socket.destroy());
    });
  }

  private async dispatch(socket: net.Socket, request: AdminRequest, closed: Promise<void>): Promise<void> {
    const id = typeof request?.id === 'number' ? request.id : 0;
    const write = (reply: AdminReply) => {
      if (socket.destroyed) return;
      let frame: Buffer;
      try {
        frame = encodeFrame(reply);
      } catch (error) {
        // A reply that cannot be sent (too large) becomes an error reply that can.
        frame = encodeFrame({ id, ok: false, error: errorReply(error) });
      }
      socket.write(frame);
    };
    const handler = typeof request?.command === 'string' ? this.handlers.get(request.command) : undefined;
    if (handler === undefined) {
      const unknown = new UsageError(
        `the daemon does not know the command ${describeCommand(request?.command)}; are the CLI and the daemon the same nraid version? restart the daemon after an upgrade`,
      );
      write({ id, ok: false, error: errorReply(unknown) });
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

/** Command names quoted in replies at most this long: the name comes from the client, up to a whole frame. */
const COMMAND_QUOTED_CHARS_MAX = 64;

/** `"status"`, or the start of a long name, or what was sent instead of a name. */
function describeCommand(command: unknown): string {
  if (typeof command !== 'string') return `(a ${command === null ? 'null' : typeof command} where the command name belongs)`;
  if (command.length <= COMMAND_QUOTED_CHARS_MAX) return JSON.stringify(command);
  return `${JSON.stringify(command.slice(0, COMMAND_QUOTED_CHARS_MAX))}... (${command.length} characters)`;
}

/** One request, one reply. Throws NotUpError when no daemon listens on the socket. */
export async function adminCall(
  socketPath: string,
  command: string,
  args: Record<string, unknown> = {},
  onEvent?: (event: unknown) => void,
  timeoutMs = adminCallTimeoutMsDefault,
): Promise<unknown> {
  const socket = await adminConnect(socketPath);
  return new Promise((resolve, reject) => {
    const reader = new FrameReader();
    const timer = timeoutMs > 0 ? setTimeout(() => fail(new TimeoutError(`the daemon did not answer "${command}" within ${timeoutMs} ms; see its log (daemon.log in the run directory)`)), timeoutMs) : null;
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
    socket.on('error', (error) =>
      fail(isErrnoException(error) ? systemError(`admin socket ${socketPath}`, error, 'the daemon may have exited; see its log') : toNraidError(error)),
    );
    socket.on('close', () =>
      fail(new ProtocolError(`the daemon closed the admin socket before answering "${command}"; it may have exited: see its log (daemon.log in the run directory)`)),
    );
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
      } else if (isErrnoException(error)) {
        reject(systemError(`cannot connect to the admin socket ${socketPath}`, error, error.code === 'EACCES' ? 'run nraid as root' : 'check the run directory'));
      } else {
        reject(toNraidError(error));
      }
    });
  });
}
