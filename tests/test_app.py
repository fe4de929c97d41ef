"""The web app's API on tiny models: shapes, probabilities, every bad input, concurrency, the CLI and the load script."""

from __future__ import annotations

import csv
import json
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import uvicorn
from conftest import LOCAL_URL, make_tokenizer, tiny_bert_config
from tolerances import FORWARD_REL, forward_atol
from fastapi.testclient import TestClient
from transformers import BertForSequenceClassification

import app as app_module
from distillkit.cli import UsageError
from distillkit.server_guard import GuardLimits, server_options
from distillkit.runtime import predict_logits
from distillkit.metrics import softmax
from distillkit.serving import InferenceWorker, ModelRegistry, RequestError, ServingLimits, json_depth

EMOTIONS = ["joy", "anger", "fear", "sadness", "neutral"]
JSON_HEADERS = {"Content-Type": "application/json"}


def save_results(directory: Path, **results) -> None:
    (directory / "all_results.json").write_text(json.dumps(results))


def make_experiment(exp: Path, classifier_dir: Path) -> Path:
    """EXP/teacher (full model), EXP/lora (a PEFT LoRA adapter on it), EXP/emotions (5 named classes)."""
    from peft import LoraConfig, TaskType, get_peft_model

    teacher = exp / "teacher"
    shutil.copytree(classifier_dir, teacher)
    save_results(teacher, method="teacher", test_f1=0.75, test_accuracy=0.8)

    torch.manual_seed(1)
    base = BertForSequenceClassification.from_pretrained(teacher)
    lora = get_peft_model(base, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["query"]))
    with torch.no_grad():  # as if trained: B is not zero and the adapter's own classifier head differs
        for name, param in lora.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.normal_(0, 0.5)
    lora.save_pretrained(exp / "lora")
    make_tokenizer(exp / "lora")
    save_results(exp / "lora", method="lora", test_f1=0.7)

    torch.manual_seed(2)
    config = tiny_bert_config(
        num_layers=2,
        num_labels=len(EMOTIONS),
        id2label=dict(enumerate(EMOTIONS)),
        label2id={n: i for i, n in enumerate(EMOTIONS)},
    )
    BertForSequenceClassification(config).save_pretrained(exp / "emotions")
    make_tokenizer(exp / "emotions")
    return exp


@pytest.fixture(scope="module")
def experiment_dir(tmp_path_factory, tiny_classifier_dir) -> Path:
    return make_experiment(tmp_path_factory.mktemp("exp"), tiny_classifier_dir)


@pytest.fixture(scope="module")
def registry(experiment_dir) -> ModelRegistry:
    return ModelRegistry.from_dirs([], ServingLimits(), experiment_dir=str(experiment_dir))


