"""/v1/files through the openai SDK: uploads of each kind, lists, content, deletion; bad uploads in OpenAI's error
shape; a file is its app's alone (another app gets 404, never sees it listed)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import ADMIN_KEY
from tests.knowledge import make_pdf
from tests.test_errors import assert_error

DOCUMENTS = {
    "notes.txt": b"Plain text notes about the platform.\n",
    "guide.md": b"# Guide\n\nSome *Markdown* text.\n",
    "page.html": b"<html><head><title>Page</title></head><body><p>Hello from HTML.</p></body></html>",
    "paper.pdf": make_pdf([["A small real PDF."]]),
}


def upload(http: httpx.Client, filename: str, data: bytes, purpose: str = "assistants", **fields) -> httpx.Response:
    return http.post("/v1/files", files={"file": (filename, data)}, data={"purpose": purpose, **fields})


def test_upload_list_retrieve_content_and_delete(kb_server):
    client = kb_server.openai()
    created = {name: client.files.create(file=(name, data), purpose="assistants") for name, data in DOCUMENTS.items()}
    for name, file in created.items():
        assert file.id.startswith("file-") and file.object == "file"
        assert (file.filename, file.bytes, file.purpose, file.status) == (
            name, len(DOCUMENTS[name]), "assistants", "uploaded"
        )  # fmt: skip
        assert file.status_details is None and file.created_at > 0
        assert client.files.retrieve(file.id) == file
        assert client.files.content(file.id).content == DOCUMENTS[name]

    # Lists: newest first by default, oldest first with order=asc, paged with limit and after.
    ids = [file.id for file in created.values()]
    listed = client.files.list()
    assert [file.id for file in listed.data] == ids[::-1]
    assert [file.id for file in client.files.list(order="asc").data] == ids
    first = client.files.list(limit=2)
    assert [file.id for file in first.data] == ids[:1:-1] and first.has_more
    rest = client.files.list(limit=2, after=first.data[-1].id)
    assert [file.id for file in rest.data] == ids[1::-1] and not rest.has_more
    assert [file.id for file in client.files.list(limit=1)]  # the SDK pages on == ids[::-1]
    assert client.files.list(purpose="assistants").data and not client.files.list(purpose="batch").data

    deleted = client.files.delete(ids[0])
    assert (deleted.id, deleted.deleted, deleted.object) == (ids[0], True, "file")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(ids[0])
    with pytest.raises(openai.NotFoundError):
        client.files.delete(ids[0])
    assert ids[0] not in [file.id for file in client.files.list().data]
    stored = kb_server.settings.data_dir / "files"
    assert sorted(path.name for path in stored.rglob("file-*")) == sorted(ids[1:])


def test_a_filename_with_a_path_keeps_its_name(kb_server):
    with kb_server.http() as http:
        response = upload(http, "../../etc/notes.txt", b"text")
    assert response.status_code == 200, response.text
    assert response.json()["filename"] == "notes.txt"


@pytest.mark.parametrize(
    ("filename", "data", "purpose", "param", "words"),
    [
        ("notes.txt", b"text", "fine-tune", "file", "upload JSON Lines with the extension .jsonl"),
        ("notes.txt", b"text", "batch", "purpose", "Invalid purpose 'batch'"),
        ("notes.txt", b"text", "", "purpose", "purpose"),  # an empty field is a missing one
        ("report.docx", b"PK\x03\x04 zipped", "assistants", "file", "accepts text (.txt), Markdown (.md)"),
        ("program.exe", b"MZ\x90\x00", "assistants", "file", "Unsupported file type"),
        ("noextension", b"text", "assistants", "file", "Unsupported file type"),
        ("fake.pdf", b"this is not a PDF at all", "assistants", "file", "is not a PDF"),
        ("junk.txt", bytes(range(256)) * 4, "assistants", "file", "binary"),
        ("latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1"), "assistants", "file", "not in UTF-8"),
        ("renamed.txt", make_pdf([["x"]]), "assistants", "file", "holds a PDF"),
        ("page.html", b"\x00\x01\x02\x03" * 50, "assistants", "file", "not HTML text"),
    ],
)
def test_bad_uploads_are_refused(kb_server, filename, data, purpose, param, words):
    with kb_server.http() as http:
        error = assert_error(upload(http, filename, data, purpose), 400, param=param)
    assert words in error["message"]
    assert not kb_server.openai().files.list().data


def test_bad_upload_requests(kb_server):
    with kb_server.http() as http:
        assert_error(http.post("/v1/files", data={"purpose": "assistants"}), 400, param="file")
        assert_error(http.post("/v1/files", files={"file": ("a.txt", b"x")}), 400, param="purpose")
        assert_error(http.post("/v1/files", json={"purpose": "assistants"}), 400)
        assert_error(
            http.post("/v1/files", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}), 400
        )
        # OpenAI's expiry policy is not implemented: refused by name, not dropped.
        response = upload(
            http, "a.txt", b"x", **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}
        )
        assert_error(response, 400, code="unsupported_parameter", param="expires_after")
        assert_error(http.get("/v1/files", params={"limit": 0}), 400, param="limit")
        assert_error(http.get("/v1/files", params={"order": "sideways"}), 400, param="order")
        assert_error(http.get("/v1/files", params={"after": "file-missing"}), 404, param="after")


def test_oversized_uploads_get_413(live_server, mock_upstream):
    from chains.model_routes import ModelRoute

    server = live_server(
        model_routes=[ModelRoute(name="mock", base_url=mock_upstream, max_retries=0)], max_file_bytes=10_000
    )
    with server.http() as http:
        # Over the file limit: refused by the route, naming the file.
        error = assert_error(upload(http, "big.txt", b"a" * 10_001), 413, param="file")
        assert "at most 10000 bytes" in error["message"]
        # Far over it: refused before the body is read.
        assert_error(upload(http, "huge.txt", b"a" * 200_000), 413)
        # At the limit: fine, although above GENAI_MAX_BODY_BYTES' cap on other routes would not matter here.
        assert upload(http, "fits.txt", b"a" * 10_000).status_code == 200
    with pytest.raises(openai.APIStatusError) as raised:
        server.openai().files.create(file=("big.txt", b"a" * 10_001), purpose="assistants")
    assert raised.value.status_code == 413


def test_uploads_above_the_json_body_limit_are_fine(kb_server):
    data = b"Line of text.\n" * 100_000  # 1.4 MB, over GENAI_MAX_BODY_BYTES (1 MiB)
    file = kb_server.openai().files.create(file=("long.txt", data), purpose="assistants")
    assert file.bytes == len(data)
    with kb_server.http() as http:  # the JSON routes keep their limit
        assert_error(http.post("/v1/embeddings", content=b"x" * (1024 * 1024 + 1)), 413)


def test_files_belong_to_their_app(kb_server):
    owner = kb_server.openai()
    other = kb_server.openai(key=kb_server.create_key("other-app"))
    file = owner.files.create(file=("secret.txt", b"Only for the owner."), purpose="assistants")
    for call in (
        lambda: other.files.retrieve(file.id),
        lambda: other.files.content(file.id),
        lambda: other.files.delete(file.id),
    ):
        with pytest.raises(openai.NotFoundError) as raised:
            call()
        assert raised.value.status_code == 404
    assert other.files.list().data == []
    with kb_server.http(key=kb_server.create_key("other-app")) as http:
        assert_error(http.get("/v1/files", params={"after": file.id}), 404, param="after")
        assert_error(http.get(f"/v1/files/{file.id}/content"), 404, code="not_found")
    assert owner.files.retrieve(file.id).id == file.id  # untouched


def test_admin_and_missing_keys(kb_server):
    with kb_server.http(key=ADMIN_KEY) as admin:
        assert_error(admin.get("/v1/files"), 403, code="permission_denied")
        assert_error(upload(admin, "a.txt", b"x"), 403)
    with kb_server.http(key="") as anonymous:
        assert_error(anonymous.get("/v1/files"), 401, code="invalid_api_key")
        assert_error(upload(anonymous, "a.txt", b"x"), 401)
