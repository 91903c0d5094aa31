"""Conversions between LangChain messages and the plain role/content records memory keeps."""

from __future__ import annotations

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

_ROLE_BY_TYPE = {"human": "user", "ai": "assistant", "system": "system"}
_CLASS_BY_ROLE = {"user": HumanMessage, "assistant": AIMessage, "system": SystemMessage, "developer": SystemMessage}


def message_role(message: BaseMessage) -> str:
    return _ROLE_BY_TYPE.get(message.type, message.type)


def to_record(message: BaseMessage) -> dict[str, str]:
    return {"role": message_role(message), "content": message.text}


def from_record(role: str, content: str) -> BaseMessage:
    return _CLASS_BY_ROLE[role](content=content)
