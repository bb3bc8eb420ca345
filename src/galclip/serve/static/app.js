// galclip search page: plain JavaScript, no framework, nothing fetched but this server's own API.
"use strict";

const $ = (id) => document.getElementById(id);
const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
const LINES = [  // rest-frame wavelengths (Å) marked on spectra at the galaxy's redshift
  ["[OII]", 3727], ["K", 3934], ["H", 3969], ["Hδ", 4102], ["Hγ", 4340], ["Hβ", 4861], ["[OIII]", 5007],
  ["Mg b", 5175], ["Na D", 5893], ["Hα", 6563], ["[NII]", 6583], ["[SII]", 6724],
];
const state = { targetid: null, query: "image", target: "image", k: 16, ra: "", dec: "", radius: "1", zmin: "", zmax: "", hasSpectrum: "", dedup: true };
const marks = { positive: [], negative: [] };  // targetids as strings, in the order marked; kept in localStorage
let marksKey = "galclip-marks";
let lastCandidates = null;  // the rank or unusual view shown: {result, request} for its catalogue download
let mapData = null;  // {targetid: [str], x: [], y: [], redshift: []} and screen coordinates
let lastResult = null;

// targetids are int64: JavaScript numbers hold 53 bits, so they are read as strings
async function fetchJSON(url, options) {
  const response = await fetch(url, options);
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text.replace(/"targetid":\s*(-?\d+)/g, '"targetid":"$1"'));
  } catch (err) {
    throw new Error(`${url}: the server answered ${response.status} ${response.statusText}`);
  }
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function showMessage(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = !text;
}

