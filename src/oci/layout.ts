/**
 * Local image sources: OCI image layout directories (oci:), OCI archives
 * (oci-archive:) and `docker save` archives (docker-archive:). Archives are
 * read with the strict tar reader; only the members the image needs are
 * extracted, under validated names, into a private temp directory.
 */
import { createReadStream, promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { createHash } from 'node:crypto';
import { corrupt, invalidArgument, notFound } from '../errors';
import { parseDigest, digestOf } from '../util/digest';
import { readTar } from '../tar';
import { normalizeTarPath } from '../tree/paths';
import { MT } from './mediatypes';
import { formatImageRef, parseRegistryRef } from './ref';
import { Descriptor, ImageSource, OciIndex, RawDocument } from './types';

const REF_NAME = 'org.opencontainers.image.ref.name';

async function readJsonFile<T>(path: string, what: string): Promise<{ bytes: Buffer; value: T }> {
  let bytes: Buffer;
  try {
    bytes = await fsp.readFile(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw notFound(`${what}: ${path} does not exist`);
    throw e;
  }
  try {
    return { bytes, value: JSON.parse(bytes.toString('utf8')) as T };
  } catch {
    throw corrupt(`${what}: ${path} is not valid JSON`);
  }
}

export class LayoutSource implements ImageSource {
  constructor(readonly dir: string, private readonly tag: string | undefined, readonly description: string, private readonly cleanup?: () => Promise<void>) {}

  private blobPath(digest: string): string {
    return join(this.dir, 'blobs', 'sha256', parseDigest(digest).slice(7));
  }

  async getRoot(): Promise<RawDocument> {
    try {
      await fsp.access(join(this.dir, 'oci-layout'));
    } catch {
      throw notFound(`${this.description}: not an OCI image layout (no oci-layout file in ${this.dir})`);
    }
    const { value: index } = await readJsonFile<OciIndex>(join(this.dir, 'index.json'), this.description);
    const manifests = Array.isArray(index.manifests) ? index.manifests : [];
    let desc: Descriptor | undefined;
    if (this.tag) {
      desc = manifests.find((m) => m.annotations?.[REF_NAME] === this.tag);
      if (!desc) {
        const tags = manifests.map((m) => m.annotations?.[REF_NAME]).filter(Boolean);
        throw notFound(`${this.description}: no image tagged "${this.tag}" (tags: ${tags.join(', ') || 'none'})`);
      }
    } else if (manifests.length === 1) {
      desc = manifests[0];
    } else {
      const tags = manifests.map((m) => m.annotations?.[REF_NAME]).filter(Boolean);
      throw invalidArgument(`${this.description}: the layout holds ${manifests.length} images; name one with :TAG (tags: ${tags.join(', ') || 'none'})`);
    }
    return this.getManifest(desc.digest, desc.mediaType);
  }

  async getManifest(digest: string, mediaType = ''): Promise<RawDocument> {
    let bytes: Buffer;
    try {
      bytes = await fsp.readFile(this.blobPath(digest));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw notFound(`${this.description}: blob ${digest} is missing`);
      throw e;
    }
    return { bytes, mediaType, digest };
  }

  async openBlob(desc: Descriptor): Promise<Readable> {
    const p = this.blobPath(desc.digest);
    try {
      await fsp.access(p);
    } catch {
      throw notFound(`${this.description}: blob ${desc.digest} is missing`);
    }
    return createReadStream(p, { highWaterMark: 1 << 20 });
  }

  async close(): Promise<void> {
    if (this.cleanup) await this.cleanup();
  }
}

async function makeTemp(prefix: string): Promise<string> {
  return fsp.mkdtemp(join(process.env.D4FS_TMPDIR || tmpdir(), prefix));
}

/** Extract regular-file members accepted by `want` from a tar file into `dest` (names validated). */
async function extractMembers(archive: string, dest: string, want: (p: string) => boolean, what: string): Promise<Set<string>> {
  const got = new Set<string>();
  let stream: Readable;
  try {
    await fsp.access(archive);
    stream = createReadStream(archive, { highWaterMark: 1 << 20 });
  } catch {
    throw notFound(`${what}: ${archive} does not exist`);
  }
  for await (const e of readTar(stream, { what })) {
    if (e.header.type !== 'file') continue;
    const p = normalizeTarPath(e.header.name);
    if (!want(p) || got.has(p)) continue;
    const target = join(dest, p);
    await fsp.mkdir(join(target, '..'), { recursive: true });
    const fh = await fsp.open(target, 'wx');
    try {
      for await (const chunk of e.body()) await fh.write(chunk);
    } finally {
      await fh.close();
    }
    got.add(p);
  }
  return got;
}

const OCI_MEMBER = /^(oci-layout|index\.json|blobs\/sha256\/[a-f0-9]{64})$/;

export async function openOciArchive(path: string, tag: string | undefined): Promise<LayoutSource> {
  const what = `oci-archive:${path}`;
  const dir = await makeTemp('d4fs-oci-archive-');
  const cleanup = () => fsp.rm(dir, { recursive: true, force: true });
  try {
    await extractMembers(path, dir, (p) => OCI_MEMBER.test(p), what);
  } catch (e) {
    await cleanup();
    throw e;
  }
  return new LayoutSource(dir, tag, `${what}${tag ? ':' + tag : ''}`, cleanup);
}

interface DockerManifestEntry {
  Config: string;
  RepoTags?: string[] | null;
  Layers: string[];
}

/** A `docker save` archive seen as an image source (a Docker v2 manifest is synthesized). */
export class DockerArchiveSource implements ImageSource {
  private manifest?: RawDocument;
  private readonly files = new Map<string, string>(); // digest -> extracted file
  constructor(private readonly dir: string, private readonly name: string | undefined, readonly description: string) {}

  async getRoot(): Promise<RawDocument> {
    if (this.manifest) return this.manifest;
    const { value } = await readJsonFile<DockerManifestEntry[]>(join(this.dir, 'manifest.json'), this.description);
    if (!Array.isArray(value) || value.length === 0) throw corrupt(`${this.description}: manifest.json lists no image`);
    let entry: DockerManifestEntry | undefined;
    if (this.name) {
      const norm = (n: string): string => {
        try {
          return formatImageRef(parseRegistryRef(n));
        } catch {
          return n;
        }
      };
      const want = norm(this.name);
      entry = value.find((m) => (m.RepoTags ?? []).some((t) => norm(t) === want));
      if (!entry) throw notFound(`${this.description}: no image named ${this.name} (has: ${value.flatMap((m) => m.RepoTags ?? []).join(', ')})`);
    } else if (value.length === 1) {
      entry = value[0];
    } else {
      throw invalidArgument(`${this.description}: the archive holds ${value.length} images; name one as docker-archive:FILE:NAME:TAG`);
    }
    const member = async (p: string, what: string): Promise<Descriptor & { file: string }> => {
      const norm = normalizeTarPath(p);
      const file = join(this.dir, norm);
      const h = createHash('sha256');
      let size = 0;
      let magic = Buffer.alloc(0);
      try {
        for await (const c of createReadStream(file, { highWaterMark: 1 << 20 })) {
          const b = c as Buffer;
          if (magic.length < 4) magic = Buffer.concat([magic, b.subarray(0, 4)]);
          h.update(b);
          size += b.length;
        }
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw corrupt(`${this.description}: ${what} ${p} is missing from the archive`);
        throw e;
      }
      const digest = `sha256:${h.digest('hex')}`;
      this.files.set(digest, file);
      let mediaType: string = MT.DOCKER_LAYER_TAR;
      if (magic[0] === 0x1f && magic[1] === 0x8b) mediaType = MT.DOCKER_LAYER_GZIP;
      else if (magic.readUInt32LE(0) === 0xfd2fb528) mediaType = MT.OCI_LAYER_ZSTD;
      return { mediaType, digest, size, file };
    };
    const cfg = await member(entry.Config, 'config');
    const layers: Descriptor[] = [];
    for (const l of entry.Layers) {
      const d = await member(l, 'layer');
      layers.push({ mediaType: d.mediaType, digest: d.digest, size: d.size });
    }
    const doc = {
      schemaVersion: 2,
      mediaType: MT.DOCKER_MANIFEST,
      config: { mediaType: MT.DOCKER_CONFIG, digest: cfg.digest, size: cfg.size },
      layers,
    };
    const bytes = Buffer.from(JSON.stringify(doc));
    this.manifest = { bytes, mediaType: MT.DOCKER_MANIFEST, digest: digestOf(bytes) };
    return this.manifest;
  }

  async getManifest(digest: string): Promise<RawDocument> {
    const root = await this.getRoot();
    if (root.digest !== digest) throw notFound(`${this.description}: no manifest ${digest}`);
    return root;
  }

  async openBlob(desc: Descriptor): Promise<Readable> {
    const f = this.files.get(desc.digest);
    if (!f) throw notFound(`${this.description}: no blob ${desc.digest}`);
    return createReadStream(f, { highWaterMark: 1 << 20 });
  }

  async close(): Promise<void> {
    await fsp.rm(this.dir, { recursive: true, force: true });
  }
}

export async function openDockerArchive(path: string, name: string | undefined): Promise<DockerArchiveSource> {
  const what = `docker-archive:${path}`;
  const dir = await makeTemp('d4fs-docker-archive-');
  try {
    await extractMembers(path, dir, () => true, what);
  } catch (e) {
    await fsp.rm(dir, { recursive: true, force: true });
    throw e;
  }
  return new DockerArchiveSource(dir, name, `${what}${name ? ':' + name : ''}`);
}
