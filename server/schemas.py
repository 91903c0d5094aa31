"""Request bodies of the OpenAI-compatible routes, validated as strictly as OpenAI does."""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator


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
