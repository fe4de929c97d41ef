"""The page in a real browser: `python app.py` on a free loopback port, driven by headless Debian Chromium.

Chromium is the system one (/usr/bin/chromium, Debian's `chromium` package), launched by Playwright with
`executable_path`; Playwright's own browser download is never used. Optional environment variables:
- DISTILLKIT_APP_EXPERIMENT_DIR=EXP: also check real trained models (a toxic and a friendly comment differ) and,
  when EXP has an evaluation output (EXP/report), every tab on it.
- DISTILLKIT_APP_SCREENSHOT_DIR=DIR: write that check's screenshots there, one per tab (app_classify.png,
  app_distribution.png, app_errors.png, app_disagreements.png: how docs/app_*.png are made).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import REPO
from scipy.special import logit
from test_app import make_experiment
from test_explore import make_evaluated_experiment, make_run_eval_multilabel_experiment
from test_serving_tasks import LABELS, TEXTS, make_task_experiment
from tolerances import forward_atol

CHROMIUM = "/usr/bin/chromium"
# Flags for this offline, GPU-less machine: without the networking ones Chromium keeps dialling Google's hosts.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.path.isfile(CHROMIUM), reason=f"{CHROMIUM} not installed (apt-get install -y chromium chromium-driver)"
    ),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def app_server(args: list[str], log_path: Path):
    """`python app.py ARGS` as its own process on a free port; yields the base URL once /healthz answers."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "app.py", *args, "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, f"app.py did not answer in 120 s:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def browser_page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            yield page, errors
        finally:
            browser.close()



def wait_until(page, expression: str, arg=None, timeout_s: float = 30.0) -> None:
    """Poll a JS expression from the test side (page.evaluate runs through DevTools, which the page's CSP allows;
    Playwright's wait_for_function evals inside the page, which a CSP without 'unsafe-eval' refuses)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if page.evaluate(expression, arg) if arg is not None else page.evaluate(expression):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {expression}")
        time.sleep(0.05)

def classify_on_page(page, text: str, num_models: int) -> dict[str, str]:
    """Type `text`, click Classify, and read each model's label off its card (a multi-label card: its first chip)."""
    page.fill("#text", text)
    page.click("#classify")
    wait_until(page, 
        "([t, n]) => document.querySelectorAll('#results .card').length === n"
        " && document.getElementById('text').value === t && !document.getElementById('classify').disabled",
        arg=[text, num_models],
    )
    cards = page.locator("#results .card")
    return {
        cards.nth(i).get_attribute("data-model"): cards.nth(i).locator(".label").first.inner_text()
        for i in range(cards.count())
    }


def api_labels(url: str, text: str) -> dict[str, str]:
    body = httpx.post(f"{url}/api/predict", json={"texts": [text]}, timeout=60).json()
    return {p["model"]: p["label"] for p in body["results"][0]["predictions"]}


def test_page_classifies_a_comment_and_a_csv_batch(tmp_path, tiny_classifier_dir):
    exp = make_experiment(tmp_path / "exp", tiny_classifier_dir)
    with app_server(["--experiment_dir", str(exp)], tmp_path / "app.log") as url, browser_page() as (page, errors):
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]")
        assert page.locator("#models-table tbody tr").count() == 3
        assert page.locator("#models-table td.runtime").all_inner_texts() == ["pytorch"] * 3

        text = "thanks for the good citation 🙂"
        shown = classify_on_page(page, text, num_models=3)
        assert shown == api_labels(url, text)  # every model, each with the label the API gives
        assert set(shown) == {"teacher", "lora", "emotions"}
        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)

        # Batch: a CSV with labels gives a results table, a distribution chart per model and the errors tab.
        csv_path = tmp_path / "batch.csv"
        csv_path.write_text(
            'text,label\n"you stupid idiot, really",1\nthanks for the edit,0\n"multi\nline",non-toxic\n'
        )
        assert page.locator("#evaluation-section").is_hidden()  # no evaluation output: no results table
        emotions_bars = page.locator("#results .card[data-model=emotions] .class-prob")  # 5 classes: a bar each
        assert (
            emotions_bars.count() == 5 and page.locator("#results .card[data-model=teacher] .class-prob").count() == 0
        )
        assert sum(float(emotions_bars.nth(i).get_attribute("data-probability")) for i in range(5)) == pytest.approx(1)
        page.click("button[data-tab=errors]")
        missing = page.locator("#tab-errors .explore-missing")
        assert missing.is_visible() and "holds no evaluation output yet" in missing.inner_text()
        page.click("button[data-tab=batch]")
        page.set_input_files("#csv-file", str(csv_path))
        page.click("#classify-batch")
        wait_until(page, "document.getElementById('batch-status').textContent.includes('3 texts classified')")
        assert page.locator("#batch-table tbody tr").count() == 3
        assert page.locator("#batch-table tbody tr").nth(2).locator("td").nth(1).text_content() == "multi\nline"
        page.click("button[data-subtab=distribution]")
        assert page.locator("#distribution .chart").count() == 3
        teacher_bars = page.locator("#distribution .chart[data-model=teacher] rect")
        assert sum(int(teacher_bars.nth(i).get_attribute("data-count")) for i in range(teacher_bars.count())) == 3
        page.click("button[data-subtab=errors]")
        summary = page.locator("#errors ul.summary li")
        assert summary.count() == 3 and "on 3 labelled rows" in summary.first.inner_text()
        page.screenshot(path=str(tmp_path / "app_batch.png"), full_page=True)
        assert not errors, errors


