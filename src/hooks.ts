/**
 * Operator hooks (split-brain, fence-peer): an executable run with the
 * situation in its environment. Bounded in time; its exit code is the answer.
 */
import { spawn } from 'node:child_process';
import { isErrnoException, systemError, toNraidError } from './errors';
import { hookOutputCharsMax, hookTimeoutMs } from './limits';
import type { Logger } from './log';

/**
 * Resolves with the hook's exit code (-1 when it was killed at the timeout).
 * Rejects with a SystemError (errno kept) when the hook cannot be started.
 */
export async function runHook(command: string, env: Record<string, string>, log: Logger, timeoutMs = hookTimeoutMs): Promise<number> {
  return (await runHookWithOutput(command, env, log, timeoutMs)).exitCode;
}

export interface HookResult {
  /** -1 when it was killed at the timeout. */
  exitCode: number;
  timedOut: boolean;
  /** stdout and stderr together, at most hookOutputCharsMax characters. */
  output: string;
}

/** As runHook, with the output and whether the timeout struck (for messages that say why). */
export function runHookWithOutput(command: string, env: Record<string, string>, log: Logger, timeoutMs = hookTimeoutMs): Promise<HookResult> {
  return new Promise((resolve, reject) => {
    log.info('running hook', { command, event: env.NRAID_EVENT });
    const child = spawn(command, [], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const collect = (chunk: Buffer) => {
      if (output.length < hookOutputCharsMax) output += chunk.toString();
    };
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(
        isErrnoException(error)
          ? systemError(`cannot run the ${env.NRAID_EVENT ?? ''} hook ${command}`, error, 'check the [hooks] path in the config: it must be an executable file')
          : toNraidError(error),
      );
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      const exitCode = code ?? -1;
      log.info('hook finished', { command, event: env.NRAID_EVENT, exitCode, signal, output: output.trim() });
      resolve({ exitCode, timedOut, output: output.trim() });
    });
  });
}
