#!/usr/bin/env python
"""Serve trained models side by side: a JSON API and a page that classifies text with every model at once.

    python app.py --experiment_dir EXP                      # every model in an experiment directory, and EXP/report
    python app.py --model_dirs EXP/teacher EXP/even --report_dir OUT/eval --port 8000

Then open http://127.0.0.1:8000/. API: GET /healthz, GET /api/models, POST /api/predict with
{"texts": ["..."], "models": ["teacher", "even"]} (models optional). Each model is loaded once, at start-up.
Each model decides by the task its config.json saved (`PREDICT_DESCRIPTION` below; /openapi.json too): a single-label
model's answer is as it always was, plus `threshold`; a multi-label model's adds every label's sigmoid probability and
the labels over their saved thresholds.
Read-only, over the evaluation output (run_eval.py's predictions on the test split): GET /api/evaluation,
/api/distribution?model=NAME, /api/errors?model=NAME&limit=N&offset=K, /api/disagreements?a=NAME&b=NAME&limit=N.
With run_eval.py --bias_dataset figures: /api/bias?model=NAME (identities, worst BPSN AUC first) and
/api/bias/false_positives?model=NAME&identity=TERM&limit=N (its non-toxic texts flagged toxic, worst first).
"""

from __future__ import annotations

import os

# Before torch loads OpenMP. Spinning OpenMP threads wait for a core another process holds: on a shared CPU a
# forward pass then takes ~50x longer (measured here: 680 ms instead of 12 ms for one text on a 3-layer student).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from distillkit.api_schema import (
    HEALTH_SCHEMA,
    OFFSET,
    PREDICT_RESPONSE_SCHEMA,
    READY_SCHEMA,
    error_responses,
    ok_response,
    one_of_names,
    page_limit,
    query,
    query_parameters,
)
from distillkit.bias_explore import MAX_FALSE_POSITIVES, BiasExplorer
from distillkit.cli import UsageError, configure_logging, exit_on_usage_error, parse_args, parse_class_names
from distillkit.explore import DEFAULT_LIMIT, DISAGREEMENT_KINDS, MAX_LIMIT, Explorer
from distillkit.server_guard import (
    LOOPBACK_HOSTS,
    MIB,
    BodyGuard,
    GuardLimits,
    HostAllowList,
    InFlightLimit,
    SecurityHeaders,
    ServerLoad,
    normalise_host,
    server_options,
)
from distillkit.serving import ModelRegistry, RequestError, ServingLimits, parse_json_body, validate_predict_request

logger = logging.getLogger(__name__)

