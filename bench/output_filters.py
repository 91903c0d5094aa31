"""What the output safety filters cost an answer, in process: PII redaction (Presidio), moderation (local rules), both.

For a realistic answer of about 150 tokens, streamed as ~1-token chunks and non-streamed (one piece), it measures
through ``chains.output_stage.OutputStage``:

* the added time per answer: all ``feed`` and ``finish`` calls, against the stage with no filter;
* the added time to first released text: from the first ``feed`` to the first non-empty release (CPU only), and the
  number of chunks fed by then: a filter that holds text delays the first release by that many tokens of the model
  (the end-to-end figure the integrator measures on the local model).

Median and p95 over many repetitions, in ms. Run from the project root: ``.venv/bin/python bench/output_filters.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chains.output_stage import OutputFilter, OutputStage  # noqa: E402  (after the path set-up)
from chains.safety.moderation import LocalModerationChecker, ModerationFilter  # noqa: E402
from chains.safety.pii import PiiFilter, PiiRedactor  # noqa: E402
from chains.safety.pii_policy import PiiPolicy  # noqa: E402

ANSWER = (
    "Thanks for reaching out! Your order #48213 shipped on March 3 and should arrive within 5 business days. "
    "If it has not arrived by then, you can contact our support team at support@example.com or call "
    "+1 415 555 0132 between 9:00 and 17:00. For the firmware issue, please update your router to version 3.11.2: "
    "open the admin page at 192.168.1.1, go to Settings, then System, and choose Update. The download is about "
    "48 MB and usually takes two or three minutes. Do not unplug the router while it installs, or you may need to "
    "reset it to factory settings. Once it restarts, the status light turns solid green, and you can reconnect your "
    "devices as before. If the problem persists after the update, reply to this message with the serial number "
    "printed on the label under the device, and we will arrange a replacement free of charge."
)
TOKEN = re.compile(r"\s*(?:\w{1,8}|[^\w\s])")  # ~1 model token: a word (piece) or a punctuation mark


def tokens(text: str) -> list[str]:
    pieces = TOKEN.findall(text)
    assert "".join(pieces) == text
    return pieces


async def run(pieces: list[str], filters: list[OutputFilter]) -> tuple[float, float, int, float, str]:
    """One answer: total seconds, seconds to the first release, chunks fed by then, the longest single call (how long
    the event loop was held at most), the released text."""
    stage = OutputStage(filters)
    first_at: float | None = None
    first_chunks = 0
    longest = 0.0
    start = before = time.perf_counter()
    for index, piece in enumerate(pieces, 1):
        released = await stage.feed(piece)
        after = time.perf_counter()
        longest, before = max(longest, after - before), after
        if released and first_at is None:
            first_at, first_chunks = after, index
    if await stage.finish() and first_at is None:
        first_at, first_chunks = time.perf_counter(), len(pieces) + 1
    end = time.perf_counter()
    longest = max(longest, end - before)
    return end - start, (first_at or end) - start, first_chunks, longest, stage.text


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def measure(pieces: list[str], make: Callable[[], list[OutputFilter]], repeat: int) -> dict[str, float]:
    totals, firsts, chunks, longest_calls = [], [], [], []
    text = ""
    for _ in range(repeat):
        total, first, first_chunks, longest, text = await run(pieces, make())
        totals.append(total * 1e3)
        firsts.append(first * 1e3)
        chunks.append(first_chunks)
        longest_calls.append(longest * 1e3)
    return {
        "total_p50": statistics.median(totals),
        "total_p95": percentile(totals, 95),
        "first_p50": statistics.median(firsts),
        "first_p95": percentile(firsts, 95),
        "first_chunks": statistics.median(chunks),
        "longest_p50": statistics.median(longest_calls),
        "text": text,  # type: ignore[dict-item]
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=300, help="answers per scenario and mode (default 300)")
    args = parser.parse_args()

    started = time.perf_counter()
    redactor = PiiRedactor(hash_salt="bench")
    checker = LocalModerationChecker()
    print(f"Presidio redactor built in {time.perf_counter() - started:.2f} s (imports not counted)")
    policy = PiiPolicy()
    scenarios: dict[str, Callable[[], list[OutputFilter]]] = {
        "no filter": list,
        "PII (Presidio)": lambda: [PiiFilter(redactor, policy)],
        "moderation (local)": lambda: [ModerationFilter(checker)],
        "PII + moderation": lambda: [PiiFilter(redactor, policy), ModerationFilter(checker)],
    }
    streamed = tokens(ANSWER)
    modes = {f"streamed ({len(streamed)} chunks)": streamed, "non-streamed (1 piece)": [ANSWER]}
    expected = redactor.redact(ANSWER, policy).text
    print(
        f"answer: {len(ANSWER)} characters, {len(streamed)} chunks; redacted: {redactor.redact(ANSWER, policy).found}"
    )
    print(f"{args.repeat} answers per row; times in ms (median / p95); 'added' is against no filter.\n")

    gc.collect()
    for mode, pieces in modes.items():
        print(mode)
        header = (
            f"  {'filters':20} {'per answer':>17} {'added':>8} {'to 1st text':>17} {'added':>8} {'1st after':>10}"
            f" {'longest call':>13}"
        )
        print(header)
        base: dict[str, float] | None = None
        for name, make in scenarios.items():
            for _ in range(10):  # warm-up
                await run(pieces, make())
            figures = await measure(pieces, make, args.repeat)
            if "PII" in name:
                assert figures["text"] == expected, "the streamed redaction differs from the whole-text one"
            base = base or figures
            print(
                f"  {name:20} {figures['total_p50']:8.3f} / {figures['total_p95']:6.3f} "
                f"{figures['total_p50'] - base['total_p50']:8.3f} "
                f"{figures['first_p50']:8.3f} / {figures['first_p95']:6.3f} "
                f"{figures['first_p50'] - base['first_p50']:8.3f} {figures['first_chunks']:6.0f} ch"
                f" {figures['longest_p50']:13.3f}"
            )
        print()
    print(
        "'1st after': chunks fed before the first text was released (1 = at once); each extra chunk is one more\n"
        "model token of latency for the client's first text. 'longest call': the longest single feed/finish of an\n"
        "answer (median over answers), i.e. how long the filters hold the event loop at most; the non-streamed PII\n"
        "analysis runs in a worker thread (asyncio.to_thread), so its figure is mostly waiting, not blocking."
    )


if __name__ == "__main__":
    asyncio.run(main())
