"""bench/layer_selection.py --quick: one row per choice, the whole-split reference first (speed is not asserted)."""

import csv
import math

import pytest
from conftest import SHARED

from bench import layer_selection

pytestmark = pytest.mark.skipif(
    not (SHARED / "models" / "all-MiniLM-L6-v2").is_dir() or not (SHARED / "data" / "wiki_toxic_small").is_dir(),
    reason="needs the real assets in ../shared (models/all-MiniLM-L6-v2 for the tokenizer, data/wiki_toxic_small)",
)


def test_layer_selection_bench_quick(tmp_path, capsys):
    argv = ["--quick", "--dataset_name", str(SHARED / "data" / "wiki_toxic_small"), "--max_seq_length", "32"]
    layer_selection.main(argv + ["--output_dir", str(tmp_path)])
    assert "same_as_whole_split" in capsys.readouterr().out
    with open(tmp_path / layer_selection.RESULTS_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    # The reference on the whole validation split, then 16 rows for sample seeds 0 and 1.
    assert [(r["validation_rows"], r["sample_seed"]) for r in rows] == [("1000", "0"), ("16", "0"), ("16", "1")]
    assert rows[0]["same_as_whole_split"] == "True"
    for row in rows:
        assert math.isfinite(float(row["seconds"])) and float(row["seconds"]) > 0
        assert len(row["chosen"].split()) == 2 and len(row["skip_metric_drop"].split()) == 4  # random-tiny: 4 layers
    # The bench refuses to overwrite its CSV.
    with pytest.raises(SystemExit):
        layer_selection.main(argv + ["--output_dir", str(tmp_path)])
