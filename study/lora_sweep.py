#!/usr/bin/env python
"""LoRA's default learning rate and warmup, chosen by a sweep on the study's data sets (issue 22).

    nice -n 10 python study/lora_sweep.py --dataset hate_speech18 --work_dir ../lora_sweep
    python study/lora_sweep.py --summary_only true     # rebuild docs/results/lora_sweep/README.md's tables

Every (learning rate, warmup) of the grid trains `run_lora.py` on the study's teacher base and budget
(study/run_study.py's BUDGETS and SCRIPT_FLAGS, one seed) and is scored on the validation split only: the test split
plays no part in choosing a default. The selection metric is threshold-free (validation PR-AUC of the positive
class for binary data, macro ROC-AUC otherwise) because the decision rule is itself tuned on validation, which
would flatter every configuration's F1 alike. When the best learning rate is an edge of the grid, the grid is
extended past it (x2 or /2) until the best is inside it: a default at a grid's edge says nothing of what lies
beyond. Each finished configuration is skipped on a re-run (run_lora.py skips a finished run of the same request),
and its row lands in docs/results/lora_sweep/<data set>.csv as soon as it is done.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillkit.cli import UsageError, configure_logging, exit_on_usage_error, parse_args  # noqa: E402
from study.run_study import BUDGETS, REPO, SCRIPT_FLAGS, portable  # noqa: E402

logger = logging.getLogger("lora_sweep")
RESULTS_DIR = os.path.join("docs", "results", "lora_sweep")
# The validation metrics kept per configuration (run_lora.py's eval_results.json).
KEPT = ("eval_pr_auc", "eval_roc_auc", "eval_macro_f1", "eval_f1", "eval_loss")
MAX_EXTENSIONS = 3  # at most three steps past an edge: a grid that keeps improving is reported as such


@dataclass
class SweepArguments:
    dataset: str | None = field(default=None, metadata={"help": "A data set of study/run_study.py's BUDGETS."})
    learning_rates: list[float] = field(
        default_factory=lambda: [5e-4, 1e-3, 2e-3, 4e-3, 8e-3], metadata={"help": "LoRA peak learning rates."}
    )
    warmups: list[float] = field(
        default_factory=lambda: [0.0, 0.1], metadata={"help": "Warmup as a share of the steps (--warmup_steps < 1)."}
    )
    seed: int = field(default=42, metadata={"help": "One seed: the sweep picks a default, the study measures noise."})
    work_dir: str = field(default="../lora_sweep", metadata={"help": "Where the adapters go (never committed)."})
    results_dir: str = field(default=RESULTS_DIR, metadata={"help": "Where the per-configuration CSV rows go."})
    data_root: str = field(default="../shared/data", metadata={"help": "Folder holding one folder per data set."})
    base: str = field(default="../shared/models/all-MiniLM-L6-v2", metadata={"help": "The model LoRA adapts."})
    budget: str | None = field(default=None, metadata={"help": "Training flags instead of BUDGETS[dataset], quoted."})
    summary_only: bool = field(default=False, metadata={"help": "Only rebuild the summary from the CSVs."})

    def __post_init__(self) -> None:
        if not self.summary_only and self.dataset not in BUDGETS:
            raise UsageError(f"--dataset {self.dataset}: choose one of {', '.join(BUDGETS)}")
        if any(lr <= 0 for lr in self.learning_rates) or any(not 0 <= w < 1 for w in self.warmups):
            raise UsageError("--learning_rates must be positive and --warmups in [0, 1)")
        for name in ("work_dir", "results_dir", "data_root", "base"):
            setattr(self, name, os.path.normpath(os.path.join(REPO, getattr(self, name))))


def selection_metric(problem_type: str, num_labels: int) -> str:
    """PR-AUC of the positive class for binary data; macro ROC-AUC for more classes or labels."""
    return "eval_pr_auc" if problem_type == "single_label_classification" and num_labels == 2 else "eval_roc_auc"


def best_row(rows: pd.DataFrame, metric: str) -> pd.Series:
    """The configuration with the highest validation metric (ties: the lower learning rate, then less warmup)."""
    ordered = rows.sort_values(["learning_rate", "warmup"])
    return ordered.loc[ordered[metric].idxmax()]


def edge_extension(learning_rates: list[float], best_lr: float) -> float | None:
    """The learning rate one step past the grid's edge when the best is that edge, else None."""
    grid = sorted(learning_rates)
    if len(grid) < 2:
        return None
    if best_lr == grid[-1]:
        return grid[-1] * 2
    if best_lr == grid[0]:
        return grid[0] / 2
    return None


