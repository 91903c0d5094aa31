"""Retrieval quality of the knowledge index: dense, BM25 and hybrid search on the Python language reference.

Run from the project root with the project's virtualenv::

    .venv/bin/python bench/retrieval_quality.py                # ~1-2 minutes on 2 cores, mostly embedding
    .venv/bin/python bench/retrieval_quality.py --show-misses  # also each query where a mode misses

The corpus is text nobody here wrote: ``pydoc_data.topics.topics``, the language reference topics that ship with
Python (what ``help("nonlocal")`` shows). Each topic is a document, split with LangChain's
``RecursiveCharacterTextSplitter`` (1000 characters, 150 overlap by default); a chunk is relevant when its topic is.
Several topics repeat others verbatim (``compound`` holds ``for``, ``while``, ``try``, ...; ``specialnames`` holds
``customization``, ``attribute-access``, ...), so the labels name every topic that holds the answer.

``bench/data/retrieval_set.jsonl`` has the queries, one JSON object a line: ``{"query": ..., "relevant": [topic,
...]}``: keyword-ish ("nonlocal statement"), paraphrased with no shared words, and with exact identifiers
(``__getattr__``, ``yield from``).

The corpus goes through ``memory.knowledge.KnowledgeIndex`` into a throw-away embedded Chroma (a temporary
directory) with the local embeddings (all-MiniLM-L6-v2). Every query is embedded once and searched with ``k=10`` in
each mode (dense, bm25, hybrid), the modes rotating per query. Metrics are topic-level: a ranked chunk list becomes
a topic list where a topic counts once, at the rank of its best chunk (later chunks of it leave their rank empty).

* recall@5: the share of a query's relevant topics ranked 1-5, averaged over the queries;
* nDCG@10: binary gains, log2 discount, ideal = all relevant topics first.

Also printed: indexing time (embedding, Chroma upserts, the first BM25 build) and the mean search latency per mode
(the query vector given, as a request passes it; the embedding time of a query is shown apart). Target: hybrid at
least as good as the better of dense and BM25 on both metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import ROOT, percentile

# After harness, which puts the project root on sys.path.
from chains.embeddings import local_embeddings  # noqa: E402
from memory.chroma import open_chroma  # noqa: E402
from memory.knowledge import STEMMING, Chunk, Hit, KnowledgeIndex  # noqa: E402

MODES = ("dense", "bm25", "hybrid")
STORE = "bench"
APP = "bench"
DEFAULT_QUERIES = ROOT / "bench" / "data" / "retrieval_set.jsonl"


@dataclass
class Query:
    text: str
    relevant: set[str]
    vector: list[float] = field(default_factory=list)


@dataclass
class ModeResult:
    recall5: list[float] = field(default_factory=list)
    ndcg10: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    ranks: list[dict[str, int]] = field(default_factory=list)  # per query: relevant topic -> rank (found ones)
    relevant_scores: list[float] = field(default_factory=list)  # score of hits whose topic is relevant
    other_scores: list[float] = field(default_factory=list)


def load_queries(path: Path) -> list[Query]:
    queries = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            queries.append(Query(row["query"], set(row["relevant"])))
    return queries


def corpus_chunks(chunk_size: int, overlap: int) -> list[Chunk]:
    """The reference topics split into chunks; file_id and filename are the topic's name."""
    from pydoc_data.topics import topics

    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=overlap, add_start_index=True)
    chunks = []
    for topic in sorted(topics):
        for index, doc in enumerate(splitter.create_documents([topics[topic]])):
            start = int(doc.metadata["start_index"])
            chunks.append(Chunk(doc.page_content, topic, topic, index, start, start + len(doc.page_content)))
    return chunks


def topic_ranks(hits: list[Hit]) -> dict[str, int]:
    """Each topic at the rank (1-based) of its best chunk."""
    ranks: dict[str, int] = {}
    for rank, hit in enumerate(hits, start=1):
        ranks.setdefault(hit.chunk.file_id, rank)
    return ranks


