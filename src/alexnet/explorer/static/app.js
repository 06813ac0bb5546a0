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
  anatomy: null,   // /api/anatomy: the loaded model's layer table
  atlas: null,     // /api/atlas: measured captions, probes, out-of-class calibration (null while it builds)
  atlasStatus: null,
  knowledge: null, // /api/knowledge for the current image
  unit: null,      // the open channel: {layer, channel, trigger}
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
  // Disabled only when there is nothing to reveal: while a layer loads the button keeps its
  // focus (aria-busy; clicks are ignored) so keyboard users are not dropped to the page's start.
  const reveal = $("reveal");
  reveal.disabled = !state.analysis || state.revealed >= LAYERS.length;
  reveal.setAttribute("aria-busy", String(state.revealing));
  reveal.textContent = state.revealed >= LAYERS.length ? "Fully revealed" : `Reveal ${LAYERS[state.revealed]}`;
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

  // Every point carries its value (on phones too); no label depends on hover. Values sit
  // above the line while it is above human level and below it after, where the human line
  // would otherwise cross them; the teams are in the table under the chart.
  data.forEach((d, i) => {
    const [px, py] = pts[i];
    const alex = d.year === 2012;
    const g = svg("g");
    g.append(svg("title", {}, `${d.year}: ${d.error}% top-5 error (${d.team})`));
    g.append(svg("circle", { class: alex ? "pt alexnet" : "pt", cx: px, cy: py, r: alex ? 7 : 4.5 }));
    const under = d.error < info.human_top5_error;
    if (alex) {
      g.append(svg("text", { class: "val", x: px + 12, y: py + 4 }, `${d.error}`));
    } else {
      g.append(svg("text", { class: "val", x: px, y: under ? py + 18 : py - 11, "text-anchor": "middle" }, `${d.error}`));
    }
    if (alex && d.extra_data_error) {  // the same team's entry with extra (Fall 2011 ImageNet) training data
      const ey = y(d.extra_data_error);
      const r = 5.5;
      g.append(svg("path", { class: "pt extra", d: `M${px},${ey - r}L${px + r},${ey}L${px},${ey + r}L${px - r},${ey}Z` }));
      // Left of the diamond, under the cliff line: the space to its right is the 2012-2013 segment's.
      g.append(svg("text", { class: "val extra-val", x: px - 10, y: ey + 5, "text-anchor": "end" }, narrow ? `${d.extra_data_error}` : `${d.extra_data_error} with extra data`));
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
  const body = $("timeline-table").querySelector("tbody");
  body.replaceChildren(...data.map((d) => el("tr", { class: d.year === 2012 ? "alexnet" : "" },
    el("th", { scope: "row", text: String(d.year) }),
    el("td", { text: d.team }),
    el("td", { text: d.extra_data_error ? `${d.error}% (${d.extra_data_error}% with extra data)` : `${d.error}%` }))));
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
      channelButton(layer.layer, ch, "mini")));
  });
  const top = a.predictions.top[0];
  $("pipe-label").textContent = top.name;
  $("pipe-prob").textContent = pct(top.prob);
  const truth = a.predictions.true_label;
  $("pipe-scope").textContent = `one of only ${a.predictions.scope.num_classes} classes`;
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

// A channel as a button (Enter or Space opens it): its map on this image, its top training patches.
function channelButton(layer, ch, kind) {
  const b = el("button", {
    type: "button", class: kind === "mini" ? "mini" : "tile", "data-layer": layer, "data-channel": String(ch.channel),
    "aria-label": `${layer} channel ${ch.channel} (mean activation ${ch.mean}): open its map and top training patches`,
    title: `${layer} channel ${ch.channel} · mean ${ch.mean}${ch.max !== undefined ? ` · max ${ch.max}` : ""}`,
  }, el("img", { src: ch.png, alt: "" }), kind === "mini" ? null : el("span", { class: "tile-cap", text: `#${ch.channel}` }));
  b.addEventListener("click", () => openUnit(layer, ch.channel, b));
  return b;
}

function layerCaption(name) {
  const la = state.atlas?.layers?.[name];
  if (la) return la.caption;
  const s = state.atlasStatus;
  if (s && !s.available) return `What ${name}'s units respond to is not measured: ${s.reason}.`;
  if (s && s.error) return `What ${name}'s units respond to could not be measured: ${s.error}.`;
  return `Measuring what ${name}'s units respond to (building the unit atlas from the training images)…`;
}

function renderLayer(payload) {
  const slot = $(`layer-${payload.layer}`);
  const tiles = el("ul", { class: "tiles", "aria-label": `${payload.layer}: strongest channels` });
  for (const ch of payload.channels) tiles.append(el("li", {}, channelButton(payload.layer, ch, "tile")));
  const [c, h, w] = payload.shape;
  slot.replaceChildren(
    el("div", { class: "layer-head" },
      el("b", { text: payload.layer }),
      el("span", { class: "role", text: payload.role }),
      el("span", { class: "shape", text: `${h}×${w} · ${c} ch · ${Math.round(payload.active_fraction * 100)}% active` })),
    tiles,
    el("p", { class: "layer-caption", text: layerCaption(payload.layer) }),
    el("p", { class: "knows", "data-layer": payload.layer }));
  slot.classList.remove("hidden-layer");
  slot.classList.add("revealed");
  renderKnowledge();
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
  if (p.expected) {  // an example photo whose right classes are known
    note = p.expected.length
      ? `A right answer would be one of: ${p.expected.join(", ")}. ${p.top.some((t) => p.expected.includes(t.name)) ? "One of them is in the top 5." : "None of them is in the top 5."}`
      : "What this photo shows is not one of the model's classes, so no answer can be right.";
  }
  if (p.true_label) {
    note = p.correct_top1
      ? `Right first time: the true label “${p.true_label.name}” is the network's top guess.`
      : p.correct_top5
        ? `The true label “${p.true_label.name}” is guess number ${p.true_label.rank} — still a top-5 hit, the measure ImageNet was scored by.`
        : `The true label “${p.true_label.name}” is not in the top 5 (rank ${p.true_label.rank}, ${pct(p.true_label.prob)}).`;
  }
  $("result-note").textContent = note;
  renderScope();
  $("result").hidden = false;
  setupExplain();
}