function fmt(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function readURL() {
  const params = new URLSearchParams(window.location.search);
  state.targetid = params.get("targetid") ? params.get("targetid").trim() : null;
  if (["image", "spectrum", "both"].includes(params.get("query"))) state.query = params.get("query");
  if (["image", "spectrum"].includes(params.get("target"))) state.target = params.get("target");
  if (params.get("k")) state.k = params.get("k");
  state.ra = params.get("ra") || ""; state.dec = params.get("dec") || "";
  if (params.get("radius")) state.radius = params.get("radius");
  const z = (params.getAll("filter").find((f) => f.startsWith("redshift=")) || "redshift=:").slice(9).split(":");
  state.zmin = z[0] || ""; state.zmax = z[1] || "";
  state.hasSpectrum = params.get("has_spectrum") || "";
  state.dedup = params.get("dedup") !== "0";
  $("targetid").value = state.targetid || "";
  $("direction").value = `${state.query}:${state.target}`;
  $("k").value = state.k;
  $("ra").value = state.ra; $("dec").value = state.dec; $("radius").value = state.radius;
  $("zmin").value = state.zmin; $("zmax").value = state.zmax;
  $("has-spectrum").value = state.hasSpectrum; $("dedup").checked = state.dedup;
}

function readRefine() {
  state.radius = $("radius").value.trim() || "1";
  state.zmin = $("zmin").value.trim(); state.zmax = $("zmax").value.trim();
  state.hasSpectrum = $("has-spectrum").value;
  state.dedup = $("dedup").checked;
  [state.query, state.target] = $("direction").value.split(":");
  state.k = $("k").value;
}

// the filters as /api/search (and /api/search/file) take them
function refineParams(params) {
  if (state.zmin || state.zmax) params.append("filter", `redshift=${state.zmin}:${state.zmax}`);
  if (state.hasSpectrum) params.append("has_spectrum", state.hasSpectrum);
  if (!state.dedup) params.append("dedup", "0");
  return params;
}

function queryString() {
  const where = state.targetid ? { targetid: state.targetid } : { ra: state.ra, dec: state.dec, radius: state.radius };
  const params = new URLSearchParams({ ...where, query: state.query, target: state.target, k: state.k });
  return refineParams(params).toString();
}

function showResult(result) {
  lastResult = result;
  lastCandidates = null;
  $("candidates-csv").hidden = $("candidates-fits").hidden = true;
  renderQuery(result);
  renderGrid(result);
  const reason = result.filters && result.filters.reason;
  if (reason) showMessage(reason);
  drawMap();
}

async function search(push) {
  if (!state.targetid && !(state.ra && state.dec)) { showMessage("Enter a targetid or a position (or press “random galaxy”)."); return; }
  if (push) history.pushState({ ...state }, "", `?${queryString()}`);
  showMessage("");
  document.body.dataset.loading = "1";
  try {
    const result = await fetchJSON(`/api/search?${queryString()}`);
    const csv = $("csv");
    csv.href = `/api/search.csv?${queryString()}`;
    csv.hidden = false;
    showResult(result);
  } catch (err) {
    showMessage(err.message);
    $("grid").replaceChildren();
    $("results-title").textContent = "neighbours";
  } finally {
    delete document.body.dataset.loading;
  }
}

function renderQuery(result) {
  const q = result.query;
  const card = $("query-card");
  card.classList.remove("empty");
  const img = document.createElement("img");
  img.src = `/api/image/${q.targetid}.png`;
  img.alt = `targetid ${q.targetid}`;
  const right = document.createElement("div");
  right.style.flex = "1";
  const title = document.createElement("div");
  const modality = q.modality === "both" ? "image + spectrum" : q.modality;
  const where = q.position ? ` <small id="q-position">(nearest to RA ${q.position.ra}, Dec ${q.position.dec}: ${fmt(q.position.separation_arcsec, 2)}″)</small>` : "";
  const from = q.source && q.source !== "index" ? ` <small id="q-source">${escapeHtml(q.source)}</small>` : "";
  const uploaded = q.source && q.source.startsWith("upload");
  const name = uploaded && Number(q.targetid) < 0 ? "uploaded galaxy" : `targetid ${q.targetid}`;  // a cutout names no TARGETID
  title.innerHTML = `<b>${name}</b> — ${modality} query → ${result.target} neighbours${where}${from}`;
  const canvas = document.createElement("canvas");
  canvas.width = 560; canvas.height = 200;
  // the zero-shot prediction: the same numbers as galclip predict's catalogue (k = 16 over the train split,
  // whatever k and target this search shows)
  const p = result.prediction || {};
  const est = (label, digits) => (p[label] ? `${fmt(p[label].value, digits)} <small>(${fmt(p[label].lo, digits)}–${fmt(p[label].hi, digits)})</small>` : "–");
  const facts = document.createElement("div");
  facts.className = "facts";
  facts.innerHTML = `<span class="head"></span><span class="head">catalogue</span><span class="head">zero-shot prediction (calibrated 16th–84th)</span>
    <span>redshift</span><span id="q-z">${fmt(q.redshift, 4)}</span><span id="p-z">${est("redshift", 4)}</span>
    <span>log M*</span><span>${fmt(q.log_mstar, 2)}</span><span id="p-m">${est("log_mstar", 2)}</span>
    ${Object.entries(result.labels || {}).filter(([name]) => name !== "redshift" && name !== "log_mstar").map(([name, title]) =>
      `<span>${escapeHtml(title)}</span><span>${fmt(q[name], 3)}</span><span id="p-${name}">${est(name, 3)}</span>`).join("")}
    <span>nearest</span><span></span><span id="p-sim">${p.similarity === undefined ? "–" : `cos ${fmt(p.similarity, 3)}${p.ood ? ' <span class="badge" id="p-ood">out of distribution</span>' : ""}`}</span>`;
  right.append(title, ...(uploaded ? [] : [markButtons(q.targetid)]), canvas, facts);  // an upload is not indexed
  card.replaceChildren(...(uploaded ? [right] : [img, right]));  // an uploaded galaxy is not among the served files
  const z = q.redshift !== null ? q.redshift : (p.redshift ? p.redshift.value : null);
  if (!uploaded) drawSpectrum(canvas, q.targetid, 600, z, true);
  else canvas.remove();
}

function renderGrid(result) {
  $("results-title").textContent = `${result.neighbours.length} nearest by cosine similarity (${result.query.modality} → ${result.target})`;
  const cards = result.neighbours.map((n) => {
    const card = document.createElement("div");
    card.className = "card" + (n.is_partner ? " partner" : "");
    card.dataset.targetid = n.targetid;
    card.title = "search from this galaxy";
    const img = document.createElement("img");
    img.src = `/api/image/${n.targetid}.png`;
    img.alt = `targetid ${n.targetid}`;
    img.loading = "eager";
    const canvas = document.createElement("canvas");
    canvas.width = 220; canvas.height = 60;
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.innerHTML = `<span>#${n.rank} · ${n.similarity.toFixed(3)}</span><span>z ${fmt(n.redshift, 3)} · M* ${fmt(n.log_mstar, 2)}</span>`;
    const tid = document.createElement("div");
    tid.className = "tid";
    tid.innerHTML = `${n.targetid}${n.is_partner ? ' <span class="badge">its own partner</span>' : ""}${n.has_spectrum === false ? ' <span class="badge no-spectrum">no spectrum</span>' : ""}`;
    card.append(img, canvas, meta, tid, markButtons(n.targetid));
    card.addEventListener("click", () => { state.targetid = n.targetid; $("targetid").value = n.targetid; search(true); });
    if (n.has_spectrum !== false) drawSpectrum(canvas, n.targetid, 160, n.redshift, false);
    else canvas.remove();
    return card;
  });
  $("grid").replaceChildren(...cards);
  paintMarks();
}

// ---- marks, ranking and the unusual view --------------------------------------------------------
function markOf(tid) {
  tid = String(tid);
  return marks.positive.includes(tid) ? "positive" : marks.negative.includes(tid) ? "negative" : null;
}

function setMark(tid, mark) {  // the same mark again removes it; the other mark replaces it
  tid = String(tid);
  const had = markOf(tid);
  marks.positive = marks.positive.filter((t) => t !== tid);
  marks.negative = marks.negative.filter((t) => t !== tid);
  if (had !== mark) marks[mark].push(tid);
  saveMarks();
}

function markButtons(tid) {
  const box = document.createElement("div");
  box.className = "marks";
  box.dataset.targetid = tid;
  for (const [mark, text, title] of [["positive", "+ more like this", "mark: more like this"], ["negative", "− not this", "mark: not this"]]) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = `mark-${mark}`;
    b.textContent = text;
    b.title = title;
    b.addEventListener("click", (event) => { event.stopPropagation(); setMark(tid, mark); });
    box.append(b);
  }
  return box;
}

