"""distillkit/bias.py: the identity-bias measures against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from distillkit import bias

# Two identities and one background-only text (empty identity). Scores are chosen so that A's non-toxic texts rank
# above every toxic text outside A, and B's toxic texts below every non-toxic text outside B.
IDENTITY = ["a", "a", "a", "a", "b", "b", "b", "b", ""]
LABEL = np.array([0, 0, 1, 1, 0, 0, 1, 1, 1])
SCORE = np.array([0.9, 0.8, 0.95, 0.7, 0.1, 0.2, 0.6, 0.5, 0.3])
PRED = SCORE >= 0.5


def member(identity: str) -> np.ndarray:
    return np.array([i == identity for i in IDENTITY])


def test_non_toxic_mentions_ranked_above_every_toxic_text_give_bpsn_auc_zero():
    assert bias.bpsn_auc(SCORE, LABEL, member("a")) == 0.0
    # A's toxic texts (0.95, 0.7) against the non-toxic texts outside A (B's 0.1, 0.2): all above.
    assert bias.bnsp_auc(SCORE, LABEL, member("a")) == 1.0
    # Inside A: 0.95 beats both non-toxic texts, 0.7 neither: 2 of 4 pairs.
    assert bias.subgroup_auc(SCORE, LABEL, member("a")) == 0.5


def test_background_holds_the_other_identities_and_the_texts_without_one():
    # B's non-toxic (0.1, 0.2) against A's toxic and the background toxic 0.3: all above, so 1.
    assert bias.bpsn_auc(SCORE, LABEL, member("b")) == 1.0
    # B's toxic (0.6, 0.5) against A's non-toxic (0.9, 0.8): all below.
    assert bias.bnsp_auc(SCORE, LABEL, member("b")) == 0.0
    assert bias.subgroup_auc(SCORE, LABEL, member("b")) == 1.0


def test_identity_table_and_summary_by_hand():
    table = bias.identity_table(SCORE, LABEL, PRED, IDENTITY)
    assert table.identity.tolist() == ["a", "b"] and table.n.tolist() == [4, 4]  # "" is background only
    assert table.fpr.tolist() == [1.0, 0.0] and table.fnr.tolist() == [0.0, 0.0]
    summary = bias.bias_summary(table, SCORE, LABEL, PRED)
    # Overall: 5 toxic against 4 non-toxic; 0.95 beats 4, 0.7, 0.6, 0.5, 0.3 beat 2 each: 12 / 20.
    assert summary["overall_auc"] == pytest.approx(12 / 20, abs=1e-12)
    # Rates over every text: 2 of 4 non-toxic flagged, 1 of 5 toxic (0.3) missed.
    assert summary["fpr"] == 0.5 and summary["fnr"] == pytest.approx(0.2, abs=1e-12)
    assert summary["fped"] == pytest.approx(abs(1 - 0.5) + abs(0 - 0.5), abs=1e-12)
    assert summary["fned"] == pytest.approx(2 * 0.2, abs=1e-12)
    subgroup_mean = ((0.5**-5 + 1**-5) / 2) ** (-1 / 5)
    assert summary["power_mean_subgroup_auc"] == pytest.approx(subgroup_mean, rel=1e-12)
    assert summary["power_mean_bpsn_auc"] == 0.0 and summary["power_mean_bnsp_auc"] == 0.0  # one AUC of 0 each
    assert summary["final_metric"] == pytest.approx(0.25 * 0.6 + 0.75 * subgroup_mean / 3, rel=1e-12)
    assert summary["worst_bpsn"] == "a; b" and summary["identities"] == 2 and summary["n"] == 9


def test_power_mean_weights_the_worst_value_and_skips_nan():
    assert bias.power_mean([0.8, 0.8, 0.8]) == pytest.approx(0.8, rel=1e-12)
    assert bias.power_mean([1.0, 0.5, math.nan]) == pytest.approx(16.5**-0.2, rel=1e-12)
    assert bias.power_mean([1.0, 0.5]) < (1.0 + 0.5) / 2  # p = -5 pulls towards the worst
    assert math.isnan(bias.power_mean([math.nan]))
    assert bias.power_mean([0.9, 0.0]) == 0.0
    assert bias.final_metric(0.9, [0.8, 0.7, 0.6]) == pytest.approx(0.25 * 0.9 + 0.75 * 0.7, rel=1e-12)


def test_equality_difference_and_rates():
    assert bias.equality_difference([0.1, 0.4, math.nan], 0.2) == pytest.approx(0.3, abs=1e-12)
    fpr, fnr = bias.error_rates(np.array([1, 1]), np.array([1, 0]))
    assert math.isnan(fpr) and fnr == 0.5  # no negative: no FPR


def test_auc_is_sklearns_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 300) / 4  # many ties
    labels = rng.integers(0, 2, 300)
    assert bias.auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert math.isnan(bias.auc(scores, np.ones(300)))
    assert math.isnan(bias.subgroup_auc(SCORE, np.ones(9), member("a")))  # one label in the subgroup


def test_worst_identities_lowest_bpsn_first_nan_left_out():
    import pandas as pd

    table = pd.DataFrame({"identity": list("abcdefg"), "bpsn_auc": [0.9, 0.2, math.nan, 0.5, 0.2, 0.7, 0.8]})
    assert bias.worst_identities(table) == ["b", "e", "d", "f", "g"]


def test_toxic_class_ids_binary_default_names_ids_and_errors():
    binary = {0: "non-toxic", 1: "toxic"}
    assert bias.toxic_class_ids(None, binary) == [1]
    three = {0: "hate", 1: "offensive", 2: "neither"}
    assert bias.toxic_class_ids(["hate", "1"], three) == [0, 1]
    with pytest.raises(ValueError, match="--bias_toxic_classes"):
        bias.toxic_class_ids(None, three)
    with pytest.raises(ValueError, match="--bias_toxic_classes"):
        bias.toxic_class_ids(None, binary, multi_label=True)
    with pytest.raises(ValueError, match="no such class.*0=hate"):
        bias.toxic_class_ids(["toxic"], three)


def test_toxic_scores_sum_the_named_classes_and_decisions_follow_the_rule():
    probs = np.array([[0.2, 0.3, 0.5], [0.6, 0.1, 0.3]])
    np.testing.assert_allclose(bias.toxic_scores(probs, [0, 1]), [0.5, 0.7], rtol=1e-12)
    assert bias.toxic_decisions(np.array([2, 1]), [0, 1]).tolist() == [False, True]
    multi = np.array([[0, 0, 1], [0, 1, 0]])  # multi-label decisions: any toxic label
    assert bias.toxic_decisions(multi, [1]).tolist() == [False, True]


def test_stratified_sample_caps_each_identity_and_keeps_its_label_mix():
    identities = ["a"] * 100 + ["b"] * 30 + [""] * 50
    labels = np.array([1] * 25 + [0] * 75 + [1, 0] * 15 + [1] * 50)
    rows = bias.stratified_sample(identities, labels, 20, seed=0)
    picked = np.array(identities, dtype=object)[rows]
    assert (picked == "a").sum() == 20 and (picked == "b").sum() == 20 and (picked == "").sum() == 20
    assert labels[rows][picked == "a"].sum() == 5  # 25% toxic, as in all of a
    assert labels[rows][picked == "b"].sum() == 10
    assert np.array_equal(rows, bias.stratified_sample(identities, labels, 20, seed=0))
    assert not np.array_equal(rows, bias.stratified_sample(identities, labels, 20, seed=1))
    assert len(bias.stratified_sample(identities, labels, 1000, seed=0)) == 180
