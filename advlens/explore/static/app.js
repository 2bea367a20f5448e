/* advlens explore: front end (vanilla JS, no inline code; CSP-safe DOM building only). */
"use strict";

const CONDITIONS = ["clean", "adversarial", "noise"];
const SVG_NS = "http://www.w3.org/2000/svg";
const state = {
  options: null,      // GET /api/options
  images: [],         // thumbnails of the current model/source
  index: null,        // selected image index (live mode)
  upload: null,       // data URL of an uploaded image (live mode), replaces index
  result: null,       // last /api/run (or /api/study/maps) response
  layer: 0,           // selected layer index into result.layers
  seq: 0,             // id of the latest run request; older answers are dropped
  hasRun: false,
  timer: null,        // debounce timer of automatic re-runs
  reading: null,      // Promise of an upload being read by FileReader
  pending: 0,         // requests in flight (the progress bar shows while > 0)
  study: null,        // GET /api/study
};

/* ---------- small helpers ---------- */

function $(id) { return document.getElementById(id); }

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

function showError(msg) {
  const box = $("error");
  box.textContent = msg ? String(msg) : "";
  box.hidden = !msg;
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const resp = await fetch(path, init);
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok || (data && typeof data === "object" && "error" in data && !Array.isArray(data))) {
    const msg = data && data.error ? data.error : `${resp.status} ${resp.statusText}`;
    throw new Error(String(msg));
  }
  return data;
}

function fillSelect(select, values, chosen) {
  clear(select);
  for (const v of values) {
    const opt = el("option", null, v);
    opt.value = String(v);
    select.appendChild(opt);
  }
  if (chosen !== undefined && chosen !== null && values.map(String).includes(String(chosen))) {
    select.value = String(chosen);
  }
}

function fmt(x, digits) {
  return typeof x === "number" && isFinite(x) ? x.toFixed(digits === undefined ? 3 : digits) : "–";
}

/* ---------- progress (polls GET /api/status while a request is pending) ---------- */

async function withProgress(promise) {
  const t0 = performance.now();
  let stage = "starting", queued = 0, done = false;
  state.pending += 1;
  $("progress").hidden = false;
  const tick = () => {
    if (done) return;
    const secs = ((performance.now() - t0) / 1000).toFixed(1);
    $("status").textContent = `${stage}${queued ? ` (${queued} queued)` : ""}… ${secs} s`;
  };
  tick();
  const poll = setInterval(async () => {
    try {
      const s = await api("/api/status");
      if (s && s.stage) stage = s.stage;
      queued = s && s.queued ? s.queued : 0;
    } catch (e) { /* status is best-effort */ }
    tick();
  }, 300);
  try {
    return await promise;
  } finally {
    done = true;
    clearInterval(poll);
    state.pending -= 1;
    if (state.pending === 0) {  // an overlapping request keeps its own ticker going
      $("progress").hidden = true;
      $("status").textContent = "";
    }
  }
}

/* ---------- shared result view: images, labels, maps, strips, chart ---------- */

function renderLabels(list, items) {
  clear(list);
  for (const item of items || []) {
    const li = el("li");
    li.appendChild(el("span", "lab", item.label));
    li.appendChild(el("span", "p", fmt(item.p, 2)));
    list.appendChild(li);
  }
}

function setImg(img, src) {
  if (src) { img.src = src; img.hidden = false; } else { img.removeAttribute("src"); img.hidden = true; }
}

function renderResult(result, layerName) {
  state.result = result;
  const layers = result.layers || [];
  let i = layers.indexOf(layerName);
  if (i < 0) i = Math.min(state.layer, Math.max(0, layers.length - 1));
  $("results").hidden = false;
  for (const c of CONDITIONS) {
    setImg($(`img-${c}`), result.images && result.images[c]);
    renderLabels($(`labels-${c}`), result.labels && result.labels[c]);
  }
  setImg($("img-perturbation"), result.images && result.images.perturbation);
  const slider = $("layer");
  slider.max = String(Math.max(0, layers.length - 1));
  renderStrips(result);
  renderSummary(result);
  selectLayer(i);
}

