"""Tolerances for comparing floats, each derived from what the two sides compute (not picked until a test passes).

A test either computes both sides the same way (then it compares exactly, or at a few float64 ulps), or it uses a
tolerance below, whose docstring says why it is the size it is.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7: one rounding of a float32 number, relative
EPS64 = float(np.finfo(np.float64).eps)  # 2.2e-16

# Two float32 forward passes of one model over the same text that batch or pad differently (one text alone vs a
# padded batch, another thread count, ONNX Runtime's kernels vs PyTorch's) add the same numbers in another order.
# Each matmul, softmax and LayerNorm rounds at ~EPS32 of its operands, and the fixtures' large random weights
# (initializer_range=1) amplify that through the layers: measured up to 3.5e-5 x max|logit| (~300 EPS32) on a
# 2-layer tiny BERT at OMP_NUM_THREADS=1 and 2. 2**11 EPS32 (2.4e-4) keeps a ~7x margin over that and is still
# ~1000x smaller than any real defect (a wrong head, a softmax for a sigmoid, another model's weights).
FORWARD_REL = 2**11 * EPS32


def forward_atol(logits: np.ndarray) -> float:
    """Absolute tolerance on logits of two float32 forward passes that batch differently: FORWARD_REL x the
    largest |logit| (rounding is relative to the magnitudes that flow through the network).

    Also a bound for probabilities made from those logits: sigmoid and softmax move a probability by at most 1/4
    and 1/2 of a change in the logits (their Lipschitz constants in the max norm), and BCE / CE by at most 1.
    """
    return FORWARD_REL * max(float(np.abs(np.asarray(logits, dtype=np.float64)).max()), 1.0)


# A float32 softmax row sums to 1 up to one rounding per term and per add: k classes -> ~2k EPS32 (< 1e-6 for k <= 4).
SOFTMAX_SUM_ATOL = 1e-6

# A LoRA adapter applied on the fly (x W + x A B) vs merged into the weight (x (W + A B)): float32 rounds the product
# in another order at each adapted layer; with the tiny models' |logits| < ~10 that is ~1e-6, well under 1e-4.
MERGE_ATOL = 1e-4


def auc_noise_bound(scores: np.ndarray, positives: np.ndarray, score_atol: float) -> float:
    """Largest change of a macro ROC-AUC (the mean over the columns that have both classes) when every score may
    move by up to `score_atol`, as two forward passes that batch differently do (`forward_atol`).

    Only a (positive, negative) pair of one column closer than 2 x score_atol can change order or tie, and each
    such pair moves its column's AUC by at most 1 / (n_pos x n_neg). A model near chance whose scores crowd
    together has many such pairs; one that separates its classes has few, and the bound is tight.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    positives = np.asarray(positives, dtype=bool).reshape(len(scores), -1)
    changes = []
    for j in range(scores.shape[1]):
        pos, neg = scores[positives[:, j], j], np.sort(scores[~positives[:, j], j])
        if len(pos) and len(neg):
            near = np.searchsorted(neg, pos + 2 * score_atol, "right") - np.searchsorted(neg, pos - 2 * score_atol)
            changes.append(near.sum() / (len(pos) * len(neg)))
    return float(np.mean(changes)) + 16 * EPS64 if changes else 0.0


def rounding_atol(scores_a: np.ndarray, scores_b: np.ndarray) -> float:
    """How far a third pass may round from `scores_a`: twice the largest difference measured between two passes of
    one model (at least one float32 rounding of the largest score).

    A training run scores its test split in a pass of its own that a test cannot read back; a test replays that pass
    (the same batches) and a second one batched otherwise. The factor 2 covers the replay, which rounds as the
    training run did only up to the same size.
    """
    a, b = (np.asarray(x, dtype=np.float64) for x in (scores_a, scores_b))
    return 2 * max(float(np.abs(a - b).max()), EPS32 * float(np.abs(a).max()))


