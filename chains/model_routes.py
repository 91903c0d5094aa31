"""Model routes: configuration that names an OpenAI-compatible chat model.

A route maps the public model name clients send to one or more deployments
(base URL, upstream model name, credentials), with generation defaults,
timeouts, retries and the routes to fall back to. ``ModelRegistry`` builds one
``ChatOpenAI`` per deployment (so HTTP connections are pooled) and turns the
upstream's exceptions into the API's errors; ``chains.failover`` decides which
deployment answers.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Collection, Iterable
from functools import cached_property
from typing import Any, Literal, Protocol

import httpx
import openai
from langchain_core.outputs import ChatGenerationChunk
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from redis.asyncio import Redis

from chains.circuit_breaker import CircuitBreaker, State
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

DEFAULT_FIRST_BYTE_TIMEOUT = 60.0
# An image route's sizes when it names none, by provider.
DEFAULT_IMAGE_SIZES = {"openai": ["1024x1024"], "diffusers": ["512x512"]}
# The fields that only image routes take (``serves: images``), and those only a diffusers pipeline takes.
IMAGE_FIELDS = (
    "image_provider", "pipeline_path", "image_sizes", "image_max_n", "image_steps", "image_guidance_scale",
    "image_device", "image_price",
)  # fmt: skip
DIFFUSERS_FIELDS = ("pipeline_path", "image_steps", "image_guidance_scale", "image_device")


class _Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: SecretStr | None = None
    api_key_env: str | None = Field(None, description="environment variable holding the key")

    def resolve_api_key(self) -> str:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env, "")
        # Local servers ignore the key, but the OpenAI client insists on one.
        return "not-needed"


class Deployment(_Credentials):
    """One server behind a route: where requests go. Unset fields take the route's."""

    name: str | None = Field(None, description="its name in metrics, usage and headers; defaults to host:port")
    base_url: str = Field(description="OpenAI-compatible base URL")
    model: str | None = Field(None, description="upstream model name; defaults to the route's")


