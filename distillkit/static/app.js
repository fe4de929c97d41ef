// The page: one text or a batch, classified by every served model. Plain DOM, no build step, no network but our API.
"use strict";

const MAX_BATCH_ROWS = 5000; // a page-side bound: batches go to the server in chunks of its own max_texts
const MAX_CSV_BYTES = 10 * 1024 * 1024;
const PALETTE = ["#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5", "#9c6b4e", "#9498a0"];

const state = { models: [], limits: { max_texts: 256, max_text_chars: 5000 }, batch: null };

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value);
  }
  for (const child of [].concat(children)) if (child != null) node.append(child);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  let data = null;
  try { data = await response.json(); } catch (err) { /* not JSON: reported below */ }
  if (!response.ok) throw new Error((data && data.error) || `${path}: HTTP ${response.status}`);
  return data;
}

function modelInfo(name) { return state.models.find((m) => m.name === name); }

// Binary models: class 1 is the positive (toxic, hate) one, red; class 0 green. Other models: one colour a class.
function labelKind(model, labelId) {
  if (model && model.labels.length === 2) return labelId === 1 ? "positive" : "negative";
  return "multi";
}

function labelColour(model, labelId) {
  const kind = labelKind(model, labelId);
  if (kind === "positive") return "#c62828";
  if (kind === "negative") return "#2e7d32";
  return PALETTE[labelId % PALETTE.length];
}

function formatParams(n) {
  if (n == null) return "";
  return n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : String(n);
}

function renderModels() {
  const body = document.querySelector("#models-table tbody");
  body.replaceChildren(...state.models.map((m) => el("tr", { "data-model": m.name }, [
    el("td", { text: m.name }),
    el("td", { text: m.method }),
    el("td", { text: `${m.layers}${m.num_layers != null ? ` (${m.num_layers})` : ""}` }),
    el("td", { text: formatParams(m.params), title: String(m.params) }),
    el("td", { text: m.test_f1 == null ? "—" : m.test_f1.toFixed(3) }),
    el("td", { text: m.labels.length > 4 ? `${m.labels.length} classes` : m.labels.join(" / ") }),
  ])));
}

async function classifySingle() {
  const text = document.getElementById("text").value;
  const status = document.getElementById("single-status");
  const button = document.getElementById("classify");
  showError("");
  button.disabled = true;
  status.textContent = "classifying…";
  try {
    const data = await api("/api/predict", { texts: [text] });
    renderCards(data.results[0].predictions);
    status.textContent = "";
  } catch (err) {
    showError(err.message);
    status.textContent = "";
  } finally {
    button.disabled = false;
  }
}

function renderCards(predictions) {
  const cards = predictions.map((p) => {
    const model = modelInfo(p.model);
    const colour = labelColour(model, p.label_id);
    const pct = (100 * p.probability).toFixed(1);
    const probs = Object.entries(p.probabilities).map(([label, prob]) => `${label}: ${(100 * prob).toFixed(1)}%`);
    return el("div", { class: "card", "data-model": p.model }, [
      el("div", { class: "card-head" }, [
        el("span", { class: "model-name", text: p.model }),
        el("span", { class: "meta", text: model ? `${model.method} · ${formatParams(model.params)} params` : "" }),
      ]),
      el("span", { class: `label ${labelKind(model, p.label_id)}`, "data-label": p.label, style: `background:${colour}`, text: p.label }),
      el("div", { class: "bar", title: probs.join("\n") }, el("div", { class: "fill", style: `width:${pct}%;background:${colour}` })),
      el("div", { class: "numbers" }, [
        el("span", { class: "prob", text: `${pct}%` }),
        el("span", { class: "latency", text: `${p.latency_ms.toFixed(1)} ms` }),
      ]),
    ]);
  });
  document.getElementById("results").replaceChildren(...cards);
}

// RFC 4180 CSV: quoted fields, doubled quotes, commas and newlines inside quotes, CRLF.
function parseCSV(text) {
  const rows = [];
  let row = [], field = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"' && field === "") quoted = true;
    else if (c === ",") { row.push(field); field = ""; }
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(field); rows.push(row); row = []; field = "";
    } else field += c;
  }
  if (field !== "" || row.length) { row.push(field); rows.push(row); }
  return rows.filter((r) => r.length > 1 || r[0] !== "");
}

function rowsFromCSV(text) {
  const rows = parseCSV(text.replace(/^\uFEFF/, ""));
  if (!rows.length) throw new Error("the CSV file is empty");
  const header = rows[0].map((h) => h.trim().toLowerCase());
  const textCol = header.indexOf("text");
  if (textCol < 0) throw new Error(`the CSV has no "text" column (columns: ${rows[0].join(", ")})`);
  const labelCol = header.indexOf("label");
  return rows.slice(1).map((r) => ({ text: r[textCol] ?? "", label: labelCol >= 0 ? (r[labelCol] ?? "").trim() : null }));
}

async function readBatchInput() {
  const file = document.getElementById("csv-file").files[0];
  if (file) {
    if (file.size > MAX_CSV_BYTES) throw new Error(`${file.name}: ${file.size} bytes, at most ${MAX_CSV_BYTES}`);
    return rowsFromCSV(await file.text());
  }
  return document.getElementById("batch-text").value.split(/\r?\n/)
    .filter((line) => line.trim() !== "")
    .map((line) => ({ text: line, label: null }));
}

async function classifyBatch() {
  const status = document.getElementById("batch-status");
  const button = document.getElementById("classify-batch");
  showError("");
  button.disabled = true;
  try {
    const rows = await readBatchInput();
    if (!rows.length) throw new Error("nothing to classify: paste lines or choose a CSV file");
    if (rows.length > MAX_BATCH_ROWS) throw new Error(`${rows.length} rows: the page takes at most ${MAX_BATCH_ROWS}`);
    const chunk = state.limits.max_texts;
    const results = [];
    for (let start = 0; start < rows.length; start += chunk) {
      status.textContent = `classifying ${start + 1}–${Math.min(start + chunk, rows.length)} of ${rows.length}…`;
      const data = await api("/api/predict", { texts: rows.slice(start, start + chunk).map((r) => r.text) });
      results.push(...data.results);
    }
    state.batch = { rows, results, hasLabels: rows.some((r) => r.label !== null && r.label !== "") };
    renderBatch();
    status.textContent = `${rows.length} texts classified`;
  } catch (err) {
    showError(err.message);
    status.textContent = "";
  } finally {
    button.disabled = false;
  }
}

// A given label matches a prediction by class id ("1") or by name ("toxic"), case-insensitively.
function isCorrect(given, prediction) {
  if (/^\d+$/.test(given)) return Number(given) === prediction.label_id;
  return given.toLowerCase() === String(prediction.label).toLowerCase();
}

function renderBatch() {
  const { rows, results, hasLabels } = state.batch;
  const names = results.length ? results[0].predictions.map((p) => p.model) : [];
  // Results table
  const head = el("tr", {}, [el("th", { text: "#" }), el("th", { text: "text" }), hasLabels ? el("th", { text: "label" }) : null,
    ...names.map((n) => el("th", { text: n }))]);
  const body = results.map((r, i) => el("tr", {}, [
    el("td", { text: String(i + 1) }),
    el("td", { class: "text-cell", text: r.text }),
    hasLabels ? el("td", { text: rows[i].label ?? "" }) : null,
    ...r.predictions.map((p) => {
      const model = modelInfo(p.model);
      const wrong = hasLabels && rows[i].label && !isCorrect(rows[i].label, p);
      return el("td", { class: wrong ? "wrong" : "" }, [
        el("span", { class: `label small ${labelKind(model, p.label_id)}`, style: `background:${labelColour(model, p.label_id)}`, text: p.label }),
        el("span", { class: "prob", text: ` ${(100 * p.probability).toFixed(0)}%` }),
      ]);
    }),
  ]));
  document.getElementById("batch-table").replaceChildren(el("thead", {}, head), el("tbody", {}, body));
  renderDistribution(names);
  renderErrors(names);
}

