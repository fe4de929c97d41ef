"""The comparison report: report.md with a verdict made from the numbers, its tables and plots.

The parts live by what they own: report_summary (method order, the per-method summary over seeds, cost and Pareto
front), report_tables (markdown tables and formatting), report_pairs (paired comparisons), report_verdict (the prose),
report_plots (figures) and study_index (the index across data sets). Their public names are re-exported here for the
scripts that import them from distillkit.report.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pandas as pd

from .report_pairs import compare_pairs, read_predictions, stage_key
from .report_plots import (
    plot_confusion,
    plot_forest,
    plot_loss_curves,
    plot_method_means,
    plot_per_label,
    plot_quality_vs,
)
from .report_summary import (
    ARCH_LATENCY,
    COST_WORDS,
    METHOD_ORDER,
    SIDE_BY_SIDE_LATENCY,
    SUMMARY_COLUMNS,
    cost_column,
    method_rank,
    pareto_front,
    same_cost_pairs,
    sort_results,
    summarize,
    too_few_seeds,
    training_compute,
)
from .report_tables import (
    PER_LABEL_FILE,
    _fmt,
    _mean_std,
    call_words,
    compute_markdown,
    markdown_table,
    pairs_markdown,
    per_label_markdown,
    per_label_over_seeds,
)
from .report_verdict import (
    class_distribution_lines,
    load_warning,
    metric_note,
    never_predicted_lines,
    never_predicted_of,
    verdict,
)
from .stats import DEFAULT_RESAMPLES, NOT_DISTINGUISHABLE
from .study_index import KEY_PAIRS, study_index_markdown, study_verdict
from .tasks import MULTI_LABEL

__all__ = [
    "ARCH_LATENCY",
    "COST_WORDS",
    "KEY_PAIRS",
    "METHOD_ORDER",
    "PER_LABEL_FILE",
    "SIDE_BY_SIDE_LATENCY",
    "SUMMARY_COLUMNS",
    "call_words",
    "class_distribution_lines",
    "compute_markdown",
    "compare_pairs",
    "cost_column",
    "linked_images",
    "load_warning",
    "markdown_table",
    "method_rank",
    "metric_note",
    "never_predicted_lines",
    "never_predicted_of",
    "pairs_markdown",
    "pareto_front",
    "per_label_markdown",
    "per_label_over_seeds",
    "plot_confusion",
    "plot_forest",
    "plot_loss_curves",
    "plot_method_means",
    "plot_per_label",
    "plot_quality_vs",
    "read_predictions",
    "same_cost_pairs",
    "sort_results",
    "stage_key",
    "study_index_markdown",
    "study_verdict",
    "summarize",
    "too_few_seeds",
    "training_compute",
    "verdict",
    "write_report",
]

_IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def linked_images(markdown_path: str) -> list[str]:
    """Paths of the images a markdown file links, resolved against its folder."""
    with open(markdown_path) as f:
        text = f.read()
    folder = os.path.dirname(markdown_path)
    return [os.path.normpath(os.path.join(folder, link)) for link in _IMAGE_LINK.findall(text)]


def write_report(
    output_dir: str,
    results: pd.DataFrame,
    summary: pd.DataFrame,
    plots: dict[str, Any],
    context: dict[str, Any],
    predictions: dict[str, pd.DataFrame] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    per_label: pd.DataFrame | None = None,
    correction: str = "holm",
    alpha: float = 0.05,
    compute: pd.DataFrame | None = None,
) -> str:
    """report.md: setup, verdict, results table, per-method summary, F1 per label (class), paired differences, plots.

    `predictions` (model → label, pred, prob_* frame) defaults to the files in `output_dir/predictions/`; with
    them the paired differences of distillkit.stats are computed, written to `paired.csv` and drawn in a forest plot.
    `per_label` is evaluation.label_table's rows of every model (`per_label.csv`); `compute` is
    report_summary.training_compute's table (`compute.csv`, written here). `context["problem_type"]` says
    what the metric columns mean (else results.csv's `problem_type` column says).
    """
    split = context["split"]
    if not context.get("problem_type") and "problem_type" in results:
        context = {**context, "problem_type": str(results.problem_type.iloc[0])}
    multi_label = context.get("problem_type") == MULTI_LABEL
    if predictions is None:
        predictions = read_predictions(output_dir, list(results.model))
    pairs = compare_pairs(results, predictions, n_resamples, summary, correction, alpha) if predictions else None
    if pairs is not None:
        pairs.to_csv(os.path.join(output_dir, "paired.csv"), index=False)
        os.makedirs(os.path.join(output_dir, "plots"), exist_ok=True)
        plots = {**plots, "forest": plot_forest(pairs, os.path.join(output_dir, "plots", "forest.png"))}
    lines = [
        f"# {context.get('title', 'Comparison report')}",
        "",
        _setup_paragraph(results, context),
        "",
        *class_distribution_lines(per_label, split, multi_label),
        *load_warning(results, context),
        *never_predicted_lines(results, split, multi_label),
        "## Verdict",
        "",
        verdict(results, summary, split, pairs),
        "",
        "## Results (one row per model; `results.csv` has every column)",
        "",
        _results_table(results, multi_label),
        "",
        "F1 95% bootstrap intervals over the test texts (test-set noise, not seed noise): "
        + "; ".join(f"{r.model} {r.f1_ci_low:.3f}–{r.f1_ci_high:.3f}" for r in results.itertuples())
        + ".",
        "",
    ]
    lines += _per_method_lines(summary, multi_label)
    if compute is not None and not compute.empty:
        compute.to_csv(os.path.join(output_dir, "compute.csv"), index=False)
        lines += compute_markdown(compute)
    if per_label is not None and len(per_label):
        lines += per_label_markdown(per_label, multi_label)
    if pairs is not None:
        lines += _paired_lines(pairs, n_resamples, alpha)
    lines += _plot_lines(plots, output_dir, multi_label)
    path = os.path.join(output_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def _setup_paragraph(results: pd.DataFrame, context: dict[str, Any]) -> str:
    """What was scored, where, and how each number was measured."""
    split = context["split"]
    return (
        f"Data: `{context['dataset']}`, split `{split}` ({int(results.samples.iloc[0])} texts, labels: "
        f"{', '.join(context['label_names'])}). Every model was scored here, on the same texts and the same machine: "
        f"{context['machine']}; torch {context['torch']}, {context['num_threads']} thread(s), device `{context['device']}`. "
        f"Latency is the median of {context['latency_runs']} single-text forward passes; throughput is texts/s over "
        f"{context['throughput_texts']} texts in batches of 32 (both after a warm-up, tokenisation excluded). "
        f"{metric_note(context.get('problem_type', ''))} `size` is the weights in the model's own directory; "
        "`serving` adds the base model an adapter needs."
        + (f" {context['setup_note']}" if context.get("setup_note") else "")
    )


def _results_table(results: pd.DataFrame, multi_label: bool) -> str:
    """One row per model: its setup, every quality metric, its size and its timings."""
    return markdown_table(
        results,
        [
            ("model", "model", 0),
            ("method", "method", 0),
            ("seed", "seed", 0),
            ("layers", "layers", 0),
            ("params", "params", 0),
            ("trainable_pct", "trained %", 2),
            ("size_mb", "size MB", 1),
            ("serving_size_mb", "serving MB", 1),
            ("accuracy", "subset acc." if multi_label else "accuracy", 3),
            *([("hamming_accuracy", "Hamming acc.", 3)] if multi_label else []),
            *([("balanced_accuracy", "balanced acc.", 3)] if "balanced_accuracy" in results else []),
            ("f1", "micro F1" if multi_label else "F1", 3),
            ("macro_f1", "macro F1", 3),
            ("roc_auc", "ROC-AUC", 3),
            *([("pr_auc", "PR-AUC", 3)] if "pr_auc" in results else []),
            ("eval_loss", "loss", 3),
            *([("decision_rule", "decision rule", 0)] if "decision_rule" in results else []),
            ("latency_ms_b1", "latency ms", 2),
            ("latency_ms_b1_cpu", "CPU ms", 2),
            ("throughput_b32", "texts/s b32", 1),
            ("train_runtime_s", "train s", 0),
        ],
    )


def _per_method_lines(summary: pd.DataFrame, multi_label: bool) -> list[str]:
    """Mean ± std over seeds per method and the cost it is ranked by; nothing when every method has one model."""
    if not (summary.n_models > 1).any():
        return []
    lines = ["## Per method over seeds (mean ± std, `summary.csv`)", ""]
    f1, accuracy = ("micro F1", "subset acc.") if multi_label else ("F1", "accuracy")
    lines.append(
        f"| method | seeds | {f1} | macro F1 | ROC-AUC | {accuracy} | CPU ms | cost: CPU ms | serving MB |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for _, row in summary.iterrows():
        lines.append(
            f"| {row.method} | {row.seeds or '–'} | {_mean_std(row, 'f1')} | {_mean_std(row, 'macro_f1')} | "
            f"{_mean_std(row, 'roc_auc')} | {_mean_std(row, 'accuracy')} | "
            f"{_mean_std(row, 'latency_ms_b1_cpu', 2)} | {_fmt(row.get(cost_column(summary)), 2)} | "
            f"{_mean_std(row, 'serving_size_mb', 1)} |"
        )
    lines += [
        "",
        (
            "`CPU ms`: the method's own single-text CPU-time latency (mean ± std over its models, each timed at "
            f"another moment of the machine); `cost: CPU ms`: the {COST_WORDS[cost_column(summary)]} — what the "
            "Pareto front ranks by (one architecture costs the same whatever its weights)."
        ),
    ]
    lines.append("")
    return lines


def _paired_lines(pairs: pd.DataFrame, n_resamples: int, alpha: float) -> list[str]:
    """The paired-difference section: how a difference is tested and called, then the table."""
    return [
        "## Paired differences (`paired.csv`)",
        "",
        (
            "Per seed, A and B are scored on the same test texts; the table gives the mean difference and its 95% "
            f"interval over seeds and texts together ({n_resamples:,} bootstrap resamples, each drawing the seeds "
            "with replacement and one resample of the shared test texts), the paired t-test across seeds and its "
            "p-value corrected over the family of declared comparisons (every pair the study asks about, on "
            "every metric; `p_adjusted`), and the single-source intervals (t across seeds; texts resampled with "
            "the seeds fixed). A difference is called only when its corrected p is below "
            f"{alpha} and the seeds-and-texts interval excludes 0; a pair whose difference changes sign between "
            "the metrics is a sign flip, never called; a pair picked after seeing the means (the front's "
            f'same-cost rival) is exploratory, never called; otherwise "{NOT_DISTINGUISHABLE}". The CE-only '
            "controls (`<layers>_ce`) start from the same teacher layers and train on the labels alone."
        ),
        "",
        *pairs_markdown(pairs),
        "",
    ]


def _plot_lines(plots: dict[str, Any], output_dir: str, multi_label: bool) -> list[str]:
    """Every plot that was drawn, linked relative to the report."""
    lines = ["## Plots", ""]
    for title, key in (
        ("Difference vs the teacher (forest plot)", "forest"),
        ("Quality vs latency, per method", "method_means"),
        ("F1 per label" if multi_label else "F1 per class", "per_label"),
        ("Quality vs size", "quality_vs_size"),
        ("Quality vs latency", "quality_vs_latency"),
        ("Training loss", "loss_curves"),
    ):
        if plots.get(key):
            lines += [f"### {title}", "", f"![{title}]({os.path.relpath(plots[key], output_dir)})", ""]
    if plots.get("confusion"):
        lines += ["### Confusion matrices", ""]
    for name, path in plots.get("confusion", {}).items():
        lines += [f"![{name}]({os.path.relpath(path, output_dir)})", ""]
    return lines
