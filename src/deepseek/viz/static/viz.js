// deepseek-viz page: polls the JSON routes of deepseek/viz/app.py and draws plotly charts.
// Each run's files are read incrementally: the page keeps the byte offset the server returned and asks only
// for what was appended since. Records are merged here: a later record for a step supersedes an earlier one,
// and a {"event": "resume", "step": N} record drops the abandoned records after step N.
"use strict";

const state = { runs: new Map(), profiles: new Map(), pollMs: 3000, dirty: true, timer: null, polling: false, again: false };
const SKIP_KEYS = new Set(["step", "epoch", "event", "time", "rank", "world_size"]);
const PLOT_CONFIG = { displaylogo: false, responsive: true };

function $(id) { return document.getElementById(id); }

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  let body;
  try { body = await response.json(); } catch (err) { body = { error: `${url}: the answer is no JSON` }; }
  if (!response.ok && !body.error) body.error = `${url}: HTTP ${response.status}`;
  return body;
}

function newRun(info) {
  return { info, checked: state.runs.size < 5, series: new Map(), stats: new Map(), offsets: { metrics: 0, stats: 0 },
           notes: { metrics: [], stats: [] }, error: null };
}

// --- merging records ----------------------------------------------------------------------------------------

function applyMetrics(run, records) {
  for (const r of records) {
    if (r.event === "resume" && typeof r.step === "number") {
      for (const points of run.series.values()) for (const step of points.keys()) if (step > r.step) points.delete(step);
      continue;
    }
    if (typeof r.step !== "number" || r.event) continue;
    for (const [key, value] of Object.entries(r)) {
      if (SKIP_KEYS.has(key) || (typeof value !== "number" && value !== null)) continue;
      if (!run.series.has(key)) run.series.set(key, new Map());
      run.series.get(key).set(r.step, value);
    }
  }
}

function applyStats(run, records) {
  for (const r of records) {
    if (typeof r.step !== "number") continue;
    const rank = typeof r.rank === "number" ? r.rank : 0;
    if (!run.stats.has(rank)) run.stats.set(rank, new Map());
    run.stats.get(rank).set(r.step, r);
  }
}

async function readFile(run, which) {
  // loop while the server says more is left (a long file arrives in several chunks)
  for (let round = 0; round < 50; round++) {
    const url = `/api/${which}?run=${encodeURIComponent(run.info.name)}&offset=${run.offsets[which]}`;
    const chunk = await getJSON(url);
    if (chunk.error) { run.error = chunk.error; return; }
    run.error = null;
    if (chunk.restarted) { (which === "metrics" ? run.series : run.stats).clear(); }
    if (chunk.records.length || chunk.restarted) state.dirty = true;
    (which === "metrics" ? applyMetrics : applyStats)(run, chunk.records);
    run.offsets[which] = chunk.next_offset;
    run.notes[which] = chunk.notes;
    if (!chunk.more) return;
  }
}

// --- charts -------------------------------------------------------------------------------------------------

function showEmpty(id, text) {
  const node = $(id);
  if (node.dataset.empty === text) return;
  if (window.Plotly) Plotly.purge(node);
  node.replaceChildren(el("p", { className: "empty", textContent: text }));
  node.dataset.empty = text;
}

function plot(id, traces, layout) {
  const node = $(id);
  if (node.dataset.empty !== undefined) { node.replaceChildren(); delete node.dataset.empty; }
  Plotly.react(node, traces, Object.assign({ height: 300, margin: { l: 60, r: 20, t: 30, b: 30 },
    xaxis: { title: { text: "step", standoff: 4 }, automargin: true }, legend: { orientation: "h", y: -0.22, yanchor: "top" } }, layout),
    PLOT_CONFIG);
}

function sortedPoints(points) {
  const steps = [...points.keys()].sort((a, b) => a - b);
  return { x: steps, y: steps.map((s) => points.get(s)) };
}

function checkedRuns() { return [...state.runs.values()].filter((r) => r.checked); }

