"""The output stage: every answer's text passes through an ordered list of output filters on its way to the client.

It sits between the model and everyone downstream (the streamed deltas, the
non-streamed message, the stored transcript, later the cache), so a filter that
redacts or blocks holds for streamed and plain answers alike.

The contract a filter keeps:

* **One filter object per answer.** A factory, ``factory(state) -> OutputFilter | None``,
  makes it from the chat graph's state when the model is about to be called
  (None: the filter does not apply to this answer). It may keep state across calls.
  A factory with an ``async prepare(state)`` gets it awaited first (``prepare``):
  the place to load what it needs without blocking the event loop.
* **``await feed(text) -> str``** receives the next piece of the answer (what
  the filters before it released) and returns what it releases now: the same
  text, a rewrite, or less. Text it does not return is *held*: for instance the
  start of what may become an e-mail address, until the next piece decides.
  Returning ``""`` holds everything so far.
* **``await finish() -> str``** is called once, after the model's last token:
  it returns everything still held, rewritten as needed. Nothing may stay held
  after it; held text a filter never releases is lost.
* **Blocking:** ``feed`` or ``finish`` may raise ``OutputBlocked(release)``. The
  stage then releases ``release`` (a notice, or nothing), drops the rest of the
  model's output, calls no filter again, and the answer ends with finish
  reason ``content_filter``. What was released before stays released: a stream
  cannot take back what the client has seen, so filters hold what they may
  still want to block.
* **Order:** filters run in the given order; what filter *i* releases is fed to
  filter *i+1*. At the end, filter *i*'s ``finish`` output is fed to filter
  *i+1* before *i+1* finishes.
* **Passing through:** a filter with ``passthrough = True`` promises to release every piece
  at once and unchanged (it only watches, e.g. records a verdict at ``finish``); the
  model's per-token logprobs then still match the streamed text.
* **Non-streamed answers** go through the same calls: one ``feed`` with the
  whole text, then ``finish``. Any exception other than ``OutputBlocked`` fails
  the request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol


class OutputBlocked(Exception):
    """Raised by a filter to end the answer; ``release`` is the last text the client gets."""

    def __init__(self, release: str = "", reason: str | None = None) -> None:
        super().__init__(reason or "output blocked")
        self.release = release
        self.reason = reason


class OutputFilter(Protocol):
    async def feed(self, text: str) -> str: ...

    async def finish(self) -> str: ...


OutputFilterFactory = Callable[[Mapping[str, Any]], OutputFilter | None]


async def prepare(factories: Sequence[OutputFilterFactory], state: Mapping[str, Any]) -> None:
    """Let the factories that need it get ready for an answer (see the contract), before any stage is made."""
    for factory in factories:
        if (ready := getattr(factory, "prepare", None)) is not None:
            await ready(state)


class OutputStage:
    """One answer's pass through its filters (see the module docstring for the contract)."""

    def __init__(self, filters: Sequence[OutputFilter] = ()) -> None:
        self.filters = list(filters)
        self.blocked: OutputBlocked | None = None
        self.released: list[str] = []  # everything the client has been given, in order

    @classmethod
    def for_answer(cls, factories: Sequence[OutputFilterFactory], state: Mapping[str, Any]) -> OutputStage:
        return cls([made for factory in factories if (made := factory(state)) is not None])

    @property
    def passthrough(self) -> bool:
        """Every filter releases the model's pieces as they come, unchanged."""
        return all(getattr(output_filter, "passthrough", False) for output_filter in self.filters)

    @property
    def text(self) -> str:
        """The answer as released so far."""
        return "".join(self.released)

    async def feed(self, text: str) -> str:
        """The model's next piece in, what the client may see now out."""
        if self.blocked is not None:
            return ""
        try:
            for output_filter in self.filters:
                if not text:
                    break
                text = await output_filter.feed(text)
        except OutputBlocked as blocked:
            text = self._block(blocked)
        return self._release(text)

    async def finish(self) -> str:
        """End of the model's answer: everything the filters still hold, released."""
        if self.blocked is not None:
            return ""
        text = ""
        try:
            for output_filter in self.filters:
                if text:
                    text = await output_filter.feed(text)
                text += await output_filter.finish()
        except OutputBlocked as blocked:
            text = self._block(blocked)
        return self._release(text)

    def _block(self, blocked: OutputBlocked) -> str:
        self.blocked = blocked
        return blocked.release

    def _release(self, text: str) -> str:
        if text:
            self.released.append(text)
        return text
