"""--push_to_hub: what would be uploaded, in what order, and clear errors that lose nothing.

The Hub is unreachable from here. Only `HfApi.create_repo` / `HfApi.upload_folder` (the huggingface_hub boundary)
are replaced, in one test; the file list is computed with huggingface_hub's own filter, as upload_folder does.
The failure tests use the real library with no stand-ins.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from conftest import REPO, common_args
from huggingface_hub import HfApi, ModelCard, RepoUrl, constants
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

import run_distill
from distill_trainer import DistillationTrainingArguments
from distillkit.hub import (
    HubPushError,
    defer_push_to_hub,
    push_directory,
    push_run,
    wants_push,
)

RUN_FILES = {
    "README.md",
    "all_results.json",
    "config.json",
    "eval_results.json",
    "model.safetensors",
    "run_record.json",
    "test_results.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "train_results.json",
    "trainer_state.json",
    "training_args.bin",
}
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json"}
# The Trainer's pickled TrainingArguments stays on disk but is never uploaded (unpickling runs code).
UPLOADED_FILES = RUN_FILES - {"training_args.bin"}


ADAPTER_FILES = UPLOADED_FILES - {"config.json", "model.safetensors"} | {
    "adapter_config.json",
    "adapter_model.safetensors",
}
MERGED_FILES = {
    *("README.md", "config.json", "model.safetensors", "run_record.json", "tokenizer.json", "tokenizer_config.json")
}


class HubCalls:
    """Records the two Hub calls and snapshots what upload_folder would send."""

    def __init__(self, monkeypatch):
        self.calls = []
        monkeypatch.setattr(HfApi, "create_repo", lambda api, *args, **kwargs: self.create_repo(*args, **kwargs))
        monkeypatch.setattr(HfApi, "upload_folder", lambda api, **kwargs: self.upload_folder(**kwargs))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        name = repo_id if "/" in repo_id else f"me/{repo_id}"
        return RepoUrl(f"https://huggingface.co/{name}")

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, allow_patterns=None, **kwargs):
        files = sorted(
            os.path.relpath(os.path.join(root, f), folder_path).replace(os.sep, "/")
            for root, _, names in os.walk(folder_path)
            for f in names
        )
        ignore = list(ignore_patterns or []) + DEFAULT_IGNORE_PATTERNS
        uploaded = set(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore))
        with open(os.path.join(folder_path, "README.md")) as f:
            card = f.read()
        self.calls.append(("upload_folder", repo_id, dict(kwargs, files=uploaded, all_files=set(files), card=card)))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()


def test_push_uploads_the_finished_run_once(tmp_path, tiny_classifier_dir, tiny_data_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_from_environment")
    hub = HubCalls(monkeypatch)
    out = tmp_path / "even"
    argv = common_args(
        tiny_data_dir,
        out,
        teacher_name_or_path=tiny_classifier_dir,
        save_strategy="epoch",  # a checkpoint-N/ folder exists and must not be uploaded
        push_to_hub="true",
        hub_model_id="someone/tiny-even",
        hub_private_repo="true",
    )
    run_distill.main(argv)

    # The Trainer did not create the repo at init or push at save: exactly one create, then one upload.
    assert [c[0] for c in hub.calls] == ["create_repo", "upload_folder"]
    _, repo_id, create = hub.calls[0]
    assert repo_id == "someone/tiny-even"
    assert create["token"] == "hf_from_environment" and create["private"] is True and create["exist_ok"] is True
    _, repo_id, upload = hub.calls[1]
    assert repo_id == "someone/tiny-even" and upload["token"] == "hf_from_environment"
    assert any(f.startswith("checkpoint-") for f in upload["all_files"])
    assert "training_args.bin" in upload["all_files"]
    assert upload["files"] == UPLOADED_FILES

    # The uploaded card names the Hub repo, and its numbers are the run's.
    card = ModelCard(upload["card"])
    results = json.loads((out / "all_results.json").read_text())
    assert card.data.model_name == "someone/tiny-even"
    # The snippet loads the Hub repo (top_k=None follows when a tuned decision rule needs every score).
    assert 'pipeline("text-classification", model="someone/tiny-even"' in card.text
    test_acc = [
        r.metric_value for r in card.data.eval_results if r.dataset_split == "test" and r.metric_type == "accuracy"
    ]
    assert test_acc == [results["test_accuracy"]]

    # Nothing that reads a run needs the pickle: without it the run still serves, evaluates and gets its card.
    from distillkit.runtime import load_classifier_dir
    from distillkit.model_card import build_model_card

    (out / "training_args.bin").unlink()
    loaded = load_classifier_dir(str(out))
    assert sorted(loaded.id2label) == [0, 1] and loaded.results == results
    assert ModelCard(str(build_model_card(str(out)))).data.eval_results


def test_unreachable_hub_fails_after_saving(tmp_path, tiny_classifier_dir, tiny_data_dir):
    out = tmp_path / "even"
    argv = common_args(
        tiny_data_dir, out, teacher_name_or_path=tiny_classifier_dir, push_to_hub="true", hub_token="hf_not_a_token"
    )
    proc = subprocess.run(
        [sys.executable, "run_distill.py", *argv], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--push_to_hub: pushing to even failed" in errors[0]
    assert f"the model is saved in {out}" in errors[0] and f"hf upload even {out}" in errors[0]
    assert "Traceback" not in proc.stderr
    assert RUN_FILES <= set(os.listdir(out))  # everything is on disk, the run counts as finished


@pytest.fixture()
def no_token(monkeypatch, tmp_path):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token_here"))


def test_missing_token_is_a_clear_error_and_changes_nothing(tmp_path, tiny_classifier_dir, no_token):
    run = tmp_path / "run"
    shutil.copytree(tiny_classifier_dir, run)
    before = {f: (run / f).stat().st_mtime_ns for f in os.listdir(run)}
    with pytest.raises(HubPushError, match=r"no Hugging Face token \(pass --hub_token, set HF_TOKEN") as err:
        push_directory(str(run), repo_id="someone/x")
    assert f"the model is saved in {run}" in str(err.value) and "\n" not in str(err.value)
    assert {f: (run / f).stat().st_mtime_ns for f in os.listdir(run)} == before


def test_defer_push_keeps_the_request_off_the_trainer(tmp_path):
    args = DistillationTrainingArguments(
        output_dir=str(tmp_path), push_to_hub=True, hub_model_id="someone/x", use_cpu=True, report_to="none"
    )
    deferred = defer_push_to_hub(args)
    assert deferred.push_to_hub is False and wants_push(deferred)
    assert args.push_to_hub is True  # the caller's arguments are untouched
    assert deferred.hub_model_id == "someone/x"
    plain = DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert defer_push_to_hub(plain) is plain and not wants_push(plain)


def test_push_run_sends_a_merged_copy_to_its_own_repo(tmp_path, tiny_classifier_dir, monkeypatch):
    """An adapter dir's merged/ copy is not part of the adapter repo; it goes to `<hub_model_id>-merged`."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distillkit.hub import MERGED_REPO_SUFFIX

    out = tmp_path / "lora"
    model = get_peft_model(
        AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir),
        LoraConfig(task_type=TaskType.SEQ_CLS, r=2, target_modules=["query"]),
    )
    model.save_pretrained(out)
    model.merge_and_unload().save_pretrained(out / "merged")
    # As run_lora.py saves them: each directory with its tokenizer (a card is refused without one).
    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier_dir)
    tokenizer.save_pretrained(out)
    tokenizer.save_pretrained(out / "merged")
    (out / "all_results.json").write_text(json.dumps({"method": "lora"}))
    hub = HubCalls(monkeypatch)
    args = DistillationTrainingArguments(
        output_dir=str(out), push_to_hub=True, hub_model_id="someone/lora", hub_token="hf_x", use_cpu=True
    )
    push_run(args)
    push_run(args, output_dir=str(out / "merged"), repo_suffix=MERGED_REPO_SUFFIX)
    uploads = [c for c in hub.calls if c[0] == "upload_folder"]
    assert [u[1] for u in uploads] == ["someone/lora", "someone/lora-merged"]
    assert uploads[0][2]["files"] == {
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "all_results.json",
        *TOKENIZER_FILES,
    }
    assert uploads[1][2]["files"] == {"README.md", "config.json", "model.safetensors", *TOKENIZER_FILES}
    assert ModelCard(uploads[0][2]["card"]).data.library_name == "peft"
    assert ModelCard(uploads[1][2]["card"]).data.library_name == "transformers"


