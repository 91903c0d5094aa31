"""LangGraph workflows: the chat request path."""

from graphs.chat import ChatDeps, build_chat_graph
from graphs.state import ChatInput, ChatState

__all__ = ["ChatDeps", "ChatInput", "ChatState", "build_chat_graph"]