function lineChart(id, title, keyFilter, noData) {
  const traces = [];
  const runs = checkedRuns();
  for (const run of runs) {
    const keys = [...run.series.keys()].filter(keyFilter).sort();
    for (const key of keys) {
      const name = keys.length > 1 || runs.length > 1 ? `${run.info.name} ${key}` : key;
      traces.push({ type: "scatter", mode: "lines+markers", name, ...sortedPoints(run.series.get(key)) });
    }
  }
  if (!runs.length) return showEmpty(id, "no run selected");
  if (!traces.length) return showEmpty(id, `no ${noData} recorded in ${runs.length > 1 ? "these runs" : "this run"}`);
  plot(id, traces, { title: { text: title }, showlegend: true });  // the legend names the run, even alone
}

function isPrecisionKey(key) { return key !== "comm/share" && (key.startsWith("precision/") || key.endsWith("_share")); }

function drawCurves() {
  lineChart("loss", "train/loss", (k) => k === "train/loss", "train/loss");
  lineChart("val", "validation", (k) => k.startsWith("val/"), "validation metrics (val/*)");
  lineChart("lr", "learning rate", (k) => k === "lr", "learning rate (lr)");
  lineChart("throughput", "samples per second", (k) => k === "samples_per_s", "throughput (samples_per_s)");
  lineChart("comm", "communication share (comm/share)", (k) => k === "comm/share", "communication share (comm/share)");
  lineChart("precision", "precision shares", isPrecisionKey, "precision shares");
}

function fillSelect(id, values, keepDefault) {
  const select = $(id);
  const before = [...select.selectedOptions].map((o) => o.value);
  const current = [...select.options].map((o) => o.value);
  if (current.length === values.length && current.every((v, i) => v === String(values[i]))) return;
  select.replaceChildren(...values.map((v) => el("option", { value: String(v), textContent: String(v) })));
  for (const option of select.options) option.selected = before.includes(option.value);
  if (!select.selectedOptions.length && values.length) keepDefault(select);
}

function statsRecords() {
  const run = state.runs.get($("stats_run").value);
  if (!run) return { run: null, records: [] };
  const ranks = [...run.stats.keys()].sort((a, b) => a - b);
  fillSelect("rank", ranks, (s) => { s.options[0].selected = true; });
  const byStep = run.stats.get(Number($("rank").value)) || new Map();
  const steps = [...byStep.keys()].sort((a, b) => a - b);
  return { run, records: steps.map((s) => byStep.get(s)) };
}

function namesOf(records, field) {
  const names = [];
  const seen = new Set();
  for (const r of records) for (const name of Object.keys(r[field] || {})) if (!seen.has(name)) { seen.add(name); names.push(name); }
  return names;
}

function label(name) { return name === "" ? "(model)" : name; }

function fmt(x) { return Math.abs(x) >= 1e-2 && Math.abs(x) < 1e3 ? x.toPrecision(2) : x.toExponential(0); }

function histogramChart(id, selectId, field, what, records, why) {
  const modules = namesOf(records, field);
  fillSelect(selectId, modules.map(label), (s) => { s.options[0].selected = true; });
  if (!modules.length) return showEmpty(id, `no ${what} recorded in this run${why}`);
  const chosen = modules[modules.map(label).indexOf($(selectId).value)] ?? modules[0];
  const withModule = records.filter((r) => r[field] && r[field][chosen]);
  const edges = withModule[withModule.length - 1].edges || [];
  const bins = withModule[withModule.length - 1][field][chosen].length;
  const y = [...Array(bins).keys()].map((i) => (edges.length === bins + 1 ? `${fmt(edges[i])}..${fmt(edges[i + 1])}` : `bin ${i}`));
  const z = y.map((_, b) => withModule.map((r) => Math.log10(1 + (r[field][chosen][b] || 0))));
  plot(id, [{ type: "heatmap", x: withModule.map((r) => r.step), y, z, colorscale: "Viridis",
    colorbar: { title: { text: "log10(1+n)" } }, hovertemplate: "step %{x}<br>bin %{y}<br>log10(1+n) %{z:.2f}<extra></extra>" }],
    { title: { text: `${what}: ${label(chosen)}` }, yaxis: { type: "category", automargin: true } });
}

