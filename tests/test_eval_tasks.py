"""Evaluation asks the model's task: multi-label models are scored per label at their saved thresholds, a binary
model at its saved positive-class threshold, and every model gets a per-label (per-class) table. The expected
numbers are recomputed here from the model's own forward pass with scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_tokenizer, synthetic_rows, tiny_bert_config
from datasets import Dataset, DatasetDict
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    hamming_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)
from test_serving_tasks import LABELS, between, own_logits, sigmoid
from test_serving_tasks import make_multilabel_model as serving_multilabel_model
from tolerances import forward_atol
from transformers import AutoConfig, BertForSequenceClassification

import run_eval
from distillkit.cli import UsageError
from distillkit.data import TextClassificationData
from distillkit.evaluation import SpeedSettings, evaluate_model
from distillkit.runtime import load_classifier_dir
from distillkit.metrics import per_class_f1
from distillkit.tasks import MULTI_LABEL, SINGLE_LABEL

FAST = ["--max_seq_length", "32", "--latency_runs", "50", "--throughput_texts", "32", "--num_threads", "1"]
FAST += ["--bootstrap_samples", "10"]
SETTINGS = SpeedSettings(latency_runs=50, throughput_texts=32, max_length=32)


def multilabel_texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Texts and a multi-hot gold matrix in which every label has positives and negatives."""
    rng = np.random.default_rng(seed)
    texts = synthetic_rows(n, seed).text.tolist()
    gold = (rng.random((n, len(LABELS))) < 0.4).astype(np.float32)
    gold[0], gold[1] = 1.0, 0.0  # both values for every label
    return texts, gold


def make_multilabel_model(directory, texts: list[str], seed: int = 0) -> list[float]:
    """test_serving_tasks' 4-label multi-label BERT, saved again with a different threshold per label chosen from
    its probabilities on `texts` (30, 50, 70 and 40% of them under it), so the thresholds decide unlike 0.5."""
    serving_multilabel_model(directory, seed=seed)
    config = AutoConfig.from_pretrained(directory)
    probs = sigmoid(own_logits(directory, texts))
    picks = [int(q * len(texts)) - 1 for q in (0.3, 0.5, 0.7, 0.4)]
    config.decision_thresholds = [between(probs[:, j], pick) for j, pick in enumerate(picks)]
    config.save_pretrained(directory)
    return config.decision_thresholds


def multilabel_data(texts: list[str], gold: np.ndarray) -> TextClassificationData:
    """As the contract lays multi-label data out: a `labels` column of 0/1 floats, one per label."""
    split = Dataset.from_dict({"text": texts, "labels": gold.tolist()})
    return TextClassificationData(
        splits=DatasetDict({"test": split}),
        num_labels=len(LABELS),
        label_names=LABELS,
        source={"dataset": "inline", "rows": {"test": len(texts)}},
        problem_type=MULTI_LABEL,
    )


@pytest.fixture(scope="module")
def multilabel_case(tmp_path_factory):
    texts, gold = multilabel_texts(40, seed=5)
    model_dir = tmp_path_factory.mktemp("ml_model")
    thresholds = make_multilabel_model(model_dir, texts)
    return model_dir, thresholds, texts, gold


def assert_sklearn_multilabel_metrics(row, probs: np.ndarray, y: np.ndarray, thresholds) -> None:
    """The row's metrics are sklearn's on these probabilities decided at `thresholds`: the same float64 numbers
    through sklearn on both sides, so equal up to the order of a few float64 sums."""
    preds = (probs >= np.asarray(thresholds)).astype(int)
    p, r, micro, _ = precision_recall_fscore_support(y, preds, average="micro", zero_division=0)
    expected = {
        "accuracy": accuracy_score(y, preds),  # subset accuracy on indicator matrices
        "hamming_accuracy": 1 - hamming_loss(y, preds),
        "precision": p,
        "recall": r,
        "f1": micro,
        "micro_f1": micro,
        "macro_f1": f1_score(y, preds, average="macro", zero_division=0),
        "weighted_f1": f1_score(y, preds, average="weighted", zero_division=0),
        "roc_auc": np.mean([roc_auc_score(y[:, j], probs[:, j]) for j in range(y.shape[1])]),
        "pr_auc": np.mean([average_precision_score(y[:, j], probs[:, j]) for j in range(y.shape[1])]),
    }
    for name, value in expected.items():
        assert math.isclose(row[name], value, rel_tol=1e-9, abs_tol=1e-12), name


