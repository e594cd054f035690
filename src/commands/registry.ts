/**
 * `ctr-cli registry …`: registry-to-registry updates by patch (diff, apply,
 * sync) and incremental OCI archives (pull-incremental, push-vet, push).
 * The work is done in src/regsync; this file parses options and prints
 * reports (human-readable, or JSON with --json).
 */
import { statSync } from 'node:fs';
import { Command, InvalidArgumentError } from 'commander';
import { parsePlatform } from '../oci/image';
import type { RegistryOptions } from '../oci/registry/options';
import { applyPatch, ApplyReport } from '../regsync/apply';
import { enforcePolicy, loadPolicy } from '../signing';
import { invalidArgument } from '../errors';
import { diffImageSets, DiffReport } from '../regsync/diff';
import { platformSelection, readSpecs } from '../regsync/imageset';
import { pullIncremental, pushArchive, pushVet } from '../regsync/incremental';
import { syncRegistries } from '../regsync/sync';
import { action, humanBytes, parseBool, parseIntOpt, printJson, say, sayErr } from './common';
import { CODEC_CHOICES, CodecChoice, isCodecChoice, wordList } from '../delta/codecs/registry';
import { LEVEL_PRESETS, LevelPreset } from '../delta/codecs/types';

type Side = 'src' | 'dest';

/** Per-side registry flags: --src-creds, --dest-tls-verify, … */
function addSide(c: Command, side: Side, what: string): Command {
  return c
    .option(`--${side}-creds <user:pass>`, `credentials for ${what} (default: docker config.json)`)
    .option(`--${side}-authfile <file>`, `docker config.json / auth.json for ${what}`)
    .option(`--${side}-tls-verify <bool>`, `verify TLS of ${what} (false also allows plain HTTP; loopback registries may use HTTP anyway)`, parseBool)
    .option(`--${side}-registry-token <token>`, `bearer token for ${what}`);
}

/** RegistryOptions of one side from parsed flags. */
function sideOptions(o: Record<string, unknown>, side: Side): RegistryOptions {
  return {
    creds: o[`${side}Creds`] as string | undefined,
    authFile: o[`${side}Authfile`] as string | undefined,
    tlsVerify: o[`${side}TlsVerify`] as boolean | undefined,
    registryToken: o[`${side}RegistryToken`] as string | undefined,
    credsFlag: `--${side}-creds`,
    userAgent: 'd4fs/0.1',
  };
}

/** --platform (repeatable) and --all-platforms. */
function addPlatforms(c: Command): Command {
  return c
    .option('--platform <os/arch[/variant]>', 'platform to take from multi-platform images (repeatable; default: this machine\'s)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--all-platforms', 'take every platform (indexes are carried whole)');
}

function parseLevelPreset(v: string): LevelPreset {
  if ((LEVEL_PRESETS as readonly string[]).includes(v)) return v as LevelPreset;
  throw new InvalidArgumentError(`level must be ${wordList(LEVEL_PRESETS)}`);
}

function parseCodec(v: string): CodecChoice {
  if (isCodecChoice(v)) return v;
  throw new InvalidArgumentError(`codec must be ${wordList(CODEC_CHOICES)}`);
}

function parseNonRepro(v: string): 'rewrite' | 'ship' {
  if (v === 'rewrite' || v === 'ship') return v;
  throw new InvalidArgumentError('expected rewrite or ship');
}

/** Progress lines on stderr unless --quiet. */
const progressOf = (o: { quiet?: boolean }) => (o.quiet ? undefined : (m: string) => sayErr(`ctr-cli: ${m}\n`));

const pct = (x: number): string => `${x.toFixed(1)}%`;

/** "42.0% less than plain", or "366.8% more than dedup" (a patch larger than layer dedup: tiny layers). */
const savedText = (percentSaved: number, than: string): string => (percentSaved >= 0 ? `${pct(percentSaved)} less than ${than}` : `${pct(-percentSaved)} more than ${than}`);

