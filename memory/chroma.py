"""The Chroma client of the knowledge base: embedded by default, a Chroma server when a URL is configured.

The embedded ``PersistentClient`` keeps its SQLite and HNSW files open in one process: fine for a single worker, but
two processes writing the same directory corrupt it. With several workers or replicas, run ``chroma run`` once and
point every process at it with ``url``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import chromadb
from chromadb.api import ClientAPI
from chromadb.config import Settings


def chroma_settings() -> Settings:
    """No telemetry (nothing leaves the machine) and no ``reset()`` (a production store is never wiped by a call)."""
    return Settings(anonymized_telemetry=False, allow_reset=False)


def open_chroma(data_dir: Path, url: str | None = None) -> ClientAPI:
    """A client of the server at ``url`` (``http://host:port``), else an embedded store in ``data_dir/chroma``."""
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a Chroma server URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return chromadb.HttpClient(
            host=parts.hostname, port=port, ssl=parts.scheme == "https", settings=chroma_settings()
        )
    path = Path(data_dir) / "chroma"
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=chroma_settings())
