"""Prompt templates kept as files beside this module, and their loader."""

from prompts.loader import load_prompt

__all__ = ["load_prompt"]