/** Human form of a diff report (the savings report). */
export function formatDiffReport(r: DiffReport): string {
  const count = (k: string) => r.layers.filter((l) => l.kind === k).length;
  const lines = [
    `patch ${r.patch}: ${humanBytes(r.patchBytes)}, root ${r.root}`,
    `  new set: ${r.images.length} image(s), ${r.layers.length} layer(s): ${count('referenced')} referenced, ${count('rebuilt')} rebuilt from file deltas, ${count('blob')} shipped whole`,
    `  contents: ${r.contents.old} from the old set, ${r.contents.patched} patched, ${r.contents.full} whole (${humanBytes(r.contents.encodedBytes)} encoded)`,
    `  savings:`,
    `    plain pull/push of the new set  ${humanBytes(r.plainBytes).padStart(10)}`,
    `    layer-level dedup only          ${humanBytes(r.dedupBytes).padStart(10)}`,
    `    this patch                      ${humanBytes(r.patchBytes).padStart(10)}   ${savedText(r.percentSaved, 'plain')}, ${savedText(r.percentSavedVsDedup, 'dedup')} (${r.ratioVsDedup.toFixed(3)}x dedup)`,
  ];
  for (const l of r.layers) {
    if (l.kind === 'rebuilt' && l.reproducible) lines.push(`  exact: layer ${l.digest.slice(0, 19)} (${l.images.join(', ')}) recompresses to the same digest with ${l.recipe}`);
  }
  for (const l of r.layers) {
    if (l.kind === 'rebuilt' && !l.reproducible) {
      lines.push(
        `  NOT REPRODUCIBLE: layer ${l.digest.slice(0, 19)} (${l.images.join(', ')}): ${l.reason}`,
        `    apply pushes it as ${l.rewrittenDigest} (${l.recipe}) and rewrites the manifests naming it; config and diff_ids stay identical`,
      );
    }
    if (l.kind === 'blob') lines.push(`  shipped whole: layer ${l.digest.slice(0, 19)} (${humanBytes(l.size)}): ${l.shipped}`);
  }
  if (r.rewrittenImages.length) lines.push(`  images whose manifest digest will change: ${r.rewrittenImages.join(', ')}`);
  else lines.push('  every manifest will be identical at the destination');
  return lines.join('\n') + '\n';
}

/** Human form of an apply report. */
export function formatApplyReport(r: ApplyReport): string {
  const lines = [
    `${r.vetOnly ? 'push-vet OK for' : 'applied'} patch ${r.root} to ${r.destination}` +
      (r.vetOnly ? '' : `: ${r.blobsUploaded} blob(s) uploaded (${humanBytes(r.bytesUploaded)}), ${r.blobsMounted} mounted, ${r.blobsExisting} already there; ${humanBytes(r.bytesReadFromOldSet)} of old layers read`),
  ];
  lines.push(`  savings: the patch moved ${humanBytes(r.patchBytes)}; a plain pull/push of the new set moves ${humanBytes(r.plainBytes)} (${pct(r.percentSaved)} saved), layer-level dedup only ${humanBytes(r.dedupBytes)}`);
  for (const i of r.images) {
    lines.push(`  ${i.target}  ${i.pushedDigest}  ${i.identical ? 'identical to the source' : `REWRITTEN (source ${i.digest}; ${i.rewrittenLayers.length} layer(s) recompressed)`}`);
  }
  for (const l of r.layers) if (l.note) lines.push(`  layer ${l.digest.slice(0, 19)}: ${l.note}`);
  return lines.join('\n') + '\n';
}

/** --threads and --quiet of the long-running subcommands; with `codecs`, also --level and --codec. */
function addWorkOptions(c: Command, codecs: boolean): Command {
  if (codecs) {
    c.option(`--level <${LEVEL_PRESETS.join('|')}>`, 'effort of the file codecs', parseLevelPreset, 'default').option(`--codec <${CODEC_CHOICES.join('|')}>`, 'patch codecs', parseCodec, 'auto');
  }
  return c.option('-t, --threads <n>', 'worker threads', parseIntOpt('threads', 1, 256)).option('-q, --quiet', 'no progress lines');
}

