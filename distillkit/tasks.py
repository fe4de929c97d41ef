"""The task type: single-label (softmax, argmax) or multi-label (per-label sigmoid, thresholds) classification.

One home for what depends on it: which gold and KD loss terms apply, how probabilities are made from logits, the
decision rule (a facade over distillkit/decision.py, which owns it: a tuned positive-class threshold for binary
tasks, per-class logit offsets for multi-class ones, a tuned threshold per label for multi-label ones), class weights for imbalanced data, and which metrics are reported. The names are the ones
transformers uses in `config.problem_type`, so a saved model says what it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from .decision import DecisionRule, best_f1_threshold, fit_decision_rule  # noqa: F401 (best_f1_threshold: re-exported)
from .metrics import classification_metrics, multilabel_metrics, softmax

SINGLE_LABEL = "single_label_classification"
MULTI_LABEL = "multi_label_classification"
PROBLEM_TYPES = (SINGLE_LABEL, MULTI_LABEL)
_SHORT = {"single_label": SINGLE_LABEL, "multi_label": MULTI_LABEL}


def normalize_problem_type(value: str) -> str:
    """`single_label`/`multi_label` or transformers' full names → the full name; anything else is a ValueError."""
    name = _SHORT.get(value, value)
    if name not in PROBLEM_TYPES:
        raise ValueError(f"--problem_type {value}: expected one of single_label, multi_label ({', '.join(PROBLEM_TYPES)})")
    return name


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


# `--class_weights auto`: a class is rare when its share of the training rows is under this fraction of the share it
# would have if the classes were even (1/k); a multi-label label is rare when its positive share is under this
# fraction of 1/2. Binary: under 25% positive; 3 classes: under 16.7%.
RARE_SHARE_OF_EVEN = 0.5


def rarest_share(labels: np.ndarray, num_labels: int, multi_label: bool) -> tuple[float, float]:
    """(the rarest class's or label's share of the training rows, the share under which it counts as rare)."""
    labels = np.asarray(labels)
    if multi_label:
        shares = labels.mean(axis=0) if len(labels) else np.zeros(num_labels)
        return float(np.min(shares)), RARE_SHARE_OF_EVEN / 2
    counts = np.bincount(labels.astype(int), minlength=num_labels)
    return float(counts.min() / max(len(labels), 1)), RARE_SHARE_OF_EVEN / num_labels


def explicit_class_weights(spec: str, num_labels: int | None = None) -> list[float]:
    """`w1,w2,...` as numbers: finite and positive, one per class when `num_labels` is known; a ValueError else."""
    try:
        weights = [float(w) for w in spec.split(",")]
    except ValueError:
        raise ValueError(f"--class_weights {spec}: expected auto, none, balanced, or comma-separated numbers") from None
    if len(weights) < 2 or (num_labels is not None and len(weights) != num_labels):
        count = f"{num_labels} positive numbers" if num_labels is not None else "at least 2 positive numbers"
        raise ValueError(f"--class_weights {spec}: expected {count}, one per class")
    if any(not math.isfinite(w) or w <= 0 for w in weights):
        raise ValueError(f"--class_weights {spec}: expected positive numbers, one per class")
    return weights


def class_weight_choice(spec: str | None, labels: np.ndarray, num_labels: int, multi_label: bool) -> dict[str, Any]:
    """--class_weights resolved once on the training labels: what was asked (`policy`), for `auto` what it resolved
    to and why (`resolved`, `rarest_share`, `rare_below`), and the `weights` (None: plain CE). The run record keeps it.

    `auto` (the default) is `balanced` when the training split has a rare class (see RARE_SHARE_OF_EVEN), else
    `none`; every stage of a comparison resolves it on the same training split, so the teacher, the students, the
    CE-only controls and LoRA all follow one policy. Single-label `balanced` is scikit-learn's n / (k · count_c).
    Multi-label `balanced` is BCE's `pos_weight`, negatives / positives per label, so each label's positives weigh
    as much as its negatives.
    """
    spec = spec or "none"
    choice: dict[str, Any] = {"policy": spec}
    resolved = spec
    labels = np.asarray(labels)
    if spec == "auto":
        share, limit = rarest_share(labels, num_labels, multi_label)
        resolved = "balanced" if share < limit else "none"
        choice.update(resolved=resolved, rarest_share=round(share, 6), rare_below=round(limit, 6))
    # An explicit `balanced` refuses a class with no training example; the `auto` default gives it weight 1
    # (there is nothing of it to weigh) rather than fail a run the user did not configure.
    lenient = spec == "auto"
    if resolved == "none":
        weights = None
    elif resolved == "balanced" and multi_label:
        pos = labels.sum(axis=0).astype(float)
        if (pos == 0).any() and not lenient:
            missing = [int(j) for j in np.flatnonzero(pos == 0)]
            raise ValueError(f"--class_weights balanced: labels {missing} have no positive example in train")
        weights = [float(x) for x in np.where(pos > 0, (len(labels) - pos) / np.maximum(pos, 1), 1.0)]
    elif resolved == "balanced":
        counts = np.bincount(labels.astype(int), minlength=num_labels).astype(float)
        if (counts == 0).any() and not lenient:
            missing = [int(c) for c in np.flatnonzero(counts == 0)]
            raise ValueError(f"--class_weights balanced: classes {missing} have no example in train")
        weights = [float(x) for x in np.where(counts > 0, len(labels) / (num_labels * np.maximum(counts, 1)), 1.0)]
    else:
        weights = explicit_class_weights(resolved, num_labels)
    choice["weights"] = weights
    return choice


