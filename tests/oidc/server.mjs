#!/usr/bin/env node
// Local OpenID Provider for jit-gateway tests and demos (oidc-provider 9.x).
//
//   node server.mjs [--port N] [--users FILE] [--test-controls]
//                   [--no-stdin-watch] [--device-interval SECONDS]
//
// stdout carries exactly one line, written when the server is ready:
//   {"issuer":"http://127.0.0.1:PORT","port":PORT}
// Everything else goes to stderr. See README.md.

// oidc-provider prints its NOTICE lines with console.info (stdout); keep
// stdout reserved for the ready line.
console.info = console.error;
console.log = console.error;

import { createServer } from 'node:http';
import { generateKeyPairSync, createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const USAGE = `usage: node server.mjs [--port N] [--users FILE] [--test-controls] [--no-stdin-watch] [--device-interval SECONDS]`;

function log(...args) {
  process.stderr.write(`[oidc] ${args.join(' ')}\n`);
}

function die(message) {
  process.stderr.write(`oidc server: ${message}\n${USAGE}\n`);
  process.exit(2);
}

// ---------------------------------------------------------------- options --

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      port: { type: 'string', default: '0' },
      users: { type: 'string' },
      'test-controls': { type: 'boolean', default: false },
      'no-stdin-watch': { type: 'boolean', default: false },
      'device-interval': { type: 'string', default: '1' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  }));
} catch (err) {
  die(err.message);
}
if (opts.help) {
  process.stderr.write(`${USAGE}\n`);
  process.exit(0);
}

const requestedPort = Number(opts.port);
if (!Number.isInteger(requestedPort) || requestedPort < 0 || requestedPort > 65535) {
  die(`invalid --port ${JSON.stringify(opts.port)}`);
}
const deviceInterval = Number(opts['device-interval']);
if (!Number.isInteger(deviceInterval) || deviceInterval < 1) {
  die(`invalid --device-interval ${JSON.stringify(opts['device-interval'])} (positive integer seconds)`);
}

// ------------------------------------------------------------------ users --

const DEFAULT_USERS = [
  {
    username: 'alice',
    password: 'alice-password',
    sub: 'user-alice',
    claims: {
      email: 'alice@example.test',
      email_verified: true,
      name: 'Alice Admin',
      preferred_username: 'alice',
      groups: ['ops'],
    },
  },
  {
    username: 'bob',
    password: 'bob-password',
    sub: 'user-bob',
    claims: {
      email: 'bob@example.test',
      email_verified: true,
      preferred_username: 'bob',
      groups: ['dev'],
    },
  },
  {
    username: 'carol',
    password: 'carol-password',
    sub: 'user-carol',
    claims: {
      email: 'carol@example.test',
      email_verified: true,
      preferred_username: 'carol',
      groups: [],
    },
  },
  // Two other accounts that send alice's address: eve's provider says it is
  // verified (a second account, e.g. after a rename), mallory's says nothing
  // about it (as Entra ID does by default).
  {
    username: 'eve',
    password: 'eve-password',
    sub: 'user-eve',
    claims: {
      email: 'alice@example.test',
      email_verified: true,
      preferred_username: 'eve',
      groups: ['ops'],
    },
  },
  {
    username: 'mallory',
    password: 'mallory-password',
    sub: 'user-mallory',
    claims: {
      email: 'alice@example.test',
      preferred_username: 'mallory',
      groups: ['ops'],
    },
  },
];

