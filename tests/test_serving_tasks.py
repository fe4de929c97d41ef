"""Serving by task type (issue 12): a multi-label model's sigmoid probabilities and labels over their saved
thresholds, a binary model decided by its saved positive-class threshold, a 3-class model as before; the same over
ONNX; and `transformers.pipeline` on a multi-label directory, as the README tells its users."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LOCAL_URL, make_tokenizer, tiny_bert_config
from fastapi.testclient import TestClient
from tolerances import SOFTMAX_SUM_ATOL, forward_atol
from transformers import BertForSequenceClassification

import app as app_module
from distillkit.cli import UsageError
from distillkit.serving import ModelRegistry, PredictRequest, ServingLimits
from distillkit.tasks import MULTI_LABEL, SINGLE_LABEL

LABELS = ["toxic", "obscene", "threat", "insult"]
CLASSES = ["joy", "anger", "fear"]
TEXTS = [
    "you stupid idiot",
    "thanks for the good citation",
    "hate this ugly trash page",
    "the article is fixed please",
    "moron loser dumb",
    "good source and section edit",
    "this is a page",
    "you are trash",
]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def own_logits(directory: Path, texts: list[str] = TEXTS) -> np.ndarray:
    """The saved model's logits, one text at a time (no padding), straight from transformers."""
    from transformers import AutoTokenizer

    model = BertForSequenceClassification.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    with torch.no_grad():
        return np.stack([model(**tokenizer(t, return_tensors="pt")).logits[0].double().numpy() for t in texts])


def between(values: np.ndarray, pick: int) -> float:
    """A threshold halfway between the `pick`-th and next sorted value: never equal to any of them."""
    ordered = np.sort(values)
    return float((ordered[pick] + ordered[pick + 1]) / 2)


def save_model(directory: Path, config) -> Path:
    BertForSequenceClassification(config).save_pretrained(directory)
    make_tokenizer(directory)
    return directory


def make_multilabel_model(directory: Path, seed: int = 3) -> Path:
    """A 4-label multi-label BERT whose saved thresholds differ per label; each label is over its threshold for
    some of TEXTS and under it for others (thresholds chosen from its own probabilities, away from every one)."""
    torch.manual_seed(seed)
    config = tiny_bert_config(
        num_layers=2,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
        problem_type=MULTI_LABEL,
        initializer_range=1.0,  # large random weights: probabilities that depend on the text
    )
    save_model(directory, config)
    probs = sigmoid(own_logits(directory))
    # Label j passes for the top (j + 1) texts: 1, 2, 3 or 4 of 8, so every label's threshold is its own.
    config.decision_thresholds = [between(probs[:, j], len(TEXTS) - 2 - j) for j in range(len(LABELS))]
    config.save_pretrained(directory)
    return directory


def make_binary_model(directory: Path, seed: int = 4) -> tuple[Path, float]:
    """A binary model saved with a positive-class threshold that decides at least one of TEXTS unlike argmax."""
    torch.manual_seed(seed)
    config = tiny_bert_config(
        num_layers=2,
        id2label={0: "non-toxic", 1: "toxic"},
        label2id={"non-toxic": 0, "toxic": 1},
        problem_type=SINGLE_LABEL,
        initializer_range=1.0,
    )
    save_model(directory, config)
    positive = np.sort(softmax(own_logits(directory))[:, 1])
    under = int((positive < 0.5).sum())
    # The most probable text under 0.5 becomes positive; if none is under 0.5, the least probable becomes negative.
    t = (positive[under - 1] + (positive[under - 2] if under >= 2 else 0.0)) / 2 if under else between(positive, 0)
    config.decision_thresholds = [float(t)]
    config.save_pretrained(directory)
    return directory, t


def make_three_class_model(directory: Path, seed: int = 5) -> Path:
    torch.manual_seed(seed)
    config = tiny_bert_config(
        num_layers=2,
        num_labels=3,
        id2label=dict(enumerate(CLASSES)),
        label2id={n: i for i, n in enumerate(CLASSES)},
        initializer_range=1.0,
    )
    return save_model(directory, config)


def make_task_experiment(exp: Path) -> Path:
    """EXP/{multilabel,binary,three}: one model of each kind, the kinds a served experiment may mix."""
    make_multilabel_model(exp / "multilabel")
    make_binary_model(exp / "binary")
    make_three_class_model(exp / "three")
    for name in ("multilabel", "binary", "three"):
        (exp / name / "all_results.json").write_text(json.dumps({"method": name}))
    return exp


