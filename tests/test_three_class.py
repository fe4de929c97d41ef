"""More than two classes end to end: a LoRA adapter on a pretrained (headless) base loads back in run_eval.py, in
the serving loader app.py uses and with its model card's snippet; run_compare.py on a 3-class data set."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import common_args, synthetic_rows
from tolerances import MERGE_ATOL, decided_alike_but_ties

import run_compare
import run_eval
import run_lora
from distillkit.runtime import load_classifier_dir
from distillkit.serving import ModelRegistry, PredictRequest, ServingLimits

CLASSES = ["anger", "joy", "neutral"]
EVAL_FAST = ["--max_seq_length", "32", "--latency_runs", "50", "--throughput_texts", "32", "--num_threads", "1"]
EVAL_FAST += ["--bootstrap_samples", "10"]


def class_scores(a: pd.DataFrame, b: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two saved prediction files of the same texts -> their probabilities and decisions."""
    assert a.text.tolist() == b.text.tolist()
    columns = [c for c in a.columns if c.startswith("prob_")]
    return a[columns].to_numpy(float), b[columns].to_numpy(float), a.pred.to_numpy(), b.pred.to_numpy()


def decision_offsets(model_dir) -> list[float] | None:
    return json.loads((model_dir / "config.json").read_text()).get("decision_logit_offsets")


@pytest.fixture(scope="module")
def three_class_data(tmp_path_factory):
    """Its own column names, as a user's CSV has them: `comment` and `emotion`."""
    directory = tmp_path_factory.mktemp("three_class")
    for split, n, seed in (("train", 96, 1), ("validation", 24, 2), ("test", 24, 3)):
        rows = synthetic_rows(n, seed, num_labels=3).rename(columns={"text": "comment", "label": "emotion"})
        rows.to_csv(directory / f"{split}.csv", index=False)
    return directory


