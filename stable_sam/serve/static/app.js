// The demo page: prompts drawn on either canvas are mirrored on both; every finished prompt
// asks the server for both models' masks. One request is in flight at a time; a prompt made
// meanwhile is sent when it returns (the latest one only), so dragging never floods the server.
"use strict";

const MODELS = ["sam", "stable_sam"];
const MASK_COLOUR = { sam: [30, 144, 255], stable_sam: [30, 144, 255] };
const POINT_COLOUR = { sam: "rgb(255,64,64)", stable_sam: "rgb(255,215,0)" };
const TITLES = { sam: "SAM <span class=\"muted\">(plugins off)</span>", stable_sam: "Stable-SAM" };
const WORST_BOX_COLOUR = "rgb(255,0,255)";

const state = {
  info: null,
  imageId: null,
  image: null,          // HTMLImageElement of the loaded image
  suggestedBox: null,   // the scene's casual box
  box: null,            // [x0, y0, x1, y1] in image pixels
  points: [],           // [[x, y, label], ...]
  drag: null,           // box being dragged: [x0, y0, x1, y1]
  result: null,         // last /api/predict answer
  overlays: {},         // model -> canvas with the tinted mask
  shake: null,          // last /api/shake answer, with .overlays
  worst: null,          // last /api/worst_box answer, with .overlays
  busy: false,
  pending: false,
  generation: 0,        // bumped on every prompt change; stale answers are dropped
};

const $ = (id) => document.getElementById(id);

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function setStatus(text) { $("status").textContent = text; }

