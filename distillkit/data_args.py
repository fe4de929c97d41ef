"""The data flags every script takes (`DataTrainingArguments`), checked as they are parsed."""

from __future__ import annotations

import codecs
import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field

from .cli import UsageError
from .tasks import normalize_problem_type

logger = logging.getLogger(__name__)


TEXT_COLUMN_CANDIDATES = ("text", "comment_text", "sentence")


LABEL_COLUMN_CANDIDATES = ("label", "labels")


@dataclass
class DataTrainingArguments:
    """Which data to train and evaluate on, and how to read it."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A Hub data set id, or a local CSV/TSV/JSONL/Parquet file, or a directory of train/validation/test files."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub data set's configuration."})
    dataset_revision: str | None = field(
        default=None, metadata={"help": "Hub revision (branch, tag or commit) of the data set."}
    )
    text_column: str | None = field(
        default=None,
        metadata={"help": f"Text column; detected from {', '.join(TEXT_COLUMN_CANDIDATES)} when not given."},
    )
    label_column: str | None = field(
        default=None,
        metadata={"help": f"Label column; detected from {', '.join(LABEL_COLUMN_CANDIDATES)} when not given."},
    )
    label_columns: str | None = field(
        default=None,
        metadata={
            "help": "Multi-label data in several 0/1 (or 0–1 score) columns, comma-separated (Jigsaw: "
            "toxic,severe_toxic,obscene,threat,insult,identity_hate); each becomes one label."
        },
    )
    label_threshold: float | None = field(
        default=None,
        metadata={
            "help": "Turn a numeric score column (e.g. civil_comments' `toxicity`) into label 1 when score >= threshold, "
            "and --label_columns scores into labels. Default 0.5."
        },
    )
    problem_type: str | None = field(
        default=None,
        metadata={
            "help": "single_label or multi_label (or transformers' names, single_label_classification / "
            "multi_label_classification). Detected when not given: a label column of id lists (or comma-separated "
            "ids) or --label_columns is multi-label; go_emotions' preset keeps its first-label, 28-class form unless "
            "multi_label is asked for."
        },
    )
    validation_split_percentage: float = field(
        default=10.0, metadata={"help": "%% of train held out (stratified, seeded) when there is no validation split."}
    )
    test_split_percentage: float = field(
        default=10.0, metadata={"help": "%% of train held out (stratified, seeded) when there is no test split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep a seeded random subset of train."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep a seeded random subset of validation."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Keep a seeded random subset of test."})
    max_seq_length: int = field(
        default=128, metadata={"help": "Longer texts are truncated; batches are padded dynamically."}
    )
    encoding: str = field(
        default="utf-8",
        metadata={"help": "Text encoding of local CSV/TSV/JSON files (e.g. latin-1, cp1252); Parquet needs none."},
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-tokenise instead of using the datasets cache."})

    def __post_init__(self) -> None:
        if self.dataset_name is None:
            raise UsageError(
                "--dataset_name is required: a Hub id (e.g. OxAISH-AL-LLM/wiki_toxic) or a local file/directory"
            )
        for name in ("validation_split_percentage", "test_split_percentage"):
            value = getattr(self, name)
            if not 0 < value < 100:
                raise UsageError(f"--{name} {value}: must be between 0 and 100")
        if self.problem_type is not None:
            try:
                self.problem_type = normalize_problem_type(self.problem_type)
            except ValueError as err:
                raise UsageError(str(err)) from None
        if self.label_columns is not None and self.label_column is not None:
            raise UsageError("give --label_column (one column) or --label_columns (several 0/1 columns), not both")
        # A threshold outside (0, 1) (or nan, which fails every comparison) puts every label in one class.
        if self.label_threshold is not None and not 0 < self.label_threshold < 1:
            raise UsageError(
                f"--label_threshold {self.label_threshold}: must be between 0 and 1 (exclusive); a score >= it is label 1"
            )
        if self.max_seq_length < 2:
            raise UsageError(f"--max_seq_length {self.max_seq_length}: must be at least 2")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise UsageError(f"--encoding {self.encoding}: not a known text encoding (e.g. utf-8, latin-1, cp1252)") from None
        for name in ("max_train_samples", "max_eval_samples", "max_test_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name} {value}: must be a positive number of rows")


def position_limit(path: str) -> int | None:
    """The most tokens a model takes (its config's max_position_embeddings; an adapter's base's), None if unknown."""
    if not os.path.exists(path):  # a hub id
        return None
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    for name in ("config.json", "adapter_config.json"):
        config_path = os.path.join(folder, name)
        if not os.path.isfile(config_path):
            continue
        with open(config_path) as f:
            config = json.load(f)
        if name == "config.json" and config.get("max_position_embeddings"):
            return int(config["max_position_embeddings"])
        base = config.get("base_model_name_or_path")
        if name == "adapter_config.json" and base and os.path.isdir(base):
            return position_limit(base)
    return None


def checked_max_seq_length(model_dirs: list[str], wanted: int) -> int:
    """`wanted` (a --max_seq_length) within every model's position limit (every script that trains, scores or exports
    checks it here): a value given above it is an error, not a silent cap at the tokenizer's limit while the record
    says the value given; the default (`DataTrainingArguments.max_seq_length`, taken as not given) is lowered to the
    smallest limit, with a warning, so small models run without a flag. A hub id (no local config) is not checked."""
    limits = {path: limit for path in model_dirs if (limit := position_limit(path)) is not None}
    if not limits:
        return wanted
    path, limit = min(limits.items(), key=lambda item: item[1])
    if wanted <= limit:
        return wanted
    if wanted != DataTrainingArguments.max_seq_length:
        raise UsageError(
            f"--max_seq_length {wanted}: {path} takes at most {limit} tokens (max_position_embeddings); "
            f"pass --max_seq_length {limit} or less"
        )
    logger.warning(f"--max_seq_length {limit}: the default {wanted} is more than {path} takes (max_position_embeddings)")
    return limit


def check_max_seq_length(model_dirs: list[str], data_args: DataTrainingArguments) -> DataTrainingArguments:
    """`data_args` with its --max_seq_length checked by `checked_max_seq_length`."""
    length = checked_max_seq_length(model_dirs, data_args.max_seq_length)
    return data_args if length == data_args.max_seq_length else dataclasses.replace(data_args, max_seq_length=length)