function loadUsers(file) {
  let parsed;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    die(`cannot read --users ${file}: ${err.message}`);
  }
  const list = Array.isArray(parsed) ? parsed : parsed?.users;
  if (!Array.isArray(list)) die(`--users ${file}: expected a JSON array of users (or {"users": [...]})`);
  const seen = new Set();
  return list.map((u, i) => {
    if (!u || typeof u.username !== 'string' || !u.username) die(`--users ${file}: user #${i} has no "username"`);
    if (typeof u.password !== 'string') die(`--users ${file}: user ${u.username} has no "password"`);
    const sub = u.sub ?? `user-${u.username}`;
    if (typeof sub !== 'string' || !sub) die(`--users ${file}: user ${u.username} has an invalid "sub"`);
    if (u.claims !== undefined && (typeof u.claims !== 'object' || Array.isArray(u.claims) || u.claims === null)) {
      die(`--users ${file}: user ${u.username}: "claims" must be an object`);
    }
    if (seen.has(u.username) || seen.has(`sub:${sub}`)) die(`--users ${file}: duplicate user ${u.username} / sub ${sub}`);
    seen.add(u.username);
    seen.add(`sub:${sub}`);
    return { username: u.username, password: u.password, sub, claims: { ...(u.claims ?? {}) } };
  });
}

const USERS = opts.users ? loadUsers(opts.users) : DEFAULT_USERS;
const usersByName = new Map(USERS.map((u) => [u.username, u]));
const usersBySub = new Map(USERS.map((u) => [u.sub, u]));

// ---------------------------------------------------------------- clients --

const GRANT_TYPES = [
  'urn:ietf:params:oauth:grant-type:device_code',
  'authorization_code',
  'refresh_token',
];
// application_type "native" makes oidc-provider accept these loopback
// redirect URIs with ANY port (RFC 8252 section 7.3); path must match.
const LOOPBACK_REDIRECTS = ['http://127.0.0.1/callback', 'http://localhost/callback'];

function client(client_id, extra) {
  return {
    client_id,
    client_name: client_id,
    application_type: 'native',
    grant_types: GRANT_TYPES,
    response_types: ['code'],
    redirect_uris: LOOPBACK_REDIRECTS,
    ...extra,
  };
}

const CLIENTS = [
  client('jit-gateway', { client_secret: 'jit-gateway-secret', token_endpoint_auth_method: 'client_secret_basic' }),
  client('jit-gateway-cli', { token_endpoint_auth_method: 'none' }),
  client('other-app', { client_secret: 'other-app-secret', token_endpoint_auth_method: 'client_secret_basic' }),
  client('short-lived', { client_secret: 'short-lived-secret', token_endpoint_auth_method: 'client_secret_basic' }),
];
// All static clients are first-party: consent is granted automatically.
const FIRST_PARTY = new Set(CLIENTS.map((c) => c.client_id));
const SHORT_ID_TOKEN_TTL = { 'short-lived': 2 };

// ------------------------------------------------------------------- keys --

function newRsaJwk() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  // RFC 7638 thumbprint as kid.
  const thumb = createHash('sha256')
    .update(JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n }))
    .digest('base64url');
  return { ...jwk, kid: thumb, alg: 'RS256', use: 'sig' };
}

function publicJwks(jwk) {
  const { kty, n, e, kid, alg, use } = jwk;
  return { keys: [{ kty, n, e, kid, alg, use }] };
}

const signingKey = newRsaJwk();
let rogueJwks = null; // set by POST /__test/rogue-jwks
let deviceAuthorizations = 0; // device codes handed out; read by POST /__test/counts

// ------------------------------------------------------------------- html --

