"""study/before_after.py and study/lora_sweep.py: the figures they compute and the choices they make."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from study.before_after import before_after, edition, markdown
from study.calls_changed import compare_calls, main as calls_changed_main
from study.lora_sweep import best_row, edge_extension, selection_metric, summary_markdown


def _stage(root, method, seed, labels, preds, macro_f1):
    folder = root / "stages" / method / f"seed{seed}"
    folder.mkdir(parents=True)
    model = f"seed{seed}-{method}"
    pd.DataFrame([{"model": model, "method": method, "seed": seed, "macro_f1": macro_f1}]).to_csv(
        folder / "results.csv", index=False
    )
    probs = [[0.9, 0.1] if p == 0 else [0.2, 0.8] for p in preds]
    frame = pd.DataFrame({"label": labels, "pred": preds, "prob_0": [p[0] for p in probs], "prob_1": [p[1] for p in probs]})
    frame.to_csv(folder / "predictions.csv.gz", index=False)
    (folder / "loss_history.json").write_text("[]")
    (folder / "stage.json").write_text(json.dumps({"label_names": ["calm", "toxic"]}))


def test_before_after_recomputes_the_rarest_class_f1_over_shared_seeds(tmp_path):
    labels = [0, 0, 0, 0, 0, 0, 1, 1]  # toxic is the rarest class: 2 test texts
    before, after = tmp_path / "before", tmp_path / "after"
    _stage(before, "lora", 42, labels, [0] * 8, 0.43)  # never predicts toxic: F1 0
    _stage(before, "lora", 43, labels, [0] * 8, 0.40)  # a seed the after edition lacks: left out
    _stage(after, "lora", 42, labels, [0, 0, 0, 0, 0, 1, 1, 0], 0.70)  # tp 1, fp 1, fn 1: F1 0.5
    b, names = edition(str(before), ["lora"])
    a, _ = edition(str(after), ["lora"])
    table, rarest = before_after(b, a, names)
    assert rarest == "toxic"
    row = table.iloc[0]
    assert row.seeds == "42"
    assert row.rarest_f1_before == 0.0 and row.rarest_f1_after == pytest.approx(0.5)
    assert row.macro_f1_before == pytest.approx(0.43) and row.macro_f1_after == pytest.approx(0.70)
    assert "| lora | 42 | 0.430 → 0.700 | 0.000 → 0.500 |" in markdown(table, rarest, 2)


def test_lora_sweep_extends_a_grid_whose_best_is_an_edge_and_picks_ties_low():
    assert edge_extension([1e-3, 2e-3, 4e-3], 4e-3) == pytest.approx(8e-3)
    assert edge_extension([1e-3, 2e-3, 4e-3], 1e-3) == pytest.approx(5e-4)
    assert edge_extension([1e-3, 2e-3, 4e-3], 2e-3) is None
    rows = pd.DataFrame(
        {"learning_rate": [4e-3, 1e-3, 2e-3], "warmup": [0.0, 0.1, 0.0], "eval_pr_auc": [0.7, 0.7, 0.6]}
    )
    assert best_row(rows, "eval_pr_auc")[["learning_rate", "warmup"]].tolist() == [1e-3, 0.1]
    assert selection_metric("single_label_classification", 2) == "eval_pr_auc"
    assert selection_metric("multi_label_classification", 28) == "eval_roc_auc"


def test_lora_sweep_summary_says_when_the_best_is_at_the_grid_edge():
    rows = pd.DataFrame(
        {
            "learning_rate": [1e-3, 2e-3],
            "warmup": [0.0, 0.0],
            "seed": [42, 42],
            "problem_type": ["single_label_classification"] * 2,
            "num_labels": [2, 2],
            "eval_pr_auc": [0.5, 0.6],
            "eval_roc_auc": [0.7, 0.8],
            "eval_macro_f1": [0.6, 0.65],
            "train_loss": [0.4, 0.3],
        }
    )
    assert "at the grid's edge" in summary_markdown({"toy": rows})
    rows.loc[len(rows)] = [4e-3, 0.0, 42, "single_label_classification", 2, 0.55, 0.7, 0.6, 0.3]
    text = summary_markdown({"toy": rows})
    assert "Best: learning rate 0.002, warmup 0" in text and "edge" not in text


def test_lora_sweep_default_is_the_configuration_whose_worst_data_set_loses_least():
    from study.lora_sweep import joint_choice

    def table(pr_aucs):
        return pd.DataFrame(
            {
                "learning_rate": [1e-3, 2e-3, 4e-3],
                "warmup": [0.0, 0.0, 0.0],
                "problem_type": ["single_label_classification"] * 3,
                "num_labels": [2] * 3,
                "eval_pr_auc": pr_aucs,
            }
        )

    # a: 2e-3 best by a hair; b: 2e-3 far behind. 1e-3 loses 1% on a and nothing on b: it is the default.
    wide, choice = joint_choice({"a": table([0.99, 1.0, 0.98]), "b": table([0.6, 0.5, 0.4])})
    assert choice["learning_rate"] == 1e-3
    assert choice["worst"] == pytest.approx(0.99)
    assert wide.set_index("learning_rate").loc[2e-3, "worst"] == pytest.approx(0.5 / 0.6)


def test_budget_pilot_picks_the_first_epoch_after_which_one_more_adds_too_little():
    from study.budget_pilot import choose_epochs

    def table(f1, auc):
        return pd.DataFrame({"epoch": range(1, len(f1) + 1), "eval_f1": f1, "eval_roc_auc": auc})

    # 1 -> 2 adds 0.02 F1: keep going; 2 -> 3 adds 0.009 F1 and 0.004 AUC: both under the bar, so 2.
    assert choose_epochs(table([0.80, 0.82, 0.829, 0.83, 0.84], [0.90, 0.91, 0.914, 0.92, 0.93]), "eval_f1") == 2
    # F1 stalls but AUC still gains 0.005 (not < 0.005): not yet; it stops once both stall.
    assert choose_epochs(table([0.80, 0.80, 0.80, 0.80], [0.90, 0.905, 0.906, 0.907]), "eval_f1") == 2
    # A drop counts as "adds too little".
    assert choose_epochs(table([0.80, 0.70, 0.90], [0.90, 0.80, 0.95]), "eval_f1") == 1
    # Never stalls: the last epoch.
    assert choose_epochs(table([0.5, 0.6, 0.7], [0.7, 0.8, 0.9]), "eval_f1") == 3


def test_budget_pilot_reads_one_row_per_evaluated_epoch_from_the_log():
    from study.budget_pilot import epoch_table, primary_metric

    history = [
        {"loss": 0.6, "epoch": 0.5, "step": 10},
        {"eval_f1": 0.7, "eval_macro_f1": 0.75, "eval_roc_auc": 0.8, "eval_loss": 0.5, "epoch": 1.0},
        {"eval_f1": 0.8, "eval_macro_f1": 0.85, "eval_roc_auc": 0.9, "eval_loss": 0.4, "epoch": 2.0},
        {"train_runtime": 12.0, "epoch": 2.0},
        {"eval_f1": 0.99, "eval_roc_auc": 0.9, "epoch": 2.0},  # a final evaluation at the tuned rule: not the epoch's
    ]
    table = epoch_table(history)
    assert table["epoch"].tolist() == [1, 2] and table["eval_f1"].tolist() == [0.7, 0.8]
    assert primary_metric("multi_label_classification") == "eval_macro_f1"
    assert primary_metric("single_label_classification") == "eval_f1"


def test_search_picks_each_familys_best_by_the_threshold_free_metric_ties_to_the_grid_order(tmp_path):
    from study.lora_sweep import replace_row
    from study.search import GRID, winners

    path = str(tmp_path / "d.csv")
    pr_auc = [0.60, 0.70, 0.70, 0.65, 0.50, 0.55, 0.40, 0.55]  # teacher: a tie at 3e-5/5e-5; LoRA: a tie too
    for config, value in zip(GRID, pr_auc):
        row = {"config": config.name, "family": config.family, "seed": 42, "eval_pr_auc": value,
               "eval_f1": 0.9, "problem_type": "single_label_classification", "num_labels": 2}
        replace_row(path, row, ("config", "seed"))
    replace_row(path, {**row, "eval_pr_auc": 0.56}, ("config", "seed"))  # a re-run replaces its row
    rows = pd.read_csv(path)
    assert len(rows) == len(GRID)
    best = winners(rows)
    assert best["teacher"]["config"] == "teacher-lr3e-05"  # the earlier of the tied two, not the higher F1
    assert best["lora"]["config"] == "lora-lr0.001-r16-all-linear"  # 0.56 after the re-run
    assert GRID[-1].flags() == ["--learning_rate", "0.001", "--lora_r", "16", "--lora_target_modules", "all-linear"]


def test_study_budgets_take_the_epochs_the_committed_pilots_chose():
    import os

    from study.budget_pilot import RESULTS_DIR, choose_epochs
    from study.run_study import EPOCHS, PILOT_ROWS, REPO

    checked = 0
    for dataset in PILOT_ROWS:
        path = os.path.join(REPO, RESULTS_DIR, f"{dataset}.csv")
        if not os.path.exists(path):
            continue
        table = pd.read_csv(path)
        assert table["train_rows"].iloc[0] == PILOT_ROWS[dataset]
        assert EPOCHS[dataset] == choose_epochs(table, table["primary"].iloc[0]), dataset
        assert table.loc[table["chosen"], "epoch"].tolist() == [EPOCHS[dataset]]
        checked += 1
    if not checked:
        pytest.skip(f"no pilot is committed yet in {RESULTS_DIR}")


def test_a_search_is_complete_once_its_grid_and_allowed_edge_extensions_ran():
    from study.search import GRID, MAX_EXTENSIONS, Config, chosen_hyperparameters, is_complete

    def row(c, value):
        return {"config": c.name, "family": c.family, "learning_rate": c.learning_rate, "lora_r": c.lora_r,
                "lora_target_modules": c.lora_target_modules, "seed": 42, "eval_roc_auc": value,
                "problem_type": "multi_label_classification", "num_labels": 28}

    values = [0.70, 0.80, 0.75, 0.60, 0.50, 0.55, 0.52, 0.54]  # the teacher's 3e-5 and LoRA's 1e-3 r8: inside
    rows = pd.DataFrame([row(c, v) for c, v in zip(GRID, values)])
    assert not is_complete(rows.iloc[:-1])
    assert is_complete(rows)
    assert chosen_hyperparameters(rows) == {
        "teacher_learning_rate": 3e-5, "lora_learning_rate": 1e-3, "lora_r": 8, "lora_target_modules": "query,value",
    }  # fmt: skip
    # The teacher's best at the grid's top: not complete until its extensions ran (or stopped being at the edge).
    rows.loc[rows.config == "teacher-lr0.0001", "eval_roc_auc"] = 0.9
    assert not is_complete(rows)
    for i in range(MAX_EXTENSIONS):
        lr = 1e-4 * 2 ** (i + 1)
        rows = pd.concat([rows, pd.DataFrame([row(Config("teacher", lr), 0.95 + i / 100)])], ignore_index=True)
    assert is_complete(rows)  # still at the edge, but both extensions it may have ran
    assert chosen_hyperparameters(rows)["teacher_learning_rate"] == 4e-4


def test_search_extends_a_family_whose_winner_is_at_the_edge_of_its_learning_rates():
    from study.search import GRID, Config, edge_extensions, summary_markdown

    rows = pd.DataFrame(
        [
            {"config": c.name, "family": c.family, "learning_rate": c.learning_rate, "lora_r": c.lora_r,
             "lora_target_modules": c.lora_target_modules, "seed": 42, "eval_pr_auc": value, "eval_roc_auc": 0.9,
             "eval_f1": 0.8, "eval_macro_f1": 0.8, "train_runtime_s": 60.0, "budget": "--x 1",
             "problem_type": "single_label_classification", "num_labels": 2}
            for c, value in zip(GRID, [0.60, 0.65, 0.70, 0.75, 0.50, 0.55, 0.52, 0.54])
        ]
    )
    # The teacher's best is its highest rate (1e-4): try 2e-4. LoRA's best (1e-3, r8) is inside {5e-4, 1e-3, 2e-3}.
    assert edge_extensions(rows) == [Config("teacher", 2e-4)]
    assert "Chosen teacher: `teacher-lr0.0001` — **still at the edge" in summary_markdown({"d": rows})
    beyond = rows.iloc[[3]].assign(config="teacher-lr0.0002", learning_rate=2e-4, eval_pr_auc=0.74)
    rows = pd.concat([rows, beyond], ignore_index=True)
    assert edge_extensions(rows) == []  # 1e-4 now lies between 5e-5 and 2e-4
    assert "Chosen teacher: `teacher-lr0.0001`\n" in summary_markdown({"d": rows})
    # LoRA's winner at the low edge of its own rank and targets goes down by 2.
    rows.loc[rows.config == "lora-lr0.0005-r8-query+value", "eval_pr_auc"] = 0.9
    assert edge_extensions(rows) == [Config("lora", 2.5e-4, 8, "query,value")]


def _pairs(rows: list[tuple]) -> pd.DataFrame:
    columns = ["a", "b", "metric", "n_seeds", "diff", "ci_low", "ci_high", "verdict"]
    return pd.DataFrame(rows, columns=columns).assign(correction="holm")


def test_calls_changed_compares_the_editions_row_by_row_and_keeps_rows_only_one_has(tmp_path, capsys):
    first = _pairs([
        ("odd", "even", "f1", 5, 0.009, 0.003, 0.014, "A better"),
        ("odd", "even", "roc_auc", 5, 0.003, -0.001, 0.006, "not distinguishable"),
        ("lora", "teacher", "f1", 5, -0.2, -0.3, -0.1, "B better"),
    ]).drop(columns="correction")  # the first edition had no correction column
    second = _pairs([
        ("odd", "even", "f1", 5, -0.003, -0.017, 0.011, "not distinguishable"),
        ("odd", "even", "roc_auc", 5, 0.002, -0.001, 0.005, "not distinguishable"),
        ("auto", "odd", "f1", 5, 0.01, -0.01, 0.03, "not distinguishable"),
    ])  # fmt: skip
    for name, frame in (("first", first), ("second", second)):
        (tmp_path / name / "wiki_toxic").mkdir(parents=True)
        frame.to_csv(tmp_path / name / "wiki_toxic" / "paired.csv", index=False)
    table = calls_changed_main([
        "--before", str(tmp_path / "first"), "--after", str(tmp_path / "second"), "--datasets", "wiki_toxic",
        "--output", str(tmp_path / "calls.csv"),
    ])  # fmt: skip
    by_pair = table.set_index(["a", "b", "metric"])
    assert by_pair.loc[("odd", "even", "f1"), "changed"] and not by_pair.loc[("odd", "even", "roc_auc"), "changed"]
    assert by_pair.loc[("lora", "teacher", "f1"), "in"] == "first only"
    assert by_pair.loc[("auto", "odd", "f1"), "in"] == "second only" and not by_pair.loc[("auto", "odd", "f1"), "changed"]
    out = capsys.readouterr().out
    assert out.startswith("1 of 2 calls both editions made changed (1 rows are new in the second edition, 1 are only")
    assert "| wiki_toxic | odd − even | f1 | +0.009 [+0.003, +0.014], A better (n=5) |" in out
    assert pd.read_csv(tmp_path / "calls.csv").changed.sum() == 1
    assert compare_calls(first.assign(dataset="x"), first.assign(dataset="x")).changed.sum() == 0
