/**
 * Apply one image layer (a tar stream, already decompressed and verified
 * against its diff id) to an empty directory in overlayfs' format, as
 * containerd's overlay applier does: OCI whiteouts `.wh.NAME` become 0:0
 * character devices, `.wh..wh..opq` marks its directory opaque
 * (trusted.overlay.opaque=y). Used to give a CRI image's lower layer, which
 * d4fs provided empty, its real files when another image needs it as a base.
 *
 * Every path comes from the strict tar reader and path rules (no "..", no
 * absolute names); every directory on the way is checked to be a directory
 * of ours (never a symlink), and files are created with O_NOFOLLOW|O_EXCL.
 */
import { execFile } from 'node:child_process';
import { constants as FS, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { set as setAttribute } from 'fs-xattr';
import { hostile } from '../errors';
import { readTar, TarHeader } from '../tar';
import { baseName, normalizeTarPath, parentOf } from '../tree/paths';

const run = promisify(execFile);
const WH = '.wh.';
const OPAQUE = '.wh..wh..opq';

async function lstatOrUndefined(p: string): Promise<import('node:fs').Stats | undefined> {
  return fsp.lstat(p).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return undefined;
    throw e;
  });
}

/** Make `rel`'s directories under `root` (each an existing directory, never a symlink, or created 0755). */
async function ensureDirs(root: string, rel: string, what: string): Promise<void> {
  let at = root;
  for (const c of rel === '' ? [] : rel.split('/')) {
    at = join(at, c);
    const st = await lstatOrUndefined(at);
    if (!st) await fsp.mkdir(at, { mode: 0o755 });
    else if (!st.isDirectory()) throw hostile(`${what}: "${rel}" goes through a non-directory`);
  }
}

async function setMeta(p: string, h: TarHeader): Promise<void> {
  await fsp.lchown(p, h.uid, h.gid);
  if (h.type !== 'symlink') {
    await fsp.chmod(p, h.mode);
    for (const [k, v] of h.xattrs) await setAttribute(p, k, v).catch(() => undefined);
  }
  const t = h.mtimeSec + h.mtimeNsec / 1e9;
  await fsp.lutimes(p, t, t);
}

/** Apply the layer `tar` to `dir` (see the module comment). Returns the number of entries. */
export async function applyLayer(dir: string, tar: AsyncIterable<Buffer>, what: string): Promise<number> {
  const dirs: { p: string; h: TarHeader }[] = [];
  let n = 0;
  for await (const e of readTar(tar, { what })) {
    n++;
    const h = e.header;
    const rel = normalizeTarPath(h.name);
    if (rel === '') {
      if (h.type === 'dir') dirs.push({ p: dir, h });
      continue;
    }
    const parent = parentOf(rel);
    const base = baseName(rel);
    await ensureDirs(dir, parent, what);
    const parentPath = join(dir, parent);
    if (base === OPAQUE) {
      await setAttribute(parentPath, 'trusted.overlay.opaque', Buffer.from('y'));
      continue;
    }
    if (base.startsWith(WH)) {
      const victim = join(parentPath, base.slice(WH.length));
      if (base.length === WH.length) throw hostile(`${what}: empty whiteout "${h.name}"`);
      await fsp.rm(victim, { recursive: true, force: true });
      await run('mknod', ['-m', '000', victim, 'c', '0', '0']);
      continue;
    }
    const target = join(dir, rel);
    const existing = await lstatOrUndefined(target);
    if (existing && !(existing.isDirectory() && h.type === 'dir')) await fsp.rm(target, { recursive: true, force: true });
    switch (h.type) {
      case 'dir':
        if (!existing?.isDirectory()) await fsp.mkdir(target, { mode: 0o700 });
        dirs.push({ p: target, h });
        continue;
      case 'file': {
        const fh = await fsp.open(target, FS.O_WRONLY | FS.O_CREAT | FS.O_EXCL | FS.O_NOFOLLOW, 0o600);
        try {
          let pos = 0;
          for await (const chunk of e.body()) {
            await fh.write(chunk, 0, chunk.length, pos);
            pos += chunk.length;
          }
        } finally {
          await fh.close();
        }
        break;
      }
      case 'symlink':
        await fsp.symlink(h.linkname, target);
        break;
      case 'link': {
        const src = normalizeTarPath(h.linkname);
        await ensureDirs(dir, parentOf(src), what);
        const st = await lstatOrUndefined(join(dir, src));
        if (!st?.isFile()) throw hostile(`${what}: hard link "${h.name}" to "${h.linkname}", which this layer does not hold as a file`);
        await fsp.link(join(dir, src), target);
        continue; // shares its target's metadata
      }
      case 'char':
      case 'block':
        await run('mknod', ['-m', '000', target, h.type === 'char' ? 'c' : 'b', String(h.devmajor), String(h.devminor)]);
        break;
      case 'fifo':
        await run('mkfifo', ['-m', '000', target]);
        break;
    }
    await setMeta(target, h);
  }
  for (let i = dirs.length - 1; i >= 0; i--) await setMeta(dirs[i].p, dirs[i].h);
  return n;
}
