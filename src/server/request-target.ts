/**
 * The request target of an HTTP request or WebSocket upgrade (RFC 9112 §3.2), parsed without ever
 * throwing: whatever a client puts on the request line, the answer is a target or `undefined`
 * (which the caller answers 400 INVALID_TARGET).
 *
 * `new URL(req.url, base)` is not safe here: a target starting with `//` (or `/\`) is read as a
 * scheme-relative URL whose host is the first segment, so `//[` throws and `/\evil/v1/docs` would
 * route as `/v1/docs` on host `evil`. Origin-form targets are therefore appended to a fixed origin,
 * which makes every byte after it path and query.
 *
 * Accepted: origin-form (`/path?query`) and absolute-form with an http, https, ws or wss scheme,
 * whose path and query hold only the characters RFC 3986 allows there. Bytes above 0x7f (raw
 * UTF-8, which some clients send unencoded) are tolerated. Refused: asterisk-form (`OPTIONS *`),
 * authority-form (`CONNECT h:p`), and targets with ASCII characters RFC 3986 forbids in a path or
 * query: controls, space, `"`, `#`, `<`, `>`, `[`, `\`, `]`, `^`, `` ` ``, `{`, `|`, `}`.
 * Percent-escapes are checked where a segment is decoded (a bad one in a name is INVALID_BODY).
 */

export interface RequestTarget {
  /** The path's segments after the leading `/`, still percent-encoded; `/a/b` → `['a', 'b']`. */
  readonly segments: string[];
  readonly query: URLSearchParams;
}

const ORIGIN = 'http://seqgate.invalid';
/** absolute-form: scheme and authority (RFC 9112 §3.2.2); the rest must be origin-form or empty. */
const ABSOLUTE = /^(?:https?|wss?):\/\/[^/?#]*/i;
/** pchar, "/" and "?" of RFC 3986 (path and query), "%" for escapes, and any non-ASCII byte. */
const PATH_AND_QUERY = /^\/[A-Za-z0-9\-._~!$&'()*+,;=:@%/?\u0080-\uffff]*$/;

export function parseRequestTarget(raw: string | undefined): RequestTarget | undefined {
  if (raw === undefined) return undefined;
  let rest = raw;
  const absolute = ABSOLUTE.exec(raw);
  if (absolute !== null) {
    if (!URL.canParse(raw)) return undefined;
    rest = raw.slice(absolute[0].length);
    if (rest === '') rest = '/';
  }
  if (!PATH_AND_QUERY.test(rest)) return undefined;
  let url: URL;
  try {
    url = new URL(ORIGIN + rest);
  } catch {
    return undefined;
  }
  return { segments: url.pathname.split('/').slice(1), query: url.searchParams };
}
