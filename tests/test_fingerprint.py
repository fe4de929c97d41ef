"""The request fingerprint (distillkit/fingerprint.py) and its one check, on the three paths that trust a directory
made earlier: resume from a checkpoint, teacher reuse, run_compare.py's stage skip (issue 28, deliverable 1).

The parametrised tests change every fingerprint field one at a time without training; the tests at the end run
each path once for real on tiny models."""

from __future__ import annotations

import json
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from conftest import common_args, synthetic_rows, tiny_bert_config
from transformers import BertForSequenceClassification

from distill_trainer import DistillationTrainingArguments
from distillkit.cli import UsageError
from distillkit.data import DataTrainingArguments, load_text_classification_data
from distillkit.fingerprint import FINGERPRINT_FILE, differing_fields, fingerprint_digest, request_fingerprint
from distillkit.records import RunRecord
from distillkit.teacher import TeacherArguments, plan_teacher
from distillkit.training import resume_or_skip


def _write_split(directory: Path, split: str, n: int, seed: int) -> None:
    rows = synthetic_rows(n, seed)
    rng = np.random.default_rng(seed)
    rows["text2"] = rows["text"].str.upper()
    rows["label_b"] = 1 - rows["label"]
    rows["score"] = np.round(np.clip(rows["label"] * 0.6 + rng.uniform(0, 0.4, n), 0, 1), 3)
    rows.to_csv(directory / f"{split}.csv", index=False)


@pytest.fixture(scope="module")
def target_data(tmp_path_factory) -> Path:
    """Tiny data with two text columns, a label, its complement label_b and a 0-1 score."""
    directory = tmp_path_factory.mktemp("targets")
    for split, n, seed in (("train", 64, 1), ("validation", 16, 2), ("test", 16, 3)):
        _write_split(directory, split, n, seed)
    return directory


BASE_DATA = {"label_column": "score", "label_threshold": 0.5, "max_seq_length": 32}
BASE_TRAINING = {
    "output_dir": "unused", "use_cpu": True, "report_to": "none", "seed": 0, "learning_rate": 1e-3,
    "num_train_epochs": 1.0, "per_device_train_batch_size": 8, "class_names": ["ok", "toxic"],
}  # fmt: skip
BASE_MODEL = {"method": "even", "layers": [2, 4], "teacher": "0123456789abcdef"}

# (field the check must name, data changes, training changes, model changes); "OTHER_DATA" is a copy of the data.
CHANGES = [
    ("dataset", {"dataset_name": "OTHER_DATA"}, {}, {}),
    ("text_column", {"text_column": "text2"}, {}, {}),
    ("label_column", {"label_column": "label_b", "label_threshold": None}, {}, {}),
    ("label_threshold", {"label_threshold": 0.3}, {}, {}),
    ("class_names", {}, {"class_names": ["calm", "rude"]}, {}),
    ("max_seq_length", {"max_seq_length": 16}, {}, {}),
    ("max_train_samples", {"max_train_samples": 40}, {}, {}),
    ("data", {"max_eval_samples": 8}, {}, {}),
    ("seed", {}, {"seed": 1}, {}),
    ("learning_rate", {}, {"learning_rate": 2e-3}, {}),
    ("num_train_epochs", {}, {"num_train_epochs": 2.0}, {}),
    ("max_steps", {}, {"max_steps": 5}, {}),
    ("per_device_train_batch_size", {}, {"per_device_train_batch_size": 4}, {}),
    ("gradient_accumulation_steps", {}, {"gradient_accumulation_steps": 2}, {}),
    ("weight_decay", {}, {"weight_decay": 0.01}, {}),
    ("warmup_steps", {}, {"warmup_steps": 3}, {}),
    ("lr_scheduler_type", {}, {"lr_scheduler_type": "constant"}, {}),
    ("class_weights", {}, {"class_weights": "balanced"}, {}),
    ("alpha_kl", {}, {"alpha_kl": 0.5}, {}),
    ("alpha_cos", {}, {"alpha_cos": 0.0}, {}),
    ("alpha_ce", {}, {"alpha_ce": 2.0}, {}),
    ("temperature", {}, {"temperature": 4.0}, {}),
    ("train_sampling_strategy", {}, {"train_sampling_strategy": "sequential"}, {}),
    ("tune_decision", {}, {"tune_decision": False}, {}),
    ("layers", {}, {}, {"layers": [1, 3]}),
    ("method", {}, {}, {"method": "odd"}),
    ("teacher", {}, {}, {"teacher": "fedcba9876543210"}),
]
IDS = [c[0] for c in CHANGES]


