"""Loading any model directory our scripts write, for evaluation and serving: full models and PEFT adapters."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from .cli import FINISHED_MARKER, UsageError, is_finished_run, list_checkpoints
from .export import is_onnx_dir, is_onnx_file, load_onnx_classifier, onnx_variants
from .losses import teacher_terms
from .records import ADAPTER_CONFIG, RunRecord, is_adapter_dir, merged_parent
from .tasks import Task

logger = logging.getLogger(__name__)


@dataclass
class LoadedClassifier:
    """A ready-to-run classifier and what its run recorded about it."""

    name: str
    path: str
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    is_adapter: bool
    record: RunRecord | None = None  # run_record.json (or an older directory's records); None: nothing recorded
    results: dict[str, Any] = field(default_factory=dict)  # all_results.json (a merged model: its adapter's)
    runtime: str = "pytorch"  # or onnxruntime-fp32 / onnxruntime-int8 for an exported directory (distillkit.export)

    @property
    def id2label(self) -> dict[int, str]:
        return {int(k): v for k, v in self.model.config.id2label.items()}

    @property
    def task(self) -> Task:
        """How the model decides: its config's problem_type and saved decision thresholds (`Task.from_config`);
        thresholds that do not fit its labels are a usage error naming the directory."""
        try:
            return Task.from_config(self.model.config)
        except ValueError as err:
            raise UsageError(f"{self.path}: config.json: {err}") from None

    @property
    def method(self) -> str:
        """The name a comparison groups this model under: the recorded method, `_ce` for a student trained on the
        labels alone (the CE-only control of distillation, methods.CONTROLS), `_onnx`/`_onnx_int8` for an export."""
        record = self.record
        if record is not None:
            method = record.method + ("_ce" if labels_only_student(record) else "")
        else:  # a model our scripts did not write
            method = str(self.results.get("method") or "custom")
        if self.runtime.startswith("onnxruntime"):  # even_onnx, even_onnx_int8: grouped apart from the PyTorch rows
            return f"{method}_onnx" + ("" if self.runtime.endswith("fp32") else f"_{self.runtime.split('-')[-1]}")
        return method

    @property
    def layers(self) -> list[int] | None:
        """The teacher layers (1-based) a student kept; None for a model with all its layers."""
        if self.record is not None and self.record.layers is not None:
            return list(self.record.layers)
        return getattr(self.model.config, "distillation_layers", None)


def labels_only_student(record: RunRecord) -> bool:
    """A student distilled with no teacher signal (every term that needs the teacher at 0, e.g. alpha_kl =
    alpha_cos = 0): the CE-only control, e.g. odd_ce. A term the record predates counts as 0."""
    return (
        record.teacher is not None
        and not (record.is_adapter or record.merged)
        and bool(record.loss)
        and all(record.loss.get(t.weight_flag, 0) == 0 for t in teacher_terms())
    )


def is_model_dir(path: str) -> bool:
    return is_adapter_dir(path) or os.path.isfile(os.path.join(path, "config.json")) or is_onnx_file(path)


def expand_onnx_variants(paths: list[str]) -> list[str]:
    """An exported ONNX directory stands for its fp32 model and, when it has one, its int8 twin (DIR/model-int8.onnx)."""
    return [variant for path in paths for variant in onnx_variants(path)]


def read_results(path: str) -> dict[str, Any]:
    """all_results.json; a merged model (OUT/merged) has none of its own and shares its adapter's run's."""
    results_file = os.path.join(path, "all_results.json")
    if not os.path.isfile(results_file):
        parent = merged_parent(path)
        return read_results(parent) if parent else {}
    with open(results_file) as f:
        return json.load(f)


def adapter_head_kwargs(path: str, record: RunRecord | None) -> dict[str, Any]:
    """num_labels/id2label/label2id and problem_type for the base an adapter is loaded on (`record`: the adapter's).

    `AutoPeftModelForSequenceClassification` builds the base from `base_model_name_or_path`; a pretrained encoder
    has no head, so it would get the default 2 labels and the adapter's 3-class head would not fit, nor would it
    know the task. The run recorded its labels and task; without them, the count is read off the head's bias.
    """
    task = {"problem_type": record.problem_type} if record is not None else {}
    if record is not None and record.label_names:
        id2label = dict(enumerate(record.label_names))
        labels = {"num_labels": len(id2label), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
        return {**labels, **task}
    weights = os.path.join(path, "adapter_model.safetensors")
    if os.path.isfile(weights):
        from safetensors import safe_open

        with safe_open(weights, framework="pt") as f:
            names = f.keys()  # a safe_open handle is not iterable
            heads = [k for k in names if k.endswith(("classifier.bias", "classifier.out_proj.bias"))]
            if len(heads) == 1:
                return {"num_labels": f.get_slice(heads[0]).get_shape()[0], **task}
    return task


def load_classifier_dir(path: str, name: str | None = None, device: str | torch.device = "cpu") -> LoadedClassifier:
    """Load a saved full model or PEFT adapter in eval mode (safetensors only, never remote code).

    An ONNX export (run_export.py: a directory with model.onnx, or DIR/model-int8.onnx) loads as an ONNX Runtime
    session that is called like the PyTorch model.
    """
    if is_onnx_dir(path) or is_onnx_file(path):
        clf = load_onnx_classifier(path, name)
        clf.model.to(device)  # refuses anything but the CPU
        return clf
    if not os.path.isdir(path) or not is_model_dir(path):
        raise UsageError(f"{path}: not a model directory (expected config.json or {ADAPTER_CONFIG})")
    adapter = is_adapter_dir(path)
    record, results = RunRecord.load(path), read_results(path)
    if adapter:
        from peft import AutoPeftModelForSequenceClassification

        model = AutoPeftModelForSequenceClassification.from_pretrained(
            path, use_safetensors=True, **adapter_head_kwargs(path, record)
        )
        # The thresholds tuned at training time: set on the config, as transformers does not know the attribute
        # (a from_pretrained kwarg would reach the model's __init__).
        thresholds = results.get("decision_thresholds")
        if thresholds is not None:
            model.config.decision_thresholds = thresholds
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True, trust_remote_code=False)
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    return LoadedClassifier(
        name=name or os.path.basename(os.path.normpath(path)),
        path=path,
        model=model,
        tokenizer=tokenizer,
        is_adapter=adapter,
        record=record,
        results=results,
    )


def _model_dirs_in(directory: str) -> list[str]:
    found = []
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        if not os.path.isdir(path) or not is_model_dir(path) or entry.startswith("checkpoint-"):
            continue
        if list_checkpoints(path) and not is_finished_run(path):
            logger.warning(f"{path}: an unfinished run (checkpoints, no {FINISHED_MARKER}): left out")
            continue
        found += expand_onnx_variants([path])
        merged = os.path.join(path, "merged")
        if os.path.isdir(merged) and is_model_dir(merged):
            found.append(merged)
    return found


def find_model_dirs(experiment_dir: str) -> list[str]:
    """Every model directory inside an experiment directory, sorted: teacher/, odd/, even/, lora/, lora/merged, ...

    Sub-folders that are not models themselves (one per seed: seed42/teacher, seed43/teacher, ...) are searched
    one level down; unfinished runs (checkpoints but no all_results.json) are left out.
    """
    if not os.path.isdir(experiment_dir):
        raise UsageError(f"--experiment_dir {experiment_dir}: no such directory")
    found = _model_dirs_in(experiment_dir)
    for entry in sorted(os.listdir(experiment_dir)):
        path = os.path.join(experiment_dir, entry)
        # A run still training has only checkpoint-N/ folders: those are not models to compare.
        if os.path.isdir(path) and not is_model_dir(path) and not list_checkpoints(path):
            found += _model_dirs_in(path)
    if not found:
        raise UsageError(f"--experiment_dir {experiment_dir}: holds no model directories (teacher/, even/, ...)")
    return found
