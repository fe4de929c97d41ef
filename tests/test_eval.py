"""run_eval.py: metrics recomputed independently from the written predictions, adapters, plots, seeds, bad input."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import common_args, synthetic_rows
from tolerances import MERGE_ATOL, SOFTMAX_SUM_ATOL
from matplotlib.image import imread
from transformers import AutoConfig
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

import run_distill
import run_eval
from distillkit.decision import DecisionRule
from distillkit.records import RunRecord
from distillkit.tasks import SINGLE_LABEL
import run_finetune

FAST = ["--max_seq_length", "32", "--latency_runs", "50", "--throughput_texts", "32"]
FAST += ["--num_threads", "1", "--bootstrap_samples", "20"]
REQUIRED_COLUMNS = [
    *("model", "method", "base", "layers", "num_layers", "params", "trainable_params", "trainable_pct", "size_mb"),
    *("accuracy", "precision", "recall", "f1", "macro_f1", "weighted_f1", "roc_auc", "eval_loss", "train_loss"),
    *("train_runtime_s", "latency_ms_b1", "throughput_b32", "seed"),
]


def _add_lora(teacher_dir, out_dir):
    """An (untrained) LoRA adapter on the teacher, and its merged model in out_dir/merged, as run_lora.py lays out."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    config = LoraConfig(
        task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False
    )
    model = get_peft_model(base, config)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(out_dir)
    merged = model.merge_and_unload()
    merged.save_pretrained(out_dir / "merged")
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(out_dir / "merged")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_base_model_dir, tiny_data_dir):
    """EXP/{teacher,odd,even} trained for a few steps, EXP/lora an adapter on the teacher with lora/merged."""
    exp = tmp_path_factory.mktemp("exp")
    for layers in ("odd", "even"):
        run_distill.main(
            common_args(
                tiny_data_dir,
                exp / layers,
                teacher_name_or_path=tiny_base_model_dir,
                layers=layers,
                max_steps=4,
                do_eval="false",
                do_predict="false",
            )
        )
    _add_lora(exp / "teacher", exp / "lora")
    return exp


@pytest.fixture(scope="module")
def evaluated(experiment, tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    results = run_eval.main(
        ["--experiment_dir", str(experiment), "--dataset_name", str(tiny_data_dir), "--output_dir", str(out)]
        + FAST
        + ["--overwrite_output_dir", "true"]
    )
    return out, results


def _sklearn_metrics(
    frame: pd.DataFrame, num_labels: int, threshold: float | None = None, preds: np.ndarray | None = None
) -> dict[str, float]:
    """sklearn's metrics of the frame's probabilities, decided by argmax, a binary threshold, or `preds` given."""
    labels = frame.label.to_numpy()
    probs = frame[[f"prob_{i}" for i in range(num_labels)]].to_numpy()
    if preds is None:
        preds = probs.argmax(axis=1) if threshold is None else (probs[:, 1] >= threshold).astype(int)
    binary = num_labels == 2
    p, r, f, _ = precision_recall_fscore_support(
        labels, preds, average="binary" if binary else "macro", labels=list(range(num_labels)), zero_division=0
    )
    auc = (
        roc_auc_score(labels, probs[:, 1])
        if binary
        else roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=list(range(num_labels)))
    )
    return {
        "accuracy": accuracy_score(labels, preds),
        "precision": p,
        "recall": r,
        "f1": f,
        "macro_f1": f1_score(labels, preds, average="macro", labels=list(range(num_labels)), zero_division=0),
        "weighted_f1": f1_score(labels, preds, average="weighted", labels=list(range(num_labels)), zero_division=0),
        "roc_auc": auc,
        "eval_loss": log_loss(labels, probs, labels=list(range(num_labels))),
    }


