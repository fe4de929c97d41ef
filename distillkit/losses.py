"""Distillation losses as pure functions of tensors, so each can be tested against a hand computation."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
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


# --- the registry of loss terms ------------------------------------------------------------------------------
# Each term of the distillation loss is one `LossTerm`: its weight flag (`--alpha_<name>`), the component the trainer
# logs (`loss_<name>`), which teacher outputs it needs, and its pure function. The argument dataclass, the trainer,
# the scripts, the run record, the model card and the report all read `loss_terms()`, so a new term (say
# attention-map transfer) is one `register_loss_term(...)` beside its pure function and its test.


@dataclass(frozen=True)
class LossInputs:
    """Everything a term may read. The trainer fills only what the terms that are on need."""

    student_logits: torch.Tensor
    labels: torch.Tensor
    temperature: float
    teacher_logits: torch.Tensor | None = None
    student_hidden: Sequence[torch.Tensor] | None = None
    teacher_hidden: Sequence[torch.Tensor] | None = None
    attention_mask: torch.Tensor | None = None
    multi_label: bool = False
    class_weights: torch.Tensor | None = None


@dataclass(frozen=True)
class LossTerm:
    """One weighted term of the loss: `title` names it in messages, `help` describes its `--alpha_<name>` flag."""

    name: str
    title: str
    compute: Callable[[LossInputs], torch.Tensor]
    help: str
    default_weight: float = 1.0
    needs_teacher_logits: bool = False
    needs_hidden_states: bool = False  # the student's and the teacher's paired layers, and the attention mask

    @property
    def weight_flag(self) -> str:
        return f"alpha_{self.name}"

    @property
    def component(self) -> str:
        """The key of its unweighted value in the training logs."""
        return f"loss_{self.name}"

    @property
    def uses_teacher(self) -> bool:
        return self.needs_teacher_logits or self.needs_hidden_states

    @property
    def needs_live_teacher(self) -> bool:
        """Cached teacher logits (--cache_teacher_logits) cannot feed it: the teacher must run every step."""
        return self.needs_hidden_states


_LOSS_TERMS: dict[str, LossTerm] = {}
GOLD_TERM = "ce"  # evaluation scores the student alone, by this term


def register_loss_term(term: LossTerm) -> LossTerm:
    if not term.name.isidentifier() or term.name in _LOSS_TERMS:
        raise ValueError(f"loss term {term.name!r}: need a new identifier (registered: {', '.join(_LOSS_TERMS)})")
    _LOSS_TERMS[term.name] = term
    return term


def unregister_loss_term(name: str) -> None:
    if name == GOLD_TERM:
        raise ValueError(f"the gold-label term {GOLD_TERM!r} cannot be removed")
    del _LOSS_TERMS[name]


def loss_terms() -> tuple[LossTerm, ...]:
    """The registered terms in order (the order of the flags, the logs and the record)."""
    return tuple(_LOSS_TERMS.values())


def teacher_terms() -> tuple[LossTerm, ...]:
    return tuple(t for t in loss_terms() if t.uses_teacher)


def weight_flags() -> tuple[str, ...]:
    """alpha_ce, alpha_kl, alpha_cos, ...: the keys under which runs record their loss weights."""
    return tuple(t.weight_flag for t in loss_terms())


def loss_components() -> tuple[str, ...]:
    """loss_ce, loss_kl, loss_cos, ...: the keys under which the trainer logs each term."""
    return tuple(t.component for t in loss_terms())


def join_and(words: Sequence[str]) -> str:
    """`a`, `a and b`, `a, b and c`: a list for a message."""
    return " and ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + " and " + words[-1]


def flag_list(terms: Sequence[LossTerm]) -> str:
    """`--alpha_kl and --alpha_cos`: the weight flags of `terms` for a message."""
    return join_and([f"--{t.weight_flag}" for t in terms])


def _gold(x: LossInputs) -> torch.Tensor:
    return gold_loss(x.student_logits, x.labels, x.multi_label, x.class_weights)


def _soft_targets(x: LossInputs) -> torch.Tensor:
    kd = binary_soft_target_kl if x.multi_label else soft_target_kl
    return kd(x.student_logits, x.teacher_logits, x.temperature)


def _hidden_cosine(x: LossInputs) -> torch.Tensor:
    return hidden_state_cosine_loss(x.student_hidden, x.teacher_hidden, x.attention_mask)


register_loss_term(
    LossTerm(
        GOLD_TERM, "cross-entropy", _gold, "Weight of the cross-entropy on the gold labels (BCE for multi-label data)."
    )
)
register_loss_term(
    LossTerm(
        "kl",
        "KL",
        _soft_targets,
        "Weight of KL(teacher || student) on temperature-softened logits (× T²). 0 skips the teacher's logits.",
        needs_teacher_logits=True,
    )
)
register_loss_term(
    LossTerm(
        "cos",
        "hidden-state cosine",
        _hidden_cosine,
        "Weight of the cosine loss between each student layer's hidden states and its source teacher layer's "
        "(needs equal hidden sizes). 0 skips it.",
        needs_hidden_states=True,
    )
)


class LossWeights(Mapping[str, float]):
    """The weight of every registered term, by name: `LossWeights(ce=1, kl=0.5)`, positionally in registry order
    (`LossWeights(1, 0.5, 0)`); a term not given takes its default weight. Read as `weights["kl"]` or `weights.kl`."""

    def __init__(self, *weights: float, **by_name: float) -> None:
        values = {t.name: t.default_weight for t in loss_terms()}
        if len(weights) > len(values):
            raise TypeError(f"{len(weights)} weights for {len(values)} loss terms ({', '.join(values)})")
        values.update(zip(values, weights))
        unknown = sorted(set(by_name) - set(values))
        if unknown:
            raise TypeError(f"unknown loss term(s) {', '.join(unknown)}; registered: {', '.join(values)}")
        self._values = {**values, **{k: float(v) for k, v in by_name.items()}}

    @classmethod
    def only(cls, name: str) -> LossWeights:
        """Weight 1 on `name`, 0 on every other term."""
        return cls(**{t.name: float(t.name == name) for t in loss_terms()})

    def __getitem__(self, name: str) -> float:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> float:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no loss term {name!r}") from None

    def __repr__(self) -> str:
        return f"LossWeights({', '.join(f'{k}={v}' for k, v in self._values.items())})"

    def active(self) -> tuple[LossTerm, ...]:
        """The registered terms with a weight > 0, in registry order."""
        return tuple(t for t in loss_terms() if self._values.get(t.name, 0.0) > 0)

    @property
    def needs_teacher_logits(self) -> bool:
        return any(t.needs_teacher_logits for t in self.active())

    @property
    def needs_hidden_states(self) -> bool:
        return any(t.needs_hidden_states for t in self.active())


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
    """The weighted sum of the registered terms (ce·CE + kl·KL + cos·cosine + ...); a term whose weight is 0 is not
    computed.

    Returns the total and each computed (unweighted) component under `loss_<name>` (`loss_ce`, `loss_kl`,
    `loss_cos`). With `multi_label` the CE term is BCE-with-logits and the KL term the per-label binary KL
    (`binary_soft_target_kl`).
    """
    inputs = LossInputs(
        student_logits, labels, temperature, teacher_logits, student_hidden, teacher_hidden, attention_mask,
        multi_label, class_weights,
    )  # fmt: skip
    components: dict[str, torch.Tensor] = {}
    total = student_logits.new_zeros((), dtype=torch.float32)
    for term in weights.active():
        if term.needs_teacher_logits and teacher_logits is None:
            raise ValueError(f"the {term.title} term needs teacher logits")
        if term.needs_hidden_states and (student_hidden is None or teacher_hidden is None or attention_mask is None):
            raise ValueError(f"the {term.title} term needs student and teacher hidden states and the attention mask")
        components[term.component] = term.compute(inputs)
        total = total + weights[term.name] * components[term.component]
    return total, components
