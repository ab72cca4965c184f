// tuneplan serve: the page. Vanilla JS, no framework, no network beyond this server.
// Form fields are named by the CLI's options, so the query string of the page, of the API
// calls and of a `tuneplan` command line are the same words.
"use strict";

const GiB = 2 ** 30;
const DEBOUNCE_MS = 250;
const PLAN_ROWS = 15;  // rows of the ranked table shown before "show all"
const UPLOAD_KEY = "tuneplan-upload";
const PLAN = ["devices", "dataset-tokens", "epochs", "rank-by", "max-gpus"];
// form fields that are not job options: what to estimate, on which device, and the plan's and
// matrix's own settings; every other named field is a job option (Job settings) that every
// computing endpoint takes, so a control added to the form is sent without another list here
const NOT_JOB = ["model", "gpu", "models", "methods", ...PLAN];
const COLOURS = {
  weights: "#4e79a7", quant_constants: "#a0cbe8", adapters: "#f28e2b", param_gather: "#9c755f",
  gradients: "#ffbe7d", optimizer: "#59a14f", master_weights: "#8cd17d", ddp_buckets: "#86bcb6",
  optimizer_temp: "#b6d7a8", activations: "#edc948", logits: "#e15759", working: "#ff9d9a",
  allocator: "#bab0ac", cuda_context: "#79706e",
};
const EXTRA_COLOURS = ["#76b7b2", "#d37295", "#b07aa1", "#499894", "#fabfd2"];
const HEAT = { fits: "#2e9e5b", tight: "#e0a31a", uncertain: "#e0a31a", no: "#d64545", na: "#c9ced6" };
// the plan's time split (StepTime.breakdown terms): the colours of `plan --png` (tuneplan/cli/timebars.py)
const TIME_COLOURS = {
  compute: "#4e79a7", "pipeline bubble": "#bab0ac", optimizer: "#59a14f",
  "tensor parallel": "#e15759", "ZeRO-3/FSDP gathers": "#f28e2b", "data-parallel sync": "#ffbe7d",
  "pipeline send/recv": "#d37295", "context parallel": "#b07aa1", "expert all-to-all": "#9c755f",
};
const TIME_OTHER = "#ff9d9a";  // a kind of communication not named above
const TIME_GROUPS = ["compute", "communication", "pipeline bubble", "optimizer"];
const TIME_BAR_W = 140, TIME_BAR_H = 14;
const VERDICT_TEXT = { fits: "fits", tight: "tight", uncertain: "uncertain", no: "does not fit" };

const state = { options: null, models: [], devices: [], upload: null, updates: 0, planAll: false };
const $ = (sel) => document.querySelector(sel);
const form = $("#form");

// ---------------------------------------------------------------- small helpers

function el(tag, attrs = {}, ...kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) node.append(kid);
  return node;
}

function svg(tag, attrs = {}, ...kids) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, v);
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined) continue;
    node.append(typeof kid === "string" ? document.createTextNode(kid) : kid);
  }
  return node;
}

const gib = (b) => (b / GiB).toFixed(2);
const pct = (x) => `${x >= 0 ? "+" : ""}${Math.round(x * 100)}%`;
const int = (n) => Number(n).toLocaleString("en-US", { maximumFractionDigits: 0 });

