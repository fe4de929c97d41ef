"""RunRecord: round trip through run_record.json, and directories written by the current scripts (records in
config.json's training_record and the adapter's all_results.json, no run_record.json) still read back."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import common_args

import run_distill
import run_lora
from distillkit.records import RECORD_FILE, RunRecord, merged_method


RUN_DIRS = ("teacher", "odd", "lora", "lora/merged")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_base_model_dir, tiny_data_dir):
    """EXP/teacher and EXP/odd by run_distill.py, EXP/lora (+ merged/) by run_lora.py on the student."""
    exp = tmp_path_factory.mktemp("runs")
    run_distill.main(
        common_args(tiny_data_dir, exp / "odd", teacher_name_or_path=tiny_base_model_dir, layers="odd", max_steps=2)
    )
    run_lora.main(
        common_args(tiny_data_dir, exp / "lora", model_name_or_path=exp / "odd", max_steps=2) + ["--merge", "true"]
    )
    return exp


@pytest.fixture(scope="module")
def legacy_runs(runs, tmp_path_factory):
    """The same runs as directories written before run_record.json existed (paths inside still point at `runs`)."""
    legacy = tmp_path_factory.mktemp("legacy") / "exp"
    shutil.copytree(runs, legacy)
    for path in legacy.rglob(RECORD_FILE):
        path.unlink()
    return legacy


def test_every_directory_the_scripts_write_has_its_record(runs, tiny_base_model_dir):
    records = {name: json.loads((runs / name / RECORD_FILE).read_text()) for name in RUN_DIRS}
    teacher, student, adapter, merged = (records[n] for n in RUN_DIRS)
    assert teacher["method"] == "teacher" and teacher["base_model"] == str(tiny_base_model_dir)
    assert teacher["max_seq_length"] == 32 and teacher["dataset"]["rows"]["train"] > 0
    assert student["method"] == "odd" and student["layers"] == [1, 3] and student["teacher"] == str(runs / "teacher")
    assert student["loss"]["temperature"] > 0 and student["label_names"] == ["LABEL_0", "LABEL_1"]
    assert adapter["is_adapter"] and adapter["method"] == "lora_odd" and adapter["lora"]["lora_r"] > 0
    assert adapter["base_record"]["method"] == "odd"
    assert merged["merged"] and merged["method"] == "lora_odd_merged" and not merged["is_adapter"]
    for record in records.values():
        assert record["library_versions"]["transformers"] and record["problem_type"] == "single_label_classification"


def test_legacy_directories_read_back_as_the_new_records(runs, legacy_runs):
    for name in RUN_DIRS:
        new, old = RunRecord.load(str(runs / name)), RunRecord.load(str(legacy_runs / name))
        new.library_versions = old.library_versions = {}
        new.class_weights = old.class_weights = {}  # runs from before run_record.json did not record them
        if name == "lora":  # the legacy adapter has no record of its own base: it reads the student's from disk
            new.base_record = old.base_record = None
        # The tokenizer fingerprint exists only in run_record.json: a legacy directory has none (never one made up
        # from the files it holds, which would vouch for any tokenizer), so its loads check the vocabulary size only.
        assert new.tokenizer["vocab_size"] > 0 and old.tokenizer == {}, name
        new.tokenizer = {}
        # Directories from before the request fingerprint record none: resume, reuse and skip treat what made them
        # as unknown (distillkit/fingerprint.py) instead of guessing it from the legacy record.
        # (merged/ is no run of its own: the request is its adapter's, recorded one level up.)
        assert bool(new.fingerprint) == (name != "lora/merged") and old.fingerprint == {}, name
        new.fingerprint = {}
        assert old == new, name


def test_round_trip_keeps_every_field_and_unknown_keys(tmp_path):
    record = RunRecord(
        method="even",
        base_model="bert-base-uncased",
        teacher="EXP/teacher",
        layers=[2, 4, 6],
        loss={"alpha_ce": 1.0, "alpha_kl": 1.0, "alpha_cos": 0.5, "temperature": 2.0},
        label_names=["non-toxic", "toxic"],
        dataset={"dataset": "wiki_toxic", "rows": {"train": 10}},
        seed=7,
        tokenizer={"vocab_size": 33, "special_token_ids": {"pad": 0, "cls": 2}, "vocab_sha256": "ab" * 32},
        extra={"note": "kept"},
    )
    record.save(str(tmp_path))
    on_disk = json.loads((tmp_path / RECORD_FILE).read_text())
    assert on_disk["layers"] == [2, 4, 6] and "transformers" in on_disk["library_versions"]
    assert RunRecord.load(str(tmp_path)) == record
    assert RunRecord.from_dict({**on_disk, "future_field": 1}).extra == {"note": "kept", "future_field": 1}


def test_legacy_student_and_teacher_read_back(runs, legacy_runs, tiny_base_model_dir):
    student = RunRecord.load(str(legacy_runs / "odd"))
    assert student.method == "odd" and student.layers == [1, 3]
    assert student.teacher == str(runs / "teacher")
    assert student.teacher_base_model == str(tiny_base_model_dir)
    assert set(student.loss) == {"alpha_ce", "alpha_kl", "alpha_cos", "temperature"}
    assert student.seed == 0 and student.dataset["rows"]["train"] > 0 and not student.is_adapter
    teacher = RunRecord.load(str(legacy_runs / "teacher"))
    assert teacher.method == "teacher" and teacher.dataset_name


def test_legacy_adapter_and_merged_read_back(legacy_runs):
    adapter = RunRecord.load(str(legacy_runs / "lora"))
    assert adapter.is_adapter and adapter.method == "lora_odd"
    assert adapter.lora["lora_r"] > 0 and adapter.label_names == ["LABEL_0", "LABEL_1"]
    assert adapter.base_record["method"] == "odd"  # the adapted student's own record
    merged = RunRecord.load(str(legacy_runs / "lora" / "merged"))
    assert merged.merged and merged.method == "lora_odd_merged" and not merged.is_adapter
    assert merged.base_record["method"] == "odd"


def test_a_directory_without_records_has_none(tmp_path, tiny_base_model_dir):
    assert RunRecord.load(str(tiny_base_model_dir)) is None
    assert RunRecord.load(str(tmp_path)) is None


def test_merged_naming_rule_is_idempotent():
    assert merged_method("lora") == "lora_merged" == merged_method("lora_merged")


def test_every_reader_sees_the_same_run_in_the_legacy_layout(runs, legacy_runs):
    """Loading, evaluation and the model card read a directory through RunRecord.load alone: the old layout
    (config.json training_record, the adapter's all_results.json, no run_record.json) reads as the new one."""
    from distillkit.evaluation import made_from, model_seed
    from distillkit.runtime import load_classifier_dir
    from distillkit.model_card import read_run_records

    for name in RUN_DIRS:
        new, old = load_classifier_dir(str(runs / name)), load_classifier_dir(str(legacy_runs / name))
        assert old.record is not None and not (legacy_runs / name / RECORD_FILE).exists()
        assert (old.method, old.layers, model_seed(old)) == (new.method, new.layers, model_seed(new)), name
        assert made_from(old) == made_from(new), name
        card_new, card_old = read_run_records(str(runs / name)), read_run_records(str(legacy_runs / name))
        assert (card_old.method, card_old.merged, card_old.dataset) == (
            card_new.method, card_new.merged, card_new.dataset
        ), name
    student = load_classifier_dir(str(legacy_runs / "odd"))
    assert student.method == "odd" and student.layers == [1, 3] and model_seed(student) == 0
    assert made_from(student) == str(runs / "teacher")
    assert load_classifier_dir(str(legacy_runs / "lora" / "merged")).method.endswith("_merged")


def _classifier(record: RunRecord | None, runtime: str = "pytorch", results: dict | None = None, path: str = "x"):
    from distillkit.runtime import LoadedClassifier

    return LoadedClassifier("m", path, None, None, False, record=record, results=results or {}, runtime=runtime)


def test_method_names_for_the_comparison():
    """The record's method; `_ce` for a student distilled with no teacher signal (methods.CONTROLS: odd_ce);
    `_onnx` / `_onnx_int8` for the exported runtimes; results or `custom` for a model without a record."""
    losses = {"alpha_ce": 1.0, "alpha_kl": 0.0, "alpha_cos": 0.0, "temperature": 2.0}
    ce_only = RunRecord(method="odd", teacher="EXP/teacher", layers=[1, 3], loss=losses)
    assert _classifier(ce_only).method == "odd_ce"
    assert _classifier(ce_only, "onnxruntime-fp32").method == "odd_ce_onnx"
    assert _classifier(ce_only, "onnxruntime-int8").method == "odd_ce_onnx_int8"
    distilled = RunRecord(method="even", teacher="EXP/teacher", loss={**losses, "alpha_kl": 1.0})
    assert _classifier(distilled).method == "even" and _classifier(distilled, "onnxruntime-fp32").method == "even_onnx"
    assert _classifier(RunRecord(method="teacher", base_model="bert")).method == "teacher"
    merged = RunRecord(method="lora_merged", merged=True, teacher="T", loss={"alpha_kl": 0.0, "alpha_cos": 0.0})
    assert _classifier(merged).method == "lora_merged"  # only a distilled student is a CE-only control
    assert _classifier(None, results={"method": "teacher"}).method == "teacher"
    assert _classifier(None).method == "custom"


def test_a_hand_made_adapter_and_merge_read_as_lora(tmp_path, runs):
    """An adapter saved without our records, and a merge of it whose config.json still holds its base's record:
    the layout says LoRA, and the base's record (its seed) stays reachable."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from distillkit.evaluation import model_seed
    from distillkit.runtime import load_classifier_dir

    torch.manual_seed(0)
    teacher = runs / "teacher"
    model = get_peft_model(
        AutoModelForSequenceClassification.from_pretrained(teacher),
        LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query"]),
    )
    adapter = tmp_path / "lora"
    model.save_pretrained(adapter)
    model.merge_and_unload().save_pretrained(adapter / "merged")  # config.json keeps the teacher's training_record
    for path in (adapter, adapter / "merged"):
        shutil.copy(teacher / "tokenizer.json", path)
        shutil.copy(teacher / "tokenizer_config.json", path)
    record = RunRecord.load(str(adapter))
    assert record.is_adapter and record.method == "lora" and record.base_model == str(teacher)
    assert record.base_record["method"] == "teacher"
    merged = RunRecord.load(str(adapter / "merged"))
    assert merged.merged and merged.method == "lora_merged" and merged.base_record["method"] == "teacher"
    for path in (adapter, adapter / "merged"):
        clf = load_classifier_dir(str(path))
        assert clf.method == ("lora" if path == adapter else "lora_merged") and model_seed(clf) == 0
