// The page: one text or a batch, classified by every served model. Plain DOM, no build step, no network but our API.
"use strict";

const MAX_BATCH_ROWS = 5000; // a page-side bound: batches go to the server in chunks of its own max_texts
const MAX_CSV_BYTES = 10 * 1024 * 1024;
const PALETTE = ["#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5", "#9c6b4e", "#9498a0"];

const PAGE_SIZE = 20; // rows per page of the Errors and Disagreements tabs (the API allows up to 100)
const GOLD_COLOUR = "#9aa3b0";
const SHOWN_TEXT_CHARS = 300; // longer test texts are cut on the page; the whole text is the cell's tooltip

const state = {
  models: [], limits: { max_texts: 256, max_text_chars: 5000 }, batch: null,
  evaluation: null, evaluationMissing: null, // the evaluation output explored by the last three tabs
  loaded: {}, errorsOffset: 0, disOffset: 0,
};

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

const MULTI_LABEL = "multi_label_classification";
function isMultiLabel(p) { return p && p.problem_type === MULTI_LABEL; }

// A multi-label prediction's labels over their thresholds, as one line ("none" when no label passes).
function decidedText(p) {
  if (!isMultiLabel(p)) return p.label;
  return p.labels.length ? p.labels.join(", ") : "none";
}

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
    el("td", { class: "runtime", text: m.runtime || "pytorch" }),
    el("td", { text: `${m.layers}${m.num_layers != null ? ` (${m.num_layers})` : ""}` }),
    el("td", { text: formatParams(m.params), title: String(m.params) }),
    el("td", { text: m.test_f1 == null ? "—" : m.test_f1.toFixed(3) }),
    el("td", { text: m.problem_type === MULTI_LABEL ? `${m.labels.length} labels (multi-label)`
      : m.labels.length > 4 ? `${m.labels.length} classes` : m.labels.join(" / ") }),
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

// Multi-class models: one bar per class, so the runner-up classes are seen too (binary: the one bar says it all).
function classBars(model, probabilities) {
  const entries = Object.entries(probabilities);
  if (entries.length <= 2) return null;
  return el("div", { class: "class-probs" }, entries.map(([label, prob], id) => el("div", { class: "class-prob", "data-label": label, "data-probability": prob.toFixed(6) }, [
    el("span", { class: "class-name", text: label, title: label }),
    el("div", { class: "bar thin" }, el("div", { class: "fill", style: `width:${(100 * prob).toFixed(1)}%;background:${labelColour(model, id)}` })),
    el("span", { class: "class-pct", text: `${(100 * prob).toFixed(1)}%` }),
  ])));
}

// Multi-label models: every label's own probability (a sigmoid, they don't sum to 1) against its threshold, a tick
// on the bar; the labels over their thresholds are marked ✓.
function labelRows(model, p) {
  return el("div", { class: "class-probs" }, Object.entries(p.probabilities).map(([label, prob], id) => {
    const threshold = p.thresholds[label];
    const over = prob >= threshold;
    return el("div", {
      class: `class-prob${over ? " over" : ""}`, "data-label": label, "data-probability": prob.toFixed(6),
      "data-threshold": threshold.toFixed(6), "data-over": String(over),
    }, [
      el("span", { class: "class-name", text: `${over ? "✓ " : ""}${label}`, title: `${label}: threshold ${(100 * threshold).toFixed(1)}%` }),
      el("div", { class: "bar thin" }, [
        el("div", { class: "fill", style: `width:${(100 * prob).toFixed(1)}%;background:${over ? labelColour(model, id) : GOLD_COLOUR}` }),
        el("div", { class: "tick", style: `left:${(100 * threshold).toFixed(1)}%` }),
      ]),
      el("span", { class: "class-pct", text: `${(100 * prob).toFixed(1)}%` }),
    ]);
  }));
}

function multiLabelCard(p, model) {
  const chips = p.labels.length
    ? p.label_ids.map((id, k) => el("span", { class: "label multi", "data-label": p.labels[k], style: `background:${labelColour(model, id)}`, text: p.labels[k] }))
    : [el("span", { class: "label none", "data-label": "none", text: "none" })];
  return el("div", { class: "card", "data-model": p.model, "data-problem-type": p.problem_type }, [
    el("div", { class: "card-head" }, [
      el("span", { class: "model-name", text: p.model }),
      el("span", { class: "meta", text: model ? `${model.method} · ${formatParams(model.params)} params` : "" }),
    ]),
    el("div", { class: "decided", title: "labels over their thresholds" }, chips),
    labelRows(model, p),
    el("div", { class: "numbers" }, [
      el("span", { class: "hint", text: `${p.labels.length}/${Object.keys(p.probabilities).length} over threshold` }),
      el("span", { class: "latency", text: `${p.latency_ms.toFixed(1)} ms` }),
    ]),
  ]);
}

