"""Classification metrics that stay honest on imbalanced data: F1 and ROC-AUC beside accuracy."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def classification_metrics(
    probs: np.ndarray, labels: np.ndarray, preds: np.ndarray | None = None
) -> dict[str, float]:
    """Accuracy, precision/recall/F1 (positive class for binary, macro otherwise), macro and weighted F1, ROC-AUC,
    PR-AUC (average precision) and balanced accuracy — the last two are the honest ones on imbalanced data.

    `probs` is (n, num_labels); `preds` defaults to the argmax (pass thresholded decisions to score those).
    ROC-AUC and PR-AUC are on the positive probability for binary tasks and macro one-vs-rest over the classes
    present in `labels` otherwise; NaN when undefined (a single class present).
    """
    num_labels = probs.shape[-1]
    preds = probs.argmax(axis=-1) if preds is None else np.asarray(preds)
    label_ids = list(range(num_labels))
    binary = num_labels == 2
    average = "binary" if binary else "macro"
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, preds, labels=None if binary else label_ids, average=average, pos_label=1, zero_division=0
    )
    metrics = {
        "accuracy": float(accuracy_score(labels, preds)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "macro_f1": float(f1_score(labels, preds, labels=label_ids, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(labels, preds, labels=label_ids, average="weighted", zero_division=0)),
        "roc_auc": _roc_auc(probs, labels),
        "pr_auc": _pr_auc(probs, labels),
        "balanced_accuracy": float(balanced_accuracy_score(labels, preds)),
    }
    return metrics


def per_class_f1(labels: np.ndarray, preds: np.ndarray, num_labels: int) -> list[float]:
    """F1 of every class (one-vs-rest), so a rare class that vanishes shows up as 0 instead of hiding in an average."""
    return [float(x) for x in f1_score(labels, preds, labels=list(range(num_labels)), average=None, zero_division=0)]


def multilabel_metrics(probs: np.ndarray, labels: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    """Multi-label scores: micro/macro/weighted F1 of the thresholded `preds`, macro ROC-AUC and PR-AUC over the
    labels that have both values in `labels`, subset accuracy (every label right), and Hamming accuracy.

    `probs`, `labels` and `preds` are (n, num_labels); `f1` is the micro F1 (the headline number for multi-label).
    """
    labels = np.asarray(labels).astype(int)
    preds = np.asarray(preds).astype(int)
    scored = [j for j in range(labels.shape[1]) if 0 < labels[:, j].sum() < len(labels)]
    precision, recall, micro, _ = precision_recall_fscore_support(labels, preds, average="micro", zero_division=0)
    return {
        "accuracy": float((labels == preds).all(axis=1).mean()),  # subset accuracy
        "hamming_accuracy": float((labels == preds).mean()),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(micro),
        "micro_f1": float(micro),
        "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(labels, preds, average="weighted", zero_division=0)),
        "roc_auc": float(np.mean([roc_auc_score(labels[:, j], probs[:, j]) for j in scored])) if scored else math.nan,
        "pr_auc": (
            float(np.mean([average_precision_score(labels[:, j], probs[:, j]) for j in scored])) if scored else math.nan
        ),
    }


def per_label_table(probs: np.ndarray, labels: np.ndarray, preds: np.ndarray, names: list[str]) -> list[dict]:
    """One row per label: support, F1 at the decision rule, ROC-AUC and PR-AUC (NaN where a label is constant)."""
    rows = []
    for j, name in enumerate(names):
        y, p = np.asarray(labels)[:, j].astype(int), np.asarray(preds)[:, j].astype(int)
        both = 0 < y.sum() < len(y)
        rows.append(
            {
                "label": name,
                "support": int(y.sum()),
                "predicted": int(p.sum()),
                "f1": float(f1_score(y, p, zero_division=0)),
                "roc_auc": float(roc_auc_score(y, probs[:, j])) if both else math.nan,
                "pr_auc": float(average_precision_score(y, probs[:, j])) if both else math.nan,
            }
        )
    return rows


def _ranking_score(score, probs: np.ndarray, labels: np.ndarray) -> float:
    """`score` (ROC-AUC or average precision) on the positive class, or its macro one-vs-rest over the classes
    that occur (a class absent from the split has no score); NaN with a single class present."""
    present = np.unique(labels)
    if len(present) < 2:
        return math.nan
    if probs.shape[-1] == 2:
        return float(score(labels, probs[:, 1]))
    return float(np.mean([score(labels == c, probs[:, c]) for c in present]))


def _roc_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    return _ranking_score(roc_auc_score, probs, labels)


def _pr_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    return _ranking_score(average_precision_score, probs, labels)


def never_predicted(labels: np.ndarray, preds: np.ndarray, names: list[str]) -> list[str]:
    """Names of the labels (classes) that occur in `labels` but that the decision rule never predicts.

    Both arrays are 0/1 with one column per label, or (single-label data) 1-D class ids. Such a class has F1 0
    whatever the model's ranking: a majority-only default, or a threshold the class never reaches.
    """
    labels, preds = np.asarray(labels), np.asarray(preds)
    if labels.ndim == 1:  # class ids: one column per class
        eye = np.eye(len(names), dtype=np.int64)
        labels, preds = eye[labels.astype(int)], eye[preds.astype(int)]
    return [name for j, name in enumerate(names) if labels[:, j].sum() > 0 and preds[:, j].sum() == 0]


def never_predicted_warning(model: str, missing: list[str], split: str, what: str = "class") -> str:
    """The one line logged (and shown in the report) for a model that never predicts some occurring classes."""
    names = ", ".join(missing)
    return (
        f"{what} {names} {'is' if len(missing) == 1 else 'are'} never predicted by {model} on {split} "
        f"(F1 0.00 for {'it' if len(missing) == 1 else 'them'}): check the decision rule (--tune_decision) and "
        "--class_weights"
    )
