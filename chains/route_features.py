"""What a model route can do and which OpenAI request fields it takes: defaults by provider kind, overridable per
route in its configuration (``features``).

A request that needs something its route lacks is refused before any model call with a 400
``unsupported_parameter`` naming the field and the route: a field is never forwarded to a server that would
silently ignore it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from errors import InvalidRequest

Provider = Literal["openai", "vllm", "llama.cpp", "ollama", "openai-compatible"]

# Request fields of OpenAI's chat completions that the platform forwards to the route when the route takes them.
# (model, messages, stream, stream_options, n and max_tokens are the platform's own; see server/chat_request.py.)
SAMPLING_FIELDS = frozenset({"temperature", "top_p", "stop", "presence_penalty", "frequency_penalty", "seed"})
COMMON_FIELDS = SAMPLING_FIELDS | {"user", "logit_bias", "logprobs", "top_logprobs"}
TOOL_FIELDS = frozenset({"tools", "tool_choice", "parallel_tool_calls"})
OPENAI_ONLY_FIELDS = frozenset(
    {
        "metadata", "service_tier", "reasoning_effort", "verbosity", "prompt_cache_key",
        "safety_identifier", "prediction", "modalities", "audio", "web_search_options",
    }
)  # fmt: skip
FORWARDED_FIELDS = COMMON_FIELDS | TOOL_FIELDS | OPENAI_ONLY_FIELDS | {"response_format"}
# OpenAI's deprecated function-calling fields, and what replaces them.
DEPRECATED_FIELDS = {"functions": "tools", "function_call": "tool_choice"}
# Parameters the platform itself applies (max_tokens capped by the route, n checked against its feature) before it
# forwards them.
PLATFORM_FIELDS = frozenset({"max_tokens", "n"})


class RouteFeatures(BaseModel):
    """A route's features; each unset one takes its provider's default (``defaults_for``)."""

    model_config = ConfigDict(extra="forbid")

    tools: bool | None = Field(None, description="function tools (tools, tool_choice, tool messages)")
    json_object: bool | None = Field(None, description='response_format {"type": "json_object"}')
    json_schema: bool | None = Field(None, description='response_format {"type": "json_schema"}')
    vision: bool | None = Field(None, description="image_url content parts")
    files: bool | None = Field(None, description="file content parts")
    audio: bool | None = Field(None, description="input_audio content parts and audio output")
    logprobs: bool | None = Field(None, description="logprobs and top_logprobs")
    n: bool | None = Field(None, description="several choices per request (n > 1)")
    named_tool_choice_only: bool | None = Field(
        None,
        description='forces only a named tool: "required" becomes the named form with one tool, is refused with '
        "more; such a route makes one call per answer, so parallel_tool_calls false holds without forwarding it",
    )
    fields: list[str] | None = Field(None, description="the OpenAI request fields the route takes")
    extra_params: list[str] | None = Field(
        None, description="provider-specific body fields a request may send through (e.g. top_k, min_p)"
    )


@dataclass(frozen=True)
class Features:
    """A route's resolved features."""

    tools: bool
    json_object: bool
    json_schema: bool
    vision: bool
    files: bool
    audio: bool
    logprobs: bool
    n: bool
    named_tool_choice_only: bool
    fields: frozenset[str]
    extra_params: frozenset[str]

    def public(self) -> dict[str, Any]:
        """As shown by ``GET /v1/models/{id}``."""
        return {
            "tools": self.tools,
            "json_object": self.json_object,
            "json_schema": self.json_schema,
            "vision": self.vision,
            "files": self.files,
            "audio": self.audio,
            "logprobs": self.logprobs,
            "n": self.n,
            "named_tool_choice_only": self.named_tool_choice_only,
            "extra_params": sorted(self.extra_params),
        }


