"""Each node of the chat graph alone, called with a state and a ``Runtime`` as LangGraph would.

The model is langchain-core's fake chat model (scripted, streamed word by word);
the transcript store is a real SQLite database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langgraph.runtime import Runtime
from sqlalchemy import select

from chains.output_stage import OutputBlocked
from errors import ContextLengthExceeded, InvalidRequest, ModelNotFound, NotFound
from graphs.chat import ChatContext
from graphs.chat.nodes import call_model, load_memory, persist, preprocess
from storage import ConversationStore, Database
from storage.tables import Usage
from tests.fakes import fake_registry
from tests.test_output_stage import Upper

APP = "app_graph_tests"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ConversationStore]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'graph.db'}")
    await db.upgrade_schema()
    yield ConversationStore(db)
    await db.close()


class ListMemory:
    """Conversation memory held in a dict, recording what was appended."""

    def __init__(self, prior: dict[str, list] | None = None) -> None:
        self.prior = prior or {}
        self.appended: list[tuple[str, list, int]] = []

    async def load(self, conversation_id: str):
        return list(self.prior.get(conversation_id, []))

    async def append(self, conversation_id: str, messages, total: int) -> None:
        self.appended.append((conversation_id, [(m.type, m.text) for m in messages], total))


def runtime(store, memory=None, writes: list | None = None, **context) -> Runtime[ChatContext]:
    registry = context.pop("models", None) or fake_registry()[0]
    chat_context = ChatContext(models=registry, store=store, memory=memory or ListMemory(), **context)
    return Runtime(context=chat_context, stream_writer=(writes.append if writes is not None else lambda _: None))


# ---------------------------------------------------------------- preprocess


async def test_preprocess_splits_system_from_the_turn_and_resolves_the_route(store):
    state = {
        "app_id": APP,
        "messages": [SystemMessage(content="Be brief."), HumanMessage(content="hi")],
        "model": None,
        "response_id": "chatcmpl-x",
    }
    update = await preprocess(state, runtime(store, system_prompt="deployment default"))
    assert [m.text for m in update["system"]] == ["Be brief."]  # the request's own system message wins
    assert [(m.type, m.text) for m in update["messages"]] == [("human", "hi")]
    assert update["model_name"] == "fake"  # the default route
    assert update["conversation_id"] is None and update["created_conversation"] is False
    assert update["prompt_tokens"] == (3 + 4) + (1 + 4)  # approximate counter: 3 bytes a token, 4 per message
    assert "response_id" not in update  # minted by the chat service, never here


async def test_preprocess_prefers_the_apps_system_prompt_to_the_deployments(store):
    state = {"app_id": APP, "messages": [HumanMessage(content="hi")], "app_system_prompt": "App rules."}
    update = await preprocess(state, runtime(store, system_prompt="Deployment rules."))
    assert [m.text for m in update["system"]] == ["App rules."]
    update = await preprocess({**state, "app_system_prompt": None}, runtime(store, system_prompt="Deployment rules."))
    assert [m.text for m in update["system"]] == ["Deployment rules."]


async def test_preprocess_starts_a_conversation_on_new_and_checks_existing_ones(store):
    update = await preprocess(
        {"app_id": APP, "messages": [HumanMessage(content="hi")], "conversation_id": "new"}, runtime(store)
    )
    assert update["conversation_id"].startswith("conv_") and update["created_conversation"] is True

    mine = await store.create_conversation(app_id=APP)
    update = await preprocess(
        {"app_id": APP, "messages": [HumanMessage(content="hi")], "conversation_id": mine.id}, runtime(store)
    )
    assert update["conversation_id"] == mine.id and update["created_conversation"] is False
    with pytest.raises(NotFound):
        await preprocess(
            {"app_id": "app_other", "messages": [HumanMessage(content="hi")], "conversation_id": mine.id},
            runtime(store),
        )


@pytest.mark.parametrize(
    ("state", "error", "param"),
    [
        ({"app_id": APP, "messages": []}, InvalidRequest, "messages"),
        ({"app_id": APP, "messages": [SystemMessage(content="only rules")]}, InvalidRequest, "messages"),
        ({"messages": [HumanMessage(content="hi")]}, InvalidRequest, None),
        ({"app_id": APP, "messages": [HumanMessage(content="hi")], "model": "nope"}, ModelNotFound, "model"),
        (
            {"app_id": APP, "messages": [HumanMessage(content="hi")], "allowed_models": ["other"]},
            ModelNotFound,
            "model",
        ),
    ],
)
async def test_preprocess_refuses_what_it_cannot_answer(store, state, error, param):
    with pytest.raises(error) as info:
        await preprocess(state, runtime(store))
    assert info.value.param == param


async def test_preprocess_refuses_a_prompt_over_the_context_window(store):
    registry, _ = fake_registry(context_window=100, max_output_tokens=40)
    fits = {"app_id": APP, "messages": [HumanMessage(content="x" * 3 * 56)]}  # 56 + 4 = 60 = 100 - 40
    assert (await preprocess(fits, runtime(store, models=registry)))["prompt_tokens"] == 60
    with pytest.raises(ContextLengthExceeded) as info:
        await preprocess({**fits, "messages": [HumanMessage(content="x" * 3 * 57)]}, runtime(store, models=registry))
    assert "requested 101 tokens (61 in the messages, 40 in the completion)" in info.value.message


# ---------------------------------------------------------------- load_memory


def prepared(**state) -> dict:
    return {"app_id": APP, "model_name": "fake", "system": [], "prompt_tokens": 5, "params": {}, **state}


async def test_load_memory_puts_the_prior_turns_between_system_and_the_new_message(store):
    prior = [HumanMessage(content="q1"), AIMessage(content="a1")]
    memory = ListMemory({"conv_1": prior})
    system = [SystemMessage(content="S")]
    new = [HumanMessage(content="q2")]
    update = await load_memory(prepared(conversation_id="conv_1", system=system, messages=new), runtime(store, memory))
    assert [(m.type, m.text) for m in update["prompt"]] == [
        ("system", "S"),
        ("human", "q1"),
        ("ai", "a1"),
        ("human", "q2"),
    ]
    assert update["prompt_tokens"] == 5 + 2 * (1 + 4)


async def test_load_memory_reads_nothing_for_stateless_or_new_conversations(store):
    memory = ListMemory({"conv_1": [HumanMessage(content="q1"), AIMessage(content="a1")]})
    new = [HumanMessage(content="q2")]
    for state in (prepared(messages=new), prepared(messages=new, conversation_id="conv_1", created_conversation=True)):
        update = await load_memory(state, runtime(store, memory))
        assert update["history"] == [] and update["prompt_tokens"] == 5


async def test_load_memory_keeps_only_the_newest_turns_that_fit(store):
    prior = [
        HumanMessage(content="q" * 30),
        AIMessage(content="a" * 30),
        HumanMessage(content="q2"),
        AIMessage(content="a2"),
    ]
    memory = ListMemory({"conv_1": prior})
    update = await load_memory(
        prepared(conversation_id="conv_1", messages=[HumanMessage(content="q3")]),
        runtime(store, memory, memory_max_tokens=12),
    )
    assert [m.text for m in update["history"]] == ["q2", "a2"]  # 2 * (1 + 4) = 10 tokens fit in 12; 14 more do not


# ---------------------------------------------------------------- call_model


def ready(stream: bool, **state) -> dict:
    prompt = [HumanMessage(content="hi")]
    return prepared(prompt=prompt, messages=prompt, stream=stream, response_id="chatcmpl-test", started_at=0.0, **state)


@pytest.mark.parametrize("stream", [False, True])
async def test_call_model_answers_with_the_response_id_and_usage(store, stream):
    registry, fake = fake_registry(answer="Paris is the capital.")
    writes: list = []
    update = await call_model(ready(stream), {}, runtime(store, models=registry, writes=writes))
    assert update["answer"].text == "Paris is the capital." and update["answer"].id == "chatcmpl-test"
    assert update["finish_reason"] == "stop"
    assert update["completion_tokens"] == 7  # 21 bytes / 3, counted: the fake reports no usage
    assert update["prompt_tokens"] == 5
    assert len(fake.received) == 1
    if stream:  # which route and deployment answer, then word by word, through the custom stream
        assert writes[0] == {"info": {"model_name": "fake", "deployment": "127.0.0.1:9"}}
        assert "".join(w["delta"] for w in writes[1:]) == "Paris is the capital." and len(writes) > 2
    else:
        assert writes == []


class BlockAfter:
    """Lets ``limit`` characters through, then blocks with a notice."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    async def feed(self, text: str) -> str:
        if len(text) > self.left:
            raise OutputBlocked(text[: self.left] + " [blocked]")
        self.left -= len(text)
        return text

    async def finish(self) -> str:
        return ""


