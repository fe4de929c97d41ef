"""The teacher's logits, computed once for the training set and cached on disk (`--cache_teacher_logits`).

The teacher runs once over the tokenised training split: batched, without gradients, under the run's mixed precision,
rows sorted by length so batches pad little. Its logits become a `teacher_logits` column of that split, which
`DistillationTrainer` reads in place of a teacher forward on every step.

The cache is content-addressed. Its key hashes the teacher's weights and config, the exact token ids of every training
row in order (so the data set, its subset and order, the tokenizer and `--max_seq_length` are all in it) and the
precision: a changed teacher, data set or length never reuses stale logits, and an unchanged one always does, wherever
it was loaded from. Each key is one folder holding `teacher_logits.safetensors` and a `teacher_logits.json` that says
what it was computed from.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from datasets import Dataset, List, Value
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

TEACHER_LOGITS_COLUMN = "teacher_logits"
DEFAULT_CACHE_SUBDIR = "teacher_logits"  # beside --output_dir, as the fine-tuned `teacher/` is
LOGITS_FILE = "teacher_logits.safetensors"
RECORD_FILE = "teacher_logits.json"
CACHE_FORMAT = 1
# Config entries that name or describe a model without changing what it computes: a teacher reloaded from disk
# differs from the same teacher fresh out of training in these, and must still hit the same cache.
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path",
    "transformers_version",
    "architectures",
    "training_record",
    "id2label",
    "label2id",
    "dtype",
    "torch_dtype",
    "distillation_layers",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    "use_cache",
}


def default_cache_dir(output_dir: str) -> str:
    """`EXP/even` and `EXP/odd` share `EXP/teacher_logits`, as they share `EXP/teacher`."""
    return os.path.join(os.path.dirname(os.path.abspath(output_dir)), DEFAULT_CACHE_SUBDIR)


def precision_name(args: Any) -> str:
    """The mixed precision the teacher runs under: its logits differ in the last bits between them."""
    return "bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else "fp32"


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer: name, dtype, shape and bytes (bert-base: ~0.5 s on a CPU)."""
    hasher = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        hasher.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return hasher.hexdigest()


def config_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    if config is None:
        return {}
    return {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}


def teacher_input_columns(teacher: torch.nn.Module, dataset: Dataset) -> list[str]:
    """The dataset's columns the teacher's forward takes (input_ids, attention_mask, ...), labels excluded."""
    forward = teacher.get_base_model().forward if hasattr(teacher, "get_base_model") else teacher.forward
    accepted = set(inspect.signature(forward).parameters) - {"labels", "label"}
    columns = [c for c in dataset.column_names if c in accepted]
    if "input_ids" not in columns:
        raise ValueError(
            f"the training set has no input_ids column for the teacher (columns: {', '.join(dataset.column_names)})"
        )
    return columns


def data_fingerprint(dataset: Dataset, columns: list[str]) -> str:
    """sha256 of the teacher's inputs, row by row in order: the same tokens in the same order hash the same."""
    hasher = hashlib.sha256()
    for column in sorted(columns):
        rows = dataset[column]
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(dataset))
        values = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
        hasher.update(f"{column}|{len(dataset)}|".encode())
        hasher.update(lengths.tobytes())
        hasher.update(values.tobytes())
    return hasher.hexdigest()


