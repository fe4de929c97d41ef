"""Serving trained models side by side: a registry loaded once, request validation, batched inference.

Every forward pass runs on one inference thread (`InferenceWorker`), so concurrent requests never share a model
at once and the event loop never blocks; requests that wait together for the same model are merged into a batch.

Nothing here knows about HTTP: `app.py` turns a `RequestError` into a JSON error with its status code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cli import UsageError
from .evaluation import has_generic_label_names, layers_text, model_name, unique_names
from .loading import expand_onnx_variants, find_model_dirs
from .runtime import LoadedClassifier, load_model_checked, predict_logits
from .students import count_parameters
from .tasks import Task

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingLimits:
    """What one request may ask for: the bounds that keep a shared server up."""

    max_text_chars: int = 5000  # longer texts are refused (413), not silently cut
    max_texts: int = 256  # texts per request
    max_seq_length: int = 128  # tokens the model sees; longer texts are truncated like in training and evaluation
    batch_size: int = 32  # texts per forward pass; concurrent requests for one model are merged up to this
    max_pending_texts: int = 4096  # texts waiting for the models before requests are refused with 503
    max_queue_wait_s: float = 5.0  # longest a request waits for a model's forward pass to start; then 503
    max_json_depth: int = 8  # a valid body nests 2 deep; deeper is refused before it is parsed

    def __post_init__(self):
        if self.max_pending_texts < self.max_texts:
            raise UsageError(f"--max_pending_texts {self.max_pending_texts}: must be at least --max_texts")
        if not self.max_queue_wait_s > 0:
            raise UsageError(f"--max_queue_wait {self.max_queue_wait_s}: must be more than 0 seconds")
        if self.max_json_depth < 2:
            raise UsageError(f"max_json_depth {self.max_json_depth}: a request nests 2 deep")

    @property
    def retry_after_s(self) -> int:
        """What a shed request's `Retry-After` says: about one queue wait, in whole seconds."""
        return max(1, math.ceil(self.max_queue_wait_s))

    @property
    def max_body_bytes(self) -> int:
        # Every text at its longest, as \uXXXX\uXXXX JSON escapes (12 bytes a character at worst), plus slack.
        return self.max_texts * (self.max_text_chars * 12 + 16) + 65536


class RequestError(Exception):
    """A bad request: `status` is the HTTP status the client gets, the message says what to change.

    `retry_after` (seconds) is set when the server is only busy: the client may send the same request again then.
    """

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)
_SCAN_CHUNK = 1 << 20  # bytes per vectorised step: memory stays a few MB whatever the body's size


def json_depth(body: bytes) -> int:
    """How deep the arrays and objects of a JSON document nest, found without parsing it: one pass in 1 MB chunks,
    vectorised, so linear in the body's size whatever it holds (an unterminated string of escapes included).

    A quote ends or starts a string unless an odd run of backslashes precedes it; brackets inside strings are text.
    Invalid JSON may be measured wrongly, but the parser refuses it anyway (and its recursion is capped too).
    """
    data = memoryview(body).cast("B") if not isinstance(body, bytes) else body
    in_string, odd_backslashes, depth, deepest = False, False, 0, 0
    for start in range(0, len(data), _SCAN_CHUNK):
        chunk = np.frombuffer(data, dtype=np.uint8, count=min(_SCAN_CHUNK, len(data) - start), offset=start)
        positions = np.arange(chunk.size, dtype=np.int64)
        # For every byte, the index of the last byte at or before it that is not a backslash (-1: none in the chunk).
        last_plain = np.maximum.accumulate(np.where(chunk == _BACKSLASH, -1, positions))
        quotes = np.flatnonzero(chunk == _QUOTE)
        before = np.maximum(quotes - 1, 0)
        run = np.where(quotes > 0, quotes - 1 - last_plain[before], 0)  # backslashes right before each quote
        from_start = (quotes == 0) | (last_plain[before] == -1)  # that run reaches back into the previous chunk
        escaped = (run % 2 == 1) ^ (from_start & odd_backslashes)
        toggles = quotes[~escaped]
        brackets = np.flatnonzero(np.isin(chunk, _OPEN) | np.isin(chunk, _CLOSE))
        # A bracket is outside a string when an even number of string quotes (after the carried state) precede it.
        outside = (np.searchsorted(toggles, brackets) + in_string) % 2 == 0
        kept = brackets[outside]
        if kept.size:
            steps = np.where(np.isin(chunk[kept], _OPEN), 1, -1)
            levels = depth + np.cumsum(steps)
            deepest = max(deepest, int(levels.max()))
            depth = int(levels[-1])
        in_string ^= bool(toggles.size % 2)
        tail = chunk.size - 1 - int(last_plain[-1])  # backslashes ending this chunk
        odd_backslashes = bool(tail % 2) ^ (odd_backslashes and int(last_plain[-1]) == -1)
    return deepest


