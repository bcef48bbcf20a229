import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { DEFAULT_TENANT } from '../store/store.js';

/**
 * Tokens and what they grant. A token maps to one tenant and to the stream and document name
 * prefixes it may write and read. Tokens are compared in constant time (every configured token is
 * compared, whatever matches) and never logged: logs carry a short hash, the token id.
 *
 * Token file (JSON), also accepted inline in SEQGATE_TOKENS:
 *   { "tokens": [ { "token": "...", "tenant": "acme",
 *                   "write": { "streams": ["dev-"], "documents": ["dev-"] },
 *                   "read":  { "streams": [""], "documents": [""] } } ] }
 * A missing `write` or `read` grants every name of the tenant ("" is a prefix of every name).
 */

interface Access {
  readonly streams: readonly string[];
  readonly documents: readonly string[];
}

export interface Principal {
  readonly tenant: string;
  /** Short hash of the token, safe to log; "open" when the server runs without tokens. */
  readonly tokenId: string;
  readonly write: Access;
  readonly read: Access;
}

const EVERYTHING: Access = { streams: [''], documents: [''] };
const OPEN_PRINCIPAL: Principal = { tenant: DEFAULT_TENANT, tokenId: 'open', write: EVERYTHING, read: EVERYTHING };
const MIN_TOKEN_LENGTH = 16;

interface Entry {
  readonly digest: Buffer;
  readonly principal: Principal;
}

export class AuthConfigError extends Error {
  override readonly name = 'AuthConfigError';
  readonly code = 'AUTH_CONFIG';
}

function textDigest(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

function prefixes(value: unknown, where: string): readonly string[] {
  if (value === undefined) return [''];
  if (!Array.isArray(value) || !value.every((p) => typeof p === 'string')) {
    throw new AuthConfigError(`${where} must be an array of name prefixes`);
  }
  return value;
}

function access(value: unknown, where: string): Access {
  if (value === undefined) return EVERYTHING;
  if (typeof value !== 'object' || value === null) throw new AuthConfigError(`${where} must be an object`);
  const v = value as Record<string, unknown>;
  return { streams: prefixes(v.streams, `${where}.streams`), documents: prefixes(v.documents, `${where}.documents`) };
}

function parseTokens(text: string, source: string): Entry[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    // JSON.parse quotes the text around the fault, which may be a token: report only where it is.
    const at = /position (\d+)/.exec((err as Error).message)?.[1];
    throw new AuthConfigError(`${source}: not valid JSON${at !== undefined ? ` (at character ${at})` : ''}`);
  }
  const list = (doc as { tokens?: unknown })?.tokens;
  if (!Array.isArray(list)) throw new AuthConfigError(`${source}: expected {"tokens": [...]}`);
  return list.map((raw, i) => {
    const where = `${source}: tokens[${i}]`;
    const t = raw as Record<string, unknown>;
    if (typeof t.token !== 'string' || t.token.length < MIN_TOKEN_LENGTH) {
      throw new AuthConfigError(`${where}.token must be a string of at least ${MIN_TOKEN_LENGTH} characters`);
    }
    if (typeof t.tenant !== 'string' || t.tenant.length === 0) throw new AuthConfigError(`${where}.tenant must be a non-empty string`);
    const d = digest(t.token);
    return {
      digest: d,
      principal: {
        tenant: t.tenant,
        tokenId: d.subarray(0, 6).toString('hex'),
        write: access(t.write, `${where}.write`),
        read: access(t.read, `${where}.read`),
      },
    };
  });
}

export class Authenticator {
  private entries: Entry[];
  /** SHA-256 of the tokens file text now in force: a check that finds the same text changes nothing. */
  private fileDigest: string | undefined;
  /**
   * Fixed at start: open only when neither a tokens file nor inline tokens are configured. A
   * reload that leaves no token locks everyone out; it never opens the server.
   */
  readonly enabled: boolean;

  constructor(
    private readonly tokensFile: string,
    private readonly inlineTokens: string,
  ) {
    this.enabled = tokensFile !== '' || inlineTokens !== '';
    const text = this.readFile();
    this.entries = this.parse(text);
    this.fileDigest = text === undefined ? undefined : textDigest(text);
  }

  /**
   * The file's text, read through any symlinks as they are now. Kubernetes swaps a Secret by
   * renaming a new `..data` symlink over the old one, so the path keeps its name while the file
   * behind it changes: only reading through the path sees what is current.
   */
  private readFile(): string | undefined {
    if (this.tokensFile === '') return undefined;
    try {
      return readFileSync(this.tokensFile, 'utf8');
    } catch (err) {
      throw new AuthConfigError(`${this.tokensFile}: cannot read (${(err as Error).message})`, { cause: err });
    }
  }

  private parse(fileText: string | undefined): Entry[] {
    const entries: Entry[] = [];
    if (this.inlineTokens !== '') entries.push(...parseTokens(this.inlineTokens, 'SEQGATE_TOKENS'));
    if (fileText !== undefined) entries.push(...parseTokens(fileText, this.tokensFile));
    return entries;
  }

  /** The principal for a presented token, or undefined. Without tokens configured, everyone is open. */
  authenticate(token: string | undefined): Principal | undefined {
    if (!this.enabled) return OPEN_PRINCIPAL;
    if (token === undefined) return undefined;
    const presented = digest(token);
    let found: Principal | undefined;
    for (const e of this.entries) {
      // Compare against every entry so the time taken does not depend on which one matches.
      if (timingSafeEqual(presented, e.digest)) found = e.principal;
    }
    return found;
  }

  /** Re-reads the tokens; on an error the old set stays in force and the error is thrown. */
  reload(): void {
    const text = this.readFile();
    this.entries = this.parse(text);
    this.fileDigest = text === undefined ? undefined : textDigest(text);
  }

  /**
   * Re-reads the tokens only if the tokens file's text differs from the text in force; true if
   * the set was replaced. Comparing content rather than times or inode numbers catches every way a
   * file can be updated (in place, renamed over, a symlink swapped) and ignores events that change
   * nothing. Throws like reload(); the old set then stays in force.
   */
  reloadIfChanged(): boolean {
    if (this.tokensFile === '') return false;
    const text = this.readFile()!;
    const digest = textDigest(text);
    if (digest === this.fileDigest) return false;
    this.entries = this.parse(text);
    this.fileDigest = digest;
    return true;
  }

  /** True while `tokenId` is still configured with an unchanged grant. */
  isCurrent(principal: Principal): boolean {
    if (principal === OPEN_PRINCIPAL) return !this.enabled;
    return this.entries.some((e) => e.principal.tokenId === principal.tokenId && sameGrant(e.principal, principal));
  }
}

function sameGrant(a: Principal, b: Principal): boolean {
  return JSON.stringify([a.tenant, a.write, a.read]) === JSON.stringify([b.tenant, b.write, b.read]);
}

export function mayWrite(p: Principal, stream: string | null, key: string): boolean {
  return (stream === null || p.write.streams.some((s) => stream.startsWith(s))) && p.write.documents.some((d) => key.startsWith(d));
}

export function mayReadStream(p: Principal, stream: string): boolean {
  return p.read.streams.some((s) => stream.startsWith(s));
}

export function mayReadDocument(p: Principal, key: string): boolean {
  return p.read.documents.some((d) => key.startsWith(d));
}

/** Accepts "Bearer <token>" (case-insensitive scheme). */
export function bearerToken(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m?.[1];
}

/** 127.0.0.0/8, ::1 and localhost: the only binds allowed without tokens unless explicitly insecure. */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}
