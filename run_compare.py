#!/usr/bin/env python
"""The main job: teacher → odd → even → LoRA → LoRA on the even student → run_eval.py, for one or several seeds.

Which methods run is `--methods` (default: teacher odd even lora lora_even eval); every method is one entry of the
registry in distillkit/methods.py (also bottom, top, spread, auto, the CE-only controls odd_ce, even_ce, ..., and
lora_steps: LoRA for twice the epochs, and twice a given --max_steps, the optimizer steps of teacher + student).

    python run_compare.py --teacher_name_or_path ../shared/models/all-MiniLM-L6-v2 \\
        --dataset_name ../shared/data/wiki_toxic --experiment_dir EXP --seeds 42 43 44 --num_train_epochs 1

Layout: EXP/seed42/<method>/ for each seed, and the comparison in EXP/report/
(results.csv, summary.csv, predictions/, plots/, report.md). Each stage is its own subprocess (`python script.py`,
or `accelerate launch script.py` with --launcher accelerate); a stage whose directory holds a finished run of the
same request (its request fingerprint, see distillkit/fingerprint.py) is skipped, one of another request is an
error naming what differs, and an interrupted one resumes from its last checkpoint, so re-running the same command
finishes a killed job. A stage that runs again invalidates every stage built on it (they run afresh) and the report. Flags this script does not know (batch sizes, epochs, --use_cpu, ...) go to
every training stage; data flags go to every stage and to run_eval.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from distill_trainer import DistillationTrainingArguments
from distillkit.cli import FINISHED_MARKER, UsageError, configure_logging, exit_on_usage_error, is_finished_run, list_checkpoints
from distillkit.data import DataTrainingArguments
from distillkit.data_files import load_raw_splits
from distillkit.integrity import missing_weights
from distillkit.loading import find_model_dirs
from distillkit.records import is_adapter_dir
from distillkit.report import PER_LABEL_FILE
from distillkit.methods import DEFAULT_METHODS, EVAL_STEP, METHODS, PRETRAINED, base_stage, check_methods

logger = logging.getLogger("run_compare")

REPO = os.path.dirname(os.path.abspath(__file__))
CHOICES = [*METHODS, EVAL_STEP]
EVAL_REQUEST_FILE = "compare_eval_request.json"  # in the report dir: which eval command made the report
REPORT_FILES = ("results.csv", "summary.csv", "report.md", PER_LABEL_FILE, EVAL_REQUEST_FILE)
SET_HERE = ("--output_dir", "--seed", "--learning_rate", "--model_name_or_path", "--teacher_name_or_path")
SCALED_FLAGS = ("--num_train_epochs", "--max_steps")  # what a method's epochs_factor multiplies


@dataclass
class CompareArguments:
    experiment_dir: str = field(metadata={"help": "Root of the experiment: seed*/ stage folders and report/."})
    teacher_name_or_path: str = field(
        default="bert-base-uncased",
        metadata={"help": "Pretrained model the teacher is fine-tuned from (hub id or dir)."},
    )
    seeds: list[int] = field(default_factory=lambda: [42], metadata={"help": "One run of every stage per seed."})
    methods: list[str] = field(
        default_factory=lambda: [*DEFAULT_METHODS, EVAL_STEP],
        metadata={
            "help": f"Methods to train (distillkit/methods.py), run in this order, then `{EVAL_STEP}` to score them "
            f"all: {' '.join(CHOICES)}. Default: {' '.join(DEFAULT_METHODS)} {EVAL_STEP}.",
            "choices": CHOICES,
        },
    )
    stages: list[str] | None = field(default=None, metadata={"help": "Old name of --methods.", "choices": CHOICES})
    student_num_layers: int | None = field(
        default=None, metadata={"help": "Depth of the odd/even students (default: half the teacher's)."}
    )
    teacher_learning_rate: float = field(default=2e-5, metadata={"help": "Learning rate of the teacher stage."})
    student_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the odd/even students (default: the scripts' 5e-5)."}
    )
    lora_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the LoRA stages (default: run_lora.py's)."}
    )
    lora_base: str = field(
        default="pretrained",
        metadata={
            "help": "What the `lora` stage adapts: the pretrained --teacher_name_or_path (LoRA instead of full fine-tuning) or the fine-tuned teacher.",
            "choices": ["pretrained", "finetuned"],
        },
    )
    merge_lora: bool = field(default=False, metadata={"help": "Also write merged LoRA models (OUT/merged)."})
    lora_args: str = field(default="", metadata={"help": "Extra flags for run_lora.py, quoted: '--lora_r 16'."})
    distill_args: str = field(
        default="",
        metadata={
            "help": "Extra student flags for the run_distill.py stages, quoted: '--layer_selection_validation_rows 200' "
            "(--layers is each method's)."
        },
    )
    eval_args: str = field(default="", metadata={"help": "Extra flags for run_eval.py, quoted: '--num_threads 1'."})
    launcher: str = field(
        default="python",
        metadata={
            "help": "How training stages start: python, or accelerate (accelerate launch).",
            "choices": ["python", "accelerate"],
        },
    )
    accelerate_args: str = field(
        default="",
        metadata={
            "help": "Flags for accelerate launch, quoted: '--config_file configs/accelerate/cpu_ddp_2proc.yaml'."
        },
    )
    report_dir: str | None = field(default=None, metadata={"help": "Where run_eval.py writes (default EXP/report)."})
    dry_run: bool = field(default=False, metadata={"help": "Print the stage commands without running them."})

    def __post_init__(self) -> None:
        if not self.seeds:
            raise UsageError("--seeds: give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise UsageError(f"--seeds {' '.join(map(str, self.seeds))}: a seed appears twice")
        if self.stages is not None:
            self.methods = self.stages
        check_methods(self.methods)
        check_distill_args(self.distill_args)
        self.report_dir = self.report_dir or os.path.join(self.experiment_dir, "report")


def check_distill_args(extra: str) -> None:
    """--distill_args holds run_distill.py's student flags only (StudentArguments), and never the method's --layers."""
    from run_distill import StudentArguments

    words = shlex.split(extra)
    if any(word.split("=")[0] == "--layers" for word in words):
        raise UsageError(f"--distill_args {extra}: --layers is set by each method (--methods odd even auto ...)")
    try:
        HfArgumentParser(StudentArguments).parse_args_into_dataclasses(args=words)
    except ValueError as err:
        raise UsageError(f"--distill_args {extra}: {str(err).splitlines()[0]}") from err


def data_flags(data_args: DataTrainingArguments) -> list[str]:
    """The data flags the user gave, to hand on unchanged to every stage."""
    flags = []
    for f in dataclasses.fields(data_args):
        value = getattr(data_args, f.name)
        if value != f.default and value is not None:
            flags += [f"--{f.name}", str(value)]
    return flags


def export_data_flags(data_args: DataTrainingArguments, seed: int) -> list[str]:
    """The data flags run_export.py takes (it checks the export on the validation split): a subset of the stages'."""
    flags = ["--dataset_name", data_args.dataset_name, "--seed", str(seed)]
    for name in ("text_column", "label_column", "max_seq_length"):
        value = getattr(data_args, name, None)
        if value is not None:
            flags += [f"--{name}", str(value)]
    return flags


