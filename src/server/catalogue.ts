/**
 * The server's catalogue (SQLite, WAL): repositories, their tags, the image
 * versions (d4fs image ids) the stored files lead to, the files themselves
 * (full images and deltas, with parent and child image ids and sizes) and the
 * merge cache (chains of deltas composed into one). The bytes live in the
 * blob store; this only says what they are.
 *
 * Every change is one statement or one transaction; nothing here is held
 * across a transfer, so uploads and downloads never wait for each other.
 */
import Database from 'better-sqlite3';
import { failedPrecondition, notFound } from '../errors';
import type { FileInfo, TagJson } from '../distribution/protocol';

/** A stored file (a pushed .cdimg). */
export interface FileRow extends FileInfo {
  fileDigest: string;
  /** Repository it was first pushed to. */
  repository: string;
  created: string;
}

/** A cached merge of a chain of deltas. */
export interface MergeRow {
  /** sha256 over the input root digests (see merges.ts). */
  chainKey: string;
  /** Root digests of the deltas merged, in order. */
  inputs: string[];
  rootDigest: string;
  fileDigest: string;
  size: number;
  parentId: string;
  imageId: string;
  created: string;
  lastUsed: string;
  hits: number;
}

const SCHEMA_VERSION = 1;

/** File name of the catalogue inside a server root. */
export const CATALOGUE_FILE = 'catalogue.db';

const now = (): string => new Date().toISOString();

type Row = Record<string, unknown>;

function fileOf(r: Row): FileRow {
  return {
    rootDigest: r.root_digest as string,
    fileDigest: r.file_digest as string,
    kind: r.kind as 'full' | 'delta',
    imageId: r.image_id as string,
    parentId: r.parent_id as string,
    size: r.size as number,
    repository: r.repository as string,
    created: r.created as string,
  };
}

function mergeOf(r: Row): MergeRow {
  return {
    chainKey: r.chain_key as string,
    inputs: JSON.parse(r.inputs as string) as string[],
    rootDigest: r.root_digest as string,
    fileDigest: r.file_digest as string,
    size: r.size as number,
    parentId: r.parent_id as string,
    imageId: r.image_id as string,
    created: r.created as string,
    lastUsed: r.last_used as string,
    hits: r.hits as number,
  };
}

/** The catalogue of one server root. */
export class Catalogue {
  private constructor(private readonly db: Database.Database) {}

