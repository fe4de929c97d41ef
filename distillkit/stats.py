"""Paired statistics for comparing two methods on the same test texts over several seeds.

For a pair (A, B) and a metric: the per-seed difference metric(A_s) − metric(B_s) on the same test set and its mean,
with three 95% intervals:
- across seeds (seed noise): Student's t (`scipy.stats.t`), p-value from `scipy.stats.ttest_rel`;
- over the test texts (test-set noise): one bootstrap resample of the texts applied to every seed of both methods,
  the statistic the mean over seeds of the difference (percentile method);
- both together (`seeds_and_texts_bootstrap`): each resample draws the seeds with replacement and one resample of
  the texts, so it covers the training noise and the test-set noise at once. The texts are resampled once per
  resample, not once per drawn seed, because every seed is scored on the same test set: its sampling error is
  shared by all seeds and does not average out over them (resampling texts independently within each seed, a nested
  design, shrinks that share by the number of seeds; tests/test_stats.py measures both coverages).
Every resample of every method is computed from one bank of text weights (`text_resample_weights`), so the resampled
scores of a model are computed once and every pair and interval reuses them.

A family of comparisons, declared before the numbers are seen, is corrected for multiple testing (`adjust_p`: Holm,
or Benjamini–Hochberg). A difference is called ("A better" / "B better") only when its corrected p is below alpha AND
the seeds-and-texts interval excludes 0 on the same side; a pair whose difference changes sign between the data set's
metrics is reported as a sign flip and never called; a comparison outside the family is exploratory and never called.
One seed gives no p-value, so it is never called either.

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
SIGN_FLIP = "sign flips between metrics"  # never called: the conclusion would depend on the metric
EXPLORATORY = "exploratory (not in the family)"  # chosen after seeing the means: reported, never called
A_BETTER, B_BETTER = "A better", "B better"
CORRECTIONS = ("holm", "bh", "none")
DEFAULT_RESAMPLES = 10_000
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
    """Weighted Mann-Whitney AUC (ties count one half), all resamples at once: per positive text, the weight of the
    negatives scored below it plus half those tied with it."""
    y = np.asarray(labels) == 1
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    if len(pos) == 0 or len(neg) == 0:
        return np.full(w.shape[0], np.nan)
    neg = neg[np.argsort(scores[neg], kind="stable")]
    neg_scores = scores[neg]
    below = np.searchsorted(neg_scores, scores[pos], side="left")  # negatives strictly below each positive
    upto = np.searchsorted(neg_scores, scores[pos], side="right")  # ... and those tied with it
    # The negatives' cumulative weight is needed only where a positive sits: sum the negatives between those places
    # (reduceat, a vectorised pass; cumsum over all texts is not vectorised), then accumulate the few sums. Texts
    # along axis 0 so every operation runs across the resamples at once.
    edges = np.unique(np.r_[0, below, upto, len(neg)])
    between = np.add.reduceat(w.T[neg], edges[:-1], axis=0)
    cum = np.concatenate([np.zeros((1, w.shape[0]), dtype=w.dtype), np.cumsum(between, axis=0)])
    w_pos = w.T[pos]
    num = (w_pos * (0.5 * (cum[np.searchsorted(edges, below)] + cum[np.searchsorted(edges, upto)]))).sum(axis=0)
    denom = w_pos.sum(axis=0) * cum[-1]
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
    if metric == "accuracy":
        return (w @ (labels == preds)) / w.sum(axis=1)
    raise ValueError(f"metric {metric!r} is not defined here for {k} classes (use {metric_names(k)})")


def score(metric: str, frame: pd.DataFrame) -> float:
    return float(weighted_metric(metric, np.ones((1, len(frame))), frame)[0])


# --- multiple comparisons ----------------------------------------------------------------------------------------


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error, valid under any dependence between the tests): the
    i-th smallest of m is multiplied by m − i + 1, then made non-decreasing in that order and capped at 1."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(np.minimum(1.0, p[order] * (m - np.arange(m))))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return adjusted


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values; false discovery rate, valid for independent or positively
    dependent tests): the i-th smallest of m times m / i, made non-increasing from the largest down, capped at 1."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    stepped = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return adjusted


def adjust_p(p_values: np.ndarray, correction: str = "holm") -> np.ndarray:
    """Corrected p-values of one family. A test without a p-value (NaN: one seed, or identical models) still counts
    in the family's size, as a p of 1, and keeps NaN: the family is fixed before the numbers, not by them."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction {correction!r}: choose from {', '.join(CORRECTIONS)}")
    p = np.asarray(p_values, dtype=float)
    if correction == "none" or len(p) == 0:
        return p.copy()
    adjusted = (holm if correction == "holm" else benjamini_hochberg)(np.where(np.isnan(p), 1.0, p))
    return np.where(np.isnan(p), np.nan, adjusted)


