"""/v1/vector_stores: an app's knowledge collections, the files attached to them, and search, in OpenAI's shapes.

Attaching a file answers at once with status ``in_progress``; the ingestion runs in the background and ends
``completed`` or ``failed`` (``last_error`` says why). The platform's extension: ``"default": true`` on create or
modify makes a store the app's default (searched by chat requests that name no store).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from errors import InvalidRequest
from server.deps import AppCaller, ServicesDep
from server.knowledge_schemas import (
    STORE_UNSUPPORTED,
    FileCounts,
    SearchContent,
    SearchResult,
    SearchResultsPage,
    VectorStoreCreate,
    VectorStoreDeleted,
    VectorStoreFileCreate,
    VectorStoreFileDeleted,
    VectorStoreFileList,
    VectorStoreFileObject,
    VectorStoreList,
    VectorStoreObject,
    VectorStoreSearch,
    VectorStoreUpdate,
    check_chunking_strategy,
    refuse_unsupported,
)
from server.services import Services
from storage import tables
from storage.vector_stores import FileCounts as Counts

router = APIRouter(prefix="/v1/vector_stores", tags=["vector stores"])

MAX_QUERY_CHARS = 10_000
Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(max_length=64)]


def store_object(store: tables.VectorStore, counts: Counts, default_id: str | None) -> VectorStoreObject:
    return VectorStoreObject(
        id=store.id,
        created_at=store.created_at,
        name=store.name or "",
        usage_bytes=counts.usage_bytes,
        file_counts=FileCounts(
            in_progress=counts.in_progress,
            completed=counts.completed,
            failed=counts.failed,
            cancelled=counts.cancelled,
            total=counts.total,
        ),
        status="in_progress" if counts.in_progress else "completed",
        last_active_at=store.last_active_at,
        metadata=store.meta or {},
        default=store.id == default_id,
    )


async def _store_objects(services: Services, app_id: str, stores: list[tables.VectorStore]) -> list[VectorStoreObject]:
    counts = await services.vector_stores.file_counts(app_id, [store.id for store in stores])
    default_id = await services.vector_stores.default_store(app_id)
    return [store_object(store, counts[store.id], default_id) for store in stores]


def knowledge_file(file: tables.File, param: str) -> None:
    """Only documents (purpose ``assistants``) go into vector stores; fine-tuning data does not."""
    if file.purpose != "assistants":
        raise InvalidRequest(
            f"File {file.id} has purpose '{file.purpose}': only files with purpose 'assistants' go into vector stores.",
            param=param,
            code="invalid_value",
        )


def file_object(row: tables.VectorStoreFile) -> VectorStoreFileObject:
    return VectorStoreFileObject(
        id=row.file_id,
        created_at=row.created_at,
        vector_store_id=row.vector_store_id,
        status=row.status,
        last_error=row.last_error,
        usage_bytes=row.usage_bytes,
    )


@router.post("")
async def create_vector_store(body: VectorStoreCreate, caller: AppCaller, services: ServicesDep) -> VectorStoreObject:
    refuse_unsupported(body, STORE_UNSUPPORTED)
    check_chunking_strategy(body.chunking_strategy)
    file_ids = list(dict.fromkeys(body.file_ids or []))
    for file_id in file_ids:  # every file is the app's, or nothing is created
        knowledge_file(await services.files.get(caller.app_id, file_id, param="file_ids"), "file_ids")
    store = await services.vector_stores.create(caller.app_id, name=body.name, metadata=body.metadata)
    if body.default:
        await services.vector_stores.set_default(caller.app_id, store.id, True)
        services.auth.forget()  # the app's default store travels with its callers
    for file_id in file_ids:
        await services.knowledge_base.attach(caller.app_id, store.id, file_id)
    return (await _store_objects(services, caller.app_id, [store]))[0]


@router.get("")
async def list_vector_stores(
    caller: AppCaller,
    services: ServicesDep,
    limit: Limit = 20,
    order: Literal["asc", "desc"] = "desc",
    after: Cursor = None,
    before: Cursor = None,
) -> VectorStoreList:
    page = await services.vector_stores.list(caller.app_id, limit=limit, order=order, after=after, before=before)
    return VectorStoreList.page(await _store_objects(services, caller.app_id, page.items), page.has_more)


@router.get("/{vector_store_id}")
async def retrieve_vector_store(vector_store_id: str, caller: AppCaller, services: ServicesDep) -> VectorStoreObject:
    store = await services.vector_stores.get(caller.app_id, vector_store_id)
    return (await _store_objects(services, caller.app_id, [store]))[0]


@router.post("/{vector_store_id}")
async def modify_vector_store(
    vector_store_id: str, body: VectorStoreUpdate, caller: AppCaller, services: ServicesDep
) -> VectorStoreObject:
    refuse_unsupported(body, STORE_UNSUPPORTED)
    await services.vector_stores.get(caller.app_id, vector_store_id)
    changes = body.model_dump(include={"name", "metadata"}, exclude_unset=True)
    if "metadata" in changes:
        changes["meta"] = changes.pop("metadata") or {}
    store = await services.vector_stores.update(caller.app_id, vector_store_id, **changes)
    if body.default is not None:
        await services.vector_stores.set_default(caller.app_id, store.id, body.default)
        services.auth.forget()  # the app's default store travels with its callers
    return (await _store_objects(services, caller.app_id, [store]))[0]


@router.delete("/{vector_store_id}")
async def delete_vector_store(vector_store_id: str, caller: AppCaller, services: ServicesDep) -> VectorStoreDeleted:
    """Delete the store and its chunks (the files themselves stay)."""
    await services.knowledge_base.delete_store(caller.app_id, vector_store_id)
    services.auth.forget()  # it may have been the app's default store
    return VectorStoreDeleted(id=vector_store_id)


# ---------------------------------------------------------------- files in a store


@router.post("/{vector_store_id}/files")
async def create_vector_store_file(
    vector_store_id: str, body: VectorStoreFileCreate, caller: AppCaller, services: ServicesDep
) -> VectorStoreFileObject:
    """Attach a file and start its ingestion (status ``in_progress``; poll the file for ``completed``)."""
    if body.attributes:
        raise InvalidRequest(
            "'attributes' is not supported by this platform: files carry no attributes (nor do searches filter).",
            param="attributes",
            code="unsupported_parameter",
        )
    check_chunking_strategy(body.chunking_strategy)
    await services.vector_stores.get(caller.app_id, vector_store_id)
    knowledge_file(await services.files.get(caller.app_id, body.file_id), "file_id")
    return file_object(await services.knowledge_base.attach(caller.app_id, vector_store_id, body.file_id))


@router.get("/{vector_store_id}/files")
async def list_vector_store_files(
    vector_store_id: str,
    caller: AppCaller,
    services: ServicesDep,
    limit: Limit = 20,
    order: Literal["asc", "desc"] = "desc",
    after: Cursor = None,
    before: Cursor = None,
    filter: Literal["in_progress", "completed", "failed", "cancelled"] | None = None,
) -> VectorStoreFileList:
    await services.vector_stores.get(caller.app_id, vector_store_id)
    page = await services.vector_stores.list_files(
        caller.app_id, vector_store_id, status=filter, limit=limit, order=order, after=after, before=before
    )
    return VectorStoreFileList.page([file_object(row) for row in page.items], page.has_more)


@router.get("/{vector_store_id}/files/{file_id}")
async def retrieve_vector_store_file(
    vector_store_id: str, file_id: str, caller: AppCaller, services: ServicesDep
) -> VectorStoreFileObject:
    await services.vector_stores.get(caller.app_id, vector_store_id)
    return file_object(await services.vector_stores.get_file(caller.app_id, vector_store_id, file_id))


@router.delete("/{vector_store_id}/files/{file_id}")
async def delete_vector_store_file(
    vector_store_id: str, file_id: str, caller: AppCaller, services: ServicesDep
) -> VectorStoreFileDeleted:
    """Detach the file: its chunks leave the store (the file itself stays)."""
    await services.vector_stores.get(caller.app_id, vector_store_id)
    await services.knowledge_base.detach(caller.app_id, vector_store_id, file_id)
    return VectorStoreFileDeleted(id=file_id)


# ---------------------------------------------------------------- search


def _queries(query: str | list[str]) -> list[str]:
    queries = [query] if isinstance(query, str) else list(query)
    if not queries or not all(text.strip() for text in queries):
        raise InvalidRequest("'query' must be a non-empty string (or a list of them).", param="query")
    if sum(len(text) for text in queries) > MAX_QUERY_CHARS:
        raise InvalidRequest(f"'query' is longer than {MAX_QUERY_CHARS} characters.", param="query")
    return queries


@router.post("/{vector_store_id}/search")
async def search_vector_store(
    vector_store_id: str, body: VectorStoreSearch, caller: AppCaller, services: ServicesDep
) -> SearchResultsPage:
    """The chunks that best match the query: hybrid retrieval (embeddings and BM25, fused by rank)."""
    queries = _queries(body.query)
    refuse_unsupported(body, {"filters": "files carry no attributes to filter on."})
    if body.rewrite_query:
        raise InvalidRequest(
            "'rewrite_query' is not supported by this platform: queries are searched as sent.",
            param="rewrite_query",
            code="unsupported_value",
        )
    store = await services.vector_stores.get(caller.app_id, vector_store_id)
    threshold = body.ranking_options.score_threshold if body.ranking_options else None
    hits = await services.knowledge.search(
        [store.id],
        "\n".join(queries),
        versions={store.id: store.content_version},
        k=body.max_num_results,
        min_score=threshold or 0.0,
    )
    attached = await services.vector_stores.attached_files(caller.app_id, [store.id]) if hits else set()
    await services.vector_stores.touch(caller.app_id, store.id)
    return SearchResultsPage(
        search_query=queries,
        data=[
            SearchResult(
                file_id=hit.chunk.file_id,
                filename=hit.chunk.filename,
                score=hit.score,
                content=[SearchContent(text=hit.chunk.text)],
            )
            for hit in hits
            if hit.chunk.file_id in attached
        ],
    )
