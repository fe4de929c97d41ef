"""The task type's losses, decision rules, class weights and metrics against hand computations."""

import math

import numpy as np
import pytest
import torch
from transformers import BertConfig

from distillkit.losses import LossWeights, binary_soft_target_kl, distillation_loss, gold_loss
from distillkit.metrics import multilabel_metrics, per_class_f1, per_label_table
from distillkit.tasks import (
    MULTI_LABEL,
    SINGLE_LABEL,
    Task,
    best_f1_threshold,
    multi_hot,
    normalize_problem_type,
    parse_class_weights,
    rarest_share,
    resolve_class_weight_policy,
)


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_binary_kl_matches_hand_computation():
    student = torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.5, -1.0]])
    teacher = torch.tensor([[2.0, 0.0, -4.0], [0.0, 0.5, 1.0]])
    t = 2.0
    terms = []
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        for s, z in zip(s_row, t_row):
            p, q = _sig(z / t), _sig(s / t)
            terms.append(p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)))
    expected = sum(terms) / len(terms) * t * t  # mean over labels and batch, times T²
    assert binary_soft_target_kl(student, teacher, t).item() == pytest.approx(expected, rel=1e-5)


def test_binary_kl_is_zero_for_identical_logits_and_finite_for_extreme_ones():
    logits = torch.randn(4, 5)
    assert binary_soft_target_kl(logits, logits.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    extreme = binary_soft_target_kl(torch.tensor([[80.0, -80.0]]), torch.tensor([[-80.0, 80.0]]), 1.0)
    assert torch.isfinite(extreme) and extreme.item() > 50


def test_bce_gold_term_and_pos_weight_match_hand_computation():
    logits = torch.tensor([[0.5, -1.0]])
    labels = torch.tensor([[1.0, 0.0]])
    plain = -(math.log(_sig(0.5)) + math.log(1 - _sig(-1.0))) / 2
    assert gold_loss(logits, labels, multi_label=True).item() == pytest.approx(plain, rel=1e-6)
    weighted = -(3.0 * math.log(_sig(0.5)) + math.log(1 - _sig(-1.0))) / 2  # pos_weight scales positives only
    got = gold_loss(logits, labels, multi_label=True, class_weights=torch.tensor([3.0, 7.0]))
    assert got.item() == pytest.approx(weighted, rel=1e-6)


def test_weighted_cross_entropy_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    w = [1.0, 4.0]
    nll = [-math.log(math.exp(2) / (math.exp(2) + 1)), -math.log(math.exp(1) / (1 + math.exp(1)))]
    expected = (w[0] * nll[0] + w[1] * nll[1]) / (w[0] + w[1])  # torch's weighted mean
    assert gold_loss(logits, labels, class_weights=torch.tensor(w)).item() == pytest.approx(expected, rel=1e-6)


def test_distillation_loss_switches_both_terms_for_multi_label():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    labels = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]])
    total, parts = distillation_loss(s, labels, LossWeights(1.0, 0.5, 0.0), 2.0, teacher_logits=t, multi_label=True)
    assert parts["loss_ce"].item() == pytest.approx(gold_loss(s, labels, multi_label=True).item())
    assert parts["loss_kl"].item() == pytest.approx(binary_soft_target_kl(s, t, 2.0).item())
    assert total.item() == pytest.approx(parts["loss_ce"].item() + 0.5 * parts["loss_kl"].item(), rel=1e-6)


def test_class_weights():
    single = np.array([0, 0, 0, 1])
    assert parse_class_weights("balanced", single, 2, False) == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])
    assert parse_class_weights("none", single, 2, False) is None
    assert parse_class_weights("1,2.5", single, 2, False) == [1.0, 2.5]
    multi = np.array([[1, 0], [0, 0], [1, 1], [0, 0]])
    assert parse_class_weights("balanced", multi, 2, True) == pytest.approx([2 / 2, 3 / 1])
    for bad in ("1,2,3", "1,-1", "heavy"):
        with pytest.raises(ValueError, match="--class_weights"):
            parse_class_weights(bad, single, 2, False)
    with pytest.raises(ValueError, match="no example"):
        parse_class_weights("balanced", np.array([0, 0]), 2, False)


