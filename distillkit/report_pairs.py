"""Paired comparisons of methods on the same test texts: each model's saved predictions, keyed by its stage, and the
paired-difference table of the pairs the study asks about (distillkit.stats)."""

from __future__ import annotations

import os
import re

import pandas as pd

from .methods import CONTROLS
from .report_summary import method_rank, same_cost_pairs
from .stats import DEFAULT_RESAMPLES, is_multi_label, metric_names, paired_table, study_pairs

_SEEDED_MODEL = re.compile(r"^seed\d+-(.+)$")


def stage_key(model: str, method: str) -> str:
    """The method a row stands for in paired comparisons: the stage folder of a run_compare experiment
    (`seed42-lora_even` → lora_even, the registry's name), else the recorded method."""
    match = _SEEDED_MODEL.match(str(model))
    return match.group(1) if match else str(method)


def read_predictions(output_dir: str, models: list[str]) -> dict[str, pd.DataFrame]:
    """predictions/<model>.csv (or .csv.gz) of each model that has one."""
    found = {}
    for model in models:
        for ext in (".csv", ".csv.gz"):
            path = os.path.join(output_dir, "predictions", f"{model}{ext}")
            if os.path.isfile(path):
                found[model] = pd.read_csv(path)
                break
    return found


def compare_pairs(
    results: pd.DataFrame,
    predictions: dict[str, pd.DataFrame],
    n_resamples: int = DEFAULT_RESAMPLES,
    summary: pd.DataFrame | None = None,
    correction: str = "holm",
    alpha: float = 0.05,
) -> pd.DataFrame | None:
    """The paired-difference table (distillkit.stats) of the pairs the study asks about, keyed by stage_key: they
    are the declared family, corrected together over every metric (`correction`). With `summary`, also each
    Pareto-front method against the best other method of its cost (`same_cost_pairs`): picked from the means, so
    outside the family, reported and never called.

    None when fewer than two methods have predictions on the same seeds. Multi-label predictions are compared by
    macro-F1 and macro ROC-AUC over the labels (`stats.metric_names`).
    """
    by_method: dict[str, dict[int, pd.DataFrame]] = {}
    for row in results.itertuples():
        if row.model in predictions and not pd.isna(row.seed):
            by_method.setdefault(stage_key(row.model, row.method), {})[int(row.seed)] = predictions[row.model]
    ordered = sorted(by_method, key=method_rank)
    some = next(iter(predictions.values()))
    k = sum(c.startswith("prob_") for c in some.columns)
    metrics = metric_names(k, is_multi_label(some))
    declared = study_pairs(ordered, CONTROLS)
    wanted = list(declared)
    if summary is not None:
        asked = set(wanted) | {(b, a) for a, b in wanted}
        wanted += [p for p in same_cost_pairs(summary, metrics[0]) if p not in asked]
    pairs = [(a, b) for a, b in wanted if a in by_method and b in by_method and set(by_method[a]) & set(by_method[b])]
    if not pairs:
        return None
    return paired_table(
        by_method, pairs, metrics, n_resamples, family=declared, correction=correction, alpha=alpha
    )
