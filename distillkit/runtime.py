"""A classifier runtime: load any model directory our scripts write and predict logits for texts.

A directory loads as PyTorch (a full model or a PEFT adapter on its base) or, when it is an ONNX export
(run_export.py: `model.onnx`, `model-int8.onnx`), as an ONNX Runtime session called like the PyTorch model
(`model(**batch).logits`). `predict_logits` runs either on texts. Loading, evaluation, export and serving stand on
this module; it imports none of them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from .cli import UsageError
from .integrity import (
    ONNX_METADATA_KEY,
    WARMUP_TEXTS,
    BrokenModelError,
    check_labels,
    check_outputs,
    check_thresholds,
    check_tokenizer,
    require_adapter_base,
    require_all_parameters_loaded,
    require_classifier_architecture,
    require_tokenizer_files,
    require_weights,
    tokenizer_file_names,
    verify_checksums,
)
from .losses import teacher_terms
from .records import ADAPTER_CONFIG, RunRecord, is_adapter_dir, merged_parent
from .tasks import MULTI_LABEL, Task

logger = logging.getLogger(__name__)

# What run_export.py writes into an exported directory.
ONNX_FILE = "model.onnx"
INT8_FILE = "model-int8.onnx"
EXPORT_RECORD = "onnx_export.json"


# --- a loaded classifier ----------------------------------------------------------------------------------------


@dataclass
class LoadedClassifier:
    """A ready-to-run classifier and what its run recorded about it."""

    name: str
    path: str
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    is_adapter: bool
    record: RunRecord | None = None  # run_record.json (or an older directory's records); None: nothing recorded
    results: dict[str, Any] = field(default_factory=dict)  # all_results.json (a merged model: its adapter's)
    runtime: str = "pytorch"  # or onnxruntime-fp32 / onnxruntime-int8 for an exported directory

    @property
    def id2label(self) -> dict[int, str]:
        return {int(k): v for k, v in self.model.config.id2label.items()}

    @property
    def task(self) -> Task:
        """How the model decides: its config's problem_type and saved decision thresholds (`Task.from_config`);
        thresholds that do not fit its labels are a usage error naming the directory."""
        try:
            return Task.from_config(self.model.config)
        except ValueError as err:
            raise UsageError(f"{self.path}: config.json: {err}") from None

    @property
    def method(self) -> str:
        """The name a comparison groups this model under: the recorded method, `_ce` for a student trained on the
        labels alone (the CE-only control of distillation, methods.CONTROLS), `_onnx`/`_onnx_int8` for an export."""
        record = self.record
        if record is not None:
            method = record.method + ("_ce" if labels_only_student(record) else "")
        else:  # a model our scripts did not write
            method = str(self.results.get("method") or "custom")
        if self.runtime.startswith("onnxruntime"):  # even_onnx, even_onnx_int8: grouped apart from the PyTorch rows
            return f"{method}_onnx" + ("" if self.runtime.endswith("fp32") else f"_{self.runtime.split('-')[-1]}")
        return method

    @property
    def layers(self) -> list[int] | None:
        """The teacher layers (1-based) a student kept; None for a model with all its layers."""
        if self.record is not None and self.record.layers is not None:
            return list(self.record.layers)
        return getattr(self.model.config, "distillation_layers", None)


def labels_only_student(record: RunRecord) -> bool:
    """A student distilled with no teacher signal (every term that needs the teacher at 0, e.g. alpha_kl =
    alpha_cos = 0): the CE-only control, e.g. odd_ce. A term the record predates counts as 0."""
    return (
        record.teacher is not None
        and not (record.is_adapter or record.merged)
        and bool(record.loss)
        and all(record.loss.get(t.weight_flag, 0) == 0 for t in teacher_terms())
    )


def is_model_dir(path: str) -> bool:
    return is_adapter_dir(path) or os.path.isfile(os.path.join(path, "config.json")) or is_onnx_file(path)


def read_results(path: str) -> dict[str, Any]:
    """all_results.json; a merged model (OUT/merged) has none of its own and shares its adapter's run's."""
    results_file = os.path.join(path, "all_results.json")
    if not os.path.isfile(results_file):
        parent = merged_parent(path)
        return read_results(parent) if parent else {}
    with open(results_file) as f:
        return json.load(f)


def adapter_head_kwargs(path: str, record: RunRecord | None) -> dict[str, Any]:
    """num_labels/id2label/label2id and problem_type for the base an adapter is loaded on (`record`: the adapter's).

    `AutoPeftModelForSequenceClassification` builds the base from `base_model_name_or_path`; a pretrained encoder
    has no head, so it would get the default 2 labels and the adapter's 3-class head would not fit, nor would it
    know the task. The run recorded its labels and task; without them, the count is read off the head's bias.
    """
    task = {"problem_type": record.problem_type} if record is not None else {}
    if record is not None and record.label_names:
        id2label = dict(enumerate(record.label_names))
        labels = {"num_labels": len(id2label), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
        return {**labels, **task}
    weights = os.path.join(path, "adapter_model.safetensors")
    if os.path.isfile(weights):
        from safetensors import safe_open

        with safe_open(weights, framework="pt") as f:
            names = f.keys()  # a safe_open handle is not iterable
            heads = [k for k in names if k.endswith(("classifier.bias", "classifier.out_proj.bias"))]
            if len(heads) == 1:
                return {"num_labels": f.get_slice(heads[0]).get_shape()[0], **task}
    return task


def adapter_base_name(path: str) -> str | None:
    """The model an adapter directory adapts: adapter_config.json's `base_model_name_or_path`."""
    with open(os.path.join(path, ADAPTER_CONFIG)) as f:
        return json.load(f).get("base_model_name_or_path")


def load_classifier_dir(path: str, name: str | None = None, device: str | torch.device = "cpu") -> LoadedClassifier:
    """Load a saved full model or PEFT adapter in eval mode (safetensors only, never remote code), checked.

    An ONNX export (run_export.py: a directory with model.onnx, or DIR/model-int8.onnx) loads as an ONNX Runtime
    session that is called like the PyTorch model. Whatever the runtime, the directory must prove itself first
    (`verify_loaded`): a UsageError or `integrity.BrokenModelError` says which file is wrong.
    """
    if is_onnx_dir(path) or is_onnx_file(path):
        clf = load_onnx_classifier(path, name)
        clf.model.to(device)  # refuses anything but the CPU
        verify_loaded(clf, clf.model.tokenizer_fingerprint, device)
        return clf
    if not os.path.isdir(path) or not is_model_dir(path):
        raise UsageError(f"{path}: not a model directory (expected config.json or {ADAPTER_CONFIG})")
    require_tokenizer_files(path)  # before AutoTokenizer can invent a 5-token vocabulary
    adapter = is_adapter_dir(path)
    require_weights(path, adapter)
    record, results = RunRecord.load(path), read_results(path)
    if adapter:
        from peft import AutoPeftModelForSequenceClassification

        base = adapter_base_name(path)
        require_adapter_base(path, base)
        try:
            model = AutoPeftModelForSequenceClassification.from_pretrained(
                path, use_safetensors=True, **adapter_head_kwargs(path, record)
            )
        except (OSError, ValueError) as err:  # a hub id that cannot be reached, or a base that is not a model
            if base and os.path.isdir(base):
                raise
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UsageError(
                f"{path}: the adapter's base model {base} cannot be loaded (adapter_config.json base_model_name_or_path: "
                f"not a local directory; {first[:200]}); set base_model_name_or_path to a local copy of it"
            ) from None
        # The decision rule tuned at training time: set on the config, as transformers does not know the attribute
        # (a from_pretrained kwarg would reach the model's __init__).
        check_thresholds(results.get("decision_thresholds"), f"{path}: all_results.json")
        for key in ("decision_thresholds", "decision_logit_offsets"):
            if results.get(key) is not None:
                setattr(model.config, key, results[key])
    else:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        require_classifier_architecture(path, config.architectures)  # a base model: no head to load
        # Before the weights: a label count that does not fit the head would fail deep inside from_pretrained.
        check_labels(path, config.id2label, record.label_names if record else None, config.problem_type == MULTI_LABEL)
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            path, config=config, use_safetensors=True, trust_remote_code=False, output_loading_info=True
        )
        require_all_parameters_loaded(path, loading)  # a head (or any layer) the weights lack would be random
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    clf = LoadedClassifier(
        name=name or os.path.basename(os.path.normpath(path)),
        path=path,
        model=model,
        tokenizer=tokenizer,
        is_adapter=adapter,
        record=record,
        results=results,
    )
    verify_loaded(clf, record.tokenizer if record is not None else None, device)
    return clf


