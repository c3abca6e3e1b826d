/**
 * The sending side of a control session: frames leave in the order they were
 * sent. A whole frame is written at once unless a streamed answer (the chunks
 * of a bitmap, made one per socket drain so a large one neither floods the
 * send queue nor blocks the event loop) is waiting for a drain; then it queues
 * behind it. A peer that stops reading, so that more than
 * controlSendQueueBytesMax wait, fails the session.
 */
import * as net from 'net';
import { PeerError } from '../errors';
import { controlSendQueueBytesMax } from '../limits';

/** What waits to be written: a whole frame, or the frames of a streamed answer, made one at a time. */
export type Outgoing = Buffer | Iterator<Buffer, void>;

export class SendQueue {
  /** Not yet handed to the socket, in order; non-empty only while a streamed answer waits for a drain. */
  private readonly outbox: Outgoing[] = [];
  private outboxBytes = 0;
  private awaitingDrain = false;

  /**
   * `stopped` says when the session has closed (nothing more is written);
   * `fail` ends the session, with what a streamed answer threw or the
   * PeerError of a peer that does not read; `peer` names it ("name at host:port").
   */
  constructor(
    private readonly socket: net.Socket,
    private readonly peer: string,
    private readonly stopped: () => boolean,
    private readonly fail: (error: unknown) => void,
  ) {}

  /** Writes in order: a frame at once unless a streamed answer waits for a drain; a stream one frame per drain. */
  enqueue(item: Outgoing): void {
    this.outbox.push(item);
    if (Buffer.isBuffer(item)) this.outboxBytes += item.length;
    this.pump();
  }

  /** Drops everything not yet written (the session is closing). */
  clear(): void {
    this.outbox.length = 0;
    this.outboxBytes = 0;
  }

  private pump(): void {
    while (!this.awaitingDrain && this.outbox.length > 0) {
      if (this.stopped() || this.socket.destroyed) return;
      const head = this.outbox[0]!;
      let frame: Buffer;
      if (Buffer.isBuffer(head)) {
        this.outbox.shift();
        this.outboxBytes -= head.length;
        frame = head;
      } else {
        let next: IteratorResult<Buffer, void>;
        try {
          next = head.next();
        } catch (error) {
          // A streamed answer that cannot go on: the asker would wait for chunks that never come.
          this.fail(error);
          return;
        }
        if (next.done) {
          this.outbox.shift();
          continue;
        }
        frame = next.value;
      }
      const flowing = this.socket.write(frame);
      if (!flowing && !Buffer.isBuffer(head)) {
        this.awaitingDrain = true;
        this.socket.once('drain', () => {
          this.awaitingDrain = false;
          this.pump();
        });
      }
    }
    const queuedBytes = this.socket.writableLength + this.outboxBytes;
    if (queuedBytes > controlSendQueueBytesMax) {
      this.fail(
        new PeerError(
          `${this.peer} is not reading: ${queuedBytes} bytes wait to be ` +
            `sent, more than ${controlSendQueueBytesMax}; dropping the session`,
        ),
      );
    }
  }
}
