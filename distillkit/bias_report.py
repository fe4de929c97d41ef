"""The identity-bias section of report.md and its plots: each method beside the teacher, and whether it differs.

Input: bias.csv (model × identity) and bias_summary.csv (one row per model, with `method` and `seed`), as
run_eval.py and the study write them. A method is compared with the teacher seed by seed (the teacher of the same
seed; a lone teacher serves every seed): the mean difference of the Jigsaw final metric, of the BPSN power mean and
of FPED, with a 95% t interval across seeds (distillkit.stats.t_interval) and the paired t-test's p-value.

The family (docs/results/ANALYSIS_PLAN.md §4a): every method − teacher on each of those three measures, one family
per report (per data set), corrected together by `distillkit.stats.adjust_p` (Holm by default; a one-seed row has
no p-value and counts as p = 1 in the family's size). A difference is called by `distillkit.stats.call`: the
corrected p below alpha and the t interval excluding 0 (for a t-test the 95% t interval excludes 0 exactly when the
raw p is below 0.05, so a corrected p below 0.05 decides). One seed is never called.
"""

from __future__ import annotations

import math
import os
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from scipy import stats as scipy_stats  # noqa: E402

from .stats import A_BETTER, B_BETTER, NOT_DISTINGUISHABLE, adjust_p, call, t_interval  # noqa: E402

REFERENCE = "teacher"
COMPARED = (("final_metric", "final metric"), ("power_mean_bpsn_auc", "BPSN power mean"), ("fped", "FPED"))
BIAS_VS_TEACHER_FILE = "bias_vs_teacher.csv"
FPR_CHANGES = 5  # identities listed per method: the largest mean FPR change against the teacher
DIFFERS = "differs from its teacher"
NO_CALL = "one seed: no call"
CORRECTION_NAMES = {"holm": "Holm", "bh": "Benjamini–Hochberg", "none": "no correction"}
DIRECTION = {A_BETTER: "higher", B_BETTER: "lower"}  # method − teacher > 0 / < 0; "better" depends on the measure


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


def paired_p_value(diffs: np.ndarray) -> float:
    """Two-sided p of the paired t-test across seeds (a one-sample t-test of the per-seed differences against 0, the
    same as `scipy.stats.ttest_rel` on the two columns, as distillkit.stats.paired_difference uses); NaN with
    fewer than two seeds or identical differences."""
    if len(diffs) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance: no p-value, NaN says so
        return float(scipy_stats.ttest_1samp(diffs, 0.0).pvalue)


def compare_with_teacher(
    table: pd.DataFrame,
    summary: pd.DataFrame,
    reference: str = REFERENCE,
    correction: str = "holm",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """One row per (method, measure): mean over seeds of method − teacher, its 95% t interval, the paired t-test's p,
    the p corrected over the family (every row of this table: each method × the measures in COMPARED) and the call;
    plus the identities whose FPR changes most (mean over seeds, signed) in `fpr_changes`."""
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
                    "p_value": paired_p_value(diffs),
                    "fpr_changes": changes,
                }
            )
    columns = ["method", "measure", "label", "n_seeds", "mean_method", "mean_teacher", "diff", "ci_low", "ci_high"]
    columns += ["p_value", "p_adjusted", "correction", "family_size", "verdict", "fpr_changes"]
    if not rows:
        return pd.DataFrame(columns=columns)
    comparison = pd.DataFrame(rows)
    comparison["p_adjusted"] = adjust_p(comparison.p_value.to_numpy(), correction)
    comparison["correction"] = correction
    comparison["family_size"] = len(comparison)
    comparison["verdict"] = [
        NO_CALL if n < 2 else _verdict(call(p, low, high, alpha))
        for n, p, low, high in zip(comparison.n_seeds, comparison.p_adjusted, comparison.ci_low, comparison.ci_high)
    ]
    return comparison[columns]


def _verdict(decision: str) -> str:
    return f"{DIFFERS} ({DIRECTION[decision]})" if decision in DIRECTION else NOT_DISTINGUISHABLE


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


