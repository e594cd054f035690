/**
 * Configuration of d4fs-snapshotter: defaults, a TOML or JSON file, and
 * command-line flags, in increasing order of precedence.
 *
 * File keys (all optional):
 *
 *     root = "/var/lib/d4fs"            # state directory
 *     address = "/run/d4fs/d4fs.sock"   # unix socket containerd connects to
 *     log_level = "info"                # trace|debug|info|warn|error|fatal|silent
 *     request_timeout = 120             # seconds one request may take
 *     async_remove = false              # delete directories on Cleanup only
 *     upperdir_label = false            # report containerd.io/snapshot/overlay.upperdir
 *     fuse = true                       # serve d4fs images through the FUSE manager
 *     fuse_cache_max_bytes = 10737418240  # bound of the FUSE content cache
 *     fuse_binding = "fuse3"            # or "fuse-native" (libfuse2 fallback); default fuse3 when it loads
 *     store = "/var/lib/d4fs/store"     # local store(s) of d4fs images to serve: a path or a list of paths
 *     verify_keys = ["/etc/d4fs/release.pub.pem"]  # mount only images whose every file carries a signature by one of these keys
 *     cri = true                        # CRI pulls of images with d4fs artifacts become delta pulls (needs fuse)
 *     registry_auth_file = "/root/.docker/config.json"  # credentials of CRI pulls (default: docker's config.json, $REGISTRY_AUTH_FILE)
 *     registry_tls_verify = true        # false: accept self-signed certificates and plain HTTP (loopback registries use HTTP anyway)
 *     peer = "http://127.0.0.1:5050"    # the node's d4fs-peer: CRI pulls read manifests, artifacts and blobs through its cache and swarm
 *
 * The stores d4fs images are served from come from here only (default
 * $D4FS_STORE, else /var/lib/d4fs/store: where `ctr-cli load` keeps them),
 * never from a snapshot label.
 */
import fs from 'node:fs';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { type FuseBindingName, parseBinding } from './fuse-binding';
import { invalidArgument } from '../errors';
import { checkLogLevel } from '../util/loglevel';

export interface SnapshotterConfig {
  root: string;
  address: string;
  logLevel: string;
  requestTimeoutMs: number;
  asyncRemove: boolean;
  upperdirLabel: boolean;
  /** Serve d4fs images (snapshots labelled with a d4fs image id) through FUSE (default true). */
  fuse?: boolean;
  /** Bound of the FUSE manager's content cache in bytes (default 10 GiB). */
  fuseCacheMaxBytes?: number;
  /** FUSE binding of the FUSE manager (default: fuse3 when it loads, else fuse-native). */
  fuseBinding?: FuseBindingName;
  /** Local stores holding the d4fs images to serve, searched in order (default: {@link defaultStores}). */
  stores?: string[];
  /** Public keys (PEM files): when set, a d4fs image is mounted only if every file of its chain is signed by one of them. */
  verifyKeys?: string[];
  /** CRI pulls of images with d4fs artifacts attached become delta pulls (default true; needs fuse). */
  cri?: boolean;
  /** docker config.json with the credentials of CRI pulls (default: docker's own lookup). */
  registryAuthFile?: string;
  /** false: accept self-signed certificates and plain HTTP for CRI pulls. */
  registryTlsVerify?: boolean;
  /** The node's d4fs-peer (mirror URL): CRI pulls read through it, the registry when it is down. */
  peer?: string;
}

/** Where `ctr-cli load` keeps images unless told otherwise. */
export const DEFAULT_STORE = '/var/lib/d4fs/store';

/** The stores of a configuration: its own, else $D4FS_STORE, else /var/lib/d4fs/store. */
export function storesOf(cfg: Pick<SnapshotterConfig, 'stores'>): string[] {
  if (cfg.stores && cfg.stores.length > 0) return cfg.stores;
  return [path.resolve(process.env.D4FS_STORE || DEFAULT_STORE)];
}

export const DEFAULT_CONFIG: Readonly<SnapshotterConfig> = {
  root: '/var/lib/d4fs',
  address: '/run/d4fs/d4fs.sock',
  logLevel: 'info',
  requestTimeoutMs: 120_000,
  asyncRemove: false,
  upperdirLabel: false,
};

function expect<T>(file: string, key: string, value: unknown, type: 'string' | 'number' | 'boolean'): T {
  if (typeof value !== type) throw invalidArgument(`${file}: ${key} must be a ${type}`);
  return value as T;
}

