#!/usr/bin/env python
"""Training throughput of one student, one process, one run: what distillation costs over plain fine-tuning, what
cached teacher logits save, and what our data recipe gains over the references'.

    python bench/train_throughput.py --output_dir OUT/train_throughput                    # MiniLM teacher, 6 → 3
    python bench/train_throughput.py --teacher random-bert-base --steps 20 --output_dir OUT/tt_base   # 12 → 6
    python bench/train_throughput.py --quick --output_dir OUT/tt_quick                    # seconds-long smoke run

Variants (all through the real `DistillationTrainer`, collator and sampler that our scripts use):
  finetune                plain fine-tuning of the student (CE)                 ours: dynamic padding, length grouping
  distill_live            CE + KL + hidden-state cosine, live teacher forward    ours
  distill_cached          CE + KL from --cache_teacher_logits, no teacher        ours
  finetune_reference      plain fine-tuning, the references' recipe: every batch padded to --max_seq_length,
                          fp32, random sampler
  distill_live_reference  CE + KL + cosine with the live teacher, the references' recipe

Each repeat runs every variant once, in the same order (ABAB...): fresh student, `trainer.train()` for
--warmup_steps + --steps optimizer steps; the clock runs between consecutive step ends (batch fetch and collation,
forward, backward, optimizer step) and the warm-up steps are left out. Figures are medians over repeats; ratios are
medians of per-repeat ratios. All our variants see the same batches (same seed, same sampler), so their step-time
ratios compare identical work.

The sampler draws from the whole train split (or --max_train_samples rows), as in a real run: length grouping sorts
megabatches of min(rows // (4 × batch), 50) batches, longest first. The default 50 steps of 32 cover about one
megabatch of 1,600 comments, every length about once; fewer steps time the longer batches of the first megabatch
(conservative for our recipe), and a small pool groups less well than a real run. --cache_teacher_logits computes the
teacher's logits for every row of the pool once, into OUTPUT_DIR/teacher_logits (reused by later runs, never timed).

Writes OUTPUT_DIR/train_throughput.csv (one row per variant), train_throughput_runs.csv (one per variant and repeat)
and train_throughput_goals.csv (each goal's ratio and target), and prints them. Peak memory is CUDA
max_memory_allocated on a GPU, and the sampled resident set of the process on a CPU (`peak_mem_kind` says which).
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from transformers import AutoTokenizer, DataCollatorWithPadding, PrinterCallback, TrainerCallback, set_seed

from bench.common import (
    DEFAULT_DATASET,
    DEFAULT_TEACHER,
    RANDOM_TINY,
    PeakMemory,
    bench_session,
    default_tokenizer_for,
    load_bench_teacher,
    median,
    print_table,
    process_max_rss_mb,
    refuse_to_overwrite,
    resolve_device,
    write_csv,
)
from distill_trainer import DistillationTrainingArguments
from distillkit.cli import UsageError, exit_on_usage_error, parse_args
from distillkit.data import DataTrainingArguments, load_text_classification_data, tokenize_splits
from distillkit.students import build_student, count_parameters, select_layers
from distillkit.teacher_logits import precision_name
from distillkit.training import build_trainer

SUMMARY_FILE = "train_throughput.csv"
RUNS_FILE = "train_throughput_runs.csv"
GOALS_FILE = "train_throughput_goals.csv"


@dataclass(frozen=True)
class Variant:
    name: str
    teacher: str  # "none", "live" or "cached"
    reference: bool  # the references' recipe: pad to max length, fp32, random sampler

    @property
    def loss(self) -> str:
        return {"none": "ce", "live": "ce+kl+cos", "cached": "ce+kl"}[self.teacher]


VARIANTS = {
    v.name: v
    for v in (
        Variant("finetune", "none", False),
        Variant("distill_live", "live", False),
        Variant("distill_cached", "cached", False),
        Variant("finetune_reference", "none", True),
        Variant("distill_live_reference", "live", True),
    )
}


@dataclass(frozen=True)
class Goal:
    text: str
    numerator: str  # variant names
    denominator: str
    metric: str  # "step_s" or "samples_per_s"
    target: float
    at_most: bool  # the ratio must be <= target (else >=)


GOALS = (
    Goal("distill (live teacher) step / fine-tune step", "distill_live", "finetune", "step_s", 1.75, True),
    Goal("distill (cached logits) step / fine-tune step", "distill_cached", "finetune", "step_s", 1.10, True),
    Goal("fine-tune samples/s: ours / references'", "finetune", "finetune_reference", "samples_per_s", 2.0, False),
    Goal(
        "distill samples/s: ours / references'", "distill_live", "distill_live_reference", "samples_per_s", 2.0, False
    ),
)
# --quick: a seconds-long smoke run on a tiny random teacher (fields the user set keep their values).
QUICK = {
    "teacher": RANDOM_TINY,
    "max_train_samples": 64,
    "steps": 4,
    "warmup_steps": 1,
    "repeats": 2,
    "batch_size": 8,
    "max_seq_length": 64,
    "num_threads": 1,
}


@dataclass
class TrainThroughputArguments:
    output_dir: str = field(metadata={"help": f"Where {SUMMARY_FILE}, {RUNS_FILE} and {GOALS_FILE} are written."})
    teacher: str = field(
        default=DEFAULT_TEACHER,
        metadata={"help": "A local checkpoint (default: the real 6-layer MiniLM), or random-bert-base / random-tiny."},
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer (default: the teacher's; the MiniLM one for random teachers)."}
    )
    layers: str = field(default="even", metadata={"help": "Teacher layers the student keeps (as run_distill.py)."})
    dataset_name: str = field(default=DEFAULT_DATASET, metadata={"help": "Real comments to train on (train split)."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Rows the sampler draws from (default: the whole train split)."}
    )
    variants: str = field(default=",".join(VARIANTS), metadata={"help": f"Comma-separated: {', '.join(VARIANTS)}."})
    steps: int = field(default=50, metadata={"help": "Timed optimizer steps per variant and repeat."})
    warmup_steps: int = field(default=3, metadata={"help": "Untimed optimizer steps before them."})
    repeats: int = field(default=3, metadata={"help": "Rounds over all variants (ABAB...); medians are reported."})
    batch_size: int = field(default=32, metadata={"help": "Training batch size."})
    max_seq_length: int = field(default=128, metadata={"help": "Truncation, and the references' padded length."})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu or cuda[:N]."})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision for our variants (references: fp32)."})
    fp16: bool = field(
        default=False, metadata={"help": "fp16 mixed precision for our variants (GPU; references: fp32)."}
    )
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)."})
    seed: int = field(default=42, metadata={"help": "Seed of the row sample, the models and the samplers."})
    quick: bool = field(
        default=False,
        metadata={
            "help": "Seconds-long smoke run: random-tiny teacher, 64 rows, 1 + 4 steps of 8, 2 repeats, length 64."
        },
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an earlier run's CSVs."})

    def __post_init__(self) -> None:
        if self.quick:
            defaults = {f.name: f.default for f in fields(self)}
            for name, value in QUICK.items():
                if getattr(self, name) == defaults[name]:
                    setattr(self, name, value)
        names = [v.strip() for v in self.variants.split(",") if v.strip()]
        unknown = [v for v in names if v not in VARIANTS]
        if unknown or not names:
            raise UsageError(f"--variants {self.variants}: expected some of {', '.join(VARIANTS)}")
        self.variant_list = [VARIANTS[v] for v in names]
        for name in ("steps", "repeats", "batch_size", "max_train_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"--{name} {getattr(self, name)}: must be at least 1")
        if self.warmup_steps < 1:
            raise UsageError(f"--warmup_steps {self.warmup_steps}: at least 1 (the first step has no clock start)")
        if self.max_seq_length < 8:
            raise UsageError(f"--max_seq_length {self.max_seq_length}: must be at least 8")
        if self.bf16 and self.fp16:
            raise UsageError("--bf16 and --fp16: choose one")


class StepClock(TrainerCallback):
    """Wall-clock time of each optimizer step, from one step's end to the next (batch fetch included)."""

    def __init__(self, device: str):
        self.device = device
        self.ends: list[float] = []

    def _now(self) -> float:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.ends = [self._now()]

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(self._now())

    @property
    def durations(self) -> list[float]:
        return [b - a for a, b in zip(self.ends, self.ends[1:])]


