"""Model routes: configuration that names an OpenAI-compatible chat model.

A route maps the public model name clients send to a base URL, the upstream
model name, credentials and generation defaults. ``ModelRegistry`` builds one
``ChatOpenAI`` per route (so HTTP connections are pooled) and turns the
upstream's exceptions into the API's errors.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from functools import cached_property
from typing import Any, Literal

import openai
from langchain_core.outputs import ChatGenerationChunk
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from chains.route_features import SAMPLING_FIELDS, Features, Provider, RouteFeatures, resolve
from chains.tokens import ApproximateTokenCounter, GgufTokenCounter, TokenCounter
from chains.transport import ChatCompletionsTransport
from errors import (
    APIError,
    ContextLengthExceeded,
    InvalidRequest,
    ModelNotFound,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)


class ModelRoute(BaseModel):
    """One chat model the platform serves, as configuration."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="the model id clients send")
    base_url: str = Field(description="OpenAI-compatible base URL, e.g. https://api.openai.com/v1")
    model: str | None = Field(None, description="upstream model name; defaults to `name`")
    api_key: SecretStr | None = None
    api_key_env: str | None = Field(None, description="environment variable holding the key")
    context_window: int = Field(8192, gt=0)
    max_output_tokens: int = Field(4096, gt=0, description="cap on max_tokens per request")
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_completion_tokens"
    timeout: float = Field(60.0, gt=0)
    max_retries: int = Field(1, ge=0)
    tokenizer_gguf: str | None = Field(None, description="GGUF file whose vocabulary counts tokens exactly")
    defaults: dict[str, Any] = Field(default_factory=dict, description="generation defaults")
    owned_by: str = "genai-platform"
    provider: Provider | None = Field(
        None, description="what serves the route; sets the default features (openai for api.openai.com)"
    )
    features: RouteFeatures = Field(default_factory=RouteFeatures, description="overrides of the provider's defaults")
    # Prices in currency units (e.g. USD) per million tokens; every usage record carries its cost.
    input_price: float = Field(0.0, ge=0, description="per million prompt tokens")
    cached_input_price: float | None = Field(None, ge=0, description="per million cached prompt tokens")
    output_price: float = Field(0.0, ge=0, description="per million completion tokens")

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """What a call costs at this route's prices (cached prompt tokens at the cached price, when set)."""
        cached_price = self.input_price if self.cached_input_price is None else self.cached_input_price
        uncached = max(prompt_tokens - cached_tokens, 0)
        return (
            uncached * self.input_price + cached_tokens * cached_price + completion_tokens * self.output_price
        ) / 1e6

    @property
    def provider_kind(self) -> Provider:
        if self.provider is not None:
            return self.provider
        return "openai" if "api.openai.com" in self.base_url else "openai-compatible"

    @property
    def resolved_features(self) -> Features:
        return resolve(self.provider_kind, self.features)

    @property
    def upstream_model(self) -> str:
        return self.model or self.name

    def resolve_api_key(self) -> str:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env, "")
        # Local servers ignore the key, but the OpenAI client insists on one.
        return "not-needed"


class RouteChatOpenAI(ChatOpenAI):
    """``ChatOpenAI`` that keeps which choice a streamed chunk belongs to (``response_metadata["choice_index"]``):
    its own conversion reads only the chunk's first choice, and the transport sends one choice per chunk."""

    def _convert_chunk_to_generation_chunk(
        self, chunk: dict, default_chunk_class: type, base_generation_info: dict | None
    ) -> ChatGenerationChunk | None:
        generation = super()._convert_chunk_to_generation_chunk(chunk, default_chunk_class, base_generation_info)
        choices = chunk.get("choices") or []
        if generation is not None and choices and choices[0].get("index"):
            generation.message.response_metadata["choice_index"] = choices[0]["index"]
        return generation


