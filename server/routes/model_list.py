"""GET /v1/models and /v1/models/{id}: the configured chat routes, the app's tuned models (``ft:...``, its own only),
the image routes (``type: "image"``, when there are any) and the embedding model (``type: "embedding"``);
DELETE /v1/models/{id} deletes a tuned model."""

from __future__ import annotations

from fastapi import APIRouter

from chains.images import ImageModel
from chains.model_routes import ChatModel
from server.deps import AnyCaller, AppCaller, ServicesDep
from server.fine_tuning_schemas import ModelDeleted
from server.image_schemas import ImageModelObject
from server.knowledge_schemas import EmbeddingModelObject
from server.schemas import Model, ObjectList
from server.services import Services

router = APIRouter(prefix="/v1", tags=["models"])

# Routes are configuration, so they have no creation time of their own; use the server's start.
_CREATED = 1_700_000_000


class ModelCatalog(ObjectList[Model | ImageModelObject | EmbeddingModelObject]):
    """The chat routes, the image routes, then the embedding model."""


def embedding_model_object(services: Services) -> EmbeddingModelObject:
    model = services.embeddings
    return EmbeddingModelObject(id=model.name, created=_CREATED, owned_by=model.owned_by, **model.describe())


def image_model_object(image: ImageModel) -> ImageModelObject:
    route = image.route
    return ImageModelObject(
        id=route.name,
        created=_CREATED,
        owned_by=route.owned_by,
        provider=route.image_provider_kind,
        sizes=image.sizes,
        max_images=route.image_max_n,
    )


def model_object(chat: ChatModel, owned_by: str | None = None) -> Model:
    route = chat.route
    return Model(
        id=route.name,
        created=_CREATED,
        owned_by=owned_by or route.owned_by,
        provider=route.provider_kind,
        context_window=route.context_window,
        max_output_tokens=route.max_output_tokens,
        features=chat.features.public(),
    )


@router.get("/models")
async def list_models(caller: AnyCaller, services: ServicesDep) -> ModelCatalog:
    """The routes this key's app may use (all of them for an admin key), and the embedding model when it may."""
    chat = [model_object(c) for c in services.models if caller.may_use(c.route.name)]
    if caller.app_id:
        chat += [model_object(c, caller.app_name) for c in await services.fine_tuning.models_of(caller)]
    images = [image_model_object(image) for image in services.images.models if caller.may_use(image.name)]
    embedding = [embedding_model_object(services)] if caller.may_use(services.embeddings.name) else []
    return ModelCatalog(data=[*chat, *images, *embedding])


@router.get("/models/{model_id:path}")
async def retrieve_model(
    model_id: str, caller: AnyCaller, services: ServicesDep
) -> Model | ImageModelObject | EmbeddingModelObject:
    if model_id in services.images.models and caller.may_use(model_id):
        return image_model_object(services.images.models.get(model_id))
    if model_id == services.embeddings.name and model_id not in services.models and caller.may_use(model_id):
        return embedding_model_object(services)
    if model_id.startswith("ft:") and caller.app_id:
        await services.fine_tuning.ensure(caller.app_id, model_id)
        return model_object(
            services.models.get(model_id, allowed=caller.allowed_models, app_id=caller.app_id), caller.app_name
        )
    return model_object(services.models.get(model_id, allowed=caller.allowed_models))


@router.delete("/models/{model_id:path}")
async def delete_model(model_id: str, caller: AppCaller, services: ServicesDep) -> ModelDeleted:
    """Delete one of the app's tuned models: its route and its adapter (the provider's copy for OpenAI's)."""
    await services.fine_tuning.delete_model(caller, model_id)
    return ModelDeleted(id=model_id)
