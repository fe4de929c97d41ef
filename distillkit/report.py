"""The comparison report: plots, the per-method summary over seeds, and report.md with a verdict made from the numbers."""

from __future__ import annotations

import math
import os
import re
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from .losses import loss_components
from .methods import CONTROLS
from .metrics import per_label_table
from .records import MERGED_SUFFIX
from .stats import (
    A_BETTER,
    B_BETTER,
    DEFAULT_RESAMPLES,
    EXPLORATORY,
    METRIC_LABELS,
    NOT_DISTINGUISHABLE,
    SIGN_FLIP,
    is_multi_label,
    metric_names,
    paired_table,
    study_pairs,
)
from .tasks import MULTI_LABEL, label_id_lists, multi_hot

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
_SEEDED_MODEL = re.compile(r"^seed\d+-(.+)$")
_IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")
PER_LABEL_FILE = "per_label.csv"  # support, F1, ROC-AUC, PR-AUC per label (class) per model
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


# --- plots -----------------------------------------------------------------------------------------------------


def _save_figure(fig: plt.Figure, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(labels: np.ndarray, preds: np.ndarray, label_names: list[str], title: str, path: str) -> str:
    """Counts in each cell, colour by row share (recall per gold class) so rare classes stay visible."""
    k = len(label_names)
    matrix = confusion_matrix(labels, preds, labels=list(range(k)))
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.35 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), label_names, rotation=90 if k > 4 else 0, fontsize=8 if k > 10 else 10)
    ax.set_yticks(range(k), label_names, fontsize=8 if k > 10 else 10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    if k <= 10:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j, i, str(matrix[i, j]), ha="center", va="center", color="white" if share[i, j] > 0.5 else "black"
                )
    fig.colorbar(image, ax=ax, label="share of the gold class")
    return _save_figure(fig, path)


def plot_loss_curves(histories: dict[str, list[dict[str, float]]], path: str) -> str | None:
    """Training loss of every model against epoch, and the students' components (loss_ce, loss_kl, loss_cos, ...: one
    per registered loss term)."""
    panels = [c for c in ("loss", *loss_components()) if any(c in e for h in histories.values() for e in h)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    # One colour per model in every panel: the legend sits in the first panel only.
    cmap = plt.cm.tab10 if len(histories) <= 10 else plt.cm.tab20
    colours = {name: cmap(i % cmap.N) for i, name in enumerate(histories)}
    for ax, component in zip(axes[0], panels):
        for name, history in histories.items():
            points = [(e.get("epoch", e.get("step", 0)), e[component]) for e in history if component in e]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker=".", label=name, color=colours[name])
        ax.set_title("total training loss" if component == "loss" else component)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return _save_figure(fig, path)