def train_and_read(cmd: list[str], out: str, what: str) -> tuple[dict, dict, dict]:
    """Run a training command (a finished run of the same request is skipped by the script) and read its
    validation metrics, run record and training figures from `out`; a failure is one error line."""
    logger.info(shlex.join(cmd))
    code = subprocess.call(cmd, cwd=REPO)
    if code != 0:
        raise SystemExit(f"error: {what} (exit {code}); run again")
    figures = []
    for name in ("eval_results.json", "run_record.json", "train_results.json"):
        with open(os.path.join(out, name)) as f:
            figures.append(json.load(f))
    return tuple(figures)


def train_one(args: SweepArguments, lr: float, warmup: float) -> dict:
    """Train one configuration (skipped when finished) and return its validation row."""
    out = os.path.join(args.work_dir, args.dataset, f"lr{lr:g}-warmup{warmup:g}")
    cmd = (
        [sys.executable, os.path.join(REPO, "run_lora.py"), "--model_name_or_path", args.base]
        + ["--dataset_name", os.path.join(args.data_root, args.dataset), "--output_dir", out]
        + ["--seed", str(args.seed), "--learning_rate", f"{lr:g}", "--warmup_steps", f"{warmup:g}"]
        + shlex.split(SCRIPT_FLAGS)
        + shlex.split(args.budget if args.budget is not None else BUDGETS[args.dataset])
        + ["--do_eval", "true"]
    )
    metrics, record, train = train_and_read(cmd, out, f"run_lora.py failed for lr {lr:g}, warmup {warmup:g}")
    return {
        "dataset": args.dataset,
        "learning_rate": lr,
        "warmup": warmup,
        "seed": args.seed,
        "problem_type": record["problem_type"],
        "num_labels": len(record["label_names"]),
        **{k: metrics.get(k) for k in KEPT},
        "train_loss": train.get("train_loss"),
        "train_runtime_s": train.get("train_runtime"),
        "base": portable(args.base),
    }


def replace_row(path: str, row: dict, keys: tuple[str, ...], sort_by: list[str] | None = None) -> pd.DataFrame:
    """Add one row to a CSV (replacing the row with the same `keys`; sorted by `sort_by` when given), written to a
    temporary file and renamed."""
    rows = pd.read_csv(path) if os.path.exists(path) else pd.DataFrame()
    if len(rows):
        rows = rows[~(rows[list(keys)] == pd.Series({k: row[k] for k in keys})).all(axis=1)]
    rows = pd.concat([rows, pd.DataFrame([row])], ignore_index=True)
    if sort_by:
        rows = rows.sort_values(sort_by)
    rows.to_csv(path + ".tmp", index=False)
    os.replace(path + ".tmp", path)
    return rows


def append_row(path: str, row: dict) -> pd.DataFrame:
    """Add (or replace) one configuration's row, sorted by warmup then learning rate."""
    return replace_row(path, row, ("learning_rate", "warmup"), sort_by=["warmup", "learning_rate"])


def sweep(args: SweepArguments) -> pd.DataFrame:
    os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir, f"{args.dataset}.csv")
    learning_rates = list(args.learning_rates)
    rows = pd.DataFrame()
    for _ in range(MAX_EXTENSIONS + 1):
        for warmup in args.warmups:
            for lr in learning_rates:
                done = pd.read_csv(path) if os.path.exists(path) else pd.DataFrame()
                if len(done) and ((done["learning_rate"] == lr) & (done["warmup"] == warmup) & (done["seed"] == args.seed)).any():
                    continue
                rows = append_row(path, train_one(args, lr, warmup))
        rows = pd.read_csv(path)
        metric = selection_metric(rows["problem_type"].iloc[0], int(rows["num_labels"].iloc[0]))
        extra = edge_extension(learning_rates, best_row(rows, metric)["learning_rate"])
        if extra is None:
            break
        logger.info("the best learning rate is the grid's edge: adding %g", extra)
        learning_rates.append(extra)
    return rows


