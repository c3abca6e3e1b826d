/**
 * Errors with stable codes (tidy issue): every error nraid throws is an
 * NraidError subclass whose `code` is stable and distinct, the errno of a
 * failed system call is kept as a field, and no `new Error(` creeps back into
 * src/ (the files not yet converted are listed in one constant below).
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { AdminServer, FrameReader, adminCall, encodeFrame } from '../../src/admin';
import { loadConfig } from '../../src/config';
import { BackingDisk } from '../../src/disk';
import * as errors from '../../src/errors';
import {
  ConfigError,
  DiskError,
  InternalError,
  NotUpError,
  NraidError,
  ProtocolError,
  RemoteError,
  SystemError,
  TimeoutError,
  errorReply,
  isErrnoException,
  systemError,
  toNraidError,
} from '../../src/errors';
import { runHook } from '../../src/hooks';
import * as limits from '../../src/limits';
import { jsonLogger } from '../../src/log';
import { MetricsServer } from '../../src/metrics';
import type { ResourceStatus } from '../../src/state';
import { REPO_ROOT } from '../harness/prereq';

const SRC = path.join(REPO_ROOT, 'src');

/**
 * Files and folders under src/ not yet converted to NraidError (paths relative
 * to src/, a trailing "/" for a folder). Shrink it as they are converted; the
 * last test fails when an entry no longer holds any offender.
 */
export const NOT_YET_CONVERTED: readonly string[] = [];

