"""What a model directory must prove before anything answers with it: the checks every loader runs.

A directory whose files disagree loads without complaint in transformers and answers nonsense: without its
tokenizer files `AutoTokenizer` builds a 5-token vocabulary (every word `[UNK]`), an edited `id2label` flips every
answer, a NaN weight makes every probability NaN. Each check here raises `UsageError` (one `error:` line naming the
file and what is wrong) or `BrokenModelError` (the model loads but its outputs cannot be used), never a wrong answer:

- the weights: the files exist, the model is a sequence classifier whose every parameter (its head above all) was
  saved, and an adapter's base model is still where the adapter says;
- the tokenizer: its files exist, and it is the one the model was trained with (`tokenizer_fingerprint`, recorded in
  run_record.json and in an ONNX export's metadata);
- the files an export wrote are the files it checked (`file_sha256`, recorded in onnx_export.json);
- config.json's labels, the model's number of outputs and run_record.json's labels agree; names are distinct;
- decision thresholds are finite numbers in [0, 1];
- a warm-up forward pass gives finite logits of the right width that depend on the text.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .cli import UsageError
from .decision import check_threshold_values

# Files one of which holds a tokenizer's vocabulary (fast tokenizers: tokenizer.json; slow ones: the rest).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "merges.txt", "added_tokens.json")
SPECIAL_TOKENS = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")
ONNX_METADATA_KEY = "distillkit.tokenizer"  # the fingerprint inside model.onnx's metadata_props
# Different on purpose (short, long, toxic, neutral): a model whose logits are equal on all of them ignores its input.
WARMUP_TEXTS = [
    "Thanks for fixing the citation.",
    "You are a stupid idiot and I hate you.",
    "ok",
    "Please add a reliable source for this claim before restoring the paragraph, per the talk page consensus.",
]


class BrokenModelError(Exception):
    """The model loads but cannot be trusted to answer (non-finite or constant outputs, wrong output width)."""


# --- the weights -------------------------------------------------------------------------------------------------

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")  # a model, whole or sharded
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors",)
NOT_A_CLASSIFIER_HINT = "train it first with run_finetune.py or run_distill.py"


def missing_weights(directory: str, adapter: bool) -> str | None:
    """What is wrong when `directory` holds no weights the loaders read (safetensors only), else None."""
    names = ADAPTER_WEIGHT_FILES if adapter else WEIGHT_FILES
    if any(os.path.isfile(os.path.join(directory, name)) for name in names):
        return None
    other = [n for n in ("pytorch_model.bin", "adapter_model.bin") if os.path.isfile(os.path.join(directory, n))]
    found = f" (only {', '.join(other)}, which is never loaded: safetensors only)" if other else ""
    return f"no weights ({' or '.join(names)}){found}"


def require_weights(directory: str, adapter: bool) -> None:
    """UsageError unless `directory` holds its weights: a run killed while saving, or a file removed since."""
    problem = missing_weights(directory, adapter)
    if problem is not None:
        raise UsageError(
            f"{directory}: {problem}; the run that wrote it did not finish saving or the file was removed: "
            "train it again (--overwrite_output_dir) or remove the directory"
        )


def require_classifier_architecture(directory: str, architectures: Sequence[str] | None) -> None:
    """A base model (BertModel, ...) has no classification head: loading it as a classifier invents a random one."""
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures or []):
        raise UsageError(
            f"{directory}: not a trained classifier (architectures {list(architectures or []) or 'unknown'}, "
            f"expected *ForSequenceClassification); {NOT_A_CLASSIFIER_HINT}"
        )


def require_all_parameters_loaded(directory: str, loading_info: dict[str, Any]) -> None:
    """UsageError when loading initialised parameters fresh (missing from, or shaped otherwise than, the saved
    weights): a classification head that was never trained answers at random."""
    fresh = list(loading_info.get("missing_keys") or [])
    fresh += [key[0] if isinstance(key, tuple) else key for key in loading_info.get("mismatched_keys") or []]
    if fresh:
        shown = ", ".join(sorted(map(str, fresh))[:4]) + (f" and {len(fresh) - 4} more" if len(fresh) > 4 else "")
        raise UsageError(
            f"{directory}: not a trained classifier: its weights lack {shown}, which loading would initialise at "
            f"random; {NOT_A_CLASSIFIER_HINT}"
        )


def local_base_missing(base: str | None) -> bool:
    """An adapter's `base_model_name_or_path` that is a local path (absolute, ./ or ../, or deeper than a hub id's
    owner/name) and no longer exists."""
    if not base:
        return False
    local = os.path.isabs(base) or base.startswith((".", "~")) or base.count("/") > 1
    return local and not os.path.isdir(os.path.expanduser(base))


def require_adapter_base(directory: str, base: str | None) -> None:
    if local_base_missing(base):
        raise UsageError(
            f"{directory}: the adapter's base model {base} is gone (adapter_config.json base_model_name_or_path: no "
            "such directory); restore it there, or set base_model_name_or_path to a copy of the model it adapted"
        )


# --- the tokenizer ----------------------------------------------------------------------------------------------


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """What identifies a tokenizer: its vocabulary size, special-token ids and a SHA-256 of the vocabulary."""
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode("utf-8")).hexdigest()
    special = {}
    for name in SPECIAL_TOKENS:
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            special[name] = int(token_id)
    return {"vocab_size": len(vocab), "special_token_ids": special, "vocab_sha256": digest}


def require_tokenizer_files(directory: str) -> None:
    """UsageError unless `directory` holds a saved tokenizer (else transformers would invent an empty one)."""
    if not any(os.path.isfile(os.path.join(directory, name)) for name in TOKENIZER_FILES):
        raise UsageError(
            f"{directory}: no tokenizer files ({' or '.join(TOKENIZER_FILES[:2])}): save the tokenizer the model was "
            "trained with beside it (tokenizer.save_pretrained); without it every word would be [UNK]"
        )


def check_tokenizer(directory: str, tokenizer: Any, recorded: dict[str, Any] | None, vocab_size: int | None) -> None:
    """The loaded tokenizer is the one the model was trained with: `recorded` is its fingerprint (run_record.json
    or the ONNX metadata; None for a directory from before fingerprints), `vocab_size` the model's embedding rows."""
    found = tokenizer_fingerprint(tokenizer)
    if recorded:
        differs = [key for key in ("vocab_size", "special_token_ids", "vocab_sha256") if recorded.get(key) != found[key]]
        if differs:
            shown = ", ".join(f"{key} {found[key]!r} (trained with {recorded.get(key)!r})" for key in differs)
            raise UsageError(f"{directory}: the tokenizer is not the one the model was trained with: {shown}")
    if vocab_size is not None and found["vocab_size"] > vocab_size:
        raise UsageError(
            f"{directory}: the tokenizer has {found['vocab_size']} tokens but the model embeds only {vocab_size}: "
            "not this model's tokenizer"
        )


