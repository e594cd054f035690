#!/usr/bin/env node
/**
 * d4fs-snapshotter: containerd proxy snapshotter of d4fs.
 *
 *     d4fs-snapshotter --root /var/lib/d4fs --address /run/d4fs/d4fs.sock \
 *                      [--store /var/lib/d4fs/store]... [--config FILE.toml|.json]
 *                      [--log-level info] [--no-fuse]
 *
 * The snapshot of a d4fs image (labelled with its image id, and named by the
 * image's synthetic chain id) is mounted over FUSE by the FUSE manager, a
 * process of its own under <root>/fuse that this daemon starts on demand and
 * that outlives it; --no-fuse (or `fuse = false`) leaves a plain overlay
 * snapshotter. Images are served from the local stores given by --store (or
 * `store` in the config file; default $D4FS_STORE or /var/lib/d4fs/store),
 * never from a path a label names.
 *
 * Register it in containerd's config with install_snapshotter.sh
 * ([proxy_plugins.d4fs] type = "snapshot", address = the socket).
 * SIGTERM or SIGINT stop it gracefully.
 */
import path from 'node:path';
import { Command } from 'commander';
import { exitCodeOf, toD4fsError } from '../src/errors';
import { FuseFileSystem } from '../src/fuse/client';
import { loadPolicy } from '../src/signing';
import { CriPullProvider } from '../src/cri/provider';
import { createLogger, FileSystemRemoteProvider, resolveConfig, runSnapshotter, storesOf } from '../src/snapshotter';

interface Flags {
  root?: string;
  address?: string;
  config?: string;
  logLevel?: string;
  /** --store, repeated */
  store: string[];
  /** --verify-key, repeated */
  verifyKey: string[];
  /** false with --no-cri */
  cri: boolean;
  /** false with --no-fuse */
  fuse: boolean;
}

async function main(argv: string[]): Promise<void> {
  const program = new Command()
    .name('d4fs-snapshotter')
    .description('containerd proxy snapshotter of d4fs (overlayfs, with delta images over FUSE)')
    .option('--root <dir>', 'state directory (default /var/lib/d4fs)')
    .option('--address <socket>', 'unix socket to serve on (default /run/d4fs/d4fs.sock)')
    .option('--config <file>', 'configuration file (.toml or .json)')
    .option('--log-level <level>', 'trace, debug, info, warn, error, fatal or silent (default info)')
    .option(
      '--store <dir>',
      'local store of the d4fs images to serve (repeatable; default $D4FS_STORE or /var/lib/d4fs/store)',
      (v: string, prev: string[]) => [...prev, v],
      [] as string[],
    )
    .option('--verify-key <pem>', 'mount only d4fs images whose every file is signed by one of these public keys (repeatable)', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('--no-fuse', 'do not serve d4fs images over FUSE (plain overlay snapshotter)')
    .option('--no-cri', 'do not turn CRI pulls of images with d4fs artifacts into delta pulls')
    .showHelpAfterError();
  program.parse(argv);
  const flags = program.opts<Flags>();

  const cfg = resolveConfig(
    { root: flags.root, address: flags.address, logLevel: flags.logLevel, fuse: flags.fuse ? undefined : false, stores: flags.store.length ? flags.store : undefined, verifyKeys: flags.verifyKey.length ? flags.verifyKey : undefined, cri: flags.cri ? undefined : false },
    flags.config,
  );
  const log = createLogger(cfg.logLevel);
  const policy = await loadPolicy({ verifyKeys: cfg.verifyKeys });
  const fuseFs =
    cfg.fuse === false
      ? undefined
      : new FuseFileSystem({
          root: path.join(cfg.root, 'fuse'),
          stores: storesOf(cfg),
          policy,
          log,
          managerArgs: [
            ...(cfg.fuseCacheMaxBytes ? ['--cache-max-bytes', String(cfg.fuseCacheMaxBytes)] : []),
            ...(cfg.fuseBinding ? ['--fuse-binding', cfg.fuseBinding] : []),
          ],
        });
  const cri = fuseFs && cfg.cri !== false ? new CriPullProvider({ fuse: fuseFs, root: cfg.root, store: storesOf(cfg)[0], policy, log, registry: { authFile: cfg.registryAuthFile, tlsVerify: cfg.registryTlsVerify, mirror: cfg.peer } }) : undefined;
  const loaded = fuseFs ? new FileSystemRemoteProvider(fuseFs, (labels, target) => fuseFs.accepts(labels, target)) : undefined;
  const running = await runSnapshotter(
    cfg,
    log,
    fuseFs && loaded
      ? {
          fileSystem: cri ? cri.fileSystem() : fuseFs,
          // a loaded d4fs image's own snapshot (ctr-cli load), else a CRI pull's layers
          remote: {
            prepare: async (key, labels, target) => (fuseFs.accepts(labels, target) ? loaded.prepare(key, labels, target) : cri ? cri.prepare(key, labels, target) : false),
            ensureParent: async (name) => cri?.ensureParent(name),
          },
        }
      : {},
  );
  // The FUSE manager starts with the snapshotter, not at the first mount: a first
  // `ctr-cli load` or CRI pull would otherwise wait ~0.3 s for it (measured on the
  // 150k-file image: Prepare 400 ms with the start, ~100 ms without). A manager that
  // cannot start now is started again by the first call that needs it.
  fuseFs?.ensureManager().catch((e: unknown) => log.warn({ err: toD4fsError(e).message }, 'FUSE manager did not start; the first mount tries again'));

  let signals = 0;
  const stop = (signal: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      log.warn({ signal }, 'second signal, exiting now');
      process.exit(1);
    }
    log.info({ signal }, 'shutting down');
    // The FUSE manager keeps serving running containers; only our watchdog stops.
    fuseFs?.close();
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
