/**
 * `ctr-cli load`, `ctr-cli images` and `ctr-cli rmi`: the local store of
 * .cdimg files and its registration with containerd.
 *
 *   ctr-cli load --image nginx:1 --cdimg nginx-1.cdimg
 *   ctr-cli load --image nginx:2 --cdimg nginx-1-2.cdimg     (a delta: nginx:1's image must be held)
 *   ctr run --snapshotter d4fs nginx:2 web
 *   ctr-cli images
 *   ctr-cli rmi nginx:1
 */
import path from 'node:path';
import { Command, Option } from 'commander';
import type { LoadImageResult, PendingLoad } from '../containerd/load';
import { invalidArgument, notFound } from '../errors';
import { LocalStore, type StoredFile, checkImageName } from '../store/store';
import { loadPolicy } from '../signing';
import { action, humanBytes, printJson, say } from './common';

// Lazy: the containerd modules load gRPC and protobufjs (~150 ms of a 150k-file
// `load --no-containerd`, measured with a require timer), so only a command that
// talks to containerd loads them.
const containerdClient = (): typeof import('../containerd/client') => require('../containerd/client') as typeof import('../containerd/client');
const containerdLoad = (): typeof import('../containerd/load') => require('../containerd/load') as typeof import('../containerd/load');

/**
 * The defaults the help text shows, without loading the containerd modules;
 * what a command uses comes from those modules (containerdOf).
 */
const DEFAULT_CONTAINERD_ADDRESS = '/run/containerd/containerd.sock';
const DEFAULT_NAMESPACE = 'default';
const DEFAULT_SNAPSHOTTER = 'd4fs';

/** The local store's default directory (overridden by $D4FS_STORE and --store). */
export const DEFAULT_STORE = '/var/lib/d4fs/store';

/** The store directory from the flags, the environment or the default, absolute. */
export function storeDirOf(o: { store?: string }): string {
  return path.resolve(o.store ?? process.env.D4FS_STORE ?? DEFAULT_STORE);
}

/** Flags naming containerd: --address (D4C alias --host), --namespace, --snapshotter. */
function addContainerdOptions(c: Command): Command {
  return c
    .option('--address <socket>', `containerd's socket (default $CONTAINERD_ADDRESS or ${DEFAULT_CONTAINERD_ADDRESS})`)
    .addOption(new Option('--host <socket>', 'D4C alias of --address').hideHelp())
    .option('-n, --namespace <ns>', `containerd namespace (default ${DEFAULT_NAMESPACE})`)
    .option('--snapshotter <name>', `containerd snapshotter serving d4fs images (default ${DEFAULT_SNAPSHOTTER})`)
    .option('--no-containerd', 'only the local store: do not talk to containerd');
}

interface ContainerdFlags {
  address?: string;
  host?: string;
  namespace?: string;
  snapshotter?: string;
  containerd?: boolean;
}

function containerdOf(o: ContainerdFlags): { address: string; namespace: string; snapshotter: string } {
  const client = containerdClient();
  return {
    address: o.address ?? o.host ?? process.env.CONTAINERD_ADDRESS ?? client.DEFAULT_CONTAINERD_ADDRESS,
    namespace: o.namespace ?? client.DEFAULT_NAMESPACE,
    snapshotter: o.snapshotter ?? containerdLoad().DEFAULT_SNAPSHOTTER,
  };
}

/** "sha256:0123456789ab…" → "0123456789ab". */
const shortId = (id: string): string => id.replace(/^sha256:/, '').slice(0, 12);

/** One image of the store as `images` shows it. */
interface ImageRow {
  name: string;
  imageId: string;
  created: string;
  /** Files rebuilding the image, full image first; null when the chain is broken. */
  chain: { kind: StoredFile['kind']; rootDigest: string; size: number }[] | null;
  chainBytes: number;
}

function imageRows(store: LocalStore): ImageRow[] {
  return store.images().map((i) => {
    let chain: ImageRow['chain'] = null;
    try {
      chain = store.chainFor(i.imageId).map((f) => ({ kind: f.kind, rootDigest: f.rootDigest, size: f.size }));
    } catch {
      /* broken chain: shown as such */
    }
    return { name: i.name, imageId: i.imageId, created: i.created, chain, chainBytes: chain ? chain.reduce((n, f) => n + f.size, 0) : 0 };
  });
}

function chainText(chain: ImageRow['chain']): string {
  if (!chain) return 'broken';
  const deltas = chain.length - 1;
  return deltas === 0 ? 'full' : `full+${deltas} delta${deltas === 1 ? '' : 's'}`;
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('   ').trimEnd()).join('\n') + '\n';
}

