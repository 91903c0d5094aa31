"""Request and response bodies of the image routes, in OpenAI's shapes (the openai SDK's ``ImagesResponse``), and
the image models of GET /v1/models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from server.knowledge_schemas import CursorList
from server.schemas import ResponseBody


class ImageGenerationRequest(BaseModel):
    """OpenAI's image generation request. Fields the platform does not take are refused by name (400
    ``unsupported_parameter``); ``quality`` and ``style`` go to routes of the ``openai`` provider."""

    model_config = ConfigDict(extra="allow")

    prompt: StrictStr = Field(description="what to draw; at most GENAI_IMAGE_MAX_PROMPT_CHARS (4000) characters")
    model: StrictStr | None = Field(None, description="an image model from /v1/models; the first one when omitted")
    n: int = Field(1, ge=1, le=4, description="how many images (the route may allow fewer)")
    size: StrictStr | None = Field(None, description="WIDTHxHEIGHT, one of the model's `sizes`; its first when omitted")
    response_format: Literal["url", "b64_json"] | None = Field(
        None, description="url (the default): a signed, expiring link to the platform; b64_json: the PNG itself"
    )
    user: StrictStr | None = Field(None, max_length=256, description="your end user: recorded with the images")
    quality: StrictStr | None = Field(None, description="forwarded to routes of the openai provider")
    style: StrictStr | None = Field(None, description="forwarded to routes of the openai provider")

    def options(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ("quality", "style") if getattr(self, name) is not None}


class GeneratedImageObject(BaseModel):
    id: str = Field(description="the platform's id of the stored image (GET /v1/images/{id})")
    url: str | None = Field(None, description="with response_format url: a signed link that expires")
    b64_json: str | None = Field(None, description="with response_format b64_json: the PNG, base64")
    revised_prompt: str | None = Field(None, description="the prompt the model really used, when it rewrote it")


class ImagesResponse(BaseModel):
    created: int
    data: list[GeneratedImageObject]


class ImageObject(ResponseBody):
    """A stored image."""

    id: str
    object: Literal["image"] = "image"
    created: int
    model: str
    prompt: str
    revised_prompt: str | None
    size: str
    url: str = Field(description="a signed link to the PNG that expires (GENAI_IMAGE_URL_TTL_SECONDS)")


class ImageList(CursorList[ImageObject]):
    pass


class ImageDeleted(ResponseBody):
    id: str
    object: Literal["image.deleted"] = "image.deleted"
    deleted: bool = True


class ImageModelObject(ResponseBody):
    """An image model in GET /v1/models, beside the chat routes."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    type: Literal["image"] = Field("image", description="an image model: POST /v1/images/generations takes it")
    provider: Literal["openai", "diffusers"]
    sizes: list[str] = Field(description="the sizes it makes; the first is the default")
    max_images: int = Field(description="the most images one request may ask for (`n`)")
