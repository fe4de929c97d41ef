"""Every Accelerate config we ship resolves through `accelerate launch`'s own code, and the CPU one really runs.

No GPU and no DeepSpeed here: multi-GPU, DeepSpeed and FSDP configs are checked up to the point where
`accelerate launch` would spawn processes (config file -> launch arguments -> environment -> the plugin each
process builds from it). The 2-process CPU DDP config is launched for real.
"""

import glob
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
from conftest import REPO, common_args

from distill_trainer import deepspeed_teacher_config

CONFIGS = [
    "accelerate_config.yaml",
    *sorted(os.path.relpath(p, REPO) for p in glob.glob(str(REPO / "configs/accelerate/*.yaml"))),
]


def resolve(config_file: str):
    """What `accelerate launch --config_file X run_distill.py` computes before it starts any process."""
    args = launch_command_parser().parse_args(["--config_file", config_file, "run_distill.py", "--layers", "even"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        # as accelerate.commands.launch.launch_command does before calling the DeepSpeed launcher
        fields = list(defaults.deepspeed_config.keys()) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return args, {k: v for k, v in env.items() if os.environ.get(k) != v}


def test_all_configs_are_listed():
    assert set(CONFIGS) == {
        "accelerate_config.yaml",
        "configs/accelerate/cpu_ddp_2proc.yaml",
        "configs/accelerate/deepspeed_zero2.yaml",
        "configs/accelerate/deepspeed_zero3.yaml",
        "configs/accelerate/fsdp.yaml",
        "configs/accelerate/multi_node.yaml",
    }
    # Every other file there is one this module reads: a new config must come with its test.
    others = {p.name for p in (REPO / "configs/accelerate").iterdir()} - {Path(c).name for c in CONFIGS}
    assert others == {"README.md", "deepspeed_zero2.json", "deepspeed_zero3.json"}  # test_deepspeed_configs


def test_every_config_path_the_docs_and_help_name_exists():
    """A renamed config must not leave a stale name in a README, a config's comments or a script's --help."""
    sources = [REPO / "README.md", *REPO.glob("configs/accelerate/*"), *REPO.glob("*.py"), *REPO.glob("*.yaml")]
    named = {
        (source.name, path)
        for source in sources
        for path in re.findall(r"configs/[\w./-]*\w\.(?:yaml|json)", source.read_text())
    }
    assert {path for _, path in named} >= {"configs/accelerate/cpu_ddp_2proc.yaml"}
    missing = sorted((source, path) for source, path in named if not (REPO / path).is_file())
    assert not missing, missing


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the configs name their DeepSpeed JSON relative to the repository root


@pytest.mark.parametrize("config_file", CONFIGS)
def test_config_parses_and_is_documented(config_file):
    config = load_config_from_file(config_file)
    assert isinstance(config, ClusterConfig)  # unknown or misspelt keys would fail here
    text = Path(config_file).read_text()
    assert f"accelerate launch --config_file {config_file}" in text  # its own documented command
    args, _ = resolve(config_file)
    assert args.num_processes >= 2


def test_single_node_multi_gpu_fp16():
    config = load_config_from_file("accelerate_config.yaml")
    args, env = resolve("accelerate_config.yaml")
    assert config.distributed_type == DistributedType.MULTI_GPU and not config.use_cpu
    assert args.multi_gpu and args.num_machines == 1
    assert env["ACCELERATE_MIXED_PRECISION"] == "fp16"


def test_multi_node_two_machines():
    args, env = resolve("configs/accelerate/multi_node.yaml")
    assert args.multi_gpu and args.num_machines == 2 and args.num_processes == 16
    assert args.main_process_ip and args.main_process_port == 29500
    assert env["ACCELERATE_MIXED_PRECISION"] == "fp16"


@pytest.mark.parametrize(("name", "stage"), [("deepspeed_zero2", 2), ("deepspeed_zero3", 3)])
def test_deepspeed_configs(name, stage):
    args, env = resolve(f"configs/accelerate/{name}.yaml")
    assert args.use_deepspeed
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()  # what each process builds from the launcher's environment
    assert plugin.zero_stage == stage
    assert plugin.zero3_init_flag is False  # the teacher must load whole: the student is cut from it
    ours = json.loads(Path(f"configs/accelerate/{name}.json").read_text())
    assert plugin.deepspeed_config["zero_optimization"] == ours["zero_optimization"]
    if stage == 3:
        assert plugin.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_fsdp_config():
    args, env = resolve("configs/accelerate/fsdp.yaml")
    assert args.use_fsdp
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.transformer_cls_names_to_wrap == ["BertLayer"]
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"  # save_model writes a plain model.safetensors
    assert plugin.cpu_ram_efficient_loading is False
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def _trainer_resolved(config: dict) -> dict:
    """The values HF's Trainer writes over "auto" from its own flags before the teacher is prepared."""
    config = json.loads(json.dumps(config))
    config.update(train_micro_batch_size_per_gpu=8, train_batch_size=32, gradient_accumulation_steps=1)
    config.update(gradient_clipping=1.0, fp16={**config["fp16"], "enabled": False}, bf16={"enabled": True})
    return config


def test_deepspeed_teacher_config_follows_trl():
    zero2 = json.loads(Path("configs/accelerate/deepspeed_zero2.json").read_text())
    zero3 = json.loads(Path("configs/accelerate/deepspeed_zero3.json").read_text())
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu"):
        deepspeed_teacher_config(zero3, hidden_size=768)  # unresolved "auto" is refused, not passed on

    teacher2 = deepspeed_teacher_config(_trainer_resolved(zero2), hidden_size=768)
    assert teacher2["zero_optimization"] == {"stage": 0}  # a frozen model has no optimizer state to shard
    teacher3 = deepspeed_teacher_config(_trainer_resolved(zero3) | {"optimizer": {"type": "AdamW"}}, hidden_size=768)
    zero = teacher3["zero_optimization"]
    assert zero["stage"] == 3  # ZeRO-3 shards the teacher too
    assert zero["reduce_bucket_size"] == 768 * 768 and zero["stage3_param_persistence_threshold"] == 7680
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 768 * 768)
    assert zero["stage3_max_live_parameters"] == zero3["zero_optimization"]["stage3_max_live_parameters"]
    assert "optimizer" not in teacher3 and teacher3["bf16"] == {"enabled": True}


def test_deepspeed_branch_is_chosen_when_deepspeed_is_on(tmp_path, tiny_classifier_dir):
    """Without deepspeed installed the branch cannot run; it must be the one taken, and say what is missing."""
    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed: this checks the message given when it is not")
    from transformers import AutoModelForSequenceClassification

    from distill_trainer import DistillationTrainer, DistillationTrainingArguments
    from distillkit.students import build_student

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir)
    args = DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = DistillationTrainer(build_student(teacher, [2, 4]), args, teacher_model=teacher)
    assert trainer.teacher is teacher  # no DeepSpeed: placed and autocast, not wrapped
    trainer.is_deepspeed_enabled = True  # what the Trainer sets when the accelerate config says DEEPSPEED
    with pytest.raises(ImportError, match="enables DeepSpeed, but deepspeed is not installed: pip install deepspeed"):
        trainer._prepare_teacher(teacher)