def _p(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def _comparison_sentence(rows: pd.DataFrame) -> str:
    method = rows.method.iloc[0]
    n = int(rows.n_seeds.iloc[0])
    parts = []
    for row in rows.itertuples():
        detail = f"; 95% t [{_f(row.ci_low)}, {_f(row.ci_high)}], corrected p {_p(row.p_adjusted)}" if n > 1 else ""
        parts.append(f"{row.label} {_f(row.mean_method)} vs {_f(row.mean_teacher)} ({row.diff:+.3f}{detail})")
    called = rows[rows.verdict.str.startswith(DIFFERS)]
    if n < 2:
        verdict = "one seed: no interval, so no call"
    elif called.empty:
        verdict = "not distinguishable from its teacher on any of them"
    else:
        verdict = f"{DIFFERS}: " + ", ".join(
            f"{r.label} {'higher' if r.diff > 0 else 'lower'} by {abs(r.diff):.3f}" for r in called.itertuples()
        )
    return (
        f"- **{method}** ({n} seed{'s' if n != 1 else ''}): {'; '.join(parts)} — {verdict}. "
        f"Largest FPR changes: {rows.fpr_changes.iloc[0]}."
    )


def _amount(row: object) -> str:
    return f"{row.label} {row.diff:+.3f} [{_f(row.ci_low)}, {_f(row.ci_high)}]"


def _differ_sentence(comparison: pd.DataFrame) -> str:
    """The paragraph's first claim: which methods differ from their teacher after the correction, and by how much."""
    called = comparison[comparison.verdict.str.startswith(DIFFERS)]
    several = comparison[comparison.n_seeds > 1]
    if several.empty:
        return "Every method has one seed: no interval and no p-value, so no difference from the teacher is called."
    if called.empty:
        return "No method differs from its teacher on any bias measure after the correction (not distinguishable)."
    by_method = [
        f"**{method}** ({', '.join(_amount(r) for r in rows.itertuples())})"
        for method, rows in called.groupby("method", sort=False)
    ]
    return f"Differ from their teacher after the correction (method − teacher): {'; '.join(by_method)}."


def _comparison_table(comparison: pd.DataFrame) -> list[str]:
    lines = [
        "| method | measure | seeds | method | teacher | method − teacher | 95% t interval | p | corrected p | call |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in comparison.itertuples():
        interval = f"[{_f(r.ci_low)}, {_f(r.ci_high)}]" if r.n_seeds > 1 else "–"
        lines.append(
            f"| {r.method} | {r.label} | {r.n_seeds} | {_f(r.mean_method)} | {_f(r.mean_teacher)} | {r.diff:+.3f} | "
            f"{interval} | {_p(r.p_value)} | {_p(r.p_adjusted)} | {r.verdict} |"
        )
    return lines


def bias_markdown(
    table: pd.DataFrame, summary: pd.DataFrame, comparison: pd.DataFrame, plots: dict[str, str], output_dir: str,
    source: str, alpha: float = 0.05,
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
        correction = str(comparison.correction.iloc[0])
        named = CORRECTION_NAMES.get(correction, correction)
        lines.append(
            "Method − teacher, paired by seed (mean over seeds, a 95% t interval across seeds and the paired t-test's "
            f"p when there are several). The family is every method × these {len(COMPARED)} measures "
            f"({int(comparison.family_size.iloc[0])} tests, docs/results/ANALYSIS_PLAN.md), corrected together "
            + ("(none: --correction none)" if correction == "none" else f"by {named}")
            + "; a difference is called only when its corrected p is below "
            f"{alpha:g} and its interval excludes 0, otherwise it is not "
            "distinguishable. One seed is never called. Higher is less biased for the final metric and the BPSN "
            "power mean, lower is fairer for FPED. FPR changes are per identity, mean over seeds, method − teacher."
        )
        lines += ["", _differ_sentence(comparison), ""]
        lines += _comparison_table(comparison)
        lines.append("")
        for _, rows in comparison.groupby("method", sort=False):
            lines.append(_comparison_sentence(rows))
    lines.append("")
    for title, path in plots.items():
        lines += [f"### Bias: {title}", "", f"![bias {title}]({os.path.relpath(path, output_dir)})", ""]
    return lines


def write_bias_section(
    report_path: str,
    table: pd.DataFrame,
    summary: pd.DataFrame,
    source: str,
    correction: str = "holm",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Append the bias section to report.md (plots in plots/bias_<method>.png); returns the comparison table, also
    written as bias_vs_teacher.csv. `correction` and `alpha`: over the bias family (every method × measure)."""
    output_dir = os.path.dirname(report_path)
    comparison = compare_with_teacher(table, summary, correction=correction, alpha=alpha)
    pairs = teacher_pairs(summary)
    plots = {}
    for method in dict.fromkeys(summary.method):
        models = summary.model[summary.method == method].tolist()
        teachers = [t for _, t in pairs.get(method, [])]
        path = os.path.join(output_dir, "plots", f"bias_{method}.png")
        plots[method] = plot_bias_beside_teacher(table, models, sorted(set(teachers)), method, path)
    comparison.to_csv(os.path.join(output_dir, BIAS_VS_TEACHER_FILE), index=False)
    with open(report_path, "a") as f:
        f.write("\n\n" + "\n".join(bias_markdown(table, summary, comparison, plots, output_dir, source, alpha)) + "\n")
    return comparison
