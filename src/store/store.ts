/**
 * The local store: .cdimg files (full images and deltas) kept by root digest
 * under ROOT/files, with a SQLite catalogue (WAL) of the images they lead to,
 * the deltas between them and the names (repo:tag) users gave them. It answers
 * "which files rebuild image X" (the chain: a full image, then deltas) and
 * "which images do I hold" (what a pull tells the server).
 */
import Database from 'better-sqlite3';
import { promises as fsp, constants as FS } from 'node:fs';
import { join } from 'node:path';
import { CdimgReader, sameHeader, sameStoredIndex, verifyIndexBytes } from '../format/reader';
import { corrupt, failedPrecondition, invalidArgument, notFound } from '../errors';
import { checkChain } from '../format/chain';
import { enforcePolicy, readSignatureFile, signaturePathOf, SignatureFile, SignaturePolicy, writeSignatureFile } from '../signing';

export interface StoredFile {
  rootDigest: string;
  imageId: string;
  /** '' for full images */
  parentId: string;
  kind: 'full' | 'delta';
  size: number;
  path: string;
}

export interface ImageRecord {
  name: string;
  imageId: string;
  created: string;
}

const NAME_RE = /^[a-z0-9]+(?:[._/-][a-z0-9]+)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$/;

export function checkImageName(name: string): string {
  if (typeof name !== 'string' || name.length > 255 || !NAME_RE.test(name)) {
    throw invalidArgument(`invalid image name "${String(name).slice(0, 80)}": expected REPO[:TAG] in lower case, e.g. nginx:1.22`);
  }
  return name.includes(':') ? name : `${name}:latest`;
}

/**
 * Renames `path` to `tmp` when the store may keep that very file: a regular
 * file on the store's filesystem, with no other name (a hard link would let
 * whoever writes through it change the stored file) and owned by this
 * process's user. Otherwise (or when the rename fails) nothing moves and
 * false comes back: the caller copies.
 */
async function moveIn(path: string, tmp: string): Promise<boolean> {
  const uid = process.getuid?.();
  const st = await fsp.lstat(path).catch(() => undefined);
  if (!st || !st.isFile() || st.nlink !== 1 || (uid !== undefined && st.uid !== uid)) return false;
  if (!(await fsp.rename(path, tmp).then(() => true, () => false))) return false;
  const now = await fsp.lstat(tmp).catch(() => undefined);
  if (now && now.isFile() && now.nlink === 1 && now.ino === st.ino && now.dev === st.dev) return true;
  await fsp.rename(tmp, path).catch(() => undefined);
  return false;
}

export class LocalStore {
  private constructor(readonly root: string, private readonly db: Database.Database) {}

  /** Open (and create) the store at `root`; `mustExist`: refuse to create one (commands that only read or remove). */
  static async open(root: string, opts: { mustExist?: boolean } = {}): Promise<LocalStore> {
    if (opts.mustExist) {
      const ok = await fsp.stat(join(root, 'store.db')).then(() => true, () => false);
      if (!ok) throw notFound(`no local store at ${root} (check --store / $D4FS_STORE; \`ctr-cli load\` or \`pull\` creates it)`);
    }
    await fsp.mkdir(join(root, 'files'), { recursive: true, mode: 0o700 });
    await fsp.mkdir(join(root, 'tmp'), { recursive: true, mode: 0o700 });
    const db = new Database(join(root, 'store.db'));
    db.pragma('journal_mode = WAL');
    db.pragma('foreign_keys = ON');
    db.exec(`
      CREATE TABLE IF NOT EXISTS files (
        root_digest TEXT PRIMARY KEY,
        image_id TEXT NOT NULL,
        parent_id TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('full','delta')),
        size INTEGER NOT NULL,
        added TEXT NOT NULL
      );
      CREATE INDEX IF NOT EXISTS files_image ON files(image_id);
      CREATE TABLE IF NOT EXISTS names (
        name TEXT PRIMARY KEY,
        image_id TEXT NOT NULL,
        created TEXT NOT NULL
      );
    `);
    return new LocalStore(root, db);
  }

