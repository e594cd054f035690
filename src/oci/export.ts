/**
 * `ctr-cli cdimg export`: a full .cdimg back into a standard OCI image — one
 * gzip layer holding the whole tree with all metadata (pax headers for long
 * names, sub-second mtimes and xattrs), and the original config with its
 * rootfs and history rewritten for that single layer. For hosts that run plain
 * Docker or containerd without d4fs.
 */
import { createReadStream, createWriteStream, promises as fsp } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { CdimgReader } from '../format/reader';
import { FORMAT_TASKS } from '../format/tasks';
import { Codec, Entry, FileType } from '../format/types';
import { encodeTarHeader, tarPadding, TAR_END, TarHeader, TarType } from '../tar';
import { WorkerPool } from '../workers/pool';
import { failedPrecondition, invalidArgument } from '../errors';
import { parseImageRef } from './ref';
import { MT } from './mediatypes';
import { OciLayoutWriter } from './writer';
import { RegistryClient } from './registry/client';
import { RegistryOptions } from './registry/options';
import { Descriptor } from './types';

const TAR_TYPE: Partial<Record<FileType, TarType>> = {
  [FileType.REG]: 'file',
  [FileType.DIR]: 'dir',
  [FileType.SYMLINK]: 'symlink',
  [FileType.HARDLINK]: 'link',
  [FileType.CHAR]: 'char',
  [FileType.BLOCK]: 'block',
  [FileType.FIFO]: 'fifo',
};

function headerOf(e: Entry): TarHeader {
  return {
    name: e.path === '' ? './' : e.path,
    type: TAR_TYPE[e.type] as TarType,
    mode: e.mode,
    uid: e.uid,
    gid: e.gid,
    uname: e.uname,
    gname: e.gname,
    size: e.type === FileType.REG ? e.size : 0,
    mtimeSec: e.mtimeSec,
    mtimeNsec: e.mtimeNsec,
    linkname: e.type === FileType.SYMLINK || e.type === FileType.HARDLINK ? e.linkTarget : '',
    devmajor: e.devMajor,
    devminor: e.devMinor,
    xattrs: new Map(e.xattrs.map((x) => [x.name, x.value])),
  };
}

/** Stream the tree of a full image as one tar (decoding in the pool, a few contents ahead). */
export function treeTar(reader: CdimgReader, pool: WorkerPool): Readable {
  const out = new PassThrough({ highWaterMark: 4 << 20 });
  const write = (b: Buffer): Promise<void> =>
    new Promise((resolve, reject) => {
      if (out.destroyed) return reject(new Error('export stream closed'));
      if (out.write(b)) resolve();
      else out.once('drain', resolve);
    });
  (async () => {
    for (const e of reader.index.entries) {
      await write(encodeTarHeader(headerOf(e)));
      if (e.type !== FileType.REG) continue;
      const blob = reader.blob(e.digest);
      if (!blob) throw failedPrecondition(`content of ${e.path} is missing`);
      // decode the chunks of this file in parallel, write them in order
      // (a member of a solid group: its group decoded once on this thread, kept for its neighbours)
      const decoded = blob.chunks.map(async (c) =>
        c.codec === Codec.GROUP ? reader.readFullChunk(c) : pool.run(FORMAT_TASKS, 'decodeChunk', { stored: await reader.readStored(c), rawSize: c.rawSize, rawDigest: c.rawDigest.toString('hex') }),
      );
      // failures surface when awaited below, in order; these handlers only keep the others from being unhandled
      for (const p of decoded) p.catch(() => undefined);
      for (const p of decoded) {
        const raw = await p;
        await write(Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength));
      }
      await write(tarPadding(e.size));
    }
    await write(TAR_END);
    out.end();
  })().catch((err) => out.destroy(err));
  return out;
}

export interface ExportResult {
  to: string;
  manifestDigest: string;
  configDigest: string;
  layerDigest: string;
  diffId: string;
  layerBytes: number;
  seconds: number;
}