function selectLayer(i) {
  const result = state.result;
  if (!result || !result.layers || !result.layers.length) return;
  state.layer = Math.max(0, Math.min(result.layers.length - 1, i));
  const name = result.layers[state.layer];
  $("layer").value = String(state.layer);
  const cos = result.cosine || {};
  const adv = cos.adversarial ? cos.adversarial[name] : null;
  const noi = cos.noise ? cos.noise[name] : null;
  const bad = (result.compromised || []).includes(name) ? " — compromised" : "";
  $("layer-label").textContent =
    `${state.layer}: ${name} (cos adv ${fmt(adv)}, noise ${fmt(noi)})${bad}`;
  for (const c of CONDITIONS) {
    const maps = result.maps && result.maps[c];
    setImg($(`map-${c}`), maps ? maps[name] : null);
  }
  for (const img of document.querySelectorAll("#strips img")) {
    img.classList.toggle("selected", Number(img.dataset.layer) === state.layer);
  }
  renderCurve(result);
}

function renderStrips(result) {
  const box = $("strips");
  clear(box);
  for (const c of CONDITIONS) {
    const row = el("div", "strip");
    row.appendChild(el("span", "strip-title", c));
    const cells = el("div", "strip-cells");
    result.layers.forEach((name, i) => {
      const img = el("img", "mini");
      const src = result.maps && result.maps[c] && result.maps[c][name];
      if (src) img.src = src;
      img.alt = `${c} ${name}`;
      img.title = `${i}: ${name}`;
      img.dataset.layer = String(i);
      if ((result.compromised || []).includes(name)) img.classList.add("compromised");
      img.addEventListener("click", () => selectLayer(i));
      cells.appendChild(img);
    });
    row.appendChild(cells);
    box.appendChild(row);
  }
}

function renderSummary(result) {
  const box = $("summary");
  clear(box);
  const comp = result.compromised || [];
  box.appendChild(el("span", null,
    `K = ${result.k} noise draws; compromised: ${comp.length ? comp.join(", ") : "none"}`));
  if ("attack_success" in result) {
    box.appendChild(el("span", result.attack_success ? "tag bad" : "tag",
      result.attack_success ? "attack succeeded" : "attack failed"));
  }
  if (typeof result.strength === "number") box.appendChild(el("span", "tag", `strength ${result.strength}×`));
  if (typeof result.time_s === "number") box.appendChild(el("span", "tag", `${result.time_s.toFixed(2)} s`));
  if (result.cached) box.appendChild(el("span", "tag", "cached"));
}

function renderCurve(result) {
  const layers = result.layers;
  const cos = result.cosine || {};
  const series = {};
  for (const c of ["adversarial", "noise"]) series[c] = layers.map((n) => (cos[c] ? cos[c][n] : null));
  drawChart($("curve"), layers, series, {
    compromised: new Set(result.compromised || []), selected: state.layer,
    onPick: (i) => selectLayer(i), title: "cosine(clean map, condition map) per layer",
  });
}

