"""A cap on request body size, enforced before the app sees the body (413 in OpenAI's shape).

Starlette's own limit answers a too-large ``Content-Length`` with plain text,
so ``edge.Edge`` does the job in the API's error shape, with the pieces below:
it refuses a too-large ``Content-Length`` at once, else reads the body up to the
cap (FastAPI buffers it anyway) and replays it to the app. Some paths have a cap
of their own (``POST /v1/files`` takes uploads far above the JSON limit).
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.types import Receive

from errors import PayloadTooLarge

UNCHECKED_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class BodyTooLarge(Exception):
    """The body grew past its cap while it was read."""


class BodyLimits:
    """The cap of each request's body: ``max_bytes``, or its path's own in ``per_path``."""

    def __init__(self, max_bytes: int, per_path: Mapping[str, int] | None = None) -> None:
        self.max_bytes = max_bytes
        self.per_path = dict(per_path or {})

    def cap(self, method: str, path: str) -> int | None:
        """The cap of a request's body; None for the methods whose body is not checked."""
        if method in UNCHECKED_METHODS:
            return None
        return self.per_path.get(path, self.max_bytes)


async def read_body(receive: Receive, max_bytes: int) -> bytes | None:
    """The whole body; None when the client left before sending it all. Raises ``BodyTooLarge`` past ``max_bytes``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client left before sending its body
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def too_large(max_bytes: int) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The 413 (status, headers, body); the connection closes, the rest of the body unread."""
    error = PayloadTooLarge(f"Request body too large: the limit is {max_bytes} bytes.")
    body = orjson.dumps(error.to_dict())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    return error.status_code, headers, body
