#!/usr/bin/env python
"""Distil a fine-tuned 12-layer BERT teacher into a student made of some of its layers.

    accelerate launch run_distill.py --layers even --dataset_name OxAISH-AL-LLM/wiki_toxic --output_dir EXP/even

Stage 1 (only when needed): fine-tune the teacher into EXP/teacher (reused by later runs).
Stage 2: build the student from the chosen teacher layers and train it with CE + KL + hidden-state cosine
(`--cache_teacher_logits`: the teacher's logits are computed once and the teacher does not run during training).
Any argument may also come from one .json/.yaml file: `python run_distill.py args.yaml`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from dataclasses import dataclass, field

from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, PreTrainedModel, set_seed

from distill_trainer import DistillationTrainingArguments
from distillkit.cli import UsageError, exit_on_usage_error, parse_args
from distillkit.data import DataTrainingArguments
from distillkit.data_args import check_max_seq_length
from distillkit.layer_plot import PLOT_FILE as LAYER_PLOT
from distillkit.layer_plot import plot_layer_scores
from distillkit.fingerprint import fingerprint_digest, model_identity, request_fingerprint
from distillkit.layer_selection import (
    AUTO,
    DEFAULT_PROBE_STEPS,
    DEFAULT_TRAIN_ROWS,
    MAX_VALIDATION_ROWS,
    MIN_VALIDATION_ROWS,
    SEARCH,
    check_num_student_layers,
    choose_layers,
    default_validation_rows,
    search_layers,
)
from distillkit.students import NAMED_LAYER_CHOICES, build_student, layer_stack, select_layers
from distillkit.teacher import (
    TeacherArguments,
    default_teacher_dir,
    finetune_classifier,
    plan_teacher,
    teacher_record,
    teacher_training_args,
)
from distillkit.training import (
    build_trainer,
    load_tokenized,
    resume_or_skip,
    rows_trained,
    start_run,
    train_evaluate_save,
)

logger = logging.getLogger(__name__)


@dataclass
class StudentArguments:
    layers: str = field(
        default="even",
        metadata={
            "help": "Teacher layers the student keeps (1-based): odd, even, top, bottom, spread, a list like 2,4,6, "
            "auto (scored on the fine-tuned teacher and this data set), or search (greedy removal with short "
            "distillation probes: costs several students' training); see distillkit/layer_selection.py."
        },
    )
    student_num_layers: int | None = field(
        default=None,
        metadata={
            "help": "Depth for the named choices and auto (default: half the teacher's layers).",
            "aliases": ["--num_student_layers"],
        },
    )
    layer_selection_train_rows: int = field(
        default=DEFAULT_TRAIN_ROWS,
        metadata={"help": "--layers auto: training rows (a seeded sample) its Block Influence is on."},
    )
    layer_selection_validation_rows: int | None = field(
        default=None,
        metadata={
            "help": "--layers auto/search: validation rows (a seeded sample) its skip-one-layer metric / its probes "
            f"are scored on (default for auto: a fortieth of the rows the student trains on, within "
            f"[{MIN_VALIDATION_ROWS}, {MAX_VALIDATION_ROWS}]; for search: {MAX_VALIDATION_ROWS})."
        },
    )
    layer_search_probe_steps: int = field(
        default=DEFAULT_PROBE_STEPS,
        metadata={
            "help": "--layers search: optimizer steps of each probe student, on a seeded sample of that many "
            "batches of the training split (the same sample for every probe)."
        },
    )


def probe_training_args(training_args: DistillationTrainingArguments, steps: int, output_dir: str):
    """The run's arguments for a `--layers search` probe: its steps, nothing saved, logged or evaluated."""
    return dataclasses.replace(
        training_args,
        output_dir=output_dir,
        max_steps=steps,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to=[],
        push_to_hub=False,
        load_best_model_at_end=False,
        cache_teacher_logits=False,  # each probe sees its rows once: a cache would cost a teacher pass more
        disable_tqdm=True,
        run_name=None,
    )


def distill_probe(teacher: PreTrainedModel, layers: list[int], rows, tokenizer, probe_args) -> PreTrainedModel:
    """A student of `layers` distilled from `teacher` on `rows` for the probe's steps, by the run's own trainer."""
    set_seed(probe_args.seed)
    student = build_student(teacher, layers)
    trainer = build_trainer(student, probe_args, {"train": rows, "validation": rows}, tokenizer, teacher, layers)
    trainer.train()
    return trainer.model


