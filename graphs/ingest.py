"""Ingestion of one file into one vector store: load -> split -> embed -> store -> completed, or -> failed.

A LangGraph ``StateGraph`` run per attached file, in the background (the attach request has returned already).
Everything CPU-heavy runs in worker threads: text extraction (``pypdf`` on a PDF), splitting and the local embedding
model. Embedding goes in batches so that a search's query waits for one batch of a large file, not all of it.

Chunks are stored with ids ``{file_id}:{index}``: ingesting the same file again overwrites, never duplicates. If the
file is detached or deleted while it is being ingested, ``finish`` finds no attachment and removes what ``store``
added. A file with no readable text ends ``failed`` with OpenAI's ``last_error`` (``invalid_file`` or
``unsupported_file``) and a message a person can act on; any other failure is a ``server_error``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from langchain_core.embeddings import Embeddings
from langchain_text_splitters import RecursiveCharacterTextSplitter
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from chains.document_loaders import DocumentError, Kind, extract_text
from errors import APIError
from storage.files import FileStore
from storage.vector_stores import VectorStores

if TYPE_CHECKING:  # memory.knowledge imports chromadb (seconds): loaded with the first ingestion, not at start-up
    from memory.knowledge import Chunk

log = logging.getLogger(__name__)

EMBED_BATCH = 64  # chunks per call of the embedding model


class ChunkIndex(Protocol):
    """What ingestion needs of the knowledge index (``memory.knowledge.KnowledgeIndex`` or a lazy wrapper)."""

    async def add(self, store_id: str, app_id: str, chunks: Sequence[Chunk], vectors: Any = None) -> None: ...

    async def delete_file(self, store_id: str, file_id: str) -> int: ...


@dataclass
class IngestContext:
    files: FileStore
    vector_stores: VectorStores
    knowledge: ChunkIndex
    embeddings: Embeddings
    chunk_size: int = 800
    chunk_overlap: int = 120


class IngestInput(TypedDict):
    app_id: str
    store_id: str
    file_id: str


class IngestState(IngestInput, total=False):
    filename: str
    text: str
    chunks: list[Any]  # memory.knowledge.Chunk
    vectors: list[list[float]]
    # OpenAI's last_error: {"code": "invalid_file" | "unsupported_file" | "server_error", "message": ...}
    error: dict[str, str]
    status: str  # completed or failed, once finished


Node = Callable[[IngestState, Runtime[IngestContext]], Awaitable[dict[str, Any]]]


def _guarded(node: Node) -> Node:
    """A step that fails records why in ``error`` (and the graph goes to ``fail``) instead of raising."""

    async def run(state: IngestState, runtime: Runtime[IngestContext]) -> dict[str, Any]:
        try:
            return await node(state, runtime)
        except DocumentError as exc:
            return {"error": {"code": exc.code, "message": exc.message}}
        except APIError as exc:
            return {"error": {"code": "server_error", "message": exc.message}}
        except Exception as exc:
            log.exception("ingesting %s into %s failed in %s", state["file_id"], state["store_id"], node.__name__)
            return {"error": {"code": "server_error", "message": f"Ingestion failed: {type(exc).__name__}."}}

    run.__name__ = node.__name__
    return run


@_guarded
async def load(state: IngestState, runtime: Runtime[IngestContext]) -> dict[str, Any]:
    """The file's text (a PDF is parsed in a worker thread)."""
    files = runtime.context.files
    file = await files.get(state["app_id"], state["file_id"])
    data = await files.read(file)
    kind: Kind = file.kind  # type: ignore[assignment]
    text = await asyncio.to_thread(extract_text, data, kind)
    return {"filename": file.filename, "text": text}


def split_text(text: str, *, file_id: str, filename: str, chunk_size: int, chunk_overlap: int) -> list[Chunk]:
    """Chunks of about ``chunk_size`` characters at paragraph, line and word boundaries, with their offsets."""
    from memory.knowledge import Chunk

    splitter = RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap, add_start_index=True)
    documents = splitter.create_documents([text])
    chunks = []
    for index, document in enumerate(documents):
        start = int(document.metadata.get("start_index", -1))
        if start < 0:  # the splitter could not place it (it never happens with plain text); keep the order
            start = chunks[-1].end if chunks else 0
        chunks.append(
            Chunk(
                text=document.page_content,
                file_id=file_id,
                filename=filename,
                index=index,
                start=start,
                end=start + len(document.page_content),
            )
        )
    return chunks


