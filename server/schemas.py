"""Request bodies of the platform's own routes, and every JSON response (the chat request is in chat_request.py)."""

from __future__ import annotations

from typing import Any, Generic, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from storage.usage_reports import GroupBy


class ConversationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: StrictStr | None = Field(None, max_length=256)
    user: StrictStr | None = Field(None, max_length=256)
    metadata: dict[str, StrictStr] | None = Field(None, max_length=16)


# ---------------------------------------------------------------- responses (documented in /openapi.json)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = Field(None, description="the tools the model called, in OpenAI's shape")


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: Literal["stop", "length", "content_filter", "tool_calls"]


class Citation(BaseModel):
    """A knowledge chunk an answer was grounded in: ``[n]`` in the answer refers to the n-th citation."""

    file_id: str
    filename: str
    chunk: int = Field(description="the chunk's number in the file, from 0")
    score: float = Field(description="the chunk's relevance to the question, from 0 to 1 (cosine similarity)")
    quote: str = Field(description="the chunk's text")


class InputVerdict(BaseModel):
    flagged: bool
    score: float = Field(description="0 to 1: how much the request looks like a prompt injection or jailbreak")
    categories: list[str] = Field(description="instruction_override, system_prompt_request, role_play, ...")
    matches: list[str] = Field(default_factory=list, description="short excerpts that gave it away")
    detector: str
    action: Literal["allowed", "flagged", "blocked"]


class ContextVerdict(BaseModel):
    screened: int = Field(description="retrieved passages screened for indirect injections")
    flagged: int
    dropped: int = Field(description="flagged passages left out of the prompt (mode block)")


class ModerationVerdict(BaseModel):
    flagged: bool
    categories: list[str] = Field(description="OpenAI's moderation categories the answer was flagged for")
    checker: str
    action: Literal["allowed", "flagged", "blocked"]


class Safety(BaseModel):
    """What the platform's safety checks found; a check that did not run is absent."""

    input: InputVerdict | None = None
    context: ContextVerdict | None = None
    redactions: dict[str, int] | None = Field(None, description="PII entities redacted from the answer, by type")
    moderation: ModerationVerdict | None = None


class ChatCompletion(BaseModel):
    id: str = Field(description="the response id; also the LangSmith run id, and what feedback refers to")
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: Usage
    conversation_id: str | None = Field(None, description="present when the request used server-side memory")
    citations: list[Citation] | None = Field(None, description="present when the answer was grounded in vector stores")
    safety: Safety | None = Field(None, description="present when a safety check ran: what it found")


class ResponseBody(BaseModel):
    """A response that always sends every field, defaults included: the schema lists them all as required."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    @classmethod
    def of_row(cls, row: Any, **fields: Any) -> Self:
        """The body of a database row: each required field not in ``fields`` is the row's attribute of that name."""
        required = (name for name, info in cls.model_fields.items() if info.is_required() and name not in fields)
        return cls(**{name: getattr(row, name) for name in required}, **fields)


Item = TypeVar("Item", bound=BaseModel)


class ObjectList(ResponseBody, Generic[Item]):
    """OpenAI's list shape."""

    object: Literal["list"] = "list"
    data: list[Item]


class Model(ResponseBody):
    """A model route, in OpenAI's ``model`` shape."""

    id: str = Field(description="the route name: what `model` names in a chat request")
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    provider: str = Field(description="what serves it: openai, vllm, llama.cpp, ollama or openai-compatible")
    context_window: int = Field(description="tokens of prompt and answer together")
    max_output_tokens: int = Field(description="the most `max_tokens` a request gets")
    features: dict[str, Any] = Field(
        description="tools, json_object, json_schema, vision, files, audio, logprobs (true or false), and the "
        "provider-specific `extra_params` a request may send"
    )


class ModelList(ObjectList[Model]):
    pass


class Conversation(ResponseBody):
    id: str
    object: Literal["conversation"] = "conversation"
    created_at: int
    updated_at: int = Field(description="when the last turn was added")
    title: str | None = Field(description="as created; a chat request's conversation takes its first user message")
    user: str | None = Field(description="the end user the conversation belongs to, when it has one")
    metadata: dict[str, str]


class ConversationList(ObjectList[Conversation]):
    data: list[Conversation] = Field(description="newest first")
    first_id: str | None = Field(description="the first conversation's id; null when `data` is empty")
    last_id: str | None = Field(description="the last conversation's id: pass it as `after` for the next page")
    has_more: bool


class ConversationMessage(ResponseBody):
    """A message the client sent."""

    id: str = Field(description='"msg_" and a number')
    object: Literal["conversation.message"] = "conversation.message"
    created_at: int
    role: str
    content: str


class MessageUsage(ResponseBody):
    prompt_tokens: int | None = Field(description="null for an assistant message the client sent")
    completion_tokens: int | None = Field(description="null for an assistant message the client sent")
    total_tokens: int


