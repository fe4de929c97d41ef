"""Loading, cleaning, splitting and tokenising text-classification data sets.

Every script goes through `load_text_classification_data` (hub id or local file/directory, presets for the
toxic-comment sets our users name) and `tokenize_splits`. All validation happens here, before any script
writes anything.
"""

from __future__ import annotations

import codecs
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Sequence, Value, load_dataset
from transformers import PreTrainedTokenizerBase

from .cli import UsageError

logger = logging.getLogger(__name__)

TEXT_COLUMN_CANDIDATES = ("text", "comment_text", "sentence")
LABEL_COLUMN_CANDIDATES = ("label", "labels")
SPLIT_ALIASES = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}
LOCAL_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}

GO_EMOTIONS_LABELS = (
    "admiration", "amusement", "anger", "annoyance", "approval", "caring", "confusion", "curiosity",
    "desire", "disappointment", "disapproval", "disgust", "embarrassment", "excitement", "fear",
    "gratitude", "grief", "joy", "love", "nervousness", "optimism", "pride", "realization", "relief",
    "remorse", "sadness", "surprise", "neutral",
)  # fmt: skip


@dataclass(frozen=True)
class DatasetPreset:
    """How to read one of the data sets our users name. Columns missing from a local copy are detected."""

    text_column: str
    label_column: str
    config_name: str | None = None
    revision: str | None = None
    label_names: tuple[str, ...] | None = None
    threshold_column: str | None = None  # a float score turned into 0/1 by --label_threshold
    binary_positive: str | None = None  # a multi-way ClassLabel collapsed to "this class vs the rest"
    first_of_list: bool = False  # a multi-label list column reduced to its first label


