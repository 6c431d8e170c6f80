#!/usr/bin/env node
// Self-test of the test OpenID provider: spawns server.mjs on a free port
// (piped stdin, as a test harness would), drives every flow the jit-gateway
// tests rely on, and checks the server exits when its stdin is closed.
//
//   node selftest.mjs        exit 0 when every check passes

import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer } from 'node:http';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
let failures = 0;

function check(ok, what, detail = '') {
  process.stderr.write(`${ok ? 'ok  ' : 'FAIL'} ${what}${detail ? ` — ${detail}` : ''}\n`);
  if (!ok) failures += 1;
}

function decodeJwt(jwt) {
  const [h, p] = jwt.split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url')),
    payload: JSON.parse(Buffer.from(p, 'base64url')),
  };
}

function basic(id, secret) {
  return `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
}

// --- start the server ------------------------------------------------------
const server = spawn(process.execPath, [path.join(here, 'server.mjs'), '--port', '0', '--test-controls'], {
  stdio: ['pipe', 'pipe', 'pipe'],
});
let serverLog = '';
server.stderr.on('data', (d) => { serverLog += d; });
const exited = once(server, 'exit');
const firstLine = await new Promise((resolve, reject) => {
  const rl = createInterface({ input: server.stdout });
  rl.once('line', resolve);
  server.once('exit', (code) => reject(new Error(`server exited (${code}) before ready:\n${serverLog}`)));
});
const ready = JSON.parse(firstLine);
const { issuer } = ready;
check(issuer === `http://127.0.0.1:${ready.port}` && ready.port > 0, 'ready line', firstLine);

const disco = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
check(disco.issuer === issuer, 'discovery issuer');
check(disco.device_authorization_endpoint === `${issuer}/device/auth`, 'device_authorization_endpoint', disco.device_authorization_endpoint);

async function form(url, params, headers = {}) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: new URLSearchParams(params),
  });
  return { status: res.status, body: await res.json() };
}

function approve(args) {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [path.join(here, 'approve.mjs'), '--issuer', issuer, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('exit', (code) => resolve({ code, out, err: err.trim() }));
  });
}

const clients = {
  'jit-gateway': { authorization: basic('jit-gateway', 'jit-gateway-secret') },
  'other-app': { authorization: basic('other-app', 'other-app-secret') },
  'short-lived': { authorization: basic('short-lived', 'short-lived-secret') },
  'jit-gateway-cli': {},
};
function clientParams(id) {
  return id === 'jit-gateway-cli' ? { client_id: id } : {};
}

async function startDevice(clientId, scope = 'openid email profile groups') {
  const r = await form(disco.device_authorization_endpoint, { scope, ...clientParams(clientId) }, clients[clientId]);
  return r.body;
}
async function poll(clientId, deviceCode) {
  return form(disco.token_endpoint, { grant_type: DEVICE_GRANT, device_code: deviceCode, ...clientParams(clientId) }, clients[clientId]);
}

// --- device flow, jit-gateway, alice -------------------------------------
let da = await startDevice('jit-gateway');
check(da.interval === 1 && da.expires_in === 600, 'device authorization interval/expires_in', `interval=${da.interval} expires_in=${da.expires_in}`);
let t = await poll('jit-gateway', da.device_code);
check(t.body.error === 'authorization_pending', 'pending before approval', t.body.error);
let a = await approve(['--user', 'alice', da.user_code]);
check(a.code === 0 && a.out === '', 'approve alice', a.err);
check(!a.err.includes('alice-password'), 'approve does not print the password');
t = await poll('jit-gateway', da.device_code);
let idt = decodeJwt(t.body.id_token ?? 'e30.e30');
check(t.status === 200 && idt.payload.iss === issuer && idt.payload.aud === 'jit-gateway'
  && idt.payload.sub === 'user-alice' && idt.payload.email === 'alice@example.test'
  && idt.payload.preferred_username === 'alice' && JSON.stringify(idt.payload.groups) === '["ops"]',
'device flow tokens for alice', JSON.stringify(idt.payload));
t = await poll('jit-gateway', da.device_code);
check(t.body.error === 'invalid_grant', 'device code cannot be redeemed twice', t.body.error);

