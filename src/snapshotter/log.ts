/** The snapshotter's structured logger (pino, JSON lines on stderr). */
import pino, { type Logger } from 'pino';

/** A logger writing JSON lines to stderr at `level`. */
export function createLogger(level: string, name = 'd4fs-snapshotter'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination({ dest: 2, sync: true }));
}
