"""The semantic cache: answers to earlier questions, served again for the same question or a paraphrase of it.

Two tiers, both within one *scope* (a hash of everything besides the question that decides an answer: the app, the
route and its answer-changing parameters, tools and response format, the system prompt, the vector stores and their
content versions, and the prior turns the model sees; see ``chat_scope``):

* **exact**: the normalised question text, looked up in Redis when configured (shared by every worker and replica),
  otherwise in an in-process LRU. No embedding: a repeated question costs one key lookup.
* **semantic**: the question's embedding against earlier questions of the scope in a Chroma collection. The
  nearest neighbours above the similarity threshold are then checked by ``chains.cache_verifier.veto``: measured
  on adversarial pairs, similarity alone serves 20% wrong answers at any useful threshold (London->Paris for
  Paris->London, 404 for 403), and the verifier's checks of numbers, entities, negations, units, order and content
  words remove them.

Entries expire after the TTL (Redis ``EX``; the Chroma entries carry ``expires_at`` and are filtered on it, and
deleted in passing). Content changes need no invalidation: a new store version is a new scope.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from chains.cache_verifier import veto
from memory.chroma import cosine_collection

log = logging.getLogger(__name__)

COLLECTION = "semantic_cache"
REDIS_PREFIX = "genai:cache:"
# Longer questions go to the exact tier only: the embedding model reads 256 tokens (two long questions that differ
# further on embed alike), and the verifier's time grows with length (about 25 us a word).
SEMANTIC_MAX_CHARS = 1000
# Request fields that change no answer: a request that differs only in these shares the cache.
NEUTRAL_PARAMS = frozenset(
    {"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier", "stream_options"}
)
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class CachedAnswer:
    """What a hit serves: the answer as the client saw it, with its citations."""

    text: str
    model: str
    completion_tokens: int
    citations: list[dict[str, Any]] = field(default_factory=list)
    question: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def dumps(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def loads(cls, raw: str | bytes) -> CachedAnswer:
        return cls(**orjson.loads(raw))


@dataclass(frozen=True)
class Hit:
    answer: CachedAnswer
    tier: str  # "exact" or "semantic"
    similarity: float = 1.0


def normalise(question: str) -> str:
    """The question as the exact tier compares it: Unicode-normalised, lower case, single spaces, no end punctuation."""
    text = unicodedata.normalize("NFKC", question).casefold()
    return _SPACE.sub(" ", text).strip().rstrip("?!. ").strip()


def chat_scope(
    *,
    app_id: str,
    model: str,
    params: Mapping[str, Any],
    system: Sequence[str],
    context: Sequence[tuple[str, str]],
    stores: Mapping[str, int],
) -> str:
    """The scope hash: app, route, the parameters that change answers, the system prompt, the prior turns as
    (role, text), and each vector store with its content version."""
    material = {
        "app": app_id,
        "model": model,
        "params": {k: v for k, v in sorted(params.items()) if k not in NEUTRAL_PARAMS},
        "system": list(system),
        "context": [list(turn) for turn in context],
        "stores": sorted(stores.items()),
    }
    return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


class _LocalExact:
    """The exact tier without Redis: an LRU of (expiry, answer) in this process."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self.entries: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self.max_entries = max_entries

    def get(self, key: str) -> str | None:
        found = self.entries.get(key)
        if found is None:
            return None
        if found[0] < time.time():
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return found[1]

    def set(self, key: str, value: str, ttl: int) -> None:
        self.entries[key] = (time.time() + ttl, value)
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)


class SemanticCache:
    """Lookups and stores of both tiers. ``chroma`` returns the Chroma client (which the caller opens on first use:
    requests that never reach the semantic tier never open Chroma)."""

    def __init__(
        self,
        chroma: Callable[[], Awaitable[Any]],
        *,
        redis: Redis | None = None,
        threshold: float = 0.90,
        ttl_seconds: int = 86400,
        candidates: int = 4,
    ) -> None:
        self._chroma = chroma
        self._handle: Any = None
        self.redis = redis
        self.local = _LocalExact()
        self.threshold = threshold
        self.ttl_seconds = ttl_seconds
        self.candidates = candidates

    @staticmethod
    def exact_key(scope: str, question: str) -> str:
        return f"{scope}:{hashlib.sha256(normalise(question).encode()).hexdigest()[:32]}"

    async def lookup_exact(self, scope: str, question: str) -> Hit | None:
        key = self.exact_key(scope, question)
        if self.redis is not None:
            raw = await self.redis.get(REDIS_PREFIX + key)
        else:
            raw = self.local.get(key)
        return Hit(CachedAnswer.loads(raw), "exact") if raw else None

    @staticmethod
    def semantic(question: str) -> bool:
        """Whether the semantic tier takes ``question`` (short enough to embed whole)."""
        return len(question) <= SEMANTIC_MAX_CHARS

    async def lookup_similar(self, scope: str, question: str, vector: Sequence[float]) -> Hit | None:
        """The nearest earlier question of the scope at or above the threshold that the verifier does not veto."""
        collection = await self._collection()
        found = await asyncio.to_thread(self._query, collection, scope, list(vector), self.candidates)
        for similarity, cached_question, raw in found:
            if similarity < self.threshold:
                break
            reason = veto(question, cached_question)
            if reason is None:
                return Hit(CachedAnswer.loads(raw), "semantic", similarity)
            log.debug("semantic cache candidate vetoed: %s", reason)
        return None

    async def store(self, scope: str, app_id: str, question: str, vector: Sequence[float] | None, answer: CachedAnswer):
        """Keep ``answer`` in the exact tier, and in the semantic tier when the question's vector is known."""
        key = self.exact_key(scope, question)
        raw = answer.dumps()
        if self.redis is not None:
            await self.redis.set(REDIS_PREFIX + key, raw, ex=self.ttl_seconds)
        else:
            self.local.set(key, raw, self.ttl_seconds)
        if vector is not None:
            collection = await self._collection()
            await asyncio.to_thread(self._upsert, collection, key, scope, app_id, question, list(vector), raw)

    # ------------------------------------------------------------------ Chroma, in worker threads

    async def _collection(self) -> Any:
        if self._handle is None:
            client = await self._chroma()
            self._handle = await asyncio.to_thread(cosine_collection, client, COLLECTION)
        return self._handle

    @staticmethod
    def _query(collection: Any, scope: str, vector: list[float], candidates: int) -> list[tuple[float, str, str]]:
        now = int(time.time())
        result = collection.query(
            query_embeddings=[vector],
            n_results=candidates,
            where={"$and": [{"scope": scope}, {"expires_at": {"$gt": now}}]},
            include=["metadatas", "distances"],
        )
        metadatas = (result.get("metadatas") or [[]])[0]
        distances = (result.get("distances") or [[]])[0]
        return [
            (1.0 - float(distance), str(meta["question"]), str(meta["answer"]))
            for meta, distance in zip(metadatas, distances)
        ]

    def _upsert(
        self, collection: Any, key: str, scope: str, app_id: str, question: str, vector: list[float], raw: str
    ) -> None:
        now = int(time.time())
        collection.upsert(
            ids=[key],
            embeddings=[vector],
            documents=[question],
            metadatas=[
                {
                    "scope": scope,
                    "app_id": app_id,
                    "question": question,
                    "answer": raw,
                    "expires_at": now + self.ttl_seconds,
                }
            ],
        )
        if hash(key) % 64 == 0:  # now and then, drop what has expired
            collection.delete(where={"expires_at": {"$lte": now}})
