/**
 * Issue 12: kill -9 of the snapshotter in the middle of a CRI pull through
 * d4fs. The pull fails (or completes); after a restart a retry succeeds; what
 * the store holds verifies, and nothing is half-mounted.
 */
import { execFile } from 'node:child_process';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { startThrottlingProxy, ThrottlingProxy } from '../bench/distribution';
import { buildDebImage, BuiltDebImage } from './fixtures/debimages';
import { startCriRig, CriRig, CriPod } from './helpers/cri';
import { eventually } from './helpers/wait';
import { LocalStore } from '../src/store/store';
import { packageRoot } from '../src/util/paths';

const run = promisify(execFile);
const CLI = path.join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');

let rig: CriRig | undefined;
let proxy: ThrottlingProxy | undefined;
let v1: BuiltDebImage;
const pods: CriPod[] = [];

beforeAll(async () => {
  v1 = await buildDebImage('nginx-v1');
  rig = await startCriRig();
  const host = rig.registry.host;
  await run('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `oci:${v1.layout}:${v1.tag}`, `docker://${host}/app:v1`]);
  await run(process.execPath, [CLI, 'publish', `docker://${host}/app:v1`, '--no-progress']);
  // a slow link: the 10 MiB full image takes a few seconds
  proxy = await startThrottlingProxy(host, 16);
}, 900_000);

afterAll(async () => {
  if (rig) for (const p of pods) await rig.removePod(p).catch(() => undefined);
  await rig?.stop();
  await proxy?.close();
});

it('kill -9 of the snapshotter mid-pull: the pull fails or completes, a retry succeeds, nothing half-stored or half-mounted', async () => {
  const r = rig as CriRig;
  const p = proxy as ThrottlingProxy;
  const image = `${p.host}/app:v1`;
  const first = r.cri.pullImage(image).then(
    () => 'ok',
    (e: Error) => `failed: ${e.message}`,
  );
  await eventually(() => p.bytesDown() > 2 * 1024 * 1024, 60_000, 'the d4fs download to be under way');
  await r.env.snapshotter.kill9();
  const outcome = await first;
  expect(outcome === 'ok' || outcome.startsWith('failed')).toBe(true);
  await r.env.restartSnapshotter();
  // containerd reconnects to the plugin on its own; the retry pulls (resuming the download)
  let lastError = '';
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      await r.cri.pullImage(image);
      lastError = '';
      break;
    } catch (e) {
      lastError = (e as Error).message;
      await new Promise((res) => setTimeout(res, 1000));
    }
  }
  expect(lastError).toBe('');
  const pod = await r.runPod(image, { command: ['/bin/sh', '-c', 'sleep 600'] });
  pods.push(pod);
  const out = await r.cri.execSync(pod.containerId, ['/bin/ls', '/usr/sbin/nginx'], 30);
  expect(out.stdout.toString()).toBe('/usr/sbin/nginx\n');
  // one mount (the image's top layer), and a store whose files all verify and leave no partial download behind
  expect(r.env.d4fsMounts()).toHaveLength(1);
  const s = await LocalStore.open(r.env.store);
  try {
    expect(s.files()).toHaveLength(1);
    await s.verifyChain(s.files()[0].imageId);
    const tmp = await fsp.readdir(path.join(r.env.store, 'tmp')).catch(() => [] as string[]);
    expect(tmp.filter((n) => n.endsWith('.part'))).toEqual([]);
  } finally {
    s.close();
  }
}, 600_000);
