// factory view: browse a run's records. Every value from the store is inserted as text (textContent /
// createTextNode), never parsed as markup. The state lives in the URL hash, so views can be linked and the
// back button works.
"use strict";

const PER_PAGE = 50;
const $ = (id) => document.getElementById(id);
let facets = null;
let lastQuery = "";

// el("td", {class: "num"}, "text", childNode, ...): strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const fmt = (n) => (n === null || n === undefined ? "" : Number(n).toLocaleString("en-US"));
const short = (id) => (id || "").slice(0, 12);

function state() {
  const p = new URLSearchParams(location.hash.slice(1));
  return {
    run: p.get("run") || "", status: p.get("status") || "all", filter: p.get("filter"),
    reason: p.get("reason"), label: p.get("label"), stage: p.get("stage"), q: p.get("q") || "",
    page: Math.max(0, parseInt(p.get("page") || "0", 10) || 0), open: p.get("open"),
  };
}

function go(changes, keepPage) {
  const s = Object.assign(state(), changes);
  if (!keepPage && !("page" in changes)) s.page = 0;
  const p = new URLSearchParams();
  for (const k of ["run", "status", "filter", "reason", "label", "stage", "q", "page", "open"]) {
    const v = s[k];
    const empty = v === null || v === undefined || (v === "" && k !== "reason");
    if (empty || (k === "status" && v === "all") || (k === "page" && !v)) continue;
    p.set(k, v);
  }
  const hash = "#" + p.toString();
  if (location.hash !== hash) location.hash = hash;
  else render();
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== null && v !== undefined) q.set(k, v);
  const resp = await fetch(`/api/${path}?${q}`);
  const body = await resp.json().catch(() => ({ error: `HTTP ${resp.status}` }));
  if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
  return body;
}

// ---- side bar ------------------------------------------------------------------------------------
function facet(name, n, on, onclick, extra) {
  return el("button", { class: "facet " + (extra || "") + (on ? " on" : ""), type: "button", onclick },
    el("span", { class: "name" }, name), el("span", { class: "n" }, n));
}

function drawFacets(s) {
  const f = facets;
  $("totals").textContent = `${fmt(f.records)} records · ${fmt(f.kept)} kept · ${fmt(f.rejected)} rejected`;
  $("statuses").replaceChildren(
    facet("All", fmt(f.records), s.status === "all", () => go({ status: "all" }), "status"),
    facet("Kept", fmt(f.kept), s.status === "kept", () => go({ status: "kept" }), "status"),
    facet("Rejected", fmt(f.rejected), s.status === "rejected", () => go({ status: "rejected" }), "status"),
  );
  const reasons = [];
  for (const flt of f.filters) {
    const b = facet(flt.filter, fmt(flt.records), s.filter === flt.filter && s.reason === null,
      () => go({ filter: flt.filter, reason: null }), "filter-name");
    b.dataset.filter = flt.filter;
    reasons.push(b);
    for (const r of flt.reasons) {
      const rb = facet(r.reason || "(no reason)", fmt(r.records), s.filter === flt.filter && s.reason === r.reason,
        () => go({ filter: flt.filter, reason: r.reason }), "reason");
      rb.dataset.filter = flt.filter;
      rb.dataset.reason = r.reason;
      reasons.push(rb);
    }
    if (flt.more > 0) reasons.push(el("div", { class: "more" }, `${fmt(flt.more)} more reasons (search to find them)`));
  }
  $("reasons").replaceChildren(...(reasons.length ? reasons : [el("div", { class: "more" }, "no record was dropped")]));
  $("labels-head").hidden = !f.labels.length;
  $("labels").replaceChildren(...f.labels.map((l) => {
    const b = facet(l.label, `${fmt(l.kept)} / ${fmt(l.records)}`, s.label === l.label, () => go({ label: l.label }), "label");
    b.title = `${l.kept} kept of ${l.records}`;
    b.dataset.label = l.label;
    return b;
  }));
  $("stages-head").hidden = f.stages.length < 2;
  $("stages").replaceChildren(...(f.stages.length < 2 ? [] : f.stages.map((x) =>
    facet(x.stage, fmt(x.records), s.stage === x.stage, () => go({ stage: x.stage }), "stage"))));
}

