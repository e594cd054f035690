/**
 * Small pieces the pull, server and registry tests share: the D4fsError a
 * promise rejects with, client stores, partial-download paths, byte
 * comparison and "do X once a download has passed N bytes".
 */
import { promises as fsp } from 'node:fs';
import { dirname, join } from 'node:path';
import { D4fsError } from '../../src/errors';
import type { PullProgress } from '../../src/distribution/pull';
import { CdimgReader } from '../../src/format/reader';
import { LocalStore } from '../../src/store/store';

/** The D4fsError a promise rejects with (anything else, or success, fails the test). */
export async function failure(p: Promise<unknown>): Promise<D4fsError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof D4fsError) return e;
    throw e;
  }
  throw new Error('expected a failure');
}

/** Client stores under one directory, seeded with .cdimg files; closeAll() at the end. */
export class ClientStores {
  private readonly open: LocalStore[] = [];
  constructor(private readonly dir: () => string) {}
  async make(name: string, files: string[] = []): Promise<LocalStore> {
    const s = await LocalStore.open(join(this.dir(), name));
    this.open.push(s);
    for (const f of files) await s.add(f);
    return s;
  }
  closeAll(): void {
    for (const s of this.open.splice(0)) s.close();
  }
}

/** Where a pull keeps the partial download of the file with `rootDigest`. */
export const partOf = (store: LocalStore, rootDigest: string): string => join(dirname(store.tempPath('x')), `pull-${rootDigest.slice(7)}.part`);

/** Whether two files hold the same bytes. */
export const sameBytes = async (a: string, b: string): Promise<boolean> => (await fsp.readFile(a)).equals(await fsp.readFile(b));

/** Root digest of a .cdimg. */
export async function rootOf(path: string): Promise<string> {
  const r = await CdimgReader.open(path);
  await r.close();
  return r.rootDigest;
}

/** A progress callback that calls `act` once, when a download has passed `bytes`. */
export function onceAfter(bytes: number, act: () => void): (p: PullProgress) => void {
  let done = false;
  return (p) => {
    if (!done && p.done > bytes) {
      done = true;
      act();
    }
  };
}
