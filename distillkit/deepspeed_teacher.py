"""The frozen teacher under DeepSpeed: its config derived from the student's, and its inference engine."""

from __future__ import annotations

import copy

from torch import nn


def deepspeed_teacher_config(train_config: dict, hidden_size: int | None) -> dict:
    """DeepSpeed config for the frozen teacher, derived from the student's (as TRL prepares its teachers).

    ZeRO-3 keeps sharding the teacher (with TRL's bucket sizes for the "auto" ones it leaves to the model);
    ZeRO-1/2 only shard optimizer state and gradients, which a frozen model has none of: stage 0, a full copy.
    """
    config = copy.deepcopy(train_config)
    config.pop("optimizer", None)  # nothing to optimise
    config.pop("scheduler", None)
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage", 0) == 3:
        if hidden_size is not None:
            sizes = {
                "reduce_bucket_size": hidden_size * hidden_size,
                "stage3_param_persistence_threshold": 10 * hidden_size,
                "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
            }
            zero.update({k: v for k, v in sizes.items() if zero.get(k, "auto") == "auto"})
    else:
        config["zero_optimization"] = {"stage": 0}
    unresolved = sorted(_auto_keys(config))
    if unresolved:
        raise ValueError(f"DeepSpeed config for the teacher still has 'auto' values: {', '.join(unresolved)}")
    return config


def _auto_keys(config: dict, prefix: str = "") -> list[str]:
    found = []
    for key, value in config.items():
        if isinstance(value, dict):
            found += _auto_keys(value, f"{prefix}{key}.")
        elif value == "auto":
            found.append(prefix + key)
    return found


def prepare_deepspeed_teacher(teacher: nn.Module, accelerator) -> nn.Module:
    """Wrap the teacher in a DeepSpeed inference engine built from the accelerator's DeepSpeed plugin."""
    try:
        import deepspeed  # lazily: importing it initialises CUDA machinery that CPU runs must not pay for
    except ImportError as err:
        raise ImportError(
            "the accelerate config enables DeepSpeed, but deepspeed is not installed: pip install deepspeed"
        ) from err
    t_cfg = getattr(teacher, "config", None)
    config = deepspeed_teacher_config(
        accelerator.state.deepspeed_plugin.deepspeed_config, getattr(t_cfg, "hidden_size", None)
    )
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine
