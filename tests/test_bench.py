"""bench/train_throughput.py and bench/inference.py --quick: the CSVs they write have the promised shape and sane numbers.

Speed itself is not asserted (these run on shared CI machines); what is checked is that every variant and model ran
through the real code paths and produced finite, positive figures.
"""

import csv
import math

import pytest
from conftest import SHARED

from bench import inference, train_throughput

pytestmark = pytest.mark.skipif(
    not (SHARED / "models" / "all-MiniLM-L6-v2").is_dir() or not (SHARED / "data" / "wiki_toxic").is_dir(),
    reason="needs the real assets in ../shared (models/all-MiniLM-L6-v2 for the tokenizer, data/wiki_toxic)",
)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def positive(row, *columns):
    for column in columns:
        value = float(row[column])
        assert math.isfinite(value) and value > 0, (column, row[column])


def test_train_throughput_quick(tmp_path, capsys):
    out = tmp_path / "tt"
    train_throughput.main(["--quick", "--output_dir", str(out)])
    printed = capsys.readouterr().out
    assert "Training throughput" in printed and "Goals" in printed

    summary = read_csv(out / "train_throughput.csv")
    assert [r["variant"] for r in summary] == list(train_throughput.VARIANTS)
    for row in summary:
        positive(row, "step_ms", "samples_per_s", "tokens_per_s", "peak_mem_mb", "student_params")
        assert row["peak_mem_kind"] in ("cpu_rss_sampled", "cpu_max_rss_process", "cuda_max_allocated")
    by_name = {r["variant"]: r for r in summary}
    assert float(by_name["finetune"]["step_vs_finetune"]) == 1.0
    for name in ("distill_live", "distill_cached"):
        positive(by_name[name], "step_vs_finetune")
    positive(by_name["finetune"], "speedup_vs_reference")
    # The recipes differ as claimed: ours pads each batch to its longest row, the references' to max_seq_length.
    assert float(by_name["finetune"]["pad_pct"]) < float(by_name["finetune_reference"]["pad_pct"])
    assert by_name["distill_cached"]["loss"] == "ce+kl" and by_name["distill_live"]["loss"] == "ce+kl+cos"

    runs = read_csv(out / "train_throughput_runs.csv")
    assert len(runs) == len(summary) * train_throughput.QUICK["repeats"]
    assert {r["repeat"] for r in runs} == {"0", "1"}
    for row in runs:
        positive(row, "step_s", "samples_per_s", "tokens_per_s", "padded_tokens_per_s", "process_max_rss_mb")

    goals = read_csv(out / "train_throughput_goals.csv")
    assert len(goals) == len(train_throughput.GOALS)
    for row in goals:
        positive(row, "ratio")
        assert row["met"] in ("True", "False")
    # The cached variant computed the teacher's logits once and reused them in its second repeat.
    assert len(list((out / "teacher_logits").iterdir())) == 1


def test_train_throughput_refuses_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_throughput.main(["--quick", "--variants", "finetune,nope", "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--variants finetune,nope: expected some of finetune" in capsys.readouterr().err
    (tmp_path / "train_throughput.csv").write_text("variant\n")
    with pytest.raises(SystemExit):
        train_throughput.main(["--quick", "--output_dir", str(tmp_path)])
    assert "already holds train_throughput.csv; pass --overwrite_output_dir" in capsys.readouterr().err


def test_inference_quick(tmp_path, capsys):
    out = tmp_path / "inf"
    inference.main(["--quick", "--output_dir", str(out)])
    assert "latency_ms_b1_p90" in capsys.readouterr().out

    rows = read_csv(out / "inference.csv")
    assert [r["model"] for r in rows] == list(inference.MODELS)
    assert {r["teacher"] for r in rows} == {"random-tiny"}
    by_name = {r["model"]: r for r in rows}
    for row in rows:
        positive(row, "latency_ms_b1_p50", "latency_ms_b1_p90", "throughput_b32", "latency_speedup")
        positive(row, "throughput_speedup", "params")
        assert float(row["latency_ms_b1_p90"]) >= float(row["latency_ms_b1_p50"])
        assert int(row["latency_runs"]) == inference.QUICK["latency_runs"]
    assert float(by_name["teacher"]["latency_speedup"]) == float(by_name["teacher"]["throughput_speedup"]) == 1.0
    # The real models: students keep the odd/even half of the 4 layers; LoRA adds parameters, merging removes them.
    assert (by_name["odd"]["layers"], by_name["even"]["layers"]) == ("1,3", "2,4")
    assert by_name["odd"]["num_layers"] == by_name["even"]["num_layers"] == "2"
    params = {name: int(row["params"]) for name, row in by_name.items()}
    assert params["odd"] == params["even"] < params["teacher"] == params["lora_merged"] < params["lora"]