def parse_training_flags(flags: list[str]) -> DistillationTrainingArguments:
    """The training flags as a stage reads them (defaults included); a bad one is a usage error."""
    try:
        (parsed,) = HfArgumentParser(DistillationTrainingArguments).parse_args_into_dataclasses(
            args=flags + ["--output_dir", os.path.join(os.sep, "nonexistent")]
        )
    except ValueError as err:
        raise UsageError(f"training flags {' '.join(flags)}: {str(err).splitlines()[0]}") from err
    return parsed


def check_training_flags(flags: list[str]) -> None:
    """Typos and flags this script sets itself fail here, before the first stage starts."""
    for flag in flags:
        name = flag.split("=")[0]
        if name in SET_HERE:
            raise UsageError(
                f"{name} is set per stage by run_compare.py; use --experiment_dir, --seeds, --teacher_name_or_path, "
                "--teacher_learning_rate / --student_learning_rate / --lora_learning_rate"
            )
    parse_training_flags(flags)


def _length_flags(flags: list[str]) -> list[str]:
    """The --num_train_epochs / --max_steps words among `flags` (`--flag value` or `--flag=value`), in order."""
    out = []
    for i, word in enumerate(flags):
        name = word.split("=")[0]
        if name in SCALED_FLAGS:
            out += [word] if "=" in word else flags[i : i + 2]
    return out