function duration(s) {
  if (s === null || s === undefined) return "-";
  if (typeof s === "string" || !isFinite(s)) return "never";
  if (s < 90) return `${s.toFixed(0)} s`;
  if (s < 5400) return `${(s / 60).toFixed(0)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

function money(x) {
  if (x === null || x === undefined) return "-";
  if (typeof x === "string") return x;
  return x >= 100 ? `$${int(x)}` : `$${x.toFixed(2)}`;
}

function weeks(w) {
  if (w === null || w === undefined) return "-";
  if (typeof w === "string") return "never";
  return `${w.toFixed(0)} wk`;
}

// ---------------------------------------------------------------- form <-> query string

function fieldsOf() {
  return Array.from(form.elements).filter((e) => e.name);
}

function formParams() {
  const out = {};
  for (const f of fieldsOf()) {
    if (f.type === "checkbox") {
      if (f.checked) out[f.name] = "1";
    } else if (f.value.trim() !== "") {
      out[f.name] = f.value.trim();
    }
  }
  return out;
}

function setForm(params) {
  for (const f of fieldsOf()) {
    const v = params.get(f.name);
    if (f.type === "checkbox") f.checked = v !== null && !["0", "false", "no", "off"].includes(v.toLowerCase());
    else if (f.tagName === "SELECT") {
      const want = (v || "").toLowerCase();
      if (want && !Array.from(f.options).some((o) => o.value === want)) f.append(el("option", { value: want, text: want }));
      f.value = want;
    } else f.value = v || "";
  }
  markDefaults();
}

function markDefaults() {
  for (const s of form.querySelectorAll("select")) s.classList.toggle("is-default", s.value === "");
}

function pick(params, names) {
  const out = {};
  for (const n of names) if (params[n] !== undefined) out[n] = params[n];
  return out;
}

function writeURL(params) {
  const q = new URLSearchParams(params);
  if (state.upload) q.set("upload", state.upload.label);
  const url = `${location.pathname}${q.toString() ? "?" + q.toString() : ""}`;
  if (url !== location.pathname + location.search) history.replaceState(null, "", url);
}

// ---------------------------------------------------------------- API

async function api(path, params, signal, opts = {}) {
  const q = new URLSearchParams(params);
  const init = { signal, headers: { Accept: "application/json" } };
  if (state.upload && opts.upload !== false) {
    init.method = "POST";
    init.body = state.upload.text;
    init.headers["Content-Type"] = "application/json";
    if (state.upload.name) q.set("name", state.upload.name);
  }
  const r = await fetch(`${path}?${q.toString()}`, init);
  if (opts.raw && r.ok) return r;
  const text = await r.text();
  let data;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new Error(`${r.status} ${r.statusText}: the server's answer is not JSON`);
  }
  if (!r.ok) throw new Error(data.error || `${r.status} ${r.statusText}`);
  return data;
}

function jobNames() {
  return fieldsOf().map((f) => f.name).filter((n) => !NOT_JOB.includes(n));
}

function estimateParams(p) {
  const out = pick(p, jobNames());
  if (!state.upload) out.model = p.model || defaultModel();
  if (p.gpu) out.gpu = p.gpu;
  return out;
}

function planParams(p) {
  const out = pick(p, jobNames().filter((k) => k !== "gpus"));  // plan chooses the GPU count
  Object.assign(out, pick(p, PLAN));
  if (!state.upload) out.model = p.model || defaultModel();
  return out;
}

function methodKind(m) {
  const kinds = state.options ? state.options.choices["matrix-methods"] : [];
  return kinds.includes(m) ? m : m && m.startsWith("qlora") ? "qlora" : m;
}

function matrixParams(p) {
  const out = pick(p, jobNames().filter((k) => k !== "method"));  // matrix compares methods
  const chosen = methodKind(p.method || "lora");
  out.methods = p.methods || Array.from(new Set(["full", "lora", "qlora", chosen])).join(",");
  out.devices = p.devices || state.options.matrix_defaults.devices;
  if (!state.upload) out.models = p.models || p.model || defaultModel();
  return out;
}

function defaultModel() {
  return $("#model").placeholder;
}

// ---------------------------------------------------------------- update cycle

let timer = null;
let controller = null;
let generation = 0;

function schedule() {
  markDefaults();
  clearTimeout(timer);
  timer = setTimeout(update, DEBOUNCE_MS);
}

function isAbort(e) {
  return e && e.name === "AbortError";
}

async function update() {
  if (controller) controller.abort();
  controller = new AbortController();
  const signal = controller.signal;
  const mine = ++generation;
  const p = formParams();
  writeURL(p);
  setBusy(true);
  const t0 = performance.now();
  const jobs = [
    api("/api/estimate", estimateParams(p), signal).then(
      (d) => { hideError(); renderEstimate(d, p); },
      (e) => { if (!isAbort(e)) showError(e.message); }),
    api("/api/plan", planParams(p), signal).then(
      (d) => { sectionError("plan", null); renderPlan(d, p); },
      (e) => { if (!isAbort(e)) { sectionError("plan", e.message); $("#plan").replaceChildren(); } }),
    api("/api/heatmap", matrixParams(p), signal).then(
      (d) => { sectionError("matrix", null); renderHeatmap(d); },
      (e) => { if (!isAbort(e)) { sectionError("matrix", e.message); $("#heatmap").replaceChildren(); } }),
  ];
  renderExports();
  await Promise.allSettled(jobs);
  if (mine === generation) {
    state.updates += 1;
    document.body.dataset.updates = String(state.updates);
    setBusy(false, performance.now() - t0);
  }
}

