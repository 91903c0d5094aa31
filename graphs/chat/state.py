"""The chat graph's state: what a caller may send (``ChatInput``), and what the nodes add (``ChatState``)."""

from __future__ import annotations

from typing import Any, TypedDict

from langchain_core.messages import AIMessage, BaseMessage


class ChatInput(TypedDict, total=False):
    """What the outside sends: the new messages and how to answer them."""

    messages: list[BaseMessage]
    model: str | None
    # An existing conversation's id, "new" to start one, or None for a stateless call.
    conversation_id: str | None
    # OpenAI's generation parameters (temperature, max_tokens, stop, ...); None means unset.
    params: dict[str, Any]
    stream: bool
    response_id: str
    user: str | None
    started_at: float
    # The calling app: its data scope, its default system prompt and the routes it may use.
    app_id: str
    key_prefix: str | None
    app_system_prompt: str | None
    allowed_models: list[str] | None
    # Knowledge: the stores the request names (None: the app's default store, if it has one).
    vector_store_ids: list[str] | None
    app_default_store: str | None
    # The semantic cache may answer (False: the request, or its app, turned it off).
    use_cache: bool
    # Keep a stateless request's messages and answer (OpenAI's ``store``), for feedback exports and evaluations.
    store: bool
    # Safety, as the app (or the deployment) set it: the input guard's and the answer moderation's mode ("off",
    # "flag" or "block"), the PII redaction policy of answers (None: off).
    guard_mode: str
    moderation_mode: str
    pii_policy: dict[str, Any] | None
    # The request's idempotency key (storage.idempotency): its reply is stored with the turn.
    idempotency_key: str | None


class ChatState(ChatInput, total=False):
    model_name: str
    created_conversation: bool
    system: list[BaseMessage]
    history: list[BaseMessage]
    prompt: list[BaseMessage]
    prompt_tokens: int
    # The stores searched, with their content versions; the question as asked, and its embedding once made.
    stores: dict[str, int]
    question: str | None
    question_vector: list[float] | None
    # The cache: "lookup" (it applies: preprocess decided), then "hit" or "miss" (not found: the answer will be
    # stored); "off" when it does not apply or failed. The lookup's scope.
    cache: str
    cache_tier: str  # of a hit: "exact" or "semantic"
    cache_scope: str | None
    # The knowledge chunks the answer is grounded in ({"file_id", "filename", "chunk", "score", "quote"}).
    citations: list[dict[str, Any]]
    # What the safety checks found: {"input", "context", "redactions", "moderation"} (see graphs.chat.safety).
    safety: dict[str, Any]
    # The answer as the client saw it: the model's text after the output stage (its finish reason and logprobs in
    # response_metadata). The first choice, the one a conversation keeps; the others of ``n`` in ``more_answers``.
    answer: AIMessage
    more_answers: list[AIMessage]
    completion_tokens: int
    # The deployment of the route (``model_name``) that answered; when the turn was stored (unix seconds).
    deployment: str
    created: int
    cost: float
    finish_reason: str
    latency_ms: float
