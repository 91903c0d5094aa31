"""The app factory: ``create_app(settings)`` wires services, routes, LangServe and error handling."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.errors import install_error_handlers
from server.limits import BodySizeLimit
from server.metrics import Metrics
from server.observability import install as install_request_context
from server.openapi import document_api
from server.ratelimit import RateLimitHeaders
from server.routes import admin, chat, conversations, health, langserve, models, usage
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
    langserve.mount(app, services)
    document_api(app)
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_request_context(app, metrics)  # outermost: request id and access log on every response
    return app
