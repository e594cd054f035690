/**
 * README.md is a contract (issue 17). Every shell block in it is checked:
 *
 * - every `ctr-cli …` and `d4fs-server …` line names commands and flags the
 *   CLI defines (so a renamed flag fails CI);
 * - blocks marked `<!-- readme-test: run -->` are executed as written, in
 *   order, in one working directory, against a private containerd with the
 *   d4fs snapshotter, a private d4fs-server and two private registries; the
 *   only changes are the placeholders listed in PLACEHOLDERS (host names and
 *   ports of the README bound to the private ones);
 * - a block marked `<!-- readme-test: background URL -->` is started in the
 *   background (a server a user starts in another terminal) and waited for
 *   until URL answers.
 *
 * `img/nginx-v1` and `img/nginx-v2`, the OCI layouts the README starts from,
 * are two versions of an nginx image built from Debian packages.
 */
import { spawn, ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Command, Option } from 'commander';
import { buildProgram } from '../src/commands';
import { buildServerProgram } from '../src/commands/serve';
import { packageRoot } from '../src/util/paths';
import { buildDebImage } from './fixtures/debimages';
import { startRegistry, TestRegistry } from './helpers/registry';
import { startD4fsEnv, D4fsEnv } from './helpers/d4fs-env';

const ROOT = packageRoot();
const README = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');

interface Block {
  line: number;
  mode: 'check' | 'run' | 'background';
  url?: string;
  text: string;
}

/** The ```sh blocks of the README with the marker on the line before them. */
function shellBlocks(md: string): Block[] {
  const lines = md.split('\n');
  const out: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].trim() !== '```sh') continue;
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && lines[i].trim() !== '```'; i++) body.push(lines[i]);
    const marker = /<!--\s*readme-test:\s*(run|background)\s*(\S*)\s*-->/.exec(lines[start - 1] ?? '');
    out.push({ line: start + 1, mode: marker ? (marker[1] as Block['mode']) : 'check', url: marker?.[2] || undefined, text: body.join('\n') });
  }
  return out;
}

/** Command lines of a block: continuations joined, comments dropped. */
function commandLines(text: string): string[] {
  const joined = text.replace(/\\\n\s*/g, ' ');
  return joined
    .split('\n')
    .map((l) => l.replace(/(^|\s)#.*$/, '').trim())
    .filter(Boolean);
}

/** Words of a command line (quotes removed; synopsis brackets and alternatives kept as words). */
function words(line: string): string[] {
  const out: string[] = [];
  const re = /"([^"]*)"|'([^']*)'|(\S+)/g;
  for (let m = re.exec(line); m; m = re.exec(line)) out.push(m[1] ?? m[2] ?? m[3]);
  return out;
}

function longFlags(c: Command): Set<string> {
  const s = new Set<string>(['--help']);
  const add = (o: Option) => {
    if (o.long) s.add(o.long);
    if (o.short) s.add(o.short);
    if (o.negate && o.long) s.add(o.long);
  };
  for (let x: Command | null = c; x; x = x.parent) (x.options as readonly Option[]).forEach(add);
  return s;
}

