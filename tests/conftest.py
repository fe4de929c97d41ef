"""Fixtures: tiny random BERTs, a tiny tokenizer and small synthetic data sets, all built on the fly."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# The app serves loopback Host names only (Host allow-list): TestClient's default "testserver" would get 400.
LOCAL_URL = "http://localhost"

TOXIC_WORDS = ["idiot", "stupid", "hate", "moron", "loser", "dumb", "trash", "ugly"]
NEUTRAL_WORDS = ["thanks", "article", "citation", "edit", "page", "source", "fixed", "please", "good", "section"]
FILLER = ["the", "a", "this", "you", "is", "are", "and", "of", "to", "it"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_bert_config(num_layers: int = 4, num_labels: int = 2, vocab_size: int | None = None, **kw) -> BertConfig:
    sizes = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64}
    sizes.update(kw)
    return BertConfig(
        vocab_size=vocab_size or len(SPECIAL + TOXIC_WORDS + NEUTRAL_WORDS + FILLER),
        num_hidden_layers=num_layers,
        num_labels=num_labels,
        **sizes,
    )


def make_tokenizer(directory: Path) -> BertTokenizer:
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {word: i for i, word in enumerate(SPECIAL + TOXIC_WORDS + NEUTRAL_WORDS + FILLER)}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=64)
    tokenizer.save_pretrained(directory)
    return tokenizer


def synthetic_rows(n: int, seed: int, num_labels: int = 2) -> pd.DataFrame:
    """Comments whose label is learnable: toxic rows contain insults, others do not."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % num_labels
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 8))]
        if num_labels == 2:
            words += [rng.choice(TOXIC_WORDS if label else NEUTRAL_WORDS) for _ in range(rng.randint(1, 3))]
        else:
            words += [(TOXIC_WORDS + NEUTRAL_WORDS)[label]] * 2
        rng.shuffle(words)
        rows.append({"id": f"r{seed}-{i}", "text": " ".join(words), "label": label})
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    make_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_base_model_dir(tmp_path_factory) -> Path:
    """A 4-layer pretrained-style BertModel checkpoint: no classification head (stage 1 must fine-tune it)."""
    directory = tmp_path_factory.mktemp("tiny_base")
    torch.manual_seed(0)
    BertModel(tiny_bert_config()).save_pretrained(directory)
    make_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory) -> Path:
    """A 4-layer BertForSequenceClassification with 2 labels: used as a teacher as it is."""
    directory = tmp_path_factory.mktemp("tiny_classifier")
    torch.manual_seed(0)
    config = tiny_bert_config(id2label={0: "non-toxic", 1: "toxic"}, label2id={"non-toxic": 0, "toxic": 1})
    BertForSequenceClassification(config).save_pretrained(directory)
    make_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny_data")
    for split, n, seed in (("train", 96, 1), ("validation", 24, 2), ("test", 24, 3)):
        synthetic_rows(n, seed).to_csv(directory / f"{split}.csv", index=False)
    return directory


