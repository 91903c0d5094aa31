"""What the chat graph's nodes call out to, passed per run as LangGraph's runtime context."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from langchain_core.embeddings import Embeddings

from chains.model_routes import ModelRegistry
from chains.output_stage import OutputFilterFactory
from memory.history import ConversationMemory
from memory.semantic_cache import SemanticCache
from storage.transcripts import ConversationStore


class KnowledgeSearch(Protocol):
    """What retrieval needs of the knowledge index (``memory.knowledge.KnowledgeIndex``)."""

    async def search(
        self,
        store_ids: Sequence[str],
        query: str,
        *,
        vector: Sequence[float] | None = None,
        versions: Mapping[str, int] | None = None,
        k: int = 5,
        min_score: float = 0.0,
    ) -> list[Any]: ...


class StoreVersions(Protocol):
    """The app's vector stores by id (``storage.vector_stores.VectorStores``): 404 for another app's or none."""

    async def get(self, app_id: str, store_id: str, *, param: str = ...) -> Any: ...


class Verdict(Protocol):
    flagged: bool
    categories: Sequence[str]

    def as_dict(self) -> dict[str, Any]: ...


class InputGuard(Protocol):
    """What the input guard needs of a detector (``chains.safety.injection.InjectionDetector``)."""

    detector: str  # "rules", or "rules+classifier" when a classifier model runs too

    def screen(self, text: str) -> Verdict: ...

    def screen_many(self, texts: Sequence[str]) -> list[Verdict]: ...


@dataclass
class ChatContext:
    models: ModelRegistry
    store: ConversationStore
    memory: ConversationMemory
    # The deployment's system prompt, for apps and requests that bring none.
    system_prompt: str | None = None
    # Token budget of the prior turns the model sees.
    memory_max_tokens: int = 2048
    # Once the history overflows, about this fraction of the budget is kept (graphs/chat/history_window.py).
    memory_keep_fraction: float = 0.5
    # Made afresh for each answer, in order; see chains.output_stage for what a filter may do.
    output_filters: list[OutputFilterFactory] = field(default_factory=list)
    # The knowledge base (None: requests that name stores are refused) and the question embeddings it shares with
    # the semantic cache (None: no cache).
    knowledge: KnowledgeSearch | None = None
    vector_stores: StoreVersions | None = None
    embeddings: Embeddings | None = None
    cache: SemanticCache | None = None
    retrieval_top_k: int = 5
    retrieval_min_score: float = 0.0
    # Requests sampling hotter than this are neither answered from the cache nor stored in it.
    cache_max_temperature: float = 1.0
    # The input guard (None: no screening, whatever the app's mode); see graphs.chat.safety.
    guard: InputGuard | None = None
    # The deployment's safety defaults, for apps that set none: modes ("off", "flag", "block") and PII policy.
    guard_mode: str = "off"
    moderation_mode: str = "off"
    pii_policy: dict[str, Any] | None = None
    # Runs work the client need not wait for (storing an answer in the cache); awaited inline when None.
    spawn: Callable[[Coroutine[Any, Any, Any]], None] | None = None
