"""Per-request cost of the app's middlewares: the old stack of four against the one ``Edge`` layer (#14).

The old stack (``RequestContext``, ``Cors``, ``BodySizeLimit``, ``RateLimitHeaders``) is loaded from git at
``--old-rev``, the last commit that had it, into temporary modules; the new layer from the working tree. Each wraps
the same tiny FastAPI app (a JSON route and a streaming route that, like admission, leave rate-limit headers in the
scope's state), driven in process by a raw ASGI call loop (less noise than an HTTP client), interleaved in rounds.
The bare app, without any middleware, is measured too: what is left above it is the middlewares' own cost.

    .venv/bin/python bench/middleware_stack.py [--requests 5000] [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from harness import ROOT  # also puts the project root on sys.path
from starlette.types import ASGIApp, Message

from server.gateway import edge
from server.gateway.body_limit import BodyLimits
from server.gateway.cors import CorsPolicy
from server.gateway.prometheus_metrics import Metrics
from server.gateway.rate_limits import HEADERS_STATE_KEY
from server.gateway.request_context import access_log

OLD_REV = "13fdbebe4aa2531bea3f6888f02d18b15fe6f671"  # the last commit with the four middlewares
ORIGIN = "https://app.example.com"
MAX_BODY = 1024 * 1024
RATE_LIMIT_HEADERS = {
    "x-ratelimit-limit-requests": "600",
    "x-ratelimit-remaining-requests": "599",
    "x-ratelimit-reset-requests": "100ms",
}
CHUNKS = 8  # events of the streaming route
BODY = b'{"model": "mock", "messages": [{"role": "user", "content": "Hello"}]}'

# name, path, extra request headers
KINDS = (
    ("json", "/v1/json", []),
    ("json + Origin (CORS)", "/v1/json", [(b"origin", ORIGIN.encode())]),
    ("stream", "/v1/stream", []),
)


def old_module(path: str, rev: str) -> types.ModuleType:
    """``path`` as it was at ``rev``, imported as a temporary module of its own."""
    source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True)
    name = "_old_" + Path(path).stem
    module = types.ModuleType(name)
    module.__file__ = f"{rev[:7]}:{path}"
    sys.modules[name] = module
    exec(compile(source.stdout, module.__file__, "exec"), module.__dict__)  # noqa: S102
    return module


def tiny_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/json")
    async def answer(request: Request) -> dict:
        request.scope.setdefault("state", {})[HEADERS_STATE_KEY] = RATE_LIMIT_HEADERS
        body = await request.body()
        return {"object": "chat.completion", "received": len(body)}

    @app.post("/v1/stream")
    async def stream(request: Request) -> StreamingResponse:
        request.scope.setdefault("state", {})[HEADERS_STATE_KEY] = RATE_LIMIT_HEADERS
        await request.body()

        async def events():
            for index in range(CHUNKS):
                yield f'data: {{"index": {index}}}\n\n'
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def bare_stack() -> ASGIApp:
    return tiny_app()


def old_stack(rev: str) -> ASGIApp:
    request_context = old_module("server/gateway/request_context.py", rev)
    cors = old_module("server/gateway/cors.py", rev)
    body_limit = old_module("server/gateway/body_limit.py", rev)
    rate_limits = old_module("server/gateway/rate_limits.py", rev)
    app = tiny_app()
    app.add_middleware(rate_limits.RateLimitHeaders)
    app.add_middleware(body_limit.BodySizeLimit, max_bytes=MAX_BODY, per_path={"/v1/files": 2 * MAX_BODY})
    cors.install(app, cors.CorsPolicy([ORIGIN], None))
    request_context.install(app, Metrics())
    return app


def new_stack() -> ASGIApp:
    app = tiny_app()
    edge.install(
        app,
        cors=CorsPolicy([ORIGIN], None),
        body_limits=BodyLimits(MAX_BODY, per_path={"/v1/files": 2 * MAX_BODY}),
        metrics=Metrics(),
    )
    return app


async def call(app: ASGIApp, path: str, extra: list[tuple[bytes, bytes]]) -> int:
    """One request, as uvicorn would make it; the response's status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "POST",
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"bench"),
            (b"authorization", b"Bearer sk-bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
            *extra,
        ],
        "state": {},
    }
    sent_body = False
    status = 0

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.Future()  # the client stays: a streaming response's disconnect listener is cancelled
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def timed(app: ASGIApp, path: str, extra: list[tuple[bytes, bytes]], count: int) -> float:
    """Seconds for ``count`` requests in a row."""
    started = time.perf_counter()
    for _ in range(count):
        await call(app, path, extra)
    return time.perf_counter() - started


async def main(requests: int, rounds: int, rev: str) -> None:
    # The access-log line is made, as in production, but goes nowhere: its formatting and I/O are the same for all.
    access_log.setLevel(logging.INFO)
    access_log.addHandler(logging.NullHandler())
    access_log.propagate = False
    stacks: dict[str, Callable[[], ASGIApp]] = {
        "bare": bare_stack,
        "old": lambda: old_stack(rev),
        "new": new_stack,
    }
    apps = {name: build() for name, build in stacks.items()}
    for app in apps.values():  # build the middleware stacks, warm the routes; check the layers answer alike
        for _, path, extra in KINDS:
            assert await call(app, path, extra) == 200
            await timed(app, path, extra, 200)
    per_round = max(1, requests // rounds)
    samples: dict[tuple[str, str], list[float]] = {(kind, stack): [] for kind, _, _ in KINDS for stack in apps}
    for index in range(rounds):
        order = list(apps) if index % 2 == 0 else list(reversed(apps))  # alternate who goes first
        for kind, path, extra in KINDS:
            for stack in order:
                gc.collect()
                seconds = await timed(apps[stack], path, extra, per_round)
                samples[(kind, stack)].append(seconds / per_round * 1e6)
    print(f"{per_round * rounds} requests per kind and stack, {rounds} interleaved rounds; µs per request (best round)")
    print(f"{'kind':<22}{'bare':>9}{'old':>9}{'new':>9}{'new/old':>10}{'old-bare':>10}{'new-bare':>10}{'ratio':>8}")
    for kind, _, _ in KINDS:
        bare, old, new = (min(samples[(kind, stack)]) for stack in ("bare", "old", "new"))
        print(
            f"{kind:<22}{bare:>9.1f}{old:>9.1f}{new:>9.1f}{new / old:>10.2f}"
            f"{old - bare:>10.1f}{new - bare:>10.1f}{(new - bare) / (old - bare):>8.2f}"
        )
    print("new/old: whole request; old-bare, new-bare: the middlewares' own cost; ratio: new's share of old's")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per kind and stack (default 5000)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument("--old-rev", default=OLD_REV, help="the git revision of the old stack")
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds, args.old_rev))