def load_model_checked(path: str, name: str | None = None, device: str | torch.device = "cpu") -> LoadedClassifier:
    """`load_classifier_dir`, with every way a directory can be unusable as one UsageError naming the file: what
    app.py prints as its `error:` line and run_eval.py reports as a broken model."""
    try:
        return load_classifier_dir(path, name=name, device=device)
    except BrokenModelError as err:
        raise UsageError(str(err)) from None
    except (OSError, ValueError, RuntimeError) as err:  # a truncated safetensors file, an unreadable config.json
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"{path}: cannot be loaded ({first[:200]})") from None


def verify_loaded(clf: LoadedClassifier, fingerprint: dict[str, Any] | None, device: str | torch.device = "cpu") -> None:
    """The checks every reader relies on (distillkit.integrity): the tokenizer is the trained one, config.json's
    labels agree with run_record.json's and are distinct, the decision rule is valid, and a warm-up forward pass
    gives finite logits, one per label, that depend on the text."""
    directory = clf.path if os.path.isdir(clf.path) else os.path.dirname(clf.path)
    config = clf.model.config
    check_tokenizer(directory, clf.tokenizer, fingerprint, getattr(config, "vocab_size", None))
    task = clf.task  # validates the decision rule (decision.py)
    check_labels(directory, config.id2label, clf.record.label_names if clf.record else None, task.multi_label)
    logits = predict_logits(clf.model, clf.tokenizer, WARMUP_TEXTS, 32, device=str(device))
    check_outputs(f"{clf.name} ({clf.path})", logits, len(config.id2label))


