"""POST /v1/embeddings: OpenAI's embeddings API on the platform's embedding model (local, or a configured route).

Behind the same gate as chat: an app's key, its rate limits and budgets before the call, the tokens read (and their
cost at the route's price) charged after it, and one usage record per request, failures included.
"""

from __future__ import annotations

import base64
import logging
import struct
import time
import uuid
from functools import partial

from fastapi import APIRouter

from errors import APIError, InvalidRequest, ModelNotFound
from server.deps import ChatCaller, ServicesDep
from server.knowledge_schemas import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from server.services import Services
from storage.tenants import Caller
from storage.transcripts import TurnRecord

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["embeddings"])

MAX_INPUTS = 2048  # as OpenAI


def input_texts(value: str | list) -> list[str]:
    """The inputs as a list of non-empty strings; token ids are refused (the platform embeds text)."""
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise InvalidRequest("'input' must not be empty: send a string or a list of strings.", param="input")
    if not all(isinstance(text, str) for text in texts):
        raise InvalidRequest(
            "'input' as token ids is not supported by this platform: send the text as a string or a list of strings.",
            param="input",
            code="unsupported_value",
        )
    if len(texts) > MAX_INPUTS:
        raise InvalidRequest(f"'input' may hold at most {MAX_INPUTS} strings; it has {len(texts)}.", param="input")
    for index, text in enumerate(texts):
        if not text.strip():
            raise InvalidRequest(f"'input' holds an empty string (item {index}): each input needs text.", param="input")
    return texts


def encode(vector: list[float], encoding_format: str) -> list[float] | str:
    """base64 is OpenAI's: the vector's little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


@router.post("/embeddings")
async def create_embeddings(body: EmbeddingRequest, caller: ChatCaller, services: ServicesDep) -> EmbeddingList:
    model = services.embeddings
    if body.model != model.name or not caller.may_use(model.name):
        raise ModelNotFound(
            f"The model '{body.model}' does not exist or is not an embedding model: use '{model.name}'.",
            param="model",
        )
    texts = input_texts(body.input)
    started = time.perf_counter()
    record = partial(
        TurnRecord, response_id=f"emb-{uuid.uuid4().hex}", app_id=caller.app_id, model=model.name,
        key_prefix=caller.key_prefix, user=body.user,
    )  # fmt: skip
    try:
        result = await model.embed(texts, dimensions=body.dimensions)
    except APIError as error:
        await book_usage(
            services, caller, TurnRecord.failure(**record.keywords, error=error, latency_ms=_since(started))
        )
        raise
    tokens = result.prompt_tokens
    cost = tokens * model.input_price / 1_000_000
    await book_usage(
        services,
        caller,
        record(prompt_tokens=tokens, completion_tokens=0, cost=cost, latency_ms=_since(started)),
    )
    services.metrics.count_tokens(model.name, tokens, 0)
    return EmbeddingList(
        data=[
            Embedding(index=index, embedding=encode(vector, body.encoding_format))
            for index, vector in enumerate(result.vectors)
        ],
        model=model.name,
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    )


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def book_usage(services: Services, caller: Caller, record: TurnRecord) -> None:
    """The usage record of one request, and its tokens and cost charged to the key's limits and budgets (after the
    call, as chat does). The client's answer must not fail on the books: a failure here is logged."""
    try:
        await services.store.record_turn(record)
        if record.prompt_tokens or record.cost:
            await services.limiter.spend(caller, tokens=record.prompt_tokens, cost=record.cost)
    except Exception:
        log.exception("could not record the embeddings request %s", record.response_id)
