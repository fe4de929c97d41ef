"""The request fingerprint: every argument that changes what a run's directory holds, and the one check that decides
whether a directory was made by this very request.

Three paths trust a directory made earlier: resuming from a checkpoint, reusing a fine-tuned teacher, and
run_compare.py skipping a finished stage. All three compare the fingerprint recorded there (`run_record.json`'s
`fingerprint`, or `run_fingerprint.json` inside a checkpoint) with the one this run asks for through
`fingerprint_mismatch`; a difference is a one-line error naming the differing fields.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from typing import Any

from transformers import TrainerCallback

from .cli import UsageError
from .data import TextClassificationData, same_source

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "run_fingerprint.json"  # inside each checkpoint: the request that wrote it
VERSION = 1

# Fields compared as sources (a hub id, or a local path however it is spelled).
SOURCE_FIELDS = ("base_model", "dataset", "teacher", "base")
# The data flags that change the rows a run trains and is scored on (the columns, threshold and task type are taken
# as the data loader resolved them, so a detected default and the same column given explicitly are the same request).
DATA_ARG_FIELDS = (
    "dataset_config_name",
    "dataset_revision",
    "max_train_samples",
    "max_eval_samples",
    "max_test_samples",
    "validation_split_percentage",
    "test_split_percentage",
    "max_seq_length",
)
# TrainingArguments that change the weights a run ends with.
TRAINING_FIELDS = (
    "seed",
    "data_seed",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "lr_scheduler_type",
    "warmup_steps",
    "optim",
    "label_smoothing_factor",
    "fp16",
    "bf16",
    "train_sampling_strategy",
    "class_weights",
    "tune_decision",
    "temperature",
    "cache_teacher_logits",
)


def _plain(value: Any) -> Any:
    """A JSON-comparable form: enums by value, tuples as lists."""
    if hasattr(value, "value") and not isinstance(value, (int, float, str, bool)):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def data_digest(data: TextClassificationData) -> str:
    """A hash of the rows a run sees: every split's texts and labels, in order."""
    digest = hashlib.sha256()
    for split in sorted(data.splits):
        ds = data.splits[split]
        digest.update(split.encode())
        digest.update(json.dumps(list(ds["text"]), ensure_ascii=False).encode())
        digest.update(json.dumps(list(ds["label"])).encode())
    return digest.hexdigest()[:16]


def request_fingerprint(
    method: str,
    base_model: str | None,
    data: TextClassificationData,
    data_args: Any,
    training_args: Any,
    **model_fields: Any,
) -> dict[str, Any]:
    """Everything that changes what a run's directory holds: the method and what it starts from (`model_fields`: the
    layers, the teacher's fingerprint digest, the LoRA settings, ...), the data as read (source, columns, threshold,
    class names, task type, row selection and a hash of the rows) and the training hyperparameters."""
    source = data.source
    fingerprint: dict[str, Any] = {
        "fingerprint_version": VERSION,
        "method": method,
        "base_model": base_model,
        "dataset": source.get("dataset"),
        "text_column": source.get("text_column"),
        "label_column": source.get("label_column"),
        "label_columns": source.get("label_columns"),
        "label_threshold": source.get("label_threshold"),
        "problem_type": data.problem_type,
        "class_names": list(data.id2label.values()),
        **{name: _plain(getattr(data_args, name, None)) for name in DATA_ARG_FIELDS},
        "data": data_digest(data),
        **{name: _plain(getattr(training_args, name, None)) for name in TRAINING_FIELDS},
        **training_args.loss_record(),
        "world_size": getattr(training_args, "world_size", 1),
    }
    # The decision rule is fitted on validation and saved with the model, so it changes what the directory holds.
    # Unset means on whenever there is a validation split (distillkit/tasks.should_tune_decision); the former flag
    # name --tune_thresholds has been folded into tune_decision by the arguments' __post_init__.
    if fingerprint.get("tune_decision") is None:
        fingerprint["tune_decision"] = len(data.splits.get("validation", ())) > 0
    if not training_args.uses_teacher:  # no teacher term: the KL settings change nothing
        for name in ("temperature", "cache_teacher_logits"):
            fingerprint.pop(name, None)
    fingerprint.update({k: _plain(v) for k, v in model_fields.items()})
    return fingerprint


