"""Request bodies and responses of the knowledge base's routes (files, vector stores, search) and of embeddings,
in OpenAI's shapes (the openai SDK's ``FileObject``, ``VectorStore``, ``VectorStoreFile``,
``VectorStoreSearchResponse``, ``CreateEmbeddingResponse``).

OpenAI fields the platform does not implement are declared so that sending them is refused by name (400
``unsupported_parameter``), never dropped silently: see ``refuse_unsupported``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Generic, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from errors import InvalidRequest
from server.schemas import Item, ObjectList, ResponseBody

# OpenAI's metadata: at most 16 pairs, keys up to 64 characters, values up to 512.
Metadata = Annotated[
    dict[Annotated[StrictStr, Field(max_length=64)], Annotated[StrictStr, Field(max_length=512)]],
    Field(max_length=16),
]
ObjectId = Annotated[StrictStr, Field(min_length=1, max_length=64)]


def refuse_unsupported(body: BaseModel, reasons: dict[str, str]) -> None:
    """A 400 naming the first field of ``reasons`` the client set (to anything but null)."""
    for name, reason in reasons.items():
        if getattr(body, name, None) is not None:
            raise InvalidRequest(
                f"'{name}' is not supported by this platform: {reason}", param=name, code="unsupported_parameter"
            )


def check_chunking_strategy(strategy: dict[str, Any] | None) -> None:
    """Only ``auto``: chunks are made by characters with the platform's settings (``GENAI_CHUNK_SIZE``)."""
    if strategy is not None and strategy != {"type": "auto"}:
        raise InvalidRequest(
            "Only the 'auto' chunking strategy is supported: files are split by the platform's chunk settings.",
            param="chunking_strategy",
            code="unsupported_value",
        )


class CursorList(ObjectList[Item], Generic[Item]):
    """OpenAI's paginated list: pass ``last_id`` as ``after`` for the next page."""

    first_id: str | None
    last_id: str | None
    has_more: bool

    @classmethod
    def page(cls, data: Sequence[Item], has_more: bool) -> Self:
        ids = [item.id for item in data]  # type: ignore[attr-defined]
        return cls(
            data=list(data), first_id=ids[0] if ids else None, last_id=ids[-1] if ids else None, has_more=has_more
        )


# ---------------------------------------------------------------- files


class FileObject(ResponseBody):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = Field(
        description="processed once ingested into a vector store; error (with status_details) when its text could "
        "not be read"
    )
    status_details: str | None
    expires_at: int | None = None


class FileList(CursorList[FileObject]):
    pass


class FileDeleted(ResponseBody):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


# ---------------------------------------------------------------- vector stores


class VectorStoreCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr | None = Field(None, max_length=256)
    metadata: Metadata | None = None
    file_ids: list[ObjectId] | None = Field(None, max_length=500, description="files to attach (and ingest)")
    chunking_strategy: dict[str, Any] | None = Field(None, description='only {"type": "auto"}')
    default: StrictBool | None = Field(
        None,
        description="the platform's extension: make it the app's default store (chat requests naming no store "
        "search it)",
    )
    expires_after: dict[str, Any] | None = Field(None, description="not supported: stores do not expire")
    description: StrictStr | None = Field(None, description="not supported")


class VectorStoreUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr | None = Field(None, max_length=256)
    metadata: Metadata | None = None
    default: StrictBool | None = Field(
        None, description="the platform's extension: true makes it the app's default store, false stops that"
    )
    expires_after: dict[str, Any] | None = Field(None, description="not supported: stores do not expire")


STORE_UNSUPPORTED = {
    "expires_after": "vector stores do not expire here; delete one when it is no longer needed.",
    "description": "a store has a name and metadata only.",
}


class FileCounts(ResponseBody):
    in_progress: int
    completed: int
    failed: int
    cancelled: int
    total: int


