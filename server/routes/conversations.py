"""/v1/conversations: server-side conversations and their messages."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from server.deps import AppCaller, ServicesDep
from server.schemas import (
    Conversation,
    ConversationAssistantMessage,
    ConversationCreate,
    ConversationDeleted,
    ConversationList,
    ConversationMessage,
    ConversationToolMessage,
    ConversationWithMessages,
    MessageUsage,
)
from storage import tables
from storage.message_records import openai_tool_call

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])


class ConversationUpdate(BaseModel):
    """The fields to change; a field left out stays as it is (`title: null` removes the title)."""

    model_config = ConfigDict(extra="forbid")

    title: StrictStr | None = Field(None, max_length=256)
    metadata: dict[str, StrictStr] | None = Field(None, max_length=16, description="replaces the metadata whole")


def conversation_object(conversation: tables.Conversation) -> Conversation:
    # Not the row's `metadata`: that is SQLAlchemy's; the column is `meta`.
    return Conversation.of_row(conversation, metadata=conversation.meta or {})


def message_object(message: tables.Message) -> ConversationMessage:
    """A message the client sent, or an assistant message with its response's details (null when the client sent it)."""
    message_id = f"msg_{message.id}"
    if message.role == "tool":
        return ConversationToolMessage.of_row(message, id=message_id)
    if message.role != "assistant":
        return ConversationMessage.of_row(message, id=message_id)
    usage = MessageUsage.of_row(message, total_tokens=(message.prompt_tokens or 0) + (message.completion_tokens or 0))
    tool_calls = [openai_tool_call(call) for call in message.tool_calls] if message.tool_calls else None
    return ConversationAssistantMessage.of_row(message, id=message_id, usage=usage, tool_calls=tool_calls)


@router.post("")
async def create_conversation(
    caller: AppCaller, services: ServicesDep, body: ConversationCreate | None = None
) -> Conversation:
    body = body or ConversationCreate()
    conversation = await services.store.create_conversation(
        app_id=caller.app_id, title=body.title, user=body.user, metadata=body.metadata
    )
    return conversation_object(conversation)


@router.get("")
async def list_conversations(
    caller: AppCaller,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=64)] = None,
    user: Annotated[str | None, Query(max_length=256)] = None,
) -> ConversationList:
    page = await services.store.list_conversations(app_id=caller.app_id, limit=limit, after=after, user=user)
    data = [conversation_object(c) for c in page.items]
    return ConversationList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=page.has_more,
    )


@router.get("/{conversation_id}")
async def retrieve_conversation(
    conversation_id: str,
    caller: AppCaller,
    services: ServicesDep,
    user: Annotated[str | None, Query(max_length=256)] = None,
) -> ConversationWithMessages:
    conversation = await services.store.get_conversation(conversation_id, app_id=caller.app_id, user=user)
    messages = await services.store.messages(conversation_id)
    return ConversationWithMessages(
        **conversation_object(conversation).model_dump(), messages=[message_object(m) for m in messages]
    )


@router.post("/{conversation_id}")
async def update_conversation(
    conversation_id: str,
    body: ConversationUpdate,
    caller: AppCaller,
    services: ServicesDep,
    user: Annotated[str | None, Query(max_length=256)] = None,
) -> Conversation:
    """Rename a conversation, or replace its metadata (OpenAI's update of a conversation)."""
    changes = {"title" if name == "title" else "meta": getattr(body, name) for name in body.model_fields_set}
    if "meta" in changes:
        changes["meta"] = changes["meta"] or {}
    conversation = await services.store.update_conversation(
        conversation_id, app_id=caller.app_id, user=user, changes=changes
    )
    return conversation_object(conversation)


@router.delete("/{conversation_id}")
async def delete_conversation(
    conversation_id: str,
    caller: AppCaller,
    services: ServicesDep,
    user: Annotated[str | None, Query(max_length=256)] = None,
) -> ConversationDeleted:
    await services.store.delete_conversation(conversation_id, app_id=caller.app_id, user=user)
    await services.memory.forget(conversation_id)
    return ConversationDeleted(id=conversation_id)
