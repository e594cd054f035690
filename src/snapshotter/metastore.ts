/**
 * Snapshot metadata in SQLite (better-sqlite3, WAL), with the semantics of
 * containerd's snapshots/storage metastore:
 *
 *  - every snapshot has a unique key and a numeric id that never changes and
 *    is never reused (it names the snapshot's directory);
 *  - Prepare/View create an active/view snapshot on top of a committed parent;
 *  - Commit turns an active snapshot into a committed one under a new name,
 *    keeping its id, replacing its labels and recording its disk usage;
 *  - Remove refuses a snapshot that still has children.
 *
 * Every method runs in one SQLite transaction. better-sqlite3 is synchronous,
 * so each call is also atomic with respect to the event loop.
 */
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { alreadyExists, failedPrecondition, invalidArgument, notFound } from '../errors';
import { MAX_LABEL_SIZE } from '../labels';
import { Kind, type Labels, type SnapshotInfo, type SnapshotRecord, type Usage, kindName, now } from './types';
import { type Filter, type FieldAdaptor, ALWAYS } from './filters';

const SCHEMA_VERSION = 1;

interface Row {
  id: number;
  key: string;
  kind: number;
  parent_id: number | null;
  parent_key: string | null;
  labels: string;
  created_s: number;
  created_ns: number;
  updated_s: number;
  updated_ns: number;
  inodes: number;
  size: number;
}

/** A snapshot row as the snapshot core needs it. */
export interface StoredSnapshot {
  id: string;
  info: SnapshotInfo;
  usage: Usage;
}

/** Options of a create (Prepare/View). */
export interface CreateOptions {
  labels?: Labels;
  /**
   * Called inside the transaction once the row exists, with the new id and
   * the parent chain; throwing rolls the creation back. The snapshot core
   * moves the snapshot's directory into place here.
   */
  inTransaction?: (record: SnapshotRecord) => void;
}

/**
 * Labels as containerd stores them: a label with an empty value is no label
 * (setting a label to '' deletes it).
 */
export function normalizeLabels(labels: Labels | undefined): Labels {
  const out: Labels = {};
  if (!labels) return out;
  for (const [k, v] of Object.entries(labels)) if (v !== '') out[k] = v;
  return out;
}

/** Checks labels the way containerd does (size of key plus value). */
export function validateLabels(labels: Labels | undefined): void {
  if (!labels) return;
  for (const [k, v] of Object.entries(labels)) {
    if (typeof k !== 'string' || typeof v !== 'string') throw invalidArgument('label keys and values must be strings');
    if (k.length === 0) throw invalidArgument('label key must not be empty');
    const size = Buffer.byteLength(k) + Buffer.byteLength(v);
    if (size > MAX_LABEL_SIZE) {
      throw invalidArgument(`label key and value length (${size} bytes) greater than maximum size (${MAX_LABEL_SIZE} bytes)`, { key: k });
    }
  }
}

const SELECT_INFO = `SELECT s.id, s.key, s.kind, s.parent_id, p.key AS parent_key, s.labels,
  s.created_s, s.created_ns, s.updated_s, s.updated_ns, s.inodes, s.size
  FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id`;

function toInfo(row: Row): SnapshotInfo {
  return {
    name: row.key,
    parent: row.parent_key ?? '',
    kind: row.kind as Kind,
    labels: JSON.parse(row.labels) as Labels,
    created: { seconds: row.created_s, nanos: row.created_ns },
    updated: { seconds: row.updated_s, nanos: row.updated_ns },
  };
}

/** Field adaptor for containerd filters over a snapshot's info. */
export function snapshotAdaptor(info: SnapshotInfo): FieldAdaptor {
  return (fieldpath) => {
    if (fieldpath.length === 0) return ['', false];
    switch (fieldpath[0]) {
      case 'kind':
        return info.kind === Kind.Unknown ? ['', false] : [kindName(info.kind), true];
      case 'name':
        return [info.name, true];
      case 'parent':
        return [info.parent, true];
      case 'labels': {
        const key = fieldpath.slice(1).join('.');
        return Object.prototype.hasOwnProperty.call(info.labels, key) ? [info.labels[key], true] : ['', false];
      }
      default:
        return ['', false];
    }
  };
}

