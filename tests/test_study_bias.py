"""study/run_study.py's bias stage: every stage of a bias data set is scored on the identity-bias set, the figures are
published with the stage and gathered into the data set's bias.csv / bias_summary.csv and report section; a stage
published without them is scored again from its weights, or trained again when they are gone."""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
from pathlib import Path

import pandas as pd
from conftest import NEUTRAL_WORDS, TOXIC_WORDS

from distillkit.report import linked_images
from study import run_study
from test_study import ABSOLUTE, BUDGET, study_argv


def write_bias_set(directory: Path) -> Path:
    rng = random.Random(0)
    rows = []
    for identity in ("page", "source", "article"):
        for i in range(10):
            toxic = i % 2
            words = [identity, rng.choice(TOXIC_WORDS if toxic else NEUTRAL_WORDS), "you"]
            rows.append({"text": " ".join(words), "label": toxic, "identity": identity, "template": "t"})
    directory.mkdir()
    pd.DataFrame(rows).to_csv(directory / "test.csv", index=False)
    return directory


def test_bias_stage_published_gathered_and_rescored(tmp_path, caplog, tiny_base_model_dir, tiny_data_dir):
    bias_dir = write_bias_set(tmp_path / "bias_set")
    argv = study_argv(
        tmp_path, tiny_base_model_dir, tiny_data_dir, "--seeds", "1", "--methods", "teacher", "odd_ce",
        "--bias_datasets", tiny_data_dir.name, "--bias_dataset", str(bias_dir), "--bias_max_per_identity", "6",
    )  # fmt: skip
    run_study.main(argv)
    results_dir = tmp_path / "results" / tiny_data_dir.name
    stage = results_dir / "stages" / "odd_ce" / "seed1"
    table = pd.read_csv(stage / "bias.csv")
    assert set(table.model) == {"seed1-odd_ce"} and sorted(table.identity) == ["article", "page", "source"]
    assert set(table.n) == {6}  # the stratified sample
    summary = pd.read_csv(stage / "bias_summary.csv")
    assert summary.model.tolist() == ["seed1-odd_ce"] and summary.method.tolist() == ["odd_ce"]
    record = json.loads((stage / "stage.json").read_text())
    assert record["bias"]["max_per_identity"] == 6 and not os.path.isabs(record["bias"]["dataset"])

    gathered = pd.read_csv(results_dir / "bias_summary.csv")
    assert sorted(gathered.model) == ["seed1-odd_ce", "seed1-teacher"]
    assert len(pd.read_csv(results_dir / "bias.csv")) == 2 * 3
    versus = pd.read_csv(results_dir / "bias_vs_teacher.csv")
    assert set(versus.method) == {"odd_ce"} and set(versus.n_seeds) == {1}  # paired by seed
    report = results_dir / "report.md"
    assert "## Identity bias" in report.read_text() and "6 texts per identity" in report.read_text()
    images = linked_images(str(report))
    assert {os.path.basename(p) for p in images} >= {"bias_teacher.png", "bias_odd_ce.png"}
    assert all(os.path.isfile(p) for p in images)
    for path in glob.glob(str(results_dir / "**" / "*"), recursive=True):
        if path.endswith((".csv", ".json", ".md")):
            assert not ABSOLUTE.search(Path(path).read_text()), path

    # A stage published before the bias stage existed, its weights still there: only the bias set is scored.
    results_before = (stage / "results.csv").read_text()
    (stage / "bias.csv").unlink()
    (stage / "bias_summary.csv").unlink()
    assert run_study.main(argv) == [str(stage)]
    assert (stage / "results.csv").read_text() == results_before
    assert pd.read_csv(stage / "bias_summary.csv").model.tolist() == ["seed1-odd_ce"]

    # Its weights gone as well: the stage trains again (its base too) and is published whole.
    shutil.rmtree(tmp_path / "work")
    (stage / "bias_summary.csv").unlink()
    caplog.clear()
    with caplog.at_level("INFO", logger="run_study"):
        assert run_study.main(argv + ["--dry_run", "true"]) == []
    assert "no bias figures and no weights: training it again" in caplog.text
    assert "--methods teacher odd_ce" in caplog.text and "--seeds 1" in caplog.text and "--bias_dataset" in caplog.text

    # Off for data sets that are not listed: the plain stage, as before.
    go_emotions = ["--dataset", "go_emotions", "--budget", BUDGET]  # a budget: no search needed to parse
    assert run_study.bias_flags(run_study.parse_args((run_study.StudyArguments,), go_emotions)[0]) == []
