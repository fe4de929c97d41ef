"""Markdown for the reports: number formatting, tables, a stats verdict in words, the paired-difference table and the
per-label (per-class) F1 table over seeds."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .metrics import per_label_table
from .stats import A_BETTER, B_BETTER, EXPLORATORY, METRIC_LABELS, SIGN_FLIP, is_multi_label
from .tasks import label_id_lists, multi_hot

PER_LABEL_FILE = "per_label.csv"  # support, F1, ROC-AUC, PR-AUC per label (class) per model


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


def saved_predictions_label_table(frame: pd.DataFrame, label_names: list[str]) -> list[dict[str, Any]]:
    """metrics.per_label_table of one model's saved predictions (label, pred, prob_* columns): each label's
    (class's) support, F1, ROC-AUC and PR-AUC at the model's saved decision rule."""
    k = len(label_names)
    probs = frame[[f"prob_{j}" for j in range(k)]].to_numpy(dtype=float)
    if is_multi_label(frame):
        gold, pred = (multi_hot(label_id_lists(frame[c]), k) for c in ("label", "pred"))
    else:
        gold, pred = (np.eye(k, dtype=int)[frame[c].to_numpy(dtype=np.int64)] for c in ("label", "pred"))
    return per_label_table(probs, gold, pred, label_names)


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
        rows += [{"model": method, **row} for row in saved_predictions_label_table(frame, label_names)]
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


def compute_markdown(compute: pd.DataFrame) -> list[str]:
    """The training each method cost (report_summary.training_compute), alone and with what it starts from."""
    if compute is None or compute.empty:
        return []
    return [
        "## Training compute per method (mean over seeds, `compute.csv`)",
        "",
        markdown_table(
            compute,
            [
                ("method", "method", 0),
                ("seeds", "seeds", 0),
                ("bases", "starts from", 0),
                ("steps", "optimizer steps", 0),
                ("steps_with_bases", "steps incl. bases", 0),
                ("train_s", "train s", 0),
                ("train_s_with_bases", "train s incl. bases", 0),
            ],
        ),
        "",
        "A student's cost includes the teacher it is distilled from, and lora_even's the teacher and the even student "
        "it adapts (the same seed's stages). Train seconds come from a shared CPU at different moments: a rough scale, "
        "not a timing.",
        "",
    ]