/** Check one ctr-cli / d4fs-server invocation against the CLI's definitions; returns problems. */
function checkInvocation(line: string): string[] {
  const w = words(line);
  const i = w.findIndex((x) => x === 'ctr-cli' || x === 'd4fs-server' || x.endsWith('dist/cli/ctr-cli.js'));
  if (i < 0) return [];
  let cmd: Command = w[i] === 'd4fs-server' ? buildServerProgram() : buildProgram();
  const args = w.slice(i + 1);
  const problems: string[] = [];
  let k = 0;
  // walk down the subcommands
  for (; k < args.length; k++) {
    const a = args[k];
    if (a.startsWith('-') || a.startsWith('[') || a === '|' || a === '>' || a === '&&' || a === ';') break;
    const sub = cmd.commands.find((c) => c.name() === a || c.aliases().includes(a));
    if (!sub) break;
    cmd = sub;
  }
  const asksHelp = args.includes('--help') || args.includes('-h');
  if (!asksHelp && cmd.commands.length > 0 && !(cmd as unknown as { _actionHandler?: unknown })._actionHandler) {
    problems.push(`"${line}": "${cmd.name()}" needs a subcommand (${cmd.commands.map((c) => c.name()).join(', ')})`);
  }
  const flags = longFlags(cmd);
  const rest = args.slice(k);
  const end = rest.findIndex((x) => x === '|' || x === '>' || x === '&&' || x === ';' || x === '&');
  const own = end < 0 ? rest : rest.slice(0, end); // the rest is another command
  for (const raw of own) {
    for (const part of raw.split('|')) {
      const t = part.replace(/^[[(]+/, '').replace(/[\])…,]+$/, '');
      if (!/^--?[A-Za-z]/.test(t)) continue;
      const flag = t.split('=')[0];
      if (!flags.has(flag)) problems.push(`"${line}": ${cmd.name()} has no option ${flag}`);
    }
  }
  // concrete lines (not synopses with [optional] parts or alternatives): count the positional arguments
  if (!asksHelp && !own.some((x) => /[[\]|…]/.test(x))) {
    const opts: Option[] = [];
    for (let x: Command | null = cmd; x; x = x.parent) opts.push(...(x.options as readonly Option[]));
    let positional = 0;
    for (let j = 0; j < own.length; j++) {
      const t = own[j];
      if (/^--?[A-Za-z]/.test(t)) {
        const o = opts.find((x) => x.long === t.split('=')[0] || x.short === t);
        if (o && (o.required || o.optional) && !t.includes('=')) j++;
        continue;
      }
      positional++;
    }
    const reg = (cmd as unknown as { registeredArguments: { variadic: boolean }[] }).registeredArguments ?? [];
    if (!reg.some((a) => a.variadic) && positional > reg.length) problems.push(`"${line}": ${cmd.name()} takes at most ${reg.length} argument(s), the line gives ${positional}`);
  }
  return problems;
}

describe('README: every command line names real commands and flags', () => {
  const blocks = shellBlocks(README);
  it('has shell blocks, some of them executed', () => {
    expect(blocks.length).toBeGreaterThan(5);
    expect(blocks.filter((b) => b.mode === 'run').length).toBeGreaterThan(3);
  });
  it('flags of every ctr-cli and d4fs-server line exist', () => {
    const problems = blocks.flatMap((b) => commandLines(b.text).flatMap((l) => checkInvocation(l).map((p) => `README.md:${b.line}: ${p}`)));
    expect(problems).toEqual([]);
  });
  it('the checker itself catches a wrong flag and a wrong subcommand', () => {
    expect(checkInvocation('ctr-cli convert --image X --outptu Y')).toContain('"ctr-cli convert --image X --outptu Y": convert has no option --outptu');
    expect(checkInvocation('ctr-cli cdimg --json')).toHaveLength(2);
    expect(checkInvocation('ctr-cli serve token --access rw > tokens')).toEqual([]);
    expect(checkInvocation('ctr-cli cdimg show a.cdimg b.cdimg')).toHaveLength(1);
    expect(checkInvocation('ctr-cli cdimg merge a b c --out d')).toEqual([]);
  });
});

/** README names → the private test facilities. */
interface Bindings {
  server: string; // 127.0.0.1:PORT
  registry: string;
  site: string;
  srv: string;
}
const PLACEHOLDERS = (b: Bindings): [RegExp, string][] => [
  [/127\.0\.0\.1:8081/g, b.server],
  [/registry\.example/g, b.registry],
  [/site\.example/g, b.site],
  [/\/srv\/d4fs/g, b.srv],
];

