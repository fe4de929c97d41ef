"""Reading a data set's splits as they are: a local CSV/TSV/JSONL/Parquet file or directory, or a Hub id."""

from __future__ import annotations

import codecs
import os

from datasets import DatasetDict, load_dataset

from .cli import UsageError
from .data_args import LABEL_COLUMN_CANDIDATES, TEXT_COLUMN_CANDIDATES, DataTrainingArguments
from .data_presets import PRESETS


SPLIT_ALIASES = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}


LOCAL_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


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
        if builder == "csv":
            # Only an empty cell is missing: "NA", "None", "null", "nan" are texts (a comment may say just that).
            kwargs.update(keep_default_na=False, na_values=[""])
        splits = {}
        for split, path in files.items():  # one split at a time: an error names its file, not "the dataset"
            try:
                splits[split] = load_dataset(builder, data_files={split: path}, cache_dir=cache_dir, **kwargs)[split]
            except Exception as err:  # malformed files: say which, in one line
                raise UsageError(f"--dataset_name {name}: could not read split {split!r} ({path}): {root_cause(err)}") from err
        return DatasetDict(agreeing_splits(splits, files, _readable_columns(args)))
    preset = PRESETS.get(name)
    config = args.dataset_config_name or (preset.config_name if preset else None)
    revision = args.dataset_revision or (preset.revision if preset else None)
    try:
        return load_dataset(name, config, revision=revision, cache_dir=cache_dir)
    except Exception as err:
        raise UsageError(
            f"--dataset_name {name}: could not load it from the Hugging Face Hub ({first_line(err)}); "
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


def _readable_columns(args: DataTrainingArguments) -> set[str]:
    """The columns text and labels may be read from: the flags', the detected names' and the presets'."""
    named = {args.text_column, args.label_column, *(args.label_columns or "").split(",")}
    named |= set(TEXT_COLUMN_CANDIDATES) | set(LABEL_COLUMN_CANDIDATES)
    for preset in PRESETS.values():
        named |= {preset.text_column, preset.label_column, preset.threshold_column}
    return {name.strip() for name in named if name}


def agreeing_splits(splits: dict, files: dict[str, str], readable: set[str]) -> dict:
    """Every split file holds the train file's text and label columns (`readable`), of types that read alike: a
    missing one (or a file with other separators, read as one column) or a type no cast reconciles is an error
    naming the split, its file and what differs. Other columns (an `id`) may differ: nothing reads them."""
    train = splits["train"]
    for split, ds in splits.items():
        if split == "train":
            continue
        where = f"split {split!r} ({files[split]})"
        missing = [c for c in train.column_names if c not in ds.column_names]
        seps = []
        if len(ds.column_names) == 1 and len(train.column_names) > 1:
            seps = [s for s in (";", "\t", "|", ",") if s in ds.column_names[0]]
        if seps or any(c in readable for c in missing):
            hint = f"; it looks separated by {seps[0]!r}: every split file must use the train file's separator" if seps else ""
            raise UsageError(
                f"{where} lacks the column(s) {', '.join(missing)} of the train file ({files['train']}); "
                f"it has columns: {', '.join(ds.column_names)}{hint}"
            )
        for column in (c for c in train.column_names if c in ds.column_names):
            wanted, found = train.features[column], ds.features[column]
            if wanted == found:
                continue
            try:
                ds = ds.cast_column(column, wanted)
            except Exception:
                if not (_numeric(wanted) and _numeric(found)):  # int vs float (a gap): the label readers check values
                    raise UsageError(
                        f"{where}: column {column!r} is {_type_name(found)} but in the train file it is "
                        f"{_type_name(wanted)}; every split file must hold the same kind of values in each column"
                    ) from None
        splits[split] = ds
    return splits


def _numeric(feature) -> bool:
    dtype = getattr(feature, "dtype", "")
    return isinstance(dtype, str) and dtype.startswith(("int", "uint", "float", "bool"))


def _type_name(feature) -> str:
    return str(getattr(feature, "dtype", None) or type(feature).__name__)


def root_cause(err: BaseException) -> str:
    """The first line of the innermost error: datasets wraps a reader's own message in "An error occurred while
    generating the dataset"."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = err.__cause__ or err.__context__
        if inner is None:
            break
        err = inner
    return first_line(err)


def first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def normalise_split_names(raw: DatasetDict) -> DatasetDict:
    out = {}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            if alias in raw:
                out[split] = raw[alias]
                break
    if "train" not in out:
        raise UsageError(f"the data set has no train split (it has: {', '.join(raw.keys())})")
    return DatasetDict(out)
