"""The explorer's bias view (/api/bias, /api/bias/false_positives) over run_eval's bias.csv and bias_predictions/."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import LOCAL_URL
from fastapi.testclient import TestClient

import app as app_module
from distillkit.explore import Explorer
from distillkit.serving import ModelRegistry, ServingLimits


@pytest.fixture()
def bias_report(tmp_path):
    nan = float("nan")
    pd.DataFrame(
        {
            "model": ["even"] * 3,
            "identity": ["gay", "muslim", "teacher"],
            "n": [4, 4, 2],
            "subgroup_auc": [0.5, 0.9, nan],
            "bpsn_auc": [0.8, 0.2, nan],
            "bnsp_auc": [0.9, 0.9, nan],
            "fpr": [0.5, 1.0, 0.0],
            "fnr": [0.0, 0.0, 0.0],
        }
    ).to_csv(tmp_path / "bias.csv", index=False)
    (tmp_path / "bias_predictions").mkdir()
    pd.DataFrame(
        {
            "text": ["i am muslim", "being muslim is good", "i hate muslim", "muslim people", "i am gay"],
            "identity": ["muslim", "muslim", "muslim", "muslim", "gay"],
            "label": [0, 0, 1, 0, 0],
            "toxic_score": [0.7, 0.9, 0.95, 0.2, 0.6],
            "toxic_pred": [1, 1, 1, 0, 1],
        }
    ).to_csv(tmp_path / "bias_predictions" / "even.csv", index=False)
    return tmp_path


def test_bias_view_sorts_identities_and_lists_worst_false_positives(bias_report, tiny_classifier_dir):
    registry = ModelRegistry.from_dirs([str(tiny_classifier_dir)], ServingLimits())
    app = app_module.create_app(registry, Explorer(report_dir=str(bias_report)))
    with TestClient(app, base_url=LOCAL_URL) as client:
        identities = client.get("/api/bias", params={"model": "even"}).json()["identities"]
        assert [r["identity"] for r in identities] == ["muslim", "gay", "teacher"]  # worst BPSN first, NaN last
        assert identities[0]["bpsn_auc"] == 0.2 and identities[2]["bpsn_auc"] is None
        answer = client.get("/api/bias/false_positives", params={"model": "even", "identity": "muslim"}).json()
        # Non-toxic and flagged only (not the toxic 0.95, not the unflagged 0.2), highest score first.
        assert [t["text"] for t in answer["texts"]] == ["being muslim is good", "i am muslim"]
        assert answer["total"] == 2 and answer["non_toxic"] == 3
        bad = client.get("/api/bias/false_positives", params={"model": "even", "identity": "nobody"})
        assert bad.status_code == 404 and "unknown identity" in bad.json()["error"]
        assert client.get("/api/bias", params={"model": "odd"}).status_code == 404
        assert client.get("/api/bias").status_code == 422


def test_without_bias_figures_the_view_answers_404(tmp_path, tiny_classifier_dir):
    registry = ModelRegistry.from_dirs([str(tiny_classifier_dir)], ServingLimits())
    with TestClient(app_module.create_app(registry, Explorer(report_dir=str(tmp_path))), base_url=LOCAL_URL) as client:
        answer = client.get("/api/bias", params={"model": "even"})
        assert answer.status_code == 404 and "--bias_dataset" in answer.json()["error"]


def test_page_has_the_bias_tab(tiny_classifier_dir):
    registry = ModelRegistry.from_dirs([str(tiny_classifier_dir)], ServingLimits())
    with TestClient(app_module.create_app(registry), base_url=LOCAL_URL) as client:
        page = client.get("/").text
        script = client.get("/static/app.js").text
    assert 'data-tab="bias"' in page and 'id="bias-model"' in page and 'id="bias-fp"' in page
    assert "/api/bias?model=" in script and "/api/bias/false_positives?model=" in script