def parse_json_body(body: bytes, max_depth: int) -> Any:
    """The decoded JSON body of a request; 400 when it is not JSON or nests deeper than `max_depth`.

    The depth is checked before `json.loads`, whose recursive parser fails with RecursionError (a 500) on
    thousands of nested brackets.
    """
    depth = json_depth(body)
    if depth > max_depth:
        raise RequestError(
            400, f'the JSON body nests {depth} levels deep, at most {max_depth}: send {{"texts": ["some text"]}}'
        )
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise RequestError(400, f'the body is not valid JSON ({err}); send {{"texts": ["some text"]}}') from err


@dataclass
class PredictRequest:
    texts: list[str]
    models: list[str]


def validate_predict_request(payload: Any, limits: ServingLimits, known_models: list[str]) -> PredictRequest:
    """Check a decoded JSON body `{"texts": [...], "models": [...optional...]}`; raise `RequestError` if it is bad."""
    if not isinstance(payload, dict):
        raise RequestError(422, 'the body must be a JSON object like {"texts": ["some text"]}')
    unknown = sorted(set(payload) - {"texts", "models"})
    if unknown:
        raise RequestError(422, f"unknown field(s) {', '.join(unknown)}: expected texts and optionally models")
    texts = payload.get("texts")
    if texts is None:
        raise RequestError(422, 'missing field texts: send {"texts": ["some text", ...]}')
    if not isinstance(texts, list) or not texts:
        raise RequestError(422, "texts must be a non-empty list of strings")
    if len(texts) > limits.max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request: at most {limits.max_texts}; split the batch")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(422, f"texts[{i}] is {type(text).__name__}: every text must be a string")
        if not _is_valid_unicode(text):
            raise RequestError(422, f"texts[{i}] is not valid Unicode (a lone surrogate): send UTF-8 text")
        if len(text) > limits.max_text_chars:
            raise RequestError(413, f"texts[{i}] has {len(text)} characters: at most {limits.max_text_chars} per text")
    if "models" not in payload:
        return PredictRequest(texts=texts, models=list(known_models))
    models = payload["models"]  # null is not "every model": the schema says a list, or leave it out
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        raise RequestError(422, "models must be a non-empty list of model names (leave it out for every model)")
    missing = [m for m in models if m not in known_models]
    if missing:
        raise RequestError(404, f"unknown model(s) {', '.join(missing)}: served are {', '.join(known_models)}")
    return PredictRequest(texts=texts, models=list(dict.fromkeys(models)))  # duplicates asked once


def _is_valid_unicode(text: str) -> bool:
    # JSON may carry "\\ud800" escapes that decode to a lone surrogate: no tokenizer or response can encode it.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def task_fields(task: Task, labels: list[str]) -> dict[str, Any]:
    """How a model decides, as the API shows it beside its predictions and in /api/models.

    Multi-label: `thresholds`, each label's probability threshold (0.5 where none was saved). Single-label:
    `threshold`, the binary positive class's saved threshold, or null when the label is the argmax; a multi-class
    model with tuned offsets also has `logit_offsets` (its label is argmax(logits + offsets), distillkit/decision.py).
    """
    if task.multi_label:
        cuts = task.thresholds if task.thresholds is not None else [0.5] * len(labels)
        return {"problem_type": task.problem_type, "thresholds": dict(zip(labels, map(float, cuts)))}
    threshold = float(task.thresholds[0]) if task.thresholds is not None else None
    fields = {"problem_type": task.problem_type, "threshold": threshold}
    if task.offsets is not None:  # a multi-class model decides by argmax(logits + offsets)
        fields["logit_offsets"] = dict(zip(labels, map(float, task.offsets)))
    return fields


