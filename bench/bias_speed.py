#!/usr/bin/env python
"""How long `run_eval.py --bias_dataset` takes per model: the identity-bias set scored by a 3-layer student and its
6-layer teacher, through the functions run_eval's `distillkit.bias_eval.BiasScorer` calls, timed one by one.

    python bench/bias_speed.py --output_dir OUT/bias_speed                   # all 75,700 texts, 2 threads
    python bench/bias_speed.py --max_per_identity 300 --output_dir OUT/bs    # the study's sample (15,000 texts)
    python bench/bias_speed.py --quick --output_dir OUT/bias_speed_quick     # seconds-long smoke run

The teacher is the shared MiniLM encoder (6 layers) with a fresh 2-class head; the student keeps its odd layers
(`distillkit.students.build_student`, layers 1,3,5). Weights are untrained: speed does not depend on them. The texts
are tokenised once (sorted by token count, padded per batch) and that tokenisation is shared by both models, as
run_eval shares it between models with one tokenizer; `tokenise_s` is that one pass, `predict_s` a model's forward
passes and `metrics_s` its bias figures (50 identities × 3 AUCs, rates). `total_s` = tokenise_s + predict_s +
metrics_s: what one model alone would cost. CPU seconds (`cpu_s`, this process) are recorded beside wall seconds: on
a machine shared with other jobs the wall time grows with the load (the 1-minute load average is in `load_avg_1m`),
so compare the models by their ratio, measured side by side. Goal (issue 26): the 3-layer student's `total_s` under
60 s on 2 cores.

Writes OUTPUT_DIR/bias_speed.csv and prints the table.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch
from transformers import AutoTokenizer

from bench.common import (
    DEFAULT_TEACHER,
    RANDOM_TINY,
    SHARED,
    bench_session,
    default_tokenizer_for,
    load_bench_teacher,
    print_table,
    refuse_to_overwrite,
    write_csv,
)
from distillkit.bias import bias_summary, identity_table, toxic_decisions, toxic_scores
from distillkit.bias_eval import BiasArguments, load_bias_set
from distillkit.cli import exit_on_usage_error, parse_args
from distillkit.runtime import encode_batches, predict_batches
from distillkit.students import build_student, count_parameters
from distillkit.tasks import Task

RESULTS_FILE = "bias_speed.csv"
DEFAULT_BIAS_SET = str(SHARED / "data" / "bias_madlibs")
GOAL_S = 60.0  # the 3-layer student, all 75,700 texts, 2 cores


@dataclass
class BiasSpeedArguments:
    output_dir: str = field(metadata={"help": f"Where {RESULTS_FILE} is written."})
    teacher: str = field(default=DEFAULT_TEACHER, metadata={"help": "6-layer teacher checkpoint (or random-tiny)."})
    bias_dataset: str = field(default=DEFAULT_BIAS_SET, metadata={"help": "The bias set (text, label, identity)."})
    max_per_identity: int | None = field(default=None, metadata={"help": "Score a stratified sample instead."})
    batch_size: int = field(default=512, metadata={"help": "Texts per forward pass."})
    max_seq_length: int = field(default=128, metadata={"help": "Token cap (the study's)."})
    num_threads: int = field(default=2, metadata={"help": "torch CPU threads."})
    quick: bool = field(default=False, metadata={"help": "random-tiny teacher, 20 texts per identity, 1 thread."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": f"Replace an existing {RESULTS_FILE}."})


def _timed(fn):
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - start_cpu


@exit_on_usage_error
def main(argv: list[str] | None = None) -> list[dict]:
    (args,) = parse_args((BiasSpeedArguments,), argv)
    if args.quick:
        args.teacher, args.max_per_identity, args.num_threads = RANDOM_TINY, args.max_per_identity or 20, 1
    refuse_to_overwrite(args.output_dir, [RESULTS_FILE], args.overwrite_output_dir)
    bias_set = load_bias_set(
        BiasArguments(bias_dataset=args.bias_dataset, bias_max_per_identity=args.max_per_identity), seed=0
    )
    with bench_session(args.num_threads):
        tokenizer = AutoTokenizer.from_pretrained(default_tokenizer_for(args.teacher))
        teacher = load_bench_teacher(args.teacher)
        n = teacher.config.num_hidden_layers
        models = {f"student_{(n + 1) // 2}layer_odd": build_student(teacher, list(range(1, n + 1, 2))).eval()}
        models[f"teacher_{n}layer"] = teacher
        batches, tokenise_s, tokenise_cpu = _timed(
            lambda: encode_batches(tokenizer, bias_set.texts, args.max_seq_length, args.batch_size)
        )
        task = Task()
        rows = []
        for name, model in models.items():
            with torch.inference_mode():
                model(**batches[-1][1])  # warm-up: one batch
            load = os.getloadavg()[0]
            logits, predict_s, predict_cpu = _timed(lambda: predict_batches(model, batches))

            def figures():
                probs = task.probabilities(logits)
                scores, preds = toxic_scores(probs, [1]), toxic_decisions(task.predict(probs), [1])
                table = identity_table(scores, bias_set.labels, preds, bias_set.identities)
                return bias_summary(table, scores, bias_set.labels, preds)

            _, metrics_s, metrics_cpu = _timed(figures)
            total = tokenise_s + predict_s + metrics_s
            rows.append(
                {
                    "model": name,
                    "layers": model.config.num_hidden_layers,
                    "params": count_parameters(model)[1],
                    "texts": len(bias_set),
                    "batch_size": args.batch_size,
                    "threads": torch.get_num_threads(),
                    "tokenise_s": round(tokenise_s, 2),
                    "predict_s": round(predict_s, 2),
                    "metrics_s": round(metrics_s, 2),
                    "total_s": round(total, 2),
                    "texts_per_s": round(len(bias_set) / total, 1),
                    "cpu_s": round(tokenise_cpu + predict_cpu + metrics_cpu, 2),
                    "load_avg_1m": round(load, 2),
                }
            )
    student, teacher_row = rows
    for row in rows:
        row["predict_vs_teacher"] = round(row["predict_s"] / teacher_row["predict_s"], 3)
    student["goal_total_s"] = GOAL_S if not args.max_per_identity and not args.quick else None
    os.makedirs(args.output_dir, exist_ok=True)
    write_csv(os.path.join(args.output_dir, RESULTS_FILE), rows)
    title = f"Bias-set scoring: {len(bias_set)} texts, {args.num_threads} thread(s) (wall and CPU seconds)"
    print_table(rows, title=title)
    return rows


if __name__ == "__main__":
    main()
