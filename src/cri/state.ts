/**
 * What the CRI pull path provided, by snapshot name (the chain id containerd
 * prepared): which d4fs image a snapshot stands for and whether it is the
 * image's top layer (a FUSE mount of the whole tree) or a lower one (empty).
 * The snapshotter's own record, in SQLite beside its metadata: after a
 * restart the core mounts remote snapshots again by name, and labels (which
 * anyone with containerd access can update) are never consulted for it.
 */
import Database from 'better-sqlite3';
import fs from 'node:fs';
import path from 'node:path';

/** top: a FUSE mount of the whole image; lower: provided empty; filled: a lower given its real files since. */
export type CriRole = 'top' | 'lower' | 'filled';

export interface CriLayer {
  /** Snapshot name: the layer's chain id. */
  name: string;
  role: CriRole;
  /** d4fs image id of the whole image. */
  imageId: string;
  /** The image's manifest digest and reference, as the CRI pull named and the snapshotter verified them. */
  manifest: string;
  ref: string;
  /** Position of the layer in the manifest, and its descriptor. */
  index: number;
  layerDigest: string;
  mediaType: string;
  size: number;
  /** The snapshot's directory (its FUSE mountpoint when top). */
  mountpoint: string;
}

export class CriState {
  private readonly db: Database.Database;

  constructor(root: string) {
    fs.mkdirSync(root, { recursive: true, mode: 0o700 });
    this.db = new Database(path.join(root, 'cri.db'));
    this.db.pragma('journal_mode = WAL');
    this.db.exec(`CREATE TABLE IF NOT EXISTS layers (
      name TEXT PRIMARY KEY, role TEXT NOT NULL CHECK (role IN ('top','lower','filled')), image_id TEXT NOT NULL,
      manifest TEXT NOT NULL, ref TEXT NOT NULL, idx INTEGER NOT NULL, layer_digest TEXT NOT NULL,
      media_type TEXT NOT NULL, size INTEGER NOT NULL, mountpoint TEXT NOT NULL)`);
    this.db.exec('CREATE INDEX IF NOT EXISTS layers_mountpoint ON layers(mountpoint)');
  }

  put(l: CriLayer): void {
    this.db
      .prepare(
        `INSERT INTO layers (name, role, image_id, manifest, ref, idx, layer_digest, media_type, size, mountpoint)
         VALUES (@name, @role, @imageId, @manifest, @ref, @index, @layerDigest, @mediaType, @size, @mountpoint)
         ON CONFLICT(name) DO UPDATE SET role = excluded.role, image_id = excluded.image_id, manifest = excluded.manifest,
           ref = excluded.ref, idx = excluded.idx, layer_digest = excluded.layer_digest, media_type = excluded.media_type,
           size = excluded.size, mountpoint = excluded.mountpoint`,
      )
      .run(l);
  }

  byName(name: string | undefined): CriLayer | undefined {
    if (!name) return undefined;
    return this.rowToLayer(this.db.prepare('SELECT * FROM layers WHERE name = ?').get(name));
  }

  byMountpoint(mountpoint: string): CriLayer | undefined {
    return this.rowToLayer(this.db.prepare('SELECT * FROM layers WHERE mountpoint = ?').get(mountpoint));
  }

  /** The rows of `manifest`'s layers up to `index`, bottom first. */
  layersOf(manifest: string, upTo: number): CriLayer[] {
    return (this.db.prepare('SELECT * FROM layers WHERE manifest = ? AND idx <= ? ORDER BY idx').all(manifest, upTo) as unknown[]).map((r) => this.rowToLayer(r) as CriLayer);
  }

  /** Image ids some top layer still stands for. */
  mountedImages(): string[] {
    return (this.db.prepare("SELECT DISTINCT image_id FROM layers WHERE role = 'top'").all() as { image_id: string }[]).map((r) => r.image_id);
  }

  delete(name: string): void {
    this.db.prepare('DELETE FROM layers WHERE name = ?').run(name);
  }

  close(): void {
    this.db.close();
  }

  private rowToLayer(r: unknown): CriLayer | undefined {
    if (!r) return undefined;
    const x = r as Record<string, string | number>;
    return {
      name: String(x.name),
      role: x.role as CriRole,
      imageId: String(x.image_id),
      manifest: String(x.manifest),
      ref: String(x.ref),
      index: Number(x.idx),
      layerDigest: String(x.layer_digest),
      mediaType: String(x.media_type),
      size: Number(x.size),
      mountpoint: String(x.mountpoint),
    };
  }
}