/* Line chart of per-layer values: x = layer index (forward order), y in [-1, 1] or [0, 1]. */
function drawChart(box, layers, series, opts) {
  clear(box);
  const W = 760, H = 240, L = 44, R = 110, T = 18, B = 30;
  const vals = Object.values(series).flat().filter((v) => typeof v === "number" && isFinite(v));
  const y0 = vals.some((v) => v < 0) ? -1 : 0;
  const n = layers.length;
  const x = (i) => L + (n > 1 ? (i * (W - L - R)) / (n - 1) : (W - L - R) / 2);
  const y = (v) => T + ((1 - v) * (H - T - B)) / (1 - y0);
  const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img"});
  root.appendChild(svg("title")).textContent = opts.title || "";
  for (const t of (y0 < 0 ? [-1, -0.5, 0, 0.5, 1] : [0, 0.25, 0.5, 0.75, 1])) {
    root.appendChild(svg("line", {x1: L, x2: W - R, y1: y(t), y2: y(t), class: t === 0 ? "axis" : "grid"}));
    const lab = svg("text", {x: L - 6, y: y(t) + 4, class: "tick", "text-anchor": "end"});
    lab.textContent = String(t);
    root.appendChild(lab);
  }
  const step = Math.max(1, Math.ceil(n / 16));
  for (let i = 0; i < n; i += step) {
    const lab = svg("text", {x: x(i), y: H - B + 16, class: "tick", "text-anchor": "middle"});
    lab.textContent = String(i);
    root.appendChild(lab);
  }
  if (opts.selected !== null && opts.selected !== undefined && n) {
    root.appendChild(svg("line", {x1: x(opts.selected), x2: x(opts.selected), y1: T, y2: H - B, class: "sel-line"}));
  }
  Object.entries(series).forEach(([name, values], s) => {
    const pts = values.map((v, i) => [i, v]).filter(([, v]) => typeof v === "number" && isFinite(v));
    root.appendChild(svg("polyline", {
      points: pts.map(([i, v]) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" "),
      class: `line s${s}`}));
    for (const [i, v] of pts) {
      const bad = name === "adversarial" && opts.compromised && opts.compromised.has(layers[i]);
      const c = svg("circle", {cx: x(i), cy: y(v), r: bad ? 4.5 : 3.5,
        class: `pt s${s}${bad ? " compromised" : ""}`, "data-layer": i, "data-series": name});
      c.appendChild(svg("title")).textContent = `${i}: ${layers[i]} — ${name} ${fmt(v)}`;
      if (opts.onPick) c.addEventListener("click", () => opts.onPick(i, name));
      root.appendChild(c);
    }
    const ly = T + 14 + s * 18;
    root.appendChild(svg("line", {x1: W - R + 12, x2: W - R + 30, y1: ly - 4, y2: ly - 4, class: `line s${s}`}));
    const lab = svg("text", {x: W - R + 36, y: ly, class: "legend"});
    lab.textContent = name;
    root.appendChild(lab);
  });
  box.appendChild(root);
}

/* ---------- live mode ---------- */

function attackInfo() {
  return (state.options.attacks || []).find((a) => a.name === $("attack").value) || {};
}

/* The attack's defaults, shown with 4 significant digits; the exact default is sent while untouched. */
function onAttackChange() {
  const a = attackInfo();
  for (const key of ["eps", "steps"]) {
    const input = $(key);
    const has = a[key] !== null && a[key] !== undefined;
    input.disabled = !has;
    input.value = has ? String(Number(Number(a[key]).toPrecision(4))) : "";
    input.dataset.exact = has ? String(a[key]) : "";
  }
}

function paramValue(key) {
  const input = $(key);
  if (input.disabled || input.value === "") return undefined;
  const shown = input.dataset.exact ? String(Number(Number(input.dataset.exact).toPrecision(4))) : null;
  return Number(input.value === shown ? input.dataset.exact : input.value);
}

function strengthValue() {
  const stops = state.options.strengths || [1];
  return stops[Math.max(0, Math.min(stops.length - 1, Number($("strength").value)))];
}

function onStrengthInput() {
  $("strength-label").textContent = `${strengthValue()}×`;
}

