"""ONNX: exporting any trained classifier directory (fp32 and dynamic int8) and running it with ONNX Runtime.

An exported directory holds `model.onnx` (and `model-int8.onnx` with --quantize int8), the tokenizer, `config.json`
(labels and the run's `training_record`), the run's results (`all_results.json`) and `onnx_export.json`: how it was
exported, the logit check against PyTorch, and the int8 model's agreement with fp32. Running an exported directory
(`OnnxClassifier`, `load_classifier_dir`) is `distillkit.runtime`'s, as for the PyTorch model.

`optimum`'s exporter needs transformers < 4.58, so export is `torch.onnx.export` (TorchScript, opset 17) and
quantization `onnxruntime.quantization.quantize_dynamic`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from .cli import UsageError
from .integrity import ONNX_METADATA_KEY, checksums, tokenizer_file_names, tokenizer_fingerprint
from .records import ADAPTER_CONFIG, RunRecord, is_adapter_dir, merged_method
from .runtime import (
    EXPORT_RECORD,
    INT8_FILE,
    ONNX_FILE,
    OnnxClassifier,
    is_model_dir,
    is_onnx_dir,
    load_model_checked,
    predict_logits,
)
from .students import count_parameters
from .tasks import SINGLE_LABEL, Task

logger = logging.getLogger(__name__)

OPSET = 17
TOLERANCE = 1e-4  # max |ONNX logit - PyTorch logit| an fp32 export may differ by
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# The run's own records travel with the export (trainer_state.json stays behind: its loss curve is the source's).
RECORD_FILES = ("train_results.json", "eval_results.json", "test_results.json", "thresholds.json")
# Real-looking comments for the logit check when no data set is given: short and long, toxic and not.
CHECK_TEXTS = [
    "Thanks for fixing the citation.",
    "You are a pathetic moron and everyone here knows it.",
    "Please add a reliable source for this claim before restoring the paragraph, per the talk page consensus.",
    "Stop vandalising my talk page, you stupid troll.",
    "The infobox lists the wrong date of birth; the 1998 biography gives 12 March.",
    "ok",
    (
        "I reverted the edit because it removed sourced content without explanation in the edit summary. If you "
        "disagree, let's discuss it here on the talk page rather than edit-warring over it."
    ),
    "What an ugly, worthless article. Delete it.",
]


class ExportCheckError(Exception):
    """The exported model does not compute what the PyTorch model computes: nothing is kept, exit status 1."""


# --- exporting --------------------------------------------------------------------------------------------------


class _LogitsOnly(torch.nn.Module):
    """The classifier with positional inputs and one output, as the TorchScript exporter wants it."""

    def __init__(self, model: torch.nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs))).logits


def model_input_names(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    names = [n for n in INPUT_NAMES if n in tokenizer.model_input_names]
    if "token_type_ids" not in names and getattr(model.config, "type_vocab_size", 0) > 1:
        names.append("token_type_ids")  # BERT takes segments even when its tokenizer does not make them
    return names


def export_fp32(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, path: str, opset: int = OPSET) -> None:
    """`model` → ONNX at `path`, with dynamic batch and sequence axes."""
    names = model_input_names(model, tokenizer)
    sample = tokenizer(CHECK_TEXTS[:2], padding=True, return_tensors="pt")
    args = tuple(sample[n] if n in sample else torch.zeros_like(sample["input_ids"]) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            # The wrapper must be in eval mode too: the exporter puts the module's own mode back afterwards, and a
            # fresh Module is in training mode (dropout on in the caller's model from then on).
            _LogitsOnly(model, names).eval(),
            args,
            path,
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )


def add_metadata(onnx_path: str, values: dict[str, str]) -> None:
    """Set `metadata_props` of an ONNX file (what onnxruntime's `get_modelmeta().custom_metadata_map` reads)."""
    import onnx

    model = onnx.load(onnx_path)
    kept = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, onnx_path)


def check_texts(texts: list[str] | None) -> list[str]:
    return list(texts) if texts else list(CHECK_TEXTS)


