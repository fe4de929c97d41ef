#!/usr/bin/env python
"""The study: every method × seed on one data set, resumable, one stage at a time, small results committed as they land.

    nice -n 15 python study/run_study.py --dataset wiki_toxic --seeds 42 43 44 45 46 --work_dir ../study
    python study/run_study.py --report_only true        # rebuild every data set's report and docs/results/README.md

For each (method, seed), in the order of PHASES (the core question first, for every seed; then the rest):
1. `run_compare.py --methods <what it starts from> <method>` trains it into WORK/<data set>/seed<S>/<method> (finished
   stages are skipped, a killed one resumes from its last checkpoint);
2. `run_eval.py --model_dirs` scores just that model into WORK/<data set>/stage_eval/<method>/seed<S>;
3. its small outputs — results.csv, predictions.csv.gz (label, pred, probabilities; no text), loss_history.json,
   stage.json — go to docs/results/<data set>/stages/<method>/seed<S>/ (never weights), written to a temporary
   folder and renamed, so a stage folder exists only when complete;
4. docs/results/<data set>/report.md (paired differences, forest plot, quality vs latency) is rebuilt from every
   stage folder, and docs/results/README.md from every data set (--rebuild_reports false leaves both to one
   --report_only true at the end: study/streams.sh does, since on go_emotions the rebuild outlasted a stage).
The bias stage (on by default for the toxicity sets, --bias_datasets): run_eval also scores the stage's model on the
identity-bias set (--bias_dataset, a stratified sample of --bias_max_per_identity texts per identity × label), the
stage folder gets bias.csv and bias_summary.csv, and the report docs/results/<data set>/bias.csv, bias_summary.csv,
bias_vs_teacher.csv and its identity-bias section (each method beside the teacher, paired by seed; the bias family,
every method − teacher on three measures, corrected by --correction at --alpha). A published stage without its bias
figures is scored again from its weights in --work_dir, or trained again when they are gone.
A stage whose folder exists is skipped, also on a fresh clone where the weights are gone (a method that starts from
a teacher or student not on disk trains that base again, same seed). Commit with
`git add docs/results/<data set> && git commit -m ... -- docs/results/<data set> docs/results/README.md`.
"""

from __future__ import annotations

import glob
import itertools
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pandas as pd
import torch

from distillkit.bias_eval import BIAS_FILE, BIAS_SUMMARY_FILE, BiasArguments, BiasScorer, load_bias_set
from distillkit.bias_report import write_bias_section
from distillkit.cli import UsageError, configure_logging, exit_on_usage_error, is_finished_run, parse_args
from distillkit.data import DataTrainingArguments, load_text_classification_data
from distillkit.evaluation import SpeedSettings, loss_history, measure_speed_side_by_side
from distillkit.layer_report import LAYER_SELECTION_FILE, write_layer_selection_section
from distillkit.runtime import load_classifier_dir
from distillkit.methods import METHODS, dependencies
from distillkit.records import RunRecord
from distillkit.stats import CORRECTIONS, DEFAULT_RESAMPLES
from distillkit.report import (
    PER_LABEL_FILE,
    SIDE_BY_SIDE_LATENCY,
    linked_images,
    per_label_over_seeds,
    plot_loss_curves,
    plot_method_means,
    plot_per_label,
    sort_results,
    study_index_markdown,
    summarize,
    training_compute,
    write_report,
)
from distillkit.students import count_parameters
from distillkit.tasks import MULTI_LABEL