// --- wrong password, then retry -------------------------------------------
da = await startDevice('jit-gateway');
a = await approve(['--user', 'bob', '--password', 'not-bobs', da.user_code]);
check(a.code === 1 && !a.err.includes('not-bobs'), 'wrong password fails (exit 1, password not echoed)', a.err);
t = await poll('jit-gateway', da.device_code);
check(t.body.error === 'authorization_pending', 'code still pending after wrong password', t.body.error);
a = await approve(['--user', 'bob', da.user_code]);
check(a.code === 0, 'retry with the right password succeeds', a.err);
t = await poll('jit-gateway', da.device_code);
idt = decodeJwt(t.body.id_token ?? 'e30.e30');
check(idt.payload.sub === 'user-bob' && JSON.stringify(idt.payload.groups) === '["dev"]' && idt.payload.email_verified === true,
  'bob tokens', JSON.stringify(idt.payload));

// --- unknown and used codes -----------------------------------------------
a = await approve(['--user', 'alice', 'BCDF-GHJK']);
check(a.code === 1, 'unknown user code fails (exit 1)', a.err);
a = await approve(['--user', 'alice', da.user_code]);
check(a.code === 1, 'already used user code fails (exit 1)', a.err);

// --- deny -------------------------------------------------------------------
da = await startDevice('jit-gateway');
a = await approve(['--user', 'alice', '--deny', da.user_code]);
check(a.code === 0, 'deny', a.err);
t = await poll('jit-gateway', da.device_code);
check(t.body.error === 'access_denied', 'token endpoint says access_denied after deny', JSON.stringify(t.body));

// --- carol: empty groups ---------------------------------------------------
da = await startDevice('jit-gateway');
a = await approve(['--user', 'carol', da.user_code]);
t = await poll('jit-gateway', da.device_code);
idt = decodeJwt(t.body.id_token ?? 'e30.e30');
check(a.code === 0 && JSON.stringify(idt.payload.groups) === '[]', 'carol has groups []', JSON.stringify(idt.payload));

// --- wrong audience ---------------------------------------------------------
da = await startDevice('other-app');
a = await approve(['--user', 'alice', da.user_code]);
t = await poll('other-app', da.device_code);
idt = decodeJwt(t.body.id_token ?? 'e30.e30');
check(a.code === 0 && idt.payload.aud === 'other-app' && idt.payload.iss === issuer, 'other-app token (aud other-app)', idt.payload.aud);

// --- short-lived --------------------------------------------------------------
da = await startDevice('short-lived');
a = await approve(['--user', 'alice', da.user_code]);
t = await poll('short-lived', da.device_code);
idt = decodeJwt(t.body.id_token ?? 'e30.e30');
check(a.code === 0 && idt.payload.exp - idt.payload.iat === 2, 'short-lived ID token exp - iat == 2', `${idt.payload.exp - idt.payload.iat}`);

// --- public CLI client, device flow, offline_access + refresh ------------------
da = await startDevice('jit-gateway-cli', 'openid email groups offline_access');
a = await approve(['--user', 'alice', da.user_code]);
t = await poll('jit-gateway-cli', da.device_code);
check(a.code === 0 && t.status === 200 && typeof t.body.refresh_token === 'string', 'jit-gateway-cli device flow with refresh token', t.body.scope);
const rt = await form(disco.token_endpoint, { grant_type: 'refresh_token', refresh_token: t.body.refresh_token, client_id: 'jit-gateway-cli' });
idt = decodeJwt(rt.body.id_token ?? 'e30.e30');
check(rt.status === 200 && idt.payload.aud === 'jit-gateway-cli' && idt.payload.email === 'alice@example.test', 'refresh_token grant returns a new ID token');

// --- rogue JWKS -------------------------------------------------------------
const kids = async () => (await (await fetch(disco.jwks_uri)).json()).keys.map((k) => k.kid);
const normalKids = await kids();
let r = await fetch(`${issuer}/__test/rogue-jwks`, { method: 'POST' });
const rogueKids = await kids();
check(r.status === 200 && rogueKids.length === 1 && !normalKids.includes(rogueKids[0]), 'rogue-jwks changes served kid', `${normalKids} -> ${rogueKids}`);
check(!('d' in (await (await fetch(disco.jwks_uri)).json()).keys[0]), 'rogue JWKS is public only');
r = await fetch(`${issuer}/__test/normal-jwks`, { method: 'POST' });
check(r.status === 200 && JSON.stringify(await kids()) === JSON.stringify(normalKids), 'normal-jwks restores kid');
check(idt.header.kid === normalKids[0], 'ID tokens are signed with the normal kid');

