"""Paired statistics for comparing two methods on the same test texts over several seeds.

For a pair (A, B) and a metric: the per-seed difference metric(A_s) − metric(B_s) on the same test set, its mean,
a 95% t interval across seeds (seed noise; `scipy.stats.t`, p-value from `scipy.stats.ttest_rel`), and a 95% paired
bootstrap over the test texts (test-set noise): one resample of the texts is applied to every seed of both methods
and the statistic is the mean over seeds of the difference (`scipy.stats.bootstrap`, percentile method, vectorised
with per-text weights). A difference is only called when BOTH intervals exclude 0; otherwise it is
"not distinguishable". One seed gives no interval across seeds, so it is never called.

Metrics: positive-class F1 and ROC-AUC for binary tasks, macro-F1 for multi-class, macro-F1 and macro ROC-AUC over
the labels for multi-label tasks (`metric_names`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats

from .tasks import MULTI_LABEL, label_id_lists, multi_hot

NOT_DISTINGUISHABLE = "not distinguishable"
METRIC_LABELS = {"f1": "positive-class F1", "roc_auc": "ROC-AUC", "macro_f1": "macro-F1", "micro_f1": "micro-F1"}


def metric_names(num_labels: int, multi_label: bool = False) -> list[str]:
    """The metrics the study compares: positive-class F1 and ROC-AUC for binary, macro-F1 for multi-class, macro-F1
    (the GoEmotions paper's figure) and macro ROC-AUC for multi-label."""
    if multi_label:
        return ["macro_f1", "roc_auc"]
    return ["f1", "roc_auc"] if num_labels == 2 else ["macro_f1"]


def is_multi_label(frame: pd.DataFrame) -> bool:
    """A predictions (or results) frame of a multi-label model: run_eval.py writes its problem_type."""
    return "problem_type" in frame.columns and bool((frame["problem_type"] == MULTI_LABEL).any())


def _label_matrix(column: pd.Series, k: int) -> np.ndarray:
    """A multi-label predictions file's label sets ("0,3") → an (n, k) 0/1 matrix."""
    return multi_hot(label_id_lists(column), k).astype(np.float64)


# --- metrics on weighted texts: w is (B, n), one row of per-text weights (bootstrap counts) per resample -----------


def _f1_binary(w: np.ndarray, labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    pos_label, pos_pred = labels == 1, preds == 1
    tp = w @ (pos_label & pos_pred)
    fp = w @ (~pos_label & pos_pred)
    fn = w @ (pos_label & ~pos_pred)
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(denom, dtype=float), where=denom > 0)


def _f1_of_matrices(w: np.ndarray, gold: np.ndarray, pred: np.ndarray, average: str) -> np.ndarray:
    """F1 of 0/1 (n, k) decision matrices: macro (every class/label 0..k-1 counts, 0 where it has neither gold nor
    predicted texts: sklearn's zero_division=0) or micro (counts pooled over the labels)."""
    tp = w @ (gold * pred)
    fp = w @ pred - tp
    fn = w @ gold - tp
    if average == "micro":
        tp, fp, fn = tp.sum(axis=-1), fp.sum(axis=-1), fn.sum(axis=-1)
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0)
    return f1 if average == "micro" else f1.mean(axis=-1)


def _f1_macro(w: np.ndarray, labels: np.ndarray, preds: np.ndarray, k: int) -> np.ndarray:
    return _f1_of_matrices(w, np.eye(k, dtype=float)[labels], np.eye(k, dtype=float)[preds], "macro")