def extreme_decisions(
    scores: np.ndarray, positives: np.ndarray, thresholds: np.ndarray, atol: float
) -> tuple[np.ndarray, np.ndarray]:
    """The worst and the best decisions `scores >= thresholds` (one column per label) when every score may move by up
    to `atol`: an entry within atol of its threshold may be decided either way, so deciding those entries against
    their gold labels gives the worst and deciding them as their gold labels the best.

    Worst and best for every metric that rises when an entry is decided as its gold label: F1 = 2TP / (2TP + FP + FN),
    accuracy, recall.
    """
    positives = np.asarray(positives, dtype=bool)
    thresholds = np.asarray(thresholds)[None, :]
    free, decided = np.abs(scores - thresholds) <= atol, scores >= thresholds
    return np.where(free, ~positives, decided), np.where(free, positives, decided)


def multilabel_f1_noise_range(
    scores: np.ndarray, positives: np.ndarray, thresholds: np.ndarray, atol: float
) -> dict[str, tuple[float, float]]:
    """The range of multi-label micro and macro F1 (zero_division=0, as `distillkit.metrics`) when every score
    (probabilities, or logits with the thresholds' logits) may move by up to `atol` (`extreme_decisions`)."""
    positives = np.asarray(positives, dtype=bool)
    decisions = extreme_decisions(scores, positives, thresholds, atol)
    return {
        f"{average}_f1": tuple(
            float(f1_score(positives, preds, average=average, zero_division=0)) for preds in decisions
        )
        for average in ("micro", "macro")
    }


def binary_noise_range(
    scores: np.ndarray, positives: np.ndarray, threshold: float, atol: float
) -> dict[str, tuple[float, float]]:
    """The range of a binary task's F1 (of the positive class) and accuracy when every score may move by up to
    `atol` and a text is positive at `score >= threshold` (`extreme_decisions`)."""
    positives = np.asarray(positives, dtype=bool)
    decisions = extreme_decisions(np.asarray(scores)[:, None], positives[:, None], [threshold], atol)
    worst, best = (d[:, 0] for d in decisions)
    return {
        "f1": (float(f1_score(positives, worst, zero_division=0)), float(f1_score(positives, best, zero_division=0))),
        "accuracy": (float((worst == positives).mean()), float((best == positives).mean())),
    }


def within(value: float, bounds: tuple[float, float]) -> bool:
    """`bounds[0] <= value <= bounds[1]`, up to the float64 rounding of a metric summed over a few thousand terms."""
    return bounds[0] - 1e-12 <= value <= bounds[1] + 1e-12


def assert_f1_best_threshold(scores: np.ndarray, positives: np.ndarray, threshold: float, atol: float) -> None:
    """`threshold` is what best_f1_threshold chose on scores within `atol` of these: one of those scores, and no
    other threshold gives a higher F1 beyond the range that rounding allows. (Near-tied scores may change which
    score wins, so it is not compared to best_f1_threshold of these scores exactly.)"""
    assert np.abs(scores - threshold).min() <= atol, (threshold, "is none of the scores")
    reached = binary_noise_range(scores, positives, threshold, atol)["f1"][1]
    for other in np.unique(scores):
        assert reached >= binary_noise_range(scores, positives, other, atol)["f1"][0] - 1e-12, (threshold, other)


def decided_alike_but_ties(
    probs_a: np.ndarray, probs_b: np.ndarray, preds_a: np.ndarray, preds_b: np.ndarray, offsets=None
) -> bool:
    """Two passes of one single-label model (another runtime; an adapter merged or not) decide every text alike,
    except texts whose classes tie within the rounding between the passes. Returns whether all are decided alike
    (then every metric of the two passes is equal exactly); fails on a text decided differently that is no tie.

    The scores are log p + the model's logit offsets (its decision rule, distillkit/decision.py; none: argmax), and d
    is their largest difference between the two passes, measured on these texts. A text whose best class leads the
    runner-up by more than 2d in pass a leads in pass b too; one that leads by less may be decided either way.
    """
    offsets = np.zeros(probs_a.shape[1]) if offsets is None else np.asarray(offsets, dtype=np.float64)
    scores_a, scores_b = (np.log(np.maximum(p, 1e-300)) + offsets for p in (probs_a, probs_b))
    d = float(np.abs(scores_a - scores_b).max())
    top_two = np.sort(scores_a, axis=1)[:, -2:]
    apart = top_two[:, 1] - top_two[:, 0] > 2 * d
    alike = np.asarray(preds_a) == np.asarray(preds_b)
    assert alike[apart].all(), f"{int((~alike[apart]).sum())} texts decided differently, leading by over 2 x {d:.2e}"
    return bool(alike.all())
