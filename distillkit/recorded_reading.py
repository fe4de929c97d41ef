"""How a saved model read its data set, for the readers that score it again (run_eval.py).

A model learnt one reading of its data: the text and label columns, the score threshold, the class names (their order
is the label ids when the labels are written as names) and the seed that carved the held-out splits a data set
lacks (or drew a --max_*_samples sample), with the --validation_split_percentage / --test_split_percentage that
carved them. Its run recorded all of them (run_record.json: the request fingerprint,
else the `dataset` record). A reader given none of these flags reads the data that way; a flag given wins, with a
warning for each model that recorded otherwise. Models that recorded different readings of the data set are not
scored in one table: one `error:` line says which, and how to score them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from .cli import UsageError
from .data import DataTrainingArguments, TextClassificationData, same_source, trained_label_flags
from .records import RunRecord

logger = logging.getLogger(__name__)

LABEL_FLAGS = ("text_column", "label_column", "label_columns", "label_threshold")
SPLIT_PERCENTAGES = ("validation_split_percentage", "test_split_percentage")  # the fingerprint records both
DEFAULT_SEED = 42  # the seed of a reading no model recorded (the training scripts' default)


@dataclass
class RecordedReading:
    """How the model in `path` read the data set it is now scored on (None where its records do not say)."""

    path: str
    flags: dict[str, Any]  # LABEL_FLAGS
    class_names: list[str] | None
    seed: int | None
    split_percentages: dict[str, float] = dataclasses.field(default_factory=dict)  # SPLIT_PERCENTAGES recorded


def _generic(names: list[str] | None) -> bool:
    return not names or list(map(str, names)) == [f"LABEL_{i}" for i in range(len(names))]


def recorded_reading(path: str, dataset_name: str | None) -> RecordedReading | None:
    """What the model in `path` (a model directory, or an ONNX file in one) recorded about reading `dataset_name`;
    None when it was trained on another data set or recorded nothing."""
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    record = RunRecord.load(directory) if os.path.isdir(directory) else None
    if record is None or dataset_name is None:
        return None
    fingerprint = record.fingerprint or {}
    by_fingerprint = bool(fingerprint.get("dataset")) and same_source(fingerprint["dataset"], dataset_name)
    by_dataset = bool(record.dataset.get("dataset")) and same_source(record.dataset["dataset"], dataset_name)
    if not (by_fingerprint or by_dataset):
        return None
    # The dataset record first; the fingerprint, the request as the data loader resolved it, wins where it says.
    flags = trained_label_flags(record.dataset, dataset_name) if by_dataset else dict.fromkeys(LABEL_FLAGS)
    if by_fingerprint:
        for name in LABEL_FLAGS:
            if name in fingerprint:
                value = fingerprint[name]
                flags[name] = ",".join(value) if name == "label_columns" and isinstance(value, list) else value
        if fingerprint.get("label_columns"):
            flags["label_column"] = None
    names = fingerprint.get("class_names") if "class_names" in fingerprint else record.label_names
    seed = fingerprint.get("seed", record.seed)
    return RecordedReading(
        path=path,
        flags=flags,
        class_names=None if _generic(names) else [str(n) for n in names],
        seed=None if seed is None else int(seed),
        split_percentages={
            name: float(fingerprint[name]) for name in SPLIT_PERCENTAGES if fingerprint.get(name) is not None
        },
    )


def _label_flags(readings: list[RecordedReading], data_args: DataTrainingArguments) -> DataTrainingArguments:
    """Without label flags given, the columns and threshold the models recorded (one target for all of them, else an
    error); with flags given, a warning per model that recorded another target."""
    recorded = {r.path: r.flags for r in readings if any(v is not None for v in r.flags.values())}
    given = {name: getattr(data_args, name) for name in LABEL_FLAGS if getattr(data_args, name) is not None}
    if given:
        for path, flags in recorded.items():
            other = {k: flags.get(k) for k in given if flags.get(k) != given[k]}
            if other:
                logger.warning(f"{path} was trained with {other}; scoring it with {given} as told")
        return data_args
    targets = {json.dumps(flags, sort_keys=True) for flags in recorded.values()}
    if len(targets) > 1:
        detail = "; ".join(f"{p}: {f}" for p, f in recorded.items())
        raise UsageError(
            f"the models were trained on different targets of {data_args.dataset_name} ({detail}); score them "
            "separately, or pass --label_column/--label_columns/--label_threshold to score them all on one"
        )
    if not targets:
        return data_args
    flags = {k: v for k, v in json.loads(targets.pop()).items() if v is not None}
    logger.info(f"reading {data_args.dataset_name} as the models were trained on it: {flags}")
    return dataclasses.replace(data_args, **flags)


def _class_names(readings: list[RecordedReading], given: list[str] | None, dataset_name: str) -> list[str] | None:
    """--class_names given wins (a warning per model that recorded other names); else the names the models recorded
    (one list for all of them, else an error); None: the data set's own."""
    recorded = {r.path: r.class_names for r in readings if r.class_names}
    if given:
        for path, names in recorded.items():
            if names != list(given):
                logger.warning(f"{path} was trained with class names {names}; scoring it with --class_names "
                               f"{','.join(given)} as told")  # fmt: skip
        return given
    lists = {json.dumps(names) for names in recorded.values()}
    if len(lists) > 1:
        detail = "; ".join(f"{p}: {','.join(n)}" for p, n in recorded.items())
        raise UsageError(
            f"the models were trained with different class names on {dataset_name} ({detail}); score them separately, "
            "or pass --class_names to score them all with one"
        )
    return json.loads(lists.pop()) if lists else None