@pytest.fixture()
def tiny_task(tiny_data_dir, tiny_tokenizer_dir):
    """(data, tokenized splits, tokenizer, a dropout-free tiny teacher): a training-mode forward is then a fixed
    function of its batch."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from distillkit.data import DataTrainingArguments, load_text_classification_data, tokenize_splits

    data = load_text_classification_data(
        DataTrainingArguments(dataset_name=str(tiny_data_dir), max_seq_length=32), seed=0
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tokenized = tokenize_splits(data, tokenizer, 32)
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    return data, tokenized, tokenizer, teacher


def common_args(data_dir: Path, output_dir: Path, **overrides) -> list[str]:
    """Arguments for a seconds-long run on CPU."""
    args = {
        "dataset_name": str(data_dir),
        "output_dir": str(output_dir),
        "max_seq_length": "32",
        "per_device_train_batch_size": "8",
        "per_device_eval_batch_size": "16",
        "num_train_epochs": "1",
        "learning_rate": "1e-3",
        "logging_steps": "2",
        "save_strategy": "no",
        "use_cpu": "true",
        "seed": "0",
        "report_to": "none",
        "disable_tqdm": "true",
    }
    args.update({k: str(v) for k, v in overrides.items()})
    out = []
    for key, value in args.items():
        out += [f"--{key}", value]
    return out


@torch.inference_mode()
def trainer_batched_logits(model, tokenizer, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
    """The float64 logits of `texts` batched as the Trainer's predict batches a split: in order, `batch_size` per
    batch, padded to the longest (the pass a training run records its metrics from)."""
    from distillkit.runtime import encode_texts

    starts = range(0, len(texts), batch_size)
    batches = [encode_texts(tokenizer, texts[i : i + batch_size], max_length, "cpu") for i in starts]
    return torch.cat([model(**batch).logits for batch in batches]).double().numpy()


def replayed_logits(
    model_dir, texts: list[str], max_length: int, trainer_batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """A saved model's logits of `texts` from the Trainer's pass (`trainer_batched_logits`) and from run_eval.py's
    (`predict_logits`: length-sorted batches of 64), loaded as every reader loads it (`load_classifier_dir`)."""
    from distillkit.runtime import load_classifier_dir, predict_logits

    clf = load_classifier_dir(str(model_dir))
    trainer = trainer_batched_logits(clf.model, clf.tokenizer, texts, max_length, trainer_batch_size)
    return trainer, predict_logits(clf.model, clf.tokenizer, texts, max_length, batch_size=64)


def saved_model_probabilities(model_dir: Path, texts) -> tuple[np.ndarray, float]:
    """The saved model's probabilities of `texts` (run_eval's pass) and how far the training run's own pass may
    round from them (probability units).

    The training run scored each split with the Trainer (in order, 16 per batch, 32 tokens, as common_args sets):
    that pass is replayed to measure the float32 rounding between the two batchings (`rounding_atol`, logits), and a
    probability moves by at most 1/4 of its logit (sigmoid) or 1/2 of the largest logit change (softmax).
    """
    from tolerances import rounding_atol
    from transformers import AutoConfig

    from distillkit.tasks import MULTI_LABEL, Task

    trainer, logits = replayed_logits(model_dir, list(texts), max_length=32, trainer_batch_size=16)
    task = Task.from_config(AutoConfig.from_pretrained(model_dir))
    slope = 1 / 4 if task.problem_type == MULTI_LABEL else 1 / 2
    return task.probabilities(logits), slope * rounding_atol(logits, trainer)


def kill_at_checkpoint_then_resume(script: str, argv: list, output_dir: Path, checkpoint_step: int) -> dict:
    """Run `script` in a subprocess, SIGKILL it once checkpoint-<checkpoint_step> is complete, run it again.

    Asserts what every resumable script must do: the killed run left no finished marker, the second run says
    which checkpoint it resumed from (at or after the one waited for), finishes, and leaves one unbroken loss
    history (each step logged once, the steps before the checkpoint kept). Needs `logging_steps=1` in `argv`.
    Returns the final trainer_state.json, for the caller's own checks (e.g. the global step).
    """
    cmd = [sys.executable, script, *[str(a) for a in argv]]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # trainer_state.json is the last file the Trainer writes into a checkpoint.
    marker = output_dir / f"checkpoint-{checkpoint_step}" / "trainer_state.json"
    deadline = time.time() + 240
    while not marker.exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline, f"no {marker} after 240 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (output_dir / "all_results.json").exists()

    done = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = [line for line in (done.stdout + done.stderr).splitlines() if "Resuming training from" in line]
    assert resumed and "checkpoint-" in resumed[0], "the second run did not resume from a checkpoint"
    resumed_step = int(resumed[0].rsplit("checkpoint-", 1)[1].split()[0])
    assert resumed_step >= checkpoint_step
    assert (output_dir / "all_results.json").is_file()
    state = json.loads((output_dir / "trainer_state.json").read_text())
    # Steps 1..resumed_step come from the checkpoint's history, the rest from the second run: none redone or lost.
    logged = [h["step"] for h in state["log_history"] if "loss" in h]
    assert logged == list(range(1, state["global_step"] + 1)), logged
    return state


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Tests never reach the Hub: a forgotten hub id must fail fast, not hang.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _script_logging():
    """Each test is one script run: the root logger's level and the handler a script's main() installs
    (`cli.configure_logging`) do not outlive it."""
    from distillkit.cli import CurrentStreamHandler

    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if isinstance(h, CurrentStreamHandler)]:
        root.removeHandler(handler)
    root.setLevel(level)


requires_shared = pytest.mark.skipif(
    not (SHARED / "models" / "all-MiniLM-L6-v2").is_dir() or not (SHARED / "data" / "wiki_toxic_small").is_dir(),
    reason="needs the real assets in ../shared (models/all-MiniLM-L6-v2, data/wiki_toxic_small) beside the repo",
)


def usage_error_lines(capsys, main, argv, code: int = 2) -> list[str]:
    """Run a script's main expecting it to fail with `code`: its `error:` lines (at least one, no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert lines, err
    return lines


def usage_error_line(capsys, main, argv) -> str:
    """A script's usage error (exit 2): its one `error:` line."""
    (line,) = usage_error_lines(capsys, main, argv)
    return line


@pytest.fixture()
def train_only_data(tmp_path) -> Path:
    """A data set with a train file only: its validation and test splits are carved with the seed and percentages
    (readers must carve them as training did)."""
    directory = tmp_path / "train_only"
    directory.mkdir()
    synthetic_rows(80, 1).to_csv(directory / "train.csv", index=False)
    return directory
