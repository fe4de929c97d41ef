"""The `--layers auto` / `search` plot: each criterion's score per teacher layer, the layers kept marked (report and
model card)."""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt

PLOT_FILE = "layer_scores.png"


def plot_layer_scores(selection: dict[str, Any], path: str, title: str | None = None) -> str:
    """One panel per criterion of a `LayerSelection.to_dict()`: its score of every teacher layer, kept layers filled
    and dropped ones hollow; the mean rank that decided in the last panel. Returns `path`."""
    scores = dict(selection["scores"])
    criterion = selection.get("criterion", "auto")
    if criterion == "auto":  # search's combined score is its removal round, already a panel
        scores["mean rank (combined)"] = selection["combined"]
    chosen = set(selection["chosen"])
    fig, axes = plt.subplots(1, len(scores), figsize=(3.6 * len(scores), 3.2), squeeze=False)
    for ax, (name, values) in zip(axes[0], scores.items()):
        layers = list(range(1, len(values) + 1))
        colors = ["tab:blue" if layer in chosen else "white" for layer in layers]
        ax.bar(layers, values, color=colors, edgecolor="tab:blue")
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("teacher layer (filled: kept)")
        ax.set_xticks(layers)
    fig.suptitle(
        title or f"--layers {criterion}: kept {sorted(chosen)} ({selection.get('seconds', 0):.1f} s)", fontsize=10
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
