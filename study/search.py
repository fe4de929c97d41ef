#!/usr/bin/env python
"""The second edition's hyperparameter search per data set (docs/results/ANALYSIS_PLAN.md §6): the teacher's learning
rate and LoRA's (learning rate, rank, targets), the same search budget for both (four configurations each).

    nice -n 10 python study/search.py --dataset hate_speech18 --work_dir ../study2_search
    python study/search.py --summary_only true      # rebuild docs/results/search/tables.md

Every configuration trains once (seed 42) at the data set's study budget (study/run_study.py's BUDGETS,
SCRIPT_FLAGS) and is scored on the full validation split only. The winner is the configuration with the best
threshold-free validation metric (PR-AUC of the positive class for binary data, macro ROC-AUC otherwise:
lora_sweep.selection_metric), ties to the earlier configuration of the grid. run_study.py reads the winners from the
CSV (`chosen_hyperparameters`) and refuses a data set whose search is not complete (`is_complete`). A finished
configuration's row is kept; its run is skipped on a re-run.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from dataclasses import dataclass, field

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillkit.cli import UsageError, configure_logging, exit_on_usage_error, parse_args  # noqa: E402
from study.lora_sweep import KEPT, replace_row, selection_metric, train_and_read  # noqa: E402
from study.run_study import BUDGETS, REPO, SCRIPT_FLAGS, portable  # noqa: E402

logger = logging.getLogger("search")
RESULTS_DIR = os.path.join("docs", "results", "search")


@dataclass(frozen=True)
class Config:
    """One configuration of the search: which script (`teacher` = run_finetune.py, `lora` = run_lora.py) and its
    learning rate; LoRA's rank and target modules."""

    family: str
    learning_rate: float
    lora_r: int | None = None
    lora_target_modules: str | None = None

    @property
    def name(self) -> str:
        lora = f"-r{self.lora_r}-{self.lora_target_modules.replace(',', '+')}" if self.family == "lora" else ""
        return f"{self.family}-lr{self.learning_rate:g}{lora}"

    def flags(self) -> list[str]:
        lora = ["--lora_r", str(self.lora_r), "--lora_target_modules", self.lora_target_modules]
        return ["--learning_rate", f"{self.learning_rate:g}", *(lora if self.family == "lora" else [])]


# Four each: the teacher around the study's 5e-5; LoRA around its default 1e-3 (docs/lora_defaults.md), and a wider
# adapter (rank 16 on every linear layer) at the default learning rate.
GRID = (
    Config("teacher", 2e-5),
    Config("teacher", 3e-5),
    Config("teacher", 5e-5),
    Config("teacher", 1e-4),
    Config("lora", 5e-4, 8, "query,value"),
    Config("lora", 1e-3, 8, "query,value"),
    Config("lora", 2e-3, 8, "query,value"),
    Config("lora", 1e-3, 16, "all-linear"),
)
SCRIPTS = {"teacher": "run_finetune.py", "lora": "run_lora.py"}
MAX_EXTENSIONS = 2  # at most two steps past an edge per family; a search still at an edge after them says so


@dataclass
class SearchArguments:
    dataset: str | None = field(default=None, metadata={"help": "A data set of study/run_study.py's BUDGETS."})
    seed: int = field(default=42, metadata={"help": "One seed: the search picks, the study measures the noise."})
    work_dir: str = field(default="../study2_search", metadata={"help": "Where the models go (never committed)."})
    results_dir: str = field(default=RESULTS_DIR, metadata={"help": "Where the per-configuration CSV rows go."})
    data_root: str = field(default="../shared/data", metadata={"help": "Folder holding one folder per data set."})
    base: str = field(default="../shared/models/all-MiniLM-L6-v2", metadata={"help": "The pretrained model."})
    summary_only: bool = field(default=False, metadata={"help": "Only rebuild tables.md from the CSVs."})

    def __post_init__(self) -> None:
        if not self.summary_only and self.dataset not in BUDGETS:
            raise UsageError(f"--dataset {self.dataset}: choose one of {', '.join(BUDGETS)}")
        for name in ("work_dir", "results_dir", "data_root", "base"):
            setattr(self, name, os.path.normpath(os.path.join(REPO, getattr(self, name))))


def train_one(args: SearchArguments, config: Config) -> dict:
    """Train one configuration (run_*.py skips a finished run of the same request) → its validation row."""
    out = os.path.join(args.work_dir, args.dataset, config.name)
    cmd = (
        [sys.executable, os.path.join(REPO, SCRIPTS[config.family]), "--model_name_or_path", args.base]
        + ["--dataset_name", os.path.join(args.data_root, args.dataset), "--output_dir", out]
        + ["--seed", str(args.seed), *config.flags(), *shlex.split(SCRIPT_FLAGS), *shlex.split(BUDGETS[args.dataset])]
        + ["--do_eval", "true"]
    )
    metrics, record, train = train_and_read(cmd, out, f"{SCRIPTS[config.family]} failed for {config.name}")
    return {
        "dataset": args.dataset,
        "config": config.name,
        "family": config.family,
        "learning_rate": config.learning_rate,
        "lora_r": config.lora_r,
        "lora_target_modules": config.lora_target_modules,
        "seed": args.seed,
        "problem_type": record["problem_type"],
        "num_labels": len(record["label_names"]),
        **{k: metrics.get(k) for k in KEPT},
        "train_loss": train.get("train_loss"),
        "train_runtime_s": train.get("train_runtime"),
        "budget": BUDGETS[args.dataset],
        "base": portable(args.base),
    }


