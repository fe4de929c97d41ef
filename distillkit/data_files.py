"""Reading a data set's splits as they are: a local CSV/TSV/JSONL/Parquet file or directory, or a Hub id."""

from __future__ import annotations

import codecs
import os

from datasets import DatasetDict, load_dataset

from .cli import UsageError
from .data_args import DataTrainingArguments
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
        try:
            return load_dataset(builder, data_files=files, cache_dir=cache_dir, **kwargs)
        except Exception as err:  # malformed files: say which, in one line
            raise UsageError(f"--dataset_name {name}: could not read {builder} files: {first_line(err)}") from err
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
