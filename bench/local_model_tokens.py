"""Local model tokens per second: the platform in front of llama.cpp, against llama.cpp directly.

Run from the project root with the project's virtualenv::

    .venv/bin/python bench/local_model_tokens.py      # ~1.5 minutes on 2 idle cores

The local llama.cpp server (Gemma 3 270M) and a platform on the embedded defaults pointed
at it (``GENAI_LOCAL_MODEL_URL``). Streamed requests with the same prompts and generation
parameters alternate direct and platform request by request, cycling through the prompts;
completion tokens come from the ``usage`` of non-streaming requests, which give the same
text at temperature 0. Target: platform tokens/s within 5% of direct.

When the platform has API keys, an app and a key are created in its fresh temporary
database before it starts, and every request (both sides) carries the key.
``--platform-ref HEAD`` runs the platform from ``git archive HEAD`` instead of the working
tree (llama.cpp always runs from the working tree). Every child process is stopped on
exit, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from harness import ROOT, Children, add_common_args, check, connection, free_port, percentile, platform_env, run, start_platform

# After harness, which puts the project root on sys.path.
from chains.local_model import LOCAL_MODEL_NAME  # noqa: E402
from chains.local_model_process import LocalModelServer  # noqa: E402

MODEL_PATH = ROOT / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"
TARGET_TOKENS_RATIO = 0.95

# Prompts that give long single-paragraph answers from the base model (its chat format
# always stops at a blank line; see chains/llama_server.py).
LOCAL_PROMPTS = [
    "Describe a busy city market in great detail: the stalls, the smells, the sounds, the people and the goods for sale.",
    "Write a long essay about the ocean and the creatures that live in it.",
    "Tell the long story of a young sailor who crosses the Atlantic alone in a small boat.",
]
assert len(LOCAL_PROMPTS) % 2 == 1, "an odd number of prompts, so that alternating sides cover every prompt"
# The platform's local route adds repeat_penalty and top_k (chains.local_model.LOCAL_DEFAULTS);
# direct requests send the same values, so both sides generate the same tokens.
LOCAL_PARAMS = {"max_tokens": 128, "temperature": 0.0, "top_p": 0.9, "stop": []}
LOCAL_DIRECT_EXTRA = {"repeat_penalty": 1.2, "top_k": 40}


def sse_contents(body: bytes) -> list[str]:
    """The non-empty content deltas of an SSE chat stream."""
    out = []
    for line in body.split(b"\n"):
        if line.startswith(b"data: {"):
            event = orjson.loads(line[6:])
            for choice in event.get("choices") or []:
                if content := (choice.get("delta") or {}).get("content"):
                    out.append(content)
    return out


@dataclass
class Generation:
    side: str
    prompt: int
    seconds: float
    first_byte_s: float
    tokens: int
    chunks: int
    text: str
    matched: bool  # the streamed text is the non-streaming reference's: its usage counts its tokens
    window: int  # in a window, each side streams every prompt once, the sides alternating


def normalized(text: str) -> str:
    return " ".join(text.split())


async def local_runs(
    direct_url: str,
    platform_url: str,
    windows: int,
    client: str,
    api_key: str | None,
    count_tokens: Callable[[str], int],
    budget_s: float,
) -> tuple[list[Generation], dict[int, dict[str, Any]]]:
    """Non-streaming references, then timed streams in windows of D P D P D P requests.

    llama.cpp reuses the KV cache of the previous request's common prefix, and a different
    split of the prompt evaluation can tip a greedy choice. So requests always cycle through
    the prompts in the same order: each request for prompt i follows a request for prompt
    i-1 (on either side) and both sides generate the same tokens. With an odd number of
    prompts and the sides alternating request by request, a window of 2 x prompts requests
    streams every prompt once per side, the two sides never more than a request apart.
    """
    conns = {"direct": connection(client, direct_url, api_key), "platform": connection(client, platform_url, api_key)}

    def body(side: str, prompt: str, stream: bool) -> bytes:
        payload: dict[str, Any] = {
            "model": LOCAL_MODEL_NAME,
            "messages": [{"role": "user", "content": prompt}],
            **LOCAL_PARAMS,
            "stream": stream,
        }
        if side == "direct":
            payload.update(LOCAL_DIRECT_EXTRA)
        return orjson.dumps(payload)

    async def plain(side: str, prompt: str) -> dict[str, Any]:
        reply = await conns[side].post("/chat/completions", body(side, prompt, False))
        check(reply, False, f"{side} local model")
        data = orjson.loads(reply.body)
        choice = data["choices"][0]
        return {"tokens": data["usage"]["completion_tokens"], "text": choice["message"]["content"], "finish": choice["finish_reason"]}

    reference: dict[int, dict[str, Any]] = {index: {} for index in range(len(LOCAL_PROMPTS))}
    runs: list[Generation] = []
    try:
        for prompt in LOCAL_PROMPTS:  # warm-up: model pages, the platform's tokenizer, the cache cycle
            await plain("direct", prompt)
        for side in ("direct", "platform"):
            for index, prompt in enumerate(LOCAL_PROMPTS):
                reference[index][side] = await plain(side, prompt)
        deadline = time.perf_counter() + budget_s
        count = len(LOCAL_PROMPTS)
        sides = ("direct", "platform")
        for window in range(windows):
            if runs and time.perf_counter() > deadline:
                break  # out of time, at a window boundary: both sides ran every prompt as often
            for step in range(2 * count):
                index, prompt = step % count, LOCAL_PROMPTS[step % count]
                side = sides[(step + window) % 2]
                started = time.perf_counter()
                reply = await conns[side].post("/chat/completions", body(side, prompt, True))
                check(reply, True, f"{side} local model (stream)")
                contents = sse_contents(reply.body)
                text = "".join(contents)
                ref = reference[index][side]
                matched = normalized(text) == normalized(ref["text"])
                runs.append(
                    Generation(
                        side=side,
                        prompt=index,
                        seconds=reply.done - started,
                        first_byte_s=reply.first_byte - started,
                        tokens=ref["tokens"] if matched else count_tokens(text),
                        chunks=len(contents),
                        text=text,
                        matched=matched,
                        window=window,
                    )
                )
    finally:
        for conn in conns.values():
            await conn.close()
    return runs, reference


def gguf_token_counter(path: Path) -> Callable[[str], int]:
    """Tokens of a text by the model's own vocabulary (only for streams that differ from their reference)."""
    vocab = None

    def count(text: str) -> int:
        nonlocal vocab
        if vocab is None:  # loaded on first use: it writes llama.cpp's notices to stderr
            from llama_cpp import Llama

            vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
        return len(vocab.tokenize((" " + text.strip()).encode("utf-8"), add_bos=False))

    return count


