"""/v1/conversations: server-side conversations and their messages."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from storage.tables import Conversation, Message
from server.deps import AppCaller, ServicesDep
from server.schemas import ConversationCreate

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])


def conversation_object(conversation: Conversation) -> dict:
    return {
        "id": conversation.id,
        "object": "conversation",
        "created_at": conversation.created_at,
        "updated_at": conversation.updated_at,
        "title": conversation.title,
        "user": conversation.user,
        "metadata": conversation.meta or {},
    }


def message_object(message: Message) -> dict:
    body = {
        "id": f"msg_{message.id}",
        "object": "conversation.message",
        "created_at": message.created_at,
        "role": message.role,
        "content": message.content,
    }
    if message.role == "assistant":
        body.update(
            response_id=message.response_id,
            model=message.model,
            finish_reason=message.finish_reason,
            usage={
                "prompt_tokens": message.prompt_tokens,
                "completion_tokens": message.completion_tokens,
                "total_tokens": (message.prompt_tokens or 0) + (message.completion_tokens or 0),
            },
            latency_ms=message.latency_ms,
        )
    return body


@router.post("")
async def create_conversation(
    caller: AppCaller, services: ServicesDep, body: ConversationCreate | None = None
) -> dict:
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
) -> dict:
    page = await services.store.list_conversations(app_id=caller.app_id, limit=limit, after=after, user=user)
    data = [conversation_object(c) for c in page.items]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": page.has_more,
    }


@router.get("/{conversation_id}")
async def retrieve_conversation(
    conversation_id: str,
    caller: AppCaller,
    services: ServicesDep,
    user: Annotated[str | None, Query(max_length=256)] = None,
) -> dict:
    conversation = await services.store.get_conversation(conversation_id, app_id=caller.app_id, user=user)
    messages = await services.store.messages(conversation_id)
    return {**conversation_object(conversation), "messages": [message_object(m) for m in messages]}


@router.delete("/{conversation_id}")
async def delete_conversation(
    conversation_id: str,
    caller: AppCaller,
    services: ServicesDep,
    user: Annotated[str | None, Query(max_length=256)] = None,
) -> dict:
    await services.store.delete_conversation(conversation_id, app_id=caller.app_id, user=user)
    await services.memory.forget(conversation_id)
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}
