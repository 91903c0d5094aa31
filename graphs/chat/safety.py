"""The chat graph's safety checks: the ``guard_input`` node, the screening of retrieved passages, the output filters
of the answer (PII redaction, moderation), and the verdicts they leave in the state's ``safety``.

Each app has a mode per check ("off", "flag": answer and record the verdict, "block": refuse), and a PII policy
(None: no redaction). The verdicts travel with the answer (the response's ``safety`` field), are stored with its
message and usage record, and are counted in the metrics:

    {"input":      {"flagged", "score", "categories", "matches", "detector", "action": "allowed|flagged|blocked"},
     "context":    {"screened": n, "flagged": k, "dropped": d},      # retrieved passages, when retrieval ran
     "redactions": {"EMAIL_ADDRESS": 2, ...},                        # when the app redacts PII
     "moderation": {"flagged", "categories", "checker", "action"}}   # when the answer is moderated
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from langchain_core.messages import BaseMessage
from langgraph.runtime import Runtime

from chains.output_stage import OutputBlocked, OutputFilter, OutputStage
from chains.safety.pii_policy import PiiPolicy
from errors import ContentPolicyViolation
from graphs.chat.context import ChatContext, InputGuard
from graphs.chat.state import ChatState

# Screening longer text than this runs in a worker thread: the rules take about 0.1 ms for a short message, and
# grow with the text.
INLINE_SCREEN_CHARS = 4000


def after_preprocess(state: ChatState) -> str:
    """``guard_input`` only for apps that screen their input: a node costs time even when it does nothing."""
    return "guard_input" if state.get("guard_mode", "off") != "off" else "load_memory"


def screened_text(messages: Sequence[BaseMessage]) -> str:
    """What the guard reads of a request: its users' turns and the tool results it carries (both can hold an
    injection; the system prompt and earlier answers are the app's own)."""
    return "\n".join(m.text for m in messages if m.type in ("human", "tool") and m.text)


async def guard_input(state: ChatState, runtime: Runtime[ChatContext]) -> dict[str, Any]:
    """Screen the request for prompt injection and jailbreaks; refuse it in ``block`` mode."""
    guard = runtime.context.guard
    text = screened_text(state["messages"])
    if guard is None or not text:
        return {}
    return {"safety": await screen_input(guard, text, state.get("guard_mode", "off"), state.get("safety"))}


async def screen_input(
    guard: InputGuard, text: str, mode: str, safety: dict[str, Any] | None, *, param: str = "messages"
) -> dict[str, Any]:
    """``safety`` with the input guard's verdict on ``text``; in ``block`` mode a flagged text is refused (400
    ``content_policy_violation`` naming ``param``). The image graph screens its prompts with this too."""
    if len(text) <= INLINE_SCREEN_CHARS and guard.detector == "rules":
        verdict = guard.screen(text)
    else:  # a classifier model, or much text: off the event loop
        verdict = await asyncio.to_thread(guard.screen, text)
    blocked = verdict.flagged and mode == "block"
    action = "blocked" if blocked else "flagged" if verdict.flagged else "allowed"
    safety = {**(safety or {}), "input": {**verdict.as_dict(), "action": action}}
    if blocked:
        raise ContentPolicyViolation(
            "Your request was rejected by the platform's input guard: it looks like a prompt injection or jailbreak "
            f"attempt ({', '.join(verdict.categories) or 'injection'}).",
            safety=safety,
            param=param,
        )
    return safety


async def screen_passages(state: ChatState, context: ChatContext, texts: Sequence[str]) -> tuple[list[bool], dict]:
    """Which retrieved passages to keep (a document can carry an indirect injection), and the ``safety`` update.

    ``flag`` keeps every passage and records how many look like injections; ``block`` also drops them."""
    mode = state.get("guard_mode", "off")
    if context.guard is None or mode == "off" or not texts:
        return [True] * len(texts), {}
    verdicts = await asyncio.to_thread(context.guard.screen_many, list(texts))
    flagged = [verdict.flagged for verdict in verdicts]
    keep = [not (hit and mode == "block") for hit in flagged]
    report = {"screened": len(texts), "flagged": sum(flagged), "dropped": keep.count(False)}
    return keep, {"safety": {**(state.get("safety") or {}), "context": report}}