// Never a forced choice presented as recognition: the answer always says how few classes the
// model knows, and (once calibrated) whether its confidence is typical of those classes.
function renderScope() {
  const a = state.analysis;
  if (!a) return;
  const sc = a.predictions.scope;
  const classes = state.info?.classes || [];
  const list = classes.length <= 12 ? `: ${classes.join(", ")}` : "";
  let text = `The model only knows these ${sc.num_classes} classes${list}. It must answer with one of them`;
  if (!a.predictions.true_label) text += ", so for an image of anything else its answer is a forced choice, not recognition";
  text += ". ";
  if (sc.calibrated) {
    text += sc.outside
      ? `Its confidence here (${pct(sc.score)}) is below what ${pct(sc.keep)} of validation images reach (${pct(sc.threshold)}): this image may show none of them.`
      : `Its confidence here (${pct(sc.score)}) is typical of images of those classes (threshold ${pct(sc.threshold)}), which does not prove the image shows one: networks can be confidently wrong far from their training data.`;
  } else {
    text += "(The out-of-class check is not calibrated yet.)";
  }
  const note = $("scope-note");
  note.textContent = text;
  note.classList.toggle("warn", Boolean(sc.outside) || !a.predictions.true_label);
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
    state.revealed += 1;
    renderLayer(payload);
    if (state.revealed === LAYERS.length) {
      renderResult();
      renderStatus();
      if (document.activeElement === $("reveal") || document.activeElement === document.body) $("result-title").focus();
    }
  } catch (err) {
    showError(`Could not reveal ${LAYERS[state.revealed]}: ${err.message}`);
  } finally {
    if (token === state.token) state.revealing = false;
    renderStatus();
  }
}

function resetReveal() {
  const hadFocus = document.activeElement === $("reset");
  state.revealed = 0;
  $("result").hidden = true;
  closeUnit(false);
  renderLayerSlots();
  renderStatus();
  renderKnowledge();
  if (hadFocus) $("reveal").focus();  // "Start over" disables itself: keep the keyboard where the work is
}

// ------------------------------------------------------------------ choosing an image

function markGallery() {
  for (const b of document.querySelectorAll("#gallery button")) {
    b.setAttribute("aria-pressed", String(state.current && b.dataset.id === state.current.id));
  }
}

async function choose(image) {
  if (image.file) return chooseUpload(image);
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
    adopt(image, a, token);
  } catch (err) {
    if (token !== state.token) return;
    showError(err.message);
    renderStatus();
  }
}

// The analysis of a newly chosen image becomes the page's state.
function adopt(image, a, token) {
  state.analysis = a;
  state.current = { ...image, id: a.id, name: a.name };
  state.knowledge = null;
  renderLayerSlots();
  renderStatus();
  renderKnowledge();
  playPipeline(token);
  loadNeighbors(token);
  loadStencil();
  loadKnowledge(token);
}

// An upload replaces the current image only once the server has read it: a file it cannot
// use leaves the page as it was, with a message in words.
async function chooseUpload(image) {
  hideError();
  const hint = $("upload-hint").textContent;
  $("upload-hint").textContent = `Reading “${image.name}”…`;
  let a;
  try {
    a = await postAnalysis(image.file);
  } catch (err) {
    showError(uploadMessage(image.file.name, err));
    return;
  } finally {
    $("upload-hint").textContent = hint;
  }
  const token = ++state.token;
  state.current = image;
  state.revealing = false;
  markGallery();
  for (const stage of document.querySelectorAll("#pipeline .stage")) stage.classList.remove("lit");
  $("chosen-img").src = image.url;
  $("chosen-img").alt = `The chosen image: ${image.name}`;
  resetReveal();
  adopt(image, a, token);
}

