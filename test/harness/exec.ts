/**
 * Running the system tools the harness needs (losetup, dd, umount, the nraid
 * CLI) with a PATH that includes the sbin directories, so that a test run
 * from a login shell without /usr/sbin still finds them.
 */
import { execFile, execFileSync } from 'child_process';

const SBIN_DIRS = ['/usr/local/sbin', '/usr/sbin', '/sbin', '/usr/local/bin', '/usr/bin', '/bin'];

/** process.env with the sbin directories appended to PATH. */
export function toolEnv(extra?: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const current = (process.env.PATH ?? '').split(':').filter((p) => p !== '');
  const missing = SBIN_DIRS.filter((d) => !current.includes(d));
  return { ...process.env, ...extra, PATH: [...current, ...missing].join(':') };
}

export interface ExecResult {
  code: number;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: Buffer;
}

export interface ExecOptions {
  input?: Buffer | string;
  timeoutMs?: number;
  maxBufferBytes?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

/**
 * Runs `file args` and resolves with its exit code and output whatever the
 * code; rejects only when the program cannot be started at all.
 */
export function execTool(file: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      file,
      args,
      {
        encoding: 'buffer',
        env: opts.env ?? toolEnv(),
        cwd: opts.cwd,
        timeout: opts.timeoutMs ?? 60_000,
        killSignal: 'SIGKILL',
        maxBuffer: opts.maxBufferBytes ?? 64 * 1024 * 1024,
      },
      (error, stdout, stderr) => {
        const err = error as (NodeJS.ErrnoException & { code?: unknown; signal?: NodeJS.Signals | null }) | null;
        if (err && typeof err.code === 'string') {
          // ENOENT, EACCES, ERR_CHILD_PROCESS_STDIO_MAXBUFFER: the run itself failed.
          reject(new Error(`${file} ${args.join(' ')}: ${err.message}`));
          return;
        }
        resolve({
          code: err ? (typeof err.code === 'number' ? err.code : -1) : 0,
          signal: err?.signal ?? null,
          stdout: stdout as Buffer,
          stderr: stderr as Buffer,
        });
      },
    );
    child.stdin?.on('error', () => {
      // The program exited before reading all of its input; its exit code tells why.
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    else child.stdin?.end();
  });
}

/** Like execTool, but rejects with the program's stderr when it exits non-zero. */
export async function execOk(file: string, args: readonly string[], opts: ExecOptions = {}): Promise<Buffer> {
  const r = await execTool(file, args, opts);
  if (r.code !== 0) {
    const how = r.signal ? `was killed by ${r.signal}` : `exited with ${r.code}`;
    throw new Error(`${file} ${args.join(' ')} ${how}: ${r.stderr.toString().trim()}`);
  }
  return r.stdout;
}

/** Synchronous variant for process-exit handlers; returns stderr text on failure, undefined on success. */
export function execSyncQuiet(file: string, args: readonly string[], timeoutMs = 10_000): string | undefined {
  try {
    execFileSync(file, args, { env: toolEnv(), timeout: timeoutMs, stdio: ['ignore', 'ignore', 'pipe'] });
    return undefined;
  } catch (e) {
    const err = e as { stderr?: Buffer; message?: string };
    return (err.stderr?.toString().trim() || err.message || String(e)).trim();
  }
}
