/**
 * Registry authentication: credential lookup (flags and docker/podman auth
 * files), WWW-Authenticate parsing, and the Basic / Bearer token flows of the
 * distribution token specification. Nothing in here ever logs or formats a
 * credential into a message.
 */
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { D4fsError, invalidArgument, unauthenticated, unavailable } from '../../errors';
import type { RegistryOptions } from './options';

/** A parsed WWW-Authenticate challenge; scheme is lower-cased, as are parameter names. */
export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Credentials for one registry. */
export type Credentials =
  | { kind: 'basic'; username: string; password: string }
  /** OAuth2 refresh token ("identitytoken" written by `docker login` for some registries). */
  | { kind: 'identityToken'; token: string; username?: string }
  /** Bearer token sent as is ("registrytoken", --registry-token). */
  | { kind: 'registryToken'; token: string };

/** Minimal HTTP the token flow needs; the client supplies it so TLS and timeouts stay in one place. */
export type TokenHttp = (
  url: URL,
  init: { method: 'GET' | 'POST'; headers: Record<string, string>; body?: Buffer },
) => Promise<{ status: number; body: Buffer }>;

const TOKEN_MIN_LIFETIME_S = 60; // the token spec's default and minimum
const TOKEN_EARLY_REFRESH_MS = 5_000;
const DOCKER_HUB_NAMES = ['docker.io', 'index.docker.io', 'registry-1.docker.io'];

// ---------------------------------------------------------------------------
// WWW-Authenticate

const CHALLENGE_ITEM_RE = /[\s,]*([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?:[ \t]*=[ \t]*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*)))?/y;

/**
 * Parse a WWW-Authenticate header into its challenges, e.g.
 * `Bearer realm="https://auth/token",service="reg",scope="repository:a:pull"`.
 * Several challenges in one header (comma separated) are all returned.
 */
export function parseChallenges(header: string | string[] | undefined): Challenge[] {
  const text = Array.isArray(header) ? header.join(', ') : header ?? '';
  const out: Challenge[] = [];
  let current: Challenge | undefined;
  CHALLENGE_ITEM_RE.lastIndex = 0;
  for (let m = CHALLENGE_ITEM_RE.exec(text); m; m = CHALLENGE_ITEM_RE.exec(text)) {
    const [, name, quoted, bare] = m;
    if (quoted === undefined && bare === undefined) {
      current = { scheme: name.toLowerCase(), params: {} };
      out.push(current);
    } else if (current) {
      current.params[name.toLowerCase()] = quoted !== undefined ? quoted.replace(/\\(.)/g, '$1') : bare ?? '';
    }
    if (CHALLENGE_ITEM_RE.lastIndex >= text.length) break;
  }
  return out;
}

/** The challenge d4fs answers: Bearer when offered, else Basic, else none. */
export function pickChallenge(challenges: Challenge[]): Challenge | undefined {
  return challenges.find((c) => c.scheme === 'bearer') ?? challenges.find((c) => c.scheme === 'basic');
}

// ---------------------------------------------------------------------------
// Credentials

/** Parse --creds "user:pass" (the password may contain ':'). */
export function parseCredsFlag(s: string): Credentials {
  const i = s.indexOf(':');
  if (i <= 0) throw invalidArgument('--creds must be "USER:PASSWORD"');
  return { kind: 'basic', username: s.slice(0, i), password: s.slice(i + 1) };
}

/** Auth files searched, in order: --authfile, $REGISTRY_AUTH_FILE, docker's config, podman's auth.json. */
export function authFileCandidates(opts: RegistryOptions, env: NodeJS.ProcessEnv = process.env): string[] {
  const files: string[] = [];
  if (opts.authFile) files.push(opts.authFile);
  if (env.REGISTRY_AUTH_FILE) files.push(env.REGISTRY_AUTH_FILE);
  if (env.DOCKER_CONFIG) files.push(path.join(env.DOCKER_CONFIG, 'config.json'));
  const home = env.HOME || os.homedir();
  if (home) files.push(path.join(home, '.docker', 'config.json'));
  if (env.XDG_RUNTIME_DIR) files.push(path.join(env.XDG_RUNTIME_DIR, 'containers', 'auth.json'));
  return [...new Set(files)];
}

