"""Issue 28, readers and model directories: run_eval.py reads the data as each model recorded it (columns, threshold,
class names, split seed), refuses a directory whose head was never trained, and every reader (run_eval.py, app.py,
run_export.py, run_compare.py) turns a model directory that cannot load (an adapter whose base is gone, no weights)
into one `error:` line naming the path. run_eval.py writes nothing until every model is scored; run_lora.py
--overwrite_output_dir is a fresh start. Each test names the defect it covers and failed on the code before."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import common_args, synthetic_rows, usage_error_lines
from safetensors.torch import load_file, save_file

import app
import run_compare
import run_eval
import run_export
import run_lora
from distillkit.data import DataTrainingArguments, load_text_classification_data
from distillkit.records import RunRecord

FAST_EVAL = ["--max_seq_length", "32", "--latency_runs", "50", "--throughput_texts", "32", "--num_threads", "1"]
FAST_EVAL += ["--bootstrap_samples", "10"]


def _eval(model_dirs, data_dir, out, *extra) -> pd.DataFrame:
    argv = ["--model_dirs", *map(str, model_dirs), "--dataset_name", str(data_dir), "--output_dir", str(out)]
    return run_eval.main(argv + FAST_EVAL + [str(e) for e in extra])


def _recorded_model(source: Path, path: Path, data_args: DataTrainingArguments, seed: int, **load) -> Path:
    """A copy of `source` whose run_record.json says it was trained on `data_args` with `seed`, as a run records it."""
    shutil.copytree(source, path)
    data = load_text_classification_data(data_args, seed=seed, **load)
    id2label = json.loads((path / "config.json").read_text())["id2label"]
    names = [id2label[str(i)] for i in range(len(id2label))]  # the model's names (run_record.json's label_names)
    record = RunRecord(method="finetune", dataset=data.source, seed=seed, label_names=names)
    record.fingerprint = {"seed": seed, "class_names": list(data.id2label.values()), "dataset": data_args.dataset_name}
    record.save(str(path))
    return path


# --- defect 1: the model's split seed, class names and threshold --------------------------------------------------


def test_eval_carves_the_test_split_with_the_models_recorded_seed(tmp_path, tiny_classifier_dir, train_only_data):
    """Old code: seed 42 whatever the model's seed, so training rows were scored as `test`."""
    args = DataTrainingArguments(dataset_name=str(train_only_data), max_seq_length=32)
    model = _recorded_model(tiny_classifier_dir, tmp_path / "model", args, seed=7)
    trained_on = set(load_text_classification_data(args, seed=7).splits["train"]["text"])
    held_out = load_text_classification_data(args, seed=7).splits["test"]["text"]
    assert set(held_out) != set(load_text_classification_data(args, seed=42).splits["test"]["text"])

    _eval([model], train_only_data, tmp_path / "report")
    scored = pd.read_csv(tmp_path / "report" / "predictions" / "model.csv")
    assert sorted(scored.text) == sorted(held_out)
    assert not set(scored.text) & (trained_on - set(held_out))


def test_eval_warns_when_seed_flag_overrides_the_recorded_seed(tmp_path, caplog, tiny_classifier_dir,
                                                                         train_only_data):  # fmt: skip
    args = DataTrainingArguments(dataset_name=str(train_only_data), max_seq_length=32)
    model = _recorded_model(tiny_classifier_dir, tmp_path / "model", args, seed=7)
    _eval([model], train_only_data, tmp_path / "report", "--seed", "42")
    scored = pd.read_csv(tmp_path / "report" / "predictions" / "model.csv")
    assert sorted(scored.text) == sorted(load_text_classification_data(args, seed=42).splits["test"]["text"])
    assert "trained with seed 7" in caplog.text and "--seed 42" in caplog.text


def test_eval_refuses_models_of_different_seeds_on_a_carved_test_split(tmp_path, capsys, tiny_classifier_dir,
                                                                                 train_only_data, tiny_data_dir):  # fmt: skip
    args = DataTrainingArguments(dataset_name=str(train_only_data), max_seq_length=32)
    a = _recorded_model(tiny_classifier_dir, tmp_path / "a", args, seed=7)
    b = _recorded_model(tiny_classifier_dir, tmp_path / "b", args, seed=8)
    out = tmp_path / "report"
    argv = ["--model_dirs", a, b, "--dataset_name", train_only_data, "--output_dir", out] + FAST_EVAL
    (line,) = usage_error_lines(capsys, run_eval.main, argv)
    assert "seed 7" in line and "seed 8" in line and "--seed" in line
    assert not out.exists()
    # A data set with its own test file: the seed does not choose the test rows, so both are scored together.
    fixed = DataTrainingArguments(dataset_name=str(tiny_data_dir), max_seq_length=32)
    c = _recorded_model(tiny_classifier_dir, tmp_path / "c", fixed, seed=7)
    d = _recorded_model(tiny_classifier_dir, tmp_path / "d", fixed, seed=8)
    assert len(_eval([c, d], tiny_data_dir, tmp_path / "report2")) == 2