async function api(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error("the server did not answer (is stable-sam serve still running?)");
  }
  let body = null;
  try { body = await response.json(); } catch (err) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error : `the server answered ${response.status}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

function postJson(path, payload) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" },
                     body: JSON.stringify(payload) });
}

function loadImageElement(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the image could not be shown"));
    img.src = src;
  });
}

// A grey PNG (0..255) as a canvas tinted with `colour`, alpha proportional to the grey value.
async function tinted(dataUrl, colour, opacity) {
  const img = await loadImageElement(dataUrl);
  const canvas = document.createElement("canvas");
  canvas.width = img.width;
  canvas.height = img.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const pixels = ctx.getImageData(0, 0, img.width, img.height);
  const d = pixels.data;
  for (let i = 0; i < d.length; i += 4) {
    const value = d[i];
    d[i] = colour[0]; d[i + 1] = colour[1]; d[i + 2] = colour[2];
    d[i + 3] = Math.round(value * opacity);
  }
  ctx.putImageData(pixels, 0, 0);
  return canvas;
}

// ---- drawing -------------------------------------------------------------------------------

function lineWidth() {
  return state.image ? Math.max(1, Math.max(state.image.width, state.image.height) / 300) : 1;
}

function strokeBox(ctx, box, colour, width) {
  ctx.strokeStyle = colour;
  ctx.lineWidth = width;
  ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
}

function drawSampling(ctx, model) {
  const sampling = state.result.models[model].sampling;
  const top = Math.max(...MODELS.map((m) => Math.max(...state.result.models[m].sampling.weights)));
  const unit = Math.max(state.image.width, state.image.height) / 100;
  ctx.fillStyle = POINT_COLOUR[model];
  sampling.points.forEach((tokenPoints, i) => {
    const radius = Math.max(1, unit * (0.4 + 2.0 * sampling.weights[i] / top));
    for (const [x, y] of tokenPoints) {
      ctx.beginPath();
      ctx.arc(x, y, radius, 0, 2 * Math.PI);
      ctx.fill();
    }
  });
}

function draw(model) {
  const canvas = $(`canvas-${model}`);
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.image) return;
  ctx.drawImage(state.image, 0, 0);
  const width = lineWidth();
  if (state.worst) {
    // Masks at mask_size, like the shake's: stretched over the image.
    ctx.drawImage(state.worst.overlays[model], 0, 0, canvas.width, canvas.height);
    strokeBox(ctx, state.worst.worst_box, WORST_BOX_COLOUR, width * 1.5);
    if (!state.box) strokeBox(ctx, state.worst.box, "rgb(0,220,0)", width);  // the target's box
  } else if (state.shake) {
    // The shake's masks may be smaller than the image (mask_size): stretched over it.
    ctx.drawImage(state.shake.overlays[model], 0, 0, canvas.width, canvas.height);
    for (const box of state.shake.boxes) strokeBox(ctx, box, "rgba(255,255,255,0.55)", width / 2);
  } else if (state.overlays[model]) {
    ctx.drawImage(state.overlays[model], 0, 0);
  }
  if (state.result && $("show-sampling").checked) drawSampling(ctx, model);
  const box = state.drag || state.box;
  if (box) strokeBox(ctx, box, "rgb(0,220,0)", width * 1.5);
  for (const [x, y, label] of state.points) {
    ctx.beginPath();
    ctx.arc(x, y, 3 * width + 2, 0, 2 * Math.PI);
    ctx.fillStyle = label === 1 ? "rgb(0,220,0)" : "rgb(230,0,0)";
    ctx.fill();
    ctx.strokeStyle = "white";
    ctx.lineWidth = width;
    ctx.stroke();
  }
}

function drawAll() { MODELS.forEach(draw); }

// ---- numbers and downloads -----------------------------------------------------------------

function setDownload(id, href) {
  const link = $(id);
  if (link.dataset.blob) URL.revokeObjectURL(link.dataset.blob);
  delete link.dataset.blob;
  if (href) {
    link.href = href;
    link.classList.remove("disabled");
  } else {
    link.removeAttribute("href");
    link.classList.add("disabled");
  }
}

function showNumbers() {
  for (const model of MODELS) {
    const out = state.result ? state.result.models[model] : null;
    $(`score-${model}`).textContent = out
      ? `predicted IoU ${out.score.toFixed(3)} · ${out.area} px` : "";
    $(`stability-${model}`).textContent = state.shake
      ? `mSF ${(100 * state.shake.models[model].stability).toFixed(1)}` : "";
    $(`worst-${model}`).textContent = state.worst ? worstText(state.worst, model) : "";
    const routing = $(`routing-${model}`);
    routing.textContent = "";
    if (out && $("show-sampling").checked) {
      routing.textContent = out.alpha
        ? `routing α = (${out.alpha[0].toFixed(3)} deformed, ${out.alpha[1].toFixed(3)} regular)`
        : "regular sampling grid (no plugins)";
    }
    setDownload(`download-png-${model}`, out ? out.mask_png : null);
    let rleUrl = null;
    if (out) {
      const record = { image_id: state.imageId, model, predicted_iou: out.score,
                       prompt: { box: state.box, points: state.points }, segmentation: out.rle };
      rleUrl = URL.createObjectURL(new Blob([JSON.stringify(record)], { type: "application/json" }));
    }
    setDownload(`download-rle-${model}`, rleUrl);
    if (rleUrl) $(`download-rle-${model}`).dataset.blob = rleUrl;
  }
}

// "worst box: IoU 41.2 (84.6 on the target's box)": the mask's IoU with the reference.
function worstText(worst, model) {
  const out = worst.models[model];
  const base = worst.reference === "target" ? "on the target's box" : "on your box";
  const against = worst.reference === "target" ? "with the target" : "with its mask for your box";
  return `worst box: IoU ${(100 * out.iou).toFixed(1)} ${against} ` +
         `(${(100 * out.iou_base).toFixed(1)} ${base})`;
}

// ---- requests --------------------------------------------------------------------------------

function promptChanged() {
  state.generation += 1;
  state.shake = null;
  state.worst = null;
  if (!state.box && state.points.length === 0) {
    state.result = null;
    state.overlays = {};
    showNumbers();
    drawAll();
    return;
  }
  drawAll();
  requestMasks();
}

async function requestMasks() {
  if (state.busy) { state.pending = true; return; }
  state.busy = true;
  state.pending = false;
  const generation = state.generation;
  const started = performance.now();
  try {
    const result = await postJson("/api/predict",
      { image_id: state.imageId, box: state.box, points: state.points });
    const overlays = {};
    for (const model of MODELS) {
      overlays[model] = await tinted(result.models[model].mask_png, MASK_COLOUR[model], 0.5);
    }
    if (generation === state.generation) {
      state.result = result;
      state.overlays = overlays;
      showError("");
      setStatus(`Masks in ${Math.round(performance.now() - started)} ms ` +
                `(model ${Math.round(result.elapsed_ms)} ms on the server).`);
      showNumbers();
      drawAll();
      document.body.dataset.masks = String(generation);
    }
  } catch (err) {
    showError(err.message);
  } finally {
    state.busy = false;
    if (state.pending) requestMasks();
  }
}

async function shake() {
  if (!state.box) { showError("Shake needs a box: drag one on the image first."); return; }
  const generation = state.generation;
  setStatus("Shaking: 20 noisy boxes x 2 models ...");
  const started = performance.now();
  try {
    // A new draw of boxes on every click, unless the page's URL fixes it (?seed=N): the same
    // URL then shows the same shake (the README's screenshot is made that way).
    const fixed = new URLSearchParams(window.location.search).get("seed");
    const seed = fixed !== null && /^\d{1,9}$/.test(fixed) ? Number(fixed)
      : Math.floor(Math.random() * 2 ** 31);
    const result = await postJson("/api/shake", { image_id: state.imageId, box: state.box, seed });
    result.overlays = {};
    for (const model of MODELS) {
      result.overlays[model] = await tinted(result.models[model].frequency_png,
                                            MASK_COLOUR[model], 0.9);
    }
    if (generation !== state.generation) return;
    state.worst = null;
    state.shake = result;
    showError("");
    setStatus(`Shake: 20 boxes per model in ${Math.round(performance.now() - started)} ms. ` +
              "Shading = share of the 20 masks covering a pixel; mSF = mean IoU of each mask " +
              "with their union (100 = the mask never moved).");
    showNumbers();
    drawAll();
    document.body.dataset.shaken = String(generation);
  } catch (err) {
    showError(err.message);
  }
}

async function worstBox() {
  if (!state.image) { showError("Load a scene or upload an image first."); return; }
  const generation = state.generation;
  setStatus("Searching SAM's worst box (gradient steps on the box) ...");
  const started = performance.now();
  try {
    const result = await postJson("/api/worst_box", { image_id: state.imageId, box: state.box });
    result.overlays = {};
    for (const model of MODELS) {
      result.overlays[model] = await tinted(result.models[model].mask_png, MASK_COLOUR[model], 0.5);
    }
    if (generation !== state.generation) return;
    state.shake = null;
    state.worst = result;
    showError("");
    const around = result.reference === "target" ? "the scene target's box" : "your box";
    setStatus(`Worst box for SAM (magenta) among boxes with IoU ≥ ${result.tau} to ${around}: ` +
              `IoU ${result.box_iou.toFixed(2)} with it, found in ` +
              `${Math.round(performance.now() - started)} ms` +
              (result.truncated ? " (the search hit its time budget)." : "."));
    showNumbers();
    drawAll();
    document.body.dataset.worst = String(generation);
  } catch (err) {
    showError(err.message);
  }
}

async function useImage(loaded) {
  const img = await loadImageElement(`/api/images/${loaded.image_id}.png`);
  state.imageId = loaded.image_id;
  state.image = img;
  state.suggestedBox = loaded.box || null;
  state.box = null;
  state.points = [];
  for (const model of MODELS) {
    $(`canvas-${model}`).width = img.width;
    $(`canvas-${model}`).height = img.height;
  }
  $("casual").disabled = !state.suggestedBox;
  showError("");
  promptChanged();
  document.body.dataset.image = loaded.image_id;
}

async function loadScene() {
  setStatus("Loading the scene ...");
  try {
    await useImage(await postJson(`/api/scenes/${$("scene").value}`, {}));
    setStatus("Drag a box on either image, or pick + / − click and click on it.");
  } catch (err) {
    showError(err.message);
  }
}

function sizeText(bytes) {
  return bytes < 2 ** 20 ? `${Math.round(bytes / 1024)} KiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

