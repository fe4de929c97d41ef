"""Issue 27, deliver 9: the field's fuzzers on the web app. Hypothesis on the JSON body parser (`serving.json_depth`,
`serving.parse_json_body`), schemathesis on the app's own OpenAPI schema, in-process over a tiny evaluated
experiment. Bounded (`max_examples`, no example database) so the file runs in well under a minute.
"""

from __future__ import annotations

import json
import string
from unittest import mock

import pytest
import schemathesis
from conftest import LOCAL_URL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

import app as app_module
from distillkit import serving
from distillkit.explore import Explorer
from distillkit.serving import ModelRegistry, RequestError, ServingLimits, json_depth, parse_json_body
from test_explore import make_evaluated_experiment

FUZZ = settings(max_examples=200, deadline=None, database=None)

# Characters that steer the scanner: quotes, escapes, brackets of both kinds, and text around them.
TRICKY = '"\\[]{}:,' + "ab \n\t\u00e9\u2028\U0001f600"
tricky_text = st.text(alphabet=st.sampled_from(TRICKY) | st.characters(codec="utf-8"), max_size=40)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | tricky_text
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky_text, inner, max_size=4),
    max_leaves=40,
)
# Strings made mostly of what the scan must get right across a chunk boundary: runs of backslashes before quotes.
escape_text = st.text(alphabet=st.sampled_from('\\\\\\"[]{}a'), max_size=12)
escape_heavy = st.recursive(
    escape_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(escape_text, inner, max_size=3),
    max_leaves=12,
)


