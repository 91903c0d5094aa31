"""A long conversation on the local model: time to first token of each continued turn against a fresh question (#14).

Run from the project root with the project's virtualenv::

    .venv/bin/python bench/long_conversation.py                       # ~2-5 minutes on 2 idle cores
    .venv/bin/python bench/long_conversation.py --platform-ref HEAD   # the committed version, for a before/after

``genai serve`` on the embedded defaults (it starts llama.cpp with Gemma 3 270M itself, from the same source tree,
so that ``--platform-ref`` compares the whole local stack), Redis memory, the default memory window
(``GENAI_MEMORY_MAX_TOKENS``, 2,048 tokens). One server-side conversation (``conversation_id``) of ``--turns`` turns,
each a ``--words``-word question with a small ``max_tokens`` so that the time measured is reading the prompt; then
``--fresh`` one-turn questions of the same size. Every request is streamed; the time to first token is the time to
the first content delta. With ``--interleave`` a fresh question comes between every two turns of the conversation
(other users' requests), which evicts the conversation's prefix from llama.cpp's live cache.

Target (#14): the time to first token of a continued turn at most twice that of a fresh one-turn question (median;
the maximum is shown too). When the llama.cpp server reports them (``GET /genai/prompt_stats``, chains/llama_server.py),
the prompt tokens of each turn and how many were reused from its cache are shown as well.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from harness import ROOT, WORDS, Children, add_common_args, free_port, percentile, platform_env, run, start_platform

# After harness, which puts the project root on sys.path.
from chains.local_model import LOCAL_MODEL_NAME  # noqa: E402

MODEL_PATH = ROOT / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"
TARGET_RATIO = 2.0
LLAMA_URL = re.compile(r"local model ready at (http://127\.0\.0\.1:\d+/v1)")


@dataclass
class Turn:
    kind: str  # "turn" (of the conversation) or "fresh"
    index: int
    first_token_s: float
    total_s: float
    prompt_tokens: int | None  # as llama.cpp counted them, when it reports them
    reused_tokens: int | None
    prompt_seconds: float | None  # llama.cpp's time evaluating the prompt tokens it did not reuse


def question(rng: random.Random, words: int) -> str:
    return "Please answer briefly. " + " ".join(rng.choice(WORDS) for _ in range(words)) + "?"


def stream(client: httpx.Client, api_key: str | None, body: dict[str, Any]) -> tuple[float, float, str, str | None]:
    """One streamed chat completion: seconds to the first content delta and to the end, the text, the conversation."""
    headers = {"Cache-Control": "no-cache", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    started = time.perf_counter()
    first = None
    text: list[str] = []
    conversation = None
    with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.read()[:500]!r}")
        conversation = response.headers.get("x-conversation-id")
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = orjson.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"error event: {event['error']}")
            for choice in event.get("choices") or []:
                if content := (choice.get("delta") or {}).get("content"):
                    first = first or time.perf_counter()
                    text.append(content)
            conversation = event.get("conversation_id") or conversation
    done = time.perf_counter()
    return (first or done) - started, done - started, "".join(text), conversation


def llama_stats(llama_url: str | None) -> dict[str, int] | None:
    """The last completion's prompt and reused tokens, when the llama.cpp server reports them."""
    if llama_url is None:
        return None
    try:
        response = httpx.get(llama_url.removesuffix("/v1") + "/genai/prompt_stats", timeout=5)
    except httpx.HTTPError:
        return None
    return response.json()["last"] if response.status_code == 200 else None


def reported(stats: dict[str, Any] | None) -> tuple[int | None, int | None, float | None]:
    if not stats:
        return None, None, None
    return stats["prompt_tokens"], stats["reused_tokens"], stats.get("prompt_seconds")


