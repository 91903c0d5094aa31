"""The app's one middleware: everything a request meets before the routes, in a single pure ASGI layer.

It does five jobs four of which used to be stacked middlewares, each wrapping ``send`` and ``receive`` again (a
coroutine frame per message and layer):

- the request id, the access-log line and the HTTP metrics (``request_context``);
- CORS: preflights answered before authentication, CORS headers on every response (``cors``);
- the cap on request bodies, a 413 in OpenAI's error shape (``body_limit``);
- the ``x-ratelimit-*`` headers that admission left in ``scope["state"]`` (``rate_limits``);
- ``Connection: close`` on responses while the replica drains before a stop (``server/drain.py``).

It wraps the whole stack, outside Starlette's ``ServerErrorMiddleware``, so the 500 of an unhandled error carries
the request id and the CORS headers too. The policies live in their modules; this one only wires them to the ASGI
messages, with one pass over the request headers, one ``send`` wrapper and one ``receive`` wrapper.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.drain import Drain
from server.gateway.body_limit import BodyLimits, BodyTooLarge, read_body, too_large
from server.gateway.cors import CorsPolicy
from server.gateway.rate_limits import HEADERS_STATE_KEY
from server.gateway.request_context import (
    CLIENT_CLOSED_REQUEST,
    REQUEST_ID_HEADER,
    new_request_id,
    record_request,
    reset_request_id,
    sane_request_id,
    set_request_id,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

    from server.gateway.prometheus_metrics import Metrics

Headers = list[tuple[bytes, bytes]]
CONNECTION_CLOSE = (b"connection", b"close")


class Edge:
    """Pure ASGI: request id, access log and metrics, CORS, body cap and rate-limit headers (module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        cors: CorsPolicy,
        body_limits: BodyLimits,
        metrics: Metrics | None = None,
        drain: Drain | None = None,
    ) -> None:
        self.app = app
        self.cors = cors
        self.body_limits = body_limits
        self.metrics = metrics
        self.drain = drain or Drain()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # websockets, lifespan
            return await self.app(scope, receive, send)
        # One pass over the request headers; the first of each counts, as it did for each middleware before.
        given_id = origin = preflight_method = preflight_headers = None
        declared = -1  # the largest Content-Length given
        for name, value in scope.get("headers", ()):
            if name == REQUEST_ID_HEADER:
                if given_id is None:
                    given_id = value
            elif name == b"origin":
                if origin is None:
                    origin = value.decode("latin-1")
            elif name == b"content-length":
                if value.isdigit() and int(value) > declared:
                    declared = int(value)
            elif name == b"access-control-request-method":
                if preflight_method is None:
                    preflight_method = value.decode("latin-1")
            elif name == b"access-control-request-headers":
                if preflight_headers is None:
                    preflight_headers = value.decode("latin-1")

        request_id = (sane_request_id(given_id.decode("latin-1")) if given_id is not None else None) or new_request_id()
        token = set_request_id(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        id_header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        # The status of the access log and the metrics: the response's; 499 (nginx's "client closed request") when
        # the client left before one was sent; 500 when the app sent none otherwise.
        status = 500
        responded = False
        body: bytes | None = None  # read here to check its size, handed to the app at its first receive
        started = time.perf_counter()

        async def edge_send(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                headers = message.get("headers", ())
                state = scope.get("state") or {}
                if extra := state.get(HEADERS_STATE_KEY):
                    headers = _with_rate_limits(headers, extra)
                if origin is not None:
                    headers = await self.cors.response_headers(headers, origin, state.get("caller"))
                headers = [(key, value) for key, value in headers if key.lower() != REQUEST_ID_HEADER]
                headers.append(id_header)
                if self.drain.draining:  # the client's next request goes to another replica (server/drain.py)
                    headers.append(CONNECTION_CLOSE)
                message = {**message, "headers": headers}
            await send(message)

        async def edge_receive() -> Message:
            nonlocal status, body
            if body is not None:
                message: Message = {"type": "http.request", "body": body, "more_body": False}
                body = None
                return message
            message = await receive()  # after the body: the disconnect, as the server would
            if message["type"] == "http.disconnect" and not responded:
                status = CLIENT_CLOSED_REQUEST
            return message

        try:
            method = scope["method"]
            if origin is not None and preflight_method is not None and method == "OPTIONS":
                # A preflight carries no key: answered here, without the CORS headers of responses.
                status, headers, content = await self.cors.preflight(origin, preflight_method, preflight_headers)
                responded = True
                await send({"type": "http.response.start", "status": status, "headers": [*headers, id_header]})
                await send({"type": "http.response.body", "body": content})
            elif (cap := self.body_limits.cap(method, scope["path"])) is None:
                await self.app(scope, edge_receive, edge_send)
            elif declared > cap:
                await _respond(edge_send, *too_large(cap))
            else:
                try:
                    body = await read_body(edge_receive, cap)
                except BodyTooLarge:
                    await _respond(edge_send, *too_large(cap))
                else:
                    if body is not None:  # else the client left before sending its body
                        await self.app(scope, edge_receive, edge_send)
        except BaseException:
            record_request(scope, status, time.perf_counter() - started, self.metrics)
            raise  # the id stays set: the server's own error line for this request carries it too
        record_request(scope, status, time.perf_counter() - started, self.metrics)
        reset_request_id(token)


def _with_rate_limits(headers: Headers | tuple, extra: Mapping[str, str]) -> Headers:
    """``headers`` with admission's ``x-ratelimit-*`` headers added, unless the app set them itself."""
    present = {name.lower() for name, _ in headers}
    merged = list(headers)
    for name, value in extra.items():
        if (key := name.encode()) not in present:
            merged.append((key, value.encode()))
    return merged


async def _respond(send: Send, status: int, headers: Headers, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def install(
    app: FastAPI,
    *,
    cors: CorsPolicy,
    body_limits: BodyLimits,
    metrics: Metrics | None = None,
    drain: Drain | None = None,
) -> None:
    """Wrap ``app``'s whole middleware stack in ``Edge``.

    Outside Starlette's ``ServerErrorMiddleware`` (``add_middleware`` would put it inside), so that a 500 carries
    the request id and the CORS headers too. ``app.state.cors`` lets the admin API drop the cached app origins.
    """
    build = app.build_middleware_stack

    def build_with_edge() -> ASGIApp:
        return Edge(build(), cors=cors, body_limits=body_limits, metrics=metrics, drain=drain)

    app.state.cors = cors
    app.build_middleware_stack = build_with_edge  # type: ignore[method-assign]
