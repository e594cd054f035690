/**
 * The peer's blob cache: verified blobs by sha256, with a size limit and LRU
 * collection that never removes a blob in use (pinned). Files live in
 * ROOT/blobs/sha256-<hex> (the torrent's file name, so the BitTorrent engine
 * seeds straight from the cache and downloads into it); a file there counts
 * only once its whole sha256 was checked and its row committed in
 * ROOT/peer.db (SQLite, WAL). Manifests resolved by tag are remembered there
 * too, so a tag can still be served when the origin is unreachable.
 */
import Database from 'better-sqlite3';
import { createHash } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import fs from 'node:fs';
import path from 'node:path';
import { corrupt } from '../errors';
import { hexOfDigest, parseDigest } from '../util/digest';
import { torrentName } from './torrent';

export interface CachedBlob {
  digest: string;
  size: number;
  path: string;
  /** The torrent's bytes, once made or received. */
  torrent?: Buffer;
  infoHash?: string;
  mediaType?: string;
  lastUsed: number;
  fromOrigin: number;
  fromPeers: number;
}

export interface TagRecord {
  registry: string;
  repo: string;
  tag: string;
  digest: string;
  mediaType: string;
  fetchedAt: number;
}

interface Row {
  digest: string;
  size: number;
  torrent: Buffer | null;
  info_hash: string | null;
  media_type: string | null;
  last_used: number;
  from_origin: number;
  from_peers: number;
}

/** sha256 of a file, streamed. */
export async function fileDigest(file: string): Promise<{ digest: string; size: number }> {
  const h = createHash('sha256');
  let size = 0;
  for await (const c of createReadStream(file, { highWaterMark: 1 << 20 })) {
    h.update(c as Buffer);
    size += (c as Buffer).length;
  }
  return { digest: `sha256:${h.digest('hex')}`, size };
}

export class BlobCache {
  readonly blobsDir: string;
  readonly tmpDir: string;
  private readonly db: Database.Database;
  private readonly pins = new Map<string, number>();

  /**
   * @param root the cache directory (created 0700)
   * @param maxBytes the size limit; LRU collection runs after every commit
   */
  constructor(readonly root: string, readonly maxBytes: number) {
    fs.mkdirSync(root, { recursive: true, mode: 0o700 });
    this.blobsDir = path.join(root, 'blobs');
    this.tmpDir = path.join(root, 'tmp');
    fs.mkdirSync(this.blobsDir, { recursive: true, mode: 0o700 });
    fs.rmSync(this.tmpDir, { recursive: true, force: true });
    fs.mkdirSync(this.tmpDir, { recursive: true, mode: 0o700 });
    this.db = new Database(path.join(root, 'peer.db'));
    this.db.pragma('journal_mode = WAL');
    this.db.exec(`CREATE TABLE IF NOT EXISTS blobs (
      digest TEXT PRIMARY KEY, size INTEGER NOT NULL, torrent BLOB, info_hash TEXT, media_type TEXT,
      last_used INTEGER NOT NULL, from_origin INTEGER NOT NULL DEFAULT 0, from_peers INTEGER NOT NULL DEFAULT 0)`);
    this.db.exec(`CREATE TABLE IF NOT EXISTS tags (
      registry TEXT NOT NULL, repo TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL, media_type TEXT NOT NULL,
      fetched_at INTEGER NOT NULL, PRIMARY KEY (registry, repo, tag))`);
    this.dropUncommitted();
  }

  /** Files in blobs/ without a committed row: downloads cut short by a crash. */
  private dropUncommitted(): void {
    const known = new Set((this.db.prepare('SELECT digest FROM blobs').all() as { digest: string }[]).map((r) => torrentName(r.digest)));
    for (const name of fs.readdirSync(this.blobsDir)) if (!known.has(name)) fs.rmSync(path.join(this.blobsDir, name), { force: true, recursive: true });
    for (const r of this.db.prepare('SELECT digest FROM blobs').all() as { digest: string }[]) {
      if (!fs.existsSync(this.pathOf(r.digest))) this.db.prepare('DELETE FROM blobs WHERE digest = ?').run(r.digest);
    }
  }

  /** Where a blob's file lives (committed or being downloaded by the swarm). */
  pathOf(digest: string): string {
    return path.join(this.blobsDir, torrentName(digest));
  }

  private toBlob(r: Row): CachedBlob {
    return {
      digest: r.digest,
      size: r.size,
      path: this.pathOf(r.digest),
      torrent: r.torrent ?? undefined,
      infoHash: r.info_hash ?? undefined,
      mediaType: r.media_type ?? undefined,
      lastUsed: r.last_used,
      fromOrigin: r.from_origin,
      fromPeers: r.from_peers,
    };
  }

  get(digest: string): CachedBlob | undefined {
    const r = this.db.prepare('SELECT * FROM blobs WHERE digest = ?').get(digest) as Row | undefined;
    return r ? this.toBlob(r) : undefined;
  }

  all(): CachedBlob[] {
    return (this.db.prepare('SELECT * FROM blobs ORDER BY last_used DESC').all() as Row[]).map((r) => this.toBlob(r));
  }

  /** The last use recorded, in ms: strictly later than the one before (two uses in one millisecond would tie, and LRU order would be the rows' order). */
  private lastStamp = 0;
  private stamp(): number {
    if (this.lastStamp === 0) this.lastStamp = (this.db.prepare('SELECT MAX(last_used) AS m FROM blobs').get() as { m: number | null }).m ?? 0;
    this.lastStamp = Math.max(Date.now(), this.lastStamp + 1);
    return this.lastStamp;
  }

