"""Hostile connections: limits on what one HTTP connection may hold, enforced by the server before the app.

uvicorn's httptools protocol (the fast one ``genai serve`` runs) has no limit on the size or number of request
headers, no deadline for them, no deadline for a request body that stops arriving, and its ``limit_concurrency``
answers a plain-text 503. ``LimitedHttpToolsProtocol`` adds these, per connection:

* request headers: at most ``max_header_bytes`` (431; a longer request line 414) and ``max_headers`` fields (431);
  the parser stops being fed at the limit, so memory stays bounded whatever a client sends;
* a deadline for the complete headers, ``header_timeout`` seconds from the connection's start (from a kept-alive
  connection's first byte of its next request), not reset by each byte: a client that trickles them gets 408, one
  that never sent a byte is closed;
* a deadline for a request body that stops arriving: no body bytes for ``body_idle_timeout`` seconds (while the
  server is reading) answers 408 and closes; the app waiting in ``receive()`` gets ``http.disconnect``;
* at most ``max_connections`` open connections per worker: a connection above the cap is answered 503
  ``service_unavailable`` (with ``Retry-After``) once its headers are in.

Every refusal is an error in OpenAI's shape with ``connection: close``; the connection is then closed gracefully
(the answer and a FIN are sent, what the client still sends is read and dropped for ``LINGER_SECONDS``), so a client
still writing its headers reads the answer rather than a reset. ``protocol(settings)`` is what ``uvicorn.run(http=)``
takes: a picklable factory, so that ``--workers N`` processes get the limits too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from errors import APIError, ServiceUnavailable

if TYPE_CHECKING:
    from server.settings import Settings

log = logging.getLogger("genai.connections")

LINGER_SECONDS = 2.0  # after a refusal: how long what the client still sends is drained before the socket closes

# The request's phase on a connection, for the timers and the header accounting.
_IDLE, _HEAD, _BODY, _UPGRADED = range(4)


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_idle_timeout: float = 30.0
    max_connections: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout=settings.header_timeout_seconds,
            body_idle_timeout=settings.body_idle_timeout_seconds,
            max_connections=settings.max_connections,
        )


def protocol(settings: Settings) -> functools.partial[LimitedHttpToolsProtocol]:
    """The HTTP protocol for ``uvicorn.run(http=...)``, with the limits of ``settings``."""
    return functools.partial(LimitedHttpToolsProtocol, limits=ConnectionLimits.from_settings(settings))


def raise_open_files_limit(max_connections: int) -> None:
    """Raise this process's soft limit of open files (inherited by the workers) towards its hard limit, so that the
    connection cap, rather than running out of file descriptors (which stalls accepting for everyone), is what
    turns clients away. Each connection may hold an upstream socket too, hence twice the cap, plus some room."""
    wanted = 2 * max_connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning(
            "the open files limit (%d) is low for %d connections per worker; raise `ulimit -n` or lower "
            "GENAI_MAX_CONNECTIONS",
            target,
            max_connections,
        )


class _Throttled:
    """A warning at most every ``every`` seconds, counting the ones left out: an attack is not a log flood."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.next_at = 0.0
        self.left_out = 0

    def warn(self, message: str) -> None:
        now = time.monotonic()
        if now < self.next_at:
            self.left_out += 1
            return
        suffix = f" ({self.left_out} more since the last such warning)" if self.left_out else ""
        log.warning("%s%s", message, suffix)
        self.next_at, self.left_out = now + self.every, 0


_warnings: dict[str, _Throttled] = {}


def _warn(message: str) -> None:
    _warnings.setdefault(message, _Throttled()).warn(message)  # a few distinct messages: the limits are fixed


class HeadersTooLarge(APIError):
    status_code = 431
    code = "request_header_fields_too_large"


class URLTooLong(APIError):
    status_code = 414
    code = "uri_too_long"


