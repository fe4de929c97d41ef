#!/usr/bin/env python
"""The study's training budget per data set, chosen on the full validation split (docs/results/ANALYSIS_PLAN.md §7).

    nice -n 10 python study/budget_pilot.py --dataset wiki_toxic --work_dir ../study2_pilot

The teacher (seed 42, learning rate 5e-5, the imbalance defaults on) is fine-tuned for up to --max_epochs epochs on
the study's rows and sequence length (study/run_study.py's PILOT_ROWS, MAX_SEQ_LENGTH, SCRIPT_FLAGS), and the whole
validation split is scored after each epoch (no --max_eval_samples). The rule, fixed before the run: the smallest
E after which one more epoch adds less than 0.01 of the primary metric and less than 0.005 ROC-AUC; E = the last
epoch when none does. The per-epoch table lands in docs/results/pilot2/<data set>.csv; study/run_study.py's EPOCHS
takes the chosen E (tests/test_study_tools.py checks that they agree).
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
from study.run_study import PILOT_ROWS, REPO, SCRIPT_FLAGS, TASK_BUDGET_FLAGS, TEACHER_LEARNING_RATE  # noqa: E402

logger = logging.getLogger("budget_pilot")
RESULTS_DIR = os.path.join("docs", "results", "pilot2")
PRIMARY_GAIN = 0.01  # one more epoch must add at least this much of the primary metric ...
AUC_GAIN = 0.005  # ... or this much ROC-AUC to be worth it


@dataclass
class PilotArguments:
    dataset: str | None = field(default=None, metadata={"help": "A data set of study/run_study.py's PILOT_ROWS."})
    max_epochs: int = field(default=5, metadata={"help": "Epochs trained; the rule picks one of 1..max_epochs."})
    seed: int = field(default=42, metadata={"help": "The pilot's one seed."})
    work_dir: str = field(default="../study2_pilot", metadata={"help": "Where the teacher goes (never committed)."})
    results_dir: str = field(default=RESULTS_DIR, metadata={"help": "Where the per-epoch table goes."})
    data_root: str = field(default="../shared/data", metadata={"help": "Folder holding one folder per data set."})
    teacher: str = field(default="../shared/models/all-MiniLM-L6-v2", metadata={"help": "Pretrained teacher."})

    def __post_init__(self) -> None:
        if self.dataset not in PILOT_ROWS:
            raise UsageError(f"--dataset {self.dataset}: choose one of {', '.join(PILOT_ROWS)}")
        if self.max_epochs < 2:
            raise UsageError(f"--max_epochs {self.max_epochs}: the rule compares epochs; give 2 or more")
        for name in ("work_dir", "results_dir", "data_root", "teacher"):
            setattr(self, name, os.path.normpath(os.path.join(REPO, getattr(self, name))))


def primary_metric(problem_type: str) -> str:
    """The study's primary metric (ANALYSIS_PLAN §2) as the trainer logs it: macro-F1 for multi-label, else F1."""
    return "eval_macro_f1" if problem_type == "multi_label_classification" else "eval_f1"


def choose_epochs(table: pd.DataFrame, primary: str) -> int:
    """The smallest epoch E after which epoch E+1 adds less than PRIMARY_GAIN of `primary` and less than AUC_GAIN
    ROC-AUC; the last epoch when no E does. `table` has one row per epoch (column `epoch`, 1, 2, ...)."""
    rows = table.sort_values("epoch").reset_index(drop=True)
    for i in range(len(rows) - 1):
        gain = rows.loc[i + 1, primary] - rows.loc[i, primary]
        auc_gain = rows.loc[i + 1, "eval_roc_auc"] - rows.loc[i, "eval_roc_auc"]
        if gain < PRIMARY_GAIN and auc_gain < AUC_GAIN:
            return int(rows.loc[i, "epoch"])
    return int(rows["epoch"].iloc[-1])


def epoch_table(log_history: list[dict]) -> pd.DataFrame:
    """One row per evaluated epoch from a trainer_state.json log_history."""
    keep = ("eval_f1", "eval_macro_f1", "eval_roc_auc", "eval_pr_auc", "eval_loss")
    rows = [
        {"epoch": int(round(e["epoch"])), **{k: e.get(k) for k in keep}}
        for e in log_history
        if "eval_roc_auc" in e
    ]
    # The per-epoch evaluation comes first; a later entry of the same epoch (a final evaluation at the tuned rule)
    # is not the untuned per-epoch figure the rule compares.
    return pd.DataFrame(rows).drop_duplicates("epoch", keep="first")


def run_pilot(args: PilotArguments) -> str:
    out = os.path.join(args.work_dir, args.dataset, f"teacher-seed{args.seed}-{args.max_epochs}epochs")
    cmd = (
        [sys.executable, os.path.join(REPO, "run_finetune.py"), "--model_name_or_path", args.teacher]
        + ["--dataset_name", os.path.join(args.data_root, args.dataset), "--output_dir", out]
        + ["--seed", str(args.seed), "--learning_rate", TEACHER_LEARNING_RATE, *shlex.split(SCRIPT_FLAGS)]
        + ["--max_train_samples", str(PILOT_ROWS[args.dataset]), "--num_train_epochs", str(args.max_epochs)]
        + shlex.split(TASK_BUDGET_FLAGS.get(args.dataset, ""))
        + ["--eval_strategy", "epoch", "--do_eval", "true"]
    )
    logger.info(shlex.join(cmd))
    code = subprocess.call(cmd, cwd=REPO)
    if code != 0:
        raise SystemExit(f"error: run_finetune.py failed for the {args.dataset} pilot (exit {code}); run again")
    return out


@exit_on_usage_error
def main(argv: list[str] | None = None) -> int:
    (args,) = parse_args((PilotArguments,), argv)
    configure_logging()
    out = run_pilot(args)
    with open(os.path.join(out, "trainer_state.json")) as f:
        table = epoch_table(json.load(f)["log_history"])
    with open(os.path.join(out, "run_record.json")) as f:
        problem_type = json.load(f)["problem_type"]
    primary = primary_metric(problem_type)
    chosen = choose_epochs(table, primary)
    table.insert(0, "dataset", args.dataset)
    table.insert(1, "train_rows", PILOT_ROWS[args.dataset])
    table["primary"] = primary
    table["chosen"] = table["epoch"] == chosen
    os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir, f"{args.dataset}.csv")
    table.to_csv(path + ".tmp", index=False)
    os.replace(path + ".tmp", path)
    print(table.to_string(index=False))
    print(f"{args.dataset}: {chosen} epochs (rule: the next epoch adds < {PRIMARY_GAIN} {primary} and < {AUC_GAIN} "
          "ROC-AUC)")
    return chosen


if __name__ == "__main__":
    main()
