"""/v1/vector_stores through the openai SDK, on real embedded Chroma and the real local embeddings: ingestion of each
file kind, search, removal, files that cannot be read, bad requests, isolation between apps, and ingestion that never
stalls the server."""

from __future__ import annotations

import statistics
import time

import httpx
import openai
import pytest

from chains.model_routes import ModelRoute
from errors import NotFound
from storage import tables
from storage.files import FileStore
from storage.tenants import TenantStore
from storage.vector_stores import VectorStores
from tests.conftest import ADMIN_KEY
from tests.knowledge import encrypted_pdf, make_pdf, wait_for_ingestion
from tests.test_errors import assert_error

FILLER = (
    "Municipal records list many other facts about the town, its markets, its schools and its weather, none of "
    "which matter to this question. "
)
DOCUMENTS = {
    "valves.txt": (
        f"{FILLER * 3}\n\nThe Zephyrine valve was patented in 1897 by the engineer Ottilie Marsh.\n\n{FILLER * 3}"
    ).encode(),
    "gardens.md": (
        "# Orbital gardens\n\n## Crops\n\nHydroponic lettuce on the station grows in 41 days under blue LED light.\n"
    ).encode(),
    "harbour.html": (
        b"<html><head><title>Kellsport harbour</title><script>var note = 'the lighthouse flashes red';</script>"
        b"<style>p { color: red }</style></head><body><h1>Harbour guide</h1>"
        b"<p>The Kellsport lighthouse flashes green every nine seconds.</p></body></html>"
    ),
    "trams.pdf": make_pdf([["Timetable of the city trams."], ["The Quillon tram line closes at 23:40 on weekdays."]]),
}
QUESTIONS = {
    "valves.txt": ("Who patented the Zephyrine valve?", "Ottilie Marsh"),
    "gardens.md": ("How many days does hydroponic lettuce take to grow on the station?", "41 days"),
    "harbour.html": ("What colour does the Kellsport lighthouse flash?", "flashes green"),
    "trams.pdf": ("When does the Quillon tram line close?", "23:40"),
}


def upload(client: openai.OpenAI, filename: str, data: bytes):
    return client.files.create(file=(filename, data), purpose="assistants")


def top_hit(client: openai.OpenAI, store_id: str, query: str):
    page = client.vector_stores.search(store_id, query=query, max_num_results=3)
    assert page.data, f"nothing found for {query!r}"
    return page.data[0]