def scaled_training_flags(factor: float, training: list[str], stage_flags: list[str] = ()) -> list[str]:
    """The training flags of a method with `Method.epochs_factor` = `factor`: the effective --num_train_epochs
    (the user's, else the scripts' default, 3) times `factor`, and --max_steps times `factor` (rounded, at least 1)
    when one is given, since a positive --max_steps overrides the epochs. The effective values are read as the stage
    reads them: `stage_flags` (the method's flags and --lora_args, which come first in its command), then `training`.
    The user's own words stay, and the scaled values are appended, so they are the ones the stage parses (the last
    one wins); the command log and the model's run_record.json (its fingerprint) show the scaled values.
    """
    if factor == 1:
        return list(training)
    parsed = parse_training_flags(_length_flags(list(stage_flags)) + list(training))
    scaled = ["--num_train_epochs", str(parsed.num_train_epochs * factor)]
    if parsed.max_steps > 0:
        scaled += ["--max_steps", str(max(1, round(parsed.max_steps * factor)))]
    return [*training, *scaled]


def check_splits_for_seeds(data_args: DataTrainingArguments, seeds: list[int], cache_dir: str | None) -> None:
    if len(seeds) < 2:
        return
    raw = load_raw_splits(data_args, cache_dir)
    if "test" not in raw:
        raise UsageError(
            f"--seeds {' '.join(map(str, seeds))}: --dataset_name {data_args.dataset_name} has no test split, so each seed "
            "would hold out a different test set (overlapping the other seeds' training data); use a data set with "
            "train/validation/test files for a multi-seed comparison"
        )


def method_command(name: str, seed: int, args: CompareArguments) -> tuple[str, list[str]]:
    """(script, flags) training method `name` for `seed` into EXP/seed<seed>/<name>; Runner.command adds the rest."""
    method = METHODS[name]
    root = os.path.join(args.experiment_dir, f"seed{seed}")
    base = base_stage(name, args.lora_base)
    base_path = args.teacher_name_or_path if base == PRETRAINED else os.path.join(root, base)
    common = ["--output_dir", os.path.join(root, name), "--seed", str(seed)]
    if method.kind == "teacher":
        return method.script, [
            "--model_name_or_path",
            base_path,
            *common,
            "--learning_rate",
            str(args.teacher_learning_rate),
        ]
    if method.kind == "export":  # no training: the data flags only serve its logit check and int8 agreement
        return method.script, ["--model_dir", base_path, "--output_dir", os.path.join(root, name), *method.flags]
    if method.kind == "student":
        flags = ["--teacher_name_or_path", base_path, "--teacher_output_dir", base_path, *method.flags, *common]
        if args.student_num_layers is not None:
            flags += ["--student_num_layers", str(args.student_num_layers)]
        if args.student_learning_rate is not None:
            flags += ["--learning_rate", str(args.student_learning_rate)]
        return method.script, flags + shlex.split(args.distill_args)
    flags = ["--model_name_or_path", base_path, *common, *method.flags]
    if args.lora_learning_rate is not None:
        flags += ["--learning_rate", str(args.lora_learning_rate)]
    if args.merge_lora:
        flags += ["--merge"]
    return method.script, flags + shlex.split(args.lora_args)


def check_stage_weights(stage: str, stage_dir: str) -> None:
    """A finished stage whose weights are gone can be neither skipped nor built on, and running the same command again
    cannot bring them back: say so, and how to train it again, before any stage runs on it."""
    problem = missing_weights(stage_dir, is_adapter_dir(stage_dir))
    if problem is not None:
        raise UsageError(
            f"stage {stage}: {stage_dir} is a finished run with {problem}; running the same command again cannot bring "
            f"them back: remove {stage_dir}, or pass --overwrite_output_dir true, with {stage.split('/')[-1]} in "
            "--methods, to train it again"
        )


