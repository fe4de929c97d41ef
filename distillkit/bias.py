"""Identity-term bias of a toxicity classifier: per-identity AUCs, error rates and their summaries.

The measures of the field, as pure functions of (toxic score, gold toxic label, toxic decision, identity):

- subgroup AUC: the AUC on the texts that name the identity alone;
- BPSN AUC (background positive, subgroup negative): the identity's non-toxic texts against the toxic texts that do
  not name it. Low means the model scores harmless mentions of the identity as toxic;
- BNSP AUC (background negative, subgroup positive): the identity's toxic texts against the non-toxic texts that do
  not name it. Low means abuse of the identity is scored as harmless;
  (Borkan et al. 2019, "Nuanced Metrics for Measuring Unintended Bias with Real Data for Text Classification")
- the power mean (p = -5) of each AUC over identities and the Jigsaw Unintended Bias final metric,
  0.25 · overall AUC + 0.75 · the mean of the three power means;
- the false positive / false negative rate of the model's own decision rule per identity, and Dixon et al. 2018's
  FPED / FNED: the sum over identities of |rate_identity - rate_overall|.

Texts with an empty identity belong to the background of every identity and to no subgroup. The overall AUC and
rates are over every text. An identity whose texts are all one label has no subgroup AUC (NaN); NaN AUCs and rates
are left out of the power means and of FPED / FNED.

The toxic score of a model (`toxic_class_ids`, `toxic_scores`): a binary model's p(class 1); a multi-class or
multi-label model's summed probability of the classes named as toxic (for multi-label, the sum of those labels'
sigmoids, which may exceed 1: only its order matters to the AUCs). Its toxic decision: the saved decision rule's
predicted class is a toxic one (multi-label: any toxic label is predicted).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

POWER = -5.0  # the Jigsaw competition's p: the worst identities dominate the mean
WORST = 5  # identities listed as the worst by BPSN AUC
BIAS_COLUMNS = ["model", "identity", "n", "subgroup_auc", "bpsn_auc", "bnsp_auc", "fpr", "fnr"]
AUC_COLUMNS = ("subgroup_auc", "bpsn_auc", "bnsp_auc")


def auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """ROC-AUC by the Mann-Whitney rank sum (ties count one half, as sklearn's roc_auc_score); NaN with one class."""
    positives = np.asarray(positives, dtype=bool)
    n_pos = int(positives.sum())
    n_neg = len(positives) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def subgroup_auc(scores: np.ndarray, labels: np.ndarray, in_subgroup: np.ndarray) -> float:
    """AUC on the subgroup's texts only."""
    in_subgroup = np.asarray(in_subgroup, dtype=bool)
    return auc(np.asarray(scores)[in_subgroup], np.asarray(labels)[in_subgroup])


def bpsn_auc(scores: np.ndarray, labels: np.ndarray, in_subgroup: np.ndarray) -> float:
    """AUC of the subgroup's non-toxic texts (negatives) against the background's toxic texts (positives)."""
    labels, in_subgroup = np.asarray(labels, dtype=bool), np.asarray(in_subgroup, dtype=bool)
    rows = (in_subgroup & ~labels) | (~in_subgroup & labels)
    return auc(np.asarray(scores)[rows], labels[rows])


def bnsp_auc(scores: np.ndarray, labels: np.ndarray, in_subgroup: np.ndarray) -> float:
    """AUC of the subgroup's toxic texts (positives) against the background's non-toxic texts (negatives)."""
    labels, in_subgroup = np.asarray(labels, dtype=bool), np.asarray(in_subgroup, dtype=bool)
    rows = (in_subgroup & labels) | (~in_subgroup & ~labels)
    return auc(np.asarray(scores)[rows], labels[rows])


def error_rates(labels: np.ndarray, preds: np.ndarray) -> tuple[float, float]:
    """(false positive rate, false negative rate) of toxic decisions; NaN where there is no negative / positive."""
    labels, preds = np.asarray(labels, dtype=bool), np.asarray(preds, dtype=bool)
    negatives, positives = int((~labels).sum()), int(labels.sum())
    fpr = float((preds & ~labels).sum() / negatives) if negatives else math.nan
    fnr = float((~preds & labels).sum() / positives) if positives else math.nan
    return fpr, fnr


def power_mean(values: Sequence[float], p: float = POWER) -> float:
    """(mean of v**p) ** (1/p) over the non-NaN values; 0 when one is 0 (p < 0); NaN when none is left."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if len(v) == 0:
        return math.nan
    if p < 0 and (v == 0).any():
        return 0.0
    return float(np.mean(v**p) ** (1.0 / p))


def final_metric(overall_auc: float, power_means: Sequence[float], overall_weight: float = 0.25) -> float:
    """The Jigsaw Unintended Bias final metric: w · overall AUC + (1 - w) · the mean of the bias AUCs' power means."""
    return float(overall_weight * overall_auc + (1 - overall_weight) * np.mean(power_means))


def equality_difference(rates: Sequence[float], overall: float) -> float:
    """Dixon et al.'s equality difference: the sum over identities of |rate - overall rate| (NaN rates skipped)."""
    return float(sum(abs(r - overall) for r in rates if not math.isnan(r)))


def identity_table(
    scores: np.ndarray, labels: np.ndarray, preds: np.ndarray, identities: Sequence[str]
) -> pd.DataFrame:
    """One row per identity (sorted by name; an empty identity is background only): n, the three AUCs, FPR, FNR."""
    scores = np.asarray(scores, dtype=np.float64)
    labels, preds = np.asarray(labels, dtype=bool), np.asarray(preds, dtype=bool)
    identities = np.asarray([("" if x is None else str(x)) for x in identities], dtype=object)
    rows = []
    for identity in sorted(set(identities) - {""}):
        member = identities == identity
        fpr, fnr = error_rates(labels[member], preds[member])
        rows.append(
            {
                "identity": identity,
                "n": int(member.sum()),
                "subgroup_auc": subgroup_auc(scores, labels, member),
                "bpsn_auc": bpsn_auc(scores, labels, member),
                "bnsp_auc": bnsp_auc(scores, labels, member),
                "fpr": fpr,
                "fnr": fnr,
            }
        )
    return pd.DataFrame(rows, columns=BIAS_COLUMNS[1:])


def worst_identities(table: pd.DataFrame, column: str = "bpsn_auc", k: int = WORST) -> list[str]:
    """The k identities with the lowest `column` (ties by name), NaN left out."""
    ranked = table.dropna(subset=[column]).sort_values([column, "identity"], kind="stable")
    return ranked.identity.head(k).tolist()


def bias_summary(table: pd.DataFrame, scores: np.ndarray, labels: np.ndarray, preds: np.ndarray) -> dict[str, object]:
    """One model's summary (`bias_summary.csv`): overall AUC and rates, the power mean of each AUC over identities,
    the final metric, FPED / FNED and the five worst identities by BPSN AUC ("a; b; c; d; e")."""
    overall = auc(scores, labels)
    fpr, fnr = error_rates(labels, preds)
    means = {f"power_mean_{c}": power_mean(table[c].tolist()) for c in AUC_COLUMNS}
    return {
        "n": len(labels),
        "identities": len(table),
        "overall_auc": overall,
        **means,
        "final_metric": final_metric(overall, list(means.values())),
        "fpr": fpr,
        "fnr": fnr,
        "fped": equality_difference(table.fpr.tolist(), fpr),
        "fned": equality_difference(table.fnr.tolist(), fnr),
        "worst_bpsn": "; ".join(worst_identities(table)),
    }


# --- what "toxic" means for a model ------------------------------------------------------------------------------


def toxic_class_ids(spec: Sequence[str] | None, id2label: dict[int, str], multi_label: bool = False) -> list[int]:
    """The class (label) ids whose probability is the toxic score. `spec`: class names or ids (--bias_toxic_classes);
    None: class 1 of a binary single-label model, else a ValueError asking for the flag."""
    names = {int(i): str(n) for i, n in id2label.items()}
    if not spec:
        if len(names) == 2 and not multi_label:
            return [1]
        kind = "multi-label" if multi_label else f"{len(names)}-class"
        raise ValueError(
            f"a {kind} model ({', '.join(names[i] for i in sorted(names))}) has no one toxic class: name the toxic "
            "ones with --bias_toxic_classes (names or ids; their probabilities are summed)"
        )
    by_name = {n: i for i, n in names.items()}
    ids = []
    for item in spec:
        item = str(item).strip()
        if item in by_name:
            ids.append(by_name[item])
        elif item.lstrip("-").isdigit() and int(item) in names:
            ids.append(int(item))
        else:
            raise ValueError(
                f"--bias_toxic_classes {item}: the model has no such class; its classes are "
                + ", ".join(f"{i}={names[i]}" for i in sorted(names))
            )
    return sorted(set(ids))


def toxic_scores(probs: np.ndarray, toxic_ids: Sequence[int]) -> np.ndarray:
    """The summed probability of the toxic classes (labels), one per text."""
    return np.asarray(probs, dtype=np.float64)[:, list(toxic_ids)].sum(axis=1)


def toxic_decisions(preds: np.ndarray, toxic_ids: Sequence[int]) -> np.ndarray:
    """Toxic per the model's decision rule: its predicted class is toxic (multi-label, 0/1 rows: any toxic label)."""
    preds = np.asarray(preds)
    if preds.ndim == 2:
        return preds[:, list(toxic_ids)].astype(bool).any(axis=1)
    return np.isin(preds, list(toxic_ids))


# --- the bias set ------------------------------------------------------------------------------------------------


def stratified_sample(identities: Sequence[str], labels: np.ndarray, per_identity: int, seed: int) -> np.ndarray:
    """Sorted row indices: at most `per_identity` rows of each identity (the empty identity, i.e. the background-only
    rows, counts as one), split over its labels in proportion to their counts (largest remainders), seeded."""
    rng = np.random.default_rng(seed)
    identities = np.asarray([("" if x is None else str(x)) for x in identities], dtype=object)
    labels = np.asarray(labels, dtype=bool)
    keep = []
    for identity in sorted(set(identities)):
        member = np.flatnonzero(identities == identity)
        if len(member) <= per_identity:
            keep.append(member)
            continue
        cells = [member[labels[member] == value] for value in (False, True)]
        exact = [per_identity * len(c) / len(member) for c in cells]
        take = [int(math.floor(x)) for x in exact]
        for j in sorted(range(2), key=lambda j: exact[j] - take[j], reverse=True)[: per_identity - sum(take)]:
            take[j] += 1
        keep += [rng.choice(c, size=t, replace=False) for c, t in zip(cells, take) if t]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