def logits_difference(
    model: torch.nn.Module,
    onnx_model: OnnxClassifier,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_length: int,
    onnx_logits: np.ndarray | None = None,
) -> float:
    """Max |ONNX - PyTorch| logit over `texts`, in padded batches of 16 and one text alone (both axes vary).

    `onnx_logits`: the ONNX model's logits of `texts` in batches of 16, when the caller has them already.
    """
    torch_logits = predict_logits(model, tokenizer, texts, max_length, batch_size=16)
    if onnx_logits is None:
        onnx_logits = predict_logits(onnx_model, tokenizer, texts, max_length, batch_size=16)  # type: ignore[arg-type]
    single = predict_logits(onnx_model, tokenizer, texts[:1], max_length, batch_size=1)  # type: ignore[arg-type]
    return float(max(np.abs(torch_logits - onnx_logits).max(), np.abs(torch_logits[:1] - single).max()))


@dataclass(frozen=True)
class QuantSettings:
    """How the int8 twin is made (`quantize_dynamic`: int8 weights, activations quantized on the fly).

    The defaults are the best of bench/onnx_quant.py on a trained MiniLM student (see README "Export to ONNX").
    """

    per_channel: bool = True  # one scale per output channel instead of one per weight matrix
    matmul_only: bool = True  # quantize only MatMul (not the embedding Gathers, nor Attention ops)
    embeddings: bool = False  # with matmul_only: the embedding tables (Gather) too, most of a small model's bytes
    keep_head_fp32: bool = True  # the pooler and classifier layers stay fp32 (they decide the label)
    preprocess: str = "none"  # none | pre_process (quant_pre_process) | optimizer (transformers fusion)
    reduce_range: bool = False  # 7-bit weights (for old CPUs without VNNI)

    def __post_init__(self) -> None:
        if self.preprocess not in ("none", "pre_process", "optimizer"):
            raise UsageError(f"preprocess {self.preprocess!r}: expected none, pre_process or optimizer")

    @property
    def label(self) -> str:
        parts = ["per-channel" if self.per_channel else "per-tensor"]
        parts.append(("MatMul + embeddings" if self.embeddings else "MatMul only") if self.matmul_only else "all ops")
        parts.append("head fp32" if self.keep_head_fp32 else "head int8")
        if self.preprocess != "none":
            parts.append(self.preprocess)
        if self.reduce_range:
            parts.append("reduce_range")
        return ", ".join(parts)


def head_nodes(onnx_path: str) -> list[str]:
    """The nodes of the pooler and the classification head: what `keep_head_fp32` leaves unquantized."""
    import onnx

    graph = onnx.load(onnx_path, load_external_data=False).graph
    return [n.name for n in graph.node if any(key in n.name for key in ("pooler", "classifier", "pre_classifier"))]


def _optimize(fp32_path: str, out_path: str, config: PretrainedConfig) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        fp32_path,
        model_type="bert",
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        opt_level=1,
    )
    optimized.save_model_to_file(out_path)


