"""The comparison report: plots, the per-method summary over seeds, and report.md with a verdict made from the numbers."""

from __future__ import annotations

import math
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

METHOD_ORDER = ("teacher", "odd", "even", "top", "bottom", "custom", "lora", "lora_student")
SUMMARY_COLUMNS = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "macro_f1",
    "weighted_f1",
    "roc_auc",
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
LOSS_COMPONENTS = ("loss", "loss_ce", "loss_kl", "loss_cos")


def method_rank(method: str) -> tuple[int, str]:
    base = method.removesuffix("_merged")
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
            values = pd.to_numeric(group[column], errors="coerce")
            row[f"{column}_mean"] = values.mean()
            row[f"{column}_std"] = values.std(ddof=1) if values.notna().sum() > 1 else math.nan
        rows.append(row)
    summary = pd.DataFrame(rows)
    order = sorted(range(len(summary)), key=lambda i: method_rank(summary.method[i]))
    return summary.iloc[order].reset_index(drop=True)


# --- plots -----------------------------------------------------------------------------------------------------


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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_loss_curves(histories: dict[str, list[dict[str, float]]], path: str) -> str | None:
    """Training loss of every model against epoch, and the students' loss_ce / loss_kl / loss_cos components."""
    panels = [c for c in LOSS_COMPONENTS if any(c in e for h in histories.values() for e in h)]
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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


def verdict(results: pd.DataFrame, summary: pd.DataFrame, split: str) -> str:
    """A paragraph made only from the numbers: who wins on F1 and AUC, at what size and speed, and is it noise."""
    s = summary.set_index("method")
    multi_seed = bool((s.n_models > 1).any())
    best_f1 = s.f1_mean.idxmax()
    auc = s.roc_auc_mean.dropna()
    best_auc = auc.idxmax() if len(auc) else None
    n = int(results.samples.iloc[0])
    per = "mean over seeds" if multi_seed else "one run each"
    parts = []
    if best_auc is None or best_auc == best_f1:
        auc_text = f" and ROC-AUC ({s.roc_auc_mean[best_f1]:.3f})" if best_auc else ""
        parts.append(
            f"On the {split} split ({n} texts; {per}), **{best_f1}** is best on F1 ({s.f1_mean[best_f1]:.3f}){auc_text}."
        )
    else:
        parts.append(
            f"On the {split} split ({n} texts; {per}), **{best_f1}** is best on F1 ({s.f1_mean[best_f1]:.3f}) "
            f"and **{best_auc}** on ROC-AUC ({s.roc_auc_mean[best_auc]:.3f})."
        )
    for name in dict.fromkeys([best_f1, best_auc]):
        if name is None:
            continue
        parts.append(
            f"{name} serves from {s.serving_size_mb_mean[name]:.1f} MB of weights "
            f"({s.size_mb_mean[name]:.1f} MB of its own), answers one text in {s.latency_ms_b1_mean[name]:.1f} ms "
            f"({s.latency_ms_b1_cpu_mean[name]:.1f} ms of CPU time) and classifies {s.throughput_b32_mean[name]:.0f} "
            "texts/s at batch 32."
        )
    if "teacher" in s.index:
        t = s.loc["teacher"]
        for method, row in s.iterrows():
            if method == "teacher":
                continue
            gap = row.f1_mean - t.f1_mean
            text = (
                f"{method} vs the teacher: F1 {gap:+.3f}, ROC-AUC {row.roc_auc_mean - t.roc_auc_mean:+.3f}, "
                f"{row.serving_size_mb_mean / t.serving_size_mb_mean:.2f}× the serving size, "
                f"{t.latency_ms_b1_mean / row.latency_ms_b1_mean:.2f}× the single-text speed "
                f"({t.latency_ms_b1_cpu_mean / row.latency_ms_b1_cpu_mean:.2f}× by CPU time), "
                f"{row.trainable_pct_mean:.2f}% of its parameters trained"
            )
            spread = np.nanmax([row.f1_std, t.f1_std]) if multi_seed else math.nan
            if not math.isnan(spread):
                text += f" (the F1 gap is {'larger' if abs(gap) > spread else 'not larger'} than the seed-to-seed std {spread:.3f})"
            parts.append(text + ".")
    ranked = s.f1_mean.sort_values(ascending=False)
    if len(ranked) > 1:
        first, second = ranked.index[0], ranked.index[1]
        gap = ranked.iloc[0] - ranked.iloc[1]
        if multi_seed:
            spread = np.nanmax([s.f1_std[first], s.f1_std[second]])
            if math.isnan(spread):
                parts.append(
                    f"The F1 lead of {first} over {second} ({gap:.3f}) cannot be compared with seed spread: one of them has a single seed."
                )
            else:
                exceeds = gap > spread
                parts.append(
                    f"The F1 lead of {first} over {second} ({gap:.3f}) is {'larger' if exceeds else 'smaller'} than the "
                    f"larger seed-to-seed std of the two ({spread:.3f}): "
                    + (
                        "it is more than seed noise."
                        if exceeds
                        else "it is within seed noise; run more seeds before choosing on F1."
                    )
                )
        else:
            best = results[results.method == first].iloc[0]
            inside = best.f1_ci_low <= ranked.iloc[1] <= best.f1_ci_high
            parts.append(
                f"Each method was trained with one seed, so the seed-to-seed spread is unknown (train with several `--seeds` to measure it). "
                f"The test set's own noise: {first}'s F1 has a bootstrap 95% interval of {best.f1_ci_low:.3f}–{best.f1_ci_high:.3f}, "
                f"which {'contains' if inside else 'excludes'} {second}'s F1 ({ranked.iloc[1]:.3f})"
                + (": the lead is within test-set noise." if inside else ".")
            )
    return " ".join(parts)


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


