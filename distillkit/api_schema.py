"""What the web app's OpenAPI schema (/openapi.json) says it answers, beyond what FastAPI infers.

The app reads its bodies and query strings by hand (its own errors, JSON only), so FastAPI sees no parameters and
documents only a 200. These pieces name the rest: the one JSON error body every failure sends, the status codes each
endpoint and the guards in front of it (distillkit/server_guard.py) can answer, the query parameters the read-only
endpoints read, and the shapes of `/api/predict`'s and `/healthz`'s answers. tests/test_fuzz.py has schemathesis
hold the app to this schema.
"""

from __future__ import annotations

from typing import Any

# Every error the app or its guards send: `{"error": "...", "status": N}` (app.error_response,
# server_guard.json_error_body).
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "status"],
    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
}

ERROR_MEANINGS = {
    400: "Not JSON, nested too deep, a bad Content-Length, or a Host outside the allow-list",
    404: "An unknown model or identity, or no evaluation output to explore",
    405: "Method not allowed",
    408: "The request body did not arrive within the body timeout",
    409: "Two models name their classes differently or were scored on different texts",
    413: "The body, or its texts, are over the size limits",
    415: "The body is not declared application/json",
    422: "A well-formed request with a bad value (an empty text list, a limit that is not a whole number, ...)",
    500: "A model gave non-finite outputs for this request: no prediction (the server keeps serving)",
    503: "Busy: a limit on requests, bodies or queued texts is reached; retry after Retry-After seconds",
}

RETRY_AFTER_HEADER = {"required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}}

# Any request can meet the guards: the Host check (400), the in-flight and body caps (503, 413) and the body
# timeout (408); any path answers a method it does not serve with 405.
GUARD_STATUSES = (400, 405, 408, 413, 503)


def error_responses(*statuses: int, schema: dict[str, Any] | None = None) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=`: each status (and the guards') with the JSON error body; a 503 carries Retry-After."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted(set(statuses) | set(GUARD_STATUSES)):
        response: dict[str, Any] = {
            "description": ERROR_MEANINGS[status],
            "content": {"application/json": {"schema": ERROR_SCHEMA}},
        }
        if status == 503:
            response["headers"] = {"Retry-After": RETRY_AFTER_HEADER}
            if schema is not None:  # /readyz's own 503 is its saturation report, the guards' is an error
                response["content"] = {"application/json": {"schema": {"anyOf": [ERROR_SCHEMA, schema]}}}
        out[status] = response
    return out


def ok_response(schema: dict[str, Any], description: str = "Successful Response") -> dict[int, dict[str, Any]]:
    return {200: {"description": description, "content": {"application/json": {"schema": schema}}}}


def query(name: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    """One query parameter a handler reads itself (FastAPI sees none of them)."""
    return {"name": name, "in": "query", "required": required, "schema": schema}


def query_parameters(*params: dict[str, Any]) -> dict[str, Any]:
    """FastAPI `openapi_extra=` listing the query parameters of `query(...)`."""
    return {"parameters": list(params)}


def one_of_names(names: list[str]) -> dict[str, Any]:
    """A model name: one of those served when they are known, else any string (then 404 or 422)."""
    return {"type": "string", "enum": list(names)} if names else {"type": "string"}


def page_limit(maximum: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "maximum": maximum}


OFFSET = {"type": "integer", "minimum": 0}

_COUNT = {"type": "integer", "minimum": 0}
_PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}
_NAMED_NUMBERS = {"type": "object", "additionalProperties": {"type": "number"}}

# serving.ServedModel.predictions: one per model per text.
PREDICTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "label", "label_id", "probability", "probabilities", "problem_type", "latency_ms"],
    "properties": {
        "model": {"type": "string"},
        "label": {"type": ["string", "null"]},  # null: a multi-label model for which no label passes
        "label_id": {"type": ["integer", "null"], "minimum": 0},
        "probability": {"anyOf": [_PROBABILITY, {"type": "null"}]},
        "probabilities": {"type": "object", "additionalProperties": _PROBABILITY},
        "problem_type": {"enum": ["single_label_classification", "multi_label_classification"]},
        "threshold": {"anyOf": [_PROBABILITY, {"type": "null"}]},
        "thresholds": {"type": "object", "additionalProperties": _PROBABILITY},
        "logit_offsets": _NAMED_NUMBERS,
        "labels": {"type": "array", "items": {"type": "string"}},
        "label_ids": {"type": "array", "items": _COUNT},
        "latency_ms": {"type": "number", "minimum": 0},
    },
}

# serving.ModelRegistry.answer
PREDICT_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["models", "results", "timing"],
    "additionalProperties": False,
    "properties": {
        "models": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "results": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["text", "predictions"],
                "additionalProperties": False,
                "properties": {
                    "text": {"type": "string"},
                    "predictions": {"type": "array", "items": PREDICTION_SCHEMA, "minItems": 1},
                },
            },
        },
        "timing": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["forward_ms", "queue_ms", "texts", "batch_texts"],
                "properties": {
                    "forward_ms": {"type": "number", "minimum": 0},
                    "queue_ms": {"type": "number", "minimum": 0},
                    "texts": {"type": "integer", "minimum": 1},
                    "batch_texts": {"type": "number", "minimum": 1},
                },
            },
        },
    },
}

# app.create_app's saturation(): server_guard.ServerLoad.report plus the inference queue.
_SATURATION_PROPERTIES: dict[str, Any] = {
    "saturated": {"type": "boolean"},
    "requests_in_flight": _COUNT,
    "max_concurrent_requests": _COUNT,
    "body_bytes_in_flight": _COUNT,
    "max_body_bytes_in_flight": _COUNT,
    "connections": _COUNT,
    "max_connections": _COUNT,
    "max_per_client": _COUNT,
    "busiest_client_connections": _COUNT,
    "shed": {"type": "object", "additionalProperties": _COUNT},
    "texts_waiting": _COUNT,
    "max_pending_texts": _COUNT,
}
_SATURATION_REQUIRED = ["saturated", "requests_in_flight", "max_concurrent_requests", "texts_waiting", "shed"]

HEALTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status", "models", *_SATURATION_REQUIRED],
    "properties": {"status": {"enum": ["ok", "saturated"]}, "models": _COUNT, **_SATURATION_PROPERTIES},
}

READY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status", *_SATURATION_REQUIRED],
    "properties": {"status": {"enum": ["ready", "saturated"]}, **_SATURATION_PROPERTIES},
}
