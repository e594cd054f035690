/**
 * The registry-to-registry half of `make demo`: two private registries (the
 * destination with auth), an old image set (nginx v1, redis v1, libssl v1) in
 * both and a new set (v2 of each) in the source, with layers as three kinds of
 * tools compress them (GNU gzip, umoci's Go pgzip, pigz); one patch carries the new set
 * across, `registry apply` rebuilds it at the destination and the digests are
 * compared. Registries are stopped at the end.
 *   node dist/scripts/demo-registry.js OUT_DIR
 */
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { join, resolve } from 'node:path';
import { startRegistry, pushOciLayout, TestRegistry } from '../test/helpers/registry';
import { buildDebImage, ImageName } from '../test/fixtures/debimages';
import { packageRoot } from '../src/util/paths';
import { recompressLayout } from '../test/fixtures/recompress';

const CLI = join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');

function say(s: string): void {
  process.stdout.write(`\n\x1b[1m== ${s}\x1b[0m\n`);
}

function run(cmd: string, args: string[], echo = true): Promise<string> {
  if (echo) process.stdout.write(`$ ${cmd === process.execPath ? 'ctr-cli' : cmd} ${(cmd === process.execPath ? args.slice(1) : args).join(' ')}\n`);
  return new Promise((res, rej) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d: Buffer) => {
      out += d;
      if (echo) process.stdout.write(d);
    });
    c.stderr.on('data', (d: Buffer) => (err += d));
    c.on('close', (code) => (code === 0 ? res(out) : rej(new Error(`${cmd} failed (${code}): ${err.trim()}`))));
  });
}

/** Manifest digest (sha256 of the bytes the registry serves) and config digest (the image ID), read with skopeo. */
async function digests(ref: string, creds?: string): Promise<{ manifest: string; config: string }> {
  const raw = await run('skopeo', ['inspect', '--raw', '--tls-verify=false', ...(creds ? ['--creds', creds] : []), ref], false);
  const { createHash } = await import('node:crypto');
  return { manifest: `sha256:${createHash('sha256').update(raw).digest('hex')}`, config: (JSON.parse(raw) as { config: { digest: string } }).config.digest };
}

async function main(): Promise<void> {
  const out = resolve(process.argv[2] ?? 'demo-out');
  const creds = 'edge:edge-pass';
  let src: TestRegistry | undefined;
  let dst: TestRegistry | undefined;
  try {
    say('15. Two registries: a primary, and an air-gapped site (with auth) that holds the old release');
    [src, dst] = await Promise.all([startRegistry(), startRegistry({ auth: { user: 'edge', pass: 'edge-pass' } })]);
    process.stdout.write(`primary ${src.host}, site ${dst.host}\n`);
    const sets: Record<string, ImageName[]> = { old: ['nginx-v1', 'redis-v1', 'libssl-v1'], new: ['nginx-v2', 'redis-v2', 'libssl-v2'] };
    for (const n of [...sets.old, ...sets.new]) {
      const img = await buildDebImage(n);
      const [repo, v] = n.split('-');
      // nginx's layers as `gzip -9n` writes them (reproduced by the gzip program); redis's as umoci
      // wrote them (Go's pgzip, 256 KiB blocks: d4fs's reimplementation); libssl's by pigz (no encoder
      // d4fs has: a reconstruction record in the patch)
      let layout = img.layout;
      if (repo === 'nginx' || repo === 'libssl') {
        layout = join(out, `${repo === 'nginx' ? 'gzip9n' : 'pigz'}-${n}`);
        await fsp.rm(layout, { recursive: true, force: true });
        await recompressLayout(img.layout, img.tag, layout, repo === 'nginx' ? 'gzip-9n' : 'pigz');
      }
      await pushOciLayout(layout, img.tag, src.host, `release/${repo}:${v}`);
      if (sets.old.includes(n)) await pushOciLayout(layout, img.tag, dst.host, `release/${repo}:${v}`, creds);
    }
    const list = async (name: string, items: ImageName[], host: string) => {
      const p = join(out, name);
      await fsp.writeFile(p, items.map((n) => `docker://${host}/release/${n.split('-')[0]}:${n.split('-')[1]} release/${n.split('-')[0]}:${n.split('-')[1]}`).join('\n') + '\n');
      return p;
    };
    const oldList = await list('old-set.txt', sets.old, src.host);
    const newList = await list('new-set.txt', sets.new, src.host);

    say('16. One patch for the whole new set (made at the primary)');
    const patch = join(out, 'release-v1-v2.patch');
    await run(process.execPath, [CLI, 'registry', 'diff', '--old', oldList, '--new', newList, '--out', patch, '-q']);

    say('17. Carry the patch across the gap; rebuild the new set inside the site registry');
    await run(process.execPath, [CLI, 'registry', 'apply', patch, '--to', `docker://${dst.host}`, '--dest-creds', creds, '-q']);

    say('18. The rebuilt images are the real images');
    for (const n of sets.new) {
      const [repo, v] = n.split('-');
      const a = await digests(`docker://${src.host}/release/${repo}:${v}`);
      const b = await digests(`docker://${dst.host}/release/${repo}:${v}`, creds);
      const pad = ' '.repeat(`release/${repo}:${v}`.length);
      process.stdout.write(
        `release/${repo}:${v}  primary manifest ${a.manifest}\n${pad}  site    manifest ${b.manifest}  ${a.manifest === b.manifest ? 'identical' : 'rewritten (layer compression not reproducible)'}\n` +
          `${pad}  image ID (config) ${b.config}  ${a.config === b.config ? 'identical' : `DIFFERENT from the primary's ${a.config}`}\n`,
      );
      if (a.config !== b.config) throw new Error(`release/${repo}:${v}: the site's image differs from the primary's`);
      // every layer's compression is reproduced here (gzip, Go's pgzip, a record for pigz): a rewritten manifest is a regression
      if (a.manifest !== b.manifest) throw new Error(`release/${repo}:${v}: the site's manifest was rewritten`);
    }
  } finally {
    await Promise.all([src?.stop(), dst?.stop()]);
  }
}

main().catch((e) => {
  process.stderr.write(`demo: ${(e as Error).message}\n`);
  process.exit(1);
});
