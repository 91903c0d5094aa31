"""Image generation: the providers behind one small interface, and the registry of the image routes.

An image route is a model route with ``"serves": "images"`` (``chains.model_routes.ModelRoute``), in the same
``GENAI_MODEL_ROUTES`` list as the chat routes. Its ``image_provider`` picks what makes the images:

* ``openai`` (the default): OpenAI's Images API or any compatible server at the route's ``base_url``, through the
  ``openai`` SDK (``chains.images.openai_images``);
* ``diffusers``: a local Stable Diffusion family pipeline loaded from ``pipeline_path``
  (``chains.images.diffusers_images``; the optional extra ``[images]``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator

from chains.images.base import OPTION_FIELDS, GeneratedImage, ImageModel, ImageProvider, as_png, png_of
from chains.model_routes import ModelRoute
from errors import ModelNotFound, ServiceUnavailable

__all__ = [
    "OPTION_FIELDS",
    "GeneratedImage",
    "ImageModel",
    "ImageProvider",
    "ImageRegistry",
    "NO_IMAGE_ROUTE",
    "as_png",
    "build_provider",
    "png_of",
]

NO_IMAGE_ROUTE = (
    'No image model is configured on this platform: add a route with "serves": "images" to the setting '
    'GENAI_MODEL_ROUTES (e.g. {"name": "dall-e-3", "serves": "images", "base_url": "https://api.openai.com/v1", '
    '"api_key_env": "OPENAI_API_KEY"}); see the README\'s Images section.'
)


def build_provider(route: ModelRoute) -> ImageProvider:
    if route.image_provider_kind == "diffusers":
        from chains.images.diffusers_images import DiffusersImages

        return DiffusersImages(route)
    from chains.images.openai_images import OpenAIImages

    return OpenAIImages(route)


class ImageRegistry:
    """The image routes by public name (those of ``routes`` that serve images); ``chat_routes`` are the names of
    the chat routes, so that an image request naming one is told what it named."""

    def __init__(self, routes: Iterable[ModelRoute], chat_routes: Collection[str] = ()) -> None:
        self._models = {
            route.name: ImageModel(route, build_provider(route)) for route in routes if route.serves == "images"
        }
        self.chat_routes = set(chat_routes)

    def __bool__(self) -> bool:
        return bool(self._models)

    def __contains__(self, name: str) -> bool:
        return name in self._models

    def __iter__(self) -> Iterator[ImageModel]:
        return iter(self._models.values())

    def default_for(self, allowed: Collection[str] | None = None) -> str | None:
        """The model of a request that names none: the first image route the app may use."""
        return next((name for name in self._models if allowed is None or name in allowed), None)

    def get(self, name: str | None, allowed: Collection[str] | None = None) -> ImageModel:
        """The route ``name`` (the app's first when None); 503 when no image route is configured, 404 when
        ``name`` is unknown, a chat route, or not in ``allowed``."""
        if not self._models:
            raise ServiceUnavailable(NO_IMAGE_ROUTE)
        name = name or self.default_for(allowed)
        visible = name is not None and (allowed is None or name in allowed)
        if visible and name in self.chat_routes:
            raise ModelNotFound(
                f"The model `{name}` is a chat model, it does not generate images: use it with POST "
                "/v1/chat/completions, or pick an image model from /v1/models.",
                param="model",
            )
        if not visible or name not in self._models:
            raise ModelNotFound(f"The model `{name}` does not exist or you do not have access to it.", param="model")
        return self._models[name]

    def warm_up(self) -> None:
        for model in self._models.values():
            model.provider.warm_up()

    async def aclose(self) -> None:
        for model in self._models.values():
            await model.provider.aclose()
