#!/usr/bin/env python
"""What `--layers auto` costs and how stable its choice is, by the size of the samples it scores on.

    python bench/layer_selection.py --teacher EXP/seed42/teacher --dataset_name ../shared/data/wiki_toxic \
        --max_seq_length 64 --output_dir OUT/layer_selection
    python bench/layer_selection.py --quick --dataset_name ../shared/data/wiki_toxic_small \
        --output_dir OUT/layer_selection_quick                                 # seconds-long smoke run

For a fine-tuned teacher, `distillkit.layer_selection.choose_layers` runs once on the whole validation split (the
reference) and then, for each `--validation_rows` size, on `--sample_seeds` seeded samples of the validation split
(and `--train_rows` training rows for Block Influence). Each row of the CSV is one choice: its seconds, the layers
chosen and whether they equal the reference's. One torch thread, as the study runs. On a machine shared with other
jobs the seconds grow with the load (`load_avg_1m`): compare sizes by their ratio within one run, and the selection's
cost with a student's training by the `layer_selection_seconds` / `train_runtime` that one run_distill run records.

Writes OUTPUT_DIR/layer_selection.csv and prints the table.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from bench.common import (
    RANDOM_TINY,
    bench_session,
    default_tokenizer_for,
    load_bench_teacher,
    print_table,
    refuse_to_overwrite,
    write_csv,
)
from distillkit.cli import exit_on_usage_error, parse_args
from distillkit.data import DataTrainingArguments, load_text_classification_data, tokenize_splits
from distillkit.layer_selection import DEFAULT_TRAIN_ROWS, choose_layers
from distillkit.students import num_layers

RESULTS_FILE = "layer_selection.csv"


@dataclass
class LayerSelectionBenchArguments:
    output_dir: str = field(metadata={"help": f"Where {RESULTS_FILE} is written."})
    teacher: str = field(default=RANDOM_TINY, metadata={"help": "A fine-tuned teacher checkpoint (or random-tiny)."})
    validation_rows: list[int] = field(
        default_factory=lambda: [48, 64, 96, 128, 256, 512], metadata={"help": "Sample sizes."}
    )
    train_rows: int = field(default=DEFAULT_TRAIN_ROWS, metadata={"help": "Training rows for Block Influence."})
    sample_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4], metadata={"help": "One choice each."})
    num_student_layers: int | None = field(default=None, metadata={"help": "k (default: half the teacher's)."})
    batch_size: int = field(default=64, metadata={"help": "Rows per forward pass."})
    num_threads: int = field(default=1, metadata={"help": "torch CPU threads (the study uses 1)."})
    quick: bool = field(default=False, metadata={"help": "random-tiny teacher on the tiny shared data, 2 seeds."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": f"Replace an existing {RESULTS_FILE}."})


@exit_on_usage_error
def main(argv: list[str] | None = None) -> list[dict]:
    args, data_args = parse_args((LayerSelectionBenchArguments, DataTrainingArguments), argv)
    refuse_to_overwrite(args.output_dir, [RESULTS_FILE], args.overwrite_output_dir)
    if args.quick:
        args.teacher, args.validation_rows, args.sample_seeds = RANDOM_TINY, [16], [0, 1]
    rows = []
    with bench_session(args.num_threads):
        data = load_text_classification_data(data_args, seed=0)
        if args.teacher == RANDOM_TINY:
            teacher = load_bench_teacher(RANDOM_TINY, num_labels=data.num_labels)
        else:
            teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher)
        tokenizer = AutoTokenizer.from_pretrained(default_tokenizer_for(args.teacher))
        tokenized = tokenize_splits(data, tokenizer, data_args.max_seq_length)
        collator = DataCollatorWithPadding(tokenizer)
        k = args.num_student_layers or num_layers(teacher) // 2
        runs = [(len(tokenized["validation"]), 0)] + [(n, s) for n in args.validation_rows for s in args.sample_seeds]
        reference = None
        for validation_rows, seed in runs:
            load = os.getloadavg()[0]
            selection = choose_layers(
                teacher, tokenized["train"], tokenized["validation"], collator, k,
                train_rows=args.train_rows, validation_rows=validation_rows, batch_size=args.batch_size, seed=seed,
            )
            reference = reference or selection.chosen
            rows.append({
                "validation_rows": selection.validation_rows,
                "train_rows": selection.train_rows,
                "sample_seed": seed,
                "seconds": selection.seconds,
                "chosen": " ".join(map(str, selection.chosen)),
                "same_as_whole_split": selection.chosen == reference,
                "teacher_metric": round(selection.teacher_metric, 4),
                "skip_metric_drop": " ".join(f"{v:.3f}" for v in selection.scores["skip_metric_drop"]),
                "block_influence": " ".join(f"{v:.3f}" for v in selection.scores["block_influence"]),
                "load_avg_1m": round(load, 2),
                "teacher": os.path.basename(os.path.normpath(args.teacher)),
                "dataset": os.path.basename(os.path.normpath(data_args.dataset_name or "")),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            })
    write_csv(os.path.join(args.output_dir, RESULTS_FILE), rows)
    print_table(rows, ["validation_rows", "train_rows", "sample_seed", "seconds", "chosen", "same_as_whole_split"])
    return rows


if __name__ == "__main__":
    main()