function renderCards(predictions) {
  const cards = predictions.map((p) => {
    if (isMultiLabel(p)) return multiLabelCard(p, modelInfo(p.model));
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
        p.threshold != null ? el("span", { class: "threshold", text: `${model ? model.labels[1] : "positive"} if ≥ ${(100 * p.threshold).toFixed(1)}%` }) : null,
        el("span", { class: "latency", text: `${p.latency_ms.toFixed(1)} ms` }),
      ]),
      classBars(model, p.probabilities),
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

// A given label matches a prediction by class id ("1") or by name ("toxic"), case-insensitively. For a multi-label
// model the given labels are a list ("1,3", "toxic;insult", "none" or empty for no label) that must be the set decided.
function isCorrect(given, prediction) {
  if (isMultiLabel(prediction)) {
    const names = Object.keys(prediction.probabilities).map((n) => n.toLowerCase());
    const wanted = given.split(/[,;|]/).map((g) => g.trim().toLowerCase()).filter((g) => g && g !== "none");
    const ids = new Set(wanted.map((g) => (/^\d+$/.test(g) ? Number(g) : names.indexOf(g))));
    return ids.size === prediction.label_ids.length && prediction.label_ids.every((id) => ids.has(id));
  }
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
      if (isMultiLabel(p)) { // every label over its threshold, with its probability
        const chips = p.label_ids.map((id, k) => [
          el("span", { class: "label small multi", style: `background:${labelColour(model, id)}`, text: p.labels[k] }),
          el("span", { class: "prob", text: ` ${(100 * p.probabilities[p.labels[k]]).toFixed(0)}% ` }),
        ]).flat();
        return el("td", { class: wrong ? "wrong" : "", "data-labels": p.labels.join(",") },
          chips.length ? chips : el("span", { class: "label small none", text: "none" }));
      }
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
    for (const r of results) { // a multi-label model counts every label it decides (none: no count)
      const p = r.predictions[k];
      for (const id of isMultiLabel(p) ? p.label_ids : [p.label_id]) counts[id] += 1;
    }
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
          el("td", { text: rows[i].label }), el("td", { text: decidedText(p) }),
          el("td", { text: p.probability == null ? "—" : `${(100 * p.probability).toFixed(0)}%` })]));
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
  if (buttonClass === "tab") openExploreTab(target);
}

// ---- The evaluation output: results table, and the Distribution / Errors / Disagreements tabs ----

// Columns of results.csv shown above the models: [key, header, format]
const RESULT_COLUMNS = [
  ["model", "model", String], ["method", "method", String], ["layers", "layers", String],
  ["params", "params", formatParams], ["trainable_pct", "trained", (v) => `${v < 1 ? v.toFixed(2) : v.toFixed(0)}%`],
  ["serving_size_mb", "serving MB", (v) => v.toFixed(1)], ["f1", "F1", (v) => v.toFixed(3)],
  ["macro_f1", "macro F1", (v) => v.toFixed(3)], ["roc_auc", "ROC-AUC", (v) => v.toFixed(3)],
  ["pr_auc", "PR-AUC", (v) => v.toFixed(3)], ["accuracy", "accuracy", (v) => v.toFixed(3)],
  ["latency_ms_b1", "latency ms (1 text)", (v) => v.toFixed(1)], ["throughput_b32", "texts/s (batch 32)", (v) => v.toFixed(1)],
];

function evalModel() { return { labels: state.evaluation ? state.evaluation.labels : [] }; }

function percent(x) { return `${(100 * x).toFixed(1)}%`; }

