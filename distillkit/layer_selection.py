"""`--layers auto`: the student's layers chosen for the user's data, by scoring every layer of the fine-tuned teacher.

Two cheap criteria, each a score per teacher layer where higher means "more important, keep it":

- `block_influence` (forward only; ShortGPT's Block Influence): 1 − cosine between a layer's input and output hidden
  states, on the [CLS] state and on the mean-pooled state (padding excluded), averaged over both and over a sample of
  the training split. A layer whose output equals its input scores 0.
- `skip_metric_drop` (the task): the teacher's primary validation metric (F1 for a binary task, macro F1 otherwise:
  the study's rule) minus the same metric of the teacher with that one layer skipped. No training: the skipped model
  is `students.build_student` of every other layer, so the remaining layers are exact copies.

Combination rule (`rank_mean`): each criterion ranks the layers (1 = least important; tied scores share their mean
rank); a layer's combined score is the mean of its ranks; the k layers with the highest combined score are kept.
Ties in the combined score go to the higher Block Influence, then to the later layer. Both criteria run through
`teacher_logits.compute_teacher_logits`, the batched no-grad forward of the teacher-logit cache, so there is no
loop here of our own over the data.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from scipy.stats import rankdata

from .cli import UsageError
from .students import build_student, num_layers
from .tasks import Task
from .teacher_logits import compute_teacher_logits, teacher_input_columns

logger = logging.getLogger(__name__)

AUTO = "auto"
CRITERIA = ("block_influence", "skip_metric_drop")
COMBINATION_RULE = (
    "rank_mean: each criterion ranks the layers (1 = least important, ties share their mean rank); keep the k layers "
    "with the highest mean rank; ties go to the higher block_influence, then to the later layer"
)


@dataclass
class LayerSelection:
    """What `--layers auto` measured and chose; saved as the run record's `layer_selection`."""

    chosen: list[int]  # 1-based teacher layers kept, ascending
    scores: dict[str, list[float]]  # criterion → score of teacher layers 1..n (higher: more important)
    combined: list[float]  # mean rank of layers 1..n
    rule: str = COMBINATION_RULE
    metric: str = "f1"  # the validation metric of `skip_metric_drop`
    teacher_metric: float = float("nan")  # that metric of the whole teacher on the validation sample
    skipped_metric: list[float] = field(default_factory=list)  # ... with layer i skipped
    block_influence_cls: list[float] = field(default_factory=list)
    block_influence_mean: list[float] = field(default_factory=list)
    train_rows: int = 0
    validation_rows: int = 0
    seconds: float = 0.0  # wall-clock time of the whole choice

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerSelection:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def check_num_student_layers(k: int | None, teacher_num_layers: int) -> int:
    """k for `--layers auto`: default half the teacher's layers; it must drop at least one layer and keep one."""
    n = teacher_num_layers
    k = n // 2 if k is None else k
    if not 1 <= k < n:
        raise UsageError(
            f"--num_student_layers {k}: --layers auto keeps fewer layers than the teacher's {n}; give 1..{n - 1}"
        )
    return k


def primary_metric(task: Task) -> str:
    """The metric the study ranks methods by: F1 of the positive class for a binary task, macro F1 otherwise."""
    return "f1" if task.num_labels == 2 and not task.multi_label else "macro_f1"


class _BlockInfluenceProbe(torch.nn.Module):
    """Wraps a classifier so that its "logits" are, per row, the Block Influence of every layer: [CLS] then
    mean-pooled, 2n columns. `compute_teacher_logits` then batches, sorts and collects them like logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, attention_mask: torch.Tensor | None = None, **inputs: torch.Tensor) -> SimpleNamespace:
        hidden = self.model(attention_mask=attention_mask, output_hidden_states=True, **inputs).hidden_states
        if attention_mask is None:
            attention_mask = torch.ones(hidden[0].shape[:2], device=hidden[0].device)
        mask = attention_mask.unsqueeze(-1).to(hidden[0].dtype)
        pooled = [(h * mask).sum(1) / mask.sum(1).clamp(min=1) for h in hidden]
        cos = torch.nn.functional.cosine_similarity
        cls = [1 - cos(hidden[i][:, 0].float(), hidden[i + 1][:, 0].float(), dim=-1) for i in range(len(hidden) - 1)]
        mean = [1 - cos(pooled[i].float(), pooled[i + 1].float(), dim=-1) for i in range(len(hidden) - 1)]
        return SimpleNamespace(logits=torch.stack(cls + mean, dim=-1))


def block_influence(
    teacher: torch.nn.Module, dataset: Dataset, collator: Any, batch_size: int = 64, device: str = "cpu"
) -> tuple[list[float], list[float]]:
    """(Block Influence on [CLS], on the mean-pooled state) of every layer, 1..n, averaged over `dataset`'s rows."""
    columns = teacher_input_columns(teacher, dataset)
    per_row = compute_teacher_logits(_BlockInfluenceProbe(teacher), dataset, collator, columns, batch_size, device)
    mean = per_row.double().mean(0).tolist()
    n = len(mean) // 2
    return mean[:n], mean[n:]


