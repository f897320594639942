"use strict";
const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const zlib = require("node:zlib");
const { page, decision, SOURCE } = require("./harness");

test("opt_out: a page_view by sendBeacon, text/plain, with the public key in the body and a first-party id", async () => {
  const p = page();
  await p.settle();
  assert.equal(p.sent.beacons.length, 1);
  const beacon = p.sent.beacons[0];
  assert.equal(beacon.url, "https://api.test/v1/events");
  assert.equal(beacon.type, "string", "a string body is sent as text/plain (CORS-safelisted, no preflight)");
  assert.equal(beacon.body.writeKey, "pk_public");
  const [ev] = beacon.body.batch;
  assert.equal(ev.type, "page_view");
  assert.equal(ev.properties.url, "https://shop.test/p/1");
  assert.equal(ev.properties.title, "Shop");
  assert.match(ev.event_id, /^[0-9a-f-]{36}$/);
  const id = /pulse_aid=([^;]+)/.exec(p.cookies())[1];
  assert.equal(ev.anonymous_id, id);
  assert.equal(p.pulse.anonymousId(), id, "the same id for the whole visit");
});

test("opt_in: nothing is sent and no id cookie is set before consent; a refusal sends nothing either", async () => {
  const p = page({ attrs: 'data-key="pk" data-api="https://api.test" data-consent="opt_in"',
    body: '<div data-pulse-placement="home_hero"></div><a data-pulse-item="sku-1">x</a>',
    answers: { home_hero: decision("home_hero", ["a1"], { personalised: false }) } });
  await p.settle();
  assert.equal(p.pulse.page(), false);
  assert.equal(p.pulse.track("click", { item_id: "sku-1" }), false);
  p.show(...p.document.querySelectorAll("[data-pulse-action],[data-pulse-item]"));
  p.document.querySelector("[data-pulse-item]").click();
  assert.equal(p.pulse.consent({ personalisation: false, analytics: false }), false);
  await p.settle();
  assert.deepEqual(p.events(), []);
  assert.doesNotMatch(p.cookies(), /pulse_aid/);
  const [asked] = p.decides();
  assert.equal(asked.placement, "home_hero");
  assert.equal(asked.anonymous_id, undefined, "slots are filled without naming anyone");
  assert.equal(p.document.querySelector("[data-pulse-action]").textContent, "Title a1");
});

test("opt_in: a grant sends a consent event, then events flow", async () => {
  const p = page({ attrs: 'data-key="pk" data-api="https://api.test" data-consent="opt_in"' });
  await p.settle();
  assert.equal(p.pulse.consent({ personalisation: true, analytics: true }), true);
  assert.equal(p.pulse.page(), true);
  await p.settle();
  const events = p.events();
  assert.deepEqual(events.map((e) => e.type), ["consent", "page_view"]);
  assert.deepEqual(events[0].properties, { personalisation: true, analytics: true });
  assert.equal(events[0].anonymous_id, events[1].anonymous_id);
  assert.match(p.cookies(), /pulse_aid=/);
});

test("opt_out: a withdrawal is sent once, then the id is forgotten and nothing more is sent", async () => {
  const p = page();
  await p.settle();
  const id = p.pulse.anonymousId();
  assert.equal(p.pulse.consent({ personalisation: false, analytics: false }), false);
  p.pulse.track("click", { item_id: "x" });
  await p.settle();
  const events = p.events();
  assert.deepEqual(events.map((e) => e.type), ["page_view", "consent"]);
  assert.equal(events[1].anonymous_id, id);
  assert.equal(events[1].properties.personalisation, false);
  assert.doesNotMatch(p.cookies(), /pulse_aid/);
  assert.equal(p.pulse.anonymousId(), null);
});

test("slots: filled from decide with a template; text stays text and a javascript: link is neutralised", async () => {
  const evil = decision("home_hero", ["a1", "a2"]);
  evil.actions[0].title = "<img src=x onerror=alert(1)>";
  evil.actions[0].payload = { url: "javascript:alert(1)" };
  const p = page({ attrs: 'data-key="pk" data-api="https://api.test" data-page="false"', answers: { home_hero: evil },
    body: `<template id="hero"><a class="card" href="{{payload.url}}" data-pos="{{position}}">{{title}} / {{category}}</a></template>
           <section data-pulse-placement="home_hero" data-pulse-template="hero" data-pulse-n="2" data-pulse-explain></section>` });
  const rendered = new Promise((r) => p.document.addEventListener("pulse:render", (e) => r(e.detail)));
  const detail = await rendered;
  assert.equal(detail.changed, true);
  assert.equal(detail.decision.decision_id, evil.decision_id);
  assert.deepEqual(p.decides()[0], { placement: "home_hero", context: { channel: "web" },
    anonymous_id: p.pulse.anonymousId(), n: 2, explain: true });
  const cards = p.document.querySelectorAll("section a.card");
  assert.equal(cards.length, 2);
  assert.equal(cards[0].querySelector("img"), null);
  assert.equal(cards[0].textContent, "<img src=x onerror=alert(1)> / cat-a1");
  assert.equal(cards[0].getAttribute("href"), "#");
  assert.equal(cards[1].getAttribute("data-pos"), "1");
  assert.equal(cards[1].getAttribute("data-pulse-action"), "a2");
  assert.equal(p.document.querySelector("section").getAttribute("data-pulse-decision"), evil.decision_id);
});

