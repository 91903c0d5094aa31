"""Tables: client apps and their API keys; conversations, their messages, and a usage record per request.

Every stored thing carries the ``app_id`` it belongs to; queries filter on it.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint, text, true
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def now() -> int:
    return int(time.time())


class Base(DeclarativeBase):
    pass


class App(Base):
    """A client app: a tenant with its own keys, limits, defaults and data."""

    __tablename__ = "apps"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    system_prompt: Mapped[str | None] = mapped_column(Text)
    # Model route names the app may use; None means every configured route.
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON)
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    # Spending limit per calendar month (UTC) in currency units, shared by all the app's keys; None: no limit.
    monthly_budget: Mapped[float | None] = mapped_column(Float)
    # The vector store a chat request searches when it names none (migration 0004).
    default_vector_store_id: Mapped[str | None] = mapped_column(String(64))
    # False turns the semantic cache off for all the app's requests.
    cache_enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Safety (migration 0006): the input guard's and the answer moderation's mode ("off", "flag" or "block"; None:
    # the deployment's default), and the PII redaction of answers ({"entities": [...], "action": ...}; None: off).
    guard_mode: Mapped[str | None] = mapped_column(String(8))
    moderation_mode: Mapped[str | None] = mapped_column(String(8))
    pii_policy: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Browser origins (``https://app.example.com``) whose pages may call the platform with this app's keys
    # (migration 0008); None: only the deployment's GENAI_CORS_ORIGINS.
    cors_origins: Mapped[list[str] | None] = mapped_column(JSON)
    # The chat model a request that names none is answered by (migration 0009; None: the deployment's default),
    # e.g. a tuned model promoted by `genai models promote`.
    default_model: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class ApiKey(Base):
    """An API key, stored only as a hash; ``prefix`` identifies it in lists and logs."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    name: Mapped[str | None] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    # The key's own monthly budget, checked in addition to its app's; None: only the app's applies.
    monthly_budget: Mapped[float | None] = mapped_column(Float)
    expires_at: Mapped[int | None] = mapped_column(Integer)
    revoked_at: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_id: Mapped[str] = mapped_column(String(64), index=True)
    title: Mapped[str | None] = mapped_column(String(256))
    user: Mapped[str | None] = mapped_column(String(256), index=True)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[int] = mapped_column(Integer, default=now, index=True)
    updated_at: Mapped[int] = mapped_column(Integer, default=now)
    # Kept by the turn's write (storage/transcripts.py), so that it learns the count without a COUNT query.
    message_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    response_id: Mapped[str | None] = mapped_column(String(64), index=True)
    model: Mapped[str | None] = mapped_column(String(128))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    # An assistant's tool calls ([{"name", "args", "id"}]) and the call a tool message answers (migration 0003).
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    tool_call_id: Mapped[str | None] = mapped_column(String(128))
    # The knowledge chunks an answer was grounded in ([{"file_id", "filename", "chunk", "score", "quote"}]).
    citations: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # What the safety checks found (see graphs.chat.safety): the input verdict, redactions, moderation.
    safety: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class Usage(Base):
    __tablename__ = "usage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now, index=True)
    app_id: Mapped[str] = mapped_column(String(64), index=True)
    key_prefix: Mapped[str | None] = mapped_column(String(32))
    user: Mapped[str | None] = mapped_column(String(256))
    response_id: Mapped[str] = mapped_column(String(64), index=True)
    conversation_id: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(32), default="ok")
    # What the request cost at its route's prices (currency units); 0 for failures and unpriced routes.
    cost: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    # The request's safety verdicts, as on its message (also for requests without a conversation or blocked).
    safety: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The strongest thing a safety check did: "blocked", "flagged" or "redacted" (None: nothing), for reports.
    safety_outcome: Mapped[str | None] = mapped_column(String(16))
    # Which of its route's deployments answered (None: no model call, or it failed before one was chosen).
    deployment: Mapped[str | None] = mapped_column(String(128))
    # Images generated by the request (image requests; 0 for chat), migration 0008.
    images: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class Image(Base):
    """A generated image: its PNG is in the image store (the data dir or an S3 bucket, by ``storage_key``), this row
    says whose it is and how it was made (migration 0008)."""

    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_id: Mapped[str] = mapped_column(String(64), index=True)
    user: Mapped[str | None] = mapped_column(String(256))
    # The request that made it (a usage record's response_id; several images share it when n > 1).
    response_id: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(String(128))
    prompt: Mapped[str] = mapped_column(Text)
    revised_prompt: Mapped[str | None] = mapped_column(Text)
    size: Mapped[str] = mapped_column(String(16))
    # Where the PNG is, relative to the image store's root.
    storage_key: Mapped[str] = mapped_column(String(256))
    bytes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[int] = mapped_column(Integer, default=now, index=True)


class IdempotencyKey(Base):
    """A chat request sent with an ``Idempotency-Key``: claimed while it runs, then the reply the client got, so a
    retry of it is answered with that reply instead of a second turn."""

    __tablename__ = "idempotency_keys"

    app_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # A hash of the request: the same key with another request is refused.
    fingerprint: Mapped[str] = mapped_column(String(64))
    response_id: Mapped[str] = mapped_column(String(64))
    # None while the request runs; the reply (storage.idempotency) once its turn is stored.
    reply: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(Integer, default=now, index=True)
    # The server process running the request while it holds the claim (storage.processes: a dead one's claim is
    # taken over by the next retry); None in rows made before migration 0011.
    owner: Mapped[str | None] = mapped_column(String(32))


