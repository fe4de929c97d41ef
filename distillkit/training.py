"""What every script starts with (logging, output directory, seed, data, tokens) and the train → evaluate → test →
save flow it ends with, with the records it leaves behind."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
from datasets import DatasetDict
from transformers import (
    AutoTokenizer,
    EvalPrediction,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import PredictionOutput

from .cli import FINISHED_MARKER, UsageError, apply_output_dir_policy, clear_previous_run, setup_logging
from .data import DataTrainingArguments, TextClassificationData, load_text_classification_data, tokenize_splits
from .fingerprint import FingerprintCallback, check_same_request
from .hub import defer_push_to_hub, push_run, wants_push
from .metrics import never_predicted, never_predicted_warning
from .integrity import tokenizer_fingerprint
from .model_card import write_model_card
from .records import RunRecord
from .students import count_parameters
from .decision import RULE_KEY
from .tasks import Task, parse_class_weights, should_tune_decision, trainer_metrics
from .trainer import DistillationTrainer, DistillationTrainingArguments

logger = logging.getLogger(__name__)


def start_run(
    training_args: DistillationTrainingArguments, data_args: DataTrainingArguments, cache_dir: str | None = None
) -> tuple[str | None, TextClassificationData]:
    """Logging, the output-directory decision, the seed and the data: how every script starts.

    Returns (checkpoint to resume from or None, the data). Only reads: bad input fails here before anything is
    written. The data is loaded by the main process first, so the others reuse its datasets cache.
    """
    setup_logging(training_args)
    resume_from = apply_output_dir_policy(
        training_args.output_dir,
        training_args.overwrite_output_dir,
        training_args.resume_from_checkpoint,
        skip_if_finished=getattr(training_args, "skip_if_finished", False),
    )
    set_seed(training_args.seed)
    with training_args.main_process_first(desc="loading the data set"):
        data = load_text_classification_data(
            data_args, seed=training_args.seed, cache_dir=cache_dir, class_names=training_args.class_names
        )
    check_class_weights(getattr(training_args, "class_weights", "none"), data)
    return resume_from, data


def check_class_weights(spec: str, data: TextClassificationData) -> None:
    """--class_weights against the data it weights (one per class, every class in train for `balanced`): the
    trainer resolves them once the model is built, too late for a one-line error."""
    try:
        parse_class_weights(spec, np.asarray(data.splits["train"]["label"]), data.num_labels, data.multi_label)
    except ValueError as err:
        raise UsageError(str(err)) from None


def rows_trained(args: TrainingArguments, train_rows: int) -> int:
    """How many rows the run will train on, repeats counted: steps × the global batch when `--max_steps` is given
    (it overrides the epochs), else the training split's rows × the epochs."""
    if args.max_steps > 0:
        return args.max_steps * args.train_batch_size * args.gradient_accumulation_steps * args.world_size
    return round(train_rows * args.num_train_epochs)