def plot_per_label(table: pd.DataFrame, multi_label: bool, path: str) -> str:
    """F1 of every label (class) at each model's decision rule, one series per model, labels by support."""
    supports = table.groupby("label", sort=False).support.first().sort_values(ascending=False, kind="stable")
    labels = list(supports.index)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(labels) + 2), 4.5))
    for i, (model, rows) in enumerate(table.groupby("model", sort=False)):
        f1 = rows.set_index("label").f1.reindex(labels)
        ax.plot(range(len(labels)), f1.to_numpy(), marker="o", ms=4, lw=1, color=plt.cm.tab10(i % 10), label=model)
    ax.set_xticks(range(len(labels)), [f"{n} ({supports[n]})" for n in labels], rotation=90 if len(labels) > 4 else 0)
    ax.set_ylabel("F1")
    ax.set_ylim(0, 1)
    ax.set_xlabel("label (support)" if multi_label else "class (support), one-vs-rest")
    ax.set_title(
        ("F1 per label at each model's thresholds" if multi_label else "F1 per class")
        + (" (mean over each method's seeds)" if "n_seeds" in table else "")
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save_figure(fig, path)


def plot_quality_vs(results: pd.DataFrame, x: str, xlabel: str, path: str, log_x: bool = False) -> str:
    """F1 and ROC-AUC of every model against a cost (size or latency), one colour per method."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    methods = sorted(results.method.unique(), key=method_rank)
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for ax, metric in zip(axes, ("f1", "roc_auc")):
        for method in methods:
            group = results[results.method == method]
            ax.scatter(group[x], group[metric], color=colours[method], label=method, s=40)
            for _, row in group.iterrows():
                ax.annotate(row.model, (row[x], row[metric]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        if log_x:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save_figure(fig, path)


# --- report ----------------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, columns: list[tuple[str, str, int]]) -> str:
    """columns: (column, header, decimals)."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c], d) for c, _, d in columns) + " |")
    return "\n".join(lines)


def _mean_std(row: pd.Series, column: str, digits: int = 3) -> str:
    mean, std = row[f"{column}_mean"], row[f"{column}_std"]
    return _fmt(mean, digits) if pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def stage_key(model: str, method: str) -> str:
    """The method a row stands for in paired comparisons: the stage folder of a run_compare experiment
    (`seed42-lora_even` → lora_even, the registry's name), else the recorded method."""
    match = _SEEDED_MODEL.match(str(model))
    return match.group(1) if match else str(method)


def _interval(low: float, high: float) -> str:
    return "–" if pd.isna(low) else f"{low:+.3f} to {high:+.3f}"


def _p_text(row: Any) -> str:
    """The corrected p-value (and the correction) of a row, or why there is none."""
    p_adjusted = getattr(row, "p_adjusted", math.nan)
    if pd.isna(p_adjusted):
        return "no p-value" if pd.isna(row.p_value) else f"p {row.p_value:.3f}, uncorrected"
    return f"{getattr(row, 'correction', 'corrected')}-corrected p {p_adjusted:.3f}"


def call_words(verdict: str, a: str, b: str, ahead: str = "better") -> str:
    """A verdict of distillkit.stats in words: which method is better, or why none is called."""
    return {
        A_BETTER: f"{a} {ahead}",
        B_BETTER: f"{b} {ahead}",
        SIGN_FLIP: "sign flips between metrics: not called",
        EXPLORATORY: "exploratory: not called",
    }.get(verdict, verdict)


def _pair_sentence(row: pd.Series) -> str:
    metric = METRIC_LABELS.get(row.metric, row.metric)
    seeds = f"{int(row.n_seeds)} seed{'s' if row.n_seeds > 1 else ''}"
    both = f"95% CI over seeds and texts {_interval(row.hier_low, row.hier_high)}"
    if row.n_seeds < 2:
        ci = f"one seed, so no interval across seeds and no p-value; {both}"
    else:
        ci = f"{both}; {_p_text(row)}; across {seeds} {_interval(row.ci_low, row.ci_high)}"
    return f"{row.a} − {row.b}: {metric} {row['diff']:+.3f} ({ci}): **{call_words(row.verdict, row.a, row.b, 'is better')}**."


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


def _front_sentence(summary: pd.DataFrame, metric: str, pairs: pd.DataFrame | None) -> str:
    cost = cost_column(summary)
    front = pareto_front(summary, metric, cost)
    if not front:
        return ""
    s = summary.set_index("method")
    how = COST_WORDS[cost]
    text = (
        f"Quality vs latency (mean {METRIC_LABELS.get(metric, metric)} against {how}): the Pareto front is "
        + ", ".join(f"{m} ({s.loc[m, cost]:.1f} ms)" for m in front)
        + " (every other method is as slow or slower without being better)."
    )
    if left_out := too_few_seeds(summary):
        text += f" Left out of the front for having one seed: {', '.join(left_out)}."
    for leader, rival in same_cost_pairs(summary, metric, cost):
        for a, b, sign in ((leader, rival, 1), (rival, leader, -1)):
            row = pd.DataFrame() if pairs is None else pairs[(pairs.a == a) & (pairs.b == b) & (pairs.metric == metric)]
            if len(row):
                r = row.iloc[0]
                if r.verdict == EXPLORATORY:  # the pair was picked from the means: its numbers, no call
                    how = (
                        f"95% CI over seeds and texts {_interval(sign * r.hier_low, sign * r.hier_high)}"
                        if sign > 0
                        else f"95% CI over seeds and texts {_interval(-r.hier_high, -r.hier_low)}"
                    )
                    call = f"{how}; exploratory (the pair was picked after seeing the means), not called"
                else:
                    call = call_words(r.verdict, a, b, "is ahead")
                text += f" At {leader}'s cost, {leader} − {rival} {sign * r['diff']:+.3f}: {call}."
                break
    return text


def verdict(results: pd.DataFrame, summary: pd.DataFrame, split: str, pairs: pd.DataFrame | None = None) -> str:
    """A few sentences made only from the numbers: the best method, then the paired differences the study asks
    about (odd vs even; distillation vs its CE-only control; where LoRA sits), then the quality/latency front."""
    s = summary.set_index("method")
    multi_seed = bool((s.n_models > 1).any())
    # Lead with the metric the paired tables compare (macro-F1 for a multi-label task), else results.csv's f1.
    primary = pairs.metric.iloc[0] if pairs is not None and len(pairs) else "f1"
    if f"{primary}_mean" not in summary:
        primary = "f1"
    if primary == "f1":
        f1 = "micro-F1" if is_multi_label(results) else "F1"  # results.csv's f1 of a multi-label model
    else:
        f1 = METRIC_LABELS.get(primary, primary)
    quality = s[f"{primary}_mean"]
    best_f1 = quality.idxmax()
    auc = s.roc_auc_mean.dropna()
    best_auc = auc.idxmax() if len(auc) else None
    n = int(results.samples.iloc[0])
    per = "mean over seeds" if multi_seed else "one run each"
    parts = []
    if best_auc is None or best_auc == best_f1:
        auc_text = f" and ROC-AUC ({s.roc_auc_mean[best_f1]:.3f})" if best_auc else ""
        parts.append(
            f"On the {split} split ({n} texts; {per}), **{best_f1}** is best on {f1} ({quality[best_f1]:.3f}){auc_text}."
        )
    else:
        parts.append(
            f"On the {split} split ({n} texts; {per}), **{best_f1}** is best on {f1} ({quality[best_f1]:.3f}) "
            f"and **{best_auc}** on ROC-AUC ({s.roc_auc_mean[best_auc]:.3f})."
        )
    blind = {m: names for m, names in never_predicted_of(results).items() if m in set(results[results.method == best_f1].model)}
    if blind:
        what = "labels" if is_multi_label(results) else "classes"
        parts.append(
            f"But {best_f1} never predicts some {what} ("
            + "; ".join(f"{m}: {', '.join(n)}" for m, n in blind.items())
            + "): its lead does not cover them."
        )
    if not multi_seed:
        parts.append(
            "Each method was trained with one seed, so the seed-to-seed spread is unknown (train with several `--seeds` "
            "to measure it): no difference below is called."
        )
    if pairs is not None and len(pairs):
        if "family" in pairs:
            asked = pairs.family.astype(bool).to_numpy()
        else:  # an older paired.csv
            declared = set(study_pairs(list(summary.method), CONTROLS))
            asked = np.array([(a, b) in declared for a, b in zip(pairs.a, pairs.b)], dtype=bool)
        main = pairs[(pairs.metric == primary) & (pairs.b != "teacher") & asked]  # same-cost pairs: the front's
        parts += [_pair_sentence(row) for _, row in main.iterrows()]
        vs_teacher = pairs[(pairs.metric == primary) & (pairs.b == "teacher")]
        if len(vs_teacher):
            same = vs_teacher[vs_teacher.verdict == NOT_DISTINGUISHABLE].a.tolist()
            worse = vs_teacher[vs_teacher.verdict == B_BETTER].a.tolist()
            better = vs_teacher[vs_teacher.verdict == A_BETTER].a.tolist()
            flips = vs_teacher[vs_teacher.verdict == SIGN_FLIP].a.tolist()
            text = f"Against the teacher ({METRIC_LABELS.get(primary, primary)}): "
            text += "; ".join(
                f"{label} {', '.join(names)}"
                for label, names in (
                    ("worse:", worse),
                    ("not distinguishable:", same),
                    ("better:", better),
                    ("sign flips between metrics (not called):", flips),
                )
                if names
            )
            parts.append(text + " (forest plot below).")
    if f"{primary}_mean" in summary and cost_column(summary) in summary:
        parts.append(_front_sentence(summary, primary, pairs))
    return " ".join(p for p in parts if p)


def never_predicted_of(results: pd.DataFrame) -> dict[str, list[str]]:
    """model → the classes (labels) of the split it never predicts (results.csv's `never_predicted`, `;`-joined)."""
    if "never_predicted" not in results:
        return {}
    cells = results.set_index("model").never_predicted
    return {m: str(c).split(";") for m, c in cells.items() if isinstance(c, str) and c}


def never_predicted_lines(results: pd.DataFrame, split: str, multi_label: bool) -> list[str]:
    """A flagged block naming every model that never predicts a class present in the split (its F1 there is 0)."""
    missing = never_predicted_of(results)
    if not missing:
        return []
    what = "label" if multi_label else "class"
    lines = [f"**Never predicted** (a {what} present in `{split}` that the model's decision rule never outputs; its F1 is 0):", ""]
    for model, names in missing.items():
        verb = "is" if len(names) == 1 else "are"
        lines.append(f"- {what} {', '.join(names)} {verb} never predicted by **{model}**")
    return [*lines, ""]


def class_distribution_lines(per_label: pd.DataFrame | None, split: str, multi_label: bool) -> list[str]:
    """The split's class counts and shares (multi-label: texts carrying each label), from per_label.csv's support."""
    if per_label is None or not len(per_label) or "support" not in per_label:
        return []
    first = per_label[per_label.model == per_label.model.iloc[0]]
    total = int(first.support.sum()) if not multi_label else None
    cells = []
    for row in first.itertuples():
        share = f" ({row.support / total:.1%})" if total else ""
        cells.append(f"{row.label} {int(row.support):,}{share}")
    what = "texts per label" if multi_label else "class counts"
    return [f"`{split}` {what}: " + ", ".join(cells) + ".", ""]


def load_warning(results: pd.DataFrame, context: dict[str, Any]) -> list[str]:
    """Say so when other jobs shared the machine while it was timed: wall-clock figures are then inflated."""
    cpus = context.get("cpu_count") or 1
    load = pd.to_numeric(results.get("load_avg_1m"), errors="coerce").max()
    if pd.isna(load) or load <= cpus:
        return []
    warning = (
        f"**The machine was shared while timing** (1-minute load average up to {load:.1f} on {cpus} CPUs): wall-clock "
        "latency and throughput are inflated and noisy; the CPU-time columns (`latency_ms_b1_cpu`, "
        "`throughput_b32_cpu`) count only this process's work and compare models more fairly."
    )
    return [warning, ""]


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


def metric_note(problem_type: str) -> str:
    """What results.csv's columns mean for the task of the data set."""
    if problem_type == MULTI_LABEL:
        return (
            "Multi-label: every label is decided by its own sigmoid at the model's saved threshold (0.5 where none "
            "was saved; `thresholds` column). `F1` (= `micro_f1`), precision and recall are micro averages over every "
            "(text, label) decision; `macro F1` averages the labels' F1; ROC-AUC and PR-AUC (average precision) are "
            "macro averages over the labels that have both values in the split; `accuracy` is subset accuracy (every "
            "label of a text right) and `hamming_accuracy` the share of right label decisions."
        )
    return (
        "F1, precision and recall are of the positive class for binary tasks (decided by argmax, or by the "
        "model's saved positive-class threshold: `thresholds` column) and macro for multi-class; ROC-AUC and "
        "PR-AUC (average precision) are on the positive class for binary tasks and macro one-vs-rest for "
        "multi-class; balanced accuracy is the mean recall over classes."
    )


def per_label_over_seeds(
    results: pd.DataFrame, predictions: dict[str, pd.DataFrame], label_names: list[str]
) -> pd.DataFrame | None:
    """Per method, each label's (class's) support, F1, ROC-AUC and PR-AUC from its saved predictions, averaged over
    the method's seeds (`n_seeds`); `model` holds the method. None for a binary task: its report already has the
    positive class's F1."""
    k = len(label_names)
    if k <= 2:
        return None
    rows = []
    for model, method in zip(results.model, results.method):
        frame = predictions.get(model)
        if frame is None:
            continue
        probs = frame[[f"prob_{j}" for j in range(k)]].to_numpy(dtype=float)
        if is_multi_label(frame):
            gold, pred = (multi_hot(label_id_lists(frame[c]), k) for c in ("label", "pred"))
        else:
            gold, pred = (np.eye(k, dtype=int)[frame[c].to_numpy(dtype=np.int64)] for c in ("label", "pred"))
        rows += [{"model": method, **row} for row in per_label_table(probs, gold, pred, label_names)]
    if not rows:
        return None
    table = pd.DataFrame(rows)
    grouped = table.groupby(["model", "label"], sort=False)
    means = grouped[["f1", "roc_auc", "pr_auc"]].mean()
    return grouped.support.first().to_frame().join(means).assign(n_seeds=grouped.size()).reset_index()


def per_label_markdown(table: pd.DataFrame, multi_label: bool) -> list[str]:
    """Labels (classes) × models: support and each model's F1, rarest label last; ROC-AUC and PR-AUC are in the CSV."""
    models = list(dict.fromkeys(table.model))
    f1 = table.pivot_table(index="label", columns="model", values="f1", sort=False)
    support = table.groupby("label", sort=False).support.first().sort_values(ascending=False, kind="stable")
    what = "label" if multi_label else "class"
    lines = [
        f"## F1 per {what} (`{PER_LABEL_FILE}`)",
        "",
        (
            f"F1 of each {what} at each model's decision rule"
            + (", mean over each method's seeds" if "n_seeds" in table else "")
            + ("" if multi_label else " (one-vs-rest: a rare class that vanishes shows 0 here)")
            + f"; `{PER_LABEL_FILE}` also has each {what}'s ROC-AUC and PR-AUC."
        ),
        "",
        f"| {what} | support | " + " | ".join(models) + " |",
        "|---|---|" + "---|" * len(models),
    ]
    for label, n in support.items():
        lines.append(f"| {label} | {int(n)} | " + " | ".join(_fmt(f1.loc[label, m]) for m in models) + " |")
    return lines + [""]


def plot_forest(pairs: pd.DataFrame, path: str, reference: str = "teacher") -> str | None:
    """Difference vs `reference` per method with its intervals: thick = 95% over seeds and texts (the one that
    decides), thin = 95% t across seeds."""
    rows = pairs[pairs.b == reference]
    if rows.empty:
        return None
    metrics = list(dict.fromkeys(rows.metric))
    methods = list(dict.fromkeys(rows.a))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 0.45 * len(methods) + 1.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        part = rows[rows.metric == metric].set_index("a")
        ys = np.arange(len(methods))[::-1]
        for y, method in zip(ys, methods):
            if method not in part.index:
                continue
            r = part.loc[method]
            if not pd.isna(r.ci_low):
                ax.plot([r.ci_low, r.ci_high], [y, y], color="0.6", lw=1)
            if "hier_low" in r and not pd.isna(r.hier_low):
                ax.plot([r.hier_low, r.hier_high], [y, y], color="tab:blue", lw=4, alpha=0.7)
            called = r.verdict in (A_BETTER, B_BETTER)
            ax.plot([r["diff"]], [y], "o", color="tab:red" if called else "black")
        ax.axvline(0, color="black", lw=0.8, ls="--")
        ax.set_yticks(ys, methods)
        ax.set_xlabel(f"{METRIC_LABELS.get(metric, metric)} − {reference}")
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].set_title("blue: 95% CI over seeds and texts; grey: t across seeds; red dot: called", fontsize=8)
    return _save_figure(fig, path)


