"""Names that explain themselves (issue 10, item 5): --class_names parsed in one place for every script and the app,
--label_names left to TrainingArguments in the training scripts, and LoRA on a student named like its stage."""

from __future__ import annotations

import json

import pytest
from conftest import common_args

import app as app_module
import run_eval
import run_finetune
from distill_trainer import DistillationTrainingArguments
from distillkit.cli import UsageError, parse_class_names
from distillkit.methods import METHODS
from distillkit.records import RunRecord, current_method, lora_method


@pytest.mark.parametrize(
    "given",
    [["a,b,c"], ["a", "b", "c"], [" a , b", "c "], "a,b,c", ["a,", "b", ",c"]],
)
def test_class_names_are_comma_or_space_separated(given):
    assert parse_class_names(given) == ["a", "b", "c"]


def test_class_names_need_two_distinct_and_the_alias_is_one_or_the_other():
    assert parse_class_names(None) is None
    with pytest.raises(UsageError, match="--class_names toxic: give at least two distinct class names"):
        parse_class_names(["toxic"])
    with pytest.raises(UsageError, match="--class_names a,b,a: give at least two distinct"):
        parse_class_names(["a,b,a"])
    assert parse_class_names(None, alias=["ok,bad"]) == ["ok", "bad"]
    with pytest.raises(UsageError, match="--label_names ok: give at least two"):
        parse_class_names(None, alias=["ok"])
    with pytest.raises(UsageError, match="--class_names and --label_names \\(its alias\\) are both given"):
        parse_class_names(["a,b"], alias=["a,b"])


def test_training_scripts_keep_label_names_for_trainingarguments(tmp_path, tiny_data_dir, tiny_base_model_dir, capsys):
    args = DistillationTrainingArguments(output_dir=str(tmp_path), class_names=["no, yes"], label_names=["labels"])
    assert args.class_names == ["no", "yes"] and args.label_names == ["labels"]
    out = tmp_path / "ft"
    argv = common_args(tiny_data_dir, out, model_name_or_path=tiny_base_model_dir) + ["--label_names", "no,yes"]
    with pytest.raises(SystemExit) as exit_info:
        run_finetune.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    # One error line, last (a logging handler an earlier test left on a closed stream may print noise above it).
    assert exit_info.value.code == 2 and sum(line.startswith("error:") for line in err) == 1
    assert err[-1] == (
        "error: --label_names no,yes: it names the batch key of the labels (always labels here); "
        "pass class names with --class_names"
    )
    assert not out.exists()


def test_run_eval_and_the_app_take_class_names_or_the_alias(tmp_path, capsys):
    base = {"output_dir": str(tmp_path / "r"), "model_dirs": ["unused"]}
    assert run_eval.EvalArguments(**base, class_names=["a", "b"]).class_names == ["a", "b"]
    assert run_eval.EvalArguments(**base, label_names=["a,b"]).class_names == ["a", "b"]
    for main, argv in (
        (run_eval.main, ["--model_dirs", "unused", "--output_dir", str(tmp_path / "r"), "--class_names", "one"]),
        (app_module.main, ["--model_dirs", "unused", "--port", "0", "--label_names", "one"]),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and "give at least two distinct class names" in capsys.readouterr().err


def test_lora_on_a_student_is_named_like_its_stage_in_the_methods_registry():
    assert lora_method() == "lora"
    stage = METHODS["lora_even"]  # LoRA on the even student
    assert lora_method({"method": stage.base, "layers": [2, 4, 6]}) == stage.name
    assert lora_method({}) == "lora_custom"  # a student whose method was not recorded


def test_old_lora_student_records_read_under_the_new_name(tmp_path):
    assert current_method("lora_student", {"method": "odd"}) == "lora_odd"
    assert current_method("lora_student_merged", {"method": "even"}) == "lora_even_merged"
    assert current_method("lora_student", None) == "lora_student"  # the student is unknown: kept as it was
    assert current_method("even", {"method": "odd"}) == "even"
    assert RunRecord.from_dict({"method": "lora_student", "base_record": {"method": "odd"}}).method == "lora_odd"

    # An adapter saved before run_record.json, by the old run_lora.py: its all_results.json says lora_student and
    # the student it adapted is only on disk.
    student, adapter = tmp_path / "odd", tmp_path / "lora"
    student.mkdir()
    adapter.mkdir()
    (student / "config.json").write_text(
        json.dumps({"model_type": "bert", "training_record": {"method": "odd", "layers": [1, 3]}})
    )
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(student)}))
    (adapter / "all_results.json").write_text(
        json.dumps({"method": "lora_student", "base_model": str(student), "layers": [1, 3], "lora_r": 8})
    )
    record = RunRecord.load(str(adapter))
    assert record.is_adapter and record.method == "lora_odd" and record.base_record["method"] == "odd"