function esc(value) {
  return String(value ?? '').replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  })[c]);
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title>
<style>
body{font-family:system-ui,sans-serif;max-width:24rem;margin:3rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem}
label{display:block;margin:.8rem 0 .2rem}
input[type=text],input[type=password]{width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem}
button{margin-top:1rem;padding:.5rem 1rem;font-size:1rem}
.error{color:#b00020}
code{font-size:1.5rem}
small{color:#666}
</style>
</head>
<body>
<h1>${esc(title)}</h1>
${body}
</body>
</html>`;
}

function errorLine(kind, message) {
  return `<p class="error" id="error" data-error="${esc(kind)}">${esc(message)}</p>`;
}

function loginPage(uid, { clientId, username = '', error } = {}) {
  return page('Sign in', `
${clientId ? `<p>to continue to <strong>${esc(clientId)}</strong></p>` : ''}
${error ? errorLine('login_failed', error) : ''}
<form id="login" method="post" action="/interaction/${esc(uid)}" autocomplete="off">
<label for="username">Username</label>
<input type="text" id="username" name="username" value="${esc(username)}" required autofocus autocapitalize="none">
<label for="password">Password</label>
<input type="password" id="password" name="password" required>
<button type="submit">Sign in</button>
<button type="submit" name="abort" value="yes" formnovalidate>Cancel</button>
</form>`);
}

// ------------------------------------------------------------ device flow --

function deviceErrorMessage(out, err) {
  if (!err) return null;
  switch (err.name) {
    case 'NoCodeError': return ['NoCodeError', 'Please enter the code shown on your device.'];
    case 'NotFoundError': return ['NotFoundError', 'The code you entered is incorrect. Try again.'];
    case 'ExpiredError': return ['ExpiredError', 'The code has expired. Start again on your device.'];
    case 'AlreadyUsedError': return ['AlreadyUsedError', 'The code has already been used.'];
    case 'AbortedError': return ['AbortedError', 'The sign-in request was cancelled.'];
    default: return [out?.error || 'error', `There was an error processing your request: ${out?.error_description || out?.error || err.message}`];
  }
}

async function userCodeInputSource(ctx, form, out, err) {
  const e = deviceErrorMessage(out, err);
  ctx.type = 'html';
  ctx.body = page('Device sign-in', `
${e ? errorLine(e[0], e[1]) : '<p>Enter the code displayed on your device.</p>'}
${form}
<button type="submit" form="op.deviceInputForm">Continue</button>`);
}

async function userCodeConfirmSource(ctx, form, clientObj, deviceInfo, userCode) {
  ctx.type = 'html';
  ctx.body = page('Confirm device', `
<p><strong>${esc(clientObj.clientName || clientObj.clientId)}</strong> is asking to sign you in.</p>
<p>Check that this code is displayed on your device:</p>
<p><code id="user-code">${esc(userCode)}</code></p>
${form}
<button type="submit" form="op.deviceConfirmForm" autofocus>Continue</button>
<button type="submit" form="op.deviceConfirmForm" name="abort" value="yes">Deny</button>
<p><small>If you did not start this, or the code does not match, choose Deny.</small></p>`);
}

async function successSource(ctx) {
  ctx.type = 'html';
  ctx.body = page('Sign-in complete', `
<p id="success">Your device is now signed in${ctx.oidc.client ? ` to <strong>${esc(ctx.oidc.client.clientId)}</strong>` : ''}. You can close this page.</p>`);
}

async function renderError(ctx, out) {
  ctx.type = 'html';
  ctx.body = page('Error', `${errorLine(out.error, out.error_description || out.error)}`);
}

// ------------------------------------------------------------- the server --

let handler = (req, res) => {
  res.statusCode = 503;
  res.end('starting\n');
};
const server = createServer((req, res) => handler(req, res));
server.on('clientError', (err, socket) => socket.destroy());

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(requestedPort, '127.0.0.1', () => {
    server.off('error', reject);
    resolve();
  });
}).catch((err) => die(`cannot listen on 127.0.0.1:${requestedPort}: ${err.message}`));

const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const DAY = 24 * 60 * 60;
const provider = new Provider(issuer, {
  clients: CLIENTS,
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  conformIdTokenClaims: false,
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: [
      'name', 'family_name', 'given_name', 'middle_name', 'nickname', 'preferred_username',
      'profile', 'picture', 'website', 'gender', 'birthdate', 'zoneinfo', 'locale', 'updated_at',
    ],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  features: {
    devInteractions: { enabled: false },
    deviceFlow: {
      enabled: true,
      charset: 'base-20',
      mask: '****-****',
      userCodeInputSource,
      userCodeConfirmSource,
      successSource,
    },
    revocation: { enabled: true },
  },
  responseTypes: ['code'],
  pkce: { required: (ctx, c) => c.clientAuthMethod === 'none' },
  renderError,
  async findAccount(ctx, sub) {
    const user = usersBySub.get(sub);
    if (!user) return undefined;
    return {
      accountId: user.sub,
      async claims() {
        return { ...user.claims, sub: user.sub };
      },
    };
  },
  ttl: {
    AccessToken: 60 * 60,
    AuthorizationCode: 60,
    ClientCredentials: 10 * 60,
    BackchannelAuthenticationRequest: 10 * 60,
    DeviceCode: 10 * 60,
    IdToken: (ctx, token, c) => SHORT_ID_TOKEN_TTL[c?.clientId] ?? 60 * 60,
    Interaction: 60 * 60,
    RefreshToken: 14 * DAY,
    Session: 14 * DAY,
    Grant: 14 * DAY,
  },
  interactions: {
    url: (ctx, interaction) => `/interaction/${interaction.uid}`,
  },
});

provider.on('server_error', (ctx, err) => log('server_error', ctx.method, ctx.path, err?.stack || err));

// -------------------------------------------------- our own koa middleware --

const MAX_FORM = 16 * 1024;
async function readForm(req) {
  let size = 0;
  const chunks = [];
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_FORM) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

async function autoConsent(ctx, details) {
  const { prompt, params, session } = details;
  const clientId = params.client_id;
  if (!FIRST_PARTY.has(clientId)) {
    // No third-party clients are configured; refuse rather than silently grant.
    return provider.interactionResult(ctx.req, ctx.res, {
      error: 'access_denied', error_description: 'consent is only automatic for first-party clients',
    }, { mergeWithLastSubmission: false });
  }
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId });
  const d = prompt.details || {};
  if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
  if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
  if (d.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  const grantId = await grant.save();
  const consent = details.grantId ? {} : { grantId };
  return provider.interactionResult(ctx.req, ctx.res, { consent }, { mergeWithLastSubmission: true });
}

// After a failed login in a device-flow interaction, release the device code
// so the user code can be entered again at /device (oidc-provider marks it
// "in flight" once confirmed, which would otherwise block a second attempt
// from a fresh browser / approve.mjs run). The code stays pending.
async function releaseDeviceCode(details) {
  if (!details.deviceCode) return;
  try {
    const code = await provider.DeviceCode.find(details.deviceCode, { ignoreSessionBinding: true });
    if (code && code.inFlight && !code.accountId && !code.error) {
      code.inFlight = undefined;
      await code.save();
    }
  } catch (err) {
    log('could not release device code:', err.message);
  }
}

function redirect303(ctx, location) {
  ctx.redirect(location);
  ctx.status = 303;
}

async function interactionRoute(ctx, uid) {
  let details;
  try {
    details = await provider.interactionDetails(ctx.req, ctx.res);
  } catch (err) {
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = page('Error', errorLine('session_not_found',
      'This sign-in request has expired or was not started in this browser. Start again.'));
    log('interaction lookup failed:', err.message);
    return;
  }
  if (details.uid !== uid) {
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = page('Error', errorLine('invalid_request', 'Interaction mismatch. Start again.'));
    return;
  }
  const { prompt, params } = details;
  ctx.set('cache-control', 'no-store');

  if (prompt.name === 'consent') {
    redirect303(ctx, await autoConsent(ctx, details));
    return;
  }
  if (prompt.name !== 'login') {
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = page('Error', errorLine('unsupported_prompt', `Unsupported prompt ${prompt.name}`));
    return;
  }

  if (ctx.method === 'GET') {
    ctx.type = 'html';
    ctx.body = loginPage(uid, { clientId: params.client_id, username: params.login_hint || '' });
    return;
  }
  if (ctx.method !== 'POST') {
    ctx.status = 405;
    return;
  }

  let form;
  try {
    form = await readForm(ctx.req);
  } catch (err) {
    ctx.status = 413;
    ctx.body = err.message;
    return;
  }
  if (form.get('abort')) {
    log(`login cancelled (client ${params.client_id})`);
    redirect303(ctx, await provider.interactionResult(ctx.req, ctx.res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false }));
    return;
  }
  const username = form.get('username') ?? '';
  const password = form.get('password') ?? '';
  const user = usersByName.get(username);
  if (!user || user.password !== password) {
    log(`login failed for ${JSON.stringify(username)} (client ${params.client_id})`);
    await releaseDeviceCode(details);
    ctx.status = 401;
    ctx.type = 'html';
    ctx.body = loginPage(uid, { clientId: params.client_id, username, error: 'Invalid username or password.' });
    return;
  }
  log(`login ok: ${user.username} (client ${params.client_id})`);
  redirect303(ctx, await provider.interactionResult(ctx.req, ctx.res, {
    login: { accountId: user.sub },
  }, { mergeWithLastSubmission: false }));
}

provider.use(async (ctx, next) => {
  const { path } = ctx;

  const m = /^\/interaction\/([^/]+)\/?$/.exec(path);
  if (m) {
    await interactionRoute(ctx, m[1]);
    return;
  }

  if (opts['test-controls'] && path.startsWith('/__test/')) {
    if (ctx.method !== 'POST') {
      ctx.status = 405;
      ctx.set('allow', 'POST');
      return;
    }
    if (path === '/__test/rogue-jwks') {
      rogueJwks = publicJwks(newRsaJwk());
      log(`test control: jwks_uri now serves ROGUE key ${rogueJwks.keys[0].kid}`);
      ctx.body = { jwks: 'rogue', kid: rogueJwks.keys[0].kid };
      return;
    }
    // Deprovisioning: the account is gone (findAccount finds nothing), so
    // its refresh tokens are refused with invalid_grant from now on.
    if (path === '/__test/disable') {
      const name = new URL(ctx.href).searchParams.get('user');
      const user = usersByName.get(name);
      if (!user) {
        ctx.status = 404;
        ctx.body = { error: 'no such user' };
        return;
      }
      usersBySub.delete(user.sub);
      log(`test control: user ${name} disabled`);
      ctx.body = { disabled: name };
      return;
    }
    if (path === '/__test/counts') {
      ctx.body = { device_authorizations: deviceAuthorizations };
      return;
    }
    if (path === '/__test/normal-jwks') {
      rogueJwks = null;
      log('test control: jwks_uri restored');
      ctx.body = { jwks: 'normal', kid: signingKey.kid };
      return;
    }
    ctx.status = 404;
    ctx.body = { error: 'not_found' };
    return;
  }

  if (rogueJwks && path === '/jwks' && (ctx.method === 'GET' || ctx.method === 'HEAD')) {
    ctx.type = 'application/jwk-set+json; charset=utf-8';
    ctx.body = rogueJwks;
    return;
  }

  await next();

  // oidc-provider 9 never puts "interval" in the device authorization
  // response (RFC 8628 clients then default to 5 s) and never answers
  // slow_down; add a short one so tests and demos poll quickly.
  if (ctx.oidc?.route === 'device_authorization' && ctx.status === 200
      && ctx.body && typeof ctx.body === 'object' && ctx.body.device_code) {
    ctx.body.interval = deviceInterval;
    deviceAuthorizations += 1;
  }
});

handler = provider.callback();

// --------------------------------------------------------------- lifetime --

let stopping = false;
function shutdown(reason) {
  if (stopping) return;
  stopping = true;
  log(`stopping (${reason})`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}

process.on('SIGINT', () => shutdown('SIGINT'));
process.on('SIGTERM', () => shutdown('SIGTERM'));
if (!opts['no-stdin-watch']) {
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.on('close', () => shutdown('stdin closed'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.on('data', () => {}); // discard anything written to us
  process.stdin.resume();
}

log(`issuer ${issuer} (signing kid ${signingKey.kid}; users: ${USERS.map((u) => u.username).join(', ')}; `
  + `clients: ${CLIENTS.map((c) => c.client_id).join(', ')}; device interval ${deviceInterval}s`
  + `${opts['test-controls'] ? '; TEST CONTROLS ENABLED' : ''}${opts['no-stdin-watch'] ? '' : '; exits when stdin closes'})`);
process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