@exit_on_usage_error
def main(argv: list[str] | None = None) -> dict:
    teacher_args, student_args, data_args, training_args = parse_args(
        (TeacherArguments, StudentArguments, DataTrainingArguments, DistillationTrainingArguments), argv
    )
    # Everything below up to training only reads: bad input fails before anything is written.
    data_args = check_max_seq_length([teacher_args.teacher_name_or_path], data_args)
    resume_from, data = start_run(training_args, data_args, teacher_args.cache_dir)
    teacher_dir = teacher_args.teacher_output_dir or default_teacher_dir(training_args.output_dir)
    teacher_training = teacher_training_args(training_args, teacher_dir, teacher_args)
    teacher_request = request_fingerprint("teacher", teacher_args.teacher_name_or_path, data, data_args, teacher_training)
    plan = plan_teacher(
        teacher_args,
        teacher_dir,
        data,
        data_args.max_seq_length,
        overwrite=training_args.overwrite_output_dir,
        fingerprint=teacher_request,
    )
    teacher_depth = plan.config.num_hidden_layers
    chooser = student_args.layers.strip().lower()
    auto = chooser in (AUTO, SEARCH)
    if auto:  # chosen once the fine-tuned teacher exists; a bad depth fails now
        auto_k = check_num_student_layers(student_args.student_num_layers, teacher_depth)
        if student_args.layer_selection_validation_rows is None:
            trained = rows_trained(training_args, len(data.splits["train"]))
            # search's probes cost far more than scoring them: no reason to score on a small, noisy sample
            student_args.layer_selection_validation_rows = (
                MAX_VALIDATION_ROWS if chooser == SEARCH else default_validation_rows(trained)
            )
        flags = ["layer_selection_validation_rows"]
        flags += ["layer_search_probe_steps"] if chooser == SEARCH else ["layer_selection_train_rows"]
        for flag in flags:
            if getattr(student_args, flag) < 1:
                raise UsageError(f"--{flag} {getattr(student_args, flag)}: must be at least 1")
        # The choice is a deterministic function of the teacher, the data and these flags: the request names them.
        requested_layers = {"layers": f"{chooser}:{auto_k}", **{flag: getattr(student_args, flag) for flag in flags}}
    else:
        layers = select_layers(student_args.layers, teacher_depth, student_args.student_num_layers)
        logger.info(f"student: teacher layers {layers} of {teacher_depth}")
        requested_layers = {"layers": layers}
    method = chooser if auto else student_args.layers if student_args.layers in NAMED_LAYER_CHOICES else "custom"
    # The teacher this student learns from: the one about to be fine-tuned, or the one used as it is.
    teacher_id = fingerprint_digest(plan.fingerprint) if plan.needs_finetuning else model_identity(plan.name_or_path)
    fingerprint = request_fingerprint(method, None, data, data_args, training_args, teacher=teacher_id, **requested_layers)
    done = resume_or_skip(training_args.output_dir, resume_from, fingerprint)
    if done is not None:
        return done

    tokenizer_source = teacher_args.tokenizer_name or (plan.finetune_from or plan.name_or_path)
    tokenizer, tokenized = load_tokenized(tokenizer_source, data, data_args, training_args, teacher_args.cache_dir)

    # Stage 1: the teacher.
    if plan.needs_finetuning:
        teacher, _ = finetune_classifier(
            plan.finetune_from,
            data,
            tokenized,
            tokenizer,
            teacher_training_args(training_args, teacher_dir, teacher_args, overwrite=plan.overwrite),
            plan.resume_from_checkpoint,
            record=teacher_record(plan.finetune_from, data, data_args.max_seq_length, training_args.seed),
            cache_dir=teacher_args.cache_dir,
            revision=teacher_args.model_revision,
            fingerprint=plan.fingerprint,
        )
    else:
        teacher = AutoModelForSequenceClassification.from_pretrained(
            plan.name_or_path, cache_dir=teacher_args.cache_dir
        )
    layer_stack(teacher)  # fails early, with the supported list, for an architecture we cannot cut
    selection = None
    if chooser == SEARCH:
        with tempfile.TemporaryDirectory(prefix="layer_search_") as scratch:  # probes save nothing; Trainer wants a dir
            probe_args = probe_training_args(training_args, student_args.layer_search_probe_steps, scratch)
            selection = search_layers(
                teacher,
                tokenized["train"],
                tokenized["validation"],
                DataCollatorWithPadding(tokenizer),
                auto_k,
                distill_probe=lambda layers, rows: distill_probe(teacher, layers, rows, tokenizer, probe_args),
                probe_steps=probe_args.max_steps,
                train_rows=rows_trained(probe_args, 0),  # steps × the global batch: each row seen once
                validation_rows=student_args.layer_selection_validation_rows,
                batch_size=training_args.per_device_eval_batch_size,
                device=str(training_args.device),
                seed=training_args.seed,
            )
    elif auto:
        selection = choose_layers(
            teacher,
            tokenized["train"],
            tokenized["validation"],
            DataCollatorWithPadding(tokenizer),
            auto_k,
            train_rows=student_args.layer_selection_train_rows,
            validation_rows=student_args.layer_selection_validation_rows,
            batch_size=training_args.per_device_eval_batch_size,
            device=str(training_args.device),
            seed=training_args.seed,
        )
    if selection is not None:
        layers = selection.chosen
        if training_args.should_save:  # the card links it; written beside the weights
            plot_layer_scores(selection.to_dict(), os.path.join(training_args.output_dir, LAYER_PLOT))
        logger.info(f"student: teacher layers {layers} of {teacher_depth}, chosen in {selection.seconds:.1f} s")

    # Stage 2: the student.
    set_seed(training_args.seed)
    student = build_student(teacher, layers)
    # The data set's class names: a reused teacher may have been saved with generic LABEL_i names.
    student.config.id2label, student.config.label2id = data.id2label, data.label2id
    student.config.training_record = {
        "method": method,
        "teacher": plan.name_or_path,
        "teacher_base_model": plan.finetune_from or plan.name_or_path,
        "layers": layers,
        "teacher_num_layers": plan.config.num_hidden_layers,
        **training_args.loss_record(),
        **({"cache_teacher_logits": True} if training_args.cache_teacher_logits else {}),
        "max_seq_length": data_args.max_seq_length,
        "dataset": data.source,
        "seed": training_args.seed,
        **({"layer_selection": selection.to_dict()} if selection is not None else {}),
    }
    trainer = build_trainer(student, training_args, tokenized, tokenizer, teacher_model=teacher, layer_map=layers)
    extra = {"method": method, "layers": layers, "teacher": plan.name_or_path}
    if selection is not None:  # beside train_runtime: the cost of choosing vs the cost of training
        extra["layer_selection_seconds"] = selection.seconds
    return train_evaluate_save(trainer, tokenized, resume_from, extra_results=extra, fingerprint=fingerprint)


if __name__ == "__main__":
    main()