def recall_at(ranks: dict[str, int], relevant: set[str], cutoff: int) -> float:
    return sum(1 for topic in relevant if ranks.get(topic, cutoff + 1) <= cutoff) / len(relevant)


def ndcg_at(ranks: dict[str, int], relevant: set[str], cutoff: int) -> float:
    gain = sum(1 / math.log2(rank + 1) for topic, rank in ranks.items() if topic in relevant and rank <= cutoff)
    ideal = sum(1 / math.log2(rank + 1) for rank in range(1, min(len(relevant), cutoff) + 1))
    return gain / ideal


async def build_index(index: KnowledgeIndex, chunks: list[Chunk], queries: list[Query]) -> dict[str, float]:
    """Embed and store the corpus, build the BM25 index once, embed the queries; the time of each step."""
    embeddings = index.embeddings
    timings: dict[str, float] = {}
    started = time.perf_counter()
    vectors = await embeddings.aembed_documents([chunk.text for chunk in chunks])
    timings["embed"] = time.perf_counter() - started
    started = time.perf_counter()
    await index.add(STORE, APP, chunks, vectors)
    timings["upsert"] = time.perf_counter() - started
    started = time.perf_counter()
    await index.search([STORE], "warm up", vector=vectors[0], versions={STORE: 1}, k=1, mode="bm25")
    timings["bm25"] = time.perf_counter() - started
    started = time.perf_counter()
    for query in queries:
        query.vector = await embeddings.aembed_query(query.text)
    timings["query_embed_ms"] = (time.perf_counter() - started) * 1000 / len(queries)
    return timings


async def evaluate(index: KnowledgeIndex, queries: list[Query], repeats: int) -> dict[str, ModeResult]:
    results = {mode: ModeResult() for mode in MODES}
    for number, query in enumerate(queries):
        shift = number % len(MODES)
        for mode in MODES[shift:] + MODES[:shift]:
            result = results[mode]
            for _ in range(repeats):
                started = time.perf_counter()
                hits = await index.search(
                    [STORE], query.text, vector=query.vector, versions={STORE: 1}, k=10, mode=mode
                )
                result.latency_ms.append((time.perf_counter() - started) * 1000)
            ranks = topic_ranks(hits)
            result.ranks.append({topic: rank for topic, rank in ranks.items() if topic in query.relevant})
            result.recall5.append(recall_at(ranks, query.relevant, 5))
            result.ndcg10.append(ndcg_at(ranks, query.relevant, 10))
            for hit in hits:
                (result.relevant_scores if hit.chunk.file_id in query.relevant else result.other_scores).append(
                    hit.score
                )
    return results


