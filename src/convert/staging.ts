/**
 * Staging of file contents while layers are flattened: each distinct content
 * is written once to a private directory under its sha256, so memory stays
 * bounded whatever the image size.
 */
import { promises as fsp } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { corrupt } from '../errors';
import { ContentSink } from '../tree/flatten';

const IN_MEMORY_MAX = 1 << 20;

export class StagingStore implements ContentSink {
  private readonly have = new Set<string>();
  private seq = 0;
  bytesStaged = 0;
  constructor(readonly dir: string) {}

  static async create(dir: string): Promise<StagingStore> {
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    return new StagingStore(dir);
  }

  path(hex: string): string {
    return join(this.dir, hex);
  }

  async put(body: AsyncIterable<Buffer>, size: number): Promise<string> {
    const h = createHash('sha256');
    if (size <= IN_MEMORY_MAX) {
      const parts: Buffer[] = [];
      let n = 0;
      for await (const c of body) {
        h.update(c);
        parts.push(c);
        n += c.length;
      }
      if (n !== size) throw corrupt(`file content is ${n} bytes, header said ${size}`);
      const hex = h.digest('hex');
      if (!this.have.has(hex)) {
        await fsp.writeFile(this.path(hex), parts.length === 1 ? parts[0] : Buffer.concat(parts));
        this.have.add(hex);
        this.bytesStaged += n;
      }
      return hex;
    }
    const tmp = join(this.dir, `tmp-${this.seq++}`);
    const fh = await fsp.open(tmp, 'w', 0o600);
    let n = 0;
    try {
      for await (const c of body) {
        h.update(c);
        n += c.length;
        await fh.write(c);
      }
    } finally {
      await fh.close();
    }
    if (n !== size) {
      await fsp.rm(tmp, { force: true });
      throw corrupt(`file content is ${n} bytes, header said ${size}`);
    }
    const hex = h.digest('hex');
    if (this.have.has(hex)) {
      await fsp.rm(tmp, { force: true });
    } else {
      await fsp.rename(tmp, this.path(hex));
      this.have.add(hex);
      this.bytesStaged += n;
    }
    return hex;
  }

  async destroy(): Promise<void> {
    await fsp.rm(this.dir, { recursive: true, force: true });
  }
}