/** SQLite-backed snapshot metadata store. */
export class MetaStore {
  private readonly db: Database.Database;
  private closed = false;

  /** Opens (creating if needed) the database at `file`. */
  constructor(readonly file: string) {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('foreign_keys = ON');
    this.db.pragma('busy_timeout = 5000');
    this.migrate();
  }

  private migrate(): void {
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS snapshots (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        kind INTEGER NOT NULL CHECK (kind IN (1, 2, 3)),
        parent_id INTEGER REFERENCES snapshots(id) ON DELETE RESTRICT,
        labels TEXT NOT NULL DEFAULT '{}',
        created_s INTEGER NOT NULL,
        created_ns INTEGER NOT NULL,
        updated_s INTEGER NOT NULL,
        updated_ns INTEGER NOT NULL,
        inodes INTEGER NOT NULL DEFAULT 0,
        size INTEGER NOT NULL DEFAULT 0
      );
      CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
    `);
    const row = this.db.prepare(`SELECT value FROM meta WHERE key = 'schema_version'`).get() as { value: string } | undefined;
    if (!row) {
      this.db.prepare(`INSERT INTO meta (key, value) VALUES ('schema_version', ?)`).run(String(SCHEMA_VERSION));
    } else if (Number(row.value) > SCHEMA_VERSION) {
      throw failedPrecondition(`${this.file}: metadata schema version ${row.value} is newer than this d4fs-snapshotter (${SCHEMA_VERSION})`);
    }
  }

  private row(key: string): Row | undefined {
    return this.db.prepare(`${SELECT_INFO} WHERE s.key = ?`).get(key) as Row | undefined;
  }

  private rowById(id: number): Row | undefined {
    return this.db.prepare(`${SELECT_INFO} WHERE s.id = ?`).get(id) as Row | undefined;
  }

  /** Ids of `id` and its ancestors, `id` first. */
  private chain(id: number): string[] {
    const rows = this.db
      .prepare(
        `WITH RECURSIVE chain(id, parent_id, depth) AS (
           SELECT id, parent_id, 0 FROM snapshots WHERE id = ?
           UNION ALL
           SELECT s.id, s.parent_id, c.depth + 1 FROM snapshots s JOIN chain c ON s.id = c.parent_id
         ) SELECT id FROM chain ORDER BY depth`,
      )
      .all(id) as { id: number }[];
    return rows.map((r) => String(r.id));
  }

  /** Info, id and recorded usage of the snapshot `key`; NOT_FOUND if unknown. */
  get(key: string): StoredSnapshot {
    const row = this.row(key);
    if (!row) throw notFound(`snapshot ${JSON.stringify(key)} does not exist`, { key });
    return { id: String(row.id), info: toInfo(row), usage: { inodes: row.inodes, size: row.size } };
  }

  /**
   * The id and parent chain of an active or view snapshot (what its mounts
   * are built from). FAILED_PRECONDITION for a committed snapshot.
   */
  getSnapshot(key: string): SnapshotRecord {
    const row = this.row(key);
    if (!row) throw notFound(`snapshot ${JSON.stringify(key)} does not exist`, { key });
    if (row.kind !== Kind.Active && row.kind !== Kind.View) {
      throw failedPrecondition(`requested snapshot ${JSON.stringify(key)} not active or view`);
    }
    return { id: String(row.id), kind: row.kind, parentIds: row.parent_id === null ? [] : this.chain(row.parent_id) };
  }

  /** Info of the snapshots with the given ids (missing ids are skipped). */
  infosById(ids: readonly string[]): Map<string, SnapshotInfo> {
    const out = new Map<string, SnapshotInfo>();
    for (const id of ids) {
      const row = this.rowById(Number(id));
      if (row) out.set(id, toInfo(row));
    }
    return out;
  }

  /** Creates an active or view snapshot `key` on `parent` ('' for none). */
  create(kind: Kind, key: string, parent: string, opts: CreateOptions = {}): SnapshotRecord {
    if (kind !== Kind.Active && kind !== Kind.View) {
      throw invalidArgument(`snapshot type ${kindName(kind)} invalid; only snapshots of type Active or View can be created`);
    }
    if (key === '') throw invalidArgument('snapshot key must not be empty');
    validateLabels(opts.labels);
    return this.db.transaction((): SnapshotRecord => {
      let parentId: number | null = null;
      if (parent !== '') {
        const p = this.row(parent);
        if (!p) throw notFound(`missing parent ${JSON.stringify(parent)}`, { parent });
        if (p.kind !== Kind.Committed) throw invalidArgument(`parent ${JSON.stringify(parent)} is not committed snapshot`);
        parentId = p.id;
      }
      if (this.row(key)) throw alreadyExists(`snapshot ${JSON.stringify(key)}: already exists`);
      const t = now();
      const res = this.db
        .prepare(
          `INSERT INTO snapshots (key, kind, parent_id, labels, created_s, created_ns, updated_s, updated_ns)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(key, kind, parentId, JSON.stringify(normalizeLabels(opts.labels)), t.seconds, t.nanos, t.seconds, t.nanos);
      const record: SnapshotRecord = {
        id: String(res.lastInsertRowid),
        kind,
        parentIds: parentId === null ? [] : this.chain(parentId),
      };
      opts.inTransaction?.(record);
      return record;
    })();
  }

  /**
   * Commits the active snapshot `key` as `name`: same id, kind Committed,
   * labels replaced by `labels`, fresh timestamps, `usage` recorded.
   * With `expectId`, FAILED_PRECONDITION unless `key` still has that id.
   * Returns the id.
   */
  commit(key: string, name: string, usage: Usage, labels: Labels | undefined, expectId?: string): string {
    if (name === '') throw invalidArgument('committed snapshot name must not be empty');
    validateLabels(labels);
    return this.db.transaction((): string => {
      if (this.row(name)) throw alreadyExists(`committed snapshot ${JSON.stringify(name)}: already exists`);
      const row = this.row(key);
      if (!row) throw notFound(`failed to get active snapshot ${JSON.stringify(key)}: not found`, { key });
      if (row.kind !== Kind.Active) throw failedPrecondition(`snapshot ${JSON.stringify(key)} is not active`);
      if (expectId !== undefined && String(row.id) !== expectId) {
        throw failedPrecondition(`snapshot ${JSON.stringify(key)} was replaced while it was being committed`);
      }
      const t = now();
      this.db
        .prepare(
          `UPDATE snapshots SET key = ?, kind = ?, labels = ?, created_s = ?, created_ns = ?, updated_s = ?, updated_ns = ?,
             inodes = ?, size = ? WHERE id = ?`,
        )
        .run(name, Kind.Committed, JSON.stringify(normalizeLabels(labels)), t.seconds, t.nanos, t.seconds, t.nanos, usage.inodes, usage.size, row.id);
      return String(row.id);
    })();
  }

  /** Removes the snapshot `key`; FAILED_PRECONDITION when it has children. Returns its id and kind. */
  remove(key: string): { id: string; kind: Kind; labels: Labels } {
    return this.db.transaction(() => {
      const row = this.row(key);
      if (!row) throw notFound(`snapshot ${JSON.stringify(key)}: not found`, { key });
      const child = this.db.prepare(`SELECT key FROM snapshots WHERE parent_id = ? LIMIT 1`).get(row.id) as { key: string } | undefined;
      if (child) throw failedPrecondition(`cannot remove snapshot ${JSON.stringify(key)} with child ${JSON.stringify(child.key)}`);
      this.db.prepare(`DELETE FROM snapshots WHERE id = ?`).run(row.id);
      return { id: String(row.id), kind: row.kind as Kind, labels: JSON.parse(row.labels) as Labels };
    })();
  }

  /**
   * Updates the mutable fields of `info.name`: with no paths, all labels are
   * replaced; "labels" replaces all labels; "labels.<k>" sets (or, when
   * absent from `info.labels` or empty, deletes) one label. Other paths are
   * INVALID_ARGUMENT. Labels in `protectedKeys` keep their current value
   * whatever is asked. The updated time is refreshed.
   */
  update(info: Pick<SnapshotInfo, 'name' | 'labels'>, fieldpaths: readonly string[], protectedKeys: readonly string[] = []): SnapshotInfo {
    const given = info.labels ?? {};
    return this.db.transaction((): SnapshotInfo => {
      const row = this.row(info.name);
      if (!row) throw notFound(`snapshot ${JSON.stringify(info.name)} does not exist`, { key: info.name });
      let labels = JSON.parse(row.labels) as Labels;
      if (fieldpaths.length > 0) {
        for (const p of fieldpaths) {
          if (p.startsWith('labels.')) {
            const k = p.slice('labels.'.length);
            if (Object.prototype.hasOwnProperty.call(given, k)) labels[k] = given[k];
            else delete labels[k];
          } else if (p === 'labels') {
            labels = { ...given };
          } else {
            throw invalidArgument(`cannot update ${JSON.stringify(p)} field on snapshot ${JSON.stringify(info.name)}`);
          }
        }
      } else {
        labels = { ...given };
      }
      const before = JSON.parse(row.labels) as Labels;
      for (const k of protectedKeys) {
        if (Object.prototype.hasOwnProperty.call(before, k)) labels[k] = before[k];
        else delete labels[k];
      }
      labels = normalizeLabels(labels);
      validateLabels(labels);
      const t = now();
      this.db
        .prepare(`UPDATE snapshots SET labels = ?, updated_s = ?, updated_ns = ? WHERE id = ?`)
        .run(JSON.stringify(labels), t.seconds, t.nanos, row.id);
      return toInfo(this.rowById(row.id)!);
    })();
  }

  /** Infos of every snapshot matching `filter`, in id order. */
  list(filter: Filter = ALWAYS): SnapshotInfo[] {
    const rows = this.db.prepare(`${SELECT_INFO} ORDER BY s.id`).all() as Row[];
    return rows.map(toInfo).filter((i) => filter.match(snapshotAdaptor(i)));
  }

  /** All snapshots as id → key. */
  idMap(): Map<string, string> {
    const rows = this.db.prepare(`SELECT id, key FROM snapshots`).all() as { id: number; key: string }[];
    return new Map(rows.map((r) => [String(r.id), r.key]));
  }

  /**
   * Deletes the snapshots with the given ids together with all their
   * descendants (used to drop records whose data directory is gone).
   * Returns the keys removed.
   */
  removeWithDescendants(ids: readonly string[]): string[] {
    return this.db.transaction((): string[] => {
      const removed: string[] = [];
      for (const id of ids) {
        const rows = this.db
          .prepare(
            `WITH RECURSIVE tree(id, depth) AS (
               SELECT id, 0 FROM snapshots WHERE id = ?
               UNION ALL
               SELECT s.id, t.depth + 1 FROM snapshots s JOIN tree t ON s.parent_id = t.id
             ) SELECT t.id, s.key FROM tree t JOIN snapshots s ON s.id = t.id ORDER BY t.depth DESC`,
          )
          .all(Number(id)) as { id: number; key: string }[];
        for (const r of rows) {
          this.db.prepare(`DELETE FROM snapshots WHERE id = ?`).run(r.id);
          removed.push(r.key);
        }
      }
      return removed;
    })();
  }

  /** Closes the database; further calls fail. Closing twice is harmless. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.db.close();
  }
}
