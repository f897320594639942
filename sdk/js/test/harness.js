// A page with pulse.js loaded by a <script> tag in jsdom, with what jsdom lacks recorded instead of sent:
// navigator.sendBeacon, fetch (answers /v1/decide from `answers`), IntersectionObserver (tests call show()).
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { JSDOM } = require("jsdom");

const SOURCE = fs.readFileSync(path.join(__dirname, "..", "pulse.js"), "utf8");

function decision(placement, ids, extra = {}) {
  return {
    decision_id: `d-${placement}-${ids.join("-")}`, placement, policy: "affinity_popularity", model_version: "1",
    holdout_arm: "learning", propensity: 1, personalised: true, degraded: false, segments: [],
    actions: ids.map((id, i) => ({ action_id: id, score: 1 - i / 10, title: `Title ${id}`, category: `cat-${id}`,
      payload: {} })),
    ...extra,
  };
}

function page({ body = "", attrs = 'data-key="pk_public" data-api="https://api.test"', answers = {}, cookie = "",
                beacon = true } = {}) {
  const sent = { beacons: [], fetches: [] };
  const observers = [];
  const dom = new JSDOM(`<!doctype html><html><head><title>Shop</title></head><body>${body}</body></html>`, {
    url: "https://shop.test/p/1", runScripts: "outside-only", pretendToBeVisual: true,
  });
  const w = dom.window;
  if (cookie) w.document.cookie = cookie;
  Object.defineProperty(w.navigator, "sendBeacon", { configurable: true, value: (url, data) => {
    sent.beacons.push({ url, body: JSON.parse(data), type: typeof data });
    return beacon;
  } });
  w.fetch = (url, init) => {
    const body = JSON.parse(init.body);
    sent.fetches.push({ url, init, body });
    if (url.endsWith("/v1/decide")) {
      const answer = answers[body.placement];
      const value = typeof answer === "function" ? answer(body) : answer;
      if (!value) return Promise.resolve({ ok: false, status: 400, json: async () => ({}) });
      return Promise.resolve({ ok: true, status: 200, json: async () => value });
    }
    return Promise.resolve({ ok: true, status: 202, json: async () => ({}) });
  };
  w.IntersectionObserver = class {
    constructor(callback) { this.callback = callback; this.targets = new Set(); observers.push(this); }
    observe(el) { this.targets.add(el); }
    unobserve(el) { this.targets.delete(el); }
  };
  // run the snippet as a <script> tag would: document.currentScript is the tag with its data- attributes
  const tag = w.document.createElement("script");
  for (const m of attrs.matchAll(/([\w-]+)="([^"]*)"/g)) tag.setAttribute(m[1], m[2]);
  w.document.head.appendChild(tag);
  Object.defineProperty(w.document, "currentScript", { configurable: true, get: () => tag });
  const ready = new Promise((r) => w.document.addEventListener("pulse:ready", r));
  w.eval(SOURCE);
  Object.defineProperty(w.document, "currentScript", { configurable: true, get: () => null });

  const api = {
    window: w, document: w.document, pulse: w.pulse, sent,
    /** every event sent so far, by beacon or fetch, in order */
    events: () => [...sent.beacons.map((b) => b.body), ...sent.fetches.filter((f) => f.url.endsWith("/v1/events"))
      .map((f) => f.body)].flatMap((b) => b.batch),
    decides: () => sent.fetches.filter((f) => f.url.endsWith("/v1/decide")).map((f) => f.body),
    /** the elements scrolled into view, as IntersectionObserver reports them */
    show: (...els) => observers.forEach((o) => {
      const hits = els.filter((el) => o.targets.has(el));
      if (hits.length) o.callback(hits.map((target) => ({ target, isIntersecting: true })));
    }),
    /** wait for the snippet to start (at DOMContentLoaded), then for its timers (batching) and promises */
    settle: (ms = 150) => ready.then(() => new Promise((r) => setTimeout(r, ms))),
    cookies: () => w.document.cookie,
  };
  return api;
}

module.exports = { page, decision, SOURCE };