def measure(args: argparse.Namespace, children: Children, roots: dict[str, Path]) -> dict[str, Any]:
    env = platform_env(
        args,
        children.workdir / "data",
        GENAI_LOCAL_MODEL_PATH=str(MODEL_PATH),
        GENAI_LOCAL_MODEL_THREADS=str(args.threads),
        **({"GENAI_MEMORY_MAX_TOKENS": str(args.memory_max_tokens)} if args.memory_max_tokens else {}),
    )
    t0 = time.perf_counter()
    url, api_key = start_platform(children, "platform", free_port(), env, roots["platform"])
    log = (children.workdir / "platform.log").read_text(errors="replace")
    match = LLAMA_URL.search(log)
    llama_url = match.group(1) if match else None
    print(f"platform        {url}  (ready in {time.perf_counter() - t0:.1f} s; llama.cpp at {llama_url or '?'})")
    print(flush=True)
    rng = random.Random(args.seed)
    fresh_rng = random.Random(args.seed + 1)
    turns: list[Turn] = []
    params = {"model": LOCAL_MODEL_NAME, "max_tokens": args.max_tokens, "temperature": 0, "stream": True}

    def fresh(index: int) -> Turn:
        body = {**params, "messages": [{"role": "user", "content": question(fresh_rng, args.words)}]}
        first, total, _, _ = stream(client, api_key, body)
        return Turn("fresh", index, first, total, *reported(llama_stats(llama_url)))

    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=600) as client:
        fresh(0)  # warm-up: model pages, the platform's tokenizer (not counted)
        conversation = "new"
        conversation_started = time.perf_counter()
        conversation_seconds = 0.0
        for index in range(1, args.turns + 1):
            if args.interleave and index > 1:
                turns.append(fresh(index))
            body = {
                **params,
                "messages": [{"role": "user", "content": question(rng, args.words)}],
                "conversation_id": conversation,
            }
            first, total, _, conversation = stream(client, api_key, body)
            conversation_seconds += total
            turns.append(Turn("turn", index, first, total, *reported(llama_stats(llama_url))))
            shown = turns[-1]
            reuse = (
                f"prompt {shown.prompt_tokens:5d} tokens, reused {shown.reused_tokens:5d}, "
                f"read in {1000 * shown.prompt_seconds:5.0f} ms"
                if shown.prompt_tokens is not None
                else "prompt tokens n/a"
            )
            print(
                f"  turn {index:2d}: first token {1000 * first:7.0f} ms, end {1000 * total:7.0f} ms, {reuse}",
                flush=True,
            )
            if conversation is None:
                raise RuntimeError("the platform returned no conversation id")
        wall = time.perf_counter() - conversation_started
        if not args.interleave:
            for index in range(1, args.fresh + 1):
                turns.append(fresh(index))
    return {
        "turns": turns,
        "conversation_seconds": conversation_seconds,
        "wall_seconds": wall,
        "run_seconds": time.perf_counter() - started,
        "llama_url": llama_url,
    }


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    turns: list[Turn] = results["turns"]
    continued = [t for t in turns if t.kind == "turn" and t.index > 1]
    fresh = [t for t in turns if t.kind == "fresh"]
    width = 78
    print()
    print("=" * width)
    mode = "a fresh question between turns (--interleave)" if args.interleave else "back to back"
    print(f"{args.turns}-turn conversation of ~{args.words}-word questions, max_tokens {args.max_tokens}, {mode}")
    print("=" * width)

    def row(label: str, values: list[float]) -> str:
        return (
            f"  {label:34s} median {1000 * percentile(values, 50):7.0f} ms   max {1000 * max(values):7.0f} ms"
            f"   (n={len(values)})"
        )

    first_continued = [t.first_token_s for t in continued]
    first_fresh = [t.first_token_s for t in fresh]
    print(row("first token, continued turns", first_continued))
    print(row("first token, fresh questions", first_fresh))
    if continued and continued[0].prompt_tokens is not None:
        prompt = sum(t.prompt_tokens or 0 for t in continued)
        reused = sum(t.reused_tokens or 0 for t in continued)
        reread = sum(1 for t in continued if (t.reused_tokens or 0) < (t.prompt_tokens or 0) // 2)
        print(
            f"  prompt tokens of continued turns: {prompt} in all, {reused} reused from llama.cpp's cache "
            f"({100 * reused / max(prompt, 1):.0f}%); {reread} of {len(continued)} turns re-read most of their prompt"
        )
        if all(t.prompt_seconds is not None for t in continued + fresh):
            print(row("llama.cpp reading, continued turns", [t.prompt_seconds for t in continued]))
            print(row("llama.cpp reading, fresh questions", [t.prompt_seconds for t in fresh]))
    else:
        print("  prompt tokens: not reported by this version's llama.cpp server")
    print(
        f"  conversation: {results['conversation_seconds']:.1f} s in its {args.turns} requests "
        f"({results['wall_seconds']:.1f} s wall clock with what came between)"
    )
    median_ratio = percentile(first_continued, 50) / percentile(first_fresh, 50)
    max_ratio = max(first_continued) / percentile(first_fresh, 50)
    print("-" * width)
    print(f"Target (#14): first token of a continued turn at most {TARGET_RATIO:g}x that of a fresh one-turn question.")
    print(
        f"  median ratio {median_ratio:.2f}  ->  {'MET' if median_ratio <= TARGET_RATIO else 'NOT MET'}"
        f";   max ratio {max_ratio:.2f}  ->  {'met' if max_ratio <= TARGET_RATIO else 'not met'}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A long conversation's time to first token on the local model (#14).")
    parser.add_argument("--turns", type=int, default=30, help="turns of the conversation (default 30)")
    parser.add_argument("--words", type=int, default=180, help="words in each question (default 180)")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens of each answer (default 16)")
    parser.add_argument("--fresh", type=int, default=10, help="fresh one-turn questions after the conversation (10)")
    parser.add_argument("--interleave", action="store_true", help="a fresh question between every two turns instead")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (GENAI_LOCAL_MODEL_THREADS, 2)")
    parser.add_argument("--memory-max-tokens", type=int, help="GENAI_MEMORY_MAX_TOKENS (default: the platform's)")
    parser.add_argument("--seed", type=int, default=14, help="seed of the questions' words (default 14)")
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = [
        f"{args.turns} turns of ~{args.words} words, max_tokens {args.max_tokens}, streamed through the conversation "
        f"API; {args.fresh if not args.interleave else args.turns - 1} fresh one-turn questions"
        + (" interleaved" if args.interleave else " after it"),
        f"the platform starts llama.cpp itself ({MODEL_PATH.name}, {args.threads} threads)",
    ]
    return run(
        args, "genai-platform long conversation benchmark (#14)", plan, {"platform": args.platform_ref}, measure, report
    )


if __name__ == "__main__":
    sys.exit(main())
