// The pulse dashboard: polls GET /v1/reports/summary (admin key) every 2 s and draws inline SVG charts.
// Plain JavaScript, no framework, nothing from a CDN. The key is asked for once per tab and kept in
// sessionStorage (gone when the tab closes); the page itself holds no data (docs/dashboard.md).
"use strict";

const KEY = "pulse-admin-key";
const EVERY_MS = 2000;
const KEEP = 90; // samples kept for the time series (3 minutes)
const SVG = "http://www.w3.org/2000/svg";
const history = [];
let timer = null;
let last = null;

const $ = (id) => document.getElementById(id);

function fmt(x, digits = 0) {
  if (x === null || x === undefined || Number.isNaN(x)) return "-";
  if (!Number.isFinite(x)) return "∞";
  return x.toLocaleString("en", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}
const pct = (x) => (x === null || x === undefined ? "-" : fmt(100 * x, 1) + "%");
const ms = (s) => (s === null || s === undefined ? "-" : fmt(1000 * s, 1) + " ms");

function el(name, attrs, parent, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function clear(svg) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const w = svg.clientWidth || 500;
  const h = svg.clientHeight || 180;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  return [w, h];
}

// series: [{values: [number|null], label}]; one polyline each, a shared y axis from 0
function lineChart(svg, series) {
  const [w, h] = clear(svg);
  const pad = { l: 46, r: 8, t: 14, b: 16 };
  const all = series.flatMap((s) => s.values.filter((v) => v !== null && Number.isFinite(v)));
  const max = Math.max(1e-9, ...all) * 1.1;
  const n = Math.max(2, ...series.map((s) => s.values.length));
  const x = (i) => pad.l + (i * (w - pad.l - pad.r)) / (n - 1);
  const y = (v) => h - pad.b - (v / max) * (h - pad.t - pad.b);
  el("line", { class: "axis", x1: pad.l, y1: h - pad.b, x2: w - pad.r, y2: h - pad.b }, svg);
  el("line", { class: "axis", x1: pad.l, y1: pad.t, x2: pad.l, y2: h - pad.b }, svg);
  el("text", { x: pad.l - 4, y: pad.t + 4, "text-anchor": "end" }, svg, fmt(max, max < 10 ? 2 : 0));
  el("text", { x: pad.l - 4, y: h - pad.b, "text-anchor": "end" }, svg, "0");
  el("text", { x: w - pad.r, y: h - 3, "text-anchor": "end" }, svg, "now");
  series.forEach((s, k) => {
    const pts = s.values.map((v, i) => (v === null || !Number.isFinite(v) ? null : `${x(i)},${y(v)}`)).filter(Boolean);
    if (pts.length) el("polyline", { class: `s${k}`, points: pts.join(" ") }, svg);
    const lastV = [...s.values].reverse().find((v) => v !== null && Number.isFinite(v));
    el("text", { x: pad.l + 6 + k * 110, y: pad.t - 3, class: `label s${k}` }, svg,
       `${s.label}: ${lastV === undefined ? "-" : fmt(lastV, lastV < 10 ? 2 : 0)}`);
  });
  svg.dataset.points = String(Math.max(...series.map((s) => s.values.length)));
}

// items: [{label, value, lo, hi, cls}]: horizontal bars with optional interval whiskers
function barChart(svg, items, format) {
  const [w] = clear(svg);
  const row = 22;
  const h = Math.max(40, items.length * row + 10);
  svg.style.height = `${h}px`;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const pad = { l: 150, r: 70 };
  const max = Math.max(1e-9, ...items.map((i) => Math.max(i.value, i.hi || 0)));
  const x = (v) => pad.l + (v / max) * (w - pad.l - pad.r);
  items.forEach((it, k) => {
    const y = 5 + k * row;
    el("text", { x: pad.l - 6, y: y + 13, "text-anchor": "end" }, svg, it.label);
    el("rect", { class: it.cls || "b0", x: pad.l, y: y + 2, width: Math.max(1, x(it.value) - pad.l), height: row - 8 }, svg);
    if (it.lo !== undefined && it.hi !== undefined) {
      el("line", { class: "ci", x1: x(it.lo), x2: x(it.hi), y1: y + row / 2 - 1, y2: y + row / 2 - 1 }, svg);
      el("line", { class: "ci", x1: x(it.lo), x2: x(it.lo), y1: y + 5, y2: y + row - 7 }, svg);
      el("line", { class: "ci", x1: x(it.hi), x2: x(it.hi), y1: y + 5, y2: y + row - 7 }, svg);
    }
    el("text", { x: x(Math.max(it.value, it.hi || 0)) + 6, y: y + 13, class: "value" }, svg, format(it.value));
  });
  if (!items.length) el("text", { x: 10, y: 22 }, svg, "no data yet");
  svg.dataset.bars = String(items.length);
}

// per-interval latency quantile from the change of the cumulative histogram between two samples
function intervalQuantile(prev, cur, q) {
  const b = cur.decisions.latency.buckets;
  const before = prev ? prev.decisions.latency.buckets : b.map(([le]) => [le, 0]);
  const deltas = b.map(([le, c], i) => [le, c - (before[i] ? before[i][1] : 0)]);
  const over = cur.decisions.latency.count - (prev ? prev.decisions.latency.count : 0);
  if (over <= 0) return null;
  let seen = 0;
  for (const [le, d] of deltas) {
    seen += d;
    if (seen >= q * over) return le;
  }
  return Infinity;
}

function sample(doc) {
  const prev = history.length ? history[history.length - 1].doc : null;
  const dt = prev ? doc.time - prev.time : null;
  const rate = (a, b) => (dt && dt > 0 ? Math.max(0, (a - b) / dt) : null);
  const worker = doc.worker || {};
  const pw = prev ? prev.worker || {} : {};
  history.push({
    doc,
    decisions: prev ? rate(doc.decisions.total, prev.decisions.total) : null,
    events: prev ? rate(worker.events_applied || 0, pw.events_applied || 0) : null,
    p50: intervalQuantile(prev, doc, 0.5),
    p99: intervalQuantile(prev, doc, 0.99),
    lag: doc.lag && doc.lag.total !== null ? doc.lag.total : null,
    dead: (worker.dead_letters || 0) + (worker.dead_letters_isolated || 0),
  });
  while (history.length > KEEP) history.shift();
}

function tiles(doc) {
  const h = history[history.length - 1];
  const w = doc.worker || {};
  $("kpi-decisions-rate").textContent = fmt(h.decisions, 1);
  $("kpi-decisions-total").textContent = fmt(doc.decisions.total);
  $("kpi-p99").textContent = ms(doc.decisions.latency.p99);
  $("kpi-p50").textContent = ms(doc.decisions.latency.p50);
  $("kpi-events-rate").textContent = fmt(h.events, 1);
  $("kpi-events-total").textContent = fmt(w.events_applied || 0);
  $("kpi-dead-letters").textContent = fmt(w.dead_letters || 0);
  $("kpi-dead-isolated").textContent = fmt(w.dead_letters_isolated || 0);
  $("kpi-lag").textContent = doc.lag && doc.lag.total !== null ? fmt(doc.lag.total) : "?";
  $("kpi-lag-detail").textContent = doc.lag && doc.lag.error ? "Kafka: " + doc.lag.error.slice(0, 60)
    : `records behind (${doc.lag ? doc.lag.group : "-"})`;
  const a = doc.attribution;
  $("kpi-revenue").textContent = a && a.enabled ? fmt(a.totals.revenue - a.totals.unattributed_revenue, 2) : "off";
  $("kpi-conversions").textContent = a ? fmt(a.totals.conversions) : "-";
}

function series() {
  lineChart($("chart-decisions"), [{ label: "decisions/s", values: history.map((h) => h.decisions) }]);
  lineChart($("chart-latency"), [
    { label: "p50 ms", values: history.map((h) => (h.p50 === null ? null : 1000 * h.p50)) },
    { label: "p99 ms", values: history.map((h) => (h.p99 === null ? null : 1000 * h.p99)) },
  ]);
  lineChart($("chart-events"), [{ label: "events/s", values: history.map((h) => h.events) }]);
  lineChart($("chart-lag"), [
    { label: "lag", values: history.map((h) => h.lag) },
    { label: "dead letters", values: history.map((h) => h.dead) },
  ]);
}

function liftText(lift, ci) {
  if (lift === null || lift === undefined) return "n/a (an arm has none yet)";
  return `${pct(lift)} [${pct(ci[0])}, ${pct(ci[1])}]`;
}

function experiments(doc) {
  const box = $("experiments");
  box.replaceChildren();
  for (const [placement, e] of Object.entries(doc.experiments)) {
    const div = document.createElement("div");
    div.className = "exp";
    div.dataset.placement = placement;
    const h3 = document.createElement("h3");
    h3.textContent = `${placement} (holdout ${pct(e.holdout_share)})`;
    div.appendChild(h3);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "chart bars");
    div.appendChild(svg);
    const p = document.createElement("div");
    p.className = "lift";
    const learning = e.arms.learning || {};
    const control = e.arms.control || {};
    p.textContent = `CTR lift ${liftText(e.ctr_lift, e.ctr_lift_ci95)}; conversion lift ` +
      `${liftText(e.conversion_rate_lift, e.conversion_rate_lift_ci95)}; revenue / decision ` +
      `${fmt(learning.revenue_per_decision, 3)} vs ${fmt(control.revenue_per_decision, 3)}; decisions ` +
      `${fmt(learning.decisions)} vs ${fmt(control.decisions)}`;
    div.appendChild(p);
    box.appendChild(div);
    const items = [];
    for (const [arm, s] of Object.entries(e.arms)) {
      if (!s.decisions) continue; // no decision on this arm: no rate, no interval to draw
      items.push({ label: `${arm} CTR`, value: s.ctr, lo: s.ctr_ci95[0], hi: s.ctr_ci95[1], cls: arm === "control" ? "b1" : "b0" });
      items.push({ label: `${arm} conversion`, value: s.conversion_rate, lo: s.conversion_rate_ci95[0],
                   hi: s.conversion_rate_ci95[1], cls: arm === "control" ? "b1" : "b2" });
    }
    barChart(svg, items, pct);
  }
}

