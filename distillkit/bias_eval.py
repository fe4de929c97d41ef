"""Scoring saved models on an identity-bias set (`run_eval.py --bias_dataset`): the set, the flags, the figures.

The set is any table with a text, a toxic/non-toxic label and an identity column (Dixon et al.'s bias_madlibs:
`text`, `label` 1 = toxic, `identity`), from a local CSV/JSONL/Parquet file or directory, or the Hub. It is read as
it is: no split of it is ever trained on. Each model is run through runtime.predict_batches on batches tokenised
once per tokenizer and scored by distillkit.bias (its toxic score, its own saved decision rule).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from transformers import PreTrainedTokenizerBase

from . import bias
from .cli import UsageError
from .data_files import LOCAL_FORMATS, SPLIT_ALIASES
from .evaluation import model_seed
from .runtime import LoadedClassifier, encode_batches, predict_batches

logger = logging.getLogger(__name__)

BIAS_FILE = "bias.csv"
BIAS_SUMMARY_FILE = "bias_summary.csv"


@dataclass
class BiasArguments:
    bias_dataset: str | None = field(
        default=None,
        metadata={
            "help": "An identity-bias set to score every model on as well (local CSV/JSONL/Parquet file or folder, or a "
            "Hub id), e.g. ../shared/data/bias_madlibs: writes bias.csv and bias_summary.csv. Evaluation only."
        },
    )
    bias_split: str = field(default="test", metadata={"help": "The bias set's split (file stem) to read."})
    bias_text_column: str = field(default="text", metadata={"help": "The bias set's text column."})
    bias_label_column: str = field(default="label", metadata={"help": "The bias set's toxic / non-toxic column."})
    bias_identity_column: str = field(
        default="identity",
        metadata={"help": "The bias set's identity column; an empty cell: the text counts in the background only."},
    )
    bias_positive_label: str = field(
        default="1", metadata={"help": "The label value that means toxic (e.g. 1, or hateful for string labels)."}
    )
    bias_toxic_classes: list[str] | None = field(
        default=None,
        metadata={
            "help": "Class names or ids whose summed probability is a model's toxic score, and whose prediction is a "
            "toxic decision (multi-label: the sum of those labels' sigmoids; any of them predicted). Default: class 1 "
            "of a binary model; required for 3+ classes."
        },
    )
    bias_max_per_identity: int | None = field(
        default=None,
        metadata={"help": "Score a stratified sample (identity × label, seeded by --seed) of at most N texts per identity."},
    )
    bias_batch_size: int = field(default=512, metadata={"help": "Batch size of the bias set's prediction pass."})

    def __post_init__(self) -> None:
        if self.bias_max_per_identity is not None and self.bias_max_per_identity < 2:
            raise UsageError(f"--bias_max_per_identity {self.bias_max_per_identity}: must be at least 2 (one per label)")
        if self.bias_batch_size < 1:
            raise UsageError(f"--bias_batch_size {self.bias_batch_size}: must be at least 1")
        if self.bias_toxic_classes:  # a,b or a b
            self.bias_toxic_classes = [c.strip() for item in self.bias_toxic_classes for c in item.split(",") if c.strip()]


@dataclass
class BiasSet:
    """The texts, toxic gold labels and identities ("" = none) of a bias set, as scored."""

    texts: list[str]
    labels: np.ndarray  # bool: toxic
    identities: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.texts)


def _split_file(path: str, split: str) -> str:
    if os.path.isfile(path):
        return path
    files = sorted(f for f in os.listdir(path) if os.path.splitext(f)[1].lower() in LOCAL_FORMATS)
    wanted = SPLIT_ALIASES.get(split, (split,))
    chosen = [f for f in files if os.path.splitext(f)[0].lower() in wanted] or (files if len(files) == 1 else [])
    if not chosen:
        raise UsageError(
            f"--bias_dataset {path}: no {split} file (expected {split}.csv / .jsonl / .parquet); "
            f"found: {', '.join(files) or 'nothing'}"
        )
    return os.path.join(path, chosen[0])


def read_bias_table(source: str, split: str = "test", cache_dir: str | None = None) -> pd.DataFrame:
    """The bias set as a table of strings (a CSV is read with every cell as text, so `1` and `hateful` alike)."""
    if os.path.exists(source):
        path = _split_file(source, split)
        ext = os.path.splitext(path)[1].lower()
        try:
            if ext in (".csv", ".tsv"):
                return pd.read_csv(path, dtype=str, keep_default_na=False, sep="\t" if ext == ".tsv" else ",")
            if ext in (".json", ".jsonl"):
                return pd.read_json(path, lines=ext == ".jsonl")
            return pd.read_parquet(path)
        except (ValueError, OSError, pd.errors.ParserError) as err:
            raise UsageError(f"--bias_dataset {path}: could not read it: {str(err).splitlines()[0]}") from None
    from datasets import load_dataset

    try:
        return load_dataset(source, split=split, cache_dir=cache_dir).to_pandas()
    except Exception as err:  # no silent fallback: the user named this set
        first = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise UsageError(
            f"--bias_dataset {source}: could not load split {split!r} from the Hugging Face Hub ({first}); "
            "without network access pass a local folder or CSV/JSONL/Parquet file"
        ) from None


def _cells(column: pd.Series) -> list[str]:
    """Cells as text: missing → "", 1.0 → "1" (a numeric column read back from JSON or Parquet)."""

    def text(value: object) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value).strip()

    return [text(v) for v in column]


def load_bias_set(args: BiasArguments, seed: int = 42, cache_dir: str | None = None) -> BiasSet:
    """Read and check the bias set (columns, the positive label, both labels present), sampled when asked."""
    table = read_bias_table(args.bias_dataset, args.bias_split, cache_dir)
    for flag, column in (
        ("--bias_text_column", args.bias_text_column),
        ("--bias_label_column", args.bias_label_column),
        ("--bias_identity_column", args.bias_identity_column),
    ):
        if column not in table.columns:
            raise UsageError(
                f"{flag} {column}: no such column in --bias_dataset {args.bias_dataset} "
                f"(its columns: {', '.join(map(str, table.columns))})"
            )
    labels = np.array([v == args.bias_positive_label for v in _cells(table[args.bias_label_column])])
    values = sorted(set(_cells(table[args.bias_label_column])))
    if not labels.any():
        raise UsageError(
            f"--bias_positive_label {args.bias_positive_label}: no row of --bias_dataset {args.bias_dataset} has it "
            f"in column {args.bias_label_column} (its values: {', '.join(values[:10])}); pass the value that means toxic"
        )
    if labels.all():
        raise UsageError(
            f"--bias_dataset {args.bias_dataset}: every row has label {args.bias_positive_label}; the bias AUCs need "
            "non-toxic texts too"
        )
    texts = _cells(table[args.bias_text_column])
    identities = _cells(table[args.bias_identity_column])
    if not any(identities):
        raise UsageError(f"--bias_identity_column {args.bias_identity_column}: every cell is empty")
    if args.bias_max_per_identity:
        rows = bias.stratified_sample(identities, labels, args.bias_max_per_identity, seed)
        texts, identities, labels = [texts[i] for i in rows], [identities[i] for i in rows], labels[rows]
    return BiasSet(texts, labels, identities, args.bias_dataset)


def tokenizer_key(tokenizer: PreTrainedTokenizerBase, max_length: int) -> str:
    """Two tokenizers with this key split every text alike: their vocabulary and rules (a fast tokenizer's full
    serialisation), padding and the length cap."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    digest = hashlib.sha256(spec.encode()).hexdigest()
    return f"{type(tokenizer).__name__}:{digest}:{tokenizer.pad_token_id}:{tokenizer.padding_side}:{max_length}"


