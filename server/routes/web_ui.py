"""The web chat UI: ``/`` serves server/ui/index.html, ``/ui/`` its CSS, JavaScript modules and vendored libraries.

Static files only (no build step, nothing fetched from elsewhere); the page talks to the same /v1 API as any client,
with the key a person enters. Every response carries a Content-Security-Policy that allows this origin only.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from server.deps import ServicesDep

UI_DIR = Path(__file__).resolve().parent.parent / "ui"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index(services: ServicesDep) -> FileResponse:
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}  # revalidated on each load: its ETag makes it cheap
    # Image URLs point at GENAI_PUBLIC_URL when it is set: the gallery may show images from that origin too.
    public = urlsplit(getattr(services.settings, "public_url", None) or "")
    if public.scheme in ("http", "https") and public.netloc:
        origin = f"{public.scheme}://{public.netloc}"
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY.replace(
            "img-src 'self'", f"img-src 'self' {origin}"
        )
    return FileResponse(UI_DIR / "index.html", headers=headers)


class UIFiles(StaticFiles):
    """StaticFiles with the UI's security headers, revalidated on each use (their ETags make that cheap)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                headers.extend((k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items())
                headers.append((b"cache-control", b"no-cache"))
            await send(message)

        await super().__call__(scope, receive, send_with_headers)


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/ui", UIFiles(directory=UI_DIR), name="ui")
