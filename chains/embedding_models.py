"""The platform's one embedding model, as ``POST /v1/embeddings`` and the knowledge base use it.

``embeddings`` is the LangChain ``Embeddings`` that ingestion and retrieval call. ``embed`` is the API's call: it
checks what the model can take (input length, ``dimensions``) and reports the tokens it read, which LangChain's
interface does not. The local model's tokens are counted with its own tokenizer; a route's come from its upstream.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Protocol

import openai
from langchain_core.embeddings import Embeddings

from chains.embeddings import LOCAL_EMBEDDING_MODEL, EmbeddingRoute, LocalEmbeddings, local_embeddings
from errors import APIError, InvalidRequest, ServiceUnavailable, UpstreamError, UpstreamTimeout

LOCAL_DIMENSIONS = 384
LOCAL_MAX_TOKENS = 256  # the model's max_seq_length


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int


class EmbeddingModel(Protocol):
    name: str
    owned_by: str
    embeddings: Embeddings
    input_price: float  # per million input tokens

    async def embed(self, texts: list[str], *, dimensions: int | None = None) -> EmbeddingResult: ...

    def describe(self) -> dict[str, int | None]:
        """``dimensions`` and ``max_input_tokens`` for GET /v1/models (None when unknown), without loading a model."""
        ...

    async def aclose(self) -> None: ...


class LocalEmbeddingModel:
    """all-MiniLM-L6-v2 in process. Its vectors have a fixed size, and it reads at most 256 tokens per input: a
    longer input is refused (as OpenAI refuses one over its model's context) rather than silently truncated."""

    owned_by = "sentence-transformers"
    input_price = 0.0

    def __init__(self, local: LocalEmbeddings | None = None) -> None:
        self.local = local or local_embeddings()
        self.name = LOCAL_EMBEDDING_MODEL
        self.embeddings: Embeddings = self.local

    async def embed(self, texts: list[str], *, dimensions: int | None = None) -> EmbeddingResult:
        # Everything that touches the model runs in a worker thread: its first use loads it (seconds).
        counts, native = await asyncio.to_thread(self._measure, texts)
        if dimensions is not None and dimensions != native:
            raise InvalidRequest(
                f"The model {self.name} makes vectors of {native} dimensions only; "
                "leave 'dimensions' out or set it to that.",
                param="dimensions",
                code="unsupported_value",
            )
        limit = self.local.model.max_seq_length
        for index, count in enumerate(counts):
            if count > limit:
                raise InvalidRequest(
                    f"Input {index} is {count} tokens long, but {self.name} reads at most {limit} tokens per input: "
                    "split it into shorter texts.",
                    param="input",
                    code="context_length_exceeded",
                )
        vectors = await self.local.aembed_documents(texts)
        return EmbeddingResult(vectors=vectors, prompt_tokens=sum(counts))

    def _measure(self, texts: list[str]) -> tuple[list[int], int]:
        """Each input's tokens, special tokens included and nothing truncated; the vectors' size."""
        tokenized = self.local.model.tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
        return [len(ids) for ids in tokenized], self.local.dimensions

    def describe(self) -> dict[str, int | None]:
        if "model" not in vars(self.local):  # not loaded yet: all-MiniLM-L6-v2's figures, known without loading it
            return {"dimensions": LOCAL_DIMENSIONS, "max_input_tokens": LOCAL_MAX_TOKENS}
        return {"dimensions": self.local.dimensions, "max_input_tokens": self.local.model.max_seq_length}

    async def aclose(self) -> None:
        pass


class RoutedEmbeddingModel:
    """An OpenAI-compatible embeddings endpoint: requests go through the openai SDK, which returns the usage."""

    owned_by = "system"

    def __init__(self, route: EmbeddingRoute) -> None:
        self.route = route
        self.name = route.name
        self.input_price = route.input_price
        self.embeddings = route.build()
        self.client = openai.AsyncOpenAI(
            base_url=route.base_url, api_key=_api_key(route), timeout=route.timeout, max_retries=1
        )

    async def embed(self, texts: list[str], *, dimensions: int | None = None) -> EmbeddingResult:
        size = dimensions if dimensions is not None else self.route.dimensions
        extra = {"dimensions": size} if size is not None else {}
        try:
            response = await self.client.embeddings.create(
                model=self.route.model or self.route.name, input=texts, encoding_format="float", **extra
            )
        except openai.APIError as exc:
            raise _upstream_error(self.name, exc) from exc
        vectors = [item.embedding for item in sorted(response.data, key=lambda item: item.index)]
        tokens = response.usage.prompt_tokens if response.usage is not None else 0
        return EmbeddingResult(vectors=vectors, prompt_tokens=tokens)

    def describe(self) -> dict[str, int | None]:
        return {"dimensions": self.route.dimensions, "max_input_tokens": None}

    async def aclose(self) -> None:
        await self.client.close()


def build_embedding_model(route: EmbeddingRoute | None) -> EmbeddingModel:
    """The route when one is configured, else the local model (nothing is loaded until first use)."""
    return RoutedEmbeddingModel(route) if route is not None else LocalEmbeddingModel()


def _api_key(route: EmbeddingRoute) -> str:
    if route.api_key is not None:
        return route.api_key.get_secret_value()
    return os.environ.get(route.api_key_env or "", "") or "not-needed"


def _upstream_error(name: str, exc: openai.APIError) -> APIError:
    """The upstream's refusal of the input is the client's 400; anything else is the upstream's fault."""
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamTimeout(f"The embedding model {name} did not answer in time.")
    if isinstance(exc, openai.APIConnectionError):
        return ServiceUnavailable(f"The embedding model {name} cannot be reached.")
    if isinstance(exc, openai.APIStatusError) and exc.status_code in (400, 422):
        body = exc.body if isinstance(exc.body, dict) else {}
        body = body["error"] if isinstance(body.get("error"), dict) else body
        detail = body.get("message")
        return InvalidRequest(
            f"The embedding model {name} refused the request: {detail or exc.message}",
            param=body.get("param") if isinstance(body.get("param"), str) else None,
        )
    return UpstreamError(f"The embedding model {name} answered with an error: {exc.message}")