function registerLoadCommand(program: Command): void {
  const c = program
    .command('load')
    .description('add a .cdimg (full image or delta) to the local store, name it, and register it with containerd so that `ctr run --snapshotter d4fs NAME ID` runs it')
    .argument('[name]', 'with no --cdimg: an image the local store holds already (after `pull --no-load`, or a failed load)')
    .option('-i, --image <name>', 'image name, REPO[:TAG] (e.g. nginx:1.22)')
    .addOption(new Option('--imageTag <name>', 'D4C alias of --image').hideHelp())
    .option('--cdimg <file>', 'the .cdimg to load (a delta needs its parent image loaded first)')
    .option('--store <dir>', `local store directory (default $D4FS_STORE or ${DEFAULT_STORE})`)
    .option('--move', 'move the .cdimg into the store instead of copying it (a rename when it is on the same filesystem; the file is gone from where it was once loaded)')
    .option('--json', 'print the result as JSON')
    .option('--verify-key <pem>', 'require a signature by this public key (repeatable: any of them)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--policy <file>', 'signature policy file: {"verifyKeys": ["key.pub.pem", …]}')
    .addHelpText('after', '\nExamples:\n  ctr-cli load --image nginx:1 --cdimg nginx-1.cdimg\n  ctr-cli load --image nginx:2 --cdimg nginx-1-2.cdimg\n  ctr run --rm --snapshotter d4fs nginx:2 web\n');
  addContainerdOptions(c).action(
    action(async (positional: string | undefined, o: ContainerdFlags & { image?: string; imageTag?: string; cdimg?: string; store?: string; move?: boolean; json?: boolean; verifyKey?: string[]; policy?: string }) => {
      const given = o.image ?? o.imageTag ?? positional;
      if (positional && (o.image ?? o.imageTag) && positional !== (o.image ?? o.imageTag)) throw invalidArgument('name the image once: NAME or --image NAME');
      if (!given) throw invalidArgument('--image is required (the name to load the image as, e.g. --image nginx:1 --cdimg nginx-1.cdimg), or NAME of an image the store holds');
      const name = checkImageName(given);
      const policy = await loadPolicy({ verifyKeys: o.verifyKey, policyFile: o.policy });
      const store = await LocalStore.open(storeDirOf(o), { mustExist: !o.cdimg });
      try {
        let file: StoredFile;
        const toContainerd = o.containerd !== false;
        // containerd's content is written while the store still copies the file
        let pending: Promise<PendingLoad> | undefined;
        const begin = (rec: StoredFile, checkedPath: string): void => {
          if (!toContainerd) return;
          // (loads gRPC: after the checks, while the kernel copies)
          pending = containerdLoad().beginLoad({ name, imageId: rec.imageId, rootDigest: rec.rootDigest, path: checkedPath, ...containerdOf(o) });
          pending.catch(() => undefined); // awaited below
        };
        let ctr: LoadImageResult | undefined;
        try {
          if (o.cdimg) {
            // add verifies the file whole (and a delta's tree on the chain of its parent)
            file = await store.add(o.cdimg, { policy, move: o.move, whenChecked: begin });
          } else {
            // an image the store holds: its newest file is the top of its chain
            const id = store.resolveName(name);
            const chainNow = store.chainFor(id);
            file = chainNow[chainNow.length - 1];
            await store.verifyChain(file.imageId);
          }
          await store.checkChainSignatures(file.imageId, policy);
          store.tag(name, file.imageId);
          if (toContainerd) {
            if (!pending) begin(file, file.path);
            ctr = await pending!.then((p) => p.finish(store)).catch((e: unknown) => {
              throw (require('../distribution/load') as typeof import('../distribution/load')).notLoaded(e, name);
            });
          }
        } catch (e) {
          await pending?.then((p) => p.abort(), () => undefined);
          throw e;
        }
        const chain = store.chainFor(file.imageId);
        const chainBytes = chain.reduce((n, f) => n + f.size, 0);
        if (o.json) {
          printJson({ name, imageId: file.imageId, kind: file.kind, parentId: file.parentId || undefined, rootDigest: file.rootDigest, store: store.root, chain: chain.map((f) => ({ kind: f.kind, rootDigest: f.rootDigest, size: f.size })), chainBytes, containerd: ctr ?? null });
          return;
        }
        let out =
          `loaded ${name}\n` +
          `  image id     ${file.imageId}\n` +
          `  file         ${file.kind === 'delta' ? `delta from ${file.parentId}` : 'full image'} (${humanBytes(file.size)})\n` +
          `  chain        ${chainText(chain)} (${humanBytes(chainBytes)}) in ${store.root}\n`;
        if (ctr) {
          out +=
            `  containerd   ${ctr.image} image ${ctr.name} in namespace ${ctr.namespace}: manifest ${ctr.manifest.digest}\n` +
            `  snapshot     ${ctr.chainId} (${ctr.snapshot === 'provided' ? 'mounted by' : 'already in'} ${ctr.snapshotter})\n` +
            `  run it with  ctr run --snapshotter ${ctr.snapshotter} ${ctr.name} ID\n`;
        } else {
          out += '  containerd   not told (--no-containerd)\n';
        }
        say(out);
      } finally {
        store.close();
      }
    }),
  );
}

