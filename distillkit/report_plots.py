"""The report's figures (matplotlib, written to files): confusion matrices, loss curves, F1 per label, quality against
size or latency, the forest plot of paired differences and the per-method quality/cost front."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from .losses import loss_components
from .report_summary import COST_WORDS, cost_column, method_rank, pareto_front
from .stats import A_BETTER, B_BETTER, METRIC_LABELS

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
