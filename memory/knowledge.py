"""The knowledge index: chunks of an app's uploaded files, per vector store, searched by meaning and by keyword.

Each vector store (``vs_...``) is one Chroma collection (cosine space) holding its chunks, their embeddings and
metadata (file_id, filename, chunk, start, end, app_id). Chunk ids are ``{file_id}:{index}``, so adding the same file
again overwrites instead of duplicating.

Why hybrid: dense retrieval (the embedding model) finds paraphrases that share no word with the question, but small
embedding models blur exact tokens: identifiers (``__getattr__``), error codes, product names, rare terms. BM25 finds
exactly those. ``search`` runs both and fuses their rankings by reciprocal rank fusion (RRF), which needs no score
calibration between the two.

Why versions: the BM25 index lives in process memory (an LRU of ``bm25s`` indexes), rebuilt from the documents Chroma
stores. The caller keeps a content version per store in the database and bumps it on every attach/detach; passing it
in ``versions`` keys the cache by ``(store_id, version)``, so every worker and replica rebuilds as soon as the content
changed anywhere and never answers from a stale keyword index. Without a version the index is rebuilt on every search
(always right, slower). Writes through this object also drop this process's cached indexes of that store.

Chroma's Python API is synchronous; every call to it runs in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN_PLUS
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.errors import NotFoundError
from langchain_core.embeddings import Embeddings

from memory.chroma import cosine_collection

try:  # PyStemmer (Snowball); without it BM25 matches exact word forms only.
    import Stemmer

    _STEMMER: Any = Stemmer.Stemmer("english")
except ImportError:  # pragma: no cover - depends on the environment
    _STEMMER = None
STEMMING = _STEMMER is not None

Mode = Literal["hybrid", "dense", "bm25"]

COLLECTION_PREFIX = "vs_"
RRF_K = 60  # the usual constant of reciprocal rank fusion (Cormack et al. 2009)
STOPWORDS = frozenset(STOPWORDS_EN_PLUS)  # NLTK's English list (179 words; question words like what/how/does too)
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Chunk:
    text: str
    file_id: str
    filename: str
    index: int  # chunk number within the file, from 0
    start: int  # character offsets in the file's extracted text
    end: int

    @property
    def id(self) -> str:
        return f"{self.file_id}:{self.index}"


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    store_id: str
    score: float  # cosine similarity of the chunk to the query, clipped to [0, 1] (see KnowledgeIndex.search)


@dataclass
class _Candidate:
    store_id: str
    chunk: Chunk
    cosine: float | None  # None until known (BM25 candidates get it from their stored embedding)
    keyword: float = 0.0  # BM25 score, for ranking keyword candidates across stores

    @property
    def key(self) -> tuple[str, str]:
        return self.store_id, self.chunk.id


@dataclass(frozen=True)
class _KeywordIndex:
    """A store's BM25 index and the chunks it ranks (row i of the index is chunks[i])."""

    chunks: list[Chunk]
    bm25: bm25s.BM25 | None  # None when no chunk has a single token

    def top(self, tokens: list[str], n: int) -> list[tuple[Chunk, float]]:
        """The ``n`` best chunks with a positive BM25 score (at least one query term)."""
        if self.bm25 is None or not tokens or n <= 0:
            return []
        scores = self.bm25.get_scores(tokens)
        n = min(n, len(scores))
        best = np.argpartition(-scores, n - 1)[:n]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [(self.chunks[i], float(scores[i])) for i in best if scores[i] > 0]


def tokenize(text: str) -> list[str]:
    """BM25 terms: lowercase words (digits and single letters too), English stopwords out, Snowball-stemmed when
    PyStemmer is there. Identifiers with underscores count whole and by their parts, so ``__getattr__`` also matches
    ``getattr``. (Measured in bench/retrieval_quality.py: single-character terms and the longer stopword list beat
    bm25s's 2+ characters and 33 Lucene stopwords; stemming matters most.)
    """
    words: list[str] = []
    for word in _WORD.findall(text.lower()):
        if word in STOPWORDS:
            continue
        words.append(word)
        if "_" in word:
            words.extend(part for part in word.split("_") if len(part) > 1 and part not in STOPWORDS and part != word)
    return _STEMMER.stemWords(words) if _STEMMER is not None and words else words