def launch_cpu_ddp(argv: list) -> tuple[subprocess.CompletedProcess, str]:
    """`accelerate launch` run_distill.py with the 2-process CPU DDP config; returns the process and its whole log."""
    accelerate = Path(sys.executable).parent / "accelerate"
    proc = subprocess.run(
        [str(accelerate), "launch", "--config_file", "configs/accelerate/cpu_ddp_2proc.yaml", "run_distill.py", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return proc, proc.stdout + proc.stderr


def test_two_process_cpu_ddp_run(tmp_path, tiny_classifier_dir, tiny_data_dir):
    out = tmp_path / "even"
    argv = common_args(tiny_data_dir, out, teacher_name_or_path=tiny_classifier_dir, layers="even")
    proc, log = launch_cpu_ddp(argv)
    assert proc.returncode == 0, log[-3000:]
    assert "Process rank: 0, world size: 2" in log and "Process rank: 1, world size: 2" in log
    results = json.loads((out / "all_results.json").read_text())
    # 96 rows, 8 per device, 2 processes: 6 optimizer steps instead of 12.
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6
    assert results["train_samples"] == 96
    assert (out / "README.md").is_file()  # the main process wrote the card


def test_cpu_ddp_without_use_cpu_is_refused(tmp_path, tiny_classifier_dir, tiny_data_dir):
    # Accelerate's MULTI_GPU launcher does not pass use_cpu on: without --use_cpu each process would train alone.
    out = tmp_path / "even"
    argv = [a for a in common_args(tiny_data_dir, out, teacher_name_or_path=tiny_classifier_dir)]
    i = argv.index("--use_cpu")
    del argv[i : i + 2]
    proc, log = launch_cpu_ddp(argv)
    assert proc.returncode != 0, log[-2000:]
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert errors and all("WORLD_SIZE=2" in e and "--use_cpu true" in e for e in errors), log[-2000:]
    assert not out.exists()  # refused before anything was written