function registerImagesCommand(program: Command): void {
  program
    .command('images')
    .description('list the images of the local store: names, image ids, chains and their sizes')
    .option('--store <dir>', `local store directory (default $D4FS_STORE or ${DEFAULT_STORE})`)
    .option('--json', 'print the list as JSON')
    .action(
      action(async (o: { store?: string; json?: boolean }) => {
        const store = await LocalStore.open(storeDirOf(o), { mustExist: !!(o.store ?? process.env.D4FS_STORE) });
        try {
          const rows = imageRows(store);
          if (o.json) {
            printJson(rows);
            return;
          }
          const lines = [['NAME', 'IMAGE ID', 'CHAIN', 'FILES', 'SIZE']];
          for (const r of rows) lines.push([r.name, shortId(r.imageId), chainText(r.chain), String(r.chain?.length ?? 0), r.chain ? humanBytes(r.chainBytes) : '-']);
          say(table(lines));
        } finally {
          store.close();
        }
      }),
    );
}

function registerRmiCommand(program: Command): void {
  const c = program
    .command('rmi')
    .description('remove images: the names from the local store and the image records from containerd; then collect the files no named image needs')
    .argument('<name...>', 'image names, REPO[:TAG]')
    .option('--store <dir>', `local store directory (default $D4FS_STORE or ${DEFAULT_STORE})`)
    .option('--async', "do not wait for containerd's garbage collection")
    .option('--json', 'print the result as JSON');
  addContainerdOptions(c).action(
    action(async (names: string[], o: ContainerdFlags & { store?: string; json?: boolean; async?: boolean }) => {
      const wanted = names.map(checkImageName);
      const store = await LocalStore.open(storeDirOf(o), { mustExist: !!(o.store ?? process.env.D4FS_STORE) });
      const t = containerdOf(o);
      const client = o.containerd !== false ? await containerdClient().ContainerdClient.connect({ address: t.address, namespace: t.namespace }) : undefined;
      try {
        const removed: { name: string; imageId: string | null; store: boolean; containerd: boolean }[] = [];
        for (const name of wanted) {
          let imageId: string | null = null;
          try {
            imageId = store.resolveName(name);
          } catch {
            /* not in the store; maybe in containerd */
          }
          const inContainerd = client ? await containerdLoad().unloadImage({ client, name, sync: !o.async }) : false;
          if (imageId === null && !inContainerd) {
            throw notFound(`no image named ${name} in the local store${client ? ` or in containerd (namespace ${t.namespace})` : ''}`);
          }
          if (imageId !== null) store.untag(name);
          removed.push({ name, imageId, store: imageId !== null, containerd: inContainerd });
        }
        // Files that a d4fs snapshot still mounts (e.g. under a running container) stay.
        const inUse = client ? await containerdLoad().imagesInUse({ client, storeRoot: store.root, snapshotter: t.snapshotter }) : [];
        const named = new Set(store.images().map((i) => i.imageId));
        const keep = inUse.filter((id) => !named.has(id));
        const collected = await store.gc(keep);
        if (o.json) {
          printJson({ removed, kept: keep, collected: collected.map((f) => ({ kind: f.kind, imageId: f.imageId, rootDigest: f.rootDigest, size: f.size })) });
          return;
        }
        let out = '';
        for (const r of removed) {
          const where = [r.store ? 'local store' : '', r.containerd ? `containerd (${t.namespace})` : ''].filter(Boolean).join(' and ');
          out += `removed ${r.name}${r.imageId ? ` (${shortId(r.imageId)})` : ''} from ${where}\n`;
        }
        const bytes = collected.reduce((n, f) => n + f.size, 0);
        out += `collected ${collected.length} file${collected.length === 1 ? '' : 's'} (${humanBytes(bytes)})\n`;
        for (const f of collected) out += `  ${f.kind.padEnd(5)}  ${f.rootDigest}  image ${shortId(f.imageId)}  ${humanBytes(f.size)}\n`;
        if (keep.length) out += `kept files of ${keep.length} image${keep.length === 1 ? '' : 's'} still mounted by containerd snapshots\n`;
        say(out);
      } finally {
        client?.close();
        store.close();
      }
    }),
  );
}

/** Registers `load`, `images` and `rmi`. */
export function registerLoad(program: Command): void {
  registerLoadCommand(program);
  registerImagesCommand(program);
  registerRmiCommand(program);
}
