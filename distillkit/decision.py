"""The decision rule: how a classifier's probabilities become labels. One home for fitting it on the validation
split, applying it, saving it in `config.json` (and a run's records) and checking a saved one.

Three rules, one per task type, each tuned to maximise the task's primary metric on validation:

- binary (2 classes, single-label): a threshold on p(positive class) (`decision_thresholds: [t]`), maximising
  the positive class's F1;
- single-label multi-class: one additive offset per class on the log-probabilities, equivalently on the logits
  (`decision_logit_offsets: [b_0, ..., b_k-1]`, predicted class = argmax(logits + b)), maximising macro-F1.
  Fitted by deterministic coordinate ascent over `OFFSET_GRID`: class by class, each offset moves to the grid
  value that raises validation macro-F1 most (strictly; ties keep the smaller offset), rounds repeat until none
  moves. A class that argmax never picks gets picked when that helps macro-F1;
- multi-label: one threshold per label on its sigmoid (`decision_thresholds: [t_0, ...]`), each maximising that
  label's F1.

Untuned (`--tune_decision false`, or a model saved without a rule): argmax, or 0.5 per label. Every reader
(run_eval.py, app.py/serving, ONNX exports, model cards) decides through `DecisionRule.decide`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve

THRESHOLDS_KEY = "decision_thresholds"  # config.json: binary (one) or multi-label (one per label), in [0, 1]
OFFSETS_KEY = "decision_logit_offsets"  # config.json: multi-class, one per class, added to the logits
RULE_KEY = "decision_rule"  # all_results.json / run_record.json: DecisionRule.to_dict()

ARGMAX = "argmax"
THRESHOLD = "threshold"  # binary: p(positive) >= t
LOGIT_OFFSETS = "logit_offsets"  # multi-class: argmax(logits + offsets)
LABEL_THRESHOLDS = "label_thresholds"  # multi-label: p_j >= t_j
RULES = (ARGMAX, THRESHOLD, LOGIT_OFFSETS, LABEL_THRESHOLDS)

# Offsets are log-probability (= logit) shifts: e^4 ≈ 55x in odds covers any useful correction; 0.25 steps.
OFFSET_GRID = np.round(np.arange(-4.0, 4.0 + 1e-9, 0.25), 2)
MAX_ROUNDS = 20
_TINY = 1e-300  # log(0) guard: a probability that underflowed still ranks below every other


def is_multi_label(problem_type: str) -> bool:
    return problem_type == "multi_label_classification"


@dataclass
class DecisionRule:
    """A classifier's decision rule: `kind` (one of RULES) and its `values` (thresholds or offsets; None: default)."""

    kind: str
    values: list[float] | None = None
    num_labels: int = 2
    multi_label: bool = False

    # --- construction and checks ---------------------------------------------------------------------------------

    @classmethod
    def default(cls, problem_type: str, num_labels: int) -> DecisionRule:
        """The untuned rule: argmax (single-label) or 0.5 per label (multi-label)."""
        multi = is_multi_label(problem_type)
        return cls(LABEL_THRESHOLDS if multi else ARGMAX, None, num_labels, multi)

    @classmethod
    def from_saved(
        cls,
        problem_type: str,
        num_labels: int,
        thresholds: list[float] | None = None,
        offsets: list[float] | None = None,
    ) -> DecisionRule:
        """The rule saved as `decision_thresholds` / `decision_logit_offsets`; a ValueError says what does not fit."""
        rule = cls.default(problem_type, num_labels)
        if thresholds is not None and offsets is not None:
            raise ValueError(f"both {THRESHOLDS_KEY} and {OFFSETS_KEY} are set; a model has one decision rule")
        if thresholds is not None:
            if not rule.multi_label and num_labels != 2:
                raise ValueError(
                    f"{THRESHOLDS_KEY}: {len(thresholds)} given; a {num_labels}-class single-label task is decided by "
                    f"argmax or {OFFSETS_KEY}, thresholds apply to binary and multi-label tasks"
                )
            expected = num_labels if rule.multi_label else 1
            _check_numbers(THRESHOLDS_KEY, thresholds, expected, "one per label" if rule.multi_label else "one, for a binary task")
            rule.kind = LABEL_THRESHOLDS if rule.multi_label else THRESHOLD
            rule.values = check_threshold_values(thresholds)
        elif offsets is not None:
            if rule.multi_label or num_labels == 2:
                raise ValueError(
                    f"{OFFSETS_KEY}: per-class logit offsets decide a single-label task of 3+ classes, not a "
                    f"{'multi-label' if rule.multi_label else 'binary'} one (use {THRESHOLDS_KEY})"
                )
            _check_numbers(OFFSETS_KEY, offsets, num_labels, "one per class")
            rule.kind, rule.values = LOGIT_OFFSETS, [float(b) for b in offsets]
        return rule

    @classmethod
    def from_config(cls, config: Any, problem_type: str, num_labels: int) -> DecisionRule:
        """The rule saved on a transformers config (or its dict)."""
        get = config.get if isinstance(config, Mapping) else lambda key, default=None: getattr(config, key, default)
        return cls.from_saved(problem_type, num_labels, get(THRESHOLDS_KEY), get(OFFSETS_KEY))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], problem_type: str, num_labels: int) -> DecisionRule:
        """The rule as `to_dict` wrote it (all_results.json / run_record.json `decision_rule`)."""
        kind = data.get("rule", ARGMAX)
        if kind not in RULES:
            raise ValueError(f"{RULE_KEY}: unknown rule {kind!r}; expected one of {', '.join(RULES)}")
        values = data.get("values")
        if kind == LOGIT_OFFSETS:
            return cls.from_saved(problem_type, num_labels, offsets=values)
        return cls.from_saved(problem_type, num_labels, thresholds=values if kind != ARGMAX else None)

    @property
    def thresholds(self) -> list[float] | None:
        return self.values if self.kind in (THRESHOLD, LABEL_THRESHOLDS) else None

    @property
    def offsets(self) -> list[float] | None:
        return self.values if self.kind == LOGIT_OFFSETS else None

    @property
    def tuned(self) -> bool:
        return self.values is not None

    # --- applying ------------------------------------------------------------------------------------------------

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Class ids (single-label) or a 0/1 matrix (multi-label) from probabilities (softmax / per-label sigmoid).

        Offsets act on log p, which is the logits shifted by one constant per row: argmax(log p + b) equals
        argmax(logits + b), so a reader holding logits (the card's ONNX snippet) decides the same.
        """
        probs = np.asarray(probs, dtype=np.float64)
        if self.multi_label:
            cut = np.asarray(self.values if self.values is not None else [0.5] * probs.shape[-1])
            return (probs >= cut).astype(np.int64)
        if self.kind == THRESHOLD:
            return (probs[:, 1] >= self.values[0]).astype(np.int64)
        if self.kind == LOGIT_OFFSETS:
            return _offset_argmax(np.log(np.maximum(probs, _TINY)), np.asarray(self.values))
        return probs.argmax(axis=-1)

    # --- saving --------------------------------------------------------------------------------------------------

    def save_to_config(self, config: Any) -> None:
        """Write the rule onto a transformers config: the key of its kind set, the other cleared."""
        config.decision_thresholds = self.thresholds
        setattr(config, OFFSETS_KEY, self.offsets)

    def to_dict(self) -> dict[str, Any]:
        """What run_record.json / all_results.json record: the rule's name, its values, how it was chosen."""
        out: dict[str, Any] = {"rule": self.kind if self.tuned or self.multi_label else ARGMAX, "values": self.values}
        if self.multi_label and not self.tuned:
            out["values"] = [0.5] * self.num_labels
        out["tuned_on"] = "validation" if self.tuned else None
        out["maximises"] = (
            None if not self.tuned else "macro_f1" if self.kind == LOGIT_OFFSETS else "f1 (per label)" if self.multi_label else "f1"
        )
        return out

    def describe(self, labels: list[str] | None = None) -> str:
        """One line for results.csv / report.md / the app: `argmax`, `p(hate) >= 0.31`, `argmax(logits + [...])`."""
        if self.kind == THRESHOLD:
            positive = labels[1] if labels and len(labels) > 1 else "positive"
            return f"p({positive}) >= {self.values[0]:.4g} (tuned)"
        if self.kind == LOGIT_OFFSETS:
            return "argmax(logits + [" + ", ".join(f"{b:+.2f}" for b in self.values) + "]) (tuned)"
        if self.multi_label:
            if self.values is None:
                return "each label at 0.5"
            return "per-label thresholds [" + ", ".join(f"{t:.3g}" for t in self.values) + "] (tuned)"
        return ARGMAX


def check_threshold_values(values: Any) -> list[float]:
    """Probability thresholds as saved: a non-empty list of finite numbers in [0, 1] (any count), else ValueError.
    What every reader checks before deciding with them (`from_saved`; `integrity.check_thresholds` names the file)."""
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{THRESHOLDS_KEY} {values!r}: expected a list of numbers in [0, 1]")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
            raise ValueError(
                f"{THRESHOLDS_KEY} {list(values)!r}: {v!r}: a probability threshold is a number that lies in [0, 1]"
            )
    return [float(v) for v in values]


def _check_numbers(key: str, values: Any, expected: int, what: str) -> None:
    if not isinstance(values, (list, tuple)) or len(values) != expected:
        count = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise ValueError(f"{key}: {count} given; this model takes {expected} ({what})")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{key} {list(values)}: {v!r} is not a finite number")


def _offset_argmax(scores: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return (scores + offsets[None, :]).argmax(axis=-1)


# --- fitting -------------------------------------------------------------------------------------------------------


def best_f1_threshold(scores: np.ndarray, positives: np.ndarray) -> float:
    """The score threshold that maximises F1 of `scores >= t` on these examples (0.5 when there is no positive)."""
    positives = np.asarray(positives).astype(int)
    if positives.sum() == 0 or positives.sum() == len(positives):
        return 0.5
    precision, recall, thresholds = precision_recall_curve(positives, scores)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    # The last precision/recall point has no threshold (recall 0); ties go to the highest threshold.
    best = int(np.argmax(f1[:-1][::-1]))
    return float(min(1.0, max(0.0, thresholds[::-1][best])))


def macro_f1(labels: np.ndarray, preds: np.ndarray, num_labels: int) -> float:
    """Macro-F1 over all `num_labels` classes (a class never predicted nor present counts 0), as sklearn's
    f1_score(average="macro", labels=range(k), zero_division=0), but fast enough for a grid search."""
    tp = np.bincount(labels[preds == labels], minlength=num_labels).astype(float)
    predicted = np.bincount(preds, minlength=num_labels).astype(float)
    actual = np.bincount(labels, minlength=num_labels).astype(float)
    denominator = predicted + actual
    f1 = np.divide(2 * tp, denominator, out=np.zeros(num_labels), where=denominator > 0)
    return float(f1.mean())


def fit_logit_offsets(probs: np.ndarray, labels: np.ndarray, grid: np.ndarray = OFFSET_GRID) -> list[float]:
    """Per-class offsets on log p maximising macro-F1 of argmax(log p + b): coordinate ascent over `grid`, classes
    in id order, strict improvements only, grid values tried smallest magnitude first (deterministic)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    k = probs.shape[-1]
    scores = np.log(np.maximum(probs, _TINY))
    order = sorted(grid.tolist(), key=lambda v: (abs(v), v))
    offsets = np.zeros(k)
    best = macro_f1(labels, _offset_argmax(scores, offsets), k)
    for _ in range(MAX_ROUNDS):
        moved = False
        for c in range(k):
            for value in order:
                if value == offsets[c]:
                    continue
                trial = offsets.copy()
                trial[c] = value
                score = macro_f1(labels, _offset_argmax(scores, trial), k)
                if score > best + 1e-12:
                    best, offsets, moved = score, trial, True
        if not moved:
            break
    return [float(b) for b in offsets]


def fit_decision_rule(problem_type: str, probs: np.ndarray, labels: np.ndarray) -> DecisionRule:
    """The rule of this task type that maximises its primary metric on these (validation) examples."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    num_labels = probs.shape[-1]
    if is_multi_label(problem_type):
        values = [best_f1_threshold(probs[:, j], labels[:, j]) for j in range(num_labels)]
        return DecisionRule.from_saved(problem_type, num_labels, thresholds=values)
    if num_labels == 2:
        return DecisionRule.from_saved(problem_type, 2, thresholds=[best_f1_threshold(probs[:, 1], labels == 1)])
    return DecisionRule.from_saved(problem_type, num_labels, offsets=fit_logit_offsets(probs, labels))
