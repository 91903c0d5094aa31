"""A scripted OpenAI-compatible upstream: deterministic answers over the whole chat completions surface, and a record
of every request body it received.

``serve_scripted_upstream()`` runs it under uvicorn in a thread and yields its base URL (``http://127.0.0.1:P/v1``)
as a ``ScriptedUpstream``: a ``str`` that also carries ``.requests`` (every ``POST /v1/chat/completions`` body, parsed
JSON, or the raw text when it was not JSON, oldest first) and ``.clear()``.

The rules (everything below is a pure function of the request body, so tests can assert exact values):

- Words: ``len(text.split())``. The "text" of a message is its string content, or its ``text`` parts joined by a space.
- ``usage.prompt_tokens`` = the words of the text of every message (tool calls in the history count nothing; nor do
  the tools); ``completion_tokens`` = the words of every
  choice's content plus the words of every tool call's ``arguments``; ``total_tokens`` their sum;
  ``prompt_tokens_details.cached_tokens`` is 0. Usage comes with every plain answer and, when streaming with
  ``stream_options.include_usage``, in a last chunk with ``choices: []``.
- Which answer:
  1. ``tools`` given and ``tool_choice`` forces a function (``{"type": "function", "function": {"name": N}}``): a
     call of N;
  2. ``tools`` given, ``tool_choice`` "required": tool calls; ``tool_choice`` absent or "auto": tool calls unless
     the last message is a ``tool`` message. The tools called are those whose name occurs in the last user message's
     text (in the order of ``tools``; only the first when ``parallel_tool_calls`` is false), else the first tool;
  3. the last message is a ``tool`` message: the text ``"Tool result: " + "; ".join(texts)`` over the tool messages
     after the last assistant message;
  4. ``response_format`` ``json_object``: a JSON object with one key per ``'quoted'`` identifier of the last user
     message, each valued "scripted" (``{"result": "scripted"}`` when there is none); as OpenAI, the messages must
     contain the word "json" (any case);
  5. ``response_format`` ``json_schema``: ``json.dumps(example(schema))`` (below);
  6. otherwise ``"Scripted reply to: " + <the last user message's text>``, followed by `` I saw N image(s).``,
     `` I saw N file(s).``, `` I heard N audio clip(s).`` for its non-text parts.
  A tool call has id ``call_<number of messages>_<i>``, type "function", and ``arguments`` =
  ``json.dumps(example(parameters), ensure_ascii=False)``; ``finish_reason`` "tool_calls", ``content`` null.
- ``example(schema)``: ``const``; the first ``enum`` value; ``$ref``s resolved; ``allOf`` merged; ``anyOf`` /
  ``oneOf`` / a list of types: the first non-null one; object: every property in order; array: ``max(minItems, 1)``
  items (at most ``maxItems``); integer 3 and number 3.5 (moved into ``minimum`` / ``maximum`` and the exclusive
  bounds when outside them); boolean true; null; string: the first ``'quoted'`` span of the last user message, else
  "scripted" (dates and times for ``format`` date, date-time, time; padded to ``minLength``, cut to ``maxLength``);
  a schema with none of these: "scripted".
- Text content is cut at the first of the ``stop`` sequences (``finish_reason`` "stop"), then to ``max_tokens`` /
  ``max_completion_tokens`` words (``finish_reason`` "length").
- ``n`` > 1: n choices; choice i > 0 is choice 0's answer with `` (choice i)`` appended to its text content.
- ``logprobs: true``: ``logprobs.content`` has one entry per token, the tokens being the content split by
  ``\\s*\\S+`` (each word with the whitespace before it); every token's logprob is -0.5, ``bytes`` its UTF-8 bytes,
  ``top_logprobs`` the token itself (-0.5) then ``alt1``, ``alt2``, ... (-1.5, -2.5, ...), ``top_logprobs`` long.
- Streaming: a first chunk with ``{"role": "assistant", "content": ""}`` (``"content": null`` and the tool calls'
  heads for tool calls: index, id, type, name, ``arguments: ""``), then one chunk per token of content (with its
  logprobs) or 8-character fragments of each tool call's arguments (``{"index", "function": {"arguments"}}``), then
  one chunk with the ``finish_reason`` and an empty delta, then the usage chunk when asked, then ``data: [DONE]``.
  Choices stream one after the other.
- ``id`` is ``chatcmpl-scripted-<k>`` (k: 1-based number of the request since the start), ``created`` 1700000000,
  ``model`` the request's, ``system_fingerprint`` "fp_scripted".
- Malformed requests get 400 ``{"error": {"message", "type": "invalid_request_error", "param", "code"}}``: a body
  that is not a JSON object, no ``model``, no or empty ``messages``, an unknown role, a message without content
  (an assistant message may have tool calls instead), a content part its role does not take (as OpenAI: user
  messages take text, image_url, input_audio and file parts; assistant text and refusal; the others text only;
  unknown keys inside a part are ignored), a ``tool`` message without ``tool_call_id`` or answering no tool call of
  the assistant message before it, an assistant message with tool calls not all answered by the tool messages right
  after it, malformed tools or ``tool_choice`` (or one naming an unknown function, or without tools), an unknown
  ``response_format``, ``json_object`` without "json" in the messages, ``n`` / ``max_tokens`` / ``top_logprobs`` out
  of range, ``top_logprobs`` without ``logprobs``, ``stream_options`` without ``stream``, a ``data:`` URL or audio
  that is not base64.
  Unknown top-level fields are accepted (and recorded). Unknown URLs get 404 in the same shape.
- ``GET /v1/models`` lists one model, ``scripted``; any model name is answered.
- Faults, for tests of what the platform does when a stream goes wrong: a ``model`` may carry directives after the
  name, ``name;key=value;...`` (``fault_model(...)`` writes it; a route sends it as its ``model``). They change
  streamed answers only: ``delay=S`` waits S seconds before each chunk after the first; ``fail_after=K`` ends the
  stream after its first K chunks (the opening role chunk is one) the way ``fail`` says: ``error`` (the default: an
  error event ``data: {"error": {"message": "the model crashed", "type": "server_error", ...}}``, then
  ``data: [DONE]``), ``cut`` (the connection is dropped in the middle of the chunked body), ``stall`` (nothing more
  is sent; the connection stays open until the client hangs up). An unknown directive or value gets 400.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from chains.local_model_process import free_port
from chains.model_routes import ModelRoute
from tests.mock_upstream import serve_in_thread

FIXED_STRING = "scripted"
CREATED = 1_700_000_000
FINGERPRINT = "fp_scripted"
TOKEN_LOGPROB = -0.5
ARGUMENT_FRAGMENT = 8
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
# The content part types each role may send, as OpenAI's chat completions define them.
PARTS = {
    "user": {"text", "image_url", "input_audio", "file"},
    "system": {"text"},
    "developer": {"text"},
    "assistant": {"text", "refusal"},
    "tool": {"text"},
    "function": {"text"},
}
# A 'quoted' span: the quotes stand apart from letters, so that the apostrophes of "what's" open nothing.
QUOTED = re.compile(r"(?<!\w)'([^'\n]+?)'(?!\w)")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TOKEN = re.compile(r"\s*\S+")
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ScriptedUpstream(str):
    """The upstream's base URL (``.../v1``), with the bodies it received."""

    requests: list[Any]

    def __new__(cls, base_url: str) -> Self:
        self = super().__new__(cls, base_url)
        self.requests = []
        return self

    @property
    def base_url(self) -> str:
        return str(self)

    def clear(self) -> None:
        self.requests.clear()


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def error_body(message: str, param: str | None = None, code: str | None = None, kind: str = "invalid_request_error"):
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ---------------------------------------------------------------- reading messages