def quantize_int8(fp32_path: str, out_path: str, config: PretrainedConfig, settings: QuantSettings) -> None:
    """The dynamic int8 twin of an fp32 ONNX model."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        source = fp32_path
        if settings.preprocess == "pre_process":
            from onnxruntime.quantization.shape_inference import quant_pre_process

            source = os.path.join(tmp, "pre.onnx")
            # Symbolic shape inference does not complete on the traced BERT graph; ONNX's own shape inference does.
            quant_pre_process(fp32_path, source, skip_symbolic_shape=True)
        elif settings.preprocess == "optimizer":
            source = os.path.join(tmp, "optimized.onnx")
            _optimize(fp32_path, source, config)
        op_types = (["MatMul", "Gather"] if settings.embeddings else ["MatMul"]) if settings.matmul_only else None
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_dynamic logs every tensor it leaves alone on the root logger
        try:
            quantize_dynamic(
                source,
                out_path,
                weight_type=QuantType.QInt8,
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                op_types_to_quantize=op_types,
                nodes_to_exclude=head_nodes(source) if settings.keep_head_fp32 else None,
                # Fused contrib ops (pre_process, optimizer) have no ONNX shape inference: their outputs are float.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        finally:
            root.setLevel(level)


def agreement_metrics(
    probs32: np.ndarray, probs8: np.ndarray, labels: np.ndarray | None, task: Task | None = None
) -> dict[str, Any]:
    """int8 vs fp32 probabilities of the same texts: how often they decide the same (by the model's decision rule:
    argmax, a tuned threshold, or every label of a multi-label text), probability change, F1/ROC-AUC of each."""
    task = task or Task(SINGLE_LABEL, probs32.shape[1])
    same = task.predict(probs32) == task.predict(probs8)
    out: dict[str, Any] = {
        "texts": len(probs32),
        "agreement": float((same.all(axis=-1) if task.multi_label else same).mean()),
        "max_prob_diff": float(np.abs(probs32 - probs8).max()),
        "mean_prob_diff": float(np.abs(probs32 - probs8).mean()),
    }
    if labels is not None:
        for key, probs in (("fp32", probs32), ("int8", probs8)):
            metrics = task.metrics(probs, labels)
            out[f"f1_{key}"] = metrics["f1"]
            out[f"accuracy_{key}"] = metrics["accuracy"]
            out[f"roc_auc_{key}"] = metrics["roc_auc"]
    return out


def onnx_logits_of(model: OnnxClassifier, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int):
    return predict_logits(model, tokenizer, texts, max_length, batch_size=16)  # type: ignore[arg-type]


def onnx_probs(
    model: OnnxClassifier,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_length: int,
    task: Task | None = None,
):
    logits = predict_logits(model, tokenizer, texts, max_length)  # type: ignore[arg-type]
    return (task or Task(SINGLE_LABEL, logits.shape[1])).probabilities(logits)


# --- the command ------------------------------------------------------------------------------------------------


def load_trained_classifier(model_dir: str):
    """A trained classifier directory (full model, student, merged LoRA or adapter), adapters merged into their base.

    Anything else (a base model without a trained head, an ONNX export, a folder without weights) is a UsageError.
    """
    if not os.path.isdir(model_dir):
        raise UsageError(f"--model_dir {model_dir}: no such directory")
    if is_onnx_dir(model_dir):
        raise UsageError(f"--model_dir {model_dir}: already an ONNX export ({ONNX_FILE}); give the trained model")
    if not is_model_dir(model_dir):
        raise UsageError(f"--model_dir {model_dir}: not a model directory (expected config.json or {ADAPTER_CONFIG})")
    if is_adapter_dir(model_dir):
        with open(os.path.join(model_dir, ADAPTER_CONFIG)) as f:
            task = json.load(f).get("task_type")
        if task != "SEQ_CLS":
            raise UsageError(f"--model_dir {model_dir}: a {task} adapter, not a sequence classifier (SEQ_CLS)")
    try:
        # The weights, a trained head, the tokenizer, labels and warm-up outputs checked (distillkit.integrity).
        clf = load_model_checked(model_dir)
    except UsageError as err:
        raise UsageError(f"--model_dir {err}") from None
    if clf.is_adapter:  # PEFT's answer to ONNX export of LoRA: merge, then export
        clf.model = clf.model.merge_and_unload().eval()
    return clf


def write_records(clf, output_dir: str) -> None:
    """Tokenizer, config (labels, training record) and the run's results, as the source directory had them."""
    results, method = clf.results, clf.method  # a merged LoRA model's results are its adapter's (runtime.read_results)
    clf.tokenizer.save_pretrained(output_dir)
    clf.model.config.save_pretrained(output_dir)
    with open(os.path.join(output_dir, "all_results.json"), "w") as f:
        json.dump({**results, "method": method}, f, indent=2, sort_keys=True, default=str)
    for name in RECORD_FILES:
        source = os.path.join(clf.path, name)
        if os.path.isfile(source):
            shutil.copyfile(source, os.path.join(output_dir, name))
    run_record = RunRecord.load(clf.path)  # run_record.json, or what an older directory's records say
    if run_record is not None:
        run_record.tokenizer = tokenizer_fingerprint(clf.tokenizer)
        if clf.is_adapter:  # the export holds the merged model, not the adapter
            run_record.is_adapter, run_record.merged = False, True
            run_record.method = merged_method(run_record.method)
        run_record.save(output_dir)


