"""/admin: client apps and their API keys (admin key only)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictStr, field_validator

from errors import InvalidRequest
from server.deps import AdminCaller, ServicesDep
from server.gateway.cors import check_origin
from server.schemas import ApiKey, ApiKeyCreated, ApiKeyList, App, AppList
from storage import tables

router = APIRouter(prefix="/admin", tags=["admin"])

Name = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Limit = Annotated[int, Field(ge=1, le=10_000_000)]
# Currency units per calendar month (UTC); 0 stops every chat request. A JSON number: no strings or booleans.
Budget = Annotated[StrictFloat, Field(ge=0, le=1e12, allow_inf_nan=False)]
BUDGET_HELP = "spending limit per calendar month (UTC), in the currency of the routes' prices; null for none"
Mode = Literal["off", "flag", "block"]
GUARD_HELP = "input guard: off, flag (answer and record the verdict) or block (400); null: the deployment's default"
MODERATION_HELP = "answer moderation: off, flag or block (finish reason content_filter); null: the default"
PII_HELP = 'PII redaction of answers, {"entities": [...], "action": "replace" | "mask" | "hash"}; null: the default'
# A browser origin, as browsers send it (normalised: lower case, no default port); "*" for every origin.
Origin = Annotated[StrictStr, AfterValidator(check_origin)]
CORS_HELP = (
    "browser origins (scheme://host[:port], e.g. https://app.example.com; * for all) whose pages may call with the "
    "app's keys, besides GENAI_CORS_ORIGINS; null or [] for none"
)


def _distinct(origins: list[str] | None) -> list[str] | None:
    return list(dict.fromkeys(origins)) if origins else None


class AppCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    system_prompt: StrictStr | None = Field(None, max_length=20_000)
    allowed_models: list[StrictStr] | None = Field(None, description="route names; all routes when omitted")
    rpm: Limit | None = Field(None, description="default requests per minute for the app's keys")
    tpm: Limit | None = Field(None, description="default tokens per minute for the app's keys")
    monthly_budget: Budget | None = Field(None, description=BUDGET_HELP + "; shared by all the app's keys")
    cache_enabled: StrictBool = Field(True, description="false: no answer of the app comes from the semantic cache")
    guard_mode: Mode | None = Field(None, description=GUARD_HELP)
    moderation_mode: Mode | None = Field(None, description=MODERATION_HELP)
    pii_policy: dict[str, Any] | None = Field(None, description=PII_HELP)
    cors_origins: list[Origin] | None = Field(None, max_length=100, description=CORS_HELP)

    _cors = field_validator("cors_origins")(_distinct)

    @field_validator("name")
    @classmethod
    def _not_like_an_id(cls, name: str) -> str:
        if name.startswith("app_"):
            raise ValueError("names starting with 'app_' are kept for app ids")
        return name


class AppUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    system_prompt: StrictStr | None = Field(None, max_length=20_000)
    allowed_models: list[StrictStr] | None = None
    rpm: Limit | None = None
    tpm: Limit | None = None
    monthly_budget: Budget | None = Field(None, description=BUDGET_HELP)
    cache_enabled: StrictBool = Field(True, description="false: no answer of the app comes from the semantic cache")
    guard_mode: Mode | None = Field(None, description=GUARD_HELP)
    moderation_mode: Mode | None = Field(None, description=MODERATION_HELP)
    pii_policy: dict[str, Any] | None = Field(None, description=PII_HELP)
    cors_origins: list[Origin] | None = Field(None, max_length=100, description=CORS_HELP)

    _cors = field_validator("cors_origins")(_distinct)


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    app: Name
    name: StrictStr | None = Field(None, max_length=128)
    rpm: Limit | None = None
    tpm: Limit | None = None
    monthly_budget: Budget | None = Field(None, description=BUDGET_HELP + "; checked besides the app's")
    expires_in_days: float | None = Field(None, gt=0, le=3650)


class KeyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rpm: Limit | None = None
    tpm: Limit | None = None
    monthly_budget: Budget | None = Field(None, description=BUDGET_HELP)


def app_object(app: tables.App) -> App:
    return App.of_row(app)


def key_object(key: tables.ApiKey, app_name: str | None) -> ApiKey:
    return ApiKey.of_row(key, app=app_name, admin=key.is_admin)


async def _app_name(services, app_id: str | None) -> str | None:
    """The name of a key's app (None for admin keys), for responses that start from the key record."""
    return (await services.tenants.get_app(app_id)).name if app_id else None