function drawStats() {
  const runs = checkedRuns().filter((r) => r.info.has_stats || r.stats.size);
  const names = runs.map((r) => r.info.name);
  fillSelect("stats_run", names, (s) => { s.options[0].selected = true; });
  const { run, records } = statsRecords();
  const why = run ? "" : ": set logging.stats in the run's config to record it";
  if (!run) fillSelect("rank", [], () => {});
  const params = namesOf(records, "grad_norm");
  if (!params.length) {
    showEmpty("grad_norm_heatmap", `no gradient norms (grad_norm) recorded in this run${why}`);
    showEmpty("grad_norm_lines", `no gradient norms (grad_norm) recorded in this run${why}`);
    fillSelect("layer_select", [], () => {});
  } else {
    const withNorms = records.filter((r) => r.grad_norm);
    const x = withNorms.map((r) => r.step);
    const z = params.map((p) => withNorms.map((r) => (r.grad_norm[p] > 0 ? Math.log10(r.grad_norm[p]) : null)));
    plot("grad_norm_heatmap", [{ type: "heatmap", x, y: params, z, colorscale: "Viridis",
      colorbar: { title: { text: "log10 |g|" } } }], { title: { text: "gradient norm per layer" },
      yaxis: { type: "category", automargin: true } });
    fillSelect("layer_select", ["(total)", ...params], (s) => { for (const o of [...s.options].slice(0, 4)) o.selected = true; });
    const traces = [...$("layer_select").selectedOptions].map((o) => ({ type: "scatter", mode: "lines+markers", name: o.value, x,
      y: withNorms.map((r) => (o.value === "(total)" ? r.grad_norm_total : r.grad_norm[o.value])) }));
    plot("grad_norm_lines", traces, { title: { text: "gradient norm of the selected layers" }, yaxis: { type: "log" } });
  }
  histogramChart("act_hist", "act_module", "act_hist", "activation histograms (act_hist)", records,
    run ? ": list modules in logging.stats.activations" : why);
  histogramChart("grad_hist", "grad_module", "grad_hist", "gradient histograms (grad_hist)", records, why);
}

// --- profiles -----------------------------------------------------------------------------------------------

function table(headers, rows) {
  return el("table", {}, [el("tr", {}, headers.map((h) => el("th", { textContent: h }))),
    ...rows.map((row) => el("tr", {}, row.map((c) => el("td", { textContent: c == null ? "-" : String(c) }))))]);
}

function num(x, digits = 3) { return typeof x === "number" ? Number(x.toPrecision(digits)).toString() : x; }
function pct(x) {  // a tiny share (a CPU's MFU) keeps its digits instead of reading 0.0%
  if (typeof x !== "number") return x;
  return x !== 0 && Math.abs(x) < 0.001 ? `${(100 * x).toPrecision(2)}%` : `${(100 * x).toFixed(1)}%`;
}

function profileView(path, s) {
  const box = el("div", { className: "profile" }, [el("h3", { textContent: path })]);
  if (s.error) { box.append(el("p", { className: "error", textContent: s.error })); return box; }
  box.append(el("p", { textContent: `${s.model ?? "?"} (${s.mode ?? "?"}) on ${s.device_name ?? s.device ?? "?"}, ` +
    `${s.precision ?? "?"}, batch ${s.batch_size ?? "?"}, ${s.steps ?? "?"} steps profiled; step time ` +
    `${num(s.step_time_s?.mean)} s; achieved ${num(s.achieved_flops_per_s)} FLOP/s; MFU ${s.mfu == null ? "n/a" : pct(s.mfu)}` +
    (s.peak?.how ? ` (peak: ${s.peak.how})` : "") }));
  const split = s.split_s || {};
  box.append(table(["phase", "s / step", "share"], Object.keys(split).map((k) => [k, num(split[k]), pct(s.split_share?.[k])])));
  box.append(table(["bottleneck", "share", "what to try"], (s.bottlenecks || []).map((b) => [b.what, pct(b.share), b.advice])));
  const modules = [...(s.modules || [])].sort((a, b) => (b.forward_s + b.backward_s) - (a.forward_s + a.backward_s)).slice(0, 10);
  box.append(table(["module", "forward s", "backward s", "FLOPs"], modules.map((m) => [m.name, num(m.forward_s), num(m.backward_s), num(m.flops)])));
  const links = el("p", { className: "links" });
  for (const [key, rel] of Object.entries(s.links || {})) {
    links.append(el("a", { href: `/files/${rel.split("/").map(encodeURIComponent).join("/")}`, textContent: key, target: "_blank" }), " ");
  }
  box.append(links);
  return box;
}