class Runner:
    def __init__(self, args: CompareArguments, data: list[str], training: list[str]):
        self.args, self.data, self.training = args, data, training
        self.log_path = os.path.join(args.experiment_dir, "compare_commands.log")

    def command(
        self, script: str, flags: list[str], training: bool = True, data: bool = True, epochs_factor: float = 1.0
    ) -> list[str]:
        """The stage's command: `flags`, the data flags, then the training flags (with `epochs_factor` applied)."""
        path = os.path.join(REPO, script)
        if training and self.args.launcher == "accelerate":
            head = [sys.executable, "-m", "accelerate.commands.launch", *shlex.split(self.args.accelerate_args), path]
        else:
            head = [sys.executable, path]
        train = scaled_training_flags(epochs_factor, self.training, flags) if training else []
        return head + flags + (self.data if data else []) + train

    def run(self, name: str, cmd: list[str], output_dir: str, invalidated: bool = False, export: bool = False) -> str:
        """Run one stage: "ran" or "skipped".

        `invalidated`: a stage it is built on ran again, so whatever is in `output_dir` was made from another base
        and the stage starts afresh (--overwrite_output_dir). A training stage with a finished run is handed to its
        script with --skip_if_finished: the script skips it only if its request fingerprint is this request's.
        """
        if invalidated:
            if os.path.isdir(output_dir) and os.listdir(output_dir):
                logger.warning(f"[{name}] the stage it is built on ran again: {output_dir} starts afresh")
            return self.execute(name, cmd + ["--overwrite_output_dir", "true"])
        if is_finished_run(output_dir) and export:
            logger.info(f"[{name}] skipped: {output_dir} holds a finished export")
            return "skipped"
        if is_finished_run(output_dir):
            if "--overwrite_output_dir" not in cmd:
                check_stage_weights(name, output_dir)
            finished = os.path.join(output_dir, FINISHED_MARKER)
            before = os.stat(finished).st_mtime_ns
            status = self.execute(name, cmd + ["--skip_if_finished", "true"])
            if status == "ran" and os.path.isfile(finished) and os.stat(finished).st_mtime_ns == before:
                logger.info(f"[{name}] skipped: {output_dir} holds a finished run of this request")
                return "skipped"
            return status
        if (
            os.path.isdir(output_dir)
            and os.listdir(output_dir)
            and not list_checkpoints(output_dir)
            and "--overwrite_output_dir" not in cmd
        ):
            # Killed before its first checkpoint: nothing to resume, so start the stage again.
            logger.warning(f"[{name}] {output_dir} holds an unfinished run without checkpoints: starting it again")
            cmd = cmd + ["--overwrite_output_dir", "true"]
        return self.execute(name, cmd)

    def execute(self, name: str, cmd: list[str]) -> str:
        line = shlex.join(cmd)
        logger.info(f"[{name}] {line}")
        if self.args.dry_run:
            return "dry_run"
        os.makedirs(self.args.experiment_dir, exist_ok=True)
        with open(self.log_path, "a") as f:
            f.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {name}\n{line}\n")
        start = time.time()
        code = subprocess.call(cmd, cwd=REPO)
        if code == 2:  # a usage error (its one line is above): running the same command again cannot help
            sys.exit(f"error: stage {name} refused its input (exit code 2, see its error above); nothing was trained")
        if code != 0:
            sys.exit(
                f"error: stage {name} failed (exit code {code}); fix the cause and run the same command again to resume"
            )
        logger.info(f"[{name}] done in {time.time() - start:.0f} s")
        return "ran"


def eval_request(cmd: list[str]) -> str:
    """A digest of the eval command (its flags, the data's included), so a report made by another is not current."""
    return hashlib.sha256(json.dumps(cmd[2:]).encode()).hexdigest()[:16]


def retire_report(report_dir: str) -> None:
    """A stage ran again: the report describes models that are gone, so it must not stay as if current."""
    removed = [name for name in REPORT_FILES if os.path.isfile(os.path.join(report_dir, name))]
    for name in removed:
        os.remove(os.path.join(report_dir, name))
    if removed:
        logger.warning(f"a stage ran again: the old report in {report_dir} is removed until run_eval.py rebuilds it")


