"""Finding the model directories of an experiment (teacher/, even/, lora/merged, seed42/odd, ONNX variants).

Loading one directory (PyTorch or ONNX Runtime) is `distillkit.runtime.load_classifier_dir`.
"""

from __future__ import annotations

import logging
import os

from .cli import FINISHED_MARKER, UsageError, is_finished_run, list_checkpoints
from .runtime import is_model_dir, onnx_variants

logger = logging.getLogger(__name__)


def expand_onnx_variants(paths: list[str]) -> list[str]:
    """An exported ONNX directory stands for its fp32 model and, when it has one, its int8 twin (DIR/model-int8.onnx)."""
    return [variant for path in paths for variant in onnx_variants(path)]


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
