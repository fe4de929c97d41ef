"""Labels: which column(s) hold them and in which form (class ids, id lists, a thresholded score, 0/1 columns), the
task type, reading them per split and checking them against the label set."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import numpy as np
from datasets import ClassLabel, Dataset, Features, Sequence, Value

from .cli import UsageError
from .data_args import LABEL_COLUMN_CANDIDATES, DataTrainingArguments
from .data_presets import DatasetPreset
from .tasks import MULTI_LABEL, SINGLE_LABEL

logger = logging.getLogger(__name__)


def choose_column(
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


def labels_as_int(values: list, keep: np.ndarray, column: str, split: str) -> np.ndarray:
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
        out[row] = [int(i) for i in labels_as_int(list(value), np.ones(len(value), bool), column, split)]
    return out


@dataclass
class LabelSource:
    """Where the labels come from and what they mean: step 2 of loading, decided once from the train split."""

    columns: list[str]  # one label column, or several 0/1 (or score) columns for multi-label data
    problem_type: str
    form: str  # "ids", "names" (one column of class names), "lists" (label-id lists), "score" (thresholded), "columns"
    threshold: float | None = None
    names: list[str] | None = None
    declared_by: str = ""
    binary_from: list[str] | None = None  # a multi-way ClassLabel collapsed to "positive vs the rest"
    positive: str | None = None
    first_of_list: bool = False  # single-label from a list column: its first label (go_emotions' 28-class form)

    @property
    def multi_label(self) -> bool:
        return self.problem_type == MULTI_LABEL


def pick_label_source(
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

    label_column = choose_column(
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
    # The whole column: one row of "3,17" after a thousand single ids still makes the task multi-label.
    values = [v for v in train[label_column] if v is not None]
    is_list = isinstance(feature, (Sequence, list)) or any(_is_id_list(v) for v in values)
    if asked == MULTI_LABEL and getattr(feature, "dtype", None) in ("string", "large_string"):
        is_list = True  # asked for: ids as text ("3", "3,17") are read as id lists
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
    if _holds_class_names(feature, values) and asked != MULTI_LABEL:
        # A column of class names (hate_speech18's label_name): the classes are the train split's values, sorted,
        # unless --class_names gives them (and their order); every split's values must be among them.
        found = sorted({str(v).strip() for v in train[label_column] if v is not None and str(v).strip()})
        if len(found) == 2:  # binary metrics score class 1: say which one that is
            logger.warning(
                f"label column {label_column!r} holds names, sorted: class 0 = {found[0]!r}, class 1 (the positive "
                f"class of F1, PR-AUC and the decision threshold) = {found[1]!r}; --class_names {found[1]},{found[0]} "
                "swaps them"
            )
        return LabelSource(
            [label_column], SINGLE_LABEL, "names", names=found, declared_by=f"the train split's values of {label_column!r}"
        )
    return LabelSource([label_column], asked or SINGLE_LABEL, "ids", names=names)


def _holds_class_names(feature, values: list) -> bool:
    """A string column none of whose values is a number: class names. A stray word among ids stays an error."""
    if getattr(feature, "dtype", None) not in ("string", "large_string") or not values:
        return False
    for value in values:
        try:
            float(value)
            return False
        except (TypeError, ValueError):
            pass
    return True


def read_labels(ds: Dataset, split: str, source: LabelSource, keep: np.ndarray) -> np.ndarray | list[list[int]]:
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
    if source.form == "names":
        index = {name: i for i, name in enumerate(source.names or [])}
        ids = np.full(len(raw), -1, dtype=np.int64)
        for row in np.flatnonzero(keep):
            value = raw[row]
            name = None if value is None else str(value).strip()
            if name not in index:
                raise UsageError(
                    f"label column {column!r} in split {split!r} holds {value!r} (row {row}), not one of the classes "
                    f"{', '.join(index)} ({source.declared_by})"
                )
            ids[row] = index[name]
        return ids
    if source.form == "ids":
        ids = labels_as_int(raw, keep, column, split)
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


def label_ids_of(labels: np.ndarray | list[list[int]], keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(every label id, the row it came from) over the kept rows: what the label-set checks look at."""
    if isinstance(labels, np.ndarray):
        rows = np.flatnonzero(keep)
        return labels[keep], rows
    pairs = [(i, row) for row in np.flatnonzero(keep) for i in labels[row]]
    return np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64)


def label_features(source: LabelSource, num_labels: int, columns: dict[str, list]) -> Features:
    """Single-label: a ClassLabel (names when known); multi-label: a float 0/1 vector per row, as BCE wants."""
    if source.multi_label:
        label = Sequence(Value("float32"), length=num_labels)
    else:
        label = ClassLabel(num_classes=num_labels, names=source.names or None)
    features = {"text": Value("string"), "label": label}
    if "label_original" in columns:
        features["label_original"] = Value("string")
    return Features(features)


def classes_of_train_split(ids: np.ndarray, rows: np.ndarray) -> int:
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


def check_label_ids(
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
