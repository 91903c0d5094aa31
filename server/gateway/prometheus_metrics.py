"""Prometheus metrics: requests and latency by route, time to first token, tokens by model, rate limits, model errors.

Each ``Metrics`` owns its own ``CollectorRegistry``, so tests can build as many
apps as they like. Under several workers (``PROMETHEUS_MULTIPROC_DIR`` set
before ``prometheus_client`` is imported, as ``genai serve --workers N`` does)
the values live in files shared by the workers: the metric objects are then
process-wide singletons, and ``render()`` aggregates every worker's files.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from errors import APIError

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
IMAGE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


def multiprocess_mode() -> bool:
    """True when prometheus_client keeps values in ``PROMETHEUS_MULTIPROC_DIR`` (chosen when it was imported)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR")) and values.ValueClass is not values.MutexValue


@dataclass(frozen=True)
class _Instruments:
    requests: Counter
    duration: Histogram
    ttft: Histogram
    tokens: Counter
    rate_limited: Counter
    model_errors: Counter
    cache_lookups: Counter
    safety: Counter
    redis_fallbacks: Counter
    retries: Counter
    fallbacks: Counter
    breaker_state: Gauge
    breaker_transitions: Counter
    images: Counter
    image_seconds: Histogram
    image_errors: Counter


def _instruments(registry: CollectorRegistry | None) -> _Instruments:
    return _Instruments(
        requests=Counter(
            "genai_http_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        ),
        duration=Histogram(
            "genai_http_request_duration_seconds",
            "HTTP request duration (streams: until the last byte).",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        ),
        ttft=Histogram(
            "genai_time_to_first_token_seconds",
            "Streaming chat: time from the request to the first content token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        ),
        tokens=Counter(
            "genai_tokens",
            "Tokens by model and direction (prompt or completion).",
            ["model", "direction"],
            registry=registry,
        ),
        rate_limited=Counter(
            "genai_rate_limited",
            "Requests rejected by a rate limit or a budget, by limit (requests, tokens or budget).",
            ["limit"],
            registry=registry,
        ),
        model_errors=Counter(
            "genai_model_errors",
            "Chat calls that failed on the model's side (status >= 500), by model and code.",
            ["model", "code"],
            registry=registry,
        ),
        cache_lookups=Counter(
            "genai_cache_lookups",
            "Semantic cache lookups of chat requests, by result (hit or miss) and the tier that hit.",
            ["result", "tier"],
            registry=registry,
        ),
        safety=Counter(
            "genai_safety_verdicts",
            "Chat requests a safety check acted on, by check (input, context, pii, moderation) and outcome "
            "(flagged, blocked, redacted).",
            ["check", "outcome"],
            registry=registry,
        ),
        redis_fallbacks=Counter(
            "genai_redis_fallbacks",
            "Requests served without Redis while it was unreachable, by part: ratelimits (counted in process), "
            "memory (read from the database).",
            ["part"],
            registry=registry,
        ),
        retries=Counter(
            "genai_upstream_retries",
            "Chat calls tried again after a failed attempt, by route, the deployment tried next, and why the last "
            "attempt failed (timeout, connection, invalid_response, an HTTP status).",
            ["route", "deployment", "reason"],
            registry=registry,
        ),
        fallbacks=Counter(
            "genai_route_fallbacks",
            "Chat calls handed to a fallback route, by the route asked for, the fallback and why.",
            ["route", "fallback", "reason"],
            registry=registry,
        ),
        breaker_state=Gauge(
            "genai_circuit_breaker_state",
            "Each deployment's circuit breaker: 0 closed, 1 half-open (probing), 2 open.",
            ["route", "deployment"],
            multiprocess_mode="max",
            registry=registry,
        ),
        breaker_transitions=Counter(
            "genai_circuit_breaker_transitions",
            "Circuit breaker changes, by route, deployment and the state entered.",
            ["route", "deployment", "state"],
            registry=registry,
        ),
        images=Counter("genai_images_generated", "Images generated, by model.", ["model"], registry=registry),
        image_seconds=Histogram(
            "genai_image_generation_seconds",
            "Image requests that succeeded: time from the request to the stored images, by model.",
            ["model"],
            buckets=IMAGE_BUCKETS,
            registry=registry,
        ),
        image_errors=Counter(
            "genai_image_errors",
            "Image requests that failed, by model and error code (content_policy_violation, timeout, ...).",
            ["model", "code"],
            registry=registry,
        ),
    )


_shared: _Instruments | None = None
_shared_lock = threading.Lock()


def _multiprocess_instruments() -> _Instruments:
    """One set per process: two objects for one metric would overwrite each other's value files."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = _instruments(registry=None)  # rendered through MultiProcessCollector, not a registry
        return _shared


class Metrics:
    """The platform's metrics and the methods that record them."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_mode()
        self.registry = CollectorRegistry(auto_describe=True)
        if self.multiprocess:
            self._m = _multiprocess_instruments()
        else:
            self._m = _instruments(self.registry)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self._m.requests.labels(method, route, str(status)).inc()
        self._m.duration.labels(method, route).observe(seconds)

    def observe_first_token(self, model: str, seconds: float) -> None:
        self._m.ttft.labels(model).observe(seconds)

    def count_tokens(self, model: str, prompt: int, completion: int) -> None:
        if prompt:
            self._m.tokens.labels(model, "prompt").inc(prompt)
        if completion:
            self._m.tokens.labels(model, "completion").inc(completion)

    def rate_limited(self, limit: str) -> None:
        """``limit`` is ``requests``, ``tokens`` or ``budget`` (a monthly budget spent)."""
        self._m.rate_limited.labels(limit if limit in ("requests", "tokens", "budget") else "requests").inc()

    def cache_lookup(self, hit: bool, tier: str | None = None) -> None:
        self._m.cache_lookups.labels("hit" if hit else "miss", tier or "none").inc()

    def safety_verdicts(self, safety: dict[str, Any] | None) -> None:
        """Count what a request's safety checks did (graphs.chat.safety has the shape)."""
        if not safety:
            return
        for check in ("input", "moderation"):
            if (action := (safety.get(check) or {}).get("action")) in ("flagged", "blocked"):
                self._m.safety.labels(check, action).inc()
        context = safety.get("context") or {}
        if context.get("dropped"):
            self._m.safety.labels("context", "blocked").inc()
        elif context.get("flagged"):
            self._m.safety.labels("context", "flagged").inc()
        if safety.get("redactions"):
            self._m.safety.labels("pii", "redacted").inc()

    # Failover (chains.failover reports through these; they make Metrics a chains.model_routes.RouteEvents).
    def retried(self, route: str, deployment: str, reason: str) -> None:
        self._m.retries.labels(route, deployment, reason).inc()

    def fell_back(self, from_route: str, to_route: str, reason: str) -> None:
        self._m.fallbacks.labels(from_route, to_route, reason).inc()

    def breaker_changed(self, route: str, deployment: str, state: str) -> None:
        self._m.breaker_state.labels(route, deployment).set({"closed": 0, "half_open": 1, "open": 2}[state])
        self._m.breaker_transitions.labels(route, deployment, state).inc()

    def redis_fallback(self, part: str) -> None:
        self._m.redis_fallbacks.labels(part).inc()

    def model_error(self, model: str, code: str | None) -> None:
        self._m.model_errors.labels(model, code or "unknown").inc()

    def images_generated(self, model: str, count: int, seconds: float) -> None:
        self._m.images.labels(model).inc(count)
        self._m.image_seconds.labels(model).observe(seconds)

    def image_failed(self, model: str, code: str) -> None:
        self._m.image_errors.labels(model, code).inc()

    def chat(self, model: str | None, started_at: float) -> ChatRecorder:
        """A recorder for one chat request (the model is the one asked for; the route's name once known)."""
        return ChatRecorder(self, model or "unknown", started_at)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text format and its content type; every worker's values under several workers."""
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class ChatRecorder:
    """One chat request's time to first token, tokens and model errors.

    The chat route calls ``finished`` with the graph's result (or the stream's
    info) and ``failed`` with the ``APIError`` a call ended with; the stream
    calls ``first_token`` (``CompletionStream(on_first_token=...)``).
    """

    def __init__(self, metrics: Metrics, model: str, started_at: float) -> None:
        self.metrics = metrics
        self.model = model
        self.started_at = started_at
        self._first_token_seen = False

    def _model(self, info: dict[str, Any]) -> str:
        return info.get("model_name") or self.model

    def first_token(self, info: dict[str, Any]) -> None:
        if not self._first_token_seen:
            self._first_token_seen = True
            self.metrics.observe_first_token(self._model(info), time.perf_counter() - self.started_at)

    def finished(self, info: dict[str, Any]) -> None:
        self.metrics.safety_verdicts(info.get("safety"))
        if info.get("cache") in ("hit", "miss"):
            self.metrics.cache_lookup(info["cache"] == "hit", info.get("cache_tier"))
        if info.get("cache") == "hit":
            return  # no model call: no model tokens
        self.metrics.count_tokens(
            self._model(info), int(info.get("prompt_tokens") or 0), int(info.get("completion_tokens") or 0)
        )

    def failed(self, error: BaseException, info: dict[str, Any] | None = None) -> None:
        """Errors on the model's side (status >= 500: unreachable, timed out, failed) count as model errors."""
        self.metrics.safety_verdicts(getattr(error, "safety", None))
        if isinstance(error, APIError) and error.status_code >= 500:
            self.metrics.model_error(self._model(info or {}), error.code)


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


MetricsDep = Annotated[Metrics, Depends(get_metrics)]
