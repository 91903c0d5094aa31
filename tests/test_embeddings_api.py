"""POST /v1/embeddings through the openai SDK: the local all-MiniLM-L6-v2 (float and base64, which the SDK decodes),
the model list, usage records and token limits like chat, bad inputs in OpenAI's shape, and an embeddings route to an
OpenAI-compatible upstream instead of the local model."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from chains.embeddings import EmbeddingRoute
from chains.model_routes import ModelRoute
from storage import tables
from tests.conftest import ADMIN_KEY, clear_of_window_edge
from tests.mock_upstream import serve_in_thread
from tests.test_errors import assert_error

LOCAL = "all-MiniLM-L6-v2"


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_local_embeddings_float_and_base64(kb_server):
    client = kb_server.openai()
    texts = ["How do I reset my password?", "I forgot my password, how can I change it?", "The tide comes in at noon."]
    # The SDK asks for base64 by default and decodes it.
    decoded = client.embeddings.create(model=LOCAL, input=texts)
    floats = client.embeddings.create(model=LOCAL, input=texts, encoding_format="float")
    assert decoded.object == floats.object == "list" and decoded.model == floats.model == LOCAL
    assert [e.index for e in floats.data] == [0, 1, 2] and floats.data[0].object == "embedding"
    for raw, plain in zip(decoded.data, floats.data):
        assert len(plain.embedding) == 384
        assert max(abs(x - y) for x, y in zip(raw.embedding, plain.embedding)) < 1e-6
        assert abs(math.sqrt(sum(x * x for x in plain.embedding)) - 1) < 1e-4  # normalised
    vectors = [e.embedding for e in floats.data]
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 3 * 3
    single = client.embeddings.create(model=LOCAL, input="How do I reset my password?", encoding_format="float")
    assert len(single.data) == 1 and max(abs(x - y) for x, y in zip(single.data[0].embedding, vectors[0])) < 1e-5
    assert len(client.embeddings.create(model=LOCAL, input="x", dimensions=384).data[0].embedding) == 384

    # base64 on the wire is OpenAI's: little-endian float32.
    with kb_server.http() as http:
        body = http.post("/v1/embeddings", json={"model": LOCAL, "input": "hello", "encoding_format": "base64"}).json()
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert len(raw) == 384 * 4 and struct.unpack("<384f", raw)[0] == pytest.approx(
        client.embeddings.create(model=LOCAL, input="hello", encoding_format="float").data[0].embedding[0], abs=1e-6
    )

    # One usage record per request, under the embedding model's name, with the key and the user.
    client.embeddings.create(model=LOCAL, input="recorded", user="end-user-7")
    usage = [row for row in kb_server.rows(tables.Usage.__table__) if row["model"] == LOCAL]
    assert len(usage) == 7 and all(row["status"] == "ok" and row["completion_tokens"] == 0 for row in usage)
    assert usage[-1]["user"] == "end-user-7" and usage[-1]["prompt_tokens"] > 0
    assert usage[-1]["key_prefix"] == kb_server.key[:12] and usage[-1]["response_id"].startswith("emb-")
    with kb_server.http() as http:
        report = http.get("/v1/usage", params={"group_by": "model"}).json()["data"]
    assert {group["group"] for group in report} == {LOCAL}


def test_the_model_list_names_the_embedding_model(kb_server):
    client = kb_server.openai()
    models = {model.id: model for model in client.models.list().data}
    assert set(models) == {"mock", LOCAL}
    embedding = models[LOCAL]
    assert embedding.model_extra["type"] == "embedding"
    assert embedding.model_extra["dimensions"] == 384 and embedding.model_extra["max_input_tokens"] == 256
    chat = models["mock"].model_extra  # the chat routes' entries are as they were
    assert "type" not in chat and {"provider", "context_window", "max_output_tokens", "features"} <= set(chat)
    assert client.models.retrieve(LOCAL).model_extra["type"] == "embedding"


def test_allowed_models_cover_the_embedding_model(kb_server):
    """An app limited to some models sees and uses the embedding model only when the list names it."""
    with kb_server.http(key=ADMIN_KEY) as admin:
        assert admin.post("/admin/apps", json={"name": "chat-only", "allowed_models": ["mock"]}).status_code == 200
        both = {"name": "with-embeddings", "allowed_models": ["mock", LOCAL]}
        assert admin.post("/admin/apps", json=both).status_code == 200
        assert_error(admin.post("/admin/apps", json={"name": "x", "allowed_models": ["nope"]}), 400)
    chat_only = kb_server.openai(key=kb_server.create_key("chat-only"))
    assert [m.id for m in chat_only.models.list().data] == ["mock"]
    with kb_server.http(key=kb_server.create_key("chat-only")) as http:
        assert_error(http.get(f"/v1/models/{LOCAL}"), 404, code="model_not_found")
        assert_error(http.post("/v1/embeddings", json={"model": LOCAL, "input": "x"}), 404, code="model_not_found")
    allowed = kb_server.openai(key=kb_server.create_key("with-embeddings"))
    assert [m.id for m in allowed.models.list().data] == ["mock", LOCAL]
    assert allowed.embeddings.create(model=LOCAL, input="x").data


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"model": LOCAL, "input": ""}, 400, "input", None),
        ({"model": LOCAL, "input": "   "}, 400, "input", None),
        ({"model": LOCAL, "input": []}, 400, "input", None),
        ({"model": LOCAL, "input": ["fine", ""]}, 400, "input", None),
        ({"model": LOCAL, "input": ["x"] * 2049}, 400, "input", None),
        ({"model": LOCAL, "input": [101, 2023, 102]}, 400, "input", "unsupported_value"),
        ({"model": LOCAL, "input": [[101, 2023, 102]]}, 400, "input", "unsupported_value"),
        ({"model": LOCAL, "input": " ".join(["word"] * 300)}, 400, "input", "context_length_exceeded"),
        ({"model": LOCAL, "input": 42}, 400, "input", None),
        ({"model": LOCAL, "input": ["a", 1]}, 400, "input", None),
        ({"model": LOCAL, "input": None}, 400, "input", None),
        ({"input": "hello"}, 400, "model", "missing_required_parameter"),
        ({"model": "text-embedding-3-small", "input": "hello"}, 404, "model", "model_not_found"),
        ({"model": "mock", "input": "hello"}, 404, "model", "model_not_found"),  # a chat route
        ({"model": LOCAL, "input": "hello", "dimensions": 128}, 400, "dimensions", "unsupported_value"),
        ({"model": LOCAL, "input": "hello", "dimensions": 0}, 400, "dimensions", None),
        ({"model": LOCAL, "input": "hello", "encoding_format": "hex"}, 400, "encoding_format", None),
        ({"model": LOCAL, "input": "hello", "user": 5}, 400, "user", None),
        ({"model": LOCAL, "input": "hello", "temperature": 1}, 400, "temperature", None),
    ],
)
def test_bad_requests(kb_server, body, status, param, code):
    with kb_server.http() as http:
        assert_error(http.post("/v1/embeddings", json=body), status, param=param, code=code)


def test_keys_and_token_limits_apply(kb_server):
    with kb_server.http(key=ADMIN_KEY) as admin:
        assert_error(admin.post("/v1/embeddings", json={"model": LOCAL, "input": "x"}), 403)
    with kb_server.http(key="") as anonymous:
        assert_error(anonymous.post("/v1/embeddings", json={"model": LOCAL, "input": "x"}), 401)
    clear_of_window_edge(10)
    with kb_server.http(key=kb_server.create_key("tokens", tpm=20)) as limited:
        first = limited.post("/v1/embeddings", json={"model": LOCAL, "input": "one two three " * 10})
        assert first.status_code == 200 and first.json()["usage"]["prompt_tokens"] > 20
        assert first.headers["x-ratelimit-limit-tokens"] == "20"
        # The tokens read were charged after the call: the next request finds none left.
        assert_error(
            limited.post("/v1/embeddings", json={"model": LOCAL, "input": "x"}), 429, code="rate_limit_exceeded"
        )


# ---------------------------------------------------------------- an embeddings route instead of the local model


async def _upstream_embeddings(request: Request) -> JSONResponse:
    body = await request.json()
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    if any("refuse" in text for text in texts):
        error = {
            "message": "This input is not allowed.",
            "type": "invalid_request_error",
            "param": "input",
            "code": None,
        }
        return JSONResponse({"error": error}, status_code=400)
    size = body.get("dimensions") or 4
    data = [
        {"object": "embedding", "index": i, "embedding": [float(len(text))] + [0.5] * (size - 1)}
        for i, text in enumerate(texts)
    ]
    tokens = sum(len(text.split()) for text in texts)
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


@pytest.fixture
def embedding_upstream() -> Iterator[str]:
    app = Starlette(routes=[Route("/v1/embeddings", _upstream_embeddings, methods=["POST"])])
    with serve_in_thread(app) as base_url:
        yield base_url


def test_an_embeddings_route_replaces_the_local_model(live_server, mock_upstream, embedding_upstream):
    route = EmbeddingRoute(name="remote-embed", base_url=embedding_upstream, model="upstream-model", input_price=2.0)
    server = live_server(
        model_routes=[ModelRoute(name="mock", base_url=mock_upstream, max_retries=0)], embedding_route=route
    )
    client = server.openai()
    answer = client.embeddings.create(model="remote-embed", input=["one two", "three"], encoding_format="float")
    assert answer.model == "remote-embed" and answer.usage.prompt_tokens == 3
    assert [e.embedding[0] for e in answer.data] == [7.0, 5.0] and len(answer.data[0].embedding) == 4
    # dimensions go to the upstream; base64 is made here from its floats.
    shorter = client.embeddings.create(model="remote-embed", input="abc", dimensions=2)
    assert shorter.data[0].embedding == [3.0, 0.5]
    assert {m.id for m in client.models.list().data} == {"mock", "remote-embed"}
    with server.http() as http:
        assert_error(http.post("/v1/embeddings", json={"model": LOCAL, "input": "x"}), 404, code="model_not_found")
        error = assert_error(
            http.post("/v1/embeddings", json={"model": "remote-embed", "input": "please refuse"}), 400, param="input"
        )
        assert "not allowed" in error["message"]
    usage = [row for row in server.rows(tables.Usage.__table__) if row["model"] == "remote-embed"]
    assert [row["status"] for row in usage] == ["ok", "ok", "http_400"]  # failures are recorded too
    assert usage[0]["cost"] == pytest.approx(3 * 2.0 / 1_000_000)


def test_an_unreachable_embeddings_route_is_503(live_server, mock_upstream):
    from chains.local_model_process import free_port

    route = EmbeddingRoute(name="gone", base_url=f"http://127.0.0.1:{free_port()}/v1", timeout=5)
    server = live_server(
        model_routes=[ModelRoute(name="mock", base_url=mock_upstream, max_retries=0)], embedding_route=route
    )
    with server.http() as http:
        assert_error(http.post("/v1/embeddings", json={"model": "gone", "input": "x"}), 503, code="service_unavailable")