function drawChips(s) {
  const chips = [];
  const chip = (text, clear) => chips.push(el("span", { class: "chip" }, text,
    el("button", { type: "button", title: "remove", "aria-label": "remove", onclick: () => go(clear) }, "×")));
  if (s.status !== "all") chip(s.status, { status: "all" });
  if (s.filter) chip(s.reason !== null ? `${s.filter}: ${s.reason || "(no reason)"}` : `dropped by ${s.filter}`,
    { filter: null, reason: null });
  if (s.label) chip(`label: ${s.label}`, { label: null });
  if (s.stage) chip(`stage: ${s.stage}`, { stage: null });
  if (s.q) chip(`text contains “${s.q}”`, { q: "" });
  $("chips").replaceChildren(...chips);
}

// ---- the list ------------------------------------------------------------------------------------
function drawPager(id, s, page) {
  const first = page.total ? page.offset + 1 : 0;
  const last = page.offset + page.rows.length;
  const pages = Math.max(1, Math.ceil(page.total / PER_PAGE));
  $(id).replaceChildren(
    el("button", { type: "button", class: "prev", disabled: s.page <= 0, onclick: () => go({ page: s.page - 1 }) }, "‹ Previous"),
    el("span", { class: "range" }, `${fmt(first)}–${fmt(last)} of ${fmt(page.total)} · page ${fmt(s.page + 1)} of ${fmt(pages)}`),
    el("button", { type: "button", class: "next", disabled: last >= page.total, onclick: () => go({ page: s.page + 1 }) }, "Next ›"),
  );
}

function drawRows(s, page) {
  if (!page.rows.length) {
    $("rows").replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "No record matches.")));
    return;
  }
  $("rows").replaceChildren(...page.rows.map((r) => {
    const why = r.dropped_by.map((d) => `${d.filter}: ${d.reason || "(no reason)"}`).join("; ");
    const tr = el("tr", { class: "rec" + (s.open === r.id ? " open" : ""), tabindex: 0, dataset: { id: r.id },
      onclick: () => go({ open: r.id }, true),
      onkeydown: (e) => { if (e.key === "Enter") go({ open: r.id }, true); } },
      el("td", { class: "num" }, fmt(r.n + 1)),
      el("td", {}, el("div", { class: "id", title: r.id }, short(r.id)),
        el("div", { class: "muted" }, `${r.seed_id ?? ""} · ${r.stage} #${r.sample_index ?? ""}`)),
      el("td", {}, r.label ?? ""),
      el("td", {}, el("span", { class: "badge " + (r.kept ? "kept" : "rejected") }, r.kept ? "kept" : "rejected")),
      el("td", {}, el("div", { class: "snippet" }, r.text ?? ""), why ? el("div", { class: "why" }, why) : null),
    );
    return tr;
  }));
}

