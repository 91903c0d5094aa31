"""What the safety checks add to an answer of the local model, end to end: time to first token and time per answer.

Run from the project root with the project's virtualenv::

    .venv/bin/python bench/safety_overhead.py      # ~3 minutes on 2 idle cores

One llama.cpp server (Gemma 3 270M, 2 threads, context 2048) and two platforms (``genai serve``, each with its own
data directory) pointed at it with ``GENAI_LOCAL_MODEL_URL``, the semantic cache off on both:

* ``off``: ``GENAI_GUARD_MODE=off``, ``GENAI_MODERATION_MODE=off``, no PII policy;
* ``all on``: ``GENAI_GUARD_MODE=flag`` (the input guard), ``GENAI_MODERATION_MODE=block`` (the local moderation
  filter, which holds text a rule may still match) and ``GENAI_PII_POLICY={"action": "replace"}`` (Presidio over
  every pattern entity, which holds text that may be the start of a PII).

The same prompts (some whose answers hold numbers, e-mail addresses and phone numbers), greedy (temperature 0, a
fixed seed), ``max_tokens`` 64, plain and streamed (SSE read line by line with httpx; ``stream_options.include_usage``).
The prompts are cycled in a fixed order and every request goes to the next (side, mode) in turn: with an odd number
of prompts a window of 4 x prompts requests sends every prompt once per side and mode, and each request follows the
same prompt on every side (llama.cpp reuses the KV cache of the previous request's common prefix, and a different
split of the prompt evaluation could tip a greedy choice), so both sides generate the same tokens. Several windows
(``--windows``, within ``--budget`` seconds); each prompt is also sent once to llama.cpp directly, for reference.

Time to first token is the arrival of the first non-empty content delta (for plain requests, the whole answer);
total is request sent to ``[DONE]`` (plain: to the end of the body). Printed: median and p90 of each per side, the
difference and ratio ``all on / off``, the median of the paired differences (same prompt, mode and window), tokens/s
(``usage.completion_tokens``, end to end), and a sanity line: both sides generated as many tokens for every prompt
(the filters change the text, never the model's work).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from harness import (
    REDIS_URL,
    ROOT,
    Children,
    free_port,
    percentile,
    platform_env,
    run,
    start_platform,
)

# After harness, which puts the project root on sys.path.
from chains.local_model import LOCAL_MODEL_NAME  # noqa: E402
from chains.local_model_process import LocalModelServer  # noqa: E402

MODEL_PATH = ROOT / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"
SIDES = {
    "off": {"GENAI_GUARD_MODE": "off", "GENAI_MODERATION_MODE": "off"},
    "all on": {
        "GENAI_GUARD_MODE": "flag",
        "GENAI_MODERATION_MODE": "block",
        "GENAI_PII_POLICY": json.dumps({"action": "replace"}),
    },
}
MODES = ("stream", "plain")
# Gemma 3 270M is a base model: asked to write a contact card it answers nothing, but it repeats what a question
# quotes. So the prompts whose answers hold PII ask about a value they give (#0, 2, 4, 6, 8, 9, 11; #12's answer is 64
# tokens with prices and place names).
PROMPTS = [
    "What is John's email address? John's contact card says email john@example.com and phone 415-555-0132.",
    "What is the capital of France?",
    "How can I contact the support team at support@example.com?",
    "List the first ten prime numbers.",
    "What is the phone number for emergency plumbing at Acme Plumbing, 415-555-0132?",
    "Explain why the sky is blue.",
    "Which IBAN should I pay the invoice to? The IBAN is DE89 3704 0044 0532 0130 00.",
    "What is 17 multiplied by 23? Show the calculation.",
    "Write a one-line support reply with the order number 48213 and the address help@example.com.",
    "What number should I call to book a table? The restaurant's phone is (212) 555-0198.",
    "Describe a busy city market: the stalls, the smells and the people.",
    "What is the email address for customer service at Example Corp (service@example.com)?",
    "Give the phone number and the e-mail address of a small hotel in Paris.",
]
assert len(PROMPTS) % 2 == 1, "an odd number of prompts, so that cycling (side, mode) covers every prompt"
# The platform's local route adds repeat_penalty and top_k (chains.local_model.LOCAL_DEFAULTS); direct requests
# send them too, so llama.cpp gets the same generation parameters from everyone.
DIRECT_EXTRA = {"repeat_penalty": 1.2, "top_k": 40}


@dataclass
class Answer:
    side: str  # "off", "all on", or "direct"
    mode: str  # "stream" or "plain"
    prompt: int
    window: int
    ttft: float  # seconds to the first content (plain: the whole answer)
    total: float
    tokens: int
    text: str
    finish: str
    safety: dict[str, Any] = field(default_factory=dict)


def payload(prompt: str, mode: str, args: argparse.Namespace, direct: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": LOCAL_MODEL_NAME,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": args.max_tokens,
        "temperature": 0.0,
        "top_p": 0.9,
        "seed": args.seed,
        "stream": mode == "stream",
    }
    if mode == "stream":
        body["stream_options"] = {"include_usage": True}
    if direct:
        body.update(DIRECT_EXTRA)
    return body


def ask(client: httpx.Client, body: dict[str, Any]) -> tuple[float, float, dict[str, Any]]:
    """One chat completion: seconds to the first content, seconds in all, and what came back (text, tokens, ...)."""
    started = time.perf_counter()
    if not body["stream"]:
        response = client.post("/chat/completions", json=body)
        total = time.perf_counter() - started
        response.raise_for_status()
        data = response.json()
        choice = data["choices"][0]
        reply = {
            "text": choice["message"]["content"] or "",
            "tokens": data["usage"]["completion_tokens"],
            "finish": choice["finish_reason"],
            "safety": data.get("safety") or {},
        }
        return total, total, reply
    first = None
    parts: list[str] = []
    reply = {"tokens": -1, "finish": "", "safety": {}}
    with client.stream("POST", "/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = orjson.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"the stream failed: {event['error']}")
            for choice in event.get("choices") or []:
                if content := (choice.get("delta") or {}).get("content"):
                    first = first or time.perf_counter()
                    parts.append(content)
                if choice.get("finish_reason"):
                    reply["finish"] = choice["finish_reason"]
            if event.get("safety"):
                reply["safety"] = event["safety"]
            if event.get("usage"):
                reply["tokens"] = event["usage"]["completion_tokens"]
    done = time.perf_counter()
    reply["text"] = "".join(parts)
    return (first or done) - started, done - started, reply


def timed(client: httpx.Client, side: str, mode: str, index: int, window: int, args: argparse.Namespace) -> Answer:
    body = payload(PROMPTS[index], mode, args, direct=side == "direct")
    ttft, total, reply = ask(client, body)
    return Answer(side=side, mode=mode, prompt=index, window=window, ttft=ttft, total=total, **reply)


def client_for(url: str, api_key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=180)


def measure(args: argparse.Namespace, children: Children, roots: dict[str, Path]) -> dict[str, Any]:
    t0 = time.perf_counter()
    server = LocalModelServer(MODEL_PATH, context_window=2048, threads=2, log_path=children.workdir / "llama.log")
    children.local_model(server)
    print(f"llama.cpp       {server.base_url}  (ready in {time.perf_counter() - t0:.1f} s)")
    clients = {"direct": client_for(server.base_url, None)}
    for side, settings in SIDES.items():
        t0 = time.perf_counter()
        name = "platform-" + side.replace(" ", "-")
        env = platform_env(
            args,
            children.workdir / f"data-{side.replace(' ', '-')}",
            GENAI_LOCAL_MODEL_URL=server.base_url,
            GENAI_LOCAL_MODEL_PATH=str(MODEL_PATH),
            GENAI_LOCAL_MODEL_CONTEXT="2048",
            GENAI_CACHE_ENABLED="false",
            **settings,
        )
        url, api_key = start_platform(children, name, free_port(), env, roots["platform"])
        clients[side] = client_for(f"{url}/v1", api_key)
        print(f"platform {side:6s} {url}  {settings}  (ready in {time.perf_counter() - t0:.1f} s)", flush=True)
    try:
        return sweep(clients, args)
    finally:
        for client in clients.values():
            client.close()


def sweep(clients: dict[str, httpx.Client], args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up, the direct references, then the timed windows (see the module's docstring)."""
    count = len(PROMPTS)
    t0 = time.perf_counter()
    for side in SIDES:  # the platforms' first answers (Presidio, tokenizer, connections), both modes; the last
        for mode in MODES:  # prompt, so that the first reference (prompt 0) follows it, as in the windows
            timed(clients[side], side, mode, count - 1, -1, args)
    direct = [timed(clients["direct"], "direct", "plain", index, -1, args) for index in range(count)]
    print(f"  warm-up and {count} direct references: {time.perf_counter() - t0:.1f} s", flush=True)
    combos = [(side, mode) for mode in MODES for side in SIDES]  # gcd(4, odd count) = 1: every pair once
    answers: list[Answer] = []
    deadline = time.perf_counter() + args.budget
    t0 = time.perf_counter()
    for window in range(args.windows):
        if answers and time.perf_counter() > deadline:
            break  # at a window boundary: every prompt ran as often on each side and mode
        for step in range(len(combos) * count):
            side, mode = combos[(step + window) % len(combos)]
            answers.append(timed(clients[side], side, mode, step % count, window, args))
        print(f"  window {window + 1}: {len(combos) * count} requests, {time.perf_counter() - t0:.1f} s", flush=True)
    return {"answers": answers, "direct": direct}


