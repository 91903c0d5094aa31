"""Fuzzing the OpenAPI schema with schemathesis: no 5xx, responses match the schema, every 4xx in OpenAI's shape.

The live app talks to a fast mock OpenAI-compatible upstream (a fixed reply, plain and streaming) instead of
the real model, so hundreds of generated requests run in seconds. App routes are called with the tests
app's key, /admin routes with the admin key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from chains.model_routes import ModelRoute
from server.settings import Settings
from tests.conftest import ADMIN_KEY, LiveServer
from tests.image_server import image_route, serve_image_server
from tests.mock_upstream import REPLY

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 15  # per operation and phase; the whole file stays well under a minute


# ---------------------------------------------------------------- the app under test


@pytest.fixture(scope="module")
def image_upstream() -> Iterator[str]:
    with serve_image_server() as base_url:
        yield base_url


@pytest.fixture(scope="module")
def fuzzed_server(mock_upstream, image_upstream, tmp_path_factory) -> Iterator[LiveServer]:
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path_factory.mktemp("fuzz") / "data",
        model_routes=[
            ModelRoute(name="mock", base_url=mock_upstream, max_retries=0, timeout=10),
            image_route("images", image_upstream),  # real PNGs: POST /v1/images/generations answers 200, not 503
        ],
        admin_key=ADMIN_KEY,
    )
    server = LiveServer(settings).start()
    yield server
    server.stop()


def _schema() -> schemathesis.BaseSchema:
    """The app's OpenAPI document, built at import without serving: routes do not depend on settings, and
    schemathesis' lazy ``from_fixture`` loader does not work under pytest 9.2 (it reads ``Function._nodeid``)."""
    from server.app import create_app

    settings = Settings(_env_file=None, model_routes=[ModelRoute(name="mock", base_url="http://127.0.0.1:9/v1")])
    spec = create_app(settings).openapi()
    loaded = schemathesis.openapi.from_dict(spec)
    loaded.config.update(request_timeout=30)
    loaded.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True, database="none")
    return loaded


schema = _schema()


@schemathesis.check
def openai_error_shape(ctx, response, case) -> bool | None:
    """Every 4xx carries ``{"error": {"message", "type", "param", "code"}}`` with a non-empty message."""
    if not 400 <= response.status_code < 500:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} with a body that is not JSON: {response.content[:200]!r}")
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"{response.status_code} without an error object: {body!r}"
    assert set(error) == {"message", "type", "param", "code"}, f"unexpected error fields: {error!r}"
    assert isinstance(error["message"], str) and error["message"], f"empty error message: {error!r}"
    assert isinstance(error["type"], str) and error["type"], f"no error type: {error!r}"
    return True


CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, openai_error_shape]


def _auth(case, server: LiveServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY if case.path.startswith('/admin') else server.key}"}


def call_and_validate(case, server: LiveServer):
    return case.call_and_validate(base_url=server.url, headers=_auth(case, server), checks=CHECKS)


# LangServe's run routes: POST /chat/{invoke,batch,stream,stream_log,stream_events} and their /chat/c/{hash}/ twins.
LANGSERVE_RUNS = r"^/chat/(c/\{config_hash\}/)?(invoke|batch|stream|stream_log|stream_events)$"


# Every other route: the platform's own (/healthz, /readyz, /v1/*, /admin/*) and LangServe's schema routes.
@schema.exclude(path_regex=LANGSERVE_RUNS).parametrize()
def test_openapi_fuzz(case, fuzzed_server):
    call_and_validate(case, fuzzed_server)


# The same checks on LangServe's run routes. They once found 500s here (bodies that are not JSON or not
# UTF-8, `config: null`, `inputs: null`, message types the graph cannot take, errors raised mid-stream);
# server/routes/langserve.py now refuses those before LangServe starts a response.
@schema.include(path_regex=LANGSERVE_RUNS).parametrize()
def test_openapi_fuzz_langserve(case, fuzzed_server):
    call_and_validate(case, fuzzed_server)


HUMAN = {"type": "human", "content": "Hello"}
USER = {"role": "user", "content": "Hello"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/chat/completions", {"messages": [USER]}),
        pytest.param(
            "POST", "/v1/chat/completions",
            {"messages": [USER], "stream": True, "stream_options": {"include_usage": True}},
            id="POST /v1/chat/completions stream",
        ),
        ("POST", "/v1/conversations", {"title": "fuzz"}),
        ("GET", "/v1/models/mock", None),
        ("POST", "/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": ["Hello", "World"]}),
        ("POST", "/v1/vector_stores", {"name": "fuzz", "metadata": {"kind": "test"}}),
        ("POST", "/v1/images/generations", {"prompt": "A red square", "n": 2, "response_format": "b64_json"}),
        ("POST", "/chat/invoke", {"input": {"messages": [HUMAN]}}),
        ("POST", "/chat/batch", {"inputs": [{"messages": [HUMAN]}]}),
        pytest.param(
            "POST", "/chat/stream", {"input": {"messages": [HUMAN]}}, id="POST /chat/stream"
        ),
    ],
)
def test_valid_requests_conform(fuzzed_server, method, path, body):
    """Valid requests the fuzzer rarely builds: answered by the mock upstream, checked the same way."""
    operation = schema[path if "/models/" not in path else "/v1/models/{model_id}"][method]
    kwargs = {"path_parameters": {"model_id": "mock"}} if "/models/" in path else {}
    if body is not None:
        kwargs["body"] = body
    case = operation.Case(**kwargs)
    response = case.call(base_url=fuzzed_server.url, headers=_auth(case, fuzzed_server))
    assert response.status_code == 200, response.content
    if "stream" in path or (body or {}).get("stream"):
        assert response.headers["content-type"][0].startswith("text/event-stream")
        assert b"Mock " in response.content and b"reply." in response.content
    elif path == "/v1/chat/completions":
        assert json.loads(response.content)["choices"][0]["message"]["content"] == REPLY
    case.validate_response(response, checks=CHECKS)
