"""A lean stand-in for the openai SDK's ``chat.completions`` resource, used under ``ChatOpenAI``.

``ChatOpenAI`` builds the request payload itself; the SDK then walks every
parameter again against its TypedDicts (``async_maybe_transform``), which
measured 2 ms for one message and 5.5 ms for 41 messages per call here, most
of the gateway's latency budget. This transport posts LangChain's payload as
it is with httpx and orjson, parses SSE itself, and raises the SDK's own
exception types, so everything above it (LangChain, our error mapping) works
unchanged. Only chat completions go through it; nothing else uses the SDK.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson


class ChatCompletionsTransport:
    """``create(**payload)`` and ``with_raw_response.create(**payload)``, as ``ChatOpenAI`` calls them."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        text_content_only: bool = False,
    ) -> None:
        # llama-cpp-python's server takes a message's content as a string only: no null beside an assistant's
        # tool calls, no list of text parts. Such a route gets "" and the parts' text joined.
        self.text_content_only = text_content_only
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            # Reading covers the wait for the response to start and each pause between streamed chunks; the route's
            # time limit for the whole call is kept above (chains.failover).
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout),
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self.with_raw_response = _RawResponses(self)

    async def create(self, **payload: Any) -> dict[str, Any] | SSEStream:
        response, streaming = await self._send(payload)
        if streaming:
            return SSEStream(response)
        return _parsed(response, response.content)

    async def _send(self, payload: dict[str, Any]) -> tuple[httpx.Response, bool]:
        body = _body(payload)
        if self.text_content_only:
            for message in body.get("messages") or ():
                content = message.get("content")
                if content is None:
                    message["content"] = ""
                elif isinstance(content, list) and all(
                    isinstance(part, dict) and part.get("type") == "text" for part in content
                ):
                    message["content"] = "".join(part.get("text", "") for part in content)
        streaming = bool(body.get("stream"))
        # One attempt: retries, and the choice of deployment, are chains.failover's.
        request = self.client.build_request("POST", "chat/completions", content=orjson.dumps(body))
        try:
            response = await self.client.send(request, stream=streaming)
        except httpx.TimeoutException as exc:
            raise openai.APITimeoutError(request=request) from exc
        except httpx.TransportError as exc:
            raise openai.APIConnectionError(request=request) from exc
        if response.status_code < 400:
            return response, streaming
        raw = await response.aread()
        await response.aclose()
        raise _status_error(response, raw)

    async def aclose(self) -> None:
        await self.client.aclose()


class _RawResponses:
    def __init__(self, transport: ChatCompletionsTransport) -> None:
        self._transport = transport

    async def create(self, **payload: Any) -> _RawResponse:
        response, streaming = await self._transport._send(payload)
        return _RawResponse(response, SSEStream(response) if streaming else _parsed(response, response.content))


class _RawResponse:
    def __init__(self, response: httpx.Response, parsed: Any) -> None:
        self.http_response = response
        self.headers = response.headers
        self._parsed = parsed

    def parse(self) -> Any:
        return self._parsed


class SSEStream:
    """The chunks of a streamed completion as dicts; an async context manager that closes the response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response

    async def __aenter__(self) -> SSEStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.response.aclose()

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        try:
            async for line in self.response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = _parsed(self.response, data)
                if chunk.get("error"):
                    error = chunk["error"]
                    message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
                    raise openai.APIError(message, request=self.response.request, body=chunk)
                choices = chunk.get("choices")
                if choices and len(choices) > 1:  # LangChain reads one choice per chunk (n > 1)
                    for choice in choices:
                        yield {**chunk, "choices": [choice]}
                    continue
                yield chunk
        except httpx.TimeoutException as exc:
            raise openai.APITimeoutError(request=self.response.request) from exc
        except httpx.TransportError as exc:
            raise openai.APIConnectionError(request=self.response.request) from exc
        finally:
            await self.response.aclose()


def _body(payload: dict[str, Any]) -> dict[str, Any]:
    """The JSON body, as the SDK would send it: no unset values, ``extra_body`` merged in."""
    body = {
        key: value
        for key, value in payload.items()
        if value is not None
        and not isinstance(value, openai.NotGiven)
        and key not in ("extra_body", "extra_headers", "extra_query", "timeout")
    }
    body.update(payload.get("extra_body") or {})
    return body


def _parsed(response: httpx.Response, raw: bytes | str) -> dict[str, Any]:
    """An upstream's JSON object; one that is not (a proxy's HTML page, a cut body) is an
    ``openai.APIResponseValidationError``, which the platform answers as a failed upstream (502)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        raise openai.APIResponseValidationError(
            response=response, body=text[:1000], message=f"The upstream's response is not a JSON object: {text[:200]!r}"
        )
    return body


def _status_error(response: httpx.Response, raw: bytes) -> openai.APIStatusError:
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = raw.decode("utf-8", "replace")[:1000]
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error.get("message") if isinstance(error, dict) else None
    message = str(message or error or f"HTTP {response.status_code}")
    error_class = {
        400: openai.BadRequestError,
        401: openai.AuthenticationError,
        403: openai.PermissionDeniedError,
        404: openai.NotFoundError,
        409: openai.ConflictError,
        422: openai.UnprocessableEntityError,
        429: openai.RateLimitError,
    }.get(response.status_code, openai.InternalServerError if response.status_code >= 500 else openai.APIStatusError)
    return error_class(message, response=response, body=body)
