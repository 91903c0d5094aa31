"""A throwaway Chroma server (``chroma run``) for tests of the client/server mode of the knowledge base: the same
``LocalChromaServer`` that ``genai serve --workers N`` starts, on a temporary directory.

Tests import the fixture with ``from tests.chroma_server import chroma_server_url  # noqa: F401``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from memory.chroma import LocalChromaServer


@contextmanager
def chroma_server(timeout: float = 60.0) -> Iterator[str]:
    """``chroma run`` on a free port with its data in a temporary directory; yields its URL, stops it afterwards."""
    with (
        tempfile.TemporaryDirectory(prefix="genai-chroma-") as tmp,
        LocalChromaServer(Path(tmp) / "data", log_path=Path(tmp) / "chroma.log", startup_timeout=timeout) as server,
    ):
        yield server.url


@pytest.fixture(scope="session")
def chroma_server_url() -> Iterator[str]:
    """One Chroma server for the test session; its base URL."""
    with chroma_server() as url:
        yield url
