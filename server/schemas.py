"""Request bodies of the OpenAI-compatible routes, validated as strictly as OpenAI does, and every JSON response."""

from __future__ import annotations

from typing import Any, Generic, Literal, Self, TypeVar

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from storage.usage_reports import GroupBy


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def to_message(self) -> BaseMessage:
        if self.role in ("system", "developer"):
            return SystemMessage(content=self.text())
        if self.role == "user":
            return HumanMessage(content=self.text())
        return AIMessage(content=self.text())


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(None, description="a route name from /v1/models; the default route when omitted")
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stop: StrictStr | list[StrictStr] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = Field(None, max_length=256)
    conversation_id: StrictStr | None = Field(
        None, min_length=1, max_length=64, description='server-side memory: an id, or "new" to start one'
    )

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value

    def generation_params(self) -> dict[str, Any]:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        return {
            "max_tokens": self.max_completion_tokens or self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": stop,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "seed": self.seed,
        }


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
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length", "content_filter", "tool_calls"]


class ChatCompletion(BaseModel):
    id: str = Field(description="the response id; also the LangSmith run id, and what feedback refers to")
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: Usage
    conversation_id: str | None = Field(None, description="present when the request used server-side memory")


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


class ConversationWithMessages(Conversation):
    messages: list[ConversationAssistantMessage | ConversationMessage] = Field(description="oldest first")


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
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(description='each dependency (database, redis, model:<route>): "ok" or why not')
