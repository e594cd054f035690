import type { promises as fsp } from 'node:fs';

/** Write all of `data` at `pos` (positional writes may be short). */
export async function writeFully(fh: fsp.FileHandle, data: Uint8Array, pos: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, pos + done);
    done += bytesWritten;
  }
}
