"""Exploring an evaluation's predictions: label distributions, each model's mistakes, where two models disagree.

Reads what `run_eval.py` writes (its `--output_dir`; `run_compare.py` writes it as EXP/report): `results.csv`, one
row per model, and `predictions/NAME.csv`, one row per test text with the columns `text, label, label_name, pred,
pred_name, prob_0 ... prob_{k-1}` (`distillkit.evaluation.evaluate_model`). Read-only and loaded once; nothing here
knows about HTTP: a bad question raises `RequestError`, which `app.py` turns into a JSON error.

A multi-label model's file has the same columns, with `label` and `pred` holding label-id lists (`"0,3"`, as
go_emotions' `labels`; empty: no label), `label_name`/`pred_name` the names joined the same way and `prob_i` each
label's sigmoid. It is told apart by a `problem_type` column (`multi_label_classification`) or by any list or empty
cell. A multi-label text is right when its predicted label set is exactly the gold one (subset accuracy), and the
counts are per label.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .cli import UsageError
from .serving import RequestError
from .tasks import MULTI_LABEL, SINGLE_LABEL, label_id_lists, multi_hot

logger = logging.getLogger(__name__)

REPORT_SUBDIR = "report"  # where run_compare.py has run_eval.py write: EXP/report
PREDICTIONS_SUBDIR = "predictions"
RESULTS_FILE = "results.csv"
REQUIRED_COLUMNS = ("text", "label", "pred")
MAX_LIMIT = 100  # rows one /api/errors or /api/disagreements page may ask for
DEFAULT_LIMIT = 20
# results.csv columns the page shows, in its order (the file has more: intervals, CPU times, paths).
RESULT_COLUMNS = (
    "model",
    "method",
    "layers",
    "params",
    "trainable_pct",
    "serving_size_mb",
    "f1",
    "macro_f1",
    "roc_auc",
    "pr_auc",
    "accuracy",
    "latency_ms_b1",
    "throughput_b32",
    "samples",
    "problem_type",  # not a column on the page: it says what f1 and accuracy mean for the row
)
DISAGREEMENT_KINDS = ("all", "only_a", "only_b", "both_wrong")


def make_command(experiment_dir: str | None) -> str:
    """The command that writes the evaluation output, for the one-line reason when there is none."""
    exp = experiment_dir or "EXP"
    return (
        f"python run_eval.py --experiment_dir {exp} --dataset_name DATA --output_dir {os.path.join(exp, REPORT_SUBDIR)}"
        " (run_compare.py's eval stage runs it)"
    )


@dataclass
class Predictions:
    """One model's predictions on the test split, as arrays."""

    name: str
    texts: np.ndarray  # (n,) object
    gold: np.ndarray  # (n,) int; multi-label: (n, labels) 0/1
    pred: np.ndarray  # (n,) int; multi-label: (n, labels) 0/1
    probs: np.ndarray  # (n, classes)
    labels: list[str] = field(default_factory=list)  # this model's class names by id (its own file spells them)

    def label(self, class_id: int) -> str:
        return self.labels[class_id] if class_id < len(self.labels) else str(class_id)

    @property
    def multi_label(self) -> bool:
        return self.gold.ndim == 2

    @property
    def correct(self) -> np.ndarray:
        if self.multi_label:  # the whole label set, as subset accuracy counts it
            return (self.pred == self.gold).all(axis=1)
        return self.pred == self.gold

    def differs(self, other: Predictions) -> np.ndarray:
        """Texts this model labels unlike `other` (multi-label: any label decided differently)."""
        return (self.pred != other.pred).any(axis=1) if self.multi_label else self.pred != other.pred

    def confidence(self, rows: np.ndarray, wrong_only: bool = False) -> np.ndarray:
        """How sure the model was of its answer on these rows: single-label, the probability of its label.

        Multi-label, each label's decision has a probability (p when decided on, 1 - p when not): the least sure of
        them, or with `wrong_only` the surest of the wrongly decided ones (a confident mistake ranks first).
        """
        if not self.multi_label:
            return self.probs[rows, self.pred[rows]]
        decided = np.where(self.pred[rows] == 1, self.probs[rows], 1 - self.probs[rows])
        if wrong_only:
            return np.where(self.pred[rows] != self.gold[rows], decided, -np.inf).max(axis=1, initial=-np.inf)
        return decided.min(axis=1, initial=np.inf)


