// The dashboard (public/index.html) in headless Chromium against the real
// app. tests/browser.rs seeds the data and passes, through the environment:
//   APP_URL, SECRET_KEY (with data), EMPTY_KEY (a key with none),
//   EXPECTED (JSON of the seeded numbers), ARTIFACTS (a folder for screenshots).

import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { launch } from './chromium.mjs';

const { APP_URL, SECRET_KEY, EMPTY_KEY, ARTIFACTS } = process.env;
const EXPECTED = JSON.parse(process.env.EXPECTED || '{}');
let browser;

before(async () => {
  browser = await launch();
  mkdirSync(ARTIFACTS, { recursive: true });
});
after(() => browser?.close());

/// The bars of a chart as {label: value}, summed over series when `series` is not given.
async function bars(page, chart, series) {
  return page.$$eval(`[data-chart="${chart}"] [data-value]`, (rects, series) => {
    const out = {};
    for (const rect of rects) {
      if (series && rect.dataset.series !== series) continue;
      out[rect.dataset.label] = (out[rect.dataset.label] || 0) + Number(rect.dataset.value);
    }
    return out;
  }, series);
}

const sum = (values) => Object.values(values).reduce((a, b) => a + b, 0);

/// The records of an RFC 4180 text, each as {column: cell}, and its header.
function csv(text) {
  const rows = [];
  let row = [], field = '', quoted = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (quoted) {
      if (ch === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (ch === '"') quoted = false;
      else field += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === ',') { row.push(field); field = ''; }
    else if (ch === '\r' && text[i + 1] === '\n') { row.push(field); rows.push(row); row = []; field = ''; i++; }
    else field += ch;
  }
  assert.equal(field + row.join(''), '', 'the last line ends with CRLF');
  const [header, ...body] = rows;
  return { header, records: body.map((cells) => Object.fromEntries(header.map((name, i) => [name, cells[i]]))) };
}

/// {label: number} of a CSV section's rows.
const column = (records, section, label, value) => Object.fromEntries(records
  .filter((r) => r.section === section).map((r) => [r[label], Number(r[value])]));

test('the charts show the seeded numbers', async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const errors = [];
  page.on('pageerror', (error) => errors.push(error.message));
  // Nothing may come from anywhere but the app: the page works offline.
  const foreign = [];
  page.on('request', (request) => {
    if (!request.url().startsWith(APP_URL)) foreign.push(request.url());
  });

  await page.goto(`${APP_URL}/#key=${SECRET_KEY}`);
  await page.waitForSelector('svg[data-chart="requests"]');

  const successful = await bars(page, 'requests', 'successful');
  const failed = await bars(page, 'requests', 'failed');
  assert.equal(Object.keys(successful).length, 30, 'one bar per day of the range');
  assert.equal(sum(successful), EXPECTED.successful);
  assert.equal(sum(failed), EXPECTED.failed);
  assert.equal(successful[EXPECTED.today], EXPECTED.successful, 'all of it today');

  assert.deepEqual(await bars(page, 'uploads'), EXPECTED.uploads);
  assert.deepEqual(await bars(page, 'bytes'), EXPECTED.bytes);
  assert.deepEqual(await bars(page, 'file-types'), EXPECTED.file_types);
  assert.equal(sum(await bars(page, 'events')), EXPECTED.events);
  assert.deepEqual(await bars(page, 'pages'), EXPECTED.pages);
  assert.deepEqual(await bars(page, 'referrers'), EXPECTED.referrers);

  const card = (name) => page.textContent(`[data-card="${name}"] .value`);
  assert.equal(await card('requests'), EXPECTED.requests.toLocaleString('en-US'));
  assert.equal(await card('events'), String(EXPECTED.events));

  // The web-analytics figures: the seeded ones, and each as the API
  // computes it (tests/analytics.rs checks the API's arithmetic).
  const start = await page.$eval('[data-chart="events"] [data-value]', (bar) => bar.dataset.label);
  const response = await fetch(`${APP_URL}/api/analytics?view=events&start=${start}&end=${EXPECTED.today}`,
    { headers: { Authorization: `Bearer ${SECRET_KEY}` } });
  const events = await response.json();
  assert.equal(events.pageviews, EXPECTED.pageviews);
  assert.equal(await card('pageviews'), String(EXPECTED.pageviews));
  assert.equal(await card('visitors'), String(events.visitors));
  assert.equal(await card('visits'), String(events.visits));
  assert.ok(events.visits >= 3, JSON.stringify(events));
  assert.equal(await card('views-per-visit'), events.views_per_visit.toFixed(2));
  assert.equal(await card('bounce-rate'), `${(100 * events.bounce_rate).toFixed(1)}%`);
  assert.match(await card('visit-duration'), /^(\d+m )?\d+s$/);
  // Nothing before the range: no change to show, and no made-up one.
  const changes = await page.$$eval('[data-change]', (els) => els.map((el) => el.dataset.change));
  assert.deepEqual(changes, Array(6).fill('none'));
  assert.deepEqual(await bars(page, 'entry-pages'), EXPECTED.entry_pages);
  assert.deepEqual(await bars(page, 'exit-pages'), EXPECTED.exit_pages);
  assert.equal(sum(await bars(page, 'visits')), events.visits);
  const rows = (table) => page.$$eval(`table[data-table="${table}"] tr[data-label]`, (trs) =>
    Object.fromEntries(trs.map((tr) => [tr.dataset.label, Number(tr.dataset.value)])));
  assert.deepEqual(await rows('utm-sources'), EXPECTED.utm_sources);
  assert.deepEqual(await rows('utm-mediums'), EXPECTED.utm_mediums);
  assert.deepEqual(await rows('utm-campaigns'), {});
  assert.match(await page.textContent('[data-table="utm-campaigns"]'), /Nothing yet/);
  assert.equal(await page.$('[data-queue-status]'), null, 'the deployment-wide queue is for operators');

  await page.screenshot({ path: join(ARTIFACTS, 'dashboard.png'), fullPage: true });
  assert.deepEqual(errors, []);
  assert.deepEqual(foreign, []);
  await page.close();
});

