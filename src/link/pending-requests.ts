/**
 * The asking side of a control session's requests: request ids, the limit on
 * requests waiting, a timeout per request, matching each Response to its
 * request, and putting a chunked bitmap answer back together (and checking
 * it) before it resolves, or handing its checked parts to the request's
 * onBitmapPart sink as they arrive.
 */
import { PeerError, ProtocolError, RemoteError } from '../errors';
import { controlRequestsPendingMax } from '../limits';
import { BitmapAssembler } from '../protocol/bitmap-chunks';
import { BitmapReply, ControlRequestKind, ControlRequests, Request, RequestOptions, Response } from '../protocol/control';
import { LinkLog } from './session-types';

interface PendingRequest {
  kind: ControlRequestKind;
  resolve: (answer: unknown) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
  /** For a bitmap request: the chunks so far. */
  assembler: BitmapAssembler | null;
}

export class PendingRequests {
  private nextRequestId = 1;
  private readonly pending = new Map<number, PendingRequest>();

  constructor(private readonly peerName: string, private readonly log: LinkLog) {}

  /**
   * Gives the request an id, hands it to `send` and resolves with the peer's
   * answer; rejects with RemoteError (the peer's handler threw), PeerError
   * (too many waiting, timeout) or ProtocolError (an answer that breaks the
   * protocol), or with what `send` throws.
   */
  ask<K extends ControlRequestKind>(
    kind: K,
    body: ControlRequests[K]['request'],
    timeoutMs: number,
    send: (request: Request) => void,
    options: RequestOptions = {},
  ): Promise<ControlRequests[K]['response']> {
    if (this.pending.size >= controlRequestsPendingMax) {
      return Promise.reject(
        new PeerError(
          `cannot send request '${kind}' to ${this.peerName}: ${controlRequestsPendingMax} requests already wait ` +
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
            `expected an answer from ${this.peerName} to request '${kind}' within ${timeoutMs} ms, found ` +
              'none; the peer is slow or its handler hangs',
          ),
        );
      }, timeoutMs);
      const assembler = kind === 'bitmap' ? new BitmapAssembler(options.onBitmapPart) : null;
      this.pending.set(id, { kind, resolve: resolve as (answer: unknown) => void, reject, timer, assembler });
      try {
        send({ id, kind, body } as Request);
      } catch (error) {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(error);
      }
    });
  }

  /** Settles the request a Response answers (for a bitmap, once its last chunk is in). */
  onResponse(response: Response): void {
    const pending = this.pending.get(response.id);
    if (!pending) {
      // Once per answer: the rest of an abandoned bitmap's chunks pass in silence.
      const laterChunk = response.ok && response.answer.kind === 'bitmap' && response.answer.body.offsetBytes > 0;
      if (!laterChunk) this.log('debug', 'response to a request that is no longer waiting (timed out or failed)', { id: response.id });
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
          `expected ${this.peerName}'s answer to request '${pending.kind}' (id ${response.id}), found an answer ` +
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

  /** Rejects every request still waiting: the session ended for `reason`. */
  rejectAll(reason: string): void {
    for (const [id, pending] of this.pending) {
      clearTimeout(pending.timer);
      pending.reject(new PeerError(`the session with ${this.peerName} ended before it answered request '${pending.kind}' (id ${id}): ${reason}`));
    }
    this.pending.clear();
  }
}
