/*! pulse.js - pulse's browser snippet (Apache-2.0). README "Integrate a site"; docs/snippet.md. */
// Plain ES2019, one file, no build step: the API serves this file as is at /sdk/pulse.js. Typed API: pulse.d.ts.
(function (w, d) {
  "use strict";
  if (w.pulse && w.pulse.version) return; // loaded twice: keep the first
  var ID = "pulse_aid", CHOICE = "pulse_consent";
  // 13 months, the longest a consent-bound cookie should live (CNIL, EDPB guidance)
  var MAX_AGE = 395 * 86400;
  var MAX_BATCH = 50, FLUSH_MS = 100, MAX_URL = 2048;
  var script = d.currentScript, cfg = {}, queue = [], timer = 0, who = {}, items = [], itemTimer = 0;
  var noop = function () {};

  function attr(el, name) { return el && el.getAttribute ? el.getAttribute(name) : null; }
  function closest(el, sel) { return el && el.closest ? el.closest(sel) : null; }

  function configure(o) {
    o = o || {};
    var src = script && script.src;
    cfg.key = o.key || cfg.key || attr(script, "data-key") || "";
    cfg.api = String(o.api || cfg.api || attr(script, "data-api") ||
      (src ? new URL(src, location.href).origin : location.origin)).replace(/\/+$/, "");
    cfg.consent = o.consent || cfg.consent || attr(script, "data-consent") || "opt_out";
    cfg.domain = o.cookieDomain || cfg.domain || attr(script, "data-cookie-domain") || "";
  }

  function readCookie(name) {
    var m = d.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return m ? decodeURIComponent(m[1]) : null;
  }
  function writeCookie(name, value, maxAge) {
    d.cookie = name + "=" + encodeURIComponent(value) + "; Max-Age=" + maxAge + "; Path=/; SameSite=Lax" +
      (location.protocol === "https:" ? "; Secure" : "") + (cfg.domain ? "; Domain=" + cfg.domain : "");
  }

  function uuid() {
    var c = w.crypto;
    if (c.randomUUID) return c.randomUUID(); // secure contexts only
    var b = c.getRandomValues(new Uint8Array(16)), h = "";
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    for (var i = 0; i < 16; i++) h += (b[i] + 256).toString(16).slice(1) + (i === 3 || i === 5 || i === 7 || i === 9 ? "-" : "");
    return h;
  }

  // The consent gate. The visitor's choices live in a cookie without any id (strictly necessary: it records
  // the refusal too). Nothing is sent, and no id cookie is set, unless they allow it: in opt_in mode only after
  // personalisation or analytics was granted, in opt_out mode until both were refused.
  function choices() {
    try { return JSON.parse(readCookie(CHOICE)); } catch (e) { return null; }
  }
  function tracking() {
    var c = choices();
    return c ? !!(c.personalisation || c.analytics) : cfg.consent !== "opt_in";
  }
  function anonymousId() {
    var id = readCookie(ID) || uuid();
    writeCookie(ID, id, MAX_AGE); // first party; renewed on use
    return id;
  }

  function event(type, props) {
    var p = {}, k;
    for (k in props || {}) p[k] = props[k];
    var e = {
      event_id: uuid(), type: type, timestamp: Date.now(), anonymous_id: anonymousId(),
      context: { channel: "web", url: location.href.slice(0, MAX_URL) }, properties: p
    };
    if (d.referrer) e.context.referrer = d.referrer.slice(0, MAX_URL);
    // a customer id from a page is believed only with its identity proof (engine/identity.py)
    if (who.id) {
      e.customer_id = who.id;
      if (who.hash) p.user_hash = who.hash;
    }
    return e;
  }

  function send(type, props) {
    if (!tracking()) return false;
    queue.push(event(type, props));
    if (queue.length >= MAX_BATCH) flush();
    else if (!timer) timer = setTimeout(flush, FLUSH_MS);
    return true;
  }

  // sendBeacon cannot set headers, so the public key travels in the body (as Segment's writeKey) and the body
  // is text/plain: a CORS-safelisted request, no preflight, and it survives the page being left.
  function flush() {
    clearTimeout(timer);
    timer = 0;
    while (queue.length) {
      var body = { batch: queue.splice(0, MAX_BATCH), sentAt: new Date().toISOString() };
      if (cfg.key) body.writeKey = cfg.key;
      body = JSON.stringify(body);
      var url = cfg.api + "/v1/events", n = w.navigator;
      if (!(n.sendBeacon && n.sendBeacon(url, body))) {
        w.fetch(url, { method: "POST", body: body, keepalive: true, credentials: "omit",
          headers: { "Content-Type": "text/plain" } }).catch(noop);
      }
    }
  }

  function decide(placement, opts) {
    opts = opts || {};
    flush(); // what the visitor just did goes first
    var body = { placement: placement, context: { channel: "web" } }, k;
    for (k in opts.context || {}) body.context[k] = opts.context[k];
    if (tracking()) body.anonymous_id = anonymousId(); // else a non-personalised answer, about nobody
    if (opts.n) body.n = opts.n;
    if (opts.candidates) body.candidates = opts.candidates;
    if (opts.explain) body.explain = true;
    var headers = { "Content-Type": "application/json" };
    if (cfg.key) headers.Authorization = "Bearer " + cfg.key;
    return w.fetch(cfg.api + "/v1/decide", { method: "POST", headers: headers, body: JSON.stringify(body),
      credentials: "omit" }).then(function (r) {
      if (!r.ok) throw new Error("pulse: decide " + placement + ": HTTP " + r.status);
      return r.json();
    });
  }

  // --- declarative slots: [data-pulse-placement], optional data-pulse-template (id of a <template>),
  // data-pulse-n, data-pulse-explain ---
  function subst(s, a) {
    return s.indexOf("{{") < 0 ? s : s.replace(/\{\{\s*([\w.]+)\s*\}\}/g, function (_, path) {
      var v = path.split(".").reduce(function (o, k) { return o == null ? o : o[k]; }, a);
      return v == null ? "" : String(v);
    });
  }
  function fillTemplate(node, a) {
    if (node.nodeType === 3) node.nodeValue = subst(node.nodeValue, a);
    else if (node.nodeType === 1) {
      for (var i = node.attributes.length - 1; i >= 0; i--) {
        var at = node.attributes[i], v = subst(at.value, a);
        // values are text (never parsed as HTML); a link must not become script
        if (/^\s*(javascript|data|vbscript):/i.test(v) && /^(href|src|action|formaction)$/i.test(at.name)) v = "#";
        at.value = v;
      }
    }
    for (var c = node.firstChild; c; c = c.nextSibling) fillTemplate(c, a);
  }

  function render(slot, dec) {
    var ids = dec.actions.map(function (a) { return a.action_id; }).join(" ");
    // the same actions again: keep what is shown (and its decision id); no new impression for it
    if (attr(slot, "data-pulse-shown") === ids) return false;
    var tpl = d.getElementById(attr(slot, "data-pulse-template") || ""), frag = d.createDocumentFragment();
    dec.actions.forEach(function (a, i) {
      var data = { position: i, decision_id: dec.decision_id, placement: dec.placement }, k, el;
      for (k in a) data[k] = a[k];
      if (tpl && tpl.content) {
        var part = tpl.content.cloneNode(true);
        fillTemplate(part, data);
        el = part.firstElementChild;
        frag.appendChild(part);
      } else {
        el = d.createElement("a");
        el.className = "pulse-action";
        el.textContent = a.title || a.action_id;
        frag.appendChild(el);
      }
      if (!el) return;
      el.setAttribute("data-pulse-action", a.action_id);
      el.setAttribute("data-pulse-position", String(i));
      if (a.category && !el.hasAttribute("data-pulse-category")) el.setAttribute("data-pulse-category", a.category);
    });
    slot.replaceChildren(frag);
    slot.setAttribute("data-pulse-decision", dec.decision_id);
    slot.setAttribute("data-pulse-shown", ids);
    watch(slot);
    return true;
  }

  function fill(slot) {
    var placement = attr(slot, "data-pulse-placement");
    return decide(placement, { n: +attr(slot, "data-pulse-n") || 0,
      explain: slot.hasAttribute("data-pulse-explain") }).then(function (dec) {
      var changed = render(slot, dec);
      slot.removeAttribute("data-pulse-error");
      emit(slot, "pulse:render", { decision: dec, changed: changed });
      return dec;
    }, function (err) {
      slot.setAttribute("data-pulse-error", err.message);
      emit(slot, "pulse:error", { error: err });
      return null;
    });
  }

  function emit(el, name, detail) {
    el.dispatchEvent(new CustomEvent(name, { bubbles: true, detail: detail }));
  }

  // --- views and clicks: of rendered actions (impressions, with their decision id) and of [data-pulse-item] ---
  var seen = new WeakSet(), io = w.IntersectionObserver ? new w.IntersectionObserver(function (entries) {
    entries.forEach(function (en) {
      if (en.isIntersecting) {
        io.unobserve(en.target);
        viewed(en.target);
      }
    });
  }, { threshold: 0.5 }) : null;

  function watch(root) {
    if (!tracking()) return;
    root.querySelectorAll("[data-pulse-action],[data-pulse-item]").forEach(function (el) {
      if (seen.has(el) || (attr(el, "data-pulse-item") && closest(el.parentNode, "[data-pulse-action]"))) return;
      seen.add(el);
      if (io) io.observe(el);
      else viewed(el);
    });
  }

  function actionProps(el) {
    var slot = closest(el, "[data-pulse-placement]");
    return { action_id: attr(el, "data-pulse-action"), decision_id: attr(slot, "data-pulse-decision"),
      placement: attr(slot, "data-pulse-placement") };
  }

  function viewed(el) {
    if (attr(el, "data-pulse-action")) {
      var p = actionProps(el);
      p.position = +attr(el, "data-pulse-position");
      p.channel = "web";
      send("impression", p);
    } else {
      // items seen in a list: one page_view naming them (no item_id: a glance is not interest)
      items.push(attr(el, "data-pulse-item"));
      if (!itemTimer) itemTimer = setTimeout(function () {
        itemTimer = 0;
        send("page_view", { url: location.href.slice(0, MAX_URL), list: true, item_ids: items.splice(0, 100) });
      }, FLUSH_MS);
    }
  }

  function clicked(ev) {
    var t = ev.target, item = closest(t, "[data-pulse-item]"), act = closest(t, "[data-pulse-action]");
    if (!item && !act) return;
    var p = act ? actionProps(act) : {}, cat = attr(item, "data-pulse-category") || attr(act, "data-pulse-category");
    if (item) p.item_id = attr(item, "data-pulse-item");
    if (cat) p.category = cat;
    if (send("click", p)) flush(); // now: a link is about to unload the page
  }

  function refresh(root) {
    root = root || d;
    watch(root);
    var slots = [].slice.call(root.querySelectorAll("[data-pulse-placement]"));
    return Promise.all(slots.map(fill));
  }

  function consent(c) {
    var was = tracking(), known = readCookie(ID);
    writeCookie(CHOICE, JSON.stringify(c), MAX_AGE);
    var now = tracking();
    // a grant, or a withdrawal by a visitor the server already knows, is recorded there; a refusal by a
    // visitor never tracked sends nothing at all
    if (now || (was && known)) {
      queue.push(event("consent", c));
      flush();
    }
    if (!now) {
      queue = [];
      writeCookie(ID, "", 0);
    } else if (!was) watch(d);
    return now;
  }

  var pulse = {
    version: "0.1.0",
    init: function (o) { configure(o); return pulse; },
    page: function (props) {
      var p = props || {};
      if (!p.url) p.url = location.href.slice(0, MAX_URL);
      if (!p.title && d.title) p.title = d.title.slice(0, 1024);
      return send("page_view", p);
    },
    track: send,
    identify: function (customerId, userHash) {
      who = { id: customerId, hash: userHash };
      return send("identify", {});
    },
    reset: function () { who = {}; writeCookie(ID, "", 0); },
    consent: consent,
    consented: function () { return choices(); },
    tracking: tracking,
    anonymousId: function () { return tracking() ? anonymousId() : null; },
    decide: decide,
    refresh: refresh,
    flush: flush
  };
  w.pulse = pulse;
  configure();
  d.addEventListener("click", clicked, true);
  d.addEventListener("visibilitychange", function () { if (d.visibilityState === "hidden") flush(); });
  w.addEventListener("pagehide", flush);
  function start() {
    if (attr(script, "data-page") !== "false") pulse.page();
    refresh();
    emit(d, "pulse:ready", { pulse: pulse });
  }
  if (d.readyState === "loading") d.addEventListener("DOMContentLoaded", start);
  else start();
})(window, document);