// a file the server writes (the marks and catalogue formats have one writer each, in galclip), saved by the browser
async function downloadFrom(url, options, fallbackName) {
  try {
    const response = await fetch(url, options);
    if (!response.ok) throw new Error((await response.json()).error || response.statusText);
    const name = (response.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
    const a = document.createElement("a");
    a.href = URL.createObjectURL(await response.blob());
    a.download = name ? name[1] : fallbackName;
    document.body.append(a);
    a.click();
    a.remove();
  } catch (err) {
    showMessage(err.message);
  }
}

function downloadMarks(format) {
  const body = JSON.stringify({ positive: marks.positive, negative: marks.negative });
  downloadFrom(`/api/marks/file?format=${format}`, { method: "POST", headers: { "Content-Type": "application/json" }, body }, `galclip-marks.${format}`);
}
$("marks-json").addEventListener("click", () => downloadMarks("json"));
$("marks-csv").addEventListener("click", () => downloadMarks("csv"));

function paintMarks() {
  for (const box of document.querySelectorAll(".marks")) {
    const mark = markOf(box.dataset.targetid);
    box.querySelector(".mark-positive").classList.toggle("on", mark === "positive");
    box.querySelector(".mark-negative").classList.toggle("on", mark === "negative");
    const card = box.closest(".card");
    if (card) {
      card.classList.toggle("marked-positive", mark === "positive");
      card.classList.toggle("marked-negative", mark === "negative");
    }
  }
  const p = marks.positive.length, n = marks.negative.length;
  $("marks-count").textContent = p || n ? `${p} more like this · ${n} not this` : "mark galaxies with + (more like this) or − (not this) on their cards";
  $("rank").disabled = p === 0;
}

function saveMarks() {
  try { localStorage.setItem(marksKey, JSON.stringify(marks)); } catch (err) { /* private mode: marks last this visit */ }
  paintMarks();
}

function loadMarks() {
  let saved = {};
  try { saved = JSON.parse(localStorage.getItem(marksKey) || "{}") || {}; } catch (err) { saved = {}; }
  marks.positive = (saved.positive || []).map(String);
  marks.negative = (saved.negative || []).map(String);
  paintMarks();
}

function renderCandidates(result) {
  const what = result.kind === "rank" ? `like your ${result.positive.length} marked` : "most unusual";
  $("results-title").textContent = `${result.candidates.length} ${what} galaxies in ${result.space} (${result.scorer}; ${result.seconds.toFixed(2)} s)`;
  const cards = result.candidates.map((c) => {
    const card = document.createElement("div");
    card.className = "card candidate";
    card.dataset.targetid = c.targetid;
    card.title = "search from this galaxy";
    const img = document.createElement("img");
    img.src = `/api/image/${c.targetid}.png`;
    img.alt = `targetid ${c.targetid}`;
    const canvas = document.createElement("canvas");
    canvas.width = 220; canvas.height = 60;
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.innerHTML = `<span>#${c.rank} · score ${c.score.toFixed(3)}</span><span>z ${fmt(c.redshift, 3)} · M* ${fmt(c.log_mstar, 2)}</span>`;
    const tid = document.createElement("div");
    tid.className = "tid";
    tid.innerHTML = `${c.targetid}${c.has_spectrum ? "" : ' <span class="badge no-spectrum">no spectrum</span>'}`;
    card.append(img, canvas, meta, tid, markButtons(c.targetid));
    card.addEventListener("click", () => { state.targetid = c.targetid; $("targetid").value = c.targetid; search(true); });
    if (c.has_spectrum) drawSpectrum(canvas, c.targetid, 160, c.redshift, false);
    else canvas.remove();
    return card;
  });
  $("grid").replaceChildren(...cards);
  paintMarks();
  $("candidates-csv").hidden = $("candidates-fits").hidden = false;
  $("csv").hidden = true;  // the neighbours' CSV link belongs to a search, not to this view
  drawMap();
}

async function showCandidates(request) {
  showMessage("");
  document.body.dataset.loading = "1";
  try {
    const result = await fetchJSON(request.url, request.options);
    lastCandidates = { result, request };
    renderCandidates(result);
  } catch (err) {
    showMessage(err.message);
  } finally {
    delete document.body.dataset.loading;
  }
}

function rankRequest(path) {
  const body = { positive: marks.positive, negative: marks.negative, space: $("space").value, n: Number($("rank-n").value) };
  return { url: path, options: { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) } };
}