@dataclass
class ServedModel:
    """One loaded model, its class names, its task (how it decides) and what its run recorded about it."""

    clf: LoadedClassifier
    labels: list[str]  # class names by id
    info: dict[str, Any]
    max_length: int
    task: Task = field(default_factory=Task)

    @property
    def name(self) -> str:
        return self.clf.name

    def predictions(self, probs: np.ndarray, latency_ms: float) -> list[dict[str, Any]]:
        """One API prediction per row of probabilities, decided by the model's task (`Task.predict`).

        Every prediction has `label`, `label_id`, `probability` (of that label) and `probabilities` (every label's).
        A multi-label one also lists `labels`/`label_ids` over their thresholds (id order); its `label` is the most
        probable of those, and `label`, `label_id`, `probability` are null when no label passes.
        """
        decided = self.task.predict(probs)
        shown = task_fields(self.task, self.labels)
        out = []
        for row, decision in zip(probs, decided):
            if self.task.multi_label:
                ids = [int(i) for i in np.flatnonzero(decision)]
                top = max(ids, key=lambda i: row[i]) if ids else None
                extra = {"labels": [self.labels[i] for i in ids], "label_ids": ids}
            else:
                top, extra = int(decision), {}
            out.append(
                {
                    "model": self.name,
                    "label": None if top is None else self.labels[top],
                    "label_id": top,
                    "probability": None if top is None else float(row[top]),
                    "probabilities": {label: float(p) for label, p in zip(self.labels, row)},
                    **extra,
                    **shown,
                    "latency_ms": latency_ms,
                }
            )
        return out


@dataclass
class BatchOutput:
    """One request's share of a forward pass."""

    probs: np.ndarray  # (texts of this request, classes)
    forward_ms: float  # the forward passes that carried these texts (tokenising included)
    batch_texts: int  # texts in those passes, this request's and those merged in from others
    queue_ms: float  # waiting for the inference thread


@dataclass
class _Job:
    model: str
    texts: list[str]
    future: Future
    submitted: float = field(default_factory=time.perf_counter)


