#!/usr/bin/env node
/**
 * d4fs-snapshotter: containerd proxy snapshotter of d4fs.
 *
 *     d4fs-snapshotter --root /var/lib/d4fs --address /run/d4fs/d4fs.sock \
 *                      [--config FILE.toml|.json] [--log-level info]
 *
 * Register it in containerd's config with install_snapshotter.sh
 * ([proxy_plugins.d4fs] type = "snapshot", address = the socket).
 * SIGTERM or SIGINT stop it gracefully.
 */
import { Command } from 'commander';
import { exitCodeOf, toD4fsError } from '../src/errors';
import { createLogger, resolveConfig, runSnapshotter } from '../src/snapshotter';

interface Flags {
  root?: string;
  address?: string;
  config?: string;
  logLevel?: string;
}

async function main(argv: string[]): Promise<void> {
  const program = new Command()
    .name('d4fs-snapshotter')
    .description('containerd proxy snapshotter of d4fs (overlayfs, with delta images over FUSE)')
    .option('--root <dir>', 'state directory (default /var/lib/d4fs)')
    .option('--address <socket>', 'unix socket to serve on (default /run/d4fs/d4fs.sock)')
    .option('--config <file>', 'configuration file (.toml or .json)')
    .option('--log-level <level>', 'trace, debug, info, warn, error, fatal or silent (default info)')
    .showHelpAfterError();
  program.parse(argv);
  const flags = program.opts<Flags>();

  const cfg = resolveConfig({ root: flags.root, address: flags.address, logLevel: flags.logLevel }, flags.config);
  const log = createLogger(cfg.logLevel);
  const running = await runSnapshotter(cfg, log);

  let signals = 0;
  const stop = (signal: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      log.warn({ signal }, 'second signal, exiting now');
      process.exit(1);
    }
    log.info({ signal }, 'shutting down');
    running.shutdown().then(
      () => process.exit(0),
      (e: unknown) => {
        log.error({ err: e }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main(process.argv).catch((e: unknown) => {
  const err = toD4fsError(e);
  process.stderr.write(`d4fs-snapshotter: ${err.message}\n`);
  process.exit(exitCodeOf(err));
});