# --- what an exported directory is ------------------------------------------------------------------------------


def is_onnx_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, ONNX_FILE))


def is_onnx_file(path: str) -> bool:
    """A variant inside an exported directory (DIR/model-int8.onnx): it reads its tokenizer and config from DIR."""
    return path.endswith(".onnx") and os.path.isfile(path) and is_onnx_dir(os.path.dirname(path) or ".")


def onnx_variants(path: str) -> list[str]:
    """The models an exported directory serves: DIR (fp32) and DIR/model-int8.onnx when it exists; else [path]."""
    if not is_onnx_dir(path):
        return [path]
    int8 = os.path.join(path, INT8_FILE)
    return [path, int8] if os.path.isfile(int8) else [path]


def variant_suffix(path: str) -> str:
    """`int8` for DIR/model-int8.onnx: what a model name adds for a variant file."""
    stem = os.path.basename(path)[: -len(".onnx")]
    return stem.removeprefix("model-").removeprefix("model") or "onnx"


def read_export_record(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, EXPORT_RECORD)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


# --- running an exported model ----------------------------------------------------------------------------------


def session_options(num_threads: int | None = None, spinning: bool = True):
    """ONNX Runtime with as many threads as torch uses, so the two runtimes are timed on equal terms."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:  # idle threads sleep instead of spinning: fairer to other threads (a server's event loop)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxClassifier:
    """An ONNX Runtime session called like a PyTorch sequence classifier: `model(**batch).logits`.

    `parameters()` yields one meta tensor sized like the exported PyTorch model, so parameter counts (used by the
    report and the server) work unchanged; nothing here trains.
    """

    def __init__(
        self,
        onnx_path: str,
        config: PretrainedConfig,
        num_parameters: int = 0,
        num_threads: int | None = None,
        spinning: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.path = onnx_path
        self.config = config
        self.num_parameters = int(num_parameters)
        try:
            self.session = ort.InferenceSession(
                onnx_path, sess_options=session_options(num_threads, spinning), providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf types: any of them is a bad file
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UsageError(f"{onnx_path}: not a loadable ONNX model ({first[:200]})") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        metadata = self.session.get_modelmeta().custom_metadata_map
        # The tokenizer the model was exported with (integrity.tokenizer_fingerprint), when the export recorded it.
        self.tokenizer_fingerprint = json.loads(metadata[ONNX_METADATA_KEY]) if ONNX_METADATA_KEY in metadata else None

    def __call__(self, **inputs: Any) -> SimpleNamespace:
        feed = {}
        for name in self.input_names:
            value = inputs.get(name)
            if value is None and name == "token_type_ids":  # a tokenizer that does not make them: segment 0
                value = torch.zeros_like(inputs["input_ids"])
            if value is None:
                raise ValueError(f"the ONNX model needs input {name}")
            feed[name] = value.detach().cpu().numpy().astype(np.int64) if torch.is_tensor(value) else np.asarray(value)
        (logits,) = self.session.run(["logits"], feed)
        return SimpleNamespace(logits=torch.from_numpy(logits))

    def to(self, device: str | torch.device) -> OnnxClassifier:
        if str(device) != "cpu":
            raise UsageError(f"--device {device}: exported ONNX models run on the CPU here (onnxruntime CPU build)")
        return self

    def eval(self) -> OnnxClassifier:
        return self

    def parameters(self):
        yield torch.empty(self.num_parameters, device="meta")


def load_onnx_classifier(path: str, name: str | None = None, spinning: bool = True):
    """An exported directory (fp32 model.onnx) or a variant file in one (DIR/model-int8.onnx) as a LoadedClassifier."""
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    onnx_path = os.path.join(path, ONNX_FILE) if os.path.isdir(path) else path
    record = read_export_record(directory)
    # The files the export checked, byte for byte: this model file, its config and its tokenizer.
    shared = ["config.json", *tokenizer_file_names(directory)]
    verify_checksums(directory, record.get("sha256") or {}, [os.path.basename(onnx_path), *shared])
    require_tokenizer_files(directory)
    try:
        config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise UsageError(f"{directory}/config.json: cannot be read ({str(err).splitlines()[0][:200]})") from None
    precision = "fp32" if os.path.basename(onnx_path) == ONNX_FILE else variant_suffix(onnx_path)
    model = OnnxClassifier(onnx_path, config, record.get("params", 0), spinning=spinning)
    if model.tokenizer_fingerprint is None:  # an export from before the metadata: onnx_export.json may have it
        model.tokenizer_fingerprint = record.get("tokenizer")
    default_name = os.path.basename(os.path.normpath(directory))
    return LoadedClassifier(
        name=name or (default_name if precision == "fp32" else f"{default_name}-{precision}"),
        path=path,
        model=model,  # type: ignore[arg-type]  # duck-typed: called like a PyTorch classifier
        tokenizer=AutoTokenizer.from_pretrained(directory, trust_remote_code=False),
        is_adapter=False,
        record=RunRecord.load(directory),
        results=read_results(directory),
        runtime=f"onnxruntime-{precision}",
    )


# --- predicting ---------------------------------------------------------------------------------------------------


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, device: str) -> dict:
    """One padded batch of `texts` on `device` (what the speed measurements time a model on)."""
    batch = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}


def encode_batches(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, batch_size: int = 64
) -> list[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """The texts tokenised once, sorted by token count and cut into padded batches: [(row indices, inputs), ...].

    Batches of similar length pad least; the same batches serve every model that shares the tokenizer
    (`predict_batches`)."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    lengths = np.array([len(ids) for ids in encoded["input_ids"]])
    order = np.argsort(lengths, kind="stable")
    pad = {"input_ids": tokenizer.pad_token_id or 0, "token_type_ids": tokenizer.pad_token_type_id}
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = int(lengths[idx].max())
        inputs = {}
        for key, rows in encoded.items():
            array = np.full((len(idx), width), pad.get(key, 0), dtype=np.int64)
            for row, i in enumerate(idx):
                array[row, : len(rows[i])] = rows[i]
            inputs[key] = torch.from_numpy(array)
        batches.append((idx, inputs))
    return batches


@torch.inference_mode()
def predict_batches(
    model: torch.nn.Module, batches: list[tuple[np.ndarray, dict[str, torch.Tensor]]], device: str = "cpu"
) -> np.ndarray:
    """Logits (n, num_labels) of `encode_batches`' batches, back in the order of the texts."""
    n = sum(len(idx) for idx, _ in batches)
    out = None
    for idx, inputs in batches:
        logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits.float().cpu().numpy()
        if out is None:
            out = np.zeros((n, logits.shape[-1]), dtype=np.float64)
        out[idx] = logits
    return out


def predict_logits(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_length: int,
    batch_size: int = 64,
    device: str = "cpu",
) -> np.ndarray:
    """Logits (n, num_labels) in the order of `texts`; batches of similar length pad least."""
    return predict_batches(model, encode_batches(tokenizer, texts, max_length, batch_size), device)
