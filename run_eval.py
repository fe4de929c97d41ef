#!/usr/bin/env python
"""Score every model of a comparison on the same split and machine: results.csv, predictions, plots, report.md.

    python run_eval.py --experiment_dir EXP --dataset_name ../shared/data/wiki_toxic --output_dir EXP/report
    python run_eval.py --model_dirs EXP/teacher EXP/even EXP/lora --dataset_name hate_speech18 --output_dir OUT

Models are full classifiers, PEFT adapter directories, merged models or ONNX exports (run_export.py: the fp32 model
and its int8 twin are scored as two rows, `runtime` names the runtime). With several seeds (EXP/seed42/...,
EXP/seed43/...) rows are grouped by method in summary.csv (mean ± std).

The data set is read as the models recorded reading it (run_record.json): the text and label columns, the score
threshold, the class names, and the seed and split percentages that held out the splits it lacks; a flag given wins,
with a warning per model that recorded otherwise (a split percentage equal to its default counts as not given). Models
that recorded different readings (targets, class names, or seeds or percentages when they choose the scored rows) are
refused in one `error:` line: score them in separate calls, or pass the flag.
A directory that cannot be scored (no weights, a head that was never trained, an adapter whose base is gone, bad
files) is reported as broken in broken_models.csv and one `error:` line; the healthy models are still scored. The
report is written only once every model is scored, all files at once: a failure leaves the old report whole.

Each model is scored by its own task (config.problem_type): softmax and argmax, or a binary model's saved
positive-class threshold; for multi-label models the per-label sigmoids at their saved thresholds (results.csv's
f1 is then micro-F1, roc_auc the macro AUC over labels, accuracy the subset accuracy). per_label.csv has support,
F1, ROC-AUC and PR-AUC per label (per class, one-vs-rest, for single-label data) per model.

With --bias_dataset (e.g. ../shared/data/bias_madlibs) every model is also scored on an identity-bias set: bias.csv
(per model × identity: subgroup, BPSN and BNSP AUC, FPR and FNR at the model's own decision rule),
bias_summary.csv (per model: power means, the Jigsaw final metric, FPED/FNED, the five worst identities by BPSN AUC),
bias_predictions/ and a bias section in report.md. A model's toxic score is p(class 1) for a binary model, else the
summed probability of the classes named by --bias_toxic_classes (distillkit/bias.py).
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from dataclasses import dataclass, field

import pandas as pd
import torch

from distillkit.bias_eval import BIAS_FILE, BIAS_SUMMARY_FILE, BiasArguments, BiasScorer, load_bias_set
from distillkit.bias_report import BIAS_VS_TEACHER_FILE, write_bias_section
from distillkit.cli import (
    UsageError,
    configure_logging,
    discard_staging_dir,
    exit_on_usage_error,
    parse_args,
    parse_class_names,
    publish_files,
    staging_dir_for,
)
from distillkit.data import DataTrainingArguments, TextClassificationData, load_text_classification_data
from distillkit.data_args import check_max_seq_length
from distillkit.evaluation import (
    SpeedSettings,
    evaluate_model,
    has_generic_label_names,
    loss_history,
    model_name,
    unique_names,
)
from distillkit.integrity import BrokenModelError
from distillkit.layer_report import LAYER_SELECTION_FILE, layer_selection_rows, write_layer_selection_section
from distillkit.loading import expand_onnx_variants, find_model_dirs
from distillkit.recorded_reading import read_as_recorded
from distillkit.runtime import is_model_dir, load_model_checked
from distillkit.records import RunRecord
from distillkit.report import (
    PER_LABEL_FILE,
    plot_confusion,
    plot_loss_curves,
    plot_per_label,
    plot_quality_vs,
    sort_results,
    summarize,
    write_report,
)

logger = logging.getLogger(__name__)

OUTPUT_FILES = ("results.csv", "summary.csv", "report.md", BIAS_FILE)
BROKEN_FILE = "broken_models.csv"  # model, path, error: the models that could not be scored


@dataclass
class EvalArguments:
    output_dir: str = field(metadata={"help": "Where results.csv, summary.csv, predictions/, plots/ and report.md go."})
    model_dirs: list[str] | None = field(
        default=None, metadata={"help": "Model directories: full models, PEFT adapter directories, merged models."}
    )
    experiment_dir: str | None = field(
        default=None,
        metadata={
            "help": "Evaluate every model directory inside it (teacher/, odd/, even/, lora/, lora/merged, and seed*/ sub-folders)."
        },
    )
    split: str = field(default="test", metadata={"help": "Split to score.", "choices": ["train", "validation", "test"]})
    seed: int | None = field(
        default=None,
        metadata={
            "help": "Seed of the held-out splits when the data set lacks validation/test files or --max_*_samples draws "
            "a sample. Default: the seed the models recorded; models of different seeds on such a split are refused "
            "(each seed's held-out rows hold the others' training rows)."
        },
    )
    class_names: list[str] | None = field(
        default=None,
        metadata={
            "help": "Class names in label-id order: a,b,c or a b c (→ id2label). Default: the names the models recorded."
        },
    )
    label_names: list[str] | None = field(default=None, metadata={"help": "Alias of --class_names."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Batch size of the prediction pass."})
    latency_runs: int = field(
        default=100, metadata={"help": "Single-text forward passes timed per model (the median is reported); >= 50."}
    )
    throughput_texts: int = field(default=256, metadata={"help": "Texts timed in batches of 32 for throughput."})
    num_threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads, fixed for every model (default: torch's current setting)."}
    )
    device: str = field(default="cpu", metadata={"help": "cpu, cuda or cuda:N: where every model is scored and timed."})
    bootstrap_samples: int = field(
        default=200, metadata={"help": "Bootstrap resamples of the split for the 95%% intervals of F1 and ROC-AUC."}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an existing report in --output_dir."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache data sets from the Hub."})

    def __post_init__(self) -> None:
        if not self.model_dirs and not self.experiment_dir:
            raise UsageError("give --model_dirs DIR [DIR ...] or --experiment_dir EXP")
        if self.latency_runs < 50:
            raise UsageError(f"--latency_runs {self.latency_runs}: use at least 50 for a stable median")
        if self.throughput_texts < 32:
            raise UsageError(f"--throughput_texts {self.throughput_texts}: must be at least one batch of 32")
        if self.num_threads is not None and self.num_threads < 1:
            raise UsageError(f"--num_threads {self.num_threads}: must be at least 1")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"--device {self.device}: CUDA is not available on this machine; use --device cpu")
        self.class_names = parse_class_names(self.class_names, alias=self.label_names)


def collect_model_dirs(args: EvalArguments) -> list[str]:
    dirs = list(args.model_dirs or [])
    for path in dirs:
        if not is_model_dir(path):
            raise UsageError(
                f"--model_dirs {path}: not a model directory (expected config.json or adapter_config.json)"
            )
    dirs = expand_onnx_variants(dirs)  # an ONNX export: its fp32 and int8 models
    if args.experiment_dir:
        dirs += find_model_dirs(args.experiment_dir)
    return list(dict.fromkeys(os.path.normpath(d) for d in dirs))


def check_output_dir(args: EvalArguments) -> None:
    existing = [f for f in OUTPUT_FILES if os.path.isfile(os.path.join(args.output_dir, f))]
    if existing and not args.overwrite_output_dir:
        raise UsageError(
            f"--output_dir {args.output_dir} already holds a report ({', '.join(existing)}); "
            "pass --overwrite_output_dir to replace it, or choose another --output_dir"
        )


def clear_old_outputs(output_dir: str) -> None:
    """Stale predictions and plots of models no longer compared must not linger beside the new report."""
    for name in (BIAS_FILE, BIAS_SUMMARY_FILE, BIAS_VS_TEACHER_FILE, BROKEN_FILE, LAYER_SELECTION_FILE):
        if os.path.isfile(os.path.join(output_dir, name)):
            os.remove(os.path.join(output_dir, name))
    for sub, ext in (("predictions", ".csv"), ("plots", ".png"), ("bias_predictions", ".csv")):
        folder = os.path.join(output_dir, sub)
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name.endswith(ext):
                    os.remove(os.path.join(folder, name))




def warn_if_other_data(path: str, record: RunRecord | None, data_source: dict) -> None:
    trained_on = record.dataset if record is not None else {}
    if trained_on.get("rows") and trained_on.get("rows") != data_source.get("rows"):
        logger.warning(
            f"{path} was trained on {trained_on.get('dataset')} with splits {trained_on.get('rows')}; "
            f"scoring it on {data_source['dataset']} with {data_source['rows']} (check --dataset_name / --max_*_samples)"
        )


@exit_on_usage_error
def main(argv: list[str] | None = None) -> pd.DataFrame:
    eval_args, data_args, bias_args = parse_args((EvalArguments, DataTrainingArguments, BiasArguments), argv)
    configure_logging(logging.INFO)
    # Everything up to the writing below only reads: bad input fails before anything is written.
    check_output_dir(eval_args)
    model_dirs = collect_model_dirs(eval_args)
    data_args = check_max_seq_length(model_dirs, data_args)
    # The data as the models read it: their columns, threshold, class names and split seed, unless told otherwise.
    reading = read_as_recorded(model_dirs, data_args, eval_args.seed, eval_args.class_names)
    data_args = reading.data_args
    data = load_text_classification_data(
        data_args, seed=reading.seed, cache_dir=eval_args.cache_dir, class_names=reading.class_names
    )
    reading.check_split(data, eval_args.split)
    bias_scorer = None
    if bias_args.bias_dataset:
        bias_set = load_bias_set(bias_args, seed=reading.seed, cache_dir=eval_args.cache_dir)
        bias_scorer = BiasScorer(
            bias_set,
            data_args.max_seq_length,
            bias_args.bias_batch_size,
            bias_args.bias_toxic_classes,
            eval_args.device,
        )
        logger.info(f"bias set {bias_set.source}: {len(bias_set)} texts, {len(set(bias_set.identities) - {''})} identities")
    if eval_args.num_threads:
        torch.set_num_threads(eval_args.num_threads)
    settings = SpeedSettings(
        device=eval_args.device,
        latency_runs=eval_args.latency_runs,
        throughput_texts=eval_args.throughput_texts,
        max_length=data_args.max_seq_length,
    )
    logger.info(f"scoring {len(model_dirs)} models on {eval_args.split} with {torch.get_num_threads()} thread(s)")

    names = unique_names([model_name(d, eval_args.experiment_dir) for d in model_dirs])
    rows, predictions, histories, tables, broken, selections = [], {}, {}, [], [], {}
    bias_tables, bias_rows, bias_texts = [], [], {}
    for path, name in zip(model_dirs, names):
        logger.info(f"evaluating {name} ({path})")
        failure: Exception | None = None
        # A model that cannot be trusted (bad files at load, non-finite outputs) is reported broken and the healthy
        # ones are still scored and written; asking for the wrong data set stays a usage error for the whole run.
        try:
            clf = load_model_checked(path, name, device=eval_args.device)
        except UsageError as err:
            clf, failure = None, err
        if clf is not None:
            if bias_scorer is not None:
                bias_scorer.toxic_ids(clf)  # a model with no toxic class named fails before it is scored
            warn_if_other_data(path, clf.record, data.source)
            try:
                row, frame, labels_table = evaluate_model(
                    clf, data, eval_args.split, settings, eval_args.per_device_eval_batch_size,
                    eval_args.bootstrap_samples,
                )
            except BrokenModelError as err:
                failure = err
        if failure is not None:
            logger.error(f"{name}: broken, not scored: {failure}")
            broken.append({"model": name, "path": path, "error": str(failure)})
            continue
        rows.append(row)
        predictions[name] = frame
        tables.append(labels_table)
        histories[name] = loss_history(path)
        if clf.record is not None and clf.record.layer_selection:
            selections[name] = clf.record.layer_selection
        if bias_scorer is not None:
            bias_table, bias_row, bias_texts[name] = bias_scorer.score(clf)
            bias_tables.append(bias_table)
            bias_rows.append(bias_row)
            logger.info(
                f"{name} on the bias set: final metric {bias_row['final_metric']:.4f}, BPSN power mean "
                f"{bias_row['power_mean_bpsn_auc']:.4f}, worst by BPSN: {bias_row['worst_bpsn']}"
            )
        logger.info(
            f"{name}: f1 {row['f1']:.4f} roc_auc {row['roc_auc']:.4f} latency {row['latency_ms_b1']:.2f} ms "
            f"throughput {row['throughput_b32']:.1f}/s"
        )
        del clf

    if not rows:
        report_broken(broken)
        sys.exit(1)
    results = sort_results(pd.DataFrame(rows))
    summary = summarize(results)
    per_label = pd.concat(tables, ignore_index=True)  # support, F1, ROC-AUC, PR-AUC per label (class) per model

    # Everything is written whole into a staging folder beside --output_dir, then moved in: a failure while writing
    # leaves the old report as it was, never half of it beside half of the new one.
    staging = staging_dir_for(eval_args.output_dir)
    try:
        report = write_outputs(staging, eval_args, data_args, data, results, summary, per_label, predictions,
                               histories, settings, bias_scorer, bias_tables, bias_rows, bias_texts, broken,
                               selections)  # fmt: skip
    except BaseException:
        discard_staging_dir(staging)
        raise
    clear_old_outputs(eval_args.output_dir)
    publish_files(staging, eval_args.output_dir)
    report = os.path.join(eval_args.output_dir, os.path.relpath(report, staging))
    logger.info(f"wrote results.csv, summary.csv, {PER_LABEL_FILE}, predictions/ and plots/ in {eval_args.output_dir}; {report}")
    if broken:
        report_broken(broken)
        sys.exit(1)
    return results


def write_outputs(
    out: str,
    eval_args: EvalArguments,
    data_args: DataTrainingArguments,
    data: TextClassificationData,
    results: pd.DataFrame,
    summary: pd.DataFrame,
    per_label: pd.DataFrame,
    predictions: dict[str, pd.DataFrame],
    histories: dict[str, list[dict[str, float]]],
    settings: SpeedSettings,
    bias_scorer: BiasScorer | None,
    bias_tables: list[pd.DataFrame],
    bias_rows: list[dict],
    bias_texts: dict[str, pd.DataFrame],
    broken: list[dict],
    selections: dict[str, dict] | None = None,
) -> str:
    """Every output file into `out` (a staging folder): predictions, plots, tables, report.md, the layer selection of
    `--layers auto` models (`selections`: model → run record `layer_selection`), the bias files and
    broken_models.csv (or an empty marker that removes a stale one). Returns report.md's path."""
    os.makedirs(os.path.join(out, "predictions"), exist_ok=True)
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    for name, frame in predictions.items():
        frame.to_csv(os.path.join(out, "predictions", f"{name}.csv"), index=False)
    label_names = [data.id2label[i] for i in range(data.num_labels)]
    if has_generic_label_names(data.id2label):  # the data has no names: the models' own (as evaluation uses)
        label_names = per_label[per_label.model == per_label.model.iloc[0]].label.astype(str).tolist()
    plots = {
        "per_label": plot_per_label(per_label, data.multi_label, os.path.join(out, "plots", "per_label_f1.png")),
        "confusion": {} if data.multi_label else {  # a label-set task has no single confusion matrix
            name: plot_confusion(
                frame.label.to_numpy(),
                frame.pred.to_numpy(),
                label_names,
                name,
                os.path.join(out, "plots", f"confusion_{name}.png"),
            )
            for name, frame in predictions.items()
        },
        "loss_curves": plot_loss_curves(
            {n: h for n, h in histories.items() if h}, os.path.join(out, "plots", "loss_curves.png")
        ),
        "quality_vs_size": plot_quality_vs(
            results,
            "serving_size_mb",
            "weights needed to serve (MB)",
            os.path.join(out, "plots", "quality_vs_size.png"),
        ),
        "quality_vs_latency": plot_quality_vs(
            results,
            "latency_ms_b1",
            "single-text latency (ms, median)",
            os.path.join(out, "plots", "quality_vs_latency.png"),
        ),
    }
    results.to_csv(os.path.join(out, "results.csv"), index=False)
    summary.to_csv(os.path.join(out, "summary.csv"), index=False)
    per_label.to_csv(os.path.join(out, PER_LABEL_FILE), index=False)
    report = write_report(
        out,
        results,
        summary,
        plots,
        {
            "dataset": data_args.dataset_name,
            "split": eval_args.split,
            "problem_type": data.problem_type,
            "label_names": label_names,
            "cpu_count": os.cpu_count(),
            "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPU(s)".replace("  ", " "),
            "torch": torch.__version__,
            "num_threads": torch.get_num_threads(),
            "device": eval_args.device
            + (f" ({torch.cuda.get_device_name(eval_args.device)})" if eval_args.device.startswith("cuda") else ""),
            "latency_runs": settings.latency_runs,
            "throughput_texts": settings.throughput_texts,
        },
        per_label=per_label,
    )
    if selections:
        runtimes = dict(zip(results.model, results.train_runtime_s))
        write_layer_selection_section(report, layer_selection_rows(selections, runtimes))
    if bias_scorer is not None:
        os.makedirs(os.path.join(out, "bias_predictions"), exist_ok=True)
        for name, frame in bias_texts.items():
            frame.to_csv(os.path.join(out, "bias_predictions", f"{name}.csv"), index=False)
        bias_table = pd.concat(bias_tables, ignore_index=True)
        bias_summary = pd.DataFrame(bias_rows)
        bias_table.to_csv(os.path.join(out, BIAS_FILE), index=False)
        bias_summary.to_csv(os.path.join(out, BIAS_SUMMARY_FILE), index=False)
        write_bias_section(report, bias_table, bias_summary, bias_scorer.bias_set.source)
    if broken:
        pd.DataFrame(broken).to_csv(os.path.join(out, BROKEN_FILE), index=False)
    return report


def report_broken(broken: list[dict]) -> None:
    """One `error:` line per model that could not be scored (the healthy ones' results are written first)."""
    for item in broken:
        print(f"error: {item['error']}", file=sys.stderr)


if __name__ == "__main__":
    main()
