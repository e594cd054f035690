/**
 * `ctr-cli serve` (and the `d4fs-server` binary): run d4fs-server on a
 * directory; `serve gc` collects garbage in a root; `serve token` makes a
 * token line for the tokens file.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import pino from 'pino';
import { D4fsServer } from '../server/server';
import type { MergeStrategy } from '../server/merges';
import { gcRoot, GcReport } from '../server/gc';
import { newToken } from '../server/auth';
import { invalidArgument, unavailable } from '../errors';
import { DEFAULT_STORE_TTL_MS } from '../server/regstore';
import { setIndexLimits } from '../format/types';
import { basename, join } from 'node:path';
import { loadSigningKey } from '../signing';
import { checkLogLevel, LOG_LEVELS } from '../util/loglevel';
import { policyOf } from './sign';
import { action, humanBytes, parseBool, parseIntOpt, parseSize, printJson, registryOptionsOf, say } from './common';

/** "90s", "30m", "6h", "7d" or plain seconds → milliseconds. */
export function parseDuration(v: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(v.trim());
  if (!m) throw new InvalidArgumentError(`invalid duration "${v}" (e.g. 90s, 30m, 6h, 7d)`);
  const unit: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
  return Math.round(Number(m[1]) * unit[m[2] ?? 's']);
}

/** "1KiB", "64k/s", "0" → bytes per second. */
export function parseRate(v: string): number {
  return parseSize(v.trim().replace(/\/s$/i, ''));
}


/** The server's options on a command. */
function addServeOptions(c: Command): Command {
  return c
    .option('--root <dir>', 'directory of the blob store and catalogue (created)')
    .option('--listen <host:port>', 'address to listen on', '127.0.0.1:8081')
    .option('--tokens <file>', 'tokens file: lines "rw|ro TOKEN [name]"; without it the server is read-only')
    .option('--read-open', 'reads need no token (writes always do)')
    .option('--tls-cert <file>', 'serve HTTPS with this PEM certificate (with --tls-key)')
    .option('--tls-key <file>', 'PEM private key of --tls-cert')
    .option('--max-upload <size>', 'largest accepted upload (e.g. 8GiB)', parseSize)
    .option('--max-uploads <n>', 'uploads at once (more get 503)', parseIntOpt('--max-uploads', 1, 10_000))
    .option('--min-upload-rate <size>', 'request bodies (uploads) must average this many bytes/s over each --upload-rate-window, else 408 and the slot is freed (0: no minimum)', parseRate, 1024)
    .option('--upload-rate-window <duration>', 'window of --min-upload-rate', parseDuration, 30_000)
    .option('--max-index-size <size>', 'largest raw index of an uploaded .cdimg (default 512MiB or $D4FS_MAX_INDEX_BYTES); bigger ones are refused before they are decompressed', parseSize)
    .option('--headers-timeout <duration>', "a request's headers must arrive within this (else 408)", parseDuration, 30_000)
    .option('--gc-interval <duration>', 'run garbage collection this often (e.g. 6h); default: only `serve gc`', parseDuration)
    .option('--merge-ttl <duration>', 'drop cached merges unused this long', parseDuration)
    .option('--merge-strategy <how>', 'compose (copy patches, instant), rediff (diff against the full base: smaller, CPU) or auto (compose now, rediff in the background)', 'auto')
    .addOption(new Option('--shutdown-grace <duration>', 'on SIGTERM, let transfers finish this long (e.g. 30s, 2m)').argParser(parseDuration).default(30_000, '30s'))
    .option('--log-level <level>', `log level: ${LOG_LEVELS.join(', ')}`, 'info')
    .option('--store <docker://registry/prefix>', 'keep catalogue and blobs in an OCI registry shared by several replicas (--root then holds a mirror, a blob cache and the merges)')
    .addOption(new Option('--store-ttl <duration>', 'with --store: how long a repository read from the registry is trusted (e.g. 5s)').argParser(parseDuration).default(DEFAULT_STORE_TTL_MS, `${DEFAULT_STORE_TTL_MS / 1000}s`))
    .option('--creds <user:pass>', 'with --store: registry credentials (default: from the docker config.json)')
    .option('--authfile <file>', 'with --store: docker config.json / containers auth.json to read credentials from')
    .option('--tls-verify <bool>', 'with --store: verify the registry\'s TLS certificate (default: yes, except loopback registries, which may also use plain HTTP)', parseBool)
    .option('--registry-token <token>', 'with --store: bearer token for the registry')
    .option('--verify-key <pem>', 'a publisher key the server trusts (repeatable): what --require-signed asks of uploads, and what merges must come from to be signed with --signing-key', (v: string, prev: string[] = []) => [...prev, v])
    .option('--policy <file>', 'signature policy file: {"verifyKeys": ["key.pub.pem", …]} (like --verify-key)')
    .option('--require-signed', 'refuse uploads without a signature by a trusted key (401; nothing stored)')
    .option('--signing-key <pem>', "sign the merges the server composes with this private key (only merges of files signed by trusted keys); clients that should accept merges trust its public key")
    .option('--tracker', 'also be the fleet\'s BitTorrent tracker and blob metadata store (/announce; nodes\' d4fs-peers join with their tokens; metadata of the server\'s own files is made here)');
}

