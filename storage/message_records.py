"""Conversions between LangChain messages and the records memory keeps: role, content, and the tool calls an
assistant made or the call a tool message answers, so an agent's tool loop survives in server-side memory."""

from __future__ import annotations

from typing import Any

import orjson
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

_ROLE_BY_TYPE = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
_CLASS_BY_ROLE = {"user": HumanMessage, "system": SystemMessage, "developer": SystemMessage}


def message_role(message: BaseMessage) -> str:
    return _ROLE_BY_TYPE.get(message.type, message.type)


def tool_calls_of(message: BaseMessage) -> list[dict[str, Any]] | None:
    """An assistant message's tool calls as stored: LangChain's {"name", "args", "id"}; None when it made none."""
    calls = getattr(message, "tool_calls", None)
    return [{"name": c["name"], "args": c["args"], "id": c.get("id")} for c in calls] if calls else None


def to_record(message: BaseMessage) -> dict[str, Any]:
    """Text only: images and files sent in a message are not kept in memory."""
    record: dict[str, Any] = {"role": message_role(message), "content": message.text}
    if calls := tool_calls_of(message):
        record["tool_calls"] = calls
    if isinstance(message, ToolMessage):
        record["tool_call_id"] = message.tool_call_id
    return record


def row_record(row: Any) -> dict[str, Any]:
    """The record of a stored message row."""
    record: dict[str, Any] = {"role": row.role, "content": row.content}
    if getattr(row, "tool_calls", None):
        record["tool_calls"] = row.tool_calls
    if getattr(row, "tool_call_id", None):
        record["tool_call_id"] = row.tool_call_id
    return record


def from_record(
    role: str, content: str, tool_calls: list[dict[str, Any]] | None = None, tool_call_id: str | None = None
) -> BaseMessage:
    if role == "assistant":
        return AIMessage(content=content, tool_calls=tool_calls or [])
    if role == "tool":
        return ToolMessage(content=content, tool_call_id=tool_call_id or "")
    return _CLASS_BY_ROLE[role](content=content)


def openai_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    """A LangChain tool call as OpenAI's."""
    arguments = orjson.dumps(call.get("args") or {}).decode()
    return {"id": call.get("id") or "", "type": "function", "function": {"name": call["name"], "arguments": arguments}}


def openai_message(record: dict[str, Any]) -> dict[str, Any]:
    """A stored record as an OpenAI chat message (what datasets and clients read)."""
    message: dict[str, Any] = {"role": record["role"], "content": record.get("content") or ""}
    if record.get("tool_calls"):
        message["tool_calls"] = [openai_tool_call(call) for call in record["tool_calls"]]
    if record.get("tool_call_id"):
        message["tool_call_id"] = record["tool_call_id"]
    return message
