"""The app factory: ``create_app(settings)`` wires services, routes, LangServe and error handling."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from langserve import add_routes

from graphs.chat_runnable import as_chat_runnable
from server.errors import install_error_handlers
from server.limits import BodySizeLimit
from server.routes import chat, conversations, health, models
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
    install_error_handlers(app)
    for module in (health, models, chat, conversations):
        app.include_router(module.router)
    mount_langserve(app, services)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app


def mount_langserve(app: FastAPI, services: Services) -> None:
    """The chat graph at /chat (invoke, stream, batch, playground)."""

    async def per_request_config(config: dict, request: Request) -> dict:
        # LangServe drops configurable keys a client sends that the runnable does not declare;
        # the conversation and model are taken from headers here instead.
        configurable = dict(config.get("configurable") or {})
        if conversation_id := request.headers.get("x-conversation-id"):
            configurable["conversation_id"] = conversation_id
        if model := request.headers.get("x-model"):
            configurable["model"] = model
        return {**config, "configurable": configurable}

    add_routes(
        app,
        as_chat_runnable(services.chat_graph),
        path="/chat",
        playground_type="chat",
        per_req_config_modifier=per_request_config,
        enable_feedback_endpoint=False,
    )