test("impressions when an action comes into view and clicks, each with its decision id", async () => {
  const answer = decision("product_recs", ["r1", "r2"]);
  const p = page({ attrs: 'data-key="pk" data-api="https://api.test" data-page="false"',
    answers: { product_recs: answer }, body: '<div id="recs" data-pulse-placement="product_recs"></div>' });
  await p.settle();
  const [first, second] = p.document.querySelectorAll("#recs [data-pulse-action]");
  assert.equal(first.className, "pulse-action", "the default rendering: a link per action");
  assert.deepEqual(p.events(), [], "rendered is not shown: nothing until it is in view");
  p.show(second);
  p.show(second); // once per element
  await p.settle();
  second.click();
  const events = p.events();
  assert.deepEqual(events.map((e) => e.type), ["impression", "click"]);
  assert.deepEqual(events[0].properties, { action_id: "r2", decision_id: answer.decision_id,
    placement: "product_recs", position: 1, channel: "web" });
  assert.deepEqual(events[1].properties, { action_id: "r2", decision_id: answer.decision_id,
    placement: "product_recs", category: "cat-r2" });
  assert.equal(p.sent.beacons.length, 2, "a click is sent at once (the page may be left)");
});

test("refresh: the same actions stay as they are (no new impression); new ones are rendered", async () => {
  let ids = ["a", "b"];
  const p = page({ attrs: 'data-key="pk" data-api="https://api.test" data-page="false"',
    answers: { home_hero: () => decision("home_hero", ids) }, body: '<div data-pulse-placement="home_hero"></div>' });
  await p.settle();
  const before = p.document.querySelector("[data-pulse-action]");
  const [again] = await p.pulse.refresh();
  assert.equal(again.decision_id, "d-home_hero-a-b");
  assert.equal(p.document.querySelector("[data-pulse-action]"), before);
  ids = ["b", "a"];
  await p.pulse.refresh();
  const now = p.document.querySelectorAll("[data-pulse-action]");
  assert.deepEqual([...now].map((e) => e.getAttribute("data-pulse-action")), ["b", "a"]);
  assert.notEqual(now[1], before);
  assert.equal(p.document.querySelector("[data-pulse-placement]").getAttribute("data-pulse-decision"),
    "d-home_hero-b-a");
});

test("items: views named in one list page_view, clicks with item and category", async () => {
  const p = page({ attrs: 'data-key="pk" data-api="https://api.test" data-page="false"',
    body: '<a data-pulse-item="sku-1" data-pulse-category="shoes">1</a><a data-pulse-item="sku-2">2</a>' });
  await p.settle(); // the snippet starts at DOMContentLoaded
  const [one, two] = p.document.querySelectorAll("[data-pulse-item]");
  p.show(one, two);
  await p.settle(250);
  one.click();
  const events = p.events();
  assert.deepEqual(events.map((e) => e.type), ["page_view", "click"]);
  assert.deepEqual(events[0].properties.item_ids, ["sku-1", "sku-2"]);
  assert.equal(events[0].properties.item_id, undefined, "a glance at a list is not interest in one item");
  assert.deepEqual(events[1].properties, { item_id: "sku-1", category: "shoes" });
});

test("identify: the customer id and its proof go with the identify and every later event", async () => {
  const p = page({ attrs: 'data-key="pk" data-api="https://api.test" data-page="false"' });
  const proof = "ab".repeat(32);
  p.pulse.identify("cust-7", proof);
  p.pulse.track("add_to_cart", { item_id: "sku-1" });
  await p.settle();
  const [identify, cart] = p.events();
  assert.equal(identify.type, "identify");
  assert.equal(identify.customer_id, "cust-7");
  assert.equal(identify.anonymous_id, p.pulse.anonymousId());
  assert.equal(identify.properties.user_hash, proof);
  assert.equal(cart.customer_id, "cust-7");
  assert.equal(cart.properties.user_hash, proof);
});

test("no sendBeacon (or it refused): fetch with keepalive, text/plain, no credentials", async () => {
  const p = page({ beacon: false });
  await p.settle();
  const sent = p.sent.fetches.filter((f) => f.url.endsWith("/v1/events"));
  assert.equal(sent.length, 1);
  assert.equal(sent[0].init.keepalive, true);
  assert.equal(sent[0].init.credentials, "omit");
  assert.equal(sent[0].init.headers["Content-Type"], "text/plain");
  assert.equal(sent[0].body.batch[0].type, "page_view");
});

test("decide: the public key as Bearer; an HTTP error rejects the promise and marks the slot", async () => {
  const p = page({ attrs: 'data-key="pk" data-api="https://api.test/" data-page="false"',
    body: '<div data-pulse-placement="nowhere"></div>' });
  await p.settle();
  const call = p.sent.fetches.find((f) => f.url === "https://api.test/v1/decide");
  assert.equal(call.init.headers.Authorization, "Bearer pk");
  assert.equal(p.document.querySelector("[data-pulse-placement]").getAttribute("data-pulse-error"),
    "pulse: decide nowhere: HTTP 400");
  await assert.rejects(p.pulse.decide("nowhere"), /HTTP 400/);
});

test("the snippet is under 5 KB gzipped, and its types name every method", () => {
  const gz = zlib.gzipSync(Buffer.from(SOURCE), { level: 9 }).length;
  console.log(`pulse.js: ${Buffer.byteLength(SOURCE)} bytes, ${gz} bytes gzipped (level 9)`);
  assert.ok(gz < 5 * 1024, `${gz} bytes gzipped`);
  const types = fs.readFileSync(path.join(__dirname, "..", "pulse.d.ts"), "utf8");
  const p = page();
  for (const name of Object.keys(p.pulse)) assert.match(types, new RegExp(`\\b${name}[(:]`), name);
});
