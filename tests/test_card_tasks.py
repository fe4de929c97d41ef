"""The model card's usage snippet decides as the model does: a multi-label model's labels over their saved
thresholds, a binary model's tuned threshold (run as a reader would, in a fresh interpreter)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

import numpy as np
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
