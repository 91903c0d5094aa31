"""A minimal OpenAI-compatible upstream for benchmarks: fixed reply, no model.

``python bench/mock_upstream.py --port N`` serves, on loopback:

* ``GET /v1/models``: one model (``mock``);
* ``POST /v1/chat/completions``: a fixed short reply, as plain JSON or, with
  ``"stream": true``, as SSE: a role chunk, ``CHUNKS`` content chunks, a finish
  chunk, a usage chunk when ``stream_options.include_usage`` is set, then
  ``data: [DONE]``;
* ``GET /_last``: the last chat request body it received (to check what the
  gateway forwards).

It is a Starlette app under uvicorn (uvloop, httptools, no access log), so that
its own cost is small and the same for direct and gateway calls.
"""

from __future__ import annotations

import argparse
import time

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

REPLY = "Hello! This is a fixed reply from the mock upstream, for benchmarks."
CHUNKS = 10
MODEL = "mock"


def _split(text: str, parts: int) -> list[str]:
    size = -(-len(text) // parts)
    return [text[i : i + size] for i in range(0, len(text), size)]


PIECES = _split(REPLY, CHUNKS)
assert len(PIECES) == CHUNKS
PROMPT_TOKENS = 12
COMPLETION_TOKENS = 16
USAGE = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}

_last: dict = {}


async def models(_: Request) -> Response:
    body = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}]}
    return Response(orjson.dumps(body), media_type="application/json")


async def last(_: Request) -> Response:
    return Response(orjson.dumps(_last), media_type="application/json")


async def chat_completions(request: Request) -> Response:
    body = orjson.loads(await request.body())
    _last.clear()
    _last.update(body)
    model = body.get("model") or MODEL
    created = int(time.time())
    ident = f"chatcmpl-mock{time.monotonic_ns()}"
    if not body.get("stream"):
        completion = {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": REPLY},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
        }
        return Response(orjson.dumps(completion), media_type="application/json")

    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict | None, finish_reason: str | None = None, usage: dict | None = None) -> bytes:
        payload = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if include_usage:
            payload["usage"] = usage
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    async def events():
        yield chunk({"role": "assistant", "content": ""})
        for piece in PIECES:
            yield chunk({"content": piece})
        yield chunk({}, "stop")
        if include_usage:
            yield chunk(None, usage=USAGE)
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


app = Starlette(
    routes=[
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/_last", last, methods=["GET"]),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="off",
    )


if __name__ == "__main__":
    main()
