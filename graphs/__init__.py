"""LangGraph workflows, one package each: ``graphs.chat`` is the chat request path."""
