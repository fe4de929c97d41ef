"""Issue 28, readers use what the model recorded, beyond run_eval.py's columns/threshold/class names/seed:
run_export.py reads its validation rows as the model did (seed, columns, threshold, class names, split percentages,
through distillkit/recorded_reading.py like run_eval.py), checks --max_seq_length against the model's position limit
(distillkit/data_args.check_max_seq_length: one `error:` line), and both readers carve a data set's missing splits
with the percentages the model recorded. Each test failed on the code before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import synthetic_rows, usage_error_line

import run_eval
import run_export
from distillkit.data import DataTrainingArguments, load_text_classification_data
from distillkit.records import RunRecord

FAST_EVAL = ["--max_seq_length", "32", "--latency_runs", "50", "--throughput_texts", "32", "--num_threads", "1"]
FAST_EVAL += ["--bootstrap_samples", "10"]


def _recorded_model(source: Path, path: Path, data_args: DataTrainingArguments, seed: int, **load) -> Path:
    """A copy of `source` whose run_record.json says it was trained on `data_args` with `seed`, as a training run
    records it: the data set record, and the fingerprint's seed, class names and split percentages."""
    shutil.copytree(source, path)
    data = load_text_classification_data(data_args, seed=seed, **load)
    id2label = json.loads((path / "config.json").read_text())["id2label"]
    names = [id2label[str(i)] for i in range(len(id2label))]
    record = RunRecord(method="finetune", dataset=data.source, seed=seed, label_names=names)
    record.fingerprint = {
        "seed": seed,
        "class_names": list(data.id2label.values()),
        "dataset": data_args.dataset_name,
        "validation_split_percentage": data_args.validation_split_percentage,
        "test_split_percentage": data_args.test_split_percentage,
    }
    record.save(str(path))
    return path


@pytest.fixture()
def export_inputs(monkeypatch) -> dict:
    """What run_export.py hands the exporter (the check texts, their labels, the length): the real export still runs."""
    seen: dict = {}
    real = run_export.export_classifier

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(run_export, "export_classifier", spy)
    return seen


def _export(model_dir, out, *extra):
    return run_export.main(["--model_dir", str(model_dir), "--output_dir", str(out), *map(str, extra)])


def _eval(model_dirs, data_dir, out, *extra) -> pd.DataFrame:
    argv = ["--model_dirs", *map(str, model_dirs), "--dataset_name", str(data_dir), "--output_dir", str(out)]
    return run_eval.main(argv + FAST_EVAL + [str(e) for e in extra])


def _split_texts(data_args: DataTrainingArguments, seed: int, split: str) -> list[str]:
    return list(load_text_classification_data(data_args, seed=seed).splits[split]["text"])


# --- run_export.py: the validation rows as the model held them out --------------------------------------------------


def test_export_checks_on_the_validation_rows_the_model_held_out_with_its_seed(tmp_path, tiny_classifier_dir,
                                                                               train_only_data, export_inputs):  # fmt: skip
    """Old code: seed 42 whatever the model's seed, so the int8 check scored training rows as `validation`."""
    args = DataTrainingArguments(dataset_name=str(train_only_data), max_seq_length=32)
    model = _recorded_model(tiny_classifier_dir, tmp_path / "model", args, seed=7)
    held_out = _split_texts(args, 7, "validation")
    assert sorted(held_out) != sorted(_split_texts(args, 42, "validation"))

    _export(model, tmp_path / "onnx", "--dataset_name", train_only_data, "--max_seq_length", 32)
    assert export_inputs["texts"] == held_out


def test_export_warns_when_seed_flag_overrides_the_recorded_seed(tmp_path, caplog, tiny_classifier_dir,
                                                                 train_only_data, export_inputs):  # fmt: skip
    args = DataTrainingArguments(dataset_name=str(train_only_data), max_seq_length=32)
    model = _recorded_model(tiny_classifier_dir, tmp_path / "model", args, seed=7)
    _export(model, tmp_path / "onnx", "--dataset_name", train_only_data, "--max_seq_length", 32, "--seed", 42)
    assert export_inputs["texts"] == _split_texts(args, 42, "validation")
    assert "trained with seed 7" in caplog.text and "--seed 42" in caplog.text


def test_export_labels_its_validation_rows_by_the_class_names_the_model_recorded(tmp_path, tiny_classifier_dir,
                                                                                 export_inputs):  # fmt: skip
    """Trained with --class_names rude,calm (rude is id 0): old code read the names sorted (calm = 0), so the int8
    check's F1 compared the model's ids with swapped labels."""
    data_dir = tmp_path / "named"
    data_dir.mkdir()
    for split, n, seed in (("train", 32, 1), ("validation", 12, 2), ("test", 8, 3)):
        rows = synthetic_rows(n, seed)
        rows["label"] = rows["label"].map({0: "calm", 1: "rude"})
        rows.to_csv(data_dir / f"{split}.csv", index=False)
    model = tmp_path / "model"
    shutil.copytree(tiny_classifier_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "rude", "1": "calm"}, {"rude": 0, "calm": 1}
    (model / "config.json").write_text(json.dumps(config))
    args = DataTrainingArguments(dataset_name=str(data_dir), max_seq_length=32)
    data = load_text_classification_data(args, seed=0, class_names=["rude", "calm"])
    record = RunRecord(method="finetune", dataset=data.source, seed=0, label_names=["rude", "calm"])
    record.fingerprint = {"seed": 0, "class_names": ["rude", "calm"], "dataset": str(data_dir)}
    record.save(str(model))

    _export(model, tmp_path / "onnx", "--dataset_name", data_dir, "--max_seq_length", 32)
    names = pd.read_csv(data_dir / "validation.csv").label
    assert export_inputs["labels"].tolist() == [0 if name == "rude" else 1 for name in names]


