"""The ``openai`` image provider: OpenAI's Images API, or any server that speaks it, through the official SDK.

The platform always asks the upstream for ``b64_json`` (gpt-image models return nothing else and refuse the
parameter, so it is not sent to them): the images are stored by the platform, which hands out its own URLs. An
upstream that answers with URLs all the same has them fetched once, within the route's time limit.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Mapping
from typing import Any

import httpx
import openai

from chains.images.base import GeneratedImage, as_png
from chains.model_routes import ModelRoute
from errors import (
    APIError,
    ContentPolicyViolation,
    InvalidRequest,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)

log = logging.getLogger(__name__)


class OpenAIImages:
    kind = "openai"

    def __init__(self, route: ModelRoute) -> None:
        self.route = route
        self.read_timeout = min(route.first_byte_timeout or route.timeout, route.timeout)
        self._client: openai.AsyncOpenAI | None = None

    @property
    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:  # made on first use, inside the serving event loop
            self._client = openai.AsyncOpenAI(
                base_url=self.route.base_url,
                api_key=self.route.resolve_api_key(),
                timeout=httpx.Timeout(self.read_timeout, connect=self.route.connect_timeout),
                max_retries=self.route.max_retries,
            )
        return self._client

    def warm_up(self) -> None:
        pass

    async def generate(
        self, prompt: str, *, n: int, size: str, user: str | None = None, options: Mapping[str, Any] | None = None
    ) -> list[GeneratedImage]:
        try:
            return await asyncio.wait_for(self._generate(prompt, n, size, user, options or {}), self.route.timeout)
        except Exception as exc:
            raise self.error_of(exc) from exc

    async def _generate(
        self, prompt: str, n: int, size: str, user: str | None, options: Mapping[str, Any]
    ) -> list[GeneratedImage]:
        model = self.route.upstream_model
        request: dict[str, Any] = {"model": model, "prompt": prompt, "n": n, "size": size, **options}
        if not model.startswith("gpt-image"):
            request["response_format"] = "b64_json"
        if user:
            request["user"] = user
        response = await self.client.images.generate(**request)
        images = []
        for item in (response.data or [])[:n]:
            if item.b64_json:
                try:
                    data = base64.b64decode(item.b64_json, validate=True)
                except (binascii.Error, ValueError):
                    raise UpstreamError(f"The image model `{self.route.name}` sent b64_json that is not base64.")
            elif item.url:
                data = await self._fetch(item.url)
            else:
                raise UpstreamError(f"The image model `{self.route.name}` sent an image with neither b64_json nor url.")
            image = await asyncio.to_thread(as_png, data, source=f"The image model `{self.route.name}`")
            images.append(GeneratedImage(image.png, image.width, image.height, item.revised_prompt or None))
        if not images:
            raise UpstreamError(f"The image model `{self.route.name}` answered with no image.")
        return images

    async def _fetch(self, url: str) -> bytes:
        async with httpx.AsyncClient(timeout=self.read_timeout, follow_redirects=True) as client:
            try:
                response = await client.get(url)
                response.raise_for_status()
            except httpx.HTTPError as exc:
                raise UpstreamError(
                    f"The image model `{self.route.name}` answered with a URL that could not be fetched: {exc}"
                ) from None
            return response.content

    def error_of(self, exc: BaseException) -> APIError:
        """The API error a client gets for a failed call to the upstream."""
        name = self.route.name
        if isinstance(exc, APIError):
            return exc
        if isinstance(exc, TimeoutError):  # the route's whole time limit
            return UpstreamTimeout(f"The image model `{name}` did not finish within {self.route.timeout:g} s.")
        if isinstance(exc, openai.APITimeoutError):
            return UpstreamTimeout(f"The image model `{name}` did not answer within {self.read_timeout:g} s.")
        if isinstance(exc, openai.APIConnectionError):
            return ServiceUnavailable(f"The image model `{name}` is unavailable: its server cannot be reached.")
        if isinstance(exc, openai.APIStatusError):
            error = _error_body(exc)
            detail = str(error.get("message") or exc.message)[:500]
            if exc.status_code in (400, 422):
                code = error.get("code") if isinstance(error.get("code"), str) else None
                if code == "content_policy_violation" or "safety system" in detail.lower():
                    return ContentPolicyViolation(
                        f"The image model `{name}` refused the prompt: {detail}", param="prompt"
                    )
                param = error.get("param") if isinstance(error.get("param"), str) else None
                return InvalidRequest(
                    f"The image model `{name}` rejected the request: {detail}", param=param, code=code
                )
            if exc.status_code in (429, 503):
                retry_after = exc.response.headers.get("retry-after")
                return ServiceUnavailable(
                    f"The image model `{name}` is overloaded, retry later: {detail}",
                    headers={"retry-after": retry_after} if retry_after else None,
                )
            return UpstreamError(f"The image model `{name}` failed ({exc.status_code}): {detail}")
        if isinstance(exc, openai.APIError):
            return UpstreamError(f"The image model `{name}` sent a response that is not valid: {exc.message}")
        log.error("the image model %s failed", name, exc_info=exc)
        return UpstreamError(f"The image model `{name}` failed: {type(exc).__name__}")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _error_body(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return error
    return {}
