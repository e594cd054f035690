/**
 * containerd's registry host configuration (`hosts.toml` under the
 * `config_path` of the CRI plugin, or `ctr --hosts-dir`): while the peer
 * runs, each mirrored registry gets
 *
 *   server = "https://registry.example"
 *   [host."http://127.0.0.1:5050"]
 *     capabilities = ["pull", "resolve"]
 *
 * and the file goes when the peer stops: containerd 1.6 has no dial
 * timeout for mirrors, so a dead mirror would stall every pull. A
 * hosts.toml the peer did not write is kept aside and put back.
 */
import { promises as fsp } from 'node:fs';
import fs from 'node:fs';
import path from 'node:path';
import { invalidArgument } from '../errors';
import { apiHostOf } from '../oci/registry/client';
import { isLoopbackHost } from '../oci/registry/auth';

const MARK = '# written by d4fs-peer';
const SAVED = 'hosts.toml.d4fs-saved';

/** containerd's directory name of a registry ("docker.io", "127.0.0.1:5000"). */
function dirOf(configPath: string, registry: string): string {
  if (!/^[A-Za-z0-9.-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$/.test(registry)) throw invalidArgument(`invalid registry name ${JSON.stringify(registry.slice(0, 100))}`);
  return path.join(configPath, registry);
}

/** The hosts.toml text for a registry mirrored at `mirrorUrl`. */
export function hostsToml(registry: string, mirrorUrl: string, opts: { plainHttp?: boolean } = {}): string {
  const host = apiHostOf(registry);
  const hostname = host.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  const scheme = opts.plainHttp ?? isLoopbackHost(hostname) ? 'http' : 'https';
  const mirror = new URL(mirrorUrl);
  return [
    `${MARK} (pid ${process.pid}); removed when it stops`,
    `server = "${scheme}://${host}"`,
    '',
    `[host."${mirror.protocol}//${mirror.host}"]`,
    '  capabilities = ["pull", "resolve"]',
    '',
  ].join('\n');
}

/** Write the hosts.toml of each registry; returns the function that removes them (restoring any saved). */
export async function installHostsToml(configPath: string, registries: string[], mirrorUrl: string, plainHttp: (registry: string) => boolean | undefined): Promise<() => void> {
  const written: string[] = [];
  for (const registry of registries) {
    const dir = dirOf(configPath, registry);
    await fsp.mkdir(dir, { recursive: true, mode: 0o755 });
    const file = path.join(dir, 'hosts.toml');
    const old = await fsp.readFile(file, 'utf8').catch(() => undefined);
    if (old !== undefined && !old.startsWith(MARK)) await fsp.rename(file, path.join(dir, SAVED));
    const tmp = `${file}.${process.pid}.tmp`;
    await fsp.writeFile(tmp, hostsToml(registry, mirrorUrl, { plainHttp: plainHttp(registry) }), { mode: 0o644 });
    await fsp.rename(tmp, file);
    written.push(dir);
  }
  // synchronous: it also runs from process exit handlers
  return () => {
    for (const dir of written) {
      const file = path.join(dir, 'hosts.toml');
      try {
        if (fs.readFileSync(file, 'utf8').startsWith(MARK)) fs.rmSync(file, { force: true });
      } catch {
        /* gone already */
      }
      try {
        if (fs.existsSync(path.join(dir, SAVED)) && !fs.existsSync(file)) fs.renameSync(path.join(dir, SAVED), file);
        else fs.rmdirSync(dir); // only when empty
      } catch {
        /* not empty, or gone */
      }
    }
  };
}
