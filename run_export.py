#!/usr/bin/env python
"""Export a trained classifier directory to ONNX (fp32, and optionally its dynamic int8 twin), checked against PyTorch.

    python run_export.py --model_dir EXP/even --output_dir EXP/even-onnx --quantize int8 \
        --dataset_name ../shared/data/wiki_toxic_small

Any directory the scripts write works: a teacher or fine-tuned model, a student, a merged LoRA model, or a LoRA
adapter (merged into its base first). The output holds model.onnx (dynamic batch and sequence axes),
model-int8.onnx with --quantize int8, the tokenizer, config.json (labels, training record), the run's results and
onnx_export.json. The fp32 logits must equal PyTorch's within --tolerance on real texts (the validation split of
--dataset_name, else a few built-in comments), or nothing is kept and the exit status is 1. With --dataset_name the
int8 model's agreement with fp32 and both F1 scores on the validation split are recorded in onnx_export.json.
The validation split is read as the model recorded reading that data set (run_record.json, as run_eval.py reads it:
distillkit/recorded_reading.py): its text and label columns, score threshold, class names, and the seed and split
percentages that carved a validation split the data set lacks; a flag given wins, with a warning. --max_seq_length
is checked against the model's position limit (max_position_embeddings) as in training.
run_eval.py and app.py take the output directory like any model directory.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from distillkit.cli import (
    UsageError,
    configure_logging,
    discard_staging_dir,
    exit_on_usage_error,
    parse_args,
    replace_directory,
    staging_dir_for,
)
from distillkit.data import DataTrainingArguments, load_text_classification_data
from distillkit.data_args import checked_max_seq_length
from distillkit.export import TOLERANCE, ExportCheckError, QuantSettings, export_classifier
from distillkit.recorded_reading import read_as_recorded
from distillkit.runtime import ONNX_FILE, is_model_dir, is_onnx_dir
from distillkit.records import ADAPTER_CONFIG, RunRecord

logger = logging.getLogger(__name__)


@dataclass
class ExportArguments:
    model_dir: str = field(
        metadata={"help": "A trained classifier directory: full model, student, merged LoRA or adapter."}
    )
    output_dir: str = field(metadata={"help": "Where model.onnx, the tokenizer, config and records go."})
    quantize: str | None = field(
        default=None, metadata={"help": "Also write the dynamic int8 twin model-int8.onnx.", "choices": ["int8"]}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Data set whose validation split checks the export and measures int8 quality (as in training)."
        },
    )
    text_column: str | None = field(
        default=None, metadata={"help": "The text column; default: as the model's run read this data set."}
    )
    label_column: str | None = field(
        default=None, metadata={"help": "The label column; default: as the model's run read this data set."}
    )
    label_columns: str | None = field(
        default=None,
        metadata={
            "help": "Multi-label data in several 0/1 (or score) columns, comma-separated; default: the columns the "
            "model's run read from this data set."
        },
    )
    label_threshold: float | None = field(
        default=None, metadata={"help": "Score → label threshold; default: the model's run's, on this data set."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Validation texts used for the check and int8 quality (default: all)."}
    )
    max_seq_length: int = field(
        default=DataTrainingArguments.max_seq_length,
        metadata={"help": "Truncation of the texts, as in training; at most the model's max_position_embeddings."},
    )
    seed: int | None = field(
        default=None,
        metadata={
            "help": "Seed of held-out splits when the data set lacks a validation file (or --max_eval_samples draws "
            "a sample). Default: the seed the model recorded."
        },
    )
    validation_split_percentage: float = field(
        default=DataTrainingArguments.validation_split_percentage,
        metadata={"help": "%% of train held out as validation when there is no validation file; default: the model's."},
    )
    test_split_percentage: float = field(
        default=DataTrainingArguments.test_split_percentage,
        metadata={"help": "%% of train held out (before validation) when there is no test file; default: the model's."},
    )
    per_channel: bool = field(default=QuantSettings.per_channel, metadata={"help": "int8: one scale per channel."})
    matmul_only: bool = field(default=QuantSettings.matmul_only, metadata={"help": "int8: quantize only MatMul."})
    embeddings: bool = field(
        default=QuantSettings.embeddings, metadata={"help": "int8, with --matmul_only: the embedding tables too."}
    )
    keep_head_fp32: bool = field(
        default=QuantSettings.keep_head_fp32, metadata={"help": "int8: pooler and classifier stay fp32."}
    )
    preprocess: str = field(
        default=QuantSettings.preprocess,
        metadata={"help": "int8: graph step before quantizing.", "choices": ["none", "pre_process", "optimizer"]},
    )
    tolerance: float = field(default=TOLERANCE, metadata={"help": "Largest |ONNX - PyTorch| logit accepted (fp32)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an existing export in --output_dir."})

    def __post_init__(self) -> None:
        if os.path.abspath(self.model_dir) == os.path.abspath(self.output_dir):
            raise UsageError(f"--output_dir {self.output_dir}: must differ from --model_dir")
        if not self.tolerance > 0:
            raise UsageError(f"--tolerance {self.tolerance}: must be more than 0")


def check_output_dir(args: ExportArguments) -> None:
    """An existing non-empty output directory is kept unless --overwrite_output_dir, which replaces a model
    directory (an export or a trained model) as a whole; a folder that holds no model is never replaced."""
    if not (os.path.isdir(args.output_dir) and os.listdir(args.output_dir)):
        if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
            raise UsageError(f"--output_dir {args.output_dir}: a file, not a directory")
        return
    if not args.overwrite_output_dir:
        raise UsageError(
            f"--output_dir {args.output_dir} is not empty; pass --overwrite_output_dir to replace it, "
            "or choose another --output_dir"
        )
    if not (is_model_dir(args.output_dir) or is_onnx_dir(args.output_dir)):
        raise UsageError(
            f"--output_dir {args.output_dir}: holds files but no model (no config.json, {ADAPTER_CONFIG} or "
            f"{ONNX_FILE}); --overwrite_output_dir replaces a model directory only: choose another --output_dir"
        )


def validation_texts(args: ExportArguments, max_seq_length: int) -> tuple[list[str] | None, np.ndarray | None]:
    """The validation split of --dataset_name, read as the model recorded reading it (read_as_recorded, as run_eval.py
    does), in its task type (go_emotions: 28 classes or 28 labels): detection alone would not find --label_columns
    data, would threshold a score column at another cut, or carve another validation split."""
    if not args.dataset_name:
        return None, None
    record = RunRecord.load(args.model_dir)
    data_args = DataTrainingArguments(
        dataset_name=args.dataset_name,
        text_column=args.text_column,
        label_column=args.label_column,
        label_columns=args.label_columns,
        label_threshold=args.label_threshold,
        problem_type=record.problem_type if record is not None else None,
        validation_split_percentage=args.validation_split_percentage,
        test_split_percentage=args.test_split_percentage,
        max_eval_samples=args.max_eval_samples,
        max_seq_length=max_seq_length,
    )
    reading = read_as_recorded([args.model_dir], data_args, args.seed, class_names=None)
    data = load_text_classification_data(reading.data_args, seed=reading.seed, class_names=reading.class_names)
    reading.check_split(data, "validation")
    split = data.splits["validation"]
    return list(split["text"]), np.asarray(split["label"], dtype=np.int64)


@exit_on_usage_error
def main(argv: list[str] | None = None) -> dict:
    (args,) = parse_args((ExportArguments,), argv)
    configure_logging(logging.WARNING)  # onnxruntime.quantization logs every tensor it skips at INFO on the root
    for name in ("__main__", "distillkit"):
        logging.getLogger(name).setLevel(logging.INFO)
    check_output_dir(args)
    max_seq_length = checked_max_seq_length([args.model_dir], args.max_seq_length)
    texts, labels = validation_texts(args, max_seq_length)
    settings = QuantSettings(
        per_channel=args.per_channel,
        matmul_only=args.matmul_only,
        embeddings=args.embeddings,
        keep_head_fp32=args.keep_head_fp32,
        preprocess=args.preprocess,
    )
    # The export is written whole beside --output_dir, then takes its place: an old directory's files (another
    # model's weights, a stale int8 twin) never stay beside the new export, and a failed export changes nothing.
    staging = staging_dir_for(args.output_dir)
    try:
        record = export_classifier(
            args.model_dir,
            staging,
            quantize=args.quantize,
            texts=texts,
            labels=labels,
            max_length=max_seq_length,
            settings=settings,
            tolerance=args.tolerance,
        )
    except ExportCheckError as err:
        discard_staging_dir(staging)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except BaseException:
        discard_staging_dir(staging)
        raise
    replace_directory(staging, args.output_dir)
    quality = record.get("int8_vs_fp32")
    logger.info(
        f"exported {args.model_dir} to {args.output_dir}: max logit difference {record['check']['max_abs_logit_diff']:.1e}"
        + (f", int8 agreement {100 * quality['agreement']:.2f}%" if quality else "")
    )
    return record


if __name__ == "__main__":
    main()