def _is_multi_label(frame: pd.DataFrame) -> bool:
    if "problem_type" in frame.columns and len(frame):
        return str(frame["problem_type"].iloc[0]) == MULTI_LABEL
    cells = pd.concat([frame["label"], frame["pred"]]).astype(str)
    return bool((cells.str.contains(",") | (cells.str.strip() == "")).any())


def read_predictions(path: str, name: str) -> tuple[Predictions, dict[int, str]]:
    """A predictions CSV and the class names it spells out (label_name / pred_name beside the ids)."""
    frame = pd.read_csv(path, keep_default_na=False)  # a text "NA" or "" stays a text
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    prob_columns = sorted((c for c in frame.columns if c.startswith("prob_")), key=lambda c: int(c[5:]))
    if missing or not prob_columns:
        raise UsageError(
            f"{path}: not a run_eval.py predictions file (missing {', '.join(missing) or 'prob_0 ...'}); "
            "point --report_dir at run_eval.py's --output_dir"
        )
    probs = np.stack([_numbers(frame, c, path, low=0.0, high=1.0) for c in prob_columns], axis=1)
    num_classes = probs.shape[1]
    multi_label = _is_multi_label(frame)
    if multi_label:
        try:
            gold, pred = (multi_hot(label_id_lists(frame[c]), num_classes).astype(np.int64) for c in ("label", "pred"))
        except ValueError as err:  # an id outside the prob_ columns, or not a number
            raise UsageError(f"{path}: a label list is not label ids 0..{num_classes - 1} ({err})") from None
    else:
        gold, pred = (_numbers(frame, c, path, integer=True).astype(np.int64) for c in ("label", "pred"))
        if len(frame) and (gold.min() < 0 or max(gold.max(), pred.max()) >= num_classes):
            raise UsageError(f"{path}: a label or prediction is outside 0..{num_classes - 1} (the prob_ columns)")
    texts = frame["text"].astype(str).to_numpy(dtype=object)
    names = spelled_names(frame, multi_label, path)
    labels = [names.get(i, str(i)) for i in range(num_classes)]
    return Predictions(name=name, texts=texts, gold=gold, pred=pred, probs=probs, labels=labels), names


def _numbers(
    frame: pd.DataFrame, column: str, path: str, low: float = -math.inf, high: float = math.inf, integer: bool = False
) -> np.ndarray:
    """A column as finite numbers in [low, high] (whole ones with `integer`); an empty or other cell is a UsageError
    naming the file, the column and the line (else numpy's conversion error would be a traceback at start-up)."""
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values < low) | (values > high)
    if integer:
        bad |= np.isfinite(values) & (values != np.round(values))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        what = "a whole number" if integer else f"a number in [{low:g}, {high:g}]" if math.isfinite(low) else "a number"
        raise UsageError(
            f"{path}: line {row + 2}, column {column}: {frame[column].iloc[row]!r} is not {what}"
            + (f" ({int(bad.sum())} such cells)" if bad.sum() > 1 else "")
        )
    return values


def spelled_names(frame: pd.DataFrame, multi_label: bool, path: str = "predictions") -> dict[int, str]:
    """Class names by id, from label_name / pred_name beside label / pred (multi-label: both lists, in step).

    One id spelled two ways in the same file is a UsageError: which name the page showed would be a guess."""
    names: dict[int, str] = {}

    def add(pairs: Any, column: str) -> None:
        for class_id, name in pairs:
            class_id = int(class_id)
            if names.setdefault(class_id, name) != name:
                raise UsageError(
                    f"{path}: class id {class_id} is named both {names[class_id]!r} and {name!r} "
                    f"(label_name / pred_name): re-run run_eval.py"
                )

    for ids, column in (("label", "label_name"), ("pred", "pred_name")):
        if column not in frame.columns:
            continue
        if not multi_label:
            add(zip(frame[ids].astype(int), frame[column].astype(str)), column)
            continue
        for id_list, spelled in zip(label_id_lists(frame[ids]), frame[column].astype(str)):
            spelled_list = spelled.split(",") if spelled else []
            if len(spelled_list) == len(id_list):  # a name with a comma in it cannot be told apart: skipped
                add(zip(id_list, spelled_list), column)
    return names