  close(): void {
    this.db.close();
  }

  filePath(rootDigest: string): string {
    return join(this.root, 'files', `${rootDigest.replace(/^sha256:/, '')}.cdimg`);
  }

  /** A temp path inside the store (same filesystem as files/, for atomic renames). */
  tempPath(tag: string): string {
    return join(this.root, 'tmp', `${tag}-${process.pid}-${Date.now()}-${Math.random().toString(16).slice(2)}`);
  }

  /**
   * Add a .cdimg (verified on open; a delta needs its parent image held).
   * Idempotent. The store keeps a copy of its own, and the copy is what is
   * checked and kept (the file the caller named may change afterwards): the
   * kernel copies the file into the store while this thread checks it where
   * it is (CdimgReader.check: index verified against the root digest and
   * validated, image id recomputed); then the copy's header and size must be
   * the ones checked and its stored index the bytes checked, which makes it
   * the file that was validated. With `move` the file is renamed into the store
   * instead when that is safe (same filesystem, a regular file with no other
   * name, owned by this process's user) and opened there; otherwise it is
   * copied, and removed once stored. Its signature (`signature`, else
   * FILE.sig beside it) is kept beside the stored file; with a `policy` that
   * asks for signatures, a file without a trusted one is refused
   * (UNAUTHENTICATED) and nothing is stored. `whenChecked` is called once
   * the file has passed every check, with the record it will get and the path
   * it was checked at, while the copy may still run (`ctr-cli load` writes
   * containerd's records meanwhile); the file is stored only if add resolves.
   */
  async add(
    path: string,
    opts: { move?: boolean; signature?: SignatureFile; policy?: SignaturePolicy; whenChecked?: (rec: StoredFile, checkedPath: string) => void } = {},
  ): Promise<StoredFile> {
    const sig = opts.signature ?? (await readSignatureFile(path).catch(() => undefined));
    const tmp = this.tempPath('add');
    const named = (e: unknown): unknown => {
      if (e instanceof Error) e.message = e.message.split(tmp).join(path);
      return e;
    };
    let moved = false;
    let copy: Promise<void> | undefined;
    let rec: StoredFile;
    try {
      moved = !!opts.move && (await moveIn(path, tmp));
      if (!moved) {
        copy = fsp.copyFile(path, tmp, FS.COPYFILE_FICLONE);
        copy.catch(() => undefined); // awaited below, unless the checks fail first
      }
      const at = moved ? tmp : path;
      const signed = await enforcePolicy(opts.policy, at, sig).catch((e: unknown) => {
        throw named(e);
      });
      // checked as CdimgReader.open checks it, without keeping a decoded index (nothing here reads one)
      const r = await CdimgReader.check(at, { reuse: true }).catch((e: unknown) => {
        throw named(e);
      });
      rec = { rootDigest: r.rootDigest, imageId: r.imageId, parentId: r.parentId ?? '', kind: r.isDelta ? 'delta' : 'full', size: r.fileSize, path: this.filePath(r.rootDigest) };
      if (signed.subject !== undefined && signed.subject !== rec.rootDigest) throw corrupt(`${path} changed while it was loaded`);
      if (r.isDelta && !this.hasImage(rec.parentId)) {
        throw failedPrecondition(`${path} is a delta from image ${rec.parentId}, which this machine does not hold: load that image (or a chain leading to it) first`);
      }
      // a version 2 delta's tree (and so its image id) is checked against its parent's
      if (!r.hasTree) await this.checkDeltaTree(at, rec.parentId).catch((e: unknown) => {
        throw named(e);
      });
      opts.whenChecked?.(rec, at);
      if (copy) {
        // the store's copy is the file just checked: same header and size, and the index the
        // check read, byte for byte (or, when the check took a decoded index from this process's
        // reuse cache, an index that matches its root digest)
        await copy;
        const same = await sameStoredIndex(tmp, r).catch((e: unknown) => {
          throw named(e);
        });
        if (same === undefined) {
          const c = await verifyIndexBytes(tmp).catch((e: unknown) => {
            throw named(e);
          });
          if (c.size !== r.fileSize || !sameHeader(c.header, r.header)) throw corrupt(`${path} changed while it was copied into the store`);
        } else if (!same) throw corrupt(`${path} changed while it was copied into the store`);
      }
      if (sig && sig.subject === rec.rootDigest) await this.addSignature(rec, sig);
      const existing = this.db.prepare('SELECT 1 FROM files WHERE root_digest = ?').get(rec.rootDigest);
      if (!existing) {
        await fsp.rename(tmp, rec.path);
        this.db
          .prepare('INSERT OR IGNORE INTO files (root_digest, image_id, parent_id, kind, size, added) VALUES (?, ?, ?, ?, ?, ?)')
          .run(rec.rootDigest, rec.imageId, rec.parentId, rec.kind, rec.size, new Date().toISOString());
      }
      // moved: the caller's name is gone (renamed, or copied and now removed)
      if (opts.move && !moved) await fsp.rm(path, { force: true }).catch(() => undefined);
    } catch (e) {
      if (moved) await fsp.rename(tmp, path).catch(() => undefined);
      throw e;
    } finally {
      await copy?.catch(() => undefined); // a copy still running ends before its file is removed
      await fsp.rm(tmp, { force: true }).catch(() => undefined);
    }
    return rec;
  }