class InferenceWorker:
    """The one thread that runs every forward pass, one at a time, for every model.

    One at a time because a CPU forward pass already uses every core: two at once only slow each other down and
    blur each model's latency. Concurrent requests for the same model that wait together are merged into one
    batch (up to `max_batch_texts` texts), which is where throughput under load comes from; a request is never
    split. At most `max_pending_texts` texts may wait: beyond that `submit` refuses with 503 instead of queueing
    without bound.
    """

    def __init__(
        self,
        run: Callable[[str, list[str]], np.ndarray],
        max_batch_texts: int,
        max_pending_texts: int,
        retry_after_s: int = 1,
    ) -> None:
        self._run = run
        self.max_batch_texts = max_batch_texts
        self.max_pending_texts = max_pending_texts
        self.retry_after_s = retry_after_s
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._pending_texts = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="inference", daemon=True)
        self._thread.start()

    @property
    def pending_texts(self) -> int:
        """Texts waiting for a forward pass now (what /healthz reports against max_pending_texts)."""
        with self._cond:
            return self._pending_texts

    def submit(self, model: str, texts: list[str]) -> Future:
        """A future of the `BatchOutput` for `texts`; raises RequestError(503) when too much is waiting."""
        job = _Job(model, texts, Future())
        with self._cond:
            if self._closed:
                raise RequestError(503, "the server is shutting down")
            if self._pending_texts + len(texts) > self.max_pending_texts:
                raise RequestError(
                    503,
                    f"server busy: {self._pending_texts} texts are waiting for the models; retry shortly",
                    retry_after=self.retry_after_s,
                )
            self._queue.append(job)
            self._pending_texts += len(texts)
            self._cond.notify()
        return job.future

    def withdraw(self, future: Future) -> bool:
        """Take a job that has not started out of the queue (its client stops waiting); False once it runs."""
        with self._cond:
            if not future.cancel():
                return False
            for job in self._queue:
                if job.future is future:
                    self._queue.remove(job)
                    self._pending_texts -= len(job.texts)
                    break
            return True

    async def wait(self, future: Future, max_wait_s: float) -> BatchOutput:
        """The job's output; 503 (with Retry-After) when its forward pass has not started within `max_wait_s`.

        A pass that has started is waited for: the bound is on queueing, not on a model's own forward time.
        """
        result = asyncio.wrap_future(future)
        try:
            return await asyncio.wait_for(asyncio.shield(result), max_wait_s)
        except asyncio.TimeoutError:
            if self.withdraw(future):
                raise RequestError(
                    503,
                    f"server busy: waited {max_wait_s:g} s for a model without a turn; retry shortly",
                    retry_after=self.retry_after_s,
                ) from None
            return await result

    def _take(self) -> list[_Job] | None:
        """The oldest job and every waiting job for the same model that fits in its batch; None once closed."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            # A request whose client went away was cancelled: it costs no forward pass and takes no batch space.
            first = None
            while self._queue and first is None:
                job = self._queue.popleft()
                self._pending_texts -= len(job.texts)
                if job.future.set_running_or_notify_cancel():
                    first = job
            if first is None:
                return []
            batch, size, kept = [first], len(first.texts), deque()
            for job in self._queue:
                if job.model == first.model and size + len(job.texts) <= self.max_batch_texts:
                    self._pending_texts -= len(job.texts)
                    if job.future.set_running_or_notify_cancel():
                        batch.append(job)
                        size += len(job.texts)
                else:
                    kept.append(job)
            self._queue = kept
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            if not batch:
                continue
            texts = [text for job in batch for text in job.texts]
            start = time.perf_counter()
            try:
                probs = self._run(batch[0].model, texts)
            except Exception as err:  # a failed batch fails its own requests, never the worker
                logger.exception(f"inference on {batch[0].model} failed")
                for job in batch:
                    job.future.set_exception(err)
                continue
            forward_ms = 1000 * (time.perf_counter() - start)
            offset = 0
            for job in batch:
                n = len(job.texts)
                queue_ms = 1000 * (start - job.submitted)
                job.future.set_result(BatchOutput(probs[offset : offset + n], forward_ms, len(texts), queue_ms))
                offset += n

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)


def describe(clf: LoadedClassifier, labels: list[str], task: Task) -> dict[str, Any]:
    """What `/api/models` shows of a model: all from its own records and config."""
    results, config = clf.results, clf.model.config  # how it was made: clf.record (records.RunRecord)
    _, params = count_parameters(clf.model)
    return {
        "name": clf.name,
        "method": clf.method,
        "layers": layers_text(clf.layers),
        "num_layers": getattr(config, "num_hidden_layers", None),
        "params": params,
        "trainable_params": results.get("trainable_params"),
        "adapter": clf.is_adapter,
        "runtime": clf.runtime,  # pytorch, or onnxruntime-fp32 / onnxruntime-int8 for an ONNX export
        "labels": labels,
        **task_fields(task, labels),  # problem_type, and threshold (single-label) or thresholds (multi-label)
        "test_f1": results.get("test_f1"),
        "test_accuracy": results.get("test_accuracy"),
        "test_roc_auc": results.get("test_roc_auc"),
    }


def display_labels(clf: LoadedClassifier, label_names: list[str] | None) -> list[str]:
    """The model's class names; `label_names` only names a model saved with generic ones (LABEL_0, LABEL_1, ...)."""
    own = [str(clf.id2label[i]) for i in range(len(clf.id2label))]
    if not label_names or not has_generic_label_names(clf.id2label):
        return own
    if len(label_names) != len(own):
        raise UsageError(
            f"--class_names {','.join(label_names)}: {len(label_names)} names, but model {clf.name} has "
            f"{len(own)} classes"
        )
    return list(label_names)