def test_multilabel_metrics_are_the_sklearn_ones_at_the_saved_thresholds(multilabel_case):
    model_dir, thresholds, texts, gold = multilabel_case
    clf = load_classifier_dir(str(model_dir))
    row, frame, table = evaluate_model(clf, multilabel_data(texts, gold), "test", SETTINGS, bootstrap=5)

    # The model's own forward pass (one text at a time) and the evaluator's (padded batches) differ by float32
    # rounding only; the metrics are then recomputed from the evaluator's own probabilities, so both sides see
    # the same numbers and a probability within rounding of a threshold cannot decide differently on two sides.
    logits = own_logits(model_dir, texts)
    atol = forward_atol(logits)
    probs = frame[[f"prob_{j}" for j in range(len(LABELS))]].to_numpy()
    np.testing.assert_allclose(probs, sigmoid(logits), rtol=0, atol=atol)
    preds = (probs >= np.asarray(thresholds)).astype(int)
    assert (preds != (probs >= 0.5)).any(), "the saved thresholds must decide differently from 0.5 here"
    y = gold.astype(int)
    assert_sklearn_multilabel_metrics(row, probs, y, thresholds)
    # The loss needs logits, so it is checked against the model's own: BCE-with-logits moves by at most the logits.
    own_loss = float(torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(logits), torch.tensor(gold, dtype=torch.float64)))  # fmt: skip
    assert math.isclose(row["eval_loss"], own_loss, rel_tol=0, abs_tol=atol)
    assert row["problem_type"] == MULTI_LABEL
    # results.csv writes thresholds at 4 significant digits (`.4g`): relative error <= 5e-4.
    assert [float(t) for t in row["thresholds"].split(",")] == pytest.approx(thresholds, rel=1e-3)

    # Predictions: one probability per label (checked above), the gold and predicted label sets as ids and names.
    assert frame.label.tolist() == [",".join(str(j) for j in np.flatnonzero(g)) for g in y]
    assert frame.pred.tolist() == [",".join(str(j) for j in np.flatnonzero(q)) for q in preds]
    assert frame.pred_name.tolist() == [",".join(LABELS[j] for j in np.flatnonzero(q)) for q in preds]
    assert (frame.problem_type == MULTI_LABEL).all()

    # The per-label table: support, F1, ROC-AUC, PR-AUC of every label.
    assert table.label.tolist() == LABELS and table.support.tolist() == y.sum(axis=0).tolist()
    # Same probabilities through the same sklearn functions: equal up to float64 rounding.
    np.testing.assert_allclose(table.f1, f1_score(y, preds, average=None, zero_division=0), atol=1e-12)
    np.testing.assert_allclose(table.roc_auc, [roc_auc_score(y[:, j], probs[:, j]) for j in range(4)], atol=1e-12)
    np.testing.assert_allclose(
        table.pr_auc, [average_precision_score(y[:, j], probs[:, j]) for j in range(4)], atol=1e-12
    )


def test_a_multilabel_model_is_refused_on_single_label_data(multilabel_case, tiny_data_dir):
    from distillkit.data import DataTrainingArguments, load_text_classification_data

    model_dir, _, _, _ = multilabel_case
    data = load_text_classification_data(
        DataTrainingArguments(dataset_name=str(tiny_data_dir), max_seq_length=32), seed=0
    )
    clf = load_classifier_dir(str(model_dir))
    data.num_labels, data.label_names = len(LABELS), LABELS  # same labels, other task: only the task differs
    with pytest.raises(UsageError, match="multi_label_classification model but the data set is single_label"):
        evaluate_model(clf, data, "test", SETTINGS, bootstrap=0)


