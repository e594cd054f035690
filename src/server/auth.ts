/**
 * Bearer tokens of d4fs-server. The tokens file has one token per line:
 *
 *   # access  token                             name (for the logs)
 *   rw        6b0c1f0e3d9a4c8b9e1f2a3b4c5d6e7f    ci-pusher
 *   ro        0f9e8d7c6b5a49382716a5b4c3d2e1f0    edge-sites
 *
 * `rw` tokens may read and write, `ro` tokens only read. Tokens are kept as
 * sha256 hashes in memory and compared in constant time. Writes always need
 * an rw token (a server without a tokens file is read-only); reads need any
 * token unless reads are open.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { invalidArgument, permissionDenied, unauthenticated } from '../errors';

export type Access = 'ro' | 'rw';

/** Who made a request, for the logs. */
export interface Principal {
  access: Access;
  name: string;
}

const TOKEN_RE = /^[A-Za-z0-9._~+/=-]{16,512}$/;

const hashOf = (token: string): Buffer => createHash('sha256').update(token, 'utf8').digest();

interface TokenEntry extends Principal {
  hash: Buffer;
}

/** Parse the text of a tokens file; throws INVALID_ARGUMENT with the line number. */
export function parseTokens(text: string, what = 'tokens file'): TokenEntry[] {
  const out: TokenEntry[] = [];
  const seen = new Set<string>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.replace(/#.*$/, '').trim();
    if (!line) return;
    const [access, token, ...rest] = line.split(/\s+/);
    if (access !== 'ro' && access !== 'rw') throw invalidArgument(`${what}:${i + 1}: access must be ro or rw, not ${JSON.stringify(access.slice(0, 20))}`);
    if (!token || !TOKEN_RE.test(token)) throw invalidArgument(`${what}:${i + 1}: a token is 16 to 512 characters of [A-Za-z0-9._~+/=-]`);
    const hash = hashOf(token);
    const key = hash.toString('hex');
    if (seen.has(key)) throw invalidArgument(`${what}:${i + 1}: token listed twice`);
    seen.add(key);
    out.push({ access, hash, name: rest.join(' ') || `${access}-token-line-${i + 1}` });
  });
  return out;
}

/** A fresh random token (for `ctr-cli serve token`). */
export function newToken(): string {
  return randomBytes(24).toString('base64url');
}

/** The access policy of a server. */
export class TokenAuth {
  private entries: TokenEntry[] = [];

  /**
   * @param file tokens file (undefined: no tokens; the server is read-only)
   * @param readOpen whether reads need no token
   */
  constructor(readonly file: string | undefined, readonly readOpen: boolean) {}

  /** (Re)load the tokens file; on failure the previous tokens stay in force. */
  async load(): Promise<{ tokens: number; warnings: string[] }> {
    const warnings: string[] = [];
    if (!this.file) {
      this.entries = [];
      return { tokens: 0, warnings };
    }
    const st = await fsp.stat(this.file);
    if (st.mode & 0o077) warnings.push(`${this.file} is readable by other users (mode ${(st.mode & 0o777).toString(8)}); chmod 600 it`);
    this.entries = parseTokens(await fsp.readFile(this.file, 'utf8'), this.file);
    if (this.entries.length === 0) warnings.push(`${this.file} holds no tokens: every write will be refused`);
    return { tokens: this.entries.length, warnings };
  }

  /** The principal of an Authorization header, or undefined without one; throws UNAUTHENTICATED on a wrong token. */
  identify(header: string | undefined): Principal | undefined {
    if (header === undefined || header === '') return undefined;
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!m) throw unauthenticated('Authorization must be "Bearer <token>"');
    const h = hashOf(m[1]);
    let found: TokenEntry | undefined;
    for (const e of this.entries) if (timingSafeEqual(e.hash, h)) found = e;
    if (!found) throw unauthenticated('invalid token');
    return { access: found.access, name: found.name };
  }

  /**
   * Check a request: `need` is the access the endpoint needs. Returns the
   * principal (anonymous for open reads); throws UNAUTHENTICATED (no or wrong
   * token) or PERMISSION_DENIED (a read-only token on a write).
   */
  check(header: string | undefined, need: Access): Principal {
    const who = this.identify(header);
    if (need === 'ro') {
      if (who) return who;
      if (this.readOpen || !this.file) return { access: 'ro', name: 'anonymous' };
      throw unauthenticated('this server needs a token to read: pass --token (or D4FS_TOKEN)');
    }
    if (!this.file) throw unauthenticated('this server accepts no writes: start it with --tokens FILE holding an rw token');
    if (!who) throw unauthenticated('writing needs a read-write token: pass --token (or D4FS_TOKEN)');
    if (who.access !== 'rw') throw permissionDenied(`token "${who.name}" is read-only; writing needs a read-write token`);
    return who;
  }
}