def fingerprint_digest(fingerprint: dict[str, Any] | None) -> str | None:
    """A short stable digest of a fingerprint (a student records its teacher's this way); a local path counts by
    where it leads, so the same model reached by another spelling of its path has the same digest."""
    if not fingerprint:
        return None
    kept = {
        k: (os.path.realpath(v) if k in SOURCE_FIELDS and isinstance(v, str) and os.path.exists(v) else v)
        for k, v in fingerprint.items()
    }
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_identity(name_or_path: str | None) -> str | None:
    """What a run records about a model it starts from (a student's teacher, a LoRA run's base): the digest of that
    model's own request fingerprint when it records one, else its hub id or path."""
    if name_or_path is None:
        return None
    recorded = read_fingerprint(name_or_path) if os.path.isdir(name_or_path) else None
    return fingerprint_digest(recorded) or name_or_path


def _generic_names(names: Any) -> bool:
    return isinstance(names, list) and names == [f"LABEL_{i}" for i in range(len(names))]


def _same(name: str, was: Any, now: Any) -> bool:
    if name in SOURCE_FIELDS:
        return same_source(was, now)
    if name == "class_names" and isinstance(was, list) and isinstance(now, list) and len(was) == len(now):
        # A run without --class_names calls its classes LABEL_i: the same classes as any names of that count.
        return was == now or _generic_names(was) or _generic_names(now)
    if isinstance(was, float) and isinstance(now, (int, float)) or isinstance(now, float) and isinstance(was, int):
        return math.isclose(float(was), float(now), rel_tol=0, abs_tol=0) or (math.isnan(was) and math.isnan(now))
    return _plain(was) == _plain(now)


def differing_fields(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The names of the fields whose values differ (a field only one side has counts as differing)."""
    names = list(wanted) + [k for k in recorded if k not in wanted]
    return [n for n in names if n != "fingerprint_version" and not _same(n, recorded.get(n), wanted.get(n))]


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def fingerprint_mismatch(recorded: dict[str, Any] | None, wanted: dict[str, Any]) -> str | None:
    """How a recorded request differs from the wanted one, in one line naming each differing field (was → now);
    None when they are the same request. A directory with no recorded fingerprint is a mismatch: what made it is
    unknown."""
    if not recorded:
        return "it records no request fingerprint, so what made it is unknown"
    fields = differing_fields(recorded, wanted)
    if not fields:
        return None
    detail = "; ".join(f"{n}: {_short(recorded.get(n))} -> {_short(wanted.get(n))}" for n in fields)
    return f"differing fields: {', '.join(fields)} ({detail})"


def read_fingerprint(directory: str) -> dict[str, Any] | None:
    """The fingerprint a directory records: a checkpoint's `run_fingerprint.json`, or a finished run's
    `run_record.json` (`fingerprint`); None when it has neither."""
    path = os.path.join(directory, FINGERPRINT_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    from .records import RunRecord

    record = RunRecord.load(directory)
    return (record.fingerprint or None) if record is not None else None


def write_fingerprint(directory: str, fingerprint: dict[str, Any]) -> None:
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, FINGERPRINT_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(fingerprint, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, os.path.join(directory, FINGERPRINT_FILE))


def check_same_request(directory: str, wanted: dict[str, Any], what: str, ways_out: str) -> None:
    """THE check of every path that trusts an earlier directory (resume, teacher reuse, run_compare's skip): a
    UsageError naming the differing fields unless `directory` was made by the `wanted` request."""
    mismatch = fingerprint_mismatch(read_fingerprint(directory), wanted)
    if mismatch is not None:
        raise UsageError(f"{what} {directory} was made by another request: {mismatch}; {ways_out}")


class FingerprintCallback(TrainerCallback):
    """Writes the request's fingerprint into every checkpoint before the Trainer fills it (a checkpoint counts as
    complete once its trainer_state.json, written last, exists), so a resume can always tell whose checkpoint it is."""

    def __init__(self, fingerprint: dict[str, Any]):
        self.fingerprint = fingerprint

    def _write(self, args, state, control):
        if control.should_save and state.is_world_process_zero:
            write_fingerprint(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"), self.fingerprint)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        return self._write(args, state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        return self._write(args, state, control)
