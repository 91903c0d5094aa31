"""LangChain building blocks: model routes and their transport, token counting, the output stage, the local model."""
