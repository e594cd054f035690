/**
 * Issue 17: what a new user trips over, each with the message and exit code
 * it must give now.
 */
import { runCli } from './helpers/cli';
import { promises as fsp, existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { buildTar } from '../src/tar';
import { writeSimpleImage } from '../src/oci/writer';
import { EXIT_CODES } from '../src/errors';
import { containerdError } from '../src/containerd/client';
import { packageRoot } from '../src/util/paths';

const CLI = join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');

let work: string;
const at = (n: string) => join(work, n);

const cli = runCli;

/** Run ctr-cli with its stdout into `head -1`; the exit code of ctr-cli and its stderr. */
function intoHead(args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn('bash', ['-c', `"${process.execPath}" "${CLI}" "$@" | head -c 20 >/dev/null; echo "rc=\${PIPESTATUS[0]}" >&2`, 'x', ...args]);
    let stderr = '';
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('close', () => {
      const m = /rc=(\d+)\s*$/.exec(stderr);
      resolve({ code: m ? Number(m[1]) : -1, stderr: stderr.replace(/rc=\d+\s*$/, '') });
    });
  });
}

let layout: string;
let cdimg: string;
beforeAll(async () => {
  work = await fsp.mkdtemp(join(tmpdir(), 'd4fs-papercuts-'));
  layout = at('img');
  const entries: Parameters<typeof buildTar>[0] = [{ header: { name: './', type: 'dir' } }];
  // enough entries that `show --json` is far larger than a pipe's buffer
  for (let i = 0; i < 3000; i++) entries.push({ header: { name: `f${i}`, type: 'file' }, data: Buffer.from(`file ${i}\n`) });
  await writeSimpleImage(layout, 'v1', { layers: [buildTar(entries)], compression: 'gzip', config: { Cmd: ['/f0'] } });
  cdimg = at('img.cdimg');
  const r = await cli(['convert', '--image', `oci:${layout}:v1`, '--output', cdimg, '--no-progress']);
  expect(r.code).toBe(0);
}, 120_000);
afterAll(async () => {
  await fsp.rm(work, { recursive: true, force: true });
});

describe('a closed stdout ends the command quietly (item 8)', () => {
  it.each([[['convert', '--help']], [['serve', '--help']], [['pull', '--help']], [['cdimg', 'show', 'PLACEHOLDER', '--json']]])('%j | head', async (args) => {
    const r = await intoHead(args.map((a) => (a === 'PLACEHOLDER' ? cdimg : a)));
    expect(r.stderr).not.toMatch(/EPIPE|Error|at /);
    expect(r.code).toBe(0);
  });
});

describe('references', () => {
  it('a platform the image does not have is an error naming the one it has (item 9)', async () => {
    const r = await cli(['convert', '--image', `oci:${layout}:v1`, '--platform', 'linux/arm64', '--output', at('arm.cdimg')]);
    expect(r.code).toBe(EXIT_CODES.NOT_FOUND);
    expect(r.stderr).toMatch(/is for linux\/amd64, not linux\/arm64/);
    expect(existsSync(at('arm.cdimg'))).toBe(false);
  });

  it('the same image gives the same bytes whatever the reference (item 10)', async () => {
    const refs = [`oci:${layout}:v1`, `oci:${layout}`, `oci:img:v1`];
    const outs: Buffer[] = [];
    for (const [i, ref] of refs.entries()) {
      const out = at(`same-${i}.cdimg`);
      const r = await cli(['convert', '--image', ref, '--output', out, '--no-progress'], { cwd: work });
      expect(r.code).toBe(0);
      outs.push(readFileSync(out));
    }
    expect(outs[1].equals(outs[0])).toBe(true);
    expect(outs[2].equals(outs[0])).toBe(true);
  });

  it('a local path without a transport is not sent to a registry: "did you mean oci:…?" (item 11)', async () => {
    for (const ref of ['img', './img', `${layout}`, 'img/nested']) {
      const r = await cli(['convert', '--image', ref, '--output', at('x.cdimg')], { cwd: work });
      expect(r.code).toBe(EXIT_CODES.INVALID_ARGUMENT);
      expect(r.stderr).toMatch(/looks like a local path.*did you mean oci:/);
      expect(r.stderr).not.toMatch(/ENOTFOUND|getaddrinfo/);
    }
    const typo = await cli(['convert', '--image', 'new-set.txt', '--output', at('x.cdimg')], { cwd: work });
    expect(typo.code).toBe(EXIT_CODES.INVALID_ARGUMENT);
    expect(typo.stderr).toMatch(/looks like a file name, and there is no such file/);
    await fsp.mkdir(at('out'));
    const e = await cli(['cdimg', 'export', cdimg, '--to', 'out/plain'], { cwd: work });
    expect(e.code).toBe(EXIT_CODES.INVALID_ARGUMENT);
    expect(e.stderr).toMatch(/did you mean oci:out\/plain/);
  });
});