class ServerProcess(Base):
    """A server process alive on this database, by its heartbeat (storage.processes)."""

    __tablename__ = "server_processes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)


class StoredCompletion(Base):
    """A stateless request's messages and answer, kept because it asked (``store: true``): feedback exports and
    evaluation datasets need the input of a rated answer (a conversation's turns are in ``messages`` already)."""

    __tablename__ = "stored_completions"

    response_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_id: Mapped[str] = mapped_column(String(64), index=True)
    user: Mapped[str | None] = mapped_column(String(256))
    model: Mapped[str] = mapped_column(String(128))
    # The request's messages as storage.message_records writes them (system messages included).
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    answer: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class File(Base):
    """An uploaded file (OpenAI's file object); its bytes live in the data directory under ``path``."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_id: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(Integer)
    # text, markdown, html or pdf: how its text is extracted.
    kind: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(512))
    # uploaded, processed or error (with status_details saying why).
    status: Mapped[str] = mapped_column(String(16), default="uploaded")
    status_details: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(Integer, default=now, index=True)


class VectorStore(Base):
    """A named knowledge collection of an app; its chunks live in Chroma, one collection per store."""

    __tablename__ = "vector_stores"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str | None] = mapped_column(String(256))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # Bumped on every change of content: keyword indexes and cached answers of older versions are stale.
    content_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[int] = mapped_column(Integer, default=now, index=True)
    last_active_at: Mapped[int | None] = mapped_column(Integer)


class VectorStoreFile(Base):
    """A file attached to a store: ingestion goes in_progress -> completed | failed (``last_error`` says why)."""

    __tablename__ = "vector_store_files"

    vector_store_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("vector_stores.id", ondelete="CASCADE"), primary_key=True
    )
    file_id: Mapped[str] = mapped_column(String(64), ForeignKey("files.id", ondelete="CASCADE"), primary_key=True)
    app_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default="in_progress")
    last_error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    usage_bytes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class Feedback(Base):
    """A rating of one answer by the app that got it (one per answer: a second rating replaces the first)."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("app_id", "response_id", name="uq_feedback_app_response"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_id: Mapped[str] = mapped_column(String(64), index=True)
    response_id: Mapped[str] = mapped_column(String(64))
    # 1 or -1 (thumbs), or a number from 0 to 1.
    score: Mapped[float] = mapped_column(Float)
    comment: Mapped[str | None] = mapped_column(Text)
    correction: Mapped[str | None] = mapped_column(Text)
    # Copied from the answer's usage record, for filters and exports.
    model: Mapped[str | None] = mapped_column(String(128))
    user: Mapped[str | None] = mapped_column(String(256))
    key_prefix: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[int] = mapped_column(Integer, default=now, index=True)
    updated_at: Mapped[int] = mapped_column(Integer, default=now)


class FineTuningJob(Base):
    """A fine-tuning job of an app: validating_files -> queued -> running -> succeeded | failed | cancelled.

    ``genai worker`` runs it; while it runs, the worker renews ``heartbeat_at``, so a job whose worker died is found
    and failed instead of staying ``running`` forever."""

    __tablename__ = "fine_tuning_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_id: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(String(256))  # the base route
    trainer: Mapped[str] = mapped_column(String(16))  # local or openai
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64))
    # As asked ({"n_epochs": 3} or "auto" for each); after the run, what was used.
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(24), index=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # {code, message, param}
    fine_tuned_model: Mapped[str | None] = mapped_column(String(256))
    trained_tokens: Mapped[int | None] = mapped_column(Integer)
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    task_id: Mapped[str | None] = mapped_column(String(64))  # the queue's message id, to revoke a queued job
    worker: Mapped[str | None] = mapped_column(String(256))  # host:pid of the worker running it
    heartbeat_at: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[int] = mapped_column(Integer, default=now, index=True)
    started_at: Mapped[int | None] = mapped_column(Integer)
    finished_at: Mapped[int | None] = mapped_column(Integer)


class FineTuningEvent(Base):
    """A line of a job's progress: a message, or metrics (``data``: step, train_loss, valid_loss, ...)."""

    __tablename__ = "fine_tuning_events"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16), default="message")
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class FineTuningCheckpoint(Base):
    """A checkpoint of a job: its step and metrics (the last one is the tuned model)."""

    __tablename__ = "fine_tuning_checkpoints"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class TunedModel(Base):
    """A model a job made: served as a route of its app only (``ft:<base>:<app>:<suffix>:<id>``)."""

    __tablename__ = "tuned_models"

    id: Mapped[str] = mapped_column(String(256), primary_key=True)
    app_id: Mapped[str] = mapped_column(String(64), index=True)
    base_model: Mapped[str] = mapped_column(String(256))
    job_id: Mapped[str] = mapped_column(String(64))
    trainer: Mapped[str] = mapped_column(String(16))
    upstream_model: Mapped[str] = mapped_column(String(256))  # what the route sends as `model`
    adapter_path: Mapped[str | None] = mapped_column(String(512))  # local: the LoRA adapter (GGUF) llama.cpp serves
    created_at: Mapped[int] = mapped_column(Integer, default=now)
