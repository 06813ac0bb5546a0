// AlexNet explorer: the page's behaviour. Plain ES2020, no dependencies, no build step.
// Everything shown comes from the JSON API (see /docs), computed by the loaded checkpoint.
"use strict";

const LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"];
const $ = (id) => document.getElementById(id);

const state = {
  info: null,
  gallery: [],
  current: null,   // {id, name, url, file?}
  analysis: null,  // /api/analysis result for the current image
  revealed: 0,
  token: 0,        // guards against answers for an image that is no longer chosen
  revealing: false,
};

// ------------------------------------------------------------------ helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) {
    const detail = body && typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`;
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return body;
}

const pct = (p) => (p >= 0.995 ? (p * 100).toFixed(0) : p >= 0.001 ? (p * 100).toFixed(1) : "<0.1") + "%";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const reducedMotion = () => window.matchMedia("(prefers-reduced-motion: reduce)").matches;

// ------------------------------------------------------------------ status line

function statusText() {
  if (!state.current) return "Pick an image to begin";
  return `Image "${state.current.name}" - ${state.revealed} of ${LAYERS.length} layers revealed`;
}

function renderStatus() {
  $("status").textContent = statusText();
  [...$("pips").children].forEach((pip, i) => pip.classList.toggle("on", i < state.revealed));
  const ready = Boolean(state.analysis) && !state.revealing;
  $("reveal").disabled = !ready || state.revealed >= LAYERS.length;
  $("reveal").textContent = state.revealed >= LAYERS.length ? "Fully revealed" : `Reveal ${LAYERS[state.revealed]}`;
  $("reset").disabled = !state.current || state.revealed === 0;
}

// ------------------------------------------------------------------ beat 2: the chart

function drawChart() {
  const info = state.info;
  const host = $("chart");
  if (!info || !host) return;
  const data = info.timeline;
  const narrow = host.clientWidth < 560;
  const W = Math.max(320, Math.round(host.clientWidth || 720));
  const H = narrow ? 300 : 380;
  const m = { l: narrow ? 40 : 52, r: narrow ? 12 : 20, t: 26, b: 40 };
  const yMax = 32;  // headroom above the 30% gridline for the 2010 label
  const pad = narrow ? 16 : 28;  // keeps the first and last points clear of the axis labels
  const x = (i) => m.l + pad + (i * (W - m.l - m.r - 2 * pad)) / (data.length - 1);
  const y = (v) => m.t + (1 - v / yMax) * (H - m.t - m.b);

  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, "aria-hidden": "true" });
  const defs = svg("defs");
  const grad = svg("linearGradient", { id: "area-fill", x1: 0, y1: 0, x2: 0, y2: 1 });
  grad.append(svg("stop", { offset: "0%", "stop-color": "#17161c", "stop-opacity": ".10" }));
  grad.append(svg("stop", { offset: "100%", "stop-color": "#17161c", "stop-opacity": "0" }));
  defs.append(grad);
  root.append(defs);

  // The 2011 -> 2012 interval: where the cliff is.
  const i2012 = data.findIndex((d) => d.year === 2012);
  root.append(svg("rect", { class: "band", x: x(i2012 - 1), y: m.t, width: x(i2012) - x(i2012 - 1), height: H - m.t - m.b }));

  const grid = svg("g", { class: "grid" });
  const axis = svg("g", { class: "axis" });
  for (let v = 0; v <= 30; v += 10) {
    grid.append(svg("line", { x1: m.l, x2: W - m.r, y1: y(v), y2: y(v) }));
    axis.append(svg("text", { x: m.l - 10, y: y(v) + 4, "text-anchor": "end" }, `${v}%`));
  }
  data.forEach((d, i) => {
    const label = narrow && i % 2 ? `’${String(d.year).slice(2)}` : String(d.year);
    axis.append(svg("text", { x: x(i), y: H - m.b + 22, "text-anchor": "middle" }, label));
  });
  if (!narrow) {
    axis.append(svg("text", { class: "ylabel", x: m.l, y: 12 }, "top-5 error"));
  }
  root.append(grid, axis);

  const pts = data.map((d, i) => [x(i), y(d.error)]);
  const path = pts.map((p, i) => `${i ? "L" : "M"}${p[0].toFixed(1)},${p[1].toFixed(1)}`).join("");
  root.append(svg("path", { class: "area", d: `${path}L${x(data.length - 1)},${y(0)}L${x(0)},${y(0)}Z` }));
  root.append(svg("path", { class: "line", d: path }));
  root.append(svg("path", { class: "cliff", d: `M${pts[i2012 - 1][0]},${pts[i2012 - 1][1]}L${pts[i2012][0]},${pts[i2012][1]}` }));

  // Human level.
  const hy = y(info.human_top5_error);
  root.append(svg("line", { class: "human", x1: m.l, x2: W - m.r, y1: hy, y2: hy }));
  root.append(svg("text", { class: "human-label", x: W - m.r, y: hy - 7, "text-anchor": "end" }, `human ≈ ${info.human_top5_error}%`));

  data.forEach((d, i) => {
    const [px, py] = pts[i];
    const alex = d.year === 2012;
    const g = svg("g");
    g.append(svg("title", {}, `${d.year}: ${d.error}% top-5 error (${d.team})`));
    g.append(svg("circle", { class: alex ? "pt alexnet" : "pt", cx: px, cy: py, r: alex ? 7 : 4.5 }));
    // Labels sit where the line and the human line leave room: above the point early on,
    // value and team both above in 2014, both below once the line has crossed human level.
    const under = d.error < info.human_top5_error;
    const showValue = !narrow || alex || i === 0 || i === data.length - 1;
    if (alex) {
      g.append(svg("text", { class: "val", x: px + 12, y: py + 4 }, `${d.error}`));
    } else if (showValue) {
      g.append(svg("text", { class: "val", x: px, y: under ? py + 19 : py - 12, "text-anchor": "middle" }, `${d.error}`));
    }
    if (!narrow && !alex) {
      const ty = under ? py + 33 : d.year === 2014 ? py - 27 : py + 20;
      g.append(svg("text", { class: "team", x: px, y: ty, "text-anchor": "middle" }, d.team));
    }
    root.append(g);
  });

  // The annotation: 2012 · AlexNet, the cliff.
  const [ax, ay] = pts[i2012];
  const note = svg("g");
  const nx = ax + (narrow ? 14 : 22);
  const ny = y(27.5);
  note.append(svg("text", { class: "note", x: nx, y: ny }, "2012 · AlexNet"));
  note.append(svg("text", { class: "note-sub", x: nx, y: ny + 17 }, narrow ? "the cliff: 25.8% → 16.4%" : "the cliff: 25.8% → 16.4% top-5 error"));
  note.append(svg("line", { x1: ax, y1: ay - 10, x2: ax, y2: ny + 24, stroke: "#f2572b", "stroke-width": 1.2, "stroke-dasharray": "3 3" }));
  root.append(note);

  host.replaceChildren(root);
}

// ------------------------------------------------------------------ beat 1: the pipeline

// Resolves once the element is at least partly on screen (at once without IntersectionObserver).
function whenVisible(node) {
  if (!("IntersectionObserver" in window)) return Promise.resolve();
  return new Promise((resolve) => {
    const observer = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) {
        observer.disconnect();
        resolve();
      }
    }, { threshold: 0.35 });
    observer.observe(node);
  });
}

async function playPipeline(token) {
  const a = state.analysis;
  if (!a) return;
  const stages = [...document.querySelectorAll("#pipeline .stage")];
  stages.forEach((s) => s.classList.remove("lit"));
  $("pipe-input").src = a.input;
  $("pipe-input").alt = `The input crop of "${a.name}"`;
  a.layers.forEach((layer, i) => {
    const img = stages[i + 1].querySelector(".frame img");
    img.src = layer.overlay;
    img.alt = `${layer.layer}: where its strongest channels respond`;
    stages[i + 1].querySelector(".minis").replaceChildren(...layer.strongest.map((ch) =>
      el("img", { src: ch.png, alt: `${layer.layer} channel ${ch.channel}`, title: `${layer.layer} channel ${ch.channel} · mean ${ch.mean}` })));
  });
  const top = a.predictions.top[0];
  $("pipe-label").textContent = top.name;
  $("pipe-prob").textContent = pct(top.prob);
  const truth = a.predictions.true_label;
  $("beat-1-word").textContent = truth ? truth.name : top.name;
  const verdict = !truth ? `it answers “${top.name}”.`
    : a.predictions.correct_top1 ? `it answers “${top.name}” — correctly.`
      : `it answers “${top.name}” (the true label ranks ${truth.rank}).`;
  $("beat-1-live").textContent = `Below, the loaded network looks at “${a.name}”: each stage lights up where its strongest channels fire, and ${verdict}`;
  await whenVisible($("pipeline"));  // play the sequence where it can be seen
  if (token !== state.token) return;
  const delay = reducedMotion() ? 0 : 380;
  for (const stage of stages) {
    if (token !== state.token) return;
    await sleep(delay);
    stage.classList.add("lit");
  }
}

// ------------------------------------------------------------------ beat 3: reveal the depth

function renderLayerSlots() {
  const list = $("layers");
  list.replaceChildren();
  const roles = Object.fromEntries((state.info?.layers || []).map((l) => [l.layer, l]));
  LAYERS.forEach((name, i) => {
    const shape = state.analysis?.layers[i]?.shape;
    const placeholders = el("ul", { class: "tiles", "aria-hidden": "true" });
    const count = Math.min(state.info?.top_channels || 8, shape ? shape[0] : 8);
    for (let k = 0; k < count; k++) placeholders.append(el("li", { class: "placeholder-tile" }));
    list.append(el("li", { class: "layer hidden-layer", id: `layer-${name}`, "data-layer": name },
      el("div", { class: "layer-head" },
        el("b", { text: name }),
        el("span", { class: "role", text: roles[name]?.role || "" }),
        el("span", { class: "shape", text: shape ? `${shape[1]}×${shape[2]} · ${shape[0]} ch` : "hidden" })),
      placeholders));
  });
}

function renderLayer(payload) {
  const slot = $(`layer-${payload.layer}`);
  const tiles = el("ul", { class: "tiles", "aria-label": `${payload.layer}: strongest channels` });
  for (const ch of payload.channels) {
    tiles.append(el("li", {},
      el("figure", { class: "tile" },
        el("img", { src: ch.png, alt: `${payload.layer} channel ${ch.channel}, mean activation ${ch.mean}`, title: `channel ${ch.channel} · mean ${ch.mean} · max ${ch.max}` }),
        el("figcaption", { text: `#${ch.channel}` }))));
  }
  const [c, h, w] = payload.shape;
  slot.replaceChildren(
    el("div", { class: "layer-head" },
      el("b", { text: payload.layer }),
      el("span", { class: "role", text: payload.role }),
      el("span", { class: "shape", text: `${h}×${w} · ${c} ch · ${Math.round(payload.active_fraction * 100)}% active` })),
    tiles);
  slot.classList.remove("hidden-layer");
  slot.classList.add("revealed");
}

