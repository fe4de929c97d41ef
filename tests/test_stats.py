"""Paired statistics: metrics, per-seed differences, t interval and bootstrap, checked against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import f1_score, roc_auc_score

from distillkit.stats import (
    NOT_DISTINGUISHABLE,
    call,
    metric_names,
    paired_difference,
    paired_table,
    score,
    study_pairs,
)
from distillkit.tasks import MULTI_LABEL

LABELS = [1, 1, 0, 0]


def frame(preds: list[int], labels: list[int] = LABELS, probs: list[float] | None = None, k: int = 2) -> pd.DataFrame:
    data = {"label": labels, "pred": preds}
    if k == 2:
        p1 = probs if probs is not None else [float(p) for p in preds]
        data |= {"prob_0": [1 - p for p in p1], "prob_1": p1}
    else:
        data |= {f"prob_{i}": [float(p == i) for p in preds] for i in range(k)}
    return pd.DataFrame(data)


# The tiny table, F1 of the positive class by hand (tp, fp, fn):
# A: seed0 [1,1,0,0] → 1; seed1 [1,0,0,0] → 2/3; seed2 [1,1,1,0] → 4/5
# B: seed0 [1,0,0,0] → 2/3; seed1 [1,0,1,0] → 1/2; seed2 [1,1,1,1] → 2/3
A = {0: frame([1, 1, 0, 0]), 1: frame([1, 0, 0, 0]), 2: frame([1, 1, 1, 0])}
B = {0: frame([1, 0, 0, 0]), 1: frame([1, 0, 1, 0]), 2: frame([1, 1, 1, 1])}


def test_metrics_by_hand_and_against_sklearn():
    assert [score("f1", A[s]) for s in (0, 1, 2)] == pytest.approx([1, 2 / 3, 4 / 5])
    # ROC-AUC: positives 0.9, 0.4 vs negatives 0.4, 0.1: 1 + 1 + ½ (the tie) + 1 out of 4 pairs.
    assert score("roc_auc", frame([1, 0, 0, 0], probs=[0.9, 0.4, 0.4, 0.1])) == pytest.approx(0.875)
    # Macro-F1 over 3 classes: class 0 → 1, class 1 → 0, class 2 → ½.
    assert score("macro_f1", frame([0, 2, 2, 1], labels=[0, 1, 2, 2], k=3)) == pytest.approx(0.5)
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 2, 300), np.round(rng.random(300), 1)  # rounding makes many ties
    big = frame(list((p > 0.5).astype(int)), labels=list(y), probs=list(p))
    assert score("f1", big) == pytest.approx(f1_score(y, p > 0.5))
    assert score("roc_auc", big) == pytest.approx(roc_auc_score(y, p))
    assert metric_names(2) == ["f1", "roc_auc"] and metric_names(28) == ["macro_f1"]


def test_paired_difference_matches_the_hand_computation():
    got = paired_difference(A, B, "f1", n_resamples=200)
    diffs = np.array([1 - 2 / 3, 2 / 3 - 1 / 2, 4 / 5 - 2 / 3])  # 1/3, 1/6, 2/15
    mean = 19 / 90
    sd = math.sqrt(93) / 90  # deviations 11/90, -4/90, -7/90 → sum of squares 186/8100, / (n - 1)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, df=2)
    assert got["n_seeds"] == 3 and got["seeds"] == "0 1 2"
    assert got["diff"] == pytest.approx(mean) == pytest.approx(diffs.mean())
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((mean - half, mean + half))
    t_stat = mean / (sd / math.sqrt(3))
    assert got["p_value"] == pytest.approx(2 * scipy_stats.t.sf(t_stat, 2))
    # The interval across three seeds contains 0: a lead of 0.21 F1 from three seeds is not a win.
    assert got["ci_low"] < 0 < got["ci_high"]
    assert got["verdict"] == NOT_DISTINGUISHABLE
    # The bootstrap interval is over resampled texts: it contains the observed difference.
    assert got["boot_low"] <= mean <= got["boot_high"]


def test_a_clear_difference_is_called_and_the_order_matters():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = {s: frame(list(y), labels=list(y)) for s in range(3)}  # perfect
    noisy = {}
    for s in range(3):
        flip = rng.random(400) < 0.3
        noisy[s] = frame(list(np.where(flip, 1 - y, y)), labels=list(y))
    ab = paired_difference(good, noisy, "f1", n_resamples=300)
    ba = paired_difference(noisy, good, "f1", n_resamples=300)
    assert ab["verdict"] == "A better" and ba["verdict"] == "B better"
    assert ab["diff"] == pytest.approx(-ba["diff"])
    assert ab["ci_low"] > 0 and ab["boot_low"] > 0


def test_one_seed_or_an_interval_through_zero_is_not_distinguishable():
    one = paired_difference({0: A[0]}, {0: B[0]}, "f1", n_resamples=100)
    assert one["n_seeds"] == 1 and math.isnan(one["ci_low"]) and one["verdict"] == NOT_DISTINGUISHABLE
    assert call(0.01, 0.02, -0.001, 0.03) == NOT_DISTINGUISHABLE  # bootstrap interval contains 0
    assert call(-0.01, 0.02, 0.001, 0.03) == NOT_DISTINGUISHABLE  # seed interval contains 0
    assert call(0.01, 0.02, 0.001, 0.03) == "A better" and call(-0.02, -0.01, -0.03, -0.001) == "B better"


def test_pairs_must_share_seeds_and_texts():
    with pytest.raises(ValueError, match="share no seed"):
        paired_difference({0: A[0]}, {1: B[1]}, "f1")
    with pytest.raises(ValueError, match="same test texts"):
        paired_difference({0: A[0]}, {0: frame([1, 0, 0, 0], labels=[0, 1, 0, 0])}, "f1")


def test_study_pairs_and_table():
    methods = ["teacher", "odd", "even", "odd_ce", "lora_even"]
    pairs = study_pairs(methods, {"odd": "odd_ce", "even": "even_ce"})
    assert pairs[:3] == [("odd", "even"), ("odd", "odd_ce"), ("lora_even", "even")]
    assert pairs[3:] == [(m, "teacher") for m in methods[1:]]
    table = paired_table({"odd": A, "even": B}, [("odd", "even")], ["f1", "roc_auc"], n_resamples=50)
    assert list(table.metric) == ["f1", "roc_auc"] and set(table.a) == {"odd"}
    assert table["diff"][0] == pytest.approx(19 / 90)


def multi_label_frame(gold: np.ndarray, probs: np.ndarray, cut: float = 0.5) -> pd.DataFrame:
    """As run_eval.py writes a multi-label model's predictions: label-id lists as text, one prob_<j> per label."""
    pred = (probs >= cut).astype(int)

    def ids(row):
        return ",".join(str(j) for j in np.flatnonzero(row))

    data = {"label": [ids(r) for r in gold], "pred": [ids(r) for r in pred], "problem_type": MULTI_LABEL}
    return pd.DataFrame(data | {f"prob_{j}": probs[:, j] for j in range(probs.shape[1])})