class ChatModel:
    """A route with its client, ready to call."""

    def __init__(self, route: ModelRoute) -> None:
        self.route = route

    @cached_property
    def client(self) -> ChatOpenAI:
        route = self.route
        api_key = route.resolve_api_key()
        return RouteChatOpenAI(
            model=route.upstream_model,
            base_url=route.base_url,
            api_key=SecretStr(api_key),
            timeout=route.timeout,
            max_retries=route.max_retries,
            stream_usage=True,
            async_client=ChatCompletionsTransport(
                route.base_url,
                api_key,
                timeout=route.timeout,
                max_retries=route.max_retries,
                text_content_only=route.provider_kind == "llama.cpp",
            ),
        )

    @cached_property
    def features(self) -> Features:
        return self.route.resolved_features

    @cached_property
    def tokens(self) -> TokenCounter:
        if self.route.tokenizer_gguf:
            return GgufTokenCounter(self.route.tokenizer_gguf)
        return ApproximateTokenCounter()

    def call_kwargs(self, params: dict[str, Any]) -> dict[str, Any]:
        """Merge the route's defaults with the request's parameters for ``ChatOpenAI``.

        ``params`` uses OpenAI's names (``max_tokens``, ``stop``, ...); ``None`` means unset.
        """
        merged = {**self.route.defaults, **{k: v for k, v in params.items() if v is not None}}
        max_tokens = min(int(merged.pop("max_tokens", self.route.max_output_tokens)), self.route.max_output_tokens)
        extra_body = dict(merged.pop("extra_body", {}) or {})
        if (n := merged.pop("n", 1)) > 1:  # preprocess refused it unless the route has the feature
            extra_body["n"] = n
        # Everything but the sampling parameters travels in the body as it is: ChatOpenAI would take another
        # path (the openai SDK's parse helpers) for a response_format it sees, and needs to know nothing of the rest.
        # Only what the route takes goes (preprocess refused the rest, or it holds without forwarding).
        features = self.features
        for name in [name for name in merged if name not in SAMPLING_FIELDS]:
            value = merged.pop(name)
            if name in features.fields or name in features.extra_params or name in self.route.defaults:
                extra_body[name] = value
        if features.named_tool_choice_only and extra_body.get("tool_choice") == "required":
            # One tool (preprocess refused more): "required" is the named form, which the route does force.
            extra_body["tool_choice"] = {
                "type": "function",
                "function": {"name": extra_body["tools"][0]["function"]["name"]},
            }
        if self.route.provider_kind == "llama.cpp" and (extra_body.get("response_format") or {}).get("type") == (
            "json_schema"
        ):
            # llama-cpp-python's server knows JSON schemas as its own json_object form (grammar-constrained).
            schema = extra_body["response_format"].get("json_schema", {}).get("schema", {})
            extra_body["response_format"] = {"type": "json_object", "schema": schema}
        if self.route.max_tokens_field == "max_tokens":
            # llama.cpp and other older servers ignore `max_completion_tokens`.
            extra_body["max_tokens"] = max_tokens
        else:
            merged["max_completion_tokens"] = max_tokens
        if extra_body:
            merged["extra_body"] = extra_body
        return merged

    def max_tokens_for(self, params: dict[str, Any]) -> int:
        requested = params.get("max_tokens") or self.route.defaults.get("max_tokens") or self.route.max_output_tokens
        return min(int(requested), self.route.max_output_tokens)


class ModelRegistry:
    """The configured routes by public name."""

    def __init__(self, routes: Iterable[ModelRoute], default: str | None = None) -> None:
        self._models = {route.name: ChatModel(route) for route in routes}
        self.default = default or next(iter(self._models), None)

    def __contains__(self, name: str) -> bool:
        return name in self._models

    def __iter__(self):
        return iter(self._models.values())

    def get(self, name: str | None, allowed: Collection[str] | None = None) -> ChatModel:
        """The route ``name`` (the default when None); 404 when unknown or not in ``allowed``."""
        name = name or self.default
        if name is None or name not in self._models or (allowed is not None and name not in allowed):
            raise ModelNotFound(
                f"The model `{name}` does not exist or you do not have access to it.",
                param="model",
            )
        return self._models[name]


def translate_upstream_error(exc: Exception, route: ModelRoute) -> APIError | None:
    """Map an exception from the OpenAI client to the API error a client should see."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        attempts = route.max_retries + 1
        waited = f"{route.timeout * attempts:g} s" + (
            f" ({attempts} attempts of {route.timeout:g} s)" if attempts > 1 else ""
        )
        return UpstreamTimeout(f"The model `{route.name}` did not answer within {waited}.")
    if isinstance(exc, openai.APIResponseValidationError):
        return UpstreamError(f"The model `{route.name}` sent a response that is not valid: {exc.message}")
    if isinstance(exc, openai.APIConnectionError):
        return ServiceUnavailable(f"The model `{route.name}` is unavailable: its server cannot be reached.")
    if isinstance(exc, openai.APIStatusError):
        detail = _upstream_message(exc)
        if exc.status_code == 400 and "context" in detail.lower():
            return ContextLengthExceeded(detail, param="messages")
        if exc.status_code in (400, 422):
            return InvalidRequest(f"The model `{route.name}` rejected the request: {detail}")
        if exc.status_code in (429, 503):
            retry_after = exc.response.headers.get("retry-after")
            return ServiceUnavailable(
                f"The model `{route.name}` is overloaded, retry later: {detail}",
                headers={"retry-after": retry_after} if retry_after else None,
            )
        return UpstreamError(f"The model `{route.name}` failed ({exc.status_code}): {detail}")
    if isinstance(exc, openai.APIError):  # an error event in the middle of a stream
        return UpstreamError(f"The model `{route.name}` failed: {exc.message}")
    return None


def _upstream_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
    return str(exc.message)[:500]
