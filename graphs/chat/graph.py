"""The chat request path, wired:

    preprocess -> guard_input -> load_memory -> lookup_cache -> retrieve_context -> call_model -> persist
                                                     `---------------- a cache hit ----------------^

``guard_input`` runs only for apps that screen their input, ``lookup_cache`` only for requests the cache applies to (``preprocess`` decides), ``retrieve_context`` only
for requests with vector stores: a request that uses neither goes from ``load_memory`` to ``call_model``. The cache
is looked up after the conversation's memory is loaded (nothing to load for a stateless request): the prior turns
are part of what a cached answer must match.
"""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from graphs.chat.context import ChatContext
from graphs.chat.knowledge import after_cache, after_memory, lookup_cache, retrieve_context
from graphs.chat.nodes import call_model, load_memory, persist, preprocess
from graphs.chat.safety import after_preprocess, guard_input
from graphs.chat.state import ChatInput, ChatState


def build_chat_graph() -> CompiledStateGraph:
    """Compiled once per process; each run gets its dependencies as ``context=ChatContext(...)``."""
    graph = StateGraph(ChatState, input_schema=ChatInput, context_schema=ChatContext)
    graph.add_node("preprocess", preprocess)
    graph.add_node("guard_input", guard_input)
    graph.add_node("load_memory", load_memory)
    graph.add_node("lookup_cache", lookup_cache)
    graph.add_node("retrieve_context", retrieve_context)
    graph.add_node("call_model", call_model)
    graph.add_node("persist", persist)
    graph.add_edge(START, "preprocess")
    graph.add_conditional_edges("preprocess", after_preprocess, ["guard_input", "load_memory"])
    graph.add_edge("guard_input", "load_memory")
    graph.add_conditional_edges("load_memory", after_memory, ["lookup_cache", "retrieve_context", "call_model"])
    graph.add_conditional_edges("lookup_cache", after_cache, ["persist", "retrieve_context", "call_model"])
    graph.add_edge("retrieve_context", "call_model")
    graph.add_edge("call_model", "persist")
    graph.add_edge("persist", END)
    return graph.compile(name="chat")