function setBusy(busy, ms) {
  const s = $("#status");
  document.body.dataset.state = busy ? "busy" : "ready";
  s.classList.toggle("busy", busy);
  s.textContent = busy ? "computing…" : `updated in ${Math.round(ms)} ms`;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = false;
  $("#results").classList.add("stale");
}

function hideError() {
  $("#error").hidden = true;
  $("#results").classList.remove("stale");
}

function sectionError(which, message) {
  const box = $(`#${which}-error`);
  box.hidden = !message;
  box.textContent = message || "";
}

// ---------------------------------------------------------------- estimate: verdict, bar, table

function flagsOf(settings) {
  const map = state.options.setting_option;
  return Object.entries(settings).map(([k, v]) => {
    const opt = map[k] || k;
    const field = state.options.fields[k];
    if (field && field.flag) return `--${opt}`;
    return `--${opt} ${v}`;
  }).join(" ");
}

function applySettings(settings) {
  const map = state.options.setting_option;
  for (const [k, v] of Object.entries(settings)) {
    const f = form.elements.namedItem(map[k] || k);
    if (!f) continue;
    if (f.type === "checkbox") f.checked = Boolean(v);
    else {
      const text = v === null ? "" : String(v);
      if (f.tagName === "SELECT" && text && !Array.from(f.options).some((o) => o.value === text)) {
        f.append(el("option", { value: text, text }));
      }
      f.value = text;
    }
  }
  schedule();
}

function changeLine(title, change) {
  return el("div", {},
    el("strong", { text: `${title}: ` }), change.description,
    change.settings && Object.keys(change.settings).length ? [" ", el("code", { text: flagsOf(change.settings) })] : null,
    change.peak_bytes !== null ? ` → ${gib(change.peak_bytes)} GiB` : null,
    el("button", { type: "button", class: "small", onclick: () => applySettings(change.settings), text: "Apply" }));
}

function renderEstimate(d, p) {
  const c = d.counters;
  const u = d.uncertainty;  // the band of measured runs of this kind of job (tuneplan.uncertainty)
  $("#peak-total").textContent = `${gib(c.device_used)} GiB device total, peak in ${d.peak_phase}` +
    (u ? ` (${Math.round(100 * u.level)}% band ${gib(u.low_bytes)}-${gib(u.high_bytes)} GiB, from ${int(u.rows)} ` +
      `measured runs of ${u.kind})` : "");
  const fit = d.fit;
  const badge = $("#verdict");
  const fix = $("#fix");
  const limits = $("#limits");
  fix.replaceChildren();
  limits.replaceChildren();
  if (fit) {
    badge.className = `verdict ${fit.verdict}`;
    badge.textContent = VERDICT_TEXT[fit.verdict] || fit.verdict;
    const pool = fit.offloaded_bytes ? ` + ${gib(fit.offloaded_bytes)} GiB offloaded into the same memory` : "";
    $("#fit-title").textContent = `${fit.device}: peak ${gib(fit.peak_bytes)} GiB${pool} of ${gib(fit.usable_bytes)} GiB usable ` +
      `(${pct(fit.headroom)} headroom), device total as nvidia-smi shows it`;
    $("#fit-summary").textContent = fit.usable_rule ? `usable memory: ${fit.usable_rule}` : "";
    const label = { no: "Cheapest fix", uncertain: "To clear the band" }[fit.verdict] || "For 10% headroom";
    if (fit.change) fix.append(changeLine(label, fit.change));
    if (fit.keep_method_change) fix.append(changeLine(`Keeping ${d.method.kind}`, fit.keep_method_change));
    fix.hidden = !fit.change && !fit.keep_method_change;
    if (fit.max_micro_batch !== null) {
      limits.append(
        el("div", {}, el("dt", { text: `largest micro-batch at ${int(d.training.seq_len)} tokens` }),
          el("dd", { id: "max-batch", text: fit.max_micro_batch ? int(fit.max_micro_batch) : "none" })),
        el("div", {}, el("dt", { text: `longest sequence at micro-batch ${d.training.micro_batch}` }),
          el("dd", { id: "max-seq", text: fit.max_seq_len ? `${int(fit.max_seq_len)} tokens` : "none" })));
    }
  } else {
    badge.className = "verdict none";
    badge.textContent = "no device";
    $("#fit-title").textContent = "Pick a device (GPUs section) for the fit verdict, the cheapest fix and the largest batch and sequence.";
    $("#fit-summary").textContent = "";
    fix.hidden = true;
  }
  drawBar(d);
  renderComponents(d);
  const notes = [];
  if (d.model_note) notes.push(d.model_note);
  if (d.cpu_bytes) notes.push(`CPU RAM for offload: ${gib(d.cpu_bytes)} GiB per GPU process.`);
  notes.push(`${int(d.trainable_params)} of ${int(d.total_params)} parameters trainable.`);
  // the step's phases (forward/backward/optimizer; an online task's generation/scoring/loss) and,
  // for an online task on a GPU, its time per phase (tuneplan.timing_generation)
  const phases = Object.entries(d.phase_bytes || {});
  if (phases.length > 1) {
    notes.push(`Peak by phase (GiB = 2^30 bytes, before allocator overhead and CUDA context): ` +
      `${phases.map(([k, v]) => `${k} ${gib(v)}`).join(", ")}; the ${d.peak_phase} phase bounds the GPU.`);
  }
  const t = d.time;
  if (t && t.phases) {
    notes.push(`Step on ${t.gpus} x ${t.device}: ${t.step_s.toFixed(2)} s, bound by ${t.bound_by} (seconds: ` +
      `${Object.entries(t.phases).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(", ")}); ` +
      `${int(Math.round(t.generated_tokens_per_s))} generated tokens/s.`);
  }
  $("#memory-note").textContent = notes.join(" ");
  $("#assumptions").replaceChildren(...d.assumptions.map((a) => el("li", { text: a })));
  if (!p.model && !state.upload) $("#model-info").textContent = `${d.model} (default)`;
  else if (!state.upload) describeModel(d.model);
}

