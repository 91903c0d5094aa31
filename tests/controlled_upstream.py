"""An OpenAI-compatible deployment that a test (or the chaos benchmark) switches between behaving and failing:
``ok``, ``fail`` (500), ``reject`` (400), ``busy`` (429), ``hang`` (never answers), ``slow`` (answers after ``delay``). It counts the
requests it gets, and streams its answer in a few chunks when asked."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from tests.mock_upstream import serve_in_thread


@dataclass
class ControlledUpstream:
    name: str
    mode: str = "ok"
    delay: float = 0.0  # seconds before answering, in every mode but hang
    retry_after: str | None = None  # sent with `busy`
    requests: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    # For the chaos benchmark: when each request arrived (time.monotonic()), and per request its last user message
    # with how many user messages it carried (whether the platform's memory gave the model the whole conversation).
    arrivals: list[float] = field(default_factory=list)
    histories: list[tuple[str, int]] = field(default_factory=list)
    url: str = ""
    closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, mode: str, **changes) -> None:
        self.mode = mode
        for name, value in changes.items():
            setattr(self, name, value)

    async def chat(self, request: Request):
        body = await request.json()
        users = [
            m.get("content") for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"
        ]
        with self._lock:
            self.arrivals.append(time.monotonic())
            self.histories.append((str(users[-1]) if users else "", len(users)))
            self.requests += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            while self.mode == "hang" and not self.closed:  # until switched to another mode
                await asyncio.sleep(0.05)
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.mode == "fail":
                return JSONResponse({"error": {"message": f"{self.name} broke", "type": "server_error"}}, 500)
            if self.mode == "reject":
                return JSONResponse({"error": {"message": "unknown parameter", "type": "invalid_request_error"}}, 400)
            if self.mode == "busy":
                headers = {"retry-after": self.retry_after} if self.retry_after else None
                return JSONResponse({"error": {"message": "slow down"}}, 429, headers=headers)
            text = f"Answered by {self.name}."
            if body.get("stream"):
                return StreamingResponse(_chunks(text, body["model"]), media_type="text/event-stream")
            return JSONResponse(
                {
                    "id": "c",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
                }
            )
        finally:
            with self._lock:
                self.in_flight -= 1

    async def models(self, _: Request):
        if self.mode in ("fail", "hang"):
            return JSONResponse({"error": {"message": "down"}}, 503)
        return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "t"}]})


def _chunks(text: str, model: str) -> Iterator[str]:
    words = text.split(" ")
    for index, word in enumerate(words):
        piece = word if index == 0 else f" {word}"
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model,
                 "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}  # fmt: skip
        yield f"data: {json.dumps(chunk)}\n\n"
    last = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}  # fmt: skip
    yield f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n"


@contextmanager
def controlled_upstream(name: str) -> Iterator[ControlledUpstream]:
    upstream = ControlledUpstream(name)
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", upstream.chat, methods=["POST"]),
            Route("/v1/models", upstream.models, methods=["GET"]),
        ]
    )
    with serve_in_thread(app) as url:
        upstream.url = url
        try:
            yield upstream
        finally:
            upstream.closed = True  # hung requests end, so the server can stop
