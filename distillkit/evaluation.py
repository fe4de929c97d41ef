"""Scoring saved models on one split, the same way for every model: predictions, metrics, speed, a results row."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from sklearn.metrics import f1_score
from transformers import PreTrainedTokenizerBase

from .cli import UsageError
from .data import TextClassificationData
from .integrity import BrokenModelError
from .metrics import never_predicted, never_predicted_warning, per_label_table
from .records import merged_name
from .runtime import ONNX_FILE, LoadedClassifier, adapter_base_name, encode_texts, is_onnx_file, predict_logits, variant_suffix
from .students import count_parameters
from .tasks import Task

logger = logging.getLogger(__name__)

SPEED_BATCH_SIZE = 32  # the `throughput_b32` column
_GENERIC_LABEL = re.compile(r"^LABEL_\d+$")
_SEED_DIR = re.compile(r"^seed[_-]?(\d+)$")


@dataclass
class SpeedSettings:
    """How latency and throughput are timed: identical for every model of one evaluation."""

    device: str = "cpu"
    latency_runs: int = 100  # single-text calls; the median is reported
    throughput_texts: int = 256  # texts timed in batches of SPEED_BATCH_SIZE
    warmup: int = 5
    max_length: int = 128


def model_name(path: str, experiment_dir: str | None = None) -> str:
    """A readable unique name: the path inside the experiment (`seed42-odd`, `lora-merged`), else the folder name."""
    path = os.path.normpath(path)
    if is_onnx_file(path):  # EXP/even-onnx/model-int8.onnx: even-onnx-int8
        return f"{model_name(os.path.dirname(path), experiment_dir)}-{variant_suffix(path)}"
    if experiment_dir and os.path.commonpath([os.path.abspath(path), os.path.abspath(experiment_dir)]) == (
        os.path.abspath(experiment_dir)
    ):
        rel = os.path.relpath(path, experiment_dir)
        if rel != ".":
            return rel.replace(os.sep, "-")
    return merged_name(path) or os.path.basename(path)


def unique_names(names: list[str]) -> list[str]:
    """Each name once, in order: a repeat gets the first free `-2`, `-3`, ... suffix, never one that another model
    is already called (`a, a, a-2` → `a, a-3, a-2`: each names a predictions file and a report row). Names that differ
    only in case count as the same: they are one file on a case-insensitive file system."""
    taken = {n.casefold() for n in names}
    used: set[str] = set()
    out = []
    for name in names:
        candidate, n = name, 1
        while candidate.casefold() in used or (candidate != name and candidate.casefold() in taken):
            n += 1
            candidate = f"{name}-{n}"
        used.add(candidate.casefold())
        out.append(candidate)
    return out


def model_seed(clf: LoadedClassifier) -> int | None:
    """The training seed: the run's record first, then a `seed42/` folder in its path, then (an adapter whose
    record has none) the seed of the model it adapted: the best we know."""
    record = clf.record
    if record is not None and record.seed is not None:
        return int(record.seed)
    for part in reversed(os.path.abspath(clf.path).split(os.sep)):
        match = _SEED_DIR.match(part)
        if match:
            return int(match.group(1))
    base_seed = ((record.base_record if record else None) or {}).get("seed")
    return int(base_seed) if base_seed is not None else None


def made_from(clf: LoadedClassifier) -> str | None:
    """The `base` column: the model an adapter (or a merged one) adapts, the teacher a student was distilled
    from, else what the model was fine-tuned from."""
    record = clf.record
    if clf.is_adapter:
        return (record.base_model if record else None) or adapter_base_name(clf.path)
    if record is None:
        return None
    if record.merged:
        return record.base_model
    return record.teacher or record.base_model


def has_generic_label_names(names: dict[int, str]) -> bool:
    """True when every class is the Hugging Face placeholder LABEL_<i>: such names carry no meaning to compare."""
    return all(_GENERIC_LABEL.match(str(n)) for n in names.values())


def check_labels(clf: LoadedClassifier, data: TextClassificationData) -> None:
    """A model is only scored on a data set with its own label set: same count, and same names when both have names."""
    model_labels = clf.id2label
    data_labels = data.id2label
    if len(model_labels) != data.num_labels:
        raise UsageError(
            f"model {clf.path} predicts {len(model_labels)} labels ({', '.join(map(str, model_labels.values()))}) "
            f"but the data set has {data.num_labels} ({', '.join(map(str, data_labels.values()))}); "
            "evaluate it with the --dataset_name it was trained on"
        )
    if not has_generic_label_names(model_labels) and not has_generic_label_names(data_labels):
        model_names = [str(model_labels[i]) for i in range(len(model_labels))]
        data_names = [str(data_labels[i]) for i in range(len(data_labels))]
        if model_names != data_names:
            raise UsageError(
                f"model {clf.path} has labels {model_names} but the data set has {data_names}; "
                "evaluate it with the --dataset_name it was trained on, or pass --class_names if only the names differ"
            )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def measure_speed(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str], settings: SpeedSettings
) -> dict[str, float]:
    """Single-text latency (ms; median and 90th percentile) and batch-32 throughput (texts/s) of the forward pass.

    Inputs are tokenised beforehand (tokenisation is the same for every model), the same texts in the same order
    for every model, after a warm-up. Wall-clock figures are what a user waits; the `_cpu` twins count this
    process's CPU time instead, which stays comparable when other jobs share the machine (the 1-minute load
    average is recorded beside them).
    """
    device = settings.device
    singles = [texts[i % len(texts)] for i in range(settings.latency_runs)]
    single_inputs = [encode_texts(tokenizer, [t], settings.max_length, device) for t in singles]
    bulk = [texts[i % len(texts)] for i in range(settings.throughput_texts)]
    batches = [
        encode_texts(tokenizer, bulk[i : i + SPEED_BATCH_SIZE], settings.max_length, device)
        for i in range(0, len(bulk), SPEED_BATCH_SIZE)
    ]
    for inputs in single_inputs[: settings.warmup] + batches[:1]:
        model(**inputs)
    _sync(device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    wall, cpu = [], []
    for inputs in single_inputs:
        start, start_cpu = time.perf_counter(), time.process_time()
        model(**inputs)
        _sync(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    start, start_cpu = time.perf_counter(), time.process_time()
    for inputs in batches:
        model(**inputs)
    _sync(device)
    elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {
        "latency_ms_b1": 1000 * statistics.median(wall),
        "latency_ms_b1_p90": 1000
        * (statistics.quantiles(wall, n=10, method="inclusive")[-1] if len(wall) > 1 else wall[0]),
        "throughput_b32": len(bulk) / elapsed,
        "latency_ms_b1_cpu": 1000 * statistics.median(cpu),
        "throughput_b32_cpu": len(bulk) / elapsed_cpu if elapsed_cpu > 0 else math.nan,
        "load_avg_1m": load,
    }


def measure_speed_side_by_side(
    models: dict[str, tuple[torch.nn.Module, PreTrainedTokenizerBase]],
    texts: list[str],
    settings: SpeedSettings,
    repeats: int = 3,
) -> dict[str, dict[str, float]]:
    """`measure_speed` of every model, in `repeats` rounds: each model once per round, the order rotated every
    round, so a slow spell of a shared machine falls on every model alike. Each figure is its median round."""
    names = list(models)
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            model, tokenizer = models[name]
            rounds[name].append(measure_speed(model, tokenizer, texts, settings))
    return {name: {key: statistics.median(r[key] for r in rounds[name]) for key in rounds[name][0]} for name in names}


def weights_size_mb(path: str) -> float:
    """Size on disk (MiB) of the weight files in a model or adapter directory (an ONNX export: its model.onnx)."""
    if is_onnx_file(path):
        return os.path.getsize(path) / 2**20
    if not os.path.isdir(path):
        return math.nan
    total = sum(
        os.path.getsize(os.path.join(path, f))
        for f in os.listdir(path)
        if (f.endswith((".safetensors", ".bin", ".pt")) and f != "training_args.bin") or f == ONNX_FILE
    )
    return total / 2**20


def _adapter_trainable_params(path: str) -> int | None:
    from safetensors import safe_open

    weights = os.path.join(path, "adapter_model.safetensors")
    if not os.path.isfile(weights):
        return None
    with safe_open(weights, framework="pt") as f:
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())  # noqa: SIM118 (safe_open is not iterable)


def loss_history(path: str) -> list[dict[str, float]]:
    """Training-log entries (step, epoch, loss and its components) from the run's trainer_state.json."""
    state = os.path.join(path, "trainer_state.json")
    if not os.path.isfile(state):
        return []
    with open(state) as f:
        history = json.load(f).get("log_history", [])
    return [entry for entry in history if "loss" in entry]


