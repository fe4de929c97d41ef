#!/usr/bin/env python
"""Inference speed of a teacher, its odd and even students, and LoRA on it (unmerged and merged), and of the teacher
and students exported to ONNX (fp32 and int8, run on ONNX Runtime): same inputs, same device, one process.

    python bench/inference.py --output_dir OUT/inference                 # real MiniLM (6 → 3) and bert-base (12 → 6)
    python bench/inference.py --teachers random-bert-base --output_dir OUT/inference_base
    python bench/inference.py --quick --output_dir OUT/inference_quick   # seconds-long smoke run

The models are the project's own: students from `distillkit.students.build_student` (the teacher's odd / even
layers), LoRA from `distillkit.lora.apply_lora` with run_lora.py's default adapter (r 8 on query,value, trained head),
merged with PEFT's `merge_and_unload` as run_lora.py --merge does; the ONNX rows are the same teacher and students
through run_export.py's code (`distillkit.export`: fp32 export, int8 with its default quantization), timed with the
same number of threads. Weights are untrained (a random-init bert-base, or
the MiniLM encoder with a fresh head): speed does not depend on them. Inputs are real comments from the data set's test
split, the same texts in the same order for every model.

Timing is run_eval's (`distillkit.evaluation.measure_speed`): after a warm-up, --latency_runs single-text forward passes
and --throughput_texts texts in batches of 32, giving p50/p90 latency and throughput. --repeats rounds run every model
once each, the order rotated every round; each figure is the median round. Ratios are the teacher's figure over the model's (latency) and the model's over the teacher's
(throughput): above 1 is faster than the teacher.

Writes OUTPUT_DIR/inference.csv (one row per teacher and model) and prints a table per teacher.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from transformers import AutoTokenizer

from bench.common import (
    DEFAULT_DATASET,
    DEFAULT_TEACHER,
    RANDOM_BERT_BASE,
    RANDOM_TINY,
    bench_session,
    default_tokenizer_for,
    load_bench_teacher,
    print_table,
    refuse_to_overwrite,
    resolve_device,
    write_csv,
)
from distillkit.cli import UsageError, exit_on_usage_error, parse_args
from distillkit.data import DataTrainingArguments, load_text_classification_data
from distillkit.evaluation import SPEED_BATCH_SIZE, SpeedSettings, measure_speed_side_by_side
from distillkit.export import QuantSettings, export_fp32, quantize_int8
from distillkit.runtime import OnnxClassifier
from distillkit.lora import LoraArguments, apply_lora
from distillkit.students import build_student, count_parameters, select_layers

RESULTS_FILE = "inference.csv"
TORCH_MODELS = ("teacher", "odd", "even", "lora", "lora_merged")
ONNX_SOURCES = ("teacher", "odd", "even")  # exported, each as fp32 and int8
ONNX_MODELS = tuple(f"{name}_onnx{suffix}" for name in ONNX_SOURCES for suffix in ("", "_int8"))
MODELS = TORCH_MODELS + ONNX_MODELS
QUICK = {
    "teachers": [RANDOM_TINY],
    "latency_runs": 10,
    "throughput_texts": 64,
    "warmup": 2,
    "repeats": 1,
    "max_seq_length": 64,
    "num_threads": 1,
}


@dataclass
class InferenceArguments:
    output_dir: str = field(metadata={"help": f"Where {RESULTS_FILE} is written."})
    teachers: list[str] = field(
        default_factory=lambda: [DEFAULT_TEACHER, RANDOM_BERT_BASE],
        metadata={
            "help": "Teachers to time with their students and LoRA: local checkpoints, random-bert-base (12 layers) or random-tiny."
        },
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer (default: each teacher's; the MiniLM one for random teachers)."}
    )
    dataset_name: str = field(default=DEFAULT_DATASET, metadata={"help": "Real comments (its test split) as inputs."})
    # The defaults are run_eval's (SpeedSettings), so the figures compare with its results.csv.
    latency_runs: int = field(default=100, metadata={"help": "Single-text forward passes per model and repeat."})
    throughput_texts: int = field(default=256, metadata={"help": "Texts timed in batches of 32 per model and repeat."})
    warmup: int = field(default=5, metadata={"help": "Untimed single-text passes (and one batch) first."})
    repeats: int = field(default=3, metadata={"help": "Rounds over all models, order rotated each round."})
    max_seq_length: int = field(default=128, metadata={"help": "Truncation of the inputs (batches pad dynamically)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (run_lora.py's default)."})
    lora_target_modules: str = field(default="query,value", metadata={"help": "Modules LoRA adapts (as run_lora.py)."})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu or cuda[:N]."})
    dtype: str = field(
        default="float32",
        metadata={
            "help": "Weights and compute: float32, bfloat16 or float16 (GPU).",
            "choices": ["float32", "bfloat16", "float16"],
        },
    )
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random teachers and LoRA weights."})
    models: list[str] = field(
        default_factory=lambda: list(MODELS), metadata={"help": f"Models to time (default all: {', '.join(MODELS)})."}
    )
    quick: bool = field(
        default=False,
        metadata={"help": "Seconds-long smoke run: random-tiny teacher, 10 single texts, 64 in batches, 1 thread."},
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an earlier run's CSV."})

    def __post_init__(self) -> None:
        if self.quick:
            defaults = {
                f.name: (f.default_factory() if callable(f.default_factory) else f.default) for f in fields(self)
            }
            for name, value in QUICK.items():
                if getattr(self, name) == defaults[name]:
                    setattr(self, name, value)
        for name in ("latency_runs", "throughput_texts", "repeats"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} {getattr(self, name)}: must be at least 1")
        if self.warmup < 0:
            raise UsageError(f"--warmup {self.warmup}: must be >= 0")
        if not self.teachers:
            raise UsageError("--teachers is empty: give a checkpoint directory or random-bert-base")
        unknown = [m for m in self.models if m not in MODELS]
        if unknown or "teacher" not in self.models:
            raise UsageError(
                f"--models {','.join(self.models)}: choose from {', '.join(MODELS)}, teacher included (the ratios' base)"
            )
        if self.dtype != "float32" and any(m in ONNX_MODELS for m in self.models):
            self.models = [m for m in self.models if m not in ONNX_MODELS]  # ONNX rows are fp32 and int8 only


def build_models(
    teacher: torch.nn.Module, args: InferenceArguments, tokenizer=None, onnx_dir: str | None = None
) -> dict[str, tuple[torch.nn.Module, str]]:
    """name → (model, the teacher layers it keeps): the teacher, its odd/even students, LoRA unmerged and merged, and
    (with `onnx_dir`, where the .onnx files go) the teacher and students on ONNX Runtime, fp32 and int8."""
    depth = teacher.config.num_hidden_layers
    models: dict[str, tuple[torch.nn.Module, str]] = {"teacher": (teacher, "all")}
    for spec in ("odd", "even"):
        layers = select_layers(spec, depth)
        models[spec] = (build_student(teacher, layers).eval(), ",".join(map(str, layers)))
    if "lora" in args.models or "lora_merged" in args.models:
        torch.manual_seed(args.seed)
        lora_args = LoraArguments(lora_r=args.lora_r, lora_target_modules=args.lora_target_modules)
        lora = apply_lora(copy.deepcopy(teacher), lora_args).eval()
        models["lora"] = (lora, "all")
        models["lora_merged"] = (copy.deepcopy(lora).merge_and_unload().eval(), "all")
    if onnx_dir is not None:
        for name in ONNX_SOURCES:
            if not {f"{name}_onnx", f"{name}_onnx_int8"} & set(args.models):
                continue
            model, layers = models[name]
            _, params = count_parameters(model)
            fp32, int8 = os.path.join(onnx_dir, f"{name}.onnx"), os.path.join(onnx_dir, f"{name}-int8.onnx")
            export_fp32(model, tokenizer, fp32)
            quantize_int8(fp32, int8, model.config, QuantSettings())
            models[f"{name}_onnx"] = (OnnxClassifier(fp32, model.config, params), layers)
            models[f"{name}_onnx_int8"] = (OnnxClassifier(int8, model.config, params), layers)
    return {name: models[name] for name in MODELS if name in models and name in args.models}


def time_models(
    models: dict[str, tuple[torch.nn.Module, str]], tokenizer, texts: list[str], args: InferenceArguments, device: str
) -> dict[str, dict[str, Any]]:
    settings = SpeedSettings(
        device=device,
        latency_runs=args.latency_runs,
        throughput_texts=args.throughput_texts,
        warmup=args.warmup,
        max_length=args.max_seq_length,
    )
    figures = measure_speed_side_by_side(
        {name: (model, tokenizer) for name, (model, _) in models.items()}, texts, settings, args.repeats
    )
    return {
        name: {
            "latency_ms_b1_p50": f["latency_ms_b1"],
            "latency_ms_b1_p90": f["latency_ms_b1_p90"],
            f"throughput_b{SPEED_BATCH_SIZE}": f["throughput_b32"],
            "latency_ms_b1_cpu": f["latency_ms_b1_cpu"],
            "throughput_b32_cpu": f["throughput_b32_cpu"],
            "load_avg_1m": f["load_avg_1m"],
        }
        for name, f in figures.items()
    }


def bench_teacher(name: str, texts: list[str], args: InferenceArguments, device: str) -> list[dict[str, Any]]:
    dtype = getattr(torch, args.dtype)
    teacher = load_bench_teacher(name, num_labels=2, seed=args.seed).to(device=device, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name or default_tokenizer_for(name))
    onnx = device == "cpu" and any(m in ONNX_MODELS for m in args.models)
    with tempfile.TemporaryDirectory() as onnx_dir:  # sessions hold their model in memory: the files can go after
        models = build_models(teacher, args, tokenizer, onnx_dir if onnx else None)
    figures = time_models(models, tokenizer, texts, args, device)
    base = figures["teacher"]
    rows = []
    for model_name, (model, layers) in models.items():
        fig = figures[model_name]
        _, params = count_parameters(model)
        rows.append(
            {
                "teacher": os.path.basename(os.path.normpath(name)),
                "model": model_name,
                "runtime": "pytorch"
                if model_name in TORCH_MODELS
                else ("onnxruntime-int8" if model_name.endswith("_int8") else "onnxruntime-fp32"),
                "layers": layers,
                "num_layers": model.config.num_hidden_layers,
                "params": params,
                "latency_ms_b1_p50": fig["latency_ms_b1_p50"],
                "latency_ms_b1_p90": fig["latency_ms_b1_p90"],
                "throughput_b32": fig["throughput_b32"],
                "latency_speedup": base["latency_ms_b1_p50"] / fig["latency_ms_b1_p50"],
                "throughput_speedup": fig["throughput_b32"] / base["throughput_b32"],
                "device": device,
                "dtype": args.dtype,
                "threads": torch.get_num_threads(),
                "latency_runs": args.latency_runs * args.repeats,
                "throughput_texts": args.throughput_texts,
                "repeats": args.repeats,
                "max_seq_length": args.max_seq_length,
                # CPU time of this process: stays comparable while other jobs share the machine (1 thread).
                "latency_ms_b1_cpu": fig["latency_ms_b1_cpu"],
                "throughput_b32_cpu": fig["throughput_b32_cpu"],
                "latency_speedup_cpu": base["latency_ms_b1_cpu"] / fig["latency_ms_b1_cpu"],
                "load_avg_1m": fig["load_avg_1m"],
            }
        )
    return rows


@exit_on_usage_error
def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    (args,) = parse_args((InferenceArguments,), argv)
    refuse_to_overwrite(args.output_dir, (RESULTS_FILE,), args.overwrite_output_dir)
    device = resolve_device(args.device)
    if args.dtype == "float16" and device == "cpu":
        raise UsageError("--dtype float16 on a CPU is slow and not what anyone serves; use bfloat16 or a GPU")
    with bench_session(args.num_threads):
        return run_benchmark(args, device)


def run_benchmark(args: InferenceArguments, device: str) -> list[dict[str, Any]]:
    data_args = DataTrainingArguments(dataset_name=args.dataset_name, max_seq_length=args.max_seq_length)
    texts = list(load_text_classification_data(data_args, seed=args.seed).splits["test"]["text"])
    print(
        f"{device} ({torch.get_num_threads()} threads, {args.dtype}): {len(texts)} test comments from "
        f"{args.dataset_name}; {args.repeats} × ({args.latency_runs} single texts + {args.throughput_texts} in batches "
        f"of {SPEED_BATCH_SIZE}) per model",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    columns = ["model", "layers", "params", "latency_ms_b1_p50", "latency_ms_b1_p90", "throughput_b32"]
    columns += ["latency_speedup", "throughput_speedup"]
    for name in args.teachers:
        start = time.perf_counter()
        mine = bench_teacher(name, texts, args, device)
        rows += mine
        title = f"{mine[0]['teacher']} ({mine[0]['num_layers']} layers), {time.perf_counter() - start:.0f} s"
        print_table(mine, columns, title=title)
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, RESULTS_FILE)
    write_csv(path, rows)
    print(f"written: {path}")
    return rows


if __name__ == "__main__":
    main()
