// runner view: live figures by short polling, filters that apply on change. Everything from the
// server's JSON goes in as textContent (never as HTML); row fragments come from the server already
// escaped, and the page's Content-Security-Policy forbids inline scripts and handlers anyway.
"use strict";
(function () {
  const body = document.body;
  const pollMs = Number(body.dataset.pollMs) || 2000;

  function text(v) { return v === null || v === undefined ? "-" : String(v); }
  function pct(v) { return v === null || v === undefined ? "-" : (v * 100).toFixed(1) + "%"; }
  function eta(v) { return v === null || v === undefined ? "-" : Math.round(v) + " s"; }
  function cell(tr, value, cls) {
    const td = document.createElement("td");
    td.textContent = value;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function batchRow(b) {
    const tr = document.createElement("tr");
    tr.dataset.id = b.id;
    const link = document.createElement("a");
    link.href = "/batch/" + encodeURIComponent(b.id);
    link.textContent = b.id;
    cell(tr, "").appendChild(link);
    cell(tr, b.job);
    cell(tr, b.state, "state " + b.state);
    cell(tr, b.done + "/" + b.total, "num done");
    for (const k of ["passed", "failed", "errors", "running", "queued"]) cell(tr, text(b[k]), "num");
    cell(tr, pct(b.pass_rate), "num");
    cell(tr, Number(b.rate).toFixed(2), "num");
    cell(tr, eta(b.eta_s), "num");
    return tr;
  }

  async function pollBatches() {
    try {
      const r = await fetch("/api/batches", { headers: { accept: "application/json" } });
      if (r.ok) {
        const data = await r.json();
        const rows = document.getElementById("batch-rows");
        if (rows && data.batches.length) rows.replaceChildren(...data.batches.map(batchRow));
        document.getElementById("workers-alive").textContent = String(data.workers_alive);
        document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
        body.dataset.polls = String(Number(body.dataset.polls || 0) + 1);
      }
    } finally {
      setTimeout(pollBatches, pollMs);
    }
  }

  async function refreshRows() {
    const url = new URL(location.href);
    url.searchParams.set("part", "rows");
    const r = await fetch(url);
    if (!r.ok) return;
    const tpl = document.createElement("template");
    tpl.innerHTML = "<table><tbody>" + (await r.text()) + "</tbody></table>";
    document.getElementById("conv-rows").replaceChildren(...tpl.content.querySelector("tbody").children);
  }

  async function pollBatch(id, lastDone) {
    let done = lastDone;
    let finished = false;
    try {
      const r = await fetch("/api/batch/" + encodeURIComponent(id));
      if (r.ok) {
        const f = await r.json();
        const show = {
          done: f.done + "/" + f.total, passed: f.passed, failed: f.failed, errors: f.errors,
          running: f.running, queued: f.queued, pass_rate: pct(f.pass_rate),
          rate: Number(f.rate).toFixed(2), eta_s: eta(f.eta_s), tokens: f.tokens, state: f.state,
        };
        for (const [k, v] of Object.entries(show)) {
          const el = document.getElementById("fig-" + k);
          if (el) el.textContent = text(v);
        }
        if (f.done !== done) { done = f.done; await refreshRows(); }
        finished = f.state === "finished" || f.state === "aborted";
        body.dataset.polls = String(Number(body.dataset.polls || 0) + 1);
      }
    } finally {
      if (!finished) setTimeout(() => pollBatch(id, done), pollMs);
    }
  }

  const filters = document.getElementById("filters");
  if (filters) {
    for (const el of filters.querySelectorAll("select, input[type=checkbox]")) {
      el.addEventListener("change", () => filters.requestSubmit());
    }
  }
  if (body.dataset.page === "batches" && document.getElementById("batch-rows")) {
    setTimeout(pollBatches, pollMs);
  }
  if (body.dataset.page === "batch") {
    const head = document.getElementById("batch-head");
    const state = document.getElementById("fig-state").textContent;
    if (state !== "finished" && state !== "aborted") setTimeout(() => pollBatch(head.dataset.batch, -1), pollMs);
  }
})();