PRESETS: dict[str, DatasetPreset] = {
    # datasets >= 4 refuses wiki_toxic's loading script; the Hub's parquet conversion has the same rows.
    "OxAISH-AL-LLM/wiki_toxic": DatasetPreset(
        "comment_text", "label", revision="refs/convert/parquet", label_names=("non-toxic", "toxic")
    ),
    "hate_speech18": DatasetPreset("text", "label", label_names=("noHate", "hate"), binary_positive="hate"),
    "google/civil_comments": DatasetPreset(
        "text", "toxicity", label_names=("non-toxic", "toxic"), threshold_column="toxicity"
    ),
    "go_emotions": DatasetPreset(
        "text", "labels", config_name="simplified", label_names=GO_EMOTIONS_LABELS, first_of_list=True
    ),
}
PRESETS["civil_comments"] = PRESETS["google/civil_comments"]
PRESETS["google-research-datasets/go_emotions"] = PRESETS["go_emotions"]
PRESETS["odegiber/hate_speech18"] = PRESETS["hate_speech18"]


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
    label_threshold: float | None = field(
        default=None,
        metadata={
            "help": "Turn a numeric score column (e.g. civil_comments' `toxicity`) into label 1 when score >= threshold. Default 0.5 for civil_comments."
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


@dataclass
class TextClassificationData:
    """Clean train/validation/test splits with a `text` and an integer `label` column."""

    splits: DatasetDict
    num_labels: int
    label_names: list[str] | None
    source: dict

    @property
    def id2label(self) -> dict[int, str]:
        names = self.label_names or [f"LABEL_{i}" for i in range(self.num_labels)]
        return dict(enumerate(names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}


def find_preset(dataset_name: str) -> DatasetPreset | None:
    """A hub id matches its preset; a local copy by its file or directory name (`.../wiki_toxic`, `wiki_toxic_small`)."""
    if dataset_name in PRESETS:
        return PRESETS[dataset_name]
    if os.path.exists(dataset_name):
        stem = os.path.splitext(os.path.basename(os.path.normpath(dataset_name)))[0]
        # `wiki_toxic_small` is a sample of wiki_toxic: a name that starts with a preset's is that data set.
        matches = [key for key in PRESETS if stem == key.split("/")[-1] or stem.startswith(key.split("/")[-1] + "_")]
        if matches:
            return PRESETS[max(matches, key=len)]
    return None


def _local_data_files(path: str) -> tuple[str, dict[str, str], dict]:
    """The datasets builder and split → file mapping for a local file or directory."""
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext not in LOCAL_FORMATS:
            raise UsageError(
                f"--dataset_name {path}: unsupported file type {ext!r}; expected one of {', '.join(LOCAL_FORMATS)}"
            )
        return LOCAL_FORMATS[ext], {"train": path}, {"delimiter": "\t"} if ext == ".tsv" else {}
    files: dict[str, str] = {}
    for name in sorted(os.listdir(path)):
        stem, ext = os.path.splitext(name)
        for split, aliases in SPLIT_ALIASES.items():
            if stem.lower() in aliases and ext.lower() in LOCAL_FORMATS and split not in files:
                files[split] = os.path.join(path, name)
    if "train" not in files:
        raise UsageError(
            f"--dataset_name {path}: no train file found; expected train.csv / train.jsonl / train.parquet "
            f"(plus optional validation.* and test.*), found: {', '.join(sorted(os.listdir(path))) or 'nothing'}"
        )
    exts = {os.path.splitext(f)[1].lower() for f in files.values()}
    if len({LOCAL_FORMATS[e] for e in exts}) > 1:
        raise UsageError(f"--dataset_name {path}: split files mix formats ({', '.join(sorted(exts))}); use one format")
    ext = exts.pop()
    return LOCAL_FORMATS[ext], files, {"delimiter": "\t"} if ext == ".tsv" else {}


def load_raw_splits(args: DataTrainingArguments, cache_dir: str | None = None) -> DatasetDict:
    """Load the data set as it is, from a local path or the Hub. A Hub failure is an error, never a fallback."""
    name = args.dataset_name
    if os.path.exists(name):
        builder, files, kwargs = _local_data_files(name)
        if builder in ("csv", "json"):
            kwargs["encoding"] = args.encoding
            for path in files.values():
                _check_encoding(path, args.encoding)
        for split, path in files.items():
            if builder == "csv":
                with open(path, encoding=args.encoding) as f:
                    if sum(1 for line in f if line.strip()) <= 1:
                        raise UsageError(f"split {split!r} is empty: {path} has no data rows")
        try:
            return load_dataset(builder, data_files=files, cache_dir=cache_dir, **kwargs)
        except Exception as err:  # malformed files: say which, in one line
            raise UsageError(f"--dataset_name {name}: could not read {builder} files: {_first_line(err)}") from err
    preset = PRESETS.get(name)
    config = args.dataset_config_name or (preset.config_name if preset else None)
    revision = args.dataset_revision or (preset.revision if preset else None)
    try:
        return load_dataset(name, config, revision=revision, cache_dir=cache_dir)
    except Exception as err:
        raise UsageError(
            f"--dataset_name {name}: could not load it from the Hugging Face Hub ({_first_line(err)}); "
            "without network access pass a local directory or CSV/JSONL/Parquet file"
        ) from err


def _check_encoding(path: str, encoding: str) -> None:
    """Decode the whole file up front: the CSV/JSON readers' own error names neither the file nor the byte."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                # The decoder may hold back the start of a multi-byte sequence from the previous chunk.
                held = len(err.object) - len(chunk)
                position = offset + err.start - held
                raise UsageError(
                    f"{path} is not valid {encoding} text: byte 0x{err.object[err.start]:02x} at byte offset "
                    f"{position} ({err.reason}); pass --encoding with the file's encoding (e.g. --encoding latin-1 "
                    f"or cp1252), or re-encode the file to UTF-8"
                ) from None
            if not chunk:
                return
            offset += len(chunk)


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def _normalise_split_names(raw: DatasetDict) -> DatasetDict:
    out = {}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            if alias in raw:
                out[split] = raw[alias]
                break
    if "train" not in out:
        raise UsageError(f"the data set has no train split (it has: {', '.join(raw.keys())})")
    return DatasetDict(out)


def _choose_column(
    columns: list[str], explicit: str | None, preferred: str | None, candidates: tuple[str, ...], kind: str, flag: str
) -> str | None:
    if explicit is not None:
        if explicit not in columns:
            raise UsageError(f"{flag} {explicit}: no such column; the data set has columns: {', '.join(columns)}")
        return explicit
    for name in ((preferred,) if preferred else ()) + candidates:
        if name in columns:
            return name
    return None


def _is_numeric(feature) -> bool:
    return isinstance(feature, Value) and (
        feature.dtype.startswith(("float", "int", "uint")) or feature.dtype == "bool"
    )


def _labels_as_int(values: list, keep: np.ndarray, column: str, split: str) -> np.ndarray:
    """Class ids for the kept rows (-1 elsewhere). Floats pass only when whole: CSV readers turn 1 into 1.0."""
    ids = np.full(len(values), -1, dtype=np.int64)
    for row in np.flatnonzero(keep):
        value = values[row]
        if isinstance(value, (bool, np.bool_, int, np.integer)):
            ids[row] = int(value)
        elif isinstance(value, (float, np.floating)) and float(value).is_integer():
            ids[row] = int(value)
        else:
            raise UsageError(
                f"label column {column!r} in split {split!r} holds {value!r} (row {row}), not an integer class id; "
                "use --label_threshold for a score column, --label_column for another column"
            )
    return ids


def load_text_classification_data(
    args: DataTrainingArguments, seed: int, cache_dir: str | None = None, class_names: list[str] | None = None
) -> TextClassificationData:
    """Load, clean, validate and split the data set; raise `UsageError` on anything wrong with it.

    `class_names` (from --label_names) override the names found in the data set or its preset.
    """
    raw = _normalise_split_names(load_raw_splits(args, cache_dir))
    preset = find_preset(args.dataset_name)
    columns = raw["train"].column_names
    features = raw["train"].features

    text_column = _choose_column(
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

    # A score column is thresholded when the user asks (--label_threshold) or the preset says so.
    threshold_column = None
    if args.label_threshold is not None:
        threshold_column = args.label_column or (preset.threshold_column if preset else None) or "toxicity"
        if threshold_column not in columns:
            raise UsageError(
                f"--label_threshold needs a numeric score column; {threshold_column!r} is not one of the columns: "
                f"{', '.join(columns)}; pass --label_column"
            )
    elif args.label_column is None and preset and preset.threshold_column in columns:
        threshold_column = preset.threshold_column
    if threshold_column is not None:
        label_column = threshold_column
        threshold = 0.5 if args.label_threshold is None else args.label_threshold
    else:
        label_column = _choose_column(
            columns,
            args.label_column,
            preset.label_column if preset else None,
            LABEL_COLUMN_CANDIDATES,
            "label",
            "--label_column",
        )
        threshold = None
    if label_column is None:
        raise UsageError(
            f"no label column found (looked for {', '.join(LABEL_COLUMN_CANDIDATES)}); "
            f"the data set has columns: {', '.join(columns)}; pass --label_column"
        )
    if label_column == text_column:
        raise UsageError(f"the text and label columns are both {label_column!r}; pass --text_column / --label_column")

    label_feature = features[label_column]
    label_names: list[str] | None = None
    binary_from: list[str] | None = None
    if threshold is not None:
        if not _is_numeric(label_feature):
            raise UsageError(
                f"--label_threshold: column {label_column!r} is not numeric ({getattr(label_feature, 'dtype', label_feature)}); "
                "a threshold needs a score column such as civil_comments' toxicity"
            )
        if preset and preset.label_names and len(preset.label_names) == 2:
            label_names = list(preset.label_names)
    elif isinstance(label_feature, ClassLabel):
        if preset and preset.binary_positive in label_feature.names and label_feature.num_classes > 2:
            binary_from = list(label_feature.names)
            label_names = list(preset.label_names) if preset.label_names else ["rest", preset.binary_positive]
        else:
            label_names = list(label_feature.names)
    elif isinstance(label_feature, (Sequence, list)) or (
        preset and preset.first_of_list and label_column == preset.label_column
    ):
        inner = (
            label_feature.feature
            if isinstance(label_feature, Sequence)
            else (label_feature[0] if isinstance(label_feature, list) else None)
        )
        if isinstance(inner, ClassLabel):
            label_names = list(inner.names)
    if label_names is None and preset and preset.label_names and threshold is None:
        label_names = list(preset.label_names)
    declared_by = "the data set's class names" if label_names else ""
    if class_names:
        label_names = list(class_names)
        declared_by = "--label_names"

    splits: dict[str, Dataset] = {}
    label_ids: dict[str, np.ndarray] = {}
    label_rows: dict[str, np.ndarray] = {}  # the kept rows' positions in the split as read, for error messages
    for split, ds in raw.items():
        missing = [c for c in (text_column, label_column) if c not in ds.column_names]
        if missing:
            raise UsageError(
                f"split {split!r} has no column {missing[0]!r}; it has columns: {', '.join(ds.column_names)}"
            )
        texts = list(ds[text_column])  # datasets 5 returns a lazy Column
        keep = np.array([isinstance(t, str) and t.strip() != "" for t in texts], dtype=bool)
        dropped = int((~keep).sum())
        if dropped:
            logger.warning(f"split {split!r}: dropped {dropped} of {len(ds)} rows with an empty or missing text")
        if not keep.any():
            raise UsageError(f"split {split!r} has no rows with a non-empty text in column {text_column!r}")
        raw_labels = list(ds[label_column])
        if threshold is not None:
            scores = np.array([np.nan if v is None else v for v in raw_labels], dtype=np.float64)
            bad = keep & ~np.isfinite(scores)
            if bad.any():
                raise UsageError(
                    f"score column {label_column!r} in split {split!r} has a missing value (row {int(np.flatnonzero(bad)[0])})"
                )
            labels = (scores >= threshold).astype(np.int64)
        elif isinstance(label_feature, Sequence) or (raw_labels and isinstance(raw_labels[0], list)):
            empty = [i for i, v in enumerate(raw_labels) if keep[i] and not v]
            if empty:
                raise UsageError(
                    f"label list column {label_column!r} in split {split!r} has an empty list (row {empty[0]})"
                )
            labels = _labels_as_int([v[0] if v else None for v in raw_labels], keep, label_column, split)
        else:
            labels = _labels_as_int(raw_labels, keep, label_column, split)
        if binary_from is not None:
            positive = binary_from.index(preset.binary_positive)
            original = labels
            labels = (original == positive).astype(np.int64)
        else:
            original = None
        columns_out = {"text": [t for t, k in zip(texts, keep) if k], "label": labels[keep].tolist()}
        if original is not None:
            columns_out["label_original"] = [binary_from[i] for i in original[keep]]
        splits[split] = Dataset.from_dict(columns_out)
        label_ids[split] = labels[keep]
        label_rows[split] = np.flatnonzero(keep)

    if label_names:
        num_labels = len(label_names)
    else:
        num_labels = _classes_of_train_split(label_ids["train"], label_rows["train"])
        declared_by = "the train split's labels"
    _check_label_ids(label_ids, label_rows, num_labels, declared_by)

    class_label = (
        ClassLabel(num_classes=num_labels, names=label_names) if label_names else ClassLabel(num_classes=num_labels)
    )
    data = DatasetDict({split: ds.cast_column("label", class_label) for split, ds in splits.items()})
    data = _add_missing_splits(data, args, seed)
    data = _subsample(data, args, seed)
    for split, ds in data.items():
        if len(ds) == 0:
            raise UsageError(f"split {split!r} is empty; lower --max_*_samples or raise the split percentages")

    source = {
        "dataset": args.dataset_name,
        "config": args.dataset_config_name or (preset.config_name if preset else None),
        "text_column": text_column,
        "label_column": label_column,
        "label_threshold": threshold,
        "rows": {split: len(ds) for split, ds in data.items()},
        **({"encoding": args.encoding} if codecs.lookup(args.encoding).name != "utf-8" else {}),
    }
    logger.info(f"data: {source}")
    return TextClassificationData(splits=data, num_labels=num_labels, label_names=label_names, source=source)


def _classes_of_train_split(ids: np.ndarray, rows: np.ndarray) -> int:
    """The number of classes when nothing names them: ids 0..max of the train split, which must leave no gap.

    A binary train split may lack one class; beyond two classes an unused id means the count is a guess (one stray
    `5` in a 0/1 file would otherwise make a 6-class model).
    """
    present = sorted({int(i) for i in ids if i >= 0})
    num_labels = max(2, (present[-1] + 1) if present else 2)
    missing = sorted(set(range(num_labels)) - set(present))
    if num_labels > 2 and missing:
        value = next(i for i in present if i > missing[0])
        row = int(rows[np.flatnonzero(ids == value)[0]])
        raise UsageError(
            f"split 'train', row {row}: label {value} leaves class id(s) {', '.join(map(str, missing))} unused "
            f"(ids present: {', '.join(map(str, present))}), so the number of classes is unclear; fix the label, or "
            f"pass --label_names with one name per class (e.g. {num_labels} names for ids 0..{num_labels - 1})"
        )
    return num_labels


def _check_label_ids(
    label_ids: dict[str, np.ndarray], label_rows: dict[str, np.ndarray], num_labels: int, declared_by: str
) -> None:
    """Every split's labels lie in the declared label set [0, num_labels): one stray id is an error, not a class."""
    for split, ids in label_ids.items():
        bad = np.flatnonzero((ids < 0) | (ids >= num_labels))
        if bad.size:
            raise UsageError(
                f"split {split!r}, row {int(label_rows[split][bad[0]])}: label {int(ids[bad[0]])} is outside "
                f"the label set [0, {num_labels}) (from {declared_by}); labels must be class ids "
                "(fix the row, or check --label_column / --label_names)"
            )


def _split_off(ds: Dataset, size: int, percentage: float, seed: int, what: str) -> tuple[Dataset, Dataset]:
    if size >= len(ds):
        raise UsageError(f"train has {len(ds)} rows: too few to hold out {percentage}% as {what}")
    try:
        parts = ds.train_test_split(test_size=size, seed=seed, stratify_by_column="label")
    except ValueError as err:  # a class too rare to stratify: say so, split at random
        logger.warning(f"cannot stratify the {what} split ({_first_line(err)}); splitting at random")
        parts = ds.train_test_split(test_size=size, seed=seed)
    return parts["train"], parts["test"]


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
