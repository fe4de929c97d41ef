"""The methods registry: every method builds the command it should; spread's layer sets; --methods / --stages."""

from __future__ import annotations

import os

import pytest

import run_compare
from distillkit.cli import UsageError
from distillkit.methods import DEFAULT_METHODS, METHODS, check_methods, dependencies
from distillkit.students import select_layers


def args_for(**kw) -> run_compare.CompareArguments:
    return run_compare.CompareArguments(
        experiment_dir="EXP",
        teacher_name_or_path="PRE",
        teacher_learning_rate=3e-5,
        **kw,
    )


def flag(flags: list[str], name: str) -> str | None:
    return flags[flags.index(name) + 1] if name in flags else None


@pytest.mark.parametrize(
    "name, script, base, layers, ce_only",
    [
        ("teacher", "run_finetune.py", "PRE", None, False),
        ("odd", "run_distill.py", "EXP/seed7/teacher", "odd", False),
        ("even", "run_distill.py", "EXP/seed7/teacher", "even", False),
        ("bottom", "run_distill.py", "EXP/seed7/teacher", "bottom", False),
        ("top", "run_distill.py", "EXP/seed7/teacher", "top", False),
        ("spread", "run_distill.py", "EXP/seed7/teacher", "spread", False),
        ("auto", "run_distill.py", "EXP/seed7/teacher", "auto", False),
        ("odd_ce", "run_distill.py", "EXP/seed7/teacher", "odd", True),
        ("even_ce", "run_distill.py", "EXP/seed7/teacher", "even", True),
        ("bottom_ce", "run_distill.py", "EXP/seed7/teacher", "bottom", True),
        ("top_ce", "run_distill.py", "EXP/seed7/teacher", "top", True),
        ("spread_ce", "run_distill.py", "EXP/seed7/teacher", "spread", True),
        ("lora", "run_lora.py", "PRE", None, False),
        ("lora_even", "run_lora.py", "EXP/seed7/even", None, False),
        ("even_onnx", "run_export.py", "EXP/seed7/even", None, False),
    ],
)
def test_every_method_builds_its_command(name, script, base, layers, ce_only):
    got_script, flags = run_compare.method_command(name, 7, args_for())
    assert got_script == script == METHODS[name].script
    assert flag(flags, "--output_dir") == os.path.join("EXP", "seed7", name)
    base = base.replace("/", os.sep)
    if script == "run_export.py":  # no training, no seed of its own: it exports the base stage
        assert flag(flags, "--model_dir") == base and flag(flags, "--quantize") == "int8"
        return
    assert flag(flags, "--seed") == "7"
    if script == "run_distill.py":
        assert flag(flags, "--teacher_name_or_path") == flag(flags, "--teacher_output_dir") == base
        assert flag(flags, "--layers") == layers
        # The controls switch off both teacher terms; distilled students keep the scripts' defaults.
        assert (flag(flags, "--alpha_kl"), flag(flags, "--alpha_cos")) == (("0", "0") if ce_only else (None, None))
    else:
        assert flag(flags, "--model_name_or_path") == base
        assert "--layers" not in flags and "--alpha_kl" not in flags
    assert (flag(flags, "--learning_rate") == "3e-05") == (name == "teacher")


def test_stage_options_reach_the_right_methods():
    args = args_for(
        student_num_layers=2, student_learning_rate=1e-4, lora_learning_rate=5e-4, merge_lora=True,
        lora_args="--lora_r 4", lora_base="finetuned",
    )  # fmt: skip
    _, spread = run_compare.method_command("spread", 1, args)
    assert flag(spread, "--student_num_layers") == "2" and flag(spread, "--learning_rate") == "0.0001"
    _, lora = run_compare.method_command("lora", 1, args)
    assert flag(lora, "--model_name_or_path") == os.path.join("EXP", "seed1", "teacher")  # --lora_base finetuned
    assert flag(lora, "--learning_rate") == "0.0005" and "--merge" in lora and lora[-2:] == ["--lora_r", "4"]
    _, teacher = run_compare.method_command("teacher", 1, args)
    assert "--student_num_layers" not in teacher and "--merge" not in teacher


def test_registry_order_and_dependencies():
    assert check_methods(["lora_even", "even", "teacher", "eval"]) == [
        "teacher",
        "even",
        "lora_even",
    ]
    assert dependencies("lora_even") == ["teacher", "even"]
    assert dependencies("lora") == [] and dependencies("lora", "finetuned") == ["teacher"]
    assert dependencies("odd_ce") == ["teacher"] and dependencies("spread_ce") == ["teacher"]
    assert set(DEFAULT_METHODS) <= set(METHODS) and len(METHODS) == 15
    with pytest.raises(UsageError, match="unknown method"):
        check_methods(["odd", "middle"])
    with pytest.raises(UsageError, match="appears twice"):
        check_methods(["odd", "odd"])


@pytest.mark.parametrize(
    "n, k, expected",
    [
        (12, 6, [1, 3, 5, 8, 10, 12]),
        (6, 3, [1, 4, 6]),
        (12, 4, [1, 5, 8, 12]),
        (6, 2, [1, 6]),
        (6, 6, [1, 2, 3, 4, 5, 6]),
    ],
)
def test_spread_layers(n, k, expected):
    assert select_layers("spread", n, k) == expected
    assert select_layers("spread", n, None if 2 * k == n else k) == expected


def test_top_and_bottom_layers():
    assert select_layers("bottom", 6) == [1, 2, 3] and select_layers("top", 6) == [
        4,
        5,
        6,
    ]


def test_dry_run_commands_of_the_new_methods(tmp_path, caplog, tiny_base_model_dir, tiny_data_dir):
    exp = tmp_path / "exp"
    argv = [
        "--teacher_name_or_path", str(tiny_base_model_dir), "--dataset_name", str(tiny_data_dir),
        "--experiment_dir", str(exp), "--seeds", "3", "--dry_run", "true",
        "--methods", "teacher", "spread", "even_ce", "top",
    ]  # fmt: skip
    with caplog.at_level("INFO", logger="run_compare"):
        status = run_compare.main(argv)
    assert list(status) == [
        "seed3/teacher",
        "seed3/top",
        "seed3/spread",
        "seed3/even_ce",
    ]  # registry order, no eval
    assert "--layers spread" in caplog.text and "--layers even --alpha_kl 0 --alpha_cos 0" in caplog.text
    # --stages is the old name of --methods.
    caplog.clear()
    with caplog.at_level("INFO", logger="run_compare"):
        status = run_compare.main(argv[:-5] + ["--stages", "teacher", "bottom"])
    assert list(status) == ["seed3/teacher", "seed3/bottom"]


def test_a_method_without_its_base_fails_before_training(tmp_path, capsys, tiny_base_model_dir, tiny_data_dir):
    argv = [
        "--teacher_name_or_path", str(tiny_base_model_dir), "--dataset_name", str(tiny_data_dir),
        "--experiment_dir", str(tmp_path / "exp"), "--methods", "odd_ce",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        run_compare.main(argv)
    assert exit_info.value.code == 2
    assert "add teacher to --methods" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()