function attribution(doc) {
  const a = doc.attribution;
  const model = $("model").value;
  const revenue = (g) => (g.models[model] ? g.models[model].revenue : 0);
  const bars = (list, key) => list.map((g) => ({ label: g[key], value: revenue(g) }))
    .sort((p, q) => q.value - p.value).slice(0, 12);
  barChart($("chart-attr-actions"), bars(a.actions || [], "action"), (v) => fmt(v, 2));
  barChart($("chart-attr-channels"), bars(a.channels || [], "channel").map((b, i) => ({ ...b, cls: `b${i % 3}` })),
           (v) => fmt(v, 2));
  const body = $("attr-table").tBodies[0];
  body.replaceChildren();
  for (const r of (a.rows || []).slice(0, 50)) {
    const m = r.models[model] || {};
    const tr = document.createElement("tr");
    for (const v of [r.action, r.channel, r.placement, fmt(r.impressions), fmt(r.clicks), pct(r.ctr),
      fmt(m.conversions, 2), fmt(m.revenue, 2), fmt(m.revenue_per_impression, 3),
      m.roi === null || m.roi === undefined ? "-" : pct(m.roi)]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

function segments(doc) {
  const s = doc.segments;
  barChart($("chart-segments"), Object.entries(s.sizes).map(([name, n]) => ({ label: name, value: n, cls: "b2" })),
           (v) => fmt(v));
  $("segments-note").textContent = s.complete ? `(${fmt(s.profiles_scanned)} profiles)`
    : `(first ${fmt(s.profiles_scanned)} profiles scanned)`;
}

function render() {
  if (!last) return;
  tiles(last);
  series();
  experiments(last);
  attribution(last);
  segments(last);
  document.body.dataset.samples = String(history.length);
}

async function poll() {
  const key = sessionStorage.getItem(KEY);
  if (!key) return;
  try {
    const r = await fetch("/v1/reports/summary", { headers: { Authorization: `Bearer ${key}` }, cache: "no-store" });
    if (r.status === 401 || r.status === 403) {
      stop(`the key was refused (${r.status}): enter an admin key`);
      return;
    }
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    last = await r.json();
    sample(last);
    render();
    $("status").textContent = `updated ${new Date(last.time * 1000).toLocaleTimeString()}`;
    $("status").classList.remove("error");
  } catch (err) {
    $("status").textContent = `refresh failed: ${err.message}; retrying`;
    $("status").classList.add("error");
  }
}

function start() {
  $("key-form").hidden = true;
  $("forget").hidden = false;
  $("main").hidden = false;
  if (timer === null) {
    poll();
    timer = setInterval(poll, EVERY_MS);
  }
}

function stop(message) {
  sessionStorage.removeItem(KEY);
  if (timer !== null) clearInterval(timer);
  timer = null;
  $("key-form").hidden = false;
  $("forget").hidden = true;
  $("status").textContent = message;
  $("status").classList.toggle("error", message !== "not connected");
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $("key").value.trim());
    $("key").value = "";
    start();
  });
  $("forget").addEventListener("click", () => stop("not connected"));
  $("model").addEventListener("change", render);
  window.addEventListener("resize", render);
  if (sessionStorage.getItem(KEY)) start();
});