PREDICT_DESCRIPTION = """\
Body: `{"texts": ["..."], "models": ["teacher", "even"]}` (`models` optional: every served model).

Answer: `{"models": [...], "results": [{"text": ..., "predictions": [one per model]}], "timing": {model: {...}}}`.
Each prediction has `model`, `label`, `label_id`, `probability` (of that label), `probabilities` (every label's, by
name), `latency_ms` and `problem_type` (the model's `config.problem_type`), and says how the model decided:

- **single-label** (`single_label_classification`): `probabilities` are a softmax; `threshold` is a binary model's
  saved positive-class threshold (`config.decision_thresholds = [t]`: class 1 when its probability is >= t), or
  null when the label is the argmax.
- **multi-label** (`multi_label_classification`): `probabilities` are per-label sigmoids (they need not sum to 1);
  `labels` / `label_ids` are the labels whose probability is >= their threshold, in label order (empty: none passes);
  `thresholds` gives each label's (`config.decision_thresholds`, 0.5 where none was saved); `label`, `label_id` and
  `probability` are the most probable of `labels`, null when none passes.

`GET /api/models` lists the same `problem_type` and `threshold` / `thresholds` per model.
"""
PREDICT_BODY_SCHEMA = {
    "type": "object",
    "required": ["texts"],
    "additionalProperties": False,
    "properties": {
        "texts": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "models": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
}

STATIC_DIR = Path(__file__).resolve().parent / "distillkit" / "static"


@dataclass
class ServeArguments:
    experiment_dir: str | None = field(
        default=None, metadata={"help": "Serve every model in this experiment directory (teacher/, odd/, even/, ...)."}
    )
    model_dirs: list[str] = field(
        default_factory=list, metadata={"help": "Model or PEFT adapter directories to serve (with or instead of it)."}
    )
    report_dir: str | None = field(
        default=None,
        metadata={"help": "run_eval.py's --output_dir to explore (default: EXP/report of --experiment_dir, if any)."},
    )
    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind; the API has no authentication."})
    port: int = field(default=8000, metadata={"help": "Port to bind (0: any free port)."})
    max_text_chars: int = field(default=5000, metadata={"help": "Longer texts are refused with 413."})
    max_texts: int = field(default=256, metadata={"help": "Most texts in one request (more: 413)."})
    max_seq_length: int = field(default=128, metadata={"help": "Tokens each model sees; longer texts are truncated."})
    batch_size: int = field(
        default=32, metadata={"help": "Texts per forward pass; waiting requests for one model are merged up to it."}
    )
    max_pending_texts: int = field(
        default=4096, metadata={"help": "Texts waiting for the models before requests are refused with 503."}
    )
    max_queue_wait: float = field(
        default=5.0,
        metadata={"help": "Seconds a request waits for a model's turn before it is refused with 503 and Retry-After."},
    )
    max_concurrent_requests: int = field(
        default=200,
        metadata={"help": "Requests in flight before the server answers 503 with Retry-After at once."},
    )
    max_connections: int | None = field(
        default=None,
        metadata={"help": "Open connections before a new one is answered 503 with Retry-After (default: 4x "
                  "--max_concurrent_requests)."},
    )
    max_per_client: int | None = field(
        default=None,
        metadata={
            "help": "Connections open, and requests in flight, from one client address before its next one is "
            "answered 503 with Retry-After (default: half of --max_concurrent_requests). Behind a reverse proxy every "
            "connection comes from the proxy's address: raise it to --max_connections there."
        },
    )
    max_body_mib_in_flight: float = field(
        default=64.0,
        metadata={
            "help": "MiB of request bodies held at once (a declared Content-Length counts before its bytes arrive); "
            "past it a request is refused with 503 and Retry-After. At least one largest request."
        },
    )
    body_timeout: float = field(
        default=10.0, metadata={"help": "Seconds a request's whole body may take to arrive; then 408."}
    )
    header_timeout: float = field(
        default=5.0,
        metadata={
            "help": "Seconds a connection may take to send a request's headers (from opening, or from its last "
            "answer); then 408 and the connection closes. Idle connections close after it too."
        },
    )
    allowed_hosts: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Host header names served besides localhost, 127.0.0.1 and [::1] (and --host when it is one "
            "address); others get 400, which stops DNS rebinding. '*' serves any Host."
        },
    )
    class_names: list[str] | None = field(
        default=None,
        metadata={"help": "Class names (non-toxic,toxic or non-toxic toxic) for models saved with LABEL_0, LABEL_1."},
    )
    label_names: list[str] | None = field(default=None, metadata={"help": "Alias of --class_names."})
    num_threads: int | None = field(
        default=None, metadata={"help": "Threads per forward pass (default: torch's, one per core)."}
    )
    log_level: str = field(default="info", metadata={"help": "debug, info, warning or error."})

    def __post_init__(self):
        if not self.experiment_dir and not self.model_dirs:
            raise UsageError("nothing to serve: pass --experiment_dir EXP or --model_dirs DIR [DIR ...]")
        for name in (
            "max_text_chars",
            "max_texts",
            "max_seq_length",
            "batch_size",
            "max_pending_texts",
            "max_concurrent_requests",
        ):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} {getattr(self, name)}: must be at least 1")
        if not self.max_queue_wait > 0:
            raise UsageError(f"--max_queue_wait {self.max_queue_wait}: must be more than 0 seconds")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port {self.port}: must be 0..65535")
        if not self.max_body_mib_in_flight > 0:
            raise UsageError(f"--max_body_mib_in_flight {self.max_body_mib_in_flight}: must be more than 0")
        ServerLoad(self.guard, self.limits.max_body_bytes)  # the guard's checks fail here, before models load

    @property
    def limits(self) -> ServingLimits:
        return ServingLimits(
            max_text_chars=self.max_text_chars,
            max_texts=self.max_texts,
            max_seq_length=self.max_seq_length,
            batch_size=self.batch_size,
            max_pending_texts=self.max_pending_texts,
            max_queue_wait_s=self.max_queue_wait,
        )

    @property
    def guard(self) -> GuardLimits:
        allowed = [*LOOPBACK_HOSTS, *self.allowed_hosts]
        if normalise_host(self.host) not in ("0.0.0.0", "::", ""):  # the address it binds names it too
            allowed.append(self.host)
        return GuardLimits(
            max_concurrent_requests=self.max_concurrent_requests,
            max_body_bytes_in_flight=int(self.max_body_mib_in_flight * MIB),
            body_timeout_s=self.body_timeout,
            header_timeout_s=self.header_timeout,
            max_connections=self.max_connections,
            max_per_client=self.max_per_client,
            allowed_hosts=tuple(dict.fromkeys(allowed)),
        )


