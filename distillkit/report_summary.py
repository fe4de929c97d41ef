"""The per-method summary over seeds and what ranks methods: the method order, the mean and spread of every number,
the cost a method is ranked by and the quality/latency Pareto front."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .methods import dependencies
from .records import MERGED_SUFFIX

METHOD_ORDER = (
    "teacher",
    "odd",
    "even",
    "bottom",
    "top",
    "spread",
    "auto",
    "custom",
    "odd_ce",
    "even_ce",
    "bottom_ce",
    "top_ce",
    "spread_ce",
    "lora",
    "lora_steps",
    "lora_even",
    "lora_odd",
)
SUMMARY_COLUMNS = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "macro_f1",
    "weighted_f1",
    "micro_f1",
    "roc_auc",
    "pr_auc",
    "balanced_accuracy",
    "hamming_accuracy",
    "eval_loss",
    "train_loss",
    "train_runtime_s",
    "latency_ms_b1",
    "throughput_b32",
    "latency_ms_b1_cpu",
    "throughput_b32_cpu",
    "params",
    "trainable_params",
    "trainable_pct",
    "size_mb",
    "serving_size_mb",
)
# Per method: the median CPU-time latency of every model in the run with the method's parameter count. Models of one
# architecture cost the same; each was timed at a different moment of a shared machine, so their own means differ by
# noise alone (odd vs even), and pooling them is the fairer cost to rank methods by.
ARCH_LATENCY = "latency_ms_b1_cpu_arch"
# One model per method timed side by side in one process (study/run_study.py --time_latency): when every method has
# it, the fairest cost of all.
SIDE_BY_SIDE_LATENCY = "latency_ms_b1_cpu_side_by_side"


def method_rank(method: str) -> tuple[int, str]:
    base = method.removesuffix(MERGED_SUFFIX)
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), method)


def sort_results(results: pd.DataFrame) -> pd.DataFrame:
    keys = [
        (method_rank(m), "" if pd.isna(s) else int(s), n)
        for m, s, n in zip(results.method, results.seed, results.model)
    ]
    order = sorted(range(len(results)), key=lambda i: (keys[i][0], str(keys[i][1]), keys[i][2]))
    return results.iloc[order].reset_index(drop=True)


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std (ddof 1; empty with one seed) of every number, per method across seeds."""
    rows = []
    for method, group in results.groupby("method", sort=False):
        row: dict[str, Any] = {
            "method": method,
            "n_models": len(group),
            "seeds": " ".join(str(int(s)) for s in sorted(group.seed.dropna().unique())),
        }
        for column in SUMMARY_COLUMNS:
            if column not in group:  # a metric of the other task type (hamming_accuracy, balanced_accuracy)
                continue
            values = pd.to_numeric(group[column], errors="coerce")
            row[f"{column}_mean"] = values.mean()
            row[f"{column}_std"] = values.std(ddof=1) if values.notna().sum() > 1 else math.nan
        if {"params", "latency_ms_b1_cpu"} <= set(results.columns):
            same = results[results.params == group.params.iloc[0]]
            row[ARCH_LATENCY] = pd.to_numeric(same.latency_ms_b1_cpu, errors="coerce").median()
        rows.append(row)
    summary = pd.DataFrame(rows)
    order = sorted(range(len(summary)), key=lambda i: method_rank(summary.method[i]))
    return summary.iloc[order].reset_index(drop=True)


def cost_column(summary: pd.DataFrame) -> str:
    """The cost to rank methods by: the side-by-side timing when it covers every method, else the architecture's
    pooled CPU latency, else (older summaries) the method's own."""
    if SIDE_BY_SIDE_LATENCY in summary and summary[SIDE_BY_SIDE_LATENCY].notna().all():
        return SIDE_BY_SIDE_LATENCY
    return ARCH_LATENCY if ARCH_LATENCY in summary else "latency_ms_b1_cpu_mean"


COST_WORDS = {
    SIDE_BY_SIDE_LATENCY: (
        "single-text CPU-time latency of one model per method, all timed side by side (median over the methods of "
        "one architecture)"
    ),
    ARCH_LATENCY: "each architecture's median CPU-time latency over all its models",
    "latency_ms_b1_cpu_mean": "CPU-time latency per text",
}


