"""Paired statistics: metrics, per-seed differences, t interval and bootstrap, checked against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from scipy import stats as scipy_stats
from sklearn.metrics import f1_score, roc_auc_score

from distillkit.stats import (
    EXPLORATORY,
    NOT_DISTINGUISHABLE,
    SIGN_FLIP,
    adjust_p,
    benjamini_hochberg,
    call,
    holm,
    metric_names,
    paired_difference,
    paired_table,
    percentile_interval,
    resampled_scores,
    score,
    seeds_and_texts_bootstrap,
    study_pairs,
    text_resample_weights,
    weighted_metric,
)
from distillkit.methods import CONTROLS
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
    assert got["hier_low"] <= mean <= got["hier_high"]


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
    assert ab["ci_low"] > 0 and ab["boot_low"] > 0 and ab["hier_low"] > 0


def test_one_seed_or_an_interval_through_zero_is_not_distinguishable():
    one = paired_difference({0: A[0]}, {0: B[0]}, "f1", n_resamples=100)
    assert one["n_seeds"] == 1 and math.isnan(one["ci_low"]) and one["verdict"] == NOT_DISTINGUISHABLE
    # With one seed there is no seed to resample: the seeds-and-texts interval is the text bootstrap itself.
    assert (one["hier_low"], one["hier_high"]) == (one["boot_low"], one["boot_high"])
    assert call(0.01, -0.001, 0.03) == NOT_DISTINGUISHABLE  # the interval contains 0
    assert call(0.06, 0.001, 0.03) == NOT_DISTINGUISHABLE  # corrected p above alpha
    assert call(math.nan, 0.001, 0.03) == NOT_DISTINGUISHABLE  # no p-value (one seed)
    assert call(0.01, 0.001, 0.03) == "A better" and call(0.049, -0.03, -0.001) == "B better"
    assert call(0.02, 0.001, 0.03, alpha=0.01) == NOT_DISTINGUISHABLE


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


def test_the_equal_steps_arm_and_auto_against_every_static_choice_are_declared_only_when_present():
    controls = {"odd": "odd_ce", "even": "even_ce"}
    # Neither lora_steps nor auto: no new pair.
    assert study_pairs(["teacher", "odd", "even", "lora"], controls) == [
        ("odd", "even"), ("lora", "even"), ("odd", "teacher"), ("even", "teacher"), ("lora", "teacher"),
    ]  # fmt: skip
    pairs = study_pairs(["teacher", "even", "lora_steps", "auto", "top"], controls)
    assert ("lora_steps", "even") in pairs and ("lora_steps", "teacher") in pairs
    # auto against each static layer choice that ran (not odd, bottom, spread: absent), never the reverse.
    assert [p for p in pairs if "auto" in p] == [("auto", "even"), ("auto", "top"), ("auto", "teacher")]
    assert study_pairs(["teacher", "lora_steps", "auto"], controls) == [("lora_steps", "teacher"), ("auto", "teacher")]


def test_the_family_with_every_study_arm_is_the_one_the_analysis_plan_declares():
    """The plan is read beside the code (ANALYSIS_PLAN.md: where they disagree, the run waits): its counts come from
    study_pairs over the study's default methods."""
    from study.run_study import STUDY_METHODS

    methods = list(STUDY_METHODS)
    assert len(methods) == 15 and {"lora_steps", "auto"} <= set(methods)
    pairs = study_pairs(methods, CONTROLS)
    assert len(pairs) == len(set(pairs)) == 28
    statics = ("odd", "even", "bottom", "top", "spread")
    assert {("auto", x) for x in statics} | {("lora_steps", "even")} <= set(pairs)
    assert sum(b == "teacher" for _, b in pairs) == 14
    tests = 2 * len(pairs)  # two metrics per data set (stats.metric_names)
    plan = (REPO / "docs" / "results" / "ANALYSIS_PLAN.md").read_text()
    assert f"**{len(pairs)} pairs × 2 metrics = {tests} tests per data set**" in plan
    assert f"0.05 / {tests} ≈ {0.05 / tests:.5f}" in plan
    for seeds in (5, 10):
        assert f"|t| > {scipy_stats.t.ppf(1 - 0.05 / tests / 2, seeds - 1):.1f} with {seeds} seeds" in plan
    arms = len(methods) - 1  # the bias family: every arm but the teacher, three measures (§4a)
    assert f"**{arms} arms × 3 measures = {3 * arms} tests per data set**" in plan


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


# --- multiple comparisons ------------------------------------------------------------------------------------------


