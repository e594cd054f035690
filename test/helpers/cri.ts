/**
 * Talking Kubernetes' CRI to containerd, for tests, benchmarks and the demo:
 * there is no crictl on this machine, so this is a small client of the
 * runtime.v1 RuntimeService and ImageService (proto/cri/api.proto) over
 * grpc-js, pod helpers (host-network pods: no CNI here), a reader of the
 * snapshotter's Prepare/Commit calls with their labels, and a whole "CRI
 * node" rig:
 *
 *     const rig = await startCriRig({ snapshotterArgs: [...] });
 *     await pushOciLayout(layout, 'v1', rig.registry.host, 'app:v1');
 *     const ref = await rig.cri.pullImage(`${rig.registry.host}/app:v1`);
 *     const pod = await rig.runPod(`${rig.registry.host}/app:v1`, { command: ['/bin/sh', '-c', 'sleep 60'] });
 *     const r = await rig.cri.execSync(pod.containerId, ['cat', '/etc/os-release']);
 *     await rig.removePod(pod);
 *     await rig.stop();
 *
 * The rig: a private registry on 127.0.0.1 (plain http) holding the pause
 * image, and a private containerd with the CRI plugin whose snapshotter is
 * the d4fs proxy snapshotter of a D4fsEnv (see containerd.ts, d4fs-env.ts).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { loadService } from '../../src/containerd/proto';
import { type CriPluginOptions, mountsUnder } from './containerd';
import { type D4fsEnv, startD4fsEnv } from './d4fs-env';
import { pushPauseImage } from './pause';
import { type TestRegistry, startRegistry } from './registry';

// ---------------------------------------------------------------------------
// Messages (the fields this project uses; proto names, snake_case)
// ---------------------------------------------------------------------------

export type NamespaceMode = 'POD' | 'CONTAINER' | 'NODE' | 'TARGET';
export type ContainerState = 'CONTAINER_CREATED' | 'CONTAINER_RUNNING' | 'CONTAINER_EXITED' | 'CONTAINER_UNKNOWN';
export type PodSandboxState = 'SANDBOX_READY' | 'SANDBOX_NOTREADY';

export interface VersionResponse {
  version: string;
  runtime_name: string;
  runtime_version: string;
  runtime_api_version: string;
}

export interface PodSandboxMetadata {
  name: string;
  uid: string;
  namespace: string;
  attempt?: number;
}

export interface PodSandboxConfig {
  metadata: PodSandboxMetadata;
  hostname?: string;
  log_directory?: string;
  dns_config?: { servers?: string[]; searches?: string[]; options?: string[] };
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  linux?: {
    cgroup_parent?: string;
    security_context?: {
      namespace_options?: { network?: NamespaceMode; pid?: NamespaceMode; ipc?: NamespaceMode; target_id?: string };
      privileged?: boolean;
      readonly_rootfs?: boolean;
    };
    sysctls?: Record<string, string>;
  };
}

export interface CriMount {
  container_path: string;
  host_path: string;
  readonly?: boolean;
  propagation?: 'PROPAGATION_PRIVATE' | 'PROPAGATION_HOST_TO_CONTAINER' | 'PROPAGATION_BIDIRECTIONAL';
}

export interface ContainerConfig {
  metadata: { name: string; attempt?: number };
  image: { image: string; annotations?: Record<string, string> };
  command?: string[];
  args?: string[];
  working_dir?: string;
  envs?: { key: string; value: string }[];
  mounts?: CriMount[];
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  log_path?: string;
  linux?: {
    security_context?: {
      privileged?: boolean;
      namespace_options?: { network?: NamespaceMode; pid?: NamespaceMode; ipc?: NamespaceMode; target_id?: string };
      run_as_user?: { value: string | number };
      run_as_username?: string;
      readonly_rootfs?: boolean;
      no_new_privs?: boolean;
    };
  };
}

export interface ContainerStatus {
  id: string;
  metadata: { name: string; attempt: number };
  state: ContainerState;
  /** Nanoseconds, as a decimal string (int64). */
  created_at: string;
  started_at: string;
  finished_at: string;
  exit_code: number;
  image: { image: string };
  image_ref: string;
  reason: string;
  message: string;
  log_path: string;
}