function unusualURL(path) {
  return `${path}?${new URLSearchParams({ space: $("space").value, n: $("rank-n").value })}`;
}

$("rank").addEventListener("click", () => {
  if (!marks.positive.length) { showMessage("Mark at least one galaxy “more like this” first."); return; }
  showCandidates(rankRequest("/api/rank"));
});
$("unusual").addEventListener("click", () => showCandidates({ url: unusualURL("/api/anomalies"), options: {} }));
$("clear-marks").addEventListener("click", () => { marks.positive = []; marks.negative = []; saveMarks(); });

function downloadCandidates(format) {  // the shown view's own request, its candidates as a catalogue file
  if (!lastCandidates) return;
  const r = lastCandidates.request;
  const url = r.url.startsWith("/api/rank") ? `/api/rank/catalogue?format=${format}` : `${r.url.replace("/api/anomalies?", "/api/anomalies/catalogue?")}&format=${format}`;
  downloadFrom(url, { ...r.options }, `galclip-candidates.${format}`);
}
$("candidates-csv").addEventListener("click", () => downloadCandidates("csv"));
$("candidates-fits").addEventListener("click", () => downloadCandidates("fits"));

$("marks-file").addEventListener("change", async () => {
  const file = $("marks-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  try {
    const got = await fetchJSON("/api/marks", { method: "POST", body: form });
    marks.positive = got.positive.map(String);
    marks.negative = got.negative.map(String);
    saveMarks();
    showMessage("");
  } catch (err) {
    showMessage(err.message);
  } finally {
    $("marks-file").value = "";
  }
});

async function startMarks() {
  try {
    const health = await fetchJSON("/api/health");
    marksKey = `galclip-marks:${health.index}`;
    for (const option of $("space").options) option.disabled = !(health.spaces || ["embedding"]).includes(option.value);
  } catch (err) { /* the marks still work under the default key */ }
  loadMarks();
}

