/**
 * The runtime half of `make demo`: a private containerd with the d4fs
 * snapshotter (FUSE), `ctr-cli load` of nginx v1 and of the v1→v2 delta,
 * `ctr run --snapshotter d4fs` of each; then a d4fs-server, pushes of libssl
 * v1 and two deltas, and a client holding v1 pulling v3 and running it.
 * Everything it starts is stopped and unmounted at the end.
 *   node dist/scripts/demo-runtime.js OUT_DIR
 */
import { spawn, ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { startContainerd, startSnapshotter, unmountAllUnder, mountsUnder, processesMentioning, PrivateContainerd } from '../test/helpers/containerd';
import { packageRoot } from '../src/util/paths';

const CLI = join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');

function say(s: string): void {
  process.stdout.write(`\n\x1b[1m== ${s}\x1b[0m\n`);
}

async function sh(cmd: string, args: string[], echo = true): Promise<string> {
  if (echo) process.stdout.write(`$ ${[cmd === process.execPath ? 'ctr-cli' : cmd, ...args.slice(cmd === process.execPath ? 1 : 0)].join(' ')}\n`);
  return new Promise((res, rej) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d: Buffer) => {
      out += d;
      if (echo) process.stdout.write(d);
    });
    c.stderr.on('data', (d: Buffer) => {
      err += d;
      if (echo) process.stderr.write(d);
    });
    c.on('close', (code) => (code === 0 ? res(out) : rej(new Error(`${cmd} ${args.join(' ')} failed (${code}): ${err.trim()}`))));
  });
}

const cli = (args: string[], echo = true) => sh(process.execPath, [CLI, ...args], echo);

async function ctrRun(ctd: PrivateContainerd, args: string[]): Promise<void> {
  process.stdout.write(`$ ctr run ${args.join(' ')}\n`);
  const r = await ctd.ctr(['run', ...args]);
  process.stdout.write(r.stdout);
  if (r.code !== 0) throw new Error(`ctr run failed: ${r.stderr}`);
}

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (a && typeof a === 'object' ? res(a.port) : rej(new Error('no port'))));
    });
  });
}

async function main(): Promise<void> {
  const out = resolve(process.argv[2] ?? 'demo-out');
  const dir = await fsp.mkdtemp('/tmp/d4fs-demo-');
  const snapRoot = join(dir, 'snapshotter');
  const sock = join(dir, 'd4fs.sock');
  const store = join(dir, 'store');
  const clientStore = join(dir, 'client-store');
  let ctd: PrivateContainerd | undefined;
  let snap: Awaited<ReturnType<typeof startSnapshotter>> | undefined;
  let server: ChildProcess | undefined;
  try {
    say('8. Start a private containerd and the d4fs snapshotter (FUSE)');
    snap = await startSnapshotter({ root: snapRoot, address: sock, logLevel: 'warn', args: ['--store', store, '--store', clientStore] });
    ctd = await startContainerd({ snapshotterSocket: sock });
    process.stdout.write(`containerd at ${ctd.address}, d4fs snapshotter at ${sock}\n`);
    const ca = ['--store', store, '--address', ctd.address];

    say('9. Load nginx v1 (full) and run it straight from the .cdimg');
    await cli(['load', '--image', 'demo/nginx:1', '--cdimg', join(out, 'nginx-1.cdimg'), ...ca]);
    await ctrRun(ctd, ['--rm', '--snapshotter', 'd4fs', 'demo/nginx:1', 'demo-nginx-1', '/bin/sh', '-c', '/usr/sbin/nginx -v 2>&1; sha256sum /usr/sbin/nginx; echo written > /tmp/x && cat /tmp/x']);

    say('10. Load the v1→v2 delta (only the delta is new) and run v2');
    await cli(['load', '--image', 'demo/nginx:2', '--cdimg', join(out, 'nginx-1-2.cdimg'), ...ca]);
    await ctrRun(ctd, ['--rm', '--snapshotter', 'd4fs', 'demo/nginx:2', 'demo-nginx-2', '/bin/sh', '-c', '/usr/sbin/nginx -v 2>&1; sha256sum /usr/sbin/nginx; ls /tmp']);
    await cli(['images', '--store', store]);

    say('11. Start d4fs-server; push libssl v1 and the deltas v1→v2, v2→v3');
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const tokenLine = (await cli(['serve', 'token', '--access', 'rw', '--name', 'demo'], false)).trim();
    await fsp.writeFile(join(dir, 'tokens'), `${tokenLine}\n`, { mode: 0o600 });
    const token = tokenLine.split(/\s+/)[1];
    server = spawn(process.execPath, [CLI, 'serve', '--root', join(dir, 'server'), '--listen', `127.0.0.1:${port}`, '--tokens', join(dir, 'tokens'), '--read-open', '--log-level', 'warn'], { stdio: ['ignore', 'ignore', 'inherit'] });
    for (let i = 0; ; i++) {
      try {
        const r = await fetch(`${url}/healthz`);
        if (r.ok) break;
      } catch {
        /* not yet */
      }
      if (i > 100) throw new Error('d4fs-server did not start');
      await new Promise((r) => setTimeout(r, 100));
    }
    await cli(['push', '--cdimg', join(out, 'libssl-1.cdimg'), '--image', 'demo/libssl:1', '--server', url, '--token', token]);
    await cli(['push', '--cdimg', join(out, 'libssl-1-2.cdimg'), '--image', 'demo/libssl:2', '--server', url, '--token', token]);
    await cli(['push', '--cdimg', join(out, 'libssl-2-3.cdimg'), '--image', 'demo/libssl:3', '--server', url, '--token', token]);

    say('12. A client that holds v1 pulls v3: the server merges v1→v2→v3 into one delta');
    const cc = ['--store', clientStore, '--address', ctd.address, '--server', url, '--no-progress'];
    await cli(['pull', '--image', 'demo/libssl:1', ...cc]);
    await cli(['pull', '--image', 'demo/libssl:3', ...cc]);
    await ctrRun(ctd, ['--rm', '--snapshotter', 'd4fs', 'demo/libssl:3', 'demo-libssl-3', '/bin/sh', '-c', 'ls -l /usr/lib/x86_64-linux-gnu/libssl.so.3; sha256sum /usr/lib/x86_64-linux-gnu/libssl.so.3']);

    say('13. Remove the images');
    await cli(['rmi', 'demo/nginx:1', 'demo/nginx:2', ...ca]);
    await cli(['rmi', 'demo/libssl:1', 'demo/libssl:3', '--store', clientStore, '--address', ctd.address]);
  } finally {
    say('14. Stop everything and unmount');
    server?.kill('SIGTERM');
    await ctd?.stop();
    await snap?.stop();
    for (const pid of processesMentioning(dir)) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        /* gone */
      }
    }
    await new Promise((r) => setTimeout(r, 500));
    for (const pid of processesMentioning(dir)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await unmountAllUnder(dir);
    const left = mountsUnder(dir);
    await fsp.rm(dir, { recursive: true, force: true });
    process.stdout.write(left.length ? `still mounted: ${left.join(', ')}\n` : 'nothing left mounted, nothing left running\n');
  }
}

