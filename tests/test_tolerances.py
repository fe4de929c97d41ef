"""The noise bounds of tests/tolerances.py hold: scores moved within the stated tolerance stay inside them."""

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score
from tolerances import (
    EPS32,
    assert_f1_best_threshold,
    auc_noise_bound,
    binary_noise_range,
    decided_alike_but_ties,
    multilabel_f1_noise_range,
    rounding_atol,
    within,
)


def macro_auc(scores: np.ndarray, gold: np.ndarray) -> float:
    both = [j for j in range(gold.shape[1]) if 0 < gold[:, j].sum() < len(gold)]
    return float(np.mean([roc_auc_score(gold[:, j], scores[:, j]) for j in both]))


def test_auc_bound_covers_every_reordering_of_near_ties():
    rng = np.random.default_rng(0)
    # Scores on a coarse grid: many exact ties and near-ties, the case where rounding reorders pairs.
    scores = rng.integers(0, 20, size=(200, 5)) / 1000.0
    gold = rng.random((200, 5)) < [0.02, 0.1, 0.3, 0.5, 0.005]
    atol = 1e-3
    bound = auc_noise_bound(scores, gold, atol)
    base = macro_auc(scores, gold)
    assert 0 < bound < 1
    for _ in range(200):
        moved = scores + rng.uniform(-atol, atol, size=scores.shape)
        assert abs(macro_auc(moved, gold) - base) <= bound
    # Scores farther apart than 2 x atol cannot reorder: the bound is (almost) nothing.
    assert auc_noise_bound(np.arange(200.0)[:, None], gold[:, :1], 0.1) < 1e-12


def test_f1_range_contains_every_decision_within_the_tolerance():
    rng = np.random.default_rng(1)
    probs = rng.integers(0, 11, size=(300, 4)) / 10.0  # many probabilities exactly at a threshold
    gold = rng.random((300, 4)) < 0.3
    thresholds = np.array([0.3, 0.5, 0.5, 0.7])
    atol = 0.01
    ranges = multilabel_f1_noise_range(probs, gold, thresholds, atol)
    for _ in range(200):
        preds = (probs + rng.uniform(-atol, atol, size=probs.shape)) >= thresholds
        for average in ("micro", "macro"):
            assert within(f1_score(gold, preds, average=average, zero_division=0), ranges[f"{average}_f1"])
    # Without entries near a threshold the range is one value: the F1 of the plain decision.
    low, high = multilabel_f1_noise_range(probs, gold, thresholds + 0.05, atol)["micro_f1"]
    assert low == high == f1_score(gold, probs >= thresholds + 0.05, average="micro", zero_division=0)


def test_binary_range_contains_every_decision_within_the_tolerance():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 21, size=400) / 20.0  # many scores exactly at the threshold
    gold = rng.random(400) < 0.2
    atol, threshold = 0.03, 0.45
    ranges = binary_noise_range(scores, gold, threshold, atol)
    assert ranges["f1"][0] < ranges["f1"][1] and ranges["accuracy"][0] < ranges["accuracy"][1]
    for _ in range(200):
        preds = (scores + rng.uniform(-atol, atol, size=scores.shape)) >= threshold
        assert within(f1_score(gold, preds, zero_division=0), ranges["f1"])
        assert within(float((preds == gold).mean()), ranges["accuracy"])
    # Away from the threshold both ranges are the plain decision's value; at another threshold it is not inside.
    far = binary_noise_range(scores, gold, 0.475, atol / 10)
    plain = scores >= 0.475
    assert far["f1"] == (f1_score(gold, plain),) * 2 and far["accuracy"] == (float((plain == gold).mean()),) * 2
    assert not within(f1_score(gold, scores >= 0.9), far["f1"])


def test_f1_best_threshold_holds_for_the_chosen_one_only():
    from distillkit.decision import best_f1_threshold

    rng = np.random.default_rng(3)
    gold = rng.random(60) < 0.3
    scores = np.round(gold * 0.2 + rng.random(60) * 0.8, 3)  # some scores tie, others are 1e-3 apart
    best = best_f1_threshold(scores, gold)
    assert_f1_best_threshold(scores, gold, best, atol=1e-6)
    assert_f1_best_threshold(scores + 5e-7, gold, best, atol=1e-6)  # as another pass computed them
    with pytest.raises(AssertionError, match="is none of the scores"):
        assert_f1_best_threshold(scores, gold, 0.5004, atol=1e-6)
    f1 = {s: f1_score(gold, scores >= s) for s in np.unique(scores)}
    worse = min(f1, key=f1.get)
    with pytest.raises(AssertionError):
        assert_f1_best_threshold(scores, gold, worse, atol=1e-6)


def test_rounding_atol_is_twice_the_measured_difference_and_at_least_one_rounding():
    a = np.array([[1.0, -3.0], [0.5, 2.0]])
    assert abs(rounding_atol(a, a + np.array([[0.0, 1e-6], [-2e-6, 0.0]])) - 4e-6) < 1e-15  # a - (a + 2e-6): rounded
    assert rounding_atol(a, a) == 2 * EPS32 * 3.0


def test_decisions_may_differ_only_at_ties_within_the_rounding():
    from scipy.special import softmax

    rng = np.random.default_rng(2)
    logits = rng.normal(size=(500, 3))
    offsets = np.array([0.0, 0.3, -0.2])
    logits[:5, 1] = logits[:5, 0] - 0.3  # ties of classes 0 and 1 under the offsets: either decision is right
    logits[:5, 2] = logits[:5, 0] - 5.0
    noisy = logits + rng.uniform(-1e-6, 1e-6, size=logits.shape)
    probs_a, probs_b = softmax(logits, axis=1), softmax(noisy, axis=1)
    preds_a, preds_b = (np.argmax(np.log(p) + offsets, axis=1) for p in (probs_a, probs_b))
    assert decided_alike_but_ties(probs_a, probs_b, preds_a, preds_b, offsets) == bool((preds_a == preds_b).all())
    forced = preds_b.copy()
    forced[:5] = 1 - preds_a[:5]  # a tie decided the other way is allowed ...
    assert decided_alike_but_ties(probs_a, probs_b, preds_a, forced, offsets) is False
    clear = int(np.argmax(np.ptp(np.log(probs_a) + offsets, axis=1)))  # ... a clear text decided otherwise is not
    forced[clear] = (preds_a[clear] + 1) % 3
    with pytest.raises(AssertionError, match="decided differently"):
        decided_alike_but_ties(probs_a, probs_b, preds_a, forced, offsets)
    # Decided by argmax (no offsets) instead of the offsets: clear texts differ, and that fails.
    with pytest.raises(AssertionError):
        decided_alike_but_ties(probs_a, probs_b, preds_a, np.argmax(probs_b, axis=1), offsets)
