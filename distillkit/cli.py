"""Conventions shared by every script: argument files, logging, output directories, clean errors."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import datasets
import transformers
import yaml
from transformers import HfArgumentParser

logger = logging.getLogger(__name__)

T = TypeVar("T")

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# A directory holding these is a finished run: it is never overwritten without --overwrite_output_dir.
FINISHED_MARKER = "all_results.json"


@dataclass
class ModelArguments:
    """The model a script starts from (run_finetune.py's classifier, run_lora.py's base)."""

    model_name_or_path: str = field(default="bert-base-uncased", metadata={"help": "Hub id or local directory."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache models and data from the Hub."})
    model_revision: str = field(default="main", metadata={"help": "Hub revision of the model."})


class UsageError(Exception):
    """A problem with the user's input: reported as one line, exit code 2, nothing written."""


def exit_on_usage_error(main: Callable[..., T]) -> Callable[..., T]:
    """Turn a `UsageError` raised anywhere in `main` into `error: ...` on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return main(*args, **kwargs)
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def parse_args(dataclass_types: tuple[type, ...], args: list[str] | None = None) -> tuple[Any, ...]:
    """Parse the command line, or a `.json`/`.yaml` file of arguments (as run_glue does) followed by any flags:
    `run_distill.py args.yaml --seed 3` reads the file first and the flags override it."""
    parser = HfArgumentParser(dataclass_types)
    parser.error = _one_line_error  # argparse's own refusals (an invalid int, an unknown flag) are one line too
    argv = sys.argv[1:] if args is None else args
    if argv and argv[0].endswith((".json", ".yaml", ".yml")):
        values = _read_argument_file(argv[0], dataclass_types)
        if len(argv) == 1:
            try:
                return parser.parse_dict(values)
            except (ValueError, TypeError) as err:  # unknown keys, or a value a dataclass rejected
                raise UsageError(f"{argv[0]}: {_first_line(err)}") from err
        known = {f.name for dtype in dataclass_types for f in dataclasses.fields(dtype) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"{argv[0]}: unknown argument(s) {', '.join(unknown)}")
        # The file's values become the defaults the flags override (argparse converts string defaults by type).
        parser.set_defaults(**values)
        argv = argv[1:]
    try:
        return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    except ValueError as err:  # a dataclass's __post_init__ rejected a value
        raise UsageError(_first_line(err)) from err


def _read_argument_file(name: str, dataclass_types: tuple[type, ...]) -> dict[str, Any]:
    path = os.path.abspath(name)
    if not os.path.isfile(path):
        raise UsageError(f"argument file {name} does not exist")
    try:
        with open(path) as f:
            values = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    except (ValueError, yaml.YAMLError) as err:
        raise UsageError(f"{name}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {_first_line(err)}") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise UsageError(f"{name}: expected a mapping of argument names to values")
    # YAML 1.1 reads `save_strategy: no` as False; the strategies mean the string "no".
    values = {k: ("no" if v is False and k.endswith("_strategy") else v) for k, v in values.items()}
    return _coerce_numbers(values, dataclass_types)


def _one_line_error(message: str) -> typing.NoReturn:
    """argparse prints its usage block before the error; our scripts say what is wrong in one `error:` line."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_class_names(
    values: str | list[str] | None, flag: str = "--class_names", alias: str | list[str] | None = None
) -> list[str] | None:
    """Class names in label-id order, as every script and the app take them: `a,b,c`, `a b c` (separate arguments),
    or both; stripped, at least two and distinct. None when not given.

    `alias`: the value of `--label_names`, accepted for `--class_names` by run_eval.py and app.py, which have no
    `TrainingArguments.label_names` to collide with (the training scripts refuse it for class names).
    """
    if alias is not None:
        if values is not None:
            raise UsageError(f"{flag} and --label_names (its alias) are both given: pass one")
        values, flag = alias, "--label_names"
    if values is None:
        return None
    parts = [values] if isinstance(values, str) else list(values)
    names = [name.strip() for part in parts for name in str(part).split(",") if name.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise UsageError(f"{flag} {' '.join(parts)}: give at least two distinct class names (a,b or a b)")
    return names


def _coerce_numbers(values: dict[str, Any], dataclass_types: tuple[type, ...]) -> dict[str, Any]:
    """YAML 1.1 reads `1e-3` as a string; give float and int fields their numbers back. A YAML list for a text
    field that takes a comma-separated list (`layers: [1, 3]`, `class_weights: [1, 4]`) is that list, joined."""
    kinds = {}
    for dtype in dataclass_types:
        for name, hint in typing.get_type_hints(dtype).items():
            options = set(typing.get_args(hint) or (hint,)) - {type(None)}
            if options in ({float}, {int}, {str}):
                kinds[name] = options.pop()
    out = {}
    for key, value in values.items():
        if isinstance(value, list) and kinds.get(key) is str:
            if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
                raise UsageError(f"{key}: {value!r}: expected a list of numbers or names")
            value = ",".join(str(v) for v in value)
        elif isinstance(value, str) and kinds.get(key) in (float, int):
            try:
                value = kinds[key](value)
            except ValueError:
                raise UsageError(f"{key}: {value!r} is not a number") from None
        out[key] = value
    return out


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


LOG_FORMAT = "%(asctime)s - %(levelname)s - %(name)s - %(message)s"


class CurrentStreamHandler(logging.StreamHandler):
    """A StreamHandler that writes to `sys.stdout` (or `sys.stderr`) as it is when each record is emitted.

    A plain StreamHandler keeps the stream object it was given; once that stream is closed (pytest closes the
    capture stream of each test, a caller may swap sys.stdout back) every later record fails with "Logging error:
    I/O operation on closed file". Looking the stream up at emit time never holds a closed one.
    """

    def __init__(self, name: str = "stdout") -> None:
        if name not in ("stdout", "stderr"):
            raise ValueError(f"name must be stdout or stderr, not {name!r}")
        self.stream_name = name
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return getattr(sys, self.stream_name)

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ / setStream: the stream is always the current one
        pass


def configure_logging(level: int | str = logging.INFO, stream: str = "stdout") -> None:
    """Configure the root logger once per script entry (each script's main calls it; nothing does at import).

    Replaces the handler an earlier call installed (a second main() in one process does not log twice) and leaves
    every other handler alone (pytest's capture handlers included, which `basicConfig(force=True)` would close).
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, CurrentStreamHandler)]:
        root.removeHandler(handler)
    handler = CurrentStreamHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%m/%d/%Y %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)


def setup_logging(training_args: Any) -> None:
    """The training scripts' logging (transformers' run_glue.py, minus the handlers that keep a stream)."""
    configure_logging(logging.WARNING)
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    logging.getLogger("__main__").setLevel(log_level)
    logging.getLogger("distillkit").setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    # transformers' own handler keeps the sys.stderr of its first import: its records go to the root's instead.
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    check_launch(training_args)
    # Every rank says who it is, so a multi-process run shows its world size in the log.
    logger.warning(
        f"Process rank: {training_args.process_index}, world size: {training_args.world_size}, "
        f"device: {training_args.device}, fp16: {training_args.fp16}, bf16: {training_args.bf16}"
    )


def check_launch(training_args: Any) -> None:
    """Refuse a multi-process launch in which each process would train alone.

    Accelerate's MULTI_GPU launcher on a machine without GPUs does not pass the config's `use_cpu` on, so without
    `--use_cpu true` every process runs its own world-size-1 training into the same --output_dir.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size == 1:
        raise UsageError(
            f"launched as {launched} processes (WORLD_SIZE={launched}) but each would train alone: without a GPU "
            "pass --use_cpu true (CPU DDP over gloo)"
        )