  touch(digest: string): void {
    this.db.prepare('UPDATE blobs SET last_used = ? WHERE digest = ?').run(this.stamp(), digest);
  }

  /** Bytes held. */
  usedBytes(): number {
    return (this.db.prepare('SELECT COALESCE(SUM(size), 0) AS n FROM blobs').get() as { n: number }).n;
  }

  /** Keep a blob from collection while `fn` runs (serving it, seeding it for a download in progress). */
  pin(digest: string): () => void {
    this.pins.set(digest, (this.pins.get(digest) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = (this.pins.get(digest) ?? 1) - 1;
      if (n <= 0) this.pins.delete(digest);
      else this.pins.set(digest, n);
    };
  }

  isPinned(digest: string): boolean {
    return (this.pins.get(digest) ?? 0) > 0;
  }

  /** A fresh temp file path for an origin download. */
  tempPath(digest: string): string {
    return path.join(this.tmpDir, `${hexOfDigest(digest)}-${process.pid}-${Math.random().toString(36).slice(2, 10)}`);
  }

  /**
   * Commit the file at `file` (a temp file, or the blob's own path after a
   * swarm download) as `digest`: its whole sha256 and size are checked
   * first; a mismatch removes the file and throws CORRUPT.
   */
  async commit(file: string, digest: string, o: { size?: number; mediaType?: string; fromOrigin?: number; fromPeers?: number; torrent?: Buffer; infoHash?: string }): Promise<CachedBlob> {
    parseDigest(digest, 'blob digest');
    const got = await fileDigest(file);
    if (got.digest !== digest || (o.size !== undefined && o.size >= 0 && got.size !== o.size)) {
      await fsp.rm(file, { force: true });
      throw corrupt(`blob ${digest}: the ${got.size} bytes received hash to ${got.digest}${o.size !== undefined ? ` (expected ${o.size} bytes)` : ''}`);
    }
    const dest = this.pathOf(digest);
    if (file !== dest) await fsp.rename(file, dest);
    this.db
      .prepare(
        `INSERT INTO blobs (digest, size, torrent, info_hash, media_type, last_used, from_origin, from_peers)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT(digest) DO UPDATE SET last_used = excluded.last_used, from_origin = blobs.from_origin + excluded.from_origin,
           from_peers = blobs.from_peers + excluded.from_peers, torrent = COALESCE(excluded.torrent, blobs.torrent),
           info_hash = COALESCE(excluded.info_hash, blobs.info_hash), media_type = COALESCE(excluded.media_type, blobs.media_type)`,
      )
      .run(digest, got.size, o.torrent ?? null, o.infoHash ?? null, o.mediaType ?? null, this.stamp(), o.fromOrigin ?? 0, o.fromPeers ?? 0);
    return this.get(digest)!;
  }

  setTorrent(digest: string, torrent: Buffer, infoHash: string): void {
    this.db.prepare('UPDATE blobs SET torrent = ?, info_hash = ? WHERE digest = ?').run(torrent, infoHash, digest);
  }

  /** Forget a blob (its file goes too). */
  async remove(digest: string): Promise<void> {
    this.db.prepare('DELETE FROM blobs WHERE digest = ?').run(digest);
    await fsp.rm(this.pathOf(digest), { force: true });
  }

  /**
   * LRU collection down to the size limit, skipping pinned blobs and those
   * in `busy`. Returns the digests removed (the caller stops seeding them
   * first: `beforeRemove`).
   */
  async collect(beforeRemove: (digest: string) => Promise<void>, busy: (digest: string) => boolean = () => false): Promise<string[]> {
    let used = this.usedBytes();
    const removed: string[] = [];
    if (used <= this.maxBytes) return removed;
    for (const r of this.db.prepare('SELECT digest, size FROM blobs ORDER BY last_used ASC').all() as { digest: string; size: number }[]) {
      if (used <= this.maxBytes) break;
      if (this.isPinned(r.digest) || busy(r.digest)) continue;
      await beforeRemove(r.digest);
      if (this.isPinned(r.digest)) continue; // pinned while the swarm let go of it
      await this.remove(r.digest);
      used -= r.size;
      removed.push(r.digest);
    }
    return removed;
  }

  putTag(t: Omit<TagRecord, 'fetchedAt'>): void {
    this.db
      .prepare('INSERT OR REPLACE INTO tags (registry, repo, tag, digest, media_type, fetched_at) VALUES (?, ?, ?, ?, ?, ?)')
      .run(t.registry, t.repo, t.tag, t.digest, t.mediaType, Date.now());
  }

  getTag(registry: string, repo: string, tag: string): TagRecord | undefined {
    const r = this.db.prepare('SELECT registry, repo, tag, digest, media_type AS mediaType, fetched_at AS fetchedAt FROM tags WHERE registry = ? AND repo = ? AND tag = ?').get(registry, repo, tag) as TagRecord | undefined;
    return r;
  }

  close(): void {
    this.db.close();
  }
}

/** Throw CORRUPT unless the file at `file` is `digest`. */
export async function verifyFile(file: string, digest: string, size?: number): Promise<void> {
  const got = await fileDigest(file);
  if (got.digest !== digest || (size !== undefined && got.size !== size)) throw corrupt(`blob ${digest}: the bytes hash to ${got.digest}`);
}