# --- resampling ----------------------------------------------------------------------------------------------------


def text_resample_weights(n_texts: int, n_resamples: int, random_state: int = 0) -> np.ndarray:
    """(n_resamples, n_texts) bootstrap counts: row b says how often each test text is drawn in resample b (uint16,
    so a bank of 10,000 resamples of 5,000 texts holds 100 MB)."""
    rng = np.random.default_rng(random_state)
    weights = np.empty((n_resamples, n_texts), dtype=np.uint16)
    batch = max(1, 2_000_000 // max(n_texts, 1))
    for start in range(0, n_resamples, batch):
        rows = min(batch, n_resamples - start)
        drawn = rng.integers(0, n_texts, size=(rows, n_texts)) + n_texts * np.arange(rows)[:, None]
        weights[start : start + rows] = np.bincount(drawn.ravel(), minlength=rows * n_texts).reshape(rows, n_texts)
    return weights


def resampled_scores(metric: str, frame: pd.DataFrame, weights: np.ndarray, batch: int = 500) -> np.ndarray:
    """`metric` of one model under every row of a text-weight bank, in batches (bounded memory)."""
    return np.concatenate(
        [
            # float32 holds the counts exactly (sums to ~1e-7); Fortran order makes the rows of w.T (texts) contiguous
            weighted_metric(metric, np.asfortranarray(weights[i : i + batch], dtype=np.float32), frame)
            for i in range(0, len(weights), batch)
        ]
    )


def seeds_and_texts_bootstrap(
    diffs: np.ndarray, random_state: int = 0, shared_texts: bool = True
) -> np.ndarray:
    """Resampled mean differences covering seed and text noise together.

    `diffs` is (n_seeds, n_resamples): per seed, the difference under each text resample of the bank, resample b of
    every seed made with the same text weights. Resample b draws n_seeds seeds with replacement; with `shared_texts`
    (the study's design: every seed scored on one test set) all drawn seeds take text resample b, otherwise (nested:
    an independent text resample per drawn seed) slot j takes resample (b + j·n_resamples // n_seeds) mod n_resamples,
    a different one for every slot. With one seed both are exactly the text bootstrap.
    """
    n_seeds, n_resamples = diffs.shape
    picked = np.random.default_rng([random_state, n_seeds]).integers(0, n_seeds, size=(n_resamples, n_seeds))
    if shared_texts:
        bank = np.repeat(np.arange(n_resamples)[:, None], n_seeds, axis=1)
    else:
        bank = (np.arange(n_resamples)[:, None] + np.arange(n_seeds) * max(1, n_resamples // n_seeds)) % n_resamples
    return diffs[picked, bank].mean(axis=1)


def percentile_interval(draws: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap draws; NaN draws (a resample without a positive text for ROC-AUC) left out."""
    draws = np.asarray(draws, dtype=float)
    if np.isnan(draws).all():
        return math.nan, math.nan
    low, high = np.nanquantile(draws, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return float(low), float(high)


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


class ResampleBank:
    """One bank of text resamples for a whole paired table, and each model's scores under it, computed once."""

    def __init__(self, n_texts: int, n_resamples: int = DEFAULT_RESAMPLES, random_state: int = 0) -> None:
        self.weights = text_resample_weights(n_texts, n_resamples, random_state)
        self.random_state = random_state
        self._scores: dict[tuple[int, str], np.ndarray] = {}

    def scores(self, metric: str, frame: pd.DataFrame) -> np.ndarray:
        key = (id(frame), metric)  # the frames outlive the bank: one paired table
        if key not in self._scores:
            self._scores[key] = resampled_scores(metric, frame, self.weights)
        return self._scores[key]


def paired_difference(
    a: dict[int, pd.DataFrame],
    b: dict[int, pd.DataFrame],
    metric: str,
    n_resamples: int = DEFAULT_RESAMPLES,
    random_state: int = 0,
    alpha: float = 0.05,
    bank: ResampleBank | None = None,
) -> dict[str, float | int | str]:
    """Mean per-seed difference metric(a) − metric(b) over the seeds both have, with its three 95% intervals.

    `a` and `b` map seed → predictions frame (label, pred, prob_*), every frame on the same texts. `verdict` here
    treats the pair as a family of one; `paired_table` corrects over its family.
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
    bank = bank or ResampleBank(len(frames_a[0]), n_resamples, random_state)
    resampled = np.stack([bank.scores(metric, fa) - bank.scores(metric, fb) for fa, fb in zip(frames_a, frames_b)])
    boot_low, boot_high = percentile_interval(resampled.mean(axis=0))
    hier_low, hier_high = percentile_interval(seeds_and_texts_bootstrap(resampled, bank.random_state))
    return {
        "metric": metric,
        "n_seeds": len(seeds),
        "seeds": " ".join(map(str, seeds)),
        "mean_a": float(scores_a.mean()),
        "mean_b": float(scores_b.mean()),
        "diff": float(diffs.mean()),
        "hier_low": hier_low,
        "hier_high": hier_high,
        "ci_low": low,
        "ci_high": high,
        "p_value": p_value,
        "boot_low": boot_low,
        "boot_high": boot_high,
        "verdict": call(p_value, hier_low, hier_high, alpha),
    }


def call(p_adjusted: float, low: float, high: float, alpha: float = 0.05) -> str:
    """'A better' / 'B better' only when the corrected p is below alpha and the seeds-and-texts interval excludes 0
    on one side; otherwise not distinguishable."""
    if any(math.isnan(x) for x in (p_adjusted, low, high)) or p_adjusted >= alpha:
        return NOT_DISTINGUISHABLE
    if low > 0:
        return A_BETTER
    if high < 0:
        return B_BETTER
    return NOT_DISTINGUISHABLE


def sign_flips(table: pd.DataFrame) -> pd.Series:
    """Rows of a pair whose difference is positive on one metric and negative on another (0 is neither)."""
    signs = np.sign(table["diff"].fillna(0.0))
    per_pair = signs.groupby([table.a, table.b]).transform(lambda s: bool((s > 0).any() and (s < 0).any()))
    return per_pair.astype(bool)


# --- which pairs the study asks about ----------------------------------------------------------------------------


# The static layer choices `auto` is declared against (issue 24: auto is better than, or not distinguishable from,
# the best of them), every one a priori, so the best static choice is not a pair picked from the means.
STATIC_LAYER_CHOICES = ("odd", "even", "bottom", "top", "spread")


def study_pairs(methods: list[str], controls: dict[str, str], reference: str = "teacher") -> list[tuple[str, str]]:
    """(A, B) pairs present in `methods`: odd vs even; each student vs its CE-only control; LoRA vs the even
    student (`lora_steps`: the equal-steps arm); `auto` vs every static layer choice; then every method vs the
    teacher. docs/results/ANALYSIS_PLAN.md §3 declares this family."""
    wanted = [("odd", "even"), *controls.items(), ("lora", "even"), ("lora_steps", "even"), ("lora_even", "even")]
    wanted += [("auto", static) for static in STATIC_LAYER_CHOICES]
    wanted += [(m, reference) for m in methods if m != reference]
    present = set(methods)
    return [p for p in dict.fromkeys(wanted) if p[0] in present and p[1] in present]


def paired_table(
    predictions: dict[str, dict[int, pd.DataFrame]],
    pairs: list[tuple[str, str]],
    metrics: list[str],
    n_resamples: int = DEFAULT_RESAMPLES,
    progress: Callable[[str], None] | None = None,
    family: list[tuple[str, str]] | None = None,
    correction: str = "holm",
    alpha: float = 0.05,
    random_state: int = 0,
) -> pd.DataFrame:
    """One row per (pair, metric): `predictions` maps method → seed → predictions frame.

    `family`: the pairs declared before the numbers (default: all of `pairs`); their rows on every metric form one
    family whose p-values are corrected together (`correction`: holm, bh or none) into `p_adjusted`. Other pairs are
    computed and reported, with verdict EXPLORATORY. A pair whose difference changes sign between the metrics gets
    verdict SIGN_FLIP on every row.
    """
    if not pairs:
        raise ValueError("no pair to compare")
    some = predictions[pairs[0][0]]
    bank = ResampleBank(len(next(iter(some.values()))), n_resamples, random_state)
    rows = []
    for a, b in pairs:
        for metric in metrics:
            if progress:
                progress(f"{a} vs {b} ({metric})")
            rows.append({"a": a, "b": b, **paired_difference(predictions[a], predictions[b], metric, bank=bank)})
    columns = ["a", "b", "metric", "n_seeds", "seeds", "mean_a", "mean_b", "diff", "hier_low", "hier_high"]
    columns += ["ci_low", "ci_high", "p_value", "p_adjusted", "correction", "boot_low", "boot_high", "family"]
    table = pd.DataFrame(rows)
    declared = set(pairs if family is None else family)
    table["family"] = [(a, b) in declared for a, b in zip(table.a, table.b)]
    table["p_adjusted"] = math.nan
    table.loc[table.family, "p_adjusted"] = adjust_p(table.p_value[table.family].to_numpy(), correction)
    table["correction"] = correction
    table["sign_flip"] = sign_flips(table)
    table["verdict"] = [
        EXPLORATORY if not declared_row else SIGN_FLIP if flip else call(p, low, high, alpha)
        for declared_row, flip, p, low, high in zip(
            table.family, table.sign_flip, table.p_adjusted, table.hier_low, table.hier_high
        )
    ]
    return table[[*columns, "sign_flip", "verdict"]]
