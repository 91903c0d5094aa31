"""/v1/files: uploads in OpenAI's shape; purpose ``assistants`` feeds the knowledge base (vector stores),
``fine-tune`` fine-tuning jobs (JSON Lines of chat examples, checked at upload by ``chains.fine_tuning.dataset``).

A file belongs to the app whose key uploaded it: another app's file id is a 404, and lists never show it.
"""

from __future__ import annotations

import asyncio
from pathlib import PurePosixPath
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from chains.document_loaders import ACCEPTED, detect_kind
from chains.fine_tuning import dataset
from errors import InvalidRequest, PayloadTooLarge
from server.deps import AppCaller, ServicesDep
from server.knowledge_schemas import FileDeleted, FileList, FileObject
from storage import tables

router = APIRouter(prefix="/v1", tags=["files"])

PURPOSES = ("assistants", "fine-tune")
FORM_FIELDS = {"file", "purpose"}
MAX_FILENAME = 255


def file_object(file: tables.File) -> FileObject:
    return FileObject.of_row(file)


def check_purpose(purpose: str) -> None:
    if purpose in PURPOSES:
        return
    raise InvalidRequest(
        f"Invalid purpose '{purpose}': this platform accepts 'assistants' (files for vector stores) and 'fine-tune' "
        "(training files for fine-tuning jobs).",
        param="purpose",
        code="invalid_value",
    )


def clean_filename(name: str | None) -> str:
    """The name without any directory part (clients may send a path)."""
    filename = PurePosixPath((name or "").replace("\\", "/")).name.strip()
    if not filename:
        raise InvalidRequest("The uploaded file has no name: send it with its filename and extension.", param="file")
    if len(filename) > MAX_FILENAME:
        raise InvalidRequest(f"The filename is longer than {MAX_FILENAME} characters.", param="file")
    return filename


@router.post("/files")
async def create_file(
    request: Request,
    caller: AppCaller,
    services: ServicesDep,
    file: Annotated[
        UploadFile, File(description=f"the document: {ACCEPTED}; for 'fine-tune', JSON Lines (.jsonl) of chat examples")
    ],
    purpose: Annotated[str, Form(max_length=64, description="'assistants' or 'fine-tune'")],
) -> FileObject:
    """Upload a file (multipart form: ``file`` and ``purpose``)."""
    unknown = sorted({name.split("[")[0] for name in (await request.form()).keys()} - FORM_FIELDS)
    if unknown:
        raise InvalidRequest(
            f"'{unknown[0]}' is not supported by this platform's uploads (files do not expire).",
            param=unknown[0],
            code="unsupported_parameter",
        )
    check_purpose(purpose)
    filename = clean_filename(file.filename)
    limit = services.settings.max_file_bytes
    if file.size is not None and file.size > limit:
        raise PayloadTooLarge(f"The file is {file.size} bytes: files may be at most {limit} bytes.", param="file")
    data = await file.read()
    if len(data) > limit:
        raise PayloadTooLarge(f"The file is {len(data)} bytes: files may be at most {limit} bytes.", param="file")
    if purpose == "fine-tune":
        await asyncio.to_thread(dataset.check_upload, filename, data, services.models)
        kind = dataset.KIND
    else:
        kind = await asyncio.to_thread(detect_kind, filename, data)
    created = await services.files.create(
        app_id=caller.app_id, filename=filename, purpose=purpose, kind=kind, data=data
    )
    return file_object(created)


@router.get("/files")
async def list_files(
    caller: AppCaller,
    services: ServicesDep,
    purpose: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> FileList:
    page = await services.files.list(caller.app_id, purpose=purpose, limit=limit, order=order, after=after)
    return FileList.page([file_object(file) for file in page.items], page.has_more)


@router.get("/files/{file_id}")
async def retrieve_file(file_id: str, caller: AppCaller, services: ServicesDep) -> FileObject:
    return file_object(await services.files.get(caller.app_id, file_id))


@router.get(
    "/files/{file_id}/content",
    response_class=Response,
    responses={
        200: {
            "description": "The file's bytes, as uploaded",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def retrieve_file_content(file_id: str, caller: AppCaller, services: ServicesDep) -> Response:
    file = await services.files.get(caller.app_id, file_id)
    data = await services.files.read(file)
    disposition = f"attachment; filename*=UTF-8''{quote(file.filename)}"
    return Response(data, media_type="application/octet-stream", headers={"Content-Disposition": disposition})


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, caller: AppCaller, services: ServicesDep) -> FileDeleted:
    """Delete the file: its chunks leave every vector store it is in, then its bytes and its record."""
    await services.knowledge_base.delete_file(caller.app_id, file_id)
    return FileDeleted(id=file_id)
