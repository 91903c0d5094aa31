"""The app factory: ``create_app(settings)`` wires services, routes, LangServe and error handling."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from langserve import add_routes

from chains.errors import ModelNotFound
from graphs.chat_runnable import as_chat_runnable
from server.auth import require_app
from server.completions import caller_state, trace_config
from server.errors import install_error_handlers
from server.limits import BodySizeLimit
from server.metrics import Metrics
from server.observability import install as install_request_context
from server.ratelimit import RateLimitHeaders
from server.routes import admin, chat, conversations, health, models, usage
from server.routes import metrics as metrics_route
from server.services import Services
from server.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    services = Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await services.open()
        yield
        await services.close()

    app = FastAPI(title="genai-platform", version="0.1.0", lifespan=lifespan)
    app.state.services = services
    app.state.metrics = metrics = Metrics()
    services.limiter.on_reject = metrics.rate_limited
    install_error_handlers(app)
    for module in (health, models, chat, conversations, usage, admin):
        app.include_router(module.router)
    app.include_router(metrics_route.router)
    mount_langserve(app, services)
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_request_context(app, metrics)  # outermost: request id and access log on every response
    return app


def mount_langserve(app: FastAPI, services: Services) -> None:
    """The chat graph at /chat (invoke, stream, batch, playground), behind app-key authentication."""

    async def per_request_config(config: dict, request: Request) -> dict:
        # LangServe drops configurable keys a client sends that the runnable does not declare;
        # the caller's app comes from its key, the conversation and model from headers.
        caller = await require_app(request)
        trace = trace_config(caller)
        configurable = {**(config.get("configurable") or {}), **caller_state(caller)}
        if conversation_id := request.headers.get("x-conversation-id"):
            configurable["conversation_id"] = conversation_id
        if model := request.headers.get("x-model"):
            configurable["model"] = model
        await _check_before_streaming(services, caller, configurable)
        return {
            **config,
            "configurable": configurable,
            "tags": [*(config.get("tags") or []), *trace["tags"]],
            "metadata": {**(config.get("metadata") or {}), **trace["metadata"]},
        }

    add_routes(
        app,
        as_chat_runnable(services.chat_graph, services.store),
        path="/chat",
        playground_type="chat",
        per_req_config_modifier=per_request_config,
        enable_feedback_endpoint=False,
        dependencies=[Depends(require_app)],
    )


async def _check_before_streaming(services: Services, caller, configurable: dict) -> None:
    """Refuse an unknown model or conversation before LangServe starts a response.

    Once LangServe streams, an error can only end the stream; checked here it gets its status.
    """
    chat = services.models.get(configurable.get("model"))
    if not caller.may_use(chat.route.name):
        raise ModelNotFound(
            f"The model `{chat.route.name}` does not exist or you do not have access to it.", param="model"
        )
    conversation_id = configurable.get("conversation_id")
    if conversation_id and conversation_id != "new":
        await services.store.get_conversation(conversation_id, app_id=caller.app_id)