def part_local(args: argparse.Namespace, children: Children, roots: dict[str, Path]) -> dict[str, Any]:
    t0 = time.perf_counter()
    server = LocalModelServer(
        MODEL_PATH, context_window=2048, threads=2, log_path=children.workdir / "llama-server.log"
    )
    children.local_model(server)
    print(f"llama.cpp       {server.base_url}  (pid {server.process.pid}, ready in {time.perf_counter() - t0:.1f} s)")
    port = free_port()
    env = platform_env(
        args,
        children.workdir / "data-local",
        GENAI_LOCAL_MODEL_URL=server.base_url,
        GENAI_LOCAL_MODEL_PATH=str(MODEL_PATH),
        GENAI_LOCAL_MODEL_CONTEXT="2048",
        # The same prompts at temperature 0 over and over: with the semantic cache on, the platform would replay its
        # first answers and this would measure the cache (it did from #9 until #14).
        GENAI_CACHE_ENABLED="false",
    )
    platform_url, api_key = start_platform(children, "platform-local", port, env, roots["platform"])
    print(f"platform        {platform_url}  -> {LOCAL_MODEL_NAME} at {server.base_url} (embedded defaults)")
    print(flush=True)
    try:
        t0 = time.perf_counter()
        runs, reference = asyncio.run(
            local_runs(
                server.base_url,
                f"{platform_url}/v1",
                args.local_windows,
                args.client,
                api_key,
                gguf_token_counter(MODEL_PATH),
                args.local_budget,
            )
        )
        print(
            f"  {len(runs)} streamed generations + {3 * len(LOCAL_PROMPTS)} non-streaming (warm-up, references): "
            f"{time.perf_counter() - t0:5.1f} s",
            flush=True,
        )
    finally:
        children.stop("platform-local")
        children.stop("llama.cpp")
    return {"runs": runs, "reference": reference}


