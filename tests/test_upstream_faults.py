"""An upstream that misbehaves, behind a live server: a body that is not JSON, a stream that breaks off with one,
an error event mid-stream, 429 with a Retry-After the platform waits out (short) or passes on (long), a timeout
whose message gives the real wait. Each gets its mapped error and a usage record, and the client's keep-alive
connection stays usable."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from chains.model_routes import ModelRoute
from storage.tables import Usage
from tests.mock_upstream import serve_in_thread
from tests.test_errors import assert_error

ATTEMPTS: dict[str, int] = {}


def _chunk(content: str) -> str:
    body = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}  # fmt: skip
    return f"data: {json.dumps(body)}\n\n"


async def _faulty(request: Request):
    body = await request.json()
    model = body["model"]
    ATTEMPTS[model] = ATTEMPTS.get(model, 0) + 1
    if model == "html":
        return PlainTextResponse("<html>502 Bad Gateway</html>", media_type="text/html")
    if model == "list":
        return JSONResponse([1, 2, 3])
    if model == "busy-long":
        return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"retry-after": "30"})
    if model == "busy-short" and ATTEMPTS[model] % 2 == 1:
        return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"retry-after": "0"})
    if model == "broken-stream":
        return StreamingResponse(iter([_chunk("Half "), "data: {not json\n\n"]), media_type="text/event-stream")
    if model == "error-event":
        error = json.dumps({"error": {"message": "the model crashed", "type": "server_error"}})
        return StreamingResponse(iter([_chunk("Half "), f"data: {error}\n\n"]), media_type="text/event-stream")
    answer = {"id": "c", "object": "chat.completion", "created": 0, "model": model,
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Fine."}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}  # fmt: skip
    return JSONResponse(answer)


@pytest.fixture(scope="module")
def faulty() -> Iterator[str]:
    app = Starlette(routes=[Route("/v1/chat/completions", _faulty, methods=["POST"])])
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture
def platform(live_server, faulty):
    names = ["html", "list", "busy-long", "busy-short", "broken-stream", "error-event"]
    return live_server(
        model_routes=[ModelRoute(name=name, base_url=faulty, max_retries=1, timeout=10) for name in names]
    )


def ask(http: httpx.Client, model: str, **extra) -> httpx.Response:
    return http.post(
        "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    )


def test_a_body_that_is_not_json_is_a_502_with_a_usage_record(platform):
    with platform.http() as http:
        for model in ("html", "list"):
            error = assert_error(ask(http, model), 502, code="upstream_error")
            assert "not a JSON object" in error["message"] and model in error["message"]
        assert ask(http, "busy-short").status_code == 200  # the same keep-alive connection, still usable
    statuses = [row["status"] for row in platform.rows(Usage.__table__)]
    assert statuses.count("upstream_error") == 2


def test_a_stream_that_breaks_off_ends_with_an_error_event(platform):
    with platform.http() as http:
        for model in ("broken-stream", "error-event"):
            with http.stream("POST", "/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True,
            }) as response:  # fmt: skip
                assert response.status_code == 200
                events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
            contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1] if "choices" in e]
            assert "Half " in contents
            assert events[-1] == "[DONE]"  # the error event, then the stream's end
            error = json.loads(events[-2])["error"]
            assert error["code"] == "upstream_error" and model in error["message"]
        assert ask(http, "busy-short").status_code == 200
    statuses = [row["status"] for row in platform.rows(Usage.__table__)]
    assert statuses.count("upstream_error") == 2


def test_retry_after_is_waited_out_when_short_and_passed_on_when_long(platform):
    ATTEMPTS.clear()
    with platform.http() as http:
        assert ask(http, "busy-short").status_code == 200
        assert ATTEMPTS["busy-short"] == 2  # one 429 with Retry-After: 0, then the retry
        long = ask(http, "busy-long")
        assert_error(long, 503, code="service_unavailable")
        assert long.headers["retry-after"] == "30" and ATTEMPTS["busy-long"] == 1  # not retried: the client waits


def test_a_timeout_says_how_long_the_client_waited(live_server):
    import openai

    from chains.model_routes import translate_upstream_error

    route = ModelRoute(name="slow", base_url="http://127.0.0.1:9/v1", timeout=60, first_byte_timeout=5)
    timeout = openai.APITimeoutError(request=httpx.Request("POST", "http://x"))
    error = translate_upstream_error(timeout, route, attempts=2, elapsed=10.26)
    assert error.message == "The model `slow` did not answer within 5 s (2 attempts, 10.3 s in all)."
    assert translate_upstream_error(timeout, route).message == "The model `slow` did not answer within 5 s."
    error = translate_upstream_error(TimeoutError(), route)
    assert error.message == "The model `slow` did not finish within its time limit of 60 s."