def words(text: str) -> int:
    return len(text.split())


def text_of(content: Any) -> str:
    """A message's text: its string content, or its text parts joined by a space."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def parts_of(content: Any, kind: str) -> int:
    return sum(1 for p in content if isinstance(p, dict) and p.get("type") == kind) if isinstance(content, list) else 0


def last_user(messages: list[dict]) -> dict | None:
    return next((m for m in reversed(messages) if m.get("role") == "user"), None)


def quoted_spans(messages: list[dict]) -> list[str]:
    user = last_user(messages)
    return QUOTED.findall(text_of(user.get("content"))) if user else []


# ---------------------------------------------------------------- values from JSON schemas


def example(schema: Any, root: Any, string: str, depth: int = 0) -> Any:
    """A value that satisfies ``schema`` (see the module's docstring)."""
    if not isinstance(schema, dict) or depth > 12:
        return string if depth <= 12 else None
    if "$ref" in schema:
        target = resolve_ref(root, schema["$ref"])
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return example({**target, **rest}, root, string, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "allOf" in schema:
        merged: dict = {k: v for k, v in schema.items() if k != "allOf"}
        value: Any = None
        for sub in schema["allOf"]:
            part = example(sub, root, string, depth + 1)
            value = {**value, **part} if isinstance(value, dict) and isinstance(part, dict) else part
        if merged.get("properties") or merged.get("type"):
            own = example(merged, root, string, depth + 1)
            value = {**value, **own} if isinstance(value, dict) and isinstance(own, dict) else own
        return value
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [o for o in schema[key] if not (isinstance(o, dict) and o.get("type") == "null")]
            return example((options or schema[key])[0], root, string, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        if "properties" in schema:
            kind = "object"
        elif "items" in schema or "prefixItems" in schema:
            kind = "array"
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: example(sub, root, string, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        prefix = [example(sub, root, string, depth + 1) for sub in schema.get("prefixItems") or []]
        if prefix:
            return prefix
        count = max(int(schema.get("minItems", 0)), 1)
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        return [example(schema.get("items") or {}, root, string, depth + 1) for _ in range(count)]
    if kind == "integer":
        return int(bounded(3, schema, step=1))
    if kind == "number":
        return bounded(3.5, schema, step=0.5)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return string_for(schema, string)


def bounded(value: float, schema: dict, step: float) -> float:
    if "minimum" in schema and value < schema["minimum"]:
        value = schema["minimum"]
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        value = schema["exclusiveMinimum"] + step
    if "maximum" in schema and value > schema["maximum"]:
        value = schema["maximum"]
    if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
        value = schema["exclusiveMaximum"] - step
    return value


def string_for(schema: dict, string: str) -> str:
    formats = {"date-time": "2024-01-01T00:00:00Z", "date": "2024-01-01", "time": "00:00:00"}
    value = formats.get(schema.get("format"), string)
    if len(value) < int(schema.get("minLength", 0)):
        value = value + "x" * (int(schema["minLength"]) - len(value))
    if "maxLength" in schema:
        value = value[: int(schema["maxLength"])]
    return value


def resolve_ref(root: Any, ref: str) -> dict:
    if not ref.startswith("#"):
        raise BadRequest(f"unsupported $ref {ref!r}: only local references", "response_format")
    node = root
    for piece in ref.lstrip("#").split("/"):
        if piece:
            piece = piece.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or piece not in node:
                raise BadRequest(f"$ref {ref!r} points at nothing", "response_format")
            node = node[piece]
    return node if isinstance(node, dict) else {}


# ---------------------------------------------------------------- validation


def check(condition: Any, message: str, param: str | None = None, code: str | None = None) -> None:
    if not condition:
        raise BadRequest(message, param, code)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate(body: Any) -> None:
    check(isinstance(body, dict), "the body must be a JSON object", None, "invalid_json")
    check(isinstance(body.get("model"), str) and body["model"], "you must provide a model parameter", "model")
    messages = body.get("messages")
    check(isinstance(messages, list) and messages, "messages must be a non-empty array", "messages")
    answered: dict[str, bool] = {}  # tool_call_id -> answered yet
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        check(isinstance(message, dict), f"{where} must be an object", where)
        role = message.get("role")
        check(role in ROLES, f"invalid role {role!r}", f"{where}.role", "invalid_value")
        content = message.get("content")
        if role != "tool" and any(not done for done in answered.values()):
            missing = [k for k, done in answered.items() if not done]
            raise BadRequest(
                "an assistant message with 'tool_calls' must be followed by tool messages responding to each "
                f"'tool_call_id'; missing: {', '.join(missing)}",
                f"{where}.role",
            )
        if role == "assistant":
            calls = message.get("tool_calls")
            check(
                content is not None or calls or message.get("refusal") is not None,
                f"{where}: an assistant message needs content or tool_calls",
                f"{where}.content",
            )
            check_content(content, where, role, allow_none=True)
            for j, call in enumerate(calls or []):
                check(
                    isinstance(call, dict)
                    and isinstance(call.get("id"), str)
                    and call.get("type", "function") == "function"
                    and isinstance(call.get("function"), dict)
                    and isinstance(call["function"].get("name"), str)
                    and isinstance(call["function"].get("arguments"), str),
                    f"{where}.tool_calls[{j}] must be {{id, type: function, function: {{name, arguments}}}}",
                    f"{where}.tool_calls[{j}]",
                )
            answered = {call["id"]: False for call in calls or []}
        elif role == "tool":
            call_id = message.get("tool_call_id")
            check(isinstance(call_id, str) and call_id, f"{where}: a tool message needs tool_call_id", where)
            check(
                call_id in answered,
                "messages with role 'tool' must be a response to a preceding message with 'tool_calls' "
                f"(no tool call {call_id!r})",
                f"{where}.tool_call_id",
            )
            answered[call_id] = True
            check_content(content, where, role, allow_none=False)
        else:
            answered = {}
            check_content(content, where, role, allow_none=False)
    if any(not done for done in answered.values()):
        missing = [k for k, done in answered.items() if not done]
        raise BadRequest(
            "an assistant message with 'tool_calls' must be followed by tool messages responding to each "
            f"'tool_call_id'; missing: {', '.join(missing)}",
            "messages",
        )

    tools = body.get("tools")
    names: list[str] = []
    if tools is not None:
        check(isinstance(tools, list), "tools must be an array", "tools")
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            check(
                isinstance(tool, dict) and tool.get("type") == "function" and isinstance(function, dict),
                'each tool must be {"type": "function", "function": {...}}',
                f"tools[{i}]",
            )
            name = function.get("name")
            check(
                isinstance(name, str) and TOOL_NAME.fullmatch(name),
                "a function name is 1 to 64 letters, digits, _ or -",
                f"tools[{i}].function.name",
            )
            parameters = function.get("parameters")
            check(parameters is None or isinstance(parameters, dict), "parameters must be an object", f"tools[{i}]")
            names.append(name)
    choice = body.get("tool_choice")
    if choice is not None:
        check(tools, "tool_choice is only allowed when tools are specified", "tool_choice")
        if isinstance(choice, dict):
            forced = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
            check(isinstance(forced, str), "tool_choice must name a function", "tool_choice")
            check(forced in names, f"tool_choice names {forced!r}, which is not among the tools", "tool_choice")
        else:
            check(choice in ("none", "auto", "required"), "tool_choice must be none, auto or required", "tool_choice")
    parallel = body.get("parallel_tool_calls")
    check(
        parallel is None or isinstance(parallel, bool), "parallel_tool_calls must be a boolean", "parallel_tool_calls"
    )

    response_format = body.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        check(kind in ("text", "json_object", "json_schema"), "unknown response_format type", "response_format.type")
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            check(
                isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("schema"), dict),
                "json_schema must be {name, schema, strict?}",
                "response_format.json_schema",
            )
        if kind == "json_object":
            check(
                "json" in json.dumps([text_of(m.get("content")) for m in messages]).lower(),
                "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
                "messages",
            )

    n = body.get("n", 1)
    check(n is None or (is_int(n) and 1 <= n <= 128), "n must be an integer from 1 to 128", "n")
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        check(value is None or (is_int(value) and value >= 1), f"{field} must be a positive integer", field)
    logprobs = body.get("logprobs")
    check(logprobs is None or isinstance(logprobs, bool), "logprobs must be a boolean", "logprobs")
    top = body.get("top_logprobs")
    if top is not None:
        check(is_int(top) and 0 <= top <= 20, "top_logprobs must be an integer from 0 to 20", "top_logprobs")
        check(logprobs, "logprobs must be true when top_logprobs is set", "logprobs")
    stop = body.get("stop")
    check(
        stop is None
        or isinstance(stop, str)
        or (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop)),
        "stop must be a string or at most 4 strings",
        "stop",
    )
    if body.get("stream_options") is not None:
        check(body.get("stream") is True, "stream_options is only allowed when stream is enabled", "stream_options")
    temperature = body.get("temperature")
    check(
        temperature is None or (isinstance(temperature, int | float) and 0 <= temperature <= 2),
        "temperature must be from 0 to 2",
        "temperature",
    )


def check_content(content: Any, where: str, role: str, *, allow_none: bool) -> None:
    if content is None:
        check(allow_none, f"{where}: content is required", f"{where}.content")
        return
    if isinstance(content, str):
        return
    check(isinstance(content, list), f"{where}.content must be a string or an array of parts", f"{where}.content")
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        check(kind in PARTS[role], f"a {role} message takes no {kind!r} content part", f"{at}.type", "invalid_value")
        if kind == "text":
            check(isinstance(part.get("text"), str), "a text part needs text", f"{at}.text")
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url") if isinstance(part.get("image_url"), dict) else None
            check(isinstance(url, str) and url, "an image_url part needs image_url.url", f"{at}.image_url.url")
            if url.startswith("data:"):
                check_data_url(url, f"{at}.image_url.url")
        elif kind == "input_audio":
            audio = part.get("input_audio")
            check(
                isinstance(audio, dict) and isinstance(audio.get("data"), str) and audio.get("format"),
                "an input_audio part needs input_audio.data and format",
                f"{at}.input_audio",
            )
            check_base64(audio["data"], f"{at}.input_audio.data")
        elif kind == "file":
            file = part.get("file")
            check(
                isinstance(file, dict)
                and (isinstance(file.get("file_data"), str) or isinstance(file.get("file_id"), str)),
                "a file part needs file.file_data or file.file_id",
                f"{at}.file",
            )
            if isinstance(file.get("file_data"), str):
                check_data_url(file["file_data"], f"{at}.file.file_data")


def check_data_url(url: str, param: str) -> None:
    head, _, data = url.partition(",")
    check(head.startswith("data:") and head.endswith(";base64") and data, "a data: URL must be base64", param)
    check_base64(data, param)


def check_base64(data: str, param: str) -> None:
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("invalid base64 data", param, "invalid_value") from None


# ---------------------------------------------------------------- answering


def answer(body: dict) -> tuple[str | None, list[dict], str]:
    """Choice 0's (content, tool calls, finish_reason) for a valid body."""
    messages: list[dict] = body["messages"]
    spans = quoted_spans(messages)
    string = spans[0] if spans else FIXED_STRING
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    last_role = messages[-1].get("role")

    called: list[dict] = []
    if tools and isinstance(choice, dict):
        called = [t for t in tools if t["function"]["name"] == choice["function"]["name"]][:1]
    elif tools and (choice == "required" or (choice in (None, "auto") and last_role != "tool")):
        user = last_user(messages)
        text = text_of(user.get("content")) if user else ""
        called = [t for t in tools if t["function"]["name"] in text] or tools[:1]
        if body.get("parallel_tool_calls") is False:
            called = called[:1]
    if called:
        calls = [
            {
                "id": f"call_{len(messages)}_{i}",
                "type": "function",
                "function": {
                    "name": tool["function"]["name"],
                    "arguments": json.dumps(
                        example(tool["function"].get("parameters") or {}, tool["function"].get("parameters"), string),
                        ensure_ascii=False,
                    ),
                },
            }
            for i, tool in enumerate(called)
        ]
        return None, calls, "tool_calls"

    if last_role == "tool":
        tail = []
        for message in reversed(messages):
            if message.get("role") != "tool":
                break
            tail.append(text_of(message.get("content")))
        text = "Tool result: " + "; ".join(reversed(tail))
    else:
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_object":
            keys = [s for s in spans if IDENTIFIER.fullmatch(s)]
            text = json.dumps({k: FIXED_STRING for k in keys} or {"result": FIXED_STRING})
        elif response_format.get("type") == "json_schema":
            schema = response_format["json_schema"]["schema"]
            text = json.dumps(example(schema, schema, string), ensure_ascii=False)
        else:
            user = last_user(messages) or messages[-1]
            content = user.get("content")
            text = f"Scripted reply to: {text_of(content)}"
            for kind, note in (("image_url", "I saw {} image(s)."), ("file", "I saw {} file(s)."),
                               ("input_audio", "I heard {} audio clip(s).")):  # fmt: skip
                if count := parts_of(content, kind):
                    text += " " + note.format(count)
    return finish(text, body)


def finish(text: str, body: dict) -> tuple[str, list[dict], str]:
    reason = "stop"
    stops = body.get("stop")
    stops = [stops] if isinstance(stops, str) else stops or []
    cuts = [text.find(s) for s in stops if s and s in text]
    if cuts:
        text = text[: min(cuts)]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    tokens = TOKEN.findall(text)
    if limit is not None and len(tokens) > limit:
        text, reason = "".join(tokens[:limit]), "length"
    return text, [], reason


def choices_of(body: dict) -> list[tuple[str | None, list[dict], str]]:
    content, calls, reason = answer(body)
    n = body.get("n") or 1
    return [
        (content if i == 0 or content is None else f"{content} (choice {i})", copy.deepcopy(calls), reason)
        for i in range(n)
    ]


def logprobs_of(text: str, top: int) -> list[dict]:
    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return [
        {
            **entry(token, TOKEN_LOGPROB),
            "top_logprobs": [entry(token, TOKEN_LOGPROB)]
            + [entry(f"alt{j}", TOKEN_LOGPROB - j) for j in range(1, top)],
        }
        for token in TOKEN.findall(text)
    ]


def usage_of(body: dict, choices: list[tuple[str | None, list[dict], str]]) -> dict:
    prompt = sum(words(text_of(m.get("content"))) for m in body["messages"])
    completion = sum(
        words(content or "") + sum(words(call["function"]["arguments"]) for call in calls)
        for content, calls, _ in choices
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def completion(body: dict, number: int) -> dict:
    choices = choices_of(body)
    top = body.get("top_logprobs") or 0
    out = []
    for i, (content, calls, reason) in enumerate(choices):
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        logprobs = (
            {"content": logprobs_of(content or "", top), "refusal": None}
            if body.get("logprobs") and not calls
            else None
        )
        out.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": reason})
    return {
        **head(body, number, "chat.completion"),
        "choices": out,
        "usage": usage_of(body, choices),
    }


def head(body: dict, number: int, kind: str) -> dict:
    return {
        "id": f"chatcmpl-scripted-{number}",
        "object": kind,
        "created": CREATED,
        "model": body["model"],
        "system_fingerprint": FINGERPRINT,
    }


def chunks(body: dict, number: int) -> Iterator[str]:
    base = head(body, number, "chat.completion.chunk")
    choices = choices_of(body)
    top = body.get("top_logprobs") or 0
    want_logprobs = bool(body.get("logprobs"))

    def event(index: int, delta: dict, reason: str | None = None, logprobs: Any = None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
        return f"data: {json.dumps({**base, 'choices': [choice]}, ensure_ascii=False)}\n\n"

    for index, (content, calls, reason) in enumerate(choices):
        if calls:
            heads = [
                {
                    "index": k,
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["function"]["name"], "arguments": ""},
                }
                for k, c in enumerate(calls)
            ]
            yield event(index, {"role": "assistant", "content": None, "tool_calls": heads})
            for k, call in enumerate(calls):
                arguments = call["function"]["arguments"]
                for start in range(0, len(arguments), ARGUMENT_FRAGMENT):
                    fragment = arguments[start : start + ARGUMENT_FRAGMENT]
                    yield event(index, {"tool_calls": [{"index": k, "function": {"arguments": fragment}}]})
        else:
            yield event(index, {"role": "assistant", "content": "", "refusal": None})
            for token in TOKEN.findall(content or ""):
                logprobs = {"content": logprobs_of(token, top), "refusal": None} if want_logprobs else None
                yield event(index, {"content": token}, logprobs=logprobs)
        yield event(index, {}, reason)
    if (body.get("stream_options") or {}).get("include_usage"):
        yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage_of(body, choices)})}\n\n"
    yield "data: [DONE]\n\n"


