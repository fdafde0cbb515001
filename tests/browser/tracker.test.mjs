// The tracker (public/t.js) in headless Chromium, on a page of another
// origin, as a customer's site would include it. tests/browser.rs passes
// APP_URL and PUBLISHABLE_KEY, then drains and checks Postgres for what
// this test sent; OUT_FILE receives the ids of the events sent, with the
// URL and referrer each carried. The tracker sends through a relay
// (data-api) that records what arrives.

import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { after, before, test } from 'node:test';

import { minify } from 'terser';

import { launch } from './chromium.mjs';

const { APP_URL, PUBLISHABLE_KEY, OUT_FILE } = process.env;
let browser, site, siteUrl, relay, collectUrl;
const sent = [];
// What reached collect, as the relay saw it: a beacon sent while a page
// unloads never shows up in Playwright's request events, so the relay is
// where the test sees everything the tracker sent.
const received = [];

// A secret key, as a careless site might paste into its page.
const SECRET_KEY = 'sk_live_0123456789abcdef0123456789abcdef';

// A customer's site: any path answers the same page carrying the tracker.
function page(attributes = '', key = PUBLISHABLE_KEY) {
  return `<!doctype html><html><head><title>Shop</title>
<script src="${APP_URL}/t.js" data-key="${key}" data-api="${collectUrl}" ${attributes}></script>
</head><body><a href="/next">next</a></body></html>`;
}

// Passes collect requests on to the app unchanged and records them: a third
// origin, so the tracker's requests are cross-origin as on a real site.
async function forward(request, response) {
  const chunks = [];
  for await (const chunk of request) chunks.push(chunk);
  const body = Buffer.concat(chunks).toString();
  const headers = {};
  for (const name of ['content-type', 'origin', 'user-agent', 'access-control-request-method',
    'access-control-request-headers']) {
    if (request.headers[name]) headers[name] = request.headers[name];
  }
  const upstream = await fetch(`${APP_URL}/api/collect`, {
    method: request.method, headers, body: request.method === 'POST' ? body : undefined,
  });
  const answer = await upstream.text();
  if (request.method === 'POST') {
    received.push({ mode: request.headers['sec-fetch-mode'], status: upstream.status,
      events: JSON.parse(body).batch, answer: JSON.parse(answer) });
  }
  const out = {};
  upstream.headers.forEach((value, name) => {
    if (name.startsWith('access-control-') || name === 'content-type') out[name] = value;
  });
  response.writeHead(upstream.status, out);
  response.end(answer);
}