def test_class_weights_auto_balances_only_a_rare_class():
    # Binary: rare under 25% positive. 1 of 5 (20%) is rare; 2 of 6 (33%) is not.
    rare, even = np.array([0, 0, 0, 0, 1]), np.array([0, 0, 0, 0, 1, 1])
    assert resolve_class_weight_policy("auto", rare, 2, False) == "balanced"
    assert parse_class_weights("auto", rare, 2, False) == parse_class_weights("balanced", rare, 2, False)
    assert resolve_class_weight_policy("auto", even, 2, False) == "none"
    assert parse_class_weights("auto", even, 2, False) is None
    # Three classes: rare under 1/6 of train. The tweet data's shape (6% hate) is balanced.
    tweets = np.array([0] * 6 + [1] * 77 + [2] * 17)
    assert rarest_share(tweets, 3, False) == pytest.approx((0.06, 0.5 / 3))
    assert resolve_class_weight_policy("auto", tweets, 3, False) == "balanced"
    assert resolve_class_weight_policy("auto", np.array([0, 1, 2] * 5 + [0]), 3, False) == "none"
    # Multi-label: a label under 25% positive.
    multi = np.array([[1, 0], [0, 0], [1, 0], [0, 0], [1, 1]])  # label 1 is 20% positive
    assert resolve_class_weight_policy("auto", multi, 2, True) == "balanced"
    assert resolve_class_weight_policy("auto", np.array([[1, 1], [0, 0]]), 2, True) == "none"
    assert resolve_class_weight_policy("1,2", rare, 2, False) == "1,2"  # an explicit spec is kept
    # A label with no positive in train: explicit balanced refuses, the auto default gives it weight 1.
    absent = np.array([[1, 0], [0, 0], [1, 0]])
    with pytest.raises(ValueError, match="no positive example"):
        parse_class_weights("balanced", absent, 2, True)
    assert parse_class_weights("auto", absent, 2, True) == pytest.approx([1 / 2, 1.0])


def test_best_f1_threshold_is_the_f1_maximiser():
    scores = np.array([0.1, 0.2, 0.35, 0.4, 0.8, 0.9])
    positives = np.array([0, 0, 1, 0, 1, 1])
    t = best_f1_threshold(scores, positives)

    def f1_at(cut):
        pred = scores >= cut
        tp = (pred & (positives == 1)).sum()
        return 2 * tp / (pred.sum() + positives.sum())

    assert f1_at(t) == max(f1_at(c) for c in scores)
    assert t == 0.35  # predicting 0.35, 0.4, 0.8, 0.9 positive: F1 6/7 beats 0.8's 4/5
    assert best_f1_threshold(scores, np.zeros(6)) == 0.5


def test_decisions_single_binary_and_multi_label():
    probs = np.array([[0.7, 0.3], [0.4, 0.6]])
    assert Task(SINGLE_LABEL, 2).predict(probs).tolist() == [0, 1]
    assert Task(SINGLE_LABEL, 2, [0.25]).predict(probs).tolist() == [1, 1]
    multi = Task("multi_label", 3, [0.5, 0.2, 0.9])
    assert multi.predict(np.array([[0.6, 0.3, 0.8]])).tolist() == [[1, 1, 0]]
    with pytest.raises(ValueError, match="one per label"):
        Task(MULTI_LABEL, 3, [0.5])
    with pytest.raises(ValueError, match="binary"):
        Task(SINGLE_LABEL, 3, [0.5])
    with pytest.raises(ValueError, match="--problem_type"):
        normalize_problem_type("regression")