class VectorStoreObject(ResponseBody):
    id: str
    object: Literal["vector_store"] = "vector_store"
    created_at: int
    name: str
    usage_bytes: int = Field(description="what its completed files take: their chunks' text and vectors")
    file_counts: FileCounts
    status: Literal["expired", "in_progress", "completed"] = Field(
        description="in_progress while a file is being ingested"
    )
    expires_after: dict[str, Any] | None = None
    expires_at: int | None = None
    last_active_at: int | None
    metadata: dict[str, str]
    default: bool = Field(description="the platform's extension: whether it is the app's default store")


class VectorStoreList(CursorList[VectorStoreObject]):
    pass


class VectorStoreDeleted(ResponseBody):
    id: str
    object: Literal["vector_store.deleted"] = "vector_store.deleted"
    deleted: bool = True


class VectorStoreFileCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file_id: ObjectId
    chunking_strategy: dict[str, Any] | None = Field(None, description='only {"type": "auto"}')
    attributes: dict[str, Any] | None = Field(None, description="not supported (nor are search filters)")


class LastError(ResponseBody):
    code: Literal["server_error", "unsupported_file", "invalid_file"]
    message: str


class VectorStoreFileObject(ResponseBody):
    id: str = Field(description="the file's id")
    object: Literal["vector_store.file"] = "vector_store.file"
    created_at: int
    vector_store_id: str
    status: Literal["in_progress", "completed", "cancelled", "failed"]
    last_error: LastError | None
    usage_bytes: int
    chunking_strategy: dict[str, Any] = Field(
        {"type": "other"}, description='{"type": "other"}: chunks are made by characters, not tokens'
    )
    attributes: dict[str, Any] = Field(default_factory=dict)


class VectorStoreFileList(CursorList[VectorStoreFileObject]):
    pass


class VectorStoreFileDeleted(ResponseBody):
    id: str
    object: Literal["vector_store.file.deleted"] = "vector_store.file.deleted"
    deleted: bool = True


# ---------------------------------------------------------------- search


class RankingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ranker: Literal["none", "auto", "default-2024-11-15"] | None = Field(
        None, description="accepted; results are always ranked by hybrid retrieval (dense and BM25, fused)"
    )
    score_threshold: float | None = Field(None, ge=0, le=1, description="the lowest cosine similarity kept")


class VectorStoreSearch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: StrictStr | list[StrictStr]
    max_num_results: StrictInt = Field(10, ge=1, le=50)
    ranking_options: RankingOptions | None = None
    rewrite_query: StrictBool = False
    filters: dict[str, Any] | None = Field(None, description="not supported: files carry no attributes")


class SearchContent(ResponseBody):
    type: Literal["text"] = "text"
    text: str


class SearchResult(ResponseBody):
    file_id: str
    filename: str
    score: float = Field(description="cosine similarity of the chunk to the query, from 0 to 1")
    attributes: dict[str, Any] = Field(default_factory=dict)
    content: list[SearchContent]


class SearchResultsPage(ResponseBody):
    object: Literal["vector_store.search_results.page"] = "vector_store.search_results.page"
    search_query: list[str]
    data: list[SearchResult] = Field(description="best first")
    has_more: bool = False
    next_page: str | None = None


# ---------------------------------------------------------------- embeddings


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]] = Field(
        description="a string or a list of strings (token ids are not supported)"
    )
    model: StrictStr = Field(description="the embedding model's id, as GET /v1/models lists it")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, ge=1)
    user: StrictStr | None = Field(None, max_length=256)


class Embedding(ResponseBody):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(
        description="the vector, or with encoding_format base64 its little-endian float32 bytes in base64"
    )


class EmbeddingUsage(ResponseBody):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(ResponseBody):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class EmbeddingModelObject(ResponseBody):
    """The embedding model in GET /v1/models, beside the chat routes."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    type: Literal["embedding"] = Field("embedding", description="an embedding model: POST /v1/embeddings takes it")
    dimensions: int | None = Field(description="the vectors' size; null when the upstream decides")
    max_input_tokens: int | None = Field(description="the longest input it reads; null when the upstream decides")