function colourOf(key, i) {
  return COLOURS[key] || EXTRA_COLOURS[i % EXTRA_COLOURS.length];
}

function drawBar(d) {
  const W = 1000, x0 = 8, barY = 30, barH = 36;
  const c = d.counters;
  const usable = d.fit ? d.fit.usable_bytes + 0 : null;
  const total = c.device_used;
  const max = Math.max(total, usable || 0) * 1.04 || 1;
  const sx = (b) => x0 + (W - 2 * x0) * (b / max);
  const root = svg("svg", { viewBox: `0 0 ${W} 150`, role: "img",
    "aria-label": `memory per GPU: ${gib(total)} GiB device total` });
  let acc = 0;
  d.components.forEach((comp, i) => {
    if (comp.bytes <= 0) return;
    const x = sx(acc), w = Math.max(sx(acc + comp.bytes) - x, 0.5);
    const g = svg("g", { class: "segment" },
      svg("rect", { x, y: barY, width: w, height: barH, fill: colourOf(comp.key, i), "data-key": comp.key },
        svg("title", {}, `${comp.label}: ${gib(comp.bytes)} GiB (${Math.round(100 * comp.bytes / total)}%), ${comp.note}`)));
    if (w > 70) {
      g.append(svg("text", { x: x + 4, y: barY + barH / 2 + 4, fill: "#fff", "pointer-events": "none" },
        comp.label.length * 6 < w - 8 ? comp.label : gib(comp.bytes)));
    }
    root.append(g);
    acc += comp.bytes;
  });
  // counters: where torch's and nvidia-smi's figures fall on the bar
  const marks = [["peak allocated", c.max_memory_allocated], ["peak reserved", c.max_memory_reserved],
    ["device total", c.device_used]];
  marks.forEach(([name, b], k) => {
    const x = sx(b), y = barY + barH + 14 + k * 14;
    const anchor = x > W * 0.75 ? "end" : "start";
    root.append(svg("line", { x1: x, x2: x, y1: barY + barH, y2: y - 9, stroke: "#1d2433", "stroke-width": 1 }),
      svg("text", { x: anchor === "end" ? x - 3 : x + 3, y, "text-anchor": anchor, class: "marker" },
        `${name} ${gib(b)} GiB`));
  });
  if (usable) {
    const x = sx(usable);
    root.append(
      svg("line", { x1: x, x2: x, y1: barY - 12, y2: barY + barH + 4, stroke: "#d64545", "stroke-width": 2.5,
        "stroke-dasharray": "5 3", id: "usable-line" }),
      svg("text", { x: x > W * 0.6 ? x - 4 : x + 4, y: barY - 16, "text-anchor": x > W * 0.6 ? "end" : "start",
        fill: "#d64545", "font-weight": "600" }, `usable on ${d.fit.device}: ${gib(usable)} GiB`));
  }
  // axis
  const step = niceStep(max / GiB);
  const axis = svg("g", { class: "axis" });
  for (let v = 0; v * GiB <= max; v += step) {
    const x = sx(v * GiB);
    axis.append(svg("line", { x1: x, x2: x, y1: 140, y2: 144, stroke: "#9aa3b2" }),
      svg("text", { x, y: 138, "text-anchor": v === 0 ? "start" : "middle" }, `${+v.toFixed(2)}`));
  }
  axis.append(svg("text", { x: W - x0, y: 150 - 16, "text-anchor": "end" }, "GiB"));
  root.append(axis);
  $("#bar").replaceChildren(root);
}

