/**
 * Fuzz target 4: the admin-socket framing (src/admin.ts): arbitrary byte
 * streams to a real Unix socket served by the real AdminServer, in a child
 * process of its own (as in the daemon: an unhandled rejection or a throw
 * there ends the process, which is what the daemon would do).
 * Inputs: requests (known and unknown commands, command names up to the
 * frame bound, odd ids and args) packed as the CLI packs them, then the
 * stream mutated; raw bytes; length prefixes at and past the bound; all in
 * arbitrary pieces.
 * Property: every complete frame that decodes gets exactly one well-formed
 * reply (an answer, or an error with an NRAID_ERR_ code and a message;
 * an unknown command is NRAID_ERR_USAGE); a frame that does not decode, or
 * a length past the bound, makes the server close the connection; within a
 * bound, never a hang; the process lives, and the next good client is
 * served.
 * Canary: "the server never closes a connection" must fail.
 */
import { ChildProcess, spawn } from 'child_process';
import * as fc from 'fast-check';
import * as net from 'net';
import * as path from 'path';
import { pack, unpack } from 'msgpackr';
import { AdminReply, FrameReader, adminCall } from '../../src/admin';
import { adminFrameBytesMax } from '../../src/limits';
import { makeTempSubdir, registerCleanup } from '../harness/cleanup';
import { REPO_ROOT } from '../harness/prereq';
import { applyMutations, chunked, cuts, mutations } from './mutate';
import { expectCanaryFails, fuzz, fuzzCases, fuzzTimeLimitMs, jestTimeoutMs } from './fuzz-run';

const CI_CASES = 300;
const CI_TIME_LIMIT_MS = 8000;
/** A reply to a frame in flight, or the close after a bad one: far below this on loopback. */
const CASE_TIMEOUT_MS = 3000;
const HEADER_BYTES = 4;

// ---- the server, in a child process -------------------------------------------------------

const SERVER_SCRIPT = `
const { AdminServer } = require(process.argv[1] + '/admin.js');
const { StateError } = require(process.argv[1] + '/errors.js');
const server = new AdminServer(process.argv[2]);
server.on('status', () => ({ role: 'Secondary', disk: 'UpToDate' }));
server.on('fail', () => { throw new StateError('cannot do that now; wait'); });
server.on('echo', (args) => args);
server.on('slow', async () => { await new Promise((r) => setTimeout(r, 5)); return 'late'; });
server.on('events', async (args, stream) => { stream.send({ type: 'one' }); stream.send({ type: 'two' }); return 'done'; });
server.listen().then(() => process.stdout.write('ready\\n'));
`;
/** Reply frames each command gives: 'events' streams two events before its answer. */
const REPLIES_OF: Record<string, number> = { status: 1, fail: 1, echo: 1, slow: 1, events: 3 };

interface Server {
  socketPath: string;
  alive(): boolean;
  exit(): string | null;
  stderr(): string;
  stop(): Promise<void>;
}

