"""Issue 28: a careless user's flags end in one `error:` line (exit 2, nothing written) or are read as meant, and
run_eval.py reads the data as the model recorded it. Each test fails on the code before issue 28."""

from __future__ import annotations

import math
import shutil

import pandas as pd
import pytest
from conftest import common_args, synthetic_rows, usage_error_line

import run_distill
import run_eval
from distill_trainer import DistillationTrainingArguments
from distillkit.cli import UsageError, parse_args
from distillkit.data import DataTrainingArguments, load_text_classification_data
from distillkit.evaluation import unique_names
from distillkit.records import RunRecord

FAST_EVAL = ["--max_seq_length", "32", "--latency_runs", "50", "--throughput_texts", "32", "--num_threads", "1"]
FAST_EVAL += ["--bootstrap_samples", "10"]


@pytest.mark.parametrize("threshold", [-0.2, 0.0, 1.0, 1.5, math.nan])
def test_label_threshold_outside_0_1_or_nan_is_refused(tiny_data_dir, threshold):
    with pytest.raises(UsageError, match="--label_threshold .*between 0 and 1"):
        DataTrainingArguments(dataset_name=str(tiny_data_dir), label_threshold=threshold)
    assert DataTrainingArguments(dataset_name=str(tiny_data_dir), label_threshold=0.3).label_threshold == 0.3


def test_label_threshold_nan_is_one_error_line_from_a_script(tmp_path, capsys, tiny_classifier_dir, tiny_data_dir):
    argv = common_args(tiny_data_dir, tmp_path / "odd", teacher_name_or_path=tiny_classifier_dir, label_threshold="nan")
    assert "--label_threshold nan" in usage_error_line(capsys, run_distill.main, argv)
    assert not (tmp_path / "odd").exists()


def test_class_names_must_match_the_data(tmp_path, tiny_data_dir):
    args = DataTrainingArguments(dataset_name=str(tiny_data_dir), max_seq_length=32)
    with pytest.raises(UsageError, match="--class_names gives 3 names .* ids 0..1 \\(2 classes\\)"):
        load_text_classification_data(args, seed=0, class_names=["a", "b", "c"])
    assert load_text_classification_data(args, seed=0, class_names=["calm", "rude"]).num_labels == 2
    # --label_columns: one name per label column.
    multi = tmp_path / "multi"
    multi.mkdir()
    for split, n, seed in (("train", 32, 1), ("validation", 8, 2), ("test", 8, 3)):
        rows = synthetic_rows(n, seed)
        rows["a"], rows["b"] = rows["label"], 1 - rows["label"]
        rows.drop(columns="label").to_csv(multi / f"{split}.csv", index=False)
    multi_args = DataTrainingArguments(dataset_name=str(multi), label_columns="a,b", max_seq_length=32)
    with pytest.raises(UsageError, match="--class_names gives 3 names .* names 2 classes \\(a, b\\)"):
        load_text_classification_data(multi_args, seed=0, class_names=["x", "y", "z"])


def test_class_weights_of_the_wrong_length_is_oneusage_error_line(tmp_path, capsys, tiny_classifier_dir, tiny_data_dir):
    out = tmp_path / "odd"
    argv = common_args(tiny_data_dir, out, teacher_name_or_path=tiny_classifier_dir, class_weights="1,2,3")
    assert "--class_weights 1,2,3: expected 2 positive numbers" in usage_error_line(capsys, run_distill.main, argv)
    assert not out.exists()


def test_balanced_class_weights_with_a_class_absent_from_train(tmp_path, capsys, tiny_classifier_dir):
    data = tmp_path / "data"
    data.mkdir()
    for split, n, seed in (("train", 32, 1), ("validation", 8, 2), ("test", 8, 3)):
        rows = synthetic_rows(n, seed, num_labels=3)
        if split == "train":
            rows = rows[rows.label != 1]
        rows.to_csv(data / f"{split}.csv", index=False)
    argv = common_args(data, tmp_path / "odd", teacher_name_or_path=tiny_classifier_dir, class_weights="balanced")
    line = usage_error_line(capsys, run_distill.main, argv + ["--class_names", "a,b,c"])
    assert "--class_weights balanced: classes [1] have no example in train" in line


@pytest.mark.parametrize(
    "flag,value",
    [("per_device_train_batch_size", "0"), ("per_device_eval_batch_size", "0"), ("learning_rate", "-1e-3"),
     ("learning_rate", "nan"), ("gradient_accumulation_steps", "0")],
)  # fmt: skip
def test_batch_size_0_or_a_negative_learning_rate_is_oneusage_error_line(tmp_path, capsys, tiny_classifier_dir,
                                                                    tiny_data_dir, flag, value):  # fmt: skip
    out = tmp_path / "odd"
    argv = common_args(tiny_data_dir, out, teacher_name_or_path=tiny_classifier_dir) + [f"--{flag}={value}"]
    assert f"--{flag} {value}" in usage_error_line(capsys, run_distill.main, argv).replace("-0.001", "-1e-3")
    assert not out.exists()