function niceStep(range) {
  const raw = range / 6;
  const pow = 10 ** Math.floor(Math.log10(raw || 1));
  for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * pow) return m * pow;
  return 10 * pow;
}

function swatch(colour) {
  const span = el("span", { class: "key" });
  span.style.background = colour;  // CSSOM, not a style attribute: the page's CSP allows no inline styles
  return span;
}

function renderComponents(d) {
  const total = d.counters.device_used;
  const rows = d.components.map((comp, i) => el("tr", {},
    el("td", {}, swatch(colourOf(comp.key, i)), comp.label),
    el("td", { class: "num", text: gib(comp.bytes) }),
    el("td", { class: "num", text: `${Math.round(100 * comp.bytes / total)}%` }),
    el("td", { class: "note", text: comp.note })));
  const c = d.counters;
  const counter = (name, b, what) => el("tr", { class: "counter" },
    el("td", { text: name }), el("td", { class: "num", text: gib(b) }), el("td", {}), el("td", { class: "note", text: what }));
  $("#components").replaceChildren(
    el("thead", {}, el("tr", {}, el("th", { text: "component" }), el("th", { class: "num", text: "GiB" }),
      el("th", { class: "num", text: "share" }), el("th", { text: "assumes" }))),
    el("tbody", {}, rows,
      counter("Peak allocated", c.max_memory_allocated, "torch.cuda.max_memory_allocated(): live tensors"),
      counter("Peak reserved", c.max_memory_reserved, "torch.cuda.max_memory_reserved(): + caching-allocator overhead"),
      counter("Device total", c.device_used, "nvidia-smi: + CUDA context; the fit verdict uses this counter")));
}

// ---------------------------------------------------------------- plan

// one setup's time split from /api/plan: time.step.breakdown (seconds per optimizer step, summing
// to step_s), scaled to the run (x steps per epoch x epochs) when a dataset size was given
function timeSplit(s, withSize) {
  const step = s.time.step || {};
  const scale = withSize && step.step_s && s.time.run_s ? s.time.run_s / step.step_s : 1;
  const parts = Object.entries(step.breakdown || {}).filter(([, v]) => v > 0).map(([term, v]) => ({
    term, seconds: v * scale, group: TIME_GROUPS.includes(term) ? term : "communication" }));
  return { parts, total: parts.reduce((a, q) => a + q.seconds, 0) };
}

function timeText(seconds, withSize) {
  return withSize ? duration(seconds) : `${Number(seconds.toPrecision(3))} s`;
}

function timeBar(split, longest, withSize) {
  const { parts, total } = split;
  const share = (q) => `${Math.round(100 * q.seconds / (total || 1))}%`;
  const root = svg("svg", { width: TIME_BAR_W, height: TIME_BAR_H, viewBox: `0 0 ${TIME_BAR_W} ${TIME_BAR_H}`,
    class: "timebar", role: "img", "data-total": total,
    "aria-label": `${withSize ? "run" : "optimizer step"} ${timeText(total, withSize)}: ` +
      parts.map((q) => `${q.term} ${share(q)}`).join(", ") });
  let x = 0;
  for (const q of parts) {
    const w = longest > 0 ? TIME_BAR_W * q.seconds / longest : 0;
    root.append(svg("rect", { x: x.toFixed(2), y: 1, width: w.toFixed(2), height: TIME_BAR_H - 2,
      fill: TIME_COLOURS[q.term] || TIME_OTHER, class: `seg ${q.group.replace(" ", "-")}`, "data-term": q.term,
      "data-group": q.group, "data-seconds": q.seconds },
      svg("title", {}, `${q.term}${q.group === "communication" ? " (communication)" : ""}: ` +
        `${timeText(q.seconds, withSize)}, ${share(q)}`)));
    x += w;
  }
  return root;
}