def report_local(results: dict[str, Any], args: argparse.Namespace) -> None:
    runs: list[Generation] = results["runs"]
    reference = results["reference"]
    width = 74
    print()
    print("=" * width)
    print(f"Part 2: local model ({LOCAL_MODEL_NAME} under llama.cpp, 2 threads), streamed end to end")
    print("=" * width)
    params = {**LOCAL_PARAMS, **LOCAL_DIRECT_EXTRA}
    print(f"generation: {json.dumps(params)}")
    windows = len({r.window for r in runs})
    print(
        f"{len(LOCAL_PROMPTS)} prompts, cycled; direct and platform alternate request by request; "
        f"{windows} of {args.local_windows} windows run"
        + (f" (time budget {args.local_budget:g} s reached)" if windows < args.local_windows else "")
    )
    for index, ref in reference.items():
        same = normalized(ref["direct"]["text"]) == normalized(ref["platform"]["text"])
        print(
            f"  prompt {index}: {ref['direct']['tokens']} completion tokens direct, {ref['platform']['tokens']} via platform "
            f"(finish {ref['direct']['finish']}/{ref['platform']['finish']}; same text: {'yes' if same else 'NO'})"
        )
    summary = {}
    for side in ("direct", "platform"):
        mine = [r for r in runs if r.side == side]
        tokens = sum(r.tokens for r in mine)
        seconds = sum(r.seconds for r in mine)
        decode_tokens = sum(r.tokens - 1 for r in mine)
        decode_seconds = sum(r.seconds - r.first_byte_s for r in mine)
        per_run = sorted(r.tokens / r.seconds for r in mine)
        summary[side] = {
            "n": len(mine),
            "matched": sum(r.matched for r in mine),
            "tokens": tokens / len(mine),
            "chunks": sum(r.chunks for r in mine) / len(mine),
            "first_ms": 1000 * sum(r.first_byte_s for r in mine) / len(mine),
            "seconds": seconds / len(mine),
            "tps": tokens / seconds,
            "decode_tps": decode_tokens / decode_seconds,
            "median_run_tps": percentile(per_run, 50),
        }
    d, p = summary["direct"], summary["platform"]
    print()
    print(f"{'':34s}{'llama.cpp':>12s}{'platform':>12s}{'ratio':>10s}")
    rows = [
        ("streamed requests", "n", "{:12d}", False),
        ("  same text as reference", "matched", "{:12d}", False),
        ("completion tokens / request", "tokens", "{:12.1f}", False),
        ("content chunks / request", "chunks", "{:12.1f}", False),
        ("time to first byte, ms", "first_ms", "{:12.1f}", True),
        ("time to end of stream, s", "seconds", "{:12.3f}", True),
        ("tokens/s end to end (sum/sum)", "tps", "{:12.2f}", True),
        ("tokens/s after first byte", "decode_tps", "{:12.2f}", True),
        ("tokens/s, median request", "median_run_tps", "{:12.2f}", True),
    ]
    for label, key, fmt, ratio in rows:
        tail = f"{p[key] / d[key]:10.3f}" if ratio else ""
        print(f"  {label:32s}{fmt.format(d[key])}{fmt.format(p[key])}{tail}")
    window_ratios = []
    for window in sorted({r.window for r in runs}):
        tps = {}
        for side in ("direct", "platform"):
            mine = [r for r in runs if r.window == window and r.side == side]
            tps[side] = sum(r.tokens for r in mine) / sum(r.seconds for r in mine)
        window_ratios.append(tps["platform"] / tps["direct"])
    print(
        f"  {'tokens/s ratio per window':32s}{'':24s}{percentile(window_ratios, 50):10.3f}"
        f"  (median of {len(window_ratios)}: {', '.join(f'{x:.3f}' for x in window_ratios)})"
    )
    ratio = p["tps"] / d["tps"]
    ok = ratio >= TARGET_TOKENS_RATIO
    print("-" * width)
    print(f"Target: platform tokens/s within {100 * (1 - TARGET_TOKENS_RATIO):.0f}% of llama.cpp directly.")
    print(f"  end-to-end tokens/s ratio {ratio:.3f} ({100 * (ratio - 1):+.1f}%)  ->  {'MET' if ok else 'NOT MET'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Local model tokens/s benchmark: the platform against llama.cpp directly.")
    parser.add_argument(
        "--local-windows", type=int, default=4, help="windows: each side streams every prompt once (default 4)"
    )
    parser.add_argument(
        "--local-budget",
        type=float,
        default=150.0,
        help="seconds of timed streams after which no new window starts (default 150)",
    )
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = [
        f"part 2: {len(LOCAL_PROMPTS)} prompts x {args.local_windows} windows, direct and platform alternating, streamed "
        f"(at most ~{args.local_budget:g} s); model {MODEL_PATH.name}"
    ]
    refs = {"platform": args.platform_ref}
    return run(args, "genai-platform local model tokens/s benchmark", plan, refs, part_local, report_local)


if __name__ == "__main__":
    sys.exit(main())
