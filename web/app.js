// "Pick a digit": the exported model (model/*.onnx, made by `python export.py ... page=true`) run with
// onnxruntime-web's WebAssembly build. Everything it loads is in this folder: any static host serves it.
"use strict";

const SIDE = 28; // MNIST's images
const SCALE = 3; // screen pixels per image pixel in the grids (nearest neighbour: the test reads them back)
const PAD = 2;
const GRID = { columns: 4, rows: 4 };

const state = { card: null, sampler: null, encoder: null, digit: 0, strokes: false };
const $ = (id) => document.getElementById(id);

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("app").hidden = true;
}

async function load() {
  if (typeof ort === "undefined") {
    throw new Error("onnxruntime-web (ort/ort.wasm.min.js) did not load: assemble the page with `python export.py ... page=true`.");
  }
  ort.env.wasm.wasmPaths = new URL("ort/", location.href).href; // a URL: a bare "ort/" is no module path
  ort.env.wasm.numThreads = 1; // no cross-origin isolation on a plain static host: one thread
  let response;
  try {
    response = await fetch("model/model.json");
  } catch (error) {
    response = { ok: false, status: error.message };
  }
  if (!response.ok) {
    throw new Error(
      `The model files are missing: model/model.json could not be loaded (${response.status}). ` +
        "Export a model into this folder: python export.py ckpt_path=<checkpoint> out=<this folder> page=true"
    );
  }
  const card = await response.json();
  const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
  try {
    state.sampler = await ort.InferenceSession.create(`model/${card.graphs.sampler.file}`, options);
    state.encoder = await ort.InferenceSession.create(`model/${card.graphs.encoder.file}`, options);
  } catch (error) {
    throw new Error(`The model files in model/ could not be loaded (${error.message || error}); export them again.`);
  }
  state.card = card;
}

// -- the model --------------------------------------------------------------------------------------
function gaussian() {
  let u = 0;
  while (u === 0) u = Math.random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * Math.random());
}

function digitTensor(digits) {
  return new ort.Tensor("int64", BigInt64Array.from(digits.map((d) => BigInt(d))), [digits.length]);
}

// images (n x 784 floats in [0, 1]) decoded from `noise` (n rows of latent_dim) for `digits`
async function sample(digits, noise, temperature) {
  const n = noise.length;
  const d = state.card.latent_dim;
  const feeds = {
    noise: new ort.Tensor("float32", Float32Array.from(noise.flat()), [n, d]),
    temperature: new ort.Tensor("float32", new Float32Array([temperature]), []),
  };
  if (state.card.conditional) feeds.digit = digitTensor(digits);
  const { images } = await state.sampler.run(feeds);
  return Array.from({ length: n }, (_, i) => images.data.subarray(i * SIDE * SIDE, (i + 1) * SIDE * SIDE));
}

// the style (latent_dim floats) of one 28x28 image read as `digit`
async function encode(pixels, digit) {
  const feeds = { image: new ort.Tensor("float32", pixels, [1, 1, SIDE, SIDE]) };
  if (state.card.conditional) feeds.digit = digitTensor([digit]);
  const { style } = await state.encoder.run(feeds);
  return Array.from(style.data);
}

// -- drawing images -----------------------------------------------------------------------------------
function drawGrid(canvas, images, columns, scale = SCALE) {
  const rows = Math.ceil(images.length / columns);
  const cell = SIDE * scale + PAD;
  canvas.width = columns * cell + PAD;
  canvas.height = rows * cell + PAD;
  canvas.dataset.columns = columns;
  canvas.dataset.scale = scale;
  canvas.dataset.pad = PAD;
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.fillStyle = "#444";
  context.fillRect(0, 0, canvas.width, canvas.height);
  const tile = document.createElement("canvas");
  tile.width = tile.height = SIDE;
  const tileContext = tile.getContext("2d");
  images.forEach((image, i) => {
    const data = tileContext.createImageData(SIDE, SIDE);
    for (let p = 0; p < SIDE * SIDE; p++) {
      const v = Math.round(255 * image[p]);
      data.data.set([v, v, v, 255], 4 * p);
    }
    tileContext.putImageData(data, 0, 0);
    const x = PAD + (i % columns) * cell;
    const y = PAD + Math.floor(i / columns) * cell;
    context.drawImage(tile, x, y, SIDE * scale, SIDE * scale);
  });
}