def test_holm_and_benjamini_hochberg_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # Holm: sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → kept non-decreasing: 0.06.
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: sorted 0.005·4/1 = 0.02, 0.01·4/2 = 0.02, 0.03·4/3 = 0.04, 0.04·4/4 = 0.04 (already non-increasing from the top).
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # Capped at 1; a large p early in the order does not lower a later one.
    assert holm(np.array([0.5, 0.2, 0.9])) == pytest.approx([1.0, 0.6, 1.0])
    assert benjamini_hochberg(np.array([0.5, 0.2, 0.9])) == pytest.approx([0.75, 0.6, 0.9])
    # A test without a p-value still counts in its family (as p = 1) and stays without one.
    got = adjust_p(np.array([0.01, math.nan, 0.02]), "holm")
    assert got[0] == pytest.approx(0.03) and math.isnan(got[1]) and got[2] == pytest.approx(0.04)
    assert adjust_p(np.array([0.01, 0.02]), "none") == pytest.approx([0.01, 0.02])
    with pytest.raises(ValueError, match="choose from holm, bh, none"):
        adjust_p(p, "bonferoni")


def test_benjamini_hochberg_matches_scipy_and_holm_is_never_below_it():
    rng = np.random.default_rng(11)
    for m in (1, 2, 7, 30, 200):
        p = np.round(rng.random(m) ** 3, 3)  # small p-values and ties
        bh = benjamini_hochberg(p)
        assert bh == pytest.approx(scipy_stats.false_discovery_control(p, method="bh"), abs=1e-12)
        assert np.all(holm(p) >= bh - 1e-12) and np.all(holm(p) >= p)


def test_the_table_corrects_over_its_declared_family():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)

    def model(error: float, seed: int) -> pd.DataFrame:
        flip = np.random.default_rng(seed).random(300) < error
        preds = np.where(flip, 1 - y, y)
        return frame(list(preds), labels=list(y), probs=list(np.where(flip, 0.4, 0.6) * preds + 0.2 * (1 - preds)))

    predictions = {name: {s: model(err, 100 * i + s) for s in range(4)} for i, (name, err) in enumerate(
        (("teacher", 0.05), ("odd", 0.1), ("even", 0.12), ("spread", 0.3))
    )}
    pairs = [("odd", "even"), ("odd", "teacher"), ("even", "teacher"), ("odd", "spread")]
    family = pairs[:3]
    table = paired_table(predictions, pairs, ["f1", "roc_auc"], n_resamples=300, family=family)
    in_family = table[table.family]
    assert len(in_family) == 6 and in_family.p_adjusted.to_numpy() == pytest.approx(holm(in_family.p_value))
    outside = table[~table.family]
    assert outside.p_adjusted.isna().all() and set(outside.verdict) == {EXPLORATORY}  # chosen after the means
    bh = paired_table(predictions, pairs, ["f1"], n_resamples=300, family=family, correction="bh")
    expected = scipy_stats.false_discovery_control(bh.p_value[bh.family], method="bh")
    assert bh.p_adjusted[bh.family].to_numpy() == pytest.approx(expected) and set(bh.correction) == {"bh"}
    # Every call in the table follows the rule: corrected p below alpha and the interval away from 0.
    for row in in_family.itertuples():
        assert row.verdict == (SIGN_FLIP if row.sign_flip else call(row.p_adjusted, row.hier_low, row.hier_high))
    assert "B better" in set(in_family.verdict)  # the students make 2-2.4x the teacher's errors on every seed


def test_a_difference_whose_sign_flips_between_the_metrics_is_never_called():
    """A's decisions are all right but its probabilities are noise; B's decisions are 30% wrong but its probabilities
    rank every text: A is far ahead on F1 and far behind on ROC-AUC, each clear on its own."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    a, b = {}, {}
    for s in range(3):
        a[s] = frame(list(y), labels=list(y), probs=list(rng.random(400)))
        flip = rng.random(400) < 0.3
        b[s] = frame(list(np.where(flip, 1 - y, y)), labels=list(y), probs=list(0.5 * y + 0.4 * rng.random(400)))
    c = {s: frame(list(y), labels=list(y), probs=list(0.5 * y + 0.4 * rng.random(400))) for s in range(3)}
    table = paired_table({"a": a, "b": b, "c": c}, [("a", "b"), ("c", "b")], ["f1", "roc_auc"], n_resamples=300)
    flipped = table[table.a == "a"]
    assert (flipped["diff"] > 0).tolist() == [True, False]  # + F1, − ROC-AUC
    assert flipped.sign_flip.all() and set(flipped.verdict) == {SIGN_FLIP}
    # On its own, each metric's difference would be called.
    assert [call(p, lo, hi) for p, lo, hi in zip(flipped.p_adjusted, flipped.hier_low, flipped.hier_high)] == [
        "A better",
        "B better",
    ]
    same_sign = table[table.a == "c"]  # c: right decisions and good ranking: ahead on F1, level on ROC-AUC
    assert not same_sign.sign_flip.any() and same_sign.verdict.iloc[0] == "A better"


# --- resampling ------------------------------------------------------------------------------------------------------


def test_a_weighted_score_is_the_score_of_the_resampled_texts():
    """Row b of the weight bank counts how often each text is drawn: scoring with those weights must equal scoring
    the texts repeated that often (sklearn), ROC-AUC ties included."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 60)
    p = np.round(rng.random(60), 1)
    f = frame(list((p > 0.5).astype(int)), labels=list(y), probs=list(p))
    weights = text_resample_weights(60, 5, random_state=3)
    assert weights.shape == (5, 60) and (weights.sum(axis=1) == 60).all()
    f1s, aucs = resampled_scores("f1", f, weights), resampled_scores("roc_auc", f, weights)
    for b in range(5):
        idx = np.repeat(np.arange(60), weights[b])
        assert f1s[b] == pytest.approx(f1_score(y[idx], p[idx] > 0.5), abs=1e-6)
        assert aucs[b] == pytest.approx(roc_auc_score(y[idx], p[idx]), abs=1e-6)
    assert weighted_metric("accuracy", np.ones((1, 60)), f)[0] == pytest.approx(np.mean(y == (p > 0.5)))


