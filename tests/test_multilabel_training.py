"""Multi-label and imbalanced training end to end on tiny models: BCE + binary KD, tuned thresholds saved with the
model, the task type in config and record, class weights, and the checks that keep a wrong teacher out."""

import json
import random

import numpy as np
import pandas as pd
import pytest
from conftest import FILLER, TOXIC_WORDS, common_args, saved_model_probabilities
from tolerances import (
    assert_f1_best_threshold,
    binary_noise_range,
    multilabel_f1_noise_range,
    within,
)
from transformers import AutoConfig

import run_distill
from distillkit.tasks import MULTI_LABEL, SINGLE_LABEL
from distillkit.teacher import has_trained_head

LABELS = ["insult", "threat", "obscene", "hate"]
FAST = {"teacher_num_train_epochs": 3, "teacher_learning_rate": 2e-3, "num_train_epochs": 2}


def multi_label_rows(n: int, seed: int) -> pd.DataFrame:
    """Label j is on when the j-th toxic word is in the text: learnable, and some rows have no label at all."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ids = sorted(j for j in range(len(LABELS)) if rng.random() < 0.35)
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))] + [TOXIC_WORDS[j] for j in ids]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "labels": ",".join(map(str, ids))})  # "0,2", "3" or "" (no label)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def multi_label_data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("multi_label_data")
    for split, n, seed in (("train", 160, 1), ("validation", 48, 2), ("test", 48, 3)):
        multi_label_rows(n, seed).to_csv(directory / f"{split}.csv", index=False)
    return directory


def run(argv):
    return run_distill.main([str(a) for a in argv])


def test_multi_label_teacher_and_student_with_tuned_thresholds(tmp_path, tiny_base_model_dir, multi_label_data_dir):
    exp = tmp_path / "EXP"
    argv = common_args(
        multi_label_data_dir, exp / "even", teacher_name_or_path=tiny_base_model_dir, layers="even", **FAST
    )
    results = run(argv + ["--class_names", ",".join(LABELS)])
    validation = pd.read_csv(multi_label_data_dir / "validation.csv", keep_default_na=False)
    test = pd.read_csv(multi_label_data_dir / "test.csv", keep_default_na=False)

    def multi_hot(column):
        return np.array([[int(str(j) in str(v).split(",")) for j in range(len(LABELS))] for v in column])

    for directory in (exp / "teacher", exp / "even"):
        config = json.loads((directory / "config.json").read_text())
        assert config["problem_type"] == MULTI_LABEL
        assert config["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
        record = json.loads((directory / "run_record.json").read_text())
        assert record["problem_type"] == MULTI_LABEL
        # The saved thresholds are the F1-best ones on the validation split, label by label ...
        val_probs, atol = saved_model_probabilities(directory, validation["text"])
        val_gold = multi_hot(validation["labels"]).astype(bool)
        for j, threshold in enumerate(config["decision_thresholds"]):
            assert_f1_best_threshold(val_probs[:, j], val_gold[:, j], threshold, atol)
        # ... and the test scores are taken at them (within the range the rounding of the two passes allows).
        saved = json.loads((directory / "all_results.json").read_text())
        test_probs, atol = saved_model_probabilities(directory, test["text"])
        ranges = multilabel_f1_noise_range(test_probs, multi_hot(test["labels"]), config["decision_thresholds"], atol)
        assert within(saved["test_micro_f1"], ranges["micro_f1"]) and within(saved["test_macro_f1"], ranges["macro_f1"])
        assert saved["test_f1"] == saved["test_micro_f1"] and 0 <= saved["test_roc_auc"] <= 1
        assert saved["decision_thresholds"] == config["decision_thresholds"]
    assert results["test_micro_f1"] > 0.5  # the words decide the labels: the teacher and student learn them
    history = json.loads((exp / "even" / "trainer_state.json").read_text())["log_history"]
    assert any({"loss_ce", "loss_kl", "loss_cos"} <= h.keys() for h in history)


def test_multi_label_with_cached_teacher_logits_and_balanced_pos_weight(
    tmp_path, tiny_base_model_dir, multi_label_data_dir, caplog
):
    exp = tmp_path / "EXP"
    argv = common_args(
        multi_label_data_dir, exp / "odd", teacher_name_or_path=tiny_base_model_dir, layers="odd", **FAST
    )
    caplog.set_level("INFO")
    results = run(argv + ["--cache_teacher_logits", "true", "--class_weights", "balanced", "--tune_thresholds", "false"])
    config = json.loads((exp / "odd" / "config.json").read_text())
    assert config["problem_type"] == MULTI_LABEL and config.get("decision_thresholds") is None
    assert "decision_thresholds" not in results
    train = pd.read_csv(multi_label_data_dir / "train.csv", keep_default_na=False)
    y = np.array([[int(str(j) in str(v).split(",")) for j in range(4)] for v in train["labels"]])
    pos_weight = (len(y) - y.sum(0)) / y.sum(0)
    logged = next(r.getMessage() for r in caplog.records if "class weights of the CE term" in r.getMessage())
    np.testing.assert_allclose(json.loads(logged.split(": ", 1)[1]), pos_weight, rtol=1e-6)
    history = json.loads((exp / "odd" / "trainer_state.json").read_text())["log_history"]
    assert any("loss_kl" in h for h in history)


def test_binary_tuned_threshold_decides_the_test_scores(tmp_path, tiny_classifier_dir, tiny_data_dir):
    out = tmp_path / "EXP" / "even"
    results = run(
        common_args(tiny_data_dir, out, teacher_name_or_path=tiny_classifier_dir, layers="even")
        + ["--tune_decision", "true"]
    )
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == SINGLE_LABEL and len(config["decision_thresholds"]) == 1
    test = pd.read_csv(tiny_data_dir / "test.csv")
    probs, atol = saved_model_probabilities(out, test["text"])
    threshold = config["decision_thresholds"][0]
    assert within(results["test_f1"], binary_noise_range(probs[:, 1], test["label"] == 1, threshold, atol)["f1"])


def _expect_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        run(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_task_flags_are_checked_before_anything_is_written(
    tmp_path, tiny_base_model_dir, tiny_classifier_dir, tiny_data_dir, capsys
):
    # (A 3-class single-label task now has a tuned rule too, per-class logit offsets: tests/test_decision.py.)
    out = tmp_path / "EXP" / "even"
    # A single-label teacher in EXP/teacher is not reused for a multi-label request on the same data.
    run(common_args(tiny_data_dir, out, teacher_name_or_path=tiny_base_model_dir, layers="even", **FAST))
    before = (tmp_path / "EXP" / "teacher" / "model.safetensors").read_bytes()
    _expect_exit_2(
        capsys,
        common_args(tiny_data_dir, tmp_path / "EXP" / "odd", teacher_name_or_path=tiny_base_model_dir, layers="odd")
        + ["--problem_type", "multi_label"],
        "problem_type: single_label_classification -> multi_label_classification",  # the request fingerprint
    )
    assert (tmp_path / "EXP" / "teacher" / "model.safetensors").read_bytes() == before
    # A fine-tuned 2-class single-label classifier is not "already trained" for a 2-label multi-label task.
    config = AutoConfig.from_pretrained(tiny_classifier_dir)
    assert has_trained_head(config, 2, SINGLE_LABEL) and not has_trained_head(config, 2, MULTI_LABEL)


@pytest.mark.parametrize("chooser", ["auto", "search"])
def test_layers_auto_and_search_on_a_multi_label_task(tmp_path, tiny_base_model_dir, multi_label_data_dir, chooser):
    """go_emotions' study arm: both choosers score on macro F1 over the labels, from multi-hot validation labels."""
    out = tmp_path / "EXP" / chooser
    argv = common_args(
        multi_label_data_dir, out, teacher_name_or_path=tiny_base_model_dir, layers=chooser, num_student_layers=2,
        layer_search_probe_steps=2, **FAST,
    )  # fmt: skip
    run(argv + ["--class_names", ",".join(LABELS)])
    record = json.loads((out / "run_record.json").read_text())
    selection = record["layer_selection"]
    assert selection["criterion"] == chooser and selection["metric"] == "macro_f1"
    assert record["layers"] == selection["chosen"] and len(selection["chosen"]) == 2
    # the teacher learnt the words: its macro F1 on the validation sample is a real score, not a degenerate 0
    assert 0.5 < selection["teacher_metric"] <= 1
    assert json.loads((out / "config.json").read_text())["problem_type"] == MULTI_LABEL
