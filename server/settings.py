"""One settings object for the whole platform (env prefix ``GENAI_``, ``.env`` supported).

With no settings at all the platform runs on embedded defaults: the local
llama.cpp model, SQLite in the data directory, memory in SQL.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from chains.embeddings import EmbeddingRoute
from chains.local_model import LOCAL_MODEL_NAME, local_route
from chains.model_routes import ModelRoute
from server.gateway.cors import check_origins, parse_origins

GuardMode = Literal["off", "flag", "block"]

# The most worker processes genai serve starts by itself (each holds about 200 MiB); set GENAI_WORKERS for more.
MAX_DEFAULT_WORKERS = 8


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GENAI_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="every file the platform writes lives here")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int | None = Field(
        None, ge=1, description="worker processes of genai serve; unset: resolved_workers picks from the cores"
    )
    log_level: str = "info"

    database_url: str | None = Field(None, description="SQLAlchemy async URL; SQLite in data_dir when unset")
    database_pool_size: int = Field(
        10,
        ge=1,
        description="PostgreSQL connections a worker process keeps open for transactions (and half as many for reads)",
    )
    database_max_overflow: int = Field(
        20, ge=0, description="connections each of a worker's two PostgreSQL pools may open beyond that under a burst"
    )
    usage_flush_seconds: float = Field(
        0.2,
        gt=0,
        le=60,
        description="usage records are written in batches at least this often (storage/writer.py); a crash can lose "
        "the last interval's records, a graceful stop none",
    )
    redis_url: str | None = Field(None, description="Redis for conversation memory; SQL memory when unset")
    memory_ttl_seconds: int = Field(7 * 86400, gt=0)
    memory_max_tokens: int = Field(2048, gt=0, description="token budget of the history a model sees")
    memory_max_messages: int = Field(200, gt=0)
    memory_keep_fraction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="once a conversation's history overflows memory_max_tokens (or memory_max_messages), its oldest "
        "turns go in one block, leaving about this fraction: the prompt's prefix then stays the same for some turns "
        "and a model server reuses its cache",
    )

    config_file: Path | None = Field(None, description="YAML file with model_routes and other settings")
    model_routes: list[ModelRoute] = Field(default_factory=list)
    default_model: str | None = None
    system_prompt: str | None = Field(None, description="used when a request has no system message")

    local_model_url: str | None = Field(None, description="base URL of a running local llama.cpp server")
    local_model_path: Path | None = Field(None, description="GGUF path; assembled into data_dir/models when unset")
    local_model_threads: int = Field(2, ge=1)
    local_model_context: int = Field(4096, ge=256)
    local_model_startup_timeout: float = Field(180.0, gt=0)

    startup_wait_seconds: float = Field(
        30.0, ge=0, description="genai serve waits this long for the database and Redis to answer at start"
    )
    drain_seconds: float = Field(
        0.0,
        ge=0,
        description="on SIGTERM, /readyz answers 503 draining and the server goes on serving for this long before it "
        "stops accepting connections: time for a load balancer that follows readiness to take it out "
        "(server/drain.py); behind Kubernetes, whose preStop pause does most of the waiting, a few seconds",
    )
    shutdown_grace_seconds: float = Field(
        10.0,
        ge=0,
        description="on SIGTERM/SIGINT, requests in flight get this long to finish; streams still running a second "
        "before it ends get a 503 server_shutting_down error event (server/shutdown.py)",
    )

    max_body_bytes: int = Field(1024 * 1024, gt=0)
    # Hostile connections (server/gateway/connection_limits.py): what one HTTP connection may hold.
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="request line and headers larger than this get 431 (a longer URL 414)"
    )
    max_headers: int = Field(100, ge=10, description="requests with more header fields get 431")
    header_timeout_seconds: float = Field(
        10.0, gt=0, description="a request's complete headers must arrive within this (408, or closed when idle)"
    )
    body_idle_timeout_seconds: float = Field(
        30.0, gt=0, description="a request body that sends nothing for this long gets 408 and is closed"
    )
    max_connections: int = Field(
        1000, ge=1, description="open connections per worker; a connection above gets 503 service_unavailable"
    )
    admin_key: SecretStr | None = None
    metrics_require_admin: bool = Field(False, description="GET /metrics needs an admin key")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="browser origins allowed to call with any app's key, besides each app's own (server/gateway/"
        "cors.py): a JSON list or comma-separated, e.g. https://app.example.com,http://127.0.0.1:5173; * for all",
    )

    # The knowledge base: files, vector stores, embeddings.
    chroma_url: str | None = Field(None, description="a Chroma server (`chroma run`); embedded in data_dir when unset")
    embedding_route: EmbeddingRoute | None = Field(
        None, description="an OpenAI-compatible embeddings endpoint; the local all-MiniLM-L6-v2 when unset"
    )
    max_file_bytes: int = Field(20 * 1024 * 1024, gt=0, description="largest upload to POST /v1/files")
    chunk_size: int = Field(800, ge=100, le=20_000, description="characters per chunk of an ingested file")
    chunk_overlap: int = Field(120, ge=0, description="characters shared by neighbouring chunks")
    # Read by the chat graph's retrieval: how many chunks a grounded answer sees, and the cosine similarity a chunk
    # needs to count as relevant (0.3 separates related text from noise with all-MiniLM-L6-v2; 0 keeps everything).
    retrieval_top_k: int = Field(5, ge=1, le=50)
    retrieval_min_score: float = Field(0.3, ge=0.0, le=1.0)

    # The semantic cache (graphs/chat/knowledge.py has the rules of what it may answer).
    cache_enabled: bool = Field(True, description="answer repeated and paraphrased questions from the cache")
    cache_similarity_threshold: float = Field(
        0.90, gt=0.0, le=1.0, description="cosine similarity a paraphrase needs (bench/semantic_cache_threshold.py)"
    )
    cache_ttl_seconds: int = Field(86400, gt=0, description="how long a cached answer is served")
    cache_max_temperature: float = Field(
        0.5, ge=0.0, le=2.0, description="requests sampling hotter (unset: the route's default, else 1) bypass it"
    )

    # Safety (graphs/chat/safety.py): each app's modes default to these; an app's own setting wins.
    guard_mode: GuardMode = Field("flag", description="input guard: off, flag (record the verdict) or block (400)")
    guard_classifier_path: Path | None = Field(
        None, description="a local Hugging Face sequence-classification model used besides the guard's rules"
    )
    moderation_mode: GuardMode = Field("flag", description="answer moderation: off, flag or block (content_filter)")
    moderation_url: str | None = Field(
        None, description="an OpenAI-compatible /v1 base URL for moderation; the local checker when unset"
    )
    moderation_model: str = "omni-moderation-latest"
    moderation_api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding its key")
    pii_policy: dict[str, Any] | None = Field(
        None, description='PII redaction of answers for apps without their own: {"entities": [...], "action": ...}'
    )
    pii_spacy_model: str | None = Field(None, description="an installed spaCy model: adds PERSON names to PII")
    pii_hash_salt: SecretStr = Field(
        SecretStr(""), description="salt of the PII `hash` action; share it across replicas"
    )

    # Images (graphs/image.py): image routes are model routes with "serves": "images".
    image_max_prompt_chars: int = Field(4000, ge=1, le=100_000, description="the longest image prompt")
    image_url_secret: SecretStr | None = Field(
        None,
        description="the key that signs image download URLs (HMAC-SHA256); a random one kept in data_dir when unset",
    )
    image_url_ttl_seconds: int = Field(3600, ge=60, description="how long a signed image URL works")
    # Where the PNGs are kept (storage/object_store.py): data_dir/images, or S3-compatible object storage.
    image_store_url: str | None = Field(
        None,
        description="s3://BUCKET/PREFIX: keep generated images in S3-compatible object storage (the [s3] extra); "
        "files under data_dir/images when unset",
    )
    s3_endpoint_url: str | None = Field(
        None, description="the S3 API's URL for MinIO, Ceph, R2, ... (e.g. http://minio:9000); AWS S3 when unset"
    )
    s3_region: str | None = Field(None, description="the bucket's region; AWS_REGION / AWS_DEFAULT_REGION when unset")
    s3_access_key_id_env: str | None = Field(
        None,
        description="environment variable holding the access key id; boto3's own lookup (AWS_ACCESS_KEY_ID, "
        "AWS_PROFILE, instance roles, ...) when unset",
    )
    s3_secret_access_key_env: str | None = Field(
        None, description="environment variable holding the secret access key (set with s3_access_key_id_env)"
    )
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="bucket in the path or in the host name; auto: path with s3_endpoint_url, else boto3's"
    )
    s3_connect_timeout_seconds: float = Field(3.0, gt=0, description="connecting to the S3 endpoint")
    s3_read_timeout_seconds: float = Field(10.0, gt=0, description="waiting for each answer of the S3 endpoint")
    s3_max_attempts: int = Field(3, ge=1, le=10, description="attempts of each S3 call (boto3's standard retries)")
    public_url: str | None = Field(
        None,
        description="the platform's URL as clients reach it (behind a proxy), for the links it hands out; the "
        "request's own URL when unset",
    )

    # Fine-tuning (server/fine_tuning.py, server/worker.py): jobs queued through huey (Redis when redis_url is set,
    # else SQLite in data_dir) and run by `genai worker`.
    start_worker: bool = Field(
        True, description="genai serve starts one `genai worker` for fine-tuning jobs; false when workers run apart"
    )
    worker_poll_seconds: float = Field(1.0, gt=0, le=60, description="the longest an idle worker waits between looks")
    worker_heartbeat_timeout_seconds: float = Field(
        60.0, gt=0, description="a running job whose worker gave no sign for this long is failed (the worker died)"
    )
    fine_tuning_cancel_grace_seconds: float = Field(
        5.0, ge=0, description="after a cancel, a trainer gets this long to stop before its process is killed"
    )
    fine_tuning_poll_seconds: float = Field(
        5.0, gt=0, description="the openai trainer asks the provider for its job's progress this often"
    )
    fine_tuning_max_jobs: int = Field(
        10, ge=1, description="an app's jobs that may be validating, queued or running at once"
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _check_cors_origins(cls, value: Any) -> Any:
        value = parse_origins(value)
        return check_origins(value) if isinstance(value, list) else value

    @model_validator(mode="before")
    @classmethod
    def _merge_config_file(cls, data: Any) -> Any:
        """Values from the YAML file, below those given by environment or arguments."""
        if not isinstance(data, dict):
            return data
        path = data.get("config_file")
        if not path:
            return data
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of settings at the top level")
        return {**loaded, **data}

    @model_validator(mode="after")
    def _distinct_route_names(self) -> Settings:
        names = [route.name for route in self.model_routes]
        if twice := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"model_routes: each route needs a name of its own ({', '.join(twice)} twice)")
        return self

    @model_validator(mode="after")
    def _check_knowledge(self) -> Settings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("chunk_overlap must be smaller than chunk_size")
        if self.chroma_url is not None:
            parts = urlsplit(self.chroma_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    f"chroma_url must be an http(s) URL such as http://127.0.0.1:8001: {self.chroma_url!r}"
                )
        return self

    @model_validator(mode="after")
    def _check_image_store(self) -> Settings:
        if not self.image_store_url:  # unset or empty: the data directory
            return self
        from storage.object_store import parse_s3_url

        try:
            parse_s3_url(self.image_store_url)
        except ValueError as exc:
            raise ValueError(f"image_store_url: {exc}") from None
        if importlib.util.find_spec("boto3") is None:
            raise ValueError("image_store_url: S3 needs boto3: pip install 'genai-platform[s3]'")
        if self.s3_endpoint_url is not None:
            parts = urlsplit(self.s3_endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    f"s3_endpoint_url must be an http(s) URL such as http://minio:9000: {self.s3_endpoint_url!r}"
                )
            if parts.username or parts.password:
                raise ValueError(
                    "s3_endpoint_url takes no credentials: use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or name "
                    "variables with s3_access_key_id_env and s3_secret_access_key_env"
                )
        names = (self.s3_access_key_id_env, self.s3_secret_access_key_env)
        if (names[0] is None) != (names[1] is None):
            raise ValueError("s3_access_key_id_env and s3_secret_access_key_env go together: set both or neither")
        for name in names:
            if name is not None and not os.environ.get(name):
                raise ValueError(f"the environment variable {name} (named by a GENAI_S3_*_ENV setting) is not set")
        return self

    def s3_credentials(self) -> tuple[str | None, str | None]:
        """The access key id and secret from the variables the settings name; (None, None): boto3's own lookup."""
        if self.s3_access_key_id_env is None or self.s3_secret_access_key_env is None:
            return None, None
        return os.environ.get(self.s3_access_key_id_env), os.environ.get(self.s3_secret_access_key_env)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'genai.db'}"

    @property
    def resolved_local_model_path(self) -> Path:
        return self.local_model_path or self.data_dir / "models" / "gemma-3-270m-q4_k_m.gguf"

    @property
    def adapters_dir(self) -> Path:
        """Tuned local models' LoRA adapters: the worker writes them, the embedded llama.cpp server reads them."""
        return self.data_dir / "adapters"

    @property
    def uses_local_model(self) -> bool:
        """True when no chat routes are configured: the embedded llama.cpp model serves chat."""
        return not any(route.serves == "chat" for route in self.model_routes)

    @property
    def resolved_workers(self) -> int:
        """``workers`` when set. Otherwise one per core when Redis is configured (limits, budgets and memory are
        then shared by the workers), leaving out the cores the embedded llama.cpp threads use, at most
        ``MAX_DEFAULT_WORKERS``; one without Redis (each worker would count its own limits)."""
        if self.workers is not None:
            return self.workers
        if not self.redis_url:
            return 1
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if self.uses_local_model and not self.local_model_url:
            cores -= self.local_model_threads
        return max(1, min(cores, MAX_DEFAULT_WORKERS))

    def routes(self) -> list[ModelRoute]:
        """Every route, chat and image; the local model's first when no chat route is configured."""
        if not self.uses_local_model:
            return list(self.model_routes)
        local = local_route(
            base_url=self.local_model_url or "http://127.0.0.1:0/v1",
            gguf_path=str(self.resolved_local_model_path),
            context_window=self.local_model_context,
        )
        return [local, *self.model_routes]

    @property
    def resolved_default_model(self) -> str:
        chat = [route.name for route in self.model_routes if route.serves == "chat"]
        return self.default_model or (chat[0] if chat else LOCAL_MODEL_NAME)
