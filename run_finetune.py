#!/usr/bin/env python
"""Fully fine-tune a classifier on the task: the "teacher" row of every comparison.

    python run_finetune.py --model_name_or_path bert-base-uncased --dataset_name hate_speech18 --output_dir EXP/teacher

run_distill.py runs this same code path as its stage 1 when its teacher has no trained head.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill_trainer import DistillationTrainingArguments
from distillkit.cli import ModelArguments, UsageError, exit_on_usage_error, parse_args
from distillkit.data import DataTrainingArguments
from distillkit.data_args import check_max_seq_length
from distillkit.fingerprint import request_fingerprint
from distillkit.losses import flag_list, teacher_terms
from distillkit.teacher import finetune_classifier, load_config, teacher_record
from distillkit.trainer import with_loss_weight_fields
from distillkit.training import load_tokenized, resume_or_skip, start_run


@dataclass
@with_loss_weight_fields(teacher_default=0.0, teacher_help="Must stay 0: there is no teacher here.")
class FinetuneTrainingArguments(DistillationTrainingArguments):
    """Plain fine-tuning: the same arguments with the teacher's terms off."""


@exit_on_usage_error
def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_args(
        (ModelArguments, DataTrainingArguments, FinetuneTrainingArguments), argv
    )
    if training_args.uses_teacher:
        raise UsageError(f"run_finetune.py has no teacher: {flag_list(teacher_terms())} must be 0 (use run_distill.py)")
    data_args = check_max_seq_length([model_args.model_name_or_path], data_args)
    resume_from, data = start_run(training_args, data_args, model_args.cache_dir)
    load_config(model_args.model_name_or_path, "--model_name_or_path", model_args.cache_dir, model_args.model_revision)
    fingerprint = request_fingerprint("teacher", model_args.model_name_or_path, data, data_args, training_args)
    done = resume_or_skip(training_args.output_dir, resume_from, fingerprint)
    if done is not None:
        return done
    tokenizer, tokenized = load_tokenized(
        model_args.tokenizer_name or model_args.model_name_or_path, data, data_args, training_args, model_args.cache_dir
    )
    _, results = finetune_classifier(
        model_args.model_name_or_path,
        data,
        tokenized,
        tokenizer,
        training_args,
        resume_from,
        record=teacher_record(model_args.model_name_or_path, data, data_args.max_seq_length, training_args.seed),
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        fingerprint=fingerprint,
    )
    return results


if __name__ == "__main__":
    main()
