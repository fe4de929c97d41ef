"""Loading, cleaning, splitting and tokenising text-classification data sets.

Every script goes through `load_text_classification_data` (hub id or local file/directory, presets for the
toxic-comment sets our users name) and `tokenize_splits`. All validation happens here, before any script
writes anything. Its steps live beside it: the flags (data_args), the presets (data_presets), reading the raw
files (data_files) and the labels (data_labels).
"""

from __future__ import annotations

import codecs
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict
from transformers import PreTrainedTokenizerBase

from .cli import UsageError
# DataTrainingArguments: every script imports it from here, with load_text_classification_data.
from .data_args import TEXT_COLUMN_CANDIDATES, DataTrainingArguments
from .data_files import first_line, load_raw_splits, normalise_split_names
from .data_labels import (
    check_label_ids,
    choose_column,
    classes_of_train_split,
    label_features,
    label_ids_of,
    labels_as_int,
    pick_label_source,
    read_labels,
)
from .data_presets import DatasetPreset, matching_preset
from .tasks import MULTI_LABEL, SINGLE_LABEL, multi_hot

logger = logging.getLogger(__name__)


@dataclass
class TextClassificationData:
    """Clean train/validation/test splits with a `text` and a `label` column: a class id (single-label), or a 0/1
    float per label (multi-label)."""

    splits: DatasetDict
    num_labels: int
    label_names: list[str] | None
    source: dict
    problem_type: str = SINGLE_LABEL
    # The splits whose rows the seed chose, and how (carved from train, or a seeded sample): a reader scoring one of
    # them must use the seed the model trained with, or its training rows end up among the held-out ones.
    seeded_splits: dict[str, str] = field(default_factory=dict)
    # The held-out splits carved from train (no file of their own): their rows, and train's, also depend on the
    # --validation_split_percentage / --test_split_percentage they were carved with.
    carved_splits: tuple[str, ...] = ()

    @property
    def multi_label(self) -> bool:
        return self.problem_type == MULTI_LABEL

    @property
    def id2label(self) -> dict[int, str]:
        names = self.label_names or [f"LABEL_{i}" for i in range(self.num_labels)]
        return dict(enumerate(names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}


def _pick_text_column(columns: list[str], args: DataTrainingArguments, preset: DatasetPreset | None) -> str:
    text_column = choose_column(
        columns,
        args.text_column,
        preset.text_column if preset else None,
        TEXT_COLUMN_CANDIDATES,
        "text",
        "--text_column",
    )
    if text_column is None:
        raise UsageError(
            f"no text column found (looked for {', '.join(TEXT_COLUMN_CANDIDATES)}); "
            f"the data set has columns: {', '.join(columns)}; pass --text_column"
        )
    return text_column


def _clean_texts(ds: Dataset, split: str, text_column: str) -> tuple[list, np.ndarray]:
    """The split's texts and which rows to keep: an empty or missing text is dropped with a warning."""
    texts = list(ds[text_column])  # datasets 5 returns a lazy Column
    keep = np.array([isinstance(t, str) and t.strip() != "" for t in texts], dtype=bool)
    dropped = int((~keep).sum())
    if dropped:
        logger.warning(f"split {split!r}: dropped {dropped} of {len(ds)} rows with an empty or missing text")
    if not keep.any():
        raise UsageError(f"split {split!r} has no rows with a non-empty text in column {text_column!r}")
    return texts, keep


def same_source(recorded: Any, wanted: Any) -> bool:
    """The same hub id, or the same local file/directory however its path is spelled."""
    if recorded == wanted:
        return True
    paths = [str(x) for x in (recorded, wanted) if x is not None]
    return len(paths) == 2 and all(os.path.exists(p) for p in paths) and os.path.samefile(*paths)


def trained_label_flags(dataset_record: dict, dataset_name: str | None) -> dict[str, Any]:
    """The text/label flags that read `dataset_name` as a run did (its record's `dataset`, written by
    `load_text_classification_data`): its text column, its label column(s) and score threshold. None for each flag
    on another data set. The label column is named even where detection would find it: a data set may hold several
    (`label` and `label_b`), and the model learnt the one it recorded."""
    flags: dict[str, Any] = dict.fromkeys(("text_column", "label_column", "label_columns", "label_threshold"))
    if dataset_name is None or not same_source(dataset_record.get("dataset"), dataset_name):
        return flags
    flags["text_column"] = dataset_record.get("text_column")
    if dataset_record.get("label_columns"):
        flags["label_columns"] = ",".join(dataset_record["label_columns"])
        flags["label_threshold"] = dataset_record.get("label_threshold")
    else:
        flags["label_column"] = dataset_record.get("label_column")
        flags["label_threshold"] = dataset_record.get("label_threshold")  # a thresholded score column
    return flags


def load_text_classification_data(
    args: DataTrainingArguments, seed: int, cache_dir: str | None = None, class_names: list[str] | None = None
) -> TextClassificationData:
    """Load, clean, validate and split the data set; raise `UsageError` on anything wrong with it.

    The steps: read the splits → pick the text and label columns (and the task type) → clean the texts → read the
    labels and check them against the label set → add missing splits → subsample. `class_names` (--class_names)
    override the names found in the data set or its preset.
    """
    raw = normalise_split_names(load_raw_splits(args, cache_dir))
    preset = matching_preset(args.dataset_name, raw["train"])
    text_column = _pick_text_column(raw["train"].column_names, args, preset)
    source = pick_label_source(raw["train"], args, preset, text_column)
    if source.names:
        source.declared_by = source.declared_by or "the data set's class names"
    own_names = list(source.names) if source.names else None  # the data set's (or its preset's) class names
    if class_names:
        source.names, source.declared_by = list(class_names), "--class_names"

    texts_by_split: dict[str, list[str]] = {}
    labels_by_split: dict[str, np.ndarray | list[list[int]]] = {}
    originals: dict[str, list[str]] = {}  # hate_speech18: the 4-way class name before "hate vs the rest"
    label_ids: dict[str, np.ndarray] = {}
    label_rows: dict[str, np.ndarray] = {}  # each checked id's row in the split as read, for error messages
    for split, ds in raw.items():
        texts, keep = _clean_texts(ds, split, text_column)
        labels = read_labels(ds, split, source, keep)
        texts_by_split[split] = [t for t, k in zip(texts, keep) if k]
        kept = np.flatnonzero(keep)
        labels_by_split[split] = labels[keep] if isinstance(labels, np.ndarray) else [labels[r] for r in kept]
        label_ids[split], label_rows[split] = label_ids_of(labels, keep)
        if source.binary_from is not None:
            original = labels_as_int(list(ds[source.columns[0]]), keep, source.columns[0], split)
            originals[split] = [source.binary_from[i] for i in original[keep]]

    if class_names:
        check_class_name_count(list(class_names), own_names, source, label_ids)
    if source.names:
        num_labels = len(source.names)
    else:
        num_labels = classes_of_train_split(label_ids["train"], label_rows["train"])
        source.declared_by = "the train split's labels"
    check_label_ids(label_ids, label_rows, num_labels, source.declared_by)

    splits = {}
    for split, labels in labels_by_split.items():
        columns_out: dict[str, list] = {"text": texts_by_split[split]}
        if source.multi_label:
            columns_out["label"] = multi_hot(labels, num_labels).tolist()
        else:
            columns_out["label"] = labels.tolist()
        if split in originals:
            columns_out["label_original"] = originals[split]
        splits[split] = Dataset.from_dict(columns_out, features=label_features(source, num_labels, columns_out))
    seeded_splits = {}
    carved_splits = tuple(split for split in ("test", "validation") if split not in splits)
    for split in carved_splits:
        seeded_splits[split] = seeded_splits["train"] = f"no {split} file: held out from train with the seed"
    data = _add_missing_splits(DatasetDict(splits), args, seed)
    data = _subsample(data, args, seed)
    for split, flag in (("train", "max_train_samples"), ("validation", "max_eval_samples"), ("test", "max_test_samples")):
        if split not in seeded_splits and len(data[split]) < len(splits.get(split, data[split])):
            seeded_splits[split] = f"--{flag} {getattr(args, flag)}: a sample drawn with the seed"
    for split, ds in data.items():
        if len(ds) == 0:
            raise UsageError(f"split {split!r} is empty; lower --max_*_samples or raise the split percentages")

    record = {
        "dataset": args.dataset_name,
        "config": args.dataset_config_name or (preset.config_name if preset else None),
        "text_column": text_column,
        "label_column": source.columns[0] if source.form != "columns" else None,
        "label_threshold": source.threshold,
        "problem_type": source.problem_type,
        **({"label_columns": source.columns} if source.form == "columns" else {}),
        "rows": {split: len(ds) for split, ds in data.items()},
        "class_counts": {split: class_counts(ds, num_labels, source.multi_label) for split, ds in data.items()},
        **({"encoding": args.encoding} if codecs.lookup(args.encoding).name != "utf-8" else {}),
    }
    logger.info(f"data: {record}")
    names = source.names or [f"LABEL_{i}" for i in range(num_labels)]
    for split, counts in record["class_counts"].items():  # imbalance is the first thing to know about toxic data
        n = record["rows"][split]
        shares = ", ".join(f"{names[i] if i < len(names) else i} {c:,} ({c / n:.1%})" for i, c in enumerate(counts))
        logger.info(f"{split}: {n:,} rows; {'texts per label' if source.multi_label else 'classes'}: {shares}")
    if not source.multi_label:
        warn_one_class_splits(record["class_counts"], names)
    return TextClassificationData(
        splits=data,
        num_labels=num_labels,
        label_names=source.names,
        source=record,
        problem_type=source.problem_type,
        seeded_splits=seeded_splits,
        carved_splits=carved_splits,
    )


def warn_one_class_splits(counts_by_split: dict[str, list[int]], names: list[str]) -> None:
    """A split holding one class only trains a model that learns that class alone (train), or scores nothing but it
    (validation/test: the decision tuning, F1 of the other classes and ROC-AUC mean nothing there): say so."""
    consequence = {
        "train": "the model can only learn to predict it; check --label_column / --label_threshold",
        "validation": "decision tuning and per-class validation metrics mean little on it",
        "test": "the other classes' F1 and ROC-AUC cannot be measured on it",
    }
    for split, counts in counts_by_split.items():
        present = [i for i, c in enumerate(counts) if c]
        if len(present) == 1:
            name = names[present[0]] if present[0] < len(names) else str(present[0])
            logger.warning(
                f"split {split!r} holds one class only: {name} (class {present[0]}, all {counts[present[0]]:,} rows); "
                f"{consequence.get(split, 'its metrics mean little')}"
            )


def check_class_name_count(
    class_names: list[str], own_names: list[str] | None, source: Any, label_ids: dict[str, np.ndarray]
) -> None:
    """--class_names names every class the data holds, no more: extra names would build a model with classes no row
    has (`a,b,c` on binary data: a 3-class model). Fewer names than ids is caught by `check_label_ids`."""
    given = len(class_names)
    if own_names is not None and len(own_names) != given:
        raise UsageError(
            f"--class_names gives {given} names ({', '.join(class_names)}) but the data set names {len(own_names)} "
            f"classes ({', '.join(map(str, own_names))}); give one name per class"
        )
    if source.form == "columns":  # named by its columns (checked above); its values are 0/1, not class ids
        return
    ids = [int(i) for ids in label_ids.values() for i in np.asarray(ids).ravel() if i >= 0]
    present = max(2, max(ids) + 1) if ids else 2
    if given > present:
        raise UsageError(
            f"--class_names gives {given} names ({', '.join(class_names)}) but the data's labels are ids "
            f"0..{present - 1} ({present} classes); give one name per class"
        )


def _split_off(ds: Dataset, size: int, percentage: float, seed: int, what: str) -> tuple[Dataset, Dataset]:
    if size >= len(ds):
        raise UsageError(f"train has {len(ds)} rows: too few to hold out {percentage}% as {what}")
    if not isinstance(ds.features["label"], ClassLabel):  # multi-label rows: no single class to stratify by
        parts = ds.train_test_split(test_size=size, seed=seed)
        return parts["train"], parts["test"]
    try:
        parts = ds.train_test_split(test_size=size, seed=seed, stratify_by_column="label")
    except ValueError as err:  # a class too rare to stratify: say so, split at random
        logger.warning(f"cannot stratify the {what} split ({first_line(err)}); splitting at random")
        parts = ds.train_test_split(test_size=size, seed=seed)
    return parts["train"], parts["test"]


def class_counts(ds: Dataset, num_labels: int, multi_label: bool) -> list[int]:
    """Rows per class (multi-label: rows carrying each label), in label-id order."""
    labels = np.asarray(ds["label"])
    if multi_label:
        return [int(c) for c in labels.sum(axis=0)] if len(labels) else [0] * num_labels
    return [int(c) for c in np.bincount(labels.astype(int), minlength=num_labels)]


def _add_missing_splits(data: DatasetDict, args: DataTrainingArguments, seed: int) -> DatasetDict:
    splits = dict(data)
    # Both percentages are of the original train split.
    n = len(splits["train"])
    if "test" not in splits:
        size = max(1, math.floor(n * args.test_split_percentage / 100))
        splits["train"], splits["test"] = _split_off(splits["train"], size, args.test_split_percentage, seed, "test")
        logger.info(f"no test split: held out {len(splits['test'])} stratified rows of train (seed {seed})")
    if "validation" not in splits:
        size = max(1, math.floor(n * args.validation_split_percentage / 100))
        splits["train"], splits["validation"] = _split_off(
            splits["train"], size, args.validation_split_percentage, seed, "validation"
        )
        logger.info(f"no validation split: held out {len(splits['validation'])} stratified rows of train (seed {seed})")
    return DatasetDict({k: splits[k] for k in ("train", "validation", "test")})


def _subsample(data: DatasetDict, args: DataTrainingArguments, seed: int) -> DatasetDict:
    limits = {"train": args.max_train_samples, "validation": args.max_eval_samples, "test": args.max_test_samples}
    out = {}
    for split, ds in data.items():
        limit = limits[split]
        out[split] = ds.shuffle(seed=seed).select(range(limit)) if limit is not None and limit < len(ds) else ds
    return DatasetDict(out)


def tokenize_splits(
    data: TextClassificationData,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    num_proc: int | None = None,
    load_from_cache_file: bool = True,
) -> DatasetDict:
    """Tokenise every split once, truncated and unpadded (batches are padded by the collator)."""
    max_length = min(max_seq_length, tokenizer.model_max_length)

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    return data.splits.map(
        tokenize,
        batched=True,
        num_proc=num_proc,
        remove_columns=[c for c in data.splits["train"].column_names if c != "label"],
        load_from_cache_file=load_from_cache_file,
        desc="Tokenizing",
    )