def write_report(
    output_dir: str,
    results: pd.DataFrame,
    summary: pd.DataFrame,
    plots: dict[str, Any],
    context: dict[str, Any],
) -> str:
    """report.md: setup, results table, per-method summary (with several seeds), plots, verdict."""
    split = context["split"]
    lines = [
        "# Comparison report",
        "",
        (
            f"Data: `{context['dataset']}`, split `{split}` ({int(results.samples.iloc[0])} texts, labels: "
            f"{', '.join(context['label_names'])}). Every model was scored here, on the same texts and the same machine: "
            f"{context['machine']}; torch {context['torch']}, {context['num_threads']} thread(s), device `{context['device']}`. "
            f"Latency is the median of {context['latency_runs']} single-text forward passes; throughput is texts/s over "
            f"{context['throughput_texts']} texts in batches of 32 (both after a warm-up, tokenisation excluded). "
            "F1, precision and recall are of the positive class for binary tasks and macro for multi-class; "
            "ROC-AUC is macro one-vs-rest for multi-class. `size` is the weights in the model's own directory; "
            "`serving` adds the base model an adapter needs."
        ),
        "",
        *load_warning(results, context),
        "## Verdict",
        "",
        verdict(results, summary, split),
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
                ("accuracy", "accuracy", 3),
                ("f1", "F1", 3),
                ("macro_f1", "macro F1", 3),
                ("roc_auc", "ROC-AUC", 3),
                ("eval_loss", "loss", 3),
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
        lines.append("| method | seeds | F1 | macro F1 | ROC-AUC | accuracy | latency ms | serving MB |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for _, row in summary.iterrows():
            lines.append(
                f"| {row.method} | {row.seeds or '–'} | {_mean_std(row, 'f1')} | {_mean_std(row, 'macro_f1')} | "
                f"{_mean_std(row, 'roc_auc')} | {_mean_std(row, 'accuracy')} | {_mean_std(row, 'latency_ms_b1', 2)} | "
                f"{_mean_std(row, 'serving_size_mb', 1)} |"
            )
        lines.append("")
    lines += ["## Plots", ""]
    for title, key in (
        ("Quality vs size", "quality_vs_size"),
        ("Quality vs latency", "quality_vs_latency"),
        ("Training loss", "loss_curves"),
    ):
        if plots.get(key):
            lines += [f"### {title}", "", f"![{title}]({os.path.relpath(plots[key], output_dir)})", ""]
    lines += ["### Confusion matrices", ""]
    for name, path in plots.get("confusion", {}).items():
        lines += [f"![{name}]({os.path.relpath(path, output_dir)})", ""]
    path = os.path.join(output_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path
