/**
 * `ctr-cli convert`. Its own module so that the command loads only what it
 * needs (not unpack, delta or the reader's helpers of the cdimg group).
 */
import { Command } from 'commander';
import { convertImage } from '../convert/convert';
import { invalidArgument } from '../errors';
import { action, addRegistryOptions, exitNow, humanBytes, parseIntOpt, parseLevel, parseSize, printJson, progressReporter, registryOptionsOf, say } from './common';
import { takePrestartedPool } from './prestart';

export function registerConvert(program: Command): void {
  const c = program
    .command('convert')
    .description('convert an OCI/Docker image into a full delta-image file (.cdimg)')
    .option('-i, --image <ref>', 'image: oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE, docker://HOST/REPO:TAG, or REPO:TAG')
    .option('-o, --output <file>', 'the .cdimg to write')
    .option('--platform <os/arch[/variant]>', 'platform to pick from a multi-platform image (default: this machine)')
    .option('-t, --threads <n>', 'worker threads (default: all cores)', parseIntOpt('threads', 1, 256))
    .option('--threadNum <n>', 'D4C alias of --threads', parseIntOpt('threadNum', 1, 256))
    .option('--level <level>', 'zstd level: fast, default, best or 1..22', parseLevel)
    .option('--chunk-size <size>', 'split contents larger than this (default 4MiB)', parseSize)
    .option('--imageTag <ref>', 'D4C alias of --image')
    .option('--json', 'print the result as JSON')
    .option('--no-progress', 'no progress bar')
    .addHelpText('after', '\nExample:\n  ctr-cli convert --image oci:./nginx:1 --output nginx-1.cdimg\n');
  addRegistryOptions(c).action(
    action(async (o: Record<string, unknown>) => {
      const ref = (o.image ?? o.imageTag) as string | undefined;
      if (!ref) throw invalidArgument('--image is required (e.g. --image oci:./layout:tag)');
      if (!o.output) throw invalidArgument('--output is required (the .cdimg file to write)');
      const prog = progressReporter(o.progress !== false && !o.json);
      const threads = (o.threads ?? o.threadNum) as number | undefined;
      const pool = takePrestartedPool(threads);
      try {
        const r = await convertImage({
          pool,
          ref,
          output: o.output as string,
          platform: o.platform as string | undefined,
          threads,
          level: o.level as number | undefined,
          chunkSize: o.chunkSize as number | undefined,
          registry: registryOptionsOf(o as never),
          onProgress: prog.onProgress,
        });
        prog.stop();
        if (o.json) printJson(r);
        else
          say(
            `converted ${ref} -> ${r.output}\n` +
              `  image id     ${r.imageId}\n  root digest  ${r.rootDigest}\n` +
              `  entries      ${r.entries} (${r.regularFiles} files, ${r.distinctContents} distinct contents, ${humanBytes(r.contentBytes)})\n` +
              `  layers       ${r.layers} (${humanBytes(r.layerBytes)} compressed)\n` +
              `  .cdimg size  ${humanBytes(r.fileSize)}\n  time         ${r.seconds.toFixed(2)} s\n`,
          );
        // The file is in place and the result printed: end the process now instead of tearing down
        // the worker threads and every heap one by one (the OS reclaims them at once).
        await exitNow(0);
      } finally {
        prog.stop();
        await pool?.close();
      }
    }),
  );
}