async function refreshProfiles(found) {
  let changed = false;
  for (const p of found) {
    const known = state.profiles.get(p.path);
    if (known && !known.error && !p.error) continue;
    state.profiles.set(p.path, p.error ? { error: p.error } : await getJSON(`/api/profile?path=${encodeURIComponent(p.path)}`));
    changed = true;
  }
  const paths = new Set(found.map((p) => p.path));
  for (const path of [...state.profiles.keys()]) if (!paths.has(path)) { state.profiles.delete(path); changed = true; }
  if (!changed) return;
  const views = [...state.profiles.entries()].map(([path, s]) => profileView(path, s));
  $("profiles").replaceChildren(...(views.length ? views : [el("p", { className: "empty", textContent: "no profiler summaries under the log directory" })]));
}

// --- runs list and polling ----------------------------------------------------------------------------------

function drawRunList() {
  const items = [...state.runs.values()].map((run) => {
    const box = el("input", { type: "checkbox", checked: run.checked, value: run.info.name });
    box.addEventListener("change", () => { run.checked = box.checked; state.dirty = true; draw(); poll(); });
    const tags = [run.info.format_version === 0 ? "older format" : "", run.info.has_stats ? "stats" : ""].filter(Boolean);
    return el("label", {}, [box, ` ${run.info.name}`, tags.length ? el("small", { textContent: ` (${tags.join(", ")})` }) : ""]);
  });
  $("runs").replaceChildren(...(items.length ? items : [el("p", { className: "empty", textContent: "no runs" })]));
}

function drawNotes() {
  const notes = [];
  for (const run of checkedRuns()) {
    for (const text of [run.error, ...run.notes.metrics, ...run.notes.stats]) if (text) notes.push(`${run.info.name}: ${text}`);
  }
  $("notes").replaceChildren(...notes.map((text) => el("p", { className: "note", textContent: text })));
}

function draw() {
  drawNotes();
  if (!state.dirty) return;
  state.dirty = false;
  drawCurves();
  drawStats();
}

function setMessage(text) { $("message").hidden = !text; $("message").textContent = text || ""; }

async function poll() {
  if (state.polling) { state.again = true; return; }  // one poll at a time: offsets advance in order
  state.polling = true;
  clearTimeout(state.timer);
  try {
    const found = await getJSON("/api/runs");
    if (found.error) throw new Error(found.error);
    state.pollMs = found.poll_ms || state.pollMs;
    $("logdir").textContent = found.logdir;
    setMessage(found.message);
    let listChanged = false;
    for (const info of found.runs) {
      if (!state.runs.has(info.name)) { state.runs.set(info.name, newRun(info)); listChanged = true; state.dirty = true; }
      else if (state.runs.get(info.name).info.has_stats !== info.has_stats) { state.runs.get(info.name).info = info; listChanged = true; }
    }
    const names = new Set(found.runs.map((r) => r.name));
    for (const name of [...state.runs.keys()]) if (!names.has(name)) { state.runs.delete(name); listChanged = true; state.dirty = true; }
    if (listChanged) drawRunList();
    for (const run of checkedRuns()) {
      await readFile(run, "metrics");
      if (run.info.has_stats) await readFile(run, "stats");
    }
    await refreshProfiles(found.profiles);
    draw();
    $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    setMessage(`cannot read the runs: ${err.message}; trying again every ${state.pollMs / 1000} s`);
  }
  state.polling = false;
  if (state.again) { state.again = false; return poll(); }
  state.timer = setTimeout(poll, state.pollMs);
}

function redrawOn(id) { $(id).addEventListener("change", () => { state.dirty = true; draw(); }); }

window.addEventListener("DOMContentLoaded", () => {
  if (!window.Plotly) { setMessage("plotly.min.js did not load: the charts cannot be drawn"); return; }
  for (const id of ["stats_run", "rank", "layer_select", "act_module", "grad_module"]) redrawOn(id);
  poll();
});