export interface PodSandbox {
  id: string;
  metadata: PodSandboxMetadata;
  state: PodSandboxState;
  created_at: string;
  labels: Record<string, string>;
}

export interface CriContainer {
  id: string;
  pod_sandbox_id: string;
  metadata: { name: string; attempt: number };
  image: { image: string };
  image_ref: string;
  state: ContainerState;
}

export interface CriImage {
  /** The image id (the config's digest). */
  id: string;
  repo_tags: string[];
  repo_digests: string[];
  /** Bytes, as a decimal string (uint64). */
  size: string;
  username: string;
  pinned: boolean;
}

export interface AuthConfig {
  username?: string;
  password?: string;
  /** base64 of "user:pass" */
  auth?: string;
  server_address?: string;
  identity_token?: string;
  registry_token?: string;
}

export interface ExecSyncResult {
  stdout: Buffer;
  stderr: Buffer;
  exit_code: number;
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

const RUNTIME_SERVICE = 'runtime.v1.RuntimeService';
const IMAGE_SERVICE = 'runtime.v1.ImageService';

/** The two CRI services from <package root>/proto/cri/api.proto. */
function criServices(): { runtime: grpc.ServiceClientConstructor; image: grpc.ServiceClientConstructor } {
  return { runtime: loadService('cri/api.proto', RUNTIME_SERVICE), image: loadService('cri/api.proto', IMAGE_SERVICE) };
}

/** A failed CRI call: the method, the gRPC status code and containerd's message. */
export class CriError extends Error {
  constructor(
    readonly method: string,
    readonly code: grpc.status,
    readonly details: string,
  ) {
    super(`CRI ${method}: ${grpc.status[code] ?? code}: ${details}`);
    this.name = 'CriError';
  }
}

type Unary = (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: unknown) => void) => void;

export interface CriClientOptions {
  /** Deadline of a call, ms (default 120 s). */
  timeoutMs?: number;
  /** Deadline of PullImage, ms (default 600 s). */
  pullTimeoutMs?: number;
}

/** A CRI client on containerd's gRPC socket (the CRI plugin serves there). */
export class CriClient {
  private readonly runtime: grpc.Client;
  private readonly images: grpc.Client;
  private readonly timeoutMs: number;
  private readonly pullTimeoutMs: number;

  constructor(
    readonly address: string,
    opts: CriClientOptions = {},
  ) {
    const { runtime, image } = criServices();
    this.runtime = new runtime(`unix://${address}`, grpc.credentials.createInsecure());
    // one channel for both services
    this.images = new image(`unix://${address}`, grpc.credentials.createInsecure(), { channelOverride: this.runtime.getChannel() });
    this.timeoutMs = opts.timeoutMs ?? 120_000;
    this.pullTimeoutMs = opts.pullTimeoutMs ?? 600_000;
  }

  /** Calls `method` of the runtime or image service; rejects with a CriError. */
  call<Res>(service: 'runtime' | 'image', method: string, req: object, timeoutMs = this.timeoutMs): Promise<Res> {
    const client = service === 'runtime' ? this.runtime : this.images;
    const fn = (client as unknown as Record<string, Unary | undefined>)[method];
    if (!fn) return Promise.reject(new Error(`CRI ${service} service has no method ${method} in proto/cri/api.proto`));
    return new Promise((resolve, reject) => {
      fn.call(client, req, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => {
        if (err) reject(new CriError(method, err.code, err.details || err.message));
        else resolve(res as Res);
      });
    });
  }

  version(): Promise<VersionResponse> {
    return this.call('runtime', 'Version', { version: 'v1' });
  }

  // --- images ---

  /** PullImage; resolves with the image_ref containerd answers (the image id). */
  async pullImage(image: string, opts: { auth?: AuthConfig; sandboxConfig?: PodSandboxConfig; timeoutMs?: number } = {}): Promise<string> {
    const r = await this.call<{ image_ref: string }>(
      'image',
      'PullImage',
      { image: { image }, auth: opts.auth, sandbox_config: opts.sandboxConfig },
      opts.timeoutMs ?? this.pullTimeoutMs,
    );
    return r.image_ref;
  }

  async listImages(): Promise<CriImage[]> {
    const r = await this.call<{ images: CriImage[] }>('image', 'ListImages', {});
    return r.images;
  }

