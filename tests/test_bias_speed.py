"""bench/bias_speed.py --quick: the CSV has both models with finite, positive timings (speed itself is not asserted)."""

import csv
import math

import pytest
from conftest import SHARED

from bench import bias_speed

pytestmark = pytest.mark.skipif(
    not (SHARED / "models" / "all-MiniLM-L6-v2").is_dir() or not (SHARED / "data" / "bias_madlibs").is_dir(),
    reason="needs the real assets in ../shared (models/all-MiniLM-L6-v2 for the tokenizer, data/bias_madlibs)",
)


def test_bias_speed_quick(tmp_path, capsys):
    bias_speed.main(["--quick", "--output_dir", str(tmp_path)])
    assert "Bias-set scoring: 1000 texts" in capsys.readouterr().out  # 20 per identity, 50 identities
    with open(tmp_path / bias_speed.RESULTS_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["student_2layer_odd", "teacher_4layer"]
    for row in rows:
        for column in ("tokenise_s", "predict_s", "metrics_s", "total_s", "texts_per_s"):
            assert math.isfinite(float(row[column])) and float(row[column]) > 0, (column, row[column])
    assert float(rows[1]["predict_vs_teacher"]) == 1.0