_DEFAULTS: dict[str, dict[str, Any]] = {
    "openai": dict(
        tools=True, json_object=True, json_schema=True, vision=True, files=True, audio=True, logprobs=True, n=True,
        named_tool_choice_only=False, fields=FORWARDED_FIELDS, extra_params=(),
    ),
    "vllm": dict(
        tools=True, json_object=True, json_schema=True, vision=False, files=False, audio=False, logprobs=True, n=True,
        named_tool_choice_only=False, fields=COMMON_FIELDS | TOOL_FIELDS | {"response_format"},
        extra_params=("top_k", "min_p", "repetition_penalty"),
    ),
    # llama-cpp-python's server: tool calls when tool_choice names a function (grammar-constrained); JSON schema
    # as its own {"type": "json_object", "schema": ...}.
    "llama.cpp": dict(
        tools=True, json_object=True, json_schema=True, vision=False, files=False, audio=False, logprobs=True, n=False,
        named_tool_choice_only=True, fields=COMMON_FIELDS | {"tools", "tool_choice", "response_format"},
        extra_params=("top_k", "min_p", "repeat_penalty"),
    ),
    "ollama": dict(
        tools=True, json_object=True, json_schema=True, vision=False, files=False, audio=False, logprobs=False, n=False,
        named_tool_choice_only=False, fields=SAMPLING_FIELDS | {"user", "tools", "tool_choice", "response_format"}, extra_params=(),
    ),
    "openai-compatible": dict(
        tools=True, json_object=True, json_schema=True, vision=False, files=False, audio=False, logprobs=True, n=False,
        named_tool_choice_only=False, fields=COMMON_FIELDS | TOOL_FIELDS | {"response_format"}, extra_params=(),
    ),
}  # fmt: skip


def resolve(provider: Provider, configured: RouteFeatures) -> Features:
    values = dict(_DEFAULTS[provider])
    values.update(configured.model_dump(exclude_none=True))
    values["fields"] = frozenset(values["fields"])
    values["extra_params"] = frozenset(values["extra_params"])
    return Features(**values)


def content_kinds(messages: Iterable[Any]) -> list[tuple[str, str]]:
    """(param path, part type) of each content part that is not text, in LangChain messages holding OpenAI's
    content parts: what the route must support."""
    return [
        (f"messages[{i}].content[{j}]", part.get("type", ""))
        for i, message in enumerate(messages)
        if isinstance(message.content, list)
        for j, part in enumerate(message.content)
        if isinstance(part, dict) and part.get("type") not in ("text", "refusal")
    ]


def check_request(
    route_name: str, features: Features, params: Mapping[str, Any], content_kinds: Iterable[tuple[str, str]]
) -> None:
    """Refuse, naming the field and the route, what ``route_name`` cannot take. ``params`` are the request's set
    fields by OpenAI name (and extras by their own); ``content_kinds`` (param path, part type) for each content
    part of a message that is not text."""

    def refuse(param: str, what: str) -> None:
        raise InvalidRequest(
            f"The model `{route_name}` does not support {what}: remove `{param}`, or use a model that supports it.",
            param=param,
            code="unsupported_parameter",
        )

    for name in params:
        if name in PLATFORM_FIELDS:
            continue
        if name in DEPRECATED_FIELDS:
            raise InvalidRequest(
                f"`{name}` is deprecated: use `{DEPRECATED_FIELDS[name]}`.", param=name, code="unsupported_parameter"
            )
        if name == "parallel_tool_calls" and params[name] is False and features.named_tool_choice_only:
            continue  # one call per answer: what false asks for, without forwarding it
        if name in FORWARDED_FIELDS and name not in features.fields:
            refuse(name, f"the parameter `{name}`")
        if name not in FORWARDED_FIELDS and name not in features.extra_params:
            takes = ", ".join(f"`{extra}`" for extra in sorted(features.extra_params)) or "none"
            raise InvalidRequest(
                f"Unrecognized request argument supplied: `{name}`. It is no OpenAI parameter, and not one of the "
                f"provider-specific parameters the model `{route_name}` takes ({takes}).",
                param=name,
                code="unsupported_parameter",
            )
    if not features.tools and (TOOL_FIELDS & params.keys()):
        refuse(next(iter(sorted(TOOL_FIELDS & params.keys()))), "tools")
    if (
        features.named_tool_choice_only
        and params.get("tool_choice") == "required"
        and len(params.get("tools") or []) != 1
    ):
        refuse("tool_choice", 'tool_choice "required" with more than one tool (it can force a named tool only)')
    if (params.get("n") or 1) > 1 and not features.n:
        refuse("n", "several choices per request (n > 1)")
    if not features.logprobs and ({"logprobs", "top_logprobs"} & params.keys()):
        refuse("logprobs", "logprobs")
    kind = (params.get("response_format") or {}).get("type")
    if kind == "json_object" and not features.json_object:
        refuse("response_format", "JSON mode (response_format json_object)")
    if kind == "json_schema" and not features.json_schema:
        refuse("response_format", "structured output (response_format json_schema)")
    needs = {
        "image_url": ("vision", "image inputs"),
        "file": ("files", "file inputs"),
        "input_audio": ("audio", "audio inputs"),
    }
    for param, part_type in content_kinds:
        feature, what = needs.get(part_type, (None, None))
        if feature is not None and not getattr(features, feature):
            refuse(param, what)