def layers_text(layers: Any) -> str:
    if layers is None:
        return "all"
    if isinstance(layers, (list, tuple)):
        return ",".join(str(x) for x in layers)
    return str(layers)


def check_task(clf: LoadedClassifier, task: Task, data: TextClassificationData) -> None:
    """A multi-label model is scored on multi-label data and a single-label one on single-label data."""
    if task.multi_label != data.multi_label:
        raise UsageError(
            f"model {clf.path} is a {task.problem_type} model but the data set is {data.problem_type}; evaluate it "
            "with the data it was trained on (--problem_type, --label_columns)"
        )


def gold_labels(data: TextClassificationData, split: str) -> np.ndarray:
    """Class ids (n,) of a single-label split, or the 0/1 matrix (n, labels) of a multi-label one."""
    ds = data.splits[split]
    column = "label" if "label" in ds.column_names else "labels"
    return np.asarray(ds[column], dtype=np.int64)


def mean_gold_loss(logits: np.ndarray, labels: np.ndarray, task: Task) -> float:
    """The gold-label loss of training, on these texts: cross-entropy, or mean BCE-with-logits over every label."""
    if task.multi_label:
        return float((np.logaddexp(0.0, logits) - labels * logits).mean())
    log_probs = logits - logits.max(axis=-1, keepdims=True)
    log_probs = log_probs - np.log(np.exp(log_probs).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def label_names(clf: LoadedClassifier, data: TextClassificationData) -> list[str]:
    """The data set's class names; the model's own when the data has only placeholders (LABEL_0, ...)."""
    id2label = clf.id2label if has_generic_label_names(data.id2label) else data.id2label
    return [str(id2label[i]) for i in range(data.num_labels)]


def thresholds_text(task: Task) -> str | None:
    """The saved decision thresholds (or a multi-class model's logit offsets) a model is scored at (`results.csv`
    column `thresholds`; `decision_rule` says which); None: argmax / 0.5."""
    values = task.thresholds if task.thresholds is not None else task.offsets
    return None if values is None else ",".join(f"{t:.4g}" for t in values)


def _ids_text(row: np.ndarray) -> str:
    return ",".join(str(j) for j in np.flatnonzero(row))


def predictions_frame(
    texts: list[str], labels: np.ndarray, probs: np.ndarray, preds: np.ndarray, id2label: dict[int, str], task: Task
) -> pd.DataFrame:
    """Per-text predictions. Single-label: class ids and names. Multi-label: `label`/`pred` are label-id sets
    ("0,3"; empty: none) and `label_name`/`pred_name` their names, one `prob_<j>` per label (its sigmoid)."""
    if task.multi_label:
        columns = {
            "label": [_ids_text(r) for r in labels],
            "label_name": [",".join(id2label[j] for j in np.flatnonzero(r)) for r in labels],
            "pred": [_ids_text(r) for r in preds],
            "pred_name": [",".join(id2label[j] for j in np.flatnonzero(r)) for r in preds],
        }
    else:
        columns = {
            "label": labels,
            "label_name": [id2label[i] for i in labels],
            "pred": preds,
            "pred_name": [id2label[i] for i in preds],
        }
    frame = pd.DataFrame({"text": texts, **columns, **{f"prob_{i}": probs[:, i] for i in range(probs.shape[1])}})
    if task.multi_label:  # so a reader need not guess the task from the cells (every gold set may have one label)
        frame["problem_type"] = task.problem_type
    return frame


def label_table(
    model: str, probs: np.ndarray, labels: np.ndarray, preds: np.ndarray, names: list[str], task: Task
) -> pd.DataFrame:
    """One row per label (multi-label) or class (single-label, one-vs-rest): support, F1 at the model's decision
    rule, ROC-AUC and PR-AUC (`per_label.csv`)."""
    if not task.multi_label:  # one-vs-rest: the F1 column is metrics.per_class_f1
        eye = np.eye(len(names), dtype=np.int64)
        labels, preds = eye[labels], eye[preds]
    rows = per_label_table(probs, labels, preds, names)
    return pd.DataFrame([{"model": model, **row} for row in rows])


def evaluate_model(
    clf: LoadedClassifier,
    data: TextClassificationData,
    split: str,
    settings: SpeedSettings,
    batch_size: int = 64,
    bootstrap: int = 200,
) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """One results row, the per-text predictions and the per-label table of one model on `split`.

    The model's task (`Task.from_config`: config.problem_type and its saved decision thresholds) makes the
    probabilities (softmax or per-label sigmoid), decides (argmax, a binary model's threshold, or each label's) and
    chooses the metrics.
    """
    check_labels(clf, data)
    task = clf.task
    check_task(clf, task, data)
    results = clf.results
    texts, labels = list(data.splits[split]["text"]), gold_labels(data, split)

    logits = predict_logits(clf.model, clf.tokenizer, texts, settings.max_length, batch_size, settings.device)
    if not np.isfinite(logits).all():  # scored, NaN would read as a class; the model is reported broken instead
        bad = int((~np.isfinite(logits).all(axis=1)).sum())
        raise BrokenModelError(f"{clf.name} ({clf.path}): non-finite logits on {bad} of {len(texts)} {split} texts")
    probs = task.probabilities(logits)
    preds = task.predict(probs)
    metrics = task.metrics(probs, labels)
    intervals = bootstrap_intervals(task, probs, labels, n=bootstrap, seed=0)
    speed = measure_speed(clf.model, clf.tokenizer, texts, settings)

    _, params = count_parameters(clf.model)
    base = made_from(clf)
    if clf.is_adapter:
        trainable = results.get("trainable_params") or _adapter_trainable_params(clf.path)
        serving_mb = weights_size_mb(clf.path) + (weights_size_mb(base) if base and os.path.isdir(base) else math.nan)
    else:
        trainable = results.get("trainable_params", params)
        serving_mb = weights_size_mb(clf.path)
    config = clf.model.config
    row: dict[str, Any] = {
        "model": clf.name,
        "method": clf.method,
        "runtime": clf.runtime,
        "base": base,
        "layers": layers_text(clf.layers),
        "num_layers": getattr(config, "num_hidden_layers", None),
        "params": params,
        "trainable_params": trainable,
        "trainable_pct": 100.0 * trainable / params if trainable is not None and params else math.nan,
        "size_mb": weights_size_mb(clf.path),
        "serving_size_mb": serving_mb,
        "problem_type": task.problem_type,
        "thresholds": thresholds_text(task),
        "decision_rule": task.rule.describe(label_names(clf, data)),
        **metrics,
        **intervals,
        "eval_loss": mean_gold_loss(logits, labels, task),
        "train_loss": results.get("train_loss", math.nan),
        "train_runtime_s": results.get("train_runtime", math.nan),
        **speed,
        "seed": model_seed(clf),
        "split": split,
        "samples": len(texts),
        "device": settings.device,
        "num_threads": torch.get_num_threads(),
        "path": os.path.abspath(clf.path),
    }
    names = label_names(clf, data)
    frame = predictions_frame(texts, labels, probs, preds, dict(enumerate(names)), task)
    table = label_table(clf.name, probs, labels, preds, names, task)
    missing = never_predicted(labels, preds, names)
    row["never_predicted"] = ";".join(missing)
    if missing:
        logger.warning(never_predicted_warning(clf.name, missing, split, "label" if task.multi_label else "class"))
    return row, frame, table


def rank_auc(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """ROC-AUC of every column at once, by the Mann-Whitney rank sum (ties get their mean rank: exactly
    sklearn's roc_auc_score); NaN for a column whose labels are all one value."""
    positives = positives.astype(bool)
    ranks = rankdata(scores, axis=0)
    n_pos = positives.sum(axis=0)
    n_neg = len(positives) - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = ((ranks * positives).sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def headline_scores(task: Task, probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """`f1` and `roc_auc` exactly as `task.metrics` defines them, without its other metrics and with one vectorised
    AUC: sklearn's per-label roc_auc_score would cost the bootstrap's resamples of a 28-label test set minutes per
    model (tests/test_eval_tasks.py checks that both agree)."""
    preds = task.predict(probs)
    if task.multi_label:
        f1 = f1_score(labels, preds, average="micro", zero_division=0)
        aucs = rank_auc(probs, labels)
    else:
        k = probs.shape[-1]
        average, label_ids = ("binary", None) if k == 2 else ("macro", list(range(k)))
        f1 = f1_score(labels, preds, average=average, labels=label_ids, pos_label=1, zero_division=0)
        # The positive class's probability, else one-vs-rest over the classes present; undefined with one class.
        present = np.unique(labels) if k > 2 else np.array([1])
        aucs = rank_auc(probs[:, present], labels[:, None] == present[None, :])
        if len(np.unique(labels)) < 2:
            aucs = np.array([np.nan])
    aucs = aucs[~np.isnan(aucs)]
    return {"f1": float(f1), "roc_auc": float(aucs.mean()) if len(aucs) else math.nan}


def bootstrap_intervals(
    task: Task,
    probs: np.ndarray,
    labels: np.ndarray,
    n: int = 200,
    seed: int = 0,
) -> dict[str, float]:
    """95% percentile intervals of F1 and ROC-AUC over bootstrap resamples of the texts: the test set's own noise."""
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {"f1": [], "roc_auc": []}
    for _ in range(n):
        idx = rng.integers(0, len(labels), len(labels))
        scores = headline_scores(task, probs[idx], labels[idx])
        for m, kept in values.items():
            if not math.isnan(scores[m]):
                kept.append(scores[m])
    out = {}
    for m, vals in values.items():
        out[f"{m}_ci_low"] = float(np.percentile(vals, 2.5)) if vals else math.nan
        out[f"{m}_ci_high"] = float(np.percentile(vals, 97.5)) if vals else math.nan
    return out
