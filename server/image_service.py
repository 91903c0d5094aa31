"""The image service that ``POST /v1/images/generations`` (and ``/v1/generate-image``) uses.

For each request it mints the response id (the trace's run id), runs the image graph (``graphs.image``), and keeps
the books as the chat service does: a usage record for a request that fails (a successful one is written by the
graph's ``store`` node, with its images), the cost charged to the key's budgets after the answer, the metrics
(images by model, generation time, failures by code, safety verdicts).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from langgraph.graph.state import CompiledStateGraph

from errors import APIError, InternalError
from graphs.image import ImageContext, ImageInput
from server.background import BackgroundWork
from server.chat_service import trace_config
from server.failures import as_api_error
from server.gateway.prometheus_metrics import Metrics
from server.gateway.rate_limits import RateLimiter
from server.gateway.request_context import current_request_id
from storage.tenants import Caller
from storage.transcripts import ConversationStore, TurnRecord

log = logging.getLogger(__name__)


@dataclass
class ImageCall:
    """One image request."""

    caller: Caller
    prompt: str
    model: str | None = None
    n: int = 1
    size: str | None = None
    response_format: str = "url"
    user: str | None = None
    # OpenAI fields the provider may take (quality, style), and every other field the client sent.
    options: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # Where the platform is reached, for the images' URLs.
    base_url: str = ""


@dataclass(frozen=True)
class ImageResult:
    response_id: str
    model: str
    created: int
    # OpenAI's response items: {"id", "url" | "b64_json", "revised_prompt"}.
    data: list[dict[str, Any]]
    cost: float = 0.0


class ClientClosedRequest(APIError):
    """What a usage record says of a request that was cancelled (the client left, or the server stopped)."""

    status_code = 499
    code = "client_closed_request"


class ImageService(BackgroundWork):
    work_name = "background image bookkeeping"

    def __init__(
        self,
        graph: CompiledStateGraph,
        context: ImageContext,
        usage: ConversationStore,
        limiter: RateLimiter,
        metrics: Metrics,
        *,
        guard_mode: str = "off",
        moderation_mode: str = "off",
    ) -> None:
        self.graph = graph
        # The deployment's safety modes, for apps that set none.
        self.guard_mode = guard_mode
        self.moderation_mode = moderation_mode
        self.context = context
        self.usage = usage
        self.limiter = limiter
        self.metrics = metrics
        BackgroundWork.__init__(self)

    @property
    def models(self):
        return self.context.models

    async def generate(self, call: ImageCall, config: dict[str, Any] | None = None) -> ImageResult:
        caller = call.caller
        run_id = uuid.uuid4()
        response_id = f"imggen-{run_id.hex}"
        started = time.perf_counter()
        trace = trace_config(caller)
        run_config = {
            **(config or {}),
            "run_id": run_id,
            "run_name": "image",
            "tags": trace["tags"],
            "metadata": {**trace["metadata"], "user": call.user, "request_id": current_request_id()},
        }
        allowed = list(caller.allowed_models) if caller.allowed_models is not None else None
        state: ImageInput = {
            "prompt": call.prompt,
            "model": call.model,
            "n": call.n,
            "size": call.size,
            "response_format": call.response_format,
            "user": call.user,
            "options": call.options,
            "extra": call.extra,
            "response_id": response_id,
            "started_at": started,
            "app_id": caller.app_id or "",
            "key_prefix": caller.key_prefix,
            "allowed_models": allowed,
            "guard_mode": caller.guard_mode or self.guard_mode,
            "moderation_mode": caller.moderation_mode or self.moderation_mode,
            "base_url": call.base_url,
        }
        model = call.model or self.context.models.default_for(allowed) or "none"
        try:
            result = await self.graph.ainvoke(state, run_config, context=self.context)
        except Exception as exc:
            raise await self._failed(call, response_id, model, started, exc) from exc
        except BaseException:  # cancelled: the client left, or the server stops
            self.spawn(self._failed(call, response_id, model, started, ClientClosedRequest("cancelled")))
            raise
        self.metrics.images_generated(result["model_name"], len(result["data"]), result["latency_ms"] / 1000)
        self.metrics.safety_verdicts(result.get("safety"))
        if result.get("cost"):
            self.spawn(self.limiter.spend(caller, tokens=0, cost=result["cost"]))
        return ImageResult(
            response_id=response_id,
            model=result["model_name"],
            created=result["created"],
            data=result["data"],
            cost=result.get("cost", 0.0),
        )

    async def _failed(
        self, call: ImageCall, response_id: str, model: str, started: float, exc: BaseException
    ) -> APIError:
        """Record the failure (metrics and a usage record) and return the error the client gets."""
        error = as_api_error(exc)
        if isinstance(error, InternalError) and not isinstance(exc, InternalError):
            log.error("image request failed", exc_info=exc)
        self.metrics.image_failed(model, error.code or f"http_{error.status_code}")
        self.metrics.safety_verdicts(getattr(error, "safety", None))
        caller = call.caller
        try:
            await self.usage.record_turn(
                TurnRecord.failure(
                    response_id=response_id,
                    app_id=caller.app_id or "",
                    key_prefix=caller.key_prefix,
                    user=call.user,
                    model=model,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    error=error,
                    safety=getattr(error, "safety", None),
                )
            )
        except Exception:  # the client must still learn what went wrong
            log.exception("could not record the failed image request %s", response_id)
        return error

    def warm_up(self) -> None:
        self.context.models.warm_up()

    async def aclose(self) -> None:
        await self.drain()
        await self.context.models.aclose()