def _grid_order(rows: pd.DataFrame) -> pd.Series:
    """The grid's configurations first, in GRID order; edge extensions after them, in the order they ran."""
    position = {c.name: i for i, c in enumerate(GRID)}
    return pd.Series([position.get(name, len(GRID) + i) for i, name in enumerate(rows["config"])], index=rows.index)


def winners(rows: pd.DataFrame) -> dict[str, pd.Series]:
    """The best configuration of each family by the threshold-free validation metric; ties to the grid's order."""
    metric = selection_metric(rows["problem_type"].iloc[0], int(rows["num_labels"].iloc[0]))
    rows = rows.assign(order=_grid_order(rows)).sort_values("order")
    return {family: group.loc[group[metric].idxmax()] for family, group in rows.groupby("family")}


def edge_extensions(rows: pd.DataFrame) -> list[Config]:
    """For each family whose winner's learning rate is the highest (or lowest) tried with its rank and targets, the
    configuration one factor 2 past that edge: a winner at the grid's edge says nothing of what lies beyond."""
    extra = []
    for family, best in winners(rows).items():
        same = rows[rows["family"] == family]
        if family == "lora":
            same_adapter = (same["lora_r"] == best["lora_r"]) & (same["lora_target_modules"] == best["lora_target_modules"])
            same = same[same_adapter]
        rates = sorted(same["learning_rate"])
        if len(rates) < 2 or rates[0] < best["learning_rate"] < rates[-1]:
            continue
        factor = 2.0 if best["learning_rate"] == rates[-1] else 0.5
        lora = (int(best["lora_r"]), best["lora_target_modules"]) if family == "lora" else (None, None)
        extra.append(Config(family, float(best["learning_rate"]) * factor, *lora))
    return extra


def is_complete(rows: pd.DataFrame) -> bool:
    """Every grid configuration ran, and no family still waits for an edge extension it is allowed."""
    if rows.empty or not {c.name for c in GRID} <= set(rows["config"]):
        return False
    grid = {c.name for c in GRID}
    extended = rows[~rows["config"].isin(grid)].groupby("family").size()
    return all(extended.get(c.family, 0) >= MAX_EXTENSIONS for c in edge_extensions(rows))


def chosen_hyperparameters(rows: pd.DataFrame) -> dict[str, float | int | str]:
    """What the study takes from a complete search: the teacher's learning rate and LoRA's rate, rank and targets."""
    best = winners(rows)
    return {
        "teacher_learning_rate": float(best["teacher"]["learning_rate"]),
        "lora_learning_rate": float(best["lora"]["learning_rate"]),
        "lora_r": int(best["lora"]["lora_r"]),
        "lora_target_modules": str(best["lora"]["lora_target_modules"]),
    }


def search(args: SearchArguments) -> pd.DataFrame:
    os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir, f"{args.dataset}.csv")
    configs = list(GRID)
    for _ in range(MAX_EXTENSIONS + 1):
        for config in configs:
            done = pd.read_csv(path) if os.path.exists(path) else pd.DataFrame()
            if len(done) and ((done["config"] == config.name) & (done["seed"] == args.seed)).any():
                continue
            replace_row(path, train_one(args, config), ("config", "seed"))
        extra = [c for c in edge_extensions(pd.read_csv(path)) if c not in configs]
        if not extra:
            break
        logger.info("a winner is at its grid's edge: adding %s", ", ".join(c.name for c in extra))
        configs += extra
    return pd.read_csv(path)


def summary_markdown(tables: dict[str, pd.DataFrame]) -> str:
    lines = []
    for dataset, rows in sorted(tables.items()):
        metric = selection_metric(rows["problem_type"].iloc[0], int(rows["num_labels"].iloc[0]))
        best = {r["config"] for r in winners(rows).values()}
        lines += [
            f"## {dataset} (seed {int(rows['seed'].iloc[0])}; `{rows['budget'].iloc[0]}`; "
            f"selected by validation {metric.removeprefix('eval_')})",
            "",
            "| configuration | val PR-AUC | val ROC-AUC | val F1 (tuned rule) | val macro-F1 (tuned rule) | train s |",
            "|---|---|---|---|---|---|",
        ]
        for _, r in rows.iterrows():
            mark = "**" if r["config"] in best else ""
            lines.append(
                f"| {mark}{r['config']}{mark} | {r['eval_pr_auc']:.3f} | {r['eval_roc_auc']:.3f} | "
                f"{r['eval_f1']:.3f} | {r['eval_macro_f1']:.3f} | {r['train_runtime_s']:.0f} |"
            )
        edge = {c.family for c in edge_extensions(rows)}
        lines += [""] + [
            f"Chosen {family}: `{r['config']}`"
            + (" — **still at the edge of what was tried**" if family in edge else "")
            for family, r in winners(rows).items()
        ] + [""]
    return "\n".join(lines)


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    (args,) = parse_args((SearchArguments,), argv)
    configure_logging()
    if not args.summary_only:
        search(args)
    if not os.path.isdir(args.results_dir):
        return
    tables = {
        name.removesuffix(".csv"): pd.read_csv(os.path.join(args.results_dir, name))
        for name in sorted(os.listdir(args.results_dir))
        if name.endswith(".csv")
    }
    if tables:
        text = summary_markdown(tables)
        with open(os.path.join(args.results_dir, "tables.md"), "w") as f:
            f.write(text)
        print(text)


if __name__ == "__main__":
    main()
