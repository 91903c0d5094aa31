"""Fine-tuning files: OpenAI's chat format, checked line by line, and read back for the trainers.

A fine-tuning file is JSON Lines in UTF-8, one example per line::

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "...", "weight": 1}]}

with, as OpenAI allows, ``tools`` (the functions the example's assistant may call) and ``parallel_tool_calls``
beside ``messages``; any other field is refused by name. Blank lines are skipped. ``validate_jsonl`` finds every
problem (bad UTF-8 or JSON, a line that is not an object, missing or empty ``messages``, a bad role or content, no
assistant answer to learn from, a weight other than 0 or 1, an example longer than the context window) and raises
one ``DatasetError`` listing the first ten with their line numbers. It is CPU work on the whole file (and the token
counter may be a real tokenizer): call it off the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from chains.model_routes import ModelRegistry
from chains.tokens import TokenCounter
from errors import InvalidRequest, ModelNotFound

ROLES = ("system", "developer", "user", "assistant", "tool")
EXAMPLE_FIELDS = ("messages", "tools", "parallel_tool_calls")
MESSAGE_FIELDS = {
    "system": {"role", "content", "name"},
    "developer": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "weight", "tool_calls"},
    "tool": {"role", "content", "tool_call_id"},
}
SUFFIX = ".jsonl"
KIND = "jsonl"  # the file's kind in storage
MAX_REPORTED = 10  # problems listed in a DatasetError's message (all are counted)
EXAMPLE_SHAPE = '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'

CountTokens = Callable[[list[dict[str, Any]]], int]


class DatasetError(InvalidRequest):
    """A fine-tuning file that is not valid: ``errors`` are its first problems (``"line 3: ..."``), ``total`` how
    many it has. As an API error it is a 400 naming ``file`` with code ``invalid_file``."""

    def __init__(self, errors: Sequence[str], *, total: int | None = None, param: str | None = "file") -> None:
        self.errors = list(errors)
        self.total = max(total or 0, len(self.errors))
        super().__init__(self._message(), param=param, code="invalid_file")

    def _message(self) -> str:
        if self.total == 1:
            head = "The fine-tuning file has a problem"
        elif self.total > len(self.errors):
            head = f"The fine-tuning file has {self.total} problems (the first {len(self.errors)})"
        else:
            head = f"The fine-tuning file has {self.total} problems"
        return f"{head}: {'; '.join(self.errors)}."


@dataclass(frozen=True)
class DatasetSummary:
    examples: int
    total_tokens: int | None = None  # when tokens were counted
    max_example_tokens: int | None = None  # the longest example's


class _Problem(Exception):
    """What is wrong with one line (internal: collected into a DatasetError)."""


# ---------------------------------------------------------------------------------------------------- validation


def validate_jsonl(
    data: bytes,
    *,
    count_tokens: CountTokens | None = None,
    context_window: int | None = None,
    param: str | None = "file",
) -> DatasetSummary:
    """Check a whole fine-tuning file; ``DatasetError`` lists its problems, else a summary.

    ``count_tokens`` counts an example's messages (``token_counter`` makes one from a route's ``TokenCounter``);
    with ``context_window``, a longer example is a problem. An example's ``tools`` are counted as one more message
    holding their JSON."""
    scan = _scan(data, count_tokens, context_window, param)
    if count_tokens is None:
        return DatasetSummary(examples=len(scan.examples))
    return DatasetSummary(
        examples=len(scan.examples), total_tokens=sum(scan.tokens), max_example_tokens=max(scan.tokens)
    )


def check_upload(filename: str, data: bytes, models: ModelRegistry, model: str | None = None) -> DatasetSummary:
    """An uploaded fine-tuning file (``POST /v1/files``, purpose ``fine-tune``): a ``.jsonl`` name, and valid examples
    that fit the context window of the chat route ``model`` (the default route when None), counted with its token
    counter. Without such a route, the examples are checked without their lengths."""
    if not filename.lower().endswith(SUFFIX):
        raise InvalidRequest(
            f"Unsupported file type '{filename}' for fine-tuning: upload JSON Lines with the extension .jsonl, one "
            f"example per line ({EXAMPLE_SHAPE}).",
            param="file",
            code="unsupported_file",
        )
    try:
        chat = models.get(model)
    except ModelNotFound:
        return validate_jsonl(data)
    return validate_jsonl(data, count_tokens=token_counter(chat.tokens), context_window=chat.route.context_window)


def validate_file(path: Path | str, **options: Any) -> DatasetSummary:
    """``validate_jsonl`` on a file on disk."""
    return validate_jsonl(Path(path).read_bytes(), **options)


def load_examples(path: Path | str) -> list[dict[str, Any]]:
    """The examples of a fine-tuning file as written (blank lines skipped); ``DatasetError`` when it is not valid."""
    return _scan(Path(path).read_bytes(), None, None, "file").examples


@dataclass
class _Scan:
    examples: list[dict[str, Any]]
    tokens: list[int]  # each example's, when counted


def _scan(data: bytes, count_tokens: CountTokens | None, context_window: int | None, param: str | None) -> _Scan:
    """Every example of the file, with its tokens; ``DatasetError`` with the first problems when there are any."""
    scan = _Scan(examples=[], tokens=[])
    errors: list[str] = []
    total_errors = 0
    for number, example, problem in _lines(data):
        if problem is None and count_tokens is not None:
            tokens = count_tokens(example["messages"])
            if example.get("tools"):
                tokens += count_tokens([{"role": "system", "content": json.dumps(example["tools"])}])
            if context_window is not None and tokens > context_window:
                problem = (
                    f"the example is {tokens:,} tokens long, more than the model's context window "
                    f"({context_window:,} tokens): shorten it or split it"
                )
            scan.tokens.append(tokens)
        if problem is not None:
            total_errors += 1
            if len(errors) < MAX_REPORTED:
                errors.append(f"line {number}: {problem}")
            continue
        scan.examples.append(example)
    if total_errors:
        raise DatasetError(errors, total=total_errors, param=param)
    if not scan.examples:
        raise DatasetError([f"it holds no examples (one JSON object per line, such as {EXAMPLE_SHAPE})"], param=param)
    return scan


def message_text(message: dict[str, Any]) -> str:
    """A message's text: its string content, or its text parts joined (empty for an assistant's tool calls)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def token_counter(counter: TokenCounter) -> CountTokens:
    """Count an example's messages (dicts in OpenAI's format) with a route's ``TokenCounter``: their text, and the
    JSON of an assistant's tool calls."""

    def count(messages: list[dict[str, Any]]) -> int:
        converted = [_as_message(message) for message in messages]
        calls = [json.dumps(m["tool_calls"]) for m in messages if m.get("role") == "assistant" and m.get("tool_calls")]
        return counter.count_messages(converted) + sum(counter.count_text(text) for text in calls)

    return count


