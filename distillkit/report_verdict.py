"""The report's prose made only from the numbers: the verdict sentences (best method, paired calls, the Pareto
front), and the flagged lines before it (class distribution, never-predicted classes, a shared machine, what the
metrics mean)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .methods import CONTROLS
from .report_summary import COST_WORDS, cost_column, pareto_front, same_cost_pairs, too_few_seeds
from .report_tables import _interval, _p_text, call_words
from .stats import (
    A_BETTER,
    B_BETTER,
    EXPLORATORY,
    METRIC_LABELS,
    NOT_DISTINGUISHABLE,
    SIGN_FLIP,
    is_multi_label,
    study_pairs,
)
from .tasks import MULTI_LABEL

def _pair_sentence(row: pd.Series) -> str:
    metric = METRIC_LABELS.get(row.metric, row.metric)
    seeds = f"{int(row.n_seeds)} seed{'s' if row.n_seeds > 1 else ''}"
    both = f"95% CI over seeds and texts {_interval(row.hier_low, row.hier_high)}"
    if row.n_seeds < 2:
        ci = f"one seed, so no interval across seeds and no p-value; {both}"
    else:
        ci = f"{both}; {_p_text(row)}; across {seeds} {_interval(row.ci_low, row.ci_high)}"
    return f"{row.a} − {row.b}: {metric} {row['diff']:+.3f} ({ci}): **{call_words(row.verdict, row.a, row.b, 'is better')}**."


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