def _roc_auc_binary(w: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUC (ties count one half), all resamples at once."""
    order = np.argsort(scores, kind="stable")
    s, y, ws = scores[order], np.asarray(labels)[order] == 1, w[:, order]
    neg_cum = np.cumsum(ws * ~y, axis=1)
    # Tie groups of equal scores: negatives strictly below, and negatives tied with each text.
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    ends = np.r_[starts[1:], len(s)] - 1
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(s)]))
    below = np.where(starts[group] > 0, neg_cum[:, np.maximum(starts[group] - 1, 0)], 0.0)
    tied = neg_cum[:, ends[group]] - below
    w_pos, w_neg = (ws * y).sum(axis=1), (ws * ~y).sum(axis=1)
    num = (ws * y * (below + 0.5 * tied)).sum(axis=1)
    denom = w_pos * w_neg
    return np.divide(num, denom, out=np.full_like(denom, np.nan), where=denom > 0)


def _multi_label_metric(metric: str, w: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
    """Multi-label: macro/micro F1 of the saved decisions (`f1` is micro, as in results.csv), or the macro ROC-AUC
    over the labels that have both values in the test set."""
    k = sum(c.startswith("prob_") for c in frame.columns)
    gold, pred = _label_matrix(frame["label"], k), _label_matrix(frame["pred"], k)
    if metric in ("macro_f1", "micro_f1", "f1"):
        return _f1_of_matrices(w, gold, pred, "macro" if metric == "macro_f1" else "micro")
    if metric == "roc_auc":
        scored = [j for j in range(k) if 0 < gold[:, j].sum() < len(gold)]
        per_label = [_roc_auc_binary(w, gold[:, j], frame[f"prob_{j}"].to_numpy(dtype=float)) for j in scored]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a label absent from a resample: NaN, left out
            return np.nanmean(np.stack(per_label), axis=0)
    raise ValueError(f"metric {metric!r} is not defined here for multi-label predictions (use macro_f1, roc_auc)")


def weighted_metric(metric: str, w: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
    """`metric` of one model's predictions (columns label, pred, prob_0..prob_{k-1}) under text weights w (B, n)."""
    if is_multi_label(frame):
        return _multi_label_metric(metric, w, frame)
    labels = frame["label"].to_numpy(dtype=np.int64)
    preds = frame["pred"].to_numpy(dtype=np.int64)
    k = sum(c.startswith("prob_") for c in frame.columns) or int(max(labels.max(), preds.max()) + 1)
    if metric == "f1" and k == 2:
        return _f1_binary(w, labels, preds)
    if metric == "macro_f1" or (metric == "f1" and k > 2):
        return _f1_macro(w, labels, preds, k)
    if metric == "roc_auc" and k == 2:
        return _roc_auc_binary(w, labels, frame["prob_1"].to_numpy(dtype=float))
    raise ValueError(f"metric {metric!r} is not defined here for {k} classes (use {metric_names(k)})")


def score(metric: str, frame: pd.DataFrame) -> float:
    return float(weighted_metric(metric, np.ones((1, len(frame))), frame)[0])


# --- paired differences ------------------------------------------------------------------------------------------


def t_interval(diffs: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Interval of the mean of per-seed differences from Student's t with n − 1 degrees of freedom (NaN for n < 2)."""
    n = len(diffs)
    if n < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * np.std(diffs, ddof=1) / math.sqrt(n)
    return float(np.mean(diffs) - half), float(np.mean(diffs) + half)


def _check_same_texts(frames: list[pd.DataFrame]) -> None:
    def gold(frame: pd.DataFrame) -> np.ndarray:  # multi-label: "0,3" text, empty (NaN once read back) for none
        return frame["label"].fillna("").astype(str).to_numpy()

    first = gold(frames[0])
    for frame in frames[1:]:
        if len(frame) != len(first) or not np.array_equal(gold(frame), first):
            raise ValueError("paired statistics need predictions on the same test texts in the same order")


def paired_difference(
    a: dict[int, pd.DataFrame],
    b: dict[int, pd.DataFrame],
    metric: str,
    n_resamples: int = 1000,
    random_state: int = 0,
) -> dict[str, float | int | str]:
    """Mean per-seed difference metric(a) − metric(b) over the seeds both have, with both 95% intervals.

    `a` and `b` map seed → predictions frame (label, pred, prob_*), every frame on the same texts.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("the two methods share no seed")
    frames_a, frames_b = [a[s] for s in seeds], [b[s] for s in seeds]
    _check_same_texts(frames_a + frames_b)
    scores_a = np.array([score(metric, f) for f in frames_a])
    scores_b = np.array([score(metric, f) for f in frames_b])
    diffs = scores_a - scores_b
    low, high = t_interval(diffs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical differences: no p-value, NaN says so
        p_value = float(stats.ttest_rel(scores_a, scores_b).pvalue) if len(seeds) > 1 else math.nan
    boot_low, boot_high = paired_bootstrap(frames_a, frames_b, metric, n_resamples, random_state)
    return {
        "metric": metric,
        "n_seeds": len(seeds),
        "seeds": " ".join(map(str, seeds)),
        "mean_a": float(scores_a.mean()),
        "mean_b": float(scores_b.mean()),
        "diff": float(diffs.mean()),
        "ci_low": low,
        "ci_high": high,
        "p_value": p_value,
        "boot_low": boot_low,
        "boot_high": boot_high,
        "verdict": call(low, high, boot_low, boot_high),
    }


def paired_bootstrap(
    frames_a: list[pd.DataFrame],
    frames_b: list[pd.DataFrame],
    metric: str,
    n_resamples: int = 1000,
    random_state: int = 0,
) -> tuple[float, float]:
    """95% percentile interval of mean-over-seeds(metric(a_s) − metric(b_s)) when the test texts are resampled."""
    n = len(frames_a[0])

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.atleast_2d(idx).astype(np.int64)
        # Resampled indices → per-text counts, so every metric is one matrix product per resample.
        w = np.zeros((idx.shape[0], n))
        np.add.at(w, (np.repeat(np.arange(idx.shape[0]), idx.shape[1]), idx.ravel()), 1.0)
        diffs = [weighted_metric(metric, w, fa) - weighted_metric(metric, w, fb) for fa, fb in zip(frames_a, frames_b)]
        return np.mean(diffs, axis=0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a degenerate resample distribution (identical models) is a valid answer
        result = stats.bootstrap(
            (np.arange(n),),
            statistic,
            n_resamples=n_resamples,
            batch=100,
            vectorized=True,
            method="percentile",
            random_state=np.random.default_rng(random_state),
        )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def call(ci_low: float, ci_high: float, boot_low: float, boot_high: float) -> str:
    """'A better' / 'B better' only when the seed interval and the text interval both exclude 0 on the same side."""
    intervals = [(ci_low, ci_high), (boot_low, boot_high)]
    if any(math.isnan(lo) or math.isnan(hi) for lo, hi in intervals):
        return NOT_DISTINGUISHABLE
    if all(lo > 0 for lo, _ in intervals):
        return "A better"
    if all(hi < 0 for _, hi in intervals):
        return "B better"
    return NOT_DISTINGUISHABLE


# --- which pairs the study asks about ----------------------------------------------------------------------------


def study_pairs(methods: list[str], controls: dict[str, str], reference: str = "teacher") -> list[tuple[str, str]]:
    """(A, B) pairs present in `methods`: odd vs even; each student vs its CE-only control; LoRA vs the even
    student; then every method vs the teacher."""
    wanted = [("odd", "even"), *controls.items(), ("lora", "even"), ("lora_even", "even")]
    wanted += [(m, reference) for m in methods if m != reference]
    present = set(methods)
    return [p for p in dict.fromkeys(wanted) if p[0] in present and p[1] in present]


def paired_table(
    predictions: dict[str, dict[int, pd.DataFrame]],
    pairs: list[tuple[str, str]],
    metrics: list[str],
    n_resamples: int = 1000,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """One row per (pair, metric): `predictions` maps method → seed → predictions frame."""
    rows = []
    for a, b in pairs:
        for metric in metrics:
            if progress:
                progress(f"{a} vs {b} ({metric})")
            rows.append({"a": a, "b": b, **paired_difference(predictions[a], predictions[b], metric, n_resamples)})
    columns = ["a", "b", "metric", "n_seeds", "seeds", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "p_value"]
    return pd.DataFrame(rows, columns=[*columns, "boot_low", "boot_high", "verdict"])
