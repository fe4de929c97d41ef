"""`--layers auto`: the student's layers chosen for the user's data, by scoring every layer of the fine-tuned teacher.

Two cheap criteria, each a score per teacher layer where higher means "more important, keep it":

- `block_influence` (forward only; ShortGPT's Block Influence): 1 − cosine between a layer's input and output hidden
  states, on the [CLS] state and on the mean-pooled state (padding excluded), averaged over both and over a sample of
  the training split. A layer whose output equals its input scores 0.
- `skip_metric_drop` (the task): the teacher's primary validation metric (F1 for a binary task, macro F1 otherwise:
  the study's rule) minus the same metric of the teacher with that one layer skipped. No training: the skipped model
  runs the teacher's other layers as they are (`_SkipLayerProbe`: the same logits as `students.build_student` of
  every other layer, without recomputing the layers before the skipped one).

Combination rule (`rank_mean`): each criterion ranks the layers (1 = least important; tied scores share their mean
rank); a layer's combined score is the mean of its ranks; the k layers with the highest combined score are kept.
Ties in the combined score go to the higher Block Influence, then to the later layer. Both criteria run through
`teacher_logits.compute_teacher_logits`, the batched no-grad forward of the teacher-logit cache, so there is no
loop here of our own over the data.

`--layers search` (`search_layers`): greedy removal with short distillation probes (Peer et al., "Greedy-layer
pruning"). Each round, one student per remaining layer, built without that layer (`build_student`), is distilled for
a few optimizer steps by the run's own trainer (the caller's `distill_probe`) and scored on the validation sample; the
layer whose removal scores best is dropped, until k remain. It costs n + (n − 1) + … + (k + 1) probes, several
students' training: its seconds and probes are recorded beside the choice.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch
from datasets import Dataset
from scipy.stats import rankdata

from .cli import UsageError
from .students import layer_stack, num_layers
from .tasks import Task
from .teacher_logits import compute_teacher_logits, teacher_input_columns

logger = logging.getLogger(__name__)

AUTO = "auto"
CRITERIA = ("block_influence", "skip_metric_drop")
# The samples' default sizes (bench/layer_selection.py, docs/layer_selection.md). Block Influence barely moves
# between 32 and 512 rows. The skip-one-layer pass, (n + 1)/2 teacher forwards per row, dominates the cost: its
# validation sample is a fortieth of the rows the student trains on, within [48, 1000]. A 3-layer student's training
# costs about 1.8 of its 6-layer teacher's forwards per row (the study measured it), so choosing costs about 5% of
# the training, and under 7% where the 48-row floor binds (the study's wiki_toxic budget, 1,680 rows trained).
DEFAULT_TRAIN_ROWS = 32
VALIDATION_ROWS_SHARE = 1 / 40
MIN_VALIDATION_ROWS, MAX_VALIDATION_ROWS = 48, 1000
COMBINATION_RULE = (
    "rank_mean: each criterion ranks the layers (1 = least important, ties share their mean rank); keep the k layers "
    "with the highest mean rank; ties go to the higher block_influence, then to the later layer"
)
SEARCH = "search"
DEFAULT_PROBE_STEPS = 20
SEARCH_CRITERIA = ("removal_round", "first_round_drop")
SEARCH_RULE = (
    "greedy removal: each round, a student without each remaining layer is distilled for probe_steps optimizer steps "
    "and scored on the validation sample; the layer whose removal scores best is dropped (ties: the earlier layer) "
    "until k remain"
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
    criterion: str = AUTO  # auto (the two scores above) or search (greedy removal with distillation probes)
    probe_steps: int = 0  # search: optimizer steps of each probe student
    probes: int = 0  # search: probe students trained
    rounds: list[dict[str, Any]] = field(default_factory=list)  # search: per round, each candidate's probe metric

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


class _SkipLayerProbe(torch.nn.Module):
    """Wraps a classifier so that its "logits" are, per row, the whole model's logits and then its logits with layer
    i skipped, for i = 1..n: (n + 1) × num_labels columns. `compute_teacher_logits` then batches and collects them.

    Skipping layer i feeds the whole run's input of layer i (hidden state i − 1, through a hook on the embeddings)
    to layers i+1..n and the head: the arithmetic of `build_student` without layer i, at n(n + 1)/2 layer passes
    instead of n² because no prefix is recomputed."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        prefix = layer_stack(model)[0]  # e.g. "bert.encoder.layer"
        parent, self._stack_name = prefix.rsplit(".", 1)
        self._stack_parent = model.get_submodule(parent)
        self._embeddings = model.get_submodule(prefix.split(".")[0]).embeddings

    def forward(self, **inputs: torch.Tensor) -> SimpleNamespace:
        whole = self.model(output_hidden_states=True, **inputs)
        stack = getattr(self._stack_parent, self._stack_name)
        logits = [whole.logits]
        try:
            for layer in range(1, len(stack) + 1):
                layer_input = whole.hidden_states[layer - 1]
                hook = self._embeddings.register_forward_hook(lambda *_, state=layer_input: state)
                setattr(self._stack_parent, self._stack_name, torch.nn.ModuleList(list(stack)[layer:]))
                try:
                    logits.append(self.model(**inputs).logits)
                finally:
                    hook.remove()
        finally:
            setattr(self._stack_parent, self._stack_name, stack)
        return SimpleNamespace(logits=torch.cat(logits, dim=-1))


def _metric_of_logits(logits: np.ndarray, dataset: Dataset, task: Task, metric: str) -> float:
    labels = np.asarray(dataset["label"]).astype(np.int64)
    return float(task.metrics(task.probabilities(logits), labels)[metric])