def test_yaml_lists_are_accepted_for_list_flags(tmp_path, tiny_data_dir):
    path = tmp_path / "args.yaml"
    path.write_text(
        f"dataset_name: {tiny_data_dir}\noutput_dir: {tmp_path / 'out'}\nlayers: [1, 3]\nclass_weights: [1, 4]\n"
        "use_cpu: true\nreport_to: none\n"
    )
    student, _, training = parse_args((run_distill.StudentArguments, DataTrainingArguments,
                                       DistillationTrainingArguments), [str(path)])  # fmt: skip
    assert student.layers == "1,3" and training.class_weights == "1,4"
    path.write_text(f"dataset_name: {tiny_data_dir}\noutput_dir: {tmp_path / 'out'}\nlayers: [[1, 3]]\n")
    with pytest.raises(UsageError, match="layers: .*expected a list of numbers or names"):
        parse_args((run_distill.StudentArguments, DataTrainingArguments, DistillationTrainingArguments), [str(path)])


def test_unique_names_never_collide():
    assert unique_names(["a", "a", "a-2"]) == ["a", "a-3", "a-2"]
    names = unique_names(["m", "M", "m", "m-2"])
    assert len({n.casefold() for n in names}) == 4


def test_colliding_model_names_each_get_their_own_row_and_file(tmp_path, tiny_classifier_dir, tiny_data_dir):
    """Old code: x/m, y/m, m-2 → names m, m-2, m-2: one predictions file overwritten, one row lost."""
    dirs = [tmp_path / "x" / "m", tmp_path / "y" / "m", tmp_path / "m-2"]
    for d in dirs:
        shutil.copytree(tiny_classifier_dir, d)
    out = tmp_path / "report"
    results = run_eval.main(
        ["--model_dirs", *map(str, dirs), "--dataset_name", str(tiny_data_dir), "--output_dir", str(out)] + FAST_EVAL
    )
    assert sorted(results.model) == ["m", "m-2", "m-3"]
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["m-2.csv", "m-3.csv", "m.csv"]


def test_eval_max_seq_length_above_the_position_limit_is_refused(tmp_path, capsys, tiny_classifier_dir, tiny_data_dir):
    out = tmp_path / "report"
    argv = ["--model_dirs", tiny_classifier_dir, "--dataset_name", tiny_data_dir, "--output_dir", out]
    argv += FAST_EVAL + ["--max_seq_length", "100000"]
    line = usage_error_line(capsys, run_eval.main, argv)
    assert "--max_seq_length 100000" in line and "at most 64 tokens" in line
    assert not out.exists()
    # Not given: the default (128) is lowered to the model's 64, with a warning, and the model is scored.
    default = FAST_EVAL[2:]  # without --max_seq_length 32
    results = run_eval.main([str(a) for a in argv[:6]] + default)
    logged = capsys.readouterr()
    assert len(results) == 1 and "--max_seq_length 64: the default 128" in logged.out + logged.err


@pytest.fixture()
def two_targets(tmp_path) -> str:
    """Data with `label` and its complement `label_b`."""
    directory = tmp_path / "targets"
    directory.mkdir()
    for split, n, seed in (("train", 32, 1), ("validation", 8, 2), ("test", 12, 3)):
        rows = synthetic_rows(n, seed)
        rows["label_b"] = 1 - rows["label"]
        rows.to_csv(directory / f"{split}.csv", index=False)
    return directory


def test_eval_scores_against_the_label_column_the_model_recorded(tmp_path, caplog, tiny_classifier_dir, two_targets):
    model = tmp_path / "model_b"
    shutil.copytree(tiny_classifier_dir, model)
    data = load_text_classification_data(
        DataTrainingArguments(dataset_name=str(two_targets), label_column="label_b", max_seq_length=32), seed=0
    )
    RunRecord(method="finetune", dataset=data.source, seed=0).save(str(model))
    test = pd.read_csv(two_targets / "test.csv")

    results = run_eval.main(
        ["--model_dirs", str(model), "--dataset_name", str(two_targets), "--output_dir", str(tmp_path / "r1")]
        + FAST_EVAL
    )
    assert len(results) == 1
    scored = pd.read_csv(tmp_path / "r1" / "predictions" / "model_b.csv")
    assert scored.label.tolist() == test.label_b.tolist()  # the recorded target, not detection's `label`

    caplog.clear()
    run_eval.main(
        ["--model_dirs", str(model), "--dataset_name", str(two_targets), "--output_dir", str(tmp_path / "r2")]
        + ["--label_column", "label"]
        + FAST_EVAL
    )
    scored = pd.read_csv(tmp_path / "r2" / "predictions" / "model_b.csv")
    assert scored.label.tolist() == test.label.tolist()  # told otherwise: as told, with a warning
    assert "was trained with {'label_column': 'label_b'}" in caplog.text
