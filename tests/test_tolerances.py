"""The noise bounds of tests/tolerances.py hold: scores moved within the stated tolerance stay inside them."""

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score
from tolerances import auc_noise_bound, multilabel_f1_noise_range


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
            low, high = ranges[f"{average}_f1"]
            assert low - 1e-12 <= f1_score(gold, preds, average=average, zero_division=0) <= high + 1e-12
    # Without entries near a threshold the range is one value: the F1 of the plain decision.
    low, high = multilabel_f1_noise_range(probs, gold, thresholds + 0.05, atol)["micro_f1"]
    assert low == high == f1_score(gold, probs >= thresholds + 0.05, average="micro", zero_division=0)


def test_decisions_may_differ_only_at_ties_within_the_rounding():
    import pytest
    from scipy.special import softmax
    from tolerances import decided_alike_but_ties

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