def model_metric(
    model: torch.nn.Module,
    dataset: Dataset,
    collator: Any,
    task: Task,
    metric: str,
    batch_size: int = 64,
    device: str = "cpu",
) -> float:
    """`metric` of `model` on the tokenised, labelled `dataset` (the batched no-grad forward of the logit cache)."""
    columns = teacher_input_columns(model, dataset)
    logits = compute_teacher_logits(model, dataset, collator, columns, batch_size, device).numpy()
    return _metric_of_logits(logits, dataset, task, metric)


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
    columns = teacher_input_columns(teacher, dataset)
    logits = compute_teacher_logits(_SkipLayerProbe(teacher), dataset, collator, columns, batch_size, device).numpy()
    per_model = np.split(logits, num_layers(teacher) + 1, axis=1)  # the whole teacher, then layer 1..n skipped
    values = [_metric_of_logits(block, dataset, task, metric) for block in per_model]
    return values[0], values[1:]


def combine(scores: dict[str, list[float]], k: int) -> tuple[list[float], list[int]]:
    """(mean rank of every layer, the k layers kept, ascending) by `COMBINATION_RULE`."""
    ranks = np.mean([rankdata(np.asarray(s, dtype=float), method="average") for s in scores.values()], axis=0)
    tie_break = scores.get("block_influence", [0.0] * len(ranks))
    order = sorted(range(len(ranks)), key=lambda i: (ranks[i], tie_break[i], i), reverse=True)
    return [float(r) for r in ranks], sorted(i + 1 for i in order[:k])


def default_validation_rows(rows_trained: int) -> int:
    """The skip-one-layer sample when the user gives none: a fortieth of the rows the student will train on (rows ×
    epochs, or steps × batch), within [MIN_VALIDATION_ROWS, MAX_VALIDATION_ROWS]."""
    return int(min(MAX_VALIDATION_ROWS, max(MIN_VALIDATION_ROWS, round(VALIDATION_ROWS_SHARE * rows_trained))))


def _sample(dataset: Dataset, rows: int, seed: int) -> Dataset:
    return dataset if len(dataset) <= rows else dataset.shuffle(seed=seed).select(range(rows))


def choose_layers(
    teacher: torch.nn.Module,
    train: Dataset,
    validation: Dataset,
    collator: Any,
    k: int,
    train_rows: int = DEFAULT_TRAIN_ROWS,
    validation_rows: int = MAX_VALIDATION_ROWS,
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


def greedy_removal(
    n: int, k: int, score_without: Callable[[list[int]], float]
) -> tuple[list[int], list[dict[str, Any]]]:
    """(the k layers kept, one record per round) by `SEARCH_RULE`: `score_without(layers)` scores a student of those
    1-based layers (higher is better)."""
    kept = list(range(1, n + 1))
    rounds = []
    while len(kept) > k:
        metrics = {layer: float(score_without([x for x in kept if x != layer])) for layer in kept}
        removed = max(kept, key=lambda layer: (metrics[layer], -layer))
        rounds.append({"remaining": list(kept), "metric_without": metrics, "removed": removed})
        kept.remove(removed)
    return kept, rounds


def search_layers(
    teacher: torch.nn.Module,
    train: Dataset,
    validation: Dataset,
    collator: Any,
    k: int,
    distill_probe: Callable[[list[int], Dataset], torch.nn.Module],
    probe_steps: int,
    train_rows: int,
    validation_rows: int = MAX_VALIDATION_ROWS,
    batch_size: int = 64,
    device: str = "cpu",
    seed: int = 0,
) -> LayerSelection:
    """`--layers search`: greedy removal (`greedy_removal`) where a candidate's score is the validation metric of a
    student of its layers after `distill_probe(layers, train_sample)`, a short distillation from `teacher` that
    returns the trained student. Every probe sees the same seeded samples."""
    start = time.perf_counter()
    n = num_layers(teacher)
    k = check_num_student_layers(k, n)
    task = Task.from_config(teacher.config)
    metric = primary_metric(task)
    train_sample = _sample(train, train_rows, seed)
    validation_sample = _sample(validation, validation_rows, seed)
    teacher_score = model_metric(teacher, validation_sample, collator, task, metric, batch_size, device)

    def score_without(layers: list[int]) -> float:
        student = distill_probe(layers, train_sample)
        value = model_metric(student, validation_sample, collator, task, metric, batch_size, device)
        logger.info(f"--layers search: probe of layers {layers}: validation {metric} {value:.4f}")
        return value

    chosen, rounds = greedy_removal(n, k, score_without)
    removal_round = [float(len(rounds) + 1)] * n  # kept layers outlast every round
    for i, step in enumerate(rounds, start=1):
        removal_round[step["removed"] - 1] = float(i)
    first = rounds[0]["metric_without"]
    scores = {
        "removal_round": removal_round,
        "first_round_drop": [teacher_score - first[layer] for layer in range(1, n + 1)],
    }
    selection = LayerSelection(
        chosen=chosen,
        scores=scores,
        combined=removal_round,
        rule=SEARCH_RULE,
        metric=metric,
        teacher_metric=teacher_score,
        skipped_metric=[first[layer] for layer in range(1, n + 1)],
        train_rows=len(train_sample),
        validation_rows=len(validation_sample),
        seconds=round(time.perf_counter() - start, 3),
        criterion=SEARCH,
        probe_steps=probe_steps,
        probes=sum(len(r["remaining"]) for r in rounds),
        rounds=[{**r, "metric_without": {str(a): b for a, b in r["metric_without"].items()}} for r in rounds],
    )
    logger.info(
        f"--layers search: kept teacher layers {chosen} of {n} after {selection.probes} probes of {probe_steps} steps "
        f"in {selection.seconds:.1f} s; removed in order {[r['removed'] for r in rounds]}"
    )
    return selection