# ---------------------------------------------------------------- the server


def build_app(upstream: ScriptedUpstream) -> Starlette:
    lock = threading.Lock()

    async def chat_completions(request: Request):
        raw = await request.body()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        with lock:
            upstream.requests.append(body if body is not None else raw.decode("utf-8", "replace"))
            number = len(upstream.requests)
        try:
            if body is None:
                raise BadRequest("We could not parse the JSON body of your request.", None, "invalid_json")
            validate(body)
            faults = faults_of(body["model"])
            if body.get("stream") and faults is not None:
                return StreamingResponse(with_faults(chunks(body, number), faults), media_type="text/event-stream")
            if body.get("stream"):
                return StreamingResponse(chunks(body, number), media_type="text/event-stream")
            return JSONResponse(completion(body, number))
        except BadRequest as error:
            return JSONResponse(error_body(error.message, error.param, error.code), status_code=400)

    async def models(_: Request):
        model = {"id": "scripted", "object": "model", "created": CREATED, "owned_by": "scripted"}
        return JSONResponse({"object": "list", "data": [model]})

    async def http_error(_: Request, exc: HTTPException):
        code = "unknown_url" if exc.status_code == 404 else None
        return JSONResponse(error_body(str(exc.detail), None, code), status_code=exc.status_code)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
    )