class RequestTimeout(APIError):
    status_code = 408
    code = "request_timeout"


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; everything else is uvicorn's."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._phase = _IDLE
        self._head_raw = 0  # bytes received while the request's headers are incomplete
        self._head_size = 0  # bytes of the request line and header fields the parser has handed over
        self._head_count = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_seen_at = 0.0
        self._over_capacity = False
        self._refused = False

    # ------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._over_capacity = len(self.connections) >= self.limits.max_connections
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: what still arrives is dropped
        if self._phase in (_IDLE, _HEAD):
            self._head_raw += len(data)
        super().data_received(data)
        if self._refused or self.transport.is_closing():
            return
        if self._phase == _HEAD:
            # A header line longer than the limit is still being buffered by the parser (it hands fields over
            # whole): stop here rather than let it grow.
            if self._head_raw > self.limits.max_header_bytes:
                self._refuse_headers(f"Request headers too large: the limit is {self.limits.max_header_bytes} bytes.")
                return
            if self._header_timer is None:  # the next request on a kept-alive connection: its deadline starts now
                self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timeout)
        elif self._phase == _BODY:
            self._body_seen_at = self.loop.time()
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.limits.body_idle_timeout, self._body_timeout)

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # the parser can still fail on the rest of a chunk after a refusal: answered already
            super().send_400_response(msg)

    def shutdown(self) -> None:
        if self._refused:
            self.transport.close()
        else:
            super().shutdown()

    # ------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        if self._refused:
            return
        self._phase = _HEAD
        self._head_size = self._head_count = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        if self._refused:
            return
        self._head_size += len(url)
        if self._head_size > self.limits.max_header_bytes:
            message = f"Request URL too long: the limit is {self.limits.max_header_bytes} bytes."
            _warn(f"request refused: {message}")
            self._refuse(URLTooLong(message))
            return
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._head_count += 1
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        if self._head_count > self.limits.max_headers:
            self._refuse_headers(f"Too many request headers: the limit is {self.limits.max_headers}.")
        elif self._head_size > self.limits.max_header_bytes:
            self._refuse_headers(f"Request headers too large: the limit is {self.limits.max_header_bytes} bytes.")
        else:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._cancel_header_timer()
        if self._over_capacity:
            limit = self.limits.max_connections
            _warn(f"connection refused: {limit} connections are open in this worker (GENAI_MAX_CONNECTIONS)")
            self._refuse(
                ServiceUnavailable(
                    f"The server is at its limit of {limit} open connections; retry shortly.",
                    headers={"retry-after": "1"},
                )
            )
            return
        if self.parser.should_upgrade() and self._should_upgrade():
            self._phase = _UPGRADED  # the WebSocket protocol takes the connection over
        else:
            self._phase = _BODY
            self._head_raw = 0
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._phase = _IDLE
        self._head_raw = 0
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    # ------------------------------------------------------------ timers

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._refused or self.transport.is_closing() or self._phase not in (_IDLE, _HEAD):
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # The next request is pipelined behind one still being answered: its deadline waits for that answer.
            self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timeout)
        elif self._phase == _IDLE:
            self.transport.close()  # a connection that never sent a request: nobody to answer
        else:
            seconds = self.limits.header_timeout
            _warn(f"connection closed: its request headers did not arrive within {seconds:g} s")
            self._refuse(RequestTimeout(f"The request headers did not arrive within {seconds:g} s."))

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self._refused or self.transport.is_closing() or self._phase != _BODY:
            return
        now = self.loop.time()
        if self.flow.read_paused:  # the server is not reading (the app has not taken the body yet): not idle
            self._body_seen_at = now
        idle = now - self._body_seen_at
        if idle < self.limits.body_idle_timeout:
            self._body_timer = self.loop.call_later(self.limits.body_idle_timeout - idle, self._body_timeout)
            return
        seconds = self.limits.body_idle_timeout
        _warn(f"connection closed: its request body stopped arriving for {seconds:g} s")
        if self.cycle is None or self.cycle.response_started:
            self.transport.close()  # answered already (without reading the body): nothing more to say
        else:
            self._refuse(RequestTimeout(f"The request body stopped arriving: no data for {seconds:g} s."))

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_header_timer()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    # ------------------------------------------------------------ refusals

    def _refuse_headers(self, message: str) -> None:
        _warn(f"request refused: {message}")
        self._refuse(HeadersTooLarge(message))

    def _refuse(self, error: APIError) -> None:
        """Answer ``error`` (OpenAI's shape, ``connection: close``) in place of the app, then close gracefully."""
        self._refused = True
        self._cancel_timers()
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # The app is waiting for a body that will not come: it gets http.disconnect, and its answer is dropped.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        body = orjson.dumps(error.to_dict())
        headers = [*self.server_state.default_headers, *((k.encode(), v.encode()) for k, v in error.headers.items())]
        head = [STATUS_LINE[error.status_code]]
        head += [name + b": " + value + b"\r\n" for name, value in headers]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        self.flow.resume_reading()  # drain what the client still sends, so that it reads the answer
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)
