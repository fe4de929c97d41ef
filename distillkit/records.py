"""What a saved run *is*: one typed record, saved as `run_record.json` beside the weights of every directory.

Like PEFT's `adapter_config.json`, the record is written once by the code that trains or merges the model and read
by everything that loads the directory (loading, evaluation, model cards, the report, serving, teacher reuse), so
no reader reconstructs it from folder names. Directories written before the record existed keep loading:
`RunRecord.load` falls back on `config.json`'s `training_record` and the adapter's `all_results.json`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .losses import weight_flags

RECORD_FILE = "run_record.json"
MERGED_SUBDIR = "merged"
MERGED_SUFFIX = "_merged"  # a merged LoRA model's method: lora → lora_merged
MERGED_NAME_SUFFIX = "-merged"  # its name (report rows, model card, Hub repo): EXP/lora/merged → lora-merged
LORA = "lora"
LEGACY_LORA_ON_STUDENT = "lora_student"  # read as lora_<student method> (see current_method)
ADAPTER_CONFIG = "adapter_config.json"
LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "modules_to_save")
_LIBRARIES = ("torch", "transformers", "datasets", "peft", "accelerate")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


@dataclass
class RunRecord:
    """How one saved model was made. Layers are 1-based teacher layers; loss weights are the run's `alpha_*`."""

    method: str  # teacher, finetune, odd, even, spread, bottom, top, custom, lora, lora_<student>, or <lora>_merged
    base_model: str | None = None  # what the weights started from: a pretrained id/dir, or the model LoRA adapts
    teacher: str | None = None  # the classifier distilled from (a directory or hub id)
    teacher_base_model: str | None = None  # what that teacher was fine-tuned from
    base_record: dict[str, Any] | None = None  # the adapted model's own record (LoRA on a student: the student's)
    layers: list[int] | None = None
    # --layers auto: the per-layer scores per criterion, the rule, the layers chosen and the seconds it took
    # (distillkit/layer_selection.py, LayerSelection.to_dict()); None for layers given by the user.
    layer_selection: dict[str, Any] | None = None
    teacher_num_layers: int | None = None
    loss: dict[str, float] = field(default_factory=dict)  # alpha_<term> per loss term (see losses.py), temperature
    lora: dict[str, Any] = field(default_factory=dict)  # lora_r, lora_alpha, lora_dropout, target modules
    cache_teacher_logits: bool = False
    problem_type: str = "single_label_classification"
    label_names: list[str] = field(default_factory=list)
    dataset: dict[str, Any] = field(default_factory=dict)  # name, config, columns, threshold, rows per split
    max_seq_length: int | None = None
    seed: int | None = None
    tokenizer: dict[str, Any] = field(default_factory=dict)  # integrity.tokenizer_fingerprint of the saved tokenizer
    is_adapter: bool = False
    merged: bool = False
    decision: dict[str, Any] = field(default_factory=dict)  # the decision rule (decision.DecisionRule.to_dict())
    # --class_weights: the policy asked for, what `auto` resolved to on the train split, and the weights used.
    class_weights: dict[str, Any] = field(default_factory=dict)
    library_versions: dict[str, str] = field(default_factory=library_versions)
    # The request that made it (distillkit/fingerprint.py): what resume, teacher reuse and run_compare's skip check.
    fingerprint: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # anything an older record held that has no field here

    @property
    def dataset_name(self) -> str | None:
        return self.dataset.get("dataset")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, directory: str) -> str:
        path = os.path.join(directory, RECORD_FILE)
        os.makedirs(directory, exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        extra = {**known.pop("extra", {}), **{k: v for k, v in data.items() if k not in names}}
        if "method" in known:
            known["method"] = current_method(known["method"], known.get("base_record"))
        if isinstance(known.get("class_weights"), str):  # older records kept only the flag's value
            known["class_weights"] = {"policy": known["class_weights"]}
        return cls(**known, extra=extra)

    @classmethod
    def from_legacy(
        cls,
        training_record: dict[str, Any],
        config: dict[str, Any] | None = None,
        adapter_results: dict[str, Any] | None = None,
    ) -> RunRecord:
        """A record from what older runs saved: config.json's `training_record`, or for an adapter its
        all_results.json (the adapter's config.json record, when there is one, is its base model's)."""
        config, results = config or {}, adapter_results or {}
        legacy = dict(training_record)
        if results:
            legacy = {**{k: v for k, v in results.items() if k in ("method", "base_model", "layers", "teacher")},
                      "base_record": training_record or None,
                      **{k: v for k, v in results.items() if k in LORA_KEYS + loss_keys()}}  # fmt: skip
        loss = {k: legacy.pop(k) for k in loss_keys() if k in legacy}
        lora = {k: legacy.pop(k) for k in LORA_KEYS if k in legacy}
        data = legacy.pop("dataset", None) or {}
        return cls.from_dict(
            {
                **legacy,
                "method": str(legacy.get("method") or "custom"),
                "loss": loss,
                "lora": lora,
                "dataset": data if isinstance(data, dict) else {"dataset": data},
                "label_names": _label_names(config),
                "problem_type": config.get("problem_type") or "single_label_classification",
                "library_versions": {},  # unknown for an old run
                "decision": results.get("decision_rule") or decision_record(config),
            }
        )

    @classmethod
    def from_model(cls, model: Any, adapter_results: dict[str, Any] | None = None, merged: bool = False) -> RunRecord:
        """The record of a model about to be saved: its config's `training_record` (a full model or a merged one),
        or for a PEFT adapter the run's results (its config's record is then the adapted model's)."""
        config = model.config
        record = cls.from_legacy(
            getattr(config, "training_record", None) or {}, config.to_dict(), adapter_results if adapter_results else None
        )
        record.is_adapter = bool(adapter_results)
        if merged:
            record.merged, record.method = True, merged_method(record.method)
        record.library_versions = library_versions()
        record.decision = decision_record(config)
        return record

    @classmethod
    def load(cls, directory: str) -> RunRecord | None:
        """The directory's record: run_record.json, else the legacy records; None when there is neither.

        An adapter directory or a merged/ one beside it is a LoRA run by its layout: without records of its own
        it reads as method `lora` (`lora_merged`) on top of its base's record.
        """
        path = os.path.join(directory, RECORD_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                return cls.from_dict(json.load(f))
        config = _read_config(directory)
        if is_adapter_dir(directory):
            return cls._legacy_adapter(directory, config)
        training_record = config.get("training_record") or {}
        parent = merged_parent(directory)
        if parent is not None and not any(k in training_record for k in LORA_KEYS):
            # A merge made by hand keeps its base's record in config.json: the adapter's record speaks for it.
            record = cls.load(parent) or cls._legacy_adapter(parent, {})
            record.base_record, record.is_adapter = record.base_record or training_record or None, False
            record.label_names = record.label_names or _label_names(config)
        elif training_record:
            record = cls.from_legacy(training_record, config)
        else:
            return None
        if training_record.get("merged") or parent is not None:
            record.merged = True
            record.method = merged_method(record.method)
        return record

    @classmethod
    def _legacy_adapter(cls, directory: str, config: dict[str, Any]) -> RunRecord:
        """An adapter from before run_record.json: its all_results.json (the config.json beside an adapter, when
        there is one, is its base model's), else only what adapter_config.json says."""
        results = _read_json(os.path.join(directory, "all_results.json"))
        if results.get("method"):
            labels = {"id2label": results.get("id2label") or config.get("id2label") or {}}
            record = cls.from_legacy(config.get("training_record") or {}, labels, results)
        else:
            base = _read_json(os.path.join(directory, ADAPTER_CONFIG)).get("base_model_name_or_path")
            record = cls(method="lora", base_model=base, library_versions={})
        record.is_adapter = True
        if record.base_record is None and record.base_model and os.path.isdir(record.base_model):
            base_record = cls.load(record.base_model)  # LoRA on a student: the student's own record
            record.base_record = base_record.to_dict() if base_record else None
        record.method = current_method(record.method, record.base_record)
        return record


def decision_record(config: Any) -> dict[str, Any]:
    """The decision rule a model's config carries (decision.DecisionRule.to_dict()); {} when it does not fit."""
    from .tasks import Task

    try:
        return Task.from_config(config).rule.to_dict()
    except ValueError:
        return {}


def loss_keys() -> tuple[str, ...]:
    """The keys of a run's loss settings: the registered terms' `alpha_*` weights, and the KL temperature."""
    return (*weight_flags(), "temperature")


def lora_method(student_record: dict[str, Any] | None = None) -> str:
    """A LoRA run's method: `lora`, or on a distilled student `lora_<the student's method>` (`lora_even`), the name
    the methods registry (distillkit/methods.py) gives that stage; `lora_custom` if the student's method is unknown."""
    if student_record is None:
        return LORA
    return f"{LORA}_{student_record.get('method') or 'custom'}"


def current_method(method: str, base_record: dict[str, Any] | None) -> str:
    """A recorded method under today's name: runs before `lora_method` recorded LoRA on any student as
    `lora_student`, read as `lora_<the student's method>` once the student's record is known."""
    if method.removesuffix(MERGED_SUFFIX) != LEGACY_LORA_ON_STUDENT or not (base_record or {}).get("method"):
        return method
    new = lora_method(base_record)
    return merged_method(new) if method.endswith(MERGED_SUFFIX) else new


def merged_method(method: str) -> str:
    """The one naming rule for a merged LoRA model: lora → lora_merged (idempotent)."""
    return method if method.endswith(MERGED_SUFFIX) else f"{method}{MERGED_SUFFIX}"


def merged_name(path: str) -> str | None:
    """The one naming rule for a merged model's directory: EXP/lora/merged → `lora-merged`; None for other paths."""
    path = os.path.normpath(os.path.abspath(path))
    if os.path.basename(path) != MERGED_SUBDIR:
        return None
    return os.path.basename(os.path.dirname(path)) + MERGED_NAME_SUFFIX


def is_adapter_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def merged_parent(path: str) -> str | None:
    """`OUT/merged` written by run_lora.py --merge: the adapter directory above it, else None."""
    parent = os.path.dirname(os.path.normpath(path))
    if os.path.basename(os.path.normpath(path)) == MERGED_SUBDIR and is_adapter_dir(parent):
        return parent
    return None


def _label_names(config: dict[str, Any]) -> list[str]:
    id2label = config.get("id2label") or {}
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


def _read_config(directory: str) -> dict[str, Any]:
    """config.json with transformers' defaults filled in (v5 leaves the default LABEL_i names out of the file)."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return {}
    from transformers import PretrainedConfig

    return PretrainedConfig.from_json_file(path).to_dict()


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)
