#!/usr/bin/env node
/**
 * d4fs-fuse-manager: the process that serves d4fs's FUSE mounts for the
 * snapshotter (which starts it on demand, detached, and talks to it over
 * <root>/manager.sock). It outlives the snapshotter; SIGTERM or SIGINT
 * unmount everything and stop it (the mounts are recorded and come back at
 * the next start).
 *
 *     d4fs-fuse-manager --root /var/lib/d4fs/fuse [--cache-max-bytes N]
 *                       [--threads N] [--fuse-binding fuse3|fuse-native]
 *                       [--log-level info]
 */
// Cache reads and workers share libuv's thread pool: give it room before first use.
process.env.UV_THREADPOOL_SIZE ??= '16';

import { Command } from 'commander';
import { exitCodeOf, invalidArgument, toD4fsError } from '../src/errors';
import { parseBinding } from '../src/fuse/binding';
import { FuseManager } from '../src/fuse/manager';
import { createLogger } from '../src/snapshotter/log';

interface Flags {
  root: string;
  socket?: string;
  cacheDir?: string;
  cacheMaxBytes?: string;
  threads?: string;
  prefetchMaxBytes?: string;
  fuseBinding?: string;
  logLevel?: string;
}

function positiveInt(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n <= 0) throw invalidArgument(`${name} must be a positive integer`);
  return n;
}

async function main(argv: string[]): Promise<void> {
  const flags = new Command()
    .name('d4fs-fuse-manager')
    .description('serves the FUSE mounts of d4fs delta images')
    .requiredOption('--root <dir>', 'state directory (socket, state file, cache)')
    .option('--socket <path>', 'unix socket (default <root>/manager.sock)')
    .option('--cache-dir <dir>', 'content cache (default <root>/cache)')
    .option('--cache-max-bytes <n>', 'bound of the content cache (default 10 GiB)')
    .option('--threads <n>', 'worker threads (default: one per core)')
    .option('--prefetch-max-bytes <n>', 'bytes an update may build ahead: the new versions of what the old image read (default 512 MiB; 0 turns it off)')
    .option('--fuse-binding <name>', 'fuse3 (libfuse3 low-level, default when it loads) or fuse-native (libfuse2)')
    .option('--log-level <level>', 'trace, debug, info, warn, error (default info)', 'info')
    .showHelpAfterError()
    .parse(argv)
    .opts<Flags>();
  const log = createLogger(flags.logLevel ?? 'info', 'd4fs-fuse-manager');
  process.on('unhandledRejection', (e) => log.error({ err: e }, 'unhandled rejection'));
  const manager = await FuseManager.start({
    root: flags.root,
    socket: flags.socket,
    cacheDir: flags.cacheDir,
    cacheMaxBytes: positiveInt('--cache-max-bytes', flags.cacheMaxBytes),
    threads: positiveInt('--threads', flags.threads),
    prefetchMaxBytes: flags.prefetchMaxBytes === '0' ? 0 : positiveInt('--prefetch-max-bytes', flags.prefetchMaxBytes),
    binding: flags.fuseBinding === undefined ? undefined : parseBinding(flags.fuseBinding, '--fuse-binding'),
    log,
  });
  let signals = 0;
  const stop = (signal: NodeJS.Signals) => {
    if (++signals > 1) process.exit(1);
    log.info({ signal }, 'stopping');
    manager.stop().then(
      () => process.exit(0),
      (e: unknown) => {
        log.error({ err: e }, 'stop failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main(process.argv).catch((e: unknown) => {
  const err = toD4fsError(e);
  process.stderr.write(`d4fs-fuse-manager: ${err.message}\n`);
  process.exit(exitCodeOf(err));
});