  /** ImageStatus; undefined when containerd does not hold the image. */
  async imageStatus(image: string): Promise<CriImage | undefined> {
    const r = await this.call<{ image: CriImage | null }>('image', 'ImageStatus', { image: { image } });
    return r.image ?? undefined;
  }

  async removeImage(image: string): Promise<void> {
    await this.call('image', 'RemoveImage', { image: { image } });
  }

  // --- pods ---

  async runPodSandbox(config: PodSandboxConfig, runtimeHandler = ''): Promise<string> {
    const r = await this.call<{ pod_sandbox_id: string }>('runtime', 'RunPodSandbox', { config, runtime_handler: runtimeHandler }, this.pullTimeoutMs);
    return r.pod_sandbox_id;
  }

  async stopPodSandbox(podId: string): Promise<void> {
    await this.call('runtime', 'StopPodSandbox', { pod_sandbox_id: podId });
  }

  async removePodSandbox(podId: string): Promise<void> {
    await this.call('runtime', 'RemovePodSandbox', { pod_sandbox_id: podId });
  }

  async podSandboxStatus(podId: string): Promise<PodSandbox> {
    const r = await this.call<{ status: PodSandbox }>('runtime', 'PodSandboxStatus', { pod_sandbox_id: podId });
    return r.status;
  }

  async listPodSandbox(): Promise<PodSandbox[]> {
    const r = await this.call<{ items: PodSandbox[] }>('runtime', 'ListPodSandbox', {});
    return r.items;
  }

  // --- containers ---

  async createContainer(podId: string, config: ContainerConfig, sandboxConfig: PodSandboxConfig): Promise<string> {
    const r = await this.call<{ container_id: string }>('runtime', 'CreateContainer', { pod_sandbox_id: podId, config, sandbox_config: sandboxConfig });
    return r.container_id;
  }

  async startContainer(containerId: string): Promise<void> {
    await this.call('runtime', 'StartContainer', { container_id: containerId });
  }

  /** StopContainer; `timeoutS` 0 kills at once, otherwise SIGTERM then SIGKILL after timeoutS. */
  async stopContainer(containerId: string, timeoutS = 0): Promise<void> {
    await this.call('runtime', 'StopContainer', { container_id: containerId, timeout: timeoutS }, this.timeoutMs + timeoutS * 1000);
  }

  async removeContainer(containerId: string): Promise<void> {
    await this.call('runtime', 'RemoveContainer', { container_id: containerId });
  }

  async containerStatus(containerId: string): Promise<ContainerStatus> {
    const r = await this.call<{ status: ContainerStatus }>('runtime', 'ContainerStatus', { container_id: containerId });
    return r.status;
  }

  async listContainers(podId?: string): Promise<CriContainer[]> {
    const r = await this.call<{ containers: CriContainer[] }>('runtime', 'ListContainers', podId ? { filter: { pod_sandbox_id: podId } } : {});
    return r.containers;
  }

  /** ExecSync: runs `cmd` in the container and waits (up to `timeoutS`, 0 = no limit). */
  async execSync(containerId: string, cmd: string[], timeoutS = 60): Promise<ExecSyncResult> {
    return this.call<ExecSyncResult>('runtime', 'ExecSync', { container_id: containerId, cmd, timeout: timeoutS }, this.timeoutMs + timeoutS * 1000);
  }

  close(): void {
    this.images.close();
    this.runtime.close();
  }
}

// ---------------------------------------------------------------------------
// Pods
// ---------------------------------------------------------------------------

/** A running host-network pod with one container. */
export interface CriPod {
  podId: string;
  containerId: string;
  sandboxConfig: PodSandboxConfig;
  /** The container's log file on the host (CRI log format: "TIME STREAM TAG LINE" lines). */
  logFile: string;
}

export interface RunPodOptions {
  /** Pod and container name (default: a random "pod-XXXXXXXX"). */
  name?: string;
  /** The container's command (default: the image's entrypoint). */
  command?: string[];
  args?: string[];
  envs?: Record<string, string>;
  mounts?: CriMount[];
  /** Directory of the pod's logs (created); default a fresh directory under os.tmpdir(). */
  logDirectory?: string;
  /** Waits until ContainerStatus says RUNNING (default true). */
  waitRunning?: boolean;
  /** More ContainerConfig fields. */
  container?: Partial<ContainerConfig>;
}