def cache_key(teacher: torch.nn.Module, dataset: Dataset, columns: list[str], precision: str) -> tuple[str, dict]:
    """(folder name, record): the record lists every input of the key, and the key is its hash."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    record = {
        "format": CACHE_FORMAT,
        "teacher": str(getattr(teacher, "name_or_path", "") or type(teacher).__name__),
        "teacher_weights_sha256": weights_fingerprint(teacher),
        "teacher_config": config_fingerprint(teacher),
        "data_sha256": data_fingerprint(dataset, columns),
        "input_columns": sorted(columns),
        "rows": len(dataset),
        "max_length": max(lengths) if lengths else 0,  # the longest row: --max_seq_length or less
        "precision": precision,
    }
    # The teacher's name is recorded, but only what it computes decides: a copied teacher reuses its logits.
    keyed = {k: v for k, v in record.items() if k not in ("teacher", "max_length")}
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()
    return digest[:24], record


@torch.inference_mode()
def compute_teacher_logits(
    teacher: torch.nn.Module,
    dataset: Dataset,
    collator: Callable[[list[dict]], dict[str, torch.Tensor]],
    columns: list[str],
    batch_size: int,
    device: torch.device | str,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """Logits (rows, num_labels), float32, in the dataset's row order; batches of similar length pad least."""
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size}: must be at least 1")
    inputs = dataset.select_columns(columns)
    order = np.argsort([len(ids) for ids in inputs["input_ids"]], kind="stable")
    was_training = teacher.training
    teacher.eval()
    out: torch.Tensor | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size].tolist()
        rows = inputs[idx]
        features = [{c: rows[c][i] for c in columns} for i in range(len(idx))]
        batch = {k: v.to(device) for k, v in collator(features).items() if k in columns}
        with autocast():
            logits = teacher(**batch).logits
        if out is None:
            out = torch.empty(len(dataset), logits.shape[-1], dtype=torch.float32)
        out[idx] = logits.float().cpu()
    teacher.train(was_training)
    if out is None:
        raise ValueError("the training set is empty: no teacher logits to compute")
    return out


def _load(path: str, rows: int) -> torch.Tensor | None:
    file = os.path.join(path, LOGITS_FILE)
    if not os.path.isfile(file):
        return None
    try:
        logits = load_file(file)[TEACHER_LOGITS_COLUMN]
    except (OSError, KeyError, SafetensorError) as err:  # a truncated or foreign file: recompute, do not fail
        logger.warning(f"teacher logits in {path} are unreadable ({err}); computing them again")
        return None
    if logits.ndim != 2 or logits.shape[0] != rows:
        logger.warning(f"teacher logits in {path} have shape {tuple(logits.shape)}, not ({rows}, labels); recomputing")
        return None
    return logits


def _save(path: str, logits: torch.Tensor, record: dict) -> None:
    """Written into a temporary folder and renamed into place: a reader never sees half a cache."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        save_file(
            {TEACHER_LOGITS_COLUMN: logits.contiguous()}, os.path.join(tmp, LOGITS_FILE), metadata={"format": "pt"}
        )
        with open(os.path.join(tmp, RECORD_FILE), "w") as f:
            json.dump(record, f, indent=2, sort_keys=True, default=str)
        if os.path.isdir(path):  # a stale or unreadable entry we just recomputed
            shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def add_teacher_logits(
    dataset: Dataset,
    teacher: torch.nn.Module,
    collator: Callable[[list[dict]], dict[str, torch.Tensor]],
    cache_dir: str,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Dataset:
    """`dataset` with a `teacher_logits` column, loaded from `cache_dir` or computed once and stored there.

    `autocast` is the run's mixed-precision context (the trainer passes its accelerator's), and `precision` names it
    for the key. Under several processes, call it on the main process first: the others then find its file.
    """
    columns = teacher_input_columns(teacher, dataset)
    key, record = cache_key(teacher, dataset, columns, precision)
    path = os.path.join(cache_dir, key)
    logits = _load(path, len(dataset))
    if logits is not None:
        logger.info(f"teacher logits: reusing {path} ({len(dataset)} rows, {precision})")
    else:
        logger.info(f"teacher logits: computing them for {len(dataset)} training rows ({precision}) into {path}")
        start = time.perf_counter()
        param = next(teacher.parameters(), None)
        home = param.device if param is not None else torch.device("cpu")
        teacher.to(device)
        try:
            logits = compute_teacher_logits(teacher, dataset, collator, columns, batch_size, device, autocast)
        finally:
            teacher.to(home)  # the live teacher is placed later, if it is needed at all
        record["compute_seconds"] = round(time.perf_counter() - start, 2)
        record["num_labels"] = int(logits.shape[-1])
        _save(path, logits, record)
        logger.info(f"teacher logits: {len(dataset)} rows in {record['compute_seconds']} s, cached in {path}")
    if TEACHER_LOGITS_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(TEACHER_LOGITS_COLUMN)
    return dataset.add_column(TEACHER_LOGITS_COLUMN, logits.tolist(), feature=List(Value("float32")))