def _validation_metric(
    model: torch.nn.Module, dataset: Dataset, collator: Any, task: Task, metric: str, batch_size: int, device: str
) -> float:
    columns = teacher_input_columns(model, dataset)
    logits = compute_teacher_logits(model, dataset, collator, columns, batch_size, device).numpy()
    labels = np.asarray(dataset["label"])
    labels = labels.astype(np.int64)
    return float(task.metrics(task.probabilities(logits), labels)[metric])


def skip_layer_metrics(
    teacher: torch.nn.Module,
    dataset: Dataset,
    collator: Any,
    task: Task,
    metric: str,
    batch_size: int = 64,
    device: str = "cpu",
) -> tuple[float, list[float]]:
    """(the teacher's `metric` on `dataset`, the metric with layer i skipped for i = 1..n): no training."""
    n = num_layers(teacher)
    full = _validation_metric(teacher, dataset, collator, task, metric, batch_size, device)
    skipped = []
    for layer in range(1, n + 1):
        without = build_student(teacher, [i for i in range(1, n + 1) if i != layer]).to(device)
        skipped.append(_validation_metric(without, dataset, collator, task, metric, batch_size, device))
        del without
    return full, skipped


def combine(scores: dict[str, list[float]], k: int) -> tuple[list[float], list[int]]:
    """(mean rank of every layer, the k layers kept, ascending) by `COMBINATION_RULE`."""
    ranks = np.mean([rankdata(np.asarray(s, dtype=float), method="average") for s in scores.values()], axis=0)
    tie_break = scores.get("block_influence", [0.0] * len(ranks))
    order = sorted(range(len(ranks)), key=lambda i: (ranks[i], tie_break[i], i), reverse=True)
    return [float(r) for r in ranks], sorted(i + 1 for i in order[:k])


def _sample(dataset: Dataset, rows: int, seed: int) -> Dataset:
    return dataset if len(dataset) <= rows else dataset.shuffle(seed=seed).select(range(rows))


def choose_layers(
    teacher: torch.nn.Module,
    train: Dataset,
    validation: Dataset,
    collator: Any,
    k: int,
    train_rows: int = 512,
    validation_rows: int = 1000,
    batch_size: int = 64,
    device: str = "cpu",
    seed: int = 0,
) -> LayerSelection:
    """Score every layer of the fine-tuned `teacher` on samples of the tokenised splits and keep the k best.

    `train` and `validation` are tokenised splits (the validation one with its `label` column); `collator` pads
    them (the run's DataCollatorWithPadding).
    """
    start = time.perf_counter()
    n = num_layers(teacher)
    k = check_num_student_layers(k, n)
    task = Task.from_config(teacher.config)
    metric = primary_metric(task)
    home = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.to(device).eval()
    try:
        train_sample = _sample(train, train_rows, seed)
        validation_sample = _sample(validation, validation_rows, seed)
        bi_cls, bi_mean = block_influence(teacher, train_sample, collator, batch_size, device)
        full, skipped = skip_layer_metrics(teacher, validation_sample, collator, task, metric, batch_size, device)
    finally:
        teacher.to(home).train(was_training)
    scores = {
        "block_influence": [(a + b) / 2 for a, b in zip(bi_cls, bi_mean)],
        "skip_metric_drop": [full - s for s in skipped],
    }
    combined, chosen = combine(scores, k)
    selection = LayerSelection(
        chosen=chosen,
        scores=scores,
        combined=combined,
        metric=metric,
        teacher_metric=full,
        skipped_metric=skipped,
        block_influence_cls=bi_cls,
        block_influence_mean=bi_mean,
        train_rows=len(train_sample),
        validation_rows=len(validation_sample),
        seconds=round(time.perf_counter() - start, 3),
    )
    logger.info(
        f"--layers auto: kept teacher layers {chosen} of {n} in {selection.seconds:.1f} s; "
        + "; ".join(f"{name} {[round(s, 4) for s in values]}" for name, values in scores.items())
    )
    return selection
