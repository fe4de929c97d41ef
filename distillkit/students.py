"""Students made by dropping layers from a teacher: layer selection and exact weight copying."""

from __future__ import annotations

import copy
import math
import re

import torch
from transformers import PreTrainedModel

from .cli import UsageError

# Where each supported architecture keeps its stack of transformer layers, and what its config calls the depth.
_LAYER_STACKS = {
    "bert": ("bert.encoder.layer", "num_hidden_layers"),
    "roberta": ("roberta.encoder.layer", "num_hidden_layers"),
    "xlm-roberta": ("roberta.encoder.layer", "num_hidden_layers"),
    "distilbert": ("distilbert.transformer.layer", "n_layers"),
}
NAMED_LAYER_CHOICES = ("odd", "even", "top", "bottom", "spread")


def layer_stack(model: PreTrainedModel) -> tuple[str, str]:
    """(state-dict prefix of the layer list, config attribute holding the depth) for `model`."""
    model_type = model.config.model_type
    if model_type not in _LAYER_STACKS:
        raise UsageError(
            f"teacher model_type {model_type!r} is not supported for layer dropping; "
            f"supported: {', '.join(sorted(_LAYER_STACKS))}"
        )
    return _LAYER_STACKS[model_type]


def num_layers(model: PreTrainedModel) -> int:
    return getattr(model.config, layer_stack(model)[1])


def select_layers(spec: str, teacher_num_layers: int, student_num_layers: int | None = None) -> list[int]:
    """1-based teacher layer numbers for `--layers odd|even|top|bottom|spread|1,3,5`.

    Named choices give half the teacher's depth unless `student_num_layers` says otherwise; for 12 layers,
    odd = 1,3,...,11 and even = 2,4,...,12 (the way the reference studies count). `spread` is k layers evenly spread
    from the first to the last, round(linspace(1, n, k)) with halves rounded up: DistilBERT's {1,3,5,8,10,12} at 12 → 6.
    """
    n = teacher_num_layers
    spec = spec.strip().lower()
    if spec in NAMED_LAYER_CHOICES:
        k = student_num_layers if student_num_layers is not None else n // 2
        if not 1 <= k <= n:
            raise UsageError(f"--student_num_layers {k}: must be between 1 and the teacher's {n} layers")
        if spec in ("odd", "even"):
            pool = list(range(1, n + 1, 2)) if spec == "odd" else list(range(2, n + 1, 2))
            if k > len(pool):
                raise UsageError(
                    f"--layers {spec} --student_num_layers {k}: a {n}-layer teacher has only {len(pool)} {spec} layers"
                )
            # Spread k picks evenly over the pool; with k = n/2 this is the whole pool.
            picks = (
                sorted({pool[round(i * (len(pool) - 1) / max(k - 1, 1))] for i in range(k)}) if k < len(pool) else pool
            )
            return picks
        if spec == "spread":
            return spread_layers(n, k)
        return list(range(n - k + 1, n + 1)) if spec == "top" else list(range(1, k + 1))
    items = [part.strip() for part in spec.split(",")]
    if any(items) and not all(items):
        # "1,,3" or "1,3," is a typo, not the list 1,3.
        raise UsageError(f"--layers {spec}: an item between commas is empty; give layer numbers like 2,4,6")
    try:
        layers = [int(part) for part in items if part]
    except ValueError:
        raise UsageError(
            f"--layers {spec}: expected one of {', '.join(NAMED_LAYER_CHOICES)} or comma-separated layer numbers like 2,4,6"
        ) from None
    if not layers:
        raise UsageError("--layers is empty: give odd, even, top, bottom or layer numbers like 2,4,6")
    out_of_range = [layer for layer in layers if not 1 <= layer <= n]
    if out_of_range:
        raise UsageError(f"--layers {spec}: teacher layers are numbered 1..{n}; {out_of_range[0]} is out of range")
    if len(set(layers)) != len(layers):
        raise UsageError(f"--layers {spec}: a layer appears twice")
    if layers != sorted(layers):
        raise UsageError(f"--layers {spec}: layers must be in ascending order")
    if student_num_layers is not None and student_num_layers != len(layers):
        raise UsageError(f"--layers {spec} lists {len(layers)} layers but --student_num_layers is {student_num_layers}")
    return layers


def spread_layers(teacher_num_layers: int, k: int) -> list[int]:
    """k distinct layers evenly spread over 1..n, both ends included: round(linspace(1, n, k)), halves up."""
    if k == 1:
        return [1]
    step = (teacher_num_layers - 1) / (k - 1)
    return [math.floor(1 + i * step + 0.5) for i in range(k)]


def build_student(teacher: PreTrainedModel, layers: list[int]) -> PreTrainedModel:
    """A copy of `teacher` keeping only the given 1-based layers, in order.

    Embeddings, pooler and classifier head are copied as they are; student layer i is teacher layer
    layers[i]. The config records the layers under `distillation_layers`.
    """
    prefix, depth_attr = layer_stack(teacher)
    n = getattr(teacher.config, depth_attr)
    if not layers or any(not 1 <= layer <= n for layer in layers) or len(set(layers)) != len(layers):
        raise UsageError(f"layers {layers}: need distinct teacher layers numbered 1..{n}")
    config = copy.deepcopy(teacher.config)
    setattr(config, depth_attr, len(layers))
    config.distillation_layers = list(layers)
    student = type(teacher)(config)

    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.+)$")
    teacher_state = teacher.state_dict()
    student_state = {}
    for key in student.state_dict():
        match = pattern.match(key)
        source = f"{prefix}.{layers[int(match.group(1))] - 1}.{match.group(2)}" if match else key
        student_state[key] = teacher_state[source].detach().clone()
    student.load_state_dict(student_state, strict=True)
    return student.to(dtype=next(teacher.parameters()).dtype)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