def summary_markdown(tables: dict[str, pd.DataFrame]) -> str:
    """One table per data set (validation metrics per configuration, the chosen one in bold) and the choice."""
    lines = []
    for dataset, rows in sorted(tables.items()):
        metric = selection_metric(rows["problem_type"].iloc[0], int(rows["num_labels"].iloc[0]))
        best = best_row(rows, metric)
        lines += [
            f"## {dataset} (seed {int(best['seed'])}; selected by validation {metric.removeprefix('eval_')})",
            "",
            "| learning rate | warmup | val PR-AUC | val ROC-AUC | val macro-F1 (tuned rule) | train loss |",
            "|---|---|---|---|---|---|",
        ]
        for _, r in rows.sort_values(["warmup", "learning_rate"]).iterrows():
            mark = "**" if (r["learning_rate"], r["warmup"]) == (best["learning_rate"], best["warmup"]) else ""
            lines.append(
                f"| {mark}{r['learning_rate']:g}{mark} | {r['warmup']:g} | {r['eval_pr_auc']:.3f} | "
                f"{r['eval_roc_auc']:.3f} | {r['eval_macro_f1']:.3f} | {r['train_loss']:.3f} |"
            )
        grid = sorted(rows["learning_rate"].unique())
        inside = grid[0] < best["learning_rate"] < grid[-1]
        lines += [
            "",
            f"Best: learning rate {best['learning_rate']:g}, warmup {best['warmup']:g}"
            + ("" if inside else " — **at the grid's edge**: the grid did not bracket the best value"),
            "",
        ]
    return "\n".join(lines)


def joint_choice(tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.Series | None]:
    """The one default for every data set: among the configurations every data set ran, the one whose worst
    data set loses least against that data set's own best (its selection metric / the best; ties: lower
    learning rate, then less warmup). Returns each configuration's ratios and the choice."""
    ratios = []
    for dataset, rows in tables.items():
        metric = selection_metric(rows["problem_type"].iloc[0], int(rows["num_labels"].iloc[0]))
        best = rows[metric].max()
        ratios.append(rows.assign(dataset=dataset, ratio=rows[metric] / best)[["dataset", "learning_rate", "warmup", "ratio"]])
    if not ratios:
        return pd.DataFrame(), None
    wide = pd.concat(ratios).pivot_table(index=["learning_rate", "warmup"], columns="dataset", values="ratio")
    wide = wide.dropna()  # only configurations every data set ran
    if wide.empty:
        return wide, None
    wide["worst"] = wide.min(axis=1)
    wide = wide.reset_index().sort_values(["learning_rate", "warmup"])
    return wide, wide.loc[wide["worst"].idxmax()]


def joint_markdown(tables: dict[str, pd.DataFrame]) -> str:
    wide, choice = joint_choice(tables)
    if choice is None or len(tables) < 2:
        return ""
    names = sorted(tables)
    lines = [
        "## One default for every data set",
        "",
        "Each configuration's selection metric as a share of the best on that data set; the default is the "
        "configuration whose worst share is highest.",
        "",
        "| learning rate | warmup | " + " | ".join(names) + " | worst |",
        "|---|---|" + "---|" * len(names) + "---|",
    ]
    for _, r in wide.iterrows():
        mark = "**" if (r["learning_rate"], r["warmup"]) == (choice["learning_rate"], choice["warmup"]) else ""
        cells = " | ".join(f"{r[n]:.3f}" for n in names)
        lines.append(f"| {mark}{r['learning_rate']:g}{mark} | {r['warmup']:g} | {cells} | {r['worst']:.3f} |")
    lines += ["", f"Default: learning rate {choice['learning_rate']:g}, warmup {choice['warmup']:g}.", ""]
    return "\n".join(lines)


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    (args,) = parse_args((SweepArguments,), argv)
    configure_logging()
    if not args.summary_only:
        sweep(args)
    tables = {
        name.removesuffix(".csv"): pd.read_csv(os.path.join(args.results_dir, name))
        for name in sorted(os.listdir(args.results_dir))
        if name.endswith(".csv")
    }
    if tables:
        text = summary_markdown(tables) + "\n" + joint_markdown(tables)
        with open(os.path.join(args.results_dir, "tables.md"), "w") as f:
            f.write(text)
        print(text)


if __name__ == "__main__":
    main()