def nesting(value) -> int:
    """How deep arrays and objects nest in a decoded JSON value: `[]` is 1, a scalar 0."""
    if isinstance(value, list):
        return 1 + max(map(nesting, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(nesting, value.values()), default=0)
    return 0


def encodings(value) -> list[bytes]:
    """The same document as a client might send it: compact, indented, with raw UTF-8 or \\u escapes."""
    return [
        json.dumps(value).encode(),
        json.dumps(value, ensure_ascii=False).encode("utf-8"),
        json.dumps(value, indent=2, separators=(" , ", " : ")).encode(),
    ]


@FUZZ
@given(json_values)
def test_json_depth_agrees_with_json_loads_on_valid_json(value):
    for body in encodings(value):
        assert json_depth(body) == nesting(json.loads(body))


@FUZZ
@given(escape_heavy | json_values)
def test_json_depth_does_not_depend_on_where_the_scan_cuts_the_body(value):
    """The scan runs in chunks and carries `in a string` and `odd backslashes` across them: with chunks of 1 to 9
    bytes every quote, escape and bracket sits on a boundary somewhere, and the depth must not change."""
    body = json.dumps(value, ensure_ascii=False).encode("utf-8")
    for chunk in range(1, 10):
        with mock.patch.object(serving, "_SCAN_CHUNK", chunk):
            assert json_depth(body) == nesting(value), chunk


@FUZZ
@given(json_values, st.integers(min_value=0, max_value=6))
def test_parse_json_body_returns_the_document_or_refuses_what_nests_too_deep(value, max_depth):
    body = json.dumps(value).encode()
    depth = nesting(value)
    if depth <= max_depth:
        assert parse_json_body(body, max_depth) == value
    else:
        with pytest.raises(RequestError) as refused:
            parse_json_body(body, max_depth)
        assert refused.value.status == 400 and f"nests {depth} levels deep" in refused.value.message


def assert_400_or_parsed(body: bytes, max_depth: int = 8) -> None:
    """Anything at all: a decoded value or the documented 400, never another exception."""
    try:
        parse_json_body(body, max_depth)
    except RequestError as err:
        assert err.status == 400, err.message
    assert json_depth(body) >= 0


@FUZZ
@given(st.binary(max_size=400))
def test_any_bytes_are_parsed_or_refused_with_400(body):
    assert_400_or_parsed(body)


@FUZZ
@given(st.text(alphabet=st.sampled_from(TRICKY + string.digits + "tfnul.-eE"), max_size=400))
def test_json_like_text_is_parsed_or_refused_with_400(text):
    assert_400_or_parsed(text.encode("utf-8"))


@FUZZ
@given(
    st.sampled_from([b'{"texts": ["', b'["', b'"', b'{"texts": [' * 3 + b'"']),
    # Whatever a string may hold, but no bare quote: the string opened by the prefix never ends.
    st.lists(st.sampled_from([b'\\"', b"\\\\", b"\\u00e9", b"[", b"{", b"]", b"}", b"a"]), min_size=1, max_size=300),
    st.integers(min_value=1, max_value=4000),
    st.booleans(),
)
def test_unterminated_strings_of_escapes_and_brackets_are_refused_with_400(prefix, pieces, repeat, lone_backslash):
    """The shape that froze the server (issue 27): an unterminated string of `\\"` pairs, here mixed with escaped
    backslashes and brackets, some tens of KB of it. Never parsed, never another error."""
    body = prefix + b"".join(pieces) * max(1, repeat // len(pieces)) + (b"\\" if lone_backslash else b"")
    with pytest.raises(RequestError) as refused:
        parse_json_body(body, 8)
    assert refused.value.status == 400
    assert json_depth(body) == prefix.count(b"[") + prefix.count(b"{")  # brackets inside the string are text


# --- schemathesis against /openapi.json ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory):
    """The app over a tiny 3-class experiment with run_eval.py's output, so the explorer endpoints answer too."""
    exp = make_evaluated_experiment(tmp_path_factory.mktemp("fuzz"))
    registry = ModelRegistry.from_dirs([], ServingLimits(), experiment_dir=str(exp))
    yield app_module.create_app(registry, Explorer.load(experiment_dir=str(exp)))
    registry.close()


@pytest.fixture(scope="module")
def app_schema(fuzzed_app):
    # Fetched as a browser on this machine would: Host localhost (schemathesis's default "testserver" gets a 400).
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app, headers={"Host": "localhost"})


# Every operation /openapi.json lists (test_the_schema_documents_every_operation_and_its_errors checks this is all),
# and whether it takes input that a request can break (schemathesis has no negative case for the others).
OPERATIONS = [
    ("GET", "/healthz", False),
    ("GET", "/readyz", False),
    ("GET", "/api/models", False),
    ("POST", "/api/predict", True),
    ("GET", "/api/evaluation", False),
    ("GET", "/api/distribution", True),
    ("GET", "/api/errors", True),
    ("GET", "/api/disagreements", True),
    ("GET", "/api/bias", True),
    ("GET", "/api/bias/false_positives", True),
]
CASES = [(m, p, GenerationMode.POSITIVE) for m, p, _ in OPERATIONS]
CASES += [(m, p, GenerationMode.NEGATIVE) for m, p, takes_input in OPERATIONS if takes_input]


# schemathesis's own pytest integration (`from_fixture` + `parametrize`) fails on pytest 9 (it sets
# `Function._nodeid`), so each operation's strategy drives Hypothesis directly; the checks are schemathesis's.
@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_every_answer_matches_the_openapi_schema_and_none_is_a_5xx(app_schema, method, path, mode):
    """Generated requests for one operation, fitting the schema (positive) or breaking it (negative): schemathesis's
    checks hold on every answer (no 5xx, a documented status code and content type, a body and headers that
    match the schema, schema-valid requests accepted and schema-breaking ones refused)."""
    operation = app_schema[path][method]

    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(operation.as_strategy(generation_mode=mode))
    def fuzz(case):
        case.call_and_validate(base_url=LOCAL_URL)

    fuzz()


def test_the_schema_documents_every_operation_and_its_errors(fuzzed_app):
    """The fuzz test covers what the schema lists: every API route is in it, and each says how it fails."""
    paths = fuzzed_app.openapi()["paths"]
    routes = {r.path for r in fuzzed_app.routes if getattr(r, "include_in_schema", False) and r.path != "/"}
    assert routes <= set(paths), routes - set(paths)
    listed = {(method.upper(), path) for path, operations in paths.items() for method in operations}
    assert listed == {(method, path) for method, path, _ in OPERATIONS}
    for path, operations in paths.items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert {"200", "400", "503"} <= set(responses), (method, path)
            assert responses["503"]["headers"]["Retry-After"]["required"], (method, path)