def plot_method_means(summary: pd.DataFrame, metric: str, path: str, cost: str | None = None) -> str:
    """One point per method (mean ± std over seeds) of quality against its cost (`cost_column`), the Pareto front
    joined. Methods of one architecture share a cost; their points are dodged sideways so each stays visible."""
    cost = cost or cost_column(summary)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    span = max(float(summary[cost].max() - summary[cost].min()), 1.0) if cost in summary else 1.0
    seen: dict[float, int] = {}
    for i, row in enumerate(summary.itertuples()):
        x, y = getattr(row, cost), getattr(row, f"{metric}_mean")
        yerr = getattr(row, f"{metric}_std", math.nan)
        dodge = seen.get(x, 0)
        seen[x] = dodge + 1
        x_drawn = x + 0.015 * span * dodge
        ax.errorbar(
            x_drawn,
            y,
            yerr=None if pd.isna(yerr) else yerr,
            fmt="o",
            color=plt.cm.tab10(i % 10),
            label=row.method,
            capsize=3,
        )
        ax.annotate(row.method, (x_drawn, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    front = summary.set_index("method").loc[pareto_front(summary, metric, cost)]
    ax.plot(front[cost], front[f"{metric}_mean"], color="0.5", ls=":", lw=1, label="Pareto front")
    ax.set_xlabel(f"ms: {COST_WORDS.get(cost, cost)}", fontsize=8)
    ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save_figure(fig, path)


def pairs_markdown(pairs: pd.DataFrame) -> list[str]:
    correction = str(pairs.correction.iloc[0]) if "correction" in pairs and len(pairs) else "corrected"
    lines = [
        "| A | B | metric | seeds | A mean | B mean | A − B | 95% CI (seeds and texts) | p (paired t) | "
        f"p ({correction}) | 95% CI (seeds, t) | 95% CI (texts) | call |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in pairs.itertuples():
        p = "–" if pd.isna(row.p_value) else f"{row.p_value:.3f}"
        p_adjusted = getattr(row, "p_adjusted", math.nan)
        lines.append(
            f"| {row.a} | {row.b} | {METRIC_LABELS.get(row.metric, row.metric)} | {row.n_seeds} | {row.mean_a:.3f} | "
            f"{row.mean_b:.3f} | {row.diff:+.3f} | "
            f"{_interval(getattr(row, 'hier_low', math.nan), getattr(row, 'hier_high', math.nan))} | "
            f"{p} | {'–' if pd.isna(p_adjusted) else f'{p_adjusted:.3f}'} | {_interval(row.ci_low, row.ci_high)} | "
            f"{_interval(row.boot_low, row.boot_high)} | {call_words(row.verdict, row.a, row.b)} |"
        )
    return lines


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
) -> str:
    """report.md: setup, verdict, results table, per-method summary, F1 per label (class), paired differences, plots.

    `predictions` (model → label, pred, prob_* frame) defaults to the files in `output_dir/predictions/`; with
    them the paired differences of distillkit.stats are computed, written to `paired.csv` and drawn in a forest plot.
    `per_label` is evaluation.label_table's rows of every model (`per_label.csv`). `context["problem_type"]` says
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
        (
            f"Data: `{context['dataset']}`, split `{split}` ({int(results.samples.iloc[0])} texts, labels: "
            f"{', '.join(context['label_names'])}). Every model was scored here, on the same texts and the same machine: "
            f"{context['machine']}; torch {context['torch']}, {context['num_threads']} thread(s), device `{context['device']}`. "
            f"Latency is the median of {context['latency_runs']} single-text forward passes; throughput is texts/s over "
            f"{context['throughput_texts']} texts in batches of 32 (both after a warm-up, tokenisation excluded). "
            f"{metric_note(context.get('problem_type', ''))} `size` is the weights in the model's own directory; "
            "`serving` adds the base model an adapter needs."
            + (f" {context['setup_note']}" if context.get("setup_note") else "")
        ),
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
        markdown_table(
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
        ),
        "",
        "F1 95% bootstrap intervals over the test texts (test-set noise, not seed noise): "
        + "; ".join(f"{r.model} {r.f1_ci_low:.3f}–{r.f1_ci_high:.3f}" for r in results.itertuples())
        + ".",
        "",
    ]
    if (summary.n_models > 1).any():
        lines += ["## Per method over seeds (mean ± std, `summary.csv`)", ""]
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
    if per_label is not None and len(per_label):
        lines += per_label_markdown(per_label, multi_label)
    if pairs is not None:
        lines += [
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
    lines += ["## Plots", ""]
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
    path = os.path.join(output_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


# --- the study across data sets ----------------------------------------------------------------------------------

# The questions the index answers per data set: odd vs even, each layer choice vs its CE-only control, where LoRA sits.
KEY_PAIRS = (("odd", "even"), *CONTROLS.items(), ("lora", "even"), ("lora_even", "even"), ("lora", "teacher"))


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