@_guarded
async def split(state: IngestState, runtime: Runtime[IngestContext]) -> dict[str, Any]:
    context = runtime.context
    chunks = await asyncio.to_thread(
        split_text,
        state["text"],
        file_id=state["file_id"],
        filename=state["filename"],
        chunk_size=context.chunk_size,
        chunk_overlap=context.chunk_overlap,
    )
    if not chunks:
        return {"error": {"code": "invalid_file", "message": "The file has no text to index."}}
    return {"chunks": chunks, "text": ""}  # the text is in the chunks now; do not keep it twice


@_guarded
async def embed(state: IngestState, runtime: Runtime[IngestContext]) -> dict[str, Any]:
    embeddings = runtime.context.embeddings
    texts = [chunk.text for chunk in state["chunks"]]
    vectors: list[list[float]] = []
    for start in range(0, len(texts), EMBED_BATCH):
        vectors.extend(await embeddings.aembed_documents(texts[start : start + EMBED_BATCH]))
    return {"vectors": vectors}


@_guarded
async def store(state: IngestState, runtime: Runtime[IngestContext]) -> dict[str, Any]:
    """Replace the file's chunks in the store (a file ingested again with other settings leaves no old tail)."""
    knowledge = runtime.context.knowledge
    await knowledge.delete_file(state["store_id"], state["file_id"])
    await knowledge.add(state["store_id"], state["app_id"], state["chunks"], state["vectors"])
    return {}


def usage_bytes(chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> int:
    """What the file takes in the store: its chunks' text (UTF-8) and their vectors (4-byte floats)."""
    return sum(len(chunk.text.encode("utf-8")) for chunk in chunks) + sum(4 * len(vector) for vector in vectors)


async def finish(state: IngestState, runtime: Runtime[IngestContext]) -> dict[str, Any]:
    """Mark the attachment completed (the store's content version grows) and the file processed."""
    context = runtime.context
    app_id, store_id, file_id = state["app_id"], state["store_id"], state["file_id"]
    chunks, vectors = state["chunks"], state["vectors"]
    attached = await context.vector_stores.finish(
        app_id, store_id, file_id, status="completed", chunks=len(chunks), usage_bytes=usage_bytes(chunks, vectors)
    )
    if not attached:  # detached or deleted while it was being ingested: take its chunks out again
        await context.knowledge.delete_file(store_id, file_id)
        return {"status": "cancelled"}
    await context.files.set_status(app_id, file_id, "processed")
    return {"status": "completed"}


async def fail(state: IngestState, runtime: Runtime[IngestContext]) -> dict[str, Any]:
    context = runtime.context
    error = state["error"]
    await context.vector_stores.finish(
        state["app_id"], state["store_id"], state["file_id"], status="failed", last_error=error
    )
    await context.files.set_status(state["app_id"], state["file_id"], "error", error["message"])
    return {"status": "failed"}


def _next(step: str) -> Callable[[IngestState], str]:
    def route(state: IngestState) -> str:
        return "fail" if state.get("error") else step

    return route


def build_ingest_graph() -> CompiledStateGraph:
    """Compiled once per process; each run gets its dependencies as ``context=IngestContext(...)``."""
    graph = StateGraph(IngestState, input_schema=IngestInput, context_schema=IngestContext)
    steps = [("load", load), ("split", split), ("embed", embed), ("store", store), ("finish", finish)]
    for name, node in steps:
        graph.add_node(name, node)
    graph.add_node("fail", fail)
    graph.add_edge(START, "load")
    for (name, _), (following, _) in zip(steps, steps[1:]):
        graph.add_conditional_edges(name, _next(following), [following, "fail"])
    graph.add_edge("finish", END)
    graph.add_edge("fail", END)
    return graph.compile(name="ingest")