// -- samples of the chosen digit ----------------------------------------------------------------------
async function showSamples() {
  const n = GRID.columns * GRID.rows;
  const noise = Array.from({ length: n }, () => Array.from({ length: state.card.latent_dim }, gaussian));
  const temperature = Number($("temperature").value);
  const start = performance.now();
  const images = await sample(Array(n).fill(state.digit), noise, temperature);
  const milliseconds = performance.now() - start;
  drawGrid($("samples"), images, GRID.columns);
  const canvas = $("samples");
  canvas.dataset.digit = state.digit;
  canvas.dataset.temperature = temperature;
  canvas.dataset.ms = milliseconds.toFixed(2);
  canvas.dataset.draws = Number(canvas.dataset.draws || 0) + 1;
  const what = state.card.conditional ? `${n} samples of ${state.digit}` : `${n} samples`;
  $("timing").textContent = `${what} at temperature ${temperature.toFixed(2)}, decoded in ${milliseconds.toFixed(1)} ms`;
}

function chooseDigit(digit) {
  state.digit = digit;
  for (const button of $("digits").children) button.setAttribute("aria-pressed", String(Number(button.dataset.digit) === digit));
  showSamples();
  if (state.strokes) readDrawing();
  if (!$("plane").hidden) drawPlane();
}

// -- draw a digit ---------------------------------------------------------------------------------------
function setUpPad() {
  const pad = $("pad");
  const context = pad.getContext("2d");
  const clear = () => {
    context.fillStyle = "#000";
    context.fillRect(0, 0, pad.width, pad.height);
    state.strokes = false;
    $("read-as").textContent = "";
    drawGrid($("styles"), [], 10, 2);
  };
  clear();
  let last = null;
  const at = (event) => {
    const box = pad.getBoundingClientRect();
    return [((event.clientX - box.left) * pad.width) / box.width, ((event.clientY - box.top) * pad.height) / box.height];
  };
  pad.addEventListener("pointerdown", (event) => {
    pad.setPointerCapture(event.pointerId);
    last = at(event);
  });
  pad.addEventListener("pointermove", (event) => {
    if (!last) return;
    const point = at(event);
    context.strokeStyle = "#fff";
    context.lineWidth = 22;
    context.lineCap = context.lineJoin = "round";
    context.beginPath();
    context.moveTo(...last);
    context.lineTo(...point);
    context.stroke();
    last = point;
    state.strokes = true;
  });
  const end = () => {
    if (last && state.strokes) readDrawing();
    last = null;
  };
  pad.addEventListener("pointerup", end);
  pad.addEventListener("pointercancel", end);
  $("clear").addEventListener("click", clear);
  const drawn = $("drawn");
  for (const label of state.card.labels) drawn.add(new Option(String(label), String(label)));
  drawn.addEventListener("change", () => state.strokes && readDrawing());
  if (!state.card.conditional) drawn.parentElement.hidden = true;
}

// the drawing as MNIST sees a digit: its bounding box scaled into 20x20, centred in 28x28, values in [0, 1]
function drawingPixels() {
  const pad = $("pad");
  const source = pad.getContext("2d").getImageData(0, 0, pad.width, pad.height).data;
  let [left, top, right, bottom] = [pad.width, pad.height, -1, -1];
  for (let y = 0; y < pad.height; y++) {
    for (let x = 0; x < pad.width; x++) {
      if (source[4 * (y * pad.width + x)] > 0) {
        left = Math.min(left, x); right = Math.max(right, x);
        top = Math.min(top, y); bottom = Math.max(bottom, y);
      }
    }
  }
  const small = document.createElement("canvas");
  small.width = small.height = SIDE;
  const context = small.getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, SIDE, SIDE);
  if (right >= 0) {
    const size = Math.max(right - left, bottom - top) + 1;
    const scale = 20 / size;
    const [w, h] = [(right - left + 1) * scale, (bottom - top + 1) * scale];
    context.imageSmoothingQuality = "high";
    context.drawImage(pad, left, top, right - left + 1, bottom - top + 1, (SIDE - w) / 2, (SIDE - h) / 2, w, h);
  }
  const data = context.getImageData(0, 0, SIDE, SIDE).data;
  return Float32Array.from({ length: SIDE * SIDE }, (_, p) => data[4 * p] / 255);
}

// binary cross-entropy of the drawing under a decoded image: which label explains it best
function crossEntropy(pixels, image) {
  let total = 0;
  for (let p = 0; p < pixels.length; p++) {
    const q = Math.min(Math.max(image[p], 1e-6), 1 - 1e-6);
    total -= pixels[p] * Math.log(q) + (1 - pixels[p]) * Math.log(1 - q);
  }
  return total;
}

