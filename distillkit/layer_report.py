"""`--layers auto` in a report: per model, the layers chosen, each criterion's score per teacher layer and what choosing
cost beside the student's training. run_eval.py writes it for the models it scores; the study gathers its stages'.

The table (`LAYER_SELECTION_FILE`, one row per model) keeps each score as a space-separated list over teacher layers
1..n, so models of different depths share one CSV and it reads back into the plot without the model directories.
"""

from __future__ import annotations

import math
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

LAYER_SELECTION_FILE = "layer_selection.csv"
PLOT_NAME = "layer_selection.png"
SCORE_PREFIX = "score_"
BAR = 0.10  # issue 24: choosing may take at most 10% of the student's training


def _joined(values: list[float]) -> str:
    return " ".join(f"{v:.6g}" for v in values)


def _split(cell: str) -> list[float]:
    return [float(v) for v in str(cell).split()]


def layer_selection_rows(selections: dict[str, dict[str, Any]], train_runtimes: dict[str, float]) -> pd.DataFrame:
    """One row per model from its `LayerSelection.to_dict()` (run record `layer_selection`) and its training seconds."""
    rows = []
    for model, selection in selections.items():
        runtime = float(train_runtimes.get(model, math.nan))
        row = {
            "model": model,
            "criterion": selection.get("criterion", "auto"),
            "layers_chosen": " ".join(map(str, selection["chosen"])),
            "layer_selection_seconds": selection.get("seconds", math.nan),
            "train_runtime_s": runtime,
            "share_of_training": selection.get("seconds", math.nan) / runtime if runtime > 0 else math.nan,
            "train_rows": selection.get("train_rows"),
            "validation_rows": selection.get("validation_rows"),
            "metric": selection.get("metric"),
            "teacher_metric": selection.get("teacher_metric"),
            "probes": selection.get("probes", 0),
            "probe_steps": selection.get("probe_steps", 0),
        }
        for name, values in selection["scores"].items():
            row[SCORE_PREFIX + name] = _joined(values)
        row["mean_rank"] = _joined(selection["combined"])
        rows.append(row)
    return pd.DataFrame(rows)


def plot_layer_selection(table: pd.DataFrame, path: str) -> str:
    """One panel per criterion: every model's score of each teacher layer (dots) and their mean (bar); the last panel
    counts how many models kept each layer."""
    criteria = [c for c in table.columns if c.startswith(SCORE_PREFIX)]  # auto's and search's: NaN where not scored
    depth = max(len(_split(v)) for c in criteria for v in table[c].dropna())
    layers = np.arange(1, depth + 1)
    fig, axes = plt.subplots(1, len(criteria) + 1, figsize=(3.6 * (len(criteria) + 1), 3.2), squeeze=False)
    for ax, column in zip(axes[0], criteria):
        scores = [_split(v) for v in table[column].dropna()]
        for values in scores:
            ax.plot(layers[: len(values)], values, "o", color="tab:blue", alpha=0.5, markersize=4)
        same_depth = [v for v in scores if len(v) == depth]
        if same_depth:
            ax.bar(layers, np.mean(same_depth, axis=0), color="none", edgecolor="tab:blue")
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_title(column[len(SCORE_PREFIX) :], fontsize=9)
        ax.set_xlabel("teacher layer")
        ax.set_xticks(layers)
    kept = np.zeros(depth)
    for cell in table.layers_chosen:
        for layer in str(cell).split():
            kept[int(layer) - 1] += 1
    axes[0][-1].bar(layers, kept, color="tab:blue")
    axes[0][-1].set_title(f"times kept (of {len(table)} models)", fontsize=9)
    axes[0][-1].set_xlabel("teacher layer")
    axes[0][-1].set_xticks(layers)
    fig.suptitle(
        "--layers auto/search: score per teacher layer (dots: models, bars: mean) and the layers kept", fontsize=10
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def layer_selection_markdown(table: pd.DataFrame, plot_link: str) -> list[str]:
    criterion = table.criterion.fillna("auto") if "criterion" in table else pd.Series("auto", index=table.index)
    searched = table[criterion == "search"]
    shares = table.share_of_training[criterion == "auto"].dropna()
    over = int((shares > BAR).sum())
    lines = [
        "## Layer selection (`--layers auto`" + (" / `search`)" if len(searched) else ")"),
        "",
        "Each `auto` model's layers were chosen on its fine-tuned teacher (docs/layer_selection.md): Block Influence "
        "on a sample of training rows and the validation metric with each layer skipped, combined by mean rank. "
        f"`share` is the seconds spent choosing over the student's `train_runtime` (issue 24's bar for `auto`: at "
        f"most {BAR:.0%}; {over} of {len(shares)} `auto` models over it).",
        "",
    ]
    if len(searched):
        lines += [
            "Each `search` model's layers were chosen by greedy removal with short distillation probes: "
            + "; ".join(f"{r.model}: {r.probes} probes of {r.probe_steps} steps" for r in searched.itertuples())
            + ". A search trains several students to choose one: its share is reported, not held to the `auto` bar.",
            "",
        ]
    lines += [
        "| model | layers kept | choosing (s) | student training (s) | share | rows (train / validation) | "
        "metric: teacher |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples():
        lines.append(
            f"| {row.model} | {row.layers_chosen} | {row.layer_selection_seconds:.1f} | {row.train_runtime_s:.0f} | "
            f"{row.share_of_training:.1%} | {row.train_rows} / {row.validation_rows} | "
            f"{row.metric}: {row.teacher_metric:.3f} |"
        )
    lines += ["", f"![layer scores]({plot_link})"]
    return lines


def write_layer_selection_section(report_path: str, table: pd.DataFrame) -> pd.DataFrame:
    """Append the section to report.md, with `LAYER_SELECTION_FILE` and plots/`PLOT_NAME` beside it."""
    output_dir = os.path.dirname(report_path)
    table.to_csv(os.path.join(output_dir, LAYER_SELECTION_FILE), index=False)
    plot_layer_selection(table, os.path.join(output_dir, "plots", PLOT_NAME))
    with open(report_path, "a") as f:
        f.write("\n\n" + "\n".join(layer_selection_markdown(table, f"plots/{PLOT_NAME}")) + "\n")
    return table
