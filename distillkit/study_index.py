"""The study's index across data sets: one verdict sentence per question the study asks, the methods × data sets
table and the key paired differences of every data set."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .methods import CONTROLS
from .report_summary import cost_column, method_rank, pareto_front
from .report_tables import _fmt, _interval, _mean_std, call_words
from .stats import METRIC_LABELS, NOT_DISTINGUISHABLE, STATIC_LAYER_CHOICES

# The questions the index answers per data set: odd vs even, each layer choice vs its CE-only control, where LoRA sits
# (also at the student's total optimizer steps), and `auto` against every static layer choice (issue 24).
KEY_PAIRS = (
    ("odd", "even"),
    *CONTROLS.items(),
    ("lora", "even"),
    ("lora_steps", "even"),
    ("lora_even", "even"),
    ("lora", "teacher"),
    *(("auto", static) for static in STATIC_LAYER_CHOICES),
)


def _latency_ratio(summaries: dict[str, pd.DataFrame], method: str) -> float:
    """The method's architecture latency over the teacher's, median over the data sets that have both."""
    ratios = []
    for summary in summaries.values():
        cost = cost_column(summary)
        s = summary.set_index("method")
        if cost in s and method in s.index and "teacher" in s.index:
            ratios.append(s.loc[method, cost] / s.loc["teacher", cost])
    return float(np.median(ratios)) if ratios else math.nan


def _primary_metric(num_labels: int) -> str:
    return "f1" if num_labels == 2 else "macro_f1"


def study_verdict(
    summaries: dict[str, pd.DataFrame], pairs: dict[str, pd.DataFrame | None], num_labels: dict[str, int]
) -> list[str]:
    """One sentence per question across the data sets (made from each paired table's primary metric), then each data
    set's Pareto front."""
    lines = []
    for a, b in KEY_PAIRS:
        calls: dict[str, list[str]] = {}
        for dataset, table in pairs.items():
            if table is None:
                continue
            rows = table[(table.a == a) & (table.b == b) & (table.metric == _primary_metric(num_labels[dataset]))]
            for row in rows.itertuples():
                call = call_words(row.verdict, a, b)
                seeds = f"{row.n_seeds} seed" + ("s" if row.n_seeds != 1 else "")
                calls.setdefault(call, []).append(f"{dataset} ({row.diff:+.3f}, {seeds})")
        if calls:
            lines.append(f"- **{a} − {b}**: " + "; ".join(f"{c} on {', '.join(d)}" for c, d in calls.items()) + ".")
    fronts = []
    for dataset, summary in summaries.items():
        metric = _primary_metric(num_labels[dataset])
        if f"{metric}_mean" in summary and cost_column(summary) in summary:
            fronts.append(f"{dataset}: {', '.join(pareto_front(summary, metric))}")
    if fronts:
        lines.append(
            "- **Pareto front** (quality against architecture latency, cheapest first): " + "; ".join(fronts) + "."
        )
    return lines


def study_index_markdown(
    summaries: dict[str, pd.DataFrame], pairs: dict[str, pd.DataFrame | None], num_labels: dict[str, int]
) -> str:
    """The verdict across data sets, the methods × data sets table (mean ± std over seeds, number of seeds) and the
    key paired differences."""
    if not summaries:
        return "No stage of the study has finished yet."
    primary = {d: _primary_metric(num_labels[d]) for d in summaries}
    methods = sorted({m for s in summaries.values() for m in s.method}, key=method_rank)
    header = ["method"] + [f"{d}: {METRIC_LABELS[primary[d]]}" for d in summaries] + ["latency ÷ teacher"]
    lines = [
        "## Verdict across data sets",
        "",
        (
            "Made from the paired tables below (primary metric of each data set; a call needs the p-value corrected "
            "over the data set's declared family below alpha and the 95% interval over seeds and texts to exclude 0, "
            f'with the same sign on every metric; else "{NOT_DISTINGUISHABLE}"):'
        ),
        "",
        *study_verdict(summaries, pairs, num_labels),
        "",
        "## Methods × data sets",
        "",
        (
            "Mean ± std over seeds (n = seeds finished so far) on each data set's test split; binary sets report the "
            "positive class's F1, multi-class and multi-label sets macro-F1. `latency ÷ teacher`: the method's "
            "single-text CPU-time latency over the teacher's, each the median over all models of its architecture "
            "in a data set, then the median over data sets (2-core CPU, one thread; `bench/` has side-by-side timings)."
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for method in methods:
        cells = [method]
        for dataset, summary in summaries.items():
            row = summary[summary.method == method]
            if row.empty:
                cells.append("–")
                continue
            r = row.iloc[0]
            cells.append(f"{_mean_std(r, primary[dataset])} (n={int(r.n_models)})")
        cells.append(_fmt(_latency_ratio(summaries, method), 2))
        lines.append("| " + " | ".join(cells) + " |")
    hours = {
        d: float((pd.to_numeric(s.get("train_runtime_s_mean"), errors="coerce") * s.n_models).sum()) / 3600
        for d, s in summaries.items()
    }
    lines += [
        "",
        "Training time on this machine so far (the Trainer's `train_runtime` summed over every model; each stage's "
        "evaluation and the teacher-logit caching come on top): "
        + ", ".join(f"{d} {h:.1f} h ({int(summaries[d].n_models.sum())} models)" for d, h in hours.items())
        + f"; {sum(hours.values()):.1f} h in all.",
    ]
    lines += [
        "",
        "## The question, per data set (paired differences, 95% intervals)",
        "",
        (
            "A − B on the same test texts, per seed; the 95% interval over seeds and texts together (seeds and the "
            "shared test texts resampled at once), the paired t-test's p corrected over each data set's declared "
            "family (`p_adjusted`), and the single-source intervals. Called only when the corrected p is below "
            "alpha and the seeds-and-texts interval excludes 0; a sign that flips between the metrics is never "
            f'called; else "{NOT_DISTINGUISHABLE}".'
        ),
        "",
        "| data set | A − B | metric | seeds | mean | 95% CI (seeds and texts) | p (corrected) | 95% CI (seeds) | "
        "95% CI (texts) | call |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, table in pairs.items():
        if table is None:
            continue
        for a, b in KEY_PAIRS:
            for row in table[(table.a == a) & (table.b == b)].itertuples():
                p_adjusted = getattr(row, "p_adjusted", math.nan)
                lines.append(
                    f"| {dataset} | {a} − {b} | {METRIC_LABELS.get(row.metric, row.metric)} | {row.n_seeds} | "
                    f"{row.diff:+.3f} | "
                    f"{_interval(getattr(row, 'hier_low', math.nan), getattr(row, 'hier_high', math.nan))} | "
                    f"{'–' if pd.isna(p_adjusted) else f'{p_adjusted:.3f}'} | {_interval(row.ci_low, row.ci_high)} | "
                    f"{_interval(row.boot_low, row.boot_high)} | {call_words(row.verdict, a, b)} |"
                )
    lines += ["", "Each data set's report: " + ", ".join(f"[{d}]({d}/report.md)" for d in summaries) + "."]
    return "\n".join(lines)