async function upload(file) {
  if (!file) return;
  const limit = state.info.max_upload_bytes;
  if (file.size > limit) {
    showError(`${file.name} is ${sizeText(file.size)}, over the server's limit of ` +
              `${sizeText(limit)}`);
    return;
  }
  setStatus(`Uploading ${file.name} and computing its embedding ...`);
  try {
    await useImage(await api("/api/images", {
      method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: file }));
    setStatus(`${file.name}: drag a box or click on it.`);
  } catch (err) {
    showError(`${file.name}: ${err.message}`);
  }
}

// ---- mouse -------------------------------------------------------------------------------------

function imagePoint(canvas, event) {
  const rect = canvas.getBoundingClientRect();
  const x = (event.clientX - rect.left) * canvas.width / rect.width;
  const y = (event.clientY - rect.top) * canvas.height / rect.height;
  return [Math.min(Math.max(x, 0), canvas.width), Math.min(Math.max(y, 0), canvas.height)];
}

function mode() { return document.querySelector('input[name="mode"]:checked').value; }

function attachPointer(canvas) {
  let start = null;
  canvas.addEventListener("pointerdown", (event) => {
    if (!state.image) return;
    canvas.setPointerCapture(event.pointerId);
    start = imagePoint(canvas, event);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!start || mode() !== "box") return;
    const [x, y] = imagePoint(canvas, event);
    state.drag = [Math.min(start[0], x), Math.min(start[1], y),
                  Math.max(start[0], x), Math.max(start[1], y)];
    drawAll();
  });
  canvas.addEventListener("pointerup", (event) => {
    if (!start) return;
    const [x, y] = imagePoint(canvas, event);
    const from = start;
    start = null;
    state.drag = null;
    if (mode() === "box") {
      if (Math.abs(x - from[0]) < 2 || Math.abs(y - from[1]) < 2) { drawAll(); return; }
      state.box = [Math.min(from[0], x), Math.min(from[1], y),
                   Math.max(from[0], x), Math.max(from[1], y)].map((v) => Math.round(v * 10) / 10);
    } else {
      state.points.push([Math.round(x * 10) / 10, Math.round(y * 10) / 10, Number(mode())]);
    }
    promptChanged();
  });
}

