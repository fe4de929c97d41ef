#!/usr/bin/env python
"""The second edition's CPU-hour estimate, recomputed after the budget pilots (docs/results/ANALYSIS_PLAN.md §8).

    python study/compute_estimate.py            # prints the table at the pilots' rows (PILOT_ROWS)
    python study/compute_estimate.py --cut 0.6  # ... with the rows cut by 0.6

Training: each arm's first-edition train time relative to its data set's teacher (docs/results/earlier/
first_edition/<data set>/results.csv; new arms as in the plan: the CE-only controls = mean of odd_ce and even_ce,
auto = 1.1 x the mean of bottom, top and spread, lora_steps = 2 x lora) times the teacher's train time at the new
budget, measured by the pilot (TEACHER_EPOCH_S: its train time minus its five validation passes, over 5 epochs)
times the chosen epochs. Per-stage evaluation: 50 s fixed, a test and a validation pass at the first edition's
throughput, and the bias stage on the toxicity sets (60 s for a 3-layer model, 120 s for a 6-layer one). The search:
four teachers and four LoRA runs plus eight validation passes. Training and search scale with the rows; evaluation
does not.
"""

from __future__ import annotations

import argparse
import os
import sys

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from study.run_study import BIAS_DATASETS, EPOCHS, REPO  # noqa: E402

# Seconds per teacher epoch at the pilots' rows and 64 tokens (study/budget_pilot.py, 2026-12-06, beside two other
# jobs on the 2-core machine): train_runtime 572 / 526 / 923 s minus 125 / 73 / 204 s of validation passes, over 5.
TEACHER_EPOCH_S = {"wiki_toxic": 89.0, "hate_speech18": 91.0, "go_emotions": 144.0}
SPLIT_ROWS = {"wiki_toxic": (1218, 1218), "hate_speech18": (1088, 1111), "go_emotions": (5427, 5426)}  # test, val
ARMS = ("teacher", "odd", "even", "bottom", "top", "spread", "auto", "odd_ce", "even_ce", "bottom_ce", "top_ce",
        "spread_ce", "lora", "lora_steps", "lora_even")  # fmt: skip
SIX_LAYERS = ("teacher", "lora", "lora_steps")
TEN_SEEDS = {"wiki_toxic": ("teacher", "odd", "even", "odd_ce", "even_ce")}  # §5; 5 seeds otherwise


def relative_train_times(results: pd.DataFrame) -> pd.Series:
    mean = results.groupby("method").train_runtime_s.mean()
    ratio = mean / mean["teacher"]
    for control in ("bottom_ce", "top_ce", "spread_ce"):
        ratio[control] = (ratio["odd_ce"] + ratio["even_ce"]) / 2
    ratio["auto"] = 1.1 * ratio[["bottom", "top", "spread"]].mean()
    ratio["lora_steps"] = 2 * ratio["lora"]
    return ratio


def estimate(dataset: str, cut: float) -> dict[str, float]:
    results = pd.read_csv(os.path.join(REPO, "docs", "results", "earlier", "first_edition", dataset, "results.csv"))
    ratio = relative_train_times(results)
    throughput = results.groupby("method").throughput_b32_cpu.mean()
    teacher_s = TEACHER_EPOCH_S[dataset] * EPOCHS[dataset] * cut
    test_rows, val_rows = SPLIT_ROWS[dataset]
    train = evaluation = 0.0
    stages = 0
    for arm in ARMS:
        seeds = 10 if arm in TEN_SEEDS.get(dataset, ()) else 5
        stages += seeds
        train += seeds * ratio[arm] * teacher_s
        speed = throughput.get(arm, throughput["lora" if arm == "lora_steps" else "even"])
        bias = (120 if arm in SIX_LAYERS else 60) if dataset in BIAS_DATASETS else 0
        evaluation += seeds * (50 + (test_rows + val_rows) / speed + bias)
    search = 4 * teacher_s + 4 * ratio["lora"] * teacher_s + 8 * val_rows / throughput["teacher"]
    return {"dataset": dataset, "stages": stages, "training_h": train / 3600, "evaluation_h": evaluation / 3600,
            "search_h": search / 3600, "total_h": (train + evaluation + search) / 3600}  # fmt: skip


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cut", type=float, default=1.0, help="Rows as a share of the pilots' rows.")
    args = parser.parse_args(argv)
    table = pd.DataFrame([estimate(d, args.cut) for d in TEACHER_EPOCH_S])
    print(table.round(1).to_string(index=False))
    print(f"all: {table.total_h.sum():.1f} CPU-hours")
    return table


if __name__ == "__main__":
    main()
