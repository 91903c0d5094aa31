"""The output stage's contract (chains.output_stage), with filters defined here; then end to end, where every
entry point's answers (plain, streamed, LangServe) pass through a filter registered on a live server."""

from __future__ import annotations

import json

import pytest

from chains.model_routes import ModelRoute
from chains.output_stage import OutputBlocked, OutputStage
from tests.mock_upstream import REPLY


class Redact:
    """Replaces ``word`` with ``[redacted]``, even split across pieces: holds any tail that may start it."""

    def __init__(self, word: str) -> None:
        self.word = word
        self.held = ""

    async def feed(self, text: str) -> str:
        text = (self.held + text).replace(self.word, "[redacted]")
        keep = next((n for n in range(len(self.word) - 1, 0, -1) if self.word.startswith(text[-n:])), 0)
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    async def finish(self) -> str:
        held, self.held = self.held, ""
        return held


class Upper:
    async def feed(self, text: str) -> str:
        return text.upper()

    async def finish(self) -> str:
        return ""


class HoldAll:
    """Holds everything until the end, then releases it wrapped."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    async def feed(self, text: str) -> str:
        self.parts.append(text)
        return ""

    async def finish(self) -> str:
        return "<" + "".join(self.parts) + ">"


class BlockOn:
    def __init__(self, word: str, notice: str = "[blocked]") -> None:
        self.word, self.notice, self.calls = word, notice, 0

    async def feed(self, text: str) -> str:
        self.calls += 1
        if self.word in text:
            raise OutputBlocked(self.notice, reason=f"found {self.word}")
        return text

    async def finish(self) -> str:
        self.calls += 1
        return ""


async def run(stage: OutputStage, pieces: list[str]) -> list[str]:
    """What the client sees, piece by piece (empty releases left out)."""
    out = [await stage.feed(piece) for piece in pieces]
    out.append(await stage.finish())
    return [piece for piece in out if piece]


async def test_a_stage_without_filters_passes_text_through():
    stage = OutputStage()
    assert await run(stage, ["a", "b"]) == ["a", "b"]
    assert stage.text == "ab" and stage.blocked is None


async def test_a_filter_holds_text_back_across_pieces_and_releases_it_rewritten():
    stage = OutputStage([Redact("secret")])
    assert await run(stage, ["the sec", "ret is ", "out; se"]) == ["the ", "[redacted] is ", "out; ", "se"]
    assert stage.text == "the [redacted] is out; se"


async def test_filters_run_in_order_and_each_finish_feeds_the_next():
    assert await run(OutputStage([Redact("secret"), Upper()]), ["a secret", " sec"]) == ["A [REDACTED]", " ", "SEC"]
    # Upper first: "SECRET" no longer matches the lower-case word.
    assert await run(OutputStage([Upper(), Redact("secret")]), ["a secret"]) == ["A SECRET"]
    # What the first filter releases at its finish passes through the second before that one finishes.
    stage = OutputStage([HoldAll(), Upper()])
    assert await run(stage, ["x", "y"]) == ["<XY>"]


async def test_a_block_releases_its_notice_and_ends_the_answer():
    blocker = BlockOn("bad")
    stage = OutputStage([blocker, Upper()])
    seen = await run(stage, ["fine ", "bad words", "more"])
    assert seen == ["FINE ", "[blocked]"]  # the notice skips the filters after the blocking one
    assert stage.blocked is not None and stage.blocked.reason == "found bad"
    assert blocker.calls == 2  # not called again after blocking, not even finish
    assert stage.text == "FINE [blocked]"


async def test_a_block_at_finish_replaces_what_was_held():
    class BlockAtEnd(HoldAll):
        async def finish(self) -> str:
            raise OutputBlocked("")

    stage = OutputStage([BlockAtEnd()])
    assert await run(stage, ["held", "back"]) == []
    assert stage.blocked is not None and stage.text == ""


async def test_factories_make_one_filter_per_answer_or_decline():
    made: list[dict] = []

    def factory(state):
        made.append(dict(state))
        return None if state.get("app_id") == "quiet" else Upper()

    assert len(OutputStage.for_answer([factory], {"app_id": "loud"}).filters) == 1
    assert OutputStage.for_answer([factory], {"app_id": "quiet"}).filters == []
    assert [m["app_id"] for m in made] == ["loud", "quiet"]


# ---------------------------------------------------------------- end to end, every entry point


@pytest.fixture
def filtered_server(live_server, mock_upstream):
    """A live server whose answers pass through Redact("Mock") then Upper."""
    server = live_server(model_routes=[ModelRoute(name="mock", base_url=mock_upstream, max_retries=0, timeout=10)])
    server.services.chat.context.output_filters.extend([lambda state: Redact("Mock"), lambda state: Upper()])
    return server


FILTERED = "[REDACTED] REPLY."
assert REPLY == "Mock reply."


def sse_contents(lines: list[str]) -> tuple[str, str | None]:
    text, finish = "", None
    for line in lines:
        if line.startswith("data: {"):
            chunk = json.loads(line[6:])
            for choice in chunk["choices"]:
                text += choice["delta"].get("content") or ""
                finish = choice["finish_reason"] or finish
    return text, finish


def test_plain_and_streamed_answers_and_the_stored_turn_are_filtered(filtered_server):
    client = filtered_server.openai()
    plain = client.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "hi"}], extra_body={"conversation_id": "new"}
    )
    assert plain.choices[0].message.content == FILTERED
    with filtered_server.http() as http:
        body = {"model": "mock", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert sse_contents(list(response.iter_lines())) == (FILTERED, "stop")
        stored = http.get(f"/v1/conversations/{plain.model_extra['conversation_id']}").json()
    assert [m["content"] for m in stored["messages"]] == ["hi", FILTERED]


def test_langserve_answers_are_filtered(filtered_server):
    from langchain_core.messages import HumanMessage
    from langserve import RemoteRunnable

    chat = RemoteRunnable(
        f"{filtered_server.url}/chat/",
        headers={"Authorization": f"Bearer {filtered_server.key}", "X-Model": "mock"},
    )
    assert chat.invoke({"messages": [HumanMessage(content="hi")]}).content == FILTERED
    assert "".join(chunk.content for chunk in chat.stream({"messages": [HumanMessage(content="hi")]})) == FILTERED


def test_a_blocked_answer_ends_with_content_filter_on_every_entry_point(live_server, mock_upstream):
    server = live_server(model_routes=[ModelRoute(name="mock", base_url=mock_upstream, max_retries=0, timeout=10)])
    server.services.chat.context.output_filters.append(lambda state: BlockOn("reply", "[withheld]"))
    plain = server.openai().chat.completions.create(model="mock", messages=[{"role": "user", "content": "hi"}])
    # One piece: the whole answer is withheld. Streamed, "Mock " was released before "reply." arrived.
    assert (plain.choices[0].message.content, plain.choices[0].finish_reason) == ("[withheld]", "content_filter")
    with server.http() as http:
        body = {"model": "mock", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert sse_contents(list(response.iter_lines())) == ("Mock [withheld]", "content_filter")
        answer = http.post(
            "/chat/invoke",
            json={"input": {"messages": [{"type": "human", "content": "hi"}]}},
            headers={"X-Model": "mock"},
        )
    assert answer.status_code == 200, answer.text
    output = answer.json()["output"]
    assert output["content"] == "[withheld]" and output["response_metadata"]["finish_reason"] == "content_filter"


def test_each_of_n_choices_has_its_own_stage(live_server):
    from tests.scripted_upstream import scripted_route, serve_scripted_upstream

    with serve_scripted_upstream() as scripted:
        server = live_server(model_routes=[scripted_route("scripted", scripted)])
        server.services.chat.context.output_filters.append(lambda state: BlockOn("(choice", "[withheld]"))
        ask = [{"role": "user", "content": "hi there"}]
        plain = server.openai().chat.completions.create(model="scripted", messages=ask, n=2)
        assert [(c.message.content, c.finish_reason) for c in plain.choices] == [
            ("Scripted reply to: hi there", "stop"),
            ("[withheld]", "content_filter"),
        ]
        texts: dict[int, str] = {}
        finished: dict[int, str] = {}
        for chunk in server.openai().chat.completions.create(model="scripted", messages=ask, n=2, stream=True):
            for choice in chunk.choices:
                texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
                finished[choice.index] = choice.finish_reason or finished.get(choice.index)
        # Streamed word by word (each with the space before it): choice 1 shows the words before the blocked one.
        assert texts == {0: "Scripted reply to: hi there", 1: "Scripted reply to: hi there[withheld]"}
        assert finished == {0: "stop", 1: "content_filter"}
