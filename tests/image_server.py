"""A small OpenAI-compatible image server on loopback, for tests of the ``openai`` image provider (and of the web
UI's image tab): ``POST /v1/images/generations`` answers with real PNGs made with Pillow, a solid colour derived
from the prompt, of the requested size; ``GET /v1/models`` lists one model.

    with serve_image_server() as base_url:                 # http://127.0.0.1:PORT/v1
        route = image_route("dall-e-3", base_url)           # a ModelRoute that serves images from it
        base_url.control.mode = "fail"                      # every request from now on: 500

It can be told to misbehave, for all requests (``base_url.control.mode``) or for one, by a word in the prompt:

* ``fail`` / ``[fail]``: 500 in OpenAI's error shape;
* ``hang`` / ``[hang]``: no answer until the server stops (or ``control.hang_seconds`` pass);
* ``refuse`` / ``[refuse]``: 400 ``content_policy_violation``, as OpenAI's own safety system answers;
* ``overloaded`` / ``[overloaded]``: 429 with ``Retry-After: 1``;
* ``urls``: answer with URLs of this server (as a server that ignores ``response_format`` would).

``control.requests`` keeps every request body it got.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chains.model_routes import ModelRoute
from tests.mock_upstream import serve_in_thread

MODES = ("ok", "fail", "hang", "refuse", "overloaded", "urls")


@dataclass
class ImageServerControl:
    mode: str = "ok"
    hang_seconds: float = 60.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    files: dict[str, bytes] = field(default_factory=dict)


class ImageServerURL(str):
    """The server's base URL (``http://127.0.0.1:PORT/v1``), with its ``control``."""

    control: ImageServerControl


def colour_of(prompt: str) -> tuple[int, int, int]:
    """The solid colour the server paints for ``prompt``."""
    digest = hashlib.sha256(prompt.encode()).digest()
    return digest[0], digest[1], digest[2]


def png(prompt: str, width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour_of(prompt)).save(buffer, format="PNG")
    return buffer.getvalue()


def _error(status: int, message: str, code: str | None, param: str | None = None, **headers: str) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers or None)


def _app(control: ImageServerControl) -> Starlette:
    async def generations(request: Request):
        body = await request.json()
        control.requests.append(body)
        prompt = str(body.get("prompt") or "")
        mode = next((word for word in MODES[1:] if f"[{word}]" in prompt), control.mode)
        if mode == "fail":
            return _error(500, "The image server failed (on purpose).", "server_error")
        if mode == "refuse":
            return _error(
                400,
                "Your request was rejected as a result of our safety system.",
                "content_policy_violation",
                "prompt",
            )
        if mode == "overloaded":
            return _error(429, "Too many requests (on purpose).", "rate_limit_exceeded", **{"Retry-After": "1"})
        if mode == "hang":
            deadline = time.monotonic() + control.hang_seconds
            while not control.released.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return _error(503, "The image server hung (on purpose).", "server_error")
        width, height = (int(side) for side in str(body.get("size") or "1024x1024").split("x"))
        n = int(body.get("n") or 1)
        data = []
        for index in range(n):
            image = png(prompt, width, height)
            item: dict[str, Any] = {"revised_prompt": f"{prompt} (revised)"}
            if mode == "urls" or body.get("response_format") == "url":
                name = f"{len(control.files)}-{index}.png"
                control.files[name] = image
                item["url"] = f"{request.base_url}files/{name}"
            else:
                item["b64_json"] = base64.b64encode(image).decode()
            data.append(item)
        return JSONResponse({"created": int(time.time()), "data": data})

    async def files(request: Request):
        data = control.files.get(request.path_params["name"])
        return Response(data, media_type="image/png") if data else Response(status_code=404)

    async def models(_: Request):
        model = {"id": "image-server", "object": "model", "created": 0, "owned_by": "tests"}
        return JSONResponse({"object": "list", "data": [model]})

    return Starlette(
        routes=[
            Route("/v1/images/generations", generations, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/files/{name}", files, methods=["GET"]),
        ]
    )


@contextmanager
def serve_image_server(mode: str = "ok") -> Iterator[ImageServerURL]:
    """The image server under uvicorn in a thread; yields its base URL (``http://127.0.0.1:P/v1``) with its
    ``control``."""
    control = ImageServerControl(mode=mode)
    with serve_in_thread(_app(control)) as base_url:
        url = ImageServerURL(base_url)
        url.control = control
        try:
            yield url
        finally:
            control.released.set()  # hanging requests end, so that the server can stop


def image_route(name: str, base_url: str, **overrides: Any) -> ModelRoute:
    """A route that serves images from the image server at ``base_url``: sizes 256x256 (the default), 512x512 and
    1024x1024, no retries, a 10 s time limit (``overrides`` change any of it)."""
    values: dict[str, Any] = {
        "name": name,
        "serves": "images",
        "base_url": base_url,
        "image_sizes": ["256x256", "512x512", "1024x1024"],
        "max_retries": 0,
        "timeout": 10.0,
        **overrides,
    }
    return ModelRoute(**values)