/** Bytes of the "pulled through d4fs" lines the snapshotter logged after `from`. */
async function d4fsPulledBytes(logFile: string, from: number): Promise<number> {
  const text = (await fsp.readFile(logFile, 'utf8')).slice(from);
  return text
    .split('\n')
    .filter((l) => l.includes('"pulled through d4fs"'))
    .reduce((n, l) => n + (JSON.parse(l) as { bytes: number }).bytes, 0);
}

/** Layer sizes of a registry image (skopeo inspect --raw). */
async function layerSizes(ref: string): Promise<Map<string, number>> {
  const doc = JSON.parse(await sh('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${ref}`], false)) as { layers: { digest: string; size: number }[] };
  return new Map(doc.layers.map((l) => [l.digest, l.size]));
}

const mib = (n: number): string => `${(n / 1048576).toFixed(2)} MiB`;

/** Kubernetes: a CRI client (kubelet's part) pulls nginx v1 then v2 through containerd's CRI plugin with d4fs as its snapshotter. */
async function criDemo(out: string): Promise<void> {
  say('K1. Kubernetes: containerd\'s CRI plugin with d4fs as its snapshotter, a registry, `ctr-cli publish`');
  const { startCriRig } = await import('../test/helpers/cri');
  const rig = await startCriRig({ logLevel: 'info' });
  const pods: Awaited<ReturnType<typeof rig.runPod>>[] = [];
  try {
    const host = rig.registry.host;
    const refs = Object.fromEntries((await fsp.readFile(join(out, 'images.txt'), 'utf8')).trim().split('\n').map((l) => l.split(/\s+/)));
    await sh('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', refs['nginx-v1'], `docker://${host}/web:1`]);
    await sh('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', refs['nginx-v2'], `docker://${host}/web:2`]);
    await cli(['publish', `docker://${host}/web:1`, '--no-progress']);
    await cli(['publish', `docker://${host}/web:2`, '--base', `docker://${host}/web:1`, '--no-progress']);
    const log = rig.env.snapshotterLogFile as string;

    say('K2. CRI PullImage of web:1 on an empty node (the full .cdimg), then a pod');
    let mark = (await fsp.stat(log)).size;
    await rig.cri.pullImage(`${host}/web:1`);
    process.stdout.write(`pulled ${host}/web:1 through d4fs: ${mib(await d4fsPulledBytes(log, mark))}\n`);
    const p1 = await rig.runPod(`${host}/web:1`, { command: ['/bin/sh', '-c', 'sleep 600'] });
    pods.push(p1);
    process.stdout.write((await rig.cri.execSync(p1.containerId, ['/usr/sbin/nginx', '-v'], 30)).stderr.toString());

    say('K3. CRI PullImage of web:2 on the node running web:1: only the delta moves');
    mark = (await fsp.stat(log)).size;
    await rig.cri.pullImage(`${host}/web:2`);
    const moved = await d4fsPulledBytes(log, mark);
    const [l1, l2] = [await layerSizes(`${host}/web:1`), await layerSizes(`${host}/web:2`)];
    const newLayers = [...l2].filter(([d]) => !l1.has(d)).reduce((n, [, z]) => n + z, 0);
    const whole = [...l2.values()].reduce((n, z) => n + z, 0);
    process.stdout.write(`d4fs moved ${mib(moved)}; a plain CRI pull moves ${mib(newLayers)} (the layers web:1 lacks; ${mib(whole)} for the whole image)\n`);
    const p2 = await rig.runPod(`${host}/web:2`, { command: ['/bin/sh', '-c', 'sleep 600'] });
    pods.push(p2);
    process.stdout.write((await rig.cri.execSync(p2.containerId, ['/usr/sbin/nginx', '-v'], 30)).stderr.toString());
  } finally {
    for (const p of pods) await rig.removePod(p).catch(() => undefined);
    await rig.stop();
    process.stdout.write('CRI pods, containerd, snapshotter and registry stopped\n');
  }
}

main()
  .then(() => criDemo(resolve(process.argv[2] ?? 'demo-out')))
  .catch((e) => {
    process.stderr.write(`demo: ${(e as Error).message}\n`);
    process.exit(1);
  });