def test_results_equal_sklearn_recomputation_from_predictions(evaluated, tiny_data_dir):
    out, _ = evaluated
    results = pd.read_csv(out / "results.csv")
    assert set(REQUIRED_COLUMNS) <= set(results.columns)
    assert sorted(results.model) == ["even", "lora", "lora-merged", "odd", "teacher"]
    test = pd.read_csv(tiny_data_dir / "test.csv")
    for row in results.itertuples():
        frame = pd.read_csv(out / "predictions" / f"{row.model}.csv")
        assert frame.text.tolist() == test.text.tolist() and frame.label.tolist() == test.label.tolist()
        probs = frame[["prob_0", "prob_1"]].to_numpy()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=SOFTMAX_SUM_ATOL)
        # Each model decides by the threshold its training tuned on validation (recorded in run_record.json).
        decision = RunRecord.load(row.path).decision
        threshold = decision["values"][0] if decision.get("rule") == "threshold" else None
        preds = probs.argmax(axis=1) if threshold is None else (probs[:, 1] >= threshold).astype(int)
        assert (frame.pred.to_numpy() == preds).all()
        for name, expected in _sklearn_metrics(frame, 2, threshold).items():  # the CSV's probabilities (written in full)
            assert math.isclose(getattr(row, name), expected, rel_tol=1e-6, abs_tol=1e-6), (row.model, name)


def test_adapter_merged_and_full_models_rows(evaluated, experiment):
    out, results = evaluated
    rows = results.set_index("model")
    assert rows.loc["teacher", "method"] == "teacher"
    assert rows.loc["odd", "method"] == "odd" and rows.loc["odd", "layers"] == "1,3"
    assert rows.loc["even", "layers"] == "2,4" and rows.loc["even", "num_layers"] == 2
    assert rows.loc["lora", "method"] == "lora" and rows.loc["lora-merged", "method"] == "lora_merged"
    # The adapter trains a small part of the model and is small on disk, but serving it needs the base too.
    assert rows.loc["lora", "trainable_params"] < rows.loc["lora", "params"]
    assert rows.loc["teacher", "trainable_pct"] == 100.0
    assert rows.loc["lora", "size_mb"] < rows.loc["teacher", "size_mb"] < rows.loc["lora", "serving_size_mb"]
    assert rows.loc["odd", "params"] < rows.loc["teacher", "params"]
    # A merged model predicts what its adapter predicts.
    adapter = pd.read_csv(out / "predictions" / "lora.csv")
    merged = pd.read_csv(out / "predictions" / "lora-merged.csv")
    np.testing.assert_allclose(adapter.prob_1, merged.prob_1, rtol=0, atol=MERGE_ATOL)
    # The run's own records, and timings measured here.
    import json

    recorded = json.loads((experiment / "even" / "all_results.json").read_text())
    assert rows.loc["even", "train_loss"] == pytest.approx(recorded["train_loss"])
    assert rows.loc["even", "train_runtime_s"] == pytest.approx(recorded["train_runtime"])
    assert (results.latency_ms_b1 > 0).all() and (results.throughput_b32 > 0).all()
    assert (results.latency_ms_b1_cpu > 0).all() and (results.throughput_b32_cpu > 0).all()
    assert (results.num_threads == 1).all() and (results.seed == 0).all()


def test_plots_and_report_written(evaluated):
    out, results = evaluated
    pngs = [out / "plots" / f"confusion_{m}.png" for m in results.model]
    pngs += [out / "plots" / f"{n}.png" for n in ("loss_curves", "quality_vs_size", "quality_vs_latency")]
    for png in pngs:
        image = imread(png)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0, png
    report = (out / "report.md").read_text()
    assert "## Verdict" in report and "plots/loss_curves.png" in report
    best = results.loc[results.f1.idxmax()]
    assert f"**{best.method}** is best on F1 ({best.f1:.3f})" in report
    assert "seed-to-seed spread is unknown" in report  # one seed: said, not invented


def test_seeds_are_grouped_by_method(tmp_path, tiny_base_model_dir, tiny_data_dir):
    exp = tmp_path / "exp"
    for seed in (0, 1):
        run_finetune.main(
            common_args(
                tiny_data_dir,
                exp / f"seed{seed}" / "teacher",
                model_name_or_path=tiny_base_model_dir,
                seed=seed,
                max_steps=3,
                do_eval="false",
                do_predict="false",
            )
        )
    out = tmp_path / "report"
    results = run_eval.main(
        ["--experiment_dir", str(exp), "--dataset_name", str(tiny_data_dir), "--output_dir", str(out)] + FAST
    )
    assert sorted(results.model) == ["seed0-teacher", "seed1-teacher"]
    assert sorted(results.seed) == [0, 1]
    summary = pd.read_csv(out / "summary.csv")
    assert summary.method.tolist() == ["teacher"] and summary.n_models[0] == 2
    assert summary.f1_mean[0] == pytest.approx(results.f1.mean())
    assert summary.roc_auc_std[0] == pytest.approx(results.roc_auc.std(ddof=1))
    report = (out / "report.md").read_text()
    assert "mean ± std" in report