// ---- one record ----------------------------------------------------------------------------------
function kv(rows) {
  return el("table", {}, ...rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
}

function pretty(value) {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

function recordLinks(list) {
  if (!list || !list.length) return "none";
  return el("div", {}, ...list.map((x) => el("div", {},
    el("a", { onclick: () => go({ open: x.id }, true) }, short(x.id)), ` ${x.stage}: ${x.text ?? ""}`)));
}

function drawDetail(rec) {
  const box = $("detail");
  const verdicts = el("table", { id: "verdicts" },
    el("tr", {}, ...["filter", "version", "pass", "decision", "score", "reason", "evidence"].map((h) => el("th", {}, h))),
    ...rec.verdicts.map((v) => el("tr", { class: (v.keep ? "keep" : "drop") + (v.live ? "" : " old"), dataset: { filter: v.filter } },
      el("td", {}, v.filter), el("td", { class: "id" }, v.filter_version),
      el("td", {}, v.pass_id === null ? "recipe" : String(v.pass_id) + (v.live ? "" : " (earlier)")),
      el("td", {}, v.keep ? "keep" : "drop"), el("td", {}, v.score === null ? "" : String(v.score)),
      el("td", {}, v.reason ?? ""), el("td", {}, v.detail === null ? "" : el("div", { class: "evidence" }, JSON.stringify(v.detail))))));
  const answers = rec.answers.map((a, i) => {
    if (a.missing) return el("div", {}, el("h3", {}, `Request ${i + 1}`), el("p", { class: "muted" }, a.forgotten ? `answer ${a.key} was forgotten (factory cache forget); the record keeps its own text` : `answer ${a.key} is not in the cache`));
    return el("div", { class: "answer" },
      el("h3", {}, rec.answers.length > 1 ? `Prompt ${i + 1}` : "Prompt"),
      ...a.messages.map((m) => el("div", {}, el("div", { class: "role" }, m.role), el("pre", { class: "message" }, m.content))),
      ...(a.reasoning ? [el("details", { class: "reasoning" },
        el("summary", {}, `Reasoning (${fmt(a.reasoning.length)} characters)`),
        el("pre", { class: "completion" }, a.reasoning))] : []),
      el("h3", {}, rec.answers.length > 1 ? `Raw completion ${i + 1}` : "Raw completion"),
      el("pre", { class: "completion" }, a.status === "ok" ? (a.text ?? "") : `rejected: ${a.error ?? ""}`),
      el("div", { class: "muted" }, `${a.teacher} · ${a.status} · finish ${a.finish_reason ?? "?"} · ` +
        `${fmt(a.prompt_tokens)} prompt / ${fmt(a.completion_tokens)} output tokens · ` +
        `${a.latency_ms ? fmt(Math.round(a.latency_ms)) + " ms" : "latency not recorded"} · sampling ${JSON.stringify(a.sampling)}`));
  });
  box.replaceChildren(
    el("h2", {}, el("span", { class: "badge " + (rec.curated ? "kept" : "rejected") }, rec.curated ? "curated" : "rejected"),
      el("span", { class: "id" }, rec.id),
      el("button", { type: "button", class: "close", onclick: () => go({ open: null }, true) }, "Close")),
    el("h3", {}, "Text the filters read"), el("pre", { id: "record-text" }, rec.text ?? ""),
    el("h3", {}, "Verdicts"), verdicts,
    ...answers,
    el("h3", {}, "Parsed payload"), el("pre", { id: "payload" }, pretty(rec.payload)),
    el("h3", {}, "Lineage"),
    kv([["run", rec.run_id], ["recipe", rec.recipe], ["stage", rec.stage], ["seed", rec.seed_id],
        ["sample index", String(rec.sample_index)], ["teacher", rec.teacher ?? ""],
        ["template version", rec.template_version ?? ""], ["created", rec.created_at ?? ""],
        ["request keys", (rec.request_keys || []).join(", ") || "none"],
        ["parents", recordLinks(rec.parents)], ["children", recordLinks(rec.children)]]),
  );
  box.hidden = false;
  box.scrollTop = 0;
}

// ---- the loop ------------------------------------------------------------------------------------
let generation = 0;

async function render() {
  const s = state();
  const mine = ++generation;
  try {
    if (!s.run) {
      const first = $("run").options[0];
      if (first) go({ run: first.value });
      return;
    }
    $("run").value = s.run;
    $("q").value = s.q;
    if (!facets || facets.run_id !== s.run) facets = await api("facets", { run: s.run });
    if (mine !== generation) return;
    drawFacets(s);
    drawChips(s);
    const query = JSON.stringify([s.run, s.status, s.filter, s.reason, s.label, s.stage, s.q, s.page]);
    if (query !== lastQuery) {
      const page = await api("records", {
        run: s.run, status: s.status, filter: s.filter, reason: s.reason, label: s.label, stage: s.stage,
        q: s.q || null, offset: s.page * PER_PAGE, limit: PER_PAGE,
      });
      if (mine !== generation) return;
      lastQuery = query;
      drawPager("pager-top", s, page);
      drawPager("pager-bottom", s, page);
      drawRows(s, page);
      if (!performance.getEntriesByName("records-shown").length) performance.mark("records-shown");
    } else {
      for (const tr of document.querySelectorAll("tr.rec")) tr.classList.toggle("open", tr.dataset.id === s.open);
    }
    if (s.open) {
      const rec = await api("record", { run: s.run, id: s.open });
      if (mine !== generation) return;
      drawDetail(rec);
    } else {
      $("detail").hidden = true;
    }
    $("layout").classList.toggle("open", Boolean(s.open));
    showError("");
    document.body.dataset.ready = "1";
  } catch (err) {
    showError(String(err.message || err));
    document.body.dataset.ready = "1";
  }
}

async function start() {
  try {
    const info = await api("runs", {});
    $("store").textContent = info.store;
    $("run").replaceChildren(...info.runs.map((r) =>
      el("option", { value: r.id }, `${r.name} (${r.recipe}, ${fmt(r.records)} records) · ${r.id}`)));
    if (!info.runs.length) showError("This store holds no runs yet: start one with `factory run CONFIG.yaml`.");
  } catch (err) {
    showError(String(err.message || err));
    return;
  }
  $("run").addEventListener("change", (e) => {
    go({ run: e.target.value, status: "all", filter: null, reason: null, label: null, stage: null, q: "", open: null });
  });
  $("search").addEventListener("submit", (e) => { e.preventDefault(); go({ q: $("q").value.trim() }); });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state().open) go({ open: null }, true); });
  window.addEventListener("hashchange", render);
  render();
}

start();
