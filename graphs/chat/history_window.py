"""Which prior turns of a conversation the model sees: the newest that fit, dropped in blocks.

Trimming one message at a time (langchain's ``trim_messages(strategy="last")``) moves the start of the history on
every turn once a conversation fills its token budget, so the prompt's prefix changes every turn and a model server
that reuses the key-value cache of an unchanged prefix (llama.cpp) re-reads the whole prompt each time. Here, once the
history overflows the budget, the oldest turns go in one block, so that what is left fits in ``keep_fraction`` of the
budget; the cut then stays where it is on later turns until the budget overflows again.

Requests are stateless and may land on any worker, so the cut is a function of the history alone: the rule is replayed
over the history's messages from its first one (``block_cut``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from langchain_core.messages import BaseMessage

# After an overflow, the history keeps about this fraction of its budget (the setting ``memory_keep_fraction``); the
# same default as memory's cap on messages.
from memory.history import KEEP_FRACTION

__all__ = ["KEEP_FRACTION", "block_cut", "block_window"]


def block_cut(sizes: Sequence[int], starts: Sequence[bool], budget: int, keep_fraction: float = KEEP_FRACTION) -> int:
    """Index of the first message kept, for messages of these token ``sizes``, oldest first.

    ``starts[i]`` says whether the history may start at message ``i`` (a user message). The rule is replayed turn by
    turn (a turn ends before a user message) as the turns arrived: while the kept messages fit ``budget`` the cut
    stays; when a turn overflows it, the cut moves to the earliest start after it whose suffix fits ``keep_fraction``
    of the budget (else to the newest turn when that fits the budget; else past it). Appending turns never moves an
    earlier decision, so the cut is stable between overflows. Always a start, or ``len(sizes)`` when nothing can be
    kept.
    """
    count = len(sizes)
    keep = math.floor(budget * keep_fraction)
    cut = next((i for i in range(count) if starts[i]), count)
    total = 0  # tokens of sizes[cut:end + 1]
    for end in range(cut, count):
        total += sizes[end]
        if total > budget and (end + 1 == count or starts[end + 1]):
            cut, total = _jump(sizes, starts, cut, end + 1, total, keep, budget)
    return cut


def _jump(
    sizes: Sequence[int], starts: Sequence[bool], cut: int, end: int, total: int, keep: int, budget: int
) -> tuple[int, int]:
    """The earliest start after ``cut`` whose suffix up to ``end`` fits ``keep`` tokens; else the newest turn when it
    fits ``budget`` (keeping the least, so that the next jump is as far off as it can be); else ``end``. With that
    suffix's tokens."""
    fallback = (end, 0)
    for index in range(cut, end):
        if index > cut and starts[index]:
            if total <= keep:
                return index, total
            if total <= budget:
                fallback = (index, total)
        total -= sizes[index]
    return fallback


def block_window(
    messages: Sequence[BaseMessage],
    budget: int,
    count: Callable[[Sequence[BaseMessage]], int],
    *,
    keep_fraction: float = KEEP_FRACTION,
    stable_budget: int | None = None,
) -> list[BaseMessage]:
    """The newest ``messages`` that fit ``budget`` tokens, starting on a user message, cut in blocks (``block_cut``).

    ``budget`` may change from turn to turn (it is also bounded by the room the new message leaves in the context
    window); ``stable_budget`` is the budget before the new message is accounted for, the same on every turn of a
    conversation: its cut is kept whenever it also fits ``budget``, so that a longer question does not move the cut.
    ``count`` counts a list of messages.
    """
    if budget <= 0 or not messages:
        return []
    sizes = [count([message]) for message in messages]
    starts = [message.type == "human" for message in messages]
    if stable_budget is not None and stable_budget > budget:
        cut = block_cut(sizes, starts, stable_budget, keep_fraction)
        if sum(sizes[cut:]) > budget:  # this turn has less room: a cut that fits it, never an earlier one
            cut = max(cut, block_cut(sizes, starts, budget, keep_fraction))
    else:
        cut = block_cut(sizes, starts, budget, keep_fraction)
    # A counter that is not a plain sum over messages: drop whole turns until the window fits.
    while cut < len(messages) and count(messages[cut:]) > budget:
        cut = next((i for i in range(cut + 1, len(messages)) if starts[i]), len(messages))
    return list(messages[cut:])
