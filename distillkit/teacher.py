"""The teacher: reuse a fine-tuned classifier, or fine-tune one first (the "teacher" row of every comparison)."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from datasets import DatasetDict
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel

from .cli import UsageError, apply_output_dir_policy, is_finished_run
from .data import TextClassificationData, same_source
from .fingerprint import fingerprint_mismatch, read_fingerprint
from .losses import GOLD_TERM, loss_terms
from .records import RunRecord
from .tasks import SINGLE_LABEL
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
    """Which teacher to distil from, and whether it must be fine-tuned first (replacing a finished teacher that does
    not match the request when `overwrite`)."""

    name_or_path: str  # the teacher: a hub id or directory (with `finetune_from`: the directory to fine-tune into)
    config: PretrainedConfig
    finetune_from: str | None = None  # the pretrained model that fine-tuning starts from
    resume_from_checkpoint: str | None = None
    overwrite: bool = False
    fingerprint: dict[str, Any] | None = None  # the request of the teacher to fine-tune (None: used as it is)

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


def has_trained_head(config: PretrainedConfig, num_labels: int, problem_type: str = SINGLE_LABEL) -> bool:
    """A checkpoint saved as a sequence classifier with this many labels, for this task type (a 28-class softmax head
    is not a 28-label sigmoid one), was fine-tuned for the task."""
    archs = config.architectures or []
    return (
        any(a.endswith("ForSequenceClassification") for a in archs)
        and config.num_labels == num_labels
        and (getattr(config, "problem_type", None) or SINGLE_LABEL) == problem_type
    )


def teacher_record(base_model: str, data: TextClassificationData, max_seq_length: int, seed: int) -> dict[str, Any]:
    """What a fine-tuned teacher records about itself (config.json `training_record`): enough for a later run to
    tell whether it may reuse it (`reuse_mismatch`)."""
    return {
        "method": "teacher",
        "base_model": base_model,
        "dataset": data.source,
        "max_seq_length": max_seq_length,
        "seed": seed,
    }


def _dataset_name(source: dict[str, Any]) -> str:
    return f"{source.get('dataset')}" + (f" ({source['config']})" if source.get("config") else "")


def _generic_names(names: list[str]) -> bool:
    """LABEL_0, LABEL_1, ...: what a run without class names calls its classes."""
    return list(names) == [f"LABEL_{i}" for i in range(len(names))]


def reuse_mismatch(
    recorded: dict[str, Any], recorded_labels: list[str], wanted: dict[str, Any], wanted_labels: list[str]
) -> str | None:
    """How a finished teacher's record differs from what this run asks for, or None when it may be reused.

    Both records are `teacher_record` dicts; the label sets are the class names in id order (generic LABEL_i names,
    from a run without --class_names, match any names of the same count). Compared: the base model it was
    fine-tuned from, the data set (name, config, label set) and --max_seq_length. A teacher from before
    max_seq_length was recorded is not refused for it.
    """
    if not recorded:
        return "it has no training record (config.json training_record), so what it was trained on is unknown"
    if not same_source(recorded.get("base_model"), wanted["base_model"]):
        return (
            f"it was fine-tuned from {recorded.get('base_model')}, this run asks for {wanted['base_model']} "
            "(--teacher_name_or_path)"
        )
    was, now = recorded.get("dataset") or {}, wanted["dataset"]
    was = was if isinstance(was, dict) else {"dataset": was}
    if not same_source(was.get("dataset"), now.get("dataset")) or was.get("config") != now.get("config"):
        return f"it was trained on the data set {_dataset_name(was)}, this run uses {_dataset_name(now)} (--dataset_name)"
    if len(recorded_labels) != len(wanted_labels) or (
        list(recorded_labels) != list(wanted_labels)
        and not (_generic_names(recorded_labels) or _generic_names(wanted_labels))
    ):
        return (
            f"its labels are {', '.join(recorded_labels)}, this run's are {', '.join(wanted_labels)} "
            "(the data set's label set or --class_names)"
        )
    for key, flag in (("text_column", "--text_column"), ("label_column", "--label_column"),
                      ("label_columns", "--label_columns"), ("label_threshold", "--label_threshold")):  # fmt: skip
        if key in was and was.get(key) != now.get(key):
            return f"it was trained with {flag} {was.get(key)}, this run asks for {now.get(key)}"
    was_type = was.get("problem_type") or recorded.get("problem_type") or SINGLE_LABEL
    if was_type != (now.get("problem_type") or SINGLE_LABEL):
        return f"it is a {was_type} model, this run's data set is {now.get('problem_type')} (--problem_type)"
    if recorded.get("max_seq_length") not in (None, wanted["max_seq_length"]):
        return (
            f"it was trained with --max_seq_length {recorded['max_seq_length']}, this run asks for "
            f"{wanted['max_seq_length']}"
        )
    return None


def plan_teacher(
    args: TeacherArguments,
    teacher_dir: str,
    data: TextClassificationData,
    max_seq_length: int,
    overwrite: bool = False,
    fingerprint: dict[str, Any] | None = None,
) -> TeacherPlan:
    """Decide, without writing anything, which teacher to use.

    A finished teacher in `teacher_dir` (or an unfinished one to resume) is used only when its record matches the
    request: its request fingerprint is `fingerprint`, the request of the teacher this run would fine-tune
    (`distillkit.fingerprint`; a teacher from before fingerprints: `reuse_mismatch`); otherwise the run stops,
    unless the requested teacher is itself a classifier for this
    label set (used as it is) or `overwrite` (--overwrite_output_dir) says to fine-tune a new teacher in its place.
    """
    num_labels = data.num_labels
    replace = False
    if is_finished_run(teacher_dir):
        config = load_config(teacher_dir, "--teacher_output_dir")
        mismatch = _teacher_mismatch(teacher_dir, config, args, data, max_seq_length, fingerprint)
        if mismatch is None:
            logger.info(f"Reusing the fine-tuned teacher in {teacher_dir}")
            return TeacherPlan(name_or_path=teacher_dir, config=config)
        requested = _try_load_config(args)
        if requested is not None and has_trained_head(requested, num_labels, data.problem_type):
            # The requested classifier is used as it is below; when it *is* teacher_dir (run_compare passes a
            # finished teacher both ways), that is no mismatch worth a warning.
            if not _same_path(teacher_dir, args.teacher_name_or_path):
                logger.warning(f"{teacher_dir} does not match this run ({mismatch}): not used")
        else:
            replace = _replace_or_refuse(teacher_dir, "a finished teacher", mismatch, overwrite)
    config = load_config(args.teacher_name_or_path, "--teacher_name_or_path", args.cache_dir, args.model_revision)
    if has_trained_head(config, num_labels, data.problem_type):
        logger.info(
            f"{args.teacher_name_or_path} is already a {num_labels}-label classifier: used as the teacher as it is"
        )
        return TeacherPlan(name_or_path=args.teacher_name_or_path, config=config)
    resume = apply_output_dir_policy(teacher_dir, overwrite_output_dir=replace, resume_from_checkpoint=None)
    if resume is not None:  # a killed fine-tuning: resume it only if it is this request's
        config = load_config(resume, "--teacher_output_dir")
        mismatch = _teacher_mismatch(resume, config, args, data, max_seq_length, fingerprint)
        if mismatch is not None:
            replace = _replace_or_refuse(teacher_dir, f"an unfinished teacher ({resume})", mismatch, overwrite)
            resume = None
    logger.info(
        f"{args.teacher_name_or_path} has no trained {num_labels}-label head: fine-tuning it into {teacher_dir} first"
    )
    return TeacherPlan(
        name_or_path=teacher_dir,
        config=config,
        finetune_from=args.teacher_name_or_path,
        resume_from_checkpoint=resume,
        overwrite=replace,
        fingerprint=fingerprint,
    )


def _same_path(a: str, b: str) -> bool:
    return os.path.isdir(b) and os.path.realpath(a) == os.path.realpath(b)


def _teacher_mismatch(
    directory: str,
    config: PretrainedConfig,
    args: TeacherArguments,
    data: TextClassificationData,
    max_seq_length: int,
    fingerprint: dict[str, Any] | None = None,
) -> str | None:
    recorded_fingerprint = read_fingerprint(directory)
    if fingerprint is not None and recorded_fingerprint:
        return fingerprint_mismatch(recorded_fingerprint, fingerprint)
    recorded_labels = [str(config.id2label[i]) for i in sorted(config.id2label)]
    wanted = teacher_record(args.teacher_name_or_path, data, max_seq_length, seed=0)
    record = RunRecord.load(directory)  # run_record.json, or an older teacher's config.json training_record
    recorded = {k: v for k, v in record.to_dict().items() if v is not None} if record else {}
    return reuse_mismatch(recorded, recorded_labels, wanted, list(data.id2label.values()))


def _replace_or_refuse(teacher_dir: str, what: str, mismatch: str, overwrite: bool) -> bool:
    """True (replace it) with --overwrite_output_dir, else the one-line error with both ways out."""
    if not overwrite:
        raise UsageError(
            f"--teacher_output_dir {teacher_dir} holds {what} that does not match this run: {mismatch}; "
            "pass another --teacher_output_dir to fine-tune a new teacher there, or --overwrite_output_dir to "
            "replace this one"
        )
    logger.warning(f"--overwrite_output_dir: replacing {what} in {teacher_dir} ({mismatch})")
    return True


def _try_load_config(args: TeacherArguments) -> PretrainedConfig | None:
    try:
        return load_config(args.teacher_name_or_path, "--teacher_name_or_path", args.cache_dir, args.model_revision)
    except UsageError:
        return None  # the mismatch is the clearer error


def load_classifier(
    name_or_path: str,
    data: TextClassificationData,
    cache_dir: str | None = None,
    revision: str = "main",
    output_loading_info: bool = False,
):
    """A sequence classifier with this data set's labels; a missing or differently-sized head starts fresh.

    `output_loading_info`: also return transformers' loading info (which keys were initialised fresh).
    """
    return AutoModelForSequenceClassification.from_pretrained(
        name_or_path,
        num_labels=data.num_labels,
        problem_type=data.problem_type,
        id2label=data.id2label,
        label2id=data.label2id,
        ignore_mismatched_sizes=True,
        cache_dir=cache_dir,
        revision=revision,
        output_loading_info=output_loading_info,
    )


def teacher_training_args(training_args, teacher_dir: str, args: TeacherArguments, overwrite: bool = False):
    """The student's TrainingArguments, re-aimed at plain fine-tuning of the teacher (`overwrite`: replacing a
    finished teacher that did not match, see `plan_teacher`)."""
    return dataclasses.replace(
        training_args,
        output_dir=teacher_dir,
        learning_rate=args.teacher_learning_rate,
        num_train_epochs=args.teacher_num_train_epochs,
        **{t.weight_flag: float(t.name == GOLD_TERM) for t in loss_terms()},  # the gold labels only
        cache_teacher_logits=False,  # there is no teacher to cache for the teacher itself
        overwrite_output_dir=overwrite,
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
    fingerprint: dict[str, Any] | None = None,
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """Full fine-tuning of a classifier (the teacher stage, and run_finetune.py): one code path for both."""
    model = load_classifier(model_name_or_path, data, cache_dir, revision)
    model.config.training_record = record
    trainer = build_trainer(model, training_args, tokenized, tokenizer)
    results = train_evaluate_save(
        trainer, tokenized, resume_from_checkpoint, extra_results={"method": record["method"]}, fingerprint=fingerprint
    )
    return trainer.model, results
