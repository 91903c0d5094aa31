"""The knowledge index on a real embedded Chroma (and, marked slow, a `chroma run` server) with local embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings

from chains.embeddings import local_embeddings
from memory.chroma import open_chroma
from memory.knowledge import Chunk, KnowledgeIndex, collection_name, tokenize

GARDEN = [
    "Tomatoes need at least six hours of direct sunlight each day and should be watered deeply twice a week.",
    "Prune rose bushes in late winter, cutting back dead canes to healthy wood just above an outward-facing bud.",
    "Compost made from kitchen scraps and dry leaves improves soil structure and feeds earthworms.",
]
DATABASE = [
    "The connection pool keeps up to twenty open database connections; raise pool_size when requests wait for one.",
    "Run migrations with the upgrade command before starting a new release, so that the schema matches the code.",
]
KEYWORD_TARGET = (
    "Watering schedule: the garden beds along the south fence get twenty minutes every morning in summer. "
    "If the drip line clogs, flush it and replace the filter with a kestrel-77 cartridge before the heat wave."
)
KEYWORD_DISTRACTORS = [
    "The kestrel is a small falcon that hovers over open fields while hunting mice and insects.",
    "Birds of prey such as falcons and hawks hunt by day; owls hunt at night.",
    "Replacement cartridges for printers come in black and colour, with high-yield options.",
    "Model numbers on spare parts identify the exact version you need to order.",
    "A falcon can dive at more than three hundred kilometres per hour.",
]


class CountingEmbeddings(Embeddings):
    """The local embeddings, counting how many texts each side embeds."""

    def __init__(self) -> None:
        self.inner = local_embeddings()
        self.documents = 0
        self.queries = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.documents += len(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        self.queries += 1
        return self.inner.embed_query(text)


def chunks_of(file_id: str, filename: str, texts: Sequence[str]) -> list[Chunk]:
    chunks, offset = [], 0
    for index, text in enumerate(texts):
        chunks.append(Chunk(text, file_id, filename, index, offset, offset + len(text)))
        offset += len(text) + 1
    return chunks


def count(index: KnowledgeIndex, store_id: str) -> int:
    return index.client.get_collection(collection_name(store_id), embedding_function=None).count()


@pytest.fixture
def embeddings() -> CountingEmbeddings:
    return CountingEmbeddings()


@pytest.fixture
def index(tmp_path: Path, embeddings: CountingEmbeddings) -> KnowledgeIndex:
    return KnowledgeIndex(open_chroma(tmp_path), embeddings)


async def fill(index: KnowledgeIndex, store_id: str = "vs_a") -> None:
    await index.add(store_id, "app1", chunks_of("file_garden", "garden.txt", GARDEN))
    await index.add(store_id, "app1", chunks_of("file_db", "database.md", DATABASE))


async def test_search_finds_the_right_chunk(index: KnowledgeIndex) -> None:
    await fill(index)
    for mode in ("hybrid", "dense", "bm25"):
        hits = await index.search(["vs_a"], "How many database connections can be open at once?", k=3, mode=mode)
        top = hits[0]
        assert (top.chunk.file_id, top.chunk.index, top.store_id) == ("file_db", 0, "vs_a"), mode
        assert top.chunk.text == DATABASE[0] and top.chunk.filename == "database.md"
        assert (top.chunk.start, top.chunk.end) == (0, len(DATABASE[0]))
    hits = await index.search(["vs_a"], "when should I cut back my roses", k=1)
    assert (hits[0].chunk.file_id, hits[0].chunk.index) == ("file_garden", 1)
    assert (hits[0].chunk.start, hits[0].chunk.end) == (len(GARDEN[0]) + 1, len(GARDEN[0]) + 1 + len(GARDEN[1]))
    metadata = index.client.get_collection(collection_name("vs_a")).get(ids=["file_db:1"])["metadatas"][0]
    start = len(DATABASE[0]) + 1
    expected = {"file_id": "file_db", "filename": "database.md", "chunk": 1, "app_id": "app1"}
    assert metadata == expected | {"start": start, "end": start + len(DATABASE[1])}


async def test_a_given_query_vector_is_not_embedded_again(index: KnowledgeIndex, embeddings: CountingEmbeddings):
    await fill(index)
    vector = embeddings.inner.embed_query("compost and soil")
    for mode in ("hybrid", "dense", "bm25"):
        hits = await index.search(["vs_a"], "compost and soil", vector=vector, k=1, mode=mode)
        assert (hits[0].chunk.file_id, hits[0].chunk.index) == ("file_garden", 2)
    assert embeddings.queries == 0
    await index.search(["vs_a"], "compost and soil", k=1)
    assert embeddings.queries == 1


async def test_hybrid_finds_a_keyword_that_dense_misses(index: KnowledgeIndex) -> None:
    await index.add("vs_k", "app1", chunks_of("file_target", "notes.txt", [KEYWORD_TARGET]))
    await index.add("vs_k", "app1", chunks_of("file_other", "other.txt", KEYWORD_DISTRACTORS))
    query = "kestrel-77"
    dense = await index.search(["vs_k"], query, k=2, mode="dense")
    assert "file_target" not in {hit.chunk.file_id for hit in dense}  # the construction: dense ranks it third
    keyword = await index.search(["vs_k"], query, k=1, mode="bm25")
    assert keyword[0].chunk.file_id == "file_target"
    hybrid = await index.search(["vs_k"], query, k=2, mode="hybrid")
    found = [hit for hit in hybrid if hit.chunk.file_id == "file_target"]
    assert found
    # A chunk found only by BM25 still scores its cosine similarity to the query.
    cosine = float(np.dot(local_embeddings().embed_query(query), local_embeddings().embed_query(KEYWORD_TARGET)))
    assert found[0].score == pytest.approx(max(cosine, 0.0), abs=1e-3)
    assert keyword[0].score == pytest.approx(found[0].score, abs=1e-6)


async def test_delete_file_removes_exactly_its_chunks(index: KnowledgeIndex) -> None:
    await fill(index)
    assert count(index, "vs_a") == 5
    assert await index.delete_file("vs_a", "file_garden") == 3
    assert count(index, "vs_a") == 2
    remaining = index.client.get_collection(collection_name("vs_a")).get()["ids"]
    assert sorted(remaining) == ["file_db:0", "file_db:1"]
    assert await index.delete_file("vs_a", "file_garden") == 0
    assert await index.delete_file("vs_never", "file_garden") == 0
    hits = await index.search(["vs_a"], "prune the roses in winter", k=5)
    assert {hit.chunk.file_id for hit in hits} == {"file_db"}


async def test_drop_removes_the_store(index: KnowledgeIndex) -> None:
    await fill(index)
    await fill(index, "vs_b")
    await index.drop("vs_a")
    assert collection_name("vs_a") not in {c.name for c in index.client.list_collections()}
    assert await index.search(["vs_a"], "database connections") == []
    assert await index.search(["vs_a", "vs_b"], "database connections", k=1) != []
    await index.drop("vs_a")  # absent: no error
    await index.drop("vs_never")


async def test_stores_are_isolated_and_merged(index: KnowledgeIndex) -> None:
    await index.add("vs_a", "app1", chunks_of("file_1", "a.txt", GARDEN))
    await index.add("vs_b", "app2", chunks_of("file_1", "b.txt", DATABASE))  # the same file id in another store
    for mode in ("hybrid", "dense", "bm25"):
        hits = await index.search(["vs_a"], "database connection pool migrations", k=10, mode=mode)
        assert all(hit.store_id == "vs_a" and hit.chunk.text in GARDEN for hit in hits), mode
    merged = await index.search(["vs_a", "vs_b"], "database connection pool size", k=10)
    assert (merged[0].store_id, merged[0].chunk.text) == ("vs_b", DATABASE[0])
    assert {hit.store_id for hit in merged} == {"vs_a", "vs_b"}
    assert len(merged) == len(GARDEN) + len(DATABASE)
    assert await index.search(["vs_missing"], "anything") == []
    assert len(await index.search(["vs_missing", "vs_a"], "roses", k=2)) == 2


async def test_versions_rebuild_bm25_when_bumped(tmp_path: Path) -> None:
    """Another worker (its own index over the same Chroma) adds a chunk; ours sees it once the version moves."""
    client = open_chroma(tmp_path)
    ours, theirs = KnowledgeIndex(client, local_embeddings()), KnowledgeIndex(client, local_embeddings())
    await ours.add("vs_v", "app1", chunks_of("file_garden", "garden.txt", GARDEN))
    query = "zanzibar clove harvest"
    assert await ours.search(["vs_v"], query, versions={"vs_v": 1}, mode="bm25") == []  # cached at version 1
    await theirs.add(
        "vs_v", "app1", chunks_of("file_spice", "spice.txt", ["The Zanzibar clove harvest starts in July."])
    )
    assert await ours.search(["vs_v"], query, versions={"vs_v": 1}, mode="bm25") == []  # still version 1: cached
    hits = await ours.search(["vs_v"], query, versions={"vs_v": 2}, mode="bm25")
    assert [hit.chunk.file_id for hit in hits] == ["file_spice"]
    hits = await ours.search(["vs_v"], query, mode="bm25")  # no version: rebuilt each time
    assert [hit.chunk.file_id for hit in hits] == ["file_spice"]
    assert list(ours._bm25) == [("vs_v", 2)]  # the older version is gone from the cache
    # Their delete, our version not bumped yet: the cached index still lists the chunk, but it is not returned.
    assert await theirs.delete_file("vs_v", "file_spice") == 1
    assert await ours.search(["vs_v"], query, versions={"vs_v": 2}, mode="bm25") == []
    assert await ours.search(["vs_v"], query, versions={"vs_v": 2}, k=10) == (
        await ours.search(["vs_v"], query, versions={"vs_v": 3}, k=10)
    )


async def test_own_writes_drop_the_cached_bm25_index(index: KnowledgeIndex) -> None:
    await fill(index)
    assert await index.search(["vs_a"], "zanzibar", versions={"vs_a": 7}, mode="bm25") == []
    await index.add("vs_a", "app1", chunks_of("file_spice", "spice.txt", ["Cloves from Zanzibar."]))
    hits = await index.search(["vs_a"], "zanzibar", versions={"vs_a": 7}, mode="bm25")
    assert [hit.chunk.file_id for hit in hits] == ["file_spice"]


async def test_min_score_drops_weak_hits(index: KnowledgeIndex) -> None:
    await fill(index)
    query = "how big is the database connection pool"
    for mode in ("hybrid", "dense", "bm25"):
        hits = await index.search(["vs_a"], query, k=5, mode=mode)
        assert all(0.0 <= hit.score <= 1.0 for hit in hits)
        best = max(hit.score for hit in hits)
        assert hits[0].chunk.file_id == "file_db" and best > 0.5
        floor = best - 0.01
        strong = await index.search(["vs_a"], query, k=5, min_score=floor, mode=mode)
        assert [hit.chunk.id for hit in strong] == [hit.chunk.id for hit in hits if hit.score >= floor]
        assert len(strong) == 1 and strong[0].chunk.id == "file_db:0"
    dense = await index.search(["vs_a"], query, k=5, mode="dense")
    assert [hit.score for hit in dense] == sorted((hit.score for hit in dense), reverse=True)
    assert len(dense) == 5
    assert await index.search(["vs_a"], query, k=5, min_score=0.99) == []


async def test_adding_again_is_idempotent(index: KnowledgeIndex, embeddings: CountingEmbeddings) -> None:
    await fill(index)
    await fill(index)
    assert count(index, "vs_a") == 5
    changed = chunks_of("file_db", "database.md", ["The pool now holds fifty connections.", DATABASE[1]])
    vectors = local_embeddings().embed_documents([chunk.text for chunk in changed])
    embedded = embeddings.documents
    await index.add("vs_a", "app1", changed, vectors)
    assert embeddings.documents == embedded  # given vectors are used as they are
    assert count(index, "vs_a") == 5
    stored = index.client.get_collection(collection_name("vs_a")).get(ids=["file_db:0"])["documents"]
    assert stored == ["The pool now holds fifty connections."]
    with pytest.raises(ValueError):
        await index.add("vs_a", "app1", changed, vectors[:1])


def test_tokenize() -> None:
    assert tokenize("What does __getattr__ do?") == ["__getattr__", "getattr"]
    assert tokenize("Running the functions, 2 times") == ["run", "function", "2", "time"]


@pytest.mark.slow
async def test_against_a_chroma_server(chroma_server_url: str, tmp_path: Path) -> None:
    index = KnowledgeIndex(open_chroma(tmp_path / "unused", url=chroma_server_url), local_embeddings())
    assert not (tmp_path / "unused").exists()  # a server: nothing on local disk
    await fill(index, "vs_srv")
    await fill(index, "vs_srv")  # idempotent
    await index.add("vs_other", "app2", chunks_of("file_x", "x.txt", ["Database connections of another app."]))
    assert count(index, "vs_srv") == 5
    hits = await index.search(["vs_srv"], "How many database connections can be open at once?", versions={"vs_srv": 1})
    assert (hits[0].chunk.file_id, hits[0].chunk.index) == ("file_db", 0)
    assert all(hit.store_id == "vs_srv" for hit in hits)
    weak = await index.search(["vs_srv"], "database connections", k=5, min_score=0.99)
    assert weak == []
    await index.add("vs_srv", "app1", chunks_of("file_spice", "spice.txt", ["The Zanzibar clove harvest."]))
    assert [
        h.chunk.file_id for h in await index.search(["vs_srv"], "zanzibar", versions={"vs_srv": 2}, mode="bm25")
    ] == ["file_spice"]
    assert await index.delete_file("vs_srv", "file_garden") == 3
    assert count(index, "vs_srv") == 3
    await index.drop("vs_srv")
    await index.drop("vs_srv")
    assert await index.search(["vs_srv"], "database") == []
    assert len(await index.search(["vs_other"], "database")) == 1
    await index.drop("vs_other")