def screenshot(page, path: Path, max_height: int = 1500) -> None:
    """The page from its top, at most `max_height` pixels: what docs/app_*.png show."""
    height = min(max_height, page.evaluate("document.documentElement.scrollHeight"))
    page.screenshot(path=str(path), full_page=True, clip={"x": 0, "y": 0, "width": 1200, "height": height})


def check_explore_tabs(page, url: str, shots: Path | None = None) -> dict[str, str]:
    """Open every tab of an app with an evaluation output and read one value off each against the API.

    Returns a value read from each tab; with `shots`, saves one screenshot per tab there (app_<tab>.png).
    """
    evaluation = httpx.get(f"{url}/api/evaluation").json()
    names, read = evaluation["models"], {}
    results = page.locator("#results-table tbody tr")
    assert page.locator("#evaluation-section").is_visible() and results.count() == len(evaluation["results"])
    first = evaluation["results"][0]
    assert results.first.locator("td[data-column=f1]").inner_text() == f"{first['f1']:.3f}"
    read["results"] = results.first.locator("td[data-column=f1]").inner_text()
    if shots:
        screenshot(page, shots / "app_classify.png")

    page.click("button[data-tab=distribution]")
    wait_until(page, f"document.querySelectorAll('#test-distribution .chart').length === {len(names)}")
    model = names[0]
    api = httpx.get(f"{url}/api/distribution", params={"model": model}).json()
    for kind in ("gold", "predicted"):
        bar = page.locator(f"#test-distribution .chart[data-model='{model}'] rect[data-kind={kind}]").first
        assert bar.get_attribute("data-label") == api["classes"][0]["label"]
        assert int(bar.get_attribute("data-count")) == api["classes"][0][kind]
    read["distribution"] = bar.get_attribute("data-count")
    if shots:
        screenshot(page, shots / "app_distribution.png")

    page.click("button[data-tab=errors]")
    page.wait_for_selector("#test-errors-table tbody tr")
    model = page.locator("#errors-model").input_value()
    api = httpx.get(f"{url}/api/errors", params={"model": model, "limit": 20}).json()
    first_row = page.locator("#test-errors-table tbody tr").first
    assert int(first_row.get_attribute("data-index")) == api["errors"][0]["index"]
    assert float(first_row.locator("td.prob").get_attribute("data-probability")) == pytest.approx(
        api["errors"][0]["probability"], abs=1e-6
    )
    status = page.locator("#errors-status").inner_text()
    assert status.startswith(f"1–{len(api['errors'])} of {api['total']} errors")
    read["errors"] = status
    if shots:
        screenshot(page, shots / "app_errors.png")
    if api["total"] > 20:  # the next page starts where the API's offset=20 does
        page.click("#errors-next")
        wait_until(page, "document.getElementById('errors-status').textContent.startsWith('21–')")
        page2 = httpx.get(f"{url}/api/errors", params={"model": model, "limit": 20, "offset": 20}).json()
        assert int(first_row.get_attribute("data-index")) == page2["errors"][0]["index"]

    page.click("button[data-tab=disagreements]")
    page.wait_for_selector("#dis-table td[data-cell=both_right]")
    a, b = page.locator("#dis-a").input_value(), page.locator("#dis-b").input_value()
    api = httpx.get(f"{url}/api/disagreements", params={"a": a, "b": b}).json()
    cells = {k: int(page.locator(f"#dis-table td[data-cell={k}]").inner_text()) for k in api["table"]}
    assert cells == api["table"] and sum(cells.values()) == api["samples"]
    assert page.locator("#dis-rows tbody tr").count() == min(20, api["total"])
    read["disagreements"] = str(cells["both_right"])
    if shots:
        screenshot(page, shots / "app_disagreements.png")
    return read


