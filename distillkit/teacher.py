"""The teacher: reuse a fine-tuned classifier, or fine-tune one first (the "teacher" row of every comparison)."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from datasets import DatasetDict
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel

from .cli import UsageError, is_finished_run, resolve_output_dir
from .data import TextClassificationData
from .training import build_trainer, train_evaluate_save

logger = logging.getLogger(__name__)


@dataclass
class TeacherArguments:
    """Which teacher to distil from, and how to fine-tune it when it has no trained head for this task."""

    teacher_name_or_path: str = field(
        default="bert-base-uncased",
        metadata={
            "help": "Hub id or local directory. A fine-tuned classifier for this label set is used as it is; otherwise it is fine-tuned first."
        },
    )
    teacher_output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the fine-tuned teacher goes (and is reused from). Default: `teacher` beside --output_dir."
        },
    )
    teacher_learning_rate: float = field(default=2e-5, metadata={"help": "Learning rate of teacher fine-tuning."})
    teacher_num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs of teacher fine-tuning."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the teacher's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache models and data from the Hub."})
    model_revision: str = field(
        default="main", metadata={"help": "Hub revision (branch, tag or commit) of the teacher."}
    )


@dataclass
class TeacherPlan:
    """Where the ready teacher is (or will be), and whether it must be fine-tuned first."""

    source: str
    config: PretrainedConfig
    finetune_from: str | None = None
    resume_from_checkpoint: str | None = None

    @property
    def needs_finetuning(self) -> bool:
        return self.finetune_from is not None


def default_teacher_dir(output_dir: str) -> str:
    """`EXP/even` and `EXP/odd` share `EXP/teacher`."""
    return os.path.join(os.path.dirname(os.path.abspath(output_dir)), "teacher")


def load_config(name_or_path: str, flag: str, cache_dir: str | None = None, revision: str = "main") -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(name_or_path, cache_dir=cache_dir, revision=revision)
    except Exception as err:
        where = (
            "local directory"
            if os.path.isdir(name_or_path)
            else "Hub id (without network access pass a local directory)"
        )
        raise UsageError(
            f"{flag} {name_or_path}: cannot load a model config from this {where}: {str(err).splitlines()[0]}"
        ) from err


def has_trained_head(config: PretrainedConfig, num_labels: int) -> bool:
    """A checkpoint saved as a sequence classifier with this many labels was fine-tuned for the task."""
    archs = config.architectures or []
    return any(a.endswith("ForSequenceClassification") for a in archs) and config.num_labels == num_labels


def plan_teacher(args: TeacherArguments, teacher_dir: str, num_labels: int) -> TeacherPlan:
    """Decide, without writing anything, which teacher to use."""
    if is_finished_run(teacher_dir):
        config = load_config(teacher_dir, "--teacher_output_dir")
        if config.num_labels != num_labels:
            raise UsageError(
                f"--teacher_output_dir {teacher_dir} holds a teacher for {config.num_labels} labels but the data set has "
                f"{num_labels}; choose another --teacher_output_dir"
            )
        logger.info(f"Reusing the fine-tuned teacher in {teacher_dir}")
        return TeacherPlan(source=teacher_dir, config=config)
    config = load_config(args.teacher_name_or_path, "--teacher_name_or_path", args.cache_dir, args.model_revision)
    if has_trained_head(config, num_labels):
        logger.info(
            f"{args.teacher_name_or_path} is already a {num_labels}-label classifier: used as the teacher as it is"
        )
        return TeacherPlan(source=args.teacher_name_or_path, config=config)
    resume = resolve_output_dir(teacher_dir, overwrite_output_dir=False, resume_from_checkpoint=None)
    logger.info(
        f"{args.teacher_name_or_path} has no trained {num_labels}-label head: fine-tuning it into {teacher_dir} first"
    )
    return TeacherPlan(
        source=teacher_dir, config=config, finetune_from=args.teacher_name_or_path, resume_from_checkpoint=resume
    )


def load_classifier(
    name_or_path: str, data: TextClassificationData, cache_dir: str | None = None, revision: str = "main"
) -> PreTrainedModel:
    """A sequence classifier with this data set's labels; a missing or differently-sized head starts fresh."""
    return AutoModelForSequenceClassification.from_pretrained(
        name_or_path,
        num_labels=data.num_labels,
        id2label=data.id2label,
        label2id=data.label2id,
        ignore_mismatched_sizes=True,
        cache_dir=cache_dir,
        revision=revision,
    )


def teacher_training_args(training_args, teacher_dir: str, args: TeacherArguments):
    """The student's TrainingArguments, re-aimed at plain fine-tuning of the teacher."""
    return dataclasses.replace(
        training_args,
        output_dir=teacher_dir,
        learning_rate=args.teacher_learning_rate,
        num_train_epochs=args.teacher_num_train_epochs,
        alpha_ce=1.0,
        alpha_kl=0.0,
        alpha_cos=0.0,
        cache_teacher_logits=False,  # there is no teacher to cache for the teacher itself
        overwrite_output_dir=False,
        do_train=True,
        run_name=f"{training_args.run_name or 'run'}-teacher" if training_args.run_name else None,
    )


def finetune_classifier(
    model_name_or_path: str,
    data: TextClassificationData,
    tokenized: DatasetDict,
    tokenizer,
    training_args,
    resume_from_checkpoint: str | None,
    record: dict[str, Any],
    cache_dir: str | None = None,
    revision: str = "main",
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """Full fine-tuning of a classifier (the teacher stage, and run_finetune.py): one code path for both."""
    model = load_classifier(model_name_or_path, data, cache_dir, revision)
    model.config.training_record = record
    trainer = build_trainer(model, training_args, tokenized, tokenizer)
    results = train_evaluate_save(
        trainer, tokenized, resume_from_checkpoint, extra_results={"method": record["method"]}
    )
    return trainer.model, results
