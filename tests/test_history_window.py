"""Block-wise history windows (graphs/chat/history_window.py, memory/history.py): the history a long conversation's
model sees keeps its start from turn to turn, and jumps by a block when the budget overflows, so that the model
server can reuse the prompt prefix it computed on the turn before (#14).

Token windows are tested on a fake counter (a message's tokens are its text's length) and through the chat graph with
the fake model; memory's message-count window on the real databases and real Redis (``store``: tests/conftest.py).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage, trim_messages
from redis.asyncio import Redis

from graphs.chat.history_window import KEEP_FRACTION, block_cut, block_window
from memory import RedisMemory, SqlMemory
from memory.history import window_block, window_start
from storage import ConversationStore
from tests.fakes import chat_graph, fake_registry
from tests.test_memory import APP, padded, record


def length(messages: Sequence[BaseMessage]) -> int:
    """The fake counter: a message's tokens are its text's characters."""
    return sum(len(m.text) for m in messages)


def turns(sizes: Sequence[tuple[int, int]]) -> list[BaseMessage]:
    """A conversation whose n-th turn is a question and an answer of the given sizes (labels first, then padding)."""
    out: list[BaseMessage] = []
    for n, (question, answer) in enumerate(sizes, 1):
        out += [HumanMessage(content=f"q{n}".ljust(question, ".")), AIMessage(content=f"a{n}".ljust(answer, "."))]
    return out


def labels(messages: Sequence[BaseMessage]) -> list[str]:
    return [m.text.rstrip(".") for m in messages]


def window(messages: Sequence[BaseMessage], budget: int, **kwargs) -> list[BaseMessage]:
    return block_window(messages, budget, length, **kwargs)


def trimmed(messages: Sequence[BaseMessage], budget: int) -> list[BaseMessage]:
    """What the graph handed out before (#14): the newest messages that fit, trimmed one at a time."""
    return trim_messages(list(messages), max_tokens=budget, token_counter=length, strategy="last", start_on="human")


# ---------------------------------------------------------------- the cut


def test_block_cut_exact_cut_points():
    # Ten messages of 10 tokens, user messages at even positions; budget 50, keep half (25).
    sizes, starts = [10] * 10, [i % 2 == 0 for i in range(10)]
    cuts = [block_cut(sizes[:n], starts[:n], 50, 0.5) for n in range(11)]
    # Five messages fit. The sixth overflows: the cut jumps to the earliest user message whose suffix fits 25
    # tokens (messages 4 and 5: 20), and stays there while the suffix fits 50; the tenth overflows again.
    assert cuts == [0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 8]


def test_block_cut_keep_fraction_sets_the_size_of_the_jump():
    # Turns of 10 tokens (5 + 5) in a budget of 60: six fit, the seventh overflows.
    sizes, starts = [5] * 40, [i % 2 == 0 for i in range(40)]
    first_turn = [block_cut(sizes[: 2 * n], starts[: 2 * n], 60, 0.5) // 2 for n in range(21)]
    # Keep half (30 tokens, three turns): a jump every four turns.
    assert first_turn == [0] * 7 + [4] * 4 + [8] * 4 + [12] * 4 + [16] * 2
    # Keep a fifth (12 tokens, one turn): further and less often.
    first_turn = [block_cut(sizes[: 2 * n], starts[: 2 * n], 60, 0.2) // 2 for n in range(21)]
    assert first_turn == [0] * 7 + [6] * 6 + [12] * 6 + [18] * 2


def test_when_no_turn_fits_the_kept_share_the_newest_turn_is_kept():
    # Turns of 20 tokens, budget 60, keep 0.2 (12 tokens): no turn fits that, so only the newest is kept, and the
    # next jump is two turns later rather than on every turn.
    sizes, starts = [10] * 14, [i % 2 == 0 for i in range(14)]
    assert [block_cut(sizes[:n], starts[:n], 60, 0.2) for n in range(0, 15, 2)] == [0, 0, 0, 0, 6, 6, 6, 12]


def test_block_cut_starts_on_a_user_message():
    # An answer and a tool result before the first question; a system message and a tool result inside.
    messages = [
        AIMessage(content="x" * 5),
        HumanMessage(content="q" * 10),
        AIMessage(content="a" * 10),
        ToolMessage(content="t" * 10, tool_call_id="c1"),
        SystemMessage(content="s" * 10),
        HumanMessage(content="q" * 10),
        AIMessage(content="a" * 10),
    ]
    sizes = [len(m.text) for m in messages]
    starts = [m.type == "human" for m in messages]
    assert block_cut(sizes, starts, 100, 0.5) == 1  # everything fits: from the first question
    assert block_cut(sizes, starts, 50, 0.5) == 5  # overflow: never the tool result or the system message
    assert block_cut([5, 10], [False, False], 100, 0.5) == 2  # no question: nothing


def test_a_turn_larger_than_the_kept_share_still_fits_when_it_can():
    # The newest turn alone (40) is over half the budget (25) but within it (50): the cut falls on its question.
    messages = turns([(10, 10), (10, 10), (30, 10)])
    assert labels(window(messages, 50)) == ["q3", "a3"]
    # A newest answer larger than the budget: no question to start on, no history.
    assert window(turns([(10, 10), (10, 60)]), 50) == []


# ---------------------------------------------------------------- the window over a growing conversation


def test_the_cut_stays_as_turns_are_appended_and_jumps_by_a_block_on_overflow():
    # 30 turns like the benchmark's (a 240-token question, a 20-token answer) in a 2,048-token budget.
    conversation = turns([(240, 20)] * 30)
    budget = 2048
    starts: list[str | None] = []
    for n in range(1, 31):
        history = window(conversation[: 2 * n], budget)
        assert length(history) <= budget and (not history or history[0].type == "human")
        assert history == conversation[len(conversation[: 2 * n]) - len(history) : 2 * n]  # the newest, a suffix
        starts.append(labels(history)[0] if history else None)
    # 7 turns (1,820 tokens) fit, the 8th overflows: keep the newest 3 turns (780 <= 1,024), and so on.
    assert starts[:7] == ["q1"] * 7
    changes = [n + 1 for n in range(1, 30) if starts[n] != starts[n - 1]]
    assert changes == [8, 13, 18, 23, 28]
    assert [starts[n - 1] for n in changes] == ["q6", "q11", "q16", "q21", "q26"]
    for n in changes:  # right after a jump the history holds about half the budget
        assert length(window(conversation[: 2 * n], budget)) <= budget * KEEP_FRACTION
    # One message at a time, the start moves on every turn after the first overflow.
    trimmed_starts = [labels(trimmed(conversation[: 2 * n], budget))[0] for n in range(1, 31)]
    assert len(set(trimmed_starts)) == 24


def test_histories_that_fit_are_handed_out_as_before():
    rng = random.Random(14)
    kinds = [HumanMessage, AIMessage, ToolMessage, SystemMessage]
    for _ in range(500):
        messages = []
        for _ in range(rng.randint(0, 12)):
            kind = rng.choices(kinds, weights=[5, 5, 1, 1])[0]
            text = "x" * rng.randint(1, 30)
            messages.append(kind(content=text, tool_call_id="c") if kind is ToolMessage else kind(content=text))
        budget = rng.randint(1, 200)
        before = trimmed(messages, budget)
        after = window(messages, budget)
        # Always: the newest messages, starting on a question, within the budget.
        assert after == messages[len(messages) - len(after) :]
        assert not after or after[0].type == "human"
        assert length(after) <= budget
        if length(messages) <= budget:  # the whole history fits: the same as before
            assert after == before


def test_a_turn_with_less_room_keeps_the_usual_cut_when_it_fits():
    conversation = turns([(10, 10)] * 7)  # 140 tokens; the usual budget, 100, overflowed at the 6th turn
    usual = window(conversation, 100)
    assert labels(usual) == ["q5", "a5", "q6", "a6", "q7", "a7"]  # 60 tokens
    # Alone, a budget of 65 would have cut elsewhere (at q4, then at q7)...
    assert labels(window(conversation, 65)) == ["q7", "a7"]
    # ...but a turn whose longer question leaves 65 tokens keeps the usual cut, which fits: the same prefix.
    assert window(conversation, 65, stable_budget=100) == usual
    # 50 tokens: the usual cut does not fit; a later one that does.
    assert labels(window(conversation, 50, stable_budget=100)) == ["q7", "a7"]


# ---------------------------------------------------------------- the chat graph


async def test_the_graph_keeps_the_prompt_prefix_between_turns(store):
    """Twelve turns through the graph with SQL memory: each prompt's history starts as the previous one's (the model
    server's cache holds that prefix), except on a jump by a block, after which it holds about half the budget."""
    # With the approximate counter a padded 10-token text is a 14-token message: a turn is 28, 4 fit 120 tokens.
    registry, fake = fake_registry(answer=padded("a", 10))
    graph = chat_graph(
        models=registry, store=store, memory=SqlMemory(store), system_prompt="Be brief.", memory_max_tokens=120
    )
    conversation = await store.create_conversation(app_id=APP)
    for n in range(1, 13):
        await graph(
            {
                "app_id": APP,
                "messages": [HumanMessage(content=padded(f"q{n}", 10))],
                "model": "fake",
                "conversation_id": conversation.id,
                "params": {},
            }
        )
    histories = [labels(prompt[1:-1]) for prompt in fake.received]
    assert histories[4] == ["q1", "a", "q2", "a", "q3", "a", "q4", "a"]  # 112 tokens: all of it
    jumps = [n for n in range(1, 12) if histories[n][: len(histories[n - 1])] != histories[n - 1]]
    for n in jumps:  # the newest two turns (56 tokens) of the five (140) that overflowed
        assert histories[n] == [f"q{n - 1}", "a", f"q{n}", "a"]
    assert [n + 1 for n in jumps] == [6, 9, 12]  # the turns that re-read their history: 3 of 12, not 8
    assert all(len(h) * 14 <= 120 for h in histories)


# ---------------------------------------------------------------- memory's message cap


def test_window_start_moves_by_blocks():
    assert window_block(200) == 100 and window_block(4) == 2 and window_block(3) == 1 and window_block(1) == 1
    totals = (0, 200, 201, 250, 300, 301, 400, 401)
    assert [window_start(n, 200) for n in totals] == [0, 0, 100, 100, 100, 200, 200, 300]
    for cap in (1, 2, 3, 4, 7, 10, 200):
        for fraction in (0.2, 0.5, 0.8):
            previous = 0
            for total in range(0, 3 * cap + 5):
                start = window_start(total, cap, fraction)
                assert 0 <= total - start <= cap  # never more than the cap
                assert start >= previous and start % window_block(cap, fraction) == 0
                if start != previous:  # a jump leaves about the fraction kept
                    assert total - start == cap - window_block(cap, fraction) + 1
                previous = start


@pytest.fixture
async def redis(redis_url: str):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_sql_and_redis_memory_hand_out_the_same_block_window_as_turns_are_appended(
    store: ConversationStore, redis, request
):
    cap = 6  # a block of 3 messages
    sql = SqlMemory(store, max_messages=cap)
    cached = RedisMemory(redis, store, max_messages=cap, prefix=f"genai:test:{request.node.name}:{id(request)}:")
    conversation = await store.create_conversation(app_id=APP)
    everything: list[tuple[str, str]] = []
    starts = []
    for n in range(1, 11):
        total = await record(store, conversation.id, f"q{n}", f"a{n}")
        await cached.append(conversation.id, [HumanMessage(content=f"q{n}"), AIMessage(content=f"a{n}")], total)
        everything += [("human", f"q{n}"), ("ai", f"a{n}")]
        start = window_start(total, cap)
        expected = everything[start:]
        assert [(m.type, m.text) for m in await sql.load(conversation.id)] == expected
        assert [(m.type, m.text) for m in await cached.load(conversation.id)] == expected
        assert await redis.llen(cached.key(conversation.id)) == len(expected)  # extended, not dropped
        starts.append(start)
    assert starts == [0, 0, 0, 3, 6, 6, 9, 12, 12, 15]  # two turns of four keep the start

    # An expired list is rebuilt with the same window.
    await redis.delete(cached.key(conversation.id))
    assert [(m.type, m.text) for m in await cached.load(conversation.id)] == everything[15:]
    await cached.forget(conversation.id)