class CountingCollator:
    """The trainer's own collator, noting each batch's real and padded token counts (batches come in step order)."""

    def __init__(self, collate):
        self.collate = collate
        self.batches: list[tuple[int, int]] = []

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.collate(features)
        self.batches.append((int(batch["attention_mask"].sum()), int(batch["input_ids"].numel())))
        return batch


def training_args(variant: Variant, args: TrainThroughputArguments, work_dir: str, device: str, cache_dir: str):
    total = args.warmup_steps + args.steps
    distill: dict[str, Any] = {"alpha_kl": 0.0, "alpha_cos": 0.0}
    if variant.teacher == "live":
        distill = {"alpha_kl": 1.0, "alpha_cos": 1.0}
    elif variant.teacher == "cached":
        distill = {"alpha_kl": 1.0, "cache_teacher_logits": True, "teacher_logits_cache_dir": cache_dir}
    return DistillationTrainingArguments(
        output_dir=os.path.join(work_dir, variant.name),
        per_device_train_batch_size=args.batch_size,
        max_steps=total,
        learning_rate=2e-5,
        lr_scheduler_type="constant",
        logging_steps=total + 1,  # no logging inside the timed window
        save_strategy="no",
        eval_strategy="no",
        do_eval=False,
        do_predict=False,
        report_to="none",
        disable_tqdm=True,
        seed=args.seed,
        use_cpu=device == "cpu",
        bf16=args.bf16 and not variant.reference,
        fp16=args.fp16 and not variant.reference,
        train_sampling_strategy="random" if variant.reference else "group_by_length",
        dataloader_drop_last=True,
        **distill,
    )


