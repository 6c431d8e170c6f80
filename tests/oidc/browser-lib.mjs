// Shared pieces of the headless "browsers" approve.mjs (device flow) and
// browser.mjs (authorization-code flow): a minimal cookie jar, a fetch loop
// that follows redirects with it, and a few regex helpers for the simple
// HTML pages of server.mjs. Nothing here prints passwords, codes or tokens.

import { parseArgs } from 'node:util';

export const DEMO_PASSWORDS = {
  alice: 'alice-password', bob: 'bob-password', carol: 'carol-password', eve: 'eve-password', mallory: 'mallory-password',
};

/** The provider refused what we asked (wrong password, bad user code, ...). */
export class Refused extends Error {}
/** An unexpected page or answer, or a network error. */
export class Unexpected extends Error {}

// ------------------------------------------------------------- cookie jar --
// Minimal RFC 6265 subset: Path matching, Max-Age/Expires removal. Cookies
// are kept per origin (stricter than RFC 6265, which ignores the port), so
// the provider's cookies are never sent to the loopback callback.

function defaultPath(url) {
  const p = url.pathname;
  const i = p.lastIndexOf('/');
  return i <= 0 ? '/' : p.slice(0, i);
}

function pathMatches(requestPath, cookiePath) {
  if (requestPath === cookiePath) return true;
  if (!requestPath.startsWith(cookiePath)) return false;
  return cookiePath.endsWith('/') || requestPath[cookiePath.length] === '/';
}

export class CookieJar {
  #cookies = new Map(); // `${origin}\0${name}\0${path}` -> { origin, name, value, path, expires }

  store(res, url) {
    for (const header of res.headers.getSetCookie()) {
      const [pair, ...attrs] = header.split(';');
      const eq = pair.indexOf('=');
      if (eq <= 0) continue;
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      let path = defaultPath(url);
      let expires = Infinity;
      for (const attr of attrs) {
        const [k, ...rest] = attr.split('=');
        const key = k.trim().toLowerCase();
        const v = rest.join('=').trim();
        if (key === 'path' && v.startsWith('/')) path = v;
        else if (key === 'max-age') expires = Number(v) <= 0 ? 0 : Date.now() + Number(v) * 1000;
        else if (key === 'expires' && expires === Infinity) {
          const t = Date.parse(v);
          if (!Number.isNaN(t)) expires = t;
        }
      }
      const id = `${url.origin}\0${name}\0${path}`;
      if (expires <= Date.now()) this.#cookies.delete(id);
      else this.#cookies.set(id, { origin: url.origin, name, value, path, expires });
    }
  }

  header(url) {
    const now = Date.now();
    return [...this.#cookies.values()]
      .filter((c) => c.origin === url.origin && c.expires > now && pathMatches(url.pathname, c.path))
      .sort((a, b) => b.path.length - a.path.length) // longer paths first (RFC 6265 5.4)
      .map((c) => `${c.name}=${c.value}`)
      .join('; ');
  }
}

// ------------------------------------------------------------------- http --

/**
 * A cookie jar plus a redirect-following request loop, bound to one origin
 * (the provider). `debug` receives method and path only (never a query).
 */
export class Browser {
  constructor(origin, { debug = () => {} } = {}) {
    this.origin = new URL(origin).origin;
    this.jar = new CookieJar();
    this.debug = debug;
  }

  /**
   * One request without following redirects. Stores cookies; sends cookies
   * only to the origin they came from. `timeoutMs` bounds the whole exchange
   * (headers and body).
   */
  async fetchOnce(method, url, body, { timeoutMs } = {}) {
    const headers = { accept: 'text/html' };
    const cookies = this.jar.header(url);
    if (cookies) headers.cookie = cookies;
    if (body !== undefined) headers['content-type'] = 'application/x-www-form-urlencoded';
    this.debug(`${method} ${url.origin === this.origin ? '' : url.host}${url.pathname}`);
    let res;
    try {
      const signal = timeoutMs ? AbortSignal.timeout(timeoutMs) : undefined;
      res = await fetch(url, { method, headers, body, redirect: 'manual', signal });
    } catch (err) {
      throw new Unexpected(`cannot reach ${url.origin}: ${err.cause?.message || err.message}`);
    }
    this.jar.store(res, url);
    return res;
  }

