/** Shared CLI plumbing: error reporting, exit codes, progress bars, option parsing. */
import { Command, InvalidArgumentError } from 'commander';
import { D4fsError, EXIT_CODES, invalidArgument, toD4fsError } from '../errors';
import type { RegistryOptions } from '../oci/registry/options';
import { LEVELS } from '../convert/levels';
import { linesForTerminal } from '../util/text';
import type { ProgressEvent } from '../convert/convert';

export interface GlobalFlags {
  json?: boolean;
  progress?: boolean;
  debug?: boolean;
}

/** Print one actionable line and exit with the code of the error's kind. */
export function fail(e: unknown, debug = false): never {
  const err = toD4fsError(e);
  process.stderr.write(`ctr-cli: error: ${linesForTerminal(err.message)}\n`);
  if (debug && (e as Error)?.stack) process.stderr.write(`${(e as Error).stack}\n`);
  process.exit(EXIT_CODES[err.kind]);
}

/**
 * A reader that goes away (`ctr-cli … | head`) is not an error: writes to a
 * closed stdout or stderr are dropped and the command finishes its work
 * (cleanup included) and exits as it would have; no EPIPE stack.
 */
export function quietOnClosedPipes(): void {
  for (const s of [process.stdout, process.stderr]) {
    s.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE' || e.code === 'ERR_STREAM_DESTROYED') return;
      throw e;
    });
  }
}

/** Human output on stdout: text from images, servers and registries cannot drive the terminal (see util/text). */
export function say(text: string): boolean {
  return process.stdout.write(linesForTerminal(text));
}

/** Human output on stderr, escaped like {@link say}. */
export function sayErr(text: string): boolean {
  return process.stderr.write(linesForTerminal(text));
}

/** End the process once what was written to stdout and stderr has gone out (for commands that are done). */
export async function exitNow(code: number): Promise<never> {
  await Promise.all([process.stdout, process.stderr].map((s) => new Promise<void>((resolve) => s.write('', () => resolve()))));
  process.exit(code);
}

/** Wrap an async action so every error becomes one line and a meaningful exit code. */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    const cmd = args[args.length - 1] as Command;
    const debug = !!cmd?.optsWithGlobals?.().debug || process.env.D4FS_DEBUG === '1';
    try {
      await fn(...args);
    } catch (e) {
      fail(e, debug);
    }
  };
}

export function parseIntOpt(name: string, min: number, max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be an integer from ${min} to ${max}`);
    return n;
  };
}

export function parseLevel(v: string): number {
  // convert's module (and everything under it) loads only for commands that take a level
  if (v in LEVELS) return LEVELS[v as keyof typeof LEVELS];
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 22) throw new InvalidArgumentError('level must be fast, default, best or 1..22');
  return n;
}

export function parseSize(v: string): number {
  const m = /^(\d+)([kmg]i?b?)?$/i.exec(v.trim());
  if (!m) throw new InvalidArgumentError(`invalid size "${v}" (e.g. 4MiB, 512k)`);
  const mult: Record<string, number> = { k: 1024, m: 1024 ** 2, g: 1024 ** 3 };
  return Number(m[1]) * (m[2] ? mult[m[2][0].toLowerCase()] : 1);
}

export function parseBool(v: string): boolean {
  if (/^(true|1|yes)$/i.test(v)) return true;
  if (/^(false|0|no)$/i.test(v)) return false;
  throw new InvalidArgumentError('expected true or false');
}

/** Registry flags shared by every command that reads or writes a registry. */
export function addRegistryOptions(c: Command): Command {
  return c
    .option('--creds <user:pass>', 'registry credentials (default: from the docker config.json)')
    .option('--authfile <file>', 'docker config.json / containers auth.json to read credentials from')
    .option('--tls-verify <bool>', 'verify TLS certificates (default: yes, except loopback registries, which may also use plain HTTP); false also allows plain HTTP', parseBool)
    .option('--registry-token <token>', 'bearer token for the registry')
    .option('--peer <url>', "read through the node's d4fs-peer (its mirror URL, e.g. http://127.0.0.1:5050; default $D4FS_PEER; none: off); the origin is used when the peer is down");
}

export function registryOptionsOf(o: { creds?: string; authfile?: string; tlsVerify?: boolean; registryToken?: string; peer?: string }): RegistryOptions {
  return { creds: o.creds, authFile: o.authfile, tlsVerify: o.tlsVerify, registryToken: o.registryToken, mirror: peerOf(o), userAgent: 'd4fs/0.1' };
}

/** The node's d4fs-peer to read through: --peer, else $D4FS_PEER; "none" turns it off. */
export function peerOf(o: { peer?: string }): string | undefined {
  const v = o.peer ?? process.env.D4FS_PEER;
  if (!v || v === 'none') return undefined;
  try {
    return new URL(v).toString();
  } catch {
    throw invalidArgument(`--peer ${JSON.stringify(v.slice(0, 100))} is not a URL (e.g. http://127.0.0.1:5050)`);
  }
}

/** A progress reporter on stderr when it is a terminal and not disabled. */
export function progressReporter(enabled: boolean): { onProgress?: (e: ProgressEvent) => void; stop(): void } {
  if (!enabled || !process.stderr.isTTY) return { stop() {} };
  const { SingleBar, Presets } = require('cli-progress') as typeof import('cli-progress'); // only with a terminal
  const bar = new SingleBar({ format: '{phase} [{bar}] {percentage}% | {value}/{total} {unit}', stream: process.stderr, hideCursor: true }, Presets.shades_classic);
  let phase = '';
  return {
    onProgress(e: ProgressEvent) {
      if (e.phase !== phase) {
        if (phase) bar.stop();
        phase = e.phase;
        bar.start(Math.max(1, e.total), e.done, { phase: e.phase.padEnd(8), unit: e.phase === 'resolve' || e.phase === 'write' ? '' : 'bytes' });
      } else {
        bar.update(e.done);
      }
    },
    stop() {
      if (phase) bar.stop();
    },
  };
}

export function printJson(v: unknown): void {
  process.stdout.write(JSON.stringify(v, null, 2) + '\n');
}

export function humanBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${u[i]}`;
}

export { D4fsError };