def test_page_explores_the_evaluation_in_every_tab(tmp_path):
    exp = make_evaluated_experiment(tmp_path / "explore")
    with app_server(["--experiment_dir", str(exp)], tmp_path / "app.log") as url, browser_page() as (page, errors):
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]")
        shown = classify_on_page(page, "you stupid idiot", num_models=3)
        assert shown == api_labels(url, "you stupid idiot")
        bars = page.locator("#results .card[data-model=odd] .class-prob")  # 3 classes: a probability bar each
        assert [bars.nth(i).get_attribute("data-label") for i in range(bars.count())] == ["joy", "anger", "fear"]
        read = check_explore_tabs(page, url)
        assert set(read) == {"results", "distribution", "errors", "disagreements"}

        # Another pair and a narrower view: the table follows the pickers.
        page.select_option("#dis-a", "teacher")
        page.select_option("#dis-kind", "only_a")
        api = httpx.get(f"{url}/api/disagreements", params={"a": "teacher", "b": "even", "kind": "only_a"}).json()
        wait_until(page, 
            f"document.querySelector('#dis-table td[data-cell=only_a]') && "
            f"document.getElementById('dis-rows').querySelectorAll('tbody tr').length === {min(20, api['total'])} && "
            f"document.querySelector('#dis-rows th:nth-child(4)').textContent === 'teacher'"
        )
        assert int(page.locator("#dis-table td[data-cell=only_a]").inner_text()) == api["table"]["only_a"]
        assert not errors, errors


REAL_EXP = os.environ.get("DISTILLKIT_APP_EXPERIMENT_DIR")
needs_real_exp = pytest.mark.skipif(not REAL_EXP, reason="set DISTILLKIT_APP_EXPERIMENT_DIR=EXP to check real models")
REAL_ARGS = ["--experiment_dir", REAL_EXP or "", "--label_names", "non-toxic,toxic"]
TOXIC, FRIENDLY = "I will find you and hurt you, idiot", "Thanks for fixing the citation"


@needs_real_exp
def test_real_models_tell_a_threat_from_thanks(tmp_path):
    with app_server(REAL_ARGS, tmp_path / "app.log") as url, browser_page() as (page, errors):
        models = httpx.get(f"{url}/api/models").json()["models"]
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]")
        assert page.locator("#models-table tbody tr").count() == len(models)
        friendly_labels = classify_on_page(page, FRIENDLY, len(models))
        toxic_labels = classify_on_page(page, TOXIC, len(models))
        assert set(toxic_labels) == {m["name"] for m in models}
        for name in toxic_labels:
            assert toxic_labels[name] != friendly_labels[name], f"{name} gives both texts {toxic_labels[name]}"
        assert not errors, errors