async function startServer(): Promise<Server> {
  const socketPath = path.join(makeTempSubdir('fuzz-admin'), 'admin.sock');
  const child: ChildProcess = spawn(process.execPath, ['-e', SERVER_SCRIPT, path.join(REPO_ROOT, 'dist', 'src'), socketPath], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let exit: string | null = null;
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (s: string) => {
    if (stderr.length < 16384) stderr += s;
  });
  const exited = new Promise<void>((resolve) =>
    child.on('exit', (code, signal) => {
      exit = signal !== null ? `signal ${signal}` : `exit code ${code}`;
      resolve();
    }),
  );
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the admin server did not start within 10 s; stderr: ${stderr}`)), 10_000);
    child.stdout!.setEncoding('utf8').on('data', (s: string) => {
      if (s.includes('ready')) {
        clearTimeout(timer);
        resolve();
      }
    });
    void exited.then(() => reject(new Error(`the admin server exited (${exit}) before it was ready; stderr: ${stderr}`)));
  });
  const stop = async () => {
    if (exit === null) {
      child.kill('SIGTERM');
      await exited;
    }
  };
  // Also at exit, should the test end before its afterAll: the server by its pid, nothing else.
  const cleanup = registerCleanup(`admin fuzz server pid ${child.pid}`, stop, () => {
    if (exit === null) child.kill('SIGKILL');
  });
  return {
    socketPath,
    alive: () => exit === null,
    exit: () => exit,
    stderr: () => stderr,
    stop: () => cleanup.run(),
  };
}

// ---- what the server should do with a stream ------------------------------------------------

interface Expected {
  /** Replies due for the frames before the stream ends or turns bad. */
  replies: number;
  /** Ids of those replies (each reply echoes its request's id, or 0). */
  ids: number[];
  /** A bad frame (length past the bound, a body that does not decode): the server closes. */
  closes: boolean;
  /** Requests of commands the server does not know: answered NRAID_ERR_USAGE. */
  unknownCommands: number;
}

/** Walks `stream` as the server's FrameReader does. */
function expectedFor(stream: Buffer): Expected {
  const e: Expected = { replies: 0, ids: [], closes: false, unknownCommands: 0 };
  let at = 0;
  while (stream.length - at >= HEADER_BYTES) {
    const length = stream.readUInt32LE(at);
    if (length > adminFrameBytesMax) return { ...e, closes: true };
    if (stream.length - at - HEADER_BYTES < length) break;
    let request: unknown;
    try {
      request = unpack(stream.subarray(at + HEADER_BYTES, at + HEADER_BYTES + length));
    } catch {
      return { ...e, closes: true };
    }
    const r = request as { id?: unknown; command?: unknown } | null | undefined;
    const command = typeof r?.command === 'string' && Object.hasOwn(REPLIES_OF, r.command) ? r.command : null;
    const n = command === null ? 1 : REPLIES_OF[command];
    e.replies += n;
    for (let i = 0; i < n; i++) e.ids.push(typeof r?.id === 'number' ? r.id : 0);
    if (command === null) e.unknownCommands++;
    at += HEADER_BYTES + length;
  }
  return e;
}

interface Outcome {
  replies: AdminReply[];
  closed: boolean;
}

/** Sends `pieces` on a fresh connection and collects replies until `expected` is met, or the bound. */
async function exchange(socketPath: string, pieces: readonly Buffer[], expected: Expected): Promise<Outcome> {
  const socket = net.connect(socketPath);
  const reader = new FrameReader();
  const replies: AdminReply[] = [];
  let closed = false;
  let readerError: unknown = null;
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    socket.on('error', () => undefined);
    const done = new Promise<void>((resolve) => {
      const check = () => {
        if (closed || (!expected.closes && replies.length >= expected.replies)) resolve();
      };
      socket.on('data', (chunk: Buffer) => {
        try {
          replies.push(...(reader.push(chunk) as AdminReply[]));
        } catch (error) {
          readerError = error;
        }
        check();
      });
      socket.on('close', () => {
        closed = true;
        check();
      });
      check();
    });
    for (const piece of pieces) socket.write(piece);
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      done.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), CASE_TIMEOUT_MS))),
    ]);
    clearTimeout(timer);
    if (readerError !== null) throw new Error(`the server sent a frame the client cannot read: ${String(readerError)}`);
    if (timedOut) {
      throw new Error(
        `no verdict within ${CASE_TIMEOUT_MS} ms: expected ${expected.closes ? 'a close' : `${expected.replies} replies`}, ` +
          `found ${replies.length} replies and the connection ${closed ? 'closed' : 'open'}`,
      );
    }
    // A little longer: a reply too many, or a close after the replies, shows up now.
    if (!expected.closes) await new Promise((r) => setTimeout(r, 2));
    return { replies: [...replies], closed };
  } finally {
    socket.destroy();
  }
}

function checkReply(reply: AdminReply): void {
  if (typeof reply !== 'object' || reply === null) throw new Error(`a reply that is not an object: ${JSON.stringify(reply)}`);
  if (typeof reply.id !== 'number' || typeof reply.ok !== 'boolean') throw new Error(`a reply without id and ok: ${JSON.stringify(reply)}`);
  if (!reply.ok) {
    if (typeof reply.error?.code !== 'string' || !/^NRAID_ERR_[A-Z_]+$/.test(reply.error.code)) throw new Error(`an error reply without an NRAID_ERR_ code: ${JSON.stringify(reply).slice(0, 300)}`);
    if (typeof reply.error.message !== 'string' || reply.error.message.length === 0) throw new Error('an error reply without a message');
  }
}

// ---- inputs --------------------------------------------------------------------------------------

const msgpackValue = fc.oneof(fc.jsonValue({ maxDepth: 3 }), fc.constant(undefined), fc.uint8Array({ maxLength: 16 }), fc.date({ noInvalidDate: true }));
/** Command names up to the frame bound: the reply to an unknown one quotes it. */
const longCommand = fc.integer({ min: 0, max: 600 }).map((k) => 'x'.repeat(adminFrameBytesMax - k));
const requestArb = fc.record(
  {
    id: fc.oneof(fc.nat(), fc.integer(), fc.double(), fc.string({ maxLength: 4 }), fc.constant(null)),
    command: fc.oneof(
      { weight: 6, arbitrary: fc.constantFrom('status', 'fail', 'echo', 'slow', 'events') },
      { weight: 3, arbitrary: fc.oneof(fc.string({ maxLength: 12 }), fc.constantFrom('__proto__', 'constructor', 'toString', 'hasOwnProperty')) },
      { weight: 1, arbitrary: longCommand },
      { weight: 1, arbitrary: msgpackValue },
    ),
    args: msgpackValue,
  },
  { requiredKeys: ['command'] },
);

function frame(body: Buffer): Buffer {
  const header = Buffer.alloc(HEADER_BYTES);
  header.writeUInt32LE(body.length, 0);
  return Buffer.concat([header, body]);
}

function packed(request: unknown): Buffer {
  return frame(Buffer.from(pack(request)));
}

const streamArb = fc.oneof(
  { weight: 3, arbitrary: fc.array(requestArb, { minLength: 1, maxLength: 3 }).map((rs) => Buffer.concat(rs.map(packed))) },
  {
    weight: 4,
    arbitrary: fc
      .tuple(fc.array(requestArb, { minLength: 1, maxLength: 3 }), mutations)
      .map(([rs, list]) => applyMutations(Buffer.concat(rs.map((r) => packed({ ...r, command: typeof r.command === 'string' && r.command.length > 1000 ? 'status' : r.command }))), list)),
  },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 64 }).map((a) => frame(Buffer.from(a))) },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.constantFrom(adminFrameBytesMax, adminFrameBytesMax + 1, 0xffffffff, 0x80000000), fc.uint8Array({ maxLength: 32 }))
      .map(([length, rest]) => {
        const header = Buffer.alloc(HEADER_BYTES);
        header.writeUInt32LE(length >>> 0, 0);
        return Buffer.concat([header, Buffer.from(rest)]);
      }),
  },
);

// ---- the properties -----------------------------------------------------------------------------

describe('fuzz: admin-socket framing', () => {
  const cases = fuzzCases(CI_CASES);
  const timeLimitMs = fuzzTimeLimitMs(CI_TIME_LIMIT_MS);
  let server: Server;

  beforeAll(async () => {
    server = await startServer();
  });

  afterAll(async () => {
    await server?.stop();
  });

  async function checkCase(stream: Buffer, at: number[]): Promise<Outcome> {
    // After a death (a failing case), a new server, so that shrinking sees each case on its own.
    if (!server.alive()) server = await startServer();
    const expected = expectedFor(stream);
    const outcome = await exchange(server.socketPath, chunked(stream, at), expected);
    if (!server.alive()) {
      throw new Error(`the admin server died (${server.exit()}) on a ${stream.length}-byte stream; stderr: ${server.stderr().trim().split('\n').slice(-3).join(' | ')}`);
    }
    outcome.replies.forEach(checkReply);
    if (expected.closes) {
      expect(outcome.closed).toBe(true);
      expect(outcome.replies.length).toBeLessThanOrEqual(expected.replies);
    } else {
      expect(outcome.closed).toBe(false);
      expect(outcome.replies.map((r) => r.id).sort()).toEqual([...expected.ids].sort());
      expect(outcome.replies.filter((r) => !r.ok && r.error?.code === 'NRAID_ERR_USAGE').length).toBe(expected.unknownCommands);
    }
    // The next good client is served.
    await expect(adminCall(server.socketPath, 'status', {}, undefined, CASE_TIMEOUT_MS)).resolves.toEqual({ role: 'Secondary', disk: 'UpToDate' });
    return outcome;
  }

  test(
    'any stream: one well-formed reply per frame, or a close after a bad one; the server lives and serves the next client',
    async () => {
      await fuzz(
        'admin socket',
        fc.asyncProperty(streamArb, cuts, async (stream, at) => {
          await checkCase(stream, at);
        }),
        { cases, timeLimitMs, caseTimeoutMs: 4 * CASE_TIMEOUT_MS },
      );
    },
    jestTimeoutMs(CI_TIME_LIMIT_MS),
  );

  // Regression: a request naming an unknown command of about 1 MiB (a frame
  // may hold that much) was answered with a UsageError quoting the whole
  // name; the reply passed the frame bound, encodeFrame threw outside the
  // handler's try, and the rejection of the un-awaited dispatch ended the
  // process (exit code 1): one bad client killed the daemon.
  test('an unknown command name of nearly 1 MiB is answered with a short NRAID_ERR_USAGE; the server lives', async () => {
    const outcome = await checkCase(packed({ id: 7, command: 'x'.repeat(adminFrameBytesMax - 32), args: {} }), []);
    expect(outcome.replies).toHaveLength(1);
    expect(outcome.replies[0]).toMatchObject({ id: 7, ok: false, error: { code: 'NRAID_ERR_USAGE' } });
    expect(outcome.replies[0].error!.message).toMatch(/^the daemon does not know the command "x{64}"\.\.\. \(1048544 characters\);/);
  });

  test('canary: "the server never closes a connection" fails', async () => {
    await expectCanaryFails(
      'admin socket',
      fc.asyncProperty(streamArb, async (stream) => !(await checkCase(stream, [])).closed),
      300,
    );
  }, 60_000);
});
