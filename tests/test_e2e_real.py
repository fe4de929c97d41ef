"""End to end on the real assets: the real 6-layer MiniLM teacher, real toxic comments, odd and even students."""

import json
from collections import Counter

import pytest
from conftest import SHARED, requires_shared
from transformers import pipeline

import run_distill
from distillkit.data import DataTrainingArguments, load_text_classification_data

pytestmark = [pytest.mark.slow, requires_shared]


def test_real_teacher_then_odd_and_even_students_beat_the_majority_baseline(tmp_path):
    data = SHARED / "data" / "wiki_toxic_small"
    args = dict(
        teacher_name_or_path=SHARED / "models" / "all-MiniLM-L6-v2",
        dataset_name=data,
        max_train_samples=320,
        max_eval_samples=64,
        max_test_samples=200,
        max_seq_length=64,
        per_device_train_batch_size=16,
        num_train_epochs=2,
        learning_rate=1e-4,
        teacher_num_train_epochs=2,
        teacher_learning_rate=1e-4,
        save_strategy="no",
        logging_steps=5,
        seed=0,
        use_cpu="true",
        disable_tqdm="true",
    )
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
