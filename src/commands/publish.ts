/**
 * `ctr-cli publish docker://REGISTRY/REPO:TAG [--base REF …]`: attach the
 * image's d4fs files (full image and deltas from each base) to its manifest
 * in its own repository, as OCI 1.1 referrers, for delta pulls by
 * `ctr-cli pull --from` and by the snapshotter's CRI pulls. The tag and the
 * image are not modified.
 */
import { Command, InvalidArgumentError } from 'commander';
import type { PublishResult } from '../distribution/publish';
import { action, addRegistryOptions, humanBytes, parseIntOpt, printJson, progressReporter, registryOptionsOf, say, sayErr } from './common';

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

function parsePreset(v: string): 'fast' | 'default' | 'best' {
  if (v === 'fast' || v === 'default' || v === 'best') return v;
  throw new InvalidArgumentError('level must be fast, default or best');
}

function printPublish(r: PublishResult): void {
  say(`published ${r.registry}/${r.repository}${r.reference.includes(':') ? '@' : ':'}${r.reference} (manifest ${r.manifestDigest}, not modified)\n`);
  for (const img of r.images) {
    say(`  ${img.platform}: image ${img.imageId}\n    attached to ${img.subject.mediaType} ${img.subject.digest} (${img.subject.size} bytes)\n`);
    for (const f of img.files) {
      const what = f.kind === 'full' ? 'full ' : `delta from ${f.base}`;
      say(`    ${what} ${humanBytes(f.size)}${f.uploaded ? '' : ' (already there)'}  ${f.rootDigest}${f.signatures ? `  signatures: ${f.signatures}` : ''}${f.path ? `  -> ${f.path}` : ''}\n`);
    }
    for (const b of img.bases) {
      if (b.deltaBytes === null) say(`    base ${b.base}: skipped (${b.skipped})\n`);
      else {
        const plain = img.files.find((f) => f.base === b.base)?.plainPullBytes;
        say(`    base ${b.base}: delta ${humanBytes(b.deltaBytes)} vs full ${humanBytes(b.fullBytes)} (${((100 * b.deltaBytes) / b.fullBytes).toFixed(1)}%)${plain !== undefined ? `, plain pull ${humanBytes(plain)}` : ''}\n`);
      }
    }
    if (img.referrersApi) say(`    listed by the registry's referrers API\n`);
    else if (img.referrersTag) {
      const t = img.referrersTag;
      say(`    referrers tag ${t.tag} -> ${t.digest} (${t.entries} d4fs files${t.changed ? '' : ', unchanged'})\n`);
      if (t.dropped.length) sayErr(`ctr-cli: warning: dropped ${t.dropped.length} stale or invalid d4fs entries from ${t.tag}: ${t.dropped.join(', ')}\n`);
    }
  }
  say(`  ${r.seconds.toFixed(2)} s\n`);
}

export function registerPublish(program: Command): void {
  const c = program
    .command('publish')
    .description("attach an image's d4fs files (full and deltas from --base images) to its manifest in its registry, for delta pulls (pull --from, CRI); the image and its tag are not modified")
    .argument('<image>', 'docker://REGISTRY/REPO:TAG: the image, read from there; the files go to the same repository')
    .option('--base <ref>', 'an older version to make a delta from: any image reference (converted for the same platform) or a full .cdimg (repeatable)', collect)
    .option('--sign-key <key.pem>', 'sign every file with this private key (signatures already on the registry are kept)')
    .option('--level <level>', 'fast, default or best (conversion and deltas)', parsePreset, 'default')
    .option('-t, --threads <n>', 'worker threads (default: all cores)', parseIntOpt('threads', 1, 256))
    .option('--platform <os/arch>', "of a multi-platform image: the platform to publish (repeatable; default this machine's)", collect)
    .option('--all-platforms', 'of a multi-platform image: every platform')
    .option('--out-dir <dir>', 'keep the files made (and their .sig) in DIR (default: a temporary directory)')
    .option('--json', 'print the result as JSON')
    .option('--no-progress', 'no progress bar');
  addRegistryOptions(c)
    .addHelpText(
      'after',
      '\nExamples:\n  ctr-cli publish docker://registry.example:5000/app:v2 --base docker://registry.example:5000/app:v1\n' +
        '  ctr-cli publish docker://registry.example:5000/app:v2 --base app-v1.cdimg --sign-key release.pem --all-platforms\n',
    )
    .action(
      action(async (image: string, o: Record<string, unknown>) => {
        // lazy on purpose: the publish client (registry, referrers) loads only for this command
        const { publishImage } = require('../distribution/publish') as typeof import('../distribution/publish');
        const prog = progressReporter(o.progress !== false && !o.json);
        let r: PublishResult;
        try {
          r = await publishImage({
            image,
            bases: o.base as string[] | undefined,
            signKey: o.signKey as string | undefined,
            level: o.level as 'fast' | 'default' | 'best',
            threads: o.threads as number | undefined,
            platforms: o.platform as string[] | undefined,
            allPlatforms: !!o.allPlatforms,
            outDir: o.outDir as string | undefined,
            registry: registryOptionsOf(o as never),
            onProgress: prog.onProgress,
          });
        } finally {
          prog.stop();
        }
        if (o.json) printJson(r);
        else printPublish(r);
      }),
    );
}