@pytest.fixture()
def named_labels(tmp_path) -> Path:
    """Labels written as names (calm / rude): the ids are the names' order, sorted unless --class_names gives it."""
    directory = tmp_path / "named"
    directory.mkdir()
    for split, n, seed in (("train", 32, 1), ("validation", 8, 2), ("test", 12, 3)):
        rows = synthetic_rows(n, seed)
        rows["label"] = rows["label"].map({0: "calm", 1: "rude"})
        rows.to_csv(directory / f"{split}.csv", index=False)
    return directory


def test_eval_uses_the_class_names_the_model_recorded(tmp_path, caplog, tiny_classifier_dir, named_labels):
    """Trained with --class_names rude,calm (rude is id 0): old code read the data sorted (calm = 0) and refused it."""
    model = tmp_path / "model"
    shutil.copytree(tiny_classifier_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "rude", "1": "calm"}, {"rude": 0, "calm": 1}
    (model / "config.json").write_text(json.dumps(config))
    args = DataTrainingArguments(dataset_name=str(named_labels), max_seq_length=32)
    data = load_text_classification_data(args, seed=0, class_names=["rude", "calm"])
    record = RunRecord(method="finetune", dataset=data.source, seed=0, label_names=["rude", "calm"])
    record.fingerprint = {"seed": 0, "class_names": ["rude", "calm"], "dataset": str(named_labels)}
    record.save(str(model))

    _eval([model], named_labels, tmp_path / "r1")
    scored = pd.read_csv(tmp_path / "r1" / "predictions" / "model.csv")
    test = pd.read_csv(named_labels / "test.csv")
    assert scored.label_name.tolist() == test.label.tolist()
    assert scored.label.tolist() == [0 if name == "rude" else 1 for name in test.label]

    caplog.clear()  # told otherwise: as told, with a warning (here the names then disagree with the model's: refused)
    argv = ["--model_dirs", model, "--dataset_name", named_labels, "--output_dir", tmp_path / "r2", "--class_names",
            "calm,rude"] + FAST_EVAL  # fmt: skip
    with pytest.raises(SystemExit):
        run_eval.main([str(a) for a in argv])
    assert "trained with class names ['rude', 'calm']" in caplog.text


def test_eval_uses_the_label_threshold_the_model_recorded(tmp_path, tiny_classifier_dir):
    """A score column thresholded at 0.8 in training: scored at 0.8, not the default."""
    directory = tmp_path / "scores"
    directory.mkdir()
    for split, n, seed in (("train", 32, 1), ("validation", 8, 2), ("test", 20, 3)):
        rows = synthetic_rows(n, seed).drop(columns="label")
        rows["toxicity"] = [round(0.05 * (i % 20), 2) for i in range(n)]
        rows.to_csv(directory / f"{split}.csv", index=False)
    args = DataTrainingArguments(dataset_name=str(directory), label_column="toxicity", label_threshold=0.8,
                                 max_seq_length=32)  # fmt: skip
    model = _recorded_model(tiny_classifier_dir, tmp_path / "model", args, seed=0)
    _eval([model], directory, tmp_path / "report")
    scored = pd.read_csv(tmp_path / "report" / "predictions" / "model.csv")
    expected = (pd.read_csv(directory / "test.csv").toxicity >= 0.8).astype(int)
    assert scored.label.tolist() == expected.tolist()


# --- defect 2: a head that was never trained ----------------------------------------------------------------------


def _headless_classifier(tiny_classifier_dir, path: Path) -> Path:
    """A classifier's config and tokenizer but weights without the classification head: loading would invent one."""
    shutil.copytree(tiny_classifier_dir, path)
    weights = load_file(path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("classifier.")}, path / "model.safetensors",
              metadata={"format": "pt"})  # fmt: skip
    return path


def test_eval_reports_a_base_model_without_trained_head_as_broken(tmp_path, capsys, tiny_base_model_dir,
                                                                          tiny_classifier_dir, tiny_data_dir):  # fmt: skip
    """Old code scored a newly initialised random head (run_export.py refused the same directory)."""
    base = tmp_path / "base"
    shutil.copytree(tiny_base_model_dir, base)
    headless = _headless_classifier(tiny_classifier_dir, tmp_path / "headless")
    good = tmp_path / "good"
    shutil.copytree(tiny_classifier_dir, good)
    out = tmp_path / "report"
    argv = ["--model_dirs", base, headless, good, "--dataset_name", tiny_data_dir, "--output_dir", out] + FAST_EVAL
    lines = usage_error_lines(capsys, run_eval.main, argv, code=1)
    assert len(lines) == 2
    assert str(base) in lines[0] and "not a trained classifier" in lines[0]
    assert str(headless) in lines[1] and "classifier.weight" in lines[1]
    results = pd.read_csv(out / "results.csv")
    assert results.model.tolist() == ["good"]  # the healthy model is still scored and written
    assert sorted(pd.read_csv(out / "broken_models.csv").model) == ["base", "headless"]