@pytest.fixture(scope="module")
def fingerprints(target_data, tmp_path_factory):
    """fingerprint(**changes): the request fingerprint of the base request with some arguments changed."""
    other = tmp_path_factory.mktemp("other") / "data"
    shutil.copytree(target_data, other)

    @lru_cache(maxsize=None)
    def load(data_items):
        kw = dict(data_items)
        class_names = kw.pop("_class_names", None)
        args = DataTrainingArguments(**kw)
        return args, load_text_classification_data(args, seed=kw.pop("_seed", 0), class_names=class_names)

    def fingerprint(data=None, training=None, model=None, problem_base=False):
        data_kw = {"dataset_name": str(target_data), **BASE_DATA, **(data or {})}
        if data_kw["dataset_name"] == "OTHER_DATA":
            data_kw["dataset_name"] = str(other)
        data_kw = {k: v for k, v in data_kw.items() if v is not None}
        training_kw = {**BASE_TRAINING, **(training or {})}
        training_args = DistillationTrainingArguments(**training_kw)
        key = tuple(sorted({**data_kw, "_class_names": tuple(training_args.class_names or ()) or None}.items()))
        data_args, loaded = load(key)
        model_kw = {**BASE_MODEL, **(model or {})}
        method = model_kw.pop("method")
        return request_fingerprint(method, None, loaded, data_args, training_args, **model_kw)

    return fingerprint


def _changed(fingerprints, field):
    _, data, training, model = next(c for c in CHANGES if c[0] == field)
    return fingerprints(data, training, model)


def test_every_field_changes_the_fingerprint_and_nothing_else_does(fingerprints):
    base = fingerprints()
    assert differing_fields(base, fingerprints()) == []
    for field, *_ in CHANGES:
        assert field in differing_fields(base, _changed(fingerprints, field)), field
    # The same data set spelled another way is the same request.
    spelled = fingerprints({"dataset_name": str(Path(base["dataset"]) / ".")})
    assert differing_fields(base, spelled) == []
    assert fingerprint_digest(spelled) == fingerprint_digest(base)
    # The decision rule: on by default, so an explicit `true` is the same request; the former flag name counts too.
    assert differing_fields(base, fingerprints(training={"tune_decision": True})) == []
    assert differing_fields(_changed(fingerprints, "tune_decision"), fingerprints(training={"tune_thresholds": False})) == []
    # --problem_type multi_label on the ids column: another task.
    single = fingerprints({"label_column": "label", "label_threshold": None})
    multi = fingerprints({"label_column": "label", "label_threshold": None, "problem_type": "multi_label"})
    assert "problem_type" in differing_fields(single, multi)


def _error_line(err: UsageError) -> str:
    text = str(err)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("field", IDS)
def test_resume_refuses_a_checkpoint_of_another_request(tmp_path, fingerprints, field):
    out = tmp_path / "even"
    checkpoint = out / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    (checkpoint / FINGERPRINT_FILE).write_text(json.dumps(fingerprints()))
    assert resume_or_skip(str(out), str(checkpoint), fingerprints()) is None  # the same request resumes
    with pytest.raises(UsageError) as err:
        resume_or_skip(str(out), str(checkpoint), _changed(fingerprints, field))
    line = _error_line(err.value)
    assert line.startswith(f"checkpoint {checkpoint} was made by another request: differing fields: ")
    assert field in line.split("differing fields: ")[1].split(" (")[0].split(", ")


def test_a_checkpoint_without_a_fingerprint_is_not_trusted(tmp_path, fingerprints):
    checkpoint = tmp_path / "even" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    with pytest.raises(UsageError, match="records no request fingerprint"):
        resume_or_skip(str(tmp_path / "even"), str(checkpoint), fingerprints())


@pytest.mark.parametrize("field", IDS)
def test_a_finished_run_is_skipped_only_for_its_own_request(tmp_path, fingerprints, field):
    out = tmp_path / "even"
    RunRecord(method="even", fingerprint=fingerprints()).save(str(out))
    (out / "all_results.json").write_text(json.dumps({"eval_f1": 0.5}))
    assert resume_or_skip(str(out), str(out), fingerprints()) == {"eval_f1": 0.5, "skipped": True}
    with pytest.raises(UsageError) as err:
        resume_or_skip(str(out), str(out), _changed(fingerprints, field))
    line = _error_line(err.value)
    assert line.startswith(f"--output_dir {out} was made by another request: differing fields: ")
    assert field in line.split("differing fields: ")[1].split(" (")[0].split(", ")