class ConversationAssistantMessage(ConversationMessage):
    """An assistant message, with the response it came from; its fields are null when the client sent it."""

    role: Literal["assistant"] = "assistant"
    response_id: str | None = Field(description="the chat completion's id")
    model: str | None = Field(description="the model route that answered")
    finish_reason: str | None
    usage: MessageUsage
    latency_ms: float | None
    tool_calls: list[dict[str, Any]] | None = Field(
        description='the tools it called, in OpenAI\'s shape ({"id", "type", "function": {"name", "arguments"}})'
    )
    citations: list[Citation] | None = Field(description="the knowledge chunks the answer was grounded in")
    safety: Safety | None = Field(description="what the safety checks found")


class ConversationToolMessage(ConversationMessage):
    """A tool's result, answering one of the assistant's tool calls."""

    role: Literal["tool"] = "tool"
    tool_call_id: str | None = Field(description="the tool call it answers")


class ConversationWithMessages(Conversation):
    messages: list[ConversationAssistantMessage | ConversationToolMessage | ConversationMessage] = Field(
        description="oldest first"
    )


class ConversationDeleted(ResponseBody):
    id: str
    object: Literal["conversation.deleted"] = "conversation.deleted"
    deleted: bool = True


class UsageGroup(ResponseBody):
    group: str | None = Field(description="the day (YYYY-MM-DD, UTC), model route, key prefix or app id")
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_requests: int
    failed_requests: int
    images: int = Field(description="images generated (POST /v1/images/generations)")
    cost: float = Field(description="the sum of the requests' costs at their routes' prices (failures cost 0)")
    flagged_requests: int = Field(description="requests a safety check flagged (input guard, moderation)")
    blocked_requests: int = Field(description="requests refused or answers withheld by a safety check")
    redacted_requests: int = Field(description="answers that had PII redacted (and nothing flagged)")


class UsageReport(ResponseBody):
    object: Literal["list"] = "list"
    group_by: GroupBy
    start: int = Field(description="unix seconds, included")
    end: int = Field(description="unix seconds, excluded")
    data: list[UsageGroup]


class App(ResponseBody):
    """A client app: a tenant with its own keys, limits, defaults and data."""

    id: str
    object: Literal["app"] = "app"
    name: str
    system_prompt: str | None = Field(description="used when a request has no system message")
    allowed_models: list[str] | None = Field(description="route names; null for every route")
    rpm: int | None = Field(description="default requests per minute for the app's keys")
    tpm: int | None = Field(description="default tokens per minute for the app's keys")
    monthly_budget: float | None = Field(
        description="spending limit per calendar month (UTC), shared by all the app's keys; null for none"
    )
    cache_enabled: bool = Field(description="whether the semantic cache may answer the app's requests")
    default_vector_store_id: str | None = Field(description="the store that grounds requests naming none")
    guard_mode: str | None = Field(description="input guard: off, flag or block; null for the deployment's default")
    moderation_mode: str | None = Field(description="answer moderation: off, flag or block; null for the default")
    pii_policy: dict[str, Any] | None = Field(description="PII redaction of answers; null for the default (off)")
    cors_origins: list[str] | None = Field(
        description="browser origins whose pages may call with the app's keys (CORS), besides the platform-wide "
        "GENAI_CORS_ORIGINS; null for none of its own"
    )
    default_model: str | None = Field(
        description="the chat model of requests that name none (set by `genai models promote`); null for the "
        "platform's default"
    )
    created_at: int


class AppList(ObjectList[App]):
    pass


class ApiKey(ResponseBody):
    id: str
    object: Literal["api_key"] = "api_key"
    prefix: str = Field(description="the secret's first characters: they identify the key in lists and logs")
    name: str | None
    app: str | None = Field(description="the app's name; null for admin keys")
    admin: bool
    rpm: int | None = Field(description="requests per minute; the app's default when null")
    tpm: int | None = Field(description="tokens per minute; the app's default when null")
    monthly_budget: float | None = Field(
        description="the key's own spending limit per calendar month (UTC), checked besides its app's; null for none"
    )
    created_at: int
    expires_at: int | None
    revoked_at: int | None


class ApiKeyCreated(ApiKey):
    key: str = Field(description="the secret, returned this once: only its hash is stored")


class ApiKeyList(ObjectList[ApiKey]):
    pass


class Health(ResponseBody):
    status: Literal["ok"] = "ok"


class Readiness(ResponseBody):
    status: Literal["ok", "degraded", "unavailable", "draining"] = Field(
        description="degraded: Redis does not answer, and the platform works on without it; draining: the server "
        "is stopping (SIGTERM) and serves only until its load balancer takes it out"
    )
    checks: dict[str, str] = Field(description='each dependency (database, redis, model:<route>): "ok" or why not')


class FeedbackObject(ResponseBody):
    """A rating of one answer."""

    id: str
    object: Literal["feedback"] = "feedback"
    response_id: str = Field(description="the chat completion rated")
    score: float = Field(description="1 or -1 (thumbs), or a number from 0 to 1")
    comment: str | None
    correction: str | None = Field(description="the answer it should have been")
    model: str | None = Field(description="the model route that answered")
    user: str | None = Field(description="the end user the answer was for")
    created_at: int
    updated_at: int = Field(description="when it was last rated")


class FeedbackList(ObjectList[FeedbackObject]):
    data: list[FeedbackObject] = Field(description="newest first")
