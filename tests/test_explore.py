"""The exploration endpoints over a real run_eval.py output of a tiny 3-class experiment: every count, error and
disagreement is checked against the predictions CSVs themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import LOCAL_URL, make_tokenizer, synthetic_rows, tiny_bert_config
from fastapi.testclient import TestClient
from scipy.stats import binomtest
from transformers import BertForSequenceClassification

import app as app_module
import run_eval
from distillkit.cli import UsageError
from distillkit.explore import MAX_LIMIT, Explorer, mcnemar_p_value
from distillkit.serving import ModelRegistry, RequestError, ServingLimits

CLASSES = ["joy", "anger", "fear"]
TEST_SIZE = 30
EVAL_FAST = ["--max_seq_length", "32", "--latency_runs", "50", "--throughput_texts", "32", "--num_threads", "1"]
EVAL_FAST += ["--bootstrap_samples", "20"]


def make_evaluated_experiment(root: Path) -> Path:
    """EXP/{teacher,odd,even}: tiny 3-class BERTs that disagree (random, each its own seed), and
    EXP/report: what run_eval.py writes for them on a 3-class data set (the layout run_compare.py leaves)."""
    data = root / "data"
    data.mkdir(parents=True)
    for split, n, seed in (("train", 12, 1), ("validation", 6, 2), ("test", TEST_SIZE, 3)):
        synthetic_rows(n, seed, num_labels=len(CLASSES)).to_csv(data / f"{split}.csv", index=False)
    exp = root / "exp"
    for seed, (name, layers) in enumerate((("teacher", 4), ("odd", 2), ("even", 2))):
        torch.manual_seed(seed)
        config = tiny_bert_config(
            num_layers=layers,
            num_labels=len(CLASSES),
            id2label=dict(enumerate(CLASSES)),
            label2id={c: i for i, c in enumerate(CLASSES)},
            initializer_range=1.0,  # large random weights: answers that depend on the text (0.02 gives one class)
        )
        BertForSequenceClassification(config).save_pretrained(exp / name)
        make_tokenizer(exp / name)
        (exp / name / "all_results.json").write_text(json.dumps({"method": name}))
    run_eval.main(
        ["--experiment_dir", str(exp), "--dataset_name", str(data), "--output_dir", str(exp / "report")]
        + ["--label_names", ",".join(CLASSES)]
        + EVAL_FAST
    )
    return exp


@pytest.fixture(scope="module")
def evaluated_exp(tmp_path_factory) -> Path:
    return make_evaluated_experiment(tmp_path_factory.mktemp("explore"))


@pytest.fixture(scope="module")
def client(evaluated_exp):
    registry = ModelRegistry.from_dirs([], ServingLimits(), experiment_dir=str(evaluated_exp))
    explorer = Explorer.load(experiment_dir=str(evaluated_exp))
    with TestClient(app_module.create_app(registry, explorer), base_url=LOCAL_URL) as test_client:
        yield test_client
    registry.close()


def predictions(exp: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(exp / "report" / "predictions" / f"{name}.csv")


def test_the_page_lists_the_evaluation_and_its_results_table(client, evaluated_exp):
    body = client.get("/api/evaluation").json()
    assert body["available"] is True and sorted(body["models"]) == ["even", "odd", "teacher"]
    assert body["labels"] == CLASSES and body["samples"] == TEST_SIZE and body["report_dir"] == "report"
    results = pd.read_csv(evaluated_exp / "report" / "results.csv")
    assert [r["model"] for r in body["results"]] == results.model.tolist()
    for row, expected in zip(body["results"], results.itertuples()):
        assert row["f1"] == pytest.approx(expected.f1) and row["params"] == expected.params
        assert row["latency_ms_b1"] == pytest.approx(expected.latency_ms_b1)
        assert "path" not in row  # the machine's absolute paths stay on the machine
    served = {m["name"] for m in client.get("/api/models").json()["models"]}
    assert served == set(body["models"])  # the report/ folder is not taken for a model


@pytest.mark.parametrize("model", ["teacher", "odd", "even"])
def test_distribution_counts_equal_the_predictions_csv(client, evaluated_exp, model):
    frame = predictions(evaluated_exp, model)
    body = client.get("/api/distribution", params={"model": model}).json()
    assert body["model"] == model and body["samples"] == len(frame) == TEST_SIZE
    assert [c["label"] for c in body["classes"]] == CLASSES
    for c in body["classes"]:
        assert c["gold"] == int((frame.label == c["id"]).sum())
        assert c["predicted"] == int((frame.pred == c["id"]).sum())
    assert sum(c["gold"] for c in body["classes"]) == sum(c["predicted"] for c in body["classes"]) == TEST_SIZE
    assert body["accuracy"] == pytest.approx((frame.label == frame.pred).mean())


@pytest.mark.parametrize("model", ["teacher", "odd", "even"])
def test_errors_are_real_errors_most_confident_first_and_page_through_all(client, evaluated_exp, model):
    frame = predictions(evaluated_exp, model)
    wrong = set(np.flatnonzero(frame.label.to_numpy() != frame.pred.to_numpy()).tolist())
    assert wrong, "the tiny models should make mistakes for this test to mean anything"
    seen, offset = [], 0
    while True:
        page = client.get("/api/errors", params={"model": model, "limit": 4, "offset": offset}).json()
        assert page["total"] == len(wrong) and page["limit"] == 4 and page["offset"] == offset
        if not page["errors"]:
            break
        seen += page["errors"]
        offset += 4
    assert sorted(e["index"] for e in seen) == sorted(wrong)  # every mistake once, no right answer
    for e in seen:
        row = frame.iloc[e["index"]]
        assert e["text"] == row.text and e["gold_id"] == row.label and e["predicted_id"] == row.pred
        assert e["gold"] == row.label_name == CLASSES[row.label] and e["predicted"] == row.pred_name
        assert e["gold"] != e["predicted"]
        assert e["probability"] == pytest.approx(row[f"prob_{row.pred}"])
        assert e["gold_probability"] == pytest.approx(row[f"prob_{row.label}"])
    confidence = [e["probability"] for e in seen]
    assert confidence == sorted(confidence, reverse=True)


def test_disagreements_give_the_2x2_table_and_the_differing_texts(client, evaluated_exp):
    odd, even = predictions(evaluated_exp, "odd"), predictions(evaluated_exp, "even")
    right_a, right_b = (odd.pred == odd.label).to_numpy(), (even.pred == even.label).to_numpy()
    body = client.get("/api/disagreements", params={"a": "odd", "b": "even", "limit": MAX_LIMIT}).json()
    table = body["table"]
    assert sum(table.values()) == body["samples"] == TEST_SIZE
    assert table == {
        "both_right": int((right_a & right_b).sum()),
        "only_a": int((right_a & ~right_b).sum()),
        "only_b": int((~right_a & right_b).sum()),
        "both_wrong": int((~right_a & ~right_b).sum()),
    }
    differ = np.flatnonzero(odd.pred.to_numpy() != even.pred.to_numpy())
    assert len(differ) > 0 and body["total"] == body["disagree"] == len(differ)
    assert sorted(r["index"] for r in body["rows"]) == differ.tolist()
    for r in body["rows"]:
        i = r["index"]
        assert r["text"] == odd.text[i] and r["gold_id"] == odd.label[i]
        assert r["a"]["predicted_id"] == odd.pred[i] != r["b"]["predicted_id"] == even.pred[i]
        assert r["a"]["correct"] == right_a[i] and r["b"]["correct"] == right_b[i]
        assert r["a"]["probability"] == pytest.approx(odd[f"prob_{odd.pred[i]}"][i])
    confidence = [max(r["a"]["probability"], r["b"]["probability"]) for r in body["rows"]]
    assert confidence == sorted(confidence, reverse=True)
    n = table["only_a"] + table["only_b"]
    expected_p = binomtest(table["only_a"], n, 0.5).pvalue if n else 1.0
    assert body["mcnemar_p"] == pytest.approx(expected_p)

    only_a = client.get("/api/disagreements", params={"a": "odd", "b": "even", "kind": "only_a"}).json()
    assert only_a["total"] == table["only_a"]
    assert all(r["a"]["correct"] and not r["b"]["correct"] for r in only_a["rows"])
    swapped = client.get("/api/disagreements", params={"a": "even", "b": "odd"}).json()["table"]
    assert (swapped["only_a"], swapped["only_b"]) == (table["only_b"], table["only_a"])
    paged = client.get("/api/disagreements", params={"a": "odd", "b": "even", "limit": 1, "offset": 1}).json()
    assert paged["rows"] == body["rows"][1:2]


def test_mcnemar_p_value_edges():
    assert mcnemar_p_value(0, 0) == 1.0 and mcnemar_p_value(3, 3) == 1.0
    assert mcnemar_p_value(10, 0) == pytest.approx(2 / 2**10)


BAD = [
    ("/api/distribution", {"model": "nope"}, 404, "unknown model nope: the evaluation has"),
    ("/api/distribution", {}, 422, "missing ?model=NAME"),
    ("/api/errors", {"model": "odd", "limit": 0}, 422, "limit=0: must be 1..100"),
    ("/api/errors", {"model": "odd", "limit": MAX_LIMIT + 1}, 422, "must be 1..100"),
    ("/api/errors", {"model": "odd", "limit": "ten"}, 422, "limit=ten: expected a whole number"),
    ("/api/errors", {"model": "odd", "limit": ""}, 422, "limit=: expected a whole number"),  # found by test_fuzz
    ("/api/errors", {"model": "odd", "offset": -1}, 422, "offset=-1"),
    ("/api/disagreements", {"a": "odd"}, 422, "missing ?b=NAME"),
    ("/api/disagreements", {"a": "odd", "b": "nope"}, 404, "unknown model nope"),
    ("/api/disagreements", {"a": "odd", "b": "even", "kind": "x"}, 422, "kind=x: expected one of"),
    ("/api/disagreements", {"a": "odd", "b": "even", "kind": ""}, 422, "kind=: expected one of"),  # test_fuzz
]


@pytest.mark.parametrize("path,params,status,message", BAD, ids=[f"{b[0]}-{b[2]}-{b[3][:12]}" for b in BAD])
def test_bad_questions_get_a_json_error(client, path, params, status, message):
    response = client.get(path, params=params)
    assert response.status_code == status and message in response.json()["error"]


def test_a_page_past_the_end_is_empty(client):
    body = client.get("/api/errors", params={"model": "odd", "offset": 10_000}).json()
    assert body["errors"] == [] and body["total"] > 0


def test_without_an_evaluation_output_the_endpoints_are_404_with_the_command(tmp_path, evaluated_exp, capsys):
    bare = tmp_path / "bare"
    (bare / "odd").mkdir(parents=True)
    for file in (evaluated_exp / "odd").iterdir():
        (bare / "odd" / file.name).write_bytes(file.read_bytes())
    registry = ModelRegistry.from_dirs([], ServingLimits(), experiment_dir=str(bare))
    explorer = Explorer.load(experiment_dir=str(bare))
    assert not explorer.available
    with TestClient(app_module.create_app(registry, explorer), base_url=LOCAL_URL) as test_client:
        overview = test_client.get("/api/evaluation").json()  # what the page asks first: 200, with the reason
        assert overview["available"] is False and "python run_eval.py" in overview["reason"]
        for path, params in (
            ("/api/distribution", {"model": "odd"}),
            ("/api/errors", {"model": "odd"}),
            ("/api/disagreements", {"a": "odd", "b": "odd"}),
        ):
            response = test_client.get(path, params=params)
            assert response.status_code == 404
            error = response.json()["error"]
            assert "holds no evaluation output yet" in error and "python run_eval.py --experiment_dir" in error
            assert "\n" not in error
        assert test_client.post("/api/predict", json={"texts": ["still serving"]}).status_code == 200
    registry.close()
    # --model_dirs only: no report to look for
    with TestClient(app_module.create_app(registry), base_url=LOCAL_URL) as test_client:
        assert "--report_dir" in test_client.get("/api/errors", params={"model": "odd"}).json()["error"]

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # a --report_dir given by hand must hold an evaluation
        app_module.main(["--experiment_dir", str(bare), "--report_dir", str(bare / "odd")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --report_dir") and "no predictions/ folder" in err and err.count("\n") == 1


def test_report_dir_of_a_run_eval_output_outside_the_experiment(evaluated_exp):
    explorer = Explorer.load(report_dir=str(evaluated_exp / "report"))
    assert explorer.available and sorted(explorer.names) == ["even", "odd", "teacher"]
    assert explorer.label_names == CLASSES


def test_a_bad_predictions_file_is_a_start_up_error_and_unaligned_models_are_409(tmp_path, evaluated_exp):
    report = tmp_path / "report"
    (report / "predictions").mkdir(parents=True)
    (report / "predictions" / "odd.csv").write_text("text,label\nhello,0\n")
    with pytest.raises(UsageError, match=r"odd.csv: not a run_eval.py predictions file \(missing pred\)"):
        Explorer.load(report_dir=str(report))

    odd = predictions(evaluated_exp, "odd")
    odd.to_csv(report / "predictions" / "odd.csv", index=False)
    odd.iloc[:-1].to_csv(report / "predictions" / "short.csv", index=False)  # scored on another test set
    explorer = Explorer.load(report_dir=str(report))
    assert explorer.results is None and explorer.overview()["results"] == []  # no results.csv: no table
    with pytest.raises(RequestError) as err:
        explorer.disagreements("odd", "short")
    assert err.value.status == 409 and "not scored on the same test texts" in err.value.message


# ---- A multi-label evaluation output: label and pred are label-id lists ("0,3"; empty: none) ----


def decided_sets(model_dir: Path) -> list[list[int]]:
    from test_serving_tasks import own_logits

    from distillkit.tasks import Task

    task = Task.from_config(json.loads((model_dir / "config.json").read_text()))
    return [[int(j) for j in np.flatnonzero(r)] for r in task.predict(task.probabilities(own_logits(model_dir)))]


def write_multilabel_predictions(report: Path, name: str, model_dir: Path, gold: list[list[int]]) -> pd.DataFrame:
    """The documented multi-label predictions file of a real tiny model: its sigmoids, decided by its own saved
    thresholds (Task.predict), beside the gold label sets."""
    from test_serving_tasks import LABELS, TEXTS, own_logits

    from distillkit.tasks import Task

    config = json.loads((model_dir / "config.json").read_text())
    task = Task.from_config(config)
    probs = task.probabilities(own_logits(model_dir))
    preds = task.predict(probs)

    def ids(row) -> list[int]:
        return [int(j) for j in np.flatnonzero(row)]

    frame = pd.DataFrame(
        {
            "text": TEXTS,
            "label": [",".join(map(str, g)) for g in gold],
            "label_name": [",".join(LABELS[j] for j in g) for g in gold],
            "pred": [",".join(map(str, ids(r))) for r in preds],
            "pred_name": [",".join(LABELS[j] for j in ids(r)) for r in preds],
            **{f"prob_{j}": probs[:, j] for j in range(len(LABELS))},
        }
    )
    (report / "predictions").mkdir(parents=True, exist_ok=True)
    frame.to_csv(report / "predictions" / f"{name}.csv", index=False)
    return frame


def make_multilabel_report(root: Path) -> tuple[Path, dict[str, pd.DataFrame]]:
    """ROOT/{ml_a,ml_b}: tiny multi-label models, and ROOT/report: their predictions files (no results.csv)."""
    from test_serving_tasks import make_multilabel_model

    report = root / "report"
    dirs = {name: make_multilabel_model(root / name, seed=seed) for name, seed in (("ml_a", 3), ("ml_b", 7))}
    # Gold: ml_a's own label sets on the first half of the texts (right there), another label set on the rest.
    gold = [s if i < 4 else sorted({0, 3} ^ set(s)) for i, s in enumerate(decided_sets(dirs["ml_a"]))]
    frames = {name: write_multilabel_predictions(report, name, path, gold) for name, path in dirs.items()}
    return report, frames


@pytest.fixture(scope="module")
def multilabel_report(tmp_path_factory) -> tuple[Path, dict[str, pd.DataFrame]]:
    return make_multilabel_report(tmp_path_factory.mktemp("ml_explore"))


def multi_hot_of(column: pd.Series, k: int) -> np.ndarray:
    out = np.zeros((len(column), k), dtype=int)
    for i, cell in enumerate(column.astype(str)):
        for j in filter(None, cell.split(",")):
            out[i, int(j)] = 1
    return out


def test_a_multilabel_evaluation_is_explored_per_label_and_by_label_set(multilabel_report):
    from test_serving_tasks import LABELS

    report, frames = multilabel_report
    explorer = Explorer.load(report_dir=str(report))
    overview = explorer.overview()
    assert overview["labels"] == LABELS  # every label named, from the label_name / pred_name lists
    assert overview["problem_types"] == dict.fromkeys(["ml_a", "ml_b"], "multi_label_classification")
    k = len(LABELS)
    for name, frame in frames.items():
        gold, pred = multi_hot_of(frame.label, k), multi_hot_of(frame.pred, k)
        dist = explorer.distribution(name)
        assert [c["gold"] for c in dist["classes"]] == gold.sum(axis=0).tolist()
        assert [c["predicted"] for c in dist["classes"]] == pred.sum(axis=0).tolist()
        right = (gold == pred).all(axis=1)
        assert dist["accuracy"] == pytest.approx(right.mean())
        if name == "ml_a":  # right on the first half by construction, wrong on the rest
            assert right.tolist() == [True] * 4 + [False] * 4

        errors = explorer.errors(name, limit=MAX_LIMIT)
        assert sorted(e["index"] for e in errors["errors"]) == np.flatnonzero(~right).tolist()
        probs = frame[[f"prob_{j}" for j in range(k)]].to_numpy()
        for e in errors["errors"]:
            i = e["index"]
            assert e["gold_ids"] == np.flatnonzero(gold[i]).tolist() and e["gold_id"] is None
            assert e["predicted_ids"] == np.flatnonzero(pred[i]).tolist() and not e["correct"]
            assert e["predicted"] == (", ".join(LABELS[j] for j in e["predicted_ids"]) or "none")
            wrong = np.flatnonzero(gold[i] != pred[i])  # the surest of its wrong decisions
            surest = max(probs[i, j] if pred[i, j] else 1 - probs[i, j] for j in wrong)
            assert e["probability"] == pytest.approx(surest)
        confidence = [e["probability"] for e in errors["errors"]]
        assert confidence == sorted(confidence, reverse=True)

    a, b = (multi_hot_of(frames[n].pred, k) for n in ("ml_a", "ml_b"))
    gold = multi_hot_of(frames["ml_a"].label, k)
    right_a, right_b = (a == gold).all(axis=1), (b == gold).all(axis=1)
    dis = explorer.disagreements("ml_a", "ml_b", limit=MAX_LIMIT)
    assert dis["table"] == {
        "both_right": int((right_a & right_b).sum()),
        "only_a": int((right_a & ~right_b).sum()),
        "only_b": int((~right_a & right_b).sum()),
        "both_wrong": int((~right_a & ~right_b).sum()),
    }
    differ = np.flatnonzero((a != b).any(axis=1))
    assert len(differ) and sorted(r["index"] for r in dis["rows"]) == differ.tolist()
    for r in dis["rows"]:
        assert r["a"]["predicted_ids"] == np.flatnonzero(a[r["index"]]).tolist()
        assert r["b"]["predicted_ids"] == np.flatnonzero(b[r["index"]]).tolist()


def test_the_app_serves_a_multilabel_evaluation(multilabel_report, tmp_path):
    from test_serving_tasks import make_multilabel_model

    report, _ = multilabel_report
    registry = ModelRegistry.from_dirs([str(make_multilabel_model(tmp_path / "ml_a"))], ServingLimits())
    app = app_module.create_app(registry, Explorer.load(report_dir=str(report)))
    with TestClient(app, base_url=LOCAL_URL) as test_client:
        assert test_client.get("/api/evaluation").json()["problem_types"]["ml_b"] == "multi_label_classification"
        body = test_client.get("/api/errors", params={"model": "ml_a"}).json()
        assert body["total"] > 0 and all("gold_ids" in e for e in body["errors"])
    registry.close()


ML_GOLD = ["0,3", "", "1", "2,3", "0,1,3", "", "3", "2"]  # go_emotions' layout: a `labels` column of id lists


def make_run_eval_multilabel_experiment(root: Path) -> Path:
    """EXP/{ml_a,ml_b}: tiny multi-label models with saved thresholds, and EXP/report: run_eval.py's output for
    them on a multi-label CSV folder (TEXTS, gold label sets ML_GOLD)."""
    from test_serving_tasks import TEXTS, make_multilabel_model

    data = root / "data"
    data.mkdir(parents=True)
    for split in ("train", "validation", "test"):
        pd.DataFrame({"text": TEXTS, "labels": ML_GOLD}).to_csv(data / f"{split}.csv", index=False)
    exp = root / "exp"
    for name, seed in (("ml_a", 3), ("ml_b", 7)):
        make_multilabel_model(exp / name, seed=seed)
        (exp / name / "all_results.json").write_text(json.dumps({"method": name}))
    run_eval.main(
        ["--experiment_dir", str(exp), "--dataset_name", str(data), "--output_dir", str(exp / "report")]
        + ["--label_column", "labels", "--problem_type", "multi_label"]
        + EVAL_FAST
    )
    return exp


def test_the_explorer_reads_run_evals_own_multilabel_output(tmp_path):
    """What run_eval.py writes for multi-label models (label-id lists in label/pred, a problem_type column) is what
    the exploration endpoints read: every count and error checked against the file."""
    from test_serving_tasks import LABELS

    exp = make_run_eval_multilabel_experiment(tmp_path)
    explorer = Explorer.load(experiment_dir=str(exp))
    overview = explorer.overview()
    assert overview["problem_types"] == dict.fromkeys(["ml_a", "ml_b"], "multi_label_classification")
    assert explorer.label_names == LABELS
    results = pd.read_csv(exp / "report" / "results.csv")
    for row, expected in zip(overview["results"], results.itertuples()):  # the table says what its columns mean
        assert row["problem_type"] == "multi_label_classification"
        assert row["macro_f1"] == pytest.approx(expected.macro_f1) and row["pr_auc"] == pytest.approx(expected.pr_auc)
    k = len(LABELS)
    expected_gold = multi_hot_of(pd.Series(ML_GOLD), k)
    for name in ("ml_a", "ml_b"):
        frame = pd.read_csv(exp / "report" / "predictions" / f"{name}.csv", keep_default_na=False)
        assert (multi_hot_of(frame.label, k) == expected_gold).all()
        pred = multi_hot_of(frame.pred, k)
        dist = explorer.distribution(name)
        assert [c["gold"] for c in dist["classes"]] == expected_gold.sum(axis=0).tolist()
        assert [c["predicted"] for c in dist["classes"]] == pred.sum(axis=0).tolist()
        wrong = np.flatnonzero((pred != expected_gold).any(axis=1))
        errors = explorer.errors(name, limit=MAX_LIMIT)
        assert errors["total"] == len(wrong) and sorted(e["index"] for e in errors["errors"]) == wrong.tolist()