function renderResults() {
  const { results, samples, report_dir: dir } = state.evaluation;
  if (!results.length) return;
  const columns = RESULT_COLUMNS.filter(([key]) => key in results[0]);
  const head = el("tr", {}, columns.map(([, header]) => el("th", { text: header })));
  const body = results.map((row) => el("tr", { "data-model": row.model }, columns.map(([key, , format]) =>
    el("td", { "data-column": key, text: row[key] == null ? "—" : format(row[key]) }))));
  document.getElementById("results-table").replaceChildren(el("thead", {}, head), el("tbody", {}, body));
  const multi = results.some((row) => row.problem_type === MULTI_LABEL)
    ? "; multi-label rows: F1 is micro-F1, accuracy is subset accuracy, AUCs are macro over labels" : "";
  document.getElementById("evaluation-caption").textContent = `— ${samples} test texts, from ${dir}/results.csv${multi}`;
  document.getElementById("evaluation-section").hidden = false;
}

function fillSelect(id, names, selected) {
  const select = document.getElementById(id);
  select.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
  if (selected) select.value = selected;
}

async function loadEvaluation() {
  const data = await api("/api/evaluation");
  if (!data.available) { // the reason names the command that makes the evaluation output
    state.evaluationMissing = data.reason;
    document.querySelectorAll(".explore-missing").forEach((p) => { p.textContent = data.reason; p.hidden = false; });
    document.querySelectorAll(".explore .actions, .explore .legend, .explore .contingency").forEach((n) => { n.hidden = true; });
    return;
  }
  state.evaluation = data;
  const names = state.evaluation.models;
  renderResults();
  fillSelect("errors-model", names, names.find((n) => /even/.test(n)) || names[0]);
  const a = names.find((n) => /odd/.test(n)) || names[0];
  const b = names.find((n) => /even/.test(n) && !/lora/.test(n)) || names.find((n) => n !== a) || a;
  fillSelect("dis-a", names, a);
  fillSelect("dis-b", names, b);
}

async function openExploreTab(tab) {
  if (!["distribution", "errors", "disagreements"].includes(tab) || !state.evaluation || state.loaded[tab]) return;
  state.loaded[tab] = true;
  try {
    if (tab === "distribution") await loadDistribution();
    if (tab === "errors") await loadErrors();
    if (tab === "disagreements") await loadDisagreements();
  } catch (err) {
    state.loaded[tab] = false;
    showError(err.message);
  }
}

function distributionChart(d) {
  const model = evalModel();
  const rowH = 18, groupH = 2 * rowH + 10, labelW = 110, barW = 260;
  const height = d.classes.length * groupH + 4;
  const max = Math.max(1, ...d.classes.flatMap((c) => [c.gold, c.predicted]));
  const chart = svg("svg", { width: labelW + barW + 60, height, role: "img", "aria-label": `gold and predicted labels of ${d.model}` });
  d.classes.forEach((c, j) => {
    const y = 4 + j * groupH;
    const name = svg("text", { x: labelW - 6, y: y + rowH + 4, "text-anchor": "end", class: "axis" });
    name.textContent = c.label;
    chart.append(name);
    [["gold", c.gold, GOLD_COLOUR], ["predicted", c.predicted, labelColour(model, c.id)]].forEach(([kind, count, fill], k) => {
      const w = Math.round((barW * count) / max);
      const top = y + k * rowH;
      const bar = svg("rect", { x: labelW, y: top, width: w, height: rowH - 3, fill, "data-kind": kind, "data-label": c.label, "data-count": count });
      const value = svg("text", { x: labelW + w + 5, y: top + rowH - 6, class: "axis" });
      value.textContent = String(count);
      chart.append(bar, value);
    });
  });
  const title = `${d.model} — ${d.problem_type === MULTI_LABEL ? "subset accuracy" : "accuracy"} ${percent(d.accuracy)}`;
  return el("div", { class: "chart", "data-model": d.model }, [el("h3", { text: title }), chart]);
}

async function loadDistribution() {
  const all = await Promise.all(state.evaluation.models.map((m) => api(`/api/distribution?model=${encodeURIComponent(m)}`)));
  document.getElementById("test-distribution").replaceChildren(...all.map(distributionChart));
}

function labelChip(labelId, label) {
  const model = evalModel();
  return el("span", { class: `label small ${labelKind(model, labelId)}`, style: `background:${labelColour(model, labelId)}`, text: label });
}

