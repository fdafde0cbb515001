// The tollgate dashboard: reads /api/analytics with a secret key and draws
// the numbers as plain SVG, with no library and nothing fetched from
// elsewhere, so it works offline. (The deployment's queue status is for
// operators, behind the cron secret: `tollgate` and /api/cron/queue-status.)
// Its Keys tab lists, revokes and rotates API keys through /api/keys with a
// root key.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["var(--a)", "var(--b)", "var(--c)", "var(--ok)", "var(--bad)"];

// ---- Formatting --------------------------------------------------------------

const number = (n) => Number(n || 0).toLocaleString("en-US");
function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  n = Number(n || 0);
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}
const count = (n, noun) => `${number(n)} ${noun}${n === 1 ? "" : "s"}`;
const shortDay = (day) => day.slice(5);
const percent = (fraction) => (fraction === null ? "–" : `${(100 * fraction).toFixed(1)}%`);
const decimal = (n) => (n === null ? "–" : n.toFixed(2));
function duration(seconds) {
  if (seconds === null) return "–";
  const s = Math.round(seconds);
  return s < 60 ? `${s}s` : `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
}
// A change against the previous period, as the API gives it: relative for
// counts and means, in points for the bounce rate (where up is worse).
// Null when there is nothing to compare with.
function change(value, bounce = false) {
  if (value === null || value === undefined) return { text: "no previous data", trend: "none", tone: "" };
  const shown = bounce ? `${(100 * Math.abs(value)).toFixed(1)} pts` : `${Math.round(100 * Math.abs(value))}%`;
  const trend = value > 0 ? "up" : value < 0 ? "down" : "flat";
  const tone = trend === "flat" ? "" : (trend === "up") !== bounce ? "better" : "worse";
  return { text: `${trend === "up" ? "▲" : trend === "down" ? "▼" : "="} ${shown}`, trend, tone };
}
const when = (at) => (at ? new Date(at).toLocaleString() : "never");

function element(tag, attrs, text) {
  const el = tag.includes(":") || ["svg", "rect", "text", "g", "line", "title"].includes(tag)
    ? document.createElementNS(SVG, tag) : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, value);
  if (text !== undefined) el.textContent = text;
  return el;
}

// ---- Charts ------------------------------------------------------------------

// Vertical bars over days. `series` is [{name, values}], stacked in order;
// every bar carries data-series, data-label and data-value for tests.
function columns(container, name, labels, series, format = number) {
  container.replaceChildren();
  const total = labels.map((_, i) => series.reduce((sum, s) => sum + s.values[i], 0));
  const max = Math.max(1, ...total);
  const width = 420, height = 170, left = 36, bottom = 20;
  const step = (width - left) / Math.max(1, labels.length);
  const svg = element("svg", { viewBox: `0 0 ${width} ${height}`, "data-chart": name, role: "img",
    "aria-label": name });
  for (const fraction of [0, 0.5, 1]) {
    const y = height - bottom - fraction * (height - bottom - 8);
    svg.append(element("line", { x1: left, x2: width, y1: y, y2: y, stroke: "#e4e7ec" }));
    svg.append(element("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, format(Math.round(max * fraction))));
  }
  labels.forEach((label, i) => {
    let base = height - bottom;
    series.forEach((s, k) => {
      const h = (s.values[i] / max) * (height - bottom - 8);
      base -= h;
      const bar = element("rect", { x: left + i * step + step * 0.15, y: base, width: step * 0.7,
        height: h, fill: COLORS[k % COLORS.length], "data-series": s.name, "data-label": label,
        "data-value": s.values[i] });
      bar.append(element("title", {}, `${label} ${s.name}: ${format(s.values[i])}`));
      svg.append(bar);
    });
    const every = Math.ceil(labels.length / 8);
    if (i % every === 0) {
      svg.append(element("text", { x: left + i * step + step / 2, y: height - 5, "text-anchor": "middle" },
        shortDay(label)));
    }
  });
  container.append(svg);
  if (series.length > 1) {
    const legend = element("div", { class: "legend" });
    series.forEach((s, k) => {
      legend.append(element("i", { style: `background:${COLORS[k % COLORS.length]}` }), s.name);
    });
    container.append(legend);
  }
  if (total.every((n) => n === 0)) container.append(element("div", { class: "empty" }, "Nothing in this range yet."));
}

// Horizontal bars for a ranking: [{label, value}], as HTML so that the
// labels stay readable at any width.
function ranking(container, name, items, format = number) {
  container.replaceChildren();
  const list = element("div", { class: "ranking", "data-chart": name });
  if (!items.length) list.append(element("div", { class: "empty" }, "Nothing yet."));
  const max = Math.max(1, ...items.map((item) => item.value));
  for (const item of items) {
    const row = element("div", { class: "rank" });
    const bar = element("div", { class: "bar" });
    bar.append(element("i", { style: `width:${Math.max(1, (100 * item.value) / max)}%`,
      "data-label": item.label, "data-value": item.value }));
    row.append(element("span", { class: "name", title: item.label }, item.label), bar,
      element("span", { class: "count" }, format(item.value)));
    list.append(row);
  }
  container.append(list);
}

// A table of a ranking, for the breakdowns read as lists (UTM tags).
function table(container, name, items, heading) {
  container.replaceChildren();
  const t = element("table", { "data-table": name });
  const head = element("tr");
  head.append(element("th", {}, heading), element("th", {}, "Events"));
  t.append(head);
  if (!items.length) {
    const row = element("tr");
    row.append(element("td", { class: "empty", colspan: 2 }, "Nothing yet."));
    t.append(row);
  }
  for (const item of items) {
    const row = element("tr", { "data-label": item.label, "data-value": item.value });
    row.append(element("td", {}, item.label), element("td", {}, number(item.value)));
    t.append(row);
  }
  container.append(t);
}

// ---- Data --------------------------------------------------------------------

class KeyRefused extends Error {}

// A successful response, or the error its JSON body names (errors are JSON
// in every format). The key goes in a header, never in a URL.
async function request(path, key, init = {}) {
  const response = await fetch(path, { ...init, headers: { ...init.headers, Authorization: `Bearer ${key}` } });
  if (response.ok) return response;
  const body = await response.json().catch(() => ({}));
  if (response.status === 401 || response.status === 403) {
    throw new KeyRefused(body.error ? body.error.message : "the key was refused");
  }
  throw new Error(body.error ? body.error.message : `${path} answered ${response.status}`);
}

const get = async (path, key) => (await request(path, key)).json();

// The views shown, each by the query that drew it (`queries`), so that a
// CSV download is of the very range on screen.
async function load(key, days) {
  const view = (query) => get(`/api/analytics?${query}`, key);
  const queries = { daily: `view=daily&limit=${days}`, providers: `view=providers&limit=${days}`,
    "file-types": "view=file-types" };
  const [overview, daily, providers, fileTypes] = await Promise.all([
    view("view=overview"), view(queries.daily), view(queries.providers), view(queries["file-types"]),
  ]);
  queries.events = `view=events&start=${daily.start}&end=${daily.end}`;
  const events = await view(queries.events);
  return { overview, daily, providers, fileTypes, events, queries };
}

// ---- CSV downloads -----------------------------------------------------------

// What the dashboard shows: the key and the queries of its views.
let shown = null;

// Fetches a shown view as CSV and saves it. The fetch carries the key in
// its header as every other read does; a plain link to the CSV would need
// the key in its URL, where history and logs keep it.
async function download(button) {
  const view = button.dataset.csv;
  button.disabled = true;
  try {
    const response = await request(`/api/analytics?${shown.queries[view]}&format=csv`, shown.key);
    save(await response.blob(), `tollgate-${view}.csv`);
  } catch (error) {
    message(`Could not download the ${view} CSV: ${error.message}`, true);
  } finally {
    button.disabled = false;
  }
}

// Saves a blob as a file through a link with `download` to its object URL.
// The URL is revoked a while later, not at once: a browser may read the
// blob only after the click has returned.
function save(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = element("a", { href: url, download: filename, hidden: "" });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30_000);
}

// ---- Rendering ---------------------------------------------------------------

function render(data) {
  const { overview, daily, providers, fileTypes, events } = data;
  const totals = overview.totals;
  const cards = [
    ["Requests", number(totals.requests)], ["Successful", number(totals.successful)],
    ["Failed", number(totals.failed)], ["Uploads", number(totals.files)],
    ["Uploaded", bytes(totals.bytes)], ["Events", number(events.events)],
    ["Last request", when(totals.last_used_at)],
  ];
  $("cards").replaceChildren(...cards.map(([label, value]) => {
    const small = label === "Last request";
    const card = element("div", { class: small ? "card small" : "card", "data-card": label.toLowerCase() });
    card.append(element("div", { class: "label" }, label), element("div", { class: "value" }, value));
    return card;
  }));

  // The web-analytics figures of the range, each against the previous
  // period of the same length.
  const c = events.change;
  const web = [
    ["Visitors", "visitors", number(events.visitors), change(c.visitors)],
    ["Visits", "visits", number(events.visits), change(c.visits)],
    ["Pageviews", "pageviews", number(events.pageviews), change(c.pageviews)],
    ["Views per visit", "views-per-visit", decimal(events.views_per_visit), change(c.views_per_visit)],
    ["Bounce rate", "bounce-rate", percent(events.bounce_rate), change(c.bounce_rate, true)],
    ["Visit duration", "visit-duration", duration(events.visit_duration), change(c.visit_duration)],
  ];
  $("web-cards").replaceChildren(...web.map(([label, name, value, moved]) => {
    const card = element("div", { class: "card", "data-card": name });
    card.append(element("div", { class: "label" }, label), element("div", { class: "value" }, value),
      element("div", { class: `change ${moved.tone}`, "data-change": moved.trend,
        title: `against ${events.previous.start} to ${events.previous.end}` }, moved.text));
    return card;
  }));

  const days = daily.days.map((d) => d.day);
  columns($("chart-requests"), "requests", days, [
    { name: "successful", values: daily.days.map((d) => d.successful) },
    { name: "failed", values: daily.days.map((d) => d.failed) },
  ]);
  columns($("chart-events"), "events", events.days.map((d) => d.day),
    [{ name: "events", values: events.days.map((d) => d.events) }]);
  columns($("chart-visits"), "visits", events.days.map((d) => d.day),
    [{ name: "visits", values: events.days.map((d) => d.visits) }]);
  ranking($("chart-uploads"), "uploads",
    providers.providers.map((p) => ({ label: p.provider, value: p.uploads })));
  ranking($("chart-bytes"), "bytes",
    providers.providers.map((p) => ({ label: p.provider, value: p.bytes })), bytes);
  ranking($("chart-file-types"), "file-types",
    fileTypes.file_types.map((t) => ({ label: t.content_type, value: t.files })));
  ranking($("chart-pages"), "pages", events.top_paths.map((p) => ({ label: p.value, value: p.events })));
  ranking($("chart-referrers"), "referrers",
    events.top_referrers.map((r) => ({ label: r.value, value: r.events })));
  ranking($("chart-entry"), "entry-pages", events.entry_pages.map((p) => ({ label: p.value, value: p.visits })));
  ranking($("chart-exit"), "exit-pages", events.exit_pages.map((p) => ({ label: p.value, value: p.visits })));
  for (const [name, field, heading] of [["utm-sources", "utm_sources", "Source"],
    ["utm-mediums", "utm_mediums", "Medium"], ["utm-campaigns", "utm_campaigns", "Campaign"]]) {
    table($(name), name, events[field].map((u) => ({ label: u.value, value: u.events })), heading);
  }

  const empty = totals.requests === 0 && events.events === 0;
  message(empty
    ? "No data yet for this key. Send an event to /api/collect or request a signed URL; numbers appear here at once, events after the next drain (every minute)."
    : `Updated ${new Date(overview.generated_at).toLocaleTimeString()}.`);
}

function message(text, error = false, target = $("message")) {
  target.textContent = text;
  target.className = error ? "message error" : "message";
}

// ---- Keys, with a root key ---------------------------------------------------

// The root key is held in this variable only, never in storage or a URL:
// it can revoke and rotate every tenant's keys, so it is gone on reload.
let rootKey = null;
const PAGE_SIZE = 20;
// The listing on screen: its owner filter, the cursor of every page up to
// the current one (null for the first) so that Previous can go back, the
// next page's cursor, and the keys shown by id.
let listing = { owner: "", cursors: [null], next: null, keys: new Map() };
// Each load takes a ticket; an answer to an older one is dropped, so a
// slow page never replaces a newer one.
let tickets = 0;

const keysMessage = (text, error = false) => message(text, error, $("keys-message"));

async function manage(method, params, body) {
  const init = { method };
  if (body !== undefined) {
    init.headers = { "Content-Type": "application/json" };
    init.body = JSON.stringify(body);
  }
  return (await request(`/api/keys?${params}`, rootKey, init)).json();
}

// Loads the current page of keys, then each key's usage today: the list
// carries lifetime totals only, and `GET ?id=` sums the live counters with
// the synced ones, exact to the last request.
async function listKeys(done) {
  const ticket = ++tickets;
  const params = new URLSearchParams({ limit: PAGE_SIZE });
  if (listing.owner) params.set("owner_id", listing.owner);
  const cursor = listing.cursors.at(-1);
  if (cursor) params.set("cursor", cursor);
  $("prev").disabled = $("next").disabled = true;
  keysMessage("Loading…");
  try {
    const page = await manage("GET", params);
    const usage = await Promise.allSettled(page.keys.map((key) => manage("GET", new URLSearchParams({ id: key.id }))));
    if (ticket !== tickets) return;
    listing.next = page.next_cursor;
    listing.keys = new Map(page.keys.map((key) => [key.id, key]));
    $("key-rows").replaceChildren(...page.keys.map((key, i) => keyRow(key, usage[i])));
    if (!page.keys.length) {
      const row = element("tr");
      row.append(element("td", { class: "empty", colspan: 7 },
        listing.cursors.length > 1 ? "No more keys." : "No keys yet."));
      $("key-rows").append(row);
    }
    const first = (listing.cursors.length - 1) * PAGE_SIZE + 1;
    $("page-label").textContent = page.keys.length ? `Keys ${first}–${first + page.keys.length - 1}` : "";
    $("prev").disabled = listing.cursors.length === 1;
    $("next").disabled = !listing.next;
    $("key-list").hidden = false;
    const owner = listing.owner ? ` of owner ${listing.owner}` : "";
    keysMessage(done || `Keys${owner}, oldest first; usage as of ${new Date().toLocaleTimeString()}.`);
  } catch (error) {
    if (ticket !== tickets) return;
    $("key-list").hidden = true;
    keysMessage(error instanceof KeyRefused
      ? `This root key was not accepted: ${error.message}.`
      : `Could not list the keys: ${error.message}`, true);
  }
}

// A key's status as a user means it: an active key past its expiry no
// longer works.
function keyStatus(key) {
  if (key.status === "active" && key.expires_at && new Date(key.expires_at) <= new Date()) return "expired";
  return key.status;
}

function keyRow(key, usage) {
  const status = keyStatus(key);
  const row = element("tr", { "data-key": key.id, "data-name": key.name, "data-status": status });
  const name = element("td", {}, key.name);
  name.append(element("span", { class: "id" }, key.id));
  const state = element("td");
  state.append(element("span", { class: `status ${status}` }, status));
  if (key.previous_expires_at) {
    state.append(element("span", { class: "sub" }, `old halves work until ${when(key.previous_expires_at)}`));
  }
  const actions = element("td");
  if (key.status === "active") {
    actions.append(
      element("button", { type: "button", class: "secondary", "data-action": "rotate", "aria-label": `Rotate ${key.name}` }, "Rotate"),
      element("button", { type: "button", class: "secondary danger", "data-action": "revoke", "aria-label": `Revoke ${key.name}` }, "Revoke"));
  }
  row.append(name, element("td", {}, key.owner_id ?? "–"), element("td", {}, key.tier), state,
    element("td", {}, key.expires_at ? when(key.expires_at) : "never"), usageCell(usage), actions);
  return row;
}

// Today's successful requests (what the daily quota counts) against the
// quota, with a bar, and the whole day's requests beneath.
function usageCell(usage) {
  if (usage.status === "rejected") {
    return element("td", { class: "usage", "data-usage": "unavailable" }, `unavailable: ${usage.reason.message}`);
  }
  const { today, exact } = usage.value.usage;
  const cell = element("td", { class: "usage", "data-successful": today.successful, "data-requests": today.requests,
    "data-failed": today.failed, "data-quota": today.quota ?? "" });
  cell.append(element("span", { class: "figure" }, today.quota === null
    ? `${number(today.successful)} (no daily quota)` : `${number(today.successful)} / ${number(today.quota)}`));
  if (today.quota !== null) {
    const share = Math.min(1, today.successful / Math.max(1, today.quota));
    const bar = element("div", { class: "bar", title: `${(100 * share).toFixed(1)}% of the daily quota` });
    bar.append(element("i", { style: `width:${100 * share}%`, class: share >= 1 ? "full" : "" }));
    cell.append(bar);
  }
  cell.append(element("span", { class: "sub" },
    `${count(today.requests, "request")}, ${number(today.failed)} failed, ${today.period}` +
    (exact ? "" : " (synced counters only: Redis was unreachable)")));
  return cell;
}

// Whom an open dialog acts on.
let target = null;

function openDialog(dialog, key) {
  target = key;
  for (const name of dialog.querySelectorAll("[data-name]")) name.textContent = key.name;
  for (const error of dialog.querySelectorAll("[data-error]")) message("", true, error);
  dialog.showModal();
}

// Runs a dialog's action on its submit button, keeping the dialog open
// with the API's message if it fails; any other button closes it.
function onConfirm(form, value, action) {
  form.addEventListener("submit", async (event) => {
    if (event.submitter?.value !== value) return;
    event.preventDefault();
    const buttons = form.querySelectorAll("button");
    for (const button of buttons) button.disabled = true;
    try {
      await action();
    } catch (error) {
      message(error.message, true, form.querySelector("[data-error]"));
    } finally {
      for (const button of buttons) button.disabled = false;
    }
  });
}

const propagation = (answer) => (answer.propagation === "immediate"
  ? "from now on" : "within 5 minutes, as cached copies expire");

onConfirm($("revoke-dialog").querySelector("form"), "revoke", async () => {
  const answer = await manage("DELETE", new URLSearchParams({ id: target.id }));
  $("revoke-dialog").close();
  await listKeys(`Revoked ${target.name}: requests with it are refused ${propagation(answer)}.`);
});

const [askRotate, rotated] = $("rotate-dialog").querySelectorAll("form");
onConfirm(askRotate, "rotate", async () => {
  const minutes = Number($("overlap").value || 0);
  const answer = await manage("POST", new URLSearchParams({ id: target.id, action: "rotate" }),
    { overlap_seconds: Math.round(minutes * 60) });
  $("new-secret").value = answer.secret_key;
  $("new-publishable").value = answer.publishable_key;
  $("previous-until").textContent = answer.previous_expires_at
    ? `The old secret and publishable key keep working until ${when(answer.previous_expires_at)}.`
    : `The old secret and publishable key are refused ${propagation(answer)}.`;
  askRotate.hidden = true;
  rotated.hidden = false;
  $("copy-secret").focus();
  listKeys(`Rotated ${target.name}.`);
});

// The new secret leaves the page with the dialog: it is shown only once.
$("rotate-dialog").addEventListener("close", () => {
  $("new-secret").value = $("new-publishable").value = "";
  $("copy-status").textContent = "";
  $("copy-secret").textContent = "Copy";
  askRotate.hidden = false;
  rotated.hidden = true;
});

$("copy-secret").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText($("new-secret").value);
    $("copy-secret").textContent = "Copied";
    $("copy-status").textContent = "The secret key is on the clipboard.";
  } catch {
    // No clipboard here (an insecure origin, or permission refused):
    // select the text for the user's own copy shortcut.
    $("new-secret").select();
    $("copy-status").textContent = "The browser refused the clipboard: the key is selected, copy it with the keyboard.";
  }
});

$("key-rows").addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const key = listing.keys.get(button.closest("tr").dataset.key);
  if (button.dataset.action === "revoke") openDialog($("revoke-dialog"), key);
  if (button.dataset.action === "rotate") {
    $("overlap").value = 0;
    openDialog($("rotate-dialog"), key);
  }
});

function openKeys() {
  const key = $("root-key").value.trim();
  if (!key) return keysMessage("Paste a root key first.", true);
  if (!key.startsWith("rk_")) {
    return keysMessage("The Keys tab needs a root key (rk_…); secret and publishable keys cannot manage keys.", true);
  }
  rootKey = key;
  listing = { owner: $("owner").value.trim(), cursors: [null], next: null, keys: new Map() };
  listKeys();
}

$("root-form").addEventListener("submit", (event) => { event.preventDefault(); openKeys(); });
$("next").addEventListener("click", () => { listing.cursors.push(listing.next); listKeys(); });
$("prev").addEventListener("click", () => { listing.cursors.pop(); listKeys(); });

// ---- Wiring ------------------------------------------------------------------

function showTab(name) {
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    tab.setAttribute("aria-selected", String(tab.getAttribute("aria-controls") === name));
  }
  for (const panel of document.querySelectorAll('[role="tabpanel"]')) panel.hidden = panel.id !== name;
  for (const form of document.querySelectorAll("form[data-tab]")) form.hidden = form.dataset.tab !== name;
}

for (const tab of document.querySelectorAll('[role="tab"]')) {
  tab.addEventListener("click", () => showTab(tab.getAttribute("aria-controls")));
}
if (location.hash === "#keys") showTab("keys");

async function show() {
  const key = $("key").value.trim();
  if (!key) return message("Paste a secret key first.", true);
  if (!key.startsWith("sk_")) {
    return message("The dashboard needs a secret key (sk_…); publishable keys (pk_…) can only send events.", true);
  }
  sessionStorage.setItem("tollgate-key", key);
  message("Loading…");
  try {
    const data = await load(key, Number($("range").value));
    render(data);
    shown = { key, queries: data.queries };
    $("dashboard").hidden = false;
  } catch (error) {
    $("dashboard").hidden = true;
    message(error instanceof KeyRefused
      ? `This key was not accepted: ${error.message}.`
      : `Could not load the numbers: ${error.message}`, true);
  }
}

$("key-form").addEventListener("submit", (event) => { event.preventDefault(); show(); });
$("range").addEventListener("change", () => { if ($("key").value) show(); });
for (const button of document.querySelectorAll("[data-csv]")) {
  button.addEventListener("click", () => download(button));
}

// `tollgate dev` offers its demo key; a deployment does not.
fetch("/_dev/demo-key").then((r) => (r.ok ? r.json() : null)).then((demo) => {
  if (!demo) return;
  $("demo").hidden = false;
  $("demo").addEventListener("click", () => { $("key").value = demo.secret; show(); });
}).catch(() => {});

const fromHash = new URLSearchParams(location.hash.slice(1)).get("key");
const remembered = fromHash || sessionStorage.getItem("tollgate-key");
if (fromHash) history.replaceState(null, "", location.pathname);
if (remembered) { $("key").value = remembered; show(); }