/** `registry diff`: one patch from an old image set to a new one. */
function registerDiff(reg: Command): void {
  addPlatforms(
    addSide(
      addWorkOptions(
        reg
          .command('diff')
          .description('make one patch carrying everything a new image set needs beyond an old one')
          .requiredOption('--old <ref-or-list...>', 'old images: references, or files listing one "REF [NAME[:TAG]]" per line ("scratch": none)')
          .requiredOption('--new <ref-or-list...>', 'new images: references, or list files')
          .requiredOption('--out <patch>', 'patch file to write')
          .option('--non-reproducible <rewrite|ship>', 'layers whose compression cannot be reproduced: rebuild and rewrite the manifests, or ship the blob', parseNonRepro, 'rewrite')
          .option('--no-gzip-program', 'do not use the gzip program (recipes, gzip files inside layers)')
          .option('--no-go-encoders', "do not try Go's and klauspost's gzip encoders on layers (a faster diff; layers they wrote are then rewritten)")
          .option('--no-records', 'no deflate reconstruction records for gzip layers no known encoder reproduces (pigz, libdeflate, zopfli…): a smaller patch, but those layers are rewritten')
          .option('--json', 'print the report as JSON'),
        true,
      ),
      'src',
      'the registries both sets are read from',
    ),
  ).action(
    action(async (o: Record<string, unknown>) => {
      const report = await diffImageSets({
        old: await readSpecs((o.old as string[]).filter((x) => x !== 'scratch')),
        new: await readSpecs(o.new as string[]),
        out: o.out as string,
        platforms: platformSelection(o.platform as string[] | undefined, o.allPlatforms as boolean | undefined, parsePlatform),
        registry: sideOptions(o, 'src'),
        level: o.level as LevelPreset,
        codec: o.codec as CodecChoice,
        nonReproducible: o.nonReproducible as 'rewrite',
        gzipProgram: o.gzipProgram as boolean,
        goEncoders: o.goEncoders as boolean,
        records: o.records as boolean,
        threads: o.threads as number | undefined,
        onProgress: progressOf(o),
      });
      if (o.json) printJson(report);
      else say(formatDiffReport(report));
    }),
  );
}

/** `registry apply`: push-vet, rebuild and push a patch's new set. */
function registerApply(reg: Command): void {
  addSide(
    addSide(
      addWorkOptions(
        reg
          .command('apply')
          .description('rebuild the new image set of a patch and push it (after push-vet)')
          .argument('<patch>', 'patch file')
          .requiredOption('--to <docker://REGISTRY[/PREFIX]>', 'destination registry')
          .option('--old <ref-or-list...>', 'old images at the destination: NAME[:TAG] relative to it, full references, or list files in diff\'s format (each line\'s NAME[:TAG], or the name its REF defaults to, relative to it); default: the patch\'s old set')
          .option('--old-from <docker://REGISTRY[/PREFIX]>', 'read the old set there instead of at the destination')
          .option('--expect-root <digest>', 'refuse the patch unless its root digest is this')
          .option('--vet-only', 'only run push-vet')
          .option('--verify-key <pem>', 'require a signature (PATCH.sig) by this public key (repeatable: any of them)', (v: string, prev: string[] = []) => [...prev, v])
          .option('--policy <file>', 'signature policy file: {"verifyKeys": ["key.pub.pem", …]}')
          .option('--json', 'print the report as JSON'),
        false,
      ),
      'dest',
      'the destination',
    ),
    'src',
    'the --old-from registry',
  ).action(
    action(async (patch: string, o: Record<string, unknown>) => {
      const oldArgs = o.old as string[] | undefined;
      // A signed patch is applied only if the file opened is the one signed.
      const signed = await enforcePolicy(await loadPolicy({ verifyKeys: o.verifyKey as string[] | undefined, policyFile: o.policy as string | undefined }), patch);
      if (signed.subject && o.expectRoot && o.expectRoot !== signed.subject) throw invalidArgument(`--expect-root ${String(o.expectRoot)} is not the signed root digest ${signed.subject}`);
      const report = await applyPatch({
        patch,
        to: o.to as string,
        dest: sideOptions(o, 'dest'),
        old: oldArgs ? await expandLists(oldArgs) : undefined,
        oldFrom: o.oldFrom as string | undefined,
        oldFromOptions: sideOptions(o, 'src'),
        expectRoot: signed.subject ?? (o.expectRoot as string | undefined),
        vetOnly: o.vetOnly as boolean | undefined,
        threads: o.threads as number | undefined,
        onProgress: progressOf(o),
      });
      if (o.json) printJson(report);
      else say(formatApplyReport(report));
    }),
  );
}