def test_tuned_thresholds_raise_validation_f1_on_a_rare_label():
    rng = np.random.default_rng(0)
    labels = (rng.random((400, 2)) < [0.5, 0.05]).astype(int)
    # label 1 is rare and under-confident: its positives score around 0.3, its negatives around 0.1
    probs = np.clip(np.where(labels == 1, [0.8, 0.3], [0.2, 0.1]) + rng.normal(0, 0.05, labels.shape), 0, 1)
    task = Task(MULTI_LABEL, 2)
    default_f1 = task.metrics(probs, labels)["macro_f1"]
    task.thresholds = task.tune_thresholds(probs, labels)
    assert task.metrics(probs, labels)["macro_f1"] > default_f1 + 0.3


def test_task_round_trips_through_a_config():
    config = BertConfig(num_labels=3)
    Task(MULTI_LABEL, 3, [0.1, 0.2, 0.3]).save_to_config(config)
    back = Task.from_config(BertConfig.from_dict(config.to_dict()))
    assert (back.problem_type, back.num_labels, back.thresholds) == (MULTI_LABEL, 3, [0.1, 0.2, 0.3])
    assert Task.from_config({"id2label": {"0": "a", "1": "b"}}).problem_type == SINGLE_LABEL


def test_multilabel_metrics_by_hand():
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    preds = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    probs = np.array([[0.9, 0.1], [0.6, 0.7], [0.4, 0.8], [0.2, 0.3]])
    m = multilabel_metrics(probs, labels, preds)
    # label 0: tp 1, fp 1, fn 1 → F1 0.5; label 1: tp 2, fp 0, fn 0 → F1 1; micro: tp 3, fp 1, fn 1 → 0.75
    assert m["micro_f1"] == pytest.approx(0.75) and m["f1"] == m["micro_f1"]
    assert m["macro_f1"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(2 / 4)  # rows 0 and 3 are exactly right
    assert m["hamming_accuracy"] == pytest.approx(6 / 8)
    # label 0 AUC: positives 0.9, 0.4 vs negatives 0.6, 0.2 → 3 of 4 pairs; label 1: 1.0
    assert m["roc_auc"] == pytest.approx((0.75 + 1.0) / 2)
    table = per_label_table(probs, labels, preds, ["a", "b"])
    assert [(r["label"], r["support"], r["f1"]) for r in table] == [("a", 2, 0.5), ("b", 2, 1.0)]


def test_per_class_f1_shows_a_vanished_class():
    assert per_class_f1(np.array([0, 0, 1, 2]), np.array([0, 0, 0, 2]), 3) == pytest.approx([0.8, 0.0, 1.0])


def test_multi_hot():
    assert multi_hot([[0, 2], [], [1]], 3).tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match="row 1: label 5"):
        multi_hot([[0], [5]], 3)


def test_never_predicted_classes_at_the_saved_rule():
    from transformers import BertConfig
    from transformers.trainer_utils import PredictionOutput

    from distillkit.tasks import Task
    from distillkit.training import never_predicted_classes

    config = BertConfig(num_labels=3, id2label={0: "neither", 1: "offensive", 2: "hate"})
    logits = np.array([[0.0, 2.0, 0.0], [0.0, 1.0, 0.9], [2.0, 0.0, 0.5], [0.0, 3.0, 1.0]])
    output = PredictionOutput(predictions=logits, label_ids=np.array([1, 2, 0, 2]), metrics={})
    assert never_predicted_classes(Task.from_config(config), config, output) == ["hate"]  # argmax never picks class 2
    config.decision_logit_offsets = [0.0, 0.0, 0.2]  # a tuned rule that does pick it (row 2: 0.9 + 0.2 > 1.0)
    assert never_predicted_classes(Task.from_config(config), config, output) == []
    absent = PredictionOutput(predictions=logits[:1], label_ids=np.array([1]), metrics={})
    assert never_predicted_classes(Task.from_config(config), config, absent) == []  # a class absent from the split is not flagged