function timeLegend(splits, withSize) {
  const terms = Array.from(new Set(splits.flatMap((t) => t.parts.map((q) => q.term))));
  terms.sort((a, b) => TIME_GROUPS.indexOf(TIME_GROUPS.includes(a) ? a : "communication") -
    TIME_GROUPS.indexOf(TIME_GROUPS.includes(b) ? b : "communication"));
  const what = withSize ? "time split of the run" : "time split of one optimizer step";
  return [el("span", { text: `${what} (bar length: time, the longest row full width):` }),
    ...terms.map((t) => el("span", {}, swatch(TIME_COLOURS[t] || TIME_OTHER),
      TIME_GROUPS.includes(t) ? t : `communication: ${t}`))];
}

function renderPlan(d, p) {
  const withSize = d.dataset_tokens !== null;
  $("#plan-caption").textContent = withSize
    ? `${int(d.dataset_tokens)} tokens x ${d.epochs} epoch(s), ranked by ${d.rank_by}`
    : `no dataset size: throughput and cloud $ per ${d.cost_basis}, ranked by ${d.rank_by === "time" ? "throughput" : d.rank_by}`;
  const head = ["#", "setup", "batch x accum", "ckpt", "peak / usable GiB", "fit", "tok/s"]
    .concat(withSize ? ["epoch", "run", "time split", "cloud $"] : ["time split", "cloud $/Mtok"],
      ["buy $", "break-even", "bound"]);
  const shown = state.planAll ? d.setups : d.setups.slice(0, PLAN_ROWS);
  const splits = shown.map((s) => timeSplit(s, withSize));
  const longest = Math.max(0, ...splits.map((t) => t.total));
  const rows = shown.map((s, i) => {
    const t = s.time;
    const step = t.step || {};
    const cost = s.cost;
    let setup = `${s.count} x ${s.device}` + (s.count > 1 ? ` ${s.layout}` : "");
    if (s.offload_optimizer || s.offload_params) setup += " +offload";
    const cells = [String(i + 1), setup, `${s.micro_batch} x ${s.grad_accum}`, s.checkpointing,
      `${gib(s.peak_bytes + s.offloaded_bytes)} / ${gib(s.usable_bytes)}`,
      el("span", { class: `pill ${s.verdict}`, text: s.verdict }),
      int(step.tokens_per_s || 0)];
    if (withSize) cells.push(duration(t.epoch_s), duration(t.run_s));
    const splitAt = cells.push(timeBar(splits[i], longest, withSize)) - 1;  // next to the time it splits
    cells.push(withSize ? money(cost.cloud_usd) : money(s.cloud_usd_per_million_tokens));
    cells.push(money(cost.purchase_usd), weeks(cost.breakeven_weeks), step.bound || "");
    const last = cells.length - 1;
    return el("tr", {}, cells.map((v, k) => el("td",
      { class: k === splitAt ? "time-split" : k === 0 || k >= 6 && k !== last ? "num" : "" }, v)));
  });
  const more = d.setups.length > PLAN_ROWS
    ? el("tr", {}, el("td", { colspan: head.length },
      el("button", { type: "button", class: "ghost small", onclick: () => { state.planAll = !state.planAll; renderPlan(d, p); },
        text: state.planAll ? `show the first ${PLAN_ROWS}` : `show all ${d.setups.length} setups` })))
    : null;
  $("#plan").replaceChildren(el("thead", {}, el("tr", {}, head.map((h) => el("th", { text: h })))), el("tbody", {}, rows, more));
  $("#plan-legend").replaceChildren(...(shown.length ? timeLegend(splits, withSize) : []));
  const unfit = d.unfit.length ? `Cannot run it (${d.unfit.length}): ${d.unfit.slice(0, 8).map((u) => u.device).join(", ")}` +
    `${d.unfit.length > 8 ? " …" : ""}. ` : "";
  const gpus = p.gpus ? "The planner chooses the GPU count (gpus is not sent; cap it with max gpus). " : "";
  $("#plan-note").textContent = `${gpus}${unfit}Peak per GPU, device total; cloud $ at the first confirmed catalog quote; ` +
    `break-even at ${Math.round(d.utilisation * 100)}% utilisation, $${d.usd_per_kwh}/kWh. Disk: ${gib(d.disk.total)} GiB in all.`;
  if (!d.setups.length) $("#plan-note").textContent = `No device in the list can run this job. ${unfit}`;
}

// ---------------------------------------------------------------- heat map