async function loadThumbs() {
  const box = $("thumbs");
  clear(box);
  state.index = null;
  const q = new URLSearchParams({model: $("model").value, source: $("source").value, limit: "24"});
  try {
    const data = await api(`/api/images?${q}`);
    state.images = data.images || [];
  } catch (e) {
    showError(e.message);
    return;
  }
  for (const im of state.images) {
    const img = el("img", "thumb");
    img.src = im.thumbnail;
    const label = im.label === null || im.label === undefined ? "" : ` — label ${im.label}`;
    img.alt = `${im.name}${label}`;
    img.title = `#${im.index} ${im.name}${label}`;
    img.dataset.index = String(im.index);
    img.tabIndex = 0;
    img.addEventListener("click", () => pickImage(im.index));
    img.addEventListener("keydown", (ev) => { if (ev.key === "Enter") pickImage(im.index); });
    box.appendChild(img);
  }
  if (state.images.length) {
    state.index = state.images[0].index;
    markThumbs();
    scheduleRun();
  }
}

function markThumbs() {
  for (const t of document.querySelectorAll("#thumbs .thumb")) {
    t.classList.toggle("selected", state.upload === null && Number(t.dataset.index) === state.index);
  }
}

function pickImage(index) {
  state.index = index;
  state.upload = null;
  $("upload").value = "";
  markThumbs();
  scheduleRun();
}

function onUpload() {
  const file = $("upload").files[0];
  if (!file) return;
  state.reading = new Promise((resolve) => {
    const reader = new FileReader();
    reader.addEventListener("load", () => {
      state.upload = String(reader.result);
      markThumbs();
      scheduleRun();
      resolve();
    });
    reader.addEventListener("error", () => { showError(`could not read ${file.name}`); resolve(); });
    reader.readAsDataURL(file);
  });
}

function runRequest() {
  const attack = {method: $("attack").value};
  for (const key of ["eps", "steps"]) {
    const v = paramValue(key);
    if (v !== undefined) attack[key] = v;
  }
  const body = {model: $("model").value, attack, strength: strengthValue(), method: $("method").value,
    layers: "all", k: Number($("k").value) || state.options.k, seed: 0};
  if (state.upload !== null) body.image = state.upload;
  else { body.source = $("source").value; body.index = state.index === null ? 0 : state.index; }
  return body;
}

async function run() {
  clearTimeout(state.timer);
  if (state.reading) await state.reading;  // an upload still being read comes first
  const seq = ++state.seq;
  const layerName = state.result ? state.result.layers[state.layer] : null;
  showError(null);
  $("run").disabled = true;
  try {
    const result = await withProgress(api("/api/run", runRequest()));
    if (seq !== state.seq) return;  // a newer run was started meanwhile
    state.hasRun = true;
    renderResult(result, layerName);
  } catch (e) {
    if (seq === state.seq) showError(e.message);
  } finally {
    if (seq === state.seq) $("run").disabled = false;
  }
}

function scheduleRun() {
  if (!state.hasRun) return;
  clearTimeout(state.timer);
  state.timer = setTimeout(run, 350);
}

function initLive(opt) {
  $("live-controls").hidden = false;
  const d = opt.defaults || {};
  fillSelect($("model"), opt.models || [], d.model);
  fillSelect($("source"), opt.sources || [], d.source);
  fillSelect($("attack"), (opt.attacks || []).map((a) => a.name), d.attack);
  fillSelect($("method"), (opt.explainers || []).map((a) => a.name), d.method);
  onAttackChange();
  $("k").value = String(opt.k || 8);
  const stops = opt.strengths && opt.strengths.length ? opt.strengths : [1];
  $("strength").max = String(stops.length - 1);
  const at = stops.indexOf(d.strength === undefined ? 1 : d.strength);
  $("strength").value = String(at >= 0 ? at : 0);
  onStrengthInput();
  $("model").addEventListener("change", loadThumbs);
  $("source").addEventListener("change", loadThumbs);
  $("attack").addEventListener("change", onAttackChange);
  $("method").addEventListener("change", scheduleRun);
  $("strength").addEventListener("input", () => { onStrengthInput(); scheduleRun(); });
  $("upload").addEventListener("change", onUpload);
  $("run").addEventListener("click", run);
  return loadThumbs();
}

/* ---------- study mode ---------- */

const FILTERS = ["image", "strength", "condition", "explainer", "layer"];

