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
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value, load_dataset
from transformers import PreTrainedTokenizerBase

from .cli import UsageError
from .tasks import MULTI_LABEL, SINGLE_LABEL, multi_hot, normalize_problem_type

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
    """Clean train/validation/test splits with a `text` and a `label` column: a class id (single-label), or a 0/1
    float per label (multi-label)."""

    splits: DatasetDict
    num_labels: int
    label_names: list[str] | None
    source: dict
    problem_type: str = SINGLE_LABEL

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
        whole_float = isinstance(value, (float, np.floating)) and float(value).is_integer()
        if isinstance(value, (bool, np.bool_, int, np.integer)) or whole_float:
            ids[row] = int(value)
        else:
            raise UsageError(
                f"label column {column!r} in split {split!r} holds {value!r} (row {row}), not an integer class id; "
                "use --label_threshold for a score column, --label_column for another column"
            )
    return ids


_ID_LIST = re.compile(r"^\s*\[?\s*(\d+\s*(,\s*\d+\s*)*)?\]?\s*$")


def _is_id_list(value: object) -> bool:
    """A list of label ids, or its text form ("3,17", "[3, 17]"), as go_emotions' `labels` column holds."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return True
    return isinstance(value, str) and "," in value and bool(_ID_LIST.match(value))


def _label_lists(values: list, keep: np.ndarray, column: str, split: str) -> list[list[int]]:
    """Label-id lists for the kept rows ([] elsewhere); a list, "3,17" or a single id per row."""
    out: list[list[int]] = [[] for _ in values]
    for row in np.flatnonzero(keep):
        value = values[row]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue  # no label: a clean comment in a multi-label set
        if isinstance(value, str):
            if not _ID_LIST.match(value):
                raise UsageError(
                    f"label column {column!r} in split {split!r} holds {value!r} (row {row}), not a list of label ids"
                )
            items: list = [v for v in value.strip().strip("[]").split(",") if v.strip()]
            value = [int(v) for v in items]
        elif not isinstance(value, (list, tuple, np.ndarray)):
            value = [value]
        out[row] = [int(i) for i in _labels_as_int(list(value), np.ones(len(value), bool), column, split)]
    return out


@dataclass
class LabelSource:
    """Where the labels come from and what they mean: step 2 of loading, decided once from the train split."""

    columns: list[str]  # one label column, or several 0/1 (or score) columns for multi-label data
    problem_type: str
    form: str  # "ids", "lists" (one column of label-id lists), "score" (one thresholded column), "columns"
    threshold: float | None = None
    names: list[str] | None = None
    declared_by: str = ""
    binary_from: list[str] | None = None  # a multi-way ClassLabel collapsed to "positive vs the rest"
    positive: str | None = None
    first_of_list: bool = False  # single-label from a list column: its first label (go_emotions' 28-class form)

    @property
    def multi_label(self) -> bool:
        return self.problem_type == MULTI_LABEL


def _pick_text_column(columns: list[str], args: DataTrainingArguments, preset: DatasetPreset | None) -> str:
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
    return text_column


def _pick_label_source(
    train: Dataset, args: DataTrainingArguments, preset: DatasetPreset | None, text_column: str
) -> LabelSource:
    """Which column(s) hold the labels, in which form, and the task type (detected unless --problem_type says)."""
    columns, features = train.column_names, train.features
    asked = args.problem_type  # normalised by DataTrainingArguments
    if args.label_columns:
        names = [c.strip() for c in args.label_columns.split(",") if c.strip()]
        for name in names:
            if name not in columns:
                raise UsageError(f"--label_columns: no column {name!r}; the data set has columns: {', '.join(columns)}")
            if not _is_numeric(features[name]):
                raise UsageError(f"--label_columns: column {name!r} is not numeric 0/1 or a 0–1 score")
        if asked == SINGLE_LABEL or len(names) < 2:
            raise UsageError("--label_columns names the 0/1 columns of a multi-label task: give two or more")
        if text_column in names:
            raise UsageError(f"--label_columns includes the text column {text_column!r}")
        threshold = 0.5 if args.label_threshold is None else args.label_threshold
        return LabelSource(names, MULTI_LABEL, "columns", threshold, names, "--label_columns")

    # A score column is thresholded when the user asks (--label_threshold) or the preset says so.
    score_column = None
    if args.label_threshold is not None:
        score_column = args.label_column or (preset.threshold_column if preset else None) or "toxicity"
        if score_column not in columns:
            raise UsageError(
                f"--label_threshold needs a numeric score column; {score_column!r} is not one of the columns: "
                f"{', '.join(columns)}; pass --label_column"
            )
    elif args.label_column is None and preset and preset.threshold_column in columns:
        score_column = preset.threshold_column
    if score_column is not None:
        if not _is_numeric(features[score_column]):
            raise UsageError(
                f"--label_threshold: column {score_column!r} is not numeric "
                f"({getattr(features[score_column], 'dtype', features[score_column])}); "
                "a threshold needs a score column such as civil_comments' toxicity"
            )
        if asked == MULTI_LABEL:
            raise UsageError("--problem_type multi_label: one thresholded score column is a binary task")
        names = list(preset.label_names) if preset and preset.label_names and len(preset.label_names) == 2 else None
        threshold = 0.5 if args.label_threshold is None else args.label_threshold
        return LabelSource([score_column], SINGLE_LABEL, "score", threshold, names)

    label_column = _choose_column(
        columns, args.label_column, preset.label_column if preset else None, LABEL_COLUMN_CANDIDATES, "label",
        "--label_column",
    )  # fmt: skip
    if label_column is None:
        raise UsageError(
            f"no label column found (looked for {', '.join(LABEL_COLUMN_CANDIDATES)}); "
            f"the data set has columns: {', '.join(columns)}; pass --label_column"
        )
    if label_column == text_column:
        raise UsageError(f"the text and label columns are both {label_column!r}; pass --text_column / --label_column")
    feature = features[label_column]
    if isinstance(feature, ClassLabel):
        if preset and preset.binary_positive in feature.names and feature.num_classes > 2 and asked != MULTI_LABEL:
            names = list(preset.label_names) if preset.label_names else ["rest", preset.binary_positive]
            return LabelSource(
                [label_column], SINGLE_LABEL, "ids", names=names, binary_from=list(feature.names),
                positive=preset.binary_positive,
            )  # fmt: skip
        return LabelSource([label_column], asked or SINGLE_LABEL, "ids", names=list(feature.names))
    values = [v for v in train[label_column][:1000] if v is not None]
    is_list = isinstance(feature, (Sequence, list)) or any(_is_id_list(v) for v in values)
    preset_list = bool(preset and preset.first_of_list and label_column == preset.label_column)
    names = list(preset.label_names) if preset and preset.label_names else None
    inner = feature.feature if isinstance(feature, Sequence) else (feature[0] if isinstance(feature, list) else None)
    if isinstance(inner, ClassLabel):
        names = list(inner.names)
    if is_list or preset_list:
        # go_emotions' preset keeps its 28-class first-label form unless multi-label is asked for.
        problem_type = asked or (SINGLE_LABEL if preset_list else MULTI_LABEL)
        first_of_list = preset_list and problem_type == SINGLE_LABEL
        return LabelSource([label_column], problem_type, "lists", names=names, first_of_list=first_of_list)
    return LabelSource([label_column], asked or SINGLE_LABEL, "ids", names=names)


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


def _read_labels(ds: Dataset, split: str, source: LabelSource, keep: np.ndarray) -> np.ndarray | list[list[int]]:
    """Class ids (single-label, one per row) or label-id lists (multi-label, one list per row) of one split."""
    for column in source.columns:
        if column not in ds.column_names:
            raise UsageError(f"split {split!r} has no column {column!r}; it has columns: {', '.join(ds.column_names)}")
    if source.form in ("score", "columns"):
        columns = [np.array([np.nan if v is None else v for v in ds[c]], np.float64) for c in source.columns]
        scores = np.stack(columns, axis=1)
        bad = keep[:, None] & ~np.isfinite(scores)
        if bad.any():
            row, col = (int(i[0]) for i in np.nonzero(bad))
            raise UsageError(f"score column {source.columns[col]!r} in split {split!r} has a missing value (row {row})")
        hits = scores >= source.threshold
        if source.form == "score":
            return hits[:, 0].astype(np.int64)
        return [np.flatnonzero(r).tolist() for r in hits]
    column = source.columns[0]
    raw = list(ds[column])
    if source.form == "ids":
        ids = _labels_as_int(raw, keep, column, split)
        if source.binary_from is not None:
            return (ids == source.binary_from.index(source.positive)).astype(np.int64)
        return [[int(i)] for i in ids] if source.multi_label else ids
    lists = _label_lists(raw, keep, column, split)
    if source.multi_label:
        return lists
    for row in np.flatnonzero(keep):
        if not lists[row]:
            raise UsageError(f"label list column {column!r} in split {split!r} has an empty list (row {row})")
        if len(lists[row]) > 1 and not source.first_of_list:
            raise UsageError(
                f"label column {column!r} in split {split!r}, row {row}: {len(lists[row])} labels in a single-label "
                "task; pass --problem_type multi_label"
            )
    return np.array([ids[0] if ids else -1 for ids in lists], dtype=np.int64)


def _label_ids_of(labels: np.ndarray | list[list[int]], keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(every label id, the row it came from) over the kept rows: what the label-set checks look at."""
    if isinstance(labels, np.ndarray):
        rows = np.flatnonzero(keep)
        return labels[keep], rows
    pairs = [(i, row) for row in np.flatnonzero(keep) for i in labels[row]]
    return np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64)