// --- authorization code + PKCE, public client, loopback on an arbitrary port ---
async function authCodeFlow(clientId, redirectUri, user, pass, { pkce = true } = {}) {
  const jar = new Map();
  const cookie = () => [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  const keep = (res) => {
    for (const c of res.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const i = pair.indexOf('=');
      const expired = /expires=Thu, 01 Jan 1970/i.test(c);
      if (expired) jar.delete(pair.slice(0, i)); else jar.set(pair.slice(0, i), pair.slice(i + 1));
    }
  };
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  const state = randomBytes(8).toString('hex');
  const nonce = randomBytes(8).toString('hex');
  const auth = new URL(disco.authorization_endpoint);
  Object.entries({
    client_id: clientId, response_type: 'code', scope: 'openid email profile groups', redirect_uri: redirectUri,
    state, nonce, ...(pkce ? { code_challenge: challenge, code_challenge_method: 'S256' } : {}),
  }).forEach(([k, v]) => auth.searchParams.set(k, v));
  let url = auth.href;
  let method = 'GET';
  let body;
  for (let hop = 0; hop < 20; hop += 1) {
    if (url.startsWith(redirectUri)) break;
    const res = await fetch(url, {
      method, body, redirect: 'manual',
      headers: { cookie: cookie(), ...(body ? { 'content-type': 'application/x-www-form-urlencoded' } : {}) },
    });
    keep(res);
    if (res.status >= 300 && res.status < 400) {
      url = new URL(res.headers.get('location'), url).href;
      method = 'GET';
      body = undefined;
      continue;
    }
    const html = await res.text();
    const action = /<form id="login" method="post" action="([^"]+)"/.exec(html);
    if (!action) throw new Error(`unexpected page ${url} (HTTP ${res.status}): ${html.slice(0, 300)}`);
    url = new URL(action[1], url).href;
    method = 'POST';
    body = new URLSearchParams({ username: user, password: pass }).toString();
  }
  const cb = new URL(url);
  return { cb, verifier, state, nonce };
}

{
  const redirectUri = 'http://127.0.0.1:53127/callback';
  const { cb, verifier, state, nonce } = await authCodeFlow('jit-gateway-cli', redirectUri, 'alice', 'alice-password');
  check(cb.searchParams.get('state') === state && cb.searchParams.get('iss') === issuer && !!cb.searchParams.get('code'),
    'auth code redirect to loopback port 53127', `${cb.origin}${cb.pathname}`);
  const tok = await form(disco.token_endpoint, {
    grant_type: 'authorization_code', code: cb.searchParams.get('code'), redirect_uri: redirectUri,
    code_verifier: verifier, client_id: 'jit-gateway-cli',
  });
  idt = decodeJwt(tok.body.id_token ?? 'e30.e30');
  check(tok.status === 200 && idt.payload.aud === 'jit-gateway-cli' && idt.payload.nonce === nonce
    && idt.payload.preferred_username === 'alice', 'auth code + PKCE token exchange (jit-gateway-cli)', JSON.stringify(idt.payload));
}
{
  const redirectUri = 'http://127.0.0.1:8765/callback';
  const { cb, state, verifier } = await authCodeFlow('jit-gateway', redirectUri, 'bob', 'bob-password');
  const tok = await form(disco.token_endpoint, {
    grant_type: 'authorization_code', code: cb.searchParams.get('code'), redirect_uri: redirectUri, code_verifier: verifier,
  }, clients['jit-gateway']);
  idt = decodeJwt(tok.body.id_token ?? 'e30.e30');
  check(cb.searchParams.get('state') === state && tok.status === 200 && idt.payload.aud === 'jit-gateway' && idt.payload.sub === 'user-bob',
    'auth code + PKCE for confidential jit-gateway on port 8765', tok.body.error_description);
}
{
  const redirectUri = 'http://localhost:40001/callback';
  const { cb } = await authCodeFlow('jit-gateway', redirectUri, 'carol', 'carol-password', { pkce: false });
  const tok = await form(disco.token_endpoint, {
    grant_type: 'authorization_code', code: cb.searchParams.get('code'), redirect_uri: redirectUri,
  }, clients['jit-gateway']);
  check(tok.status === 200 && decodeJwt(tok.body.id_token).payload.sub === 'user-carol',
    'auth code without PKCE for confidential jit-gateway (localhost:40001)', tok.body.error_description);
}
{
  const res = await fetch(`${disco.authorization_endpoint}?client_id=jit-gateway-cli&response_type=code&scope=openid&redirect_uri=${encodeURIComponent('http://127.0.0.1:9/elsewhere')}&code_challenge=${'a'.repeat(43)}&code_challenge_method=S256`, { redirect: 'manual' });
  const txt = await res.text();
  check(res.status === 400 && txt.includes('redirect_uri'), 'other loopback path is rejected', `HTTP ${res.status}`);
}