function renderHeatmap(d) {
  const cw = 46, ch = 22, left = 210, top = 120;
  const W = left + d.cols.length * cw + 90, H = top + d.rows.length * ch + 6;
  const root = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "fit matrix" });
  d.cols.forEach((dev, k) => {
    const x = left + k * cw + cw / 2;
    root.append(svg("text", { transform: `translate(${x + 4},${top - 6}) rotate(-50)` }, dev));
  });
  d.rows.forEach(([model, method], i) => {
    const y = top + i * ch;
    const short = model.split("/").pop();
    root.append(svg("text", { x: left - 8, y: y + ch / 2 + 4, "text-anchor": "end" },
      svg("title", {}, model), `${short.length > 24 ? short.slice(0, 23) + "…" : short}  ${method}`));
    d.cols.forEach((dev, k) => {
      const verdict = d.verdicts[i][k];
      const cls = verdict === "n/a" ? "na" : verdict;
      const peak = d.peak_bytes[i][k];
      const tip = `${short} ${method} on ${dev}: ${verdict}` +
        (peak !== null ? `, peak ${gib(peak)} of ${gib(d.usable_bytes[k])} GiB usable` : "") +
        (d.labels[i][k] && d.labels[i][k] !== "–" ? `, largest micro-batch ${d.labels[i][k]}` : "") +
        (d.notes[i][k] ? ` (${d.notes[i][k]})` : "");
      const colour = HEAT[cls];
      root.append(svg("g", { class: `cell ${cls}` },
        svg("rect", { x: left + k * cw + 1, y: y + 1, width: cw - 2, height: ch - 2, rx: 3, fill: colour },
          svg("title", {}, tip)),
        svg("text", { x: left + k * cw + cw / 2, y: y + ch / 2 + 4, class: "cell-label", "pointer-events": "none" },
          d.labels[i][k])));
    });
  });
  $("#heatmap").replaceChildren(root);
}

// ---------------------------------------------------------------- exports

function renderExports() {
  const box = $("#exports");
  if (box.childElementCount) return;
  for (const t of state.options.export_targets) {
    box.append(el("button", { type: "button", class: "ghost", "data-target": t.name, title: `${t.label} (${t.file_name})`,
      onclick: () => download(t), text: `${t.name} ↓` }));
  }
}

async function download(t) {
  const p = formParams();
  const params = estimateParams(p);
  params.to = t.name;
  const note = $("#export-note");
  try {
    const r = await api("/api/export", params, undefined, { raw: true });
    const blob = await r.blob();
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: t.file_name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
    const cannot = JSON.parse(r.headers.get("X-Tuneplan-Cannot") || "[]");
    const launch = JSON.parse(r.headers.get("X-Tuneplan-Launch") || "\"\"");
    note.textContent = `${t.file_name}: run with ${launch}.` + (cannot.length ? ` ${t.name} cannot express: ${cannot.join("; ")}` : "");
  } catch (e) {
    note.textContent = `${t.name}: ${e.message}`;
  }
}

// ---------------------------------------------------------------- model: catalog and upload

function describeModel(name) {
  const key = (name || "").toLowerCase();
  const m = state.models.find((r) => r.hf_id.toLowerCase() === key || r.aliases.some((a) => a.toLowerCase() === key));
  $("#model-info").textContent = m
    ? `${m.hf_id}: ${(m.params / 1e9).toFixed(2)}B params${m.moe ? `, MoE ${m.moe} (${(m.active_params / 1e9).toFixed(1)}B active)` : ""}, ` +
      `${m.layers} layers, vocab ${int(m.vocab)}, context ${int(m.max_position)}`
    : name;
}

function setUpload(upload) {
  state.upload = upload;
  $("#model").disabled = Boolean(upload);
  $("#upload-clear").hidden = !upload;
  $("#upload-name").textContent = upload ? `uploaded: ${upload.label}` : "";
  if (upload) {
    $("#model-info").textContent = `${upload.label}, parsed by the server from the request body (never stored)`;
    try { sessionStorage.setItem(UPLOAD_KEY, JSON.stringify(upload)); } catch (e) { /* storage full or off */ }
  } else {
    sessionStorage.removeItem(UPLOAD_KEY);
    $("#upload").value = "";
  }
}

