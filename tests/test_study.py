"""study/run_study.py: stages trained and scored one at a time, small outputs published, skipped once published."""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest

from distillkit.report import linked_images
from study import run_study

ABSOLUTE = re.compile(r"(^|[\s,\"'(])/(tmp|work|home|root)/")

BUDGET = (
    "--max_steps 3 --per_device_train_batch_size 8 --max_seq_length 32 --save_strategy no "
    "--teacher_learning_rate 1e-3 --student_learning_rate 1e-3"
)


def study_argv(tmp_path, base, data, *extra: str) -> list[str]:
    return [
        "--dataset", data.name, "--data_root", str(data.parent), "--teacher", str(base),
        "--work_dir", str(tmp_path / "work"), "--results_dir", str(tmp_path / "results"),
        "--budget", BUDGET, "--n_resamples", "50", *extra,
    ]  # fmt: skip


def test_stage_order_puts_the_question_first():
    order = run_study.stage_order(["top", "odd", "teacher", "odd_ce", "lora"], [1, 2])
    assert order == [
        ("teacher", 1), ("odd", 1), ("odd_ce", 1), ("teacher", 2), ("odd", 2), ("odd_ce", 2), ("lora", 1), ("top", 1),
        ("lora", 2), ("top", 2),
    ]  # fmt: skip