/** What an NraidError-only file must not contain. */
const FORBIDDEN: ReadonlyArray<{ pattern: RegExp; why: string }> = [
  { pattern: /\bnew\s+(Error|TypeError|RangeError)\s*\(/, why: 'a plain Error has no stable code' },
  { pattern: /\bthrow\s+(Error|TypeError|RangeError)\s*\(/, why: 'a plain Error has no stable code' },
  { pattern: /\bnew\s+NraidError\s*\(/, why: 'the base class has no specific code; use or add a subclass in src/errors.ts' },
];

function tsFilesUnder(dir: string): string[] {
  const files: string[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) files.push(...tsFilesUnder(full));
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) files.push(full);
  }
  return files;
}

function relativeToSrc(file: string): string {
  return path.relative(SRC, file).split(path.sep).join('/');
}

function isExcluded(relative: string): boolean {
  return NOT_YET_CONVERTED.some((entry) => (entry.endsWith('/') ? relative.startsWith(entry) : relative === entry));
}

/** Source lines with comments blanked, so that prose about `new Error(` does not count. */
function codeLines(text: string): string[] {
  const withoutBlockComments = text.replace(/\/\*[\s\S]*?\*\//g, (comment) => comment.replace(/[^\n]/g, ' '));
  return withoutBlockComments.split('\n').map((line) => line.replace(/(^|[^:])\/\/.*$/, '$1'));
}

function offendersIn(file: string): string[] {
  const found: string[] = [];
  codeLines(fs.readFileSync(file, 'utf8')).forEach((line, i) => {
    for (const { pattern, why } of FORBIDDEN) {
      if (pattern.test(line)) found.push(`src/${relativeToSrc(file)}:${i + 1}: ${line.trim()} (${why})`);
    }
  });
  return found;
}

describe('no plain Error in src/', () => {
  const files = tsFilesUnder(SRC);

  test('the walk sees the converted files', () => {
    const seen = files.map(relativeToSrc);
    for (const expected of ['cli.ts', 'admin.ts', 'config.ts', 'metadata.ts', 'cli/args.ts', 'limits.ts']) expect(seen).toContain(expected);
  });

  test('every file outside NOT_YET_CONVERTED throws NraidError subclasses only', () => {
    const offenders = files.filter((f) => !isExcluded(relativeToSrc(f))).flatMap(offendersIn);
    expect(offenders).toEqual([]);
  });

  test('the check finds a plain Error (canary)', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nraid-errors-canary-'));
    try {
      const file = path.join(dir, 'canary.ts');
      fs.writeFileSync(file, "// new Error( in a comment is fine\nconst x = 1;\nif (x) throw new Error('boom');\nthrow new NraidError('base');\n");
      expect(offendersIn(file).map((o) => o.replace(/^.*canary\.ts:/, ''))).toEqual([
        "3: if (x) throw new Error('boom'); (a plain Error has no stable code)",
        "4: throw new NraidError('base'); (the base class has no specific code; use or add a subclass in src/errors.ts)",
      ]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('every NOT_YET_CONVERTED entry still exists and still needs its exclusion (else shrink the list)', () => {
    const stale = NOT_YET_CONVERTED.filter((entry) => {
      const offenders = files.filter((f) => {
        const relative = relativeToSrc(f);
        return entry.endsWith('/') ? relative.startsWith(entry) : relative === entry;
      });
      // A folder that does not exist yet (src/resource/ during the rewrite) stays listed.
      if (offenders.length === 0) return false;
      return offenders.flatMap(offendersIn).length === 0;
    });
    expect(stale).toEqual([]);
  });
});

/** Every exported NraidError subclass with a fixed code (RemoteError carries the code it was given). */
function errorClasses(): Array<[string, new (...args: never[]) => NraidError]> {
  return (Object.entries(errors) as Array<[string, unknown]>).filter(
    (entry): entry is [string, new (...args: never[]) => NraidError] =>
      typeof entry[1] === 'function' && entry[1].prototype instanceof NraidError && entry[1] !== RemoteError,
  );
}

function instanceOf(Class: new (...args: never[]) => NraidError): NraidError {
  const make = Class as unknown as new (...args: unknown[]) => NraidError;
  if (Class === (SystemError as unknown)) return new make('m', 'EIO', 5, 'read');
  return new make('m');
}

describe('error classes', () => {
  test('the codes are stable: changing one is a breaking change for scripts that read --json', () => {
    const codes = Object.fromEntries(errorClasses().map(([name, Class]) => [name, instanceOf(Class).code]));
    expect(codes).toEqual({
      UsageError: 'NRAID_ERR_USAGE',
      ConfigError: 'NRAID_ERR_CONFIG',
      NotRootError: 'NRAID_ERR_NOT_ROOT',
      PrerequisiteError: 'NRAID_ERR_PREREQUISITE',
      DiskError: 'NRAID_ERR_DISK',
      DiskHasDataError: 'NRAID_ERR_DISK_HAS_DATA',
      MetadataError: 'NRAID_ERR_METADATA',
      AlreadyUpError: 'NRAID_ERR_ALREADY_UP',
      NotUpError: 'NRAID_ERR_NOT_UP',
      StateError: 'NRAID_ERR_STATE',
      NotUpToDateError: 'NRAID_ERR_NOT_UP_TO_DATE',
      DeviceBusyError: 'NRAID_ERR_DEVICE_BUSY',
      SplitBrainError: 'NRAID_ERR_SPLIT_BRAIN',
      PeerError: 'NRAID_ERR_PEER',
      ProtocolError: 'NRAID_ERR_PROTOCOL',
      SwitchoverOutcomeUnknownError: 'NRAID_ERR_SWITCHOVER_UNKNOWN',
      PromotionConflictError: 'NRAID_ERR_PROMOTION_CONFLICT',
      VersionError: 'NRAID_ERR_VERSION',
      TimeoutError: 'NRAID_ERR_TIMEOUT',
      SystemError: 'NRAID_ERR_SYSTEM',
      CommandFailedError: 'NRAID_ERR_COMMAND_FAILED',
      DaemonStartError: 'NRAID_ERR_DAEMON_START',
      InternalError: 'NRAID_ERR_INTERNAL',
      StaleDeviceError: 'NRAID_ERR_STALE_DEVICE',
      HookFailedError: 'NRAID_ERR_HOOK_FAILED',
      KernelError: 'NRAID_ERR_KERNEL',
    });
  });

  test('each class has its own code, of the form NRAID_ERR_<WORDS>, and its own name', () => {
    const classes = errorClasses();
    const codes = classes.map(([, Class]) => instanceOf(Class).code);
    expect(new Set(codes).size).toBe(codes.length);
    for (const [name, Class] of classes) {
      const e = instanceOf(Class);
      expect({ name, code: e.code }).toEqual({ name, code: expect.stringMatching(/^NRAID_ERR_[A-Z]+(_[A-Z]+)*$/) });
      expect(e.name).toBe(name);
      expect(e).toBeInstanceOf(NraidError);
      expect(e).toBeInstanceOf(Error);
    }
  });

  test('a RemoteError rebuilds the code and message that crossed the admin socket', () => {
    const e = new RemoteError(errorReply(new errors.SplitBrainError('both wrote')));
    expect({ code: e.code, message: e.message }).toEqual({ code: 'NRAID_ERR_SPLIT_BRAIN', message: 'both wrote' });
  });
});

describe('system errors keep their errno', () => {
  const nodeEnoent = (): errors.ErrnoException => {
    try {
      fs.readFileSync('/nonexistent/nraid-errors-test');
    } catch (error) {
      return error as errors.ErrnoException;
    }
    throw new InternalError('reading a nonexistent file succeeded');
  };

  test("Node's errors (negative errno) and plain objects are told apart structurally", () => {
    const e = nodeEnoent();
    expect(isErrnoException(e)).toBe(true);
    expect(isErrnoException(new ConfigError('x'))).toBe(false);
    expect(isErrnoException({ code: 'NRAID_ERR_X', errno: 1, message: 'm' })).toBe(false);
    expect(isErrnoException(null)).toBe(false);
  });

  test('systemError says what was done, what the system said and what to do, and keeps errno, number and call', () => {
    const e = systemError('cannot read the thing', nodeEnoent(), 'create it');
    expect(e).toBeInstanceOf(SystemError);
    expect({ code: e.code, errno: e.errno, errnoNumber: e.errnoNumber, syscall: e.syscall }).toEqual({
      code: 'NRAID_ERR_SYSTEM',
      errno: 'ENOENT',
      errnoNumber: 2,
      syscall: 'open',
    });
    expect(e.message).toMatch(/^cannot read the thing: ENOENT \(ENOENT: no such file or directory, open .*\); create it$/);
  });

  test('toNraidError: an NraidError stays itself, an errno becomes a SystemError, anything else an InternalError', () => {
    const usage = new errors.UsageError('u');
    expect(toNraidError(usage)).toBe(usage);
    const system = toNraidError(nodeEnoent());
    expect(system).toBeInstanceOf(SystemError);
    expect((system as SystemError).errno).toBe('ENOENT');
    const internal = toNraidError('a string');
    expect(internal).toBeInstanceOf(InternalError);
    expect(internal.message).toContain('a string');
    expect(errorReply({ weird: true }).code).toBe('NRAID_ERR_INTERNAL');
  });

  test('the addon: opening a missing backing device is a DiskError with errno ENOENT (2)', () => {
    const missing = path.join(os.tmpdir(), `nraid-errors-missing-${process.pid}`);
    let caught: unknown;
    try {
      BackingDisk.open(missing, { configKey: 'nodes.alpha.disk in test.toml' });
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(DiskError);
    const e = caught as DiskError;
    expect({ code: e.code, errno: e.errno, errnoNumber: e.errnoNumber }).toEqual({ code: 'NRAID_ERR_DISK', errno: 'ENOENT', errnoNumber: 2 });
    expect(e.message).toContain(missing);
    expect(e.message).toContain('nodes.alpha.disk in test.toml');
  });

  test('a DiskError of a check of our own has no errno', () => {
    const e = new DiskError('too small');
    expect({ errno: e.errno, errnoNumber: e.errnoNumber, syscall: e.syscall }).toEqual({ errno: null, errnoNumber: null, syscall: null });
  });

  test('a config that cannot be read is a ConfigError that names the errno and keeps the cause', () => {
    let caught: unknown;
    try {
      loadConfig('/nonexistent/nraid/r0.toml');
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    expect((caught as ConfigError).message).toContain('ENOENT');
    expect(isErrnoException((caught as ConfigError).cause)).toBe(true);
  });

  test('a hook that cannot be started is a SystemError with its errno', async () => {
    const lines: string[] = [];
    const log = jsonLogger({}, (line) => lines.push(line));
    const missing = `/nonexistent/nraid-hook-${process.pid}`;
    const error = await runHook(missing, { NRAID_EVENT: 'split-brain' }, log).then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(SystemError);
    expect((error as SystemError).errno).toBe('ENOENT');
    expect((error as SystemError).message).toContain(missing);
  });
});

describe('admin socket errors', () => {
  test('a frame longer than limits.adminFrameBytesMax is a ProtocolError, one at the limit is not refused', () => {
    const header = Buffer.alloc(4);
    header.writeUInt32LE(limits.adminFrameBytesMax, 0);
    expect(new FrameReader().push(header)).toEqual([]);
    header.writeUInt32LE(limits.adminFrameBytesMax + 1, 0);
    expect(() => new FrameReader().push(header)).toThrow(ProtocolError);
    expect(() => encodeFrame({ blob: Buffer.alloc(limits.adminFrameBytesMax) })).toThrow(ProtocolError);
  });

  test('a body that is not msgpack is a ProtocolError', () => {
    const frame = Buffer.from([2, 0, 0, 0, 0x92, 0x01]); // an array of two holding one element
    expect(() => new FrameReader().push(frame)).toThrow(ProtocolError);
  });

  test('no daemon on the socket is NotUpError; a daemon that never answers is TimeoutError', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nraid-errors-admin-'));
    // Reads (so that it sees the client hang up) and never answers.
    const server = net.createServer((socket) => socket.resume());
    try {
      await expect(adminCall(path.join(dir, 'none.sock'), 'status')).rejects.toBeInstanceOf(NotUpError);
      const socketPath = path.join(dir, 'admin.sock');
      await new Promise<void>((resolve) => server.listen(socketPath, resolve));
      const error = await adminCall(socketPath, 'status', {}, undefined, 50).then(
        () => null,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(TimeoutError);
      expect((error as TimeoutError).message).toContain('"status" within 50 ms');
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('an admin socket that cannot be made is a SystemError with its errno', async () => {
    const server = new AdminServer(`/nonexistent/nraid-errors-${process.pid}/admin.sock`);
    const error = await server.listen().then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(SystemError);
    // Node reports a missing directory for a Unix socket as EACCES (libuv), or ENOENT.
    expect((error as SystemError).errno).toMatch(/^(ENOENT|EACCES)$/);
    expect((error as SystemError).message).toContain('run directory');
  });
});

describe('metrics endpoint errors', () => {
  test('a metrics-port in use is a SystemError EADDRINUSE naming the port and the config key', async () => {
    const holder = net.createServer();
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
    const port = (holder.address() as net.AddressInfo).port;
    try {
      const metrics = new MetricsServer(() => ({}) as ResourceStatus, () => null);
      const error = await metrics.listen('127.0.0.1', port).then(
        () => null,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(SystemError);
      expect({ errno: (error as SystemError).errno, message: (error as SystemError).message }).toEqual({
        errno: 'EADDRINUSE',
        message: expect.stringContaining(`127.0.0.1:${port}`),
      });
      expect((error as SystemError).message).toContain('metrics-port');
    } finally {
      await new Promise<void>((resolve) => holder.close(() => resolve()));
    }
  });
});
