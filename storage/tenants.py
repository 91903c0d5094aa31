"""Client apps and their API keys.

A key is ``sk-`` plus 32 random bytes (base64url), shown once at creation and
stored only as its SHA-256 (the key is random, so no salt or slow hash is
needed to resist guessing); a short visible prefix identifies it in lists and
logs. Admin keys belong to no app.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from errors import Conflict, NotFound
from storage.engine import Database
from storage.tables import ApiKey, App, now

KEY_PREFIX_LENGTH = 12  # "sk-" and 9 characters: enough to tell keys apart, useless to an attacker


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    return "sk-" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's app, limits and identity, resolved once per request."""

    key_id: str
    key_prefix: str
    is_admin: bool
    app_id: str | None = None
    app_name: str | None = None
    system_prompt: str | None = None
    allowed_models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    expires_at: int | None = None
    # Monthly budgets (currency units, calendar month in UTC); both apply when both are set.
    app_budget: float | None = None  # shared by all the app's keys
    key_budget: float | None = None  # this key's own
    # The knowledge base and the semantic cache of the app.
    default_vector_store_id: str | None = None
    cache_enabled: bool = True
    # Safety: the app's own modes and PII policy (None: the deployment's defaults).
    guard_mode: str | None = None
    moderation_mode: str | None = None
    pii_policy: dict | None = None
    # Browser origins whose pages may read answers to this app's keys (CORS; None: the platform-wide ones only).
    cors_origins: tuple[str, ...] | None = None
    # The chat model of a request that names none (None: the deployment's default), e.g. a promoted tuned model.
    default_model: str | None = None

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


@dataclass(frozen=True)
class CreatedKey:
    key: str  # the secret, shown once
    record: ApiKey


class TenantStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # apps

    async def create_app(
        self,
        name: str,
        *,
        system_prompt: str | None = None,
        allowed_models: list[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        monthly_budget: float | None = None,
        cache_enabled: bool = True,
        guard_mode: str | None = None,
        moderation_mode: str | None = None,
        pii_policy: dict | None = None,
        cors_origins: list[str] | None = None,
    ) -> App:
        app = App(
            id=f"app_{uuid.uuid4().hex[:16]}",
            name=name,
            system_prompt=system_prompt,
            allowed_models=allowed_models,
            rpm=rpm,
            tpm=tpm,
            monthly_budget=monthly_budget,
            cache_enabled=cache_enabled,
            guard_mode=guard_mode,
            moderation_mode=moderation_mode,
            pii_policy=pii_policy,
            cors_origins=cors_origins or None,
            created_at=now(),
        )
        try:
            async with self.db.session() as session, session.begin():
                session.add(app)
        except IntegrityError as exc:
            raise Conflict(f"An app named '{name}' already exists.", param="name", code="app_exists") from exc
        return app

    async def list_apps(self) -> list[App]:
        async with self.db.session() as session:
            return list((await session.scalars(select(App).order_by(App.created_at, App.name))).all())

    async def get_app(self, name_or_id: str) -> App:
        async with self.db.session() as session:
            app = await session.scalar(select(App).where((App.id == name_or_id) | (App.name == name_or_id)))
        if app is None:
            raise NotFound(f"No app found named '{name_or_id}'.", param="app")
        return app

    async def update_app(self, name_or_id: str, **changes) -> App:
        app = await self.get_app(name_or_id)
        if "cors_origins" in changes:
            changes["cors_origins"] = changes["cors_origins"] or None  # [] and None both mean none of its own
        if not changes:  # an empty UPDATE ... SET is invalid SQL
            return app
        async with self.db.session() as session, session.begin():
            await session.execute(update(App).where(App.id == app.id).values(**changes))
        return await self.get_app(app.id)

    async def cors_origins(self) -> set[str]:
        """Every browser origin some app allows (``*`` among them when one allows all)."""
        async with self.db.session() as session:
            lists = (await session.scalars(select(App.cors_origins))).all()
        return {origin for origins in lists if origins for origin in origins}

    # keys

    async def create_key(
        self,
        app: str | None,
        *,
        name: str | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        monthly_budget: float | None = None,
        expires_in_days: float | None = None,
        is_admin: bool = False,
        secret: str | None = None,
    ) -> CreatedKey:
        """A new key for ``app`` (an app name or id), or an admin key when ``is_admin``."""
        app_id = None if is_admin else (await self.get_app(app)).id if app else None
        if not is_admin and app_id is None:
            raise NotFound("A key needs an app.", param="app")
        secret = secret or generate_key()
        moment = time.time()
        record = ApiKey(
            id=f"key_{uuid.uuid4().hex[:16]}",
            app_id=app_id,
            is_admin=is_admin,
            name=name,
            prefix=secret[:KEY_PREFIX_LENGTH],
            hash=hash_key(secret),
            rpm=rpm,
            tpm=tpm,
            monthly_budget=monthly_budget,
            # Rounded up to whole seconds: a key lives at least as long as asked.
            expires_at=math.ceil(moment + expires_in_days * 86400) if expires_in_days else None,
            created_at=int(moment),
        )
        try:
            async with self.db.session() as session, session.begin():
                session.add(record)
        except IntegrityError as exc:
            raise Conflict("That key already exists.", code="key_exists") from exc
        return CreatedKey(secret, record)

    async def list_keys(self, app: str | None = None) -> list[tuple[ApiKey, str | None]]:
        """Keys with their app's name, oldest first."""
        query = select(ApiKey, App.name).outerjoin(App, App.id == ApiKey.app_id).order_by(ApiKey.created_at)
        if app is not None:
            query = query.where(ApiKey.app_id == (await self.get_app(app)).id)
        async with self.db.session() as session:
            return [(key, app_name) for key, app_name in (await session.execute(query)).all()]

    async def _find_key(self, id_or_prefix: str) -> ApiKey:
        async with self.db.session() as session:
            matches = list(
                (
                    await session.scalars(
                        select(ApiKey).where((ApiKey.id == id_or_prefix) | (ApiKey.prefix == id_or_prefix))
                    )
                ).all()
            )
        if not matches:
            raise NotFound(f"No key found with id or prefix '{id_or_prefix}'.", param="key")
        return matches[0]

    async def revoke_key(self, id_or_prefix: str) -> ApiKey:
        key = await self._find_key(id_or_prefix)
        async with self.db.session() as session, session.begin():
            await session.execute(
                update(ApiKey).where(ApiKey.id == key.id, ApiKey.revoked_at.is_(None)).values(revoked_at=now())
            )
        return await self._find_key(key.id)

    async def update_key(self, id_or_prefix: str, **changes) -> ApiKey:
        key = await self._find_key(id_or_prefix)
        if not changes:  # an empty UPDATE ... SET is invalid SQL
            return key
        async with self.db.session() as session, session.begin():
            await session.execute(update(ApiKey).where(ApiKey.id == key.id).values(**changes))
        return await self._find_key(key.id)

    async def count_admin_keys(self) -> int:
        async with self.db.session() as session:
            return await session.scalar(
                select(func.count()).select_from(ApiKey).where(ApiKey.is_admin, ApiKey.revoked_at.is_(None))
            )

    async def authenticate(self, secret: str) -> Caller | None:
        """The caller a key stands for, or None when it is unknown, revoked or expired."""
        query = (
            select(ApiKey, App)
            .outerjoin(App, App.id == ApiKey.app_id)
            .where(ApiKey.hash == hash_key(secret), ApiKey.revoked_at.is_(None))
        )
        async with self.db.session() as session:
            row = (await session.execute(query)).first()
        if row is None:
            return None
        key, app = row
        if key.expires_at is not None and key.expires_at <= now():
            return None
        if not key.is_admin and app is None:
            return None
        return Caller(
            key_id=key.id,
            key_prefix=key.prefix,
            is_admin=key.is_admin,
            app_id=app.id if app else None,
            app_name=app.name if app else None,
            system_prompt=app.system_prompt if app else None,
            allowed_models=tuple(app.allowed_models) if app and app.allowed_models is not None else None,
            rpm=key.rpm if key.rpm is not None else (app.rpm if app else None),
            tpm=key.tpm if key.tpm is not None else (app.tpm if app else None),
            expires_at=key.expires_at,
            app_budget=app.monthly_budget if app else None,
            key_budget=key.monthly_budget,
            default_vector_store_id=app.default_vector_store_id if app else None,
            cache_enabled=app.cache_enabled if app and app.cache_enabled is not None else True,
            guard_mode=app.guard_mode if app else None,
            moderation_mode=app.moderation_mode if app else None,
            pii_policy=app.pii_policy if app else None,
            cors_origins=tuple(app.cors_origins) if app and app.cors_origins else None,
            default_model=app.default_model if app else None,
        )