// ---- start -------------------------------------------------------------------------------------

// One panel per model from the page's template; elements get ids like "score-sam".
function buildPanels() {
  for (const model of MODELS) {
    const panel = $("panel").content.firstElementChild.cloneNode(true);
    panel.dataset.model = model;
    panel.querySelector("figcaption").innerHTML = TITLES[model];
    panel.querySelector("canvas").id = `canvas-${model}`;
    for (const part of ["score", "stability", "routing", "worst"]) {
      panel.querySelector(`.${part}`).id = `${part}-${model}`;
    }
    const png = panel.querySelector("a.png");
    png.id = `download-png-${model}`;
    png.download = `${model}_mask.png`;
    const rle = panel.querySelector("a.rle");
    rle.id = `download-rle-${model}`;
    rle.download = `${model}_mask_rle.json`;
    $("panels").appendChild(panel);
  }
}

async function start() {
  buildPanels();
  MODELS.forEach((model) => attachPointer($(`canvas-${model}`)));
  $("load-scene").addEventListener("click", loadScene);
  $("upload").addEventListener("change", (event) => upload(event.target.files[0]));
  $("clear").addEventListener("click", () => { state.box = null; state.points = []; promptChanged(); });
  $("casual").addEventListener("click", () => {
    if (state.suggestedBox) { state.box = state.suggestedBox.slice(); promptChanged(); }
  });
  $("shake").addEventListener("click", shake);
  $("worst-box").addEventListener("click", worstBox);
  $("show-sampling").addEventListener("change", () => { showNumbers(); drawAll(); });
  try {
    state.info = await api("/api/info");
  } catch (err) {
    showError(err.message);
    return;
  }
  $("model-line").textContent = `Model: ${state.info.model}. Scenes are held-out generated ` +
    "scenes the demo model never saw in training.";
  for (let i = 0; i < state.info.scenes; i++) {
    const option = document.createElement("option");
    option.value = String(i);
    option.textContent = `held-out scene ${i}`;
    $("scene").appendChild(option);
  }
  document.body.dataset.ready = "1";
}

start();
