"""Each loss term against a hand computation on fixed tensors; weight-0 terms are not computed."""

import math

import pytest
import torch

from distillkit.losses import LossWeights, distillation_loss, hidden_state_cosine_loss, soft_target_kl


def test_kl_matches_hand_computation():
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    teacher = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    t = 2.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        ps = [math.exp(x / t) / sum(math.exp(y / t) for y in s_row) for x in s_row]
        pt = [math.exp(x / t) / sum(math.exp(y / t) for y in t_row) for x in t_row]
        expected += sum(p * math.log(p / q) for p, q in zip(pt, ps))  # KL(teacher || student)
    expected = expected / 2 * t * t  # batch mean, times T²
    # float32 against float64: each term rounds at ~1e-7 and the sum cancels ~5x, so ~1e-6 relative; 1e-5 covers it
    assert soft_target_kl(student, teacher, t).item() == pytest.approx(expected, rel=1e-5)


def test_kl_is_zero_for_identical_logits():
    logits = torch.randn(4, 3)
    assert soft_target_kl(logits, logits.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_cosine_loss_ignores_padding_and_averages_layers():
    mask = torch.tensor([[1, 1, 0]])
    # Layer 1: token 0 identical (cos 1), token 1 orthogonal (cos 0), token 2 padding (opposite, must not count).
    s1 = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])
    t1 = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]])
    # Layer 2: both real tokens opposite (cos -1 → loss 2).
    s2 = torch.tensor([[[1.0, 1.0], [0.0, 1.0], [5.0, 5.0]]])
    t2 = -s2
    layer1 = ((1 - 1) + (1 - 0)) / 2
    layer2 = (2 + 2) / 2
    got = hidden_state_cosine_loss([s1, s2], [t1, t2], mask)
    assert got.item() == pytest.approx((layer1 + layer2) / 2)


def test_total_is_weighted_sum_of_components():
    torch.manual_seed(0)
    s_logits, t_logits = torch.randn(3, 2), torch.randn(3, 2)
    labels = torch.tensor([0, 1, 1])
    s_hidden, t_hidden = [torch.randn(3, 4, 8)], [torch.randn(3, 4, 8)]
    mask = torch.ones(3, 4)
    w = LossWeights(ce=0.5, kl=2.0, cos=3.0)
    total, parts = distillation_loss(s_logits, labels, w, 2.0, t_logits, s_hidden, t_hidden, mask)
    ce = torch.nn.functional.cross_entropy(s_logits, labels)
    assert parts["loss_ce"].item() == pytest.approx(ce.item())
    assert parts["loss_kl"].item() == pytest.approx(soft_target_kl(s_logits, t_logits, 2.0).item())
    assert parts["loss_cos"].item() == pytest.approx(hidden_state_cosine_loss(s_hidden, t_hidden, mask).item())
    expected = 0.5 * parts["loss_ce"] + 2.0 * parts["loss_kl"] + 3.0 * parts["loss_cos"]
    assert total.item() == pytest.approx(expected.item())


def test_zero_weight_terms_are_not_computed():
    logits = torch.randn(2, 2, requires_grad=True)
    labels = torch.tensor([0, 1])
    # No teacher outputs at all: with kl = cos = 0 nothing may ask for them.
    total, parts = distillation_loss(logits, labels, LossWeights(ce=1.0, kl=0.0, cos=0.0), 2.0)
    assert set(parts) == {"loss_ce"}
    assert total.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    with pytest.raises(ValueError, match="teacher logits"):
        distillation_loss(logits, labels, LossWeights(ce=1.0, kl=1.0, cos=0.0), 2.0)
