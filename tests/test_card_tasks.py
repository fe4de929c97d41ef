"""The model card's usage snippet decides as the model does: a multi-label model's labels over their saved
thresholds, a binary model's tuned threshold (run as a reader would, in a fresh interpreter)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from test_serving_tasks import LABELS, make_binary_model, make_multilabel_model, own_logits, sigmoid, softmax

from distillkit.model_card import write_model_card

TEXT = "thanks for fixing the citation"  # the snippet's example text


def run_snippet(directory) -> str:
    card = (directory / "README.md").read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL)
    done = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return snippet, done.stdout.strip()


def test_multi_label_card_snippet_prints_the_labels_over_their_thresholds(tmp_path):
    directory = make_multilabel_model(tmp_path / "ml")
    write_model_card(str(directory))
    snippet, printed = run_snippet(directory)
    assert "top_k=None" in snippet and "decision_thresholds" in snippet
    thresholds = json.loads((directory / "config.json").read_text())["decision_thresholds"]
    probs = sigmoid(own_logits(directory, [TEXT]))[0]
    # The pipeline lists labels by score; the set is the decision.
    assert set(ast.literal_eval(printed)) == {name for j, name in enumerate(LABELS) if probs[j] >= thresholds[j]}


def test_binary_card_snippet_decides_by_the_tuned_threshold(tmp_path):
    directory, threshold = make_binary_model(tmp_path / "binary")
    write_model_card(str(directory))
    snippet, printed = run_snippet(directory)
    positive = softmax(own_logits(directory, [TEXT]))[0, 1]
    assert printed == ("toxic" if positive >= threshold else "non-toxic")
    assert "thresholds[0]" in snippet and np.isfinite(threshold)


def test_int8_export_of_a_multi_label_model_is_checked_and_documented_by_its_task(tmp_path, monkeypatch, capsys):
    """The export's int8-vs-fp32 check decides by the model's thresholds (a text agrees when every label does) and
    scores with the multi-label metrics; the export card's onnxruntime snippet prints each text's label set."""
    from test_serving_tasks import TEXTS

    from distillkit.export import export_classifier
    from distillkit.tasks import Task

    source = make_multilabel_model(tmp_path / "ml")
    probs = sigmoid(own_logits(source))
    config = json.loads((source / "config.json").read_text())
    gold = (probs >= np.array(config["decision_thresholds"])).astype(int)  # the fp32 model is right on every text
    out = tmp_path / "onnx"
    record = export_classifier(str(source), str(out), quantize="int8", texts=TEXTS, labels=gold, max_length=32)
    quality = record["int8_vs_fp32"]
    assert quality["f1_fp32"] == pytest.approx(1.0) and 0 <= quality["agreement"] <= 1
    assert quality["f1_fp32"] == pytest.approx(Task.from_config(config).metrics(probs, gold)["f1"])
    card = (out / "README.md").read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL)
    snippet = snippet.replace('["Thanks for fixing the citation."]', repr(TEXTS))
    monkeypatch.chdir(out)  # the snippet reads "this directory"
    exec(snippet, {})  # noqa: S102 (the export card's own code)
    printed = ast.literal_eval(capsys.readouterr().out.strip())
    int8 = [[LABELS[j] for j in range(len(LABELS)) if row[j]] for row in gold]
    agree = sum(a == b for a, b in zip(printed, int8)) / len(TEXTS)  # int8 decides; fp32's sets are the gold ones
    assert agree == pytest.approx(quality["agreement"])
