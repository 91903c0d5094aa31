"""The objects a running app wires together: database, memory, model routes, the chat graph and its service.

Built synchronously by the app factory (nothing connects yet), opened and
closed by the app's lifespan. Tests build as many as they like.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
from redis.asyncio import Redis

from chains.model_routes import ModelRegistry
from errors import Conflict
from graphs.chat import ChatContext, build_chat_graph
from memory import ConversationMemory, RedisMemory, SqlMemory
from server.chat_service import ChatService
from server.gateway.auth import Authenticator
from server.gateway.prometheus_metrics import Metrics
from server.gateway.rate_limits import RateLimiter
from server.settings import Settings
from storage import ConversationStore, Database, TenantStore


@dataclass
class Services:
    settings: Settings
    db: Database
    store: ConversationStore
    memory: ConversationMemory
    models: ModelRegistry
    tenants: TenantStore
    auth: Authenticator
    limiter: RateLimiter
    metrics: Metrics
    chat: ChatService
    redis: Redis | None = None

    @classmethod
    def build(cls, settings: Settings) -> Services:
        db = Database(settings.resolved_database_url)
        store = ConversationStore(db)
        redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
        memory: ConversationMemory
        if redis is not None:
            memory = RedisMemory(
                redis, store, ttl_seconds=settings.memory_ttl_seconds, max_messages=settings.memory_max_messages
            )
        else:
            memory = SqlMemory(store, max_messages=settings.memory_max_messages)
        models = ModelRegistry(settings.routes(), default=settings.resolved_default_model)
        tenants = TenantStore(db)
        metrics = Metrics()
        limiter = RateLimiter(settings.redis_url, on_reject=metrics.rate_limited)
        context = ChatContext(
            models=models,
            store=store,
            memory=memory,
            system_prompt=settings.system_prompt,
            memory_max_tokens=settings.memory_max_tokens,
        )
        return cls(
            settings=settings,
            db=db,
            store=store,
            memory=memory,
            models=models,
            tenants=tenants,
            auth=Authenticator(tenants),
            limiter=limiter,
            metrics=metrics,
            chat=ChatService(build_chat_graph(), context, limiter, metrics),
            redis=redis,
        )

    async def open(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.db.upgrade_schema()
        if self.settings.admin_key is not None:
            await self.ensure_admin_key(self.settings.admin_key.get_secret_value())

    async def ensure_admin_key(self, secret: str) -> None:
        """Register the configured admin key (idempotent; two workers may race, one wins)."""
        if await self.tenants.authenticate(secret) is None:
            try:
                await self.tenants.create_key(None, is_admin=True, name="settings", secret=secret)
            except Conflict:
                pass

    async def close(self) -> None:
        await self.chat.drain()
        await self.limiter.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.db.close()

    async def readiness(self) -> dict[str, str]:
        """Each dependency's state: "ok" or why not."""
        checks = {"database": self.db.ping()}
        if self.redis is not None:
            checks["redis"] = self.redis.ping()
        async with httpx.AsyncClient(timeout=3) as client:
            for chat in self.models:
                checks[f"model:{chat.route.name}"] = _probe_model(client, chat.route.base_url, chat.route.resolve_api_key())
            results = await asyncio.gather(*checks.values(), return_exceptions=True)
        return {
            name: "ok" if not isinstance(result, BaseException) else f"{type(result).__name__}: {result}"[:200]
            for name, result in zip(checks, results)
        }


async def _probe_model(client: httpx.AsyncClient, base_url: str, api_key: str) -> None:
    response = await client.get(f"{base_url.rstrip('/')}/models", headers={"Authorization": f"Bearer {api_key}"})
    response.raise_for_status()
