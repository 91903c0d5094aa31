"""The local llama.cpp server re-reads only what is new in a continued conversation (#14).

Against the session's real llama.cpp server (``llama``: tests/conftest.py); counts come from its
``GET /genai/prompt_stats`` (chains/llama_server.py): the prompt tokens of the last completion, and how many of them
were reused from the key-value cache rather than evaluated.
"""

from __future__ import annotations

import random

import httpx
import pytest

from chains.local_model import LOCAL_MODEL_NAME

WORDS = (
    "river stone garden window market winter letter forest engine harbor silver candle mountain village bridge "
    "teacher morning island basket ladder thunder meadow lantern pocket orchard kettle compass blanket"
).split()
SLACK = 3  # tokens at the end of the previous prompt that may tokenize differently once text follows them


def question(rng: random.Random, words: int) -> str:
    return "Tell me about " + " ".join(rng.choice(WORDS) for _ in range(words)) + "?"


def stats(base_url: str) -> dict:
    """The last completion's prompt tokens and reused tokens."""
    return httpx.get(base_url.removesuffix("/v1") + "/genai/prompt_stats", timeout=10).json()["last"]


def complete(base_url: str, messages: list[dict], **params) -> tuple[str, dict]:
    body = {"model": LOCAL_MODEL_NAME, "messages": messages, "max_tokens": 8, "temperature": 0, **params}
    response = httpx.post(f"{base_url}/chat/completions", json=body, timeout=120)
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"] or "ok", stats(base_url)


def test_a_continued_turn_reuses_the_previous_prompt(llama):
    rng = random.Random(1)
    first = [{"role": "user", "content": question(rng, 120)}]
    answer, before = complete(llama.base_url, first)
    second = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": question(rng, 120)}]
    _, after = complete(llama.base_url, second)
    assert after["prompt_tokens"] > before["prompt_tokens"] + 100
    assert after["reused_tokens"] >= before["prompt_tokens"] - SLACK  # the first turn was not read again


def test_interleaved_conversations_each_find_their_prefix(llama):
    """Another conversation's request in between replaces the live cache; the RAM prompt cache still has it."""
    assert llama.prompt_cache_bytes > 0
    rng = random.Random(2)
    a = [{"role": "user", "content": question(rng, 120)}]
    b = [{"role": "user", "content": question(rng, 120)}]
    answer_a, first_a = complete(llama.base_url, a)
    answer_b, _ = complete(llama.base_url, b)
    _, second_a = complete(
        llama.base_url, [*a, {"role": "assistant", "content": answer_a}, {"role": "user", "content": question(rng, 60)}]
    )
    assert second_a["reused_tokens"] >= first_a["prompt_tokens"] - SLACK
    _, second_b = complete(
        llama.base_url, [*b, {"role": "assistant", "content": answer_b}, {"role": "user", "content": question(rng, 60)}]
    )
    assert second_b["reused_tokens"] > second_b["prompt_tokens"] // 2


def test_a_request_for_logprobs_reads_its_whole_prompt_and_gets_them(llama):
    """Logits are computed for every prompt token only when a request asks for logprobs (chains/llama_server.py:
    ``logits_when_asked``); such a request starts afresh, and the next one goes back to reusing prefixes."""
    rng = random.Random(3)
    messages = [{"role": "user", "content": question(rng, 40)}]
    complete(llama.base_url, messages)
    body = {
        "model": LOCAL_MODEL_NAME,
        "messages": messages,
        "max_tokens": 4,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    response = httpx.post(f"{llama.base_url}/chat/completions", json=body, timeout=120)
    response.raise_for_status()
    content = response.json()["choices"][0]["logprobs"]["content"]
    assert content and all(len(token["top_logprobs"]) == 2 for token in content)
    assert stats(llama.base_url)["reused_tokens"] == 0
    _, again = complete(llama.base_url, messages)
    assert again["reused_tokens"] >= again["prompt_tokens"] - SLACK


@pytest.mark.parametrize("memory", ["sql", "redis"])
def test_a_long_conversation_through_the_platform_rereads_its_history_only_at_block_jumps(
    live_server, llama, redis_url, memory
):
    """Twelve turns of a server-side conversation whose history overflows GENAI_MEMORY_MAX_TOKENS: llama.cpp
    re-reads the history only on the turns where the oldest turns go in a block, not on every turn."""
    platform = live_server(memory_max_tokens=400, **({"redis_url": redis_url} if memory == "redis" else {}))
    client = platform.openai()
    rng = random.Random(4)
    conversation = "new"
    turns = []  # (prompt tokens, reused tokens) of each turn
    for _ in range(12):
        reply = client.chat.completions.create(
            model=LOCAL_MODEL_NAME,
            messages=[{"role": "user", "content": question(rng, 40)}],
            max_tokens=8,
            temperature=0,
            extra_body={"conversation_id": conversation},
        )
        conversation = reply.model_extra["conversation_id"]
        last = stats(llama.base_url)
        turns.append((last["prompt_tokens"], last["reused_tokens"]))
    kept = [n for n in range(1, 12) if turns[n][1] >= turns[n - 1][0] - SLACK]  # the previous prompt reused
    reread = [n for n in range(1, 12) if n not in kept]
    # The history overflowed 400 tokens after a few turns: one turn at a time, every later turn would re-read it.
    assert max(prompt for prompt, _ in turns) > 400
    assert 1 <= len(reread) <= 3, turns
    for n in reread:  # a jump: the history kept about half the budget
        assert turns[n][0] < turns[n - 1][0], turns
