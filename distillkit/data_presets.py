"""The data sets our users name (wiki_toxic, hate_speech18, civil_comments, go_emotions): how to read each."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


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


def matching_preset(dataset_name: str, train: Any) -> DatasetPreset | None:
    """The preset for `dataset_name` when its train split (a `datasets.Dataset`) matches it; a local copy named like
    a preset whose data is not that data set (no label column of the preset's, other class ids) is read as plain
    data, with a warning: a folder called go_emotions holding a binary CSV must not get 28 class names."""
    preset = find_preset(dataset_name)
    if preset is None or dataset_name in PRESETS:  # a hub id is that data set
        return preset
    mismatch = _mismatch(preset, train)
    if mismatch:
        key = next(k for k, v in PRESETS.items() if v is preset)
        logger.warning(
            f"--dataset_name {dataset_name}: named like the {key} preset, but its data does not match it ({mismatch}); "
            "the preset is not applied (its columns and class names are not used)"
        )
        return None
    return preset


def _mismatch(preset: DatasetPreset, train: Any) -> str | None:
    """Why `train` is not the preset's data set, or None when it matches (its label column, its class ids)."""
    columns = train.column_names
    label_column = preset.threshold_column or preset.label_column
    if label_column not in columns:
        return f"no {label_column!r} column; it has {', '.join(columns)}"
    feature = train.features[label_column]
    names = getattr(feature, "names", None)  # a ClassLabel
    if names is not None:
        fits = (preset.binary_positive in names) if preset.binary_positive else len(names) == len(preset.label_names or names)
        return None if fits else f"{label_column!r} has {len(names)} classes ({', '.join(names)})"
    if preset.label_names and getattr(feature, "dtype", "").startswith(("int", "uint")):
        ids = [int(v) for v in train[label_column] if v is not None]
        if ids and (min(ids) < 0 or max(ids) >= len(preset.label_names)):
            return f"{label_column!r} holds class ids up to {max(ids)}, the preset names {len(preset.label_names)} classes"
    return None