  /** Open (creating) the catalogue at `file`. */
  static open(file: string): Catalogue {
    const db = new Database(file);
    try {
      db.pragma('journal_mode = WAL');
      db.pragma('foreign_keys = ON');
      db.pragma('busy_timeout = 5000');
      db.pragma('synchronous = NORMAL');
      db.exec(`
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS repositories (
          name TEXT PRIMARY KEY,
          created TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS images (
          image_id TEXT PRIMARY KEY,
          created TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS repository_images (
          repository TEXT NOT NULL REFERENCES repositories(name) ON DELETE CASCADE,
          image_id TEXT NOT NULL REFERENCES images(image_id) ON DELETE CASCADE,
          PRIMARY KEY (repository, image_id)
        );
        CREATE TABLE IF NOT EXISTS tags (
          repository TEXT NOT NULL REFERENCES repositories(name) ON DELETE CASCADE,
          tag TEXT NOT NULL,
          image_id TEXT NOT NULL REFERENCES images(image_id),
          updated TEXT NOT NULL,
          PRIMARY KEY (repository, tag)
        );
        CREATE TABLE IF NOT EXISTS files (
          root_digest TEXT PRIMARY KEY,
          file_digest TEXT NOT NULL,
          kind TEXT NOT NULL CHECK (kind IN ('full','delta')),
          image_id TEXT NOT NULL REFERENCES images(image_id),
          parent_id TEXT NOT NULL,
          size INTEGER NOT NULL,
          repository TEXT NOT NULL,
          created TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS files_image ON files(image_id);
        CREATE INDEX IF NOT EXISTS files_parent ON files(parent_id);
        CREATE TABLE IF NOT EXISTS merges (
          chain_key TEXT PRIMARY KEY,
          inputs TEXT NOT NULL,
          root_digest TEXT NOT NULL,
          file_digest TEXT NOT NULL,
          size INTEGER NOT NULL,
          parent_id TEXT NOT NULL,
          image_id TEXT NOT NULL,
          created TEXT NOT NULL,
          last_used TEXT NOT NULL,
          hits INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX IF NOT EXISTS merges_root ON merges(root_digest);
      `);
      const v = db.prepare("SELECT value FROM meta WHERE key = 'schema'").get() as { value: string } | undefined;
      if (!v) db.prepare("INSERT INTO meta (key, value) VALUES ('schema', ?)").run(String(SCHEMA_VERSION));
      else if (Number(v.value) !== SCHEMA_VERSION) throw failedPrecondition(`${file}: catalogue schema ${v.value} is not supported (this d4fs-server uses ${SCHEMA_VERSION})`);
    } catch (e) {
      db.close();
      throw e;
    }
    return new Catalogue(db);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  // ---------------------------------------------------------------- files

  /** Record a landed file (idempotent); returns false when it was already known. */
  addFile(f: Omit<FileRow, 'created'>): boolean {
    const tx = this.db.transaction((): boolean => {
      if (f.kind === 'delta' && !this.hasImage(f.parentId)) {
        throw failedPrecondition(`delta ${f.rootDigest} applies to image ${f.parentId}, which this server does not know: push that image (or a chain leading to it) first`);
      }
      const t = now();
      this.db.prepare('INSERT OR IGNORE INTO repositories (name, created) VALUES (?, ?)').run(f.repository, t);
      this.db.prepare('INSERT OR IGNORE INTO images (image_id, created) VALUES (?, ?)').run(f.imageId, t);
      this.db.prepare('INSERT OR IGNORE INTO repository_images (repository, image_id) VALUES (?, ?)').run(f.repository, f.imageId);
      if (f.kind === 'delta') this.db.prepare('INSERT OR IGNORE INTO repository_images (repository, image_id) VALUES (?, ?)').run(f.repository, f.parentId);
      const res = this.db
        .prepare('INSERT OR IGNORE INTO files (root_digest, file_digest, kind, image_id, parent_id, size, repository, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)')
        .run(f.rootDigest, f.fileDigest, f.kind, f.imageId, f.parentId, f.size, f.repository, t);
      return res.changes > 0;
    });
    return tx();
  }

  file(rootDigest: string): FileRow | undefined {
    const r = this.db.prepare('SELECT * FROM files WHERE root_digest = ?').get(rootDigest) as Row | undefined;
    return r ? fileOf(r) : undefined;
  }

  /** Every stored file (the planner's graph). */
  files(): FileRow[] {
    return (this.db.prepare('SELECT * FROM files ORDER BY root_digest').all() as Row[]).map(fileOf);
  }

  /** A stored full image of `imageId` (the base a rediff merge needs), if any. */
  fullFileOf(imageId: string): FileRow | undefined {
    const r = this.db.prepare("SELECT * FROM files WHERE image_id = ? AND kind = 'full' ORDER BY size, root_digest LIMIT 1").get(imageId) as Row | undefined;
    return r ? fileOf(r) : undefined;
  }

  removeFile(rootDigest: string): void {
    this.db.prepare('DELETE FROM files WHERE root_digest = ?').run(rootDigest);
  }

  hasImage(imageId: string): boolean {
    return !!this.db.prepare('SELECT 1 FROM images WHERE image_id = ?').get(imageId);
  }

  /** Drop images no file leads to and no tag names (after files were removed). */
  pruneImages(): number {
    const tx = this.db.transaction(() => {
      const res = this.db
        .prepare('DELETE FROM images WHERE image_id NOT IN (SELECT image_id FROM files) AND image_id NOT IN (SELECT image_id FROM tags)')
        .run();
      return res.changes;
    });
    return tx();
  }

  // ----------------------------------------------------------------- tags

  /** Point REPO:TAG at an image the server can serve; returns the previous image id. */
  setTag(repository: string, tag: string, imageId: string): string | undefined {
    const tx = this.db.transaction((): string | undefined => {
      if (!this.db.prepare('SELECT 1 FROM files WHERE image_id = ? LIMIT 1').get(imageId)) {
        throw failedPrecondition(`image ${imageId} is not on this server: push a file leading to it before tagging it`);
      }
      const prev = this.db.prepare('SELECT image_id FROM tags WHERE repository = ? AND tag = ?').get(repository, tag) as { image_id: string } | undefined;
      const t = now();
      this.db.prepare('INSERT OR IGNORE INTO repositories (name, created) VALUES (?, ?)').run(repository, t);
      this.db.prepare('INSERT OR IGNORE INTO repository_images (repository, image_id) VALUES (?, ?)').run(repository, imageId);
      this.db
        .prepare('INSERT INTO tags (repository, tag, image_id, updated) VALUES (?, ?, ?, ?) ON CONFLICT(repository, tag) DO UPDATE SET image_id = excluded.image_id, updated = excluded.updated')
        .run(repository, tag, imageId, t);
      return prev?.image_id;
    });
    return tx();
  }

  tag(repository: string, tag: string): TagJson {
    const r = this.db.prepare('SELECT * FROM tags WHERE repository = ? AND tag = ?').get(repository, tag) as Row | undefined;
    if (!r) throw notFound(`no tag ${repository}:${tag} on this server`);
    return { repository, tag, imageId: r.image_id as string, updated: r.updated as string };
  }

  tags(repository: string): TagJson[] {
    if (!this.db.prepare('SELECT 1 FROM repositories WHERE name = ?').get(repository)) throw notFound(`no repository ${repository} on this server`);
    return (this.db.prepare('SELECT * FROM tags WHERE repository = ? ORDER BY tag').all(repository) as Row[]).map((r) => ({
      repository,
      tag: r.tag as string,
      imageId: r.image_id as string,
      updated: r.updated as string,
    }));
  }

  deleteTag(repository: string, tag: string): void {
    const res = this.db.prepare('DELETE FROM tags WHERE repository = ? AND tag = ?').run(repository, tag);
    if (res.changes === 0) throw notFound(`no tag ${repository}:${tag} on this server`);
  }

  /** Image ids any tag points at. */
  taggedImages(): string[] {
    return (this.db.prepare('SELECT DISTINCT image_id FROM tags').all() as { image_id: string }[]).map((r) => r.image_id);
  }

  repositories(): string[] {
    return (this.db.prepare('SELECT name FROM repositories ORDER BY name').all() as { name: string }[]).map((r) => r.name);
  }

  // --------------------------------------------------------------- merges

  merge(chainKey: string): MergeRow | undefined {
    const r = this.db.prepare('SELECT * FROM merges WHERE chain_key = ?').get(chainKey) as Row | undefined;
    return r ? mergeOf(r) : undefined;
  }

  /** A merge whose result is the blob `rootDigest`. */
  mergeByRoot(rootDigest: string): MergeRow | undefined {
    const r = this.db.prepare('SELECT * FROM merges WHERE root_digest = ? LIMIT 1').get(rootDigest) as Row | undefined;
    return r ? mergeOf(r) : undefined;
  }

  addMerge(m: Omit<MergeRow, 'created' | 'lastUsed' | 'hits'>): void {
    const t = now();
    this.db
      .prepare(
        'INSERT INTO merges (chain_key, inputs, root_digest, file_digest, size, parent_id, image_id, created, last_used, hits) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0) ' +
          'ON CONFLICT(chain_key) DO UPDATE SET root_digest = excluded.root_digest, file_digest = excluded.file_digest, size = excluded.size, last_used = excluded.last_used',
      )
      .run(m.chainKey, JSON.stringify(m.inputs), m.rootDigest, m.fileDigest, m.size, m.parentId, m.imageId, t, t);
  }

  /** Note a use of a cached merge (for gc's staleness and for statistics). */
  touchMerge(chainKey: string, hit: boolean): void {
    this.db.prepare('UPDATE merges SET last_used = ?, hits = hits + ? WHERE chain_key = ?').run(now(), hit ? 1 : 0, chainKey);
  }

  merges(): MergeRow[] {
    return (this.db.prepare('SELECT * FROM merges ORDER BY chain_key').all() as Row[]).map(mergeOf);
  }

  removeMerge(chainKey: string): void {
    this.db.prepare('DELETE FROM merges WHERE chain_key = ?').run(chainKey);
  }

  /** Whether a blob (stored file or merge result) is known. */
  knowsBlob(rootDigest: string): boolean {
    return !!this.file(rootDigest) || !!this.mergeByRoot(rootDigest);
  }

  /** Counts for /metrics and logs. */
  stats(): { repositories: number; images: number; files: number; merges: number; bytes: number } {
    const one = (sql: string): number => (this.db.prepare(sql).get() as { n: number | null }).n ?? 0;
    return {
      repositories: one('SELECT COUNT(*) AS n FROM repositories'),
      images: one('SELECT COUNT(*) AS n FROM images'),
      files: one('SELECT COUNT(*) AS n FROM files'),
      merges: one('SELECT COUNT(*) AS n FROM merges'),
      bytes: one('SELECT SUM(size) AS n FROM files') + one('SELECT SUM(size) AS n FROM merges'),
    };
  }
}