@pytest.fixture(scope="module")
def task_exp(tmp_path_factory) -> Path:
    return make_task_experiment(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def registry(task_exp):
    registry = ModelRegistry.from_dirs([], ServingLimits(), experiment_dir=str(task_exp))
    yield registry
    registry.close()


@pytest.fixture(scope="module")
def client(registry):
    with TestClient(app_module.create_app(registry), base_url=LOCAL_URL) as test_client:
        yield test_client


def predictions_of(client, model: str, texts: list[str] = TEXTS) -> list[dict]:
    response = client.post("/api/predict", json={"texts": texts, "models": [model]})
    assert response.status_code == 200, response.text
    return [r["predictions"][0] for r in response.json()["results"]]


def test_multilabel_model_returns_every_sigmoid_and_the_labels_over_their_thresholds(client, task_exp):
    config = json.loads((task_exp / "multilabel" / "config.json").read_text())
    thresholds = config["decision_thresholds"]
    logits = own_logits(task_exp / "multilabel")
    probs, atol = sigmoid(logits), forward_atol(logits)  # served in padded batches: float32 rounding apart
    assert probs.sum(axis=1) != pytest.approx(1.0)  # not a softmax: the labels are independent
    passed_any = set()
    for pred, row in zip(predictions_of(client, "multilabel"), probs):
        assert pred["problem_type"] == MULTI_LABEL
        assert list(pred["probabilities"]) == LABELS
        np.testing.assert_allclose([pred["probabilities"][n] for n in LABELS], row, rtol=0, atol=atol)
        assert pred["thresholds"] == dict(zip(LABELS, thresholds))
        expected = [j for j in range(len(LABELS)) if row[j] >= thresholds[j]]
        assert pred["label_ids"] == expected and pred["labels"] == [LABELS[j] for j in expected]
        if expected:  # the most probable of the labels that pass
            top = max(expected, key=lambda j: row[j])
            assert (pred["label"], pred["label_id"]) == (LABELS[top], top)
            assert pred["probability"] == pytest.approx(row[top], rel=0, abs=atol)
        else:
            assert pred["label"] is None and pred["label_id"] is None and pred["probability"] is None
        passed_any.update(expected)
    # The fixture's thresholds let label j pass for j + 1 of the 8 texts: every label is both decided and not.
    counts = [sum(row[j] >= thresholds[j] for row in probs) for j in range(len(LABELS))]
    assert counts == [1, 2, 3, 4] and passed_any == set(range(len(LABELS)))
    # Argmax or a 0.5 cut would decide differently: the saved thresholds are what decides.
    assert any(sorted(np.flatnonzero(row >= 0.5)) != [j for j in range(4) if row[j] >= thresholds[j]] for row in probs)


def test_binary_model_decides_by_its_saved_positive_class_threshold(client, task_exp):
    threshold = json.loads((task_exp / "binary" / "config.json").read_text())["decision_thresholds"][0]
    logits = own_logits(task_exp / "binary")
    probs, atol = softmax(logits), forward_atol(logits)  # served in padded batches: float32 rounding apart
    preds = predictions_of(client, "binary")
    for pred, row in zip(preds, probs):
        decided = int(row[1] >= threshold)
        assert pred["threshold"] == threshold and pred["problem_type"] == SINGLE_LABEL
        assert (pred["label_id"], pred["label"]) == (decided, ["non-toxic", "toxic"][decided])
        assert pred["probability"] == pytest.approx(row[decided], rel=0, abs=atol)  # the label decided's
        served = [pred["probabilities"]["non-toxic"], pred["probabilities"]["toxic"]]
        np.testing.assert_allclose(served, row, rtol=0, atol=atol)
        assert "labels" not in pred and "thresholds" not in pred
    flipped = [i for i, row in enumerate(probs) if int(row[1] >= threshold) != int(row.argmax())]
    assert flipped, "the fixture's threshold must decide some text unlike argmax"
    assert all(preds[i]["label_id"] != int(probs[i].argmax()) for i in flipped)


def test_three_class_model_is_served_as_before(client, task_exp):
    logits = own_logits(task_exp / "three")
    probs, atol = softmax(logits), forward_atol(logits)  # served in padded batches: float32 rounding apart
    for pred, row in zip(predictions_of(client, "three"), probs):
        assert set(pred) == {
            "model", "label", "label_id", "probability", "probabilities", "latency_ms", "problem_type", "threshold"
        }  # fmt: skip
        assert pred["threshold"] is None and pred["problem_type"] == SINGLE_LABEL
        assert (pred["label_id"], pred["label"]) == (int(row.argmax()), CLASSES[int(row.argmax())])
        assert pred["probability"] == pytest.approx(row.max(), rel=0, abs=atol)
        assert sum(pred["probabilities"].values()) == pytest.approx(1.0, abs=SOFTMAX_SUM_ATOL)


def test_models_endpoint_says_each_models_task_and_thresholds(client, task_exp):
    models = {m["name"]: m for m in client.get("/api/models").json()["models"]}
    saved = json.loads((task_exp / "multilabel" / "config.json").read_text())["decision_thresholds"]
    assert models["multilabel"]["problem_type"] == MULTI_LABEL
    assert models["multilabel"]["thresholds"] == dict(zip(LABELS, saved)) and models["multilabel"]["labels"] == LABELS
    binary = json.loads((task_exp / "binary" / "config.json").read_text())["decision_thresholds"][0]
    assert models["binary"]["threshold"] == binary and models["three"]["threshold"] is None
    assert models["three"]["problem_type"] == SINGLE_LABEL


def test_multilabel_model_without_saved_thresholds_decides_at_one_half(tmp_path):
    directory = make_multilabel_model(tmp_path / "untuned", seed=6)
    config = json.loads((directory / "config.json").read_text())
    config["decision_thresholds"] = None
    (directory / "config.json").write_text(json.dumps(config))
    registry = ModelRegistry.from_dirs([str(directory)], ServingLimits())
    try:
        probs = sigmoid(own_logits(directory))
        body = registry.predict(PredictRequest(texts=TEXTS, models=registry.names))
        for result, row in zip(body["results"], probs):
            pred = result["predictions"][0]
            assert pred["thresholds"] == dict.fromkeys(LABELS, 0.5)
            assert pred["label_ids"] == [int(j) for j in np.flatnonzero(row >= 0.5)]
    finally:
        registry.close()


def test_a_model_whose_thresholds_do_not_fit_its_labels_is_refused_at_start(tmp_path, capsys):
    directory = make_three_class_model(tmp_path / "bad")
    config = json.loads((directory / "config.json").read_text())
    config["decision_thresholds"] = [0.3]  # a threshold means nothing for a 3-class single-label model
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match="config.json: decision_thresholds: 1 given"):
        ModelRegistry.from_dirs([str(directory)], ServingLimits())
    with pytest.raises(SystemExit) as exit_info:
        app_module.main(["--model_dirs", str(directory), "--port", "0"])
    assert exit_info.value.code == 2 and "decision_thresholds" in capsys.readouterr().err


