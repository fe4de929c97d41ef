"""The page in a real browser: `python app.py` on a free loopback port, driven by headless Debian Chromium.

Chromium is the system one (/usr/bin/chromium, Debian's `chromium` package), launched by Playwright with
`executable_path`; Playwright's own browser download is never used. Optional environment variables:
- DISTILLKIT_APP_EXPERIMENT_DIR=EXP: also check real trained models (a toxic and a friendly comment differ).
- DISTILLKIT_APP_SCREENSHOT=PATH: copy that check's screenshot there (how docs/app_screenshot.png is made).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from conftest import REPO
from test_app import make_experiment

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


def classify_on_page(page, text: str, num_models: int) -> dict[str, str]:
    """Type `text`, click Classify, and read each model's label off its card."""
    page.fill("#text", text)
    page.click("#classify")
    page.wait_for_function(
        "([t, n]) => document.querySelectorAll('#results .card').length === n"
        " && document.getElementById('text').value === t && !document.getElementById('classify').disabled",
        arg=[text, num_models],
    )
    cards = page.locator("#results .card")
    return {
        cards.nth(i).get_attribute("data-model"): cards.nth(i).locator(".label").inner_text()
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
        page.click("button[data-tab=batch]")
        page.set_input_files("#csv-file", str(csv_path))
        page.click("#classify-batch")
        page.wait_for_function("document.getElementById('batch-status').textContent.includes('3 texts classified')")
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


REAL_EXP = os.environ.get("DISTILLKIT_APP_EXPERIMENT_DIR")


@pytest.mark.skipif(not REAL_EXP, reason="set DISTILLKIT_APP_EXPERIMENT_DIR=EXP to check real trained models")
def test_real_models_tell_a_threat_from_thanks(tmp_path):
    toxic, friendly = "I will find you and hurt you, idiot", "Thanks for fixing the citation"
    args = ["--experiment_dir", REAL_EXP, "--label_names", "non-toxic,toxic"]
    with app_server(args, tmp_path / "app.log") as url, browser_page() as (page, errors):
        models = httpx.get(f"{url}/api/models").json()["models"]
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]")
        assert page.locator("#models-table tbody tr").count() == len(models)
        friendly_labels = classify_on_page(page, friendly, len(models))
        toxic_labels = classify_on_page(page, toxic, len(models))
        assert set(toxic_labels) == {m["name"] for m in models}
        for name in toxic_labels:
            assert toxic_labels[name] != friendly_labels[name], f"{name} gives both texts {toxic_labels[name]}"
        shot = tmp_path / "app_real.png"
        page.screenshot(path=str(shot), full_page=True)
        assert not errors, errors
    if os.environ.get("DISTILLKIT_APP_SCREENSHOT"):
        shutil.copy(shot, os.environ["DISTILLKIT_APP_SCREENSHOT"])
