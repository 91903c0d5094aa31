"""What the chat graph's nodes call out to, passed per run as LangGraph's runtime context."""

from __future__ import annotations

from dataclasses import dataclass, field

from chains.model_routes import ModelRegistry
from chains.output_stage import OutputFilterFactory
from memory.history import ConversationMemory
from storage.transcripts import ConversationStore


@dataclass
class ChatContext:
    models: ModelRegistry
    store: ConversationStore
    memory: ConversationMemory
    # The deployment's system prompt, for apps and requests that bring none.
    system_prompt: str | None = None
    # Token budget of the prior turns the model sees.
    memory_max_tokens: int = 2048
    # Made afresh for each answer, in order; see chains.output_stage for what a filter may do.
    output_filters: list[OutputFilterFactory] = field(default_factory=list)
