"""run_export.py: ONNX logits equal PyTorch's (full model, LoRA adapter merged, 3 classes), the int8 twin's recorded
agreement, run_eval.py and the server on an exported directory, and clear errors for bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from conftest import make_tokenizer, synthetic_rows, tiny_bert_config
from tolerances import auc_noise_bound, forward_atol
from transformers import AutoTokenizer, BertForSequenceClassification

import run_eval
import run_export
from distillkit import export
from distillkit.loading import find_model_dirs
from distillkit.runtime import load_classifier_dir, predict_logits
from distillkit.metrics import softmax
from distillkit.serving import ModelRegistry, PredictRequest, ServingLimits

FAST_EVAL = ["--max_seq_length", "32", "--latency_runs", "50", "--throughput_texts", "32"]
FAST_EVAL += ["--num_threads", "1", "--bootstrap_samples", "10"]
# Texts of several lengths, in batches of several sizes: both dynamic axes are exercised.
TEXTS = [
    "thanks",
    "you are a stupid idiot",
    "please fix the citation in this section of the article",
    "this page is trash and you are an ugly dumb loser and a moron",
    "good edit",
]


def _export(model_dir, out, *extra):
    return run_export.main(["--model_dir", str(model_dir), "--output_dir", str(out), *map(str, extra)])


def _pytorch_logits(model_dir, texts):
    clf = load_classifier_dir(str(model_dir))
    return predict_logits(clf.model, clf.tokenizer, texts, 32, batch_size=3)


def _onnx_logits(path, texts, batch_size=3):
    clf = load_classifier_dir(str(path))
    return predict_logits(clf.model, clf.tokenizer, texts, 32, batch_size=batch_size)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_classifier_dir, tiny_data_dir):
    out = tmp_path_factory.mktemp("export") / "clf-onnx"
    record = _export(tiny_classifier_dir, out, "--quantize", "int8", "--dataset_name", tiny_data_dir)
    return out, record


def test_fp32_export_equals_pytorch_with_dynamic_axes(exported, tiny_classifier_dir):
    out, record = exported
    graph = onnx.load(str(out / export.ONNX_FILE)).graph
    for inp in graph.input:  # batch and sequence are named, not fixed
        dims = inp.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "sequence"], inp
    expected = _pytorch_logits(tiny_classifier_dir, TEXTS)
    for batch_size in (1, 2, 5):
        assert np.abs(_onnx_logits(out, TEXTS, batch_size) - expected).max() < 1e-4
    assert record["check"]["max_abs_logit_diff"] < 1e-4
    assert record["check"]["texts"] == 24  # the validation split, not the built-in texts
    # Labels, tokenizer and the run's records travel with it.
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "non-toxic", "1": "toxic"}
    assert AutoTokenizer.from_pretrained(out)("thanks")["input_ids"]


def test_int8_twin_records_its_agreement(exported, tiny_data_dir):
    out, record = exported
    quality = record["int8_vs_fp32"]
    assert json.loads((out / export.EXPORT_RECORD).read_text())["int8_vs_fp32"] == quality
    texts = pd.read_csv(tiny_data_dir / "validation.csv").text.tolist()
    fp32 = _onnx_logits(out, texts).argmax(-1)
    int8 = _onnx_logits(out / export.INT8_FILE, texts).argmax(-1)
    assert quality["texts"] == len(texts)
    assert quality["agreement"] == pytest.approx(float((fp32 == int8).mean()))
    assert {"f1_fp32", "f1_int8", "roc_auc_int8"} <= set(quality)
    assert record["size_mb"]["int8"] < record["size_mb"]["fp32"]
    assert record["quantization"]["per_channel"] == export.QuantSettings().per_channel


def test_lora_adapter_is_merged_then_exported(tmp_path, tiny_classifier_dir):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = BertForSequenceClassification.from_pretrained(tiny_classifier_dir)
    config = LoraConfig(
        task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False
    )
    adapter = tmp_path / "lora"
    get_peft_model(base, config).save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_classifier_dir).save_pretrained(adapter)

    record = _export(adapter, tmp_path / "lora-onnx")
    assert record["adapter_merged"] is True
    adapted = _pytorch_logits(adapter, TEXTS)  # PEFT's own unmerged forward pass
    assert np.abs(_onnx_logits(tmp_path / "lora-onnx", TEXTS) - adapted).max() < 1e-4
    # The adapter's weights are in the export: it is not the base model's graph.
    assert np.abs(_pytorch_logits(tiny_classifier_dir, TEXTS) - adapted).max() > 1e-3


def test_three_classes_export_and_evaluate(tmp_path, tiny_tokenizer_dir):
    model_dir, data_dir = tmp_path / "clf3", tmp_path / "data3"
    names = ["anger", "joy", "neutral"]
    torch.manual_seed(1)
    config = tiny_bert_config(
        num_labels=3, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    )
    BertForSequenceClassification(config).save_pretrained(model_dir)
    make_tokenizer(model_dir)
    data_dir.mkdir()
    for split, seed in (("train", 1), ("validation", 2), ("test", 3)):
        synthetic_rows(18, seed, num_labels=3).to_csv(data_dir / f"{split}.csv", index=False)

    record = _export(model_dir, tmp_path / "clf3-onnx", "--quantize", "int8", "--dataset_name", data_dir)
    assert record["num_labels"] == 3 and record["check"]["max_abs_logit_diff"] < 1e-4
    results = run_eval.main(
        ["--model_dirs", str(model_dir), str(tmp_path / "clf3-onnx"), "--dataset_name", str(data_dir)]
        + ["--label_names", ",".join(names), "--output_dir", str(tmp_path / "report"), *FAST_EVAL]
    )
    assert sorted(results.runtime) == ["onnxruntime-fp32", "onnxruntime-int8", "pytorch"]
    preds = pd.read_csv(tmp_path / "report" / "predictions" / "clf3-onnx-int8.csv")
    assert set(preds.pred_name) <= set(names) and {"prob_0", "prob_1", "prob_2"} <= set(preds.columns)


def test_run_eval_scores_the_export_beside_pytorch(tmp_path, exported, tiny_classifier_dir, tiny_data_dir):
    out, _ = exported
    results = run_eval.main(
        ["--model_dirs", str(tiny_classifier_dir), str(out), "--dataset_name", str(tiny_data_dir)]
        + ["--output_dir", str(tmp_path / "report"), *FAST_EVAL]
    ).set_index("runtime")
    assert set(results.index) == {"pytorch", "onnxruntime-fp32", "onnxruntime-int8"}
    torch_row, fp32, int8 = results.loc["pytorch"], results.loc["onnxruntime-fp32"], results.loc["onnxruntime-int8"]
    assert fp32.model == "clf-onnx" and int8.model == "clf-onnx-int8"
    assert fp32.method.endswith("_onnx") and int8.method.endswith("_onnx_int8")
    # The export's probabilities are PyTorch's up to float32 rounding, and its scores move only by what that rounding
    # allows: this untrained head gives probabilities ~1e-7 apart, which may rank either way (tests/tolerances.py).
    frames = {
        name: pd.read_csv(tmp_path / "report" / "predictions" / f"{name}.csv", float_precision="round_trip")
        for name in (fp32.model, torch_row.model)
    }
    probs = {name: frame[["prob_0", "prob_1"]].to_numpy() for name, frame in frames.items()}
    logits = _pytorch_logits(tiny_classifier_dir, frames[fp32.model].text.tolist())
    np.testing.assert_allclose(probs[fp32.model], probs[torch_row.model], rtol=0, atol=forward_atol(logits))
    measured = float(np.abs(probs[fp32.model] - probs[torch_row.model]).max())
    positives = frames[torch_row.model].label.to_numpy() == 1
    bound = auc_noise_bound(probs[torch_row.model][:, 1], positives, measured)
    assert fp32.roc_auc == pytest.approx(torch_row.roc_auc, abs=bound)
    # argmax decides alike: these texts' classes lead by far more than the rounding (~3e-3 against ~1e-7)
    assert (frames[fp32.model].pred == frames[torch_row.model].pred).all() and fp32.f1 == torch_row.f1
    # its own file's size; timed in the same run
    assert fp32.size_mb == pytest.approx((out / export.ONNX_FILE).stat().st_size / 2**20)
    assert int8.size_mb == pytest.approx((out / export.INT8_FILE).stat().st_size / 2**20)
    assert fp32.params == torch_row.params
    for row in (fp32, int8):
        assert row.latency_ms_b1 > 0 and row.throughput_b32 > 0
    assert (tmp_path / "report" / "report.md").is_file()


def test_server_loads_and_serves_the_export(exported, tiny_classifier_dir, tmp_path):
    out, _ = exported
    exp = tmp_path / "exp"  # an experiment directory holding a PyTorch model and its export
    shutil.copytree(tiny_classifier_dir, exp / "clf")
    shutil.copytree(out, exp / "clf-onnx")
    assert [p.rsplit("/", 2)[-2:] for p in find_model_dirs(str(exp))][-1] == ["clf-onnx", export.INT8_FILE]
    registry = ModelRegistry.from_dirs([], ServingLimits(), experiment_dir=str(exp))
    try:
        assert registry.names == ["clf", "clf-onnx", "clf-onnx-int8"]
        runtimes = {m["name"]: m["runtime"] for m in registry.describe()}
        assert runtimes == {"clf": "pytorch", "clf-onnx": "onnxruntime-fp32", "clf-onnx-int8": "onnxruntime-int8"}
        answer = registry.predict(PredictRequest(texts=TEXTS, models=registry.names))
        logits = _pytorch_logits(tiny_classifier_dir, TEXTS)
        expected, atol = softmax(logits), forward_atol(logits)
        for i, result in enumerate(answer["results"]):
            by_model = {p["model"]: p for p in result["predictions"]}
            served = by_model["clf-onnx"]["probabilities"]
            # ONNX Runtime's float32 kernels vs PyTorch's: rounding apart
            assert [served["non-toxic"], served["toxic"]] == pytest.approx(expected[i].tolist(), rel=0, abs=atol)
            assert by_model["clf-onnx-int8"]["label"] in ("non-toxic", "toxic")
    finally:
        registry.close()


def _expect_error(capsys, argv, message, code=2):
    with pytest.raises(SystemExit) as exit_info:
        run_export.main([str(a) for a in argv])
    assert exit_info.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err


def test_a_directory_that_is_not_a_trained_classifier_is_refused(tmp_path, capsys, tiny_base_model_dir, exported):
    out = tmp_path / "out"
    _expect_error(capsys, ["--model_dir", tiny_base_model_dir, "--output_dir", out], "not a trained classifier")
    _expect_error(capsys, ["--model_dir", tmp_path / "missing", "--output_dir", out], "no such directory")
    (tmp_path / "empty").mkdir()
    _expect_error(capsys, ["--model_dir", tmp_path / "empty", "--output_dir", out], "not a model directory")
    _expect_error(capsys, ["--model_dir", exported[0], "--output_dir", out], "already an ONNX export")
    assert not out.exists()


def test_existing_output_and_a_failed_check_keep_nothing(tmp_path, capsys, tiny_classifier_dir, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _expect_error(capsys, ["--model_dir", tiny_classifier_dir, "--output_dir", out], "--overwrite_output_dir")
    assert (out / "keep.txt").read_text() == "mine"
    # An export whose logits drift beyond the tolerance is not kept, and the exit status says so.
    monkeypatch.setattr(export, "logits_difference", lambda *a, **k: 0.5)
    fresh = tmp_path / "fresh"
    _expect_error(capsys, ["--model_dir", tiny_classifier_dir, "--output_dir", fresh], "differ from PyTorch", code=1)
    assert not (fresh / export.ONNX_FILE).exists()


def test_quantization_bench_compares_the_levers(tmp_path, tiny_classifier_dir, tiny_data_dir, capsys):
    from bench import onnx_quant

    variants = ["plain", "per_channel+matmul+head_fp32", "optimizer"]
    rows = onnx_quant.main(
        ["--model_dir", str(tiny_classifier_dir), "--dataset_name", str(tiny_data_dir), "--output_dir", str(tmp_path)]
        + ["--variants", *variants, "--latency_runs", "5", "--throughput_texts", "32", "--max_seq_length", "32"]
    )
    written = pd.read_csv(tmp_path / onnx_quant.RESULTS_FILE)
    assert list(written.variant) == ["fp32", *variants] == [r["variant"] for r in rows]
    assert written.agreement_pct.iloc[0] == 100 and written.f1_change_pt.iloc[0] == 0
    assert written.agreement_pct.between(0, 100).all() and (written.latency_ms_b1 > 0).all()
    # Quantized weights are smaller on disk than fp32 ones.
    assert (written.size_mb.iloc[1:] < written.size_mb.iloc[0]).all()
    assert "int8 variants vs fp32" in capsys.readouterr().out


def test_goals_bench_measures_every_goal_in_one_run(tmp_path, exported, tiny_classifier_dir, tiny_data_dir):
    import socket

    from bench import onnx_goals

    shutil.copytree(tiny_classifier_dir, tmp_path / "teacher")
    with socket.socket() as sock:  # a free port for the server
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "goals"
    table = onnx_goals.main(
        ["--teacher_dir", str(tmp_path / "teacher"), "--student_dir", str(tiny_classifier_dir)]
        + ["--export_dir", str(exported[0]), "--dataset_name", str(tiny_data_dir), "--output_dir", str(out)]
        + ["--clients", "4", "--duration", "2", "--num_threads", "1", "--port", str(port)]
    )
    written = pd.read_csv(out / onnx_goals.RESULTS_FILE)
    assert len(written) == len(table) == 4 and written.measured.notna().all()
    # The agreement goal is the share of test texts on which the two exported models' predictions are equal.
    preds = {
        name: pd.read_csv(out / "eval" / "predictions" / f"{name}.csv").pred for name in ("clf-onnx", "clf-onnx-int8")
    }
    assert written.measured[2] == pytest.approx(100 * (preds["clf-onnx"] == preds["clf-onnx-int8"]).mean())
    assert written.met[2] == (written.measured[2] >= 99)
    for name in (tiny_classifier_dir.name, "clf-onnx-int8"):  # both models were load-tested and answered
        assert pd.read_csv(out / f"load_{name}" / "load_test.csv").ok[0] > 0


def test_the_exported_card_snippet_runs_and_matches_pytorch(exported, tiny_classifier_dir, monkeypatch, capsys):
    out, _ = exported
    card = (out / "README.md").read_text()
    assert "agrees with fp32" in card and "non-toxic, toxic" in card
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(out)  # the snippet reads "this directory"
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102 (our own card's code)
    assert capsys.readouterr().out.strip().startswith("['")
    # The snippet's int8 logits name the same label as the exported int8 model run through our loader.
    expected = _onnx_logits(out / export.INT8_FILE, ["Thanks for fixing the citation."], 1).argmax(-1)[0]
    assert scope["labels"][int(scope["logits"].argmax(-1)[0])] == ["non-toxic", "toxic"][expected]


def test_the_run_record_travels_with_the_export(tmp_path, tiny_classifier_dir):
    from distillkit.records import RECORD_FILE, RunRecord

    source = tmp_path / "even"
    shutil.copytree(tiny_classifier_dir, source)
    RunRecord(method="even", layers=[2, 4], teacher="EXP/teacher", seed=7).save(str(source))
    _export(source, tmp_path / "even-onnx")
    record = RunRecord.load(str(tmp_path / "even-onnx"))
    assert (tmp_path / "even-onnx" / RECORD_FILE).is_file()
    assert (record.method, record.layers, record.teacher, record.seed) == ("even", [2, 4], "EXP/teacher", 7)


ML_LABELS = ["toxic", "obscene", "threat", "insult"]


@pytest.fixture(scope="module")
def label_columns_case(tmp_path_factory):
    """A multi-label model and a Jigsaw-style CSV folder: one 0/1 column per label, which only --label_columns reads
    (there is no label column to detect)."""
    root = tmp_path_factory.mktemp("ml_export")
    model_dir, data_dir = root / "ml", root / "data"
    torch.manual_seed(3)
    config = tiny_bert_config(
        num_labels=4, id2label=dict(enumerate(ML_LABELS)), label2id={n: i for i, n in enumerate(ML_LABELS)},
        problem_type="multi_label_classification",
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(model_dir)
    make_tokenizer(model_dir)
    data_dir.mkdir()
    rng = np.random.default_rng(0)
    for split, n, seed in (("train", 16, 1), ("validation", 12, 2), ("test", 12, 3)):
        frame = synthetic_rows(n, seed)[["text"]]
        gold = (rng.random((n, 4)) < 0.5).astype(int)
        gold[0], gold[1] = 1, 0
        frame[ML_LABELS] = gold
        frame.to_csv(data_dir / f"{split}.csv", index=False)
    return model_dir, data_dir


def test_a_label_columns_model_is_checked_on_its_validation_split(tmp_path, label_columns_case):
    model_dir, data_dir = label_columns_case
    with pytest.raises(SystemExit) as exit_info:  # detection finds no label column in this folder
        _export(model_dir, tmp_path / "none", "--dataset_name", data_dir)
    assert exit_info.value.code == 2
    record = _export(
        model_dir, tmp_path / "onnx", "--quantize", "int8", "--dataset_name", data_dir,
        "--label_columns", ",".join(ML_LABELS),
    )  # fmt: skip
    assert record["check"]["texts"] == 12 and record["check"]["max_abs_logit_diff"] < 1e-4
    assert 0 <= record["int8_vs_fp32"]["f1_fp32"] <= 1 and 0 <= record["int8_vs_fp32"]["agreement"] <= 1


def test_the_run_record_says_how_its_own_data_set_is_read(tmp_path, label_columns_case):
    """Without label flags, the export reads the data set the model was trained on as the run read it."""
    from distillkit.records import RunRecord

    model_dir, data_dir = label_columns_case
    trained = tmp_path / "trained"
    shutil.copytree(model_dir, trained)
    dataset = {"dataset": str(data_dir), "text_column": "text", "label_columns": ML_LABELS, "label_threshold": 0.5}
    RunRecord(method="teacher", problem_type="multi_label_classification", label_names=ML_LABELS, dataset=dataset).save(
        str(trained)
    )
    record = _export(trained, tmp_path / "onnx", "--quantize", "int8", "--dataset_name", data_dir)
    assert record["check"]["texts"] == 12 and "f1_fp32" in record["int8_vs_fp32"]
    # Another data set is not read by this run's columns: detection decides, and finds no label column there.
    other = tmp_path / "other"
    shutil.copytree(data_dir, other)
    with pytest.raises(SystemExit) as exit_info:
        _export(trained, tmp_path / "onnx2", "--dataset_name", other)
    assert exit_info.value.code == 2
