"""The decision rule (distillkit/decision.py, issue 22): fitted on validation for every task type, saved once in
config.json, and applied identically by evaluation, serving, the ONNX export and the model card's snippet."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tokenizer, synthetic_rows, tiny_bert_config
from datasets import Dataset, DatasetDict
from sklearn.metrics import f1_score
from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

from distillkit.data import TextClassificationData
from distillkit.decision import (
    ARGMAX,
    LABEL_THRESHOLDS,
    LOGIT_OFFSETS,
    THRESHOLD,
    DecisionRule,
    fit_decision_rule,
    fit_logit_offsets,
    macro_f1,
)
from distillkit.metrics import softmax
from distillkit.tasks import MULTI_LABEL, SINGLE_LABEL, Task

CLASSES = ["joy", "anger", "fear"]


# --- fitting, by hand ----------------------------------------------------------------------------------------------


def test_multiclass_offsets_by_hand():
    """Argmax never predicts `fear` (macro-F1 0.5); lowering `joy` by 0.75 moves x2 and x3 to fear while x1 stays
    joy (3 - 0.75 > 2): every text right, macro-F1 1. The ascent tries joy's offsets smallest first (-0.25, +0.25,
    -0.5 (x2: 1.5 > 1.4, still joy), +0.5, -0.75) and takes the first strict gain; nothing beats 1 after it."""
    logits = np.array([[3.0, 0.0, 2.0], [2.0, 0.0, 1.4], [2.0, 0.0, 1.4], [0.0, 2.0, 1.0]])
    labels = np.array([0, 2, 2, 1])
    probs = softmax(logits)
    assert macro_f1(labels, probs.argmax(-1), 3) == pytest.approx(0.5)
    assert fit_logit_offsets(probs, labels) == [-0.75, 0.0, 0.0]
    rule = fit_decision_rule(SINGLE_LABEL, probs, labels)
    assert rule.kind == LOGIT_OFFSETS and rule.offsets == [-0.75, 0.0, 0.0]
    assert rule.decide(probs).tolist() == [0, 2, 2, 1]
    assert (rule.decide(probs) == (logits + np.array(rule.offsets)).argmax(-1)).all()  # on logits the same


def test_binary_threshold_by_hand():
    """p(pos) 0.1, 0.2, 0.3, 0.4 with labels 0, 1, 1, 0: t = 0.2 gives tp 2, fp 1, F1 0.8 (t = 0.3: F1 2/3)."""
    p = np.array([0.1, 0.2, 0.3, 0.4])
    rule = fit_decision_rule(SINGLE_LABEL, np.stack([1 - p, p], 1), np.array([0, 1, 1, 0]))
    assert rule.kind == THRESHOLD and rule.thresholds == [pytest.approx(0.2)]
    assert rule.decide(np.stack([1 - p, p], 1)).tolist() == [0, 1, 1, 1]


def test_multilabel_thresholds_are_per_label():
    probs = np.array([[0.9, 0.2], [0.6, 0.3], [0.2, 0.25]])
    rule = fit_decision_rule(MULTI_LABEL, probs, np.array([[1, 0], [1, 1], [0, 1]]))
    assert rule.kind == LABEL_THRESHOLDS and rule.thresholds == [pytest.approx(0.6), pytest.approx(0.25)]


def test_fast_macro_f1_is_sklearns():
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 4, 300), rng.integers(0, 3, 300)  # class 3 never predicted
    expected = f1_score(labels, preds, labels=[0, 1, 2, 3], average="macro", zero_division=0)
    assert macro_f1(labels, preds, 4) == pytest.approx(expected, abs=1e-12)


def test_fitting_is_deterministic_and_never_worse_than_argmax():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(400, 5)) + np.array([2.0, 1.0, 0.0, 0.0, -1.0])
    labels = rng.integers(0, 5, 400)
    probs = softmax(logits)
    first, second = fit_logit_offsets(probs, labels), fit_logit_offsets(probs, labels)
    assert first == second
    rule = DecisionRule.from_saved(SINGLE_LABEL, 5, offsets=first)
    assert macro_f1(labels, rule.decide(probs), 5) >= macro_f1(labels, probs.argmax(-1), 5)


# --- saving and checking ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "problem_type,num_labels,thresholds,offsets,message",
    [
        (SINGLE_LABEL, 2, [1.5], None, r"lies in \[0, 1\]"),
        (SINGLE_LABEL, 2, [float("nan")], None, "not a finite number"),
        (MULTI_LABEL, 3, [0.5, 0.5], None, "2 given; this model takes 3"),
        (SINGLE_LABEL, 3, [0.3], None, "decided by argmax or decision_logit_offsets"),
        (SINGLE_LABEL, 2, None, [0.0, 1.0], "not a binary one"),
        (SINGLE_LABEL, 3, None, [0.0, float("inf"), 0.0], "not a finite number"),
        (SINGLE_LABEL, 3, [0.5], [0.0, 0.0, 0.0], "one decision rule"),
    ],
)
def test_a_saved_rule_that_does_not_fit_is_refused(problem_type, num_labels, thresholds, offsets, message):
    with pytest.raises(ValueError, match=message):
        Task(problem_type, num_labels, thresholds, offsets)


def test_rule_round_trips_through_config_and_record():
    rule = DecisionRule.from_saved(SINGLE_LABEL, 3, offsets=[0.5, 0.0, -1.25])
    config = tiny_bert_config(num_labels=3)
    Task(SINGLE_LABEL, 3, offsets=rule.offsets).save_to_config(config)
    back = Task.from_config(AutoConfig.for_model(**config.to_dict()))
    assert back.offsets == [0.5, 0.0, -1.25] and back.thresholds is None
    record = rule.to_dict()
    assert record == {"rule": LOGIT_OFFSETS, "values": [0.5, 0.0, -1.25], "tuned_on": "validation", "maximises": "macro_f1"}
    assert DecisionRule.from_dict(record, SINGLE_LABEL, 3).offsets == rule.offsets
    assert DecisionRule.default(SINGLE_LABEL, 3).to_dict()["rule"] == ARGMAX
    assert "argmax(logits + [+0.50, +0.00, -1.25])" in rule.describe()


# --- one rule, saved once, applied identically by every reader ------------------------------------------------------


def _logits(directory: Path, texts: list[str]) -> np.ndarray:
    model = BertForSequenceClassification.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    with torch.no_grad():
        return np.stack([model(**tokenizer(t, return_tensors="pt")).logits[0].double().numpy() for t in texts])


@pytest.fixture(scope="module")
def tuned_three_class(tmp_path_factory):
    """A 3-class model whose rule is tuned once (Task.tune, as training does) on labels argmax gets wrong for the
    class it favours least, and saved once in config.json. Returns (dir, texts, labels, expected decisions)."""
    directory = tmp_path_factory.mktemp("decision") / "three"
    torch.manual_seed(5)
    config = tiny_bert_config(
        num_layers=2, num_labels=3, id2label=dict(enumerate(CLASSES)), label2id={n: i for i, n in enumerate(CLASSES)},
        initializer_range=1.0,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(directory)
    make_tokenizer(directory)
    texts = synthetic_rows(40, seed=11, num_labels=3).text.tolist()
    logits = _logits(directory, texts)
    # The gold labels a boosted rarest class would give: argmax alone cannot reproduce them.
    rare = int(np.bincount(logits.argmax(-1), minlength=3).argmin())
    boost = np.zeros(3)
    boost[rare] = 1.6
    labels = (logits + boost).argmax(-1)
    task = Task.from_config(config)
    task.tune(softmax(logits), labels)
    assert task.offsets is not None
    task.save_to_config(config)
    config.save_pretrained(directory)  # the one save; every reader below starts from this file
    expected = (logits + np.asarray(task.offsets)).argmax(-1)
    assert (expected != logits.argmax(-1)).any(), "the tuned rule must decide some text unlike argmax"
    # Every decision clear of the ONNX export's ~1e-4 logit error, so the comparison is of rules, not rounding.
    margins = np.sort(logits + np.asarray(task.offsets), axis=-1)
    assert (margins[:, -1] - margins[:, -2]).min() > 1e-2
    return directory, texts, labels, expected


def _data(texts: list[str], labels: np.ndarray) -> TextClassificationData:
    return TextClassificationData(
        splits=DatasetDict({"test": Dataset.from_dict({"text": texts, "label": labels.tolist()})}),
        num_labels=3,
        label_names=CLASSES,
        source={"dataset": "inline", "rows": {"test": len(texts)}},
    )


def test_evaluation_decides_by_the_saved_offsets(tuned_three_class):
    from distillkit.evaluation import SpeedSettings, evaluate_model
    from distillkit.runtime import load_classifier_dir

    directory, texts, labels, expected = tuned_three_class
    settings = SpeedSettings(latency_runs=5, throughput_texts=8, max_length=32)
    row, frame, _ = evaluate_model(load_classifier_dir(str(directory)), _data(texts, labels), "test", settings, bootstrap=0)
    assert frame.pred.tolist() == expected.tolist()
    assert row["decision_rule"].startswith("argmax(logits + [")


def test_serving_decides_by_the_saved_offsets(tuned_three_class):
    from distillkit.serving import ModelRegistry, PredictRequest, ServingLimits

    directory, texts, _, expected = tuned_three_class
    registry = ModelRegistry.from_dirs([str(directory)], ServingLimits())
    try:
        answer = registry.predict(PredictRequest(texts=texts, models=registry.names))
    finally:
        registry.close()
    served = [result["predictions"][0] for result in answer["results"]]
    assert [p["label_id"] for p in served] == expected.tolist()
    assert set(served[0]["logit_offsets"]) == set(CLASSES)


def test_onnx_export_and_its_card_decide_by_the_saved_offsets(tuned_three_class, tmp_path):
    from distillkit.evaluation import SpeedSettings, evaluate_model
    from distillkit.export import export_classifier
    from distillkit.runtime import load_classifier_dir

    directory, texts, labels, expected = tuned_three_class
    out = tmp_path / "onnx"
    export_classifier(str(directory), str(out), texts=texts, max_length=32, tolerance=1e-3)
    assert json.loads((out / "config.json").read_text())["decision_logit_offsets"] is not None
    settings = SpeedSettings(latency_runs=5, throughput_texts=8, max_length=32)
    _, frame, _ = evaluate_model(load_classifier_dir(str(out)), _data(texts, labels), "test", settings, bootstrap=0)
    assert frame.pred.tolist() == expected.tolist()
    # The export card's onnxruntime snippet, run as a user would, on the card's own text.
    (snippet,) = re.findall(r"```python\n(.*?)```", (out / "README.md").read_text(), flags=re.DOTALL)
    assert "decision_logit_offsets" in snippet
    (text,) = re.findall(r'tokenizer\(\["(.*?)"\]', snippet)
    printed = _run(snippet.replace('model_dir = "."', f'model_dir = "{out}"'), tmp_path)
    assert printed == str([_decided_by_hand(directory, text)])


def test_the_model_cards_snippet_decides_by_the_saved_offsets(tuned_three_class, tmp_path):
    from distillkit.model_card import build_model_card

    directory = tuned_three_class[0]
    card = str(build_model_card(str(directory)))
    (snippet,) = re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL)
    assert "decision_logit_offsets" in snippet
    (text,) = re.findall(r'classifier\(\["(.*?)"\]\)', snippet)
    assert _run(snippet, tmp_path) == _decided_by_hand(directory, text)


def _decided_by_hand(directory: Path, text: str) -> str:
    """The class the saved offsets pick for `text`, from the PyTorch logits: argmax(logits + offsets)."""
    offsets = np.asarray(json.loads((directory / "config.json").read_text())["decision_logit_offsets"])
    scores = _logits(directory, [text])[0] + offsets
    top, second = np.sort(scores)[-1], np.sort(scores)[-2]
    assert top - second > 1e-2  # clear of the ONNX export's rounding
    return CLASSES[int(scores.argmax())]


def _run(snippet: str, cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", snippet], cwd=cwd, env=dict(os.environ, HF_HUB_OFFLINE="1"),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]