def error_response(status: int, message: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def require_json_content_type(request: Request) -> None:
    """415 unless the body is declared `application/json`.

    A cross-site page may POST text/plain or form data without asking (a CORS "simple" request); an
    application/json POST needs a preflight this server never grants, so browsers cannot run inference for
    another site.
    """
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        shown = media_type or "none"
        raise RequestError(415, f"Content-Type {shown}: send the body as application/json")


async def read_json_body(request: Request, limits: ServingLimits) -> object:
    """The decoded JSON body; 415 unless it is JSON, 413 past the size bound (read no further), 400 when it is not
    JSON or nests too deep. Size and depth are both checked before the parser sees a byte."""
    require_json_content_type(request)
    max_bytes = limits.max_body_bytes
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise RequestError(413, f"request body over {max_bytes} bytes: send fewer or shorter texts")
    # Scanning and decoding megabytes is CPU work: a worker thread does it, so the event loop keeps serving.
    return await run_in_threadpool(parse_json_body, bytes(body), limits.max_json_depth)


def int_query(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    if value is None:  # absent; an empty `?limit=` is no whole number (the schema says integer): 422 below
        return default
    try:
        return int(value)
    except ValueError:
        raise RequestError(422, f"{name}={value[:40]}: expected a whole number") from None


def create_app(
    registry: ModelRegistry, explorer: Explorer | None = None, guard: GuardLimits | None = None
) -> FastAPI:
    """The web app around a loaded registry: the page, the JSON API, and JSON errors for everything that goes wrong.

    `explorer` holds the evaluation output behind the read-only exploration endpoints (without one they answer 404).
    `guard` bounds what clients may hold (distillkit/server_guard.py); `app.state.load` counts it, for /healthz and
    for `server_guard.server_options`, which uvicorn needs to enforce the connection-level bounds.
    """
    if explorer is None:
        explorer = Explorer.missing("no evaluation output: start app.py with --experiment_dir EXP or --report_dir DIR")
    # No /docs or /redoc: FastAPI's pages load Swagger UI and ReDoc from a CDN, and nothing here may come from the
    # network. The schema itself stays at /openapi.json (plain JSON).
    app = FastAPI(title="distillkit: compare classifiers", docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    limits = registry.limits
    load = ServerLoad(guard or GuardLimits(), limits.max_body_bytes)
    app.state.load = load
    app.state.retry_after_s = limits.retry_after_s
    # Innermost first: a request meets SecurityHeaders, then the Host check, the in-flight cap, the body read.
    app.add_middleware(BodyGuard, load=load, retry_after=limits.retry_after_s)
    app.add_middleware(InFlightLimit, load=load, retry_after=limits.retry_after_s)
    app.add_middleware(HostAllowList, allowed_hosts=load.limits.allowed_hosts)
    app.add_middleware(SecurityHeaders)

    def retry_after(status: int, given: int | None) -> int | None:
        return limits.retry_after_s if given is None and status == 503 else given  # every 503 says when to retry

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, err: RequestError) -> JSONResponse:
        return error_response(err.status, err.message, retry_after(err.status, err.retry_after))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_response(err.status_code, str(err.detail), retry_after(err.status_code, None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, err: Exception) -> JSONResponse:
        logger.exception(f"{request.method} {request.url.path} failed")
        return error_response(500, f"internal error: {type(err).__name__}")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    def saturation() -> dict:
        report = load.report()
        report["texts_waiting"] = registry.worker.pending_texts
        report["max_pending_texts"] = limits.max_pending_texts
        report["saturated"] = report["saturated"] or report["texts_waiting"] >= limits.max_pending_texts
        return report

    @app.get("/healthz", responses={**ok_response(HEALTH_SCHEMA), **error_responses()})
    async def healthz() -> dict:
        """Alive (always 200) and how loaded: in-flight requests, bodies, connections and queued texts vs limits."""
        report = saturation()
        return {"status": "saturated" if report["saturated"] else "ok", "models": len(registry.names), **report}

    @app.get("/readyz", responses={**ok_response(READY_SCHEMA), **error_responses(schema=READY_SCHEMA)})
    async def readyz() -> JSONResponse:
        """200 while a new request can be taken; 503 with Retry-After while one of the limits is reached."""
        report = saturation()
        if report["saturated"]:
            return JSONResponse(
                {"status": "saturated", **report}, status_code=503, headers={"Retry-After": str(limits.retry_after_s)}
            )
        return JSONResponse({"status": "ready", **report})

    @app.get("/api/models", responses=error_responses())
    async def models() -> dict:
        return {
            "models": registry.describe(),
            "limits": {"max_text_chars": limits.max_text_chars, "max_texts": limits.max_texts},
        }

    @app.post(
        "/api/predict",
        summary="Classify texts with every (or the chosen) model",
        description=PREDICT_DESCRIPTION,
        responses={**ok_response(PREDICT_RESPONSE_SCHEMA), **error_responses(404, 415, 422, 500)},
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": PREDICT_BODY_SCHEMA}}}
        },
    )
    async def predict(request: Request) -> dict:
        payload = await read_json_body(request, limits)
        parsed = validate_predict_request(payload, limits, registry.names)
        return await registry.predict_async(parsed)

    @app.get("/api/evaluation", responses=error_responses(404))
    async def evaluation() -> dict:
        return explorer.overview()

    # The query parameters the explorer reads, as /openapi.json lists them (the handlers check them themselves).
    model_name = one_of_names(explorer.names)
    pages = (query("limit", page_limit(MAX_LIMIT)), query("offset", OFFSET))

    @app.get(
        "/api/distribution",
        responses=error_responses(404, 422),
        openapi_extra=query_parameters(query("model", model_name, required=True)),
    )
    async def distribution(request: Request) -> dict:
        return explorer.distribution(request.query_params.get("model"))

    @app.get(
        "/api/errors",
        responses=error_responses(404, 422),
        openapi_extra=query_parameters(query("model", model_name, required=True), *pages),
    )
    async def errors(request: Request) -> dict:
        return explorer.errors(
            request.query_params.get("model"),
            limit=int_query(request, "limit", DEFAULT_LIMIT),
            offset=int_query(request, "offset", 0),
        )

    @app.get(
        "/api/disagreements",
        responses=error_responses(404, 409, 422),
        openapi_extra=query_parameters(
            query("a", model_name, required=True),
            query("b", model_name, required=True),
            query("kind", {"type": "string", "enum": list(DISAGREEMENT_KINDS)}),
            *pages,
        ),
    )
    async def disagreements(request: Request) -> dict:
        params = request.query_params
        return explorer.disagreements(
            params.get("a"),
            params.get("b"),
            limit=int_query(request, "limit", DEFAULT_LIMIT),
            offset=int_query(request, "offset", 0),
            kind=params.get("kind", "all"),  # an empty ?kind= is none of the kinds: 422, as the schema says
        )

    bias = BiasExplorer.load(explorer.report_dir)

    @app.get(
        "/api/bias",
        responses=error_responses(404, 422),
        openapi_extra=query_parameters(query("model", {"type": "string"}, required=True)),
    )
    async def bias_identities(request: Request) -> dict:
        return bias.identities(request.query_params.get("model"))

    @app.get(
        "/api/bias/false_positives",
        responses=error_responses(404, 422),
        openapi_extra=query_parameters(
            query("model", {"type": "string"}, required=True),
            query("identity", {"type": "string"}, required=True),
            query("limit", page_limit(MAX_FALSE_POSITIVES)),
        ),
    )
    async def bias_false_positives(request: Request) -> dict:
        params = request.query_params
        return bias.false_positives(
            params.get("model"), params.get("identity"), limit=int_query(request, "limit", DEFAULT_LIMIT)
        )

    return app


def check_port_free(host: str, port: int) -> None:
    """Fail before loading models, with the flag that fixes it, when the address is taken."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise UsageError(
                f"--host {host} --port {port}: cannot bind ({err.strerror}); choose another --port"
            ) from err


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    (args,) = parse_args((ServeArguments,), argv)
    configure_logging(args.log_level, stream="stderr")
    check_port_free(args.host, args.port)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if normalise_host(args.host) not in LOOPBACK_HOSTS:
        logger.warning(f"--host {args.host}: the API has no authentication; anyone who can reach it can use it")
    if "*" in args.allowed_hosts:
        logger.warning("--allowed_hosts '*': any Host is served, so a DNS-rebinding web page can call the API")
    class_names = parse_class_names(args.class_names, alias=args.label_names)
    explorer = Explorer.load(args.report_dir, args.experiment_dir)  # before the models: a bad --report_dir fails fast
    if not explorer.available:
        logger.warning(f"exploration endpoints off: {explorer.missing_reason}")
    registry = ModelRegistry.from_dirs(
        args.model_dirs, args.limits, experiment_dir=args.experiment_dir, label_names=class_names
    )
    for info in registry.describe():
        logger.info(f"serving {info['name']}: {info['method']}, layers {info['layers']}, {info['params']:,} params")
    app = create_app(registry, explorer, args.guard)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        log_config=None,  # uvicorn's records propagate to the handler configure_logging set up (one set-up per entry)
        **server_options(app.state.load, app.state.retry_after_s),
    )


if __name__ == "__main__":
    main()
