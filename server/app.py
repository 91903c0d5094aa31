"""The app factory: ``create_app(settings)`` wires services, routes, LangServe and error handling."""

from __future__ import annotations

import gc
import logging
import multiprocessing
from contextlib import asynccontextmanager

from fastapi import FastAPI

from chains.local_model_process import terminate_self, watch_parent
from server.error_handlers import install_error_handlers
from server.gateway.body_limit import BodyLimits
from server.gateway.cors import CorsPolicy
from server.gateway.edge import install as install_edge
from server.openapi import document_api, serve_docs
from server.routes import (
    admin,
    chat_completions,
    conversations,
    embeddings,
    feedback,
    files,
    fine_tuning,
    health,
    images,
    langserve_chat,
    model_list,
    moderations,
    prometheus,
    usage,
    vector_stores,
    web_ui,
)
from server.services import Services
from server.settings import Settings

log = logging.getLogger(__name__)

# Room for the multipart framing and the `purpose` field around an upload of `max_file_bytes`.
MULTIPART_ALLOWANCE = 64 * 1024


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    services = Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if (parent := multiprocessing.parent_process()) is not None:  # a worker of `genai serve --workers N`
            watch_parent(parent.pid, terminate_self)  # never outlive the supervisor, even a SIGKILLed one
        await services.open()
        await services.processes.start()  # a heartbeat while this process serves (storage/processes.py)
        await services.warm_up()
        # What start-up loaded (modules, routes, models, compiled graphs) lives as long as the process: moved out of
        # the garbage collector's generations, so that collections under load walk only what requests allocate.
        gc.collect()
        gc.freeze()
        # Streams still running when uvicorn's grace period is about to end get an error event (server/shutdown.py).
        services.chat.running.watch(settings.shutdown_grace_seconds)
        # SIGTERM: /readyz turns 503 and the server serves on for drain_seconds before that shutdown (server/drain.py).
        services.drain.install(settings.drain_seconds)
        yield
        services.chat.running.close()
        await services.close()

    # /docs and /redoc are served by serve_docs, with their assets from server/static/ rather than a CDN.
    app = FastAPI(title="genai-platform", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.services = services
    app.state.metrics = services.metrics
    install_error_handlers(app)
    routers = (
        health, model_list, chat_completions, embeddings, moderations, conversations, feedback, files, vector_stores,
        fine_tuning, images, usage, admin,
    )  # fmt: skip
    for module in (*routers, prometheus):
        app.include_router(module.router)
    langserve_chat.mount(app, services)
    web_ui.mount(app)  # the web chat UI at /, its files under /ui/
    document_api(app)
    serve_docs(app)
    # One pure ASGI layer, outermost (outside the error middleware, so errors carry its headers too): request id,
    # access log and metrics, CORS (preflights answered before auth), the body cap, the rate-limit headers.
    install_edge(
        app,
        cors=CorsPolicy(settings.cors_origins, services.tenants),
        body_limits=BodyLimits(
            settings.max_body_bytes,
            per_path={"/v1/files": max(settings.max_body_bytes, settings.max_file_bytes + MULTIPART_ALLOWANCE)},
        ),
        metrics=services.metrics,
        drain=services.drain,
    )
    return app