function renderResult() {
  const p = state.analysis.predictions;
  const list = $("top5");
  list.replaceChildren();
  for (const t of p.top) {
    const name = el("span", { class: "name", text: t.name });
    if (t.correct) name.append(el("span", { class: "tag", text: "✓ correct label" }));
    const bar = el("span", { class: "bar" });
    bar.style.width = `${Math.max(1, t.prob * 100).toFixed(1)}%`;  // CSSOM: allowed by the page's CSP
    list.append(el("li", { class: t.correct ? "correct" : "" },
      bar,
      name,
      el("span", { class: "pct", text: pct(t.prob) })));
  }
  let note = "No label is known for this image: these are the network's five best guesses.";
  if (p.true_label) {
    note = p.correct_top1
      ? `Right first time: the true label “${p.true_label.name}” is the network's top guess.`
      : p.correct_top5
        ? `The true label “${p.true_label.name}” is guess number ${p.true_label.rank} — still a top-5 hit, the measure ImageNet was scored by.`
        : `The true label “${p.true_label.name}” is not in the top 5 (rank ${p.true_label.rank}, ${pct(p.true_label.prob)}).`;
  }
  $("result-note").textContent = note;
  $("result").hidden = false;
}

async function fetchLayer(name) {
  const cur = state.current;
  try {
    return await api(`/api/activations/${name}?image=${encodeURIComponent(cur.id)}`);
  } catch (err) {
    if (err.status === 404 && cur.file) {  // the server forgot the upload: send it again
      const form = new FormData();
      form.append("file", cur.file, cur.file.name);
      return api(`/api/activations/${name}`, { method: "POST", body: form });
    }
    throw err;
  }
}