def resolve_class_weight_policy(spec: str | None, labels: np.ndarray, num_labels: int, multi_label: bool) -> str:
    """What `spec` means on these training labels: `auto` becomes `balanced` or `none`; any other spec is kept."""
    choice = class_weight_choice(spec, labels, num_labels, multi_label)
    return choice.get("resolved", choice["policy"])


def parse_class_weights(spec: str | None, labels: np.ndarray, num_labels: int, multi_label: bool) -> list[float] | None:
    """The weights `spec` gives on these training labels (None: plain CE); see `class_weight_choice`."""
    return class_weight_choice(spec, labels, num_labels, multi_label)["weights"]


@dataclass
class Task:
    """What a classifier's outputs mean and how they are decided and scored."""

    problem_type: str = SINGLE_LABEL
    num_labels: int = 2
    # Multi-label: one per label. Binary: one, for the positive class. None: the default rule (argmax / 0.5).
    thresholds: list[float] | None = None
    # Single-label with 3+ classes: one logit offset per class (argmax(logits + offsets)). None: argmax.
    offsets: list[float] | None = None

    def __post_init__(self) -> None:
        self.problem_type = normalize_problem_type(self.problem_type)
        # A rule that does not fit the task is a ValueError now, not at the first prediction.
        DecisionRule.from_saved(self.problem_type, self.num_labels, self.thresholds, self.offsets)

    @property
    def multi_label(self) -> bool:
        return self.problem_type == MULTI_LABEL

    @property
    def rule(self) -> DecisionRule:
        """The decision rule (distillkit/decision.py owns it: fitting, applying, saving, checking)."""
        return DecisionRule.from_saved(self.problem_type, self.num_labels, self.thresholds, self.offsets)

    @rule.setter
    def rule(self, rule: DecisionRule) -> None:
        self.thresholds, self.offsets = rule.thresholds, rule.offsets

    @classmethod
    def from_config(cls, config: Any) -> Task:
        """The task a saved model was trained for: `config.problem_type` and its saved decision rule
        (`decision_thresholds` or `decision_logit_offsets`)."""
        get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
        num_labels = len(get("id2label") or {}) or int(get("num_labels", 2) or 2)
        return cls(get("problem_type") or SINGLE_LABEL, num_labels, get("decision_thresholds"), get("decision_logit_offsets"))

    def save_to_config(self, config: Any) -> None:
        """Write the task onto a transformers config, so every reader of the saved directory finds it."""
        config.problem_type = self.problem_type
        self.rule.save_to_config(config)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        logits = np.asarray(logits, dtype=np.float64)
        return sigmoid(logits) if self.multi_label else softmax(logits)

    def predict(self, probs: np.ndarray) -> np.ndarray:
        """The decision rule: 0/1 per label (multi-label), else class ids (`DecisionRule.decide`)."""
        return self.rule.decide(probs)

    def tune(self, probs: np.ndarray, labels: np.ndarray) -> DecisionRule:
        """Fit this task's decision rule on these (validation) examples and adopt it (`fit_decision_rule`)."""
        self.rule = fit_decision_rule(self.problem_type, probs, labels)
        return self.rule

    def tune_thresholds(self, probs: np.ndarray, labels: np.ndarray) -> list[float] | None:
        """Thresholds that maximise F1 on these examples: one per label, or the positive class's; None for a
        multi-class task, which is decided by logit offsets instead (`tune`)."""
        rule = fit_decision_rule(self.problem_type, probs, labels)
        return rule.thresholds

    def metrics(self, probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """The task's metrics at its decision rule (see `metrics.py` for what each key means)."""
        preds = self.predict(probs)
        if self.multi_label:
            return multilabel_metrics(probs, labels, preds)
        return classification_metrics(probs, np.asarray(labels), preds)


def multi_hot(label_lists: Sequence[Sequence[int]], num_labels: int) -> np.ndarray:
    """Lists of label ids → an (n, num_labels) 0/1 matrix; an id outside [0, num_labels) is a ValueError."""
    out = np.zeros((len(label_lists), num_labels), dtype=np.float32)
    for row, ids in enumerate(label_lists):
        for i in ids:
            if not 0 <= int(i) < num_labels:
                raise ValueError(f"row {row}: label {i} is outside 0..{num_labels - 1}")
            out[row, int(i)] = 1.0
    return out


def label_id_lists(cells: Sequence[Any]) -> list[list[int]]:
    """Label sets as run_eval.py writes them in a multi-label predictions file ("0,3"; empty, or NaN once read back
    by pandas: no label) → lists of label ids."""
    out = []
    for cell in cells:
        text = "" if cell is None or (isinstance(cell, float) and math.isnan(cell)) else str(cell)
        ids = [float(i) for i in text.split(",") if i.strip()]  # a lone id may come back as 3.0
        if any(not i.is_integer() for i in ids):
            raise ValueError(f"{text!r} is not a list of label ids")
        out.append([int(i) for i in ids])
    return out


def trainer_metrics(model: Any) -> Callable[[Any], dict[str, float]]:
    """`Trainer(compute_metrics=...)` for this model's task. The task is read from the config at every call, so
    decision rule tuned after training (`decide_thresholds`) are the ones the validation and test scores use."""

    def compute(eval_pred: Any) -> dict[str, float]:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        task = Task.from_config(model.config)
        return task.metrics(task.probabilities(logits), np.asarray(eval_pred.label_ids))

    return compute


def should_tune_decision(requested: bool | None, task: Task, has_validation: bool = True) -> bool:
    """--tune_decision: on by default whenever there is a validation split to tune on (every task type has a
    rule: a binary threshold, multi-class logit offsets, per-label thresholds); `false` keeps argmax / 0.5."""
    if requested is None:
        return has_validation
    return bool(requested) and has_validation


should_tune_thresholds = should_tune_decision  # the flag's former name