def test_study_publishes_stages_then_skips_them_on_a_fresh_machine(
    tmp_path, caplog, tiny_base_model_dir, tiny_data_dir
):
    argv = study_argv(
        tmp_path, tiny_base_model_dir, tiny_data_dir, "--seeds", "0", "1", "--methods", "teacher", "odd_ce"
    )
    written = run_study.main(argv)
    results_dir = tmp_path / "results" / tiny_data_dir.name
    assert [os.path.relpath(w, results_dir) for w in written] == [
        os.path.join("stages", m, f"seed{s}") for s in (0, 1) for m in ("teacher", "odd_ce")
    ]
    stage = results_dir / "stages" / "odd_ce" / "seed1"
    assert sorted(os.listdir(stage)) == ["loss_history.json", "predictions.csv.gz", "results.csv", "stage.json"]
    row = pd.read_csv(stage / "results.csv")
    assert row.model.tolist() == ["seed1-odd_ce"] and row.method.tolist() == ["odd_ce"] and row.seed.tolist() == [1]
    predictions = pd.read_csv(stage / "predictions.csv.gz")
    assert list(predictions.columns) == ["label", "pred", "prob_0", "prob_1"] and len(predictions) == 24
    record = json.loads((stage / "stage.json").read_text())
    assert record["recorded_method"] == "odd_ce"  # run_eval names the CE-only student so too
    assert len(record["label_names"]) == 2
    assert record["torch"] and record["budget"] == BUDGET
    assert record["epochs_factor"] == 1  # only lora_steps trains for more than the budget's epochs
    # No weights and no absolute path of this machine in anything published.
    for path in glob.glob(str(tmp_path / "results" / "**" / "*"), recursive=True):
        assert not path.endswith((".safetensors", ".bin")), path
        if path.endswith((".csv", ".json", ".md")):
            assert not ABSOLUTE.search(Path(path).read_text()), path

    # The data set's report: paired differences of the two seeds, every linked plot present.
    report = results_dir / "report.md"
    pairs = pd.read_csv(results_dir / "paired.csv")
    assert set(zip(pairs.a, pairs.b)) == {("odd_ce", "teacher")} and set(pairs.n_seeds) == {2}
    assert all(os.path.isfile(p) for p in linked_images(str(report)))
    index = (tmp_path / "results" / "README.md").read_text()
    assert "## Methods × data sets" in index and "| odd_ce |" in index and "(n=2)" in index

    # One model per method timed side by side: the report's cost from then on, and no stage trains for it. The
    # rebuild drops a plot of an earlier layout, and only after the new report is written.
    stale = results_dir / "plots" / "old_layout.png"
    stale.write_bytes(b"png")
    assert run_study.main(argv + ["--time_latency", "true"]) == []
    assert not stale.exists() and all(os.path.isfile(p) for p in linked_images(str(report)))
    timed = pd.read_csv(results_dir / "latency.csv")
    assert timed.method.tolist() == ["teacher", "odd_ce"] and timed.seed.tolist() == [0, 0]
    assert timed.weights.tolist() == ["stage", "stage"]
    assert timed.latency_vs_teacher.iloc[0] == 1.0 and (timed.latency_ms_b1_cpu > 0).all()
    assert not ABSOLUTE.search((results_dir / "latency.csv").read_text())
    summary = pd.read_csv(results_dir / "summary.csv").set_index("method")
    assert summary.latency_ms_b1_cpu_side_by_side.to_dict() == dict(zip(timed.method, timed.latency_ms_b1_cpu))
    assert "`latency.csv`: one model per method timed side by side" in report.read_text()

    # A fresh machine: the weights are gone, the published stages are not. Nothing runs again.
    shutil.rmtree(tmp_path / "work")
    assert run_study.main(argv) == []
    with pytest.raises(SystemExit, match="no finished teacher model for seeds 0 1"):
        run_study.main(argv + ["--time_latency", "true"])
    # ... unless it may train a model of each architecture on a few rows, only to time it: apart from the stages'.
    before = {p: Path(p).read_bytes() for p in glob.glob(str(results_dir / "stages" / "**" / "*"), recursive=True)
              if os.path.isfile(p)}  # fmt: skip
    assert run_study.main(argv + ["--time_latency", "true", "--latency_train_rows", "5"]) == []
    timed = pd.read_csv(results_dir / "latency.csv")
    assert timed.weights.tolist() == ["timing only (5 rows)"] * 2 and timed.seed.tolist() == [0, 0]
    timing_dir = tmp_path / "work" / tiny_data_dir.name / run_study.TIMING_MODELS_DIR / "seed0"
    for method in ("teacher", "odd_ce"):
        record = json.loads((timing_dir / method / "run_record.json").read_text())
        assert record["dataset"]["rows"]["train"] == 5, record["dataset"]
    assert not (tmp_path / "work" / tiny_data_dir.name / "seed0").exists()  # no stage would reuse them
    assert before == {p: Path(p).read_bytes() for p in before}
    assert "trained like their stage on a few rows only to be timed" in report.read_text()
    assert not ABSOLUTE.search((results_dir / "latency.csv").read_text())
    # A stage that never finished publishing (killed): its folder is missing, so it runs, with its base retrained.
    shutil.rmtree(stage)
    caplog.clear()  # only the re-run's commands count below
    with caplog.at_level("INFO", logger="run_study"):
        assert run_study.main(argv + ["--dry_run", "true"]) == []
    assert "--methods teacher odd_ce" in caplog.text and "--seeds 1" in caplog.text
    assert "--seeds 0" not in caplog.text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "middle"], "unknown method"),
        (["--seeds", "1", "1"], "a seed appears twice"),
        (["--methods", "odd", "even_onnx"], "an export is scored as two models"),
        (["--correction", "bonferroni"], "--correction bonferroni: choose from holm, bh, none"),
        (["--alpha", "5"], "--alpha 5.0: give a level between 0 and 1"),
    ],
)
def test_bad_study_flags(tmp_path, capsys, tiny_base_model_dir, tiny_data_dir, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        run_study.main(study_argv(tmp_path, tiny_base_model_dir, tiny_data_dir, *extra))
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_the_default_is_the_study_s_methods_with_a_control_for_every_layer_choice():
    """Not every registry entry: a deployment variant (even_onnx) is no method of the question, and stopped a run."""
    (args,) = run_study.parse_args((run_study.StudyArguments,), ["--report_only", "true"])
    assert args.methods == [
        "teacher", "odd", "even", "odd_ce", "even_ce", "lora", "lora_even", "lora_steps", "auto", "spread", "bottom",
        "top", "spread_ce", "bottom_ce", "top_ce",
    ]  # fmt: skip


def test_a_data_set_without_a_budget_needs_one(capsys):
    with pytest.raises(SystemExit):
        run_study.main(["--dataset", "imdb"])
    assert "no budget in BUDGETS" in capsys.readouterr().err


def test_the_evaluation_reads_the_task_the_budget_trains():
    """go_emotions' budget trains the multi-label form: its evaluation must load that form, not the preset's default."""
    assert run_study.task_flags(run_study.BUDGETS["go_emotions"]) == ["--problem_type", "multi_label"]
    assert run_study.task_flags("--max_train_samples 10 --label_columns a,b --label_threshold 0.3") == [
        "--label_columns", "a,b", "--label_threshold", "0.3",
    ]  # fmt: skip
    assert run_study.task_flags(run_study.BUDGETS["wiki_toxic"]) == []


def _search_csv(folder, dataset, best_teacher_lr=3e-5, best_lora=("lora", 1e-3, 16, "all-linear")):
    """A finished search (every grid configuration, the winners inside their learning-rate ranges)."""
    from study.search import GRID

    rows = []
    for c in GRID:
        best = c.family == "teacher" and c.learning_rate == best_teacher_lr
        best = best or (c.family, c.learning_rate, c.lora_r, c.lora_target_modules) == best_lora
        rows.append({"config": c.name, "family": c.family, "learning_rate": c.learning_rate, "lora_r": c.lora_r,
                     "lora_target_modules": c.lora_target_modules, "seed": 42, "eval_pr_auc": 0.9 if best else 0.5,
                     "problem_type": "single_label_classification", "num_labels": 2})
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / f"{dataset}.csv", index=False)


