"""The OpenAI Agents SDK as a client: an agent with one function tool runs its tool loop (the model calls the tool,
the SDK runs it, the model answers with its result) over chat completions, ``Runner.run`` and
``Runner.run_streamed``:

- straight against the scripted upstream (what the SDK does with an OpenAI-compatible server);
- against the platform in front of it, stateless (the SDK sends the whole history each call);
- against the platform on a server-side conversation: the SDK, given ``conversation_id``, sends only the items it
  has not sent yet (it warns that chat completions have no server state of their own and goes on), the platform's
  ``conversation_id`` extension (``ModelSettings(extra_body=...)``) supplies the rest, and afterwards
  ``GET /v1/conversations/{id}`` shows the user's message, the assistant's tool call, the tool's result and the
  answer, in order.

The scripted upstream calls the tool with the ``'quoted'`` city of the user's message and answers a tool result with
``"Tool result: <the tool's output>"`` (see ``tests/scripted_upstream.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    RunConfig,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

from server.settings import Settings
from tests.conftest import ADMIN_KEY, LiveServer
from tests.scripted_upstream import ScriptedUpstream, scripted_route, serve_scripted_upstream

set_tracing_disabled(True)  # no traces exported (there is no network)

MODEL = "scripted"
INSTRUCTIONS = "You tell the weather. Use the tool."
MODES = ["run", "run_streamed"]


@pytest.fixture(scope="module")
def scripted_upstream() -> Iterator[ScriptedUpstream]:
    with serve_scripted_upstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def agents_platform(scripted_upstream, tmp_path_factory) -> Iterator[LiveServer]:
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path_factory.mktemp("agents") / "data",
        model_routes=[scripted_route(MODEL, scripted_upstream)],
        admin_key=ADMIN_KEY,
    )
    server = LiveServer(settings).start()
    yield server
    server.stop()


@pytest.fixture
def upstream(scripted_upstream) -> ScriptedUpstream:
    scripted_upstream.clear()
    return scripted_upstream


def weather_agent(base_url: str, api_key: str, **settings) -> tuple[Agent, list[str]]:
    """An agent with one tool, ``get_weather``, whose calls are recorded in the list returned with it."""
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        calls.append(city)
        return f"Sunny, 21 C in {city}"

    client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)
    agent = Agent(
        name="weather",
        instructions=INSTRUCTIONS,
        tools=[get_weather],
        model=OpenAIChatCompletionsModel(model=MODEL, openai_client=client),
        model_settings=ModelSettings(**settings),
    )
    return agent, calls


async def run(agent: Agent, question: str, mode: str, **kwargs) -> str:
    """The agent's final output, through ``Runner.run`` or ``Runner.run_streamed`` (every event read)."""
    config = RunConfig(tracing_disabled=True)
    if mode == "run":
        result = await Runner.run(agent, question, run_config=config, **kwargs)
        return result.final_output
    streamed = Runner.run_streamed(agent, question, run_config=config, **kwargs)
    kinds = [event.type async for event in streamed.stream_events()]
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    return streamed.final_output


def tool_loop_requests(upstream: ScriptedUpstream, city: str, streamed: bool) -> None:
    """The upstream saw the loop's two model calls: the question with the tool, then the history with the tool's
    call and result, in OpenAI's shapes."""
    assert len(upstream.requests) == 2, [json.dumps(r)[:300] for r in upstream.requests]
    first, second = upstream.requests
    assert [t["function"]["name"] for t in first["tools"]] == ["get_weather"]
    assert bool(first.get("stream")) is streamed and bool(second.get("stream")) is streamed
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "tool"]
    call = second["messages"][2]["tool_calls"]
    assert [(c["type"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in call] == [
        ("function", "get_weather", {"city": city})
    ]
    tool = second["messages"][3]
    assert tool["tool_call_id"] == call[0]["id"]
    assert tool["content"] == f"Sunny, 21 C in {city}"


# ---------------------------------------------------------------- straight at the scripted upstream


@pytest.mark.parametrize("mode", MODES)
async def test_a_tool_loop_against_the_scripted_upstream(upstream, mode):
    agent, calls = weather_agent(upstream.base_url, "sk-scripted")
    output = await run(agent, "What is the weather in 'Paris'?", mode)
    assert calls == ["Paris"]
    assert output == "Tool result: Sunny, 21 C in Paris"
    tool_loop_requests(upstream, "Paris", streamed=mode == "run_streamed")


# ---------------------------------------------------------------- through the platform


@pytest.mark.parametrize("mode", MODES)
async def test_a_tool_loop_through_the_platform(agents_platform, upstream, mode):
    agent, calls = weather_agent(f"{agents_platform.url}/v1", agents_platform.key)
    output = await run(agent, "What is the weather in 'Lisbon'?", mode)
    assert calls == ["Lisbon"]
    assert output == "Tool result: Sunny, 21 C in Lisbon"
    tool_loop_requests(upstream, "Lisbon", streamed=mode == "run_streamed")


@pytest.mark.parametrize("mode", MODES)
async def test_a_tool_loop_on_a_server_side_conversation(agents_platform, upstream, mode):
    with agents_platform.http() as http:
        created = http.post("/v1/conversations", json={"title": "weather"})
        assert created.status_code == 200, created.text
        conversation_id = created.json()["id"]
    agent, calls = weather_agent(
        f"{agents_platform.url}/v1", agents_platform.key, extra_body={"conversation_id": conversation_id}
    )

    # With conversation_id the SDK sends only what the server has not seen: the question, then the tool's result.
    output = await run(agent, "What is the weather in 'Oslo'?", mode, conversation_id=conversation_id)
    assert calls == ["Oslo"]
    assert output == "Tool result: Sunny, 21 C in Oslo"
    # The platform completed the history from its memory: the upstream saw the same two calls as without it.
    tool_loop_requests(upstream, "Oslo", streamed=mode == "run_streamed")

    with agents_platform.http() as http:
        conversation = http.get(f"/v1/conversations/{conversation_id}")
    assert conversation.status_code == 200, conversation.text
    messages = conversation.json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"], messages
    question, tool_call, tool_result, answer = messages
    assert question["content"] == "What is the weather in 'Oslo'?"
    assert not tool_call["content"]
    assert tool_call["finish_reason"] == "tool_calls"
    assert [
        (c["type"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in tool_call["tool_calls"]
    ] == [("function", "get_weather", {"city": "Oslo"})]
    assert tool_result["tool_call_id"] == tool_call["tool_calls"][0]["id"]
    assert tool_result["content"] == "Sunny, 21 C in Oslo"
    assert answer["content"] == "Tool result: Sunny, 21 C in Oslo"
    assert answer["finish_reason"] == "stop"

    # A next turn on the same conversation: the model sees the whole earlier loop before the new question.
    upstream.clear()
    output = await run(agent, "And in 'Bergen'?", mode, conversation_id=conversation_id)
    assert calls == ["Oslo", "Bergen"]
    assert output == "Tool result: Sunny, 21 C in Bergen"
    first = upstream.requests[0]
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert first["messages"][-1]["content"] == "And in 'Bergen'?"
