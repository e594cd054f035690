/** `ctr-cli cdimg diff|merge|patch` */
import { Command } from 'commander';
import { promises as fsp } from 'node:fs';
import { dirname, join, basename } from 'node:path';
import { randomBytes } from 'node:crypto';
// The work modules load when a command runs: `cdimg show` or `merge` need not pay for
// the differ, the converter or the registry client (the table of codecs, for the values of
// --codec, is small: the codecs' implementations load on first use).
import type { DeltaSummary } from '../delta/summary';
import { CODEC_CHOICES, CodecChoice, wordList } from '../delta/codecs/registry';
import { LEVEL_PRESETS, LevelPreset } from '../delta/codecs/types';
import { invalidArgument } from '../errors';
import { action, addRegistryOptions, humanBytes, parseIntOpt, printJson, progressReporter, registryOptionsOf, say } from './common';

function parseChoice<T extends string>(name: string, allowed: readonly T[]) {
  return (v: string): T => {
    if (!(allowed as readonly string[]).includes(v)) throw invalidArgument(`${name} must be one of ${allowed.join(', ')}`);
    return v as T;
  };
}

export function printSummary(verb: string, s: DeltaSummary): void {
  const f = s.files;
  say(
    `${verb} -> ${s.output}\n` +
      `  files        ${f.same} same, ${f.patched} patched, ${f.full} full, ${f.removed} removed\n` +
      (s.contents.auxiliary ? `  auxiliary    ${s.contents.auxiliary} base contents carried for composed patches\n` : '') +
      `  delta        ${humanBytes(s.deltaBytes)}\n` +
      `  plain pull   ${humanBytes(s.plainPullBytes)} (new image layers the old one lacks; whole image ${humanBytes(s.newImageLayerBytes)})\n` +
      `  saving       ${s.savingPercent.toFixed(1)}%\n` +
      `  time         ${s.seconds.toFixed(2)} s\n`,
  );
}

/** `cdimg diff`: a delta from an old image (file, or converted on the fly) to a new one. */
function registerDeltaDiff(cd: Command): void {
  const diff = cd
    .command('diff')
    .description('make a delta from an old image to a new one')
    .option('--old <file>', 'old full .cdimg')
    .option('--new <file>', 'new full .cdimg')
    .option('--out <file>', 'the delta to write')
    .option('--old-image <ref>', 'convert the old image on the fly (any convert reference)')
    .option('--new-image <ref>', 'convert the new image on the fly')
    .option('--oldCdimg <file>', 'D4C alias of --old')
    .option('--newCdimg <file>', 'D4C alias of --new')
    .option('--outCdimg <file>', 'D4C alias of --out')
    .option('-t, --threads <n>', 'worker threads (default: all cores)', parseIntOpt('threads', 1, 256))
    .option('--threadNum <n>', 'D4C alias of --threads', parseIntOpt('threadNum', 1, 256))
    .option('--codec <codec>', `${wordList(CODEC_CHOICES)} (zstd with the base as dictionary)`, parseChoice('--codec', CODEC_CHOICES), 'auto')
    .option('--level <level>', `${wordList(LEVEL_PRESETS)} (best tries every codec)`, parseChoice('--level', LEVEL_PRESETS), 'default')
    .option('--platform <os/arch>', 'with --old-image/--new-image: platform to pick')
    .option('--no-groups', 'code every small content alone (default: small changed contents are also coded together and kept so when smaller)')
    .option('--json', 'print the summary as JSON')
    .option('--no-progress', 'no progress bar');
  addRegistryOptions(diff).action(
    action(async (o: Record<string, unknown>) => {
      const out = (o.out ?? o.outCdimg) as string | undefined;
      if (!out) throw invalidArgument('--out is required (the delta file to write)');
      let oldPath = (o.old ?? o.oldCdimg) as string | undefined;
      let newPath = (o.new ?? o.newCdimg) as string | undefined;
      if (!oldPath && !o.oldImage) throw invalidArgument('give the old image: --old FILE.cdimg or --old-image REF');
      if (!newPath && !o.newImage) throw invalidArgument('give the new image: --new FILE.cdimg or --new-image REF');
      const threads = (o.threads ?? o.threadNum) as number | undefined;
      const { WorkerPool } = await import('../workers/pool');
      // every thread starts now, while the indexes are read (a diff keeps them all busy)
      const pool = new WorkerPool(threads, { eager: true });
      const { diffImages } = await import('../delta/diff');
      const convertImage: typeof import('../convert/convert').convertImage = async (a) => (await import('../convert/convert')).convertImage(a);
      const temps: string[] = [];
      const prog = progressReporter(o.progress !== false && !o.json);
      try {
        const tmpFor = (what: string) => {
          const p = join(dirname(out), `.${basename(out)}.${what}-${randomBytes(4).toString('hex')}.cdimg`);
          temps.push(p);
          return p;
        };
        if (!oldPath) {
          oldPath = tmpFor('old');
          await convertImage({ ref: o.oldImage as string, output: oldPath, platform: o.platform as string, registry: registryOptionsOf(o as never), pool });
        }
        if (!newPath) {
          newPath = tmpFor('new');
          await convertImage({ ref: o.newImage as string, output: newPath, platform: o.platform as string, registry: registryOptionsOf(o as never), pool });
        }
        const s = await diffImages({ oldPath, newPath, out, codec: o.codec as CodecChoice, level: o.level as LevelPreset, groups: o.groups !== false, pool, onProgress: prog.onProgress });
        prog.stop();
        if (o.json) printJson(s);
        else printSummary('diff', s);
      } finally {
        prog.stop();
        await Promise.all(temps.map((t) => fsp.rm(t, { force: true })));
        await pool.close();
      }
    }),
  );
}