function uploadMessage(name, err) {
  const why = {
    400: "the file is empty",
    408: "it took too long to arrive",
    413: "it is too large",
    415: "it is not a JPEG, PNG, GIF, WebP or BMP image",
    503: "the server is busy; try again in a moment",
  }[err.status];
  const detail = err.status === 422 || err.status === 413 ? err.message : why || err.message;
  return `“${name}” could not be used: ${detail}. The page still shows the previous image.`;
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
  chooseUpload({ id: null, name, url, file }).then(() => {
    if (state.current?.file === file) document.querySelector("#beat-3").scrollIntoView({ block: "start" });
  });
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
    // The statistic per tower only where the model has towers; otherwise caption what is shown.
    const two = k.towers.length === 2;
    const model = state.info?.model || "the loaded model";
    $("kernels-caption").textContent = two
      ? `All ${k.count} conv1 kernels of ${model} (${k.kernel_size}×${k.kernel_size}×3), one block per tower, each kernel scaled to its own range. In the paper the two GPUs' towers specialised, one mostly colour-blind edges, the other colour blobs; the colourfulness of each tower below measures whether this model's did.`
      : `All ${k.count} conv1 kernels of ${model} (${k.kernel_size}×${k.kernel_size}×3, one column, no towers), each scaled to its own range.`;
    const towers = two
      ? ` · two towers of ${k.towers[0].kernels}; mean colourfulness ${k.towers[0].mean.toFixed(2)} vs ${k.towers[1].mean.toFixed(2)}`
      : ` · mean colourfulness ${k.towers[0].mean.toFixed(2)}`;
    $("kernels-meta").textContent = `${k.count} kernels of ${k.kernel_size}×${k.kernel_size}×3${towers}`;
    $("kernels").alt = `Grid of the ${k.count} learned conv1 kernels of ${model}`;
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

// ------------------------------------------------------------------ the anatomy view

const fmt = (n) => Number(n).toLocaleString("en-US");
const shapeText = (s) => (s.length === 3 ? `${s[1]}×${s[2]}×${s[0]}` : s.join("×"));

async function loadAnatomy() {
  let a;
  try {
    a = await api("/api/anatomy");
  } catch (err) {
    $("anatomy-detail").replaceChildren(el("p", { class: "meta", text: `Layer table unavailable: ${err.message}` }));
    return;
  }
  state.anatomy = a;
  const most = Math.max(...a.rows.map((r) => r.connections), 1);
  const buttons = a.rows.map((r, i) => {
    const bar = el("span", { class: "anat-bar", "aria-hidden": "true" });
    bar.style.width = r.connections ? `${Math.max(3, (100 * r.connections) / most).toFixed(1)}%` : "0";
    const b = el("button", { type: "button", class: `anat-btn kind-${r.kind}`, "aria-pressed": "false", "data-index": String(i) },
      el("b", { text: r.label }), el("span", { text: shapeText(r.out_shape) }), bar);
    b.addEventListener("click", () => showLayer(i));
    b.addEventListener("keydown", (e) => {  // arrows move along the layers
      const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[e.key];
      if (!step) return;
      e.preventDefault();
      const next = Math.min(a.rows.length - 1, Math.max(0, i + step));
      showLayer(next);
      $("anatomy-layers").querySelectorAll("button")[next].focus();
    });
    return el("li", {}, b);
  });
  $("anatomy-layers").replaceChildren(...buttons);
  const t = a.totals;
  const [, h, w] = a.input_shape;
  $("anatomy-totals").textContent = `${state.info?.describe || a.model}. ${h}×${w}×3 input: ${fmt(t.neurons)} neurons (${fmt(t.conv_neurons)} in the conv layers) · `
    + `${fmt(t.params)} parameters · ${fmt(t.connections)} connections (multiply-adds per image: conv ${fmt(t.conv_connections)} + fc ${fmt(t.fc_connections)}). `
    + "Bars: each layer's share of the connections.";
  showLayer(0);
}

function showLayer(i) {
  const a = state.anatomy;
  const r = a.rows[i];
  $("anatomy-layers").querySelectorAll("button").forEach((b, j) => b.setAttribute("aria-pressed", String(i === j)));
  const rows = [["Output", `${shapeText(r.out_shape)} (from ${shapeText(r.in_shape)})`]];
  if (r.kernel) {
    const parts = [`${r.kernel}×${r.kernel} window`, `stride ${r.stride}`];
    if (r.padding) parts.push(`padding ${r.padding}`);
    if (r.groups > 1) parts.push(`${r.groups} groups (towers)`);
    rows.push(["Geometry", parts.join(", ")]);
  }
  rows.push(["Neurons", r.neurons ? `${shapeText(r.out_shape)} = ${fmt(r.neurons)}` : "none new: it reshapes or rescales the layer before"]);
  rows.push(["Parameters", r.params_formula || "none"]);
  rows.push(["Connections", r.connections_formula ? `${r.connections_formula} multiply-adds per image` : "none (no weights)"]);
  rows.push(["Receptive field", r.rf === null ? "the whole image (every input reaches every unit)"
    : `${r.rf}×${r.rf} input pixels; neighbouring units ${r.jump} px apart on the input`]);
  if (r.towers) rows.push(["Per tower", r.towers]);
  if (r.note) rows.push(["Note", r.note]);
  const dl = el("dl", { class: "anat-dl" });
  for (const [k, v] of rows) dl.append(el("dt", { text: k }), el("dd", { text: v }));
  $("anatomy-detail").replaceChildren(el("h4", { text: `${r.label} · module ${r.module}` }), dl);
}

// ------------------------------------------------------------------ the stencil

const st = {
  token: 0, data: null, kernel: 0, pos: 0, timer: 0, pixels: null,
  k2: 0, k2count: 0, token2: 0,
};

function f32(blob) {
  const bin = atob(blob.data);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return { shape: blob.shape, data: new Float32Array(bytes.buffer) };
}

// The dot product of the stencil at output cell (y, x): per-tap sums over channels and their total.
function dotAt(s, y, x) {
  const [C, H, W] = s.input.shape;
  const k = s.kernel_size;
  const taps = new Float64Array(k * k);
  const y0 = y * s.stride - s.padding;
  const x0 = x * s.stride - s.padding;
  let total = 0;
  for (let c = 0; c < C; c++) {
    for (let i = 0; i < k; i++) {
      const yy = y0 + i;
      if (yy < 0 || yy >= H) continue;
      for (let j = 0; j < k; j++) {
        const xx = x0 + j;
        if (xx < 0 || xx >= W) continue;
        const p = s.input.data[(c * H + yy) * W + xx] * s.weight.data[(c * k + i) * k + j];
        taps[i * k + j] += p;
        total += p;
      }
    }
  }
  return { taps, total };
}

function prepareStencil(s) {
  s.input = f32(s.input);
  s.weight = f32(s.weight);
  s.real = f32(s.map);
  const [, H, W] = s.input.shape;
  s.outH = Math.floor((H + 2 * s.padding - s.kernel_size) / s.stride) + 1;
  s.outW = Math.floor((W + 2 * s.padding - s.kernel_size) / s.stride) + 1;
  s.values = new Float64Array(s.outH * s.outW);
  let peak = 0;
  for (let y = 0; y < s.outH; y++) {
    for (let x = 0; x < s.outW; x++) {
      const v = dotAt(s, y, x).total + s.bias;
      s.values[y * s.outW + x] = v;
      peak = Math.max(peak, Math.abs(v));
    }
  }
  s.peak = peak || 1;
  return s;
}

// Diverging colour: orange for positive, blue for negative, white at zero.
function diverge(v) {
  const t = Math.max(-1, Math.min(1, v));
  const [r, g, b] = t >= 0 ? [242, 87, 43] : [43, 108, 242];
  const a = Math.abs(t);
  return `rgb(${Math.round(255 + (r - 255) * a)},${Math.round(255 + (g - 255) * a)},${Math.round(255 + (b - 255) * a)})`;
}

function sizeCanvas(canvas, w, h, target) {
  const scale = Math.max(1, Math.ceil(target / Math.max(w, h)));
  if (canvas.width !== w * scale || canvas.height !== h * scale) {
    canvas.width = w * scale;
    canvas.height = h * scale;
  }
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  return { ctx, scale };
}

// Kernel weights [C=3, k, k] as an RGB picture stretched over its own min..max (as in Figure 3).
function drawKernelRGB(canvas, w, offset, k, target) {
  const { ctx, scale } = sizeCanvas(canvas, k, k, target);
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < 3 * k * k; i++) { lo = Math.min(lo, w[offset + i]); hi = Math.max(hi, w[offset + i]); }
  const span = hi - lo || 1;
  for (let i = 0; i < k; i++) {
    for (let j = 0; j < k; j++) {
      const c = [0, 1, 2].map((ch) => Math.round((255 * (w[offset + (ch * k + i) * k + j] - lo)) / span));
      ctx.fillStyle = `rgb(${c[0]},${c[1]},${c[2]})`;
      ctx.fillRect(j * scale, i * scale, scale, scale);
    }
  }
}