async function reveal() {
  if (!state.analysis || state.revealing || state.revealed >= LAYERS.length) return;
  const token = state.token;
  state.revealing = true;
  renderStatus();
  try {
    const payload = await fetchLayer(LAYERS[state.revealed]);
    if (token !== state.token) return;
    renderLayer(payload);
    state.revealed += 1;
    if (state.revealed === LAYERS.length) renderResult();
  } catch (err) {
    showError(`Could not reveal ${LAYERS[state.revealed]}: ${err.message}`);
  } finally {
    if (token === state.token) state.revealing = false;
    renderStatus();
  }
}

function resetReveal() {
  state.revealed = 0;
  $("result").hidden = true;
  renderLayerSlots();
  renderStatus();
}

// ------------------------------------------------------------------ choosing an image

function markGallery() {
  for (const b of document.querySelectorAll("#gallery button")) {
    b.setAttribute("aria-pressed", String(state.current && b.dataset.id === state.current.id));
  }
}

async function choose(image) {
  const token = ++state.token;
  state.current = image;
  state.analysis = null;
  state.revealing = false;
  hideError();
  markGallery();
  for (const stage of document.querySelectorAll("#pipeline .stage")) stage.classList.remove("lit");
  $("chosen-img").src = image.url;
  $("chosen-img").alt = `The chosen image: ${image.name}`;
  resetReveal();
  try {
    const a = image.file ? await postAnalysis(image.file) : await api(`/api/analysis?image=${encodeURIComponent(image.id)}`);
    if (token !== state.token) return;
    state.analysis = a;
    state.current = { ...image, id: a.id, name: a.name };
    renderLayerSlots();
    renderStatus();
    playPipeline(token);
    loadNeighbors(token);
  } catch (err) {
    if (token !== state.token) return;
    showError(err.message);
    renderStatus();
  }
}

