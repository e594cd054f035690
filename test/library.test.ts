/**
 * The library API (src/index.ts) as a user's program sees it: the README's
 * TypeScript example, taken from README.md as written, is compiled with tsc
 * against the package (through node_modules/d4fs, its package.json `types`
 * and `exports`) and run on two real image versions.
 */
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { packageRoot } from '../src/util/paths';
import * as api from '../src/index';
import { buildDebImage } from './fixtures/debimages';

const run = promisify(execFile);
const ROOT = packageRoot();

/** The ```ts block after `<!-- readme-test: library -->`. */
async function readmeExample(): Promise<string> {
  const md = await fsp.readFile(path.join(ROOT, 'README.md'), 'utf8');
  const m = /<!--\s*readme-test:\s*library\s*-->\s*\n```ts\n([\s\S]*?)\n```/.exec(md);
  if (!m) throw new Error('README.md has no ```ts block marked <!-- readme-test: library -->');
  return m[1];
}

describe('library API', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-library-'));
  });
  afterAll(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  test('exports the operations of the CLI', () => {
    for (const f of ['convertImage', 'verifyCdimg', 'unpackImage', 'diffImages', 'mergeDeltas', 'patchImage', 'exportImage', 'loadImage', 'pushToServer', 'pullFromServer', 'pushToRegistry', 'pullFromRegistry', 'publishImage', 'diffImageSets', 'applyPatch', 'signFile', 'generateKeyPair']) {
      expect(typeof (api as Record<string, unknown>)[f]).toBe('function');
    }
    expect(typeof api.D4fsError).toBe('function');
    expect(api.EXIT_CODES.CORRUPT).toBeGreaterThan(0);
  });

  test("the README's example compiles against the package and runs", async () => {
    const [v1, v2] = [await buildDebImage('nginx-v1'), await buildDebImage('nginx-v2')];
    await fsp.mkdir(path.join(dir, 'node_modules'), { recursive: true });
    await fsp.symlink(ROOT, path.join(dir, 'node_modules', 'd4fs'));
    await fsp.writeFile(path.join(dir, 'example.ts'), await readmeExample());
    const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
    const compiled = await run(process.execPath, [tsc, 'example.ts', '--strict', '--target', 'ES2022', '--module', 'commonjs', '--moduleResolution', 'node', '--esModuleInterop', '--skipLibCheck', '--types', 'node', '--typeRoots', path.join(ROOT, 'node_modules', '@types')], { cwd: dir }).catch(
      (e: { stdout?: string; stderr?: string }) => {
        throw new Error(`tsc failed on the README example:\n${e.stdout ?? ''}${e.stderr ?? ''}`);
      },
    );
    expect(compiled.stderr).toBe('');
    await fsp.mkdir(path.join(dir, 'out'));
    const r = await run(process.execPath, ['example.js', v1.ref, v2.ref, 'out'], { cwd: dir, maxBuffer: 1 << 24 });
    expect(r.stdout).toMatch(/^delta \d+ bytes instead of \d+ \(\d+\.\d% saved\)$/m);
    expect(r.stdout).toMatch(/^patched: sha256:[0-9a-f]{64}$/m);
    const v2file = await api.verifyCdimg(path.join(dir, 'out', 'v2.cdimg'));
    expect(r.stdout).toContain(`patched: ${v2file.imageId}`);
  }, 300_000);
});