@needs_real_exp
def test_real_experiment_every_tab(tmp_path):
    """`python app.py --experiment_dir EXP` on a run_compare.py output: every tab reads its evaluation (EXP/report)."""
    shots = Path(os.environ.get("DISTILLKIT_APP_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with app_server(REAL_ARGS, tmp_path / "app.log") as url, browser_page() as (page, errors):
        models = httpx.get(f"{url}/api/models").json()["models"]
        assert httpx.get(f"{url}/api/evaluation").json()["available"], "EXP has no report/: run run_compare.py's eval"
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]")
        assert classify_on_page(page, TOXIC, len(models)) == api_labels(url, TOXIC)
        read = check_explore_tabs(page, url, shots)
        assert set(read) == {"results", "distribution", "errors", "disagreements"}
        assert not errors, errors


def test_page_shows_a_multilabel_models_labels_probabilities_and_thresholds(tmp_path):
    """Issue 12: a multi-label model's card lists every label with its sigmoid probability, marks those over their
    saved thresholds (the API's `labels`), and says "none" when no label passes; a binary model shows its threshold."""
    exp = make_task_experiment(tmp_path / "tasks")
    with app_server(["--experiment_dir", str(exp)], tmp_path / "app.log") as url, browser_page() as (page, errors):
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]")
        classes = page.locator("#models-table tbody tr[data-model=multilabel] td").last.inner_text()
        assert classes == f"{len(LABELS)} labels (multi-label)"
        body = httpx.post(f"{url}/api/predict", json={"texts": TEXTS, "models": ["multilabel"]}, timeout=60).json()
        decided = {r["text"]: r["predictions"][0] for r in body["results"]}
        some = next(t for t in TEXTS if decided[t]["labels"])
        none = [t for t in TEXTS if not decided[t]["labels"]]
        for text in [some] + none[:1]:
            api = decided[text]
            shown = classify_on_page(page, text, num_models=3)
            card = page.locator("#results .card[data-model=multilabel]")
            chips = card.locator(".decided .label").all_inner_texts()
            assert chips == (api["labels"] or ["none"]) and shown["multilabel"] == chips[0]
            rows = card.locator(".class-prob")
            assert [rows.nth(i).get_attribute("data-label") for i in range(rows.count())] == LABELS
            api_probs = np.array([api["probabilities"][label] for label in LABELS])
            for i, label in enumerate(LABELS):
                row = rows.nth(i)
                # The page asked for this text alone, the API call above batched 8: float32 rounding apart.
                prob = float(row.get_attribute("data-probability"))
                assert prob == pytest.approx(api["probabilities"][label], abs=forward_atol(logit(api_probs)))
                threshold = float(row.get_attribute("data-threshold"))  # both attributes are written to 6 decimals
                assert threshold == pytest.approx(api["thresholds"][label], abs=1e-6)
                assert abs(prob - threshold) > 2e-6, "the fixture's thresholds sit between probabilities"
                assert row.get_attribute("data-over") == str(prob >= threshold).lower()
                shown_pct = row.locator(".class-pct").inner_text()  # `.1f` of the percentage: within half a step
                assert re.fullmatch(r"\d{1,3}\.\d%", shown_pct) and abs(float(shown_pct[:-1]) / 100 - prob) <= 5e-4 + 1e-6
                assert row.locator(".class-name").inner_text().startswith("✓") == (label in api["labels"])
        assert none, "the fixture has a text no label passes for"
        binary = page.locator("#results .card[data-model=binary] .threshold").inner_text()
        threshold = httpx.get(f"{url}/api/models").json()["models"]
        threshold = next(m["threshold"] for m in threshold if m["name"] == "binary")
        assert binary == f"toxic if ≥ {100 * threshold:.1f}%"
        page.screenshot(path=str(tmp_path / "multilabel.png"), full_page=True)

        # Batch: each text's labels over threshold (or none), and a given label list is checked as a set.
        page.click("button[data-tab=batch]")
        rows = "text,label\n" + "".join(f'"{t}","{",".join(decided[t]["labels"]) or "none"}"\n' for t in TEXTS[:4])
        (tmp_path / "batch.csv").write_text(rows)
        page.set_input_files("#csv-file", str(tmp_path / "batch.csv"))
        page.click("#classify-batch")
        wait_until(page, "document.getElementById('batch-status').textContent.includes('4 texts classified')")
        models = [h.strip() for h in page.locator("#batch-table thead th").all_inner_texts()][3:]
        column = 3 + models.index("multilabel")
        cells = page.locator(f"#batch-table tbody tr td:nth-child({column + 1})")
        assert [cells.nth(i).get_attribute("data-labels") for i in range(4)] == [
            ",".join(decided[t]["labels"]) for t in TEXTS[:4]
        ]
        assert all("wrong" not in (cells.nth(i).get_attribute("class") or "") for i in range(4))
        page.click("button[data-subtab=errors]")
        summary = page.locator("#errors ul.summary li").all_inner_texts()
        assert any(s.startswith("multilabel: 0 errors") for s in summary), summary
        assert not errors, errors


def test_page_explores_a_multilabel_evaluation(tmp_path):
    """The Distribution and Errors tabs on a multi-label evaluation output: per-label counts and label-set chips."""
    exp = make_run_eval_multilabel_experiment(tmp_path / "ml")
    with app_server(["--experiment_dir", str(exp)], tmp_path / "app.log") as url, browser_page() as (page, errors):
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]")
        caption = page.locator("#evaluation-caption").inner_text()
        assert "multi-label rows: F1 is micro-F1, accuracy is subset accuracy" in caption
        results = httpx.get(f"{url}/api/evaluation").json()["results"]
        cell = page.locator("#results-table tbody tr").first.locator("td[data-column=macro_f1]")
        assert cell.inner_text() == f"{results[0]['macro_f1']:.3f}"
        page.click("button[data-tab=distribution]")
        wait_until(page, "document.querySelectorAll('#test-distribution .chart').length === 2")
        api = httpx.get(f"{url}/api/distribution", params={"model": "ml_a"}).json()
        chart = page.locator("#test-distribution .chart[data-model=ml_a]")
        assert chart.locator("h3").inner_text() == f"ml_a — subset accuracy {100 * api['accuracy']:.1f}%"
        bars = chart.locator("rect[data-kind=predicted]")
        assert [int(bars.nth(i).get_attribute("data-count")) for i in range(bars.count())] == [
            c["predicted"] for c in api["classes"]
        ]
        page.click("button[data-tab=errors]")
        page.select_option("#errors-model", "ml_a")
        page.wait_for_selector("#test-errors-table tbody tr")
        api = httpx.get(f"{url}/api/errors", params={"model": "ml_a", "limit": 20}).json()
        rows = page.locator("#test-errors-table tbody tr")
        assert rows.count() == api["total"] > 0
        for i, e in enumerate(api["errors"]):
            gold, predicted = (rows.nth(i).locator("td").nth(k).locator(".label").all_inner_texts() for k in (2, 3))
            assert gold == ([LABELS[j] for j in e["gold_ids"]] or ["none"])
            assert predicted == ([LABELS[j] for j in e["predicted_ids"]] or ["none"])
        assert not errors, errors
