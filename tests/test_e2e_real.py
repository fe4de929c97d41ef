"""End to end on the real assets: the real 6-layer MiniLM teacher, real toxic comments, odd and even students."""

import json
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from conftest import LOCAL_URL, SHARED, replayed_logits, requires_shared
from fastapi.testclient import TestClient
from tolerances import auc_noise_bound, forward_atol, multilabel_f1_noise_range, rounding_atol, within
from transformers import pipeline

import app
import run_distill
import run_eval
from distillkit.data import DataTrainingArguments, load_text_classification_data
from distillkit.serving import ModelRegistry, ServingLimits
from distillkit.tasks import label_id_lists, multi_hot, sigmoid

pytestmark = [pytest.mark.slow, requires_shared]


def test_real_teacher_then_odd_and_even_students_beat_the_majority_baseline(tmp_path):
    data = SHARED / "data" / "wiki_toxic_small"
    args = {
        "teacher_name_or_path": SHARED / "models" / "all-MiniLM-L6-v2",
        "dataset_name": data,
        "max_train_samples": 320,
        "max_eval_samples": 64,
        "max_test_samples": 200,
        "max_seq_length": 64,
        "per_device_train_batch_size": 16,
        "num_train_epochs": 2,
        "learning_rate": 1e-4,
        "teacher_num_train_epochs": 2,
        "teacher_learning_rate": 1e-4,
        "save_strategy": "no",
        "logging_steps": 5,
        "seed": 0,
        "use_cpu": "true",
        "disable_tqdm": "true",
    }
    exp = tmp_path / "EXP"
    results = {}
    for layers in ("even", "odd"):
        argv = [f"--{k}={v}" for k, v in dict(args, layers=layers, output_dir=exp / layers).items()]
        results[layers] = run_distill.main(argv)

    teacher = json.loads((exp / "teacher" / "all_results.json").read_text())
    test_texts = load_text_classification_data(
        DataTrainingArguments(dataset_name=str(data), max_test_samples=200), seed=0
    ).splits["test"]
    majority = max(Counter(test_texts["label"]).values()) / len(test_texts)
    for name, r in {"teacher": teacher, **results}.items():
        assert r["test_accuracy"] > majority + 0.1, (name, r["test_accuracy"], majority)
        assert r["test_roc_auc"] > 0.75, (name, r["test_roc_auc"])
    assert json.loads((exp / "even" / "config.json").read_text())["distillation_layers"] == [2, 4, 6]
    assert json.loads((exp / "odd" / "config.json").read_text())["distillation_layers"] == [1, 3, 5]

    classifier = pipeline("text-classification", model=str(exp / "even"))
    labels = [p["label"] for p in classifier(["I will find you and hurt you, idiot", "Thanks for fixing the citation"])]
    assert set(labels) <= {"non-toxic", "toxic"}


