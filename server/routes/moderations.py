"""POST /v1/moderations: OpenAI's moderation API, on the checker that moderates chat answers (the local one, or
OpenAI's endpoint when ``GENAI_MODERATION_URL`` is set). The response's ``model`` names the checker that judged."""

from __future__ import annotations

import time
import uuid
from functools import partial
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from errors import APIError, InvalidRequest, ServiceUnavailable
from server.deps import ChatCaller, ServicesDep
from server.routes.embeddings import book_usage
from server.schemas import ResponseBody
from storage.transcripts import TurnRecord

router = APIRouter(prefix="/v1", tags=["moderations"])

MAX_INPUTS = 256
# The names OpenAI's clients send; all are served by the configured checker, which the response names.
OPENAI_MODELS = {
    "omni-moderation-latest", "omni-moderation-2024-09-26", "text-moderation-latest", "text-moderation-stable",
}  # fmt: skip


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: StrictStr


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: StrictStr | list[StrictStr] | list[TextPart | dict[str, Any]] = Field(
        description="a string, a list of strings, or a list of text parts (images are not supported)"
    )
    model: StrictStr | None = Field(None, description="OpenAI's model names are accepted; the checker answers")


class ModerationResult(ResponseBody):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]


class Moderation(ResponseBody):
    id: str
    model: str = Field(description="the checker that judged: 'local' or the OpenAI moderation model")
    results: list[ModerationResult]


def input_texts(value: str | list) -> list[str]:
    """The texts to judge: each string or text part; image parts are refused by name."""
    items = [value] if isinstance(value, str) else value
    if not items:
        raise InvalidRequest("'input' must not be empty: send a string or a list of strings.", param="input")
    if len(items) > MAX_INPUTS:
        raise InvalidRequest(f"'input' may hold at most {MAX_INPUTS} items; it has {len(items)}.", param="input")
    texts = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, TextPart):
            texts.append(item.text)
        else:
            kind = item.get("type") if isinstance(item, dict) else None
            raise InvalidRequest(
                f"'input[{index}]' of type {kind!r} is not supported: this platform moderates text only.",
                param=f"input[{index}]",
                code="unsupported_value",
            )
    return texts


@router.post("/moderations")
async def create_moderation(body: ModerationRequest, caller: ChatCaller, services: ServicesDep) -> Moderation:
    checker = services.safety.moderation
    if body.model is not None and body.model not in OPENAI_MODELS | {checker.name}:
        raise InvalidRequest(
            f"The model '{body.model}' is not a moderation model here: omit it, or use '{checker.name}'.",
            param="model",
            code="model_not_found",
        )
    texts = input_texts(body.input)
    started = time.perf_counter()
    record = partial(
        TurnRecord, response_id=f"modr-{uuid.uuid4().hex}", app_id=caller.app_id, model=f"moderation:{checker.name}",
        key_prefix=caller.key_prefix,
    )  # fmt: skip
    try:
        results = await checker.check(texts)
    except Exception as exc:
        error = exc if isinstance(exc, APIError) else ServiceUnavailable("The moderation checker is unavailable.")
        await book_usage(
            services, caller, TurnRecord.failure(**record.keywords, error=error, latency_ms=_since(started))
        )
        raise error from exc
    await book_usage(services, caller, record(prompt_tokens=0, completion_tokens=0, latency_ms=_since(started)))
    return Moderation(
        id=record.keywords["response_id"],
        model=checker.name,
        results=[ModerationResult(**result.as_openai()) for result in results],
    )


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