function renderKernelStrip(s) {
  const strip = $("stencil-kernels");
  if (strip.childElementCount !== s.kernels) {
    const bank = s.bank ? f32(s.bank) : null;
    const k = s.kernel_size;
    strip.replaceChildren(...Array.from({ length: s.kernels }, (_, i) => {
      const canvas = el("canvas", { width: k, height: k, "aria-hidden": "true" });
      if (bank) drawKernelRGB(canvas, bank.data, i * 3 * k * k, k, 24);
      const b = el("button", { type: "button", class: "kernel-btn", "aria-pressed": "false", "aria-label": `kernel ${i}`, title: `kernel ${i}` }, canvas);
      b.addEventListener("click", () => pickKernel(i));
      return b;
    }));
  }
  strip.querySelectorAll("button").forEach((b, i) => {
    b.setAttribute("aria-pressed", String(i === s.kernel));
    if (i === s.kernel) strip.scrollLeft = Math.max(0, b.offsetLeft - strip.offsetLeft - strip.clientWidth / 2);
  });
}

function renderStencil() {
  const s = st.data;
  if (!s) return;
  const k = s.kernel_size;
  const [C, H, W] = s.input.shape;
  const n = s.outH * s.outW;
  const pos = Math.max(0, Math.min(n - 1, st.pos));
  const y = Math.floor(pos / s.outW), x = pos % s.outW;
  const pad = s.padding;

  // The input with the stencil's window (the margin is the zero padding).
  const input = $("stencil-input");
  const { ctx, scale } = sizeCanvas(input, W + 2 * pad, H + 2 * pad, 330);
  ctx.fillStyle = "#8d8896";
  ctx.fillRect(0, 0, input.width, input.height);
  if (st.pixels) ctx.drawImage(st.pixels, pad * scale, pad * scale, W * scale, H * scale);
  const wx = (x * s.stride) * scale, wy = (y * s.stride) * scale;
  ctx.lineWidth = Math.max(2, input.width / 80);  // about 4 CSS px whatever the canvas's resolution
  ctx.strokeStyle = "#f6b73c";
  ctx.strokeRect(wx + ctx.lineWidth / 2, wy + ctx.lineWidth / 2, k * scale - ctx.lineWidth, k * scale - ctx.lineWidth);

  // The patch under the stencil (grey where it hangs over the padding).
  const patch = $("stencil-patch");
  const pc = sizeCanvas(patch, k, k, 120);
  pc.ctx.fillStyle = "#8d8896";
  pc.ctx.fillRect(0, 0, patch.width, patch.height);
  if (st.pixels) {
    pc.ctx.drawImage(st.pixels, x * s.stride - pad, y * s.stride - pad, k, k, 0, 0, k * pc.scale, k * pc.scale);
  }
  drawKernelRGB($("stencil-kernel"), s.weight.data, 0, k, 120);

  // Products, summed over the colour channels, per tap.
  const { taps, total } = dotAt(s, y, x);
  const prod = sizeCanvas($("stencil-products"), k, k, 120);
  const most = Math.max(...taps.map(Math.abs), 1e-12);
  for (let i = 0; i < k; i++) {
    for (let j = 0; j < k; j++) {
      prod.ctx.fillStyle = diverge(taps[i * k + j] / most);
      prod.ctx.fillRect(j * prod.scale, i * prod.scale, prod.scale, prod.scale);
    }
  }

  // The map: cells up to the current one filled with their dot products.
  const map = $("stencil-map");
  const mc = sizeCanvas(map, s.outW, s.outH, 330);
  mc.ctx.fillStyle = "#efebe3";
  mc.ctx.fillRect(0, 0, map.width, map.height);
  for (let q = 0; q <= pos; q++) {
    mc.ctx.fillStyle = diverge(s.values[q] / s.peak);
    mc.ctx.fillRect((q % s.outW) * mc.scale, Math.floor(q / s.outW) * mc.scale, mc.scale, mc.scale);
  }
  mc.ctx.lineWidth = Math.max(2, map.width / 110);
  mc.ctx.strokeStyle = "#17161c";
  mc.ctx.strokeRect(x * mc.scale, y * mc.scale, mc.scale, mc.scale);
  map.dataset.filled = String(pos + 1);
  map.dataset.kernel = String(s.kernel);
  if (pos === n - 1) map.dataset.values = Array.from(s.values, (v) => v.toPrecision(9)).join(",");
  else delete map.dataset.values;

  const value = total + s.bias;
  const readout = $("stencil-readout");
  readout.dataset.pos = String(pos);
  readout.dataset.value = String(value);
  readout.replaceChildren(
    el("span", { text: `cell (${y}, ${x}) of ${s.outH}×${s.outW}: ` }),
    el("span", { class: "eq", text: `Σ ${C}×${k}×${k} = ${C * k * k} products = ${total.toFixed(4)}; + bias ${s.bias.toFixed(4)} = ${value.toFixed(4)}` }),
    el("span", { text: ` → after ReLU ${Math.max(0, value).toFixed(4)}` }),
  );
  const slider = $("stencil-pos");
  slider.max = String(n - 1);
  slider.value = String(pos);
  slider.setAttribute("aria-valuetext", `cell ${y}, ${x}: ${value.toFixed(3)}`);
  $("stencil-prev").disabled = pos === 0;
  $("stencil-next").disabled = pos === n - 1;
}

function setPos(p) {
  if (!st.data) return;
  st.pos = Math.max(0, Math.min(st.data.outH * st.data.outW - 1, p));
  renderStencil();
}

function stopPlay() {
  clearInterval(st.timer);
  st.timer = 0;
  $("stencil-play").textContent = "Play";
  $("stencil-play").setAttribute("aria-pressed", "false");
}

function togglePlay() {
  if (st.timer) { stopPlay(); return; }
  const s = st.data;
  if (!s) return;
  const n = s.outH * s.outW;
  if (st.pos >= n - 1) st.pos = 0;
  const step = Math.max(1, Math.round(n / 400));  // about ten seconds for a whole map
  $("stencil-play").textContent = "Pause";
  $("stencil-play").setAttribute("aria-pressed", "true");
  st.timer = setInterval(() => {
    setPos(st.pos + step);
    if (st.pos >= n - 1) stopPlay();
  }, reducedMotion() ? 120 : 25);
}

