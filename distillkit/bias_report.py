"""The identity-bias section of report.md and its plots: each method beside the teacher, and whether it differs.

Input: bias.csv (model × identity) and bias_summary.csv (one row per model, with `method` and `seed`), as
run_eval.py and the study write them. A method is compared with the teacher seed by seed (the teacher of the same
seed; a lone teacher serves every seed): the mean difference of the Jigsaw final metric, of the BPSN power mean and
of FPED, with a 95% t interval across seeds (distillkit.stats.t_interval). As in the study's paired table, a
difference is called only when its interval excludes 0, one seed is never called, and there is no correction for
the number of comparisons.
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .stats import NOT_DISTINGUISHABLE, t_interval  # noqa: E402

REFERENCE = "teacher"
COMPARED = (("final_metric", "final metric"), ("power_mean_bpsn_auc", "BPSN power mean"), ("fped", "FPED"))
BIAS_VS_TEACHER_FILE = "bias_vs_teacher.csv"
FPR_CHANGES = 5  # identities listed per method: the largest mean FPR change against the teacher


def _seed(value: object) -> object:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)


def teacher_pairs(summary: pd.DataFrame, reference: str = REFERENCE) -> dict[str, list[tuple[str, str]]]:
    """method → [(model, its teacher model), ...]: the teacher of the same seed, else the only teacher."""
    teachers = summary[summary.method == reference]
    by_seed = {_seed(s): m for m, s in zip(teachers.model, teachers.seed)}
    lone = teachers.model.iloc[0] if len(teachers) == 1 else None
    pairs: dict[str, list[tuple[str, str]]] = {}
    for model, method, seed in zip(summary.model, summary.method, summary.seed):
        if method == reference:
            continue
        teacher = by_seed.get(_seed(seed), lone)
        if teacher is not None:
            pairs.setdefault(method, []).append((model, teacher))
    return pairs


def _per_identity(table: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """Mean BPSN AUC and FPR per identity over `models`."""
    return table[table.model.isin(models)].groupby("identity")[["bpsn_auc", "fpr"]].mean()


def compare_with_teacher(table: pd.DataFrame, summary: pd.DataFrame, reference: str = REFERENCE) -> pd.DataFrame:
    """One row per (method, measure): mean over seeds of method − teacher, its 95% t interval and the call; plus the
    identities whose FPR changes most (mean over seeds, signed) in `fpr_changes`."""
    values = summary.set_index("model")
    rows = []
    for method, pairs in teacher_pairs(summary, reference).items():
        students, teachers = [m for m, _ in pairs], [t for _, t in pairs]
        fpr_diff = (
            table.set_index(["model", "identity"]).fpr.unstack().loc[students].to_numpy()
            - table.set_index(["model", "identity"]).fpr.unstack().loc[teachers].to_numpy()
        ).mean(axis=0)
        identities = table.set_index(["model", "identity"]).fpr.unstack().columns
        order = np.argsort(-np.abs(np.nan_to_num(fpr_diff)), kind="stable")[:FPR_CHANGES]
        changes = "; ".join(f"{identities[i]} {fpr_diff[i]:+.3f}" for i in order)
        for column, label in COMPARED:
            diffs = values.loc[students, column].to_numpy(float) - values.loc[teachers, column].to_numpy(float)
            low, high = t_interval(diffs)
            called = not math.isnan(low) and (low > 0 or high < 0)
            rows.append(
                {
                    "method": method,
                    "measure": column,
                    "label": label,
                    "n_seeds": len(diffs),
                    "mean_method": float(values.loc[students, column].mean()),
                    "mean_teacher": float(values.loc[teachers, column].mean()),
                    "diff": float(diffs.mean()),
                    "ci_low": low,
                    "ci_high": high,
                    "verdict": ("higher" if low > 0 else "lower") if called else NOT_DISTINGUISHABLE,
                    "fpr_changes": changes,
                }
            )
    return pd.DataFrame(rows)


def plot_bias_beside_teacher(
    table: pd.DataFrame, models: list[str], teachers: list[str], title: str, path: str
) -> str:
    """Identities (sorted by the method's BPSN AUC, worst at the top) × BPSN AUC and FPR: the method (mean over its
    models) beside the teacher (mean over its models; none for the teacher itself)."""
    own = _per_identity(table, models).sort_values("bpsn_auc", ascending=False)
    ref = _per_identity(table, teachers).reindex(own.index) if teachers else None
    y = np.arange(len(own))
    fig, axes = plt.subplots(1, 2, figsize=(10, max(3.0, 0.22 * len(own) + 1.2)), sharey=True)
    height = 0.4 if ref is not None else 0.8
    for ax, column, xlabel in ((axes[0], "bpsn_auc", "BPSN AUC"), (axes[1], "fpr", "false positive rate")):
        ax.barh(y + (height / 2 if ref is not None else 0), own[column], height, label=title, color="tab:orange")
        if ref is not None:
            ax.barh(y - height / 2, ref[column], height, label=REFERENCE, color="tab:blue")
        ax.set_xlabel(xlabel)
        ax.set_xlim(0, 1)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, own.index, fontsize=7)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Identity bias: {title}" + (f" beside the {REFERENCE}" if ref is not None else ""))
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _f(value: float, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _comparison_sentence(rows: pd.DataFrame) -> str:
    method = rows.method.iloc[0]
    n = int(rows.n_seeds.iloc[0])
    parts = []
    for row in rows.itertuples():
        interval = f" [{_f(row.ci_low)}, {_f(row.ci_high)}]" if n > 1 else ""
        parts.append(f"{row.label} {_f(row.mean_method)} vs {_f(row.mean_teacher)} ({row.diff:+.3f}{interval})")
    called = rows[rows.verdict != NOT_DISTINGUISHABLE]
    if n < 2:
        verdict = "one seed: no interval, so no call"
    elif called.empty:
        verdict = "not distinguishable from the teacher on any of them"
    else:
        verdict = "differs from the teacher: " + ", ".join(f"{r.label} {r.verdict}" for r in called.itertuples())
    return (
        f"- **{method}** ({n} seed{'s' if n != 1 else ''}): {'; '.join(parts)} — {verdict}. "
        f"Largest FPR changes: {rows.fpr_changes.iloc[0]}."
    )


def bias_markdown(
    table: pd.DataFrame, summary: pd.DataFrame, comparison: pd.DataFrame, plots: dict[str, str], output_dir: str,
    source: str,
) -> list[str]:
    lines = [
        "## Identity bias (`bias.csv`, `bias_summary.csv`)",
        "",
        (
            f"Every model scored on `{source}` ({int(summary.n.iloc[0])} texts, {int(summary.identities.iloc[0])} "
            "identities). Subgroup AUC: the identity's texts alone; BPSN AUC: its non-toxic texts against the toxic "
            "texts of the background (low: harmless mentions of it are flagged); BNSP AUC: its toxic texts against "
            "the background's non-toxic ones. The power means (p = −5) weigh the worst identities most; final = "
            "0.25 · overall AUC + 0.75 · mean of the three power means (the Jigsaw Unintended Bias metric). FPR/FNR "
            "are at each model's own decision rule; FPED/FNED sum |identity rate − overall rate| over identities "
            "(Dixon et al. 2018): lower is fairer."
        ),
        "",
        "| model | method | seed | overall AUC | subgroup PM | BPSN PM | BNSP PM | final | FPR | FNR | FPED | FNED "
        "| worst by BPSN |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary.itertuples():
        lines.append(
            f"| {r.model} | {r.method} | {'–' if _seed(r.seed) is None else _seed(r.seed)} | {_f(r.overall_auc)} | "
            f"{_f(r.power_mean_subgroup_auc)} | {_f(r.power_mean_bpsn_auc)} | {_f(r.power_mean_bnsp_auc)} | "
            f"{_f(r.final_metric)} | {_f(r.fpr)} | {_f(r.fnr)} | {_f(r.fped, 2)} | {_f(r.fned, 2)} | {r.worst_bpsn} |"
        )
    lines += ["", "### Against the teacher", ""]
    if comparison.empty:
        lines.append(f"No model has a `{REFERENCE}` among the scored models to be compared with.")
    else:
        lines.append(
            "Method − teacher, paired by seed (mean, with a 95% t interval across seeds when there are several). A "
            "difference is called only when the interval excludes 0; no correction for the number of comparisons. "
            "FPR changes are per identity, mean over seeds, method − teacher."
        )
        lines.append("")
        for _, rows in comparison.groupby("method", sort=False):
            lines.append(_comparison_sentence(rows))
    lines.append("")
    for title, path in plots.items():
        lines += [f"### Bias: {title}", "", f"![bias {title}]({os.path.relpath(path, output_dir)})", ""]
    return lines


def write_bias_section(
    report_path: str, table: pd.DataFrame, summary: pd.DataFrame, source: str
) -> pd.DataFrame:
    """Append the bias section to report.md (plots in plots/bias_<method>.png); returns the comparison table, also
    written as bias_vs_teacher.csv."""
    output_dir = os.path.dirname(report_path)
    comparison = compare_with_teacher(table, summary)
    pairs = teacher_pairs(summary)
    plots = {}
    for method in dict.fromkeys(summary.method):
        models = summary.model[summary.method == method].tolist()
        teachers = [t for _, t in pairs.get(method, [])]
        path = os.path.join(output_dir, "plots", f"bias_{method}.png")
        plots[method] = plot_bias_beside_teacher(table, models, sorted(set(teachers)), method, path)
    comparison.to_csv(os.path.join(output_dir, BIAS_VS_TEACHER_FILE), index=False)
    with open(report_path, "a") as f:
        f.write("\n\n" + "\n".join(bias_markdown(table, summary, comparison, plots, output_dir, source)) + "\n")
    return comparison