/** Host part of an auth-file key: "https://host/v1/" -> "host". */
function keyHost(key: string): string {
  return key.replace(/^[a-z][a-z0-9+.-]*:\/\//i, '').replace(/\/.*$/, '').toLowerCase();
}

/** Whether an auths[] key names this registry ("host", "https://host", "https://index.docker.io/v1/" for docker.io). */
export function authKeyMatches(key: string, registry: string): boolean {
  const k = keyHost(key);
  const r = registry.toLowerCase();
  if (DOCKER_HUB_NAMES.includes(r)) return DOCKER_HUB_NAMES.includes(k);
  return k === r;
}

interface AuthEntry {
  auth?: unknown;
  username?: unknown;
  password?: unknown;
  identitytoken?: unknown;
  registrytoken?: unknown;
}

const nonEmpty = (v: unknown): v is string => typeof v === 'string' && v.length > 0;

/** Credentials of one auths[] entry, or undefined when it holds none (e.g. a credential-helper stub). */
function entryCredentials(entry: AuthEntry, file: string, key: string): Credentials | undefined {
  if (nonEmpty(entry.registrytoken)) return { kind: 'registryToken', token: entry.registrytoken };
  let username = nonEmpty(entry.username) ? entry.username : undefined;
  let password = nonEmpty(entry.password) ? entry.password : undefined;
  if (nonEmpty(entry.auth)) {
    const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
    const i = decoded.indexOf(':');
    if (i < 0) throw invalidArgument(`auth file ${file}: the "auth" field for ${JSON.stringify(key)} is not base64 of "user:password"`);
    username = decoded.slice(0, i);
    password = decoded.slice(i + 1);
  }
  if (nonEmpty(entry.identitytoken)) return { kind: 'identityToken', token: entry.identitytoken, username };
  if (username !== undefined && password !== undefined) return { kind: 'basic', username, password };
  return undefined;
}

/** Read one auth file; undefined when absent. Malformed files are an error (as docker does). */
async function readAuthFile(file: string): Promise<Record<string, AuthEntry> | undefined> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw invalidArgument(`cannot read auth file ${file}: ${(e as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw invalidArgument(`auth file ${file} is not valid JSON`);
  }
  const auths = (parsed as { auths?: unknown } | null)?.auths;
  if (auths === undefined || auths === null) return {};
  if (typeof auths !== 'object' || Array.isArray(auths)) throw invalidArgument(`auth file ${file}: "auths" must be an object`);
  return auths as Record<string, AuthEntry>;
}

/**
 * Credentials for `registry` (the name the user wrote, e.g. "docker.io"):
 * --registry-token, else --creds, else the first auth file with an entry for it.
 * An explicitly given auth file must exist.
 */
export async function resolveCredentials(
  registry: string,
  opts: RegistryOptions,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Credentials | undefined> {
  if (opts.registryToken && opts.creds) throw invalidArgument('--creds and --registry-token are mutually exclusive');
  if (opts.registryToken) return { kind: 'registryToken', token: opts.registryToken };
  if (opts.creds) return parseCredsFlag(opts.creds);
  for (const file of authFileCandidates(opts, env)) {
    const auths = await readAuthFile(file);
    if (auths === undefined) {
      if (file === opts.authFile) throw invalidArgument(`auth file ${file} does not exist`);
      continue;
    }
    for (const [key, entry] of Object.entries(auths)) {
      if (!entry || typeof entry !== 'object' || !authKeyMatches(key, registry)) continue;
      const creds = entryCredentials(entry, file, key);
      if (creds) return creds;
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------
// The authenticator

/** JSON answer of a token server (distribution token spec, OAuth2). */
interface TokenAnswer {
  token?: unknown;
  access_token?: unknown;
  expires_in?: unknown;
}

interface CachedToken {
  value: string;
  expiresAt: number;
}

/** Scope string for a repository: "repository:NAME:pull" or ":pull,push". */
export function repoScope(repo: string, actions: 'pull' | 'pull,push'): string {
  return `repository:${repo}:${actions}`;
}

const basicHeader = (username: string, password: string): string =>
  `Basic ${Buffer.from(`${username}:${password}`, 'utf8').toString('base64')}`;

/** Whether a URL may carry credentials: https, or plain http to a loopback host or when TLS checks are off. */
function mayCarrySecrets(url: URL, tlsVerify: boolean | undefined): boolean {
  if (url.protocol === 'https:' || tlsVerify === false) return true;
  return isLoopbackHost(url.hostname);
}

/** localhost, 127.0.0.0/8 and ::1 (with or without brackets). */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.toLowerCase().replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/**
 * Produces the Authorization header for one registry. It learns the
 * registry's challenge (from the /v2/ ping or a 401), fetches and caches
 * bearer tokens per scope set, and tells the client whether a 401 is worth
 * one retry.
 */
export class Authenticator {
  private challenge: Challenge | undefined;
  private readonly tokens = new Map<string, CachedToken>();
  private readonly inflight = new Map<string, Promise<CachedToken>>();
  private credentials: Promise<Credentials | undefined> | undefined;

  /**
   * @param registry registry name as the user wrote it (for messages and auth-file lookup)
   * @param http transport for token requests
   */
  constructor(
    private readonly registry: string,
    private readonly opts: RegistryOptions,
    private readonly http: TokenHttp,
    private readonly env: NodeJS.ProcessEnv = process.env,
  ) {}

  /** Record the challenge of an unauthenticated answer (ping or 401). */
  learn(header: string | string[] | undefined): Challenge | undefined {
    const picked = pickChallenge(parseChallenges(header));
    if (picked) this.challenge = picked;
    return picked;
  }

  /** The Authorization header for a request needing `scopes`, or undefined for anonymous. */
  async authorization(scopes: string[], repo: string): Promise<string | undefined> {
    const creds = await this.creds();
    if (creds?.kind === 'registryToken') return `Bearer ${creds.token}`;
    const ch = this.challenge;
    if (!ch) return undefined;
    if (ch.scheme === 'basic') return creds?.kind === 'basic' ? basicHeader(creds.username, creds.password) : undefined;
    return `Bearer ${await this.bearerToken(ch, scopes, repo)}`;
  }

  /**
   * Handle a 401: learn its challenge and drop cached tokens for `scopes`.
   * Returns true when one retry may succeed.
   */
  async challenged(header: string | string[] | undefined, scopes: string[]): Promise<boolean> {
    const ch = this.learn(header);
    if (!ch) return false;
    this.tokens.delete(this.cacheKey(ch, scopes));
    const creds = await this.creds();
    if (creds?.kind === 'registryToken') return false;
    if (ch.scheme === 'basic') return creds?.kind === 'basic';
    return true;
  }

  /** The error for a request the registry refused after authentication. */
  async failure(repo: string): Promise<D4fsError> {
    const creds = await this.creds();
    if (!creds) {
      return unauthenticated(
        `registry ${this.registry}: authentication required for ${repo} (no credentials: pass ${this.opts.credsFlag ?? '--creds'} or an auth file)`,
      );
    }
    return unauthenticated(`registry ${this.registry}: authentication failed for ${repo} (check ${this.opts.credsFlag ?? '--creds'})`);
  }

  private creds(): Promise<Credentials | undefined> {
    this.credentials ??= resolveCredentials(this.registry, this.opts, this.env);
    return this.credentials;
  }

  private cacheKey(ch: Challenge, scopes: string[]): string {
    return JSON.stringify([ch.params.realm ?? '', ch.params.service ?? '', this.allScopes(ch, scopes)]);
  }

  private allScopes(ch: Challenge, scopes: string[]): string[] {
    const fromChallenge = (ch.params.scope ?? '').split(' ').filter(Boolean);
    return [...new Set([...scopes, ...fromChallenge])].sort();
  }

  /** A cached token, or one fetch shared by every request that needs it at the same time. */
  private async bearerToken(ch: Challenge, scopes: string[], repo: string): Promise<string> {
    const key = this.cacheKey(ch, scopes);
    const cached = this.tokens.get(key);
    if (cached && cached.expiresAt - TOKEN_EARLY_REFRESH_MS > Date.now()) return cached.value;
    let pending = this.inflight.get(key);
    if (!pending) {
      pending = this.fetchToken(ch, this.allScopes(ch, scopes), repo).finally(() => this.inflight.delete(key));
      this.inflight.set(key, pending);
    }
    const fresh = await pending;
    this.tokens.set(key, fresh);
    return fresh.value;
  }

  private realmOf(ch: Challenge): URL {
    const realm = ch.params.realm;
    let url: URL | undefined;
    try {
      url = realm ? new URL(realm) : undefined;
    } catch {
      url = undefined;
    }
    if (!url || (url.protocol !== 'https:' && url.protocol !== 'http:')) {
      throw unavailable(`registry ${this.registry}: bearer challenge has no usable realm URL`);
    }
    return url;
  }

  private async fetchToken(ch: Challenge, scopes: string[], repo: string): Promise<CachedToken> {
    const url = this.realmOf(ch);
    const creds = await this.creds();
    if (creds && !mayCarrySecrets(url, this.opts.tlsVerify)) {
      throw unavailable(`registry ${this.registry}: refusing to send credentials to plain-http token server ${url.origin} (use --tls-verify=false to allow)`);
    }
    const res =
      creds?.kind === 'identityToken'
        ? await this.http(url, this.refreshTokenRequest(ch, scopes, creds.token))
        : await this.http(this.tokenUrl(url, ch, scopes, creds), {
            method: 'GET',
            headers: creds?.kind === 'basic' ? { Authorization: basicHeader(creds.username, creds.password) } : {},
          });
    if (res.status === 401 || res.status === 403) throw await this.failure(repo);
    if (res.status < 200 || res.status > 299) {
      throw unavailable(`registry ${this.registry}: token server ${url.origin}${url.pathname} answered HTTP ${res.status}`);
    }
    return this.parseTokenResponse(res.body, url);
  }

  private tokenUrl(realm: URL, ch: Challenge, scopes: string[], creds: Credentials | undefined): URL {
    const url = new URL(realm.href);
    if (ch.params.service) url.searchParams.set('service', ch.params.service);
    for (const s of scopes) url.searchParams.append('scope', s);
    if (creds?.kind === 'basic') url.searchParams.set('account', creds.username);
    return url;
  }

  private refreshTokenRequest(ch: Challenge, scopes: string[], refreshToken: string) {
    const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: refreshToken, client_id: 'd4fs' });
    if (ch.params.service) form.set('service', ch.params.service);
    if (scopes.length) form.set('scope', scopes.join(' '));
    return {
      method: 'POST' as const,
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: Buffer.from(form.toString(), 'utf8'),
    };
  }

  private parseTokenResponse(body: Buffer, url: URL): CachedToken {
    let json: TokenAnswer | null;
    try {
      json = JSON.parse(body.toString('utf8')) as TokenAnswer | null;
    } catch {
      json = null;
    }
    const value = nonEmpty(json?.token) ? json?.token : nonEmpty(json?.access_token) ? json?.access_token : undefined;
    if (typeof value !== 'string') {
      throw unavailable(`registry ${this.registry}: token server ${url.origin}${url.pathname} answered without a token`);
    }
    const lifetime = typeof json?.expires_in === 'number' ? Math.max(json.expires_in, TOKEN_MIN_LIFETIME_S) : TOKEN_MIN_LIFETIME_S;
    return { value, expiresAt: Date.now() + lifetime * 1000 };
  }
}
