"""run_compare.py: the main job end to end on tiny data, re-runs that skip finished stages, bad flags."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import REPO

import run_compare

HAVE_LORA = (REPO / "run_lora.py").is_file()


def compare_argv(base_dir, data_dir, exp, *extra: str) -> list[str]:
    return [
        "--teacher_name_or_path", str(base_dir),
        "--dataset_name", str(data_dir),
        "--experiment_dir", str(exp),
        "--max_seq_length", "32",
        "--teacher_learning_rate", "1e-3",
        "--student_learning_rate", "1e-3",
        "--eval_args", "--latency_runs 50 --throughput_texts 32 --num_threads 1 --bootstrap_samples 10",
        "--max_steps", "3",
        "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "16",
        "--do_eval", "false",
        "--do_predict", "false",
        "--logging_steps", "1",
        "--save_strategy", "no",
        "--use_cpu", "true",
        "--report_to", "none",
        "--disable_tqdm", "true",
        *extra,
    ]  # fmt: skip


def test_main_job_end_to_end_then_skips_finished_stages(tmp_path, tiny_base_model_dir, tiny_data_dir):
    exp = tmp_path / "exp"
    status = run_compare.main(compare_argv(tiny_base_model_dir, tiny_data_dir, exp, "--seeds", "0"))
    trained = ["seed0/teacher", "seed0/odd", "seed0/even"] + (["seed0/lora", "seed0/lora_even"] if HAVE_LORA else [])
    assert all(status[k] == "ran" for k in trained), status
    if not HAVE_LORA:
        assert status["seed0/lora"] == status["seed0/lora_even"] == "missing"
    assert status["eval"] == "ran"

    results = pd.read_csv(exp / "report" / "results.csv")
    expected = {"teacher", "odd", "even"} | ({"lora", "lora_even"} if HAVE_LORA else set())
    assert set(results.method) == expected
    assert set(results.model) == {f"seed0-{k.split('/')[1]}" for k in trained}
    assert (results.seed == 0).all()
    assert (exp / "report" / "report.md").is_file() and (exp / "report" / "summary.csv").is_file()
    assert "run_distill.py" in (exp / "compare_commands.log").read_text()

    # The same command again: every stage is finished, so nothing is trained or re-scored.
    mtime = (exp / "report" / "results.csv").stat().st_mtime
    again = run_compare.main(compare_argv(tiny_base_model_dir, tiny_data_dir, exp, "--seeds", "0"))
    assert all(again[k] == "skipped" for k in trained) and again["eval"] == "skipped"
    assert (exp / "report" / "results.csv").stat().st_mtime == mtime


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--learning_rate", "1e-4"], "--learning_rate is set per stage"),
        (["--no_such_flag", "1"], "--no_such_flag"),
        (["--seeds", "1", "1"], "a seed appears twice"),
        (["--distill_args", "--layers odd"], "--distill_args --layers odd: --layers is set by each method"),
        (["--distill_args", "--lora_r 8"], "--distill_args --lora_r 8: Some specified arguments are not used"),
    ],
)
def test_bad_flags_fail_before_anything_runs(tmp_path, capsys, tiny_base_model_dir, tiny_data_dir, extra, message):
    exp = tmp_path / "exp"
    with pytest.raises(SystemExit) as exit_info:
        run_compare.main(compare_argv(tiny_base_model_dir, tiny_data_dir, exp, *extra))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not exp.exists()


def test_several_seeds_need_a_fixed_test_split(tmp_path, capsys, tiny_base_model_dir, tiny_data_dir):
    only_train = tmp_path / "data"
    only_train.mkdir()
    (only_train / "train.csv").write_text((tiny_data_dir / "train.csv").read_text())
    with pytest.raises(SystemExit):
        run_compare.main(compare_argv(tiny_base_model_dir, only_train, tmp_path / "exp", "--seeds", "0", "1"))
    assert "has no test split" in capsys.readouterr().err


def test_dry_run_lays_out_seed_folders(tmp_path, caplog, tiny_base_model_dir, tiny_data_dir):
    exp = tmp_path / "exp"
    with caplog.at_level("INFO", logger="run_compare"):
        status = run_compare.main(
            compare_argv(tiny_base_model_dir, tiny_data_dir, exp, "--seeds", "1", "2", "--dry_run", "true")
        )
    assert not exp.exists()
    assert {k for k in status if k != "eval"} >= {f"seed{s}/{st}" for s in (1, 2) for st in ("teacher", "odd", "even")}
    log = caplog.text
    assert str(exp / "seed2" / "odd") in log and "--layers odd" in log and "run_eval.py" in log


def test_distill_args_reach_every_student_stage_and_only_those(tmp_path, caplog, tiny_base_model_dir, tiny_data_dir):
    extra = ["--methods", "teacher", "auto", "odd", "lora", "--dry_run", "true"]
    extra += ["--distill_args", "--layer_selection_validation_rows 100 --num_student_layers 2"]
    with caplog.at_level("INFO", logger="run_compare"):
        run_compare.main(compare_argv(tiny_base_model_dir, tiny_data_dir, tmp_path / "exp", *extra))
    commands = [line for line in caplog.text.splitlines() if ".py " in line]
    by_script = {s: [c for c in commands if f"/{s} " in c] for s in ("run_distill.py", "run_finetune.py", "run_lora.py")}
    assert len(by_script["run_distill.py"]) == 2  # auto and odd
    for command in by_script["run_distill.py"]:
        assert "--layer_selection_validation_rows 100 --num_student_layers 2" in command
    assert by_script["run_finetune.py"] and by_script["run_lora.py"]
    for command in by_script["run_finetune.py"] + by_script["run_lora.py"]:
        assert "--layer_selection_validation_rows" not in command


def test_a_rerun_skips_only_the_same_request_and_invalidates_downstream(tmp_path, capfd, tiny_base_model_dir, tiny_data_dir):
    """Issue 28: run_compare.py skips a finished stage only for the request that made it, a re-run stage re-runs
    every stage built on it, and the old report never stays as if current."""
    import json
    import shutil

    exp = tmp_path / "exp"
    methods = ["--seeds", "0", "--methods", "teacher", "odd", "eval"]
    first = run_compare.main(compare_argv(tiny_base_model_dir, tiny_data_dir, exp, *methods, "--max_steps", "2"))
    assert first == {"seed0/teacher": "ran", "seed0/odd": "ran", "eval": "ran"}
    report = exp / "report" / "results.csv"
    odd_stamp = (exp / "seed0" / "odd" / "all_results.json").stat().st_mtime_ns

    # Another hyperparameter: the finished teacher is not skipped as if it were this request's.
    with pytest.raises(SystemExit) as exit_info:
        run_compare.main(compare_argv(tiny_base_model_dir, tiny_data_dir, exp, *methods, "--max_steps", "4"))
    assert "stage seed0/teacher refused its input" in str(exit_info.value.code)
    assert "run again" not in str(exit_info.value.code)
    assert "differing fields: max_steps (max_steps: 2 -> 4)" in capfd.readouterr().err  # the stage's own error
    assert report.is_file()  # nothing ran: the report still describes the models on disk

    # The teacher deleted and re-run with another learning rate: the student built on the deleted teacher is
    # re-distilled from the new one, and the report rebuilt.
    shutil.rmtree(exp / "seed0" / "teacher")
    again = run_compare.main(
        compare_argv(tiny_base_model_dir, tiny_data_dir, exp, *methods, "--max_steps", "2", "--teacher_learning_rate", "2e-3")
    )
    assert again == {"seed0/teacher": "ran", "seed0/odd": "ran", "eval": "ran"}
    assert (exp / "seed0" / "odd" / "all_results.json").stat().st_mtime_ns > odd_stamp
    teacher_fp = json.loads((exp / "seed0" / "teacher" / "run_record.json").read_text())["fingerprint"]
    odd_fp = json.loads((exp / "seed0" / "odd" / "run_record.json").read_text())["fingerprint"]
    from distillkit.fingerprint import fingerprint_digest

    assert teacher_fp["learning_rate"] == 2e-3 and odd_fp["teacher"] == fingerprint_digest(teacher_fp)
    assert report.stat().st_mtime_ns > (exp / "seed0" / "odd" / "all_results.json").stat().st_mtime_ns

    # --overwrite_output_dir: every stage starts afresh.
    fresh = run_compare.main(
        compare_argv(tiny_base_model_dir, tiny_data_dir, exp, *methods, "--max_steps", "2", "--teacher_learning_rate",
                     "2e-3", "--overwrite_output_dir", "true")
    )  # fmt: skip
    assert fresh == {"seed0/teacher": "ran", "seed0/odd": "ran", "eval": "ran"}


@pytest.mark.skipif(not HAVE_LORA, reason="run_lora.py is not in this checkout")
def test_lora_steps_trains_for_the_steps_of_teacher_and_student(tmp_path, tiny_base_model_dir, tiny_data_dir):
    """The equal-steps arm: --max_steps 3 for every stage, so teacher + student cost 6 steps and lora_steps trains 6;
    lora keeps 3. The doubled request is in the model's run record (its fingerprint) and in the command log."""
    exp = tmp_path / "exp"
    status = run_compare.main(
        compare_argv(tiny_base_model_dir, tiny_data_dir, exp, "--seeds", "0", "--methods", "lora", "lora_steps")
    )
    assert status == {"seed0/lora": "ran", "seed0/lora_steps": "ran"}
    steps = {}
    for name in ("lora", "lora_steps"):
        fingerprint = json.loads((exp / "seed0" / name / "run_record.json").read_text())["fingerprint"]
        steps[name] = (fingerprint["max_steps"], fingerprint["num_train_epochs"])
        history = json.loads((exp / "seed0" / name / "trainer_state.json").read_text())
        assert history["global_step"] == steps[name][0]
    assert steps == {"lora": (3, 3.0), "lora_steps": (6, 6.0)}
    logged = (exp / "compare_commands.log").read_text()
    assert logged.count("--max_steps 3 ") == 2 and logged.count("--max_steps 6") == 1  # appended to lora_steps' only