async function drawSpectrum(canvas, targetid, bins, z, marks) {
  let s;
  try {
    s = await fetchJSON(`/api/spectrum/${targetid}?bins=${bins}`);
  } catch (err) {
    return;  // the card still shows its image and numbers
  }
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = marks ? 14 : 2;
  const flux = s.flux.filter((v) => v !== null).sort((a, b) => a - b);
  if (!flux.length) return;
  const lo = flux[Math.floor(flux.length * 0.01)], hi = flux[Math.floor(flux.length * 0.995)];
  const w0 = s.wavelength[0], w1 = s.wavelength[s.wavelength.length - 1];
  const X = (wl) => ((wl - w0) / (w1 - w0)) * w;
  const Y = (f) => h - pad - ((f - lo) / (hi - lo || 1)) * (h - 2 * pad);
  ctx.clearRect(0, 0, w, h);
  if (marks && z !== null && z !== undefined) {
    ctx.font = "10px sans-serif";
    ctx.fillStyle = "#b04a1f";
    LINES.forEach(([name, rest], i) => {
      const x = X(rest * (1 + z));
      if (x < 0 || x > w) return;
      ctx.strokeStyle = "rgba(176, 74, 31, 0.45)";
      ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, h); ctx.stroke();
      ctx.fillText(name, x + 2, 10 + (i % 2) * 10);
    });
  }
  ctx.strokeStyle = "#1d3f7a";
  ctx.lineWidth = 1;
  ctx.beginPath();
  let started = false;
  s.flux.forEach((f, i) => {
    if (f === null) { started = false; return; }
    const x = X(s.wavelength[i]), y = Math.max(0, Math.min(h, Y(f)));
    if (started) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    started = true;
  });
  ctx.stroke();
  if (marks) {
    ctx.fillStyle = "#667";
    ctx.fillText(`${Math.round(w0)} Å`, 2, h - 2);
    ctx.fillText(`${Math.round(w1)} Å`, w - 44, h - 2);
  }
}

// ---- the embedding map -------------------------------------------------------------------------
const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];  // viridis

function colour(t) {
  if (!Number.isFinite(t)) return [120, 120, 120];
  t = Math.max(0, Math.min(1, t)) * (STOPS.length - 1);
  const i = Math.min(Math.floor(t), STOPS.length - 2), f = t - i;
  return STOPS[i].map((c, j) => Math.round(c + f * (STOPS[i + 1][j] - c)));
}

async function loadMap() {
  try {
    mapData = await fetchJSON("/api/map");
  } catch (err) {
    $("map-status").textContent = `map unavailable: ${err.message}`;
    return;
  }
  const canvas = $("map"), w = canvas.width, h = canvas.height, n = mapData.x.length;
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let i = 0; i < n; i++) {
    x0 = Math.min(x0, mapData.x[i]); x1 = Math.max(x1, mapData.x[i]);
    y0 = Math.min(y0, mapData.y[i]); y1 = Math.max(y1, mapData.y[i]);
  }
  const zs = mapData.redshift.filter((z) => z !== null).sort((a, b) => a - b);
  const zlo = zs.length ? zs[Math.floor(zs.length * 0.02)] : 0, zhi = zs.length ? zs[Math.floor(zs.length * 0.98)] : 1;
  mapData.sx = new Float32Array(n); mapData.sy = new Float32Array(n);
  mapData.index = new Map();
  const base = document.createElement("canvas");
  base.width = w; base.height = h;
  const bctx = base.getContext("2d");
  const image = bctx.createImageData(w, h);
  const dot = n < 20000 ? 3 : n < 80000 ? 2 : 1;  // dots shrink as the map fills
  for (let i = 0; i < n; i++) {  // one ImageData pass: stays fast at 200k points
    const sx = 6 + ((mapData.x[i] - x0) / (x1 - x0 || 1)) * (w - 12);
    const sy = 6 + (1 - (mapData.y[i] - y0) / (y1 - y0 || 1)) * (h - 12);
    mapData.sx[i] = sx; mapData.sy[i] = sy;
    mapData.index.set(mapData.targetid[i], i);
    const z = mapData.redshift[i];
    const [r, g, b] = colour(z === null ? NaN : (z - zlo) / (zhi - zlo || 1));
    for (let dy = 0; dy < dot; dy++) {
      for (let dx = 0; dx < dot; dx++) {
        const px = Math.min(w - 1, Math.round(sx) + dx), py = Math.min(h - 1, Math.round(sy) + dy);
        const o = (py * w + px) * 4;
        image.data[o] = r; image.data[o + 1] = g; image.data[o + 2] = b; image.data[o + 3] = 255;
      }
    }
  }
  bctx.putImageData(image, 0, 0);
  mapData.base = base;
  $("map-status").textContent = `${n.toLocaleString()} galaxies; redshift ${zlo.toFixed(2)} (purple) to ${zhi.toFixed(2)} (yellow). Click a point to search from it.`;
  drawMap();
}

