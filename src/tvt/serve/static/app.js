// Sketch search page: draw on the canvas (pointer events), search after each stroke.
"use strict";

const K = 24;
const DEBOUNCE_MS = 250;
const canvas = document.getElementById("canvas");
const ctx = canvas.getContext("2d");
const grid = document.getElementById("grid");
const statusLine = document.getElementById("status");
const widthInput = document.getElementById("width");

let strokes = [];        // [{mode: "pen" | "eraser", width, points: [[x, y], ...]}]
let current = null;      // the stroke being drawn
let mode = "pen";
let baseImage = null;    // an uploaded sketch, drawn under the strokes
let timer = null;
let requestSeq = 0;      // answers to older requests are dropped

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

function drawStroke(s) {
  ctx.strokeStyle = s.mode === "eraser" ? "#fff" : "#000";
  ctx.fillStyle = ctx.strokeStyle;
  ctx.lineWidth = s.width;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  if (s.points.length === 1) {  // a dot
    const [x, y] = s.points[0];
    ctx.beginPath();
    ctx.arc(x, y, s.width / 2, 0, 2 * Math.PI);
    ctx.fill();
    return;
  }
  ctx.beginPath();
  ctx.moveTo(s.points[0][0], s.points[0][1]);
  for (const [x, y] of s.points.slice(1)) ctx.lineTo(x, y);
  ctx.stroke();
}

function redraw() {
  // White background: the model expects dark strokes on white, and a transparent PNG would not be.
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (baseImage) {
    const s = Math.min(canvas.width / baseImage.width, canvas.height / baseImage.height);
    const w = baseImage.width * s, h = baseImage.height * s;
    ctx.drawImage(baseImage, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
  }
  for (const s of strokes) drawStroke(s);
  if (current) drawStroke(current);
}

function canvasPoint(ev) {
  const r = canvas.getBoundingClientRect();
  return [(ev.clientX - r.left) * canvas.width / r.width, (ev.clientY - r.top) * canvas.height / r.height];
}

canvas.addEventListener("pointerdown", (ev) => {
  ev.preventDefault();
  canvas.setPointerCapture(ev.pointerId);
  current = {mode, width: Number(widthInput.value), points: [canvasPoint(ev)]};
  redraw();
});
canvas.addEventListener("pointermove", (ev) => {
  if (!current) return;
  current.points.push(canvasPoint(ev));
  redraw();
});
function endStroke() {
  if (!current) return;
  strokes.push(current);
  current = null;
  redraw();
  scheduleSearch();
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

function isBlank() {
  return strokes.every((s) => s.mode === "eraser") && !baseImage;
}

function scheduleSearch() {
  clearTimeout(timer);
  timer = setTimeout(() => {
    if (isBlank()) { requestSeq++; grid.replaceChildren(); setStatus("Draw something."); return; }
    canvas.toBlob((blob) => search(blob, "image/png"), "image/png");
  }, DEBOUNCE_MS);
}

async function search(body, contentType) {
  const seq = ++requestSeq;
  setStatus("Searching…");
  let answer;
  try {
    const resp = await fetch(`/api/search?k=${K}`, {
      method: "POST", headers: {"Content-Type": contentType}, body,
    });
    answer = await resp.json();
    if (!resp.ok) throw new Error(answer.detail || `HTTP ${resp.status}`);
  } catch (err) {
    if (seq === requestSeq) setStatus(`Search failed: ${err.message}`, true);
    return;
  }
  if (seq !== requestSeq) return;
  showResults(answer.results);
  setStatus(`${answer.results.length} results in ${answer.took_ms} ms`);
}

function showResults(results) {
  const figures = results.map((r) => {
    const fig = document.createElement("figure");
    fig.className = "result";
    const img = document.createElement("img");
    img.src = r.thumb;
    img.alt = r.relpath;
    img.title = r.relpath;
    img.loading = "lazy";
    const cap = document.createElement("figcaption");
    const score = document.createElement("b");
    score.textContent = `#${r.rank} · ${r.score.toFixed(3)}`;
    cap.append(score, " ", r.relpath);
    fig.append(img, cap);
    return fig;
  });
  grid.replaceChildren(...figures);
}

function setMode(m) {
  mode = m;
  for (const id of ["pen", "eraser"]) {
    const b = document.getElementById(id);
    b.classList.toggle("active", id === m);
    b.setAttribute("aria-pressed", String(id === m));
  }
}
function undo() {
  if (strokes.length) strokes.pop();
  else baseImage = null;
  redraw();
  scheduleSearch();
}

document.getElementById("pen").addEventListener("click", () => setMode("pen"));
document.getElementById("eraser").addEventListener("click", () => setMode("eraser"));
document.getElementById("undo").addEventListener("click", undo);
document.getElementById("clear").addEventListener("click", () => {
  strokes = []; baseImage = null; requestSeq++;  // answers still on their way are dropped
  redraw(); grid.replaceChildren(); setStatus("Cleared.");
});
document.addEventListener("keydown", (ev) => {
  if ((ev.ctrlKey || ev.metaKey) && ev.key === "z") { ev.preventDefault(); undo(); }
  else if (ev.key === "p") setMode("pen");
  else if (ev.key === "e") setMode("eraser");
});

document.getElementById("upload").addEventListener("change", async (ev) => {
  const file = ev.target.files[0];
  ev.target.value = "";
  if (!file) return;
  if (!["image/png", "image/jpeg"].includes(file.type)) {
    setStatus("Upload a PNG or JPEG sketch.", true);
    return;
  }
  try {
    baseImage = await createImageBitmap(file);
  } catch (err) {
    setStatus("That file could not be read as an image.", true);
    return;
  }
  strokes = [];
  redraw();
  search(file, file.type);  // the file itself, at full resolution; later strokes send the canvas
});

async function loadInfo() {
  try {
    const h = await (await fetch("/api/health")).json();
    document.getElementById("info").textContent =
      `${h.photos} photos · ${h.model.kind} model, ${h.model.dim}-d · ${h.backend.name} search`;
  } catch (err) {
    document.getElementById("info").textContent = "server unreachable";
  }
}

redraw();
loadInfo();
