/**
 * `ctr-cli pull --image NAME:TAG --server URL` (d4fs-server: cheapest chain,
 * merged, resumable) or `ctr-cli pull --from docker://REGISTRY/REPO:TAG` (an
 * OCI registry as the store); then load into containerd unless --no-load.
 * With --verify-key/--policy every file of the image's chain must be signed
 * by a trusted key, else exit 9 and nothing is stored.
 */
import { Command } from 'commander';
import { invalidArgument } from '../errors';
import { pullFromServer, PullProgress, PullResult } from '../distribution/pull';
import { action, addRegistryOptions, humanBytes, peerOf, printJson, registryOptionsOf, say } from './common';
import { addServerClientOptions, tokenOf } from './push';
import { addPolicyOptions, policyOf } from './sign';

/** Default local store: $D4FS_STORE or /var/lib/d4fs/store. */
export const defaultStoreDir = (): string => process.env.D4FS_STORE || '/var/lib/d4fs/store';

/** A byte progress bar on stderr (terminals only). */
function progressBar(enabled: boolean): { onProgress?: (p: PullProgress) => void; stop(): void } {
  if (!enabled || !process.stderr.isTTY) return { stop() {} };
  const { SingleBar, Presets } = require('cli-progress') as typeof import('cli-progress'); // lazy on purpose: only with a terminal
  const bar = new SingleBar({ format: 'file {file}/{files} [{bar}] {percentage}% | {value}/{total} bytes', stream: process.stderr, hideCursor: true }, Presets.shades_classic);
  let current = '';
  return {
    onProgress(p) {
      if (p.rootDigest !== current) {
        if (current) bar.stop();
        current = p.rootDigest;
        bar.start(Math.max(1, p.total), p.done, { file: p.file, files: p.files });
      } else bar.update(p.done);
    },
    stop() {
      if (current) bar.stop();
    },
  };
}

function printPull(r: PullResult): void {
  if (r.upToDate) {
    say(`${r.name} is up to date (${r.imageId})\n`);
  } else {
    say(`pulled ${r.name} -> ${r.imageId} from ${r.from ?? 'nothing'}: ${humanBytes(r.bytes)} in ${r.seconds.toFixed(2)} s\n`);
    for (const f of r.files) {
      const how = !f.downloaded ? 'already held' : f.resumedFrom ? `resumed at ${humanBytes(f.resumedFrom)}` : f.refetched ? 'refetched after a damaged download' : 'downloaded';
      say(`  ${f.kind}${f.merged ? ' (merged chain)' : ''} ${f.rootDigest} ${humanBytes(f.size)} ${how}${f.signedBy ? `, signed by ${f.signedBy.slice(0, 19)}…` : ''}\n`);
    }
  }
  say(r.loaded ? `  loaded into containerd\n` : `  not loaded (--no-load): run \`ctr-cli load ${r.name}\` to load it\n`);
}

export function registerPull(program: Command): void {
  const c = program
    .command('pull')
    .description('pull an image as a delta from what the local store holds (d4fs-server or an OCI registry), verify it, store it and load it')
    .option('--image <name:tag>', 'the image on --server (with --from: the local name, default REPO:TAG)')
    .option('--from <docker://registry/repo:tag>', 'pull from an OCI registry instead of a d4fs-server')
    .option('--store <dir>', 'local store (default $D4FS_STORE or /var/lib/d4fs/store)')
    .option('--no-load', 'only store the image; do not load it into containerd')
    .option('--address <socket>', 'containerd socket (default $CONTAINERD_ADDRESS or /run/containerd/containerd.sock)')
    .option('-n, --namespace <ns>', 'containerd namespace', 'default')
    .option('--snapshotter <name>', 'snapshotter to prepare the image for', 'd4fs')
    .option('--json', 'print the result as JSON')
    .option('--no-progress', 'no progress bar');
  addPolicyOptions(addRegistryOptions(addServerClientOptions(c)))
    .addHelpText(
      'after',
      '\nExamples:\n  ctr-cli pull --image libssl:3 --server http://127.0.0.1:8081 --token-file ~/.d4fs-token\n' +
        '  ctr-cli pull --from docker://registry.example:5000/d4fs/libssl:3 --no-load\n' +
        '  ctr-cli pull --image libssl:3 --server http://127.0.0.1:8081 --verify-key release.pub.pem --verify-key server.pub.pem\n',
    )
    .action(
      action(async (o: Record<string, unknown>) => {
        if (!!o.from === !!o.server) throw invalidArgument('give either --server URL (with --image NAME:TAG) or --from docker://REGISTRY/REPO:TAG');
        const prog = progressBar(o.progress !== false && !o.json);
        const common = {
          store: (o.store as string | undefined) ?? defaultStoreDir(),
          noLoad: o.load === false,
          load: { address: (o.address as string | undefined) ?? process.env.CONTAINERD_ADDRESS ?? '/run/containerd/containerd.sock', namespace: o.namespace as string, snapshotter: o.snapshotter as string },
          onProgress: prog.onProgress,
          policy: await policyOf(o as { verifyKey?: string[]; policy?: string }),
        };
        let r: PullResult;
        try {
          if (o.from) {
            // lazy on purpose: the registry client loads only for registry pulls
            const { pullFromRegistry } = require('../distribution/registry') as typeof import('../distribution/registry');
            r = await pullFromRegistry({ ...common, from: o.from as string, image: o.image as string | undefined, registry: registryOptionsOf(o as never) });
          } else {
            if (!o.image) throw invalidArgument('--image NAME:TAG is required with --server');
            r = await pullFromServer({ ...common, image: o.image as string, server: o.server as string, token: await tokenOf(o), insecureHttp: !!o.insecureHttp, caFile: o.tlsCa as string | undefined, tlsVerify: o.tlsVerify as boolean | undefined, peer: peerOf(o as { peer?: string }) });
          }
        } finally {
          prog.stop();
        }
        if (o.json) printJson(r);
        else printPull(r);
      }),
    );
}
