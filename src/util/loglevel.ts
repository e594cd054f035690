/** The log levels of d4fs's daemons (pino's names): one list for every --log-level flag and log_level key. */
import { invalidArgument } from '../errors';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** `level` when it is one of LOG_LEVELS; otherwise INVALID_ARGUMENT naming `what` (the flag or key). */
export function checkLogLevel(level: string, what = '--log-level'): LogLevel {
  if (!(LOG_LEVELS as readonly string[]).includes(level)) throw invalidArgument(`${what} must be one of ${LOG_LEVELS.join(', ')}`);
  return level as LogLevel;
}