/** Reads a config file (.toml, or .json); unknown keys are refused. */
export function loadConfigFile(file: string): Partial<SnapshotterConfig> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw invalidArgument(`cannot read config ${file}: ${(e as Error).message}`);
  }
  let raw: Record<string, unknown>;
  try {
    raw = (path.extname(file).toLowerCase() === '.json' ? JSON.parse(text) : parseToml(text)) as Record<string, unknown>;
  } catch (e) {
    throw invalidArgument(`cannot parse config ${file}: ${(e as Error).message}`);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw invalidArgument(`${file}: expected a table`);
  const out: Partial<SnapshotterConfig> = {};
  for (const [key, value] of Object.entries(raw)) {
    switch (key) {
      case 'root':
        out.root = expect<string>(file, key, value, 'string');
        break;
      case 'address':
        out.address = expect<string>(file, key, value, 'string');
        break;
      case 'log_level':
        out.logLevel = expect<string>(file, key, value, 'string');
        break;
      case 'request_timeout': {
        const s = typeof value === 'bigint' ? Number(value) : expect<number>(file, key, value, 'number');
        if (!(s > 0)) throw invalidArgument(`${file}: request_timeout must be a positive number of seconds`);
        out.requestTimeoutMs = Math.round(s * 1000);
        break;
      }
      case 'async_remove':
        out.asyncRemove = expect<boolean>(file, key, value, 'boolean');
        break;
      case 'upperdir_label':
        out.upperdirLabel = expect<boolean>(file, key, value, 'boolean');
        break;
      case 'fuse':
        out.fuse = expect<boolean>(file, key, value, 'boolean');
        break;
      case 'fuse_cache_max_bytes': {
        const n = typeof value === 'bigint' ? Number(value) : expect<number>(file, key, value, 'number');
        if (!Number.isSafeInteger(n) || n <= 0) throw invalidArgument(`${file}: fuse_cache_max_bytes must be a positive integer`);
        out.fuseCacheMaxBytes = n;
        break;
      }
      case 'fuse_binding':
        out.fuseBinding = parseBinding(expect<string>(file, key, value, 'string'), `${file}: fuse_binding`);
        break;
      case 'store': {
        const list = Array.isArray(value) ? value : [value];
        if (list.length === 0 || !list.every((v) => typeof v === 'string' && v !== '')) {
          throw invalidArgument(`${file}: store must be a path or a list of paths`);
        }
        out.stores = list as string[];
        break;
      }
      case 'cri':
        out.cri = expect<boolean>(file, key, value, 'boolean');
        break;
      case 'registry_auth_file':
        out.registryAuthFile = path.resolve(path.dirname(file), expect<string>(file, key, value, 'string'));
        break;
      case 'registry_tls_verify':
        out.registryTlsVerify = expect<boolean>(file, key, value, 'boolean');
        break;
      case 'peer': {
        const v = expect<string>(file, key, value, 'string');
        try {
          const u = new URL(v);
          if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('scheme');
        } catch {
          throw invalidArgument(`${file}: peer must be the URL of the node's d4fs-peer, e.g. "http://127.0.0.1:5050"`);
        }
        out.peer = v;
        break;
      }
      case 'verify_keys': {
        const list = Array.isArray(value) ? value : [value];
        if (!list.every((v) => typeof v === 'string' && v !== '')) throw invalidArgument(`${file}: verify_keys must be a path or a list of paths of PEM public keys`);
        out.verifyKeys = (list as string[]).map((k) => path.resolve(path.dirname(file), k));
        break;
      }
      default:
        throw invalidArgument(`${file}: unknown key ${JSON.stringify(key)}`);
    }
  }
  return out;
}

/** Merges defaults, the file (if any) and flags; validates the result. */
export function resolveConfig(flags: Partial<SnapshotterConfig>, file?: string): SnapshotterConfig {
  const fromFile = file ? loadConfigFile(file) : {};
  const defined = Object.fromEntries(Object.entries(flags).filter(([, v]) => v !== undefined)) as Partial<SnapshotterConfig>;
  const cfg: SnapshotterConfig = { ...DEFAULT_CONFIG, ...fromFile, ...defined };
  if (!path.isAbsolute(cfg.root)) cfg.root = path.resolve(cfg.root);
  if (!path.isAbsolute(cfg.address)) cfg.address = path.resolve(cfg.address);
  if (cfg.stores) cfg.stores = cfg.stores.map((s) => path.resolve(s));
  checkLogLevel(cfg.logLevel, 'log level');
  // sun_path holds 108 bytes including the terminating NUL.
  if (Buffer.byteLength(cfg.address) > 107) throw invalidArgument(`socket path too long (max 107 bytes): ${cfg.address}`);
  return cfg;
}
