"""The distillation trainer's public import path: `from distill_trainer import DistillationTrainer`.

The code lives in `distillkit/trainer.py`, so the package never imports a top-level script; this file keeps the
name users, the README and the scripts import it by.
"""

from distillkit.deepspeed_teacher import deepspeed_teacher_config, prepare_deepspeed_teacher
from distillkit.trainer import (
    DistillationTrainer,
    DistillationTrainingArguments,
    LogAtCheckpoints,
    whole_run_train_loss,
)

__all__ = [
    "DistillationTrainer",
    "DistillationTrainingArguments",
    "LogAtCheckpoints",
    "deepspeed_teacher_config",
    "prepare_deepspeed_teacher",
    "whole_run_train_loss",
]