// A gold or predicted answer: one chip, or for a multi-label model (`ids` given) one per label, "none" for none.
// `names` are the label names of those ids as the model itself names them (models may name the same id differently).
function answerChips(ids, labelId, label, names = []) {
  if (!Array.isArray(ids)) return labelChip(labelId, label);
  if (!ids.length) return el("span", { class: "label small none", text: "none" });
  return ids.map((id, k) => el("span", { class: "label small multi", "data-label-id": id, style: `background:${PALETTE[id % PALETTE.length]}`, text: names[k] ?? String(id) }));
}

function textCell(text) {
  const cut = text.length > SHOWN_TEXT_CHARS ? `${text.slice(0, SHOWN_TEXT_CHARS)}…` : text;
  return el("td", { class: "text-cell", title: text, text: cut });
}

function pageStatus(offset, shown, total, noun) {
  if (!total) return `no ${noun}`;
  return `${offset + 1}–${offset + shown} of ${total} ${noun}`;
}

async function loadErrors() {
  const model = document.getElementById("errors-model").value;
  const data = await api(`/api/errors?model=${encodeURIComponent(model)}&limit=${PAGE_SIZE}&offset=${state.errorsOffset}`);
  const head = el("tr", {}, ["#", "text", "gold", "predicted", "probability"].map((h) => el("th", { text: h })));
  const rows = data.errors.map((e) => el("tr", { "data-index": e.index }, [
    el("td", { text: String(e.index + 1) }),
    textCell(e.text),
    el("td", {}, answerChips(e.gold_ids, e.gold_id, e.gold, e.gold_labels)),
    el("td", {}, answerChips(e.predicted_ids, e.predicted_id, e.predicted, e.predicted_labels)),
    el("td", { class: "prob", "data-probability": e.probability.toFixed(6), text: percent(e.probability) }),
  ]));
  document.getElementById("test-errors-table").replaceChildren(el("thead", {}, head), el("tbody", {}, rows));
  document.getElementById("errors-status").textContent =
    `${pageStatus(data.offset, data.errors.length, data.total, "errors")} on ${data.samples} test texts`;
  document.getElementById("errors-prev").disabled = data.offset === 0;
  document.getElementById("errors-next").disabled = data.offset + data.errors.length >= data.total;
}

async function loadDisagreements() {
  const a = document.getElementById("dis-a").value;
  const b = document.getElementById("dis-b").value;
  const kind = document.getElementById("dis-kind").value;
  const query = `a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}&kind=${kind}&limit=${PAGE_SIZE}&offset=${state.disOffset}`;
  const data = await api(`/api/disagreements?${query}`);
  const t = data.table;
  const cell = (key) => el("td", { "data-cell": key, text: String(t[key]) });
  document.getElementById("dis-table").replaceChildren(
    el("thead", {}, el("tr", {}, [el("th", { text: "" }), el("th", { text: `${b} right` }), el("th", { text: `${b} wrong` })])),
    el("tbody", {}, [
      el("tr", {}, [el("th", { text: `${a} right` }), cell("both_right"), cell("only_a")]),
      el("tr", {}, [el("th", { text: `${a} wrong` }), cell("only_b"), cell("both_wrong")]),
    ]),
  );
  document.getElementById("dis-summary").textContent =
    `${data.samples} test texts; they label ${data.disagree} differently. Only ${a} right: ${t.only_a}, only ${b} right: ${t.only_b} `
    + `(McNemar exact p = ${data.mcnemar_p < 0.001 ? data.mcnemar_p.toExponential(1) : data.mcnemar_p.toFixed(3)}).`;
  const head = el("tr", {}, ["#", "text", "gold", a, b].map((h) => el("th", { text: h })));
  const side = (s) => el("td", { class: s.correct ? "right" : "wrong" }, [
    answerChips(s.predicted_ids, s.predicted_id, s.predicted, s.predicted_labels), el("span", { class: "prob", text: ` ${percent(s.probability)}` })].flat());
  const rows = data.rows.map((r) => el("tr", { "data-index": r.index }, [
    el("td", { text: String(r.index + 1) }),
    textCell(r.text),
    el("td", {}, answerChips(r.gold_ids, r.gold_id, r.gold, r.gold_labels)),
    side(r.a), side(r.b),
  ]));
  document.getElementById("dis-rows").replaceChildren(el("thead", {}, head), el("tbody", {}, rows));
  document.getElementById("dis-status").textContent = pageStatus(data.offset, data.rows.length, data.total, "texts");
  document.getElementById("dis-prev").disabled = data.offset === 0;
  document.getElementById("dis-next").disabled = data.offset + data.rows.length >= data.total;
}