def test_multi_label_metrics_against_sklearn_and_paired_through_a_csv(tmp_path):
    rng = np.random.default_rng(3)
    gold = (rng.random((200, 5)) < 0.3).astype(int)
    gold[0] = 0  # a text without any label
    seeds = {}
    for seed, noise in enumerate((0.6, 0.7, 0.8)):
        probs = np.clip(gold * 0.5 + rng.random((200, 5)) * noise, 0, 1)
        path = tmp_path / f"seed{seed}.csv"
        multi_label_frame(gold, probs).to_csv(path, index=False)
        seeds[seed] = pd.read_csv(path)  # empty label lists come back as NaN
        pred = (probs >= 0.5).astype(int)
        assert score("macro_f1", seeds[seed]) == pytest.approx(f1_score(gold, pred, average="macro", zero_division=0))
        assert score("f1", seeds[seed]) == pytest.approx(f1_score(gold, pred, average="micro"))
        assert score("roc_auc", seeds[seed]) == pytest.approx(roc_auc_score(gold, probs, average="macro"))
    assert metric_names(28, multi_label=True) == ["macro_f1", "roc_auc"]
    same = paired_difference(seeds, seeds, "macro_f1", n_resamples=50)
    assert same["diff"] == 0 and same["verdict"] == NOT_DISTINGUISHABLE
    shifted = {s: seeds[(s + 1) % 3] for s in seeds}
    got = paired_difference(seeds, shifted, "roc_auc", n_resamples=50)
    expected = np.mean([score("roc_auc", seeds[s]) - score("roc_auc", shifted[s]) for s in seeds])
    assert got["diff"] == pytest.approx(expected) and got["boot_low"] <= got["boot_high"]
