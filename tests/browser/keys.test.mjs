// The dashboard's Keys tab (public/index.html) in headless Chromium against
// the real app, with a root key. tests/browser.rs seeds the keys and their
// requests and passes, through the environment:
//   APP_URL, ROOT_KEY (keys:read and keys:write), READ_ONLY_ROOT_KEY (keys:read),
//   KEYS (JSON: name → {id, secret, requests, successful, failed, quota}, as
//   the clients counted them), ARTIFACTS (a folder for screenshots).
// The tests run in order: the later ones revoke and rotate seeded keys.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { launch } from './chromium.mjs';

const { APP_URL, ROOT_KEY, READ_ONLY_ROOT_KEY, ARTIFACTS } = process.env;
const KEYS = JSON.parse(process.env.KEYS || '{}');
let browser;

before(async () => {
  browser = await launch();
  mkdirSync(ARTIFACTS, { recursive: true });
});
after(() => browser?.close());

/// A page on the app, watched: errors thrown in it, requests to anywhere
/// but the app (the page must work offline), and the /api/keys requests.
async function open(options = {}) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 640 }, ...options });
  const page = await context.newPage();
  const watched = { errors: [], foreign: [], calls: [] };
  page.on('pageerror', (error) => watched.errors.push(error.message));
  page.on('request', (request) => {
    if (!request.url().startsWith(APP_URL)) watched.foreign.push(request.url());
    if (request.url().includes('/api/keys')) watched.calls.push(request);
  });
  await page.goto(APP_URL);
  await page.getByRole('tab', { name: 'Keys' }).click();
  return { page, watched };
}

/// Lists the keys with a root key (and an owner filter), and waits for the answer.
async function list(page, rootKey, owner = '') {
  await page.fill('#root-key', rootKey);
  await page.fill('#owner', owner);
  await page.getByRole('button', { name: 'List keys' }).click();
  await settled(page);
}

/// Waits until the Keys message says something other than "Loading…".
const settled = (page) => page.waitForFunction(() => {
  const text = document.querySelector('#keys-message').textContent;
  return text && text !== 'Loading…';
});

/// The rows shown, as {name, id, owner, tier, status, expires, usage}.
const rows = (page) => page.$$eval('#key-rows tr[data-key]', (trs) => trs.map((tr) => {
  const cells = tr.querySelectorAll('td');
  const usage = cells[5].dataset;
  return {
    name: tr.dataset.name, id: tr.dataset.key, owner: cells[1].textContent, tier: cells[2].textContent,
    status: tr.dataset.status, expires: cells[4].textContent, figure: cells[5].querySelector('.figure')?.textContent,
    usage: usage.requests === undefined ? null : {
      requests: Number(usage.requests), successful: Number(usage.successful), failed: Number(usage.failed),
      quota: usage.quota === '' ? null : Number(usage.quota),
    },
  };
}));

const row = async (page, name) => (await rows(page)).find((r) => r.name === name);
const message = (page) => page.textContent('#keys-message');

async function collect(secret) {
  const response = await fetch(`${APP_URL}/api/collect`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${secret}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ type: 'server', name: 'signup' }),
  });
  return { status: response.status, body: await response.json() };
}

/// The root key went only into Authorization headers: never into a URL,
/// localStorage or sessionStorage.
async function assertKeptInMemory(page, watched) {
  assert.ok(watched.calls.length > 0);
  for (const request of watched.calls) {
    assert.ok(!request.url().includes('rk_'), request.url());
    assert.match(await request.headerValue('authorization'), /^Bearer rk_/);
  }
  const stored = await page.evaluate(() => JSON.stringify([{ ...localStorage }, { ...sessionStorage }]));
  assert.ok(!stored.includes('rk_'), stored);
  assert.equal(await page.evaluate(() => localStorage.length), 0);
}

