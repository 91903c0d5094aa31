"""The chat completions request, every field of OpenAI's, and what the platform does with each.

A field is implemented by the platform, forwarded to the model route (when the route takes it: see
``chains.route_features``), or refused with a 400 that names it. Fields OpenAI does not define are refused
too, except the platform's own extensions and a route's allow-listed provider parameters (``top_k``, ...).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from langchain_core.messages import BaseMessage, convert_to_messages
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator

from chains.route_features import FORWARDED_FIELDS


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Part):
    # Extra keys (e.g. Anthropic-style `cache_control`, which LangChain keeps) travel with the part.
    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: StrictStr


class ImageURL(_Part):
    url: StrictStr = Field(min_length=1, description="an http(s) URL or a data: URL")
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Part):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Part):
    data: StrictStr
    format: Literal["wav", "mp3"]


class AudioPart(_Part):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileRef(_Part):
    file_data: StrictStr | None = None
    file_id: StrictStr | None = None
    filename: StrictStr | None = None


class FilePart(_Part):
    type: Literal["file"]
    file: FileRef


class RefusalPart(_Part):
    type: Literal["refusal"]
    refusal: StrictStr


UserPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


class FunctionCall(_Part):
    name: StrictStr = Field(min_length=1)
    arguments: StrictStr = Field(description="a JSON object's text, as the model wrote it")

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, arguments: str) -> str:
        try:
            parsed = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            raise ValueError("must be the text of a JSON object") from None
        if not isinstance(parsed, dict):
            raise ValueError("must be the text of a JSON object")
        return arguments


class ToolCall(_Part):
    id: StrictStr = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Part):
    role: Literal["system", "developer"]
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None


class UserMessage(_Part):
    role: Literal["user"]
    content: StrictStr | list[UserPart]
    name: StrictStr | None = None


class AssistantMessage(_Part):
    role: Literal["assistant"]
    content: StrictStr | list[AssistantPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: StrictStr | None = None


class ToolMessage(_Part):
    role: Literal["tool"]
    content: StrictStr | list[TextPart]
    tool_call_id: StrictStr = Field(min_length=1)


Message = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]


class StreamOptions(_Part):
    include_usage: StrictBool = False
    include_obfuscation: StrictBool | None = None


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completions request. Unknown fields are kept for the route's check (``extra_params``)."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = Field(None, description="a route name from /v1/models; the default route when omitted")
    messages: list[Message] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=128, description="choices to generate, on routes that can (feature `n`)")
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # Forwarded to the route (when it takes them):
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: StrictStr | list[StrictStr] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    user: StrictStr | None = Field(None, max_length=256, description="your end user: recorded, and forwarded")
    tools: list[dict[str, Any]] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: dict[str, Any] | None = None
    metadata: dict[str, StrictStr] | None = Field(None, max_length=16)
    store: StrictBool | None = Field(
        None, description="true: the platform keeps the request's messages and answer for feedback and evaluations"
    )
    service_tier: StrictStr | None = None
    reasoning_effort: StrictStr | None = None
    verbosity: StrictStr | None = None
    prompt_cache_key: StrictStr | None = None
    safety_identifier: StrictStr | None = None
    prediction: dict[str, Any] | None = None
    modalities: list[StrictStr] | None = None
    audio: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    # Extensions of the platform:
    conversation_id: StrictStr | None = Field(
        None, min_length=1, max_length=64, description='server-side memory: an id, or "new" to start one'
    )
    vector_store_ids: list[Annotated[StrictStr, Field(min_length=1, max_length=64)]] | None = Field(
        None,
        max_length=8,
        description="ground the answer in these vector stores (the app's default store when omitted; [] for none)",
    )
    cache: StrictBool | None = Field(None, description="false: neither answered from the semantic cache nor stored")

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value

    @field_validator("response_format")
    @classmethod
    def _known_response_format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        kind = value.get("type")
        if kind not in ("text", "json_object", "json_schema"):
            raise ValueError("type must be text, json_object or json_schema")
        if kind == "json_schema" and not isinstance((value.get("json_schema") or {}).get("schema", {}), dict):
            raise ValueError("json_schema.schema must be a JSON schema object")
        if kind == "json_schema" and not isinstance(value.get("json_schema"), dict):
            raise ValueError("json_schema must be an object with a name and a schema")
        return value

    @field_validator("tools")
    @classmethod
    def _function_tools(cls, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for tool in tools or []:
            function = tool.get("function")
            if tool.get("type") != "function" or not isinstance(function, dict) or not function.get("name"):
                raise ValueError('each tool must be {"type": "function", "function": {"name": ..., "parameters": ...}}')
        return tools

    def lc_messages(self) -> list[BaseMessage]:
        """The messages as LangChain's (tool calls parsed, content parts kept as OpenAI sends them)."""
        dicts = [message.model_dump(exclude_none=True) for message in self.messages]
        for message in dicts:
            message.setdefault("content", "")  # an assistant message with tool calls may have none
        return convert_to_messages(dicts)

    def params(self) -> dict[str, Any]:
        """What the route gets: every set field it may forward (by OpenAI's name), ``max_tokens``, provider extras."""
        fields = self.model_dump(include=set(FORWARDED_FIELDS), exclude_none=True)
        if isinstance(fields.get("stop"), str):
            fields["stop"] = [fields["stop"]]
        if (self.response_format or {}).get("type") == "text":
            fields.pop("response_format")
        max_tokens = self.max_completion_tokens or self.max_tokens
        if max_tokens is not None:
            fields["max_tokens"] = max_tokens
        if self.n != 1:
            fields["n"] = self.n
        return {**fields, **(self.model_extra or {})}
