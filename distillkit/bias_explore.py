"""The explorer's bias view: per model, the identities sorted by BPSN AUC, and an identity's worst false positives.

Reads what `run_eval.py --bias_dataset` writes beside its predictions: `bias.csv` (model × identity) and
`bias_predictions/NAME.csv` (text, identity, label, toxic_score, toxic_pred). Read-only and loaded once; a bad
question raises `RequestError` (app.py turns it into a JSON error). Without those files every call answers 404.
"""

from __future__ import annotations

import math
import os
from typing import Any

import pandas as pd

from .bias_eval import BIAS_FILE
from .serving import RequestError

BIAS_PREDICTIONS_SUBDIR = "bias_predictions"
MAX_FALSE_POSITIVES = 100  # rows one /api/bias/false_positives answer may hold


def _number(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


class BiasExplorer:
    def __init__(self, table: pd.DataFrame | None = None, texts: dict[str, pd.DataFrame] | None = None) -> None:
        self.table = table
        self.texts = texts or {}

    @classmethod
    def load(cls, report_dir: str | None) -> BiasExplorer:
        """The bias figures in run_eval's output dir; an empty explorer when it has none."""
        if not report_dir or not os.path.isfile(os.path.join(report_dir, BIAS_FILE)):
            return cls()
        table = pd.read_csv(os.path.join(report_dir, BIAS_FILE), keep_default_na=False, na_values=[""])
        folder = os.path.join(report_dir, BIAS_PREDICTIONS_SUBDIR)
        texts = {}
        if os.path.isdir(folder):
            for file in sorted(f for f in os.listdir(folder) if f.endswith(".csv")):
                texts[file[: -len(".csv")]] = pd.read_csv(os.path.join(folder, file), keep_default_na=False)
        return cls(table, texts)

    def _require(self, model: str | None) -> pd.DataFrame:
        if self.table is None:
            raise RequestError(404, "no bias figures: run run_eval.py with --bias_dataset DIR")
        models = list(dict.fromkeys(self.table.model))
        if not model:
            raise RequestError(422, f"missing ?model=NAME: one of {', '.join(models)}")
        if model not in models:
            raise RequestError(404, f"unknown model {model}: the bias figures have {', '.join(models)}")
        return self.table[self.table.model == model]

    def identities(self, model: str | None) -> dict[str, Any]:
        """The model's identities, worst BPSN AUC first (NaN last), with n, the three AUCs, FPR and FNR."""
        rows = self._require(model).sort_values(["bpsn_auc", "identity"], na_position="last", kind="stable")
        columns = ("subgroup_auc", "bpsn_auc", "bnsp_auc", "fpr", "fnr")
        return {
            "model": model,
            "identities": [
                {"identity": r["identity"], "n": int(r["n"]), **{c: _number(r[c]) for c in columns}}
                for _, r in rows.iterrows()
            ],
        }

    def false_positives(self, model: str | None, identity: str | None, limit: int = 20) -> dict[str, Any]:
        """The identity's non-toxic texts the model flagged as toxic, highest toxic score first."""
        rows = self._require(model)
        if not identity or identity not in set(rows.identity):
            raise RequestError(404, f"unknown identity {identity!r} for model {model}")
        if model not in self.texts:
            raise RequestError(404, f"no {BIAS_PREDICTIONS_SUBDIR}/{model}.csv beside {BIAS_FILE}")
        if not 1 <= limit <= MAX_FALSE_POSITIVES:
            raise RequestError(422, f"limit {limit}: must be 1..{MAX_FALSE_POSITIVES}")
        texts = self.texts[model]
        flagged = texts[(texts.identity == identity) & (texts.label == 0) & (texts.toxic_pred == 1)]
        worst = flagged.sort_values("toxic_score", ascending=False, kind="stable").head(limit)
        return {
            "model": model,
            "identity": identity,
            "total": len(flagged),
            "non_toxic": int(((texts.identity == identity) & (texts.label == 0)).sum()),
            "texts": [{"text": t, "toxic_score": float(s)} for t, s in zip(worst.text, worst.toxic_score)],
        }