@pytest.fixture(scope="module")
def client(registry):
    with TestClient(app_module.create_app(registry), base_url=LOCAL_URL) as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def real_server(fastapi_app):
    """The app under a real uvicorn on a free loopback port, in a background thread, bounded as app.main runs it
    (and, like app.main, leaving logging to the script's own set-up: uvicorn's dictConfig would bind handlers to
    pytest's capture streams, which are closed after the test)."""
    port = free_port()
    options = server_options(fastapi_app.state.load, fastapi_app.state.retry_after_s)
    server = uvicorn.Server(uvicorn.Config(fastapi_app, host="127.0.0.1", port=port, log_level="warning", log_config=None, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_defaults_are_the_documented_limits():
    limits = ServingLimits()
    assert (limits.max_text_chars, limits.max_texts) == (5000, 256)


def test_healthz_and_models(client):
    health = client.get("/healthz").json()
    assert (health["status"], health["models"], health["saturated"]) == ("ok", 3, False)
    assert (health["requests_in_flight"], health["max_concurrent_requests"]) == (0, 200)
    body = client.get("/api/models").json()
    models = {m["name"]: m for m in body["models"]}
    assert list(models) == ["emotions", "lora", "teacher"]  # find_model_dirs order
    assert models["teacher"]["method"] == "teacher" and models["teacher"]["test_f1"] == 0.75
    assert models["teacher"]["num_layers"] == 4 and models["teacher"]["params"] > 0
    assert models["lora"]["adapter"] is True and models["lora"]["method"] == "lora"
    assert models["lora"]["test_f1"] == 0.7
    assert models["emotions"]["labels"] == EMOTIONS and models["emotions"]["test_f1"] is None
    assert models["teacher"]["labels"] == ["non-toxic", "toxic"]
    assert body["limits"] == {"max_text_chars": 5000, "max_texts": 256}


def test_page_and_static_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="classify"' in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


TEXTS = [
    "thanks for the good citation",
    "you stupid idiot",
    "🙂 ☃ 日本語 — ça va? ",
    "   \t\n ",
    "",
]


def test_predict_shapes_probabilities_and_labels(client, registry):
    texts = TEXTS + ["idiot " * 800]  # 4,800 characters: under the limit, far over the models' 64 positions
    response = client.post("/api/predict", json={"texts": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["models"] == ["emotions", "lora", "teacher"]
    assert [r["text"] for r in body["results"]] == texts
    for result in body["results"]:
        assert [p["model"] for p in result["predictions"]] == body["models"]
        for pred in result["predictions"]:
            labels = registry.models[pred["model"]].labels
            probs = pred["probabilities"]
            assert list(probs) == labels
            assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)
            assert all(0.0 <= p <= 1.0 for p in probs.values())
            assert pred["label"] == labels[pred["label_id"]] == max(probs, key=probs.get)
            assert pred["probability"] == probs[pred["label"]]
            assert pred["latency_ms"] > 0
    assert set(body["timing"]) == set(body["models"])
    assert all(t["texts"] == len(texts) and t["batch_texts"] >= len(texts) for t in body["timing"].values())
    emotions = body["results"][0]["predictions"][0]
    assert emotions["label"] in EMOTIONS and len(emotions["probabilities"]) == 5


def test_predictions_are_each_models_own_output(client, registry):
    """Batched, length-sorted inference gives each text the same probabilities as running it alone."""
    texts = ["you stupid idiot and moron", "thanks", "the article section is good and fixed please"]
    body = client.post("/api/predict", json={"texts": texts, "models": ["lora", "teacher"]}).json()
    outputs = {}
    for k, name in enumerate(["lora", "teacher"]):
        clf = registry.models[name].clf
        for i, text in enumerate(texts):
            logits = predict_logits(clf.model, clf.tokenizer, [text], max_length=64)
            expected = softmax(logits)[0]
            got = [
                body["results"][i]["predictions"][k]["probabilities"][label] for label in registry.models[name].labels
            ]
            np.testing.assert_allclose(got, expected, rtol=0, atol=forward_atol(logits))  # alone vs padded batch
            outputs[name, i] = got
    # The adapter is loaded as an adapter (not silently as its base): its outputs differ from the teacher's.
    # (differ by more than any rounding: 1e-4 is ~1000 EPS32, an adapter moves probabilities by far more)
    assert any(not np.allclose(outputs["lora", i], outputs["teacher", i], atol=1e-4) for i in range(len(texts)))


def test_models_subset_in_the_order_asked_and_deduplicated(client):
    body = client.post("/api/predict", json={"texts": ["hi"], "models": ["teacher", "lora", "teacher"]}).json()
    assert body["models"] == ["teacher", "lora"]
    assert [p["model"] for p in body["results"][0]["predictions"]] == ["teacher", "lora"]


BAD_REQUESTS = [
    ("not json", b"this is not json", 400, "not valid JSON"),
    ("truncated json", b'{"texts": ["a"', 400, "not valid JSON"),
    ("invalid utf-8", b'{"texts": ["\xff\xfe"]}', 400, "not valid JSON"),
    ("empty body", b"", 400, "not valid JSON"),
    ("json array", b'["a", "b"]', 422, "JSON object"),
    ("missing texts", b"{}", 422, "missing field texts"),
    ("empty texts", b'{"texts": []}', 422, "non-empty list"),
    ("texts is a string", b'{"texts": "hello"}', 422, "non-empty list"),
    ("a text is a number", b'{"texts": ["ok", 3]}', 422, "texts[1] is int"),
    ("a text is null", b'{"texts": [null]}', 422, "texts[0] is NoneType"),
    ("lone surrogate", b'{"texts": ["\\ud800"]}', 422, "not valid Unicode"),
    ("typo in a field", b'{"texts": ["a"], "model": ["teacher"]}', 422, "unknown field(s) model"),
    ("text too long", json.dumps({"texts": ["a" * 5001]}).encode(), 413, "5001 characters: at most 5000"),
    ("too many texts", json.dumps({"texts": ["a"] * 257}).encode(), 413, "257 texts in one request: at most 256"),
    ("unknown model", b'{"texts": ["a"], "models": ["teacher", "nope"]}', 404, "unknown model(s) nope"),
    ("empty model list", b'{"texts": ["a"], "models": []}', 422, "models must be a non-empty list"),
    ("model not a string", b'{"texts": ["a"], "models": [1]}', 422, "models must be a non-empty list"),
    # found by tests/test_fuzz.py: null was taken for "every model" although the schema says a list
    ("models null", b'{"texts": ["a"], "models": null}', 422, "models must be a non-empty list"),
]


@pytest.mark.parametrize("body,status,message", [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_a_json_error_and_the_server_keeps_serving(client, body, status, message):
    response = client.post("/api/predict", content=body, headers=JSON_HEADERS)
    assert response.status_code == status
    error = response.json()
    assert message in error["error"] and error["status"] == status
    ok = client.post("/api/predict", json={"texts": ["still serving"]})
    assert ok.status_code == 200


def test_oversized_body_is_refused_before_it_is_parsed(registry):
    small = ModelRegistry([registry.models["teacher"].clf], ServingLimits(max_texts=2, max_text_chars=10))
    with TestClient(app_module.create_app(small), base_url=LOCAL_URL) as test_client:
        limit = small.limits.max_body_bytes
        response = test_client.post(
            "/api/predict", content=b'{"texts": ["' + b"a" * limit + b'"]}', headers=JSON_HEADERS
        )
        assert response.status_code == 413 and f"over {limit} bytes" in response.json()["error"]
        assert test_client.post("/api/predict", json={"texts": ["a" * 10, "b"]}).status_code == 200
        assert test_client.post("/api/predict", json={"texts": ["a" * 11]}).status_code == 413
    small.close()


NESTED = [
    ("100,000 nested arrays", b"[" * 100_000 + b"]" * 100_000),
    ("5,000 nested inside models", b'{"texts": ["a"], "models": ' + b"[" * 5000 + b'"x"' + b"]" * 5000 + b"}"),
    ("objects and arrays 9 deep", b'{"texts": [' + b'{"a": [' * 4 + b"1" + b"]}" * 4 + b"]}"),
    ("unbalanced opening brackets", b"{" * 50_000),
]


@pytest.mark.parametrize("body", [b[1] for b in NESTED], ids=[b[0] for b in NESTED])
def test_deeply_nested_json_is_refused_with_400_before_it_is_parsed(client, monkeypatch, body):
    """Issue 11, defect 5: json.loads recursed into thousands of brackets and failed with RecursionError (a 500)."""
    from distillkit import serving

    parsed = []  # the parser must never see a body that nests too deep
    monkeypatch.setattr(serving, "json", SimpleNamespace(loads=parsed.append), raising=False)
    response = client.post("/api/predict", content=body, headers=JSON_HEADERS)
    monkeypatch.undo()
    assert response.status_code == 400, response.text
    assert "levels deep, at most 8" in response.json()["error"] and not parsed
    assert client.post("/api/predict", json={"texts": ["still serving"]}).status_code == 200


def test_brackets_inside_strings_are_text_not_nesting(client):
    assert json_depth(b'{"texts": ["a"]}') == 2 and json_depth(b"") == 0 and json_depth(b'"[[["') == 0
    assert json_depth(b'[1, {"a": [2]}, []]') == 3
    texts = ["[[[[[[[[[[[[{{{{{{{{{{", 'say \\"[[[[[[[[[[[[[[[[[\\" and \\\\', ']]]]]]]]]] \\"[\\"']
    body = json.dumps({"texts": texts}).encode()
    assert json_depth(body) == 2
    response = client.post("/api/predict", content=body, headers=JSON_HEADERS)
    assert response.status_code == 200, response.text
    assert [r["text"] for r in response.json()["results"]] == texts


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; b=x"],
)
def test_posts_without_a_json_content_type_are_refused_with_415(client, content_type):
    """Issue 11, defect 6: a text/plain POST is a CORS "simple" request any web page can make to this server."""
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/api/predict", content=b'{"texts": ["hi"]}', headers=headers)
    assert response.status_code == 415, response.text
    assert "application/json" in response.json()["error"] and response.json()["status"] == 415
    for allowed in ("application/json", "application/json; charset=utf-8", "Application/JSON"):
        ok = client.post("/api/predict", content=b'{"texts": ["hi"]}', headers={"Content-Type": allowed})
        assert ok.status_code == 200, allowed


@contextmanager
def blocked_registry(clf, **limits):
    """A registry whose inference thread is held by a job until the context exits: every request has to queue."""
    busy = ModelRegistry([clf], ServingLimits(**limits))
    release, started = threading.Event(), threading.Event()
    forward = busy.worker._run

    def run(name: str, texts: list[str]) -> np.ndarray:
        if texts == ["hold the worker"]:
            started.set()
            release.wait(30)
        return forward(name, texts)

    busy.worker._run = run
    holder = busy.worker.submit(clf.name, ["hold the worker"])
    assert started.wait(10)
    try:
        yield busy, release
    finally:
        release.set()
        holder.result(30)
        busy.close()


def test_a_request_waits_for_a_turn_at_most_max_queue_wait_then_gets_503_with_retry_after(registry):
    """Issue 11, defect 7: under load, queued requests waited up to 48 s; now at most --max_queue_wait."""
    clf = registry.models["teacher"].clf
    with (
        blocked_registry(clf, max_queue_wait_s=0.3) as (busy, release),
        TestClient(app_module.create_app(busy), base_url=LOCAL_URL) as c,
    ):
        # If the wait were unbounded this request would only be answered when the worker is released: 200.
        timer = threading.Timer(8, release.set)
        timer.start()
        response = c.post("/api/predict", json={"texts": ["waiting"]})
        timer.cancel()
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "1"
        assert "waited 0.3 s" in response.json()["error"]
        # The refused request left the queue: it takes no place and costs no forward pass.
        assert busy.worker._pending_texts == 0 and not busy.worker._queue
    assert ServingLimits().max_queue_wait_s == 5.0 and ServingLimits(max_queue_wait_s=2.5).retry_after_s == 3
    with pytest.raises(UsageError, match="--max_queue_wait 0"):
        ServingLimits(max_queue_wait_s=0)


def test_requests_past_max_concurrent_requests_get_a_json_503_with_retry_after_at_once(registry):
    import httpx

    clf = registry.models["teacher"].clf
    with (
        blocked_registry(clf, max_queue_wait_s=30) as (busy, release),
        real_server(app_module.create_app(busy, guard=GuardLimits(max_concurrent_requests=2, max_per_client=8))) as url,
        ThreadPoolExecutor(max_workers=2) as pool,
    ):
        waiting = [
            pool.submit(httpx.post, f"{url}/api/predict", json={"texts": [f"waits {i}"]}, timeout=60) for i in range(2)
        ]
        deadline = time.time() + 20
        while busy.worker._pending_texts < 2:  # both requests are in the app, queued for the held worker
            assert time.time() < deadline
            time.sleep(0.02)
        refused = httpx.post(f"{url}/api/predict", json={"texts": ["one too many"]}, timeout=10)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "30"
        assert "2 requests in flight" in refused.json()["error"]
        health = httpx.get(f"{url}/healthz", timeout=10)  # never refused: it reports the saturation
        assert health.status_code == 200 and health.json()["status"] == "saturated"
        assert (health.json()["requests_in_flight"], health.json()["max_concurrent_requests"]) == (2, 2)
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.headers["Retry-After"] == "30"
        release.set()
        assert [f.result().status_code for f in waiting] == [200, 200]
        assert httpx.post(f"{url}/api/predict", json={"texts": ["free again"]}, timeout=30).status_code == 200


def test_a_full_queue_is_503_with_retry_after(registry):
    clf = registry.models["teacher"].clf
    with blocked_registry(clf, max_texts=2, max_pending_texts=2) as (busy, _):
        queued = busy.worker.submit(clf.name, ["a", "b"])
        with TestClient(app_module.create_app(busy), base_url=LOCAL_URL) as test_client:
            response = test_client.post("/api/predict", json={"texts": ["one more"]})
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert "texts are waiting" in response.json()["error"]
    assert queued.result(30).probs.shape == (2, 2)


def test_other_http_errors_are_json_too(client):
    missing = client.get("/api/nothing")
    assert missing.status_code == 404 and missing.json()["error"] == "Not Found"
    wrong_method = client.get("/api/predict")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_concurrent_requests_on_a_real_server_get_their_own_answers(registry):
    import httpx

    texts = [
        f"{w} {v}" for w in ("you idiot", "thanks for the edit", "moron", "good source") for v in ("a", "the page")
    ]
    with real_server(app_module.create_app(registry)) as url, httpx.Client(base_url=url, timeout=60) as http:
        expected = {t: http.post("/api/predict", json={"texts": [t]}).json()["results"][0] for t in texts}

        def ask(i: int) -> tuple[list[str], dict]:
            batch = [texts[(i + j) % len(texts)] for j in range(1 + i % 3)]
            return batch, http.post("/api/predict", json={"texts": batch}).json()

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(ask, range(48)))
        assert http.get("/healthz").status_code == 200
    for batch, body in answers:
        for text, result in zip(batch, body["results"]):
            assert result["text"] == text
            for got, want in zip(result["predictions"], expected[text]["predictions"]):
                assert got["label"] == want["label"]
                for label, p in want["probabilities"].items():
                    # alone vs merged with other requests into a padded batch: float32 rounding of default-
                    # initialised tiny models (|logits| < 1, so forward_atol's floor of 1 applies)
                    assert got["probabilities"][label] == pytest.approx(p, rel=0, abs=FORWARD_REL)


def test_inference_worker_merges_waiting_requests_per_model_and_survives_failures():
    release, calls = threading.Event(), []

    def run(model: str, texts: list[str]) -> np.ndarray:
        calls.append((model, list(texts)))
        if texts == ["block"]:
            release.wait(10)
        if "boom" in texts:
            raise ValueError("boom")
        return np.array([[len(t), 1.0] for t in texts])

    worker = InferenceWorker(run, max_batch_texts=4, max_pending_texts=8)
    try:
        worker.submit("a", ["block"])
        deadline = time.time() + 10
        while not calls:  # the worker is busy with "block" from here on
            assert time.time() < deadline
            time.sleep(0.01)
        b = worker.submit("a", ["bb", "ccc"])
        c = worker.submit("other", ["x"])
        gone = worker.submit("a", ["cancelled"])
        d = worker.submit("a", ["dddd", "e"])
        e = worker.submit("a", ["fffff"])
        assert gone.cancel()
        with pytest.raises(RequestError) as busy:  # 7 texts wait: 3 more would pass max_pending_texts
            worker.submit("a", ["1", "2"])
        assert busy.value.status == 503 and "server busy" in busy.value.message
        release.set()
        assert b.result(10).probs[:, 0].tolist() == [2, 3] and d.result(10).probs[:, 0].tolist() == [4, 1]
        assert b.result().batch_texts == d.result().batch_texts == 4  # merged: same model, fits in a batch
        assert c.result(10).batch_texts == 1 and e.result(10).batch_texts == 1
        assert calls[1:] == [("a", ["bb", "ccc", "dddd", "e"]), ("other", ["x"]), ("a", ["fffff"])]
        with pytest.raises(ValueError, match="boom"):
            worker.submit("a", ["boom"]).result(10)
        assert worker.submit("a", ["still working"]).result(10).probs.shape == (1, 2)
    finally:
        release.set()
        worker.close()


def test_label_names_only_rename_generic_labels(tmp_path, experiment_dir):
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_bert_config(num_layers=1)).save_pretrained(tmp_path / "generic")
    make_tokenizer(tmp_path / "generic")
    dirs = [str(tmp_path / "generic"), str(experiment_dir / "teacher"), str(experiment_dir / "emotions")]
    registry = ModelRegistry.from_dirs(dirs, ServingLimits(), label_names=["ok", "bad"])
    assert registry.models["generic"].labels == ["ok", "bad"]
    assert registry.models["emotions"].labels == EMOTIONS  # its own names win
    with pytest.raises(UsageError, match="3 names, but model generic has 2 classes"):
        ModelRegistry.from_dirs(dirs[:1], ServingLimits(), label_names=["a", "b", "c"])


def test_main_refuses_bad_arguments_with_one_line(capsys, experiment_dir):
    with pytest.raises(SystemExit) as exit_info:
        app_module.main([])
    assert exit_info.value.code == 2 and "nothing to serve" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        app_module.main(["--model_dirs", str(experiment_dir)])  # an experiment, not a model directory
    assert "not a model directory" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit):
            app_module.main(["--model_dirs", str(experiment_dir / "teacher"), "--port", str(port)])
    assert f"--port {port}: cannot bind" in capsys.readouterr().err


def test_load_script_against_a_real_server(registry, tmp_path, capsys):
    from bench import load_test

    out = tmp_path / "load"
    with real_server(app_module.create_app(registry)) as url:
        summary = load_test.main(
            ["--url", url, "--clients", "4", "--duration", "1.5", "--models", "teacher", "--output_dir", str(out)]
        )
        assert summary["requests"] > 0 and summary["errors"] == 0
        assert 0 < summary["p50_ms"] <= summary["p99_ms"]
        assert 0 <= summary["server_queue_p50_ms"] <= summary["server_queue_max_ms"] < summary["max_ms"]
        rows = (out / "requests.csv").read_text().splitlines()
        assert len(rows) == summary["requests"] + 1
        assert "p99_ms" in (out / "load_test.csv").read_text()
        with pytest.raises(SystemExit):  # its results are not overwritten without asking
            load_test.main(["--url", url, "--duration", "1", "--output_dir", str(out)])
        assert "already holds load_test.csv" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            load_test.main(["--url", url, "--models", "nope", "--duration", "1", "--output_dir", str(tmp_path / "x")])
        assert "--models nope: not served" in capsys.readouterr().err
    for bad, message in (
        (["--url", "http://example.com:80"], "only a server on this machine"),
        (["--clients", "0"], "--clients 0"),
    ):
        with pytest.raises(SystemExit):
            load_test.main(bad + ["--output_dir", str(tmp_path / "y")])
        assert message in capsys.readouterr().err


def test_load_script_counts_the_requests_the_server_shed(registry, tmp_path):
    """Issue 11, defect 7: the load script says how many requests were refused with 503, apart from errors."""
    from bench import load_test

    clf = registry.models["teacher"].clf
    with blocked_registry(clf, max_queue_wait_s=0.2) as (busy, _), real_server(app_module.create_app(busy)) as url:
        args = ["--url", url, "--clients", "3", "--duration", "1", "--output_dir", str(tmp_path / "load")]
        summary = load_test.main(args)
    with open(tmp_path / "load" / "requests.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    statuses = [row["status"] for row in rows]
    assert summary["requests"] == len(rows) > 0
    assert summary["shed"] == statuses.count("503") == len(rows)  # the worker never freed up: every one was shed
    assert summary["ok"] == 0 and summary["errors"] == 0 and summary["shed_pct"] == 100.0
    assert summary["shed_max_ms"] >= 200


def test_slow_client_script_counts_what_the_server_shed_and_probes_healthz(registry, tmp_path, capsys):
    """Issue 27, deliver 9: bench/slow_clients.py mixes normal and slow clients and reports the shed and /healthz."""
    from bench import slow_clients

    timing_out = app_module.create_app(registry, guard=GuardLimits(body_timeout_s=0.3))
    with real_server(timing_out) as url:
        args = ["--url", url, "--clients", "2", "--slow_clients", "3", "--duration", "2"]
        args += ["--slow_byte_interval", "0.05"]
        normal, slow = slow_clients.main(args + ["--output_dir", str(tmp_path / "a")])
    assert normal["ok"] == normal["requests"] > 0  # slots to spare: the slow bodies cost the others nothing
    assert slow["ok"] == 0 and slow["shed_408"] > 0 and slow["errors"] == 0  # each trickled body timed out
    assert normal["healthz_probes"] == normal["healthz_ok"] > 0 and normal["healthz_saturated_pct"] == 0
    with open(tmp_path / "a" / "healthz.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == normal["healthz_probes"]

    # Two slots, three slow clients: the slots stay held, the normal clients are shed and /healthz says so.
    # One address (loopback) fills the slots on purpose here: its per-client share is every connection.
    crowded = app_module.create_app(
        registry, guard=GuardLimits(max_concurrent_requests=2, body_timeout_s=1, max_per_client=8)
    )
    with real_server(crowded) as url:
        args = ["--url", url, "--clients", "2", "--slow_clients", "3", "--duration", "1.5"]
        normal, slow = slow_clients.main(args + ["--output_dir", str(tmp_path / "b")])
    assert normal["shed_503"] > 0 and slow["shed_503"] > 0
    assert normal["healthz_ok"] > 0 and normal["healthz_saturated_pct"] > 0
    assert "shed_pct" in capsys.readouterr().out

    for bad, message in (
        (["--url", "http://example.com:80"], "a server on this machine"),
        (["--clients", "0", "--slow_clients", "0"], "nothing to run"),
        (["--model_dir", str(tmp_path / "none")], "not a directory"),
    ):
        with pytest.raises(SystemExit):
            slow_clients.main(bad + ["--output_dir", str(tmp_path / "c")])
        assert message in capsys.readouterr().err


def test_burst_memory_script_reads_the_servers_rss_before_at_the_peak_and_after(tmp_path, capsys):
    """Issue 27: bench/burst_memory.py measures the started server's memory around a burst (figures not asserted)."""
    from bench import burst_memory

    args = ["--large_clients", "2", "--large_body_mib", "0.25", "--slow_clients", "2", "--duration", "2"]
    args += ["--body_timeout", "1", "--settle", "0", "--warmup_requests", "2", "--output_dir", str(tmp_path / "m")]
    rows = burst_memory.main(args)
    assert [r["phase"] for r in rows] == ["before", "burst peak", "after"]
    assert all(r["rss_mib"] > 0 for r in rows) and rows[0]["ratio_to_before"] == 1.0
    assert rows[1]["rss_mib"] >= rows[0]["rss_mib"]  # the peak is the largest sample, 'before' among them
    assert rows[-1]["ordinary_requests_ok_after"] == 5  # the server still answers after the burst
    assert "408: 4" in rows[0]["burst_answers"]  # every body left unfinished is cut at --body_timeout
    with open(tmp_path / "m" / "rss.csv", newline="") as f:
        assert {r["phase"] for r in csv.DictReader(f)} >= {"before", "burst", "after"}
    assert "ratio_to_before" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        burst_memory.main(["--large_clients", "0", "--slow_clients", "0", "--output_dir", str(tmp_path / "n")])
    assert "nothing to run" in capsys.readouterr().err