def test_an_onnx_export_of_a_multilabel_model_is_served_by_its_task(task_exp, tmp_path):
    """run_export.py copies config.json beside model.onnx: problem_type and thresholds travel with it, to the fp32
    model and its int8 twin (which reads the same config)."""
    from distillkit.export import export_classifier

    out = tmp_path / "onnx"
    export_classifier(str(task_exp / "multilabel"), str(out), quantize="int8", texts=TEXTS, max_length=32)
    config = json.loads((out / "config.json").read_text())
    thresholds = config["decision_thresholds"]
    assert config["problem_type"] == MULTI_LABEL and thresholds
    registry = ModelRegistry.from_dirs([str(out)], ServingLimits())
    try:
        assert [m["runtime"] for m in registry.describe()] == ["onnxruntime-fp32", "onnxruntime-int8"]
        body = registry.predict(PredictRequest(texts=TEXTS, models=registry.names))
        logits = own_logits(task_exp / "multilabel")
        probs = sigmoid(logits)
        for result, row in zip(body["results"], probs):
            fp32, int8 = result["predictions"]
            # ONNX Runtime's float32 kernels vs PyTorch's, one text alone vs a batch: float32 rounding apart.
            np.testing.assert_allclose([fp32["probabilities"][n] for n in LABELS], row, rtol=0, atol=forward_atol(logits))
            assert fp32["label_ids"] == [j for j in range(len(LABELS)) if row[j] >= thresholds[j]]
            own = [int8["probabilities"][n] for n in LABELS]  # int8's own sigmoids, at the same thresholds
            assert int8["thresholds"] == fp32["thresholds"] == dict(zip(LABELS, thresholds))
            assert int8["label_ids"] == [j for j in range(len(LABELS)) if own[j] >= thresholds[j]]
            assert sum(own) != pytest.approx(1.0)
    finally:
        registry.close()