def test_each_kind_is_ingested_searched_and_removed(kb_server):
    client = kb_server.openai()
    files = {name: upload(client, name, data) for name, data in DOCUMENTS.items()}
    # Two files attached at creation, two afterwards (one through the SDK's polling helper).
    store = client.vector_stores.create(
        name="handbook", metadata={"team": "docs"}, file_ids=[files["valves.txt"].id, files["gardens.md"].id]
    )
    assert store.object == "vector_store" and store.id.startswith("vs_") and store.name == "handbook"
    assert store.metadata == {"team": "docs"} and store.file_counts.total == 2
    attached = client.vector_stores.files.create(store.id, file_id=files["harbour.html"].id)
    assert (attached.object, attached.id, attached.vector_store_id) == (
        "vector_store.file",
        files["harbour.html"].id,
        store.id,
    )
    assert attached.status == "in_progress" and attached.last_error is None
    polled = client.vector_stores.files.create_and_poll(
        file_id=files["trams.pdf"].id, vector_store_id=store.id, poll_interval_ms=100
    )
    assert polled.status == "completed", polled.last_error
    for file in files.values():
        done = wait_for_ingestion(client, store.id, file.id)
        assert done.status == "completed" and done.usage_bytes > 0, done.last_error
        assert client.files.retrieve(file.id).status == "processed"

    store = client.vector_stores.retrieve(store.id)
    assert store.status == "completed"
    assert (store.file_counts.completed, store.file_counts.total, store.file_counts.in_progress) == (4, 4, 0)
    assert store.usage_bytes == sum(
        client.vector_stores.files.retrieve(f.id, vector_store_id=store.id).usage_bytes for f in files.values()
    )
    listed = client.vector_stores.files.list(store.id)
    assert {f.id for f in listed.data} == {f.id for f in files.values()}
    assert len(client.vector_stores.files.list(store.id, filter="completed").data) == 4
    assert client.vector_stores.files.list(store.id, filter="failed").data == []

    for name, (question, expected) in QUESTIONS.items():
        hit = top_hit(client, store.id, question)
        assert (hit.file_id, hit.filename) == (files[name].id, name), (question, hit)
        assert expected in hit.content[0].text and hit.content[0].type == "text"
        assert 0 < hit.score <= 1
    assert "red" not in top_hit(client, store.id, "lighthouse colour").content[0].text  # scripts are not text

    # The raw page, in OpenAI's shape.
    with kb_server.http() as http:
        page = http.post(f"/v1/vector_stores/{store.id}/search", json={"query": "Zephyrine valve"}).json()
    assert page["object"] == "vector_store.search_results.page" and page["search_query"] == ["Zephyrine valve"]
    assert page["has_more"] is False and page["next_page"] is None
    assert set(page["data"][0]) == {"file_id", "filename", "score", "attributes", "content"}

    # Deleting a file takes it out of the store; detaching another does too (the file itself stays).
    client.files.delete(files["trams.pdf"].id)
    assert files["trams.pdf"].id not in {
        h.file_id for h in client.vector_stores.search(store.id, query="Quillon tram").data
    }
    detached = client.vector_stores.files.delete(files["harbour.html"].id, vector_store_id=store.id)
    assert (detached.deleted, detached.object) == (True, "vector_store.file.deleted")
    found = client.vector_stores.search(store.id, query="Kellsport lighthouse green").data
    assert files["harbour.html"].id not in {h.file_id for h in found}
    assert client.files.retrieve(files["harbour.html"].id).id == files["harbour.html"].id
    store = client.vector_stores.retrieve(store.id)
    assert store.file_counts.total == 2
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.retrieve(files["harbour.html"].id, vector_store_id=store.id)

    # Deleting the store drops it; its files stay.
    deleted = client.vector_stores.delete(store.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (store.id, True, "vector_store.deleted")
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(store.id)
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.search(store.id, query="valve")
    assert client.files.retrieve(files["valves.txt"].id)


@pytest.mark.parametrize(
    ("filename", "data", "code", "words"),
    [
        ("cut.pdf", make_pdf([["This PDF is cut short."] * 30])[:400], "invalid_file", "could not be read"),
        ("locked.pdf", encrypted_pdf(["Behind a password."]), "invalid_file", "encrypted"),
        ("empty.pdf", b"", "invalid_file", "empty"),
        ("scanned.pdf", make_pdf([[], []]), "unsupported_file", "no extractable text"),
        ("blank.md", b"   \n\n  \n", "invalid_file", "no text"),
    ],
)
def test_unreadable_files_fail_with_a_reason(kb_server, filename, data, code, words):
    client = kb_server.openai()
    file = upload(client, filename, data)  # accepted as a file
    store = client.vector_stores.create(name="bad", file_ids=[file.id])
    done = wait_for_ingestion(client, store.id, file.id)
    assert done.status == "failed" and done.last_error.code == code and words in done.last_error.message
    file = client.files.retrieve(file.id)
    assert file.status == "error" and file.status_details == done.last_error.message
    store = client.vector_stores.retrieve(store.id)
    assert (store.file_counts.failed, store.file_counts.total, store.status) == (1, 1, "completed")
    assert client.vector_stores.search(store.id, query="password").data == []


def test_attaching_again_while_ingesting_does_not_duplicate(kb_server):
    client = kb_server.openai()
    text = "\n\n".join(f"Paragraph {n}: the river Alder floods its meadows in spring, year {n}." for n in range(400))
    file = upload(client, "alder.txt", text.encode())
    store = client.vector_stores.create(name="alder")
    first = client.vector_stores.files.create(store.id, file_id=file.id)
    second = client.vector_stores.files.create(store.id, file_id=file.id)
    assert first.status == second.status == "in_progress"
    done = wait_for_ingestion(client, store.id, file.id)
    while kb_server.services.knowledge_base.running:  # the second ingestion runs after the first
        time.sleep(0.05)
    done = client.vector_stores.files.retrieve(file.id, vector_store_id=store.id)
    assert done.status == "completed"
    chunks = kb_server.rows(tables.VectorStoreFile.__table__)[0]["chunks"]
    collection = kb_server.services.knowledge._index.client.get_collection(f"vs_{store.id}")
    ids = collection.get(where={"file_id": file.id}, include=[])["ids"]
    assert chunks > 10 and len(ids) == len(set(ids)) == chunks == collection.count()
    assert client.vector_stores.retrieve(store.id).file_counts.total == 1


def test_detaching_during_ingestion_leaves_no_chunks(kb_server):
    client = kb_server.openai()
    text = "\n\n".join(f"Entry {n}: the comet Varela returns every {n + 70} years." for n in range(600))
    file = upload(client, "comets.txt", text.encode())
    store = client.vector_stores.create(name="comets", file_ids=[file.id])
    client.vector_stores.files.delete(file.id, vector_store_id=store.id)
    deadline = time.monotonic() + 120
    while kb_server.services.knowledge_base.running:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.vector_stores.search(store.id, query="comet Varela").data == []
    collection = kb_server.services.knowledge._index.client.get_or_create_collection(f"vs_{store.id}")
    assert collection.get(where={"file_id": file.id}, include=[])["ids"] == []


def test_stores_list_modify_and_default(kb_server):
    client = kb_server.openai()
    stores = [client.vector_stores.create(name=f"store-{n}") for n in range(3)]
    ids = [store.id for store in stores]
    assert [s.id for s in client.vector_stores.list().data] == ids[::-1]
    assert [s.id for s in client.vector_stores.list(order="asc").data] == ids
    page = client.vector_stores.list(limit=2)
    assert [s.id for s in page.data] == ids[:0:-1] and page.has_more
    assert [s.id for s in client.vector_stores.list(limit=2, after=ids[1]).data] == ids[:1]
    assert [s.id for s in client.vector_stores.list(limit=2, before=ids[0]).data] == ids[:0:-1]
    assert [s.id for s in client.vector_stores.list(limit=1)] == ids[::-1]  # the SDK pages on

    renamed = client.vector_stores.update(ids[0], name="renamed", metadata={"owner": "tests"})
    assert (renamed.name, renamed.metadata) == ("renamed", {"owner": "tests"})
    assert client.vector_stores.update(ids[0], metadata=None).metadata == {}
    assert client.vector_stores.create().name == ""  # no name given: an empty one, as OpenAI

    # The platform's extension: one default store per app.
    assert not any(s.model_extra["default"] for s in client.vector_stores.list().data)
    made = client.vector_stores.create(name="main", extra_body={"default": True})
    assert made.model_extra["default"] is True
    switched = client.vector_stores.update(ids[1], extra_body={"default": True})
    assert switched.model_extra["default"] and not client.vector_stores.retrieve(made.id).model_extra["default"]
    app = next(row for row in kb_server.rows(tables.App.__table__) if row["name"] == "tests")
    assert app["default_vector_store_id"] == ids[1]
    client.vector_stores.delete(ids[1])
    app = next(row for row in kb_server.rows(tables.App.__table__) if row["name"] == "tests")
    assert app["default_vector_store_id"] is None
    client.vector_stores.update(made.id, extra_body={"default": True})
    assert not client.vector_stores.update(made.id, extra_body={"default": False}).model_extra["default"]


def test_bad_requests(kb_server):
    client = kb_server.openai()
    file = upload(client, "note.txt", b"A note about the weather.")
    store = client.vector_stores.create(name="errors")
    missing = "vs_missing"
    with kb_server.http() as http:
        for method, path in [
            ("GET", f"/v1/vector_stores/{missing}"),
            ("DELETE", f"/v1/vector_stores/{missing}"),
            ("GET", f"/v1/vector_stores/{missing}/files"),
            ("GET", f"/v1/vector_stores/{missing}/files/{file.id}"),
            ("DELETE", f"/v1/vector_stores/{missing}/files/{file.id}"),
        ]:
            assert_error(http.request(method, path), 404, param="vector_store_id")
        assert_error(http.post(f"/v1/vector_stores/{missing}", json={"name": "x"}), 404, param="vector_store_id")
        assert_error(http.post(f"/v1/vector_stores/{missing}/files", json={"file_id": file.id}), 404)
        assert_error(http.post(f"/v1/vector_stores/{missing}/search", json={"query": "x"}), 404)

        search = f"/v1/vector_stores/{store.id}/search"
        for body, param in [
            ({"query": ""}, "query"),
            ({"query": "   "}, "query"),
            ({"query": []}, "query"),
            ({"query": ["ok", ""]}, "query"),
            ({}, "query"),
            ({"query": 42}, "query"),
            ({"query": "x" * 10_001}, "query"),
            ({"query": "x", "max_num_results": 0}, "max_num_results"),
            ({"query": "x", "max_num_results": 51}, "max_num_results"),
            ({"query": "x", "max_num_results": "ten"}, "max_num_results"),
            ({"query": "x", "filters": {"type": "eq", "key": "a", "value": "b"}}, "filters"),
            ({"query": "x", "rewrite_query": True}, "rewrite_query"),
            ({"query": "x", "ranking_options": {"score_threshold": 2}}, "ranking_options.score_threshold"),
            ({"query": "x", "surprise": 1}, "surprise"),
        ]:
            assert_error(http.post(search, json=body), 400, param=param)
        assert http.post(search, json={"query": "weather", "ranking_options": {"ranker": "none"}}).status_code == 200

        files = f"/v1/vector_stores/{store.id}/files"
        assert_error(http.post(files, json={"file_id": "file-missing"}), 404, param="file_id")
        assert_error(http.post(files, json={}), 400, param="file_id")
        assert_error(http.post(files, json={"file_id": file.id, "attributes": {"a": "b"}}), 400, param="attributes")
        static = {"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 10}}
        assert_error(
            http.post(files, json={"file_id": file.id, "chunking_strategy": static}), 400, param="chunking_strategy"
        )
        assert_error(http.get(files, params={"filter": "done"}), 400, param="filter")
        assert_error(http.get(files, params={"limit": 101}), 400, param="limit")
        assert_error(http.get(files, params={"after": "file-missing"}), 404, param="after")
        assert_error(http.get(f"{files}/{file.id}"), 404, param="file_id")  # not attached
        assert_error(http.delete(f"{files}/{file.id}"), 404, param="file_id")

        stores = "/v1/vector_stores"
        assert_error(http.post(stores, json={"file_ids": ["file-missing"]}), 404, param="file_ids")
        assert_error(
            http.post(stores, json={"expires_after": {"anchor": "last_active_at", "days": 1}}),
            400,
            param="expires_after",
        )
        assert_error(http.post(stores, json={"description": "x"}), 400, param="description")
        assert_error(http.post(stores, json={"name": 5}), 400, param="name")
        assert_error(http.post(stores, json={"metadata": {f"k{n}": "v" for n in range(17)}}), 400, param="metadata")
        assert_error(http.post(stores, json={"default": "yes"}), 400, param="default")
        assert_error(http.get(stores, params={"after": "vs_missing"}), 404, param="after")
        assert_error(http.get(stores, params={"order": "random"}), 400, param="order")
    assert [s.id for s in client.vector_stores.list().data] == [store.id]  # nothing half-created
    with kb_server.http(key=ADMIN_KEY) as admin:
        assert_error(admin.get("/v1/vector_stores"), 403)


def test_stores_belong_to_their_app(kb_server):
    owner = kb_server.openai()
    other_key = kb_server.create_key("other-app")
    other = kb_server.openai(key=other_key)
    file = upload(owner, "secret.txt", b"The vault code is 4471.")
    store = owner.vector_stores.create(name="private", file_ids=[file.id])
    wait_for_ingestion(owner, store.id, file.id)
    their_file = upload(other, "theirs.txt", b"Another app's note.")
    their_store = other.vector_stores.create(name="theirs")

    for call in (
        lambda: other.vector_stores.retrieve(store.id),
        lambda: other.vector_stores.update(store.id, name="taken"),
        lambda: other.vector_stores.delete(store.id),
        lambda: other.vector_stores.search(store.id, query="vault code"),
        lambda: other.vector_stores.files.list(store.id),
        lambda: other.vector_stores.files.retrieve(file.id, vector_store_id=store.id),
        lambda: other.vector_stores.files.delete(file.id, vector_store_id=store.id),
        lambda: other.vector_stores.files.create(store.id, file_id=their_file.id),
        # Their own store, with the owner's file: the file is not theirs.
        lambda: other.vector_stores.files.create(their_store.id, file_id=file.id),
        lambda: other.vector_stores.create(file_ids=[file.id]),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert [s.id for s in other.vector_stores.list().data] == [their_store.id]
    assert other.vector_stores.files.list(their_store.id).data == []
    # And the owner's store is untouched and still answers.
    assert "4471" in top_hit(owner, store.id, "What is the vault code?").content[0].text
    assert [s.id for s in owner.vector_stores.list().data] == [store.id]


def test_a_large_pdf_does_not_stall_other_requests(kb_server):
    """While a 300-page PDF is parsed, split and embedded, /healthz and /v1/models keep answering quickly."""
    client = kb_server.openai()
    pages = [[f"Page {p}, line {n}: notes on the migration of the arctic tern, entry {p * 40 + n}." for n in range(6)]
             for p in range(300)]  # fmt: skip
    pdf = upload(client, "terns.pdf", make_pdf(pages))
    with httpx.Client(base_url=kb_server.url, timeout=30) as open_client, kb_server.http() as http:

        def probe() -> tuple[float, float]:
            started = time.perf_counter()
            assert open_client.get("/healthz").status_code == 200
            middle = time.perf_counter()
            assert http.get("/v1/models").status_code == 200
            return middle - started, time.perf_counter() - middle

        idle = [probe() for _ in range(10)]
        store = client.vector_stores.create(name="terns", file_ids=[pdf.id])
        started = time.perf_counter()
        busy = []
        while client.vector_stores.files.retrieve(pdf.id, vector_store_id=store.id).status == "in_progress":
            busy.append(probe())
            time.sleep(0.05)
        ingestion = time.perf_counter() - started
    done = client.vector_stores.files.retrieve(pdf.id, vector_store_id=store.id)
    assert done.status == "completed", done.last_error

    def summary(samples: list[float]) -> str:
        return f"median {statistics.median(samples) * 1000:.1f} ms, max {max(samples) * 1000:.1f} ms"

    health, models = [h for h, _ in busy], [m for _, m in busy]
    print(
        f"\ningestion of a 300-page PDF: {ingestion:.1f} s; {len(busy)} probes while it ran\n"
        f"  GET /healthz   idle {summary([h for h, _ in idle])}; during ingestion {summary(health)}\n"
        f"  GET /v1/models idle {summary([m for _, m in idle])}; during ingestion {summary(models)}"
    )
    assert len(busy) >= 5, "the ingestion ended before it could be measured"
    assert statistics.median(health) < 0.25 and statistics.median(models) < 0.5
    assert max(health) < 2.0 and max(models) < 2.0
    assert "tern" in top_hit(client, store.id, "arctic tern migration").content[0].text


def test_against_a_chroma_server(live_server, mock_upstream, chroma_server_url):
    """GENAI_CHROMA_URL: the same API on a Chroma server (``chroma run``) instead of the embedded store."""
    server = live_server(
        model_routes=[ModelRoute(name="mock", base_url=mock_upstream, max_retries=0)], chroma_url=chroma_server_url
    )
    client = server.openai()
    file = upload(client, "valves.txt", DOCUMENTS["valves.txt"])
    store = client.vector_stores.create(name="remote", file_ids=[file.id])
    assert wait_for_ingestion(client, store.id, file.id).status == "completed"
    assert "Ottilie Marsh" in top_hit(client, store.id, "Who patented the Zephyrine valve?").content[0].text
    assert not (server.settings.data_dir / "chroma").exists()  # nothing embedded
    client.vector_stores.delete(store.id)


def test_a_chroma_server_that_is_down_is_503(live_server, mock_upstream):
    from chains.local_model_process import free_port

    server = live_server(
        model_routes=[ModelRoute(name="mock", base_url=mock_upstream, max_retries=0)],
        chroma_url=f"http://127.0.0.1:{free_port()}",
    )
    client = server.openai()
    file = upload(client, "valves.txt", DOCUMENTS["valves.txt"])
    store = client.vector_stores.create(name="unreachable", file_ids=[file.id])
    failed = wait_for_ingestion(client, store.id, file.id)
    assert failed.status == "failed" and failed.last_error.code == "server_error"
    assert "unavailable" in failed.last_error.message
    with server.http() as http:
        assert_error(http.post(f"/v1/vector_stores/{store.id}/search", json={"query": "valve"}), 503)
        assert_error(http.delete(f"/v1/vector_stores/{store.id}"), 503, code="service_unavailable")
    assert client.vector_stores.retrieve(store.id).id == store.id  # nothing was half-deleted
    assert client.models.list().data  # the rest of the API does not need Chroma


async def test_the_sql_side_on_both_engines(db, tmp_path):
    """Counts, pagination, versions, the default store and removals on SQLite and PostgreSQL alike."""
    app = await TenantStore(db).create_app("engines")
    other = await TenantStore(db).create_app("engines-other")
    files, stores = FileStore(db, tmp_path / "files"), VectorStores(db)
    made = [
        await files.create(app_id=app.id, filename=f"f{n}.txt", purpose="assistants", kind="text", data=b"x")
        for n in range(3)
    ]
    store = await stores.create(app.id, name="s", metadata={"k": "v"})
    for file in made:
        await stores.attach(app.id, store.id, file.id)
    await stores.attach(app.id, store.id, made[0].id)  # again: still one attachment
    assert await stores.finish(app.id, store.id, made[0].id, status="completed", chunks=3, usage_bytes=100)
    failure = {"code": "invalid_file", "message": "no text"}
    assert await stores.finish(app.id, store.id, made[1].id, status="failed", last_error=failure)
    counts = (await stores.file_counts(app.id, [store.id]))[store.id]
    assert (counts.in_progress, counts.completed, counts.failed, counts.total, counts.usage_bytes) == (1, 1, 1, 3, 100)
    assert (await stores.get(app.id, store.id)).content_version == 1  # one ingestion completed

    newest_first = [file.id for file in made[::-1]]
    page = await stores.list_files(app.id, store.id, limit=2)
    assert [row.file_id for row in page.items] == newest_first[:2] and page.has_more
    page = await stores.list_files(app.id, store.id, limit=2, after=newest_first[1])
    assert [row.file_id for row in page.items] == newest_first[2:] and not page.has_more
    page = await stores.list_files(app.id, store.id, limit=2, before=newest_first[2])
    assert [row.file_id for row in page.items] == newest_first[:2]
    assert [f.id for f in (await files.list(app.id, limit=2, order="asc")).items] == [f.id for f in made[:2]]

    # Another app sees none of it.
    assert (await files.list(other.id)).items == [] and (await stores.list(other.id)).items == []
    with pytest.raises(NotFound):
        await stores.get(other.id, store.id)
    assert not await stores.finish(other.id, store.id, made[2].id, status="completed")

    await stores.set_default(app.id, store.id, True)
    assert await stores.default_store(app.id) == store.id
    assert await stores.detach_everywhere(app.id, made[0].id) == [store.id]
    await stores.bump(app.id, [store.id])
    assert (await stores.get(app.id, store.id)).content_version == 2
    await files.delete(app.id, made[1].id)  # its attachment goes with it
    assert await stores.attached_files(app.id, [store.id]) == {made[2].id}
    await stores.delete(app.id, store.id)
    assert await stores.default_store(app.id) is None
