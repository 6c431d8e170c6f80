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

import {
  Browser, Refused, Unexpected, commandLine, finisher, formAction, hiddenInputs, pageError, run,
} from './browser-lib.mjs';

const USAGE = 'usage: node approve.mjs --issuer http://127.0.0.1:PORT --user NAME [--password P] [--deny] USER_CODE';
const finish = finisher('approve');
const { values, positional: userCode, username, password } = commandLine(finish, USAGE, 'USER_CODE', { issuer: { type: 'string' } });

let issuer;
try {
  issuer = new URL(values.issuer.replace(/\/+$/, '/'));
} catch {
  finish(2, `invalid --issuer ${JSON.stringify(values.issuer)}`);
}

function debug(msg) {
  if (values.verbose) process.stderr.write(`approve: ${msg}\n`);
}

const browser = new Browser(issuer.origin, { debug });
const request = (method, target, form) => browser.request(method, target, form, { base: issuer });

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

run(main, finish);