  /**
   * `method` `target` (resolved against `base`, default the origin), with an
   * optional urlencoded `form`, following redirects (303/302/301 turn into
   * GET; relative Location headers are resolved).
   *
   * A redirect away from the provider's origin is an Unexpected error, unless
   * `offOrigin: 'return'`: then the loop stops there WITHOUT requesting it and
   * answers { redirect: URL, status } (status of the redirect response).
   * Otherwise answers { status, url, text } of the first non-redirect page.
   */
  async request(method, target, form, { base = this.origin, offOrigin = 'throw' } = {}) {
    let url = new URL(target, base);
    let body = form ? new URLSearchParams(form).toString() : undefined;
    for (let hop = 0; hop < 20; hop += 1) {
      if (url.origin !== this.origin) {
        throw new Unexpected(`redirected off the provider to ${url.origin}${url.pathname}`);
      }
      const res = await this.fetchOnce(method, url, body);
      const location = res.headers.get('location');
      if (res.status >= 300 && res.status < 400 && location) {
        await res.arrayBuffer();
        let next;
        try {
          next = new URL(location, url);
        } catch {
          throw new Unexpected(`HTTP ${res.status} from ${url.pathname} with an invalid Location header`);
        }
        if (next.origin !== this.origin && offOrigin === 'return') {
          return { redirect: next, status: res.status };
        }
        url = next;
        if (res.status !== 307 && res.status !== 308) {
          method = 'GET';
          body = undefined;
        }
        continue;
      }
      const text = await res.text();
      return { status: res.status, url, text };
    }
    throw new Unexpected('too many redirects');
  }
}

// ------------------------------------------------------------------- html --

export function decodeEntities(s) {
  return s.replace(/&(amp|lt|gt|quot|#39|#x27);/g, (_, e) => ({
    amp: '&', lt: '<', gt: '>', quot: '"', '#39': "'", '#x27': "'",
  })[e]);
}

export function attrs(tag) {
  const out = {};
  for (const m of tag.matchAll(/([a-zA-Z_:][-a-zA-Z0-9_:.]*)\s*=\s*(?:"([^"]*)"|'([^']*)')/g)) {
    out[m[1].toLowerCase()] = decodeEntities(m[2] ?? m[3]);
  }
  return out;
}

export function hiddenInputs(html) {
  const out = {};
  for (const m of html.matchAll(/<input\b[^>]*>/gi)) {
    const a = attrs(m[0]);
    if ((a.type || '').toLowerCase() === 'hidden' && a.name) out[a.name] = a.value ?? '';
  }
  return out;
}

export function formAction(html, id) {
  for (const m of html.matchAll(/<form\b[^>]*>/gi)) {
    const a = attrs(m[0]);
    if (!id || a.id === id) return a.action;
  }
  return undefined;
}

/** The `<p id="error" data-error="kind">message</p>` line of server.mjs pages. */
export function pageError(html) {
  const m = /(<p\b[^>]*id="error"[^>]*>)([\s\S]*?)<\/p>/i.exec(html);
  if (!m) return undefined;
  const kind = attrs(m[1])['data-error'];
  return { kind, message: decodeEntities(m[2].replace(/<[^>]*>/g, '').trim()) };
}

/** The action of server.mjs's login form, if `page` is the login page. */
export function loginFormAction(page) {
  if (!page || !page.url || !/^\/interaction\//.test(page.url.pathname)) return undefined;
  return formAction(page.text, 'login');
}

// ----------------------------------------------------------- command line --

/** `finish(code, message)`: one line on stderr, prefixed with `name`, then exit. */
export function finisher(name) {
  return (code, message) => {
    process.stderr.write(`${name}: ${message}\n`);
    process.exit(code);
  };
}

/**
 * The command line both tools share: --user, --password, --deny, --verbose,
 * --help (plus `extra` options) and exactly one positional argument, named
 * `what` in messages. Bad usage exits 2. The password defaults to the demo
 * user's.
 */
export function commandLine(finish, usage, what, extra = {}) {
  let parsed;
  try {
    parsed = parseArgs({
      options: {
        user: { type: 'string' },
        password: { type: 'string' },
        deny: { type: 'boolean', default: false },
        verbose: { type: 'boolean', short: 'v', default: false },
        help: { type: 'boolean', short: 'h', default: false },
        ...extra,
      },
      allowPositionals: true,
      strict: true,
    });
  } catch (err) {
    finish(2, `${err.message}\n${usage}`);
  }
  const { values, positionals } = parsed;
  if (values.help) finish(0, usage);
  for (const name of Object.keys(extra)) {
    if (values[name] === undefined) finish(2, `--${name} is required\n${usage}`);
  }
  if (positionals.length !== 1 || !positionals[0]) finish(2, `exactly one ${what} is required\n${usage}`);
  if (!values.deny && !values.user) finish(2, `--user is required\n${usage}`);
  const password = values.password ?? DEMO_PASSWORDS[values.user];
  if (!values.deny && password === undefined) {
    finish(2, `no demo password known for user ${JSON.stringify(values.user)}; pass --password`);
  }
  return { values, positional: positionals[0], username: values.user, password };
}

/** Runs `main` and exits: 0 with its message, 1 refused, 3 unexpected, or a code from `more` ([class, code] pairs). */
export function run(main, finish, more = []) {
  main().then(
    (message) => finish(0, message),
    (error) => {
      if (error instanceof Refused) finish(1, error.message);
      if (error instanceof Unexpected) finish(3, error.message);
      for (const [kind, code] of more) if (error instanceof kind) finish(code, error.message);
      finish(3, `internal error: ${error?.stack || error}`);
    },
  );
}