def _card_numbers_are(card: ModelCard, results: dict) -> None:
    """The uploaded card's model-index holds the run's test/validation accuracy and ROC-AUC, unrounded."""
    found = {(r.dataset_split, r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
    for split, prefix in (("validation", "eval"), ("test", "test")):
        assert found[(split, "accuracy", None)] == results[f"{prefix}_accuracy"]
        assert found[(split, "roc_auc", None)] == results[f"{prefix}_roc_auc"]


def test_run_lora_merge_pushes_adapter_and_merged_model(tmp_path, tiny_base_model_dir, tiny_data_dir, monkeypatch):
    import run_lora

    monkeypatch.setenv("HF_TOKEN", "hf_from_environment")
    hub = HubCalls(monkeypatch)
    out = tmp_path / "lora"
    argv = common_args(
        tiny_data_dir, out, model_name_or_path=tiny_base_model_dir, push_to_hub="true", hub_model_id="someone/lora"
    )
    run_lora.main(argv + ["--merge", "true"])

    assert [(c[0], c[1]) for c in hub.calls] == [
        ("create_repo", "someone/lora"),
        ("upload_folder", "someone/lora"),
        ("create_repo", "someone/lora-merged"),
        ("upload_folder", "someone/lora-merged"),
    ]
    adapter, merged = hub.calls[1][2], hub.calls[3][2]
    # Everything was saved before the first upload: merged/ was on disk, but is not part of the adapter repo.
    assert "merged/model.safetensors" in adapter["all_files"] and "training_args.bin" in adapter["all_files"]
    assert adapter["files"] == ADAPTER_FILES
    assert merged["files"] == MERGED_FILES
    results = json.loads((out / "all_results.json").read_text())
    adapter_card, merged_card = ModelCard(adapter["card"]), ModelCard(merged["card"])
    assert adapter_card.data.library_name == "peft" and adapter_card.data.model_name == "someone/lora"
    assert merged_card.data.library_name == "transformers" and merged_card.data.model_name == "someone/lora-merged"
    # The snippet loads the Hub repo (top_k=None follows when a tuned decision rule needs every score).
    assert 'pipeline("text-classification", model="someone/lora-merged"' in merged_card.text
    _card_numbers_are(adapter_card, results)
    _card_numbers_are(merged_card, results)


def test_missing_token_fails_after_the_run_is_saved(tmp_path, tiny_classifier_dir, tiny_data_dir, no_token, capsys):
    out = tmp_path / "even"
    argv = common_args(tiny_data_dir, out, teacher_name_or_path=tiny_classifier_dir, push_to_hub="true")
    with pytest.raises(SystemExit) as exit_info:
        run_distill.main(argv)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--push_to_hub: no Hugging Face token" in errors[0]
    assert f"the model is saved in {out}" in errors[0]
    assert RUN_FILES <= set(os.listdir(out))  # finished, card included: a later `hf upload` sends it as it is


def test_run_lora_push_failure_keeps_adapter_and_merged_on_disk(
    tmp_path, tiny_base_model_dir, tiny_data_dir, no_token, capsys
):
    import run_lora

    out = tmp_path / "lora"
    argv = common_args(tiny_data_dir, out, model_name_or_path=tiny_base_model_dir, push_to_hub="true")
    with pytest.raises(SystemExit) as exit_info:
        run_lora.main(argv + ["--merge", "true"])
    assert exit_info.value.code == 2
    assert "--push_to_hub: no Hugging Face token" in capsys.readouterr().err
    assert ADAPTER_FILES <= set(os.listdir(out))
    assert MERGED_FILES <= set(os.listdir(out / "merged"))


def test_unreachable_network_is_a_clear_error(tmp_path, tiny_classifier_dir, monkeypatch):
    """Not offline mode: a real connection to a port where nothing listens (httpx errors are not OSErrors)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    run = tmp_path / "run"
    shutil.copytree(tiny_classifier_dir, run)
    with pytest.raises(HubPushError, match=r"--push_to_hub: pushing to someone/x failed \(ConnectError") as err:
        push_directory(str(run), repo_id="someone/x", token="hf_x")
    assert f"the model is saved in {run}; upload it later with: hf upload someone/x {run} ." in str(err.value)
