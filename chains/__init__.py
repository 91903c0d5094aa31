"""LCEL building blocks: model factories, token counting, the local model, API errors."""