  hasImage(imageId: string): boolean {
    return !!this.db.prepare('SELECT 1 FROM files WHERE image_id = ? LIMIT 1').get(imageId);
  }

  /** Image ids this store can rebuild (what a pull offers as bases). */
  heldImageIds(): string[] {
    return (this.db.prepare('SELECT DISTINCT image_id FROM files').all() as { image_id: string }[]).map((r) => r.image_id);
  }

  files(): StoredFile[] {
    return (this.db.prepare('SELECT root_digest, image_id, parent_id, kind, size FROM files ORDER BY added').all() as Record<string, string | number>[]).map((r) => ({
      rootDigest: r.root_digest as string,
      imageId: r.image_id as string,
      parentId: r.parent_id as string,
      kind: r.kind as 'full' | 'delta',
      size: r.size as number,
      path: this.filePath(r.root_digest as string),
    }));
  }

  /**
   * The files that rebuild `imageId`, full image first: the chain with the
   * fewest files (then the fewest bytes) among those the store holds.
   */
  chainFor(imageId: string): StoredFile[] {
    const files = this.files();
    const byImage = new Map<string, StoredFile[]>();
    for (const f of files) {
      const a = byImage.get(f.imageId) ?? [];
      a.push(f);
      byImage.set(f.imageId, a);
    }
    const memo = new Map<string, StoredFile[] | null>();
    const best = (id: string, seen: Set<string>): StoredFile[] | null => {
      if (memo.has(id)) return memo.get(id) as StoredFile[] | null;
      if (seen.has(id)) return null;
      seen.add(id);
      let result: StoredFile[] | null = null;
      for (const f of byImage.get(id) ?? []) {
        const cand = f.kind === 'full' ? [f] : (() => {
          const below = best(f.parentId, seen);
          return below ? [...below, f] : null;
        })();
        if (!cand) continue;
        const cost = (c: StoredFile[]) => [c.length, c.reduce((n, x) => n + x.size, 0)];
        if (!result || cost(cand)[0] < cost(result)[0] || (cost(cand)[0] === cost(result)[0] && cost(cand)[1] < cost(result)[1])) result = cand;
      }
      seen.delete(id);
      memo.set(id, result);
      return result;
    };
    const chain = best(imageId, new Set());
    if (!chain) throw notFound(`image ${imageId} is not held by the local store`);
    return chain;
  }

  /** Keep `sig`'s signatures beside a stored file (merged with those it has). */
  private async addSignature(rec: StoredFile, sig: SignatureFile): Promise<void> {
    const at = signaturePathOf(rec.path);
    const old = await readSignatureFile(rec.path).catch(() => undefined);
    const have = old && old.subject === sig.subject ? old.signatures : [];
    const more = sig.signatures.filter((s) => !have.some((h) => h.keyId === s.keyId && h.signature === s.signature));
    if (more.length || !old) await writeSignatureFile(at, { ...sig, signatures: [...have, ...more] });
  }