TEACHER_FIELDS = [f for f in IDS if f not in ("layers", "method", "teacher", "alpha_kl", "alpha_cos", "temperature")]


@pytest.mark.parametrize("field", TEACHER_FIELDS)
def test_a_teacher_is_reused_only_for_its_own_request(tmp_path, fingerprints, tiny_base_model_dir, target_data, field):
    teacher_dir = tmp_path / "teacher"
    BertForSequenceClassification(tiny_bert_config()).config.save_pretrained(teacher_dir)
    (teacher_dir / "all_results.json").write_text("{}")
    plain = {"alpha_kl": 0.0, "alpha_cos": 0.0}

    def teacher_fingerprint(data=None, training=None):
        fp = fingerprints(data, {**plain, **(training or {})}, {"method": "teacher", "layers": None, "teacher": None})
        return {**fp, "base_model": str(tiny_base_model_dir)}

    RunRecord(method="teacher", fingerprint=teacher_fingerprint()).save(str(teacher_dir))
    args = TeacherArguments(teacher_name_or_path=str(tiny_base_model_dir))
    data = load_text_classification_data(DataTrainingArguments(dataset_name=str(target_data), **BASE_DATA), seed=0)
    plan = plan_teacher(args, str(teacher_dir), data, 32, fingerprint=teacher_fingerprint())
    assert plan.name_or_path == str(teacher_dir) and not plan.needs_finetuning  # the same request: reused

    _, data_changes, training_changes, _ = next(c for c in CHANGES if c[0] == field)
    with pytest.raises(UsageError) as err:
        plan_teacher(args, str(teacher_dir), data, 32, fingerprint=teacher_fingerprint(data_changes, training_changes))
    line = _error_line(err.value)
    assert line.startswith(f"--teacher_output_dir {teacher_dir} holds a finished teacher that does not match this run")
    assert field in line.split("differing fields: ")[1].split(" (")[0].split(", ")


# ---- each path once for real, on tiny models -------------------------------------------------------------------


def _run(module, argv):
    return module.main([str(a) for a in argv])