def test_export_refuses_a_head_that_was_never_trained(tmp_path, capsys, tiny_classifier_dir):
    headless = _headless_classifier(tiny_classifier_dir, tmp_path / "headless")
    argv = ["--model_dir", headless, "--output_dir", tmp_path / "onnx"]
    (line,) = usage_error_lines(capsys, run_export.main, argv)
    assert str(headless) in line and "classifier.weight" in line
    assert not (tmp_path / "onnx").exists()


# --- defect 3: an adapter whose base is gone, a directory without weights -----------------------------------------


def _adapter_on_a_copy(tiny_classifier_dir, tmp_path: Path) -> Path:
    """A LoRA adapter on a copy of the classifier, then the copy deleted."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = tmp_path / "base_copy"
    shutil.copytree(tiny_classifier_dir, base)
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForSequenceClassification.from_pretrained(base),
        LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"]),
    )
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(base).save_pretrained(adapter)
    shutil.rmtree(base)
    return adapter


def _no_weights(tiny_classifier_dir, path: Path) -> Path:
    shutil.copytree(tiny_classifier_dir, path)
    os.remove(path / "model.safetensors")
    return path


@pytest.mark.parametrize("broken", ["adapter_base_gone", "no_weights"])
def test_unloadable_model_dir_is_one_error_line_in_every_reader(tmp_path, capsys, tiny_classifier_dir,
                                                                         tiny_data_dir, broken):  # fmt: skip
    if broken == "adapter_base_gone":
        path, words = _adapter_on_a_copy(tiny_classifier_dir, tmp_path), "base model"
    else:
        path, words = _no_weights(tiny_classifier_dir, tmp_path / "empty"), "no weights"
    argv = ["--model_dirs", path, "--dataset_name", tiny_data_dir, "--output_dir", tmp_path / "report"] + FAST_EVAL
    (line,) = usage_error_lines(capsys, run_eval.main, argv, code=1)
    assert str(path) in line and words in line
    (line,) = usage_error_lines(capsys, app.main, ["--model_dirs", path, "--port", "0"])
    assert str(path) in line and words in line
    (line,) = usage_error_lines(capsys, run_export.main, ["--model_dir", path, "--output_dir", tmp_path / "onnx"])
    assert str(path) in line and words in line


def test_compare_says_what_to_do_for_a_stage_without_weights(tmp_path, capsys, tiny_base_model_dir,
                                                                     tiny_classifier_dir, tiny_data_dir):  # fmt: skip
    """Old code ran the student stage on a teacher directory without weights, which crashed, then said 'run the same
    command again to resume': running again cannot bring the weights back."""
    from test_compare import compare_argv

    exp = tmp_path / "exp"
    teacher = _no_weights(tiny_classifier_dir, exp / "seed0" / "teacher")
    (teacher / "all_results.json").write_text("{}")
    argv = compare_argv(tiny_base_model_dir, tiny_data_dir, exp, "--seeds", "0", "--methods", "odd")
    (line,) = usage_error_lines(capsys, run_compare.main, argv)
    assert str(teacher) in line and "no weights" in line
    assert "--overwrite_output_dir" in line and "remove" in line and "resume" not in line
    assert not (exp / "seed0" / "odd").exists()


# --- defect 4: no half-written report -----------------------------------------------------------------------------


def test_eval_writes_no_partial_report_when_writing_fails(tmp_path, monkeypatch, tiny_classifier_dir,
                                                                  tiny_data_dir):  # fmt: skip
    """Old code wrote predictions/ (after removing the old ones) before the plots and results.csv: a crash in between
    left a report that was half the old run and half the new."""
    models = []
    for name in ("a", "b"):
        shutil.copytree(tiny_classifier_dir, tmp_path / name)
        models.append(tmp_path / name)
    out = tmp_path / "report"
    _eval(models[:1], tiny_data_dir, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(run_eval, "plot_quality_vs", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        _eval(models, tiny_data_dir, out, "--overwrite_output_dir", "true")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the old report, whole; nothing of the failed run
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]  # no staging left behind


# --- defect 5: run_lora.py --overwrite_output_dir is a fresh start ------------------------------------------------


def test_lora_overwrite_leaves_no_previous_weights(tmp_path, tiny_classifier_dir, tiny_data_dir):
    out = tmp_path / "lora"
    shutil.copytree(tiny_classifier_dir, out)  # a previous full model in --output_dir
    (out / "all_results.json").write_text("{}")
    run_lora.main(common_args(tiny_data_dir, out, model_name_or_path=tiny_classifier_dir, max_steps=2,
                              do_eval="false", do_predict="false", overwrite_output_dir="true"))  # fmt: skip
    files = set(os.listdir(out))
    assert "adapter_model.safetensors" in files
    assert not files & {"model.safetensors", "config.json", "pytorch_model.bin"}, files
