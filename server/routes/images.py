"""Images: ``POST /v1/images/generations`` (OpenAI's image API; also at ``POST /v1/generate-image``), and the app's
stored images: ``GET /v1/images``, ``GET``/``DELETE /v1/images/{id}``, ``GET /v1/images/{id}/content``.

The content route takes the app's key, or a signed URL (``?expires=..&signature=..``, what ``url`` responses and
lists hand out) without a key, so that an ``<img src>`` in a browser works. Another app's image is a 404.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from server.deps import AppCaller, ChatCaller, ServicesDep
from server.gateway.auth import require_app
from server.image_schemas import (
    ImageDeleted,
    ImageGenerationRequest,
    ImageList,
    ImageObject,
    ImagesResponse,
)
from server.image_service import ImageCall
from server.responses import FastJSONResponse
from server.services import Services
from storage import tables
from storage.tenants import Caller

router = APIRouter(prefix="/v1", tags=["images"])

Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(max_length=64)]
Signed = Annotated[str | None, Query(max_length=128)]


def base_url(services: Services, request: Request) -> str:
    """Where clients reach the platform: ``GENAI_PUBLIC_URL``, else the URL this request came to."""
    return (services.settings.public_url or str(request.base_url)).rstrip("/")


def image_object(services: Services, request: Request, image: tables.Image) -> ImageObject:
    return ImageObject.of_row(
        image, created=image.created_at, url=services.image_urls.url(base_url(services, request), image.id)
    )


@router.post("/images/generations", response_model=ImagesResponse)
@router.post("/generate-image", response_model=ImagesResponse)
async def create_image(body: ImageGenerationRequest, caller: ChatCaller, services: ServicesDep, request: Request):
    """Generate images from a prompt (OpenAI's request and response; each image also carries the platform's
    ``id``). ``/v1/generate-image`` is the same route under the platform's original name."""
    result = await services.images.generate(
        ImageCall(
            caller=caller,
            prompt=body.prompt,
            model=body.model,
            n=body.n,
            size=body.size,
            response_format=body.response_format or "url",
            user=body.user,
            options=body.options(),
            extra=dict(body.model_extra or {}),
            base_url=base_url(services, request),
        )
    )
    return FastJSONResponse({"created": result.created, "data": result.data}, headers={"X-Model": result.model})


@router.get("/images")
async def list_images(
    request: Request,
    caller: AppCaller,
    services: ServicesDep,
    limit: Limit = 20,
    order: Literal["asc", "desc"] = "desc",
    after: Cursor = None,
    before: Cursor = None,
) -> ImageList:
    """The app's images, newest first; each with a fresh signed URL."""
    page = await services.image_store.list(caller.app_id, limit=limit, order=order, after=after, before=before)
    return ImageList.page([image_object(services, request, image) for image in page.items], page.has_more)


@router.get("/images/{image_id}")
async def retrieve_image(image_id: str, request: Request, caller: AppCaller, services: ServicesDep) -> ImageObject:
    return image_object(services, request, await services.image_store.get(caller.app_id, image_id))


@router.delete("/images/{image_id}")
async def delete_image(image_id: str, caller: AppCaller, services: ServicesDep) -> ImageDeleted:
    """Delete the image: its record and its PNG (signed URLs of it answer 404 from then on)."""
    await services.image_store.delete(caller.app_id, image_id)
    return ImageDeleted(id=image_id)


async def image_reader(request: Request, signature: Signed = None, expires: Signed = None) -> Caller | None:
    """Who may read an image's content: a signed URL (None: checked by the route against the image), or else an
    app's key (counted against its rate limits, as ``require_app``)."""
    if signature is not None or expires is not None:
        return None
    return await require_app(request)


@router.get(
    "/images/{image_id}/content",
    response_class=Response,
    responses={
        200: {
            "description": "The image, a PNG",
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        },
        403: {"description": "A signed URL whose signature is not valid, or that has expired"},
    },
)
async def retrieve_image_content(
    image_id: str,
    services: ServicesDep,
    reader: Annotated[Caller | None, Depends(image_reader)],
    signature: Signed = None,
    expires: Signed = None,
) -> Response:
    """The PNG, with the app's key or by a signed URL (no key needed: an ``<img src>`` works)."""
    if reader is None:
        until = services.image_urls.verify(image_id, expires, signature)
        image = await services.image_store.find(image_id)
        cache = f"private, max-age={max(until - int(time.time()), 0)}"
    else:
        image = await services.image_store.get(reader.app_id, image_id)
        cache = "private, max-age=3600"
    data = await services.image_store.read(image)
    headers = {
        "Cache-Control": cache,
        "Content-Disposition": f'inline; filename="{image.id}.png"',
        "X-Content-Type-Options": "nosniff",
    }
    return Response(data, media_type="image/png", headers=headers)