class ModelRoute(_Credentials):
    """One model the platform serves, as configuration: a chat model, or (``serves: images``) an image model."""

    name: str = Field(min_length=1, description="the model id clients send")
    serves: Literal["chat", "images"] = Field(
        "chat", description="chat completions, or images (POST /v1/images/generations; see chains.images)"
    )
    base_url: str | None = Field(
        None, description="OpenAI-compatible base URL, e.g. https://api.openai.com/v1 (or `deployments`)"
    )
    model: str | None = Field(None, description="upstream model name; defaults to `name`")
    deployments: list[Deployment] = Field(
        default_factory=list, description="several servers behind this name, balanced by least in-flight requests"
    )
    context_window: int = Field(8192, gt=0)
    max_output_tokens: int = Field(4096, gt=0, description="cap on max_tokens per request")
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_completion_tokens"
    # Timeouts: a client waits at most `timeout` for this route, retries included.
    timeout: float = Field(600.0, gt=0, description="seconds for the whole call on this route, retries included")
    connect_timeout: float = Field(5.0, gt=0, description="seconds to connect to a deployment")
    first_byte_timeout: float | None = Field(
        None,
        gt=0,
        description="seconds until the response starts, and between streamed chunks (default 60, at most `timeout`)",
    )
    max_retries: int = Field(1, ge=0, description="further attempts after a failure, before the fallbacks")
    retry_backoff: float = Field(0.25, ge=0, description="seconds before the first retry; doubles, with jitter")
    retry_backoff_max: float = Field(4.0, ge=0)
    fallbacks: list[str] = Field(
        default_factory=list,
        description="routes tried in order when this one fails, or when a prompt does not fit its context window",
    )
    breaker_failures: int = Field(5, gt=0, description="consecutive failures that open a deployment's breaker")
    breaker_cooldown: float = Field(30.0, gt=0, description="seconds an open breaker waits before a probe")
    tokenizer_gguf: str | None = Field(None, description="GGUF file whose vocabulary counts tokens exactly")
    defaults: dict[str, Any] = Field(default_factory=dict, description="generation defaults")
    owned_by: str = "genai-platform"
    provider: Provider | None = Field(
        None, description="what serves the route; sets the default features (openai for api.openai.com)"
    )
    features: RouteFeatures = Field(default_factory=RouteFeatures, description="overrides of the provider's defaults")
    trainer: Literal["local", "openai"] | None = Field(
        None,
        description="how fine-tuning jobs tune this route: local (LoRA on the embedded model) or openai (OpenAI's "
        "fine-tuning API at the route's server); openai by default for api.openai.com, none otherwise",
    )
    # Prices in currency units (e.g. USD) per million tokens; every usage record carries its cost.
    input_price: float = Field(0.0, ge=0, description="per million prompt tokens")
    cached_input_price: float | None = Field(None, ge=0, description="per million cached prompt tokens")
    output_price: float = Field(0.0, ge=0, description="per million completion tokens")
    # Image routes (serves: images) only.
    image_provider: Literal["openai", "diffusers"] | None = Field(
        None,
        description="what makes the images: openai (OpenAI's Images API or a compatible server at `base_url`, the "
        "default) or diffusers (a local pipeline in `pipeline_path`)",
    )
    pipeline_path: str | None = Field(
        None, description="diffusers: the directory of a saved pipeline (save_pretrained's layout); nothing is fetched"
    )
    image_sizes: list[str] | None = Field(
        None, description="the sizes a request may ask for, WIDTHxHEIGHT; the first is the default"
    )
    image_max_n: int = Field(4, ge=1, le=4, description="the most images one request may ask for (`n`)")
    image_steps: int | None = Field(
        None, ge=1, le=1000, description="diffusers: denoising steps per image (the pipeline's default when unset)"
    )
    image_guidance_scale: float | None = Field(
        None, ge=0, description="diffusers: classifier-free guidance (the pipeline's default when unset)"
    )
    image_device: str | None = Field(
        None, description="diffusers: the torch device (cpu, cuda, cuda:1); cuda when available, else cpu"
    )
    image_price: float = Field(0.0, ge=0, description="per image generated, in the routes' currency")

    @model_validator(mode="after")
    def _has_a_deployment(self) -> ModelRoute:
        if self.serves == "images":
            return self._check_image_route()
        if given := self._given(IMAGE_FIELDS):
            raise ValueError(
                f'route `{self.name}`: {", ".join(given)} apply to image routes only (set "serves": "images")'
            )
        if not self.base_url and not self.deployments:
            raise ValueError(f"route `{self.name}` needs a `base_url` or `deployments`")
        names = [deployment.name for deployment in self.deployment_list]
        if len(set(names)) != len(names):
            raise ValueError(f"route `{self.name}`: its deployments need distinct names ({', '.join(names)})")
        if self.name in self.fallbacks:
            raise ValueError(f"route `{self.name}` cannot fall back to itself")
        return self

    def _given(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` set to something other than their default (a dumped route has them all)."""
        return [name for name in names if getattr(self, name) != type(self).model_fields[name].default]

    def _check_image_route(self) -> ModelRoute:
        provider = self.image_provider_kind
        where = f"image route `{self.name}`"
        if self.deployments or self.fallbacks:
            raise ValueError(f"{where}: `deployments` and `fallbacks` are for chat routes; give it one `base_url`")
        if provider == "openai":
            if not self.base_url:
                raise ValueError(
                    f"{where} needs a `base_url` (e.g. https://api.openai.com/v1), or a `pipeline_path` with "
                    '"image_provider": "diffusers"'
                )
            if given := self._given(DIFFUSERS_FIELDS):
                raise ValueError(f'{where}: {", ".join(given)} apply to "image_provider": "diffusers" routes only')
        else:
            if not self.pipeline_path:
                raise ValueError(f"{where} (diffusers) needs `pipeline_path`: the directory of a saved pipeline")
            if self.base_url or self.api_key is not None or self.api_key_env:
                raise ValueError(f"{where} (diffusers) runs in process: it takes no `base_url` or API key")
        if self.image_sizes is not None and not self.image_sizes:
            raise ValueError(f"{where}: `image_sizes` must name at least one size")
        for size in self.image_sizes or []:
            dimensions = parse_image_size(size)
            if dimensions is None:
                raise ValueError(f"{where}: the size {size!r} is not WIDTHxHEIGHT, e.g. 1024x1024")
            if provider == "diffusers" and any(side % 8 for side in dimensions):
                raise ValueError(f"{where}: the size {size!r} must be multiples of 8 for a diffusion pipeline")
        return self

    @property
    def image_provider_kind(self) -> Literal["openai", "diffusers"]:
        return self.image_provider or "openai"

    @property
    def image_size_list(self) -> list[str]:
        """The sizes an image route makes; the first is the default."""
        return list(self.image_sizes or DEFAULT_IMAGE_SIZES[self.image_provider_kind])

    @property
    def deployment_list(self) -> list[Deployment]:
        """The deployments with the route's values filled in (the route itself when it lists none)."""
        configured = self.deployments or [Deployment(base_url=self.base_url or "")]
        return [
            Deployment(
                name=deployment.name or _host_port(deployment.base_url),
                base_url=deployment.base_url,
                model=deployment.model or self.upstream_model,
                api_key=deployment.api_key or (None if deployment.api_key_env else self.api_key),
                api_key_env=deployment.api_key_env or self.api_key_env,
            )
            for deployment in configured
        ]

    @property
    def read_timeout(self) -> float:
        return min(self.first_byte_timeout or DEFAULT_FIRST_BYTE_TIMEOUT, self.timeout)

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
        urls = [self.base_url or "", *(deployment.base_url for deployment in self.deployments)]
        return "openai" if all("api.openai.com" in url for url in urls) else "openai-compatible"

    @property
    def resolved_features(self) -> Features:
        return resolve(self.provider_kind, self.features)

    @property
    def upstream_model(self) -> str:
        return self.model or self.name

    @property
    def resolved_trainer(self) -> Literal["local", "openai"] | None:
        if self.trainer is not None or self.serves != "chat":
            return self.trainer
        return "openai" if self.provider_kind == "openai" else None

    def tuned(self, name: str, upstream_model: str) -> ModelRoute:
        """The route of a model tuned from this one: the same servers and limits, the tuned model's name upstream,
        and no fallbacks (a tuned model must not be silently replaced by another)."""
        return self.model_copy(
            update={
                "name": name,
                "model": upstream_model,
                "deployments": [d.model_copy(update={"model": upstream_model}) for d in self.deployments],
                "fallbacks": [],
                "trainer": None,
            }
        )


def parse_image_size(size: str) -> tuple[int, int] | None:
    """(width, height) of ``"1024x768"``; None when it is not that form or a side is not in 1..8192."""
    width, sep, height = size.strip().lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        return None
    dimensions = int(width), int(height)
    return dimensions if all(0 < side <= 8192 for side in dimensions) else None


def _host_port(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.host}:{parsed.port}" if parsed.port else parsed.host


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


class RouteEvents(Protocol):
    """What failover reports (the server counts it in metrics)."""

    def retried(self, route: str, deployment: str, reason: str) -> None: ...

    def fell_back(self, from_route: str, to_route: str, reason: str) -> None: ...

    def breaker_changed(self, route: str, deployment: str, state: State) -> None: ...


class Upstream:
    """One deployment of a route: its client, its requests in flight and its circuit breaker."""

    def __init__(self, route: ModelRoute, deployment: Deployment, events: RouteEvents | None) -> None:
        self.route = route
        self.deployment = deployment
        self.name: str = deployment.name or deployment.base_url
        self.in_flight = 0
        # A 429 asked for a pause longer than the platform waits: the deployment is skipped until then (monotonic).
        self.paused_until = 0.0
        self.breaker = CircuitBreaker(
            f"{route.name}/{self.name}",
            threshold=route.breaker_failures,
            cooldown=route.breaker_cooldown,
            on_change=(lambda state: events.breaker_changed(route.name, self.name, state)) if events else None,
        )

    @cached_property
    def client(self) -> ChatOpenAI:
        route, deployment = self.route, self.deployment
        api_key = deployment.resolve_api_key()
        return RouteChatOpenAI(
            model=deployment.model or route.upstream_model,
            base_url=deployment.base_url,
            api_key=SecretStr(api_key),
            max_retries=0,
            stream_usage=True,
            async_client=ChatCompletionsTransport(
                deployment.base_url,
                api_key,
                connect_timeout=route.connect_timeout,
                read_timeout=route.read_timeout,
                text_content_only=route.provider_kind == "llama.cpp",
            ),
        )


class ChatModel:
    """A route with its deployments, ready to call."""

    def __init__(self, route: ModelRoute, events: RouteEvents | None = None) -> None:
        self.route = route
        self.upstreams = [Upstream(route, deployment, events) for deployment in route.deployment_list]
        self.turns = itertools.count()  # whose turn it is among deployments equally busy

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

    def __init__(
        self, routes: Iterable[ModelRoute], default: str | None = None, events: RouteEvents | None = None
    ) -> None:
        self.events = events
        routes = list(routes)
        # Image routes are served by chains.images; their names are known here to tell a chat request so.
        self.image_routes = {route.name for route in routes if route.serves == "images"}
        self._models = {route.name: ChatModel(route, events) for route in routes if route.serves == "chat"}
        self.default = default or next(iter(self._models), None)
        # Tuned models (``ft:...``): each belongs to one app, and is registered by server.tuned_models when used.
        self._owners: dict[str, str] = {}
        self._bases: dict[str, str] = {}
        self._redis: Redis | None = None
        for chat in self._models.values():
            if unknown := [name for name in chat.route.fallbacks if name not in self._models]:
                raise ValueError(f"route `{chat.route.name}` falls back to unknown routes: {', '.join(unknown)}")

    def share_breakers(self, redis: Redis | None) -> None:
        """Keep the deployments' circuit breakers in Redis, shared by every worker (None: each worker its own)."""
        self._redis = redis
        for chat in self._models.values():
            for upstream in chat.upstreams:
                upstream.breaker.shared = redis

    def fallbacks(self, chat: ChatModel) -> list[ChatModel]:
        """The routes ``chat`` falls back to, in order."""
        return [self._models[name] for name in chat.route.fallbacks]

    def __contains__(self, name: str) -> bool:
        return name in self._models and name not in self._owners

    def __iter__(self):
        """The configured routes (not the tuned models: they belong to one app each)."""
        return (chat for name, chat in self._models.items() if name not in self._owners)

    def add_tuned(self, name: str, app_id: str, base: str, upstream_model: str) -> ChatModel:
        """Serve the tuned model ``name`` of ``app_id`` (made from the route ``base``); kept until ``remove_tuned``."""
        chat = self._models.get(name)
        if chat is not None and self._owners.get(name) == app_id and chat.route.upstream_model == upstream_model:
            return chat
        chat = ChatModel(self._models[base].route.tuned(name, upstream_model), self.events)
        for upstream in chat.upstreams:
            upstream.breaker.shared = self._redis
        self._models[name], self._owners[name], self._bases[name] = chat, app_id, base
        return chat

    def remove_tuned(self, name: str) -> None:
        if name in self._owners:
            del self._models[name], self._owners[name], self._bases[name]

    def tuned_of(self, app_id: str) -> list[ChatModel]:
        return [self._models[name] for name, owner in self._owners.items() if owner == app_id]

    def get(
        self, name: str | None, allowed: Collection[str] | None = None, app_id: str | None = None
    ) -> ChatModel:
        """The route ``name`` (the default when None); 404 when unknown, not in ``allowed``, or a tuned model of
        another app than ``app_id``. A tuned model is allowed when the route it was made from is."""
        name = name or self.default
        if name in self._owners:
            if self._owners[name] != app_id or (allowed is not None and self._bases[name] not in allowed):
                raise ModelNotFound(
                    f"The model `{name}` does not exist or you do not have access to it.", param="model"
                )
            return self._models[name]
        if name in self.image_routes and (allowed is None or name in allowed):
            raise ModelNotFound(
                f"The model `{name}` generates images, it is not a chat model: use it with POST "
                "/v1/images/generations, or pick a chat model from /v1/models.",
                param="model",
            )
        if name is None or name not in self._models or (allowed is not None and name not in allowed):
            raise ModelNotFound(
                f"The model `{name}` does not exist or you do not have access to it.",
                param="model",
            )
        return self._models[name]


def translate_upstream_error(
    exc: BaseException, route: ModelRoute, *, attempts: int = 1, elapsed: float | None = None
) -> APIError | None:
    """Map an exception from the OpenAI client to the API error a client should see (None: not the upstream's).

    ``attempts`` and ``elapsed`` (seconds) say how long the client waited in all, when it was more than one try.
    """
    if isinstance(exc, APIError):
        return exc
    spent = f" ({attempts} attempts, {elapsed:.1f} s in all)" if attempts > 1 and elapsed else ""
    if isinstance(exc, TimeoutError):  # the route's whole time limit ran out
        return UpstreamTimeout(
            f"The model `{route.name}` did not finish within its time limit of {route.timeout:g} s{spent}."
        )
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamTimeout(f"The model `{route.name}` did not answer within {route.read_timeout:g} s{spent}.")
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