/** `registry pull-incremental`: an OCI archive without the layers a base holds. */
function registerPullIncremental(reg: Command): void {
  addPlatforms(
    addSide(
      reg
        .command('pull-incremental')
        .description('write an OCI archive of an image holding only the layers a base image lacks')
        .requiredOption('--base <ref|scratch>', 'base image (scratch: include every layer)')
        .requiredOption('--final <ref>', 'the image to archive')
        .requiredOption('--out <file>', 'OCI archive to write')
        .option('--json', 'print the report as JSON'),
      'src',
      'the source registry',
    ),
  ).action(
    action(async (o: Record<string, unknown>) => {
      const r = await pullIncremental({
        base: o.base as string,
        final: o.final as string,
        out: o.out as string,
        platforms: platformSelection(o.platform as string[] | undefined, o.allPlatforms as boolean | undefined, parsePlatform),
        registry: sideOptions(o, 'src'),
      });
      if (o.json) printJson(r);
      else
        say(
          `${r.out}: ${r.digest}, ${r.layersIncluded} layer(s) included, ${r.layersOmitted} left to the base; ${humanBytes(r.archiveBytes)} instead of ${humanBytes(r.fullBytes)} (${pct(r.percentSaved)} saved)\n`,
        );
    }),
  );
}

/** `registry push-vet`: the omitted layers of an incremental archive are at the base. */
function registerPushVet(reg: Command): void {
  addSide(
    reg
      .command('push-vet')
      .description('check that a registry repository holds every layer an incremental archive omits')
      .argument('<archive>', 'OCI archive from pull-incremental')
      .requiredOption('--base <docker://HOST/REPO>', 'repository that must hold the omitted layers')
      .option('--json', 'print the report as JSON'),
    'dest',
    'the registry',
  ).action(
    action(async (archive: string, o: Record<string, unknown>) => {
      const r = await pushVet(archive, o.base as string, sideOptions(o, 'dest'));
      if (o.json) printJson(r);
      else say(`push-vet OK: ${r.atBase} omitted layer(s) present at ${r.base}; ${r.inArchive} blob(s) in the archive\n`);
    }),
  );
}

/** `registry push`: an (incremental) OCI archive into a repository. */
function registerPush(reg: Command): void {
  addSide(
    reg
      .command('push')
      .description('push an (incremental) OCI archive after push-vet')
      .argument('<archive>', 'OCI archive')
      .argument('<target>', 'docker://HOST/REPO[:TAG] (default tag: the archive\'s)')
      .option('--base-repo <repo>', 'repository of the same registry to mount omitted layers from')
      .option('--json', 'print the report as JSON'),
    'dest',
    'the registry',
  ).action(
    action(async (archive: string, target: string, o: Record<string, unknown>) => {
      const r = await pushArchive(archive, target, sideOptions(o, 'dest'), o.baseRepo as string | undefined);
      if (o.json) printJson(r);
      else say(`pushed ${r.target} (${r.digest}): ${r.uploaded} blob(s) uploaded (${humanBytes(r.bytesUploaded)}), ${r.mounted} mounted, ${r.existing} already there\n`);
    }),
  );
}