@pytest.mark.parametrize("stream", [False, True])
async def test_call_model_passes_the_answer_through_the_output_filters(store, stream):
    registry, _ = fake_registry(answer="Paris is the capital.")
    writes: list = []
    context = runtime(store, models=registry, writes=writes, output_filters=[lambda state: Upper()])
    update = await call_model(ready(stream), {}, context)
    assert update["answer"].text == "PARIS IS THE CAPITAL."
    if stream:
        assert "".join(w.get("delta", "") for w in writes) == "PARIS IS THE CAPITAL."


@pytest.mark.parametrize("stream", [False, True])
async def test_call_model_ends_a_blocked_answer_with_content_filter(store, stream):
    registry, _ = fake_registry(answer="Paris is the capital of France.")
    writes: list = []
    context = runtime(store, models=registry, writes=writes, output_filters=[lambda state: BlockAfter(8)])
    update = await call_model(ready(stream), {}, context)
    assert update["finish_reason"] == "content_filter"
    assert update["answer"].text == "Paris is [blocked]"
    if stream:
        assert "".join(w.get("delta", "") for w in writes) == "Paris is [blocked]"


async def test_call_model_skips_filters_whose_factory_declines(store):
    registry, _ = fake_registry(answer="quiet")
    context = runtime(
        store, models=registry, output_filters=[lambda state: None if state["app_id"] == APP else Upper()]
    )
    assert (await call_model(ready(False), {}, context))["answer"].text == "quiet"


