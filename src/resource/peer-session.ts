/**
 * The peer, as the state machine sees it: the control link's events become
 * machine events, and the machine's requests to the peer become typed
 * control-link requests whose answers come back as events. Also the bitmap
 * exchange and the data socket hand-over.
 */
import net from 'node:net';
import lz4 from 'lz4';
import { NraidError, PeerError } from '../errors';
import { ControlLink } from '../link/control-link';
import type { NativeTls } from '../link/tls';
import * as limits from '../limits';
import { NodeState } from '../protocol/control';
import { DataPlane } from './data-plane';
import { Effect, Event, PeerRequest, PeerView } from './machine';

type Dispatch = (event: Event) => void;

export interface PeerSessionOptions {
  link: ControlLink;
  plane: DataPlane;
  granularityBytes: number;
  dispatch: Dispatch;
  /** Who holds the exposed device (for a switchover the peer asks for). */
  holder: () => string | null;
  /** The peer changed its config: reload ours. */
  onAdjust: () => void;
  /** How long the role hooks of a switchover may take on both nodes (config.roleHookBudgetMs): added to its waits. */
  roleHookBudgetMs?: number;
  /** The peer's operator paused (true) or resumed the resync. */
  onResyncPause?: (paused: boolean) => void;
  log: (level: 'info' | 'warn' | 'error', message: string, fields?: Record<string, unknown>) => void;
  /** TLS on the data link (src/link/tls.ts nativeTls); null or left out: the clear. */
  dataLinkTls?: NativeTls | null;
}

export function peerView(state: NodeState): PeerView {
  return { role: state.role, disk: state.disk, uuids: { current: state.uuids.current, bitmap: state.uuids.bitmap, history: [state.uuids.history[0], state.uuids.history[1]] }, flags: state.flags };
}