def binary_case(directory, texts: list[str]) -> float:
    """A binary classifier saved with a positive-class threshold that flips some argmax decisions."""
    torch.manual_seed(4)
    config = tiny_bert_config(
        num_layers=2, id2label={0: "non-toxic", 1: "toxic"}, label2id={"non-toxic": 0, "toxic": 1},
        problem_type=SINGLE_LABEL, initializer_range=1.0,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(directory)
    make_tokenizer(directory)
    positive = np.exp(own_logits(directory, texts))
    positive = positive[:, 1] / positive.sum(axis=1)
    # Just above the median positive-class probability: the texts between it and 0.5 are decided unlike argmax.
    threshold = float(np.median(positive)) + 1e-6
    config.decision_thresholds = [threshold]
    config.save_pretrained(directory)
    return threshold


def test_a_binary_models_saved_threshold_decides_instead_of_argmax(tmp_path):
    rows = synthetic_rows(40, seed=9)
    texts, labels = rows.text.tolist(), rows.label.to_numpy()
    threshold = binary_case(tmp_path / "binary", texts)
    data = TextClassificationData(
        splits=DatasetDict({"test": Dataset.from_dict({"text": texts, "label": labels.tolist()})}),
        num_labels=2,
        label_names=["non-toxic", "toxic"],
        source={"dataset": "inline", "rows": {"test": len(texts)}},
    )
    clf = load_classifier_dir(str(tmp_path / "binary"))
    row, frame, table = evaluate_model(clf, data, "test", SETTINGS, bootstrap=5)
    probs = frame[["prob_0", "prob_1"]].to_numpy()
    preds = (probs[:, 1] >= threshold).astype(int)
    assert (frame.pred.to_numpy() == preds).all()
    assert (frame.pred.to_numpy() != probs.argmax(axis=1)).any(), "the threshold must change some decisions"
    # results.csv writes thresholds at 4 significant digits (`.4g`): relative error <= 5e-4.
    assert row["thresholds"] is not None and float(row["thresholds"]) == pytest.approx(threshold, rel=1e-3)
    assert row["f1"] == pytest.approx(f1_score(labels, preds, zero_division=0))
    assert row["accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert row["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, preds))
    assert row["pr_auc"] == pytest.approx(average_precision_score(labels, probs[:, 1]))
    assert row["roc_auc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]))
    # Per class, one-vs-rest: the F1 column is metrics.per_class_f1 at the thresholded decisions.
    assert table.f1.tolist() == pytest.approx(per_class_f1(labels, preds, 2))
    assert table.support.tolist() == np.bincount(labels, minlength=2).tolist()


def write_multilabel_csvs(directory, seed: int = 0) -> dict[str, tuple[list[str], np.ndarray]]:
    """A multi-label CSV folder as users have it: a `labels` column of comma-separated label ids (go_emotions'
    form), at least one per row."""
    directory.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, n, s in (("train", 24, seed + 1), ("validation", 12, seed + 2), ("test", 30, seed + 3)):
        texts, gold = multilabel_texts(n, s)
        for i in np.flatnonzero(gold.sum(axis=1) == 0):
            gold[i, i % len(LABELS)] = 1.0
        ids = [",".join(str(j) for j in np.flatnonzero(g)) for g in gold]
        pd.DataFrame({"text": texts, "labels": ids}).to_csv(directory / f"{split}.csv", index=False)
        splits[split] = (texts, gold)
    return splits


def test_run_eval_on_a_multilabel_csv_folder(tmp_path):
    """End to end: run_eval.py reads a multi-label CSV folder (data.py), scores two multi-label models at their
    saved thresholds, and writes results.csv with the old and new columns, per_label.csv, the per-label plot,
    label-set predictions, and a report that says what the multi-label columns mean."""
    splits = write_multilabel_csvs(tmp_path / "data")
    texts, gold = splits["test"]
    models = {name: tmp_path / name for name in ("ml_a", "ml_b")}
    for seed, path in enumerate(models.values()):
        make_multilabel_model(path, texts, seed=seed)
    out = tmp_path / "report"
    results = run_eval.main(
        ["--model_dirs", *map(str, models.values()), "--dataset_name", str(tmp_path / "data")]
        + ["--problem_type", "multi_label", "--output_dir", str(out), *FAST]
    )
    csv = pd.read_csv(out / "results.csv").set_index("model")
    old_columns = {"accuracy", "precision", "recall", "f1", "macro_f1", "weighted_f1", "roc_auc", "eval_loss"}
    assert old_columns | {"micro_f1", "hamming_accuracy", "pr_auc", "thresholds", "problem_type"} <= set(csv.columns)
    assert len(results) == 2 and (csv.problem_type == MULTI_LABEL).all()
    table = pd.read_csv(out / "per_label.csv")
    assert list(table.columns) == ["model", "label", "support", "predicted", "f1", "roc_auc", "pr_auc"]
    for name, path in models.items():
        frame = pd.read_csv(out / "predictions" / f"{name}.csv", keep_default_na=False)
        probs = frame[[f"prob_{j}" for j in range(len(LABELS))]].to_numpy()
        saved = np.asarray(AutoConfig.from_pretrained(path).decision_thresholds)
        # results.csv writes thresholds at 4 significant digits (`.4g`): relative error <= 5e-4.
        np.testing.assert_allclose([float(t) for t in csv.loc[name, "thresholds"].split(",")], saved, rtol=1e-3)
        logits = own_logits(path, texts)  # one text at a time; run_eval pads batches: float32 rounding apart
        np.testing.assert_allclose(probs, sigmoid(logits), rtol=0, atol=forward_atol(logits))
        preds = (probs >= saved).astype(int)  # decided from the probabilities the CSV holds (written at full precision)
        y = gold.astype(int)
        # The CSV's gold label sets are the data's; its predicted sets are the model's thresholded sigmoids.
        assert frame.label.tolist() == [",".join(str(j) for j in np.flatnonzero(g)) for g in y]
        assert frame.pred.tolist() == [",".join(str(j) for j in np.flatnonzero(q)) for q in preds]
        assert csv.loc[name, "f1"] == pytest.approx(f1_score(y, preds, average="micro", zero_division=0))
        assert csv.loc[name, "macro_f1"] == pytest.approx(f1_score(y, preds, average="macro", zero_division=0))
        assert csv.loc[name, "accuracy"] == pytest.approx(accuracy_score(y, preds))
        auc = np.mean([roc_auc_score(y[:, j], probs[:, j]) for j in range(len(LABELS))])
        assert csv.loc[name, "roc_auc"] == pytest.approx(auc, abs=1e-12)  # same probabilities, same sklearn call
        rows = table[table.model == name]
        assert rows.f1.tolist() == pytest.approx(list(f1_score(y, preds, average=None, zero_division=0)))
    assert (out / "plots" / "per_label_f1.png").stat().st_size > 0
    assert not list((out / "plots").glob("confusion_*.png"))  # label sets have no single confusion matrix
    report = (out / "report.md").read_text()
    assert "subset accuracy" in report and "micro" in report and "plots/per_label_f1.png" in report
    assert "## F1 per label (`per_label.csv`)" in report and f"| {LABELS[0]} |" in report


def test_single_label_report_has_per_class_f1_pr_auc_and_balanced_accuracy(tmp_path):
    """A 3-class model: per_label.csv holds per-class (one-vs-rest) F1 equal to metrics.per_class_f1 of the
    predictions, and the report shows per-class F1 beside PR-AUC and balanced accuracy."""
    data_dir = tmp_path / "data3"
    data_dir.mkdir()
    for split, seed in (("train", 1), ("validation", 2), ("test", 3)):
        synthetic_rows(30, seed, num_labels=3).to_csv(data_dir / f"{split}.csv", index=False)
    torch.manual_seed(2)
    BertForSequenceClassification(tiny_bert_config(num_layers=2, num_labels=3, initializer_range=1.0)).save_pretrained(
        tmp_path / "clf3"
    )
    make_tokenizer(tmp_path / "clf3")
    out = tmp_path / "report"
    run_eval.main(
        ["--model_dirs", str(tmp_path / "clf3"), "--dataset_name", str(data_dir), "--output_dir", str(out), *FAST]
    )
    frame = pd.read_csv(out / "predictions" / "clf3.csv")
    table = pd.read_csv(out / "per_label.csv")
    assert table.f1.tolist() == pytest.approx(per_class_f1(frame.label.to_numpy(), frame.pred.to_numpy(), 3))
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert row.balanced_accuracy == pytest.approx(balanced_accuracy_score(frame.label, frame.pred))
    probs = frame[["prob_0", "prob_1", "prob_2"]].to_numpy()
    expected_pr = np.mean([average_precision_score(frame.label == c, probs[:, c]) for c in range(3)])
    assert row.pr_auc == pytest.approx(expected_pr)
    report = (out / "report.md").read_text()
    assert "## F1 per class (`per_label.csv`)" in report and "PR-AUC" in report and "balanced acc." in report
    assert "plots/per_label_f1.png" in report and "plots/confusion_clf3.png" in report


def test_an_onnx_export_of_a_multilabel_model_is_scored_at_the_same_thresholds(tmp_path, multilabel_case):
    """run_export.py copies config.json (problem_type, decision_thresholds) beside model.onnx: evaluation scores
    the export by the same task, so its row equals the PyTorch row."""
    import run_export

    model_dir, thresholds, texts, gold = multilabel_case
    # Large random weights give large logits: their fp32 ONNX difference is ~3e-4 here.
    run_export.main(["--model_dir", str(model_dir), "--output_dir", str(tmp_path / "ml-onnx"), "--tolerance", "1e-3"])
    data = multilabel_data(texts, gold)
    rows = [
        evaluate_model(load_classifier_dir(str(path)), data, "test", SETTINGS, bootstrap=0)
        for path in (model_dir, tmp_path / "ml-onnx")
    ]
    (torch_row, torch_frame, _), (onnx_row, onnx_frame, onnx_table) = rows
    assert onnx_row["runtime"] == "onnxruntime-fp32" and onnx_row["problem_type"] == MULTI_LABEL
    assert onnx_row["thresholds"] == torch_row["thresholds"]
    # The export computes this model's sigmoids up to float32 rounding (ONNX Runtime's kernels add in another order;
    # these large weights give |logits| ~16, so the probabilities differ by ~1e-5) ...
    columns = [f"prob_{j}" for j in range(len(LABELS))]
    onnx_probs, torch_probs = (frame[columns].to_numpy() for frame in (onnx_frame, torch_frame))
    np.testing.assert_allclose(onnx_probs, torch_probs, rtol=0, atol=forward_atol(own_logits(model_dir, texts)))
    # ... and is scored at the same saved thresholds: each row's metrics are sklearn's on its own probabilities. The
    # two rows are not compared to each other: a probability within that rounding of its threshold, or two near-tied
    # ones, may be decided or ranked either way (the fixture has some 6e-6 apart), which moves a metric by a count.
    for row, probs in ((torch_row, torch_probs), (onnx_row, onnx_probs)):
        assert_sklearn_multilabel_metrics(row, probs, gold.astype(int), thresholds)
    assert onnx_table.label.tolist() == LABELS


def test_a_multilabel_adapter_on_a_headless_base_loads_with_its_task(tmp_path, tiny_base_model_dir):
    """A LoRA adapter's base may be a pretrained encoder whose config knows no task: the loader gives it the
    recorded problem_type and the thresholds the run tuned (all_results.json), so evaluation decides as trained."""
    import json

    from peft import LoraConfig, get_peft_model

    from distillkit.records import RunRecord
    from distillkit.tasks import Task

    torch.manual_seed(0)
    base = BertForSequenceClassification.from_pretrained(
        tiny_base_model_dir, num_labels=len(LABELS), problem_type=MULTI_LABEL
    )
    adapter = tmp_path / "lora"
    get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query"])).save_pretrained(
        adapter
    )
    make_tokenizer(adapter)
    record = RunRecord(method="lora", base_model=str(tiny_base_model_dir), is_adapter=True, label_names=LABELS)
    record.problem_type = MULTI_LABEL
    record.save(str(adapter))
    thresholds = [0.2, 0.4, 0.6, 0.8]
    (adapter / "all_results.json").write_text(json.dumps({"method": "lora", "decision_thresholds": thresholds}))
    clf = load_classifier_dir(str(adapter))
    task = Task.from_config(clf.model.config)
    assert clf.is_adapter and task.multi_label and task.thresholds == thresholds
    assert [clf.id2label[i] for i in range(len(LABELS))] == LABELS


