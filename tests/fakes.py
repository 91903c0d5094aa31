"""Fakes for unit tests of logic: a scripted chat model behind a real model registry, and the chat graph run with them.

Only for tests of the graph's logic; the paths users take are tested against
the real llama.cpp server or a real HTTP upstream.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from pydantic import Field

from chains.model_routes import ModelRegistry, ModelRoute
from graphs.chat import ChatContext, build_chat_graph


class RecordingChatModel(GenericFakeChatModel):
    """Answers with its scripted message every time (streamed word by word) and keeps every prompt it was given."""

    received: list[list[BaseMessage]] = Field(default_factory=list)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs: Any):
        self.received.append(list(messages))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def fake_registry(
    context_window: int = 4096, max_output_tokens: int = 64, answer: str = "fake answer"
) -> tuple[ModelRegistry, RecordingChatModel]:
    """A registry with one route, ``fake``, whose client is a ``RecordingChatModel``."""
    route = ModelRoute(
        name="fake",
        base_url="http://127.0.0.1:9/v1",  # never called: the client is replaced
        context_window=context_window,
        max_output_tokens=max_output_tokens,
    )
    registry = ModelRegistry([route])
    fake = RecordingChatModel(messages=itertools.cycle([AIMessage(content=answer)]))
    registry.get("fake").upstreams[0].__dict__["client"] = fake
    return registry, fake


def chat_graph(**context):
    """The compiled chat graph, run with ``ChatContext(**context)``; each run gets a fresh response id."""
    graph = build_chat_graph()
    runtime = ChatContext(**context)

    async def run(inputs: dict, **kwargs):
        return await graph.ainvoke({"response_id": f"chatcmpl-{uuid.uuid4().hex}", **inputs}, context=runtime, **kwargs)

    return run