async function fetchStencil(layer, kernel) {
  const cur = state.current;
  try {
    return await api(`/api/stencil?image=${encodeURIComponent(cur.id)}&layer=${layer}&kernel=${kernel}`);
  } catch (err) {
    if (err.status === 404 && cur.file && !/kernels|stencil/.test(err.message)) {
      const form = new FormData();
      form.append("file", cur.file, cur.file.name);
      return api(`/api/stencil?layer=${layer}&kernel=${kernel}`, { method: "POST", body: form });
    }
    throw err;
  }
}

function loadPicture(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the input picture did not load"));
    img.src = url;
  });
}

async function loadStencil() {
  if (!state.current || !state.analysis) return;
  const token = ++st.token;
  stopPlay();
  try {
    const s = prepareStencil(await fetchStencil("conv1", st.kernel));
    const pixels = s.picture ? await loadPicture(s.picture) : null;
    if (token !== st.token) return;
    const fresh = !st.data || st.data.image.id !== s.image.id || st.data.outH * st.data.outW !== s.outH * s.outW;
    st.data = s;
    st.pixels = pixels;
    if (fresh) st.pos = 0;
    renderKernelStrip(s);
    $("stencil-kernel-cap").textContent = `kernel ${s.kernel} of ${s.kernels} (${s.kernel_size}×${s.kernel_size}×3)`;
    $("stencil-input-cap").textContent = `${state.current.name}: ${s.input.shape[1]}×${s.input.shape[2]} input, padding ${s.padding}, stride ${s.stride}`;
    $("stencil-map-cap").textContent = `Feature map ${s.outH}×${s.outW}, before ReLU (blue cells become 0)`;
    const gap = s.values.reduce((m, v, i) => Math.max(m, Math.abs(v - s.real.data[i])), 0);
    $("stencil-meta").textContent = `Computed here from the model's weights: the finished map equals the network's own conv1 output for kernel ${s.kernel} (largest difference ${gap.toExponential(1)}). ${s.activation}.`;
    renderStencil();
  } catch (err) {
    if (token === st.token) $("stencil-meta").textContent = `Stencil unavailable: ${err.message}`;
  }
  loadStencil2();
}

function pickKernel(i) {
  const count = st.data ? st.data.kernels : 1;
  st.kernel = ((i % count) + count) % count;
  loadStencil();
}

// ------------------------------------------------------------------ one level up: conv2

function heat(v) {  // 0..1 -> dark to warm, for conv1's (non-negative) maps
  const t = Math.max(0, Math.min(1, v));
  return `rgb(${Math.round(23 + 223 * t)},${Math.round(22 + 161 * t * t)},${Math.round(28 + 32 * t)})`;
}