async function onUpload(ev) {
  const file = ev.target.files[0];
  if (!file) return;
  const limit = state.options.limits.max_body_bytes;
  if (file.size > limit) {
    showError(`${file.name} is ${int(file.size)} bytes; a config.json is a few KiB (limit ${int(limit)})`);
    ev.target.value = "";
    return;
  }
  const text = await file.text();
  let name = null;
  try {
    const cfg = JSON.parse(text);
    if (cfg && typeof cfg._name_or_path === "string" && cfg._name_or_path.trim()) name = cfg._name_or_path.trim();
  } catch (e) { /* the server says what is wrong with it */ }
  setUpload({ text, name, label: name || file.name });
  schedule();
}

// ---------------------------------------------------------------- start

function fillChoices() {
  const o = state.options;
  for (const sel of form.querySelectorAll("select[data-choices]")) {
    const key = sel.dataset.choices;
    const setting = Object.keys(o.fields).find((k) => o.fields[k].option === sel.name);
    const dflt = setting ? o.fields[setting].default : key === "rank-by" ? "time" : null;
    sel.replaceChildren(el("option", { value: "", text: dflt === null ? "default (the framework's)" : `default (${dflt})` }),
      ...o.choices[key].map((c) => el("option", { value: c, text: c })));
    const field = setting && o.fields[setting];
    if (field && field.help) sel.title = field.help;
  }
  for (const input of form.querySelectorAll("input:not([type])")) {
    const setting = Object.keys(o.fields).find((k) => o.fields[k].option === input.name);
    if (setting) {
      const v = o.fields[setting].default;
      if (!input.placeholder && v !== null && v !== undefined) input.placeholder = String(v);
      input.title = o.fields[setting].help || "";
    }
  }
  for (const cb of form.querySelectorAll("input[type=checkbox]")) {
    const setting = Object.keys(o.fields).find((k) => o.fields[k].option === cb.name);
    if (setting) cb.parentElement.title = o.fields[setting].help || "";
  }
  $("#targets-list").replaceChildren(...o.choices.targets.map((t) => el("option", { value: t })));
  $("#devices-list").replaceChildren(...["all", ...o.device_categories].map((c) => el("option", { value: c })),
    ...state.devices.map((d) => el("option", { value: d.id })));
  $("#model-list").replaceChildren(...state.models.map((m) => el("option", { value: (m.aliases.slice(-1)[0] || m.hf_id) },
    `${m.hf_id} (${(m.params / 1e9).toFixed(1)}B)`)));
  const gpu = $("#gpu");
  const groups = {};
  for (const d of state.devices) (groups[d.category] = groups[d.category] || []).push(d);
  for (const [cat, devs] of Object.entries(groups)) {
    gpu.append(el("optgroup", { label: cat }, devs.map((d) =>
      el("option", { value: d.id, text: `${d.id} (${gib(d.usable_bytes)} GiB usable)` }))));
  }
}

async function start() {
  try {
    const [options, models, devices] = await Promise.all([
      api("/api/options", {}, undefined, { upload: false }),
      api("/api/models", {}, undefined, { upload: false }),
      api("/api/devices", {}, undefined, { upload: false })]);
    Object.assign(state, { options, models, devices });
  } catch (e) {
    showError(`cannot load the catalogs: ${e.message}`);
    return;
  }
  $("#model").placeholder = "llama-3.1-8b";
  fillChoices();
  const params = new URLSearchParams(location.search);
  if (!params.toString()) {  // a first visit: a job worth looking at
    params.set("model", "llama-3.1-8b");
    params.set("method", "qlora");
    params.set("seq-len", "4096");
    params.set("gpu", "rtx-4090");
    params.set("devices", "consumer,workstation");
  }
  setForm(params);
  if (params.get("upload")) {
    let saved = null;
    try { saved = JSON.parse(sessionStorage.getItem(UPLOAD_KEY) || "null"); } catch (e) { saved = null; }
    if (saved && saved.text) setUpload(saved);
    else $("#upload-name").textContent = `${params.get("upload")} was uploaded in another tab: upload it again`;
  }
  form.addEventListener("input", schedule);
  form.addEventListener("change", schedule);
  form.addEventListener("submit", (e) => { e.preventDefault(); schedule(); });
  $("#upload").addEventListener("change", (e) => { e.stopPropagation(); onUpload(e); });
  $("#upload-clear").addEventListener("click", () => { setUpload(null); schedule(); });
  $("#reset").addEventListener("click", () => {
    setUpload(null);
    history.replaceState(null, "", location.pathname);
    setForm(new URLSearchParams());
    schedule();
  });
  $("#copy-link").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(location.href);
      $("#status").textContent = "link copied";
    } catch (e) {
      $("#status").textContent = "copy the address bar";
    }
  });
  update();
}

start();