def _as_message(message: dict[str, Any]) -> BaseMessage:
    text = message_text(message)
    role = message.get("role")
    if role in ("system", "developer"):
        return SystemMessage(content=text)
    if role == "assistant":
        return AIMessage(content=text)
    if role == "tool":
        return ToolMessage(content=text, tool_call_id=str(message.get("tool_call_id") or ""))
    return HumanMessage(content=text)


# ---------------------------------------------------------------------------------------------------- line checks


def _lines(data: bytes) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    """(line number, example, problem or None) for every line that is not blank."""
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
        data = data[3:]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        try:
            example = _parse(raw)
            _check_example(example)
        except _Problem as problem:
            yield number, {}, str(problem)
            continue
        yield number, example, None


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        column = len(raw[: error.start].decode("utf-8", errors="replace")) + 1
        raise _Problem(f"not valid UTF-8 (byte 0x{raw[error.start]:02x} at column {column})") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        raise _Problem(f"not valid JSON ({error.msg} at column {error.colno})") from None
    except RecursionError:
        raise _Problem("not valid JSON (nested too deeply)") from None
    except ValueError as error:
        raise _Problem(f"not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise _Problem(f"not a JSON object ({_kind(value)}): each line is one example, {EXAMPLE_SHAPE}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_example(example: dict[str, Any]) -> None:
    unknown = [name for name in example if name not in EXAMPLE_FIELDS]
    if unknown:
        if {"prompt", "completion"} & set(unknown):
            raise _Problem(
                "the prompt/completion format is not supported: write each example as chat messages, " + EXAMPLE_SHAPE
            )
        hint = " (use 'tools')" if unknown[0] == "functions" else ""
        raise _Problem(
            f"unknown field '{unknown[0]}'{hint}: an example has 'messages', and optionally 'tools' and "
            "'parallel_tool_calls'"
        )
    if "messages" not in example:
        raise _Problem(f"no 'messages': each example is {EXAMPLE_SHAPE}")
    messages = example["messages"]
    if not isinstance(messages, list):
        raise _Problem(f"'messages' is {_kind(messages)}, not a list of messages")
    if not messages:
        raise _Problem("'messages' is empty")
    answers = 0
    for index, message in enumerate(messages):
        if _check_message(f"messages[{index}]", message):
            answers += 1
    if not answers:
        raise _Problem(
            "no assistant answer to learn from: an example needs an assistant message with content (or tool "
            "calls) and a weight of 1"
        )
    if "tools" in example:
        _check_tools(example["tools"])
    if "parallel_tool_calls" in example and not isinstance(example["parallel_tool_calls"], bool):
        raise _Problem("'parallel_tool_calls' must be true or false")


def _check_message(where: str, message: Any) -> bool:
    """Raise on a bad message; True when it is an assistant answer the model learns from."""
    if not isinstance(message, dict):
        raise _Problem(f"{where} is {_kind(message)}, not a message object")
    role = message.get("role")
    if "role" not in message:
        raise _Problem(f"{where} has no 'role' (one of {', '.join(ROLES)})")
    if role not in ROLES:
        raise _Problem(f"{where}.role {json.dumps(role)} is not one of {', '.join(ROLES)}")
    unknown = [name for name in message if name not in MESSAGE_FIELDS[role]]
    if unknown:
        if unknown[0] == "weight":
            raise _Problem(f"{where}.weight: only assistant messages have a weight")
        raise _Problem(f"{where} ({role}) has an unknown field '{unknown[0]}'")
    if "name" in message and not isinstance(message["name"], str):
        raise _Problem(f"{where}.name must be a string")
    tool_calls = message.get("tool_calls")
    if tool_calls is not None:
        _check_tool_calls(f"{where}.tool_calls", tool_calls)
    content = message.get("content")
    if content is None and not (role == "assistant" and tool_calls):
        raise _Problem(f"{where} ({role}) has no 'content'")
    if content is not None:
        _check_content(f"{where}.content", content)
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise _Problem(f"{where} (tool) needs a 'tool_call_id': the id of the assistant's tool call it answers")
    if role != "assistant":
        return False
    weight = message.get("weight", 1)
    if isinstance(weight, bool) or weight not in (0, 1):
        raise _Problem(f"{where}.weight must be 0 or 1, not {json.dumps(weight)}")
    return weight == 1 and bool(message_text(message).strip() or tool_calls)


def _check_content(where: str, content: Any) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _Problem(f"{where} must be a string or a list of text parts, not {_kind(content)}")
    for index, part in enumerate(content):
        if not isinstance(part, dict) or "type" not in part:
            raise _Problem(f'{where}[{index}] is not a text part ({{"type": "text", "text": "..."}})')
        if part["type"] != "text":
            raise _Problem(f"{where}[{index}] has type {json.dumps(part['type'])}: only text parts are supported")
        if not isinstance(part.get("text"), str) or set(part) - {"type", "text"}:
            raise _Problem(f'{where}[{index}] is not a text part ({{"type": "text", "text": "..."}})')


def _check_tool_calls(where: str, calls: Any) -> None:
    if not isinstance(calls, list) or not calls:
        raise _Problem(f"{where} must be a non-empty list of tool calls")
    for index, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(function, dict)
            or not isinstance(call.get("id"), str)
            or call.get("type", "function") != "function"
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments"), str)
        ):
            raise _Problem(
                f'{where}[{index}] is not a tool call ({{"id": "...", "type": "function", "function": '
                '{"name": "...", "arguments": "<JSON text>"}})'
            )


def _check_tools(tools: Any) -> None:
    if not isinstance(tools, list):
        raise _Problem(f"'tools' is {_kind(tools)}, not a list of tools")
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(function, dict)
            or tool.get("type") != "function"
            or not isinstance(function.get("name"), str)
        ):
            raise _Problem(
                f'tools[{index}] is not a tool ({{"type": "function", "function": {{"name": "...", '
                '"parameters": {...}}}})'
            )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"
