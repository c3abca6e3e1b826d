/**
 * A slow link the harness controls (issue 10, item 2): link-relay-process.js
 * run inside one namespace of a NetnsPair, relaying TCP from a listen address
 * there to the peer, and delaying, throttling, stalling, cutting or flipping
 * bits on command (JSON lines over its stdin). No netem on this kernel, so
 * the relay is what makes a link slow.
 *
 *   const relay = await startLinkRelay(pair, 'a', { listen: '127.0.0.1:7790', target: `${pair.b.address}:7789` });
 *   await relay.delay(100); await relay.throttle(2 << 20);
 *   await relay.flip({ kind: 'data', direction: 'toTarget', afterBytes: 65536 });
 *   await relay.stats();
 *   await relay.close();                    // also done by cleanupAll()
 *
 * For nraid the relay goes on the dialer's side: the dialer (alpha, whose
 * name sorts first) opens both the control and the data link, so a config
 * for alpha alone that names the relay as beta's address puts every byte
 * between them through it (makeNetnsResource's `perNode`), while beta's
 * config keeps the real addresses. A partition of the veth still cuts the
 * relay's onward connection, so both fault kinds combine.
 */
import { ChildProcess, spawn } from 'child_process';
import * as path from 'path';
import * as readline from 'readline';
import { registerCleanup } from './cleanup';
import { toolEnv } from './exec';
import { NetnsPair, NetnsSide } from './netns';
import { REPO_ROOT } from './prereq';

export const LINK_RELAY_SCRIPT = path.join(REPO_ROOT, 'test', 'harness', 'link-relay-process.js');
const ANSWER_TIMEOUT_MS = 10_000;
const START_TIMEOUT_MS = 15_000;

export type RelayDirection = 'toTarget' | 'toClient';

export interface RelayFlip {
  /** Which connections: the data link (default), the control link, or any. */
  kind?: 'data' | 'control' | 'any';
  direction: RelayDirection;
  /** Bytes of that kind and direction to let pass first (counted from the call). */
  afterBytes?: number;
  /** Chunks to corrupt (one bit each), default 1. */
  count?: number;
  bit?: number;
}

export interface RelayStats {
  settings: { delayMs: number; bytesPerSec: number; stalled: boolean };
  counters: {
    accepted: number;
    active: number;
    cuts: number;
    bytesToTarget: number;
    bytesToClient: number;
    fromClient: Record<'control' | 'data' | 'unknown', number>;
    fromTarget: Record<'control' | 'data' | 'unknown', number>;
  };
  flips: number;
  flipsPending: Record<RelayDirection, number>;
}

export interface LinkRelay {
  /** The port it listens on (inside its namespace). */
  readonly port: number;
  delay(ms: number): Promise<void>;
  /** Bytes per second per connection and direction; 0 = unlimited. */
  throttle(bytesPerSec: number): Promise<void>;
  stall(on: boolean): Promise<void>;
  flip(f: RelayFlip): Promise<void>;
  /** Resets every relayed connection; returns how many. */
  cut(): Promise<number>;
  stats(): Promise<RelayStats>;
  /** Everything back to a plain relay (no delay, throttle, stall or armed flips). */
  clear(): Promise<void>;
  close(): Promise<void>;
}

export async function startLinkRelay(pair: NetnsPair, side: NetnsSide, opts: { listen: string; target: string }): Promise<LinkRelay> {
  const [file, argv] = pair.command(side, process.execPath, [LINK_RELAY_SCRIPT, '--listen', opts.listen, '--target', opts.target]);
  const child: ChildProcess = spawn(file, argv, { env: toolEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const waiting = new Map<number, { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  let nextId = 1;
  let exited = false;
  let onReady: ((port: number) => void) | undefined;
  const lines = readline.createInterface({ input: child.stdout! });
  lines.on('line', (line) => {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    if (msg.ready === true) return onReady?.(msg.port as number);
    const w = waiting.get(msg.id as number);
    if (!w) return;
    waiting.delete(msg.id as number);
    clearTimeout(w.timer);
    if (msg.ok === true) w.resolve(msg);
    else w.reject(new Error(`link relay refused: ${String(msg.error)}`));
  });
  const exitedPromise = new Promise<void>((resolve) =>
    child.once('exit', () => {
      exited = true;
      for (const w of waiting.values()) {
        clearTimeout(w.timer);
        w.reject(new Error(`link relay exited: ${stderr.trim()}`));
      }
      waiting.clear();
      resolve();
    }),
  );

  const handle = registerCleanup(
    `link relay in ${pair.end(side).ns} ${opts.listen} -> ${opts.target}`,
    async () => {
      if (exited) return;
      child.stdin?.end();
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exitedPromise;
      clearTimeout(t);
    },
    () => {
      if (!exited) child.kill('SIGKILL');
    },
  );

  const port = await new Promise<number>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`link relay did not start within ${START_TIMEOUT_MS} ms: ${stderr.trim()}`)), START_TIMEOUT_MS);
    onReady = (p) => {
      clearTimeout(t);
      resolve(p);
    };
    void exitedPromise.then(() => {
      clearTimeout(t);
      reject(new Error(`link relay exited at start: ${stderr.trim()}`));
    });
  }).catch(async (e: Error) => {
    await handle.run();
    throw e;
  });

  const call = (cmd: string, args: Record<string, unknown> = {}): Promise<Record<string, unknown>> => {
    if (exited) return Promise.reject(new Error(`link relay exited: ${stderr.trim()}`));
    const id = nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        waiting.delete(id);
        reject(new Error(`link relay did not answer ${cmd} within ${ANSWER_TIMEOUT_MS} ms`));
      }, ANSWER_TIMEOUT_MS);
      waiting.set(id, { resolve, reject, timer });
      child.stdin!.write(JSON.stringify({ id, cmd, ...args }) + '\n');
    });
  };

  return {
    port,
    delay: async (ms) => void (await call('delay', { ms })),
    throttle: async (bytesPerSec) => void (await call('throttle', { bytesPerSec })),
    stall: async (on) => void (await call('stall', { on })),
    flip: async (f) => void (await call('flip', { kind: f.kind ?? 'data', direction: f.direction, afterBytes: f.afterBytes ?? 0, count: f.count ?? 1, bit: f.bit ?? 0 })),
    cut: async () => (await call('cut')).connectionsCut as number,
    stats: async () => (await call('stats')) as unknown as RelayStats,
    clear: async () => {
      await call('delay', { ms: 0 });
      await call('throttle', { bytesPerSec: 0 });
      await call('stall', { on: false });
      await call('flip', { direction: 'toTarget', count: 0 });
      await call('flip', { direction: 'toClient', count: 0 });
    },
    close: () => handle.run(),
  };
}