def same_source(recorded: Any, wanted: Any) -> bool:
    """The same hub id, or the same local file/directory however its path is spelled."""
    if recorded == wanted:
        return True
    paths = [str(x) for x in (recorded, wanted) if x is not None]
    return len(paths) == 2 and all(os.path.exists(p) for p in paths) and os.path.samefile(*paths)


def trained_label_flags(dataset_record: dict, dataset_name: str | None) -> dict[str, Any]:
    """The text/label flags that read `dataset_name` as a run did (its record's `dataset`, written by
    `load_text_classification_data`): its label columns or score threshold. None for each flag on another data set,
    or where detection reads it the same way (one label column of ids or lists)."""
    flags: dict[str, Any] = dict.fromkeys(("text_column", "label_column", "label_columns", "label_threshold"))
    if dataset_name is None or not same_source(dataset_record.get("dataset"), dataset_name):
        return flags
    flags["text_column"] = dataset_record.get("text_column")
    if dataset_record.get("label_columns"):
        flags["label_columns"] = ",".join(dataset_record["label_columns"])
        flags["label_threshold"] = dataset_record.get("label_threshold")
    elif dataset_record.get("label_threshold") is not None:  # a thresholded score column
        flags["label_column"] = dataset_record.get("label_column")
        flags["label_threshold"] = dataset_record["label_threshold"]
    return flags