def too_few_seeds(summary: pd.DataFrame) -> list[str]:
    """Methods on one seed while others have several: a single seed's mean is no finding, so the front leaves them
    out. When every method has one seed (a pilot), none is left out."""
    if "n_models" not in summary or summary.n_models.max() < 2:
        return []
    return summary.method[summary.n_models < 2].tolist()


def pareto_front(summary: pd.DataFrame, metric: str, cost: str | None = None) -> list[str]:
    """Methods no other method beats on both quality (higher `metric` mean) and cost (lower `cost`), cheapest first;
    methods with `too_few_seeds` neither join nor dominate."""
    cost = cost or cost_column(summary)
    s = summary[~summary.method.isin(too_few_seeds(summary))].dropna(subset=[f"{metric}_mean", cost])
    front = []
    for _, row in s.iterrows():
        dominated = (
            (s[f"{metric}_mean"] >= row[f"{metric}_mean"])
            & (s[cost] <= row[cost])
            & ((s[f"{metric}_mean"] > row[f"{metric}_mean"]) | (s[cost] < row[cost]))
        ).any()
        if not dominated:
            front.append((row[cost], row.method))
    return [m for _, m in sorted(front)]


def same_cost_pairs(summary: pd.DataFrame, metric: str, cost: str | None = None) -> list[tuple[str, str]]:
    """(front method, the best other method of the same cost): the front ranks them by mean only, so the paired test
    must say whether the leader is ahead or the two are not distinguishable."""
    cost = cost or cost_column(summary)
    if f"{metric}_mean" not in summary or cost not in summary:
        return []
    eligible = summary[~summary.method.isin(too_few_seeds(summary))].dropna(subset=[f"{metric}_mean"])
    pairs = []
    for leader in pareto_front(summary, metric, cost):
        leader_cost = eligible.loc[eligible.method == leader, cost].iloc[0]
        rivals = eligible[(eligible[cost] == leader_cost) & (eligible.method != leader)]
        if len(rivals):
            pairs.append((leader, rivals.sort_values(f"{metric}_mean", ascending=False).method.iloc[0]))
    return pairs


def training_compute(results: pd.DataFrame, histories: dict[str, list[dict[str, Any]]]) -> pd.DataFrame:
    """Per method, the training each model cost, alone and with what it starts from (the teacher of a student;
    teacher + even for lora_even), mean over seeds: optimizer steps (the loss history's last step) and train seconds.

    A base is counted from the same seed's stage of that method; when it is missing the total is NaN, not a smaller
    number that looks cheaper. The seconds come from a shared CPU at different moments: read them as a rough scale.
    """
    alone = {}
    for row in results.itertuples():
        history = histories.get(row.model) or []
        steps = max((int(e["step"]) for e in history if "step" in e), default=math.nan)
        alone[(row.method, int(row.seed))] = (steps, float(getattr(row, "train_runtime_s", math.nan)))
    rows = []
    for (method, seed), (steps, seconds) in alone.items():
        bases = [alone.get((base, seed), (math.nan, math.nan)) for base in dependencies(method)]
        rows.append(
            {
                "method": method,
                "seed": seed,
                "steps": steps,
                "train_s": seconds,
                "steps_with_bases": steps + sum(b[0] for b in bases),
                "train_s_with_bases": seconds + sum(b[1] for b in bases),
                "bases": " + ".join(dependencies(method)) or "pretrained",
            }
        )
    if not rows:
        return pd.DataFrame()
    per_seed = pd.DataFrame(rows)
    table = per_seed.groupby(["method", "bases"], as_index=False).agg(
        seeds=("seed", "nunique"),
        steps=("steps", "mean"),
        steps_with_bases=("steps_with_bases", "mean"),
        train_s=("train_s", "mean"),
        train_s_with_bases=("train_s_with_bases", "mean"),
    )
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return table.sort_values("method", key=lambda s: s.map(lambda m: order.get(m, len(order)))).reset_index(drop=True)