def _usage_error(capsys, module, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        _run(module, argv)
    assert exit_info.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    return line


def test_a_killed_run_resumes_only_for_its_own_request(tmp_path, tiny_classifier_dir, tiny_data_dir, capsys):
    """A run killed after checkpoint-4, re-run with --layers odd: refused naming `layers`, nothing written; the
    same command resumes."""
    import run_distill

    out = tmp_path / "even"
    settings = dict(max_steps=4, save_strategy="steps", save_steps=2, save_total_limit=5)
    argv = common_args(tiny_data_dir, out, teacher_name_or_path=tiny_classifier_dir, layers="even", **settings)
    _run(run_distill, argv)
    # What a kill right after the last checkpoint leaves: the checkpoints, and none of the final files.
    for path in out.iterdir():
        if not path.name.startswith("checkpoint-"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    kept = sorted(str(p) for p in out.rglob("*"))
    assert (out / "checkpoint-4" / FINGERPRINT_FILE).is_file()

    odd = common_args(tiny_data_dir, out, teacher_name_or_path=tiny_classifier_dir, layers="odd", **settings)
    line = _usage_error(capsys, run_distill, odd)
    assert line.startswith(f"error: checkpoint {out / 'checkpoint-4'} was made by another request: differing fields: ")
    assert "differing fields: method, layers (method: even -> odd; layers: [2, 4] -> [1, 3])" in line
    other_data = tmp_path / "other"
    (other_data).mkdir()
    for split in ("train", "validation", "test"):
        (other_data / f"{split}.csv").write_text((tiny_data_dir / f"{split}.csv").read_text().replace("idiot", "moron"))
    line = _usage_error(capsys, run_distill, argv[:1] + [str(other_data)] + argv[2:])
    assert "differing fields: dataset, data" in line
    assert sorted(str(p) for p in out.rglob("*")) == kept  # nothing written

    results = _run(run_distill, argv)
    assert results["train_loss"] > 0 and (out / "all_results.json").is_file()
    record = json.loads((out / "run_record.json").read_text())
    assert record["fingerprint"]["layers"] == [2, 4]


def test_a_teacher_trained_on_another_target_is_not_reused(tmp_path, tiny_base_model_dir, target_data, capsys):
    """The teacher fine-tuned on `score >= 0.3` is not reused for `score >= 0.9`, nor for the complement column."""
    import run_distill

    exp = tmp_path / "EXP"

    def argv(name, **kw):
        data = {k: v for k, v in {"label_column": "score", "label_threshold": 0.3, **kw}.items() if v is not None}
        return common_args(target_data, exp / name, teacher_name_or_path=tiny_base_model_dir, max_steps=2, **data)

    _run(run_distill, argv("even"))
    stamp = (exp / "teacher" / "model.safetensors").stat().st_mtime_ns
    refusal = f"error: --teacher_output_dir {exp / 'teacher'} holds a finished teacher that does not match this run: "
    line = _usage_error(capsys, run_distill, argv("odd", label_threshold=0.9, layers="odd"))
    assert line.startswith(refusal + "differing fields: label_threshold, data (label_threshold: 0.3 -> 0.9;")
    line = _usage_error(capsys, run_distill, argv("odd", label_column="label_b", label_threshold=None, layers="odd"))
    assert line.startswith(refusal + "differing fields: label_column, label_threshold, data")
    line = _usage_error(capsys, run_distill, argv("odd", layers="odd", class_weights="balanced"))
    assert line.startswith(refusal + "differing fields: class_weights")
    assert not (exp / "odd").exists()
    assert (exp / "teacher" / "model.safetensors").stat().st_mtime_ns == stamp
    _run(run_distill, argv("odd", layers="odd"))  # the same target: reused
    assert (exp / "teacher" / "model.safetensors").stat().st_mtime_ns == stamp


def test_overwrite_output_dir_is_a_fresh_start(tmp_path, tiny_base_model_dir, tiny_data_dir):
    """run_lora.py --overwrite_output_dir over a full model's run: no weights of the old model beside the adapter."""
    import run_lora

    out = tmp_path / "run"
    out.mkdir()
    for name in ("model.safetensors", "config.json", "all_results.json", "run_record.json"):
        (out / name).write_text("{}")
    (out / "checkpoint-9").mkdir()
    (out / "checkpoint-9" / "trainer_state.json").write_text("{}")
    _run(run_lora, common_args(tiny_data_dir, out, model_name_or_path=tiny_base_model_dir, max_steps=2,
                               overwrite_output_dir="true"))  # fmt: skip
    assert (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists() and not (out / "checkpoint-9").exists()
    assert json.loads((out / "run_record.json").read_text())["fingerprint"]["method"] == "lora"


def test_layers_auto_is_requested_as_auto_k_with_its_selection_flags(tmp_path, tiny_classifier_dir, tiny_data_dir,
                                                                    capsys):  # fmt: skip
    """--layers auto: the request is `auto:k` plus the rows the choice is scored on (the layers chosen follow from
    them and the teacher), so a finished auto run is skipped only for the same k and the same selection rows."""
    import run_distill

    out = tmp_path / "auto"
    settings = dict(teacher_name_or_path=tiny_classifier_dir, layers="auto", num_student_layers=2, max_steps=2,
                    layer_selection_train_rows=32, layer_selection_validation_rows=16)  # fmt: skip
    _run(run_distill, common_args(tiny_data_dir, out, **settings))
    fingerprint = json.loads((out / "run_record.json").read_text())["fingerprint"]
    assert fingerprint["layers"] == "auto:2" and fingerprint["method"] == "auto"
    assert fingerprint["layer_selection_train_rows"] == 32 and fingerprint["layer_selection_validation_rows"] == 16
    stamp = (out / "all_results.json").stat().st_mtime_ns

    def again(**changes):
        return common_args(tiny_data_dir, out, **{**settings, **changes}) + ["--skip_if_finished", "true"]

    assert _run(run_distill, again())["skipped"] is True  # the same request
    for flag, value, named in (
        ("num_student_layers", 3, "layers (layers: auto:2 -> auto:3)"),
        ("layer_selection_train_rows", 48, "layer_selection_train_rows (layer_selection_train_rows: 32 -> 48)"),
        ("layer_selection_validation_rows", 8, "layer_selection_validation_rows (layer_selection_validation_rows: 16"),
    ):
        line = _usage_error(capsys, run_distill, again(**{flag: value}))
        assert f"was made by another request: differing fields: {named}" in line, line
    line = _usage_error(capsys, run_distill, again(layers="odd"))
    assert "differing fields: method, layers, " in line and "layers: auto:2 -> [1, 3];" in line, line
    assert (out / "all_results.json").stat().st_mtime_ns == stamp
