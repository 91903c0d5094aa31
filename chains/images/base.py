"""What every image provider is: ``generate(prompt, n, size)`` returning PNGs, and the image model a route makes.

A provider raises the API's errors (``errors``) for everything that can go wrong on its side: unreachable or
overloaded (503), too slow (504), an upstream that refuses the prompt (400, naming its reason), a broken answer
(502). Nothing it raises becomes a 500.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from chains.model_routes import ModelRoute, parse_image_size
from errors import UpstreamError

# Request fields (OpenAI's names) a provider may take besides prompt, n, size and user.
OPTION_FIELDS = ("quality", "style")


@dataclass(frozen=True)
class GeneratedImage:
    """One image a provider made, as PNG bytes, and the prompt it really used when it rewrote it (DALL-E 3 does)."""

    png: bytes
    width: int
    height: int
    revised_prompt: str | None = None


class ImageProvider(Protocol):
    kind: str  # "openai" or "diffusers"

    async def generate(
        self, prompt: str, *, n: int, size: str, user: str | None = None, options: Mapping[str, Any] | None = None
    ) -> list[GeneratedImage]:
        """``n`` images (fewer when a safety checker of the provider's withheld some) of ``size`` for ``prompt``."""
        ...

    def warm_up(self) -> None:
        """Load what the first request would otherwise wait for (in the background; errors are logged)."""
        ...

    async def aclose(self) -> None: ...


def size_of(size: str) -> tuple[int, int]:
    dimensions = parse_image_size(size)
    if dimensions is None:
        raise ValueError(f"not a size: {size!r}")
    return dimensions


def as_png(data: bytes, *, source: str) -> GeneratedImage:
    """``data`` (any image format Pillow reads) as a checked PNG; 502 naming ``source`` when it is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.format == "PNG":
                return GeneratedImage(data, image.width, image.height)
            return png_of(image)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UpstreamError(f"{source} sent an image that cannot be read: {exc}") from None


def png_of(image: Any, revised_prompt: str | None = None) -> GeneratedImage:
    """A Pillow image as PNG bytes."""
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "I", "1"):
        image = image.convert("RGBA" if "A" in image.mode else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return GeneratedImage(buffer.getvalue(), image.width, image.height, revised_prompt)


class ImageModel:
    """An image route with its provider, ready to call."""

    def __init__(self, route: ModelRoute, provider: ImageProvider) -> None:
        self.route = route
        self.provider = provider

    @property
    def name(self) -> str:
        return self.route.name

    @property
    def sizes(self) -> list[str]:
        return self.route.image_size_list

    @property
    def default_size(self) -> str:
        return self.sizes[0]

    def cost(self, images: int) -> float:
        return images * self.route.image_price