# --------------------------------------------------------------------------- report


def ms(seconds: float) -> str:
    return f"{1000 * seconds:9.1f}"


def pick(answers: list[Answer], **where: Any) -> list[Answer]:
    return [a for a in answers if all(getattr(a, key) == value for key, value in where.items())]


def paired(answers: list[Answer], mode: str, metric: str) -> list[float]:
    """``all on`` minus ``off`` for the same prompt, mode and window."""
    off = {(a.prompt, a.window): getattr(a, metric) for a in pick(answers, side="off", mode=mode)}
    on = {(a.prompt, a.window): getattr(a, metric) for a in pick(answers, side="all on", mode=mode)}
    return [on[key] - off[key] for key in off.keys() & on.keys()]


def report_times(answers: list[Answer]) -> None:
    print(f"{'':42s}{'off':>9s}{'all on':>9s}{'added':>9s}{'ratio':>8s}   paired added: median, p90")
    rows = [("stream", "ttft", "streamed: time to 1st token"), ("stream", "total", "streamed: time per answer"),
            ("plain", "total", "plain: time per answer")]  # fmt: skip
    for mode, metric, label in rows:
        values = {side: [getattr(a, metric) for a in pick(answers, side=side, mode=mode)] for side in SIDES}
        diffs = paired(answers, mode, metric)
        for name, q in (("median", 50), ("p90", 90)):
            off, on = percentile(values["off"], q), percentile(values["all on"], q)
            tail = (
                f"   {ms(percentile(diffs, 50)).strip()} ms, {ms(percentile(diffs, 90)).strip()} ms" if q == 50 else ""
            )
            print(f"  {label + ', ' + name + ' ms':40s}{ms(off)}{ms(on)}{ms(on - off)}{on / off:8.3f}{tail}")
    print()
    print(f"{'tokens/s (sum of tokens / sum of time)':42s}{'off':>9s}{'all on':>9s}{'ratio':>8s}")
    for mode in MODES:
        tps = {}
        for side in SIDES:
            mine = pick(answers, side=side, mode=mode)
            tps[side] = sum(a.tokens for a in mine) / sum(a.total for a in mine)
        print(f"  {mode:40s}{tps['off']:9.2f}{tps['all on']:9.2f}{tps['all on'] / tps['off']:8.3f}")