function reason(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export class PeerSession {
  private readonly link: ControlLink;
  private readonly plane: DataPlane;
  private readonly dispatch: Dispatch;
  private nextSocketId = 1;
  /** The features of the current session (both Hellos offered them). */
  features: readonly string[] = [];
  private readonly sockets = new Map<number, net.Socket>();
  private nextToken = 1;
  private readonly answers = new Map<number, { resolve: (body: unknown) => void; reject: (error: Error) => void }>();

  constructor(private readonly options: PeerSessionOptions) {
    this.link = options.link;
    this.plane = options.plane;
    this.dispatch = options.dispatch;
    const link = this.link;
    link.on('connectionState', (state) => this.dispatch({ type: 'connection', state }));
    link.on('connected', (info) => this.dispatch({ type: 'session-up', sessionId: info.id, dialer: info.dialer, peer: peerView(info.peerState) }));
    link.on('peerState', (state) => this.dispatch({ type: 'peer-state', peer: peerView(state) }));
    link.on('disconnected', (event) => {
      // At once, not behind queued events: a flush or drain waiting on the peer must fail now.
      this.plane.detach(event.reason);
      this.failAnswers(event.reason);
      this.dispatch({ type: 'session-down', reason: event.reason });
    });
    // Only what a peer that proved the secret (or the one we dialed) said becomes lastLinkError:
    // anonymous connections are counted and logged by the link, and change nothing here.
    link.on('refused', (event) => {
      if (event.trusted) this.dispatch({ type: 'link-refused', reason: event.reason });
    });
    link.on('dataSocket', (socket, info) => this.dispatch({ type: 'data-socket', sessionId: info.id, socketId: this.park(socket) }));
    link.on('connected', (info) => (this.features = info.features));
    link.on('notice', (notice) => {
      // The operator's pause is the daemon's (resync-control.ts), not the machine's.
      if (notice.kind === 'resyncPause') {
        this.options.onResyncPause?.(notice.paused);
        return;
      }
      if (notice.kind === 'adjust') this.options.onAdjust();
      this.dispatch({ type: 'peer-notice', notice });
    });
    // Read a chunk at a time as the answer leaves (bitmap-chunks.ts), into one buffer per answer:
    // never a whole copy in JS, and no trail of per-chunk garbage.
    link.onRequest('bitmap', () => {
      const scratch = Buffer.allocUnsafe(limits.bitmapChunkBytesMax);
      return {
        granularityBytes: this.options.granularityBytes,
        sizeBytes: this.plane.bitmapBytes(),
        read: (offsetBytes: number, lengthBytes: number) => this.plane.bitmapWords(offsetBytes, lengthBytes, scratch),
      };
    });
    link.onRequest('splitBrainFacts', () => this.ask({ kind: 'splitBrainFacts' }) as never);
    link.onRequest('promotePrepare', (body) => this.ask({ kind: 'promotePrepare', requestId: body.requestId, current: body.current }) as never);
    link.onRequest('switchover', () => this.ask({ kind: 'switchover', holder: this.options.holder() }) as never);
    link.onRequest('switchoverPromote', (body) => this.ask({ kind: 'switchoverPromote', current: body.current }) as never);
    link.onRequest('resyncStart', (body) => this.ask({ kind: 'resyncStart', bytes: body.bytes, current: body.current, history: body.history }) as never);
  }

  /** A peer request goes to the machine; its `reply` effect answers it. */
  private ask(request: PeerRequest): Promise<unknown> {
    const token = this.nextToken++;
    return new Promise((resolve, reject) => {
      this.answers.set(token, { resolve, reject });
      this.dispatch({ type: 'peer-request', token, request });
    });
  }

  answer(token: number, body: unknown, error: NraidError | null): void {
    const waiter = this.answers.get(token);
    if (waiter === undefined) return;
    this.answers.delete(token);
    if (error !== null) waiter.reject(error);
    else waiter.resolve(body);
  }

  private failAnswers(why: string): void {
    for (const [token, waiter] of this.answers) {
      this.answers.delete(token);
      waiter.reject(new PeerError(`the session ended before this node answered: ${why}`));
    }
  }

  private park(socket: net.Socket): number {
    socket.on('error', () => {});
    const id = this.nextSocketId++;
    this.sockets.set(id, socket);
    return id;
  }

  /** Runs one peer-facing effect; false when the effect is not the peer's. */
  run(effect: Effect, protocol: 'A' | 'B' | 'C', lag: { maxLagBytes: number; maxLagMs: number }): boolean {
    const link = this.link;
    switch (effect.kind) {
      case 'send-state':
        link.sendState();
        return true;
      case 'notice':
        link.notice(effect.notice.kind, effect.notice as never);
        return true;
      case 'link-connect':
        link.connect();
        return true;
      case 'link-disconnect':
        link.disconnect(effect.reason);
        return true;
      case 'drop-session': {
        const want = link.connectionState !== 'StandAlone';
        link.disconnect(effect.reason);
        if (want) link.connect();
        return true;
      }
      case 'request-facts': {
        const sessionId = effect.sessionId;
        link.request('splitBrainFacts', {}).then(
          (facts) => this.dispatch({ type: 'peer-facts', sessionId, facts }),
          (error) => {
            this.options.log('warn', 'split brain: the peer left before answering', { error: reason(error) });
            this.dispatch({ type: 'peer-facts', sessionId, facts: null });
          },
        );
        return true;
      }
      case 'merge-peer-bitmap':
        void this.mergePeerBitmap(effect.sessionId, effect.all);
        return true;
      case 'request-promote': {
        const requestId = effect.requestId;
        link.request('promotePrepare', { requestId, current: effect.current }).then(
          (vote) => this.dispatch({ type: 'promote-vote', requestId, ok: vote.ok, reason: vote.reason }),
          (error) => this.dispatch({ type: 'promote-vote', requestId, ok: false, reason: `no answer: ${reason(error)}` }),
        );
        return true;
      }
      case 'request-switchover':
        link.request('switchover', {}, limits.switchoverTimeoutMs + (this.options.roleHookBudgetMs ?? 0)).then(
          () => this.dispatch({ type: 'switchover-reply', outcome: 'done', reason: '', error: null }),
          (error) => this.dispatch({ type: 'switchover-reply', outcome: 'refused', reason: reason(error), error: error instanceof NraidError ? error : null }),
        );
        return true;
      case 'request-switchover-promote':
        link.request('switchoverPromote', { current: effect.current }, limits.switchoverTimeoutMs + (this.options.roleHookBudgetMs ?? 0)).then(
          (vote) => this.dispatch({ type: 'switchover-reply', outcome: vote.ok ? 'done' : 'refused', reason: vote.reason, error: null }),
          (error) => this.dispatch({ type: 'switchover-reply', outcome: 'unknown', reason: reason(error), error: null }),
        );
        return true;
      case 'request-resync-start': {
        const sessionId = effect.sessionId;
        link.request('resyncStart', { bytes: BigInt(effect.bytes), current: effect.current, history: [effect.history[0], effect.history[1]] }).then(
          (reply) => this.dispatch({ type: 'resync-start-reply', sessionId, ok: reply.ok, reason: '' }),
          (error) => this.dispatch({ type: 'resync-start-reply', sessionId, ok: false, reason: reason(error) }),
        );
        return true;
      }
      case 'open-data': {
        const sessionId = effect.sessionId;
        link.openDataSocket().then(
          (socket) => this.dispatch({ type: 'data-socket', sessionId, socketId: this.park(socket) }),
          // openDataSocket drops the session itself on failure.
          (error) => this.options.log('warn', 'the data link did not open', { error: reason(error) }),
        );
        return true;
      }
      case 'discard-socket':
        this.sockets.get(effect.socketId)?.destroy();
        this.sockets.delete(effect.socketId);
        return true;
      case 'attach-data':
        this.dispatch({ type: 'data-attached', sessionId: effect.sessionId, error: this.attach(effect.socketId, effect.direction, effect.sendHelloFirst, effect.resyncAllowed, protocol, lag) });
        return true;
      default:
        return false;
    }
  }

  /** The source's side of the bitmap exchange: merged with the target's and durable before anything is sent. */
  private async mergePeerBitmap(sessionId: number, all: boolean): Promise<void> {
    try {
      if (all) this.plane.markAll();
      const expected = this.plane.bitmapBytes();
      // Merged part by part as it arrives (OR: a part merged before a later one fails only marks
      // more to resync), checked before the first part is merged.
      await this.link.request('bitmap', {}, limits.bitmapRequestTimeoutMs, {
        onBitmapPart: (part) => {
          if (part.granularityBytes !== this.options.granularityBytes || part.totalBytes !== expected) {
            throw new PeerError(
              `the peer's bitmap does not match: ${part.totalBytes} bytes at ${part.granularityBytes} bytes per bit, expected ${expected} at ${this.options.granularityBytes}`,
            );
          }
          this.plane.mergeBitmap(part.words, part.offsetBytes);
        },
      });
      await this.plane.persistBitmap(true);
      this.dispatch({ type: 'bitmap-merged', sessionId, error: null });
    } catch (error) {
      this.dispatch({ type: 'bitmap-merged', sessionId, error: reason(error) });
    }
  }

  private attach(socketId: number, mode: 'source' | 'target', sendHelloFirst: boolean, resyncAllowed: boolean, protocol: 'A' | 'B' | 'C', lag: { maxLagBytes: number; maxLagMs: number }): string | null {
    const socket = this.sockets.get(socketId);
    this.sockets.delete(socketId);
    const fd = (socket as unknown as { _handle?: { fd?: number } } | undefined)?._handle?.fd;
    try {
      if (socket === undefined || typeof fd !== 'number' || fd < 0) return 'the data socket has no file descriptor';
      this.plane.attach(fd, { mode, sendHelloFirst, protocol, maxLagBytes: lag.maxLagBytes, maxLagMs: lag.maxLagMs, resyncAllowed, tls: this.options.dataLinkTls ?? null });
      return null;
    } catch (error) {
      return `attaching the data link failed: ${reason(error)}`;
    } finally {
      socket?.destroy();
    }
  }

  /** Cuts both links as a network failure would (fault points in tests). */
  cut(why: string): void {
    this.link.cut(why);
  }

  discardAll(): void {
    for (const socket of this.sockets.values()) socket.destroy();
    this.sockets.clear();
  }
}