logger = logging.getLogger("run_study")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The training budget of each data set, the same for every method. The second edition (docs/results/ANALYSIS_PLAN.md
# §7–8): 0.42 × the first edition's training rows (0.7, then 0.6), 64 tokens, and the epochs that
# study/budget_pilot.py chose on the full validation split (docs/results/pilot2/<data set>.csv;
# tests/test_study_tools.py checks EPOCHS against it).
# The first edition's budgets are recorded in its stage.json files (docs/results/earlier/first_edition/).
MAX_SEQ_LENGTH = 64
# The pilots ran at 0.7 x the first edition's rows; the estimate recomputed with their epochs (§8) was 25 CPU-hours,
# so the plan's rule cut the rows once more, by 0.6 for every arm (the pilots are not re-run).
PILOT_ROWS = {"wiki_toxic": 1400, "hate_speech18": 2800, "go_emotions": 5600}
ROWS_CUT = 0.6
TRAIN_ROWS = {name: round(rows * ROWS_CUT) for name, rows in PILOT_ROWS.items()}
# The 28-label multi-label form (issue 12), BCE with balanced pos_weight: unweighted BCE stayed at the labels' base
# rates in the first edition's pilot (study/README_head.md).
TASK_BUDGET_FLAGS = {"go_emotions": "--problem_type multi_label --class_weights balanced"}
EPOCHS = {"wiki_toxic": 2, "hate_speech18": 4, "go_emotions": 3}
BUDGETS = {
    name: f"--max_train_samples {rows} --num_train_epochs {EPOCHS[name]} {TASK_BUDGET_FLAGS.get(name, '')}".strip()
    for name, rows in TRAIN_ROWS.items()
}
TEACHER_LEARNING_RATE = "5e-5"  # the pilots' rate; the search's winner replaces it per data set (searched_flags)
# The flags every training script of a stage takes (run_finetune, run_distill, run_lora): the pilot, the search and the
# LoRA sweep run a script directly with these; run_compare.py also takes COMMON's teacher learning rate.
SCRIPT_FLAGS = (
    f"--max_seq_length {MAX_SEQ_LENGTH} --per_device_train_batch_size 32 --save_strategy steps "
    "--save_steps 25 --save_total_limit 1 --logging_steps 25 --do_eval false --do_predict false --use_cpu true "
    "--report_to none --disable_tqdm true"
)
COMMON = f"--teacher_learning_rate {TEACHER_LEARNING_RATE} {SCRIPT_FLAGS}"
EVAL_FLAGS = "--num_threads 1 --latency_runs 100 --throughput_texts 256 --bootstrap_samples 100"
# The question first: teacher, odd, even and their CE-only controls for every seed; then LoRA and the other layer sets.
# Then the CE-only controls of the other layer choices (the second edition: a control for every layer choice).
PHASES = (
    ("teacher", "odd", "even", "odd_ce", "even_ce"),
    ("lora", "lora_even", "lora_steps", "auto", "spread", "bottom", "top"),
    ("spread_ce", "bottom_ce", "top_ce"),
)
STUDY_METHODS = tuple(itertools.chain.from_iterable(PHASES))
STAGES_DIR = "stages"
LATENCY_FILE = "latency.csv"  # one model per method timed side by side (--time_latency): the report's cost
TIMING_MODELS_DIR = "timing_models"  # --latency_train_rows: models trained only to be timed, never a stage's
BIAS_DATASETS = ("wiki_toxic", "hate_speech18")  # the toxicity sets: binary, p(toxic) is the bias score
BIAS_PER_IDENTITY = 300  # the plan: 300 texts per identity (150 toxic, 150 not), 15,000 of the 75,700
TASK_FLAGS = ("--problem_type", "--label_columns", "--label_threshold", "--label_column", "--text_column")


@dataclass
class StudyArguments:
    dataset: str | None = field(
        default=None, metadata={"help": "Data set folder name in --data_root (wiki_toxic, ...)."}
    )
    seeds: list[int] = field(default_factory=lambda: [42, 43, 44], metadata={"help": "Seeds, one run per method each."})
    methods: list[str] = field(
        default_factory=lambda: list(STUDY_METHODS),
        metadata={"help": "Methods of distillkit/methods.py (default: the study's methods, PHASES)."},
    )
    work_dir: str = field(default="../study", metadata={"help": "Where weights and per-stage evaluations go."})
    results_dir: str = field(default="docs/results", metadata={"help": "Where the small, committed outputs go."})
    data_root: str = field(default="../shared/data", metadata={"help": "Folder holding one folder per data set."})
    teacher: str = field(default="../shared/models/all-MiniLM-L6-v2", metadata={"help": "Pretrained teacher."})
    budget: str | None = field(default=None, metadata={"help": "Training flags instead of BUDGETS[dataset], quoted."})
    search_dir: str = field(
        default="docs/results/search",
        metadata={"help": "study/search.py's results: every arm takes the teacher and LoRA hyperparameters it chose."},
    )
    n_resamples: int = field(
        default=DEFAULT_RESAMPLES, metadata={"help": "Bootstrap resamples of the paired differences (seeds and texts)."}
    )
    correction: str = field(
        default="holm",
        metadata={
            "help": "Multiple-comparison correction over each data set's declared family of pairs × metrics: holm "
            "(family-wise error), bh (Benjamini–Hochberg false discovery rate) or none; the identity-bias family "
            "(method − teacher on the bias measures) is corrected separately, the same way. "
            "docs/results/ANALYSIS_PLAN.md fixes it before the run."
        },
    )
    alpha: float = field(default=0.05, metadata={"help": "A difference is called when its corrected p is below this."})
    report_only: bool = field(default=False, metadata={"help": "Only rebuild the reports from the stage folders."})
    rebuild_reports: bool = field(
        default=True,
        metadata={
            "help": "Rebuild the data set's report and the index after every stage. On go_emotions the rebuild (the "
            "seeds-and-texts bootstrap of every declared pair) takes longer than a stage, so the unattended streams "
            "turn it off and one --report_only true at the end rebuilds everything from the stage folders."
        },
    )
    time_latency: bool = field(
        default=False,
        metadata={
            "help": f"Time one trained model per method side by side (weights in --work_dir) into {LATENCY_FILE}, "
            "then rebuild the report: stages scored alone were timed at different moments of a shared machine."
        },
    )
    latency_train_rows: int = field(
        default=0,
        metadata={
            "help": "With --time_latency: a method with no finished model in --work_dir (a fresh machine) gets one "
            f"trained like its stage on this many rows for one epoch, into <work_dir>/<data set>/{TIMING_MODELS_DIR}, "
            "timed and marked so in latency.csv (speed depends on the architecture, not the weights). 0: refuse."
        },
    )
    dry_run: bool = field(default=False, metadata={"help": "Say which stages would run, run nothing."})
    bias_datasets: list[str] = field(
        default_factory=lambda: list(BIAS_DATASETS),
        metadata={"help": "Data sets whose stages get the bias stage (identity bias on --bias_dataset); none: off."},
    )
    bias_dataset: str = field(
        default="../shared/data/bias_madlibs", metadata={"help": "The identity-bias set (text, label 1 = toxic, identity)."}
    )
    bias_max_per_identity: int = field(
        default=BIAS_PER_IDENTITY, metadata={"help": "Texts per identity scored (a stratified sample; 0: all)."}
    )

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise UsageError(f"--methods {unknown[0]}: unknown method; choose from {' '.join(METHODS)}")
        exports = [m for m in self.methods if METHODS[m].kind == "export"]
        if exports:
            raise UsageError(
                f"--methods {exports[0]}: an export is scored as two models (fp32 and int8) and a stage holds one; "
                "bench/onnx_goals.py compares ONNX Runtime against PyTorch"
            )
        if not self.report_only and not self.dataset:
            raise UsageError("give --dataset NAME (or --report_only true)")
        if self.time_latency and not self.dataset:
            raise UsageError("--time_latency true times one data set's models: give --dataset NAME")
        if self.dataset and self.budget is None and self.dataset not in BUDGETS:
            raise UsageError(f"--dataset {self.dataset}: no budget in BUDGETS ({', '.join(BUDGETS)}); pass --budget")
        self.search_dir = os.path.normpath(os.path.join(REPO, self.search_dir))
        if self.dataset and self.budget is None and not (self.report_only or self.time_latency):
            if searched_hyperparameters(self.search_dir, self.dataset) is None:
                raise UsageError(
                    f"--dataset {self.dataset}: its search in {portable(self.search_dir)} is missing or unfinished; "
                    f"run study/search.py --dataset {self.dataset} first (docs/results/ANALYSIS_PLAN.md §6), or pass "
                    "--budget"
                )
        if self.correction not in CORRECTIONS:
            raise UsageError(f"--correction {self.correction}: choose from {', '.join(CORRECTIONS)}")
        if not 0 < self.alpha < 1:
            raise UsageError(f"--alpha {self.alpha}: give a level between 0 and 1, e.g. 0.05")
        if self.n_resamples < 1:
            raise UsageError(f"--n_resamples {self.n_resamples}: give a positive number (the plan uses 10000)")
        if len(set(self.seeds)) != len(self.seeds):
            raise UsageError(f"--seeds {' '.join(map(str, self.seeds))}: a seed appears twice")
        # Relative paths are the repository's (the stages run there), wherever this is started from.
        self.bias_datasets = [d for item in self.bias_datasets for d in item.split(",") if d and d != "none"]
        for name in ("work_dir", "results_dir", "data_root", "teacher", "bias_dataset"):
            setattr(self, name, os.path.normpath(os.path.join(REPO, getattr(self, name))))


def portable(value: object) -> object:
    """An absolute path of this machine becomes relative to the repository: committed files carry none."""
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.relpath(value, REPO)
    return value


def stage_dir(results_dir: str, dataset: str, method: str, seed: int) -> str:
    return os.path.join(results_dir, dataset, STAGES_DIR, method, f"seed{seed}")


def wants_bias(args: StudyArguments) -> bool:
    return bool(args.dataset) and args.dataset in args.bias_datasets


def bias_flags(args: StudyArguments) -> list[str]:
    """run_eval's flags of the bias stage: the set and the sample (the study's data sets are binary: p(toxic))."""
    if not wants_bias(args):
        return []
    sample = ["--bias_max_per_identity", str(args.bias_max_per_identity)] if args.bias_max_per_identity else []
    return ["--bias_dataset", args.bias_dataset, *sample]


def stage_order(methods: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """(method, seed) in run order: phase by phase, seed by seed, methods in phase order."""
    order = []
    leftover = tuple(m for m in METHODS if not any(m in phase for phase in PHASES))
    for phase in (*PHASES, leftover):
        for seed in seeds:
            order += [(m, seed) for m in phase if m in methods]
    return order


def run(cmd: list[str], dry_run: bool) -> None:
    logger.info(shlex.join(cmd))
    if dry_run:
        return
    code = subprocess.call(cmd, cwd=REPO)
    if code != 0:
        raise SystemExit(
            f"error: {shlex.join(cmd[:3])} ... failed (exit code {code}); run the same study command again"
        )


def task_flags(budget: str) -> list[str]:
    """The budget's flags that say what the labels are (--problem_type, ...): the evaluation must read the same task."""
    words, out = shlex.split(budget), []
    for flag, value in itertools.pairwise(words):
        if flag in TASK_FLAGS:
            out += [flag, value]
    return out


def searched_hyperparameters(search_dir: str, dataset: str) -> dict[str, float | int | str] | None:
    """The search's winners for the data set (study/search.py's CSV in `search_dir`); None when the search is missing
    or unfinished. Every arm of the data set trains with them (ANALYSIS_PLAN §6)."""
    from study.search import chosen_hyperparameters, is_complete  # search.py imports this module

    path = os.path.join(search_dir, f"{dataset}.csv")
    if not os.path.isfile(path):
        return None
    rows = pd.read_csv(path)
    return chosen_hyperparameters(rows) if is_complete(rows) else None


def searched_flags(args: StudyArguments) -> list[str]:
    """run_compare.py's flags for the search's winners (after COMMON, so they replace its teacher learning rate);
    none when --budget replaces the study's budget."""
    found = None if args.budget is not None else searched_hyperparameters(args.search_dir, args.dataset)
    if found is None:
        return []
    lora = f"--lora_r {found['lora_r']} --lora_target_modules {found['lora_target_modules']}"
    return ["--teacher_learning_rate", f"{found['teacher_learning_rate']:g}"] + [
        "--lora_learning_rate", f"{found['lora_learning_rate']:g}", "--lora_args", lora
    ]


def budget_flags(args: StudyArguments) -> str:
    return args.budget if args.budget is not None else BUDGETS[args.dataset]


def train(args: StudyArguments, methods: list[str], seed: int, experiment_dir: str, extra: list[str] = ()) -> None:
    """One `run_compare.py` for `methods` and their bases whose weights are gone, with the study's flags (then
    `extra`: the last value of a flag wins)."""
    ordered = list(dict.fromkeys(m for method in methods for m in (*dependencies(method), method)))  # bases first
    run(
        [sys.executable, os.path.join(REPO, "run_compare.py"), "--teacher_name_or_path", args.teacher]
        + ["--dataset_name", os.path.join(args.data_root, args.dataset), "--experiment_dir", experiment_dir]
        + ["--seeds", str(seed), "--methods", *ordered, *shlex.split(COMMON)]
        + searched_flags(args)
        + shlex.split(budget_flags(args))
        + list(extra),
        args.dry_run,
    )


def train_and_score(args: StudyArguments, method: str, seed: int) -> str:
    """Train the stage (and its bases when their weights are gone) and score it alone; returns the eval folder."""
    work = os.path.join(args.work_dir, args.dataset)
    data = os.path.join(args.data_root, args.dataset)
    train(args, [method], seed, work)
    out = os.path.join(work, "stage_eval", method, f"seed{seed}")
    run(
        [sys.executable, os.path.join(REPO, "run_eval.py"), "--model_dirs", os.path.join(work, f"seed{seed}", method)]
        + ["--dataset_name", data, "--max_seq_length", str(MAX_SEQ_LENGTH), "--output_dir", out]
        + ["--overwrite_output_dir", "true"]
        + task_flags(budget_flags(args))
        + shlex.split(EVAL_FLAGS)
        + bias_flags(args),
        args.dry_run,
    )
    return out


def publish(args: StudyArguments, method: str, seed: int, eval_dir: str) -> str:
    """Copy the stage's small outputs into its committed folder, atomically (temporary folder, then rename)."""
    target = stage_dir(args.results_dir, args.dataset, method, seed)
    tmp = os.path.join(os.path.dirname(target), f".tmp-{os.path.basename(target)}")  # never matches seed*/
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    results = pd.read_csv(os.path.join(eval_dir, "results.csv"))
    if len(results) != 1:
        raise SystemExit(f"error: {eval_dir}/results.csv has {len(results)} rows; expected the one model of the stage")
    recorded_method = results.method.iloc[0]
    results["model"], results["method"] = f"seed{seed}-{method}", method
    results = results.drop(columns=["path"], errors="ignore").map(portable)
    (prediction_file,) = glob.glob(os.path.join(eval_dir, "predictions", "*.csv"))
    frame = pd.read_csv(prediction_file)
    probs = [c for c in frame.columns if c.startswith("prob_")]
    # A multi-label file's label/pred are label-id sets ("3,10"): its problem_type column says so to the statistics.
    task = ["problem_type"] if "problem_type" in frame.columns else []
    frame[["label", "pred", *probs, *task]].round(6).to_csv(os.path.join(tmp, "predictions.csv.gz"), index=False)
    model_dir = os.path.join(args.work_dir, args.dataset, f"seed{seed}", method)
    record = RunRecord.load(model_dir)
    if record is not None and len(record.label_names) == len(probs):
        names = dict(enumerate(record.label_names))
    else:  # the names the predictions spell out (single-label files)
        names = dict(zip(frame.label, frame.label_name)) | dict(zip(frame.pred, frame.pred_name))
    with open(os.path.join(tmp, "loss_history.json"), "w") as f:
        json.dump(loss_history(model_dir), f)
    with open(os.path.join(tmp, "stage.json"), "w") as f:
        json.dump(
            {
                "dataset": args.dataset,
                "method": method,
                "recorded_method": recorded_method,
                "seed": seed,
                "label_names": [str(names.get(i, i)) for i in range(len(probs))],
                "budget": budget_flags(args),
                "common": COMMON,
                "searched": shlex.join(searched_flags(args)),
                # lora_steps trains for 2x the budget's epochs (run_compare.scaled_training_flags)
                "epochs_factor": METHODS[method].epochs_factor,
                "eval": EVAL_FLAGS,
                "machine": f"{platform.machine()} {os.cpu_count()} CPU(s)",
                "torch": torch.__version__,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                **({"bias": bias_record(args)} if wants_bias(args) else {}),
            },
            f,
            indent=1,
        )
    selection = os.path.join(eval_dir, LAYER_SELECTION_FILE)  # an `auto` model's layer choice and its cost
    if os.path.isfile(selection):
        pd.read_csv(selection).assign(model=f"seed{seed}-{method}").to_csv(
            os.path.join(tmp, LAYER_SELECTION_FILE), index=False
        )
    if wants_bias(args):
        rename = {"model": f"seed{seed}-{method}"}
        for name in (BIAS_FILE, BIAS_SUMMARY_FILE):
            frame = pd.read_csv(os.path.join(eval_dir, name), keep_default_na=False, na_values=[""])
            frame = frame.assign(**rename, **({"method": method} if "method" in frame else {}))
            frame.map(portable).to_csv(os.path.join(tmp, name), index=False)
    results.to_csv(os.path.join(tmp, "results.csv"), index=False)
    shutil.rmtree(target, ignore_errors=True)  # a stage re-run for its bias figures replaces the old folder
    os.replace(tmp, target)
    return target


def bias_record(args: StudyArguments) -> dict:
    """What stage.json records about the bias stage."""
    return {"dataset": portable(args.bias_dataset), "max_per_identity": args.bias_max_per_identity or None}


def score_bias_only(args: StudyArguments, method: str, seed: int) -> str:
    """A published stage without bias figures whose weights are still in --work_dir: score just the bias set."""
    target = stage_dir(args.results_dir, args.dataset, method, seed)
    model_dir = os.path.join(args.work_dir, args.dataset, f"seed{seed}", method)
    bias_args = BiasArguments(bias_dataset=args.bias_dataset, bias_max_per_identity=args.bias_max_per_identity or None)
    clf = load_classifier_dir(model_dir, name=f"seed{seed}-{method}")
    table, row, _ = BiasScorer(load_bias_set(bias_args, seed=42), max_length=MAX_SEQ_LENGTH).score(clf)
    row["method"] = method
    tmp = os.path.join(os.path.dirname(target), f".tmp-bias-{os.path.basename(target)}")
    os.makedirs(tmp, exist_ok=True)
    table.map(portable).to_csv(os.path.join(tmp, BIAS_FILE), index=False)
    pd.DataFrame([row]).map(portable).to_csv(os.path.join(tmp, BIAS_SUMMARY_FILE), index=False)
    record_path = os.path.join(target, "stage.json")
    with open(record_path) as f:
        record = json.load(f)
    with open(os.path.join(tmp, "stage.json"), "w") as f:
        json.dump({**record, "bias": bias_record(args)}, f, indent=1)
    # The summary last: a stage counts as scored once bias_summary.csv is in its folder.
    for name in ("stage.json", BIAS_FILE, BIAS_SUMMARY_FILE):
        os.replace(os.path.join(tmp, name), os.path.join(target, name))
    os.rmdir(tmp)
    return target


def time_side_by_side(args: StudyArguments, repeats: int = 5) -> str:
    """One trained model per method (its first seed with weights in --work_dir), each method's latency and throughput
    measured side by side in one process with one thread (`measure_speed_side_by_side`) on the data set's test texts
    → <results>/<data set>/latency.csv. Speed depends on the architecture, not the weights, so one seed is enough."""
    work = os.path.join(args.work_dir, args.dataset)
    chosen = {}  # method -> (model folder, seed, what its weights are)
    missing = []
    for method in args.methods:
        seed = next((s for s in args.seeds if is_finished_run(os.path.join(work, f"seed{s}", method))), None)
        if seed is not None:
            chosen[method] = (os.path.join(work, f"seed{seed}", method), seed, "stage")
        elif not args.latency_train_rows:
            raise SystemExit(
                f"error: no finished {method} model for seeds {' '.join(map(str, args.seeds))} in {work}; "
                "run the study first, pass --latency_train_rows N, or drop the method from --methods"
            )
        else:
            missing.append(method)
    if missing:
        # A fresh machine: the stages' weights are gone. Their architecture (layers, LoRA rank and targets) is what
        # sets the speed, so models trained like the stages on a few rows time the same; a folder no stage reuses.
        timing_dir, seed = os.path.join(work, TIMING_MODELS_DIR), args.seeds[0]
        rows = ["--max_train_samples", str(args.latency_train_rows), "--num_train_epochs", "1"]
        train(args, missing, seed, timing_dir, rows)
        for method in missing:
            chosen[method] = (
                os.path.join(timing_dir, f"seed{seed}", method), seed, f"timing only ({args.latency_train_rows} rows)"
            )
    chosen = {m: chosen[m] for m in args.methods}  # the order asked for
    torch.set_num_threads(1)
    texts = list(
        load_text_classification_data(
            DataTrainingArguments(dataset_name=os.path.join(args.data_root, args.dataset)), seed=0
        ).splits["test"]["text"]
    )
    loaded = {m: load_classifier_dir(path, name=m) for m, (path, _, _) in chosen.items()}
    logger.info(f"timing {', '.join(loaded)} side by side, {repeats} rounds on {len(texts)} test texts")
    figures = measure_speed_side_by_side(
        {m: (clf.model, clf.tokenizer) for m, clf in loaded.items()}, texts, SpeedSettings(throughput_texts=64), repeats
    )
    rows = [
        {
            "method": m,
            "seed": chosen[m][1],
            "weights": chosen[m][2],
            "params": count_parameters(loaded[m].model)[1],
            **{k: round(v, 4) for k, v in figures[m].items()},
        }
        for m in loaded
    ]
    table = pd.DataFrame(rows)
    if "teacher" in loaded:
        table["latency_vs_teacher"] = (table.latency_ms_b1_cpu / figures["teacher"]["latency_ms_b1_cpu"]).round(3)
    path = os.path.join(args.results_dir, args.dataset, LATENCY_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    table.to_csv(path, index=False)
    logger.info(f"wrote {path}:\n{table.to_string(index=False)}")
    return path


def load_stages(dataset_dir: str) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, list], list[dict]]:
    """Every committed stage of a data set: results rows, predictions, loss histories (by model) and stage records."""
    rows, predictions, histories, records = [], {}, {}, []
    for path in sorted(glob.glob(os.path.join(dataset_dir, STAGES_DIR, "*", "seed*", "results.csv"))):
        folder = os.path.dirname(path)
        row = pd.read_csv(path)
        model = row.model.iloc[0]
        rows.append(row)
        predictions[model] = pd.read_csv(os.path.join(folder, "predictions.csv.gz"))
        with open(os.path.join(folder, "loss_history.json")) as f:
            histories[model] = json.load(f)
        with open(os.path.join(folder, "stage.json")) as f:
            records.append(json.load(f))
    results = sort_results(pd.concat(rows, ignore_index=True)) if rows else pd.DataFrame()
    return results, predictions, histories, records


def load_bias_stages(dataset_dir: str) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Every stage's bias.csv and bias_summary.csv, in stage order; (None, None) when no stage has them."""
    tables, summaries = [], []
    for path in sorted(glob.glob(os.path.join(dataset_dir, STAGES_DIR, "*", "seed*", BIAS_SUMMARY_FILE))):
        folder = os.path.dirname(path)
        summaries.append(pd.read_csv(path, keep_default_na=False, na_values=[""]))
        tables.append(pd.read_csv(os.path.join(folder, BIAS_FILE), keep_default_na=False, na_values=[""]))
    if not summaries:
        return None, None
    summary = sort_results(pd.concat(summaries, ignore_index=True))
    return pd.concat(tables, ignore_index=True), summary


def build_report(
    results_dir: str,
    dataset: str,
    n_resamples: int = DEFAULT_RESAMPLES,
    correction: str = "holm",
    alpha: float = 0.05,
) -> pd.DataFrame | None:
    """docs/results/<data set>/: results.csv, summary.csv, paired.csv, plots/, report.md from the stage folders."""
    out = os.path.join(results_dir, dataset)
    results, predictions, histories, records = load_stages(out)
    if results.empty:
        return None
    summary = summarize(results)
    latency_path = os.path.join(out, LATENCY_FILE)
    timing_only = []
    if os.path.isfile(latency_path):
        timed = pd.read_csv(latency_path)
        if "weights" in timed:
            timing_only = timed.method[timed.weights != "stage"].tolist()
        # Methods of one architecture (same parameter count) share the median of their timings: their differences
        # are the machine's noise, and a worse method must not look cheaper for it.
        pooled = timed.groupby("params").latency_ms_b1_cpu.transform("median")
        summary[SIDE_BY_SIDE_LATENCY] = summary.method.map(dict(zip(timed.method, pooled)))
    plots_dir = os.path.join(out, "plots")
    os.makedirs(plots_dir, exist_ok=True)
    first_seed = min(int(s) for s in results.seed)
    metric = "f1" if len(records[0]["label_names"]) == 2 else "macro_f1"
    plots = {
        "method_means": plot_method_means(summary, metric, os.path.join(plots_dir, "quality_vs_latency.png")),
        "loss_curves": plot_loss_curves(
            {m: h for m, h in histories.items() if h and m.startswith(f"seed{first_seed}-")},
            os.path.join(plots_dir, f"loss_curves_seed{first_seed}.png"),
        ),
    }
    per_label = per_label_over_seeds(results, predictions, records[0]["label_names"])
    if per_label is not None:
        per_label.to_csv(os.path.join(out, PER_LABEL_FILE), index=False)
        multi_label = "problem_type" in results and (results.problem_type == MULTI_LABEL).any()
        plots["per_label"] = plot_per_label(per_label, multi_label, os.path.join(plots_dir, "per_label_f1.png"))
    results.to_csv(os.path.join(out, "results.csv"), index=False)
    summary.to_csv(os.path.join(out, "summary.csv"), index=False)
    record = records[0]
    budgets = sorted({r["budget"] for r in records})
    context = {
        "title": f"Study: {dataset}",
        "dataset": f"../shared/data/{dataset}",
        "split": str(results.split.iloc[0]),
        "label_names": record["label_names"],
        "machine": record["machine"],
        "torch": " / ".join(sorted({str(r.get("torch", "not recorded")) for r in records})),
        "num_threads": int(results.num_threads.iloc[0]),
        "device": str(results.device.iloc[0]),
        "latency_runs": 100,
        "throughput_texts": 256,
        "setup_note": (
            f"Each (method, seed) was trained with `{' / '.join(budgets)}` and scored alone by run_eval.py right "
            "after it finished (`stages/<method>/seed<S>/`), so the timings come from different moments of a shared "
            "machine: compare the CPU-time latency. "
            + (
                f"The cost that ranks the methods (Pareto front, latency plot) is `{LATENCY_FILE}`: one model per "
                "method timed side by side in one process (`run_study.py --time_latency true`), the median over the "
                "methods of one architecture (same parameter count). "
                if SIDE_BY_SIDE_LATENCY in summary
                else ""
            )
            + (
                f"The timed {', '.join(timing_only)} model(s) had no stage weights left on the timing machine and were "
                "trained like their stage on a few rows only to be timed (`--latency_train_rows`, column `weights`): "
                "speed depends on the architecture, not on the weights. "
                if timing_only
                else ""
            )
            + "The loss-curve plot shows the first seed."
        ),
    }
    report = write_report(
        out, results, summary, plots, context, predictions, n_resamples, per_label, correction=correction, alpha=alpha,
        compute=training_compute(results, histories),
    )
    selections = sorted(glob.glob(os.path.join(out, STAGES_DIR, "*", "seed*", LAYER_SELECTION_FILE)))
    if selections:
        write_layer_selection_section(report, pd.concat(map(pd.read_csv, selections), ignore_index=True))
    bias_table, bias_summary = load_bias_stages(out)
    if bias_summary is not None:
        bias_table.to_csv(os.path.join(out, BIAS_FILE), index=False)
        bias_summary.to_csv(os.path.join(out, BIAS_SUMMARY_FILE), index=False)
        setup = next((r["bias"] for r in records if r.get("bias")), {})
        source = setup.get("dataset", "the bias set") + (
            f", {setup['max_per_identity']} texts per identity (stratified by label)" if setup.get("max_per_identity") else ""
        )
        write_bias_section(
            report, bias_table, bias_summary, source, correction=correction, alpha=alpha
        )
    # Plots of an earlier layout must not linger beside the new report. Removed only now, and only when unlinked:
    # deleting them all first let a commit taken mid-rebuild hold a report whose plots were gone.
    linked = set(linked_images(report))
    for old in glob.glob(os.path.join(plots_dir, "*.png")):
        if os.path.normpath(old) not in linked:
            os.remove(old)
    return summary


def build_index(results_dir: str) -> str:
    """docs/results/README.md: the methods × data sets table and how each was produced."""
    summaries, pairs, num_labels = {}, {}, {}
    for dataset_dir in sorted(glob.glob(os.path.join(results_dir, "*", STAGES_DIR))):
        dataset = os.path.basename(os.path.dirname(dataset_dir))
        summary_path = os.path.join(results_dir, dataset, "summary.csv")
        if os.path.isfile(summary_path):
            summaries[dataset] = pd.read_csv(summary_path)
            paired = os.path.join(results_dir, dataset, "paired.csv")
            pairs[dataset] = pd.read_csv(paired) if os.path.isfile(paired) else None
            (stage,) = glob.glob(os.path.join(dataset_dir, "*", "seed*", "stage.json"))[:1]
            with open(stage) as f:
                num_labels[dataset] = len(json.load(f)["label_names"])
    path = os.path.join(results_dir, "README.md")
    head = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README_head.md")
    with open(head) as f:
        intro = f.read()
    with open(path, "w") as f:
        f.write(intro.rstrip() + "\n\n" + study_index_markdown(summaries, pairs, num_labels) + "\n")
    return path


def rebuild_after_stage(args: StudyArguments) -> None:
    """The data set's report and the index, from every stage folder published so far (unless --rebuild_reports false:
    the stage folders are the record, and --report_only true rebuilds the rest from them)."""
    if args.rebuild_reports:
        build_report(args.results_dir, args.dataset, args.n_resamples, args.correction, args.alpha)
        build_index(args.results_dir)


@exit_on_usage_error
def main(argv: list[str] | None = None) -> list[str]:
    """Run the pending stages; returns the stage folders written."""
    (args,) = parse_args((StudyArguments,), argv)
    configure_logging(logging.INFO, stream="stderr")
    written = []
    if not args.report_only and not args.time_latency:
        for method, seed in stage_order(args.methods, args.seeds):
            target = stage_dir(args.results_dir, args.dataset, method, seed)
            published = os.path.isfile(os.path.join(target, "results.csv"))
            if published and (not wants_bias(args) or os.path.isfile(os.path.join(target, BIAS_SUMMARY_FILE))):
                logger.info(f"[{args.dataset} {method} seed{seed}] skipped: {target} is there")
                continue
            start = time.time()
            model_dir = os.path.join(args.work_dir, args.dataset, f"seed{seed}", method)
            if published and is_finished_run(model_dir):
                logger.info(f"[{args.dataset} {method} seed{seed}] bias stage: scoring {model_dir}")
                if not args.dry_run:
                    written.append(score_bias_only(args, method, seed))
                    rebuild_after_stage(args)
                continue
            if published:
                logger.info(f"[{args.dataset} {method} seed{seed}] no bias figures and no weights: training it again")
            eval_dir = train_and_score(args, method, seed)
            if args.dry_run:
                continue
            written.append(publish(args, method, seed, eval_dir))
            logger.info(f"[{args.dataset} {method} seed{seed}] done in {time.time() - start:.0f} s -> {target}")
            rebuild_after_stage(args)
    datasets = (
        [args.dataset]
        if args.dataset
        else sorted(
            os.path.basename(os.path.dirname(d)) for d in glob.glob(os.path.join(args.results_dir, "*", STAGES_DIR))
        )
    )
    if args.time_latency and not args.dry_run:
        time_side_by_side(args)
        build_report(args.results_dir, args.dataset, args.n_resamples, args.correction, args.alpha)
        build_index(args.results_dir)
    if args.report_only:
        for dataset in datasets:
            build_report(args.results_dir, dataset, args.n_resamples, args.correction, args.alpha)
        build_index(args.results_dir)
    return written


if __name__ == "__main__":
    main()