def report(
    results: dict[str, ModeResult],
    timings: dict[str, float],
    chunks: list[Chunk],
    queries: list[Query],
    args: argparse.Namespace,
) -> None:
    width = 78
    print()
    print("=" * width)
    print("Retrieval quality: Python language reference topics (pydoc_data.topics)")
    print("=" * width)
    topics = len({chunk.file_id for chunk in chunks})
    print(
        f"corpus: {topics} topics, {len(chunks)} chunks ({args.chunk_size} chars, {args.overlap} overlap); "
        f"{len(queries)} queries, {sum(len(q.relevant) for q in queries) / len(queries):.2f} relevant topics each"
    )
    print(
        f"indexing: embed {timings['embed']:.1f} s, Chroma upsert {timings['upsert']:.2f} s, "
        f"BM25 build {timings['bm25'] * 1000:.0f} ms (stemmer: {'PyStemmer' if STEMMING else 'none'})"
    )
    print(f"query embedding: {timings['query_embed_ms']:.1f} ms mean (once per query, not in the latencies below)")
    print()
    print(f"{'mode':10s}{'recall@5':>10s}{'nDCG@10':>10s}{'hit@5':>8s}{'search ms mean':>17s}{'p50':>8s}{'p99':>8s}")
    for mode in MODES:
        r = results[mode]
        hit5 = statistics.mean(1.0 if any(rank <= 5 for rank in ranks.values()) else 0.0 for ranks in r.ranks)
        latency = r.latency_ms
        print(
            f"{mode:10s}{statistics.mean(r.recall5):10.3f}{statistics.mean(r.ndcg10):10.3f}{hit5:8.3f}"
            f"{statistics.mean(latency):17.2f}{percentile(latency, 50):8.2f}{percentile(latency, 99):8.2f}"
        )
    hybrid = results["hybrid"]
    print("-" * width)
    print("score (cosine to the query) of the hybrid hits, median [p10-p90]:")
    for label, scores in (("relevant topic", hybrid.relevant_scores), ("other topic", hybrid.other_scores)):
        if scores:
            low, mid, high = (percentile(scores, q) for q in (10, 50, 90))
            print(f"  {label:15s} {mid:.3f} [{low:.3f}-{high:.3f}]  ({len(scores)} hits)")
    print("-" * width)
    best = {
        metric: max(statistics.mean(getattr(results[m], metric)) for m in ("dense", "bm25"))
        for metric in ("recall5", "ndcg10")
    }
    met = all(statistics.mean(getattr(hybrid, metric)) >= best[metric] - 1e-9 for metric in best)
    print(
        f"Target: hybrid >= max(dense, bm25) on recall@5 ({best['recall5']:.3f}) and nDCG@10 ({best['ndcg10']:.3f})"
        f"  ->  {'MET' if met else 'NOT MET'}"
    )
    if args.show_misses:
        print_misses(results, queries)


def print_misses(results: dict[str, ModeResult], queries: list[Query]) -> None:
    """Queries where some mode does not rank every relevant topic in the top 5, with each mode's ranks."""
    print()
    print("queries with a relevant topic outside some mode's top 5 (topic: rank per mode, - = not in the top 10)")
    for number, query in enumerate(queries):
        if all(results[mode].recall5[number] == 1.0 for mode in MODES):
            continue
        print(f"  {query.text}")
        for topic in sorted(query.relevant):
            ranks = "  ".join(f"{mode} {results[mode].ranks[number].get(topic, '-')!s:>2s}" for mode in MODES)
            print(f"      {topic:22s} {ranks}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Retrieval quality of the knowledge index: dense, BM25 and hybrid.")
    parser.add_argument("--queries", type=Path, default=DEFAULT_QUERIES, help="the labelled queries (JSON lines)")
    parser.add_argument("--chunk-size", type=int, default=1000, help="characters per chunk (default 1000)")
    parser.add_argument("--overlap", type=int, default=150, help="characters of overlap between chunks (default 150)")
    parser.add_argument("--repeats", type=int, default=3, help="searches per query and mode, for latency (default 3)")
    parser.add_argument("--show-misses", action="store_true", help="print the queries a mode misses, with ranks")
    return parser.parse_args(argv)


async def measure(args: argparse.Namespace) -> None:
    queries = load_queries(args.queries)
    chunks = corpus_chunks(args.chunk_size, args.overlap)
    print(f"{len(chunks)} chunks of {len({c.file_id for c in chunks})} topics, {len(queries)} queries", flush=True)
    with tempfile.TemporaryDirectory(prefix="genai-retrieval-") as tmp:
        client = open_chroma(Path(tmp))
        index = KnowledgeIndex(client, local_embeddings())
        timings = await build_index(index, chunks, queries)
        print(f"indexed in {timings['embed'] + timings['upsert']:.1f} s; searching", flush=True)
        results = await evaluate(index, queries, args.repeats)
    report(results, timings, chunks, queries, args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"genai-platform retrieval quality benchmark (Python {sys.version.split()[0]})", flush=True)
    asyncio.run(measure(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