def _json_value(value: Any) -> Any:
    """A results.csv cell as JSON: numpy scalars as Python numbers, NaN as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def mcnemar_p_value(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar test: are the discordant pairs split more unevenly than a fair coin would split them?"""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


class Explorer:
    """The evaluation output behind the exploration endpoints, or the reason there is none (every call is then 404)."""

    def __init__(
        self,
        predictions: dict[str, Predictions] | None = None,
        label_names: list[str] | None = None,
        results: pd.DataFrame | None = None,
        report_dir: str | None = None,
        missing_reason: str | None = None,
    ):
        self.predictions = predictions or {}
        self.label_names = label_names or []
        self.results = results
        self.report_dir = report_dir
        self.missing_reason = missing_reason

    @classmethod
    def missing(cls, reason: str) -> Explorer:
        return cls(missing_reason=reason)

    @classmethod
    def load(cls, report_dir: str | None = None, experiment_dir: str | None = None) -> Explorer:
        """The evaluation output in `report_dir`, else EXP/report.

        A `report_dir` given by the user must hold one (an error otherwise); a missing EXP/report only leaves the
        exploration endpoints answering 404 with the command that makes it, while the models are served.
        """
        report_dir, missing = cls._find_report_dir(report_dir, experiment_dir)
        if missing:
            return cls.missing(missing)
        folder = os.path.join(report_dir, PREDICTIONS_SUBDIR)
        files = sorted(f for f in os.listdir(folder) if f.endswith(".csv"))
        if not files:
            return cls.missing(f"{folder} holds no predictions: make them with {make_command(experiment_dir)}")
        predictions, label_names = _read_prediction_files(folder, files)
        results_path = os.path.join(report_dir, RESULTS_FILE)
        results = pd.read_csv(results_path) if os.path.isfile(results_path) else None
        logger.info(f"exploring {len(predictions)} models' predictions from {report_dir}")
        return cls(predictions, label_names, results, report_dir)

    @staticmethod
    def _find_report_dir(report_dir: str | None, experiment_dir: str | None) -> tuple[str, str | None]:
        """(the folder to read, None), or (_, why there is none) when EXP/report is not made yet or no folder was
        named; a `report_dir` without predictions is the user's error."""
        if report_dir is None:
            if experiment_dir is None:
                return "", (
                    "no evaluation output: start app.py with --experiment_dir EXP (its report/) or --report_dir DIR "
                    "(run_eval.py's --output_dir)"
                )
            candidate = os.path.join(experiment_dir, REPORT_SUBDIR)
            if not os.path.isdir(os.path.join(candidate, PREDICTIONS_SUBDIR)):
                return "", f"{candidate} holds no evaluation output yet: make it with {make_command(experiment_dir)}"
            return candidate, None
        if not os.path.isdir(os.path.join(report_dir, PREDICTIONS_SUBDIR)):
            raise UsageError(
                f"--report_dir {report_dir}: no {PREDICTIONS_SUBDIR}/ folder; pass run_eval.py's --output_dir "
                f"(EXP/{REPORT_SUBDIR} for run_compare.py)"
            )
        return report_dir, None

    @property
    def available(self) -> bool:
        return self.missing_reason is None

    @property
    def names(self) -> list[str]:
        return list(self.predictions)

    def _require(self) -> None:
        if not self.available:
            raise RequestError(404, str(self.missing_reason))

    def _model(self, name: str | None, param: str = "model") -> Predictions:
        self._require()
        if not name:
            raise RequestError(422, f"missing ?{param}=NAME: one of {', '.join(self.names)}")
        if name not in self.predictions:
            raise RequestError(404, f"unknown model {name}: the evaluation has {', '.join(self.names)}")
        return self.predictions[name]

    @staticmethod
    def _labels(p: Predictions, row: np.ndarray) -> tuple[str, list[int], list[str]]:
        """A multi-label row as shown (names joined, "none" for no label), its label ids and their names."""
        ids = [int(j) for j in np.flatnonzero(row)]
        names = [p.label(j) for j in ids]
        return (", ".join(names) or "none"), ids, names

    def _text(self, p: Predictions, i: int) -> dict[str, Any]:
        """A test text by its row in the test split, with its gold label (multi-label: `gold_ids`, gold_id null),
        named by model `p`'s own class names."""
        if p.multi_label:
            gold, ids, names = self._labels(p, p.gold[i])
            shown = {"gold": gold, "gold_id": None, "gold_ids": ids, "gold_labels": names}
            return {"index": int(i), "text": p.texts[i], **shown}
        return {"index": int(i), "text": p.texts[i], "gold": p.label(int(p.gold[i])), "gold_id": int(p.gold[i])}

    def _answer(self, p: Predictions, i: int) -> dict[str, Any]:
        """What the model said about test text `i`: its label, the probability it gave it, and whether it is right.

        Multi-label: `predicted_ids` (predicted_id null), their `predicted_labels` and, as `probability`, its
        confidence (`Predictions.confidence`).
        """
        if p.multi_label:
            predicted, ids, names = self._labels(p, p.pred[i])
            return {
                "predicted": predicted,
                "predicted_id": None,
                "predicted_ids": ids,
                "predicted_labels": names,
                "probability": float(p.confidence(np.array([i]))[0]),
                "correct": bool(p.correct[i]),
            }
        return {
            "predicted": p.label(int(p.pred[i])),
            "predicted_id": int(p.pred[i]),
            "probability": float(p.probs[i, p.pred[i]]),
            "correct": bool(p.correct[i]),
        }

    def overview(self) -> dict[str, Any]:
        """What the page shows first: the models that can be explored, the classes, and the results table.

        Without an evaluation output: `available` false and the reason (a page asks this on every load; the
        endpoints that need the output are the ones that answer 404).
        """
        if not self.available:
            return {"available": False, "reason": self.missing_reason}
        rows = []
        if self.results is not None:
            columns = [c for c in RESULT_COLUMNS if c in self.results.columns]
            rows = [{c: _json_value(v) for c, v in row.items()} for row in self.results[columns].to_dict("records")]
        first = next(iter(self.predictions.values()))
        return {
            "available": True,
            "report_dir": os.path.basename(os.path.normpath(self.report_dir or "")),
            "models": self.names,
            "problem_types": {
                name: MULTI_LABEL if p.multi_label else SINGLE_LABEL for name, p in self.predictions.items()
            },
            "labels": self.label_names,  # every model's names when they agree, else the ids ("0", "1", ...)
            "labels_by_model": {name: p.labels for name, p in self.predictions.items()},
            "samples": len(first.gold),
            "results": rows,
        }

    def distribution(self, model: str | None) -> dict[str, Any]:
        """Per class: how many test texts are of it (gold) and how many the model assigns to it (predicted).

        Multi-label: per label, a text counting for each of its labels; `accuracy` is subset accuracy.
        """
        p = self._model(model)
        k = p.probs.shape[1]
        if p.multi_label:
            gold, predicted = p.gold.sum(axis=0), p.pred.sum(axis=0)
        else:
            gold, predicted = np.bincount(p.gold, minlength=k), np.bincount(p.pred, minlength=k)
        return {
            "model": p.name,
            "problem_type": MULTI_LABEL if p.multi_label else SINGLE_LABEL,
            "samples": len(p.gold),
            "accuracy": float(p.correct.mean()) if len(p.gold) else None,
            "classes": [
                {"id": i, "label": p.label(i), "gold": int(gold[i]), "predicted": int(predicted[i])}
                for i in range(k)
            ],
        }

    def errors(self, model: str | None, limit: int = DEFAULT_LIMIT, offset: int = 0) -> dict[str, Any]:
        """The model's misclassified test texts, most confident mistakes first (the probability of its wrong label)."""
        p = self._model(model)
        limit, offset = check_page(limit, offset)
        wrong = np.flatnonzero(~p.correct)
        order = _most_confident_first(wrong, p.confidence(wrong, wrong_only=True))
        page = order[offset : offset + limit]

        def gold_probability(i: int) -> float | None:  # multi-label: no one gold label
            return None if p.multi_label else float(p.probs[i, p.gold[i]])

        return {
            "model": p.name,
            "samples": len(p.gold),
            "total": len(order),
            "offset": offset,
            "limit": limit,
            "errors": [
                {
                    **self._text(p, i),
                    **self._answer(p, i),
                    "probability": float(p.confidence(np.array([i]), wrong_only=True)[0]),
                    "gold_probability": gold_probability(i),
                }
                for i in page
            ],
        }

    def disagreements(
        self, a: str | None, b: str | None, limit: int = DEFAULT_LIMIT, offset: int = 0, kind: str = "all"
    ) -> dict[str, Any]:
        """The 2x2 table of two models' correctness on the same texts, and the texts on which their labels differ.

        `kind` narrows the texts: `only_a` (a right, b wrong), `only_b`, `both_wrong` (both wrong, different labels).
        Texts come most confident first (the larger of the two models' probabilities of their own labels).
        """
        pa, pb = self._model(a, "a"), self._model(b, "b")
        limit, offset = check_page(limit, offset)
        if kind not in DISAGREEMENT_KINDS:
            raise RequestError(422, f"kind={kind}: expected one of {', '.join(DISAGREEMENT_KINDS)}")
        _check_comparable(pa, pb)
        ca, cb = pa.correct, pb.correct
        table = _correctness_table(ca, cb)
        differ = pa.differs(pb)
        chosen = {"all": differ, "only_a": ca & ~cb, "only_b": ~ca & cb, "both_wrong": differ & ~ca & ~cb}[kind]
        rows = np.flatnonzero(chosen)
        order = _most_confident_first(rows, np.maximum(pa.confidence(rows), pb.confidence(rows)))
        page = order[offset : offset + limit]
        return {
            "a": pa.name,
            "b": pb.name,
            "samples": len(pa.gold),
            "table": table,
            "disagree": int(differ.sum()),
            "mcnemar_p": mcnemar_p_value(table["only_a"], table["only_b"]),
            "kind": kind,
            "total": len(order),
            "offset": offset,
            "limit": limit,
            "rows": [{**self._text(pa, i), "a": self._answer(pa, i), "b": self._answer(pb, i)} for i in page],
        }


