"""GET /v1/models and /v1/models/{id}: the configured model routes."""

from __future__ import annotations

from fastapi import APIRouter

from chains.model_routes import ChatModel
from server.deps import AnyCaller, ServicesDep
from server.schemas import Model, ModelList

router = APIRouter(prefix="/v1", tags=["models"])

# Routes are configuration, so they have no creation time of their own; use the server's start.
_CREATED = 1_700_000_000


def model_object(chat: ChatModel) -> Model:
    route = chat.route
    return Model(
        id=route.name,
        created=_CREATED,
        owned_by=route.owned_by,
        provider=route.provider_kind,
        context_window=route.context_window,
        max_output_tokens=route.max_output_tokens,
        features=chat.features.public(),
    )


@router.get("/models")
async def list_models(caller: AnyCaller, services: ServicesDep) -> ModelList:
    """The routes this key's app may use (all of them for an admin key)."""
    return ModelList(data=[model_object(c) for c in services.models if caller.may_use(c.route.name)])


@router.get("/models/{model_id:path}")
async def retrieve_model(model_id: str, caller: AnyCaller, services: ServicesDep) -> Model:
    return model_object(services.models.get(model_id, allowed=caller.allowed_models))
