"""The chat request path as a LangGraph workflow: state, runtime context, nodes, wiring."""

from graphs.chat.context import ChatContext
from graphs.chat.graph import build_chat_graph
from graphs.chat.state import ChatInput, ChatState

__all__ = ["ChatContext", "ChatInput", "ChatState", "build_chat_graph"]