function renderDistribution(names) {
  const { results } = state.batch;
  const charts = names.map((name, k) => {
    const model = modelInfo(name);
    const labels = model ? model.labels : [];
    const counts = labels.map(() => 0);
    for (const r of results) counts[r.predictions[k].label_id] += 1;
    const shown = labels.map((label, id) => ({ label, id, count: counts[id] })).filter((d) => d.count > 0 || labels.length <= 10);
    const rowH = 22, labelW = 120, barW = 320, height = shown.length * rowH + 8;
    const max = Math.max(1, ...shown.map((d) => d.count));
    const chart = svg("svg", { width: labelW + barW + 70, height, role: "img", "aria-label": `predicted labels of ${name}` });
    shown.forEach((d, j) => {
      const y = 4 + j * rowH;
      const w = Math.round((barW * d.count) / max);
      const label = svg("text", { x: labelW - 6, y: y + 14, "text-anchor": "end", class: "axis" });
      label.textContent = d.label;
      const bar = svg("rect", { x: labelW, y, width: w, height: rowH - 6, fill: labelColour(model, d.id), "data-label": d.label, "data-count": d.count });
      const value = svg("text", { x: labelW + w + 6, y: y + 14, class: "axis" });
      value.textContent = `${d.count} (${((100 * d.count) / results.length).toFixed(0)}%)`;
      chart.append(label, bar, value);
    });
    return el("div", { class: "chart", "data-model": name }, [el("h3", { text: name }), chart]);
  });
  document.getElementById("distribution").replaceChildren(...charts);
}

function renderErrors(names) {
  const { rows, results, hasLabels } = state.batch;
  const box = document.getElementById("errors");
  if (!hasLabels) {
    box.replaceChildren(el("p", { class: "hint", text: "Upload a CSV with a label column to see each model's misclassified rows." }));
    return;
  }
  const labelled = results.map((r, i) => i).filter((i) => rows[i].label);
  const summary = names.map((name, k) => {
    const correct = labelled.filter((i) => isCorrect(rows[i].label, results[i].predictions[k])).length;
    const wrong = labelled.length - correct;
    return el("li", { text: `${name}: ${wrong} error${wrong === 1 ? "" : "s"}, accuracy ${((100 * correct) / labelled.length).toFixed(1)}% on ${labelled.length} labelled rows` });
  });
  const errorRows = [];
  for (const i of labelled) {
    results[i].predictions.forEach((p) => {
      if (!isCorrect(rows[i].label, p)) {
        errorRows.push(el("tr", {}, [el("td", { text: String(i + 1) }), el("td", { text: p.model }), el("td", { class: "text-cell", text: results[i].text }),
          el("td", { text: rows[i].label }), el("td", { text: p.label }), el("td", { text: `${(100 * p.probability).toFixed(0)}%` })]));
      }
    });
  }
  const table = el("table", { class: "grid", id: "errors-table" }, [
    el("thead", {}, el("tr", {}, ["#", "model", "text", "label", "predicted", "probability"].map((h) => el("th", { text: h })))),
    el("tbody", {}, errorRows),
  ]);
  box.replaceChildren(el("ul", { class: "summary" }, summary), errorRows.length ? table : el("p", { text: "No misclassified rows." }));
}

function switchTab(buttonClass, panelPrefix, attr, target) {
  document.querySelectorAll(`.${buttonClass}`).forEach((b) => b.classList.toggle("active", b.dataset[attr] === target));
  document.querySelectorAll(`.${buttonClass}`).forEach((b) => {
    document.getElementById(`${panelPrefix}${b.dataset[attr]}`).hidden = b.dataset[attr] !== target;
  });
}

async function init() {
  document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => switchTab("tab", "tab-", "tab", b.dataset.tab)));
  document.querySelectorAll(".subtab").forEach((b) => b.addEventListener("click", () => switchTab("subtab", "sub-", "subtab", b.dataset.subtab)));
  document.getElementById("classify").addEventListener("click", classifySingle);
  document.getElementById("text").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) classifySingle(); });
  document.getElementById("classify-batch").addEventListener("click", classifyBatch);
  try {
    const data = await api("/api/models");
    state.models = data.models;
    state.limits = data.limits;
    renderModels();
    document.body.dataset.ready = "true";
  } catch (err) {
    showError(`could not list the models: ${err.message}`);
  }
}

init();