def report_prompts(answers: list[Answer], direct: list[Answer]) -> None:
    print("per prompt, streamed (medians over the windows, ms), and what the 'all on' side redacted:")
    print(
        f"  {'#':>2s} {'tokens':>6s} {'direct':>7s} {'TTFT off':>9s} {'on':>7s} {'total off':>10s} {'on':>7s}  redacted"
    )
    for index in range(len(PROMPTS)):
        streams = {side: pick(answers, side=side, mode="stream", prompt=index) for side in SIDES}
        med = {side: {m: 1000 * statistics.median(getattr(a, m) for a in streams[side]) for m in ("ttft", "total")}
               for side in SIDES}  # fmt: skip
        found = streams["all on"][0].safety.get("redactions") or {}
        redacted = ", ".join(f"{k} {v}" for k, v in found.items()) or "-"
        off, on = med["off"], med["all on"]
        print(
            f"  {index:2d} {streams['off'][0].tokens:6d} {1000 * direct[index].total:7.0f} {off['ttft']:9.0f} "
            f"{on['ttft']:7.0f} {off['total']:10.0f} {on['total']:7.0f}  {redacted}"
        )


def report_sanity(answers: list[Answer], direct: list[Answer]) -> None:
    counts: dict[tuple[int, str], set[int]] = {}
    for a in answers:
        counts.setdefault((a.prompt, a.mode), set()).add(a.tokens)
    same = sum(len(tokens) == 1 for tokens in counts.values())
    odd = sorted(f"#{p} {m}: {sorted(t)}" for (p, m), t in counts.items() if len(t) > 1)
    print(
        f"sanity: same completion tokens on both sides, every window and mode: {same}/{len(counts)} (prompt, mode) "
        "pairs" + (f"; differing: {'; '.join(odd)}" if odd else "")
    )
    like_direct = sum(counts.get((d.prompt, "plain")) == {d.tokens} for d in direct)
    print(
        f"        plain answers with as many tokens as llama.cpp's directly: {like_direct}/{len(direct)} (streamed usage "
        "is the platform's count of the text: llama.cpp streams none, and it leaves out the stop token)"
    )
    texts = sum(
        a.text != b.text
        for a in pick(answers, side="off")
        for b in pick(answers, side="all on", prompt=a.prompt, mode=a.mode, window=a.window)
    )
    print(
        f"        answers whose text differs between the sides (redacted by the filters): {texts}/{len(answers) // 2}"
    )
    on = pick(answers, side="all on")
    kinds: dict[str, int] = {}
    for a in on:
        for entity, n in (a.safety.get("redactions") or {}).items():
            kinds[entity] = kinds.get(entity, 0) + n
    moderation = [(a.safety.get("moderation") or {}).get("action", "none") for a in on]
    guard = [(a.safety.get("input") or {}).get("action", "none") for a in on]
    finishes = sorted({a.finish for a in answers})
    print(
        f"        'all on' verdicts: input {dict(sorted((x, guard.count(x)) for x in set(guard)))}, moderation "
        f"{dict(sorted((x, moderation.count(x)) for x in set(moderation)))}, redactions {kinds}; 'off' answers "
        f"with a safety field: {sum(bool(a.safety) for a in pick(answers, side='off'))}; finish reasons {finishes}"
    )


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    answers: list[Answer] = results["answers"]
    direct: list[Answer] = results["direct"]
    windows = len({a.window for a in answers})
    width = 100
    print()
    print("=" * width)
    print(f"Safety overhead on {LOCAL_MODEL_NAME} (llama.cpp, 2 threads): 'off' against 'all on' (guard flag, "
          "moderation block, PII replace)")  # fmt: skip
    print("=" * width)
    params = {k: v for k, v in payload("", "plain", args, direct=True).items() if k not in ("model", "messages")}
    print(f"generation: {json.dumps(params)}; the platforms add the same repeat_penalty and top_k")
    print(
        f"{len(PROMPTS)} prompts x 2 sides x 2 modes per window, cycled; {windows} of {args.windows} windows run"
        + (f" (time budget {args.budget:g} s reached)" if windows < args.windows else "")
        + f"; {len(answers) // 4} requests per side and mode"
    )
    tokens = sum(d.tokens for d in direct)
    seconds = sum(d.total for d in direct)
    print(f"llama.cpp directly, each prompt once (plain): {tokens / len(direct):.1f} tokens per answer, "
          f"{1000 * statistics.median(d.total for d in direct):.0f} ms median, {tokens / seconds:.2f} tokens/s")  # fmt: skip
    print()
    report_times(answers)
    print()
    report_prompts(answers, direct)
    print()
    report_sanity(answers, direct)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Safety overhead: the output filters' added latency, local model.")
    parser.add_argument("--windows", type=int, default=5, help="windows: every prompt once per side and mode (5)")
    parser.add_argument("--budget", type=float, default=150.0, help="seconds after which no new window starts (150)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request (64)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of every request (1234)")
    parser.add_argument("--redis-url", default=REDIS_URL, help=f"Redis for the platforms (default {REDIS_URL})")
    parser.add_argument("--platform-log-level", help="GENAI_LOG_LEVEL of the platforms (default: theirs, info)")
    parser.add_argument("--platform-ref", help="run the platforms from `git archive REF` instead of the working tree")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with the logs")
    args = parser.parse_args(argv)
    args.client = "httpx"  # what harness.run prints: one keep-alive httpx client per side, requests one at a time
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = [
        f"{len(PROMPTS)} prompts x 2 sides ('off', 'all on') x 2 modes (streamed, plain), {args.windows} windows "
        f"(at most ~{args.budget:g} s), max_tokens {args.max_tokens}; model {MODEL_PATH.name}"
    ]
    refs = {"platform": args.platform_ref}
    return run(args, "genai-platform safety overhead benchmark (local model)", plan, refs, measure, report)


if __name__ == "__main__":
    sys.exit(main())