/** `registry sync`: a replica brought up to date by patch. */
function registerSync(reg: Command): void {
  addSide(
    addSide(
      addPlatforms(
        addWorkOptions(
          reg
            .command('sync')
            .description('bring a replica up to date with a primary by patch (safe to re-run and to interrupt)')
            .requiredOption('--from <docker://PRIMARY[/PREFIX]>', 'primary registry')
            .requiredOption('--to <docker://REPLICA[/PREFIX]>', 'replica registry')
            .option('--repos <names>', 'comma-separated repositories (relative to the prefixes); default: every repository under the primary\'s prefix (from its catalog)')
            .option('--keep-patch <file>', 'keep the patch that was applied')
            .option('--no-records', 'no deflate reconstruction records (layers no known encoder reproduces are then rewritten)')
            .option('--json', 'print the report as JSON'),
          true,
        ),
      ),
      'src',
      'the primary',
    ),
    'dest',
    'the replica',
  ).action(
    action(async (o: Record<string, unknown>) => {
      const platforms = o.platform || o.allPlatforms ? platformSelection(o.platform as string[] | undefined, o.allPlatforms as boolean | undefined, parsePlatform) : 'all';
      const r = await syncRegistries({
        from: o.from as string,
        to: o.to as string,
        src: sideOptions(o, 'src'),
        dest: sideOptions(o, 'dest'),
        repos: o.repos === undefined ? undefined : (o.repos as string).split(',').map((s) => s.trim()).filter(Boolean),
        platforms,
        level: o.level as LevelPreset,
        codec: o.codec as CodecChoice,
        keepPatch: o.keepPatch as string | undefined,
        records: o.records as boolean,
        threads: o.threads as number | undefined,
        onProgress: progressOf(o),
      });
      if (o.json) {
        printJson(r);
        return;
      }
      say(`sync ${r.from} -> ${r.to}: ${r.updated.length} tag(s) brought over, ${r.upToDate.length} already up to date (${r.seconds} s)\n`);
      if (r.diff) say(formatDiffReport(r.diff));
      if (r.apply) say(formatApplyReport(r.apply));
    }),
  );
}

/** Register `registry` and its subcommands. */
export function registerRegistry(program: Command): void {
  const reg = program.command('registry').description('registry-to-registry updates by patch, incremental archives, replica sync');

  registerDiff(reg);
  registerApply(reg);
  registerPullIncremental(reg);
  registerPushVet(reg);
  registerPush(reg);
  registerSync(reg);
}

/**
 * Old-image arguments of apply. A list file (diff's format, one
 * "REF [NAME[:TAG]]" per line) becomes the NAME[:TAG] of each line: the name
 * that image has at the destination (REF's repository and tag when no name
 * is given), so the list a patch was made from also names the old set at the
 * destination. Other arguments are kept as they are.
 */
async function expandLists(args: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const a of args) {
    if (isListFile(a)) for (const spec of await readSpecs([a])) out.push(spec.tag !== undefined ? `${spec.name}:${spec.tag}` : digestName(spec.name, spec.ref));
    else out.push(a);
  }
  return out;
}

/** "NAME@DIGEST" for a list line whose reference is by digest, else "NAME:latest". */
function digestName(name: string, ref: string): string {
  const m = /@(sha256:[a-f0-9]{64})$/.exec(ref);
  return m ? `${name}@${m[1]}` : `${name}:latest`;
}

/** Whether an argument names an existing file (and carries no transport prefix). */
function isListFile(a: string): boolean {
  if (/^(docker:\/\/|oci:|oci-archive:|docker-archive:)/.test(a)) return false;
  try {
    return statSync(a).isFile();
  } catch {
    return false;
  }
}