async function listen(server) {
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${server.address().port}`;
}

// Headless Chromium says so in its user agent, and collect drops bots; the
// test browses as the desktop Chrome a visitor would use.
const VISITOR = 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36';

before(async () => {
  browser = await launch({ userAgent: VISITOR });
  relay = createServer((request, response) => {
    forward(request, response).catch((error) => {
      response.writeHead(502);
      response.end(String(error));
    });
  });
  collectUrl = `${await listen(relay)}/collect`;
  site = createServer((request, response) => {
    const dnt = request.url.startsWith('/dnt');
    const key = request.url.startsWith('/secret-key') ? SECRET_KEY : PUBLISHABLE_KEY;
    response.writeHead(200, { 'content-type': 'text/html' });
    response.end(page(dnt ? 'data-dnt="respect"' : '', key));
  });
  siteUrl = await listen(site);
});
after(async () => {
  await browser?.close();
  site?.close();
  relay?.close();
  writeFileSync(OUT_FILE, JSON.stringify(sent));
});

const visit = () => browser.newContext();

// What tests/browser.rs compares with the row stored for each event.
const record = (e) => ({ id: e.id, name: e.name, url: e.url, referrer: e.referrer ?? null,
  session_id: e.session_id });

const settle = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

test('is under 3 KB minified', async () => {
  const source = readFileSync(new URL('../../public/t.js', import.meta.url), 'utf8');
  const { code } = await minify(source, { compress: true, mangle: true });
  assert.ok(code.length < 3072, `t.js is ${code.length} bytes minified`);
});

test('sends page views, history navigation and custom events, with a beacon on pagehide', async () => {
  const context = await visit();
  const tab = await context.newPage();
  const before = received.length;

  // The first page view goes out on the timer, through fetch; the wait is
  // set up first, since a slow machine may load the page past the timer.
  const first = tab.waitForResponse((r) => r.url() === collectUrl && r.request().method() === 'POST');
  await tab.goto(`${siteUrl}/landing?utm_source=newsletter`);
  await tab.waitForFunction(() => window.tollgate);
  await first;

  await tab.evaluate(() => history.pushState({}, '', '/app/settings'));
  await tab.evaluate(() => window.tollgate.track('signup', { plan: 'pro' }));
  // Leaving the page sends what is left with sendBeacon.
  await tab.goto('about:blank');
  for (let i = 0; i < 150 && received.length < before + 2; i++) await settle(100);
  await context.close();

  const requests = received.slice(before);
  const events = requests.flatMap((entry) => entry.events);
  assert.deepEqual(events.map((e) => e.name), ['pageview', 'pageview', 'signup']);
  assert.equal(events[0].url, `${siteUrl}/landing?utm_source=newsletter`);
  assert.equal(events[1].url, `${siteUrl}/app/settings`);
  assert.deepEqual(events[2].properties, { plan: 'pro' });
  assert.deepEqual(requests.map((r) => r.mode), ['cors', 'no-cors'],
    'the first batch went by fetch, the last as a beacon');
  assert.deepEqual(requests.map((r) => r.status), [202, 202]);
  assert.deepEqual(requests.map((r) => r.answer), [{ accepted: 1, rejected: [] }, { accepted: 2, rejected: [] }]);
  sent.push(...events.map(record));
});

test('keeps a visit\'s session id until 30 minutes pass without an event', async () => {
  const context = await visit();
  const tab = await context.newPage();
  const before = received.length;
  // Date.now() as the page sees it; timers keep running. The visit is set
  // in the past so that every timestamp is one collect accepts.
  const start = Date.now() - 70 * 60_000;
  const at = (minutes) => tab.clock.setFixedTime(start + minutes * 60_000);
  await at(0);
  const first = tab.waitForResponse((r) => r.url() === collectUrl && r.request().method() === 'POST');
  await tab.goto(`${siteUrl}/idle`);
  await tab.waitForFunction(() => window.tollgate);
  await first;
  // 29 minutes later: the same visit. Another 31 minutes: a new one.
  await at(29);
  await tab.evaluate(() => window.tollgate.track('still-here'));
  await at(60);
  await tab.evaluate(() => window.tollgate.track('back-later'));
  await tab.goto('about:blank');
  for (let i = 0; i < 150 && events().length < 3; i++) await settle(100);
  await context.close();

  function events() {
    return received.slice(before).flatMap((entry) => entry.events);
  }
  const sentHere = events();
  assert.deepEqual(sentHere.map((e) => e.name), ['pageview', 'still-here', 'back-later']);
  const [a, b, c] = sentHere.map((e) => e.session_id);
  assert.ok(a, 'a session id is sent');
  assert.equal(b, a, 'within 30 minutes: the same visit');
  assert.notEqual(c, a, 'after 30 idle minutes: a new visit');
  assert.ok(received.slice(before).every((r) => r.status === 202), JSON.stringify(received.slice(before)));
  sent.push(...sentHere.map(record));
});

test('retries with backoff when collect fails, without duplicates', async () => {
  const context = await visit();
  const tab = await context.newPage();
  const attempts = [];
  await tab.route(collectUrl, (route) => {
    if (route.request().method() !== 'POST') return route.continue();
    attempts.push(JSON.parse(route.request().postData()).batch);
    if (attempts.length <= 2) {
      return route.fulfill({ status: 503, body: '{}', headers: { 'access-control-allow-origin': '*' } });
    }
    return route.continue();
  });
  const before = received.length;
  const delivered202 = tab.waitForResponse((r) => r.url() === collectUrl && r.status() === 202,
    { timeout: 20_000 });
  await tab.goto(`${siteUrl}/retry`);
  await delivered202;
  await context.close();
  assert.equal(attempts.length, 3, 'sent three times: two failures, then success');
  assert.equal(new Set(attempts.map((batch) => batch[0].id)).size, 1,
    'the retries resend the same event id');
  const delivered = received.slice(before).flatMap((entry) => entry.events);
  assert.equal(delivered.length, 1);
  sent.push(...delivered.map(record));
});

test('sends nothing under Do Not Track when told to respect it', async () => {
  const context = await visit();
  await context.addInitScript(() => Object.defineProperty(Navigator.prototype, 'doNotTrack', { get: () => '1' }));
  const tab = await context.newPage();
  const before = received.length;
  await tab.goto(`${siteUrl}/dnt`);
  await tab.waitForFunction(() => window.tollgate);
  await tab.evaluate(() => window.tollgate.track('ignored'));
  await tab.goto('about:blank');
  await settle(1500);
  await context.close();
  assert.equal(received.length, before);
});

test('sends page URLs and referrers without the fragment and secret parameters', async () => {
  const context = await visit();
  const tab = await context.newPage();
  const before = received.length;
  const first = tab.waitForResponse((r) => r.url() === collectUrl && r.request().method() === 'POST');
  // A password-reset link: the token (any case) and the fragment must stay
  // in the browser; the campaign and the rest of the query are analytics.
  await tab.goto(`${siteUrl}/reset?token=s3cr3t&utm_source=x&page=2&Access_Token=s3cr3t#frag`);
  await tab.waitForFunction(() => window.tollgate);
  await first;
  // A new fragment alone is the same page once the fragment is dropped.
  await tab.evaluate(() => history.pushState({}, '', `${location.pathname}${location.search}#other`));
  // The next page's referrer is the reset link itself (same origin, so the
  // browser gives the whole URL but the fragment), secrets included.
  await Promise.all([tab.waitForURL(`${siteUrl}/next`), tab.click('a')]);
  await tab.waitForFunction(() => window.tollgate);
  await tab.goto('about:blank');
  for (let i = 0; i < 150 && received.length < before + 2; i++) await settle(100);
  await context.close();

  const requests = received.slice(before);
  const events = requests.flatMap((entry) => entry.events);
  const scrubbed = `${siteUrl}/reset?utm_source=x&page=2`;
  assert.deepEqual(events.map((e) => [e.name, e.url, e.referrer]), [
    ['pageview', scrubbed, undefined],
    ['pageview', `${siteUrl}/next`, scrubbed],
  ]);
  const everything = JSON.stringify(requests);
  assert.ok(!everything.includes('s3cr3t'), everything);
  assert.ok(!everything.includes('#'), everything);
  assert.deepEqual(requests.map((r) => r.status), [202, 202]);
  sent.push(...events.map(record));
});

test('refuses to run with a secret key: sends nothing and says why in the console', async () => {
  const context = await visit();
  const tab = await context.newPage();
  const errors = [];
  tab.on('console', (message) => { if (message.type() === 'error') errors.push(message.text()); });
  const requests = [];
  tab.on('request', (request) => { if (request.url() === collectUrl) requests.push(request.method()); });
  const before = received.length;
  await tab.goto(`${siteUrl}/secret-key`);
  // The page's own calls keep working; they just do nothing.
  await tab.evaluate(() => window.tollgate.track('signup'));
  await tab.goto('about:blank');
  await settle(1500);
  await context.close();
  assert.deepEqual(requests, [], 'no request from the page');
  assert.equal(received.length, before, 'no beacon either');
  assert.equal(errors.length, 1, JSON.stringify(errors));
  assert.match(errors[0], /secret key \(sk_\.\.\.\)/);
  assert.match(errors[0], /nothing was sent/);
  assert.match(errors[0], /publishable key \(pk_\.\.\.\)/);
  assert.ok(!errors[0].includes(SECRET_KEY), 'the key itself is not repeated');
});
