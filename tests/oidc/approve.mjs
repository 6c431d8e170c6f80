#!/usr/bin/env node
// Approve (or deny) a pending device-code request on the test OpenID
// provider (server.mjs) without a browser.
//
//   node approve.mjs --issuer http://127.0.0.1:PORT --user alice [--password P] [--deny] USER_CODE
//
// Exit status: 0 done (approved, or denied with --deny); 1 the provider
// refused (wrong password, unknown / expired / used code); 2 bad usage;
// 3 unexpected response or network error. One line on stderr either way.
// Never prints the password or any token.

import { parseArgs } from 'node:util';

const USAGE = 'usage: node approve.mjs --issuer http://127.0.0.1:PORT --user NAME [--password P] [--deny] USER_CODE';
const DEMO_PASSWORDS = { alice: 'alice-password', bob: 'bob-password', carol: 'carol-password' };

class Refused extends Error {}
class Unexpected extends Error {}

function finish(code, message) {
  process.stderr.write(`approve: ${message}\n`);
  process.exit(code);
}

let values;
let positionals;
try {
  ({ values, positionals } = parseArgs({
    options: {
      issuer: { type: 'string' },
      user: { type: 'string' },
      password: { type: 'string' },
      deny: { type: 'boolean', default: false },
      verbose: { type: 'boolean', short: 'v', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    allowPositionals: true,
    strict: true,
  }));
} catch (err) {
  finish(2, `${err.message}\n${USAGE}`);
}
if (values.help) finish(0, USAGE);
if (!values.issuer) finish(2, `--issuer is required\n${USAGE}`);
if (positionals.length !== 1 || !positionals[0]) finish(2, `exactly one USER_CODE is required\n${USAGE}`);
if (!values.deny && !values.user) finish(2, `--user is required\n${USAGE}`);

let issuer;
try {
  issuer = new URL(values.issuer.replace(/\/+$/, '/'));
} catch {
  finish(2, `invalid --issuer ${JSON.stringify(values.issuer)}`);
}
const userCode = positionals[0];
const username = values.user;
const password = values.password ?? DEMO_PASSWORDS[username];
if (!values.deny && password === undefined) {
  finish(2, `no demo password known for user ${JSON.stringify(username)}; pass --password`);
}

function debug(msg) {
  if (values.verbose) process.stderr.write(`approve: ${msg}\n`);
}

// ------------------------------------------------------------- cookie jar --
// Minimal RFC 6265 subset: one origin, Path matching, Max-Age/Expires removal.

const jar = new Map(); // `${name}\0${path}` -> { name, value, path, expires }

function defaultPath(url) {
  const p = url.pathname;
  const i = p.lastIndexOf('/');
  return i <= 0 ? '/' : p.slice(0, i);
}

function storeCookies(res, url) {
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
    const id = `${name}\0${path}`;
    if (expires <= Date.now()) jar.delete(id);
    else jar.set(id, { name, value, path, expires });
  }
}

function pathMatches(requestPath, cookiePath) {
  if (requestPath === cookiePath) return true;
  if (!requestPath.startsWith(cookiePath)) return false;
  return cookiePath.endsWith('/') || requestPath[cookiePath.length] === '/';
}

function cookieHeader(url) {
  const now = Date.now();
  const matching = [...jar.values()]
    .filter((c) => c.expires > now && pathMatches(url.pathname, c.path))
    .sort((a, b) => b.path.length - a.path.length); // longer paths first (RFC 6265 5.4)
  return matching.map((c) => `${c.name}=${c.value}`).join('; ');
}

// ------------------------------------------------------------------- http --

async function request(method, target, form) {
  let url = new URL(target, issuer);
  let body = form ? new URLSearchParams(form).toString() : undefined;
  for (let hop = 0; hop < 20; hop += 1) {
    if (url.origin !== issuer.origin) {
      throw new Unexpected(`redirected off the provider to ${url.origin}${url.pathname}`);
    }
    const headers = { accept: 'text/html' };
    const cookies = cookieHeader(url);
    if (cookies) headers.cookie = cookies;
    if (body !== undefined) headers['content-type'] = 'application/x-www-form-urlencoded';
    debug(`${method} ${url.pathname}`);
    let res;
    try {
      res = await fetch(url, { method, headers, body, redirect: 'manual' });
    } catch (err) {
      throw new Unexpected(`cannot reach ${url.origin}: ${err.cause?.message || err.message}`);
    }
    storeCookies(res, url);
    const location = res.headers.get('location');
    if (res.status >= 300 && res.status < 400 && location) {
      await res.arrayBuffer();
      url = new URL(location, url);
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

// ------------------------------------------------------------------- html --

function decodeEntities(s) {
  return s.replace(/&(amp|lt|gt|quot|#39|#x27);/g, (_, e) => ({
    amp: '&', lt: '<', gt: '>', quot: '"', '#39': "'", '#x27': "'",
  })[e]);
}

function attrs(tag) {
  const out = {};
  for (const m of tag.matchAll(/([a-zA-Z_:][-a-zA-Z0-9_:.]*)\s*=\s*(?:"([^"]*)"|'([^']*)')/g)) {
    out[m[1].toLowerCase()] = decodeEntities(m[2] ?? m[3]);
  }
  return out;
}

function hiddenInputs(html) {
  const out = {};
  for (const m of html.matchAll(/<input\b[^>]*>/gi)) {
    const a = attrs(m[0]);
    if ((a.type || '').toLowerCase() === 'hidden' && a.name) out[a.name] = a.value ?? '';
  }
  return out;
}

function formAction(html, id) {
  for (const m of html.matchAll(/<form\b[^>]*>/gi)) {
    const a = attrs(m[0]);
    if (!id || a.id === id) return a.action;
  }
  return undefined;
}

function pageError(html) {
  const m = /(<p\b[^>]*id="error"[^>]*>)([\s\S]*?)<\/p>/i.exec(html);
  if (!m) return undefined;
  const kind = attrs(m[1])['data-error'];
  return { kind, message: decodeEntities(m[2].replace(/<[^>]*>/g, '').trim()) };
}

// ------------------------------------------------------------------- flow --

async function main() {
  // 1. The verification URI with the code pre-filled answers with an
  //    auto-submitting form carrying the xsrf token.
  const start = await request('GET', `device?user_code=${encodeURIComponent(userCode)}`);
  if (start.status !== 200) throw new Unexpected(`GET /device answered HTTP ${start.status}`);
  const startForm = hiddenInputs(start.text);
  if (!startForm.xsrf) throw new Unexpected('no xsrf field on the /device page (is the device flow enabled?)');

  // 2. Submit the code: the provider answers with the confirmation page.
  const confirmPage = await request('POST', 'device', { xsrf: startForm.xsrf, user_code: userCode });
  let err = pageError(confirmPage.text);
  if (err) throw new Refused(`user code ${userCode} rejected: ${err.message}`);
  const confirmForm = hiddenInputs(confirmPage.text);
  if (!confirmForm.xsrf || !confirmForm.user_code) {
    throw new Unexpected(`unexpected answer to the user code (HTTP ${confirmPage.status})`);
  }

  // 3a. --deny: abort the request; the provider records access_denied.
  if (values.deny) {
    const denied = await request('POST', 'device', {
      xsrf: confirmForm.xsrf, user_code: confirmForm.user_code, abort: 'yes',
    });
    err = pageError(denied.text);
    if (err?.kind === 'AbortedError') return `denied device request ${userCode}`;
    throw new Unexpected(`could not deny ${userCode}: ${err ? err.message : `HTTP ${denied.status}`}`);
  }

  // 3b. Confirm; the provider redirects to our login interaction.
  const login = await request('POST', 'device', {
    xsrf: confirmForm.xsrf, user_code: confirmForm.user_code, confirm: 'yes',
  });
  let page = login;
  if (/^\/interaction\//.test(login.url.pathname) && formAction(login.text, 'login')) {
    // 4. Log in; redirects lead through the (automatic) consent to the
    //    success page.
    page = await request('POST', formAction(login.text, 'login'), { username, password });
    if (/^\/interaction\//.test(page.url.pathname) && formAction(page.text, 'login')) {
      err = pageError(page.text);
      throw new Refused(`login as ${username} failed: ${err ? err.message : 'login form shown again'} (code ${userCode} stays pending)`);
    }
  }
  if (page.text.includes('id="success"')) return `approved device request ${userCode} as ${username}`;
  err = pageError(page.text);
  throw new Unexpected(`approval of ${userCode} did not complete: ${err ? err.message : `HTTP ${page.status} at ${page.url.pathname}`}`);
}

main().then(
  (message) => finish(0, message),
  (error) => {
    if (error instanceof Refused) finish(1, error.message);
    if (error instanceof Unexpected) finish(3, error.message);
    finish(3, `internal error: ${error?.stack || error}`);
  },
);