async function readDrawing() {
  const pixels = drawingPixels();
  const labels = state.card.conditional ? state.card.labels : [0];
  const choice = $("drawn").value;
  let digit = choice === "auto" ? null : Number(choice);
  let style;
  if (digit === null) {
    let best = Infinity;
    for (const label of labels) {
      const candidate = await encode(pixels, label);
      const [image] = await sample([label], [candidate], 1.0);
      const loss = crossEntropy(pixels, image);
      if (loss < best) [best, digit, style] = [loss, label, candidate];
    }
  } else {
    style = await encode(pixels, digit);
  }
  const targets = state.card.conditional ? state.card.labels : [0];
  const images = await sample(targets, targets.map(() => style), 1.0);
  drawGrid($("styles"), [pixels, ...images], targets.length + 1, 2);
  $("styles").dataset.digits = targets.length;
  $("read-as").textContent = state.card.conditional
    ? `read as ${digit}${choice === "auto" ? " (the label that reconstructs it best)" : ""}; below: your drawing, then 0–9 in its style`
    : "below: your drawing, then the VAE's reconstruction";
}

// -- the latent plane (latent_dim = 2) ----------------------------------------------------------------
const PLANE = 2.5; // the plane spans [-2.5, 2.5] standard deviations of the prior on each axis

async function drawPlane() {
  const n = 12;
  const points = [];
  for (let row = 0; row < n; row++) {
    for (let column = 0; column < n; column++) {
      points.push([-PLANE + (2 * PLANE * (column + 0.5)) / n, PLANE - (2 * PLANE * (row + 0.5)) / n]);
    }
  }
  const images = await sample(Array(points.length).fill(state.digit), points, 1.0);
  const canvas = $("plane-pad");
  const context = canvas.getContext("2d");
  const cell = canvas.width / n;
  const tile = document.createElement("canvas");
  tile.width = tile.height = SIDE;
  images.forEach((image, i) => {
    const data = tile.getContext("2d").createImageData(SIDE, SIDE);
    for (let p = 0; p < SIDE * SIDE; p++) {
      const v = Math.round(255 * image[p]);
      data.data.set([v, v, v, 255], 4 * p);
    }
    tile.getContext("2d").putImageData(data, 0, 0);
    context.drawImage(tile, (i % n) * cell, Math.floor(i / n) * cell, cell, cell);
  });
}

function setUpPlane() {
  if (state.card.latent_dim !== 2) return;
  $("plane").hidden = false;
  const pad = $("plane-pad");
  pad.addEventListener("pointermove", async (event) => {
    const box = pad.getBoundingClientRect();
    const u = -PLANE + (2 * PLANE * (event.clientX - box.left)) / box.width;
    const v = PLANE - (2 * PLANE * (event.clientY - box.top)) / box.height;
    const [image] = await sample([state.digit], [[u, v]], 1.0);
    const view = $("plane-view");
    view.getContext("2d").imageSmoothingEnabled = false;
    drawGrid(view, [image], 1, 6);
  });
  drawPlane();
}

// -- the page -------------------------------------------------------------------------------------------
function describe(card) {
  const { test_nelbo: nelbo, accuracy_t1: accuracy } = card.metrics;
  const parts = [`${card.model}, ${card.latent_dim}-D latent space`];
  if (nelbo != null) parts.push(`test −ELBO ${nelbo.toFixed(2)} nats`);
  if (accuracy && accuracy.value != null) {
    parts.push(`samples read as the requested digit ${(100 * accuracy.value).toFixed(1)}% of the time at T=1 (${accuracy.samples.toLocaleString("en")} samples, the project's classifier)`);
  }
  $("numbers").textContent = parts.join(" · ");
  $("source").textContent = `From ${card.checkpoint.file} (sha256 ${card.checkpoint.sha256.slice(0, 12)}). Exported graphs match PyTorch to ${Math.max(...Object.values(card.max_abs_difference_vs_pytorch)).toExponential(1)}.`;
  if (!card.conditional) $("about").textContent = "A VAE trained on MNIST, running in your browser: it draws digits, but you cannot choose which.";
}

async function main() {
  try {
    await load();
  } catch (error) {
    showError(error.message);
    return;
  }
  $("app").hidden = false;
  describe(state.card);
  const digits = $("digits");
  const labels = state.card.conditional ? state.card.labels : [];
  for (const label of labels) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.dataset.digit = label;
    button.addEventListener("click", () => chooseDigit(label));
    digits.append(button);
  }
  if (!state.card.conditional) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "↻";
    button.setAttribute("aria-label", "new samples");
    button.addEventListener("click", showSamples);
    digits.append(button);
  }
  const slider = $("temperature");
  slider.addEventListener("input", () => {
    $("temperature-value").textContent = Number(slider.value).toFixed(2);
  });
  slider.addEventListener("change", showSamples);
  setUpPad();
  setUpPlane();
  chooseDigit(state.card.conditional ? 2 : 0);
  document.body.dataset.ready = "true";
}

main();