def collection_name(store_id: str) -> str:
    return COLLECTION_PREFIX + store_id


def _metadata(chunk: Chunk, app_id: str) -> dict[str, str | int]:
    return {
        "file_id": chunk.file_id,
        "filename": chunk.filename,
        "chunk": chunk.index,
        "start": chunk.start,
        "end": chunk.end,
        "app_id": app_id,
    }


def _chunk(text: str | None, metadata: Mapping[str, Any]) -> Chunk:
    return Chunk(
        text=text or "",
        file_id=str(metadata["file_id"]),
        filename=str(metadata.get("filename", "")),
        index=int(metadata["chunk"]),
        start=int(metadata.get("start", 0)),
        end=int(metadata.get("end", 0)),
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norm if norm else 0.0


def _build_keyword_index(collection: Collection) -> _KeywordIndex:
    """Read every chunk of the collection and index it for BM25 (runs in a worker thread)."""
    stored = collection.get(include=["documents", "metadatas"])
    chunks = [_chunk(doc, meta or {}) for doc, meta in zip(stored["documents"] or [], stored["metadatas"] or [])]
    corpus = [tokenize(chunk.text) for chunk in chunks]
    if not any(corpus):
        return _KeywordIndex(chunks, None)
    bm25 = bm25s.BM25()
    bm25.index(corpus, show_progress=False)
    return _KeywordIndex(chunks, bm25)


def _fuse(rankings: Sequence[tuple[Sequence[_Candidate], float]], rrf_k: int = RRF_K) -> list[_Candidate]:
    """Weighted reciprocal rank fusion: sum of weight / (rrf_k + rank) over the rankings; ties by cosine."""
    fused: dict[tuple[str, str], float] = {}
    seen: dict[tuple[str, str], _Candidate] = {}
    for ranking, weight in rankings:
        for rank, candidate in enumerate(ranking, start=1):
            fused[candidate.key] = fused.get(candidate.key, 0.0) + weight / (rrf_k + rank)
            seen.setdefault(candidate.key, candidate)
    return sorted(seen.values(), key=lambda c: (-fused[c.key], -(c.cosine or 0.0)))


class KnowledgeIndex:
    """Vector stores' chunks in Chroma (one collection per store) with an in-process BM25 cache for hybrid search."""

    rrf_k = RRF_K
    # Equal weights: on bench/retrieval_quality.py, giving BM25 less weight (0.8, 0.6, 0.5) lowered hybrid's scores.
    dense_weight = 1.0
    keyword_weight = 1.0

    @staticmethod
    def candidates(k: int) -> int:
        """Candidates taken from each ranking before fusion (and before the ``min_score`` floor)."""
        return max(4 * k, 20)

    def __init__(self, client: ClientAPI, embeddings: Embeddings, *, bm25_cache_size: int = 64) -> None:
        self.client = client
        self.embeddings = embeddings
        self.bm25_cache_size = bm25_cache_size
        self._bm25: OrderedDict[tuple[str, int], _KeywordIndex] = OrderedDict()
        self._building: dict[tuple[str, int], asyncio.Future[_KeywordIndex]] = {}
        # Per store, bumped by this process's writes: a BM25 build that started before one is not cached.
        self._writes: dict[str, int] = {}

    # ------------------------------------------------------------------ writes

    async def add(
        self,
        store_id: str,
        app_id: str,
        chunks: Sequence[Chunk],
        vectors: Sequence[Sequence[float]] | None = None,
    ) -> None:
        """Upsert ``chunks`` (embedded here unless ``vectors`` are given). Ids are ``{file_id}:{index}``: adding again
        overwrites. A file re-added with fewer chunks keeps its old tail; call ``delete_file`` first."""
        if not chunks:
            return
        if vectors is None:
            vectors = await self.embeddings.aembed_documents([chunk.text for chunk in chunks])
        if len(vectors) != len(chunks):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        try:
            await asyncio.to_thread(self._upsert, store_id, app_id, chunks, vectors)
        finally:
            self._invalidate(store_id)

    def _upsert(self, store_id: str, app_id: str, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> None:
        collection = cosine_collection(self.client, collection_name(store_id))
        batch = max(1, self.client.get_max_batch_size())
        for start in range(0, len(chunks), batch):
            part = chunks[start : start + batch]
            collection.upsert(
                ids=[chunk.id for chunk in part],
                embeddings=[list(map(float, vector)) for vector in vectors[start : start + batch]],
                documents=[chunk.text for chunk in part],
                metadatas=[_metadata(chunk, app_id) for chunk in part],
            )

    async def delete_file(self, store_id: str, file_id: str) -> int:
        """Remove a file's chunks from a store; how many there were."""
        try:
            return await asyncio.to_thread(self._delete_file, store_id, file_id)
        finally:
            self._invalidate(store_id)

    def _delete_file(self, store_id: str, file_id: str) -> int:
        collection = self._collection(store_id)
        if collection is None:
            return 0
        ids = collection.get(where={"file_id": file_id}, include=[])["ids"]
        if ids:
            collection.delete(ids=ids)
        return len(ids)

    async def drop(self, store_id: str) -> None:
        """Delete the store's collection; nothing happens when it does not exist."""
        try:
            await asyncio.to_thread(self._drop, store_id)
        finally:
            self._invalidate(store_id)

    def _drop(self, store_id: str) -> None:
        try:
            self.client.delete_collection(collection_name(store_id))
        except (NotFoundError, ValueError):
            pass

    # ------------------------------------------------------------------ search

    async def search(
        self,
        store_ids: Sequence[str],
        query: str,
        *,
        vector: Sequence[float] | None = None,
        versions: Mapping[str, int] | None = None,
        k: int = 5,
        min_score: float = 0.0,
        mode: Mode = "hybrid",
    ) -> list[Hit]:
        """The ``k`` best chunks of the stores for ``query``, best first.

        ``score`` is always the cosine similarity between the chunk's stored embedding and the query's (clipped to
        [0, 1]), whatever the mode; chunks found only by BM25 get theirs from their stored embedding. So ``score``
        means the same in every mode and ``min_score`` is a floor on it, applied before the ``k`` cut (0 keeps
        everything). It is a coarse filter, not a relevance classifier: with all-MiniLM-L6-v2 on
        bench/retrieval_quality.py, hits of relevant topics scored 0.37-0.65 (p10-p90) and the others 0.29-0.53, so
        a floor near 0.3 drops mostly noise. The order is the mode's ranking (dense: cosine; bm25: BM25 score;
        hybrid: RRF of both), so the scores of hybrid results need not decrease.

        ``vector`` is the query's embedding when the caller has it (it is not computed again). ``versions`` maps a
        store to its content version (see the module docstring). Stores without a collection contribute nothing.
        Results of several stores are merged: dense candidates by cosine, keyword candidates by BM25 score, then fused.
        """
        stores = list(dict.fromkeys(store_ids))
        if k <= 0 or not stores:
            return []
        if mode not in ("hybrid", "dense", "bm25"):
            raise ValueError(f"unknown search mode {mode!r}")
        query_vector = np.asarray(vector if vector is not None else await self.embeddings.aembed_query(query), float)
        depth = k if mode == "dense" else self.candidates(k)
        tokens = tokenize(query) if mode != "dense" else []
        found = await asyncio.gather(
            *(
                self._search_store(store, query_vector, tokens, (versions or {}).get(store), depth, mode)
                for store in stores
            )
        )
        dense = sorted((c for d, _ in found for c in d), key=lambda c: -(c.cosine or 0.0))[:depth]
        keyword = sorted((c for _, kw in found for c in kw), key=lambda c: -c.keyword)[:depth]
        if mode == "dense":
            ranked = dense
        elif mode == "bm25":
            ranked = keyword
        else:
            ranked = _fuse([(dense, self.dense_weight), (keyword, self.keyword_weight)], self.rrf_k)
        hits = []
        for candidate in ranked:
            score = min(1.0, max(0.0, candidate.cosine or 0.0))
            if score >= min_score:
                hits.append(Hit(chunk=candidate.chunk, store_id=candidate.store_id, score=score))
            if len(hits) == k:
                break
        return hits

    async def _search_store(
        self, store_id: str, vector: np.ndarray, tokens: list[str], version: int | None, depth: int, mode: Mode
    ) -> tuple[list[_Candidate], list[_Candidate]]:
        """One store's dense and keyword candidates (each list best first); cosines filled in for both."""
        collection = await asyncio.to_thread(self._collection, store_id)
        if collection is None:
            return [], []
        dense_job = asyncio.to_thread(self._dense, collection, store_id, vector, depth) if mode != "bm25" else None
        keyword_job = self._keyword_index(store_id, collection, version) if mode != "dense" and tokens else None
        dense, index = await asyncio.gather(_maybe(dense_job, list), _maybe(keyword_job, lambda: None))
        if index is None:
            return dense, []
        cosines = {c.chunk.id: c.cosine for c in dense}
        keyword = [
            _Candidate(store_id, chunk, cosines.get(chunk.id), keyword=score)
            for chunk, score in index.top(tokens, depth)
        ]
        missing = [c for c in keyword if c.cosine is None]
        if missing:
            await asyncio.to_thread(self._fill_cosines, collection, missing, vector)
        return dense, [c for c in keyword if c.cosine is not None]

    def _collection(self, store_id: str) -> Collection | None:
        try:
            return self.client.get_collection(collection_name(store_id), embedding_function=None)
        except (NotFoundError, ValueError):
            return None

    @staticmethod
    def _dense(collection: Collection, store_id: str, vector: np.ndarray, depth: int) -> list[_Candidate]:
        result = collection.query(
            query_embeddings=[vector.tolist()], n_results=depth, include=["documents", "metadatas", "distances"]
        )
        documents = (result["documents"] or [[]])[0]
        metadatas = (result["metadatas"] or [[]])[0]
        distances = (result["distances"] or [[]])[0]
        # Chroma's cosine space returns 1 - cosine similarity.
        return [
            _Candidate(store_id, _chunk(doc, meta or {}), 1.0 - float(distance))
            for doc, meta, distance in zip(documents, metadatas, distances)
        ]

    @staticmethod
    def _fill_cosines(collection: Collection, candidates: list[_Candidate], vector: np.ndarray) -> None:
        """Cosine of each candidate's stored embedding to the query (stays None when the chunk is gone: a cached BM25
        index of an older version may still list it)."""
        stored = collection.get(ids=[c.chunk.id for c in candidates], include=["embeddings"])
        embeddings = stored["embeddings"] if stored["embeddings"] is not None else []
        by_id = dict(zip(stored["ids"], embeddings))
        for candidate in candidates:
            embedding = by_id.get(candidate.chunk.id)
            if embedding is not None:
                candidate.cosine = _cosine(np.asarray(embedding, float), vector)

    # ------------------------------------------------------------------ BM25 cache

    async def _keyword_index(self, store_id: str, collection: Collection, version: int | None) -> _KeywordIndex:
        """The store's BM25 index for ``version``: cached, being built by another search, or built now."""
        if version is None:
            return await asyncio.to_thread(_build_keyword_index, collection)
        key = (store_id, version)
        cached = self._bm25.get(key)
        if cached is not None:
            self._bm25.move_to_end(key)
            return cached
        building = self._building.get(key)
        if building is None:
            building = asyncio.ensure_future(self._build_and_cache(key, collection))
            self._building[key] = building
            building.add_done_callback(lambda _: self._building.pop(key, None))
        return await asyncio.shield(building)  # a cancelled search does not cancel the others' build

    async def _build_and_cache(self, key: tuple[str, int], collection: Collection) -> _KeywordIndex:
        store_id = key[0]
        writes = self._writes.get(store_id, 0)
        index = await asyncio.to_thread(_build_keyword_index, collection)
        others = [other for other in self._bm25 if other[0] == store_id]
        # Keep it unless a write of ours raced the build or a newer version is cached (versions only grow).
        if self._writes.get(store_id, 0) == writes and all(other[1] < key[1] for other in others):
            for old in others:
                del self._bm25[old]
            self._bm25[key] = index
            while len(self._bm25) > self.bm25_cache_size:
                self._bm25.popitem(last=False)
        return index

    def _invalidate(self, store_id: str) -> None:
        self._writes[store_id] = self._writes.get(store_id, 0) + 1
        for key in [key for key in self._bm25 if key[0] == store_id]:
            del self._bm25[key]


async def _maybe(job: Any, default: Callable[[], Any]) -> Any:
    return default() if job is None else await job