def _check_models(services, models: list[str] | None) -> None:
    known = {*(chat.route.name for chat in services.models), services.embeddings.name}
    unknown = [name for name in models or [] if name not in known]
    if unknown:
        raise InvalidRequest(f"Unknown model route(s): {', '.join(unknown)}.", param="allowed_models")


def _checked_policy(services, body: AppCreate | AppUpdate) -> dict[str, Any]:
    """The body's fields, its PII policy validated (a 400 naming what is wrong)."""
    fields = body.model_dump(exclude_unset=True)
    if fields.get("pii_policy") is not None:
        fields["pii_policy"] = services.safety.check_policy(fields["pii_policy"])
        services.safety.warm_up()
    return fields


@router.post("/apps")
async def create_app(body: AppCreate, _: AdminCaller, services: ServicesDep, request: Request) -> App:
    _check_models(services, body.allowed_models)
    created = await services.tenants.create_app(**_checked_policy(services, body))
    _forget_cors(request)
    return app_object(created)


@router.get("/apps")
async def list_apps(_: AdminCaller, services: ServicesDep) -> AppList:
    return AppList(data=[app_object(app) for app in await services.tenants.list_apps()])


@router.get("/apps/{app}")
async def retrieve_app(app: str, _: AdminCaller, services: ServicesDep) -> App:
    return app_object(await services.tenants.get_app(app))


@router.patch("/apps/{app}")
async def update_app(app: str, body: AppUpdate, _: AdminCaller, services: ServicesDep, request: Request) -> App:
    _check_models(services, body.allowed_models)
    updated = await services.tenants.update_app(app, **_checked_policy(services, body))
    services.auth.forget()
    _forget_cors(request)
    return app_object(updated)


def _forget_cors(request: Request) -> None:
    """Preflights of this process see an app's new origins at once (server/gateway/cors.py)."""
    if (policy := getattr(request.app.state, "cors", None)) is not None:
        policy.forget()


@router.post("/keys")
async def create_key(body: KeyCreate, _: AdminCaller, services: ServicesDep) -> ApiKeyCreated:
    created = await services.tenants.create_key(body.app, **body.model_dump(exclude={"app"}))
    # The secret is returned this once; only its hash is stored.
    listed = key_object(created.record, await _app_name(services, created.record.app_id))
    return ApiKeyCreated(**listed.model_dump(), key=created.key)


@router.get("/keys")
async def list_keys(
    _: AdminCaller, services: ServicesDep, app: Annotated[str | None, Query(max_length=128)] = None
) -> ApiKeyList:
    return ApiKeyList(data=[key_object(k, name) for k, name in await services.tenants.list_keys(app)])


@router.patch("/keys/{key}")
async def update_key(key: str, body: KeyUpdate, _: AdminCaller, services: ServicesDep) -> ApiKey:
    updated = await services.tenants.update_key(key, **body.model_dump(exclude_unset=True))
    services.auth.forget()
    return key_object(updated, await _app_name(services, updated.app_id))


@router.post("/keys/{key}/revoke")
async def revoke_key(key: str, _: AdminCaller, services: ServicesDep) -> ApiKey:
    revoked = await services.tenants.revoke_key(key)
    services.auth.forget()
    return key_object(revoked, await _app_name(services, revoked.app_id))
