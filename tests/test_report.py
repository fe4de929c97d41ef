"""The report: paired differences, forest plot, a verdict made from the difference table, and every linked plot exists."""

from __future__ import annotations

import glob
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from distillkit.report import (
    ARCH_LATENCY,
    SIDE_BY_SIDE_LATENCY,
    SUMMARY_COLUMNS,
    cost_column,
    linked_images,
    pareto_front,
    per_label_over_seeds,
    same_cost_pairs,
    study_index_markdown,
    study_verdict,
    summarize,
    write_report,
)
from distillkit.report_verdict import _front_sentence
from distillkit.stats import EXPLORATORY, SIGN_FLIP
from distillkit.tasks import MULTI_LABEL

CONTEXT = {
    "dataset": "tiny",
    "split": "test",
    "label_names": ["no", "yes"],
    "machine": "test machine",
    "torch": "x",
    "num_threads": 1,
    "device": "cpu",
    "latency_runs": 50,
    "throughput_texts": 32,
}


def synthetic_study(seeds: list[int], flip: dict[str, float], n: int = 300, k: int = 2):
    """results rows and predictions of methods whose error rate is `flip[method]`, on the same texts."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, k, n)
    rows, predictions = [], {}
    for method, rate in flip.items():
        for seed in seeds:
            wrong = rng.random(n) < rate
            preds = np.where(wrong, (labels + 1) % k, labels)
            probs = np.full((n, k), 0.1 / max(k - 1, 1))
            probs[np.arange(n), preds] = 0.9
            model = f"seed{seed}-{method}"
            predictions[model] = pd.DataFrame(
                {"label": labels, "pred": preds, **{f"prob_{i}": probs[:, i] for i in range(k)}}
            )
            row = {c: float(rng.random()) for c in SUMMARY_COLUMNS}
            row |= {"model": model, "method": method, "seed": seed, "samples": n, "f1": 1 - rate + 0.01 * seed}
            row |= {"f1_ci_low": 0.0, "f1_ci_high": 1.0, "latency_ms_b1_cpu": 30.0 if method == "teacher" else 15.0}
            row |= {"layers": "all", "latency_ms_b1": 1.0, "train_runtime_s": 1.0}
            rows.append(row)
    return pd.DataFrame(rows), predictions


def test_report_with_pairs_links_only_existing_plots(tmp_path):
    results, predictions = synthetic_study([1, 2, 3], {"teacher": 0.05, "odd": 0.1, "even": 0.4, "odd_ce": 0.11})
    path = write_report(str(tmp_path), results, summarize(results), {}, CONTEXT, predictions, n_resamples=200)
    text = Path(path).read_text()
    links = linked_images(path)
    assert os.path.join(str(tmp_path), "plots", "forest.png") in links
    assert all(os.path.isfile(p) for p in links), [p for p in links if not os.path.isfile(p)]
    pairs = pd.read_csv(tmp_path / "paired.csv")
    got = {(r.a, r.b, r.metric): r.verdict for r in pairs.itertuples()}
    assert got[("odd", "even", "f1")] == "A better"  # 10% vs 40% errors on every seed
    assert got[("odd", "odd_ce", "f1")] == "not distinguishable"  # 10% vs 11%: within the noise
    assert got[("even", "teacher", "f1")] == "B better"
    # The verdict sentences come from that table; the old "more than seed noise" wording is gone.
    assert "odd − even: positive-class F1" in text and "**odd is better**" in text
    assert "odd − odd_ce: positive-class F1" in text and "**not distinguishable**" in text
    assert "Against the teacher" in text and "seed noise." not in text
    assert "| odd | even | positive-class F1 | 3 |" in text


def test_one_seed_calls_nothing(tmp_path):
    results, predictions = synthetic_study([7], {"teacher": 0.05, "even": 0.4})
    path = write_report(str(tmp_path), results, summarize(results), {}, CONTEXT, predictions, n_resamples=100)
    text = Path(path).read_text()
    assert "seed-to-seed spread is unknown" in text
    assert "| even | teacher | positive-class F1 | 1 |" in text and "teacher better" not in text
    assert "Against the teacher (positive-class F1): not distinguishable: even" in text


def test_multiclass_uses_macro_f1(tmp_path):
    results, predictions = synthetic_study([1, 2], {"teacher": 0.1, "odd": 0.2, "even": 0.2}, k=4)
    write_report(str(tmp_path), results, summarize(results), {}, CONTEXT | {"label_names": list("abcd")}, predictions)
    pairs = pd.read_csv(tmp_path / "paired.csv")
    assert set(pairs.metric) == {"macro_f1"}


def test_a_multilabel_results_table_says_what_its_columns_mean(tmp_path):
    """Without `problem_type` in the context (a caller such as the study's report), results.csv's column says it."""
    results, predictions = synthetic_study([1, 2], {"teacher": 0.1, "odd": 0.2}, k=4)
    results["problem_type"] = "multi_label_classification"
    frames = {name: frame.assign(problem_type="multi_label_classification") for name, frame in predictions.items()}
    write_report(str(tmp_path), results, summarize(results), {}, CONTEXT | {"label_names": list("abcd")}, frames)
    report = (tmp_path / "report.md").read_text()
    assert "`accuracy` is subset accuracy" in report and "| subset acc. |" in report
    # The verdict leads with the metric the paired table compares; the tables keep results.csv's micro F1 too.
    assert "is best on macro-F1" in report and "| method | seeds | micro F1 |" in report
    # Multi-label methods are compared by macro-F1 (the GoEmotions paper's figure) and macro ROC-AUC over labels.
    assert set(pd.read_csv(tmp_path / "paired.csv").metric) == {"macro_f1", "roc_auc"}
    assert "| odd | teacher | macro-F1 | 2 |" in report


def test_pareto_front():
    summary = pd.DataFrame(
        {
            "method": ["teacher", "odd", "even", "lora"],
            "f1_mean": [0.92, 0.91, 0.90, 0.91],
            "latency_ms_b1_cpu_mean": [30.0, 15.0, 15.0, 29.0],
        }
    )
    assert pareto_front(summary, "f1") == ["odd", "teacher"]  # even: as slow as odd, worse; lora: dominated by odd


def two_architectures(results: pd.DataFrame, own_latency: dict[str, float]) -> pd.DataFrame:
    """The teacher has 6 layers' parameters, every other method 3 layers'; each method timed at its own moment."""
    return results.assign(
        params=np.where(results.method == "teacher", 22_713_986, 17_390_594),
        latency_ms_b1_cpu=results.method.map(own_latency),
    )


def test_one_architecture_has_one_cost_on_the_front():
    """odd_ce was timed at a quieter moment than odd: that makes it look cheaper, not be cheaper."""
    results, _ = synthetic_study([1, 2, 3], {"teacher": 0.05, "odd": 0.1, "odd_ce": 0.3})
    summary = summarize(two_architectures(results, {"teacher": 30.0, "odd": 16.0, "odd_ce": 12.0}))
    s = summary.set_index("method")
    assert s.loc["odd", ARCH_LATENCY] == s.loc["odd_ce", ARCH_LATENCY] == 14.0  # median of 16,16,16,12,12,12
    assert s.loc["odd_ce", "latency_ms_b1_cpu_mean"] == 12.0
    assert pareto_front(summary, "f1") == ["odd", "teacher"]
    assert pareto_front(summary, "f1", "latency_ms_b1_cpu_mean") == ["odd_ce", "odd", "teacher"]  # the noisy cost
    assert same_cost_pairs(summary, "f1") == [("odd", "odd_ce")]


def test_a_side_by_side_timing_is_the_cost_when_it_covers_every_method():
    results, _ = synthetic_study([1, 2], {"teacher": 0.05, "odd": 0.1, "lora": 0.06})
    summary = summarize(two_architectures(results, {"teacher": 30.0, "odd": 15.0, "lora": 25.0}))
    assert cost_column(summary) == ARCH_LATENCY  # no timing yet
    summary[SIDE_BY_SIDE_LATENCY] = summary.method.map({"teacher": 20.0, "odd": 10.0})
    assert cost_column(summary) == ARCH_LATENCY  # lora was not timed: the partial timing is not used
    summary[SIDE_BY_SIDE_LATENCY] = summary.method.map({"teacher": 20.0, "odd": 10.0, "lora": 21.0})
    assert cost_column(summary) == SIDE_BY_SIDE_LATENCY
    assert pareto_front(summary, "f1") == ["odd", "teacher"]  # lora: slower than the teacher and worse


def test_the_front_leader_against_its_same_cost_rival_is_exploratory(tmp_path):
    """spread vs odd is no question of the study: the front picks it from the means, so the report gives its numbers
    outside the corrected family and never calls it, however clear."""
    results, predictions = synthetic_study([1, 2, 3], {"teacher": 0.05, "odd": 0.1, "spread": 0.4})
    results = two_architectures(results, {"teacher": 30.0, "odd": 15.0, "spread": 15.0})
    path = write_report(str(tmp_path), results, summarize(results), {}, CONTEXT, predictions, n_resamples=200)
    text = Path(path).read_text()
    pairs = pd.read_csv(tmp_path / "paired.csv")
    rival = pairs[(pairs.a == "odd") & (pairs.b == "spread")]
    assert set(rival.verdict) == {EXPLORATORY} and not rival.family.any() and rival.p_adjusted.isna().all()
    assert len(pairs[pairs.family]) == len(pairs) - len(rival)  # the study's own pairs: the corrected family
    assert "the Pareto front is odd (15.0 ms), teacher (30.0 ms)" in text
    assert re.search(r"At odd's cost, odd − spread \+0\.2\d\d: 95% CI over seeds and texts \+0\.\d+ to \+0\.\d+; "
                     r"exploratory \(the pair was picked after seeing the means\), not called\.", text)
    assert "odd − spread: positive-class F1" not in text  # not among the study's own questions


def test_the_cross_data_set_verdict_lists_each_call():
    def pairs(rows):
        table = pd.DataFrame(rows, columns=["a", "b", "metric", "n_seeds", "diff", "verdict"])
        return table.assign(ci_low=-1.0, ci_high=1.0, boot_low=-1.0, boot_high=1.0)

    tables = {
        "big": pairs([("odd", "even", "f1", 5, 0.009, "A better"), ("odd", "even", "roc_auc", 5, 0.003, "A better")]),
        "rare": pairs([("odd", "even", "f1", 3, -0.029, "not distinguishable")]),
        "many": pairs([("odd", "even", "macro_f1", 1, -0.042, "not distinguishable")]),
        "none": None,
    }
    summary = pd.DataFrame({"method": ["teacher", "odd"], "f1_mean": [0.9, 0.8], ARCH_LATENCY: [20.0, 10.0]})
    lines = study_verdict({"big": summary}, tables, {"big": 2, "rare": 2, "many": 28, "none": 2})
    assert lines[0] == (
        "- **odd − even**: odd better on big (+0.009, 5 seeds); "
        "not distinguishable on rare (-0.029, 3 seeds), many (-0.042, 1 seed)."
    )
    assert lines[1] == "- **Pareto front** (quality against architecture latency, cheapest first): big: odd, teacher."
    summary = summary.assign(n_models=[3, 2], train_runtime_s_mean=[2400.0, 1800.0], f1_std=[0.01, 0.02])
    index = study_index_markdown({"big": summary}, {"big": tables["big"]}, {"big": 2})
    assert "| odd | 0.800 ± 0.020 (n=2) | 0.50 |" in index  # latency ÷ teacher: 10 / 20 ms
    assert "big 3.0 h (5 models); 3.0 h in all." in index  # 3 × 2400 s + 2 × 1800 s


def test_the_cross_data_set_verdict_answers_the_equal_steps_and_auto_questions():
    """Issues 23 and 24: LoRA at the student's total steps against even, and auto against every static choice."""
    rows = [("lora_steps", "even", "f1", 5, 0.004, "not distinguishable"), ("auto", "top", "f1", 5, 0.02, "A better")]
    rows += [("auto", s, "f1", 5, -0.001, "not distinguishable") for s in ("odd", "even", "bottom", "spread")]
    table = pd.DataFrame(rows, columns=["a", "b", "metric", "n_seeds", "diff", "verdict"])
    lines = study_verdict({}, {"big": table}, {"big": 2})
    assert "- **lora_steps − even**: not distinguishable on big (+0.004, 5 seeds)." in lines
    assert "- **auto − top**: auto better on big (+0.020, 5 seeds)." in lines
    assert sum(line.startswith("- **auto − ") for line in lines) == 5


@pytest.mark.parametrize("markdown", sorted(glob.glob(str(REPO / "docs" / "results" / "**" / "*.md"), recursive=True)))
def test_committed_reports_link_existing_plots(markdown):
    missing = [p for p in linked_images(markdown) if not os.path.isfile(p)]
    assert not missing, f"{markdown} links missing files: {missing}"


MACHINE_PATH = re.compile(r"(^|[\s,\"'(:=])/(tmp|work|home|root|Users)/")


@pytest.mark.parametrize(
    "path",
    sorted(
        p
        for p in glob.glob(str(REPO / "docs" / "results" / "**" / "*"), recursive=True)
        if p.endswith((".md", ".csv", ".txt", ".json"))
    ),
)
def test_committed_results_carry_no_machine_path(path):
    text = Path(path).read_text()
    assert not MACHINE_PATH.search(text), f"{path}: {MACHINE_PATH.search(text).group(0)!r}"


def test_a_method_on_one_seed_is_left_out_of_the_front():
    """go_emotions once had `top` on one seed at the lowest cost: its mean put it on the front like a finding."""
    summary = pd.DataFrame(
        {
            "method": ["teacher", "odd", "top"],
            "n_models": [3, 3, 1],
            "f1_mean": [0.92, 0.90, 0.95],
            "latency_ms_b1_cpu_mean": [30.0, 15.0, 10.0],
        }
    )
    assert pareto_front(summary, "f1") == ["odd", "teacher"]
    assert "Left out of the front for having one seed: top." in _front_sentence(summary, "f1", None)
    # A pilot with one seed everywhere still has a front.
    assert pareto_front(summary.assign(n_models=1), "f1") == ["top"]


@pytest.mark.parametrize("multi_label", [False, True])
def test_per_label_f1_is_the_mean_over_each_methods_seeds(tmp_path, multi_label):
    from sklearn.metrics import f1_score

    results, predictions = synthetic_study([1, 2], {"teacher": 0.1, "odd": 0.3}, n=120, k=4)
    if multi_label:  # the same decisions as label sets, as run_eval.py writes a multi-label model's predictions
        predictions = {
            m: f.assign(label=f.label.astype(str), pred=f.pred.astype(str), problem_type=MULTI_LABEL)
            for m, f in predictions.items()
        }
        results["problem_type"] = MULTI_LABEL
    table = per_label_over_seeds(results, predictions, list("abcd"))
    assert table.model.tolist() == ["teacher"] * 4 + ["odd"] * 4 and set(table.n_seeds) == {2}
    for method in ("teacher", "odd"):
        frames = [predictions[f"seed{s}-{method}"] for s in (1, 2)]
        expected = np.mean(
            [f1_score(f.label.astype(int), f.pred.astype(int), average=None, labels=range(4)) for f in frames], axis=0
        )
        assert table[table.model == method].f1.tolist() == pytest.approx(expected.tolist())
    assert table[table.model == "odd"].support.sum() == 120
    context = CONTEXT | {"label_names": list("abcd")}
    write_report(str(tmp_path), results, summarize(results), {}, context, predictions, 50, per_label=table)
    report = (tmp_path / "report.md").read_text()
    what = "label" if multi_label else "class"
    assert "mean over each method's seeds" in report and f"| {what} | support | teacher | odd |" in report
    # A binary task has no per-label table: its report already gives the positive class's F1.
    binary, binary_predictions = synthetic_study([1], {"teacher": 0.1})
    assert per_label_over_seeds(binary, binary_predictions, ["no", "yes"]) is None


def test_a_sign_flip_is_reported_as_such_in_the_verdicts():
    table = pd.DataFrame(
        [
            ("odd", "even", "macro_f1", 3, 0.018, 0.01, 0.03, 0.02, 0.04, SIGN_FLIP),
            ("odd", "even", "roc_auc", 3, -0.007, -0.01, -0.004, 0.03, 0.04, SIGN_FLIP),
        ],
        columns=["a", "b", "metric", "n_seeds", "diff", "hier_low", "hier_high", "p_value", "p_adjusted", "verdict"],
    ).assign(ci_low=-1.0, ci_high=1.0, boot_low=-1.0, boot_high=1.0, correction="holm")
    summary = pd.DataFrame({"method": ["odd", "even"], "macro_f1_mean": [0.4, 0.42], ARCH_LATENCY: [10.0, 10.0]})
    summary = summary.assign(n_models=[3, 3], macro_f1_std=[0.01, 0.01], train_runtime_s_mean=[60.0, 60.0])
    index = study_index_markdown({"many": summary}, {"many": table}, {"many": 28})
    assert "| many | odd − even | macro-F1 | 3 | +0.018 | +0.010 to +0.030 | 0.040 |" in index
    assert "- **odd − even**: sign flips between metrics: not called on many (+0.018, 3 seeds)." in index
    assert index.count("sign flips between metrics: not called") == 3  # both rows; neither says "odd better"
    assert "odd better" not in index


def test_training_compute_counts_what_each_method_starts_from():
    from distillkit.report import compute_markdown, training_compute

    results = pd.DataFrame(
        {
            "model": ["s1-teacher", "s1-even", "s1-lora_even", "s2-teacher", "s2-even", "s2-lora_even", "s3-odd"],
            "method": ["teacher", "even", "lora_even", "teacher", "even", "lora_even", "odd"],
            "seed": [1, 1, 1, 2, 2, 2, 3],
            "train_runtime_s": [100.0, 60.0, 20.0, 110.0, 70.0, 30.0, 50.0],
        }
    )
    steps = {"teacher": 300, "even": 200, "lora_even": 100, "odd": 200}
    histories = {
        m: [{"step": steps[meth] // 2, "loss": 1.0}, {"step": steps[meth], "loss": 0.5}]
        for m, meth in zip(results.model, results.method)
    }
    table = training_compute(results, histories).set_index("method")
    assert list(table.index) == ["teacher", "odd", "even", "lora_even"]  # the report's method order
    assert table.loc["lora_even", "steps"] == 100
    assert table.loc["lora_even", "steps_with_bases"] == 100 + 200 + 300  # teacher + even + itself
    assert table.loc["lora_even", "train_s_with_bases"] == pytest.approx(((100 + 60 + 20) + (110 + 70 + 30)) / 2)
    assert table.loc["even", "train_s"] == pytest.approx(65.0)
    assert table.loc["lora_even", "bases"] == "teacher + even"
    # seed 3's odd has no teacher stage: its total is unknown, never the smaller own cost
    assert math.isnan(table.loc["odd", "steps_with_bases"]) and table.loc["odd", "steps"] == 200
    text = "\n".join(compute_markdown(training_compute(results, histories)))
    assert "| lora_even | 2 | teacher + even | 100 | 600 |" in text
