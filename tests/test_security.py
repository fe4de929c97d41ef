"""Issue 27: a server and model loading that cannot be fooled. One test per defect found by trying the app and the
loaders as an attacker and a careless user would; docs/security.md maps each threat to its test here."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from html.parser import HTMLParser
from pathlib import Path

import httpx
import onnx
import pandas as pd
import pytest
import torch
from conftest import FILLER, LOCAL_URL, NEUTRAL_WORDS, REPO, SPECIAL, TOXIC_WORDS, make_tokenizer
from fastapi.testclient import TestClient
from transformers import AutoTokenizer, BertForSequenceClassification, BertTokenizer

import app as app_module
import run_eval
import run_export
from distillkit.cli import UsageError
from distillkit.runtime import load_classifier_dir
from distillkit.records import RunRecord
from distillkit.serving import ModelRegistry, ServingLimits
from test_app import real_server

# An unterminated string of \" pairs: the old regex that stripped strings was quadratic on it (32 KB took 9.8 s).
ADVERSARIAL_BODY_SCRIPT = textwrap.dedent(
    """
    import time
    from distillkit.serving import RequestError, parse_json_body
    body = b'{"texts": ["' + b'\\\\"' * (2**20 // 2)
    assert len(body) > 2**20
    start = time.process_time()
    try:
        parse_json_body(body, 8)
    except RequestError as err:
        print(err.status, time.process_time() - start)
    """
)


def test_a_1mb_adversarial_body_is_refused_in_well_under_a_second():
    """Defect: `json_depth` ran a backtracking regex over the raw body; 1 MB of `\\"` took hours, on the event loop.

    Run in a subprocess so that the old, quadratic code fails by timeout instead of freezing the test run.
    """
    done = subprocess.run(
        [sys.executable, "-c", ADVERSARIAL_BODY_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr[-2000:]
    status, cpu_s = done.stdout.split()
    assert status == "400"
    # Linear: ~0.02 s here; the bound leaves room for a loaded machine and still fails the quadratic scan by hours.
    assert float(cpu_s) < 1.0, cpu_s


def tokenizer_fingerprint(tokenizer):
    from distillkit.integrity import tokenizer_fingerprint as fingerprint  # not on old main: fails that test alone

    return fingerprint(tokenizer)


def check_thresholds(value, source):
    from distillkit.integrity import check_thresholds as check

    return check(value, source)


# --- model directories that must not load -------------------------------------------------------------------------

FAST_EVAL = ["--max_seq_length", "32", "--latency_runs", "50", "--throughput_texts", "32", "--num_threads", "1"]
FAST_EVAL += ["--bootstrap_samples", "20"]


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def edit_config(directory: Path, **values) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(values)
    (directory / "config.json").write_text(json.dumps(config))


def nan_model(source: Path, target: Path) -> Path:
    """A copy whose classifier has one NaN weight: every probability it gives is NaN."""
    model = BertForSequenceClassification.from_pretrained(source)
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    model.save_pretrained(target)
    make_tokenizer(target)
    return target


@pytest.fixture()
def no_serving(monkeypatch):
    """app.main must refuse before it serves: reaching uvicorn.run is a failure (instead of a server that blocks)."""

    def refuse(*args, **kwargs):
        raise AssertionError("app.py started serving a model it should have refused")

    monkeypatch.setattr(app_module.uvicorn, "run", refuse)


def app_error(capsys, *argv: str) -> str:
    """app.main's one `error:` line (exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        app_module.main(["--port", "0", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    return errors[0]


def test_a_model_dir_without_tokenizer_files_is_refused_by_app_eval_and_export(
    tmp_path, capsys, no_serving, tiny_classifier_dir, tiny_data_dir
):
    """Defect: AutoTokenizer built a 5-token vocabulary (every word [UNK]) and every reader used it silently."""
    model = copy_model(tiny_classifier_dir, tmp_path / "model")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)

    assert "no tokenizer files" in app_error(capsys, "--model_dirs", str(model))

    with pytest.raises(SystemExit) as exit_info:
        run_eval.main(
            ["--model_dirs", str(model), "--dataset_name", str(tiny_data_dir), "--output_dir", str(tmp_path / "r")]
            + FAST_EVAL
        )
    assert exit_info.value.code != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no tokenizer files" in errors[0] and str(model) in errors[0]
    assert not (tmp_path / "r" / "results.csv").exists()

    with pytest.raises(SystemExit) as exit_info:
        run_export.main(["--model_dir", str(model), "--output_dir", str(tmp_path / "onnx")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no tokenizer files" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "onnx" / "model.onnx").exists()


def test_a_tokenizer_other_than_the_trained_one_is_refused(tmp_path, tiny_classifier_dir):
    """The fingerprint in run_record.json (vocab size, special ids, vocabulary hash) must match the files."""
    model = copy_model(tiny_classifier_dir, tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(model)
    record = RunRecord(method="teacher", label_names=["non-toxic", "toxic"])
    record.tokenizer = tokenizer_fingerprint(tokenizer)
    record.save(model)
    assert load_classifier_dir(str(model)).name == "model"  # the trained tokenizer loads
    # Same size, same special ids, two words swapped: every id of those words now means the other one.
    vocab = SPECIAL + TOXIC_WORDS + NEUTRAL_WORDS + FILLER
    i, j = vocab.index("idiot"), vocab.index("thanks")
    vocab[i], vocab[j] = vocab[j], vocab[i]
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink()
    BertTokenizer(vocab={w: k for k, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(model)
    with pytest.raises(UsageError, match="not the one the model was trained with: vocab_sha256"):
        load_classifier_dir(str(model))


# --- integrity: checksums, labels, outputs --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_classifier_dir) -> Path:
    base = tmp_path_factory.mktemp("export")
    source = copy_model(tiny_classifier_dir, base / "teacher")
    RunRecord(method="teacher", label_names=["non-toxic", "toxic"]).save(source)  # from before fingerprints
    out = base / "onnx"
    run_export.main(["--model_dir", str(source), "--output_dir", str(out), "--quantize", "int8"])
    return out


def test_the_export_records_checksums_and_the_tokenizer_and_loaders_verify_them(tmp_path, exported, capsys, no_serving):
    record = json.loads((exported / "onnx_export.json").read_text())
    assert {"model.onnx", "model-int8.onnx", "config.json", "tokenizer.json"} <= set(record["sha256"])
    assert record["tokenizer"]["vocab_size"] == len(SPECIAL + TOXIC_WORDS + NEUTRAL_WORDS + FILLER)
    meta = onnx.load(str(exported / "model.onnx"), load_external_data=False).metadata_props
    assert json.loads({p.key: p.value for p in meta}["distillkit.tokenizer"]) == record["tokenizer"]
    assert json.loads((exported / "run_record.json").read_text())["tokenizer"] == record["tokenizer"]

    changed = copy_model(exported, tmp_path / "changed")
    data = bytearray((changed / "model.onnx").read_bytes())
    data[-100] ^= 1  # one bit of one weight
    (changed / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(UsageError, match="model.onnx: SHA-256 differs"):
        load_classifier_dir(str(changed))


def test_a_truncated_model_onnx_is_one_error_line_and_a_broken_int8_does_not_stop_fp32(
    tmp_path, exported, capsys, no_serving
):
    """Defect: a truncated model.onnx raised a traceback; a broken int8 twin also stopped the healthy fp32 model."""
    old = copy_model(exported, tmp_path / "old")  # an export from before checksums: only onnxruntime can tell
    record = json.loads((old / "onnx_export.json").read_text())
    record.pop("sha256")
    (old / "onnx_export.json").write_text(json.dumps(record))
    (old / "model-int8.onnx").write_bytes((old / "model-int8.onnx").read_bytes()[:5000])
    registry = ModelRegistry.from_dirs([str(old)], ServingLimits())
    try:
        assert registry.names == ["old"]  # fp32 served, int8 left out
    finally:
        registry.close()
    err = capsys.readouterr().err
    assert "error: " in err and "model-int8.onnx: not a loadable ONNX model" in err

    (old / "model.onnx").write_bytes((old / "model.onnx").read_bytes()[:5000])
    line = app_error(capsys, "--model_dirs", str(old))
    assert "model.onnx: not a loadable ONNX model" in line


def test_labels_that_disagree_across_files_are_refused(tmp_path, tiny_classifier_dir, exported, capsys, no_serving):
    """Defects: id2label swapped in config.json flipped every answer; a 3-label config on a 2-logit model was served;
    duplicate names collapsed `probabilities` to one key; a 1-label config crashed start-up with a traceback."""
    swapped = copy_model(tiny_classifier_dir, tmp_path / "swapped")
    RunRecord(method="teacher", label_names=["non-toxic", "toxic"]).save(swapped)
    edit_config(swapped, id2label={"0": "toxic", "1": "non-toxic"}, label2id={"toxic": 0, "non-toxic": 1})
    assert "disagrees with run_record.json's label_names" in app_error(capsys, "--model_dirs", str(swapped))

    duplicate = copy_model(tiny_classifier_dir, tmp_path / "duplicate")
    edit_config(duplicate, id2label={"0": "toxic", "1": "toxic"}, label2id={"toxic": 1})
    assert "label name(s) toxic used for more than one id" in app_error(capsys, "--model_dirs", str(duplicate))

    three = copy_model(exported, tmp_path / "three")
    record = json.loads((three / "onnx_export.json").read_text())
    record.pop("sha256")  # else the changed config.json is refused by its checksum before its labels are read
    (three / "onnx_export.json").write_text(json.dumps(record))
    (three / "model-int8.onnx").unlink()
    (three / "run_record.json").unlink(missing_ok=True)
    edit_config(three, id2label={"0": "a", "1": "b", "2": "c"}, label2id={"a": 0, "b": 1, "c": 2})
    assert "lists 3 labels but the model outputs 2 logits" in app_error(capsys, "--model_dirs", str(three))

    one = copy_model(tiny_classifier_dir, tmp_path / "one")
    edit_config(one, id2label={"0": "toxic"}, label2id={"toxic": 0})
    line = app_error(capsys, "--model_dirs", str(one))
    assert "config.json" in line and "at least 2 classes" in line


def test_a_model_with_non_finite_outputs_is_refused_at_warm_up(tmp_path, tiny_classifier_dir, capsys, no_serving):
    """Defect: an export with a NaN weight answered "non-toxic" with probability null for every text."""
    broken = nan_model(tiny_classifier_dir, tmp_path / "nan")
    assert "non-finite logits" in app_error(capsys, "--model_dirs", str(broken))
    zeroed = copy_model(tiny_classifier_dir, tmp_path / "zeroed")
    model = BertForSequenceClassification.from_pretrained(zeroed)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    model.save_pretrained(zeroed)
    assert "the same for every text" in app_error(capsys, "--model_dirs", str(zeroed))


def test_a_non_finite_output_at_request_time_is_an_error_for_that_request(tmp_path, tiny_classifier_dir):
    registry = ModelRegistry.from_dirs([str(tiny_classifier_dir)], ServingLimits())
    try:
        with TestClient(app_module.create_app(registry), base_url=LOCAL_URL) as client:
            assert client.post("/api/predict", json={"texts": ["you idiot"]}).status_code == 200
            with torch.no_grad():  # the weights go bad after start-up (memory corruption, a bad hot swap)
                registry.models[registry.names[0]].clf.model.classifier.bias.fill_(float("nan"))
            response = client.post("/api/predict", json={"texts": ["you idiot"]})
            assert response.status_code == 500, response.text
            assert "non-finite outputs" in response.json()["error"] and "label" not in response.json()
    finally:
        registry.close()


def test_run_eval_reports_a_broken_model_and_still_writes_the_healthy_ones(
    tmp_path, capsys, tiny_classifier_dir, tiny_data_dir
):
    """Defect: run_eval.py crashed with a traceback on a NaN model and wrote nothing for the healthy ones."""
    exp = tmp_path / "exp"
    copy_model(tiny_classifier_dir, exp / "healthy")
    nan_model(tiny_classifier_dir, exp / "broken")
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exit_info:
        run_eval.main(
            ["--experiment_dir", str(exp), "--dataset_name", str(tiny_data_dir), "--output_dir", str(out)] + FAST_EVAL
        )
    assert exit_info.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken" in errors[0] and "non-finite" in errors[0]
    results = pd.read_csv(out / "results.csv")
    assert list(results["model"]) == ["healthy"]
    assert list(pd.read_csv(out / "broken_models.csv")["model"]) == ["broken"]


# --- decision thresholds --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("thresholds", [[2.0], [-1.0], [float("nan")], ["0.5"], [None], 0.5])
def test_decision_thresholds_outside_0_1_are_one_error_line(tmp_path, tiny_classifier_dir, capsys, no_serving, thresholds):
    """Defect: 2.0, -1.0 and NaN were accepted (NaN shown as argmax); "0.5" or null crashed start-up."""
    model = copy_model(tiny_classifier_dir, tmp_path / "model")
    edit_config(model, decision_thresholds=thresholds)
    line = app_error(capsys, "--model_dirs", str(model))
    assert "decision_thresholds" in line and "config.json" in line
    with pytest.raises(UsageError, match="decision_thresholds"):
        check_thresholds(thresholds, "config.json")
    assert check_thresholds([0.0, 0.25, 1], "config.json") == [0.0, 0.25, 1.0]


# --- --overwrite_output_dir -----------------------------------------------------------------------------------------


def test_overwrite_output_dir_replaces_the_directory_never_merges(tmp_path, tiny_classifier_dir, exported, monkeypatch):
    """Defect: run_export.py --overwrite_output_dir wrote into the old directory: the old model's model.safetensors and
    trainer_state.json stayed beside the new export (and a stale int8 twin beside a new fp32-only one)."""
    from distillkit import export

    out = copy_model(tiny_classifier_dir, tmp_path / "out")  # another model's directory, as a training run leaves it
    (out / "trainer_state.json").write_text("{}")
    run_export.main(["--model_dir", str(tiny_classifier_dir), "--output_dir", str(out), "--overwrite_output_dir", "true"])
    files = set(os.listdir(out))
    assert {"model.onnx", "onnx_export.json", "config.json"} <= files
    assert not files & {"model.safetensors", "trainer_state.json"}, files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind

    twin = copy_model(exported, tmp_path / "twin")  # fp32 + int8; replaced by an fp32-only export
    run_export.main(["--model_dir", str(tiny_classifier_dir), "--output_dir", str(twin), "--overwrite_output_dir", "true"])
    assert "model-int8.onnx" not in os.listdir(twin)
    assert set(os.listdir(twin)) == files

    # A failed export replaces nothing: the old export is still whole and still loads.
    before = {p.name: p.read_bytes() for p in exported.iterdir() if p.is_file()}
    kept = copy_model(exported, tmp_path / "kept")
    monkeypatch.setattr(export, "logits_difference", lambda *a, **k: 0.5)
    with pytest.raises(SystemExit) as exit_info:
        run_export.main(["--model_dir", str(tiny_classifier_dir), "--output_dir", str(kept), "--overwrite_output_dir", "true"])
    assert exit_info.value.code == 1
    assert {p.name: p.read_bytes() for p in kept.iterdir() if p.is_file()} == before
    assert load_classifier_dir(str(kept)).runtime == "onnxruntime-fp32"


def test_overwrite_output_dir_never_replaces_a_folder_that_holds_no_model(tmp_path, tiny_classifier_dir, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        run_export.main(["--model_dir", str(tiny_classifier_dir), "--output_dir", str(folder), "--overwrite_output_dir", "true"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds files but no model" in err and len(err.strip().splitlines()) == 1
    assert os.listdir(folder) == ["keep.txt"]


# --- start-up failures: one `error:` line naming the file -------------------------------------------------------------


def one_error_line(capsys, main, argv: list[str], code: int = 2) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    return errors[0]


@pytest.mark.parametrize("thresholds", [["0.5"], [None], [float("nan")], [1.5]])
def test_bad_decision_thresholds_are_one_error_line_in_every_reader(
    tmp_path, tiny_classifier_dir, tiny_data_dir, capsys, thresholds
):
    """Deliver 4: the rule's thresholds are finite numbers in [0, 1] in run_eval.py, run_export.py and the card too
    (app.py: test_decision_thresholds_outside_0_1_are_one_error_line)."""
    from distillkit.model_card import write_model_card

    model = copy_model(tiny_classifier_dir, tmp_path / "model")
    edit_config(model, decision_thresholds=thresholds)
    line = one_error_line(
        capsys,
        run_eval.main,
        ["--model_dirs", str(model), "--dataset_name", str(tiny_data_dir), "--output_dir", str(tmp_path / "r")]
        + FAST_EVAL,
        code=1,  # reported as a broken model (run_eval.py's exit status for those)
    )
    assert "decision_thresholds" in line and str(model) in line
    line = one_error_line(capsys, run_export.main, ["--model_dir", str(model), "--output_dir", str(tmp_path / "onnx")])
    assert "decision_thresholds" in line and str(model) in line and not (tmp_path / "onnx").exists()
    with pytest.raises(UsageError, match="decision_thresholds"):
        write_model_card(str(model))


def test_a_predictions_csv_with_an_empty_probability_cell_is_one_error_line(
    tmp_path, tiny_classifier_dir, capsys, no_serving
):
    """Defect: an empty prob_ cell in a predictions file stopped app.py with a numpy traceback."""
    predictions = tmp_path / "report" / "predictions"
    predictions.mkdir(parents=True)
    rows = pd.DataFrame(
        {"text": ["you idiot", "thanks"], "label": [1, 0], "pred": [1, 0], "prob_0": [0.2, 0.9], "prob_1": [0.8, 0.1]}
    )
    rows.to_csv(predictions / "teacher.csv", index=False)
    text = (predictions / "teacher.csv").read_text().replace(",0.9,", ",,")  # line 3's prob_0 left empty
    (predictions / "teacher.csv").write_text(text)
    line = app_error(capsys, "--report_dir", str(tmp_path / "report"), "--model_dirs", str(tiny_classifier_dir))
    assert "teacher.csv: line 3, column prob_0" in line


# --- slow and huge clients (deliver 1) -----------------------------------------------------------------------------

SMALL_LIMITS = ServingLimits(max_texts=2, max_text_chars=10)  # one body is at most 65,808 bytes


@pytest.fixture(scope="module")
def registry(tiny_classifier_dir):
    served = ModelRegistry.from_dirs([str(tiny_classifier_dir)], SMALL_LIMITS)
    yield served
    served.close()


def open_request(url: str, head: bytes, source: str | None = None) -> socket.socket:
    """A raw connection that has sent `head` (a request, or part of one) and keeps the rest back, as a slow client;
    `source`: the loopback address it connects from (the server sees it as the client's address)."""
    host, port = url.removeprefix("http://").split(":")
    address = (source, 0) if source else None
    sock = socket.create_connection((host, int(port)), timeout=30, source_address=address)  # no answer fails the read
    sock.sendall(head)
    return sock


def post_head(content_length: int, body_start: bytes = b'{"texts": [') -> bytes:
    head = "POST /api/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    return (head + f"Content-Length: {content_length}\r\n\r\n").encode() + body_start


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the one answer on `sock`, read until the server closes it."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def wait_for_health(url: str, **expected) -> dict:
    """/healthz once it reports `expected` (the server has taken in the slow clients' connections and bodies)."""
    deadline = time.time() + 30
    while True:
        health = httpx.get(f"{url}/healthz", timeout=10).json()
        if all(health[key] == value for key, value in expected.items()):
            return health
        assert time.time() < deadline, health
        time.sleep(0.05)


def test_a_slow_body_holds_a_slot_for_seconds_not_minutes_and_healthz_reports_it(registry):
    """Defect: 200 POSTs that announced 1 MB and sent 10 bytes held every slot for 60 s while /healthz said ok."""
    from distillkit.server_guard import GuardLimits

    guard = GuardLimits(max_concurrent_requests=2, body_timeout_s=1.0, max_per_client=8)  # one address fills them
    with real_server(app_module.create_app(registry, guard=guard)) as url:
        slow = [open_request(url, post_head(60_000)) for _ in range(2)]
        health = wait_for_health(url, requests_in_flight=2)
        assert health["status"] == "saturated" and health["max_concurrent_requests"] == 2
        assert health["body_bytes_in_flight"] == 120_000  # announced lengths count before the bytes come
        refused = httpx.post(f"{url}/api/predict", json={"texts": ["one too many"]}, timeout=10)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5", refused.text
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.headers["Retry-After"] == "5"
        for sock in slow:  # the old server kept waiting for the bodies: the read timed out after 30 s
            status, headers, body = read_response(sock)
            assert status == 408 and "--body_timeout" in json.loads(body)["error"]
            assert headers["connection"] == "close"
        health = wait_for_health(url, requests_in_flight=0)
        assert health["status"] == "ok" and health["body_bytes_in_flight"] == 0
        assert httpx.post(f"{url}/api/predict", json={"texts": ["free"]}, timeout=30).status_code == 200


def test_request_bodies_in_flight_are_capped_and_refused_with_503_and_retry_after(registry, capsys, no_serving):
    """Defect: 100 bodies one byte short of 15 MB raised the server from 0.9 GB to 2.8 GB."""
    from distillkit.server_guard import GuardLimits, ServerLoad

    largest = SMALL_LIMITS.max_body_bytes
    guard = GuardLimits(max_body_bytes_in_flight=largest + 30_000, body_timeout_s=60)
    with real_server(app_module.create_app(registry, guard=guard)) as url:
        held = open_request(url, post_head(largest))  # the largest body allowed, sent slowly
        wait_for_health(url, body_bytes_in_flight=largest)
        small = httpx.post(f"{url}/api/predict", json={"texts": ["fits"]}, timeout=30)
        assert small.status_code == 200, small.text
        status, headers, body = read_response(open_request(url, post_head(40_000)))
        assert status == 503 and headers["retry-after"] == "5", body
        assert "MiB of request bodies in flight" in json.loads(body)["error"]
        assert httpx.get(f"{url}/healthz", timeout=10).json()["shed"]["body_bytes"] == 1
        held.close()  # its reservation goes with it
        wait_for_health(url, body_bytes_in_flight=0, requests_in_flight=0)
    # A body without Content-Length (chunked) is counted as its bytes arrive.
    app = app_module.create_app(registry, guard=guard)
    app.state.load.reserve_body_bytes(largest)  # as if a big body were in flight
    chunks = (b'{"texts": ["' + b"a" * 10_000 for _ in range(4))
    with TestClient(app, base_url=LOCAL_URL) as client:
        response = client.post("/api/predict", content=chunks, headers={"Content-Type": "application/json"})
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert app.state.load.body_bytes_in_flight == largest  # what the refused request reserved is released
    with pytest.raises(UsageError, match="must hold one largest request"):
        ServerLoad(GuardLimits(max_body_bytes_in_flight=largest - 1), largest)
    line = app_error(capsys, "--model_dirs", "unused", "--max_body_mib_in_flight", "1")
    assert "--max_body_mib_in_flight 1: must hold one largest request (14.7 MiB" in line


def test_unfinished_headers_and_idle_connections_are_closed_after_header_timeout(registry):
    """Defect: 810 idle connections or unfinished headers held the server's connection slots for as long as they
    liked (uvicorn has no header deadline)."""
    from distillkit.server_guard import GuardLimits

    with real_server(app_module.create_app(registry, guard=GuardLimits(header_timeout_s=1.0))) as url:
        unfinished = open_request(url, b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\n")
        idle = open_request(url, b"")
        status, headers, body = read_response(unfinished)  # the old server never answered: timed out after 30 s
        assert status == 408 and "--header_timeout" in json.loads(body)["error"]
        assert headers["x-content-type-options"] == "nosniff"
        assert idle.recv(1) == b""  # closed without a word: it never asked for anything
        idle.close()
        assert httpx.get(f"{url}/healthz", timeout=10).json()["connections"] == 1  # this request's own


def test_connections_past_max_connections_get_a_json_503_with_retry_after(registry):
    """Defect: past uvicorn's limit_concurrency a request got a bare text 503 without Retry-After."""
    from distillkit.server_guard import GuardLimits

    guard = GuardLimits(max_connections=2, header_timeout_s=60)
    with real_server(app_module.create_app(registry, guard=guard)) as url:
        idle = [open_request(url, b"") for _ in range(2)]
        status, headers, body = read_response(open_request(url, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"))
        assert status == 503 and headers["retry-after"] == "5" and headers["content-type"] == "application/json"
        assert "2 connections open (--max_connections)" in json.loads(body)["error"]
        assert headers["x-frame-options"] == "DENY"
        for sock in idle:
            sock.close()
        wait_for_health(url, connections=1)


def test_one_client_address_gets_at_most_max_per_client_slots_and_another_is_still_served(registry):
    """Gap: one address reconnecting slow clients could take every connection and request slot, so everyone else got
    503s for as long as it went on. Now an address holds at most --max_per_client connections (the peer's IP, at the
    protocol) and requests in flight (the ASGI scope's client); past that it alone gets a JSON 503 with Retry-After."""
    from distillkit.server_guard import GuardLimits

    greedy = "127.0.0.2"  # Linux routes all of 127/8 to loopback: a second client address on this machine
    try:
        socket.create_connection(("127.0.0.1", 9), timeout=1, source_address=(greedy, 0)).close()
    except ConnectionRefusedError:
        pass  # nothing listens on port 9: the source address itself was usable
    except OSError as err:
        pytest.skip(f"cannot connect from {greedy} on this machine ({err}); the ASGI half below still runs")

    guard = GuardLimits(max_concurrent_requests=8, max_per_client=2, body_timeout_s=60, header_timeout_s=60)
    with real_server(app_module.create_app(registry, guard=guard)) as url:
        slow = [open_request(url, post_head(1000), source=greedy) for _ in range(2)]  # its share: 2 slow bodies
        wait_for_health(url, requests_in_flight=2, busiest_client_connections=2)
        third = b"GET /api/models HTTP/1.1\r\nHost: localhost\r\n\r\n"
        status, headers, body = read_response(open_request(url, third, source=greedy))
        assert status == 503 and headers["retry-after"] == "5" and headers["content-type"] == "application/json"
        assert "2 connections open from your address (--max_per_client)" in json.loads(body)["error"]
        assert headers["x-content-type-options"] == "nosniff"
        # 127.0.0.1 is another address: served while 127.0.0.2 is at its cap, and the server is not saturated.
        assert httpx.post(f"{url}/api/predict", json={"texts": ["served"]}, timeout=30).status_code == 200
        health = httpx.get(f"{url}/healthz", timeout=10).json()
        assert health["status"] == "ok" and health["max_per_client"] == 2 and health["shed"]["per_client"] == 1
        for sock in slow:
            sock.close()
        wait_for_health(url, requests_in_flight=0, busiest_client_connections=1)  # the probe's own connection
        body = b'{"texts": ["back"]}'
        request = post_head(len(body), body).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
        status, _, answer = read_response(open_request(url, request, source=greedy))
        assert status == 200, answer  # its slots are free again

    # The request-level count reads the ASGI scope's client (what TestClient sets; uvicorn puts the peer there).
    app = app_module.create_app(registry, guard=GuardLimits(max_per_client=1))
    app.state.load.requests_by_client["203.0.113.7"] = 1  # as if that address had one request in the app
    with TestClient(app, base_url=LOCAL_URL, client=("203.0.113.7", 40000)) as client:
        refused = client.post("/api/predict", json={"texts": ["hi"]})
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5", refused.text
        assert "1 requests in flight from your address (--max_per_client)" in refused.json()["error"]
        assert client.get("/healthz").status_code == 200  # never refused: it reports the load
    with TestClient(app, base_url=LOCAL_URL, client=("198.51.100.1", 40000)) as client:
        assert client.post("/api/predict", json={"texts": ["hi"]}).status_code == 200
    assert app.state.load.requests_by_client == {"203.0.113.7": 1}  # the served request's count went with it
    default = GuardLimits(max_concurrent_requests=200)
    assert default.per_client_limit == 100  # one address never holds more than half the request slots
    assert app_module.ServeArguments(model_dirs=["m"], max_per_client=3).guard.per_client_limit == 3
    with pytest.raises(UsageError, match="--max_per_client 0: must be at least 1"):
        GuardLimits(max_per_client=0)


def test_every_503_carries_retry_after_even_at_shutdown(registry):
    """Defect: some 503s (uvicorn's, the shutting-down one) said nothing of when to retry."""
    stopping = ModelRegistry([registry.models[registry.names[0]].clf], SMALL_LIMITS)
    stopping.close()
    with TestClient(app_module.create_app(stopping), base_url=LOCAL_URL) as client:
        response = client.post("/api/predict", json={"texts": ["hi"]})
    assert response.status_code == 503 and response.headers["Retry-After"] == "5", response.text
    assert "shutting down" in response.json()["error"]


# --- Host allow-list, security headers, no CDN (deliver 7) ---------------------------------------------------------


LOOPBACK = ("localhost", "127.0.0.1", "::1")


def test_a_host_outside_the_allow_list_is_refused_with_400(registry):
    """Defect: any Host was served, so a DNS-rebinding page (evil.example resolving to 127.0.0.1) was same-origin
    with the API, which defeats the JSON-only Content-Type defence."""
    app = app_module.create_app(registry)
    for url in ("http://evil.example", "http://evil.example:8000", "http://127.0.0.1.evil.example", "http://0.0.0.0"):
        with TestClient(app, base_url=url) as client:
            for response in (client.get("/api/models"), client.post("/api/predict", json={"texts": ["hi"]})):
                assert response.status_code == 400, (url, response.text)
                assert "is not served here" in response.json()["error"] and "--allowed_hosts" in response.json()["error"]
    for url in ("http://localhost", "http://127.0.0.1:8000", "http://[::1]:8000", "http://LOCALHOST."):
        with TestClient(app, base_url=url) as client:
            assert client.post("/api/predict", json={"texts": ["hi"]}).status_code == 200, url
    from distillkit.server_guard import GuardLimits  # after the checks that old main fails by behaviour

    wider = app_module.create_app(registry, guard=GuardLimits(allowed_hosts=("localhost", "box.lan")))
    with TestClient(wider, base_url="http://box.lan:8000") as client:
        assert client.get("/api/models").status_code == 200
    # app.py: loopback names, then --allowed_hosts, then the one address --host binds.
    args = app_module.ServeArguments(model_dirs=["m"], host="192.168.1.5", allowed_hosts=["box.lan"])
    assert args.guard.allowed_hosts == ("localhost", "127.0.0.1", "::1", "box.lan", "192.168.1.5")
    assert app_module.ServeArguments(model_dirs=["m"], host="0.0.0.0").guard.allowed_hosts == LOOPBACK


SECURITY_HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY"}


def test_every_response_carries_the_security_headers(registry):
    """Defect: no X-Content-Type-Options, framing or Content-Security-Policy header on any response."""
    app = app_module.create_app(registry)
    with TestClient(app, base_url=LOCAL_URL) as client:
        responses = {
            "page": client.get("/"),
            "script": client.get("/static/app.js"),
            "api": client.get("/api/models"),
            "health": client.get("/healthz"),
            "404": client.get("/api/nothing"),
            "415": client.post("/api/predict", content=b'{"texts": ["hi"]}'),
        }
    for name, response in responses.items():  # old main: none of them
        assert response.headers.get("x-content-type-options") == "nosniff", name
    with TestClient(app, base_url="http://evil.example") as client:
        responses["bad host"] = client.get("/")
    from distillkit.server_guard import GuardLimits

    busy = app_module.create_app(registry, guard=GuardLimits(max_concurrent_requests=1))
    busy.state.load.requests_in_flight = 1  # as if one request were in the app
    with TestClient(busy, base_url=LOCAL_URL) as client:
        responses["503"] = client.get("/api/models")
    assert [r.status_code for r in responses.values()] == [200, 200, 200, 200, 404, 415, 400, 503]
    for name, response in responses.items():
        for header, value in SECURITY_HEADERS.items():
            assert response.headers.get(header) == value, (name, header)
        policy = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy, name
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy and "http" not in policy, name


class PageAudit(HTMLParser):
    """What in a page a CSP without 'unsafe-inline' would block: inline scripts, <style>, style= and on*= attributes."""

    def __init__(self):
        super().__init__()
        self.inline, self.script_srcs, self._in_script = [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self._in_script = True
            self.script_srcs.append(attrs.get("src"))
        if tag == "style":
            self.inline.append("<style>")
        self.inline += [f"<{tag} {name}=>" for name in attrs if name == "style" or name.startswith("on")]

    def handle_endtag(self, tag):
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline.append(f"inline script {data.strip()[:40]}")


def test_the_page_passes_its_own_content_security_policy_and_nothing_comes_from_the_network(registry):
    """Defect: /docs loaded Swagger UI from a CDN although the README says nothing on the page comes from the
    network. The page itself must run under `script-src 'self'; style-src 'self'` (no inline code)."""
    with TestClient(app_module.create_app(registry), base_url=LOCAL_URL) as client:
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            assert client.get(path).status_code == 404, path
        assert client.get("/openapi.json").json()["paths"]["/api/predict"]  # the schema stays, as plain JSON
        page = client.get("/")
        audit = PageAudit()
        audit.feed(page.text)
        assert not audit.inline, audit.inline
        assert audit.script_srcs and all(src and src.startswith("/static/") for src in audit.script_srcs)
        served = {"/": page.text}
        for src in [*audit.script_srcs, "/static/style.css"]:
            served[src] = client.get(src).text
    script = served["/static/app.js"]
    # Styles set through the CSSOM (node.style) pass a CSP; a style attribute or HTML built from strings does not.
    for blocked in ('setAttribute("style"', "innerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function("):
        assert blocked not in script, blocked
    for path, text in served.items():  # no other origin: the one URL is SVG's namespace name, never fetched
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.\w+[^\s\"'`)]*", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (path, urls)


# --- the explorer's class names (deliver 5) ------------------------------------------------------------------------


def write_predictions(folder: Path, name: str, names: list[str], gold: list[str], pred: list[str]) -> None:
    """A run_eval.py-style predictions file of a model whose class ids are `names` in that order."""
    ids = {n: i for i, n in enumerate(names)}
    probs = [[0.9 if ids[p] == c else 0.1 for c in range(len(names))] for p in pred]
    frame = pd.DataFrame({"text": [f"text {i}" for i in range(len(gold))], "label": [ids[g] for g in gold]})
    frame["label_name"], frame["pred"], frame["pred_name"] = gold, [ids[p] for p in pred], pred
    for c in range(len(names)):
        frame[f"prob_{c}"] = [row[c] for row in probs]
    frame.to_csv(folder / f"{name}.csv", index=False)


def test_the_explorer_keeps_each_models_class_names(tmp_path, tiny_classifier_dir, capsys, no_serving):
    """Defect: one class-name list for all models, the last predictions file's: a model whose ids mean the
    opposite was shown inverted."""
    from distillkit.explore import Explorer
    from distillkit.serving import RequestError

    folder = tmp_path / "report" / "predictions"
    folder.mkdir(parents=True)
    gold = ["toxic", "non-toxic", "toxic"]
    write_predictions(folder, "inverted", ["toxic", "non-toxic"], gold, ["toxic", "toxic", "toxic"])
    write_predictions(folder, "teacher", ["non-toxic", "toxic"], gold, ["non-toxic", "non-toxic", "toxic"])
    explorer = Explorer.load(str(tmp_path / "report"))
    inverted = {c["label"]: (c["gold"], c["predicted"]) for c in explorer.distribution("inverted")["classes"]}
    teacher = {c["label"]: (c["gold"], c["predicted"]) for c in explorer.distribution("teacher")["classes"]}
    assert inverted == {"toxic": (2, 3), "non-toxic": (1, 0)}  # old: {"non-toxic": (2, 3), "toxic": (1, 0)}
    assert teacher == {"non-toxic": (1, 2), "toxic": (2, 1)}
    (mistake,) = explorer.errors("inverted")["errors"]
    assert (mistake["gold"], mistake["predicted"]) == ("non-toxic", "toxic")
    overview = explorer.overview()
    assert overview["labels"] == ["0", "1"]  # no one model's names for every model's ids
    assert overview["labels_by_model"] == {"inverted": ["toxic", "non-toxic"], "teacher": ["non-toxic", "toxic"]}
    with pytest.raises(RequestError, match="cannot be compared id by id") as refused:
        explorer.disagreements("inverted", "teacher")
    assert refused.value.status == 409
    # One id named two ways inside one file: one error line at start-up.
    text = (folder / "teacher.csv").read_text().splitlines()
    text[1] = text[1].replace(",toxic,", ",insult,", 1)  # line 2's label_name for id 1
    (folder / "teacher.csv").write_text("\n".join(text) + "\n")
    line = app_error(capsys, "--report_dir", str(tmp_path / "report"), "--model_dirs", str(tiny_classifier_dir))
    assert "teacher.csv: class id 1 is named both" in line