def scripted_route(name: str, base_url: str) -> ModelRoute:
    """A platform route to the scripted upstream, declared as serving what OpenAI serves (it does), when routes
    declare that (``provider``)."""
    extra: dict[str, Any] = {"provider": "openai"} if "provider" in ModelRoute.model_fields else {}
    return ModelRoute(name=name, base_url=base_url, max_retries=0, timeout=10, **extra)


@contextmanager
def serve_scripted_upstream() -> Iterator[ScriptedUpstream]:
    """The scripted upstream under uvicorn in a thread; yields its base URL (``.../v1``) with its record."""
    port = free_port()
    upstream = ScriptedUpstream(f"http://127.0.0.1:{port}/v1")
    with serve_in_thread(build_app(upstream), port):
        yield upstream


# ---------------------------------------------------------------- faults


FAIL_MODES = ("error", "cut", "stall")
STALL_SECONDS = 600.0  # a stalled stream's upper bound, should its client never hang up
CRASH = {"message": "the model crashed", "type": "server_error", "param": None, "code": None}


@dataclass(frozen=True)
class Faults:
    delay: float = 0.0
    fail_after: int | None = None
    fail: str = "error"


class UpstreamCut(Exception):
    """Raised inside a streamed body: uvicorn drops the connection without ending the chunked body."""