def _read_prediction_files(folder: str, files: list[str]) -> tuple[dict[str, Predictions], list[str]]:
    """Every model's predictions (named by its file), each with its own class names, and the shared label list."""
    predictions = {}
    for file in files:
        name = file[: -len(".csv")]
        predictions[name], _ = read_predictions(os.path.join(folder, file), name)
    # Each model keeps its own class names (ids may mean different classes in different models). The shared
    # list is the names when every model agrees, else the bare ids: never one model's names for another's ids.
    num_classes = max(p.probs.shape[1] for p in predictions.values())
    agreed = len({tuple(p.labels) for p in predictions.values()}) == 1
    label_names = next(iter(predictions.values())).labels if agreed else [str(i) for i in range(num_classes)]
    if not agreed:
        logger.warning(f"the models in {folder} name their classes differently: each is shown with its own names")
    return predictions, label_names


def _most_confident_first(rows: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """`rows` by descending confidence; ties in test-set order."""
    return rows[np.lexsort((rows, -confidence))]


def _check_comparable(pa: Predictions, pb: Predictions) -> None:
    """Two models are compared text by text only when their ids name the same classes and they were scored on the
    same test texts and gold labels (409 otherwise)."""
    if pa.labels != pb.labels:  # the same id means different classes: comparing ids would be meaningless
        raise RequestError(
            409,
            f"{pa.name} names its classes {', '.join(pa.labels)} and {pb.name} {', '.join(pb.labels)}: their "
            "answers cannot be compared id by id",
        )
    if pa.gold.shape != pb.gold.shape or not (pa.gold == pb.gold).all() or not (pa.texts == pb.texts).all():
        raise RequestError(409, f"{pa.name} and {pb.name} were not scored on the same test texts: re-run run_eval.py")


def _correctness_table(ca: np.ndarray, cb: np.ndarray) -> dict[str, int]:
    """The 2x2 table of two models' correctness on the same texts (McNemar's test reads its off-diagonal)."""
    return {
        "both_right": int((ca & cb).sum()),
        "only_a": int((ca & ~cb).sum()),
        "only_b": int((~ca & cb).sum()),
        "both_wrong": int((~ca & ~cb).sum()),
    }


def check_page(limit: int, offset: int) -> tuple[int, int]:
    """A page of rows within bounds: 1 <= limit <= MAX_LIMIT, offset >= 0 (past the end: an empty page)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise RequestError(422, f"limit={limit}: must be 1..{MAX_LIMIT}")
    if offset < 0:
        raise RequestError(422, f"offset={offset}: must be 0 or more")
    return limit, offset