async function runServer(o: Record<string, unknown>): Promise<void> {
  if (!o.root) throw invalidArgument('--root is required (the directory to serve)');
  if (!!o.tlsCert !== !!o.tlsKey) throw invalidArgument('--tls-cert and --tls-key go together');
  if (!['compose', 'rediff', 'auto'].includes(String(o.mergeStrategy))) throw invalidArgument('--merge-strategy must be compose, rediff or auto');
  if (!((o.uploadRateWindow as number) > 0)) throw invalidArgument('--upload-rate-window must be longer than 0');
  if (!((o.headersTimeout as number) > 0)) throw invalidArgument('--headers-timeout must be longer than 0');
  if (o.maxIndexSize !== undefined) {
    if (!((o.maxIndexSize as number) > 0)) throw invalidArgument('--max-index-size must be over 0');
    setIndexLimits({ maxRaw: o.maxIndexSize as number });
  }
  const level = String(o.logLevel);
  checkLogLevel(level);
  const policy = await policyOf(o as { verifyKey?: string[]; policy?: string });
  // refusals name keys by file name and key id, not by where they are on the server
  for (const k of policy.keys) k.source = basename(k.source);
  if (o.requireSigned && !policy.keys.length) throw invalidArgument('--require-signed needs the keys to trust: --verify-key KEY.pub.pem (repeatable) or --policy FILE');
  if (o.signingKey && !policy.keys.length) {
    throw invalidArgument('--signing-key needs the keys to trust (--verify-key KEY.pub.pem or --policy FILE): the server signs only merges of files signed by those keys');
  }
  const signingKey = o.signingKey ? await loadSigningKey(o.signingKey as string) : undefined;
  const logger = pino({ name: 'd4fs-server', level, base: { pid: process.pid } }, pino.destination({ dest: 2, sync: true }));
  // the embedded tracker: its routes come before the server's, its tokens are the server's
  const ref: { server?: D4fsServer } = {};
  let tracker: import('../p2p/tracker').TrackerService | undefined;
  if (o.tracker) {
    // lazy on purpose: the tracker and torrent modules load only with --tracker
    const { TrackerService } = require('../p2p/tracker') as typeof import('../p2p/tracker');
    const { makeTorrent } = require('../p2p/torrent') as typeof import('../p2p/torrent');
    tracker = await TrackerService.create({
      dir: join(o.root as string, 'tracker'),
      log: logger.child({ part: 'tracker' }),
      authorize: (token) => {
        if (!ref.server) throw unavailable('server starting');
        ref.server.auth.check(token ? `Bearer ${token}` : undefined, 'ro');
      },
      ownTorrent: async (digest, root) => {
        const local = root && ref.server ? await ref.server.localBlob(root).catch(() => undefined) : undefined;
        return local && local.fileDigest === digest ? (await makeTorrent(local.path, digest)).bytes : undefined;
      },
    });
  }
  const server = await D4fsServer.start({
    extraHandler: tracker ? (req, res) => tracker!.handle(req, res) : undefined,
    root: o.root as string,
    listen: o.listen as string,
    tokensFile: o.tokens as string | undefined,
    readOpen: !!o.readOpen,
    tls: o.tlsCert ? { cert: o.tlsCert as string, key: o.tlsKey as string } : undefined,
    maxUploadBytes: o.maxUpload as number | undefined,
    maxUploads: o.maxUploads as number | undefined,
    minUploadRate: o.minUploadRate as number,
    uploadRateWindowMs: o.uploadRateWindow as number,
    headersTimeoutMs: o.headersTimeout as number,
    gcIntervalMs: o.gcInterval as number | undefined,
    gc: { mergeTtlMs: o.mergeTtl as number | undefined },
    mergeStrategy: o.mergeStrategy as MergeStrategy,
    signing: policy.keys.length ? { policy, requireSigned: !!o.requireSigned, signingKey } : undefined,
    logger,
    store: o.store
      ? { url: o.store as string, ttlMs: o.storeTtl as number, registry: registryOptionsOf(o as { creds?: string; authfile?: string; tlsVerify?: boolean; registryToken?: string }) }
      : undefined,
  });
  ref.server = server;
  if (tracker) logger.info({ announce: `${o.tlsCert ? 'https' : 'http'}://${String(o.listen)}/announce` }, 'BitTorrent tracker enabled');
  process.on('SIGHUP', () => void server.reloadTokens());
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'stopping: finishing transfers in flight');
    server.stop(o.shutdownGrace as number).then(
      () => process.exit(0),
      (e: unknown) => {
        logger.error({ err: (e as Error).message }, 'unclean stop');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  await new Promise<never>(() => undefined); // runs until a signal
}

function printGc(r: GcReport): void {
  const verb = r.dryRun ? 'would remove' : 'removed';
  say(
    `${verb}: ${r.files.length} unreferenced files, ${r.merges.length} stale merges, ${r.orphanBlobs.length} orphan blobs, ${r.temps} temp files` +
      ` (${humanBytes(r.freedBytes)}); ${r.images} image versions dropped\n`,
  );
}

/** `gc` and `token` under a server command. */
function addServerSubcommands(parent: Command): void {
  parent
    .command('gc')
    .description('remove files that lead to no tag, stale merges, orphan blobs and temp files (the server may be running)')
    .option('--root <dir>', 'the server root')
    .option('--merge-ttl <duration>', 'drop cached merges unused this long (default 7d)', parseDuration)
    .option('--grace <duration>', 'never remove anything younger than this', parseDuration, 3_600_000)
    .option('--dry-run', 'only report')
    .option('--json', 'print the report as JSON')
    .action(
      action(async (o: Record<string, unknown>, cmd: Command) => {
        // `ctr-cli serve gc --root X`: commander gives options the parent also has (--root, --merge-ttl) to the parent
        const up = cmd.parent?.opts() ?? {};
        const root = (o.root ?? up.root) as string | undefined;
        if (!root) throw invalidArgument('--root is required (the server root)');
        const mergeTtlMs = (o.mergeTtl ?? up.mergeTtl ?? 7 * 86_400_000) as number;
        const r = await gcRoot(root, { mergeTtlMs, graceMs: o.grace as number, dryRun: !!o.dryRun });
        if (o.json) printJson(r);
        else printGc(r);
      }),
    );
  parent
    .command('token')
    .description('print a new random token as a line for the tokens file')
    .argument('[access]', 'ro or rw (the same as --access)')
    .argument('[name]', 'who holds it (the same as --name)')
    .option('--access <ro|rw>', 'what the token may do (default ro)')
    .option('--name <name>', 'who holds it (shown in the logs)')
    .action(
      action(async (access: string | undefined, holder: string | undefined, o: Record<string, unknown>) => {
        if (access && o.access && access !== o.access) throw invalidArgument(`give the access once: ${access} or --access ${String(o.access)}`);
        o.access = o.access ?? access ?? 'ro';
        o.name = o.name ?? holder;
        if (o.access !== 'ro' && o.access !== 'rw') throw invalidArgument('the access must be ro or rw (e.g. ctr-cli serve token rw ci >> tokens)');
        const name = String(o.name ?? '').replace(/\s+/g, '-');
        say(`${o.access} ${newToken()}${name ? ` ${name}` : ''}\n`);
      }),
    );
}

const EXAMPLES = `
Examples:
  ctr-cli serve token --access rw --name ci >> /etc/d4fs/tokens && chmod 600 /etc/d4fs/tokens
  ctr-cli serve --root /var/lib/d4fs-server --listen 0.0.0.0:8081 --tokens /etc/d4fs/tokens
  ctr-cli serve gc --root /var/lib/d4fs-server
  ctr-cli serve --root /var/lib/d4fs-server --tokens /etc/d4fs/tokens --require-signed --verify-key release.pub.pem --signing-key server.pem
  ctr-cli serve --root /var/lib/d4fs-replica --store docker://registry.example:5000/d4fs --tokens /etc/d4fs/tokens   (one of several replicas)

Signals: SIGTERM/SIGINT stop gracefully (transfers finish within --shutdown-grace), SIGHUP reloads the tokens file.
`;

/** `ctr-cli serve [gc|token]`. */
export function registerServe(program: Command): void {
  const serve = addServeOptions(program.command('serve').description('run d4fs-server: push/pull of .cdimg files over HTTP with the cheapest chain, merged'));
  serve.addHelpText('after', EXAMPLES).action(action(runServer));
  addServerSubcommands(serve);
}

/** The `d4fs-server` program (cli/d4fs-server.ts): the same server, as its own binary. */
export function buildServerProgram(): Command {
  const p = addServeOptions(new Command('d4fs-server').description('d4fs-server: distribution of delta images (same as `ctr-cli serve`)'));
  p.option('--debug', 'print stack traces on errors').enablePositionalOptions().addHelpText('after', EXAMPLES.replace(/ctr-cli serve/g, 'd4fs-server')).action(action(runServer));
  addServerSubcommands(p);
  return p;
}