function postAnalysis(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  return api("/api/analysis", { method: "POST", body: form });
}

function showError(message) {
  $("upload-error").textContent = message;
  $("upload-error").hidden = false;
}
function hideError() { $("upload-error").hidden = true; }

function onUpload(file) {
  if (!file) return;
  const limits = state.info?.limits;
  const allowed = ["image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp"];
  if (!allowed.includes(file.type)) {
    showError(`“${file.name}” is not a JPEG, PNG, GIF, WebP or BMP image.`);
    return;
  }
  if (limits && file.size > limits.max_upload_bytes) {
    showError(`“${file.name}” is ${(file.size / 1048576).toFixed(1)} MB; the limit is ${(limits.max_upload_bytes / 1048576).toFixed(0)} MB.`);
    return;
  }
  const url = URL.createObjectURL(file);
  const name = file.name.replace(/\.[^.]+$/, "").replace(/_/g, " ").slice(0, 40) || "your image";
  choose({ id: null, name, url, file });
  document.querySelector("#beat-3").scrollIntoView({ block: "start" });
}

// ------------------------------------------------------------------ inside the network

async function loadKernels() {
  try {
    const k = await api("/api/kernels");
    const img = $("kernels");
    img.addEventListener("load", () => {  // small grids (few, small kernels) are shown at 2x, crisp
      img.style.width = `${img.naturalWidth * (img.naturalWidth < 260 ? 2 : 1)}px`;
    }, { once: true });
    img.src = k.png;
    const towers = k.towers.length === 2
      ? ` · two towers of ${k.towers[0].kernels}; colourfulness ${k.towers[0].mean.toFixed(2)} vs ${k.towers[1].mean.toFixed(2)}`
      : ` · colourfulness ${k.towers[0].mean.toFixed(2)}`;
    $("kernels-meta").textContent = `${k.count} kernels of ${k.kernel_size}×${k.kernel_size}×3${towers}`;
  } catch (err) {
    $("kernels-meta").textContent = `Kernels unavailable: ${err.message}`;
  }
}

