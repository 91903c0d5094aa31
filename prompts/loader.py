"""Load prompt text by name from ``prompts/*.txt``."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files


@lru_cache(maxsize=None)
def load_prompt(name: str) -> str:
    """The text of ``prompts/<name>.txt``, without its trailing newline."""
    resource = files("prompts").joinpath(f"{name}.txt")
    if not resource.is_file():
        raise FileNotFoundError(f"no prompt named {name!r} in the prompts package")
    return resource.read_text(encoding="utf-8").rstrip("\n")