def precision_of(variant: Variant, args: TrainThroughputArguments) -> str:
    return "fp32" if variant.reference else precision_name(args)  # the references' recipe is always fp32


def run_variant(
    variant: Variant,
    args: TrainThroughputArguments,
    student,
    teacher,
    tokenized,
    tokenizer,
    work_dir,
    device,
    cache_dir,
) -> dict[str, Any]:
    """One timed run of one variant: a fresh copy of the student, a fresh trainer, W + N optimizer steps."""
    set_seed(args.seed)
    # accelerate wraps a prepared model's forward (autocast under mixed precision): start each run from the bare one,
    # off the device, so only the variants that use the teacher place it there (and count it in peak memory).
    teacher.__dict__.pop("forward", None)
    teacher.to("cpu")
    collator = (
        DataCollatorWithPadding(tokenizer, padding="max_length", max_length=args.max_seq_length)
        if variant.reference
        else None  # build_trainer's: dynamic padding (to a multiple of 8 under mixed precision)
    )
    setup_start = time.perf_counter()
    trainer = build_trainer(
        copy.deepcopy(student),
        training_args(variant, args, work_dir, device, cache_dir),
        tokenized,
        tokenizer,
        teacher_model=teacher if variant.teacher != "none" else None,
        data_collator=collator,
    )
    setup_s = time.perf_counter() - setup_start
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    clock = StepClock(device)
    trainer.add_callback(clock)
    trainer.remove_callback(PrinterCallback)  # its end-of-training line would interleave with our table
    with PeakMemory(device) as memory:
        trainer.train()
    timed = slice(args.warmup_steps, args.warmup_steps + args.steps)
    seconds = sum(clock.durations[timed])
    real, padded = (sum(col) for col in zip(*counter.batches[timed]))
    return {
        "variant": variant.name,
        "step_s": seconds / args.steps,
        "samples_per_s": args.steps * args.batch_size / seconds,
        "tokens_per_s": real / seconds,
        "padded_tokens_per_s": padded / seconds,
        "pad_pct": 100.0 * (1 - real / padded),
        "peak_mem_mb": memory.peak_mb,
        "mem_at_start_mb": memory.start_mb,
        "peak_mem_kind": memory.kind,
        "process_max_rss_mb": process_max_rss_mb(),
        "setup_s": setup_s,
    }


def paired_ratio(runs: list[dict], numerator: str, denominator: str, metric: str) -> float:
    """Median over repeats of numerator/denominator measured in the same repeat (drift cancels within a pair)."""
    by_repeat: dict[int, dict[str, dict]] = {}
    for run in runs:
        by_repeat.setdefault(run["repeat"], {})[run["variant"]] = run
    ratios = [
        pair[numerator][metric] / pair[denominator][metric]
        for pair in by_repeat.values()
        if numerator in pair and denominator in pair
    ]
    return median(ratios)


