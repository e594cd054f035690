/**
 * A map of buffers bounded by their total bytes, least recently used dropped
 * first: the caches of decoded contents and groups (delta/chain.ts,
 * format/group.ts) and the FUSE manager's small contents (fuse/small.ts)
 * share it.
 */
export class ByteLru {
  private readonly map = new Map<string, Buffer>();
  private total = 0;

  /** `maxBytes` in all; a value over `maxItem` bytes is not kept. */
  constructor(
    private readonly maxBytes: number,
    private readonly maxItem = maxBytes,
  ) {}

  get bytes(): number {
    return this.total;
  }

  /** How many values are held. */
  get size(): number {
    return this.map.size;
  }

  /** True when `key` is held (not marked used). */
  has(key: string): boolean {
    return this.map.has(key);
  }

  /** The value of `key` (marked recently used). */
  get(key: string): Buffer | undefined {
    const v = this.map.get(key);
    if (v) {
      this.map.delete(key);
      this.map.set(key, v);
    }
    return v;
  }

  /** Keeps `v` under `key` (a key already held keeps its value). */
  set(key: string, v: Buffer): void {
    if (v.length > this.maxItem || this.map.has(key)) return;
    this.map.set(key, v);
    this.total += v.length;
    for (const [k, old] of this.map) {
      if (this.total <= this.maxBytes) break;
      this.map.delete(k);
      this.total -= old.length;
    }
  }

  /** Drops every value whose key `keep` does not want. */
  collect(keep: (key: string) => boolean): void {
    for (const [k, v] of this.map) {
      if (keep(k)) continue;
      this.map.delete(k);
      this.total -= v.length;
    }
  }

  clear(): void {
    this.map.clear();
    this.total = 0;
  }
}
