"""The objects a running app wires together: database, memory, model routes, the chat graph and its service.

Built synchronously by the app factory (nothing connects yet), opened and
closed by the app's lifespan. Tests build as many as they like.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx
from redis.asyncio import Redis

from chains.embedding_models import EmbeddingModel, build_embedding_model
from chains.images import ImageRegistry
from chains.model_routes import ModelRegistry
from errors import Conflict
from graphs.chat import ChatContext, build_chat_graph
from graphs.chat.safety import PiiFilters, moderation_filters
from graphs.image import ImageContext, build_image_graph
from memory import ConversationMemory, RedisMemory, SqlMemory
from memory.chroma import HEARTBEAT_PATH as CHROMA_HEARTBEAT_PATH
from memory.redis_client import open_redis
from memory.semantic_cache import SemanticCache
from server.chat_service import ChatService
from server.drain import Drain
from server.feedback_forwarding import LangSmithFeedback
from server.fine_tuning import FineTuning
from server.gateway.auth import Authenticator
from server.gateway.prometheus_metrics import Metrics
from server.gateway.rate_limits import RateLimiter
from server.image_service import ImageService
from server.knowledge_base import KnowledgeBase
from server.knowledge_index import LazyKnowledgeIndex
from server.safety import SafetyChecks
from server.settings import Settings
from storage import ConversationStore, Database, TenantStore
from storage.feedback import FeedbackStore
from storage.files import FileStore
from storage.fine_tuning import FineTuningStore
from storage.idempotency import IdempotencyKeys
from storage.images import ImageStore, SignedUrls
from storage.object_store import DiskObjectStore, ObjectStore, S3ObjectStore, parse_s3_url
from storage.processes import ProcessRegistry
from storage.vector_stores import VectorStores


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
    # The knowledge base: the embedding model, the Chroma index (opened on first use), files and vector stores in SQL
    # (files' bytes in data_dir/files), and the operations across them with the background ingestions.
    embeddings: EmbeddingModel
    knowledge: LazyKnowledgeIndex
    files: FileStore
    vector_stores: VectorStores
    knowledge_base: KnowledgeBase
    feedback: FeedbackStore
    # The input guard, the moderation checker and the PII redactor (chat's checks, and POST /v1/moderations).
    safety: SafetyChecks
    # Ratings forwarded to LangSmith when tracing is configured.
    langsmith_feedback: LangSmithFeedback
    # Images: the image routes' service (graphs/image.py), the stored images (PNGs in data_dir/images, or in an S3
    # bucket: image_objects) and the signed URLs of their download route.
    images: ImageService
    image_store: ImageStore
    image_urls: SignedUrls
    # Fine-tuning jobs (run by `genai worker`) and the app's tuned models, served as routes of their app.
    fine_tuning: FineTuning
    # This serving process's heartbeat row: a retry takes over the idempotency claims of a process that died.
    processes: ProcessRegistry
    redis: Redis | None = None
    # Set on SIGTERM: /readyz answers 503 and responses close their connections (server/drain.py).
    drain: Drain = field(default_factory=Drain)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        db = Database(
            settings.resolved_database_url,
            usage_flush_seconds=settings.usage_flush_seconds,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
        )
        store = ConversationStore(db)
        redis = open_redis(settings.redis_url) if settings.redis_url else None
        metrics = Metrics()
        memory: ConversationMemory
        if redis is not None:
            memory = RedisMemory(
                redis,
                store,
                ttl_seconds=settings.memory_ttl_seconds,
                max_messages=settings.memory_max_messages,
                keep_fraction=settings.memory_keep_fraction,
                on_fallback=metrics.redis_fallback,
            )
        else:
            memory = SqlMemory(
                store, max_messages=settings.memory_max_messages, keep_fraction=settings.memory_keep_fraction
            )
        models = ModelRegistry(settings.routes(), default=settings.resolved_default_model, events=metrics)
        models.share_breakers(redis)
        limiter = RateLimiter(settings.redis_url, on_reject=metrics.rate_limited, on_fallback=metrics.redis_fallback)
        embeddings = build_embedding_model(settings.embedding_route)
        knowledge = LazyKnowledgeIndex(settings.data_dir, settings.chroma_url, embeddings.embeddings)
        files = FileStore(db, settings.data_dir / "files")
        vector_stores = VectorStores(db)
        safety = SafetyChecks.build(settings)
        tenants = TenantStore(db)
        fine_tuning = FineTuning(settings, FineTuningStore(db), files, models, tenants)
        image_store = ImageStore(db, image_objects(settings))
        image_urls = SignedUrls.in_data_dir(
            settings.data_dir,
            settings.image_url_secret.get_secret_value() if settings.image_url_secret else None,
            settings.image_url_ttl_seconds,
        )
        image_context = ImageContext(
            models=ImageRegistry(settings.routes(), chat_routes=[chat.route.name for chat in models]),
            store=image_store,
            urls=image_urls,
            guard=safety.guard,
            moderation=safety.moderation,
            max_prompt_chars=settings.image_max_prompt_chars,
        )
        context = ChatContext(
            models=models,
            store=store,
            memory=memory,
            system_prompt=settings.system_prompt,
            memory_max_tokens=settings.memory_max_tokens,
            memory_keep_fraction=settings.memory_keep_fraction,
            knowledge=knowledge,
            vector_stores=vector_stores,
            embeddings=embeddings.embeddings,
            retrieval_top_k=settings.retrieval_top_k,
            retrieval_min_score=settings.retrieval_min_score,
            cache=SemanticCache(
                knowledge.client,
                redis=redis,
                threshold=settings.cache_similarity_threshold,
                ttl_seconds=settings.cache_ttl_seconds,
            )
            if settings.cache_enabled
            else None,
            cache_max_temperature=settings.cache_max_temperature,
            guard=safety.guard,
            guard_mode=settings.guard_mode,
            moderation_mode=settings.moderation_mode,
            pii_policy=settings.pii_policy,
            # PII first: moderation reads the answer as the client gets it.
            output_filters=[PiiFilters(safety.redactor), moderation_filters(safety.moderation)],
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
            chat=ChatService(build_chat_graph(), context, limiter, metrics, IdempotencyKeys(db), fine_tuning),
            embeddings=embeddings,
            knowledge=knowledge,
            files=files,
            vector_stores=vector_stores,
            knowledge_base=KnowledgeBase(
                files,
                vector_stores,
                knowledge,
                embeddings.embeddings,
                chunk_size=settings.chunk_size,
                chunk_overlap=settings.chunk_overlap,
            ),
            feedback=FeedbackStore(db),
            safety=safety,
            langsmith_feedback=LangSmithFeedback(),
            images=ImageService(
                build_image_graph(),
                image_context,
                store,
                limiter,
                metrics,
                guard_mode=settings.guard_mode,
                moderation_mode=settings.moderation_mode,
            ),
            image_store=image_store,
            image_urls=image_urls,
            fine_tuning=fine_tuning,
            processes=ProcessRegistry(db),
            redis=redis,
        )

    async def open(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.db.upgrade_schema()
        if self.settings.admin_key is not None:
            await self.ensure_admin_key(self.settings.admin_key.get_secret_value())

    async def warm_up(self) -> None:
        """What a serving process loads ahead of its first request (not the CLI): Presidio, when PII is redacted."""
        if self.settings.pii_policy or any(app.pii_policy for app in await self.tenants.list_apps()):
            self.safety.warm_up()  # the first redacted answer need not wait for Presidio to load
        self.images.warm_up()  # local image pipelines load in the background

    async def ensure_admin_key(self, secret: str) -> None:
        """Register the configured admin key (idempotent; two workers may race, one wins)."""
        if await self.tenants.authenticate(secret) is None:
            try:
                await self.tenants.create_key(None, is_admin=True, name="settings", secret=secret)
            except Conflict:
                pass

    async def close(self) -> None:
        await self.chat.drain()
        await self.processes.stop()
        await self.images.aclose()
        await self.image_store.objects.aclose()
        await self.knowledge_base.close()
        await self.knowledge.close()
        await self.embeddings.aclose()
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
                for upstream in chat.upstreams:  # a route's deployments are checked one by one when it has several
                    name = f"model:{chat.route.name}" + (
                        f" deployment:{upstream.name}" if len(chat.upstreams) > 1 else ""
                    )
                    checks[name] = _probe_model(
                        client, upstream.deployment.base_url, upstream.deployment.resolve_api_key()
                    )
            for image in self.images.models:
                if image.route.base_url:  # a server of OpenAI's Images API; a local pipeline loads when used
                    checks[f"model:{image.name}"] = _probe_model(
                        client, image.route.base_url, image.route.resolve_api_key()
                    )
            if self.settings.chroma_url:  # a Chroma server (the embedded store is this process's own)
                checks["chroma"] = _probe_chroma(client, self.settings.chroma_url)
            if self.settings.image_store_url:  # the bucket (a directory in the data dir needs no check)
                checks["image_store"] = self.image_store.objects.check()
            results = await asyncio.gather(*checks.values(), return_exceptions=True)
        return {
            name: "ok" if not isinstance(result, BaseException) else f"{type(result).__name__}: {result}"[:200]
            for name, result in zip(checks, results)
        }


def image_objects(settings: Settings) -> ObjectStore:
    """Where generated images are kept: the bucket of ``GENAI_IMAGE_STORE_URL``, else ``<data dir>/images``."""
    if not settings.image_store_url:
        return DiskObjectStore(settings.data_dir / "images")
    bucket, prefix = parse_s3_url(settings.image_store_url)
    access_key_id, secret_access_key = settings.s3_credentials()
    return S3ObjectStore(
        bucket,
        prefix,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        addressing_style=settings.s3_addressing_style,
        connect_timeout=settings.s3_connect_timeout_seconds,
        read_timeout=settings.s3_read_timeout_seconds,
        max_attempts=settings.s3_max_attempts,
    )


async def _probe_chroma(client: httpx.AsyncClient, url: str) -> None:
    (await client.get(f"{url.rstrip('/')}{CHROMA_HEARTBEAT_PATH}")).raise_for_status()


async def _probe_model(client: httpx.AsyncClient, base_url: str, api_key: str) -> None:
    response = await client.get(f"{base_url.rstrip('/')}/models", headers={"Authorization": f"Bearer {api_key}"})
    response.raise_for_status()