/**
 * A PodSandboxConfig for a pod in the node's network namespace
 * (namespace_options.network = NODE): without CNI the only kind of pod that
 * runs here.
 */
export function hostNetworkSandboxConfig(name: string, logDirectory: string): PodSandboxConfig {
  return {
    metadata: { name, uid: crypto.randomUUID(), namespace: 'd4fs-test', attempt: 0 },
    log_directory: logDirectory,
    labels: { 'd4fs.test/pod': name },
    linux: { security_context: { namespace_options: { network: 'NODE', pid: 'CONTAINER', ipc: 'POD' } } },
  };
}

/**
 * RunPodSandbox (host network) + CreateContainer + StartContainer of
 * `image`, which CreateContainer expects pulled (pull it first). Whatever
 * was created is removed again when a step fails.
 */
export async function runPod(cri: CriClient, image: string, opts: RunPodOptions = {}): Promise<CriPod> {
  const name = opts.name ?? `pod-${crypto.randomBytes(4).toString('hex')}`;
  const logDirectory = opts.logDirectory ?? (await fsp.mkdtemp('/tmp/d4fs-pod-'));
  await fsp.mkdir(logDirectory, { recursive: true });
  const sandboxConfig = hostNetworkSandboxConfig(name, logDirectory);
  const podId = await cri.runPodSandbox(sandboxConfig);
  try {
    const config: ContainerConfig = {
      metadata: { name, attempt: 0 },
      image: { image },
      command: opts.command ?? [],
      args: opts.args ?? [],
      envs: Object.entries(opts.envs ?? {}).map(([key, value]) => ({ key, value })),
      mounts: opts.mounts ?? [],
      log_path: `${name}.log`,
      ...opts.container,
    };
    const containerId = await cri.createContainer(podId, config, sandboxConfig);
    await cri.startContainer(containerId);
    if (opts.waitRunning ?? true) {
      const deadline = Date.now() + 30_000;
      for (;;) {
        const st = await cri.containerStatus(containerId);
        if (st.state === 'CONTAINER_RUNNING') break;
        if (st.state !== 'CONTAINER_CREATED' || Date.now() > deadline) {
          throw new Error(`container ${name} is ${st.state} (exit ${st.exit_code}, ${st.reason} ${st.message}), not running`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    return { podId, containerId, sandboxConfig, logFile: path.join(logDirectory, `${name}.log`) };
  } catch (e) {
    await removePod(cri, podId).catch(() => undefined);
    throw e;
  }
}

/**
 * Stops and removes the pod `pod` (a CriPod or a sandbox id): its
 * containers first (StopContainer kills at once, RemoveContainer), then
 * StopPodSandbox and RemovePodSandbox.
 */
export async function removePod(cri: CriClient, pod: CriPod | string): Promise<void> {
  const podId = typeof pod === 'string' ? pod : pod.podId;
  for (const c of await cri.listContainers(podId)) {
    await cri.stopContainer(c.id, 0);
    await cri.removeContainer(c.id);
  }
  await cri.stopPodSandbox(podId);
  await cri.removePodSandbox(podId);
}

/** Stops and removes every pod containerd's CRI plugin knows. */
export async function removeAllPods(cri: CriClient): Promise<void> {
  for (const p of await cri.listPodSandbox()) await removePod(cri, p.id);
}

/** Runs `cmd` in the container; rejects unless it exits 0; resolves with its stdout. */
export async function execOk(cri: CriClient, containerId: string, cmd: string[], timeoutS = 60): Promise<string> {
  const r = await cri.execSync(containerId, cmd, timeoutS);
  if (r.exit_code !== 0) throw new Error(`exec ${JSON.stringify(cmd)} exited ${r.exit_code}: ${r.stderr.toString()}`);
  return r.stdout.toString();
}

/** The lines a container wrote to `stream` in its CRI log file (partial lines joined). */
export function containerLogLines(logFile: string, stream: 'stdout' | 'stderr' = 'stdout'): string[] {
  let text: string;
  try {
    text = fs.readFileSync(logFile, 'utf8');
  } catch {
    return [];
  }
  const out: string[] = [];
  let partial = '';
  for (const line of text.split('\n')) {
    // TIMESTAMP STREAM TAG(F|P) CONTENT
    const m = /^\S+ (stdout|stderr) ([FP]) (.*)$/.exec(line);
    if (!m || m[1] !== stream) continue;
    partial += m[3];
    if (m[2] === 'F') {
      out.push(partial);
      partial = '';
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// What the snapshotter was asked
// ---------------------------------------------------------------------------

/** One Snapshots call the d4fs-snapshotter answered, from its debug log. */
export interface SnapshotterCall {
  method: string;
  /** Prepare/View/Commit: the key (for Commit, the active key committed). */
  key: string;
  /** Prepare/View: the parent's name. */
  parent: string;
  /** Commit: the committed snapshot's name. */
  name: string;
  labels: Record<string, string>;
  /** Answered without error. */
  ok: boolean;
  /** The gRPC code's name when it failed (e.g. "ALREADY_EXISTS"). */
  code?: string;
  /** Milliseconds since the epoch. */
  time: number;
}

/**
 * The Snapshots calls in a d4fs-snapshotter log file written at level
 * "debug" (every answered request is logged with its request), in order.
 */
export function snapshotterCalls(logFile: string): SnapshotterCall[] {
  let text: string;
  try {
    text = fs.readFileSync(logFile, 'utf8');
  } catch {
    return [];
  }
  const out: SnapshotterCall[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{') || !line.includes('"method"')) continue;
    let rec: { method?: unknown; req?: Record<string, unknown>; msg?: unknown; code?: unknown; time?: unknown };
    try {
      rec = JSON.parse(line) as typeof rec;
    } catch {
      continue;
    }
    if (typeof rec.method !== 'string' || !rec.req || (rec.msg !== 'ok' && rec.msg !== 'failed')) continue;
    const req = rec.req;
    const str = (v: unknown) => (typeof v === 'string' ? v : '');
    out.push({
      method: rec.method,
      key: str(req.key),
      parent: str(req.parent),
      name: str(req.name),
      labels: req.labels && typeof req.labels === 'object' ? (req.labels as Record<string, string>) : {},
      ok: rec.msg === 'ok',
      code: typeof rec.code === 'string' ? rec.code : undefined,
      time: typeof rec.time === 'number' ? rec.time : 0,
    });
  }
  return out;
}

/** One "pulled through d4fs" line of the d4fs-snapshotter's log. */
export interface D4fsPull {
  ref: string;
  bytes: number;
  files: number;
}

/** "pulled through d4fs" lines of a d4fs-snapshotter log file since `from` bytes. */
export function d4fsPulls(logFile: string, from = 0): D4fsPull[] {
  const log = fs.readFileSync(logFile, 'utf8').slice(from);
  return log
    .split('\n')
    .filter((l) => l.includes('"pulled through d4fs"'))
    .map((l) => JSON.parse(l) as D4fsPull);
}

/** The size of a log file now: a mark for d4fsPulls(logFile, mark). */
export const logSize = (logFile: string): number => fs.statSync(logFile).size;

/** Label keys containerd's CRI plugin puts on each layer's Prepare (disable_snapshot_annotations = false). */
export const CRI_LABELS = {
  ref: 'containerd.io/snapshot.ref',
  imageRef: 'containerd.io/snapshot/cri.image-ref',
  manifestDigest: 'containerd.io/snapshot/cri.manifest-digest',
  layerDigest: 'containerd.io/snapshot/cri.layer-digest',
  imageLayers: 'containerd.io/snapshot/cri.image-layers',
} as const;

// ---------------------------------------------------------------------------
// What a registry holds (to compare with the labels)
// ---------------------------------------------------------------------------

/** An image in a registry as containerd's CRI plugin will describe it in its labels. */
export interface RegistryImageFacts {
  /** Digest of the manifest (cri.manifest-digest). */
  manifestDigest: string;
  /** Layer digests, bottom first (cri.layer-digest; cri.image-layers lists layers[i..]). */
  layers: string[];
  /** diff_ids of the config. */
  diffIds: string[];
  /** Chain ids, bottom first (containerd.io/snapshot.ref, and the committed snapshots' names). */
  chainIds: string[];
  /** Digest of the config: the image id PullImage answers. */
  configDigest: string;
}

export { chainIdsOf } from '../../src/cri/provider';
import { chainIdsOf as productChainIds } from '../../src/cri/provider';

/**
 * Reads REPO:REF's manifest (OCI or Docker schema 2, not an index) and
 * config from the registry at `registryUrl` (e.g. rig.registry.url).
 */
export async function registryImageFacts(registryUrl: string, repo: string, ref: string, auth?: { user: string; pass: string }): Promise<RegistryImageFacts> {
  const headers: Record<string, string> = auth ? { authorization: `Basic ${Buffer.from(`${auth.user}:${auth.pass}`).toString('base64')}` } : {};
  const get = async (url: string, accept?: string): Promise<Buffer> => {
    const res = await fetch(url, { headers: accept ? { ...headers, accept } : headers });
    if (!res.ok) throw new Error(`GET ${url}: ${res.status}`);
    return Buffer.from(await res.arrayBuffer());
  };
  const raw = await get(`${registryUrl}/v2/${repo}/manifests/${ref}`, 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json');
  const manifest = JSON.parse(raw.toString()) as { config: { digest: string }; layers: { digest: string }[] };
  const config = JSON.parse((await get(`${registryUrl}/v2/${repo}/blobs/${manifest.config.digest}`)).toString()) as { rootfs: { diff_ids: string[] } };
  return {
    manifestDigest: `sha256:${crypto.createHash('sha256').update(raw).digest('hex')}`,
    layers: manifest.layers.map((l) => l.digest),
    diffIds: config.rootfs.diff_ids,
    chainIds: productChainIds(config.rootfs.diff_ids),
    configDigest: manifest.config.digest,
  };
}

// ---------------------------------------------------------------------------
// hosts.toml
// ---------------------------------------------------------------------------

export interface HostsTomlOptions {
  /** The server URL (default https://HOST). */
  server?: string;
  /** A CA certificate (PEM file) to trust for it. */
  ca?: string;
  /** Skip certificate verification. */
  skipVerify?: boolean;
}

/**
 * Writes <certsDir>/<host>/hosts.toml so that containerd's CRI plugin (with
 * `registry.config_path` = certsDir) reaches `host` as described; containerd
 * reads the file at each pull, no restart needed.
 */
export async function writeHostsToml(certsDir: string, host: string, opts: HostsTomlOptions = {}): Promise<string> {
  const server = opts.server ?? `https://${host}`;
  const q = (s: string) => JSON.stringify(s);
  const lines = [`server = ${q(server)}`, '', `[host.${q(server)}]`, '  capabilities = ["pull", "resolve"]'];
  if (opts.ca) lines.push(`  ca = ${q(opts.ca)}`);
  if (opts.skipVerify) lines.push('  skip_verify = true');
  const dir = path.join(certsDir, host);
  await fsp.mkdir(dir, { recursive: true });
  const file = path.join(dir, 'hosts.toml');
  await fsp.writeFile(file, lines.join('\n') + '\n');
  return file;
}

// ---------------------------------------------------------------------------
// The whole rig
// ---------------------------------------------------------------------------

export interface CriRigOptions {
  /** More arguments for d4fs-snapshotter (e.g. ["--config", file]). */
  snapshotterArgs?: string[];
  /** The snapshotter's log level (default "debug": snapshotterCalls needs it). */
  logLevel?: string;
  /** Overrides of the CRI plugin's settings (sandbox_image is the rig's pause image unless given). */
  cri?: Partial<CriPluginOptions>;
  /** Use this registry (plain http, no auth) instead of starting one; stop() leaves it running. */
  registry?: TestRegistry;
  /** Client deadlines. */
  client?: CriClientOptions;
  /** Edits containerd's config file before containerd starts (see StartContainerdOptions.configHook). */
  containerdConfigHook?: (configFile: string) => Promise<void>;
}

/** A CRI node: registry, containerd with CRI, d4fs snapshotter, CRI client. */
export interface CriRig {
  /** The registry (127.0.0.1, plain http) holding the pause image; push test images here. */
  readonly registry: TestRegistry;
  /** The snapshotter, its store and the private containerd (env.containerd). */
  readonly env: D4fsEnv;
  /** CRI client on containerd's socket. */
  readonly cri: CriClient;
  /** The sandbox image, e.g. "127.0.0.1:PORT/d4fs/pause:1". */
  readonly pauseImage: string;
  /** containerd's registry hosts directory (`registry.config_path`). */
  readonly certsDir: string;
  /** Every Snapshots call the snapshotter answered so far, with labels (all its starts). */
  snapshotterCalls(): SnapshotterCall[];
  /** runPod with this rig's client and a log directory inside containerd's private directory. */
  runPod(image: string, opts?: RunPodOptions): Promise<CriPod>;
  /** removePod with this rig's client. */
  removePod(pod: CriPod | string): Promise<void>;
  /** writeHostsToml into this rig's certsDir. */
  trustRegistry(host: string, opts?: HostsTomlOptions): Promise<string>;
  /** Mount points left under the env's and containerd's directories. */
  mountsLeft(): string[];
  /** containerd's and the snapshotter's log tails, for failure messages. */
  logs(): string;
  /**
   * Removes every pod through CRI (shims outlive containerd), closes the
   * client, stops the environment and the registry it started. Idempotent.
   */
  stop(): Promise<void>;
}

/**
 * Starts a registry (unless given), pushes the pause image to it, starts a
 * D4fsEnv whose containerd runs the CRI plugin with snapshotter "d4fs",
 * disable_snapshot_annotations = false, restrict_oom_score_adj = true,
 * sandbox_image = the pause image and registry.config_path = a private
 * certs.d, and connects a CRI client (after Version answers).
 */
export async function startCriRig(opts: CriRigOptions = {}): Promise<CriRig> {
  const ownRegistry = !opts.registry;
  const registry = opts.registry ?? (await startRegistry());
  let env: D4fsEnv | undefined;
  let cri: CriClient | undefined;
  try {
    const pauseImage = opts.cri?.sandboxImage ?? (await pushPauseImage(registry.host));
    env = await startD4fsEnv({
      logLevel: opts.logLevel ?? 'debug',
      snapshotterArgs: opts.snapshotterArgs,
      keepSnapshotterLog: true,
      containerd: { cri: { snapshotter: 'd4fs', ...opts.cri, sandboxImage: pauseImage }, configHook: opts.containerdConfigHook },
    });
    cri = new CriClient(env.containerd.address, opts.client);
    // the CRI plugin registers its services at start-up; make sure they answer
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        await cri.version();
        break;
      } catch (e) {
        if (Date.now() > deadline) throw new Error(`CRI Version did not answer: ${(e as Error).message}\n${env.containerd.log()}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    const e2 = env;
    const c2 = cri;
    const podLogs = path.join(e2.containerd.dir, 'pod-logs');
    const logs = () => `--- containerd log ---\n${e2.containerd.log()}\n${e2.logs()}`;
    let stopped = false;
    return {
      registry,
      env: e2,
      cri: c2,
      pauseImage,
      certsDir: e2.containerd.certsDir!,
      snapshotterCalls: () => snapshotterCalls(e2.snapshotterLogFile!),
      runPod: async (image, o = {}) => {
        const name = o.name ?? `pod-${crypto.randomBytes(4).toString('hex')}`;
        try {
          return await runPod(c2, image, { ...o, name, logDirectory: o.logDirectory ?? path.join(podLogs, name) });
        } catch (err) {
          (err as Error).message += `\n${logs()}`;
          throw err;
        }
      },
      removePod: (pod) => removePod(c2, pod),
      trustRegistry: (host, o) => writeHostsToml(e2.containerd.certsDir!, host, o),
      mountsLeft: () => [...mountsUnder(e2.dir), ...mountsUnder(e2.containerd.dir)],
      logs,
      stop: async () => {
        if (stopped) return;
        stopped = true;
        await removeAllPods(c2).catch(() => undefined);
        c2.close();
        await e2.stop();
        if (ownRegistry) await registry.stop();
      },
    };
  } catch (e) {
    cri?.close();
    await env?.stop().catch(() => undefined);
    if (ownRegistry) await registry.stop().catch(() => undefined);
    throw e;
  }
}