async function loadStencil2() {
  if (!state.current || !state.analysis) return;
  const token = ++st.token2;
  let s;
  try {
    s = prepareStencil(await fetchStencil("conv2", st.k2));
  } catch (err) {
    if (token === st.token2) $("stencil2-sum").textContent = `conv2 unavailable: ${err.message}`;
    return;
  }
  if (token !== st.token2) return;
  st.k2count = s.kernels;
  const best = s.values.reduce((b, v, i) => (v > s.values[b] ? i : b), 0);
  const y = Math.floor(best / s.outW), x = best % s.outW;
  const [C, H, W] = s.input.shape;
  const k = s.kernel_size;
  const y0 = y * s.stride - s.padding, x0 = x * s.stride - s.padding;
  const parts = [];
  for (let c = 0; c < C; c++) {
    let sum = 0;
    for (let i = 0; i < k; i++) {
      for (let j = 0; j < k; j++) {
        const yy = y0 + i, xx = x0 + j;
        if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
        sum += s.input.data[(c * H + yy) * W + xx] * s.weight.data[(c * k + i) * k + j];
      }
    }
    parts.push({ c, sum });
  }
  parts.sort((a, b) => b.sum - a.sum);
  const total = parts.reduce((t, p) => t + p.sum, 0);

  const map = $("stencil2-map");
  const mc = sizeCanvas(map, s.outW, s.outH, 220);
  for (let q = 0; q < s.values.length; q++) {
    mc.ctx.fillStyle = diverge(s.values[q] / s.peak);
    mc.ctx.fillRect((q % s.outW) * mc.scale, Math.floor(q / s.outW) * mc.scale, mc.scale, mc.scale);
  }
  mc.ctx.lineWidth = 2;
  mc.ctx.strokeStyle = "#17161c";
  mc.ctx.strokeRect(x * mc.scale, y * mc.scale, mc.scale, mc.scale);
  map.dataset.kernel = String(s.kernel);
  $("stencil2-label").textContent = `conv2 kernel ${s.kernel} of ${s.kernels}`;
  $("stencil2-cap").textContent = `its ${s.outH}×${s.outW} map; outlined: its strongest unit (${y}, ${x})`;

  const items = parts.slice(0, 6).map(({ c, sum }) => {
    const inMap = el("canvas", { "aria-hidden": "true" });
    const ic = sizeCanvas(inMap, W, H, 72);
    let top = 0;
    for (let q = 0; q < H * W; q++) top = Math.max(top, s.input.data[c * H * W + q]);
    for (let yy = 0; yy < H; yy++) {
      for (let xx = 0; xx < W; xx++) {
        ic.ctx.fillStyle = heat(s.input.data[(c * H + yy) * W + xx] / (top || 1));
        ic.ctx.fillRect(xx * ic.scale, yy * ic.scale, ic.scale, ic.scale);
      }
    }
    ic.ctx.strokeStyle = "#3ddc97";
    ic.ctx.lineWidth = 2;
    ic.ctx.strokeRect(x0 * ic.scale, y0 * ic.scale, k * ic.scale, k * ic.scale);
    const ker = el("canvas", { "aria-hidden": "true" });
    const kc = sizeCanvas(ker, k, k, 40);
    let most = 1e-12;
    for (let q = 0; q < k * k; q++) most = Math.max(most, Math.abs(s.weight.data[c * k * k + q]));
    for (let q = 0; q < k * k; q++) {
      kc.ctx.fillStyle = diverge(s.weight.data[c * k * k + q] / most);
      kc.ctx.fillRect((q % k) * kc.scale, Math.floor(q / k) * kc.scale, kc.scale, kc.scale);
    }
    return el("li", {}, inMap, ker, el("span", { text: `pooled conv1 map ${s.input_channels[0] + c}: ${sum >= 0 ? "+" : ""}${sum.toFixed(3)}` }));
  });
  $("stencil2-parts").replaceChildren(...items);
  const value = total + s.bias;
  $("stencil2-sum").textContent = `Unit (${y}, ${x}) = Σ over ${C} conv1 maps${s.groups > 1 ? ` (its tower's ${s.input_channels[0]}–${s.input_channels[1] - 1})` : ""} of a ${k}×${k} stencil each = ${total.toFixed(3)}, + bias ${s.bias.toFixed(3)} = ${value.toFixed(3)}. Shown: the ${items.length} maps that add the most.`;
}

function pickKernel2(step) {
  const count = st.k2count || 1;
  st.k2 = (((st.k2 + step) % count) + count) % count;
  loadStencil2();
}

function initStencil() {
  $("stencil-prev").addEventListener("click", () => { stopPlay(); setPos(st.pos - 1); });
  $("stencil-next").addEventListener("click", () => { stopPlay(); setPos(st.pos + 1); });
  $("stencil-play").addEventListener("click", togglePlay);
  $("stencil-pos").addEventListener("input", (e) => { stopPlay(); setPos(Number(e.target.value)); });
  $("stencil-kernel-prev").addEventListener("click", () => pickKernel(st.kernel - 1));
  $("stencil-kernel-next").addEventListener("click", () => pickKernel(st.kernel + 1));
  $("stencil2-prev").addEventListener("click", () => pickKernel2(-1));
  $("stencil2-next").addEventListener("click", () => pickKernel2(1));
}

// ------------------------------------------------------------------ evidence: atlas, probes, units, attribution

// The image-specific endpoints, for a dataset image or an upload the server has forgotten.
async function fetchFor(path, query = "") {
  const cur = state.current;
  const q = query ? `&${query}` : "";
  try {
    return await api(`${path}?image=${encodeURIComponent(cur.id)}${q}`);
  } catch (err) {
    if (err.status === 404 && cur.file && /no longer cached/.test(err.message)) {
      const form = new FormData();
      form.append("file", cur.file, cur.file.name);
      return api(`${path}?${query}`, { method: "POST", body: form });
    }
    throw err;
  }
}

function renderAtlasStatus() {
  const s = state.atlasStatus;
  let text = "";
  if (!s) text = "";
  else if (s.ready) {
    text = `Unit atlas: each conv channel's top ${s.top_k} patches over ${fmt(s.sample)} training images${s.built ? `, built in ${s.seconds} s` : ", read from the cache"}; `
      + (s.probes ? "a linear probe per layer" : "no probes") + (s.calibrated ? "; out-of-class check calibrated on validation images." : ".");
  } else if (!s.available) text = `No unit atlas: ${s.reason}. The captions say so; live activations still work.`;
  else if (s.error) text = `The unit atlas could not be built (${s.error}); live activations still work.`;
  else text = `Building the unit atlas from the training images (${s.seconds ?? 0} s so far): captions, probes and top patches appear when it is ready.`;
  $("atlas-status").textContent = text;
}

function applyAtlas() {
  renderAtlasStatus();
  for (const span of document.querySelectorAll("#pipeline .measured")) {
    const la = state.atlas?.layers?.[span.dataset.layer];
    if (la) {
      const s = la.summary;
      span.textContent = `${Math.round(100 * (s.oriented_edge + s.colour_edge))}% oriented · ${Math.round(100 * s.colour_blob)}% colour blobs`;
      span.title = la.caption;
    } else {
      span.textContent = state.atlasStatus?.available === false ? "not measured" : "measuring…";
    }
  }
  for (const p of document.querySelectorAll("#layers .layer-caption")) {
    p.textContent = layerCaption(p.closest(".layer").dataset.layer);
  }
  if (state.unit) openUnit(state.unit.layer, state.unit.channel, state.unit.trigger, false);
  if (state.analysis) {
    loadKnowledge(state.token);
    refreshScope(state.token);
  }
}

async function loadAtlas() {
  for (;;) {
    let info;
    try {
      info = await api("/api/info");
    } catch {
      await sleep(3000);
      continue;
    }
    state.atlasStatus = info.atlas;
    if (info.atlas.ready) {
      try {
        state.atlas = await api("/api/atlas");
      } catch (err) {
        state.atlasStatus = { ...info.atlas, ready: false, error: err.message };
      }
      applyAtlas();
      return;
    }
    if (!info.atlas.building) {
      applyAtlas();
      return;
    }
    renderAtlasStatus();
    await sleep(1500);
  }
}

async function refreshScope(token) {  // the out-of-class verdict, once the calibration exists
  if (!state.current || !state.analysis) return;
  try {
    const p = await fetchFor("/api/predict");
    if (token !== state.token || !state.analysis) return;
    state.analysis.predictions.scope = p.scope;
    if (!$("result").hidden) renderScope();
  } catch { /* the answer's note keeps its earlier wording */ }
}

async function loadKnowledge(token) {
  if (!state.current || !state.atlas || !state.atlasStatus?.probes) return;
  try {
    const k = await fetchFor("/api/knowledge");
    if (token !== state.token) return;
    state.knowledge = k;
  } catch (err) {
    if (token === state.token) $("depth-cap").textContent = `What each layer knows is unavailable: ${err.message}`;
    return;
  }
  renderKnowledge();
}

// Beat 3 builds toward the label: each revealed layer adds its probe's probability of the
// label to the curve, so the reader watches it rise (or not) with depth.
function renderKnowledge() {
  const k = state.knowledge;
  const host = $("depth-chart");
  for (const p of document.querySelectorAll("#layers .knows")) p.textContent = "";
  if (!k || !state.analysis) {
    host.replaceChildren();
    $("depth-cap").textContent = state.atlasStatus?.available === false
      ? "No probes (no training data was given), so how much each layer knows cannot be measured."
      : "How much each layer already knows about the label appears here as you reveal layers.";
    return;
  }
  const full = state.revealed >= LAYERS.length;
  const shown = k.layers.filter((row) => (LAYERS.includes(row.layer) ? LAYERS.indexOf(row.layer) < state.revealed : full));
  for (const row of shown) {
    const p = document.querySelector(`#layers .knows[data-layer="${row.layer}"]`);
    if (!p) continue;
    const bar = el("span", { class: "knows-bar" });
    bar.style.width = `${Math.max(1, row.prob * 100).toFixed(1)}%`;
    p.replaceChildren(el("span", { class: "knows-track", "aria-hidden": "true" }, bar),
      el("span", { text: `A linear probe on ${row.layer} gives “${k.target.name}” ${pct(row.prob)} (chance ${pct(k.chance)}); its best guess: “${row.top.name}”${row.val_accuracy !== null ? ` · right on ${pct(row.val_accuracy)} of validation images` : ""}` }));
  }
  const W = Math.max(300, Math.round(host.clientWidth || 560)), H = 176, m = { l: 40, r: 14, t: 22, b: 30 };
  const narrow = W < 460;
  const n = k.layers.length;
  const pad = 22;  // the first and last points clear of the axis labels
  const x = (i) => m.l + pad + (i * (W - m.l - m.r - 2 * pad)) / Math.max(1, n - 1);
  const y = (v) => m.t + (1 - v) * (H - m.t - m.b);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": `Probability of “${k.target.name}” by layer: ${shown.map((r) => `${r.layer} ${pct(r.prob)}`).join(", ") || "no layer revealed yet"}` });
  for (const v of [0, 0.5, 1]) {
    root.append(svg("line", { class: "grid", x1: m.l, x2: W - m.r, y1: y(v), y2: y(v) }));
    root.append(svg("text", { class: "axis", x: m.l - 6, y: y(v) + 4, "text-anchor": "end" }, `${v * 100}%`));
  }
  root.append(svg("line", { class: "chance", x1: m.l, x2: W - m.r, y1: y(k.chance), y2: y(k.chance) }));
  // A legend in the strip above the plot: values sit next to their points, never up there.
  root.append(svg("text", { class: "chance-label", x: W - m.r, y: 11, "text-anchor": "end" }, `dashed line: chance (${pct(k.chance)})`));
  k.layers.forEach((row, i) => root.append(svg("text", { class: row.kind === "model" ? "axis model" : "axis", x: x(i), y: H - 10, "text-anchor": "middle" }, narrow ? row.layer.replace("conv", "c") : row.layer)));
  if (shown.length) {
    const path = shown.map((row, i) => `${i ? "L" : "M"}${x(k.layers.indexOf(row)).toFixed(1)},${y(row.prob).toFixed(1)}`).join("");
    root.append(svg("path", { class: "depth-line", d: path }));
    for (const row of shown) {
      const i = k.layers.indexOf(row);
      root.append(svg("circle", { class: row.kind === "model" ? "depth-pt model" : "depth-pt", cx: x(i), cy: y(row.prob), r: 4.5 }));
      root.append(svg("text", { class: "depth-val", x: x(i), y: y(row.prob) + (row.prob > 0.85 ? 17 : -9), "text-anchor": "middle" }, pct(row.prob)));
    }
  }
  host.replaceChildren(root);
  $("depth-cap").textContent = `How much each layer already knows about “${k.target.name}” (${k.target.source}): a linear probe on the layer's pooled activations, fitted on training images, gives this probability; fc8 is the model's own softmax over the ${k.classes} classes. `
    + (full ? "All layers revealed." : `${state.revealed} of ${LAYERS.length} conv layers revealed; fc6, fc7 and fc8 follow after conv5.`);
}

// ---- one channel

async function openUnit(layer, channel, trigger, focus = true) {
  state.unit = { layer, channel, trigger };
  const panel = $("unit");
  panel.hidden = false;
  panel.dataset.layer = layer;
  panel.dataset.channel = String(channel);
  panel.setAttribute("aria-busy", "true");
  $("unit-title").textContent = `${layer} · channel ${channel}`;
  $("unit-fv-img").hidden = true;
  $("unit-featvis").hidden = false;
  $("unit-featvis").disabled = false;
  $("unit-fv-cap").textContent = "Feature visualisation: gradient ascent on the input, on demand";
  if (focus) {
    $("unit-title").focus({ preventScroll: true });
    panel.scrollIntoView({ block: "nearest", behavior: reducedMotion() ? "auto" : "smooth" });
  }
  const token = state.token;
  let u;
  try {
    u = await fetchFor("/api/unit", `layer=${layer}&channel=${channel}`);
  } catch (err) {
    $("unit-stats").textContent = `This channel is unavailable: ${err.message}`;
    panel.removeAttribute("aria-busy");
    return;
  }
  if (token !== state.token || state.unit?.layer !== layer || state.unit?.channel !== channel) return;
  $("unit-map").src = u.map;
  $("unit-map").alt = `${layer} channel ${channel}: its ${u.shape[0]}×${u.shape[1]} activation map on “${u.image.name}”, enlarged`;
  $("unit-map-cap").textContent = `Its ${u.shape[0]}×${u.shape[1]} map on this image (max ${u.max}, mean ${u.mean}; ${ordinal(u.rank)} most active of ${u.channels})`.replace("; 1st most active", "; the most active");
  $("unit-overlay").src = u.overlay;
  $("unit-overlay").alt = `Where ${layer} channel ${channel} fires on “${u.image.name}”`;
  const at = u.atlas;
  if (!at.ready) {
    $("unit-patches").replaceChildren();
    $("unit-stats").textContent = at.message;
  } else {
    $("unit-patches").replaceChildren(...at.hits.map((h, r) => el("li", {},
      el("img", { src: h.patch, alt: `Top patch ${r + 1}: a ${at.receptive_field}-pixel field of a training image of “${h.name}”, activation ${h.value.toFixed(2)}` }),
      el("span", { text: h.name }))));
    const st = at.stats;
    const kind = st.coherence >= at.thresholds.oriented ? (st.colour > st.luminance && st.colour > at.thresholds.coloured ? "a colour edge" : "an oriented edge")
      : st.colour > st.luminance && st.colour > at.thresholds.coloured ? "a colour blob" : "neither an oriented edge nor a colour blob";
    $("unit-stats").textContent = `What its top ${at.hits.length} patches (${at.receptive_field}×${at.receptive_field} px receptive fields, from ${fmt(at.sample)} training images) have in common, measured on their mean: orientation coherence ${st.coherence.toFixed(2)} (oriented from ${at.thresholds.oriented}), colour ${st.colour.toFixed(3)} vs luminance ${st.luminance.toFixed(3)}, so ${kind}; ${pct(st.purity)} of them from one class.`;
  }
  panel.removeAttribute("aria-busy");
}

function ordinal(n) {
  const s = ["th", "st", "nd", "rd"], v = n % 100;
  return `${n}${s[(v - 20) % 10] || s[v] || s[0]}`;
}

function closeUnit(restore = true) {
  const u = state.unit;
  state.unit = null;
  $("unit").hidden = true;
  if (restore && u?.trigger && document.contains(u.trigger)) u.trigger.focus();
}

async function unitFeatvis() {
  const u = state.unit;
  if (!u) return;
  const btn = $("unit-featvis");
  btn.disabled = true;
  $("unit-fv-cap").textContent = "Optimising an input for this channel…";
  try {
    const f = await api(`/api/featvis?layer=${u.layer}&unit=${u.channel}`);
    if (state.unit !== u) return;
    const img = $("unit-fv-img");
    img.src = f.png;
    img.alt = `An input optimised to excite ${u.layer} channel ${u.channel}`;
    img.hidden = false;
    btn.hidden = true;
    $("unit-fv-cap").textContent = `The input that excites this channel most: ${f.steps} steps of gradient ascent (decorrelated colour, jitter), ${f.computed ? `computed in ${f.seconds} s` : "from the cache"}.`;
    $("unit-title").focus({ preventScroll: true });  // the button is gone: keep the keyboard in the panel
  } catch (err) {
    $("unit-fv-cap").textContent = `Feature visualisation unavailable: ${err.message}`;
  } finally {
    btn.disabled = false;
  }
}

// ---- why this answer

function setupExplain() {
  const a = state.analysis;
  const sel = $("explain-class");
  const top = a.predictions.top.map((t) => t.index);
  const names = state.info.classes;
  const options = [...top, ...names.map((_, i) => i).filter((i) => !top.includes(i))];
  sel.replaceChildren(...options.map((i) => el("option", { value: String(i), text: `${names[i]}${i === top[0] ? " (its answer)" : ""}${a.predictions.true_label?.index === i ? " (true label)" : ""}` })));
  sel.value = String(top[0]);
  runExplain();
}

async function runExplain() {
  const target = Number($("explain-class").value);
  $("explain-fv").hidden = true;  // the optimised input belongs to the previous class: offer it anew
  $("explain-featvis").hidden = false;
  $("explain-fv-cap").textContent = "What fc8's unit for the class responds to most (gradient ascent, on demand)";
  const token = state.token;
  const meta = $("explain-meta");
  meta.textContent = `Explaining “${state.info.classes[target]}”…`;
  $("explain").setAttribute("aria-busy", "true");
  try {
    const r = await fetchFor("/api/attribution", `target=${target}`);
    if (token !== state.token || Number($("explain-class").value) !== target) return;
    const t = r.targets[0];
    $("explain-occ").src = t.occlusion.overlay;
    $("explain-occ").alt = `Occlusion map for “${t.name}”`;
    $("explain-occ-cap").textContent = `Occlusion (${r.occlusion_window.window}px square, stride ${r.occlusion_window.stride}): probability drops up to ${pct(Math.max(0, t.occlusion.max))}`;
    $("explain-cam").src = t.gradcam.overlay;
    $("explain-cam").alt = `Grad-CAM map for “${t.name}”`;
    $("explain-cam-cap").textContent = `Grad-CAM at ${t.gradcam.params.layer}`;
    meta.textContent = `“${t.name}”: the model gives it ${pct(t.prob)}. Computing the maps took ${t.occlusion.compute_seconds.toFixed(2)} s (occlusion) and ${t.gradcam.compute_seconds.toFixed(2)} s (Grad-CAM) on the server; this answer took ${(r.seconds.occlusion + r.seconds.gradcam).toFixed(2)} s (maps are cached).`;
  } catch (err) {
    if (token === state.token) meta.textContent = `Attribution unavailable: ${err.message}`;
  } finally {
    $("explain").removeAttribute("aria-busy");
  }
}

async function explainFeatvis() {
  const target = Number($("explain-class").value);
  const btn = $("explain-featvis");
  btn.disabled = true;
  try {
    const f = await api(`/api/featvis?layer=fc8&unit=${target}`);
    $("explain-fv").src = f.png;
    $("explain-fv").alt = `An input optimised for the class “${f.class}”`;
    $("explain-fv").hidden = false;
    btn.hidden = true;
    $("explain-fv-cap").textContent = `The input that excites fc8's “${f.class}” unit most: ${f.steps} steps of gradient ascent${f.computed ? `, ${f.seconds} s` : ", from the cache"}.`;
  } catch (err) {
    $("explain-fv-cap").textContent = `Feature visualisation unavailable: ${err.message}`;
  } finally {
    btn.disabled = false;
  }
}

function initEvidence() {
  $("unit-close").addEventListener("click", () => closeUnit());
  $("unit").addEventListener("keydown", (e) => { if (e.key === "Escape") closeUnit(); });
  $("unit-featvis").addEventListener("click", unitFeatvis);
  $("explain-class").addEventListener("change", runExplain);
  $("explain-featvis").addEventListener("click", explainFeatvis);
}

// ------------------------------------------------------------------ start

async function init() {
  $("reveal").addEventListener("click", reveal);
  initStencil();
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
  $("model-text").textContent = `Live: ${info.describe}${data}`;
  $("footer-model").textContent = `${info.describe}${info.checkpoint ? `; file ${info.checkpoint}` : ""}`;
  $("upload-hint").textContent = `JPEG, PNG, GIF, WebP or BMP up to ${(info.limits.max_upload_bytes / 1048576).toFixed(0)} MB · or drop it here`;
  $("pipe-input-size").textContent = `${info.input_size}×${info.input_size} pixels`;
  drawChart();
  let resizeTimer = 0;
  window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(() => { drawChart(); renderKnowledge(); }, 120); });
  renderLayerSlots();
  renderStatus();
  loadKernels();
  loadAnatomy();
  initEvidence();
  loadAtlas();

  const { images } = await api("/api/gallery");
  state.gallery = images;
  $("gallery-empty").hidden = images.length > 0 && info.gallery_source === "dataset";
  if (info.gallery_note) $("gallery-empty").textContent = `${info.gallery_note[0].toUpperCase()}${info.gallery_note.slice(1)}.`;
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