function drawMap() {
  if (!mapData || !mapData.base) return;
  const ctx = $("map").getContext("2d");
  ctx.fillStyle = "#111";
  ctx.fillRect(0, 0, ctx.canvas.width, ctx.canvas.height);
  ctx.drawImage(mapData.base, 0, 0);
  const ring = (tid, radius, style) => {
    const i = mapData.index.get(String(tid));
    if (i === undefined) return;
    ctx.strokeStyle = style; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.arc(mapData.sx[i], mapData.sy[i], radius, 0, 2 * Math.PI); ctx.stroke();
  };
  if (lastCandidates) {
    lastCandidates.result.candidates.forEach((c) => ring(c.targetid, 4, "#ffffff"));
    marks.positive.forEach((t) => ring(t, 7, "#3ddc84"));
    return;
  }
  if (!lastResult) return;
  lastResult.neighbours.forEach((n) => ring(n.targetid, 4, "#ffffff"));
  ring(lastResult.query.targetid, 7, "#ff3b3b");
}

$("map").addEventListener("click", (event) => {
  if (!mapData || !mapData.sx) return;
  const rect = event.target.getBoundingClientRect();
  const x = (event.clientX - rect.left) * (event.target.width / rect.width);
  const y = (event.clientY - rect.top) * (event.target.height / rect.height);
  let best = -1, bestD = Infinity;
  for (let i = 0; i < mapData.sx.length; i++) {
    const d = (mapData.sx[i] - x) ** 2 + (mapData.sy[i] - y) ** 2;
    if (d < bestD) { bestD = d; best = i; }
  }
  if (best < 0) return;
  state.targetid = mapData.targetid[best];
  $("targetid").value = state.targetid;
  search(true);
});

// ---- the query bar and navigation ---------------------------------------------------------------
$("query-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.targetid = $("targetid").value.trim();
  readRefine();
  search(true);
});

$("go-position").addEventListener("click", () => {
  state.targetid = null;
  state.ra = $("ra").value.trim(); state.dec = $("dec").value.trim();
  readRefine();
  if (!state.ra || !state.dec) { showMessage("Enter both RA and Dec in degrees."); return; }
  search(true);
});

async function searchFile(file) {
  readRefine();
  const form = new FormData();
  form.append("file", file);
  if (state.query !== "image") form.append("query", state.query);
  form.append("target", state.target);
  form.append("k", state.k);
  showMessage("");
  document.body.dataset.loading = "1";
  try {
    showResult(await fetchJSON(`/api/search/file?${refineParams(new URLSearchParams()).toString()}`, { method: "POST", body: form }));
    $("csv").hidden = true;
  } catch (err) {
    showMessage(`${file.name}: ${err.message}`);
  } finally {
    delete document.body.dataset.loading;
    $("file").value = "";
  }
}

$("file").addEventListener("change", () => { if ($("file").files.length) searchFile($("file").files[0]); });
for (const zone of [$("drop-zone"), $("query-panel")]) {
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (event.dataTransfer.files.length) searchFile(event.dataTransfer.files[0]);
  });
}

$("random").addEventListener("click", async () => {
  try {
    const r = await fetchJSON("/api/random");
    state.targetid = r.targetid;
    $("targetid").value = r.targetid;
    readRefine();
    search(true);
  } catch (err) {
    showMessage(err.message);
  }
});

window.addEventListener("popstate", () => { readURL(); if (state.targetid || state.ra) search(false); });

readURL();
startMarks();
loadMap();
if (state.targetid || (state.ra && state.dec)) search(false);