/** `cdimg merge`: a chain of deltas composed into one. */
function registerMerge(cd: Command): void {
  cd.command('merge')
    .description('compose a chain of deltas (A-B B-C …) into one delta from the first base to the last target')
    .argument('<deltas...>', 'deltas in chain order')
    .option('--out <file>', 'the merged delta to write')
    .option('--outCdimg <file>', 'D4C alias of --out')
    .option('--strategy <s>', 'compose (copy patches, keep intermediate bases) or rediff (rebuild and diff against --base)', parseChoice('--strategy', ['compose', 'rediff'] as const), 'compose')
    .option('--base <file>', 'the full image the first delta applies to (for --strategy rediff)')
    .option('--codec <codec>', `rediff: ${wordList(CODEC_CHOICES)}`, parseChoice('--codec', CODEC_CHOICES), 'auto')
    .option('--level <level>', `rediff: ${wordList(LEVEL_PRESETS)}`, parseChoice('--level', LEVEL_PRESETS), 'default')
    .option('-t, --threads <n>', 'worker threads', parseIntOpt('threads', 1, 256))
    .option('--json', 'print the summary as JSON')
    .action(
      action(async (deltas: string[], o: Record<string, unknown>) => {
        const out = (o.out ?? o.outCdimg) as string | undefined;
        if (!out) throw invalidArgument('--out is required (the merged delta to write)');
        const { mergeDeltas } = await import('../delta/merge');
        const s = await mergeDeltas({ deltas, out, strategy: o.strategy as 'compose' | 'rediff', base: o.base as string | undefined, codec: o.codec as CodecChoice, level: o.level as LevelPreset, threads: o.threads as number | undefined });
        if (o.json) printJson(s);
        else printSummary('merge', s);
      }),
    );
}

/** `cdimg patch`: deltas applied to a full image. */
function registerPatch(cd: Command): void {
  cd.command('patch')
    .description('apply deltas to a full image, writing the full new image')
    .argument('<base>', 'full .cdimg')
    .argument('<deltas...>', 'deltas in chain order')
    .option('--out <file>', 'the full image to write')
    .option('--outCdimg <file>', 'D4C alias of --out')
    .option('-t, --threads <n>', 'worker threads', parseIntOpt('threads', 1, 256))
    .option('--json', 'print the result as JSON')
    .action(
      action(async (base: string, deltas: string[], o: Record<string, unknown>) => {
        const out = (o.out ?? o.outCdimg) as string | undefined;
        if (!out) throw invalidArgument('--out is required (the full image to write)');
        const { patchImage } = await import('../delta/patch');
        const r = await patchImage({ base, deltas, out, threads: o.threads as number | undefined });
        if (o.json) printJson(r);
        else {
          printSummary(`patch ${base} + ${deltas.length} delta(s)`, r.summary);
          say(`  image id     ${r.imageId}\n  root digest  ${r.rootDigest}\n  full image   ${humanBytes(r.fileSize)}\n`);
        }
      }),
    );
}

/** `cdimg export`: a full .cdimg back to a standard OCI image. */
function registerExport(cd: Command): void {
  const exp = cd
    .command('export')
    .description('turn a full .cdimg back into a standard OCI image (one layer, all metadata, the original config)')
    .argument('[file]', 'full .cdimg')
    .option('--cdimg <file>', 'D4C alias of the file argument')
    .requiredOption('--to <ref>', 'oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker://HOST/REPO:TAG')
    .option('-t, --threads <n>', 'worker threads', parseIntOpt('threads', 1, 256))
    .option('--json', 'print the result as JSON');
  addRegistryOptions(exp).action(
    action(async (fileArg: string | undefined, o: Record<string, unknown>) => {
      const file = fileArg ?? (o.cdimg as string | undefined);
      if (!file) throw invalidArgument('name the .cdimg file to export (or --cdimg FILE)');
      const { exportImage } = await import('../oci/export');
      const r = await exportImage(file, o.to as string, { threads: o.threads as number | undefined, registry: registryOptionsOf(o as never) });
      if (o.json) printJson(r);
      else say(`exported ${file} -> ${r.to}\n  manifest     ${r.manifestDigest}\n  config       ${r.configDigest}\n  layer        ${r.layerDigest} (${humanBytes(r.layerBytes)})\n  time         ${r.seconds.toFixed(2)} s\n`);
    }),
  );
}

export function registerDelta(cd: Command): void {
  registerDeltaDiff(cd);
  registerMerge(cd);
  registerPatch(cd);
  registerExport(cd);
}
