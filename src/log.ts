/** Structured logs: one JSON object a line on stderr (the daemon's log file when detached). */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface Logger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

export function jsonLogger(context: Record<string, unknown>, write: (line: string) => void = (line) => process.stderr.write(line)): Logger {
  const emit = (level: LogLevel, message: string, fields?: Record<string, unknown>) =>
    write(
      JSON.stringify({ time: new Date().toISOString(), level, ...context, message, ...fields }, (_key, value) =>
        typeof value === 'bigint' ? value.toString(16) : value,
      ) + '\n',
    );
  return {
    debug: (message, fields) => emit('debug', message, fields),
    info: (message, fields) => emit('info', message, fields),
    warn: (message, fields) => emit('warn', message, fields),
    error: (message, fields) => emit('error', message, fields),
  };
}