async function loadNeighbors(token) {
  const list = $("neighbors");
  const meta = $("neighbors-meta");
  const cur = state.current;
  if (!cur) return;
  for (let attempt = 0; attempt < 120; attempt++) {
    let nb;
    try {
      nb = await api(`/api/neighbors?image=${encodeURIComponent(cur.id)}&k=8`);
    } catch (err) {
      if (token === state.token) meta.textContent = `Neighbours unavailable: ${err.message}`;
      return;
    }
    if (token !== state.token) return;
    if (!nb.available) {
      list.replaceChildren();
      meta.textContent = "No training split was given (--data DIR with a train/ folder), so there is nothing to search.";
      return;
    }
    if (!nb.ready) {
      meta.textContent = `Indexing training images… ${nb.progress[0]} of ${nb.progress[1]}`;
      await sleep(1500);
      continue;
    }
    const target = state.analysis?.predictions?.true_label?.class;
    list.replaceChildren(...nb.neighbors.map((n) => el("li", { class: target && n.class === target ? "same" : "" },
      el("img", { src: n.url, alt: `Training image of ${n.name}` }),
      el("span", { text: n.name }),
      el("small", { text: `d = ${n.distance.toFixed(1)}` }))));
    meta.textContent = `${nb.neighbors.length} nearest of ${nb.indexed} indexed training images, Euclidean distance on fc7.`;
    $("fc7-dim").textContent = `${nb.dim} numbers in this model`;
    return;
  }
}

// ------------------------------------------------------------------ start

async function init() {
  $("reveal").addEventListener("click", reveal);
  $("reset").addEventListener("click", resetReveal);
  $("replay").addEventListener("click", () => playPipeline(state.token));
  $("upload").addEventListener("change", (e) => onUpload(e.target.files[0]));
  const dz = $("dropzone");
  dz.addEventListener("dragover", (e) => { e.preventDefault(); dz.classList.add("over"); });
  dz.addEventListener("dragleave", () => dz.classList.remove("over"));
  dz.addEventListener("drop", (e) => { e.preventDefault(); dz.classList.remove("over"); onUpload(e.dataTransfer.files[0]); });

  try {
    state.info = await api("/api/info");
  } catch (err) {
    $("model-chip").classList.add("down");
    $("model-text").textContent = `The explorer's server is not answering (${err.message}).`;
    return;
  }
  const info = state.info;
  $("model-chip").classList.add("live");
  const data = info.data ? ` · data: ${info.data}` : "";
  $("model-text").textContent = `Live: ${info.model} · ${info.num_classes} classes · ${info.input_size}×${info.input_size} input${data}`;
  $("footer-model").textContent = `${info.model}${info.checkpoint ? `, ${info.checkpoint}` : ""}`;
  $("upload-hint").textContent = `JPEG, PNG, GIF, WebP or BMP up to ${(info.limits.max_upload_bytes / 1048576).toFixed(0)} MB · or drop it here`;
  $("pipe-input-size").textContent = `${info.input_size}×${info.input_size} pixels`;
  drawChart();
  let resizeTimer = 0;
  window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(drawChart, 120); });
  renderLayerSlots();
  renderStatus();
  loadKernels();

  const { images } = await api("/api/gallery");
  state.gallery = images;
  $("gallery-empty").hidden = images.length > 0;
  $("gallery").replaceChildren(...images.map((g) => el("li", {},
    (() => {
      const b = el("button", { type: "button", "data-id": g.id, "aria-pressed": "false", title: g.name },
        el("img", { src: g.url, alt: g.name, loading: "lazy" }),
        el("span", { text: g.name }));
      b.addEventListener("click", () => choose({ id: g.id, name: g.name, url: g.url }));
      return b;
    })())));
  if (images.length) choose({ id: images[0].id, name: images[0].name, url: images[0].url });
}

document.addEventListener("DOMContentLoaded", init);