// --- browser.mjs: authorization code flow delivered to a real loopback callback ---
{
  const hits = [];
  const cbServer = createServer((req, res) => {
    hits.push(new URL(req.url, 'http://cb'));
    res.end('signed in\n');
  });
  await new Promise((resolve) => cbServer.listen(0, '127.0.0.1', resolve));
  const redirectUri = `http://127.0.0.1:${cbServer.address().port}/callback`;
  const authorize = () => {
    const verifier = randomBytes(32).toString('base64url');
    const state = randomBytes(8).toString('hex');
    const nonce = randomBytes(8).toString('hex');
    const u = new URL(disco.authorization_endpoint);
    Object.entries({
      client_id: 'jit-gateway', response_type: 'code', scope: 'openid email profile', redirect_uri: redirectUri,
      state, nonce, code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256',
    }).forEach(([k, v]) => u.searchParams.set(k, v));
    return { url: u.href, verifier, state, nonce };
  };
  const browser = (args) => new Promise((resolve) => {
    const p = spawn(process.execPath, [path.join(here, 'browser.mjs'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('exit', (code) => resolve({ code, out, err: err.trim() }));
  });

  const a = authorize();
  let b = await browser(['--user', 'bob', a.url]);
  const cb = hits.at(-1);
  const code = cb?.searchParams.get('code');
  check(b.code === 0 && b.out === '' && /answered HTTP 200$/.test(b.err) && cb?.pathname === '/callback'
    && cb.searchParams.get('state') === a.state && cb.searchParams.get('iss') === issuer && !!code,
  'browser.mjs delivers code + state + iss to the callback', b.err);
  check(!b.err.includes(code) && !b.err.includes(a.state) && !b.err.includes('bob-password'),
    'browser.mjs does not print code, state or password');
  const tok = await form(disco.token_endpoint, {
    grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: a.verifier,
  }, clients['jit-gateway']);
  idt = decodeJwt(tok.body.id_token ?? 'e30.e30');
  check(tok.status === 200 && idt.payload.aud === 'jit-gateway' && idt.payload.email === 'bob@example.test'
    && idt.payload.nonce === a.nonce, 'browser.mjs code redeems for bob\'s ID token', JSON.stringify(idt.payload));

  const before = hits.length;
  b = await browser(['--user', 'bob', '--password', 'not-bobs', authorize().url]);
  check(b.code === 1 && hits.length === before && !b.err.includes('not-bobs'),
    'browser.mjs wrong password: exit 1, callback not called', b.err);

  const d = authorize();
  b = await browser(['--deny', d.url]);
  check(b.code === 0 && hits.at(-1)?.searchParams.get('error') === 'access_denied' && hits.at(-1)?.searchParams.get('state') === d.state,
    'browser.mjs --deny delivers error=access_denied', b.err);
  cbServer.close();
}

// --- stdin close -> exit ------------------------------------------------------
server.stdin.end();
const timer = setTimeout(() => { check(false, 'server exits when stdin closes', 'still running after 5 s'); server.kill('SIGKILL'); }, 5000);
const [code] = await exited;
clearTimeout(timer);
check(code === 0, 'server exits when stdin closes', `exit code ${code}`);

if (failures) {
  process.stderr.write(`\n${failures} check(s) failed; server log:\n${serverLog}`);
  process.exit(1);
}
process.stderr.write('all checks passed\n');
