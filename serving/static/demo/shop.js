// The demo shop: a page as a site would build it with the snippet (/sdk/pulse.js). The slots in index.html are
// declarative (data-pulse-placement); this file draws the products, routes between them (a single-page app:
// pulse.page() on each view, pulse.refresh() after), decorates what the slots render and shows the
// explanations. ?consent=opt_in tries the opt-in consent gate.
"use strict";
(async function () {
  const $ = (sel) => document.querySelector(sel);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const cfg = await (await fetch("config.json")).json();
  const consentMode = new URLSearchParams(location.search).get("consent") || cfg.consent;
  const byItem = new Map(cfg.products.map((p) => [p.item_id, p]));
  const categories = [...new Set(cfg.products.map((p) => p.category))];
  let filter = null;

  // a coloured tile with the category's initial stands for the product's photo
  function thumb(p) {
    const t = el("span", `thumb cat-${p.category}`, p.category[0].toUpperCase());
    return t;
  }
  function card(p) {
    const a = el("a", "card product");
    a.href = `#/p/${p.item_id}`;
    a.dataset.pulseItem = p.item_id;
    a.dataset.pulseCategory = p.category;
    a.append(thumb(p), el("span", "name", p.name), el("span", "cat", p.category),
      el("span", "price", `€${p.price}`));
    return a;
  }
  function drawProducts() {
    const grid = $("#products");
    grid.replaceChildren(...cfg.products.filter((p) => !filter || p.category === filter).map(card));
    $("#grid-title").textContent = filter ? `Products: ${filter}` : "All products";
    for (const b of document.querySelectorAll("#categories button")) b.classList.toggle("on", b.value === filter);
    if (window.pulse) window.pulse.refresh(grid); // watch the new items' views
  }
  $("#categories").replaceChildren(...categories.map((c) => {
    const b = el("button", "", c);
    b.value = c;
    b.onclick = () => {
      filter = filter === c ? null : c;
      drawProducts();
    };
    return b;
  }));
  drawProducts();

  // what the visitor just did shows in the slots: decide again shortly after (the stream applies events in
  // milliseconds), and every few seconds while the page is in view
  let soon = [];
  function refreshSoon() {
    soon.forEach(clearTimeout);
    soon = [300, 1200].map((ms) => setTimeout(() => window.pulse.refresh(), ms));
  }
  setInterval(() => document.visibilityState === "visible" && window.pulse && window.pulse.refresh(), 5000);

  function route() {
    const m = /^#\/p\/(.+)$/.exec(location.hash);
    const p = m && byItem.get(decodeURIComponent(m[1]));
    const detail = $("#detail");
    detail.hidden = !p;
    if (!p) return;
    const add = el("button", "", "Add to cart");
    add.onclick = () => {
      window.pulse.track("add_to_cart", { item_id: p.item_id, category: p.category, price: p.price, quantity: 1,
        currency: "EUR" });
      add.textContent = "Added";
      refreshSoon();
    };
    detail.replaceChildren(thumb(p), el("h2", "", p.name),
      el("p", "", `${p.category} · €${p.price}`), add);
    window.pulse.page({ item_id: p.item_id, category: p.category, title: p.name });
    refreshSoon();
  }
  window.addEventListener("hashchange", route);

  // the slots render the decision's actions; the products they stand for come from the catalogue's item_id
  function decorate(slot) {
    for (const a of slot.querySelectorAll("[data-pulse-action]")) {
      const p = byItem.get(cfg.actions[a.dataset.pulseAction]);
      if (!p) continue;
      a.href = `#/p/${p.item_id}`;
      a.dataset.pulseItem = p.item_id;
      const tile = a.querySelector(".thumb");
      if (tile) tile.replaceWith(thumb(p));
    }
  }

  function explain(slot, dec) {
    const box = $(`#why-${dec.placement}`);
    if (!box) return;
    const ex = dec.explanation || { candidates: [] };
    const rows = ex.candidates.slice().sort((a, b) => (a.rank ?? 999) - (b.rank ?? 999) ||
      (b.score ?? b.expected_reward ?? -1) - (a.score ?? a.expected_reward ?? -1));
    const table = el("table");
    for (const c of rows) {
      const tr = el("tr", c.rank === 0 ? "shown" : "");
      let value = "", terms = "";
      if (!c.eligible) terms = `left out: ${c.excluded_by}`;
      else if (c.score !== undefined) {
        value = c.score.toFixed(3);
        terms = (c.contributions || []).map((t) => `${t.term} ${t.value.toFixed(2)}`).join(", ");
      } else if (c.expected_reward !== undefined) {
        value = c.expected_reward.toFixed(3);
        terms = `expected reward ± ${c.uncertainty.toFixed(3)}`;
      }
      const rank = c.rank === null || c.rank === undefined ? "" : `#${c.rank + 1} `;
      const name = el("td", "", rank + c.action_id);
      name.append(el("div", "terms", terms));
      tr.append(name, el("td", "", value));
      table.append(tr);
    }
    box.replaceChildren(el("h3", "", `${dec.placement}: ${ex.policy || dec.policy}`),
      el("p", "", `${dec.personalised ? "personalised" : "not personalised"}${dec.degraded ? " (degraded)" : ""}` +
        ` · arm ${dec.holdout_arm} · segments: ${(dec.segments || []).join(", ") || "none"}`),
      el("p", "terms", `decision ${dec.decision_id}`), table);
  }

  document.addEventListener("pulse:render", (e) => {
    if (e.detail.changed) decorate(e.target);
    explain(e.target, e.detail.decision);
  });

  function banner() {
    const box = $("#consent");
    if (window.pulse.consented()) return;
    $("#consent-text").textContent = consentMode === "opt_in"
      ? "May this shop remember what you look at, to personalise what it shows? Nothing is sent until you accept."
      : "This shop personalises what it shows from what you look at. You can decline.";
    $("#consent-accept").textContent = consentMode === "opt_in" ? "Accept" : "OK";
    const choose = (yes) => () => {
      window.pulse.consent({ personalisation: yes, analytics: yes });
      box.hidden = true;
      showVisitor();
      window.pulse.refresh();
    };
    $("#consent-accept").onclick = choose(true);
    $("#consent-decline").onclick = choose(false);
    box.hidden = false;
  }
  function showVisitor() {
    const id = window.pulse.anonymousId();
    $("#visitor").textContent = id ? `visitor ${id.slice(0, 8)}… (cookie pulse_aid)` : "no visitor id (no consent)";
  }

  // the snippet, as a site includes it: the public key and the consent mode on the tag
  const tag = document.createElement("script");
  tag.src = "/sdk/pulse.js";
  if (cfg.key) tag.dataset.key = cfg.key;
  tag.dataset.consent = consentMode;
  tag.onload = () => {
    banner();
    showVisitor();
    route();
  };
  document.head.append(tag);
})();