export async function exportImage(file: string, to: string, opts: { threads?: number; registry?: RegistryOptions; pool?: WorkerPool } = {}): Promise<ExportResult> {
  const t0 = process.hrtime.bigint();
  const dest = parseImageRef(to);
  if (dest.transport === 'docker-archive') throw invalidArgument('export writes oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker://REF');
  const reader = await CdimgReader.open(file);
  const pool = opts.pool ?? new WorkerPool(opts.threads);
  const work = await fsp.mkdtemp(join(process.env.D4FS_TMPDIR || tmpdir(), 'd4fs-export-'));
  try {
    if (reader.isDelta) throw failedPrecondition(`${file} is a delta: export needs a full image (apply it with \`ctr-cli cdimg patch\` first)`);
    // 1. the layer: tar → (diff_id) → gzip → (digest) → temp file
    const layerPath = join(work, 'layer.tar.gz');
    const tarHash = createHash('sha256');
    const gzHash = createHash('sha256');
    let gzSize = 0;
    const hashTar = new PassThrough();
    hashTar.on('data', (c: Buffer) => tarHash.update(c));
    const hashGz = new PassThrough();
    hashGz.on('data', (c: Buffer) => {
      gzHash.update(c);
      gzSize += c.length;
    });
    await pipeline(treeTar(reader, pool), hashTar, createGzip({ level: 6 }), hashGz, createWriteStream(layerPath));
    const diffId = `sha256:${tarHash.digest('hex')}`;
    const layer: Descriptor = { mediaType: MT.OCI_LAYER_GZIP, digest: `sha256:${gzHash.digest('hex')}`, size: gzSize };
    // 2. the config, rewritten for one layer
    const config = JSON.parse(reader.index.image.configJson.toString('utf8')) as Record<string, unknown>;
    config.rootfs = { type: 'layers', diff_ids: [diffId] };
    config.history = [{ created: (config.created as string) ?? '1970-01-01T00:00:00Z', created_by: `d4fs cdimg export of ${reader.imageId}`, comment: 'all layers flattened into one' }];
    const configBytes = Buffer.from(JSON.stringify(config));
    const configDesc: Descriptor = { mediaType: MT.OCI_CONFIG, digest: `sha256:${createHash('sha256').update(configBytes).digest('hex')}`, size: configBytes.length };
    const manifestBytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MT.OCI_MANIFEST, config: configDesc, layers: [layer], ...(reader.index.image.sourceRef ? { annotations: { 'org.opencontainers.image.base.name': reader.index.image.sourceRef } } : {}) }));
    const manifestDigest = `sha256:${createHash('sha256').update(manifestBytes).digest('hex')}`;
    // 3. the destination
    if (dest.transport === 'oci' || dest.transport === 'oci-archive') {
      const layoutDir = dest.transport === 'oci' ? dest.path : join(work, 'layout');
      const w = await OciLayoutWriter.create(layoutDir);
      await w.putBlobFile(layerPath, layer);
      await w.putBlob(configBytes, MT.OCI_CONFIG);
      const m = await w.putBlob(manifestBytes, MT.OCI_MANIFEST);
      await w.tag(m, dest.tag ?? 'latest');
      if (dest.transport === 'oci-archive') await tarDirectory(layoutDir, dest.path);
    } else {
      const client = new RegistryClient(dest.registry, opts.registry ?? {});
      try {
        await client.pushBlob(dest.repository, layer.digest, layer.size, () => createReadStream(layerPath));
        await client.pushBlob(dest.repository, configDesc.digest, configDesc.size, () => Readable.from([configBytes]));
        await client.putManifest(dest.repository, dest.tag ?? dest.digest ?? 'latest', manifestBytes, MT.OCI_MANIFEST);
      } finally {
        await client.close();
      }
    }
    return { to, manifestDigest, configDigest: configDesc.digest, layerDigest: layer.digest, diffId, layerBytes: layer.size, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
  } finally {
    await reader.close();
    if (!opts.pool) await pool.close();
    await fsp.rm(work, { recursive: true, force: true });
  }
}

/** Write the files of a directory (an OCI layout: no links, no special files) as a tar file. */
async function tarDirectory(dir: string, outFile: string): Promise<void> {
  const files: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    for (const d of (await fsp.readdir(join(dir, rel), { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = rel ? `${rel}/${d.name}` : d.name;
      if (d.isDirectory()) {
        files.push(`${p}/`);
        await walk(p);
      } else if (d.isFile()) files.push(p);
    }
  };
  await walk('');
  const tmp = `${outFile}.tmp-${process.pid}`;
  const out = createWriteStream(tmp);
  const base = { mode: 0o644, uid: 0, gid: 0, uname: '', gname: '', mtimeSec: 0, mtimeNsec: 0, linkname: '', devmajor: 0, devminor: 0, xattrs: new Map<string, Buffer>() };
  const gen = async function* (): AsyncGenerator<Buffer> {
    for (const f of files) {
      if (f.endsWith('/')) {
        yield encodeTarHeader({ ...base, name: f, type: 'dir', mode: 0o755, size: 0 });
        continue;
      }
      const st = await fsp.stat(join(dir, f));
      yield encodeTarHeader({ ...base, name: f, type: 'file', size: st.size });
      for await (const c of createReadStream(join(dir, f))) yield c as Buffer;
      yield tarPadding(st.size);
    }
    yield TAR_END;
  };
  await pipeline(Readable.from(gen()), out);
  await fsp.rename(tmp, outFile);
}