def export_classifier(
    model_dir: str,
    output_dir: str,
    quantize: str | None = None,
    texts: list[str] | None = None,
    labels: np.ndarray | None = None,
    max_length: int = 128,
    settings: QuantSettings | None = None,
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """Export `model_dir` into `output_dir` (which must not hold an export yet) and return the export record.

    `texts` (validation comments, else CHECK_TEXTS) check the fp32 export against PyTorch; with `labels` the int8
    twin's F1 is measured beside fp32's. Raises ExportCheckError, after removing the files it wrote, when the fp32
    logits differ from PyTorch's by more than `tolerance`.
    """
    import onnx
    import onnxruntime

    clf = load_trained_classifier(model_dir)
    task = clf.task  # how it decides: the int8 check and the card's snippet decide the same way
    settings = settings or QuantSettings()
    texts = check_texts(texts)
    os.makedirs(output_dir, exist_ok=True)
    fp32_path = os.path.join(output_dir, ONNX_FILE)
    _, params = count_parameters(clf.model)
    export_fp32(clf.model, clf.tokenizer, fp32_path)
    fingerprint = tokenizer_fingerprint(clf.tokenizer)
    add_metadata(fp32_path, {ONNX_METADATA_KEY: json.dumps(fingerprint, sort_keys=True)})
    fp32 = OnnxClassifier(fp32_path, clf.model.config, params)
    # One fp32 pass over the texts serves both the check against PyTorch and the int8 comparison.
    fp32_logits = onnx_logits_of(fp32, clf.tokenizer, texts, max_length)
    diff = logits_difference(clf.model, fp32, clf.tokenizer, texts, max_length, onnx_logits=fp32_logits)
    if not diff <= tolerance:
        os.remove(fp32_path)
        raise ExportCheckError(
            f"ONNX logits differ from PyTorch's by {diff:.2e} on {len(texts)} texts (tolerance {tolerance:.0e})"
        )
    logger.info(f"{fp32_path}: logits within {diff:.1e} of PyTorch on {len(texts)} texts")
    write_records(clf, output_dir)
    record: dict[str, Any] = {
        "source": model_dir,
        "adapter_merged": clf.is_adapter,
        "architecture": type(clf.model).__name__,
        "params": params,
        "num_labels": len(clf.id2label),
        "inputs": model_input_names(clf.model, clf.tokenizer),
        "opset": OPSET,
        "exporter": "torch.onnx.export (TorchScript)",
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "files": {"fp32": ONNX_FILE},
        "size_mb": {"fp32": os.path.getsize(fp32_path) / 2**20},
        "check": {"texts": len(texts), "max_abs_logit_diff": diff, "tolerance": tolerance},
        "tokenizer": fingerprint,
    }
    if quantize == "int8":
        int8_path = os.path.join(output_dir, INT8_FILE)
        quantize_int8(fp32_path, int8_path, clf.model.config, settings)
        add_metadata(int8_path, {ONNX_METADATA_KEY: json.dumps(fingerprint, sort_keys=True)})
        int8 = OnnxClassifier(int8_path, clf.model.config, params)
        probs8 = onnx_probs(int8, clf.tokenizer, texts, max_length, task)
        quality = agreement_metrics(task.probabilities(fp32_logits), probs8, labels, task)
        record["files"]["int8"] = INT8_FILE
        record["size_mb"]["int8"] = os.path.getsize(int8_path) / 2**20
        record["quantization"] = {"method": "dynamic", "weights": "int8", **asdict(settings), "label": settings.label}
        record["int8_vs_fp32"] = quality
        logger.info(
            f"{int8_path}: agrees with fp32 on {100 * quality['agreement']:.2f}% of {len(texts)} texts"
            + (f", F1 {quality['f1_int8']:.4f} vs fp32 {quality['f1_fp32']:.4f}" if labels is not None else "")
        )
    elif quantize is not None:
        raise UsageError(f"--quantize {quantize}: only int8 is supported")
    # Every file a loader reads, as checked here: loaders refuse a file changed or truncated since.
    record["sha256"] = checksums(
        output_dir, [*record["files"].values(), "config.json", *tokenizer_file_names(output_dir)]
    )
    with open(os.path.join(output_dir, EXPORT_RECORD), "w") as f:
        json.dump(record, f, indent=2, default=str)
    write_card(output_dir, record, [str(clf.id2label[i]) for i in range(len(clf.id2label))], task)
    return record


def write_card(output_dir: str, record: dict[str, Any], labels: list[str], task: Task | None = None) -> None:
    """README.md: what the export is, how it was checked, and a snippet that runs it with onnxruntime alone and
    decides as the model does (argmax, a binary model's tuned threshold, a multi-class model's logit offsets, a
    multi-label model's per-label thresholds: distillkit/decision.py)."""
    task = task or Task(SINGLE_LABEL, len(labels))
    int8 = record.get("int8_vs_fp32")
    lines = [
        f"# {os.path.basename(os.path.normpath(output_dir))}: ONNX export",
        "",
        (
            f"Exported by distillkit's `run_export.py` from a {record['architecture']} "
            f"({record['params']:,} parameters{', LoRA adapter merged' if record['adapter_merged'] else ''}), opset "
            f"{record['opset']}, dynamic batch and sequence axes. Labels: {', '.join(labels)}."
        ),
        "",
        (
            f"- `{ONNX_FILE}` (fp32, {record['size_mb']['fp32']:.1f} MB): logits within "
            f"{record['check']['max_abs_logit_diff']:.1e} of PyTorch's on {record['check']['texts']} texts."
        ),
    ]
    if int8:
        quality = f"agrees with fp32 on {100 * int8['agreement']:.2f}% of {int8['texts']} validation texts"
        if "f1_int8" in int8:
            quality += f", F1 {int8['f1_int8']:.4f} (fp32 {int8['f1_fp32']:.4f})"
        lines.append(
            f"- `{INT8_FILE}` (dynamic int8: {record['quantization']['label']}, {record['size_mb']['int8']:.1f} MB): "
            f"{quality}."
        )
    model_file = INT8_FILE if int8 else ONNX_FILE
    lines += [
        "",
        "```python",
        "import numpy as np",
        "import onnxruntime as ort",
        "from transformers import AutoConfig, AutoTokenizer",
        "",
        'model_dir = "."  # this directory',
        "tokenizer = AutoTokenizer.from_pretrained(model_dir)",
        "config = AutoConfig.from_pretrained(model_dir)",
        "labels = config.id2label",
        f'session = ort.InferenceSession(f"{{model_dir}}/{model_file}", providers=["CPUExecutionProvider"])',
        "names = [i.name for i in session.get_inputs()]",
        (
            'batch = tokenizer(["Thanks for fixing the citation."], truncation=True, max_length=128, padding=True, '
            'return_tensors="np")'
        ),
        'logits = session.run(["logits"], {n: batch[n].astype("int64") for n in names})[0]',
        *_decision_lines(task),
        "```",
        "",
        f"`{EXPORT_RECORD}` holds the full record; `run_eval.py` and `app.py` load this directory as they load the source.",
    ]
    with open(os.path.join(output_dir, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _decision_lines(task: Task) -> list[str]:
    """The card snippet's last lines: the model's decision rule applied to its ONNX logits."""
    if task.multi_label:
        return [
            "probs = 1 / (1 + np.exp(-logits))  # one sigmoid per label",
            "cut = config.decision_thresholds or [0.5] * len(labels)  # tuned on the validation split",
            "print([[labels[j] for j in range(len(labels)) if p[j] >= cut[j]] for p in probs])",
        ]
    if task.thresholds is not None:
        return [
            "probs = np.exp(logits - logits.max(-1, keepdims=True))",
            "probs /= probs.sum(-1, keepdims=True)",
            "print([labels[int(p[1] >= config.decision_thresholds[0])] for p in probs])  # the tuned threshold",
        ]
    if task.offsets is not None:
        return [
            "offsets = np.asarray(config.decision_logit_offsets)  # per-class, tuned on the validation split",
            "print([labels[int(i)] for i in (logits + offsets).argmax(-1)])",
        ]
    return ["print([labels[int(i)] for i in logits.argmax(-1)])"]