  /** The signatures kept for a stored file. */
  signatureOf(f: StoredFile): Promise<SignatureFile | undefined> {
    return readSignatureFile(f.path).catch(() => undefined);
  }

  /** Check every file of an image's chain against a policy (UNAUTHENTICATED when one fails). */
  async checkChainSignatures(imageId: string, policy: SignaturePolicy | undefined): Promise<void> {
    for (const f of this.chainFor(imageId)) await enforcePolicy(policy, f.path);
  }

  /** Open a delta on the chain of its parent image: its tree is rebuilt and its image id checked (CORRUPT when forged). */
  private async checkDeltaTree(path: string, parentId: string): Promise<void> {
    const below = await CdimgReader.openChain(this.chainFor(parentId).map((f) => f.path), { reuse: true });
    try {
      const r = await CdimgReader.open(path, { reuse: true, parent: below.at(-1) });
      await r.close();
    } finally {
      await Promise.all(below.map((b) => b.close()));
    }
  }

  /** Open and check the chain of an image (throws if a file is damaged). */
  async verifyChain(imageId: string): Promise<string[]> {
    const chain = this.chainFor(imageId);
    if (chain.length === 1 && chain[0].kind === 'full') {
      // a full image alone: checked as open checks it, without keeping its decoded index
      const c = await CdimgReader.check(chain[0].path, { reuse: true });
      if (c.isDelta) throw failedPrecondition(`${chain[0].path} is a delta (parent ${c.parentId}); the chain must start with a full image`);
      return [chain[0].path];
    }
    const readers: CdimgReader[] = [];
    try {
      // reuse: a file this process just added (or opened) is not decoded and checked a second time
      readers.push(...(await CdimgReader.openChain(chain.map((f) => f.path), { reuse: true })));
      checkChain(readers);
    } finally {
      await Promise.all(readers.map((r) => r.close()));
    }
    return chain.map((f) => f.path);
  }

  tag(name: string, imageId: string): void {
    const n = checkImageName(name);
    if (!this.hasImage(imageId)) throw notFound(`image ${imageId} is not held by the local store`);
    this.db.prepare('INSERT INTO names (name, image_id, created) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id').run(n, imageId, new Date().toISOString());
  }

  resolveName(name: string): string {
    const n = checkImageName(name);
    const r = this.db.prepare('SELECT image_id FROM names WHERE name = ?').get(n) as { image_id: string } | undefined;
    if (!r) throw notFound(`no image named ${n} in the local store`);
    return r.image_id;
  }

  images(): ImageRecord[] {
    return (this.db.prepare('SELECT name, image_id, created FROM names ORDER BY name').all() as { name: string; image_id: string; created: string }[]).map((r) => ({ name: r.name, imageId: r.image_id, created: r.created }));
  }

  untag(name: string): void {
    const n = checkImageName(name);
    const res = this.db.prepare('DELETE FROM names WHERE name = ?').run(n);
    if (res.changes === 0) throw notFound(`no image named ${n} in the local store`);
  }

  /**
   * Remove files no named image needs (the chains of named images, and any
   * `keep` image ids, are kept). Returns the removed files.
   */
  async gc(keep: string[] = []): Promise<StoredFile[]> {
    const needed = new Set<string>();
    for (const id of [...this.images().map((i) => i.imageId), ...keep]) {
      try {
        for (const f of this.chainFor(id)) needed.add(f.rootDigest);
      } catch {
        /* a name whose chain is broken keeps nothing */
      }
    }
    const removed: StoredFile[] = [];
    const del = this.db.prepare('DELETE FROM files WHERE root_digest = ?');
    for (const f of this.files()) {
      if (needed.has(f.rootDigest)) continue;
      del.run(f.rootDigest);
      await fsp.rm(f.path, { force: true });
      await fsp.rm(signaturePathOf(f.path), { force: true });
      removed.push(f);
    }
    return removed;
  }
}