function filterValues(keys) {
  const q = {};
  for (const k of keys) {
    const v = $(`filter-${k}`) ? $(`filter-${k}`).value : "";
    if (v !== "") q[k] = v;
  }
  return q;
}

async function refreshStudy() {
  showError(null);
  try {
    const rq = new URLSearchParams({...filterValues(FILTERS), limit: "200"});
    const cq = new URLSearchParams({metric: "cosine", ...filterValues(["image", "strength", "explainer"])});
    const [rows, curve] = await Promise.all([api(`/api/study/results?${rq}`), api(`/api/study/curve?${cq}`)]);
    renderTable(rows);
    drawChart($("study-curve"), curve.layers || [], curve.series || {}, {
      selected: null, title: "mean cosine per layer", onPick: (i) => studyMaps({}, (curve.layers || [])[i]),
    });
  } catch (e) {
    showError(e.message);
  }
}

function renderTable(data) {
  const table = $("study-table");
  clear(table);
  const cols = data.columns || [];
  const head = el("tr");
  for (const c of cols) head.appendChild(el("th", null, c));
  table.appendChild(el("thead")).appendChild(head);
  const body = el("tbody");
  for (const row of (data.rows || []).slice(0, 200)) {
    const tr = el("tr");
    const rec = {};
    row.forEach((v, j) => {
      rec[cols[j]] = v;
      const num = typeof v === "number";
      tr.appendChild(el("td", num ? "num" : null, num ? String(Number(v.toPrecision(4))) : v));
    });
    if (rec.image !== undefined && rec.image !== null) {
      tr.classList.add("clickable");
      tr.addEventListener("click", () => studyMaps(rec, rec.layer));
    }
    body.appendChild(tr);
  }
  table.appendChild(body);
  $("study-count").textContent = `(${Math.min(200, (data.rows || []).length)} of ${data.total} rows)`;
}

async function studyMaps(rec, layerName) {
  const f = state.study.filters || {};
  const pick = (k) => (rec[k] !== undefined && rec[k] !== null ? rec[k]
    : ($(`filter-${k}`) && $(`filter-${k}`).value !== "" ? $(`filter-${k}`).value : (f[k] || [])[0]));
  const body = {image: String(pick("image"))};
  if (pick("strength") !== undefined) body.strength = Number(pick("strength"));
  if (pick("explainer") !== undefined) body.explainer = String(pick("explainer"));
  showError(null);
  try {
    const result = await withProgress(api("/api/study/maps", body));
    renderResult(result, layerName);
    $("results").scrollIntoView({behavior: "smooth", block: "start"});
  } catch (e) {
    showError(e.message);
  }
}

async function initStudy() {
  document.body.classList.add("study-mode");
  $("study-controls").hidden = false;
  $("study").hidden = false;
  state.study = await api("/api/study");
  $("study-info").textContent = `${state.study.study} — ${state.study.dir} (${state.study.rows} rows)`;
  const box = $("study-filters");
  clear(box);
  for (const k of FILTERS.filter((f) => f in (state.study.filters || {}))) {
    const label = el("label", null, k);
    const sel = el("select");
    sel.id = `filter-${k}`;
    const values = state.study.filters[k];
    fillSelect(sel, [""].concat(values.map(String)));
    sel.options[0].textContent = "(all)";
    sel.addEventListener("change", refreshStudy);
    label.appendChild(sel);
    box.appendChild(label);
  }
  await refreshStudy();
}

/* ---------- start ---------- */

async function main() {
  $("layer").addEventListener("input", () => selectLayer(Number($("layer").value)));
  try {
    state.options = await api("/api/options");
    $("mode-label").textContent = `${state.options.mode} mode`;
    if (state.options.mode === "study") await initStudy();
    else await initLive(state.options);
  } catch (e) {
    showError(e.message);
  }
}

document.addEventListener("DOMContentLoaded", main);