def test_pipeline_users_get_sigmoid_scores_and_apply_the_saved_thresholds_as_the_readme_says(task_exp):
    """transformers' text-classification pipeline applies a sigmoid when config.problem_type is multi-label; the
    README's three lines then keep the labels over config.decision_thresholds, the labels the API returns."""
    from transformers import pipeline

    directory = str(task_exp / "multilabel")
    # The README's snippet, as written there (DIR and texts filled in):
    clf = pipeline("text-classification", model=directory, top_k=None)
    cut = {clf.model.config.id2label[i]: t for i, t in enumerate(clf.model.config.decision_thresholds)}
    labels = [[s["label"] for s in scores if s["score"] >= cut[s["label"]]] for scores in clf(TEXTS)]

    logits = own_logits(task_exp / "multilabel")
    probs = sigmoid(logits)
    thresholds = clf.model.config.decision_thresholds
    for scores, row in zip(clf(TEXTS), probs):
        scores = {s["label"]: s["score"] for s in scores}
        assert set(scores) == set(LABELS)
        # sigmoid, not softmax; the pipeline runs its own float32 forward pass: rounding apart
        np.testing.assert_allclose([scores[n] for n in LABELS], row, rtol=0, atol=forward_atol(logits))
    expected = [[LABELS[j] for j in range(len(LABELS)) if row[j] >= thresholds[j]] for row in probs]
    assert [sorted(x) for x in labels] == [sorted(x) for x in expected]
    assert {len(x) for x in labels} != {0}  # some labels pass: the snippet is checked on real decisions


def test_openapi_documents_the_answer_for_both_tasks(client):
    post = client.get("/openapi.json").json()["paths"]["/api/predict"]["post"]
    for term in ("single_label_classification", "multi_label_classification", "`threshold`", "`thresholds`"):
        assert term in post["description"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["texts"] and set(schema["properties"]) == {"texts", "models"}


def test_a_multilabel_lora_adapter_on_a_headless_base_is_served_by_its_recorded_task(tmp_path, tiny_base_model_dir):
    """The base (a pretrained encoder) knows no task: the adapter's run_record.json and all_results.json say it is
    multi-label and which thresholds were tuned, and the loader puts them on the config the server reads."""
    from peft import LoraConfig, TaskType, get_peft_model

    from distillkit.records import RunRecord

    torch.manual_seed(8)
    model = BertForSequenceClassification.from_pretrained(
        tiny_base_model_dir, num_labels=len(LABELS), problem_type=MULTI_LABEL, id2label=dict(enumerate(LABELS))
    )
    lora = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["query"]))
    with torch.no_grad():  # as if trained: B is not zero and the head is not the fresh one
        for name, param in lora.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.normal_(0, 1.0)
    adapter = tmp_path / "lora"
    lora.save_pretrained(adapter)
    make_tokenizer(adapter)
    lora.eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    with torch.no_grad():
        logits = np.stack([lora(**tokenizer(t, return_tensors="pt")).logits[0].double().numpy() for t in TEXTS])
    probs = sigmoid(logits)
    thresholds = [between(probs[:, j], 3) for j in range(len(LABELS))]  # each label passes for 4 of the 8 texts
    RunRecord(
        method="lora",
        base_model=str(tiny_base_model_dir),
        problem_type=MULTI_LABEL,
        label_names=LABELS,
        is_adapter=True,
    ).save(str(adapter))
    (adapter / "all_results.json").write_text(json.dumps({"method": "lora", "decision_thresholds": thresholds}))

    registry = ModelRegistry.from_dirs([str(adapter)], ServingLimits())
    try:
        info = registry.describe()[0]
        assert info["adapter"] and info["problem_type"] == MULTI_LABEL and info["labels"] == LABELS
        body = registry.predict(PredictRequest(texts=TEXTS, models=registry.names))
        for result, row in zip(body["results"], probs):
            pred = result["predictions"][0]
            # the server's forward pass batches (and may merge nothing): float32 rounding apart
            np.testing.assert_allclose([pred["probabilities"][n] for n in LABELS], row, rtol=0, atol=forward_atol(logits))
            assert pred["thresholds"] == dict(zip(LABELS, thresholds))
            assert pred["label_ids"] == [j for j in range(len(LABELS)) if row[j] >= thresholds[j]]
    finally:
        registry.close()
