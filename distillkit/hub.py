"""Pushing a saved run to the Hugging Face Hub — once, at the end, after everything is safely on disk.

The `Trainer`'s own `--push_to_hub` creates the repo in `Trainer.__init__` (so without network a run fails before
it trains), pushes at every save, and replaces our model card with its draft at the final push. We therefore hand
the Trainer `push_to_hub=False` (`defer_push_to_hub`) and push ourselves when the run is finished (`push_run`):
card written, then `HfApi.create_repo` + `HfApi.upload_folder` — the same calls the Trainer makes. A missing
token or an unreachable Hub is a one-line error that says the model is saved and how to upload it later.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from typing import Any

from huggingface_hub import HfApi, get_token

from .cli import UsageError
from .model_card import write_model_card
from .records import MERGED_NAME_SUFFIX, MERGED_SUBDIR

logger = logging.getLogger(__name__)

# What the Trainer never uploads (private files, checkpoints), a LoRA run's merged model (its own repo), and the
# Trainer's pickled TrainingArguments: unpickling runs code, and nothing that reads a run needs it (the records in
# config.json, all_results.json and trainer_state.json say how the run was made).
TRAINING_ARGS_FILE = "training_args.bin"
IGNORE_PATTERNS = ["_*", "checkpoint-*", f"{MERGED_SUBDIR}/*", TRAINING_ARGS_FILE]
MERGED_REPO_SUFFIX = MERGED_NAME_SUFFIX  # lora → lora-merged, as records.merged_name names the directory
_PUSH_AT_END = "_push_to_hub_at_end"


class HubPushError(UsageError):
    """The push failed; the run's files are complete on disk (reported as one line, exit status 2)."""


def defer_push_to_hub(training_args: Any) -> Any:
    """A copy of `training_args` for the Trainer with its own push switched off, remembering the request."""
    if not training_args.push_to_hub:
        return training_args
    deferred = dataclasses.replace(training_args, push_to_hub=False)
    setattr(deferred, _PUSH_AT_END, True)
    return deferred


def wants_push(training_args: Any) -> bool:
    return bool(training_args.push_to_hub or getattr(training_args, _PUSH_AT_END, False))


def _network_errors() -> tuple[type[BaseException], ...]:
    # OSError covers HfHubHTTPError, OfflineModeIsEnabled and requests' errors; httpx's do not derive from it.
    errors: list[type[BaseException]] = [OSError]
    for name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(name).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _retry_hint(output_dir: str, repo_id: str) -> str:
    excludes = " ".join(f'--exclude "{p}"' for p in IGNORE_PATTERNS)
    return f"the model is saved in {output_dir}; upload it later with: hf upload {repo_id} {output_dir} . {excludes}"


def push_directory(
    output_dir: str,
    repo_id: str | None = None,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "End of training",
) -> str:
    """Create (or reuse) the model repo, rewrite the card to name it, upload `output_dir`; returns the commit URL.

    `repo_id` defaults to the directory's name in your namespace, as the Trainer's does.
    """
    repo_id = repo_id or os.path.basename(os.path.normpath(os.path.abspath(output_dir)))
    token = token or get_token()
    if not token:
        raise HubPushError(
            "--push_to_hub: no Hugging Face token (pass --hub_token, set HF_TOKEN, or run `hf auth login`); "
            + _retry_hint(output_dir, repo_id)
        )
    api = HfApi()
    try:
        repo_url = api.create_repo(repo_id, token=token, private=private, exist_ok=True)
        write_model_card(output_dir, repo_id=repo_url.repo_id)
        commit = api.upload_folder(
            repo_id=repo_url.repo_id,
            folder_path=output_dir,
            commit_message=commit_message,
            token=token,
            revision=revision,
            ignore_patterns=list(IGNORE_PATTERNS),
        )
    except _network_errors() as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise HubPushError(
            f"--push_to_hub: pushing to {repo_id} failed ({type(err).__name__}: {reason}); "
            + _retry_hint(output_dir, repo_id)
        ) from err
    url = getattr(commit, "commit_url", None) or str(repo_url)
    logger.info(f"Pushed {output_dir} to {url}")
    return url


def push_run(training_args: Any, output_dir: str | None = None, repo_suffix: str = "") -> str | None:
    """Push a finished run as `--push_to_hub`/`--hub_model_id`/`--hub_token`/`--hub_private_repo` ask (main process).

    `output_dir` defaults to `--output_dir`; `repo_suffix` names a second repo for the same run (a merged model:
    `MERGED_REPO_SUFFIX`). Returns the commit URL, or None on other processes.
    """
    if not training_args.should_save:
        return None
    output_dir = output_dir or training_args.output_dir
    repo_id = training_args.hub_model_id or os.path.basename(
        os.path.normpath(os.path.abspath(training_args.output_dir))
    )
    return push_directory(
        output_dir,
        repo_id=repo_id + repo_suffix,
        token=training_args.hub_token,
        private=training_args.hub_private_repo,
        revision=training_args.hub_revision,
    )
