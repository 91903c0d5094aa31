"""The OpenAPI document as the API really answers (OpenAI-shaped errors, SSE where routes stream), and the pages that
show it: ``/docs`` (Swagger UI) and ``/redoc``, with their JavaScript, CSS and favicon served by the platform itself
from ``server/static/vendor/`` (vendored from their npm packages by ``scripts/vendor-web-assets``), so that they work
on a machine without internet. Nothing on them is loaded from another origin."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PATH = "/static"  # server/static/, e.g. /static/vendor/redoc-2.5.4/redoc.standalone.js
# The vendored packages (their versions are pinned in scripts/vendor-web-assets).
SWAGGER_UI = f"{STATIC_PATH}/vendor/swagger-ui-dist-5.35.0"
REDOC = f"{STATIC_PATH}/vendor/redoc-2.5.4"
# Swagger UI would show a badge image from validator.swagger.io for specs it loads from hosts other than localhost.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}
# The pages may load nothing from elsewhere (Redoc 2 shows Redocly's logo from cdn.redoc.ly: the browser does not
# even ask for it, and Redoc leaves it out when it fails). Their own inline script is allowed by its hash; styles
# are inline (Redoc's styled-components, Swagger UI's style attributes); Redoc runs its search in a blob: worker.
DOCS_CSP = (
    "default-src 'self'",
    "script-src 'self' {script_hashes}",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "font-src 'self' data:",
    "connect-src 'self'",
    "worker-src 'self' blob:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
)
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
ERROR_STATUSES = {
    "400": "Invalid request",
    "401": "No, unknown, revoked or expired API key",
    "403": "The key may not use this route",
    "404": "Not found, or not yours",
    "413": "Request body too large",
    "429": "Rate limit reached, or a monthly budget spent (insufficient_quota)",
    "503": "A dependency is down (the model server, Redis for limits and budgets)",
}
# One server-sent event: its `data` is a JSON chunk (or `[DONE]`), `event` names LangServe's kinds.
SSE_EVENT_SCHEMA = {
    "type": "object",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}},
}
STREAMING_SUFFIXES = ("/stream", "/stream_log", "/stream_events")
STREAMING_PATHS = {"/v1/chat/completions"}


def document_api(app: FastAPI) -> None:
    """Replace FastAPI's 422 validation schema with the errors the API sends, and declare SSE bodies."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
            for path, operations in schema.get("paths", {}).items():
                for operation in operations.values():
                    _document(path, operation)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document(path: str, operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    responses.pop("422", None)
    if path not in ("/healthz", "/readyz"):
        for status, description in ERROR_STATUSES.items():
            responses.setdefault(
                status,
                {
                    "description": description,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            )
    if path in STREAMING_PATHS or path.endswith(STREAMING_SUFFIXES):
        ok = responses.setdefault("200", {"description": "Successful Response"})
        ok.setdefault("content", {})["text/event-stream"] = {"schema": SSE_EVENT_SCHEMA}


def _locked_down(page: HTMLResponse) -> HTMLResponse:
    """``page`` with a Content-Security-Policy that allows this origin only (and the page's own inline scripts)."""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(page.body.decode())
    )
    page.headers["Content-Security-Policy"] = "; ".join(DOCS_CSP).format(script_hashes=hashes).replace("  ", " ")
    page.headers["X-Content-Type-Options"] = "nosniff"
    page.headers["Referrer-Policy"] = "no-referrer"
    return page


def serve_docs(app: FastAPI) -> None:
    """``/docs`` and ``/redoc`` with assets under ``/static/`` (the app is made with ``docs_url=None, redoc_url=None``:
    FastAPI's own pages load them from a CDN)."""
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="static")

    def root(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        base = root(request)
        page = get_swagger_ui_html(
            openapi_url=base + (app.openapi_url or "/openapi.json"),
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{base}{SWAGGER_UI}/swagger-ui-bundle.js",
            swagger_css_url=f"{base}{SWAGGER_UI}/swagger-ui.css",
            swagger_favicon_url=f"{base}{SWAGGER_UI}/favicon-32x32.png",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )
        return _locked_down(page)

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        base = root(request)
        page = get_redoc_html(
            openapi_url=base + (app.openapi_url or "/openapi.json"),
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{base}{REDOC}/redoc.standalone.js",
            redoc_favicon_url=f"{base}{SWAGGER_UI}/favicon-32x32.png",
            with_google_fonts=False,
        )
        return _locked_down(page)