test('a root key lists every key, 20 a page, with today\'s usage exactly', async () => {
  const { page, watched } = await open();
  assert.match(await page.textContent('#root-form'), /kept in this page's memory only/);
  await list(page, ROOT_KEY);
  assert.match(await message(page), /^Keys, oldest first/);

  const first = await rows(page);
  assert.equal(first.length, 20);
  assert.deepEqual(first.slice(0, 5).map((r) => r.name),
    ['acme production', 'acme staging', 'acme mobile', 'beta web', 'bulk 01']);
  assert.equal(await page.textContent('#page-label'), 'Keys 1–20');
  assert.equal(await page.isDisabled('#prev'), true);

  for (const [name, seeded] of Object.entries(KEYS)) {
    const shown = await row(page, name);
    assert.equal(shown.id, seeded.id, name);
    assert.deepEqual(shown.usage, { requests: seeded.requests, successful: seeded.successful,
      failed: seeded.failed, quota: seeded.quota }, name);
    assert.equal(shown.status, 'active', name);
  }
  const production = await row(page, 'acme production');
  assert.deepEqual([production.owner, production.tier, production.expires], ['acme', 'pro', 'never']);
  assert.equal(production.figure, `${KEYS['acme production'].successful} / 50,000`);
  assert.equal((await row(page, 'acme mobile')).figure, '0 (no daily quota)');
  const web = await row(page, 'beta web');
  assert.deepEqual([web.owner, web.tier], ['beta', 'free']);
  assert.match(web.expires, /2099/);

  // The second page holds the rest; Previous comes back to the first.
  await page.click('#next');
  await settled(page);
  assert.deepEqual((await rows(page)).map((r) => r.name), ['bulk 17', 'bulk 18', 'bulk 19', 'bulk 20']);
  assert.equal(await page.textContent('#page-label'), 'Keys 21–24');
  assert.equal(await page.isDisabled('#next'), true);
  await page.click('#prev');
  await settled(page);
  assert.deepEqual((await rows(page)).map((r) => r.name), first.map((r) => r.name));

  // A key is listed, then each key of the page read for its usage: no more.
  const gets = watched.calls.map((r) => new URL(r.url()).searchParams);
  assert.ok(gets.every((q) => q.get('id') || q.get('limit') === '20'));
  await assertKeptInMemory(page, watched);
  assert.deepEqual(watched.errors, []);
  assert.deepEqual(watched.foreign, []);
  await page.context().close();
});

test('the owner filter lists one owner\'s keys', async () => {
  const { page, watched } = await open();
  await list(page, ROOT_KEY, 'acme');
  assert.deepEqual((await rows(page)).map((r) => r.name), ['acme production', 'acme staging', 'acme mobile']);
  assert.match(await message(page), /of owner acme/);
  assert.equal(await page.isDisabled('#next'), true);
  await list(page, ROOT_KEY, 'nobody');
  assert.match(await page.textContent('#key-rows'), /No keys yet/);
  assert.deepEqual(watched.errors, []);
  await page.context().close();
});

test('a refused root key, a missing scope or a wrong key kind gets the API\'s own message', async () => {
  const { page, watched } = await open();
  await list(page, `rk_${'0'.repeat(48)}`);
  assert.equal(await page.getAttribute('#keys-message', 'class'), 'message error');
  assert.equal(await message(page), 'This root key was not accepted: no root key matches, or it was revoked.');
  assert.equal(await page.isVisible('#key-list'), false);

  await list(page, 'sk_0123');
  assert.match(await message(page), /needs a root key \(rk_…\)/);

  // A key that may read lists, but may not revoke: the dialog says why and stays open.
  await list(page, READ_ONLY_ROOT_KEY, 'acme');
  assert.equal((await rows(page)).length, 3);
  await page.getByRole('button', { name: 'Revoke acme mobile' }).click();
  await page.getByRole('button', { name: 'Revoke key' }).click();
  await page.waitForSelector('#revoke-dialog [data-error]:not(:empty)');
  assert.equal(await page.textContent('#revoke-dialog [data-error]'), 'this root key lacks the `keys:write` scope');
  assert.equal(await page.isVisible('#revoke-dialog'), true);
  await page.getByRole('button', { name: 'Cancel' }).click();
  assert.equal(await page.isVisible('#revoke-dialog'), false);
  assert.equal((await collect(KEYS['acme mobile'].secret)).status, 202, 'still works');
  assert.deepEqual(watched.errors, []);
  await page.context().close();
});

test('revoking asks first, and then collect refuses the key', async () => {
  const { page, watched } = await open();
  await list(page, ROOT_KEY, 'acme');
  const revoke = page.getByRole('button', { name: 'Revoke acme staging' });

  // Cancelling changes nothing.
  await revoke.click();
  assert.match(await page.textContent('#revoke-dialog'), /Revoke acme staging\?/);
  await page.getByRole('button', { name: 'Cancel' }).click();
  assert.equal(watched.calls.filter((r) => r.method() === 'DELETE').length, 0);
  assert.equal((await row(page, 'acme staging')).status, 'active');

  await revoke.click();
  await page.getByRole('button', { name: 'Revoke key' }).click();
  await page.waitForFunction(() => /^Revoked/.test(document.querySelector('#keys-message').textContent));
  assert.equal(await message(page), 'Revoked acme staging: requests with it are refused from now on.');
  assert.equal(await page.isVisible('#revoke-dialog'), false);
  assert.equal((await row(page, 'acme staging')).status, 'revoked');
  assert.equal(await page.getByRole('button', { name: 'Revoke acme staging' }).count(), 0);

  const refused = await collect(KEYS['acme staging'].secret);
  assert.equal(refused.status, 401);
  assert.equal(refused.body.error.code, 'revoked_key');
  assert.deepEqual(watched.errors, []);
  await page.context().close();
});

test('rotating shows the new secret once, with a copy button, and the new secret works', async () => {
  const { page, watched } = await open({ permissions: ['clipboard-read', 'clipboard-write'] });
  await list(page, ROOT_KEY, 'acme');
  const old = KEYS['acme production'].secret;

  await page.getByRole('button', { name: 'Rotate acme production' }).click();
  await page.fill('#overlap', '60');
  await page.getByRole('button', { name: 'Rotate key' }).click();
  await page.waitForFunction(() => document.querySelector('#new-secret').value);
  const secret = await page.inputValue('#new-secret');
  assert.match(secret, /^sk_[0-9a-f]{48}$/);
  assert.notEqual(secret, old);
  assert.match(await page.inputValue('#new-publishable'), /^pk_/);
  assert.match(await page.textContent('#rotate-dialog .warning'), /shown only this once/);
  assert.match(await page.textContent('#previous-until'), /keep working until/);
  const sent = watched.calls.find((r) => r.method() === 'POST');
  assert.equal(new URL(sent.url()).searchParams.get('action'), 'rotate');
  assert.deepEqual(sent.postDataJSON(), { overlap_seconds: 3600 });

  await page.getByRole('button', { name: 'Copy' }).click();
  await page.waitForFunction(() => document.querySelector('#copy-status').textContent);
  assert.equal(await page.textContent('#copy-status'), 'The secret key is on the clipboard.');
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), secret);
  await settled(page);
  await page.screenshot({ path: join(ARTIFACTS, 'keys-rotate.png'), clip: { x: 0, y: 0, width: 1200, height: 540 } });

  const works = await collect(secret);
  assert.equal(works.status, 202, `the new secret works: ${JSON.stringify(works.body)}`);
  const overlap = await collect(old);
  assert.equal(overlap.status, 202, `the old secret works during the overlap: ${JSON.stringify(overlap.body)}`);

  // Once closed, the secret is gone from the page.
  await page.getByRole('button', { name: 'Done' }).click();
  assert.equal(await page.isVisible('#rotate-dialog'), false);
  assert.ok(!(await page.content()).includes(secret));
  assert.equal(await page.inputValue('#new-secret'), '');
  assert.match((await page.textContent('tr[data-name="acme production"]')), /old halves work until/);

  await page.screenshot({ path: join(ARTIFACTS, 'keys-list.png'), clip: { x: 0, y: 0, width: 1200, height: 490 } });
  await assertKeptInMemory(page, watched);
  assert.deepEqual(watched.errors, []);
  assert.deepEqual(watched.foreign, []);
  await page.context().close();
});

test('the Keys tab fits a phone screen, its table scrolling inside', async () => {
  const { page } = await open({ viewport: { width: 390, height: 844 }, isMobile: true });
  await list(page, ROOT_KEY, 'acme');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than the phone`);
  await page.context().close();
});