# ---------------------------------------------------------------- persist


def answered(**state) -> dict:
    return ready(
        False,
        answer=AIMessage(content="a1", id="chatcmpl-test"),
        completion_tokens=2,
        finish_reason="stop",
        latency_ms=12.5,
        key_prefix="sk-test",
        **state,
    )


async def test_persist_writes_the_turn_and_its_usage_then_the_memory(store):
    memory = ListMemory()
    await persist(answered(conversation_id="conv_graph_1", created_conversation=True), runtime(store, memory))
    rows = await store.messages("conv_graph_1")
    assert [(r.role, r.content) for r in rows] == [("user", "hi"), ("assistant", "a1")]
    assert rows[1].response_id == "chatcmpl-test" and rows[1].completion_tokens == 2 and rows[1].prompt_tokens == 5
    assert memory.appended == [("conv_graph_1", [("human", "hi"), ("ai", "a1")], 2)]


async def test_persist_of_a_stateless_turn_writes_usage_only(store):
    memory = ListMemory()
    await persist(answered(), runtime(store, memory))
    assert memory.appended == []
    await store.db.writer.flush()  # a stateless turn's usage record is buffered (storage/writer.py)
    async with store.db.session() as session:
        [usage] = (await session.scalars(select(Usage))).all()
    assert (usage.response_id, usage.app_id, usage.prompt_tokens, usage.completion_tokens, usage.status) == (
        "chatcmpl-test",
        APP,
        5,
        2,
        "ok",
    )


async def test_persist_keeps_memory_untouched_when_the_conversation_was_deleted_meanwhile(store):
    memory = ListMemory()
    conversation = await store.create_conversation(app_id=APP)
    await store.delete_conversation(conversation.id, app_id=APP)
    await persist(answered(conversation_id=conversation.id), runtime(store, memory))
    assert await store.messages(conversation.id) == []
    assert memory.appended == []  # nothing to extend: the conversation is gone


async def test_nothing_fails_a_turn_once_it_is_stored(store):
    """Memory (a copy) failing after the commit is logged, not raised: the client would be told that a stored
    turn failed, and retry it."""

    class BrokenMemory(ListMemory):
        async def append(self, *args, **kwargs) -> None:
            raise ConnectionError("redis went away")

    update = await persist(
        answered(conversation_id="conv_graph_2", created_conversation=True), runtime(store, BrokenMemory())
    )
    assert isinstance(update["created"], int)
    assert [r.content for r in await store.messages("conv_graph_2")] == ["hi", "a1"]