def test_a_study_data_set_without_its_finished_search_is_refused(capsys, tmp_path):
    with pytest.raises(SystemExit):
        run_study.main(["--dataset", "hate_speech18", "--dry_run", "true", "--search_dir", str(tmp_path)])
    assert "run study/search.py --dataset hate_speech18 first" in capsys.readouterr().err
    _search_csv(tmp_path, "hate_speech18")
    rows = pd.read_csv(tmp_path / "hate_speech18.csv")
    rows.iloc[:-1].to_csv(tmp_path / "hate_speech18.csv", index=False)  # one configuration still to run
    with pytest.raises(SystemExit):
        run_study.main(["--dataset", "hate_speech18", "--dry_run", "true", "--search_dir", str(tmp_path)])
    assert "missing or unfinished" in capsys.readouterr().err


def test_the_searched_hyperparameters_reach_every_training_command(caplog, tmp_path):
    _search_csv(tmp_path / "search", "hate_speech18")
    with caplog.at_level("INFO", logger="run_study"):
        run_study.main(
            ["--dataset", "hate_speech18", "--methods", "teacher", "lora", "--seeds", "7", "--dry_run", "true"]
            + ["--work_dir", str(tmp_path / "w"), "--results_dir", str(tmp_path / "r")]
            + ["--search_dir", str(tmp_path / "search")]
        )
    compare = [r.message for r in caplog.records if "run_compare.py" in r.message]
    assert len(compare) == 2
    for line in compare:
        words = shlex.split(line)
        # The searched rate comes after COMMON's 5e-5, so it is the one argparse keeps.
        rates = [words[i + 1] for i, w in enumerate(words) if w == "--teacher_learning_rate"]
        assert rates[-1] == "3e-05"
        assert words[words.index("--lora_learning_rate") + 1] == "0.001"
        assert words[words.index("--lora_args") + 1] == "--lora_r 16 --lora_target_modules all-linear"


def test_an_auto_stage_publishes_its_layer_choice_and_the_report_shows_it(tmp_path, tiny_base_model_dir, tiny_data_dir):
    argv = study_argv(tmp_path, tiny_base_model_dir, tiny_data_dir, "--seeds", "0", "--methods", "teacher", "auto")
    run_study.main(argv)
    results_dir = tmp_path / "results" / tiny_data_dir.name
    stage = results_dir / "stages" / "auto" / "seed0"
    choice = pd.read_csv(stage / "layer_selection.csv")
    assert choice.model.tolist() == ["seed0-auto"]
    # The layers the stage's results name are the ones chosen: 2 of the tiny teacher's 4.
    results = pd.read_csv(stage / "results.csv")
    kept = choice.layers_chosen.iloc[0].split()
    assert len(kept) == 2 and results.layers.iloc[0].replace(",", " ").split() == kept
    assert 0 < choice.layer_selection_seconds.iloc[0] and choice.train_runtime_s.iloc[0] > 0
    share = choice.layer_selection_seconds.iloc[0] / choice.train_runtime_s.iloc[0]
    assert choice.share_of_training.iloc[0] == pytest.approx(share, rel=1e-9)
    assert [len(choice[c].iloc[0].split()) for c in ("score_block_influence", "score_skip_metric_drop")] == [4, 4]
    # The data set's report gathers it: the section, the table beside it and the plot it links.
    report = (results_dir / "report.md").read_text()
    assert "## Layer selection (`--layers auto`)" in report and "| seed0-auto |" in report
    assert pd.read_csv(results_dir / "layer_selection.csv").model.tolist() == ["seed0-auto"]
    assert (results_dir / "plots" / "layer_selection.png").stat().st_size > 1000
    assert all(os.path.isfile(p) for p in linked_images(str(results_dir / "report.md")))
    assert not ABSOLUTE.search((stage / "layer_selection.csv").read_text())


def test_a_stream_may_leave_the_reports_for_the_end(monkeypatch, tmp_path, tiny_base_model_dir, tiny_data_dir):
    """--rebuild_reports false publishes the stage and rebuilds nothing (on go_emotions the rebuild outlasted the
    stage); the default rebuilds the data set's report and the index after every stage."""
    calls = []
    monkeypatch.setattr(run_study, "train_and_score", lambda args, method, seed: f"eval/{method}{seed}")
    monkeypatch.setattr(run_study, "publish", lambda args, method, seed, d: calls.append(("publish", method, seed)) or d)
    monkeypatch.setattr(run_study, "build_report", lambda *a, **k: calls.append(("report",)))
    monkeypatch.setattr(run_study, "build_index", lambda *a, **k: calls.append(("index",)))
    argv = study_argv(tmp_path, tiny_base_model_dir, tiny_data_dir, "--seeds", "0", "1", "--methods", "teacher")
    run_study.main(argv + ["--rebuild_reports", "false"])
    assert calls == [("publish", "teacher", 0), ("publish", "teacher", 1)]
    calls.clear()
    run_study.main(argv)  # the fake publish wrote no folder, so both stages run again
    rebuilt = [("report",), ("index",)]
    assert calls == [("publish", "teacher", 0), *rebuilt, ("publish", "teacher", 1), *rebuilt]
    calls.clear()
    run_study.main(argv + ["--rebuild_reports", "false", "--report_only", "true"])  # the end of a run
    assert calls == [("report",), ("index",)]
