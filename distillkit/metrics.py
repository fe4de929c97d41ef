"""Classification metrics that stay honest on imbalanced data: F1 and ROC-AUC beside accuracy."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, roc_auc_score
from transformers import EvalPrediction


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, precision/recall/F1 (positive class for binary, macro otherwise), macro and weighted F1, ROC-AUC.

    `probs` is (n, num_labels). ROC-AUC is on the positive probability for binary tasks and macro one-vs-rest
    over the classes present in `labels` otherwise; NaN when it is undefined (a single class present).
    """
    num_labels = probs.shape[-1]
    preds = probs.argmax(axis=-1)
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
    }
    return metrics


def _roc_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    present = np.unique(labels)
    if len(present) < 2:
        return math.nan
    if probs.shape[-1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    # Macro one-vs-rest over the classes that occur: a class absent from the split has no AUC.
    scores = [roc_auc_score(labels == c, probs[:, c]) for c in present]
    return float(np.mean(scores))


def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """`Trainer(compute_metrics=...)` adapter: logits in, metrics out."""
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    return classification_metrics(softmax(np.asarray(logits, dtype=np.float64)), np.asarray(eval_pred.label_ids))