describe('README: the walkthrough runs as written', () => {
  let env: D4fsEnv | undefined;
  let reg: TestRegistry | undefined;
  let site: TestRegistry | undefined;
  let work: string;
  const background: ChildProcess[] = [];

  beforeAll(async () => {
    work = await fsp.mkdtemp(path.join(process.env.D4FS_TMPDIR ?? '/tmp', 'd4fs-readme-'));
    const [v1, v2] = [await buildDebImage('nginx-v1'), await buildDebImage('nginx-v2')];
    await fsp.mkdir(path.join(work, 'img'));
    // the README's starting point: two OCI layouts (copies: the test's images stay untouched)
    await fsp.cp(v1.layout, path.join(work, 'img', 'nginx-v1'), { recursive: true });
    await fsp.cp(v2.layout, path.join(work, 'img', 'nginx-v2'), { recursive: true });
    env = await startD4fsEnv();
    reg = await startRegistry();
    site = await startRegistry();
    // ctr-cli and ctr as a user has them: on PATH, ctr talking to the private containerd
    const bin = path.join(work, '.bin');
    await fsp.mkdir(bin);
    await fsp.writeFile(path.join(bin, 'ctr-cli'), `#!/bin/sh\nexec ${process.execPath} ${path.join(ROOT, 'dist', 'cli', 'ctr-cli.js')} "$@"\n`, { mode: 0o755 });
    const privateRun = `--fifo-dir ${env.containerd.dir}/fifo --runc-root ${env.containerd.dir}/runc`;
    await fsp.writeFile(
      path.join(bin, 'ctr'),
      `#!/bin/sh\nif [ "$1" = run ]; then shift; exec /usr/bin/ctr --address ${env.containerd.address} run ${privateRun} "$@"; fi\nexec /usr/bin/ctr --address ${env.containerd.address} "$@"\n`,
      { mode: 0o755 },
    );
  }, 900_000);

  afterAll(async () => {
    for (const c of background) c.kill('SIGTERM');
    await env?.stop();
    await reg?.stop();
    await site?.stop();
    if (work) await fsp.rm(work, { recursive: true, force: true });
  });

  it('every run block succeeds', async () => {
    if (!env || !reg || !site) throw new Error('environment did not start');
    const port = await freePort();
    const bind = PLACEHOLDERS({ server: `127.0.0.1:${port}`, registry: reg.host, site: site.host, srv: path.join(work, 'srv') });
    const shellEnv = {
      ...process.env,
      PATH: `${path.join(work, '.bin')}:${process.env.PATH}`,
      CONTAINERD_ADDRESS: env.containerd.address,
      D4FS_STORE: env.store,
    };
    const ran: string[] = [];
    for (const b of shellBlocks(README)) {
      if (b.mode === 'check') continue;
      let script = b.text;
      let url = b.url;
      for (const [re, to] of bind) {
        script = script.replace(re, to);
        if (url) url = url.replace(re, to);
      }
      if (b.mode === 'background') {
        const child = spawn('bash', ['-c', script], { cwd: work, env: shellEnv, stdio: ['ignore', 'ignore', 'pipe'] });
        let err = '';
        child.stderr?.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
        background.push(child);
        if (!url) throw new Error(`README.md:${b.line}: a background block needs a URL to wait for`);
        await waitFor(url, 20_000).catch((e: Error) => {
          throw new Error(`README.md:${b.line}: ${e.message}\n${err}`);
        });
        ran.push(`${b.line} (background)`);
        continue;
      }
      const r = await runBash(`set -euo pipefail\n${script}\n`, work, shellEnv);
      if (r.code !== 0) {
        throw new Error(`README.md:${b.line}: the block failed (exit ${r.code}).\n--- script\n${script}\n--- stdout\n${r.stdout.slice(-3000)}\n--- stderr\n${r.stderr.slice(-3000)}\n--- snapshotter\n${env.logs().slice(-2000)}`);
      }
      ran.push(String(b.line));
    }
    expect(ran.length).toBeGreaterThan(3);
  }, 900_000);
});

function runBash(script: string, cwd: string, env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn('bash', ['-c', script], { cwd, env });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

async function waitFor(url: string, ms: number): Promise<void> {
  const end = Date.now() + ms;
  let last = '';
  while (Date.now() < end) {
    try {
      const r = await fetch(url);
      if (r.status < 500) return;
      last = `HTTP ${r.status}`;
    } catch (e) {
      last = (e as Error).message;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${url} did not answer within ${ms} ms (${last})`);
}

async function freePort(): Promise<number> {
  const net = await import('node:net');
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (typeof a === 'object' && a ? resolve(a.port) : reject(new Error('no port'))));
    });
  });
}
