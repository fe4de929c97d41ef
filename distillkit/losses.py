"""Distillation losses as pure functions of tensors, so each can be tested against a hand computation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_teacher || p_student) between temperature-softened distributions, times T², averaged over the batch.

    The T² keeps the gradient scale independent of T (Hinton et al., 2015).
    """
    t = temperature
    student_log_probs = F.log_softmax(student_logits.float() / t, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True) * (t * t)


def binary_soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Multi-label KD: per-label KL(Bern(σ(t/T)) || Bern(σ(s/T))), averaged over labels and batch, times T².

    Each label is its own yes/no decision, so a softmax across labels would couple labels that are independent.
    """
    t = temperature
    s = student_logits.float() / t
    z = teacher_logits.float() / t
    p = torch.sigmoid(z)
    # log σ(x) = -softplus(-x), log(1-σ(x)) = -softplus(x): stable for large |x|.
    kl = p * (F.softplus(-s) - F.softplus(-z)) + (1 - p) * (F.softplus(s) - F.softplus(z))
    return kl.mean() * (t * t)


def gold_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    multi_label: bool = False,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The gold-label term: cross-entropy (optionally class-weighted), or BCE-with-logits for multi-label data.

    For multi-label data `class_weights` is BCE's `pos_weight` (one per label); labels are 0/1 floats (n, labels).
    """
    if multi_label:
        weight = None if class_weights is None else class_weights.to(logits.device, torch.float32)
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=weight)
    weight = None if class_weights is None else class_weights.to(logits.device, torch.float32)
    return F.cross_entropy(logits.float(), labels, weight=weight)


def hidden_state_cosine_loss(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Mean over layer pairs of (1 - cosine similarity), averaged over the real (unmasked) tokens.

    `student_hidden[i]` is compared with `teacher_hidden[i]`: the caller pairs each student layer with
    the teacher layer it was copied from. Tensors are (batch, seq, hidden); the mask is (batch, seq).
    """
    if len(student_hidden) != len(teacher_hidden) or not student_hidden:
        raise ValueError(f"need matching, non-empty layer lists; got {len(student_hidden)} and {len(teacher_hidden)}")
    mask = attention_mask.to(torch.float32)
    tokens = mask.sum().clamp(min=1.0)
    per_layer = []
    for s, t in zip(student_hidden, teacher_hidden):
        cos = F.cosine_similarity(s.float(), t.float(), dim=-1)  # (batch, seq)
        per_layer.append(((1.0 - cos) * mask).sum() / tokens)
    return torch.stack(per_layer).mean()


@dataclass(frozen=True)
class LossWeights:
    ce: float = 1.0
    kl: float = 1.0
    cos: float = 1.0


def distillation_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    weights: LossWeights,
    temperature: float,
    teacher_logits: torch.Tensor | None = None,
    student_hidden: Sequence[torch.Tensor] | None = None,
    teacher_hidden: Sequence[torch.Tensor] | None = None,
    attention_mask: torch.Tensor | None = None,
    multi_label: bool = False,
    class_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """weights.ce·CE + weights.kl·KL + weights.cos·cosine; a term whose weight is 0 is not computed.

    Returns the total and each computed (unweighted) component under `loss_ce`, `loss_kl`, `loss_cos`. With
    `multi_label` the CE term is BCE-with-logits and the KL term the per-label binary KL (`binary_soft_target_kl`).
    """
    components: dict[str, torch.Tensor] = {}
    total = student_logits.new_zeros((), dtype=torch.float32)
    if weights.ce:
        components["loss_ce"] = gold_loss(student_logits, labels, multi_label, class_weights)
        total = total + weights.ce * components["loss_ce"]
    if weights.kl:
        if teacher_logits is None:
            raise ValueError("the KL term needs teacher logits")
        kd = binary_soft_target_kl if multi_label else soft_target_kl
        components["loss_kl"] = kd(student_logits, teacher_logits, temperature)
        total = total + weights.kl * components["loss_kl"]
    if weights.cos:
        if student_hidden is None or teacher_hidden is None or attention_mask is None:
            raise ValueError("the cosine term needs student and teacher hidden states and the attention mask")
        components["loss_cos"] = hidden_state_cosine_loss(student_hidden, teacher_hidden, attention_mask)
        total = total + weights.cos * components["loss_cos"]
    return total, components