class BiasScorer:
    """Scores models on one bias set; the set's batches are tokenised once per distinct tokenizer."""

    def __init__(
        self,
        bias_set: BiasSet,
        max_length: int,
        batch_size: int = 512,
        toxic_classes: list[str] | None = None,
        device: str = "cpu",
    ) -> None:
        self.bias_set = bias_set
        self.max_length = max_length
        self.batch_size = batch_size
        self.toxic_classes = toxic_classes
        self.device = device
        self._batches: dict[str, list] = {}

    def batches(self, tokenizer: PreTrainedTokenizerBase) -> list:
        key = tokenizer_key(tokenizer, self.max_length)
        if key not in self._batches:
            self._batches[key] = encode_batches(tokenizer, self.bias_set.texts, self.max_length, self.batch_size)
        return self._batches[key]

    def toxic_ids(self, clf: LoadedClassifier) -> list[int]:
        try:
            return bias.toxic_class_ids(self.toxic_classes, clf.id2label, clf.task.multi_label)
        except ValueError as err:
            raise UsageError(f"{clf.path}: {err}") from None

    def score(self, clf: LoadedClassifier) -> tuple[pd.DataFrame, dict[str, object], pd.DataFrame]:
        """(bias.csv rows, the bias_summary.csv row, per-text scores) of one model."""
        toxic_ids = self.toxic_ids(clf)
        task = clf.task
        probs = task.probabilities(predict_batches(clf.model, self.batches(clf.tokenizer), self.device))
        scores = bias.toxic_scores(probs, toxic_ids)
        decisions = bias.toxic_decisions(task.predict(probs), toxic_ids)
        labels, identities = self.bias_set.labels, self.bias_set.identities
        table = bias.identity_table(scores, labels, decisions, identities)
        table.insert(0, "model", clf.name)
        names = [str(clf.id2label[i]) for i in toxic_ids]
        summary = {
            "model": clf.name,
            "method": clf.method,
            "seed": model_seed(clf),
            **bias.bias_summary(table, scores, labels, decisions),
            "toxic_classes": ",".join(names),
        }
        texts = pd.DataFrame(
            {
                "text": self.bias_set.texts,
                "identity": identities,
                "label": labels.astype(int),
                "toxic_score": scores,
                "toxic_pred": decisions.astype(int),
            }
        )
        return table, summary, texts
