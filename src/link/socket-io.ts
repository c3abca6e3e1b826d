/**
 * Small socket helpers of the link: reading an exact prefix (preamble,
 * token) with a deadline, stopping a socket from reading so that its file
 * descriptor can be handed to native code with no byte taken by JS, and
 * closing gracefully with a bounded linger.
 */
import * as net from 'net';
import * as tls from 'tls';
import { socketLingerMs } from '../limits';

export type PrefixResult =
  | { ok: true; prefix: Buffer; rest: Buffer }
  | { ok: false; reason: 'timeout' | 'closed' | 'error'; receivedBytes: number; error?: Error };

/**
 * Reads exactly `sizeBytes` from `socket` (after `initial`, bytes already
 * read), then pauses the socket and calls `done` synchronously from the
 * 'data' handler, so that no later byte can be missed by whoever reads next.
 * Bytes that came with the prefix are in `rest`. On timeout, close or error
 * `done` gets the reason; the socket is left to the caller.
 */
export function readPrefix(
  socket: net.Socket,
  sizeBytes: number,
  initial: Buffer,
  timeoutMs: number,
  done: (result: PrefixResult) => void,
): void {
  const chunks: Buffer[] = initial.length > 0 ? [initial] : [];
  let receivedBytes = initial.length;
  let finished = false;

  const finish = (result: PrefixResult): void => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    socket.off('data', onData);
    socket.off('end', onEnd);
    socket.off('close', onEnd);
    socket.off('error', onError);
    socket.pause();
    done(result);
  };
  const tryFinish = (): boolean => {
    if (receivedBytes < sizeBytes) return false;
    const all = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
    finish({ ok: true, prefix: all.subarray(0, sizeBytes), rest: all.subarray(sizeBytes) });
    return true;
  };
  const onData = (chunk: Buffer): void => {
    chunks.push(chunk);
    receivedBytes += chunk.length;
    tryFinish();
  };
  const onEnd = (): void => finish({ ok: false, reason: 'closed', receivedBytes });
  const onError = (error: Error): void => finish({ ok: false, reason: 'error', receivedBytes, error });
  const timer = setTimeout(() => finish({ ok: false, reason: 'timeout', receivedBytes }), timeoutMs);

  if (tryFinish()) return;
  socket.on('data', onData);
  socket.on('end', onEnd);
  socket.on('close', onEnd);
  socket.on('error', onError);
  socket.resume();
}

interface HandleWithReading {
  reading?: boolean;
  readStop?: () => number;
}

/**
 * Stops the socket reading from its file descriptor: paused, and the libuv
 * handle's read stopped (what net does itself for `pauseOnConnect`), so
 * bytes that arrive stay in the kernel for whoever owns the fd next. The
 * stream's own "a read is pending" flag is cleared too, or a later
 * `resume()` would wait forever for a read that was stopped.
 *
 * Call it from a later event loop turn than the last 'data' event: right
 * after one, the stream schedules (nextTick) one more read start.
 */
export function stopReading(socket: net.Socket): void {
  socket.pause();
  const internals = socket as unknown as { _handle?: HandleWithReading | null; _readableState?: { reading: boolean } };
  const handle = internals._handle;
  if (handle && handle.reading && handle.readStop) {
    handle.reading = false;
    handle.readStop();
    if (internals._readableState) internals._readableState.reading = false;
  }
}

/**
 * Closes a socket gracefully: bytes already written (our Auth, a Goodbye)
 * still reach the peer, what the peer still sends is read and dropped so the
 * close ends in FIN rather than RST, and after socketLingerMs it is
 * destroyed whatever the peer does.
 */
export function closeSocket(socket: net.Socket, lingerMs: number = socketLingerMs): void {
  if (socket.destroyed) return;
  socket.removeAllListeners('data');
  socket.on('data', () => undefined);
  socket.on('error', () => undefined);
  const timer = setTimeout(() => socket.destroy(), lingerMs);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
  socket.resume();
  socket.end();
}

/**
 * Resets the connection (RST), as a network failure would. A TLS socket has no
 * TCP handle of its own to reset (Node throws ERR_INVALID_HANDLE_TYPE): it is
 * destroyed, which closes the TCP connection under it at once.
 */
export function resetSocket(socket: net.Socket): void {
  if (socket instanceof tls.TLSSocket) socket.destroy();
  else socket.resetAndDestroy();
}

/** "host:port" of the far end, for logs. */
export function remoteOf(socket: net.Socket): string {
  return `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
}