def test_go_emotions_multi_label_teacher_and_student(tmp_path):
    """Issue 12's command on the real data: the 28-label multi-label form, tuned thresholds, micro/macro F1 and AUC."""
    exp = tmp_path / "EXP"
    args = {
        "teacher_name_or_path": SHARED / "models" / "all-MiniLM-L6-v2",
        "dataset_name": SHARED / "data" / "go_emotions",
        "problem_type": "multi_label_classification",
        "layers": "even",
        "output_dir": exp / "even",
        "max_train_samples": 320,
        "max_eval_samples": 200,
        "max_test_samples": 200,
        "max_seq_length": 40,
        "per_device_train_batch_size": 32,
        "num_train_epochs": 2,
        "learning_rate": 1e-3,
        "teacher_num_train_epochs": 2,
        "teacher_learning_rate": 1e-3,
        "save_strategy": "no",
        "logging_steps": 5,
        "seed": 0,
        "use_cpu": "true",
        "disable_tqdm": "true",
        # Plain BCE, so the loss checks below can compare against ln 2 and the base rates (the default `auto`
        # weighs go_emotions' rare labels by pos_weight; tests/test_tasks.py covers how it resolves).
        "class_weights": "none",
    }
    results = run_distill.main([f"--{k}={v}" for k, v in args.items()])
    teacher = json.loads((exp / "teacher" / "all_results.json").read_text())
    for name, r in (("teacher", teacher), ("even", results)):
        for key in ("test_micro_f1", "test_macro_f1", "test_roc_auc", "test_pr_auc", "test_accuracy"):
            assert isinstance(r[key], float), (name, key)
        assert len(r["decision_thresholds"]) == 28
    # 28 rare labels from a few hundred rows rank no better than chance (the study's budget is 8,000 rows x 3
    # epochs): what this checks is that BCE training runs and learns, e.g. the labels' base rates.
    def bce(name):  # the logged gold term: BCE over the 28 labels
        history = json.loads((exp / name / "trainer_state.json").read_text())["log_history"]
        return [h["loss_ce"] for h in history if "loss_ce" in h]

    teacher_bce, student_bce = bce("teacher"), bce("even")
    assert len(teacher_bce) >= 3 and teacher_bce[-1] < 0.5 * teacher_bce[0], teacher_bce
    # The student starts from the trained teacher's layers and head: far below an untrained head's ln 2 already.
    assert max(student_bce) < 0.5 * math.log(2), student_bce
    config = json.loads((exp / "even" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and len(config["id2label"]) == 28
    # run_eval.py reads the same task and thresholds: its scores on the same test rows are the training run's.
    out = tmp_path / "report"
    run_eval.main(
        ["--model_dirs", str(exp / "teacher"), str(exp / "even"), "--dataset_name", str(args["dataset_name"])]
        + ["--problem_type", "multi_label", "--max_test_samples", "200", "--max_seq_length", "40", "--seed", "0"]
        + ["--output_dir", str(out), "--latency_runs", "50", "--throughput_texts", "32", "--bootstrap_samples", "10"]
    )
    # The training run's test pass (the Trainer's predict: dataset order, 8 texts per batch padded to the longest) and
    # run_eval's (length-sorted batches of 64) compute the same logits up to float32 rounding, which can reorder
    # near-tied texts and decide a label at its threshold either way. Both passes are
    # replayed here on run_eval's texts to measure that rounding; each metric is then compared within the range that
    # twice the rounding allows (tests/tolerances.py): the factor 2 covers the replay of the Trainer's pass, which
    # may round as the training run did only up to the same size. Logits rank as the (float64) sigmoids do. These
    # models are near chance and give many texts logits within 1e-5 of each other, so rounding alone moves their
    # macro ROC-AUC by up to ~0.06 (measured 1e-4 to 2e-4); the F1 ranges stay within ~0.01.
    csv = pd.read_csv(out / "results.csv").set_index("model")
    for name, r in (("teacher", teacher), ("even", results)):
        frame = pd.read_csv(out / "predictions" / f"{name}.csv")
        gold = multi_hot(label_id_lists(frame["label"]), 28).astype(bool)
        trainer_logits, eval_logits = replayed_logits(exp / name, frame["text"].tolist(), args["max_seq_length"], 8)
        probs = frame[[f"prob_{j}" for j in range(28)]].to_numpy(dtype=np.float64)
        assert np.abs(sigmoid(eval_logits) - probs).max() <= forward_atol(eval_logits), name  # this model, sigmoids
        atol = rounding_atol(eval_logits, trainer_logits)
        auc_atol = auc_noise_bound(eval_logits, gold, atol)
        assert csv.loc[name, "roc_auc"] == pytest.approx(r["test_roc_auc"], abs=auc_atol), (name, auc_atol)
        thresholds = np.asarray(r["decision_thresholds"])
        f1_ranges = multilabel_f1_noise_range(eval_logits, gold, np.log(thresholds / (1 - thresholds)), atol)
        for key, (low, high) in f1_ranges.items():
            assert within(r[f"test_{key}"], (low, high)), (name, key, low, high)
            assert within(csv.loc[name, key], (low, high)), (name, key, low, high)
    assert len(pd.read_csv(out / "per_label.csv").query("model == 'even'")) == 28
    # The web app serves it: 28 sigmoids and the labels over their thresholds.
    registry = ModelRegistry.from_dirs([str(exp / "even")], ServingLimits())
    with TestClient(app.create_app(registry), base_url=LOCAL_URL) as client:
        answer = client.post("/api/predict", json={"texts": ["thank you so much, I love it"], "models": ["even"]})
    registry.close()
    assert answer.status_code == 200, answer.text
    prediction = answer.json()["results"][0]["predictions"][0]
    assert len(prediction["probabilities"]) == 28 and prediction["problem_type"] == "multi_label_classification"
    assert prediction["labels"] == [
        name for j, name in enumerate(config["id2label"].values())
        if prediction["probabilities"][name] >= config["decision_thresholds"][j]
    ]  # fmt: skip
