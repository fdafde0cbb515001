/*! tollgate tracker: <script src="https://HOST/t.js" data-key="pk_…" defer></script>
 * Page views (history API too) and tollgate.track(name, props), batched.
 * data-api: collect URL (default: this script's origin + /api/collect).
 * data-dnt="respect": send nothing under Do Not Track or Global Privacy Control.
 * URLs are sent without their fragment and without secret-looking query
 * parameters (see SECRET); a secret key (sk_...) makes it refuse to run. */
(function (w, d) {
  var s = d.currentScript, key = s && s.getAttribute("data-key");
  if (!key || w.tollgate) return;
  // A secret key in a page is readable by every visitor: send nothing with
  // it, and say why where the site's developer will look. (ASCII only: the
  // page, not this file, decides how the script is decoded.)
  if (/^\s*sk_/.test(key)) {
    console.error("tollgate: data-key is a secret key (sk_...), which must never be in a web page; nothing was sent. Rotate it, and use its publishable key (pk_...).");
    w.tollgate = { track: function () {}, flush: function () {} };
    return;
  }
  var api = s.getAttribute("data-api") || new URL(s.src, location.href).origin + "/api/collect";
  var off = s.getAttribute("data-dnt") == "respect" && (navigator.doNotTrack == "1" || w.doNotTrack == "1" || navigator.globalPrivacyControl);
  // Query parameters that carry credentials rather than anything worth
  // counting (password resets, magic links, OAuth and OIDC redirects,
  // presigned URLs), matched on the whole name, case-insensitively; and any
  // name ending in token, secret, password, signature or credential
  // (access_token, resetToken, client_secret, X-Amz-Signature).
  var SECRET = /^(code|state|nonce|key|api[_-]?key|auth|authorization|pass|passwd|pwd|session|session[_-]?id|sid|sig|otp|reset|jwt|ticket)$|(token|secret|password|signature|credential)$/i;
  var queue = [], timer = 0, tries = 0, last, sid, seen = 0;
  try {
    var stored = (sessionStorage.getItem("tg_sid") || "").split(" ");
    sid = stored[0];
    seen = +stored[1] || 0;
  } catch (e) {}

  // The session id of an event, which makes a visit: the tab's, until 30
  // minutes pass without an event; the next event then starts a new visit
  // under a new id, as web analytics counts visits.
  function session() {
    var now = Date.now();
    if (!sid || now - seen > 18e5) sid = uuid();
    seen = now;
    try { sessionStorage.setItem("tg_sid", sid + " " + now); } catch (e) {}
    return sid;
  }

  function uuid() {
    return crypto.randomUUID ? crypto.randomUUID() : "10000000-1000-4000-8000-100000000000".replace(/[018]/g, function (c) {
      return (c ^ (crypto.getRandomValues(new Uint8Array(1))[0] & (15 >> (c / 4)))).toString(16);
    });
  }

  // The URL without its fragment and secret parameters. The kept parameters
  // stay exactly as written (utm_* among them); only a name is decoded, to
  // match it. Referrers too: a same-origin referrer is a full URL of this
  // site, and an old browser or a loose Referrer-Policy sends other sites'.
  function clean(href) {
    if (!href) return;
    try {
      var u = new URL(href), q = u.search.slice(1).split("&").filter(function (p) {
        var k = p.split("=")[0];
        try { k = decodeURIComponent(k.replace(/\+/g, " ")); } catch (e) {}
        return p && !SECRET.test(k);
      }).join("&");
      u.search = q;
      u.hash = "";
      return u.href;
    } catch (e) {}
  }

  function track(name, props) {
    if (off) return;
    var e = {
      id: uuid(), type: "web", name: String(name), timestamp: new Date().toISOString(),
      session_id: session(), url: clean(location.href), referrer: clean(d.referrer), title: d.title,
      screen: screen.width + "x" + screen.height, language: navigator.language
    };
    if (props) e.properties = props;
    queue.push(e);
    queue.length >= 20 ? flush() : schedule(1000);
  }

  function schedule(ms) {
    if (!timer) timer = setTimeout(function () { timer = 0; flush(); }, ms);
  }

  // Sends up to 50 events; failed sends go back in the queue and retry with
  // backoff. Event ids make a resend harmless: the server keeps one copy.
  function flush(hidden) {
    if (!queue.length) return;
    var batch = queue.splice(0, 50), body = JSON.stringify({ key: key, batch: batch });
    if (hidden && navigator.sendBeacon && navigator.sendBeacon(api, new Blob([body], { type: "text/plain" }))) return flush(1);
    fetch(api, { method: "POST", body: body, keepalive: body.length < 60000, headers: { "Content-Type": "text/plain" } })
      .then(function (r) {
        if (r.status == 429 || r.status >= 500) throw r;
        tries = 0;
        if (queue.length) schedule(0);
      })
      .catch(function () {
        queue = batch.concat(queue);
        if (++tries < 8) schedule(Math.min(1000 * Math.pow(2, tries), 60000));
      });
  }

  // One page view per URL as sent, so a change of fragment alone (or of a
  // secret parameter) is not another page.
  function page() {
    var url = clean(location.href);
    if (url == last) return;
    last = url;
    track("pageview");
  }

  ["pushState", "replaceState"].forEach(function (m) {
    var orig = history[m];
    history[m] = function () {
      var r = orig.apply(this, arguments);
      page();
      return r;
    };
  });
  w.addEventListener("popstate", page);
  w.addEventListener("pagehide", function () { flush(1); });
  d.addEventListener("visibilitychange", function () { if (d.visibilityState == "hidden") flush(1); });
  w.tollgate = { track: track, flush: flush };
  page();
})(window, document);