def load_text_classification_data(
    args: DataTrainingArguments, seed: int, cache_dir: str | None = None, class_names: list[str] | None = None
) -> TextClassificationData:
    """Load, clean, validate and split the data set; raise `UsageError` on anything wrong with it.

    The steps: read the splits → pick the text and label columns (and the task type) → clean the texts → read the
    labels and check them against the label set → add missing splits → subsample. `class_names` (--class_names)
    override the names found in the data set or its preset.
    """
    raw = _normalise_split_names(load_raw_splits(args, cache_dir))
    preset = find_preset(args.dataset_name)
    text_column = _pick_text_column(raw["train"].column_names, args, preset)
    source = _pick_label_source(raw["train"], args, preset, text_column)
    if source.names:
        source.declared_by = source.declared_by or "the data set's class names"
    if class_names:
        source.names, source.declared_by = list(class_names), "--class_names"

    texts_by_split: dict[str, list[str]] = {}
    labels_by_split: dict[str, np.ndarray | list[list[int]]] = {}
    originals: dict[str, list[str]] = {}  # hate_speech18: the 4-way class name before "hate vs the rest"
    label_ids: dict[str, np.ndarray] = {}
    label_rows: dict[str, np.ndarray] = {}  # each checked id's row in the split as read, for error messages
    for split, ds in raw.items():
        texts, keep = _clean_texts(ds, split, text_column)
        labels = _read_labels(ds, split, source, keep)
        texts_by_split[split] = [t for t, k in zip(texts, keep) if k]
        kept = np.flatnonzero(keep)
        labels_by_split[split] = labels[keep] if isinstance(labels, np.ndarray) else [labels[r] for r in kept]
        label_ids[split], label_rows[split] = _label_ids_of(labels, keep)
        if source.binary_from is not None:
            original = _labels_as_int(list(ds[source.columns[0]]), keep, source.columns[0], split)
            originals[split] = [source.binary_from[i] for i in original[keep]]

    if source.names:
        num_labels = len(source.names)
    else:
        num_labels = _classes_of_train_split(label_ids["train"], label_rows["train"])
        source.declared_by = "the train split's labels"
    _check_label_ids(label_ids, label_rows, num_labels, source.declared_by)

    splits = {}
    for split, labels in labels_by_split.items():
        columns_out: dict[str, list] = {"text": texts_by_split[split]}
        if source.multi_label:
            columns_out["label"] = multi_hot(labels, num_labels).tolist()
        else:
            columns_out["label"] = labels.tolist()
        if split in originals:
            columns_out["label_original"] = originals[split]
        splits[split] = Dataset.from_dict(columns_out, features=_features(source, num_labels, columns_out))
    data = _add_missing_splits(DatasetDict(splits), args, seed)
    data = _subsample(data, args, seed)
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
        **({"encoding": args.encoding} if codecs.lookup(args.encoding).name != "utf-8" else {}),
    }
    logger.info(f"data: {record}")
    return TextClassificationData(
        splits=data, num_labels=num_labels, label_names=source.names, source=record, problem_type=source.problem_type
    )


def _features(source: LabelSource, num_labels: int, columns: dict[str, list]) -> Features:
    """Single-label: a ClassLabel (names when known); multi-label: a float 0/1 vector per row, as BCE wants."""
    if source.multi_label:
        label = Sequence(Value("float32"), length=num_labels)
    else:
        label = ClassLabel(num_classes=num_labels, names=source.names or None)
    features = {"text": Value("string"), "label": label}
    if "label_original" in columns:
        features["label_original"] = Value("string")
    return Features(features)


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
            f"pass --class_names with one name per class (e.g. {num_labels} names for ids 0..{num_labels - 1})"
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
                "(fix the row, or check --label_column / --class_names)"
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