describe('D4C\'s --cdimg on every file argument (item 6)', () => {
  it('unpack --cdimg F DIR and export --cdimg F', async () => {
    const u = await cli(['cdimg', 'unpack', '--cdimg', cdimg, at('unpacked')]);
    expect(u.code).toBe(0);
    expect(readFileSync(at('unpacked/f7'), 'utf8')).toBe('file 7\n');
    const e = await cli(['cdimg', 'export', '--cdimg', cdimg, '--to', `oci:${at('exported')}:v1`]);
    expect(e.code).toBe(0);
    expect(existsSync(at('exported/index.json'))).toBe(true);
  });
});

describe('exit codes and messages (items 12-17)', () => {
  it('show of a directory is a usage error (2), not "corrupt"', async () => {
    const r = await cli(['cdimg', 'show', work]);
    expect(r.code).toBe(EXIT_CODES.INVALID_ARGUMENT);
    expect(r.stderr).toMatch(/is a directory/);
  });

  it('images/rmi with a mistyped --store neither create it nor pretend it is empty', async () => {
    const typo = at('no-such-store');
    const r = await cli(['images', '--store', typo]);
    expect(r.code).toBe(EXIT_CODES.NOT_FOUND);
    expect(r.stderr).toMatch(/no local store at/);
    expect(existsSync(typo)).toBe(false);
  });

  it('load NAME loads an image the store holds already', async () => {
    const store = at('store');
    expect((await cli(['load', '--image', 'app:1', '--cdimg', cdimg, '--no-containerd', '--store', store])).code).toBe(0);
    const again = await cli(['load', 'app:1', '--no-containerd', '--store', store, '--json']);
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout).name).toBe('app:1');
    const missing = await cli(['load', 'app:2', '--no-containerd', '--store', store]);
    expect(missing.code).toBe(EXIT_CODES.NOT_FOUND);
  });

  it('containerd failing to dial the snapshotter says to start the snapshotter', () => {
    const e = containerdError(
      { code: 14, details: 'connection error: desc = "transport: Error while dialing: dial unix /run/d4fs/d4fs.sock: connect: connection refused"', message: '' },
      '/run/containerd/containerd.sock',
      'Prepare',
    );
    expect(e.kind).toBe('UNAVAILABLE');
    expect(e.message).toMatch(/snapshotter at \/run\/d4fs\/d4fs\.sock: the d4fs snapshotter is not running.*systemctl start d4fs-snapshotter/);
    expect(e.message).not.toMatch(/cannot reach containerd/);
  });

  it('serve token takes the access as an argument too, and durations show their unit', async () => {
    const t = await cli(['serve', 'token', 'rw', 'ci']);
    expect(t.code).toBe(0);
    expect(t.stdout).toMatch(/^rw \S{20,} ci\n$/);
    expect((await cli(['serve', 'token', 'xx'])).code).toBe(EXIT_CODES.INVALID_ARGUMENT);
    const h = await cli(['serve', '--help']);
    expect(h.stdout.replace(/\s+/g, ' ')).toMatch(/--shutdown-grace <duration> .*\(default: 30s\)/);
  });

  it('every exit code is in the README\'s table', () => {
    const readme = readFileSync(join(packageRoot(), 'README.md'), 'utf8');
    const table = /Exit codes:([^\n]+(?:\n[^\n]+)*?)\. Errors are/.exec(readme);
    expect(table).not.toBeNull();
    for (const code of new Set(Object.values(EXIT_CODES))) expect(table?.[1]).toMatch(new RegExp(`\\b${code}\\s+[a-z]`));
  });
});