def resume_or_skip(output_dir: str, resume_from: str | None, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """Use what `start_run` found in --output_dir only if this very request made it (`check_same_request`).

    A checkpoint of another request is a one-line error naming the differing fields. A finished run
    (--skip_if_finished) of this request returns its results (the caller skips training); of another, an error.
    None: train (fresh, or resuming the checked checkpoint).
    """
    if resume_from is None:
        return None
    if os.path.normpath(os.path.abspath(resume_from)) == os.path.normpath(os.path.abspath(output_dir)):
        check_same_request(
            output_dir, fingerprint, "--output_dir", "pass --overwrite_output_dir to replace it, or choose another --output_dir"
        )
        logger.warning(f"skipped: {output_dir} holds a finished run of this very request")
        with open(os.path.join(output_dir, FINISHED_MARKER)) as f:
            return {**json.load(f), "skipped": True}
    check_same_request(
        resume_from,
        fingerprint,
        "checkpoint",
        "resume it with the command that started it, or pass --overwrite_output_dir to start afresh",
    )
    return None


def load_tokenized(
    tokenizer_name_or_path: str,
    data: TextClassificationData,
    data_args: DataTrainingArguments,
    training_args: DistillationTrainingArguments,
    cache_dir: str | None = None,
) -> tuple[PreTrainedTokenizerBase, DatasetDict]:
    """The tokenizer and every split tokenised with it (by the main process first)."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name_or_path, cache_dir=cache_dir)
    with training_args.main_process_first(desc="tokenizing"):
        tokenized = tokenize_splits(
            data,
            tokenizer,
            data_args.max_seq_length,
            data_args.preprocessing_num_workers,
            not data_args.overwrite_cache,
        )
    return tokenizer, tokenized


def train_evaluate_save(
    trainer: Trainer,
    tokenized: DatasetDict,
    resume_from_checkpoint: str | None,
    extra_results: dict[str, Any] | None = None,
    push: bool = True,
    fingerprint: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (resuming if asked), save the model, evaluate on validation and test, write the records.

    With --push_to_hub the finished run is pushed last; `push=False` leaves that to a caller that saves more
    first (a LoRA run's merged model), so a failed push never costs it a file.

    `all_results.json`, written last, marks the run as finished; `trainer_state.json` keeps the loss history.
    `fingerprint` (distillkit/fingerprint.py), the request, goes into every checkpoint and the run record.
    """
    args = trainer.args
    results: dict[str, Any] = {}
    if fingerprint is not None:
        if resume_from_checkpoint:  # the scripts check before anything is trained; this guards every other caller
            check_same_request(resume_from_checkpoint, fingerprint, "checkpoint", "pass --overwrite_output_dir")
        trainer.add_callback(FingerprintCallback(fingerprint))
    if getattr(args, "overwrite_output_dir", False) and resume_from_checkpoint is None and args.should_save:
        clear_previous_run(args.output_dir)
    tuning = None  # the validation predictions the thresholds were tuned on, if they were
    if args.do_train:
        if resume_from_checkpoint:
            logger.warning(f"Resuming training from {resume_from_checkpoint}")
        train_result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        tuning = decide_thresholds(trainer, tokenized["validation"])
        # The rule the model decides by, tuned or not: the run record and the report show it.
        task = Task.from_config(trainer.model.config)
        results[RULE_KEY] = task.rule.to_dict()
        if tuning is not None:  # an adapter has no config.json of its own: its loader reads these
            results["decision_thresholds"] = task.thresholds
            results["decision_logit_offsets"] = task.offsets
        trainer.save_model()  # model (safetensors), config (with the task and its thresholds) and tokenizer
        metrics = dict(train_result.metrics, train_samples=len(tokenized["train"]))
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics, combined=False)
        trainer.save_state()
        results.update(metrics)
    if args.do_eval:
        if tuning is not None:  # the model already ran over validation to tune: score those logits, not again
            metrics = score_at_tuned_thresholds(trainer, tuning)
        else:
            metrics = trainer.evaluate(eval_dataset=tokenized["validation"], metric_key_prefix="eval")
        metrics["eval_samples"] = len(tokenized["validation"])
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics, combined=False)
        results.update(metrics)
    checked = {"validation": tuning} if tuning is not None else {}
    if args.do_predict:
        output = trainer.predict(tokenized["test"], metric_key_prefix="test")
        checked["test"] = output
        metrics = output.metrics
        metrics["test_samples"] = len(tokenized["test"])
        trainer.log_metrics("test", metrics)
        trainer.save_metrics("test", metrics, combined=False)
        results.update(metrics)
    task = Task.from_config(trainer.model.config)
    run_name = os.path.basename(os.path.normpath(args.output_dir))
    for split, output in checked.items():  # a class the rule never picks has F1 0: say so at the end of the run
        missing = never_predicted_classes(task, trainer.model.config, output)
        if missing:
            results[f"never_predicted_{split}"] = missing
            what = "label" if task.multi_label else "class"
            logger.warning(never_predicted_warning(run_name, missing, split, what))
    trainable, total = count_parameters(trainer.model)
    results.update({"trainable_params": trainable, "total_params": total})
    class_weights = getattr(trainer, "class_weight_record", None) if args.do_train else None
    if class_weights:
        results["class_weights"] = class_weights
    results.update(extra_results or {})
    if args.should_save:
        adapter = hasattr(trainer.model, "peft_config")  # a PEFT adapter: its results say what it is
        record = RunRecord.from_model(trainer.model, results if adapter else None)
        record.class_weights = class_weights or record.class_weights
        if trainer.processing_class is not None:  # the tokenizer saved beside the model: loaders check it is the one
            record.tokenizer = tokenizer_fingerprint(trainer.processing_class)
        record.fingerprint = fingerprint or {}
        record.save(args.output_dir)
        with open(os.path.join(args.output_dir, FINISHED_MARKER), "w") as f:
            json.dump(results, f, indent=2, sort_keys=True, default=str)
        write_model_card(args.output_dir)  # README.md from the records just written
    if push and wants_push(args):
        push_run(args)  # last: a failed push leaves the finished run on disk
    return results