def summarise(runs: list[dict], args: TrainThroughputArguments, context: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for variant in args.variant_list:
        mine = [r for r in runs if r["variant"] == variant.name]
        row: dict[str, Any] = {
            "variant": variant.name,
            "recipe": "references" if variant.reference else "ours",
            "padding": f"max_length {args.max_seq_length}" if variant.reference else "dynamic",
            "sampler": "random" if variant.reference else "group_by_length",
            "precision": precision_of(variant, args),
            "teacher_forward": variant.teacher,
            "loss": variant.loss,
            "step_ms": 1000 * median(r["step_s"] for r in mine),
            "samples_per_s": median(r["samples_per_s"] for r in mine),
            "tokens_per_s": median(r["tokens_per_s"] for r in mine),
            "pad_pct": median(r["pad_pct"] for r in mine),
        }
        if not variant.reference:
            row["step_vs_finetune"] = paired_ratio(runs, variant.name, "finetune", "step_s")
            reference = f"{variant.name}_reference"
            row["speedup_vs_reference"] = paired_ratio(runs, variant.name, reference, "samples_per_s")
        row.update(
            peak_mem_mb=max(r["peak_mem_mb"] for r in mine),
            mem_at_start_mb=median(r["mem_at_start_mb"] for r in mine),
            peak_mem_kind=mine[0]["peak_mem_kind"],
            setup_s=median(r["setup_s"] for r in mine),
            **context,
        )
        rows.append(row)
    return rows


def goals(runs: list[dict]) -> list[dict[str, Any]]:
    out = []
    for goal in GOALS:
        ratio = paired_ratio(runs, goal.numerator, goal.denominator, goal.metric)
        if math.isnan(ratio):  # one of the two variants was not run
            continue
        met = ratio <= goal.target if goal.at_most else ratio >= goal.target
        out.append(
            {
                "goal": goal.text,
                "ratio": ratio,
                "target": f"{'<=' if goal.at_most else '>='} {goal.target:g}",
                "met": met,
            }
        )
    return out


@exit_on_usage_error
def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    (args,) = parse_args((TrainThroughputArguments,), argv)
    refuse_to_overwrite(args.output_dir, (SUMMARY_FILE, RUNS_FILE, GOALS_FILE), args.overwrite_output_dir)
    device = resolve_device(args.device)
    if args.fp16 and device == "cpu":
        raise UsageError("--fp16 on a CPU: accelerate does not autocast fp16 there; use --bf16 or a GPU")
    with bench_session(args.num_threads):
        return run_benchmark(args, device)


def run_benchmark(args: TrainThroughputArguments, device: str) -> dict[str, list[dict]]:
    teacher = load_bench_teacher(args.teacher, num_labels=2, seed=args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name or default_tokenizer_for(args.teacher))
    data_args = DataTrainingArguments(
        dataset_name=args.dataset_name,
        max_seq_length=args.max_seq_length,
        max_train_samples=args.max_train_samples,
        max_eval_samples=1,  # only the train split is used
        max_test_samples=1,
    )
    data = load_text_classification_data(data_args, seed=args.seed)
    rows = len(data.splits["train"])
    if rows < args.batch_size:
        raise UsageError(f"--dataset_name {args.dataset_name}: {rows} training rows, fewer than --batch_size")
    tokenized = tokenize_splits(data, tokenizer, args.max_seq_length)
    teacher_layers = teacher.config.num_hidden_layers
    layers = select_layers(args.layers, teacher_layers)
    student = build_student(teacher, layers)
    _, student_params = count_parameters(student)
    context = {
        "device": device,
        "threads": torch.get_num_threads(),
        "teacher": os.path.basename(os.path.normpath(args.teacher)),
        "teacher_layers": teacher_layers,
        "student_layers": ",".join(map(str, layers)),
        "student_params": student_params,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "repeats": args.repeats,
        "rows": rows,
        "max_seq_length": args.max_seq_length,
    }
    print(
        f"{device} ({torch.get_num_threads()} threads): teacher {context['teacher']} ({teacher_layers} layers) → "
        f"student layers {context['student_layers']} ({student_params:,} params); {rows} comments from "
        f"{args.dataset_name}, batch {args.batch_size}, {args.warmup_steps} + {args.steps} steps × {args.repeats} "
        f"repeats of {', '.join(v.name for v in args.variant_list)}",
        flush=True,
    )

    os.makedirs(args.output_dir, exist_ok=True)
    cache_dir = os.path.join(args.output_dir, "teacher_logits")  # reused by later runs: its build is never timed
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="train_throughput-") as work_dir:
        for repeat in range(args.repeats):
            for variant in args.variant_list:
                run = run_variant(variant, args, student, teacher, tokenized, tokenizer, work_dir, device, cache_dir)
                run = {"variant": run.pop("variant"), "repeat": repeat, **run}
                runs.append(run)
                print(
                    f"  repeat {repeat + 1}/{args.repeats} {variant.name:<23} {1000 * run['step_s']:9.1f} ms/step "
                    f"{run['samples_per_s']:9.1f} samples/s {run['tokens_per_s']:11.0f} tokens/s",
                    flush=True,
                )

    summary = summarise(runs, args, context)
    goal_rows = goals(runs)
    write_csv(os.path.join(args.output_dir, SUMMARY_FILE), summary)
    write_csv(os.path.join(args.output_dir, RUNS_FILE), runs)
    if goal_rows:
        write_csv(os.path.join(args.output_dir, GOALS_FILE), goal_rows)
    columns = ["variant", "recipe", "precision", "teacher_forward", "loss", "step_ms", "samples_per_s", "tokens_per_s"]
    columns += ["pad_pct", "step_vs_finetune", "speedup_vs_reference", "peak_mem_mb", "mem_at_start_mb"]
    print_table(summary, columns, title=f"Training throughput (medians of {args.repeats} repeats)")
    print(f"peak_mem_mb: {summary[0]['peak_mem_kind']}; mem_at_start_mb: the same measure as each run began")
    if goal_rows:
        print_table(goal_rows, title="Goals (medians of per-repeat ratios)")
    print(f"written: {os.path.join(args.output_dir, SUMMARY_FILE)}")
    return {"summary": summary, "runs": runs, "goals": goal_rows}


if __name__ == "__main__":
    main()