test('each view downloads as CSV with the figures shown, the key never in a URL', async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const errors = [];
  page.on('pageerror', (error) => errors.push(error.message));
  const fetched = [];
  page.on('request', (request) => {
    if (request.url().includes('format=csv')) fetched.push(request);
  });
  await page.goto(`${APP_URL}/#key=${SECRET_KEY}`);
  await page.waitForSelector('svg[data-chart="requests"]');

  const files = {};
  for (const [view, label] of [['daily', 'usage per day'], ['providers', 'providers'],
    ['file-types', 'file types'], ['events', 'events']]) {
    // The button is found by its accessible name, as a screen reader would.
    const [download] = await Promise.all([page.waitForEvent('download'),
      page.getByRole('button', { name: `Download CSV: ${label}` }).click()]);
    assert.equal(download.suggestedFilename(), `tollgate-${view}.csv`);
    files[view] = csv(readFileSync(await download.path(), 'utf8'));
    assert.equal(files[view].header[0], 'section', view);
    assert.deepEqual(files[view].records.filter((r) => r.section === 'summary').map((r) => r.view), [view]);
  }

  // The usage per day: the day rows are the bars, the range the one shown.
  const daily = files.daily;
  for (const name of ['day', 'requests', 'successful', 'failed', 'files', 'bytes']) {
    assert.ok(daily.header.includes(name), `${name} in ${daily.header}`);
  }
  assert.deepEqual(column(daily.records, 'days', 'day', 'successful'), await bars(page, 'requests', 'successful'));
  assert.deepEqual(column(daily.records, 'days', 'day', 'failed'), await bars(page, 'requests', 'failed'));
  const today = daily.records.find((r) => r.day === EXPECTED.today);
  assert.equal(Number(today.requests), EXPECTED.requests, 'the request made after the sync too');

  assert.deepEqual(column(files.providers.records, 'providers', 'provider', 'uploads'), await bars(page, 'uploads'));
  assert.deepEqual(column(files.providers.records, 'providers', 'provider', 'bytes'), EXPECTED.bytes);
  assert.deepEqual(column(files['file-types'].records, 'file_types', 'content_type', 'files'),
    await bars(page, 'file-types'));

  const events = files.events.records;
  const summary = events.find((r) => r.section === 'summary');
  assert.equal(summary.events, await page.textContent('[data-card="events"] .value'));
  assert.equal(Number(summary.pageviews), EXPECTED.pageviews);
  assert.equal(summary.start, Object.keys(await bars(page, 'events'))[0], 'the range on screen');
  assert.deepEqual(column(events, 'days', 'day', 'events'), await bars(page, 'events'));
  assert.deepEqual(column(events, 'top_paths', 'value', 'events'), await bars(page, 'pages'));
  assert.deepEqual(column(events, 'entry_pages', 'value', 'visits'), EXPECTED.entry_pages);

  // Each CSV was fetched with the key in its header, as every view is.
  assert.equal(fetched.length, 4);
  for (const request of fetched) {
    assert.ok(!request.url().includes(SECRET_KEY), request.url());
    assert.equal(await request.headerValue('authorization'), `Bearer ${SECRET_KEY}`);
  }
  await page.getByRole('button', { name: 'Download CSV: events' }).focus();
  await page.screenshot({ path: join(ARTIFACTS, 'dashboard-csv.png') });
  assert.deepEqual(errors, []);
  await page.close();
});

test('the page fits a phone screen', async () => {
  const page = await browser.newPage({ viewport: { width: 390, height: 844 }, isMobile: true });
  await page.goto(`${APP_URL}/#key=${SECRET_KEY}`);
  await page.waitForSelector('svg[data-chart="requests"]');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than the phone`);
  await page.screenshot({ path: join(ARTIFACTS, 'dashboard-phone.png'), fullPage: true });
  await page.close();
});

test('a bad key gets a clear message and no charts', async () => {
  const page = await browser.newPage();
  await page.goto(`${APP_URL}/#key=sk_${'0'.repeat(48)}`);
  await page.waitForSelector('#message.error');
  assert.match(await page.textContent('#message'), /not accepted: no API key matches/);
  assert.equal(await page.isVisible('#dashboard'), false);

  await page.fill('#key', 'sk_not_a_real_key');
  await page.click('button[type=submit]');
  await page.waitForFunction(() => /48 hex digits/.test(document.querySelector('#message').textContent));

  await page.fill('#key', 'pk_publishable');
  await page.click('button[type=submit]');
  assert.match(await page.textContent('#message'), /needs a secret key/);
  await page.close();
});

test('a key without data says so', async () => {
  const page = await browser.newPage();
  await page.goto(`${APP_URL}/#key=${EMPTY_KEY}`);
  await page.waitForSelector('svg[data-chart="requests"]');
  assert.match(await page.textContent('#message'), /No data yet/);
  assert.equal(await page.textContent('[data-card="bounce-rate"] .value'), '–', 'no visits, no rate');
  assert.equal(sum(await bars(page, 'requests')), 0);
  await page.close();
});