def _simulated_pair(rng, n_seeds: int, n_texts: int, seed_sd: float, same_hard_texts: bool):
    """Two models' predictions with a known accuracy lead. Each text is easy (right with probability `sure`) or hard
    for each model, fixed for the test set (every seed sees the same texts); a seed shifts A's chances by a normal
    amount of sd `seed_sd`. Truth: (2·sure − 1)·(0.78 − 0.75)."""
    sure = 0.85 if same_hard_texts else 0.95
    y = rng.integers(0, 2, n_texts)
    easy_a = rng.random(n_texts) < 0.78
    # same_hard_texts: B finds hard what A does, and a few more texts (the text noise of the difference is small).
    easy_b = easy_a & (rng.random(n_texts) >= 0.03 / 0.78) if same_hard_texts else rng.random(n_texts) < 0.75
    p_a, p_b = np.where(easy_a, sure, 1 - sure), np.where(easy_b, sure, 1 - sure)
    frames_a, frames_b = [], []
    for _ in range(n_seeds):
        shift = seed_sd * rng.standard_normal()
        for frames, p in ((frames_a, p_a + shift), (frames_b, p_b)):
            right = rng.random(n_texts) < p
            frames.append(pd.DataFrame({"label": y, "pred": np.where(right, y, 1 - y)}))
    return frames_a, frames_b, (2 * sure - 1) * 0.03


@pytest.mark.parametrize("seed_sd, same_hard_texts", [(0.01, False), (0.04, True)], ids=["texts", "seeds"])
def test_the_seeds_and_texts_interval_covers_the_truth_at_about_the_nominal_rate(seed_sd, same_hard_texts):
    """120 simulated studies (10 seeds, 300 texts) per noise mix. The seeds-and-texts bootstrap covers the true lead
    about 95% of the time whichever noise dominates; resampling texts independently per drawn seed (nested) misses
    when the test set's own noise dominates, and the text bootstrap alone misses when the seeds' does."""
    rng = np.random.default_rng(7)
    hits = {"seeds_and_texts": 0, "nested": 0, "texts": 0}
    sims = 120
    for i in range(sims):
        frames_a, frames_b, truth = _simulated_pair(rng, 10, 300, seed_sd, same_hard_texts)
        w = text_resample_weights(300, 800, random_state=i)
        pairs = zip(frames_a, frames_b)
        d = np.stack([resampled_scores("accuracy", a, w) - resampled_scores("accuracy", b, w) for a, b in pairs])
        for name, draws in (
            ("seeds_and_texts", seeds_and_texts_bootstrap(d, i)),
            ("nested", seeds_and_texts_bootstrap(d, i, shared_texts=False)),
            ("texts", d.mean(axis=0)),
        ):
            low, high = percentile_interval(draws)
            hits[name] += low <= truth <= high
    coverage = {k: v / sims for k, v in hits.items()}
    assert 0.88 <= coverage["seeds_and_texts"] <= 0.99, coverage
    if same_hard_texts:
        assert coverage["texts"] < 0.8, coverage
    else:
        assert coverage["nested"] < 0.7, coverage


def test_the_seeds_and_texts_bootstrap_with_one_seed_is_the_text_bootstrap():
    d = np.random.default_rng(0).normal(size=(1, 1000))
    assert np.array_equal(seeds_and_texts_bootstrap(d, 3), d[0])
    assert np.array_equal(seeds_and_texts_bootstrap(d, 3, shared_texts=False), d[0])
    # With several seeds every draw is a mean of n_seeds of the per-seed values of its own text resample.
    d = np.arange(12, dtype=float).reshape(3, 4)
    draws = seeds_and_texts_bootstrap(d, 0)
    for b in range(4):
        assert any(
            draws[b] == pytest.approx(np.mean([d[i, b], d[j, b], d[k, b]]))
            for i in range(3)
            for j in range(3)
            for k in range(3)
        )