def report_is_current(report_dir: str, experiment_dir: str, request: str | None = None) -> bool:
    """The report was made by this eval request and is newer than every model's all_results.json."""
    results = os.path.join(report_dir, "results.csv")
    if not os.path.isfile(results):
        return False
    if request is not None:
        path = os.path.join(report_dir, EVAL_REQUEST_FILE)
        if not os.path.isfile(path):
            return False
        with open(path) as f:
            if json.load(f).get("request") != request:
                return False
    try:
        dirs = find_model_dirs(experiment_dir)
    except UsageError:
        return False
    newest = max((os.path.getmtime(os.path.join(d, "all_results.json")) for d in dirs if is_finished_run(d)), default=0)
    return os.path.getmtime(results) > newest


@exit_on_usage_error
def main(argv: list[str] | None = None) -> dict[str, str]:
    """Run the stages; returns {"seed42/teacher": "ran" | "skipped" | "missing" | ..., "eval": ...}."""
    configure_logging(logging.INFO, stream="stderr")
    parser = HfArgumentParser((CompareArguments, DataTrainingArguments))
    try:
        args, data_args, training = parser.parse_args_into_dataclasses(
            args=sys.argv[1:] if argv is None else argv, return_remaining_strings=True
        )
    except ValueError as err:
        raise UsageError(str(err).splitlines()[0]) from err
    check_training_flags(training)
    check_splits_for_seeds(data_args, args.seeds, None)
    runner = Runner(args, data_flags(data_args), training)
    have_lora = os.path.isfile(os.path.join(REPO, "run_lora.py"))
    status: dict[str, str] = {}

    for seed in args.seeds:
        root = os.path.join(args.experiment_dir, f"seed{seed}")
        for name in check_methods([m for m in args.methods if m != EVAL_STEP]):
            key = f"seed{seed}/{name}"
            if METHODS[name].kind == "lora" and not have_lora:
                logger.warning(f"[{key}] skipped: run_lora.py is not in {REPO}")
                status[key] = "missing"
                continue
            base = base_stage(name, args.lora_base)
            if base != PRETRAINED and not is_finished_run(os.path.join(root, base)) and not args.dry_run:
                raise UsageError(
                    f"{name} starts from {base}, which has no finished run in {os.path.join(root, base)}: "
                    f"add {base} to --methods"
                )
            if base != PRETRAINED and not args.dry_run:
                check_stage_weights(f"seed{seed}/{base}", os.path.join(root, base))
            script, flags = method_command(name, seed, args)
            export = METHODS[name].kind == "export"
            if export:
                cmd = runner.command(script, flags + export_data_flags(data_args, seed), training=False, data=False)
            else:
                cmd = runner.command(script, flags, epochs_factor=METHODS[name].epochs_factor)
            invalidated = base != PRETRAINED and status.get(f"seed{seed}/{base}") == "ran"
            status[key] = runner.run(key, cmd, os.path.join(root, name), invalidated=invalidated, export=export)
            if status[key] == "ran":
                retire_report(args.report_dir)

    if EVAL_STEP in args.methods:
        flags = ["--experiment_dir", args.experiment_dir, "--output_dir", args.report_dir]
        flags += ["--seed", str(args.seeds[0]), "--overwrite_output_dir", "true", *shlex.split(args.eval_args)]
        cmd = runner.command("run_eval.py", flags, training=False)
        request = eval_request(cmd)
        if not any(v == "ran" for v in status.values()) and report_is_current(
            args.report_dir, args.experiment_dir, request
        ):
            logger.info(f"[eval] skipped: {args.report_dir}/results.csv is this request's and newer than every model")
            status["eval"] = "skipped"
        else:
            retire_report(args.report_dir)
            status["eval"] = runner.execute("eval", cmd)
            if status["eval"] == "ran":
                with open(os.path.join(args.report_dir, EVAL_REQUEST_FILE), "w") as f:
                    json.dump({"request": request}, f)
    logger.info(f"stages: {status}")
    if "eval" in status and not args.dry_run:
        logger.info(f"report: {os.path.join(args.report_dir, 'report.md')}")
    return status


if __name__ == "__main__":
    main()