@dataclass
class Reading:
    """The data flags, class names and seed to read the data set with, and the seed and split percentages each model
    recorded."""

    data_args: DataTrainingArguments
    class_names: list[str] | None
    seed: int
    seed_given: bool
    recorded_seeds: dict[str, int]
    percentages_given: tuple[str, ...] = ()  # the SPLIT_PERCENTAGES given (a value other than the default)
    recorded_percentages: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    def check_split(self, data: TextClassificationData, split: str) -> None:
        """The scored split's rows are the ones the models held out. When the seed chose them (`seeded_splits`: no
        such file, or a sample), models of different seeds held out different rows, each containing the others'
        training rows: one table cannot score them (an error, unless --seed says which rows to use, with a warning
        per model trained with another seed). Rows carved from train depend on the split percentages the same way."""
        how = data.seeded_splits.get(split)
        if how is None:
            return
        self._check_split_input(split, how, "seed", self.seed, self.recorded_seeds, self.seed_given)
        for name in _percentages_choosing(split, data.carved_splits):
            recorded = {path: p[name] for path, p in self.recorded_percentages.items() if name in p}
            value = getattr(self.data_args, name)
            self._check_split_input(split, how, name, value, recorded, name in self.percentages_given)

    def _check_split_input(
        self, split: str, how: str, name: str, value: float, recorded: dict[str, float], given: bool
    ) -> None:
        """One input that chose the carved rows (the seed, a split percentage): told a value, a warning per model
        trained with another; not told, models that recorded different values are refused (one table cannot score
        rows that hold some models' training rows)."""
        if given:
            for path, was in recorded.items():
                if was != value:
                    logger.warning(
                        f"{path} was trained with {name} {was:g}; scoring it on the {split} rows of --{name} {value:g} "
                        f"as told ({how}): some of them may be its training rows"
                    )
            return
        by_value: dict[float, list[str]] = {}
        for path, was in recorded.items():
            by_value.setdefault(was, []).append(path)
        if len(by_value) > 1:
            detail = "; ".join(f"{name} {was:g}: {', '.join(paths)}" for was, paths in sorted(by_value.items()))
            raise UsageError(
                f"--split {split} of {self.data_args.dataset_name} depends on --{name} ({how}) and the models were "
                f"trained with different values ({detail}): each one's {split} rows hold the others' training rows, "
                f"so they are not scored in one table; score them in separate calls, or pass --{name} N to score them "
                "all on the same rows"
            )


def _percentages_choosing(split: str, carved: tuple[str, ...]) -> list[str]:
    """The split percentages that choose `split`'s rows: test is carved from train first, then validation from
    what is left (each a percentage of the original train)."""
    names = []
    if "test" in carved and (split != "validation" or "validation" in carved):
        names.append("test_split_percentage")
    if "validation" in carved and split in ("validation", "train"):
        names.append("validation_split_percentage")
    return names


def _split_percentages(readings: list[RecordedReading], data_args: DataTrainingArguments) -> tuple[
        DataTrainingArguments, tuple[str, ...]]:  # fmt: skip
    """The percentages to carve missing splits with: a flag given (a value other than its default) wins; else the one
    value the models recorded (several: `Reading.check_split` refuses them where they choose the scored rows).
    Returns the data flags and the names given."""
    given = tuple(n for n in SPLIT_PERCENTAGES if getattr(data_args, n) != getattr(DataTrainingArguments, n))
    chosen = {}
    for name in SPLIT_PERCENTAGES:
        values = {r.split_percentages[name] for r in readings if name in r.split_percentages}
        if name not in given and len(values) == 1:
            chosen[name] = values.pop()
    chosen = {k: v for k, v in chosen.items() if v != getattr(data_args, k)}
    if chosen:
        logger.info(f"carving the splits {data_args.dataset_name} lacks as the models did: {chosen}")
        data_args = dataclasses.replace(data_args, **chosen)
    return data_args, given


def read_as_recorded(
    model_dirs: list[str], data_args: DataTrainingArguments, seed: int | None, class_names: list[str] | None
) -> Reading:
    """How to read `data_args.dataset_name` for these models: what they recorded unless told otherwise (`seed` and
    `class_names` None: not given). Check the scored split with `Reading.check_split` once the data is loaded."""
    readings = [r for path in model_dirs if (r := recorded_reading(path, data_args.dataset_name)) is not None]
    data_args = _label_flags(readings, data_args)
    data_args, percentages_given = _split_percentages(readings, data_args)
    class_names = _class_names(readings, class_names, data_args.dataset_name)
    recorded_seeds = {r.path: r.seed for r in readings if r.seed is not None}
    if seed is None:  # one seed recorded: its held-out rows; several: check_split refuses them if the seed matters
        seeds = set(recorded_seeds.values())
        chosen = seeds.pop() if len(seeds) == 1 else DEFAULT_SEED
    else:
        chosen = seed
    recorded_percentages = {r.path: r.split_percentages for r in readings if r.split_percentages}
    return Reading(
        data_args, class_names, chosen, seed is not None, recorded_seeds, percentages_given, recorded_percentages
    )
