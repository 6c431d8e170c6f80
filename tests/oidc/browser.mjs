#!/usr/bin/env node
// A headless "browser" for the authorization-code flow of the test OpenID
// provider (server.mjs): opens an authorization URL, signs in at the login
// form, and delivers the final redirect to the client's loopback callback.
//
//   node browser.mjs --user bob [--password P] [--deny] [--verbose] AUTHORIZE_URL
//
// AUTHORIZE_URL is an /auth URL of the provider (its origin is taken as the
// provider's origin). Redirects are followed with one cookie jar until one
// leaves the provider's origin; that must be the request's redirect_uri. It
// is then requested once with GET (redirects from it are not followed).
//
// Exit status: 0 the callback answered 2xx (with --deny: the access_denied
// redirect was delivered and the callback answered, whatever its status);
// 1 the provider refused the login (wrong password or unknown user);
// 2 bad usage; 3 unexpected page, provider error or network error before the
// callback; 4 the callback answered non-2xx or could not be reached.
// Prints one line on stderr. Never prints the password, the authorization
// code, the state or any token: of the callback only its host:port, path and
// HTTP status.

import {
  Browser, Refused, Unexpected, commandLine, finisher, loginFormAction, pageError, run,
} from './browser-lib.mjs';

const USAGE = 'usage: node browser.mjs --user NAME [--password P] [--deny] [--verbose] AUTHORIZE_URL';
const CALLBACK_TIMEOUT_MS = 30_000;

class CallbackFailed extends Error {}

const finish = finisher('browser');
const { values, positional, username, password } = commandLine(finish, USAGE, 'AUTHORIZE_URL');

let authorizeUrl;
try {
  authorizeUrl = new URL(positional);
  if (authorizeUrl.protocol !== 'http:' && authorizeUrl.protocol !== 'https:') throw new Error('not http(s)');
} catch {
  finish(2, 'AUTHORIZE_URL must be an absolute http(s) URL');
}

// Where the provider is expected to send the browser back to.
let expectedCallback;
const redirectUriParam = authorizeUrl.searchParams.get('redirect_uri');
if (redirectUriParam) {
  try {
    expectedCallback = new URL(redirectUriParam);
  } catch {
    finish(2, 'the redirect_uri in AUTHORIZE_URL is not a valid URL');
  }
  if (expectedCallback.origin === authorizeUrl.origin) {
    finish(2, `redirect_uri points at the provider's own origin ${authorizeUrl.origin}`);
  }
}


function debug(msg) {
  if (values.verbose) process.stderr.write(`browser: ${msg}\n`);
}

const browser = new Browser(authorizeUrl.origin, { debug });
const follow = (method, target, form) => browser.request(method, target, form, { offOrigin: 'return' });

function describe(page) {
  const err = pageError(page.text);
  return err ? `${err.message} (${err.kind})` : `HTTP ${page.status} at ${page.url.pathname}`;
}

// ------------------------------------------------------------------- flow --

async function main() {
  // 1. The authorization request; the provider redirects to our login page.
  let step = await follow('GET', authorizeUrl.href);

  // 2. Sign in (or cancel) at /interaction/<uid>. Consent is automatic for
  //    the first-party clients, so the next stop should be the callback.
  let action = step.redirect ? undefined : loginFormAction(step);
  if (action) {
    if (values.deny) {
      step = await follow('POST', new URL(action, step.url).href, { username: username ?? '', password: '', abort: 'yes' });
    } else {
      step = await follow('POST', new URL(action, step.url).href, { username, password });
      if (!step.redirect && loginFormAction(step)) {
        const err = pageError(step.text);
        throw new Refused(`login as ${username} failed: ${err ? err.message : 'login form shown again'}`);
      }
    }
  } else if (!step.redirect) {
    throw new Unexpected(`no login form after GET ${authorizeUrl.pathname}: ${describe(step)}`);
  } else {
    debug('no login form was shown');
  }
  if (!step.redirect) {
    throw new Unexpected(`the provider did not redirect back to the client: ${describe(step)}`);
  }

  // 3. The redirect that leaves the provider must be the redirect_uri.
  const callback = step.redirect;
  const where = `${callback.host}${callback.pathname}`;
  if (expectedCallback
      && (callback.origin !== expectedCallback.origin || callback.pathname !== expectedCallback.pathname)) {
    throw new Unexpected(`redirected to ${callback.origin}${callback.pathname}, not to the redirect_uri ${expectedCallback.origin}${expectedCallback.pathname}`);
  }
  const params = callback.searchParams;
  const error = params.get('error');
  debug(`redirect to callback ${where} with parameters ${[...new Set(params.keys())].join(', ') || '(none)'}`);

  // 4. Deliver it, as a browser would, and report what the callback said.
  let res;
  try {
    res = await browser.fetchOnce('GET', callback, undefined, { timeoutMs: CALLBACK_TIMEOUT_MS });
    await res.arrayBuffer();
  } catch (err) {
    throw new CallbackFailed(`callback ${where} failed: ${err?.message || err}`);
  }
  const answered = `callback ${where} answered HTTP ${res.status}`;

  if (values.deny) {
    if (error === 'access_denied') return `denied the sign-in; ${answered}`;
    throw new Unexpected(`expected error=access_denied on the callback, got ${error ? `error=${error}` : 'no error'}; ${answered}`);
  }
  if (error) throw new Unexpected(`the provider sent error=${error} to the callback; ${answered}`);
  if (!params.get('code')) throw new Unexpected(`the redirect to the callback carried no code; ${answered}`);
  if (res.status < 200 || res.status > 299) throw new CallbackFailed(`signed in as ${username}, but ${answered}`);
  return `signed in as ${username}; ${answered}`;
}

run(main, finish, [[CallbackFailed, 4]]);
