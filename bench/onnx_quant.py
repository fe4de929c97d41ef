#!/usr/bin/env python
"""Which int8 quantization keeps a trained classifier's quality: the levers of dynamic quantization, one row each.

    python bench/onnx_quant.py --model_dir EXP/even --dataset_name ../shared/data/wiki_toxic_small --output_dir OUT

The model is exported once to fp32 ONNX (`distillkit.export`, checked against PyTorch); each variant quantizes that
same file (`distillkit.export.quantize_int8`) with one combination of the levers: per-channel weight scales, only
the MatMuls quantized (not the embedding Gathers or fused Attention), the pooler and classifier kept in fp32, and a
graph step first (ONNX Runtime's `quant_pre_process`, or its transformer optimizer, which fuses attention). Each row
gives the int8 model's argmax agreement with fp32 and its F1 on the --split texts (validation: the split export
uses to choose; test: the one the goals are measured on), the largest probability change, size on disk, and
single-text latency / batch-32 throughput timed as run_eval times models (`measure_speed`).

Writes OUTPUT_DIR/onnx_quant.csv and prints the table. The first row is fp32 itself.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bench.common import bench_session, print_table, refuse_to_overwrite, write_csv
from distillkit.cli import UsageError, exit_on_usage_error, parse_args
from distillkit.data import DataTrainingArguments, load_text_classification_data
from distillkit.evaluation import SpeedSettings, measure_speed
from distillkit.export import (
    QuantSettings,
    agreement_metrics,
    export_fp32,
    load_trained_classifier,
    logits_difference,
    onnx_probs,
    quantize_int8,
)
from distillkit.runtime import OnnxClassifier

RESULTS_FILE = "onnx_quant.csv"
# From the plain `quantize_dynamic` call (per-tensor, every op it knows, head included) to each lever and the
# combinations; the default of run_export.py is QuantSettings().
VARIANTS = {
    "plain": QuantSettings(per_channel=False, matmul_only=False, keep_head_fp32=False),
    "per_channel": QuantSettings(per_channel=True, matmul_only=False, keep_head_fp32=False),
    "matmul_only": QuantSettings(per_channel=False, matmul_only=True, keep_head_fp32=False),
    "head_fp32": QuantSettings(per_channel=False, matmul_only=False, keep_head_fp32=True),
    "per_channel+matmul": QuantSettings(per_channel=True, matmul_only=True, keep_head_fp32=False),
    "per_channel+matmul+head_fp32": QuantSettings(per_channel=True, matmul_only=True, keep_head_fp32=True),
    "per_channel+matmul+embeddings+head_fp32": QuantSettings(True, True, embeddings=True, keep_head_fp32=True),
    "pre_process+per_channel+matmul+head_fp32": QuantSettings(
        True, True, keep_head_fp32=True, preprocess="pre_process"
    ),
    "optimizer": QuantSettings(per_channel=False, matmul_only=False, keep_head_fp32=False, preprocess="optimizer"),
    "optimizer+per_channel+head_fp32": QuantSettings(True, False, keep_head_fp32=True, preprocess="optimizer"),
    "optimizer+per_channel+matmul+head_fp32": QuantSettings(True, True, keep_head_fp32=True, preprocess="optimizer"),
}


@dataclass
class QuantBenchArguments:
    model_dir: str = field(metadata={"help": "A trained classifier directory (what run_export.py takes)."})
    dataset_name: str = field(metadata={"help": "Its data set: agreement and F1 are measured on --split."})
    output_dir: str = field(metadata={"help": f"Where {RESULTS_FILE} is written."})
    split: str = field(default="validation", metadata={"help": "Texts scored.", "choices": ["validation", "test"]})
    variants: list[str] = field(default_factory=lambda: list(VARIANTS), metadata={"help": "Variants to run."})
    max_samples: int | None = field(default=None, metadata={"help": "Score only this many texts of the split."})
    max_seq_length: int = field(default=128, metadata={"help": "Truncation, as in training."})
    latency_runs: int = field(default=100, metadata={"help": "Single-text calls timed per variant."})
    throughput_texts: int = field(default=256, metadata={"help": "Texts timed in batches of 32 per variant."})
    num_threads: int | None = field(default=None, metadata={"help": "Threads for torch and ONNX Runtime."})
    seed: int = field(default=42, metadata={"help": "Seed of held-out splits the data set lacks."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an earlier run's CSV."})

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise UsageError(f"--variants {','.join(unknown)}: expected some of {', '.join(VARIANTS)}")


def row_for(name: str, model: OnnxClassifier, settings: QuantSettings | None, quality: dict, speed: dict) -> dict:
    return {
        "variant": name,
        "settings": settings.label if settings else "fp32 (not quantized)",
        "agreement_pct": 100 * quality["agreement"],
        "f1": quality["f1_int8"],
        "f1_fp32": quality["f1_fp32"],
        "f1_change_pt": 100 * (quality["f1_int8"] - quality["f1_fp32"]),
        "roc_auc": quality["roc_auc_int8"],
        "max_prob_diff": quality["max_prob_diff"],
        "size_mb": os.path.getsize(model.path) / 2**20,
        "latency_ms_b1": speed["latency_ms_b1"],
        "latency_ms_b1_p90": speed["latency_ms_b1_p90"],
        "throughput_b32": speed["throughput_b32"],
        # CPU time of this process: comparable across variants while other jobs share the machine (1 thread).
        "latency_ms_b1_cpu": speed["latency_ms_b1_cpu"],
        "throughput_b32_cpu": speed["throughput_b32_cpu"],
        "texts": quality["texts"],
        "threads": torch.get_num_threads(),
        "load_avg_1m": speed["load_avg_1m"],
    }


@exit_on_usage_error
def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    (args,) = parse_args((QuantBenchArguments,), argv)
    refuse_to_overwrite(args.output_dir, (RESULTS_FILE,), args.overwrite_output_dir)
    with bench_session(args.num_threads):
        return run(args)


def run(args: QuantBenchArguments) -> list[dict[str, Any]]:
    data_args = DataTrainingArguments(dataset_name=args.dataset_name, max_seq_length=args.max_seq_length)
    split = load_text_classification_data(data_args, seed=args.seed).splits[args.split]
    if args.max_samples:
        # A seeded random subset: a split stored sorted by label would otherwise give one class only.
        split = split.shuffle(seed=args.seed).select(range(min(args.max_samples, len(split))))
    texts, labels = list(split["text"]), np.asarray(split["label"], dtype=np.int64)
    clf = load_trained_classifier(args.model_dir)
    config, tokenizer = clf.model.config, clf.tokenizer
    settings = SpeedSettings(
        latency_runs=args.latency_runs, throughput_texts=args.throughput_texts, max_length=args.max_seq_length
    )
    print(f"{args.model_dir}: {len(texts)} {args.split} texts, {torch.get_num_threads()} threads", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = os.path.join(tmp, "model.onnx")
        export_fp32(clf.model, tokenizer, fp32_path)
        fp32 = OnnxClassifier(fp32_path, config)
        diff = logits_difference(clf.model, fp32, tokenizer, texts[:64], args.max_seq_length)
        print(f"fp32 export: max |logit - PyTorch| {diff:.1e} on 64 texts", flush=True)
        probs32 = onnx_probs(fp32, tokenizer, texts, args.max_seq_length)  # the reference of every variant
        quality = agreement_metrics(probs32, probs32, labels)
        rows.append(row_for("fp32", fp32, None, quality, measure_speed(fp32, tokenizer, texts, settings)))
        for name in args.variants:
            start = time.perf_counter()
            path = os.path.join(tmp, f"{name}.onnx")
            quantize_int8(fp32_path, path, config, VARIANTS[name])
            int8 = OnnxClassifier(path, config)
            quality = agreement_metrics(probs32, onnx_probs(int8, tokenizer, texts, args.max_seq_length), labels)
            rows.append(row_for(name, int8, VARIANTS[name], quality, measure_speed(int8, tokenizer, texts, settings)))
            print(f"  {name}: {time.perf_counter() - start:.0f} s", flush=True)
            del int8
    columns = ["variant", "agreement_pct", "f1", "f1_change_pt", "roc_auc", "max_prob_diff", "size_mb"]
    columns += ["latency_ms_b1", "throughput_b32", "latency_ms_b1_cpu", "throughput_b32_cpu"]
    print_table(rows, columns, title=f"int8 variants vs fp32 on {args.split}")
    path = os.path.join(args.output_dir, RESULTS_FILE)
    write_csv(path, rows)
    print(f"written: {path}")
    return rows


if __name__ == "__main__":
    main()