def test_three_class_lora_on_a_pretrained_base_loads_everywhere(tmp_path, tiny_base_model_dir, three_class_data):
    out = tmp_path / "lora"
    columns = ["--text_column", "comment", "--label_column", "emotion"]
    argv = common_args(three_class_data, out, model_name_or_path=tiny_base_model_dir, class_names=",".join(CLASSES))
    run_lora.main(argv + columns + ["--merge", "true"])
    assert not (out / "config.json").exists()  # an adapter on a headless base: the labels live in the results

    # The serving loader (app.py) and run_eval.py's: the 3-class head and names, the weights as trained.
    clf = load_classifier_dir(str(out))
    assert clf.is_adapter and clf.id2label == dict(enumerate(CLASSES)) and clf.model.config.num_labels == 3
    merged = load_classifier_dir(str(out / "merged"))
    batch = clf.tokenizer(["joy joy the", "anger is anger"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(clf.model(**batch).logits, merged.model(**batch).logits, rtol=0, atol=MERGE_ATOL)

    # A copy without its results (labels unknown): the head's size still gives the class count.
    bare = tmp_path / "bare"
    shutil.copytree(out, bare, ignore=shutil.ignore_patterns("merged", "all_results.json"))
    assert load_classifier_dir(str(bare)).model.config.num_labels == 3

    registry = ModelRegistry.from_dirs([str(out)], ServingLimits())
    (name,) = registry.names
    answer = registry.predict(PredictRequest(texts=["joy joy"], models=[name]))
    assert set(re.findall(r"'(anger|joy|neutral)'", str(answer))) == set(CLASSES)

    results = run_eval.main(
        ["--model_dirs", str(out), str(out / "merged"), "--dataset_name", str(three_class_data)]
        + ["--output_dir", str(tmp_path / "report")]
        + columns
        + EVAL_FAST
    )
    assert len(results) == 2
    folder = tmp_path / "report" / "predictions"
    predictions = pd.read_csv(folder / "lora.csv")
    (merged_file,) = set(folder.glob("*.csv")) - {folder / "lora.csv"}
    merged_predictions = pd.read_csv(merged_file)
    # The adapter and the merged model decide alike (up to ties within their rounding; then their scores are equal).
    if decided_alike_but_ties(*class_scores(predictions, merged_predictions), decision_offsets(out / "merged")):
        assert results.accuracy.nunique() == 1 and results.macro_f1.nunique() == 1
    assert set(predictions.label) == {0, 1, 2}

    # The card's documented snippet, run as a user would, in a fresh interpreter.
    card = (out / "README.md").read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL)
    assert "num_labels=3" in snippet
    proc = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=tmp_path,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Decided by the tuned per-class logit offsets (on by default): the snippet prints the class name.
    assert "decision_logit_offsets" in json.loads((out / "all_results.json").read_text())
    assert proc.stdout.strip().splitlines()[-1] in CLASSES, proc.stdout


def test_run_compare_on_a_three_class_data_set(tmp_path, tiny_base_model_dir, three_class_data):
    exp = tmp_path / "exp"
    argv = [
        "--teacher_name_or_path", str(tiny_base_model_dir),
        "--dataset_name", str(three_class_data),
        "--text_column", "comment",
        "--label_column", "emotion",
        "--experiment_dir", str(exp),
        "--seeds", "0",
        "--methods", "teacher", "even", "lora", "even_onnx", "eval",
        "--max_seq_length", "32",
        "--teacher_learning_rate", "1e-3",
        "--student_learning_rate", "1e-3",
        "--eval_args", " ".join(EVAL_FAST[2:]),
        "--max_steps", "3",
        "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "16",
        "--do_eval", "false",
        "--do_predict", "false",
        "--save_strategy", "no",
        "--use_cpu", "true",
        "--report_to", "none",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    status = run_compare.main(argv)
    stages = ("teacher", "even", "lora", "even_onnx")
    assert status == {**{f"seed0/{s}": "ran" for s in stages}, "eval": "ran"}, status
    results = pd.read_csv(exp / "report" / "results.csv")
    # The export stage is scored beside the PyTorch models: its fp32 and int8 models, on ONNX Runtime.
    exported = results[results.runtime.str.startswith("onnxruntime")]
    assert sorted(exported.runtime) == ["onnxruntime-fp32", "onnxruntime-int8"], results[["model", "runtime"]]
    pytorch_even = results[results.method == "even"].set_index("runtime").loc["pytorch"]
    onnx_even = exported.set_index("runtime").loc["onnxruntime-fp32"]
    frames = [pd.read_csv(exp / "report" / "predictions" / f"{row.model}.csv") for row in (pytorch_even, onnx_even)]
    # ONNX Runtime decides as PyTorch does, by the saved offsets (up to ties within the two runtimes' rounding).
    if decided_alike_but_ties(*class_scores(*frames), decision_offsets(exp / "seed0" / "even")):
        assert onnx_even.f1 == pytest.approx(pytorch_even.f1, abs=1e-12)
    results = results[results.runtime == "pytorch"]
    assert set(results.method) == {"teacher", "even", "lora"}
    assert results.macro_f1.notna().all() and results.roc_auc.notna().all()
    for name in ("seed0-teacher", "seed0-even", "seed0-lora"):
        assert set(pd.read_csv(exp / "report" / "predictions" / f"{name}.csv").label) == {0, 1, 2}


def test_a_class_never_predicted_is_flagged_in_the_log_results_and_report(tmp_path, three_class_data, caplog):
    """A 3-class model whose head always says `anger`: evaluation names joy and neutral as never predicted."""
    from conftest import make_tokenizer, tiny_bert_config
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    id2label = dict(enumerate(CLASSES))
    model = BertForSequenceClassification(
        tiny_bert_config(num_labels=3, id2label=id2label, label2id={v: k for k, v in id2label.items()})
    )
    with torch.no_grad():  # the head reads its input (init-size weights) but favours class 0 by far
        model.classifier.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    majority = tmp_path / "majority"
    model.save_pretrained(majority)
    make_tokenizer(majority)
    out = tmp_path / "eval"
    argv = ["--model_dirs", str(majority), "--dataset_name", str(three_class_data), "--output_dir", str(out)]
    argv += ["--text_column", "comment", "--label_column", "emotion"] + EVAL_FAST
    with caplog.at_level("WARNING"):
        run_eval.main(argv)
    assert "class joy, neutral are never predicted by majority on test" in caplog.text
    results = pd.read_csv(out / "results.csv")
    assert results.never_predicted.tolist() == ["joy;neutral"]
    per_label = pd.read_csv(out / "per_label.csv").set_index("label")
    assert per_label.predicted.to_dict() == {"anger": 24, "joy": 0, "neutral": 0}
    report = (out / "report.md").read_text()
    assert "class joy, neutral are never predicted by **majority**" in report
    assert "never predicts some classes (majority: joy, neutral)" in report  # the verdict's best model
    assert "`test` class counts: anger 8 (33.3%), joy 8 (33.3%), neutral 8 (33.3%)." in report