def list_checkpoints(output_dir: str) -> list[str]:
    """Checkpoint directories that were completely written (trainer_state.json is saved last), oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(name)
        path = os.path.join(output_dir, name)
        if match and os.path.isfile(os.path.join(path, "trainer_state.json")):
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def is_finished_run(output_dir: str) -> bool:
    return os.path.isfile(os.path.join(output_dir, FINISHED_MARKER))


def apply_output_dir_policy(
    output_dir: str, overwrite_output_dir: bool, resume_from_checkpoint: str | bool | None, skip_if_finished: bool = False
) -> str | None:
    """The output-directory policy of every script, decided without writing anything: refuse, resume or overwrite.

    Refuse (UsageError) a finished run, or a non-empty directory that is not one of our runs, unless
    `overwrite_output_dir`; resume an unfinished run from its last checkpoint (or the one given), returned; else None
    for a fresh start (an empty or missing directory, or one to overwrite). With `skip_if_finished` a finished run is
    returned as `output_dir` itself: the caller skips it if its request fingerprint is this run's
    (`distillkit.training.resume_or_skip`). Whether a checkpoint or finished run may be used is decided there.
    """
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint not in ("", "True", "False"):
        if not os.path.isdir(resume_from_checkpoint):
            raise UsageError(f"--resume_from_checkpoint {resume_from_checkpoint}: no such checkpoint directory")
        return resume_from_checkpoint
    if not os.path.isdir(output_dir) or not os.listdir(output_dir):
        return None
    if overwrite_output_dir:
        return None
    if is_finished_run(output_dir):
        if skip_if_finished:
            return output_dir
        raise UsageError(
            f"--output_dir {output_dir} already holds a finished run ({FINISHED_MARKER}); "
            "pass --overwrite_output_dir to replace it, or choose another --output_dir"
        )
    checkpoints = list_checkpoints(output_dir)
    if checkpoints:
        return checkpoints[-1]
    raise UsageError(
        f"--output_dir {output_dir} is not empty and holds no checkpoint to resume from; "
        "pass --overwrite_output_dir to write into it anyway"
    )


def staging_dir_for(output_dir: str) -> str:
    """A new empty directory named like `output_dir`, inside a hidden folder beside it (same file system, so
    `replace_directory` is a rename): a script writes its whole output there before it replaces anything."""
    target = os.path.abspath(output_dir)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    holder = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.staging-", dir=parent)
    staging = os.path.join(holder, os.path.basename(target))
    os.mkdir(staging)
    return staging


def discard_staging_dir(staging: str) -> None:
    shutil.rmtree(os.path.dirname(staging), ignore_errors=True)


def replace_directory(staging: str, output_dir: str) -> None:
    """--overwrite_output_dir: `output_dir` becomes exactly the complete new output in `staging` (`staging_dir_for`),
    never a merge of the old files and the new; the old directory is removed only once the new one is in place."""
    target = os.path.abspath(output_dir)
    holder = os.path.dirname(staging)
    if os.path.exists(target):
        os.rename(target, os.path.join(holder, "replaced"))
    os.rename(staging, target)
    shutil.rmtree(holder, ignore_errors=True)  # the replaced directory, if any, with it


def publish_files(staging: str, output_dir: str) -> list[str]:
    """Move every file written whole into `staging` (`staging_dir_for`) to the same relative path in `output_dir`,
    replacing files of the same name and leaving its other files alone, then discard `staging`: a writer that fails
    part-way leaves `output_dir` as it was. Returns the relative paths published."""
    published = []
    for root, _, files in os.walk(staging):
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), staging)
            target = os.path.join(output_dir, rel)
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            os.replace(os.path.join(root, name), target)
            published.append(rel)
    discard_staging_dir(staging)
    return published


def clear_stale_checkpoints(output_dir: str) -> None:
    """With --overwrite_output_dir, old checkpoints must not be mistaken for this run's on a later resume."""
    for path in list_checkpoints(output_dir):
        logger.warning(f"--overwrite_output_dir: removing stale checkpoint {path}")
        shutil.rmtree(path, ignore_errors=True)
# What marks a directory as one of our runs (finished, killed, or a model saved by one of our scripts).
RUN_FILES = ("run_record.json", FINISHED_MARKER, "trainer_state.json", "config.json", "adapter_config.json",
             "run_fingerprint.json")  # fmt: skip


def is_run_dir(output_dir: str) -> bool:
    return os.path.isdir(output_dir) and (
        any(os.path.exists(os.path.join(output_dir, name)) for name in RUN_FILES)
        or any(_CHECKPOINT_RE.match(name) for name in os.listdir(output_dir))
    )


def clear_previous_run(output_dir: str) -> None:
    """--overwrite_output_dir is a fresh start: a previous run's files (checkpoints, weights, records, an adapter's
    merged/ model) are removed, never merged with the new run's. A non-empty directory that is not one of our runs
    is left as it is (its files cannot be mistaken for a run's)."""
    if not is_run_dir(output_dir):
        if os.path.isdir(output_dir) and os.listdir(output_dir):
            logger.warning(f"--overwrite_output_dir: {output_dir} is not one of our runs; its files are left in place")
        return
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        logger.warning(f"--overwrite_output_dir: removing the previous run's {path}")
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
