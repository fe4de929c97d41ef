"""Model cards: the `README.md` (Hub YAML metadata + prose) that makes every saved directory explain itself.

`write_model_card(output_dir)` reads everything from the directory itself — its run record (`run_record.json`,
read by `RunRecord.load`, which also reads older directories), `config.json`, `all_results.json`,
`trainer_state.json`, `adapter_config.json` for a PEFT adapter (a `merged/` model reads its adapter's from the
parent directory) — so any script can call it once its model is saved. Numbers are copied
from `all_results.json` unrounded, so the card's `model-index` equals the run's records exactly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .integrity import check_thresholds, require_tokenizer_files
from .records import ADAPTER_CONFIG, RECORD_FILE, RunRecord, loss_keys, merged_name, merged_parent
from .runtime import read_results
from .tasks import MULTI_LABEL

CARD_NAME = "README.md"

# all_results.json key suffix -> (Hub metric id, metric config, display name). The f1 config depends on the task.
METRICS: dict[str, tuple[str, str | None, str]] = {
    "accuracy": ("accuracy", None, "Accuracy"),
    "f1": ("f1", None, "F1"),
    "precision": ("precision", None, "Precision"),
    "recall": ("recall", None, "Recall"),
    "macro_f1": ("f1", "macro", "Macro F1"),
    "weighted_f1": ("f1", "weighted", "Weighted F1"),
    "roc_auc": ("roc_auc", None, "ROC AUC"),
}
SPLITS = (("eval", "validation"), ("test", "test"))  # all_results.json prefix -> split name


@dataclass
class RunRecords:
    """What a saved directory says about itself: its run record (distillkit.records), config, results, and for a
    LoRA adapter (or a model merged from one) the PEFT config."""

    path: str
    record: RunRecord
    config: dict[str, Any] = field(default_factory=dict)  # config.json
    results: dict[str, Any] = field(default_factory=dict)  # all_results.json (a merged model: its adapter's)
    adapter: dict[str, Any] | None = None  # adapter_config.json (of this dir, or of the adapter a merge came from)
    trainer_state: dict[str, Any] = field(default_factory=dict)

    @property
    def merged(self) -> bool:
        return self.record.merged

    @property
    def method(self) -> str:
        return self.record.method

    @property
    def dataset(self) -> dict[str, Any]:
        return self.record.dataset

    @property
    def id2label(self) -> dict[str, str]:
        # The config's names are what the model outputs; an adapter has no config of its own: its record's names.
        return self.config.get("id2label") or {str(i): name for i, name in enumerate(self.record.label_names)}

    @property
    def num_labels(self) -> int | None:
        return len(self.id2label) or None


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def read_run_records(output_dir: str) -> RunRecords:
    """Collect the records a card is built from; fails clearly if `output_dir` holds no saved model."""
    config = _read_json(os.path.join(output_dir, "config.json"))
    adapter = _read_json(os.path.join(output_dir, ADAPTER_CONFIG)) or None
    if not config and adapter is None:
        raise FileNotFoundError(f"{output_dir}: no config.json or {ADAPTER_CONFIG}, so no saved model to describe")
    results = read_results(output_dir)  # a merged model's are its adapter's
    record = RunRecord.load(output_dir) or RunRecord(method=str(results.get("method") or "custom"), library_versions={})
    state = _read_json(os.path.join(output_dir, "trainer_state.json"))
    parent = merged_parent(output_dir)
    if parent is not None:  # a merged model is its adapter folded into the base weights: same run, same records
        adapter = _read_json(os.path.join(parent, ADAPTER_CONFIG))
        state = state or _read_json(os.path.join(parent, "trainer_state.json"))
    return RunRecords(
        path=output_dir, record=record, config=config, results=results, adapter=adapter, trainer_state=state
    )


def _hub_id(name: Any) -> str | None:
    """`name` if it can only mean a Hub repo id; local paths are not valid Hub metadata."""
    if not isinstance(name, str) or not name or os.path.exists(name) or name.startswith((".", "/", "~")):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def base_model_of(records: RunRecords) -> str | None:
    """The model this one was made from: the adapter's base, else the teacher's origin, else the fine-tuned base."""
    candidates = [
        (records.adapter or {}).get("base_model_name_or_path"),
        records.record.base_model,
        records.record.teacher_base_model,
        records.record.teacher,
    ]
    return next((c for c in candidates if c), None)


def _f1_config(records: RunRecords, key: str, default: str | None) -> str | None:
    if key != "f1" or records.num_labels is None:
        return default
    return "binary" if records.num_labels == 2 else "macro"


def eval_results(records: RunRecords, dataset_name: str, dataset_type: str) -> list[EvalResult]:
    """One `model-index` entry per metric per split, values copied unrounded from all_results.json."""
    out = []
    for prefix, split in SPLITS:
        for key, (metric_type, metric_config, label) in METRICS.items():
            value = records.results.get(f"{prefix}_{key}")
            if value is None:
                continue
            out.append(
                EvalResult(
                    task_type="text-classification",
                    task_name="Text Classification",
                    dataset_type=dataset_type,
                    dataset_name=dataset_name,
                    dataset_config=records.dataset.get("config"),
                    dataset_split=split,
                    metric_type=metric_type,
                    metric_config=_f1_config(records, key, metric_config),
                    metric_value=value,
                    metric_name=f"{split.capitalize()} {label}",
                )
            )
    return out


def _tags(records: RunRecords) -> list[str]:
    tags = ["text-classification"]
    if records.record.layers is not None:
        tags.append("distillation")
    if records.adapter is not None:
        tags += ["lora", "merged"] if records.merged else ["lora", "peft"]
    if records.config.get("model_type"):
        tags.append(records.config["model_type"])
    return tags


def card_metadata(records: RunRecords, model_name: str) -> ModelCardData:
    """The Hub YAML header: library, base model, data set, metrics, tags, pipeline and a model-index."""
    data_source = records.dataset.get("dataset")
    hub_dataset = _hub_id(data_source)
    # model-index needs a data set name even for local data; only a Hub id goes into `datasets` (a link).
    dataset_name = hub_dataset or (os.path.basename(os.path.normpath(str(data_source))) if data_source else "unknown")
    results = eval_results(records, dataset_name, hub_dataset or dataset_name)
    is_adapter = records.adapter is not None and not records.merged
    return ModelCardData(
        library_name="peft" if is_adapter else "transformers",
        base_model=_hub_id(base_model_of(records)),
        datasets=[hub_dataset] if hub_dataset else None,
        metrics=sorted({METRICS[k][0] for k in METRICS if any(f"{p}_{k}" in records.results for p, _ in SPLITS)}),
        tags=_tags(records),
        pipeline_tag="text-classification",
        model_name=model_name,
        eval_results=results or None,
    )


def _summary(records: RunRecords) -> str:
    rec, base = records.record, base_model_of(records)
    if records.adapter is not None:
        what = "A LoRA adapter" if not records.merged else "A model with a LoRA adapter merged into its weights"
        return f"{what} for text classification, trained on top of `{base}`."
    if rec.layers is not None:
        origin = rec.teacher_base_model
        origin = f" (fine-tuned from `{origin}`)" if origin and origin != rec.teacher else ""
        return (
            f"A {len(rec.layers)}-layer student distilled from the {rec.teacher_num_layers or '?'}-layer "
            f"teacher `{rec.teacher}`{origin}, keeping teacher layers "
            f"{', '.join(str(k) for k in rec.layers)} (1-based)."
        )
    if records.method == "teacher":
        return f"A text classifier fine-tuned from `{base}` (the teacher of the distillation runs)."
    return f"A text classifier (`{records.method}`) made from `{base}`."


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows if v is not None]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)


def class_weights_text(record: dict[str, Any]) -> str:
    """`auto → balanced (rarest class 6.0% of train, under 16.7%): 0.53, 5.6, 1.9` and the like."""
    policy, resolved = record.get("policy", "none"), record.get("resolved")
    text = f"`{policy}`" + (f" → `{resolved}`" if resolved else "")
    if "rarest_share" in record:
        text += f" (rarest class {record['rarest_share']:.1%} of train; rare below {record['rare_below']:.1%})"
    if record.get("weights"):
        text += ": " + ", ".join(f"{w:.3g}" for w in record["weights"])
    return text


def _training_section(records: RunRecords) -> str:
    rec, res = records.record, records.results
    rows: list[tuple[str, Any]] = [("method", f"`{records.method}`")]
    if rec.layers is not None:
        rows += [
            ("teacher", f"`{rec.teacher}`" if rec.teacher else None),  # LoRA on a student: none
            ("teacher layers kept (1-based)", ", ".join(str(k) for k in rec.layers)),
            ("teacher depth", rec.teacher_num_layers),
        ]
    for name in loss_keys():
        if name in rec.loss:
            rows.append((f"loss weight `{name}`" if name != "temperature" else "KL temperature", rec.loss[name]))
    if records.adapter is not None:
        lora = records.adapter
        rows += [
            ("base model", f"`{lora.get('base_model_name_or_path')}`"),
            ("LoRA rank `r`", lora.get("r")),
            ("`lora_alpha`", lora.get("lora_alpha")),
            ("`lora_dropout`", lora.get("lora_dropout")),
            ("target modules", ", ".join(sorted(lora.get("target_modules") or [])) or None),
            ("also trained and saved", ", ".join(lora.get("modules_to_save") or []) or None),
        ]
    if rec.class_weights:
        rows.append(("class weights of the CE term", class_weights_text(rec.class_weights)))
    if "trainable_params" in res:
        total = res.get("total_params") or 0
        share = f" ({100 * res['trainable_params'] / total:.2f}% of {_fmt(total)})" if total else ""
        rows.append(("trainable parameters", f"{_fmt(res['trainable_params'])}{share}"))
        rows.append(("total parameters", _fmt(total)))
    state = records.trainer_state
    rows += [
        ("epochs", state.get("num_train_epochs")),
        ("optimizer steps", state.get("global_step")),
        ("batch size per device", state.get("train_batch_size")),
        ("seed", rec.seed),
    ]
    if "train_loss" in res:
        rows.append(("final mean training loss", _fmt(res["train_loss"])))
    return "## Training\n\n" + _table(rows)


def _layer_selection_section(records: RunRecords) -> str | None:
    """`--layers auto` / `search`: how each teacher layer scored, the rule, what was kept and what choosing cost."""
    selection = records.record.layer_selection
    if not selection:
        return None
    scores = selection.get("scores") or {}
    chosen = set(selection.get("chosen") or [])
    criteria = list(scores)
    n = len(next(iter(scores.values()), []))
    search = selection.get("criterion") == "search"
    teacher_metric = f"{selection.get('metric')} {selection.get('teacher_metric', float('nan')):.4f}"
    seconds, rows = f"{selection.get('seconds', 0):.1f} s", selection.get("validation_rows")
    if search:
        how = (
            f"The layers were chosen by `--layers search` on the fine-tuned teacher in {seconds}: "
            f"{selection.get('probes')} probe students of {selection.get('probe_steps')} optimizer steps each, on "
            f"{selection.get('train_rows')} training rows, scored on {rows} validation rows (the teacher's "
            f"validation {teacher_metric}; `first_round_drop` is it minus the first round's probe without the layer; "
            f"`removal_round` is the round the layer was dropped in). Rule: {selection.get('rule')}."
        )
    else:
        how = (
            f"The layers were chosen by `--layers auto` on the fine-tuned teacher in {seconds} "
            f"({selection.get('train_rows')} training rows for `block_influence`, {rows} validation rows for "
            f"`skip_metric_drop`, the teacher's validation {teacher_metric} minus the same with one layer skipped). "
            f"Rule: {selection.get('rule')}."
        )
    lines = [
        "## Layer selection",
        "",
        how,
        "",
        "| teacher layer | "
        + " | ".join(f"`{c}`" for c in criteria)
        + ("" if search else " | mean rank")
        + " | kept |",
        "|---|" + "---|" * (len(criteria) + (1 if search else 2)),
    ]
    combined = selection.get("combined") or [None] * n
    for i in range(n):
        cells = [f"{scores[c][i]:.4f}" for c in criteria]
        if not search:
            cells.append(f"{combined[i]:.2f}" if combined[i] is not None else "")
        lines.append(f"| {i + 1} | " + " | ".join(cells) + f" | {'yes' if i + 1 in chosen else ''} |")
    lines += ["", "![score per layer per criterion, kept layers filled](layer_scores.png)"]
    return "\n".join(lines)


def _data_section(records: RunRecords) -> str:
    source, res = records.dataset, records.results
    rows: list[tuple[str, Any]] = [("data set", f"`{source.get('dataset')}`" if source.get("dataset") else None)]
    rows += [
        (k.replace("_", " "), f"`{source[k]}`") for k in ("config", "text_column", "label_column") if source.get(k)
    ]
    if source.get("label_threshold") is not None:
        rows.append(("label threshold", source["label_threshold"]))
    for split, key in (("train", "train_samples"), ("validation", "eval_samples"), ("test", "test_samples")):
        n = res.get(key, (source.get("rows") or {}).get(split))
        rows.append((f"{split} rows", _fmt(n) if n is not None else None))
    id2label = records.id2label
    if id2label:
        rows.append(("labels", ", ".join(f"{k} = `{v}`" for k, v in sorted(id2label.items(), key=lambda x: int(x[0])))))
    return "## Data\n\n" + _table(rows)


def _results_section(records: RunRecords) -> str:
    res = records.results
    keys = [k for k in METRICS if any(f"{p}_{k}" in res for p, _ in SPLITS)]
    if not keys:
        return "## Results\n\nThis run recorded no evaluation metrics."
    head = "| split | " + " | ".join(METRICS[k][2] for k in keys) + " |"
    lines = [head, "|---" * (len(keys) + 1) + "|"]
    for prefix, split in SPLITS:
        if any(f"{prefix}_{k}" in res for k in keys):
            cells = [_fmt(res[f"{prefix}_{k}"]) if f"{prefix}_{k}" in res else "–" for k in keys]
            lines.append(f"| {split} | " + " | ".join(cells) + " |")
    note = (
        "F1, precision and recall are for the positive class on binary tasks and macro averages otherwise; "
        "full-precision values are in `all_results.json` and in this card's metadata."
    )
    return "## Results\n\n" + "\n".join(lines) + "\n\n" + note


def usage_snippet(records: RunRecords, reference: str) -> str:
    """How to load this directory (or its Hub copy) and classify a comment, by the model's decision rule: argmax, a
    binary model's tuned threshold, a multi-class model's tuned logit offsets, or a multi-label model's labels over their
    thresholds (the rules of distillkit/decision.py)."""
    problem_type = records.config.get("problem_type") or records.record.problem_type
    thresholds = records.config.get("decision_thresholds") or records.results.get("decision_thresholds")
    check_thresholds(thresholds, f"{reference}: decision_thresholds")  # the snippet would decide with them
    offsets = records.config.get("decision_logit_offsets") or records.results.get("decision_logit_offsets")
    multi_label = problem_type == MULTI_LABEL
    adapter = records.adapter is not None and not records.merged
    top_k = ", top_k=None" if multi_label or thresholds or offsets else ""  # every label's score, for a threshold to decide
    text = '"thanks for fixing the citation"'
    if adapter:
        # A headless base (a pretrained encoder) knows no class names, nor the count, nor the task: the run recorded them.
        labels = {int(k): v for k, v in records.id2label.items()}
        head = f", num_labels={len(labels)}, id2label={labels!r}" if labels else ""
        head += f', problem_type="{MULTI_LABEL}"' if multi_label else ""
        load = (
            "from peft import AutoPeftModelForSequenceClassification\n"
            "from transformers import AutoTokenizer, pipeline\n\n"
            f'model = AutoPeftModelForSequenceClassification.from_pretrained("{reference}"{head})\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{reference}")\n'
            f'classifier = pipeline("text-classification", model=model, tokenizer=tokenizer{top_k})\n'
        )
        saved = f"thresholds = {thresholds!r}  # tuned on the validation split (all_results.json)\n"
        saved_offsets = f"offsets = {offsets!r}  # per-class logit offsets, tuned on the validation split\n"
        note = (
            "\n\nThe adapter loads on top of its base model (`base_model_name_or_path` in `adapter_config.json`), "
            "which must be reachable from where you load it."
        )
    else:
        load = (
            "from transformers import pipeline\n\n"
            f'classifier = pipeline("text-classification", model="{reference}"{top_k})\n'
        )
        saved = "thresholds = classifier.model.config.decision_thresholds  # tuned on the validation split\n"
        saved_offsets = "offsets = classifier.model.config.decision_logit_offsets  # per class, tuned on validation\n"
        note = ""
    if multi_label:
        decide = (
            saved
            + f"scores = classifier([{text}])[0]  # every label's sigmoid probability\n"
            "names = list(classifier.model.config.id2label.values())\n"
            "cut = dict(zip(names, thresholds or [0.5] * len(names)))\n"
            'print([s["label"] for s in scores if s["score"] >= cut[s["label"]]])  # the labels over their thresholds\n'
        )
    elif thresholds:
        decide = (
            saved
            + f'scores = {{s["label"]: s["score"] for s in classifier([{text}])[0]}}\n'
            "negative, positive = classifier.model.config.id2label[0], classifier.model.config.id2label[1]\n"
            "print(positive if scores[positive] >= thresholds[0] else negative)  # the tuned threshold decides\n"
        )
    elif offsets:
        # argmax(log p + offset) = argmax(logits + offset): the softmax shifts a text's logits by one constant.
        decide = (
            "import math\n\n"
            + saved_offsets
            + f"scores = classifier([{text}])[0]  # every class's probability\n"
            "label2id = {name: i for i, name in classifier.model.config.id2label.items()}\n"
            'best = max(scores, key=lambda s: math.log(max(s["score"], 1e-300)) + offsets[label2id[s["label"]]])\n'
            'print(best["label"])  # the tuned per-class offsets decide\n'
        )
    else:
        decide = f"print(classifier({text}))\n"
    return "```python\n" + load + decide + "```" + note


def _record_files(records: RunRecords) -> list[str]:
    files = [RECORD_FILE] if os.path.isfile(os.path.join(records.path, RECORD_FILE)) else []
    files += ["config.json"] if records.config else []
    files += [
        name
        for name, present in (("all_results.json", records.results), ("trainer_state.json", records.trainer_state))
        if present
    ]
    return files + ([ADAPTER_CONFIG] if records.adapter is not None else [])


def build_model_card(output_dir: str, repo_id: str | None = None) -> ModelCard:
    """The card for a saved directory; `repo_id` (its Hub name) is what the usage snippet loads, else the path."""
    records = read_run_records(output_dir)
    path = os.path.normpath(os.path.abspath(output_dir))
    # EXP/lora/merged -> lora-merged, its Hub name
    default_name = (merged_name(path) if records.merged else None) or os.path.basename(path)
    model_name = repo_id or default_name
    metadata = card_metadata(records, model_name)
    reference = repo_id or os.path.abspath(output_dir)
    body = "\n\n".join(
        [
            f"# {model_name}",
            _summary(records),
            "## How to use\n\n" + usage_snippet(records, reference),
            _results_section(records),
            _training_section(records),
            *filter(None, [_layer_selection_section(records)]),
            _data_section(records),
            "## Records\n\nThis card was generated from the run's own files ("
            + ", ".join(f"`{name}`" for name in _record_files(records))
            + "). Made with distillkit (Hugging Face `Trainer`).",
        ]
    )
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n{body}\n")


def write_model_card(output_dir: str, repo_id: str | None = None) -> str:
    """Write `README.md` into a saved model, adapter or merged directory; returns its path.

    Call it after the model and `all_results.json` are saved (the card copies the metrics from there).
    """
    card = build_model_card(output_dir, repo_id)  # first: a directory without a model is refused as such
    # The card's snippet loads the tokenizer from this directory: without its files transformers would invent one.
    require_tokenizer_files(output_dir)
    path = os.path.join(output_dir, CARD_NAME)
    card.save(path)
    return path