def decide_thresholds(trainer: Trainer, validation) -> PredictionOutput | None:
    """--tune_decision (on by default): the decision rule that maximises the task's primary metric on the
    validation split (distillkit/decision.py), written onto the model's config (`decision_thresholds` or
    `decision_logit_offsets`, read back by `Task.from_config`) before it is saved; returns the validation
    predictions it was tuned on (None when not tuning). The validation scores that follow are then optimistic for
    the tuned decision; the test split is the unbiased one."""
    task = Task.from_config(trainer.model.config)
    requested = getattr(trainer.args, "tune_decision", getattr(trainer.args, "tune_thresholds", None))
    if not should_tune_decision(requested, task, has_validation=len(validation) > 0):
        task.rule = type(task.rule).default(task.problem_type, task.num_labels)
        task.save_to_config(trainer.model.config)  # a base's saved rule does not outlive retraining
        return None
    output = trainer.predict(validation, metric_key_prefix="eval")
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    rule = task.tune(task.probabilities(logits), np.asarray(output.label_ids))
    task.save_to_config(trainer.model.config)
    logger.info(f"decision rule tuned on the validation split ({len(validation)} rows): {rule.describe()}")
    return output


def never_predicted_classes(task: Task, config: Any, output: PredictionOutput) -> list[str]:
    """The classes (labels) present in `output`'s gold labels that the model's saved decision rule never predicts."""
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    preds = task.predict(task.probabilities(np.asarray(logits)))
    names = [str(config.id2label.get(i, i)) for i in range(task.num_labels)]
    return never_predicted(np.asarray(output.label_ids), preds, names)


def score_at_tuned_thresholds(trainer: Trainer, tuning: PredictionOutput) -> dict[str, float]:
    """The `eval_*` metrics `trainer.evaluate` would return, from the tuning pass's own validation predictions
    rescored at the thresholds just tuned (its loss and speed are the same pass's), logged as evaluate logs them."""
    rescored = trainer.compute_metrics(EvalPrediction(predictions=tuning.predictions, label_ids=tuning.label_ids))
    metrics = {**tuning.metrics, **{f"eval_{k}": v for k, v in rescored.items()}}
    trainer.log(metrics)
    return metrics


def build_trainer(
    model,
    training_args,
    tokenized: DatasetDict,
    tokenizer,
    teacher_model=None,
    layer_map: list[int] | None = None,
    data_collator=None,
    **kwargs: Any,
) -> Trainer:
    """A `DistillationTrainer` on our splits, with our metrics (no teacher = fine-tuning).

    Batches are padded dynamically unless `data_collator` says otherwise (bench/train_throughput.py times the
    references' pad-to-max-length recipe through it).
    """
    from transformers import DataCollatorWithPadding

    if data_collator is None:
        # Multiples of 8 let fp16/bf16 kernels use tensor cores; on fp32 exact lengths pad least.
        pad_to = 8 if (training_args.fp16 or training_args.bf16) else None
        data_collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to)
    return DistillationTrainer(
        model=model,
        args=defer_push_to_hub(training_args),  # see distillkit/hub.py: we push once, at the end
        teacher_model=teacher_model,
        layer_map=layer_map,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        data_collator=data_collator,
        compute_metrics=trainer_metrics(model),
        **kwargs,
    )