function pager(button, offsetKey, direction, load) {
  document.getElementById(button).addEventListener("click", async () => {
    state[offsetKey] = Math.max(0, state[offsetKey] + direction * PAGE_SIZE);
    try { await load(); } catch (err) { showError(err.message); }
  });
}

function reloadOn(id, offsetKey, load) {
  document.getElementById(id).addEventListener("change", async () => {
    state[offsetKey] = 0;
    try { await load(); } catch (err) { showError(err.message); }
  });
}

// The bias view: identities sorted by BPSN AUC for one model; a click lists that identity's worst false positives.
function biasNumber(x) { return x === null ? "–" : x.toFixed(3); }

async function loadBiasFalsePositives(model, identity) {
  const data = await api(`/api/bias/false_positives?model=${encodeURIComponent(model)}&identity=${encodeURIComponent(identity)}&limit=${PAGE_SIZE}`);
  document.getElementById("bias-fp-title").textContent =
    `${identity}: ${data.total} of ${data.non_toxic} non-toxic texts flagged toxic by ${model}`;
  const head = el("tr", {}, ["text", "toxic score"].map((h) => el("th", { text: h })));
  const rows = data.texts.map((t) => el("tr", {}, [textCell(t.text), el("td", { class: "prob", text: percent(t.toxic_score) })]));
  document.getElementById("bias-fp").replaceChildren(el("thead", {}, head), el("tbody", {}, rows));
}

async function loadBias() {
  const model = document.getElementById("bias-model").value;
  if (!model) return;
  const data = await api(`/api/bias?model=${encodeURIComponent(model)}`);
  const columns = ["identity", "n", "subgroup_auc", "bpsn_auc", "bnsp_auc", "fpr", "fnr"];
  const head = el("tr", {}, ["identity", "n", "subgroup AUC", "BPSN AUC", "BNSP AUC", "FPR", "FNR"].map((h) => el("th", { text: h })));
  const rows = data.identities.map((r) => {
    const row = el("tr", { class: "clickable", "data-identity": r.identity }, columns.map((c) =>
      el("td", { text: c === "identity" ? r.identity : c === "n" ? String(r.n) : biasNumber(r[c]) })));
    row.addEventListener("click", () => loadBiasFalsePositives(model, r.identity).catch((err) => showError(err.message)));
    return row;
  });
  document.getElementById("bias-table").replaceChildren(el("thead", {}, head), el("tbody", {}, rows));
  document.getElementById("bias-status").textContent = `${data.identities.length} identities`;
  document.getElementById("bias-fp-title").textContent = "";
  document.getElementById("bias-fp").replaceChildren();
}

function initBias() {
  document.querySelector('.tab[data-tab="bias"]').addEventListener("click", async () => {
    const select = document.getElementById("bias-model");
    if (!select.options.length && state.evaluation) fillSelect("bias-model", state.evaluation.models);
    try { await loadBias(); } catch (err) { document.getElementById("bias-status").textContent = err.message; }
  });
  document.getElementById("bias-model").addEventListener("change", () => loadBias().catch((err) => showError(err.message)));
}

function initExplore() {
  initBias();
  pager("errors-prev", "errorsOffset", -1, loadErrors);
  pager("errors-next", "errorsOffset", 1, loadErrors);
  pager("dis-prev", "disOffset", -1, loadDisagreements);
  pager("dis-next", "disOffset", 1, loadDisagreements);
  reloadOn("errors-model", "errorsOffset", loadErrors);
  ["dis-a", "dis-b", "dis-kind"].forEach((id) => reloadOn(id, "disOffset", loadDisagreements));
}

async function init() {
  document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => switchTab("tab", "tab-", "tab", b.dataset.tab)));
  document.querySelectorAll(".subtab").forEach((b) => b.addEventListener("click", () => switchTab("subtab", "sub-", "subtab", b.dataset.subtab)));
  document.getElementById("classify").addEventListener("click", classifySingle);
  document.getElementById("text").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) classifySingle(); });
  document.getElementById("classify-batch").addEventListener("click", classifyBatch);
  initExplore();
  try {
    const data = await api("/api/models");
    state.models = data.models;
    state.limits = data.limits;
    renderModels();
    await loadEvaluation();
    document.body.dataset.ready = "true";
  } catch (err) {
    showError(`could not list the models: ${err.message}`);
  }
}

init();