# The output filters: made per answer from the state, reporting what they did.


class ReportingFilter(OutputFilter, Protocol):
    def report(self) -> dict[str, Any]: ...


class _PiiReport:
    """A PII filter (``chains.safety.pii.PiiFilter``) that says what it redacted."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def feed(self, text: str) -> str:
        return await self.inner.feed(text)

    async def finish(self) -> str:
        return await self.inner.finish()

    def report(self) -> dict[str, Any]:
        return {"redactions": dict(self.inner.found)}


class _ModerationReport:
    """The answer's moderation: in ``block`` mode the checking filter (``chains.safety.moderation.ModerationFilter``)
    that holds what it may still block; in ``flag`` mode nothing is held, the whole answer is checked at its end."""

    def __init__(self, checker: Any, blocking: Any | None) -> None:
        self.checker = checker
        self.blocking = blocking
        self.passthrough = blocking is None  # see chains.output_stage
        self.result: Any = None
        self.blocked = False
        self._seen: list[str] = []

    async def feed(self, text: str) -> str:
        if self.blocking is None:
            self._seen.append(text)
            return text
        try:
            return await self.blocking.feed(text)
        except OutputBlocked:
            self.blocked = True
            raise

    async def finish(self) -> str:
        if self.blocking is None:
            self.result = (await self.checker.check(["".join(self._seen)]))[0] if self._seen else None
            return ""
        try:
            return await self.blocking.finish()
        except OutputBlocked:
            self.blocked = True
            raise

    def report(self) -> dict[str, Any]:
        result = self.result if self.blocking is None else self.blocking.result
        flagged = bool(result is not None and result.flagged)
        return {
            "moderation": {
                "flagged": flagged,
                "categories": sorted(name for name, hit in (result.categories if result else {}).items() if hit),
                "checker": self.checker.name,
                "action": "blocked" if self.blocked else "flagged" if flagged else "allowed",
            }
        }


class PiiFilters:
    """The factory of the PII filter, for answers of apps with a PII policy. ``redactor()`` gives the process's
    shared Presidio redactor; ``prepare`` builds it off the event loop on first need (importing Presidio and spaCy
    takes seconds)."""

    def __init__(self, redactor: Callable[[], Any]) -> None:
        self.redactor = redactor
        self._ready: Any = None

    async def prepare(self, state: Any) -> None:
        if state.get("pii_policy") and self._ready is None:
            self._ready = await asyncio.to_thread(self.redactor)

    def __call__(self, state: Any) -> ReportingFilter | None:
        policy = state.get("pii_policy")
        if not policy:
            return None
        from chains.safety.pii import PiiFilter

        return _PiiReport(PiiFilter(self._ready or self.redactor(), PiiPolicy.from_dict(policy)))


def moderation_filters(checker: Any) -> Callable[[Any], ReportingFilter | None]:
    """The factory of the moderation filter, by the app's mode."""
    from chains.safety.moderation import ModerationFilter

    def factory(state: Any) -> ReportingFilter | None:
        mode = state.get("moderation_mode", "off")
        if mode == "off":
            return None
        return _ModerationReport(checker, ModerationFilter(checker) if mode == "block" else None)

    return factory


def output_verdicts(state: ChatState, stages: Sequence[OutputStage]) -> dict[str, Any]:
    """The ``safety`` update of an answer's choices: their filters' reports merged (redactions summed, the worst
    moderation kept), on top of what the input checks found."""
    merged: dict[str, Any] = dict(state.get("safety") or {})
    redactions: dict[str, int] | None = None
    moderation: dict[str, Any] | None = None
    for stage in stages:
        for output_filter in stage.filters:
            report = output_filter.report() if hasattr(output_filter, "report") else {}
            if "redactions" in report:
                redactions = redactions or {}
                for entity, count in report["redactions"].items():
                    redactions[entity] = redactions.get(entity, 0) + count
            found = report.get("moderation")
            if found and (moderation is None or _RANK[found["action"]] > _RANK[moderation["action"]]):
                moderation = found
    if redactions is not None:
        merged["redactions"] = redactions
    if moderation is not None:
        merged["moderation"] = moderation
    return {"safety": merged} if merged else {}


_RANK = {"allowed": 0, "flagged": 1, "blocked": 2}