@pytest.fixture(scope="module")
def multiclass_data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("four_class")  # shaped like go_emotions, but no preset name
    for split, n, seed in (("train", 64, 1), ("validation", 16, 2), ("test", 32, 3)):
        synthetic_rows(n, seed, num_labels=4).to_csv(directory / f"{split}.csv", index=False)
    return directory


def test_multiclass_gives_macro_metrics(tmp_path, tiny_base_model_dir, multiclass_data):
    model_dir = tmp_path / "teacher"
    run_finetune.main(
        common_args(
            multiclass_data,
            model_dir,
            model_name_or_path=tiny_base_model_dir,
            max_steps=4,
            do_eval="false",
            do_predict="false",
        )
    )
    out = tmp_path / "report"
    results = run_eval.main(
        ["--model_dirs", str(model_dir), "--dataset_name", str(multiclass_data), "--output_dir", str(out)] + FAST
    )
    row = results.iloc[0]
    frame = pd.read_csv(out / "predictions" / "teacher.csv", float_precision="round_trip")
    assert [c for c in frame.columns if c.startswith("prob_")] == ["prob_0", "prob_1", "prob_2", "prob_3"]
    # Decided by the model's saved rule (logit offsets tuned on validation, or argmax when they stay 0).
    rule = DecisionRule.from_config(AutoConfig.from_pretrained(model_dir), SINGLE_LABEL, 4)
    preds = rule.decide(frame[["prob_0", "prob_1", "prob_2", "prob_3"]].to_numpy())
    assert (frame.pred.to_numpy() == preds).all()
    expected = _sklearn_metrics(frame, 4, preds=preds)
    for name, value in expected.items():
        assert row[name] == pytest.approx(value, abs=1e-6), name
    assert row.f1 == pytest.approx(row.macro_f1)  # multi-class F1 is the macro F1
    assert imread(out / "plots" / "confusion_teacher.png").shape[0] > 100


def test_label_mismatch_is_a_clear_error(tmp_path, capsys, experiment, multiclass_data):
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exit_info:
        run_eval.main(
            [
                "--model_dirs",
                str(experiment / "teacher"),
                "--dataset_name",
                str(multiclass_data),
                "--output_dir",
                str(out),
            ]
            + FAST
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "predicts 2 labels" in err and "has 4" in err and "--dataset_name" in err
    assert not out.exists()


def test_label_name_mismatch_is_a_clear_error(tmp_path, capsys, tiny_classifier_dir, tiny_data_dir):
    with pytest.raises(SystemExit) as exit_info:
        run_eval.main(
            ["--model_dirs", str(tiny_classifier_dir), "--dataset_name", str(tiny_data_dir)]
            + ["--output_dir", str(tmp_path / "r"), "--label_names", "spam,ham"]
            + FAST
        )
    assert exit_info.value.code == 2
    assert "['non-toxic', 'toxic']" in capsys.readouterr().err


def test_existing_report_is_refused(evaluated, tiny_data_dir, capsys, experiment):
    out, _ = evaluated
    before = (out / "results.csv").read_text()
    with pytest.raises(SystemExit) as exit_info:
        run_eval.main(
            ["--model_dirs", str(experiment / "odd"), "--dataset_name", str(tiny_data_dir), "--output_dir", str(out)]
        )
    assert exit_info.value.code == 2 and "--overwrite_output_dir" in capsys.readouterr().err
    assert (out / "results.csv").read_text() == before


def test_unfinished_runs_are_left_out(tmp_path, experiment, tiny_data_dir):
    exp = tmp_path / "exp"
    shutil.copytree(experiment / "teacher", exp / "teacher")
    # A run killed mid-training: only a checkpoint.
    shutil.copytree(experiment / "odd", exp / "odd" / "checkpoint-2")
    (exp / "odd" / "checkpoint-2" / "all_results.json").unlink()
    results = run_eval.main(
        ["--experiment_dir", str(exp), "--dataset_name", str(tiny_data_dir), "--output_dir", str(tmp_path / "r")] + FAST
    )
    assert results.model.tolist() == ["teacher"]
