/**
 * Incremental OCI archives: `registry pull-incremental` writes an oci-archive
 * of an image holding every document but only the layers a base image lacks;
 * `registry push-vet` checks that a registry repository holds the missing
 * ones; `registry push` vets, then uploads what the archive holds and tags.
 *
 * The archive is a plain OCI image layout in a tar (oci-layout, index.json,
 * blobs/sha256/...): every tool that reads oci-archive: reads it, as long as
 * it does not need the omitted layers. index.json's descriptor carries the
 * ref name and the base it was made against (annotation
 * `dev.d4fs.incremental.base`).
 */
import { createWriteStream, createReadStream, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { failedPrecondition, invalidArgument } from '../errors';
import { openOciArchive } from '../oci/layout';
import { MT } from '../oci/mediatypes';
import { parseRegistryRef } from '../oci/ref';
import { RegistryClient } from '../oci/registry/client';
import type { RegistryOptions } from '../oci/registry/options';
import type { Descriptor } from '../oci/types';
import { encodeTarHeader, tarPadding, TAR_END } from '../tar';
import { VerifyingStream } from '../util/digest';
import { closeSet, parseSpec, PlatformSelection, resolveSetImage, SetImage } from './imageset';

const REF_NAME = 'org.opencontainers.image.ref.name';
/** Annotation naming the base an incremental archive was made against. */
export const BASE_ANNOTATION = 'dev.d4fs.incremental.base';

/** Options of {@link pullIncremental}. */
export interface PullIncrementalOptions {
  /** Base image reference, or "scratch". */
  base: string;
  final: string;
  out: string;
  platforms: PlatformSelection;
  registry?: RegistryOptions;
  /** Credentials for the base when it lives elsewhere. */
  baseRegistry?: RegistryOptions;
}

/** What pull-incremental wrote. */
export interface PullIncrementalReport {
  out: string;
  digest: string;
  layersIncluded: number;
  layersOmitted: number;
  archiveBytes: number;
  /** Bytes of the full image (all its blobs). */
  fullBytes: number;
  percentSaved: number;
}

/** Tar member writer with backpressure. */
class TarOut {
  private readonly ws;
  size = 0;
  constructor(file: string) {
    this.ws = createWriteStream(file);
  }
  private async put(b: Buffer): Promise<void> {
    this.size += b.length;
    if (!this.ws.write(b)) await new Promise<void>((r) => this.ws.once('drain', () => r()));
  }
  private header(name: string, size: number, type: 'file' | 'dir'): Buffer {
    return encodeTarHeader({ name, type, mode: type === 'dir' ? 0o755 : 0o644, uid: 0, gid: 0, uname: '', gname: '', size, mtimeSec: 0, mtimeNsec: 0, linkname: '', devmajor: 0, devminor: 0, xattrs: new Map() });
  }
  async dir(name: string): Promise<void> {
    await this.put(this.header(name, 0, 'dir'));
  }
  async file(name: string, data: Buffer): Promise<void> {
    await this.put(this.header(name, data.length, 'file'));
    await this.put(data);
    await this.put(tarPadding(data.length));
  }
  async stream(name: string, size: number, src: AsyncIterable<Buffer>): Promise<void> {
    await this.put(this.header(name, size, 'file'));
    for await (const c of src) await this.put(c);
    await this.put(tarPadding(size));
  }
  async close(): Promise<void> {
    await this.put(TAR_END);
    this.ws.end();
    await finished(this.ws);
  }
  destroy(): void {
    this.ws.destroy();
  }
}

/** Write an OCI archive of `final` with only the layers `base` lacks. */
export async function pullIncremental(opts: PullIncrementalOptions): Promise<PullIncrementalReport> {
  const sets: SetImage[] = [];
  const tmpOut = `${opts.out}.tmp-${process.pid}`;
  let tar: TarOut | undefined;
  try {
    const finalImg = await resolveSetImage(parseSpec(opts.final, '--final'), opts.platforms, opts.registry ?? {});
    sets.push(finalImg);
    const baseLayers = new Set<string>();
    if (opts.base !== 'scratch') {
      const baseImg = await resolveSetImage(parseSpec(opts.base, '--base'), opts.platforms, opts.baseRegistry ?? opts.registry ?? {});
      sets.push(baseImg);
      for (const m of baseImg.manifests) for (const l of m.layers) baseLayers.add(l.desc.digest);
    }
    await fsp.mkdir(path.dirname(path.resolve(opts.out)), { recursive: true });
    tar = new TarOut(tmpOut);
    await tar.file('oci-layout', Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' })));
    const top = finalImg.top;
    const index = {
      schemaVersion: 2,
      mediaType: MT.OCI_INDEX,
      manifests: [
        {
          mediaType: top.mediaType,
          digest: top.digest,
          size: top.bytes.length,
          annotations: { [REF_NAME]: finalImg.spec.tag ?? 'latest', ...(opts.base !== 'scratch' ? { [BASE_ANNOTATION]: opts.base } : {}) },
        },
      ],
    };
    await tar.file('index.json', Buffer.from(JSON.stringify(index)));
    await tar.dir('blobs/');
    await tar.dir('blobs/sha256/');
    const written = new Set<string>();
    const blob = async (digest: string, data: Buffer): Promise<void> => {
      if (written.has(digest)) return;
      written.add(digest);
      await (tar as TarOut).file(`blobs/sha256/${digest.slice(7)}`, data);
    };
    let fullBytes = 0;
    for (const ix of finalImg.indexes) {
      await blob(ix.digest, ix.bytes);
      fullBytes += ix.bytes.length;
    }
    let included = 0;
    let omitted = 0;
    for (const m of finalImg.manifests) {
      await blob(m.doc.digest, m.doc.bytes);
      await blob(m.configDesc.digest, m.configBytes);
      fullBytes += m.doc.bytes.length + m.configBytes.length;
      for (const l of m.layers) {
        fullBytes += l.desc.size;
        if (baseLayers.has(l.desc.digest)) {
          omitted++;
          continue;
        }
        if (written.has(l.desc.digest)) continue;
        written.add(l.desc.digest);
        included++;
        const raw = await finalImg.source.openBlob(l.desc);
        const verified = raw.pipe(new VerifyingStream(l.desc.digest, `${finalImg.source.description}: layer ${l.desc.digest.slice(0, 19)}`, l.desc.size));
        raw.on('error', (e) => verified.destroy(e));
        await tar.stream(`blobs/sha256/${l.desc.digest.slice(7)}`, l.desc.size, verified as AsyncIterable<Buffer>);
      }
    }
    await tar.close();
    await fsp.rename(tmpOut, opts.out);
    const archiveBytes = tar.size;
    tar = undefined;
    return {
      out: opts.out,
      digest: top.digest,
      layersIncluded: included,
      layersOmitted: omitted,
      archiveBytes,
      fullBytes,
      percentSaved: fullBytes > 0 ? Math.round(1000 * (1 - archiveBytes / fullBytes)) / 10 : 0,
    };
  } finally {
    tar?.destroy();
    await fsp.rm(tmpOut, { force: true });
    await closeSet(sets);
  }
}

/** An opened incremental archive. */
interface OpenedArchive {
  image: SetImage;
  /** Blob digests the archive holds. */
  present: Set<string>;
  /** Tag recorded in index.json. */
  tag?: string;
  close(): Promise<void>;
}

async function openArchive(file: string): Promise<OpenedArchive> {
  const src = await openOciArchive(file, undefined);
  try {
    const index = JSON.parse(await fsp.readFile(path.join(src.dir, 'index.json'), 'utf8')) as { manifests?: { annotations?: Record<string, string> }[] };
    const tag = index.manifests?.[0]?.annotations?.[REF_NAME];
    const image = await resolveSetImage({ ref: `oci:${src.dir}`, name: 'archive', tag }, 'all', {});
    const present = new Set<string>();
    for (const f of await fsp.readdir(path.join(src.dir, 'blobs', 'sha256')).catch(() => [] as string[])) present.add(`sha256:${f}`);
    return {
      image,
      present,
      tag,
      close: async () => {
        await image.source.close();
        await src.close();
      },
    };
  } catch (e) {
    await src.close();
    throw e;
  }
}

/** Result of {@link pushVet}. */
export interface PushVetReport {
  archive: string;
  base: string;
  inArchive: number;
  atBase: number;
  missing: string[];
}

/** Split "docker://HOST/REPO[:TAG]" into client, repository and tag. */
function repoTarget(ref: string, opts: RegistryOptions): { client: RegistryClient; repo: string; tag?: string; host: string } {
  if (!ref.startsWith('docker://')) throw invalidArgument(`expected docker://HOST/REPO[:TAG], got "${ref}"`);
  const r = parseRegistryRef(ref.slice(9));
  const explicitTag = /:[^/]+$/.test(ref.slice(9).replace(/@.*$/, '')) ? r.tag : undefined;
  return { client: new RegistryClient(r.registry, opts), repo: r.repository, tag: explicitTag, host: r.registry };
}

/**
 * Runs `fn` with the target's client (checked first: a bad reference fails
 * before the archive is read) and the opened archive; closes both.
 */
async function withTargetAndArchive<T>(ref: string, opts: RegistryOptions, archive: string, fn: (t: ReturnType<typeof repoTarget>, a: OpenedArchive) => Promise<T>): Promise<T> {
  const t = repoTarget(ref, opts);
  try {
    const a = await openArchive(archive);
    try {
      return await fn(t, a);
    } finally {
      await a.close();
    }
  } finally {
    await t.client.close();
  }
}

/** Layers the archive's manifests name but it does not hold. */
function omittedLayers(a: OpenedArchive): Descriptor[] {
  const out = new Map<string, Descriptor>();
  for (const m of a.image.manifests) for (const l of m.layers) if (!a.present.has(l.desc.digest)) out.set(l.desc.digest, l.desc);
  return [...out.values()];
}

/**
 * Check that every layer the archive omits exists in the base repository.
 * Throws FAILED_PRECONDITION listing the missing ones.
 */
export async function pushVet(archive: string, base: string, opts: RegistryOptions = {}): Promise<PushVetReport> {
  return withTargetAndArchive(base, opts, archive, async (t, a) => {
    const omitted = omittedLayers(a);
    const missing: string[] = [];
    for (const d of omitted) if (!(await t.client.blobExists(t.repo, d.digest))) missing.push(d.digest);
    if (missing.length) throw failedPrecondition(`push-vet: ${t.host}/${t.repo} lacks ${missing.length} layer(s) the archive omits:\n  ${missing.join('\n  ')}`);
    return { archive, base, inArchive: a.present.size, atBase: omitted.length, missing };
  });
}

/** Result of {@link pushArchive}. */
export interface PushReport {
  target: string;
  digest: string;
  uploaded: number;
  existing: number;
  mounted: number;
  bytesUploaded: number;
}

/**
 * Push an (incremental) archive to docker://HOST/REPO[:TAG]: omitted layers
 * must exist in REPO or be mountable from `baseRepo` (same registry); then
 * blobs, configs, manifests, index, tag.
 */
export async function pushArchive(archive: string, target: string, opts: RegistryOptions = {}, baseRepo?: string): Promise<PushReport> {
  return withTargetAndArchive(target, opts, archive, async (t, a) => {
    const report: PushReport = { target, digest: a.image.top.digest, uploaded: 0, existing: 0, mounted: 0, bytesUploaded: 0 };
    const omitted = omittedLayers(a);
    const missing: string[] = [];
    const mounts: string[] = [];
    for (const d of omitted) {
      if (await t.client.blobExists(t.repo, d.digest)) continue;
      if (baseRepo && (await t.client.blobExists(baseRepo, d.digest))) mounts.push(d.digest);
      else missing.push(d.digest);
    }
    if (missing.length) {
      const how = baseRepo
        ? `neither it nor ${baseRepo} holds them`
        : 'pass --base-repo REPO (the repository push-vet checked, e.g. the base image\'s) to mount them from there';
      throw failedPrecondition(`push: ${t.host}/${t.repo} lacks ${missing.length} layer(s) the archive omits (${how}): ${missing.join(', ')}`);
    }
    for (const d of mounts) {
      if (await t.client.mountBlob(t.repo, d, baseRepo as string)) report.mounted++;
      else throw failedPrecondition(`registry refused to mount ${d} from ${baseRepo}`);
    }
    const dir = (a.image.source as unknown as { dir: string }).dir;
    const push = async (digest: string, size: number): Promise<void> => {
      const file = path.join(dir, 'blobs', 'sha256', digest.slice(7));
      const res = await t.client.pushBlob(t.repo, digest, size, () => createReadStream(file, { highWaterMark: 1 << 20 }) as Readable);
      if (res === 'uploaded') {
        report.uploaded++;
        report.bytesUploaded += size;
      } else report.existing++;
    };
    const seen = new Set<string>();
    for (const m of a.image.manifests) {
      for (const l of m.layers) {
        if (!a.present.has(l.desc.digest) || seen.has(l.desc.digest)) continue;
        seen.add(l.desc.digest);
        await push(l.desc.digest, l.desc.size);
      }
      if (!seen.has(m.configDesc.digest)) {
        seen.add(m.configDesc.digest);
        await push(m.configDesc.digest, m.configBytes.length);
      }
    }
    for (const m of a.image.manifests) await t.client.putManifest(t.repo, m.doc.digest, m.doc.bytes, m.doc.mediaType);
    const top = a.image.top;
    await t.client.putManifest(t.repo, top.digest, top.bytes, top.mediaType);
    const tag = t.tag ?? a.tag;
    if (tag) await t.client.putManifest(t.repo, tag, top.bytes, top.mediaType);
    return report;
  });
}
