"""The methods registry: every method builds the command it should; spread's layer sets; --methods / --stages."""

from __future__ import annotations

import os

import pytest

import run_compare
from distillkit.cli import UsageError
from distillkit.methods import DEFAULT_METHODS, METHODS, PRETRAINED, Method, check_methods, dependencies
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
        ("lora_steps", "run_lora.py", "PRE", None, False),
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
    assert set(DEFAULT_METHODS) <= set(METHODS) and len(METHODS) == 16
    with pytest.raises(UsageError, match="unknown method"):
        check_methods(["odd", "middle"])
    with pytest.raises(UsageError, match="appears twice"):
        check_methods(["odd", "odd"])


def last(cmd: list[str], name: str) -> str | None:
    """The value the stage parses: argparse keeps a flag's last occurrence (`--flag v` or `--flag=v`)."""
    value = None
    for i, word in enumerate(cmd):
        if word == name:
            value = cmd[i + 1]
        elif word.startswith(name + "="):
            value = word.split("=", 1)[1]
    return value


def stage_commands(training: list[str], **kw) -> dict[str, list[str]]:
    """Every training method's full command as run_compare.main builds it (its epochs_factor applied)."""
    args = args_for(**kw)
    runner = run_compare.Runner(args, ["--dataset_name", "DATA"], training)
    out = {}
    for name, method in METHODS.items():
        if method.kind == "export":
            continue
        script, flags = run_compare.method_command(name, 7, args)
        out[name] = runner.command(script, flags, epochs_factor=method.epochs_factor)
    return out


def test_lora_steps_trains_twice_the_epochs_and_no_other_method_changes():
    """The equal-steps arm: LoRA for the optimizer steps of teacher + student, i.e. twice the run's epochs."""
    assert METHODS["lora_steps"].epochs_factor == 2 and base_stage_is_pretrained("lora_steps")
    assert {n for n, m in METHODS.items() if m.epochs_factor != 1} == {"lora_steps"}
    training = ["--num_train_epochs", "2", "--per_device_train_batch_size", "32"]
    commands = stage_commands(training)
    for name, cmd in commands.items():
        assert last(cmd, "--num_train_epochs") == ("4.0" if name == "lora_steps" else "2"), name
        assert last(cmd, "--max_steps") is None and last(cmd, "--per_device_train_batch_size") == "32"
    # Apart from the epochs and its output folder, it is the lora command.
    lora, steps = commands["lora"], commands["lora_steps"]
    assert steps[: len(lora)] == [w.replace(f"{os.sep}lora", f"{os.sep}lora_steps") for w in lora]
    assert steps[len(lora) :] == ["--num_train_epochs", "4.0"]


@pytest.mark.parametrize(
    "training, lora_args, epochs, max_steps",
    [
        ([], "", "6.0", None),  # no --num_train_epochs: the scripts' default, 3
        (["--num_train_epochs=1.5"], "", "3.0", None),
        (["--max_steps", "3", "--num_train_epochs", "1"], "", "2.0", "6"),  # --max_steps wins in HF, so it scales too
        ([], "--num_train_epochs 5 --lora_r 4", "10.0", None),  # --lora_args reach only the LoRA stages
        (["--num_train_epochs", "2"], "--num_train_epochs 5", "4.0", None),  # the training flags come last: they win
    ],
)
def test_the_factor_scales_the_epochs_the_stage_would_read(training, lora_args, epochs, max_steps):
    commands = stage_commands(training, lora_args=lora_args)
    assert last(commands["lora_steps"], "--num_train_epochs") == epochs
    assert last(commands["lora_steps"], "--max_steps") == max_steps
    assert last(commands["lora_steps"], "--lora_r") == last(commands["lora"], "--lora_r")
    assert commands["lora"][-len(training) or len(commands["lora"]) :] == training  # unchanged
    parsed = run_compare.parse_training_flags(training)
    assert float(epochs) == 2 * float(last(commands["lora"], "--num_train_epochs") or parsed.num_train_epochs)


def test_an_epochs_factor_must_be_positive():
    with pytest.raises(ValueError, match="epochs_factor must be > 0"):
        Method("x", "lora", PRETRAINED, epochs_factor=0)


def base_stage_is_pretrained(name: str) -> bool:
    return dependencies(name) == [] and METHODS[name].base == PRETRAINED


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