class ModelRegistry:
    """Every served model, loaded once at start-up, by unique name in a stable order."""

    def __init__(
        self, classifiers: list[LoadedClassifier], limits: ServingLimits, label_names: list[str] | None = None
    ):
        if not classifiers:
            raise UsageError("no models to serve")
        self.limits = limits
        self.models: dict[str, ServedModel] = {}
        for clf in classifiers:
            labels = display_labels(clf, label_names)
            task = clf.task
            max_positions = getattr(clf.model.config, "max_position_embeddings", None) or limits.max_seq_length
            self.models[clf.name] = ServedModel(
                clf=clf,
                labels=labels,
                info=describe(clf, labels, task),
                max_length=min(limits.max_seq_length, max_positions),
                task=task,
            )
        self.worker = InferenceWorker(
            self._forward, limits.batch_size, limits.max_pending_texts, retry_after_s=limits.retry_after_s
        )
        for name in self.models:  # a model's first forward pass is slow: not a user's request
            self.predict(PredictRequest(texts=["warm-up"], models=[name]))

    @classmethod
    def from_dirs(
        cls,
        model_dirs: list[str],
        limits: ServingLimits,
        experiment_dir: str | None = None,
        label_names: list[str] | None = None,
    ) -> ModelRegistry:
        paths = expand_onnx_variants(list(model_dirs))  # an ONNX export serves its fp32 and int8 models
        if experiment_dir:
            paths += find_model_dirs(experiment_dir)
        paths = list(dict.fromkeys(os.path.abspath(p) for p in paths))
        if not paths:
            raise UsageError("nothing to serve: pass --experiment_dir EXP or --model_dirs DIR [DIR ...]")
        names = unique_names([model_name(p, experiment_dir) for p in paths])
        required = {os.path.abspath(p) for p in model_dirs}  # asked for by name: must load
        classifiers = []
        for path, name in zip(paths, names):
            logger.info(f"loading {name} from {path}")
            try:
                classifiers.append(load_model_checked(path, name))
            except UsageError as err:
                if os.path.abspath(path) in required:
                    raise
                # A model found in --experiment_dir, or the int8 twin of an export: the others are still served.
                print(f"error: {err} (left out; serving the other models)", file=sys.stderr)
        if not classifiers:
            raise UsageError("no model could be loaded: see the error lines above")
        return cls(classifiers, limits, label_names)

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def describe(self) -> list[dict[str, Any]]:
        return [m.info for m in self.models.values()]

    def _forward(self, name: str, texts: list[str]) -> np.ndarray:
        """Probabilities (texts, labels) of one model, softmax or per-label sigmoid by its task; inference thread only."""
        served = self.models[name]
        clf = served.clf
        logits = predict_logits(clf.model, clf.tokenizer, texts, served.max_length, self.limits.batch_size)
        return served.task.probabilities(logits)

    def predict(self, request: PredictRequest) -> dict[str, Any]:
        """The `/api/predict` answer, blocking (for scripts and tests)."""
        outputs = {}
        for name in request.models:  # one model after the other: each model's latency is its own
            outputs[name] = self.worker.submit(name, request.texts).result()
        return self.answer(request, outputs)

    async def predict_async(self, request: PredictRequest) -> dict[str, Any]:
        """The `/api/predict` answer; the event loop awaits the inference thread and keeps serving meanwhile."""
        outputs = {}
        for name in request.models:  # each model's turn is waited for at most max_queue_wait_s
            future = self.worker.submit(name, request.texts)
            outputs[name] = await self.worker.wait(future, self.limits.max_queue_wait_s)
        return self.answer(request, outputs)

    def answer(self, request: PredictRequest, outputs: dict[str, BatchOutput]) -> dict[str, Any]:
        """For each text, each model's decision, label probabilities and latency (its batch's time per text)."""
        for name, out in outputs.items():
            if not np.isfinite(out.probs).all():  # never turn NaN into a label: this request fails, the server stays
                bad = int(np.flatnonzero(~np.isfinite(out.probs).all(axis=1))[0])
                raise RequestError(500, f"model {name} gave non-finite outputs for texts[{bad}]: no prediction")
        per_model = {
            name: self.models[name].predictions(out.probs, out.forward_ms / out.batch_texts)
            for name, out in outputs.items()
        }
        results = [
            {"text": text, "predictions": [per_model[name][i] for name in request.models]}
            for i, text in enumerate(request.texts)
        ]
        timing = {
            name: {
                "forward_ms": out.forward_ms,
                "queue_ms": out.queue_ms,
                "texts": len(request.texts),
                "batch_texts": out.batch_texts,
            }
            for name, out in outputs.items()
        }
        return {"models": request.models, "results": results, "timing": timing}

    def close(self) -> None:
        self.worker.close()