def tokenizer_file_names(directory: str) -> list[str]:
    return [n for n in TOKENIZER_FILES + TOKENIZER_SIDE_FILES if os.path.isfile(os.path.join(directory, n))]


# --- checksums --------------------------------------------------------------------------------------------------


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksums(directory: str, names: Iterable[str]) -> dict[str, str]:
    return {name: file_sha256(os.path.join(directory, name)) for name in names}


def verify_checksums(directory: str, recorded: dict[str, str], names: Iterable[str] | None = None) -> None:
    """UsageError when a file the export recorded is missing or its SHA-256 differs (changed or truncated since)."""
    for name in names if names is not None else recorded:
        if name not in recorded:
            continue
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise UsageError(f"{path}: missing, but the export recorded it (onnx_export.json sha256)")
        if file_sha256(path) != recorded[name]:
            raise UsageError(
                f"{path}: SHA-256 differs from the one recorded at export (onnx_export.json): the file was changed or "
                "truncated after export; export the model again"
            )


# --- labels and thresholds --------------------------------------------------------------------------------------


def check_labels(directory: str, id2label: dict[Any, Any], recorded: Sequence[str] | None, multi_label: bool) -> list[str]:
    """config.json's class names by id, checked: ids 0..n-1, distinct names, at least 2 classes (1 label only for
    a multi-label model), and the same names in the same order as run_record.json's `label_names`."""
    try:
        ids = sorted(int(k) for k in id2label)
    except (TypeError, ValueError):
        raise UsageError(f"{directory}/config.json: id2label keys {list(id2label)} are not label ids") from None
    if ids != list(range(len(ids))):
        raise UsageError(f"{directory}/config.json: id2label ids {ids} are not 0..{len(ids) - 1}")
    names = [str(id2label[k] if k in id2label else id2label[str(k)]) for k in ids]
    if len(names) < (1 if multi_label else 2):
        raise UsageError(f"{directory}/config.json: {len(names)} label(s) {names}: a classifier needs at least 2 classes")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"{directory}/config.json: label name(s) {', '.join(duplicates)} used for more than one id")
    if recorded and list(map(str, recorded)) != names:
        raise UsageError(
            f"{directory}/config.json: id2label {names} disagrees with run_record.json's label_names {list(recorded)} "
            "(the labels the model was trained with)"
        )
    return names


def check_thresholds(value: Any, source: str) -> list[float] | None:
    """Decision thresholds as read from `source`: None, or finite numbers in [0, 1] (decision.py's check); else a
    UsageError naming the file."""
    if value is None:
        return None
    try:
        return check_threshold_values(value)
    except ValueError as err:
        raise UsageError(f"{source}: {err}") from None


# --- outputs ----------------------------------------------------------------------------------------------------


def check_outputs(name: str, logits: np.ndarray, num_labels: int) -> None:
    """BrokenModelError unless warm-up logits are finite, `num_labels` wide and not the same for every text."""
    if logits.ndim != 2 or logits.shape[1] != num_labels:
        raise BrokenModelError(
            f"{name}: config.json lists {num_labels} labels but the model outputs {logits.shape[-1]} logits per text"
        )
    if not np.isfinite(logits).all():
        raise BrokenModelError(f"{name}: the warm-up forward pass gave non-finite logits (NaN or inf weights?)")
    if len(logits) > 1 and np.ptp(logits, axis=0).max() == 0:
        raise BrokenModelError(f"{name}: the warm-up logits are the same for every text: the model ignores its input")