@pytest.mark.parametrize("problem_type, num_labels", [(MULTI_LABEL, 5), (SINGLE_LABEL, 2), (SINGLE_LABEL, 4)])
def test_bootstrap_scores_are_the_tasks_f1_and_roc_auc(problem_type, num_labels):
    """The bootstrap's fast F1/ROC-AUC agree with Task.metrics on every resample (thresholded tasks included)."""
    from distillkit.evaluation import headline_scores
    from distillkit.tasks import Task

    rng = np.random.default_rng(num_labels)
    n = 60
    if problem_type == MULTI_LABEL:
        labels = (rng.random((n, num_labels)) < 0.3).astype(int)
        labels[:, -1] = 0  # a label without positives: left out of the macro AUC, as Task.metrics does
        probs, thresholds = rng.random((n, num_labels)), list(rng.uniform(0.2, 0.8, num_labels))
    else:
        labels = rng.integers(0, num_labels, n)
        probs = rng.dirichlet(np.ones(num_labels), n)
        thresholds = [0.3] if num_labels == 2 else None
    task = Task(problem_type, num_labels, thresholds)
    for _ in range(5):
        idx = rng.integers(0, n, n)
        expected, fast = task.metrics(probs[idx], labels[idx]), headline_scores(task, probs[idx], labels[idx])
        assert fast == pytest.approx({k: expected[k] for k in ("f1", "roc_auc")})
