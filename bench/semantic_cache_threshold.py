"""Semantic cache: which cosine threshold, and what the lexical verifier adds.

Run from the project root with the project's virtualenv::

    .venv/bin/python bench/semantic_cache_threshold.py      # ~15 s on 2 idle cores, most of it embedding

Every question of the labelled pairs in ``bench/data/cache_pairs.jsonl`` (true paraphrases that should hit, near
misses that must not: other entity, number, unit, negation, swapped roles, antonym, one different content word) is
embedded once with the local model (all-MiniLM-L6-v2, ``chains.embeddings.local_embeddings``). A pair is a hit when
its cosine similarity reaches the threshold and, with the verifier, when ``chains.cache_verifier.veto`` finds no
difference as well. For thresholds 0.70 to 0.98 the tables give the share of paraphrases that hit, precision (the
share of hits that are right) and the share of hits that are wrong, with and without the verifier.

The pairs are split by line parity into a dev half (even lines) and a held-out half (odd lines). The recommended
default is the lowest threshold at which, on the dev half, at most 2% of the hits with the verifier are wrong; its
figures on the held-out half check it. Targets on the held-out half: at most 2% of hits wrong, at least 60% of
paraphrases hit. Also printed: the verifier's mean time per pair.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chains.cache_verifier import veto  # noqa: E402
from chains.embeddings import local_embeddings  # noqa: E402

DATA = ROOT / "bench" / "data" / "cache_pairs.jsonl"
THRESHOLDS = [round(0.70 + 0.02 * k, 2) for k in range(15)]  # 0.70 .. 0.98
MAX_WRONG = 0.02
MIN_PARAPHRASE_HITS = 0.60


@dataclass
class Figures:
    """Hits at one threshold on one half, with or without the verifier."""

    paraphrases: int
    right: int
    wrong: int

    @property
    def hit_rate(self) -> float:
        return self.right / self.paraphrases if self.paraphrases else 0.0

    @property
    def precision(self) -> float:
        return self.right / (self.right + self.wrong) if self.right + self.wrong else 1.0

    @property
    def wrong_share(self) -> float:
        return self.wrong / (self.right + self.wrong) if self.right + self.wrong else 0.0

    def cells(self) -> str:
        wrong = f"{self.wrong_share:6.1%} ({self.wrong}/{self.right + self.wrong})"
        return f"{self.hit_rate:8.1%} {self.precision:9.1%}   {wrong:<17}"


def figures(same: np.ndarray, cos: np.ndarray, allowed: np.ndarray, threshold: float) -> Figures:
    hit = (cos >= threshold) & allowed
    return Figures(int(same.sum()), int((hit & same).sum()), int((hit & ~same).sum()))


def table(name: str, same: np.ndarray, cos: np.ndarray, allowed: np.ndarray) -> None:
    print(f"\n{name}: {len(same)} pairs ({int(same.sum())} paraphrases, {int((~same).sum())} near misses)")
    columns = f"{'para hit':>8} {'precision':>9}   {'wrong hits':<17}"
    print(f"{'':9}{'similarity only':^{len(columns)}}   {'with verifier':^{len(columns)}}".rstrip())
    print(f"{'thresh':<9}{columns}   {columns}".rstrip())
    everything = np.ones_like(same)
    for t in THRESHOLDS:
        plain, checked = figures(same, cos, everything, t), figures(same, cos, allowed, t)
        print(f"{t:<9.2f}{plain.cells()}   {checked.cells()}".rstrip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="labelled pairs, one JSON object a line")
    parser.add_argument("--timing-rounds", type=int, default=20, help="passes over all pairs to time the verifier")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pairs = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    texts = sorted({p[side] for p in pairs for side in ("a", "b")})
    index = {text: k for k, text in enumerate(texts)}
    started = time.perf_counter()
    vectors = np.asarray(local_embeddings().embed_documents(texts))
    print(f"{len(pairs)} pairs, {len(texts)} questions embedded in {time.perf_counter() - started:.1f} s")

    cos = np.array([vectors[index[p["a"]]] @ vectors[index[p["b"]]] for p in pairs])
    same = np.array([bool(p["same"]) for p in pairs])
    allowed = np.array([veto(p["a"], p["b"]) is None for p in pairs])
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(args.timing_rounds):
        for p in pairs:
            veto(p["a"], p["b"])
    calls = args.timing_rounds * len(pairs)
    wall_ms = (time.perf_counter() - started) * 1000 / calls
    cpu_ms = (time.process_time() - cpu_started) * 1000 / calls

    halves = {"dev": np.arange(len(pairs)) % 2 == 0, "held-out": np.arange(len(pairs)) % 2 == 1}
    for name, rows in halves.items():
        table(f"{name} half", same[rows], cos[rows], allowed[rows])

    dev = halves["dev"]
    chosen = next(
        (t for t in THRESHOLDS if figures(same[dev], cos[dev], allowed[dev], t).wrong_share <= MAX_WRONG), None
    )
    print(f"\nverifier: {cpu_ms:.3f} ms CPU, {wall_ms:.3f} ms wall per pair (mean of {calls} calls)")
    if chosen is None:
        print(f"no threshold keeps wrong hits at or under {MAX_WRONG:.0%} on the dev half")
        return 0
    print(f"recommended default threshold: {chosen:.2f} (lowest with at most {MAX_WRONG:.0%} wrong hits on dev)")
    for name, rows in halves.items():
        plain = figures(same[rows], cos[rows], np.ones_like(same[rows]), chosen)
        checked = figures(same[rows], cos[rows], allowed[rows], chosen)
        print(f"  {name:<9} paraphrases hit {checked.hit_rate:6.1%}, wrong hits {checked.wrong_share:5.1%} "
              f"with verifier; {plain.hit_rate:6.1%}, {plain.wrong_share:5.1%} without")  # fmt: skip
    held = figures(same[halves["held-out"]], cos[halves["held-out"]], allowed[halves["held-out"]], chosen)
    met = held.wrong_share <= MAX_WRONG and held.hit_rate >= MIN_PARAPHRASE_HITS
    print(f"targets on held-out (wrong hits <= {MAX_WRONG:.0%}, paraphrases hit >= {MIN_PARAPHRASE_HITS:.0%}): "
          f"{'met' if met else 'NOT met'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