@pytest.mark.parametrize("with_data", [False, True], ids=["no_data", "with_data"])
def test_export_max_seq_length_above_the_position_limit_is_one_error_line(tmp_path, capsys, tiny_classifier_dir,
                                                                          tiny_data_dir, with_data):  # fmt: skip
    """The tiny model takes 64 positions: 100000 was passed on to tokenization unchecked."""
    out = tmp_path / "onnx"
    argv = ["--model_dir", tiny_classifier_dir, "--output_dir", out, "--max_seq_length", 100000]
    argv += ["--dataset_name", tiny_data_dir] if with_data else []
    line = usage_error_line(capsys, run_export.main, argv)
    assert "--max_seq_length 100000" in line and "64" in line and "max_position_embeddings" in line
    assert not out.exists()


def test_export_default_length_is_lowered_to_the_position_limit(tmp_path, tiny_classifier_dir, export_inputs):
    """The default 128 (not given) is more than the tiny model's 64 positions: lowered with a warning, as training
    and run_eval.py do, not passed on."""
    _export(tiny_classifier_dir, tmp_path / "onnx")
    assert export_inputs["max_length"] == 64


# --- the split percentages the model recorded -----------------------------------------------------------------------


def test_eval_carves_the_test_split_with_the_percentages_the_model_recorded(tmp_path, tiny_classifier_dir,
                                                                            train_only_data):  # fmt: skip
    """Trained with --test_split_percentage 30 (--validation_split_percentage 20): old code carved 10% as `test`,
    rows of the model's own training split among them."""
    args = DataTrainingArguments(dataset_name=str(train_only_data), max_seq_length=32, validation_split_percentage=20,
                                 test_split_percentage=30)  # fmt: skip
    model = _recorded_model(tiny_classifier_dir, tmp_path / "model", args, seed=7)
    held_out = _split_texts(args, 7, "test")
    assert len(held_out) == 24

    _eval([model], train_only_data, tmp_path / "report")
    scored = pd.read_csv(tmp_path / "report" / "predictions" / "model.csv")
    assert sorted(scored.text) == sorted(held_out)


def test_eval_warns_when_a_split_percentage_flag_overrides_the_recorded_one(tmp_path, caplog, tiny_classifier_dir,
                                                                            train_only_data):  # fmt: skip
    args = DataTrainingArguments(dataset_name=str(train_only_data), max_seq_length=32, test_split_percentage=30)
    model = _recorded_model(tiny_classifier_dir, tmp_path / "model", args, seed=7)
    _eval([model], train_only_data, tmp_path / "report", "--test_split_percentage", 20)
    scored = pd.read_csv(tmp_path / "report" / "predictions" / "model.csv")
    told = DataTrainingArguments(dataset_name=str(train_only_data), max_seq_length=32, test_split_percentage=20)
    assert sorted(scored.text) == sorted(_split_texts(told, 7, "test"))
    assert "test_split_percentage 30" in caplog.text and "--test_split_percentage 20" in caplog.text


def test_eval_refuses_models_of_different_split_percentages_on_a_carved_split(tmp_path, capsys, tiny_classifier_dir,
                                                                              train_only_data, tiny_data_dir):  # fmt: skip
    """Each model's carved test split holds the other's training rows: not one table (as for different seeds)."""
    a = _recorded_model(tiny_classifier_dir, tmp_path / "a", DataTrainingArguments(
        dataset_name=str(train_only_data), max_seq_length=32, test_split_percentage=20), seed=7)  # fmt: skip
    b = _recorded_model(tiny_classifier_dir, tmp_path / "b", DataTrainingArguments(
        dataset_name=str(train_only_data), max_seq_length=32, test_split_percentage=30), seed=7)  # fmt: skip
    out = tmp_path / "report"
    argv = ["--model_dirs", a, b, "--dataset_name", train_only_data, "--output_dir", out] + FAST_EVAL
    line = usage_error_line(capsys, run_eval.main, argv)
    assert "test_split_percentage" in line and "20" in line and "30" in line
    assert not out.exists()
    # A data set with its own test file: the percentages do not choose the test rows, so both are scored together.
    c = _recorded_model(tiny_classifier_dir, tmp_path / "c", DataTrainingArguments(
        dataset_name=str(tiny_data_dir), max_seq_length=32, test_split_percentage=20), seed=7)  # fmt: skip
    d = _recorded_model(tiny_classifier_dir, tmp_path / "d", DataTrainingArguments(
        dataset_name=str(tiny_data_dir), max_seq_length=32, test_split_percentage=30), seed=7)  # fmt: skip
    assert len(_eval([c, d], tiny_data_dir, tmp_path / "report2")) == 2


def test_export_carves_validation_with_the_percentages_the_model_recorded(tmp_path, tiny_classifier_dir,
                                                                          train_only_data, export_inputs):  # fmt: skip
    args = DataTrainingArguments(dataset_name=str(train_only_data), max_seq_length=32, validation_split_percentage=25,
                                 test_split_percentage=15)  # fmt: skip
    model = _recorded_model(tiny_classifier_dir, tmp_path / "model", args, seed=7)
    held_out = _split_texts(args, 7, "validation")
    assert len(held_out) == 20

    _export(model, tmp_path / "onnx", "--dataset_name", train_only_data, "--max_seq_length", 32)
    assert export_inputs["texts"] == held_out
