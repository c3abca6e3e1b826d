/**
 * Operator hooks (split-brain, fence-peer): an executable run with the
 * situation in its environment. Bounded in time; its exit code is the answer.
 */
import { spawn } from 'node:child_process';
import type { Logger } from './log';

export const HOOK_TIMEOUT_MS = 60_000;

/** Resolves with the hook's exit code (-1 when it was killed at the timeout). */
export function runHook(command: string, env: Record<string, string>, log: Logger, timeoutMs = HOOK_TIMEOUT_MS): Promise<number> {
  return new Promise((resolve, reject) => {
    log.info('running hook', { command, event: env.NRAID_EVENT });
    const child = spawn(command, [], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const collect = (chunk: Buffer) => {
      if (output.length < 4096) output += chunk.toString();
    };
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      const exitCode = code ?? -1;
      log.info('hook finished', { command, event: env.NRAID_EVENT, exitCode, signal, output: output.trim() });
      resolve(exitCode);
    });
  });
}