def fault_model(name: str = "scripted", **directives: object) -> str:
    """The model name that scripts these faults: ``fault_model(delay=0.5)``, ``fault_model(fail_after=2)``,
    ``fault_model(fail_after=2, fail="cut")``."""
    return ";".join([name, *(f"{key}={value}" for key, value in directives.items())])


def faults_of(model: str) -> Faults | None:
    """The faults a model name scripts; None when it scripts none."""
    _, *directives = model.split(";")
    if not directives:
        return None
    values: dict[str, Any] = {}
    for directive in directives:
        key, _, value = directive.partition("=")
        try:
            if key == "delay":
                values[key] = float(value)
                check(values[key] >= 0, "delay must be 0 or more", "model")
            elif key == "fail_after":
                values[key] = int(value)
                check(values[key] >= 0, "fail_after must be 0 or more", "model")
            elif key == "fail":
                check(value in FAIL_MODES, f"fail must be one of {', '.join(FAIL_MODES)}", "model")
                values[key] = value
            else:
                raise BadRequest(f"unknown fault directive {key!r}", "model")
        except ValueError:
            raise BadRequest(f"fault directive {directive!r} has no valid value", "model") from None
    return Faults(**values)


async def with_faults(events: Iterator[str], faults: Faults) -> AsyncIterator[str]:
    """A streamed answer's events (``chunks``), slowed and broken off as ``faults`` says."""
    for sent, event in enumerate(events):
        if faults.fail_after is not None and sent == faults.fail_after:
            if faults.fail == "cut":
                raise UpstreamCut("the scripted upstream drops the connection")
            if faults.fail == "stall":
                await asyncio.sleep(STALL_SECONDS)
                return
            yield f"data: {json.dumps({'error': CRASH})}\n\n"
            yield "data: [DONE]\n\n"
            return
        if sent and faults.delay:
            await asyncio.sleep(faults.delay)
        yield event


def fault_route(name: str, base_url: str, *, timeout: float = 10, **directives: object) -> ModelRoute:
    """A platform route to the scripted upstream whose streams go wrong as ``directives`` say (``fault_model``)."""
    return ModelRoute(name=name, base_url=base_url, model=fault_model(**directives), max_retries=0, timeout=timeout)
