"""The whole OpenAI chat request surface through the platform: every field forwarded, implemented or refused with a
400 naming it; tools, structured output, logprobs and content parts, against the scripted upstream (which records
what it receives) and, for what the small local model can do, against the real llama.cpp server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from chains.model_routes import ModelRoute
from chains.route_features import FORWARDED_FIELDS
from storage.tables import Usage
from tests.scripted_upstream import ScriptedUpstream, scripted_route, serve_scripted_upstream

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK = [{"role": "user", "content": "What is the weather in 'Oslo'?"}]


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedUpstream]:
    with serve_scripted_upstream() as upstream:
        yield upstream


@pytest.fixture
def platform(live_server, scripted):
    """A platform with an OpenAI-like route in front of the scripted upstream, and routes of narrower providers."""
    scripted.clear()
    return live_server(
        model_routes=[
            scripted_route("scripted", scripted),
            ModelRoute(name="llamacpp", base_url=scripted, provider="llama.cpp", max_retries=0),
            ModelRoute(name="ollama", base_url=scripted, provider="ollama", max_retries=0),
            ModelRoute(
                name="no-tools", base_url=scripted, max_retries=0, features={"tools": False, "json_schema": False}
            ),
        ]
    )


def forwarded(scripted: ScriptedUpstream) -> dict:
    [body] = scripted.requests
    return body


# Every field the platform forwards, with a value the scripted upstream accepts.
FIELD_VALUES = {
    "temperature": 0.5, "top_p": 0.5, "stop": ["zzz"], "presence_penalty": 0.5, "frequency_penalty": 0.5, "seed": 7,
    "user": "end-user-1", "logit_bias": {"50256": -100}, "logprobs": True, "top_logprobs": 2,
    "tools": [WEATHER], "tool_choice": "auto", "parallel_tool_calls": False,
    "response_format": {"type": "json_object"}, "metadata": {"team": "a"},
    "service_tier": "auto", "reasoning_effort": "low", "verbosity": "low", "prompt_cache_key": "k",
    "safety_identifier": "s", "prediction": {"type": "content", "content": "x"}, "modalities": ["text"],
    "audio": {"voice": "alloy", "format": "wav"}, "web_search_options": {},
}  # fmt: skip


# Fields that OpenAI (and the scripted upstream) take only beside another one.
COMPANIONS = {"tool_choice": {"tools": [WEATHER]}, "top_logprobs": {"logprobs": True}}


def test_the_table_covers_every_forwarded_field():
    assert set(FIELD_VALUES) == FORWARDED_FIELDS


@pytest.mark.parametrize("field", sorted(FIELD_VALUES))
def test_each_field_reaches_an_openai_route_as_sent(platform, scripted, field):
    messages = [{"role": "user", "content": "Reply in json about the 'weather'."}]
    body = {"model": "scripted", "messages": messages, **COMPANIONS.get(field, {}), field: FIELD_VALUES[field]}
    with platform.http() as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert forwarded(scripted)[field] == FIELD_VALUES[field]


@pytest.mark.parametrize(
    ("model", "body", "param"),
    [
        ("llamacpp", {"metadata": {"a": "b"}}, "metadata"),
        ("llamacpp", {"parallel_tool_calls": True}, "parallel_tool_calls"),
        ("ollama", {"logprobs": True}, "logprobs"),
        ("no-tools", {"tools": [WEATHER]}, "tools"),
        ("no-tools", {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
        ("scripted", {"temprature": 0.2}, "temprature"),
        ("scripted", {"top_k": 3}, "top_k"),
        ("scripted", {"functions": [WEATHER["function"]]}, "functions"),
        ("no-tools", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}, "messages[0].content[0]"),
    ],
)  # fmt: skip
def test_what_a_route_cannot_take_is_refused_before_the_model_naming_field_and_route(
    platform, scripted, model, body, param
):
    with platform.http() as http:
        response = http.post("/v1/chat/completions", json={"model": model, "messages": ASK, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", param)
    assert f"`{model}`" in error["message"] or param == "functions"
    assert scripted.requests == []  # the model was never called


def test_provider_extras_pass_when_the_route_allows_them(platform, scripted):
    with platform.http() as http:
        response = http.post(
            "/v1/chat/completions", json={"model": "llamacpp", "messages": ASK, "top_k": 3, "min_p": 0.1}
        )
    assert response.status_code == 200, response.text
    assert (forwarded(scripted)["top_k"], forwarded(scripted)["min_p"]) == (3, 0.1)


def test_tool_calls_come_back_as_openai_sends_them(platform, scripted):
    client = platform.openai()
    answer = client.chat.completions.create(model="scripted", messages=ASK, tools=[WEATHER])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert (call.id, call.type, call.function.name, json.loads(call.function.arguments)) == (
        "call_1_0",
        "function",
        "get_weather",
        {"city": "Oslo"},
    )
    # The tool's result goes back in, with the assistant message that called it.
    result = client.chat.completions.create(
        model="scripted",
        messages=[
            *ASK,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
        ],
        tools=[WEATHER],
    )
    assert result.choices[0].message.content == "Tool result: Sunny, 21 C"
    sent = scripted.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["function"]["name"] == "get_weather" and sent[2]["tool_call_id"] == call.id


def test_streamed_tool_calls_arrive_as_indexed_argument_deltas(platform):
    chunks = list(
        platform.openai().chat.completions.create(model="scripted", messages=ASK, tools=[WEATHER], stream=True)
    )
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id == "call_1_0" and deltas[0].function.name == "get_weather"
    assert {d.index for d in deltas} == {0}
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Oslo"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_structured_output_and_logprobs_pass_through(platform):
    client = platform.openai()
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    }
    shaped = client.chat.completions.create(
        model="scripted", messages=ASK,
        response_format={"type": "json_schema", "json_schema": {"name": "forecast", "schema": schema, "strict": True}},
    )  # fmt: skip
    assert json.loads(shaped.choices[0].message.content) == {"city": "Oslo", "days": 3}
    scored = client.chat.completions.create(model="scripted", messages=ASK, logprobs=True, top_logprobs=1)
    tokens = scored.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == scored.choices[0].message.content
    assert {t.logprob for t in tokens} == {-0.5}
    streamed = list(client.chat.completions.create(model="scripted", messages=ASK, logprobs=True, stream=True))
    assert "".join(
        t.token for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content
    ) == ("Scripted reply to: What is the weather in 'Oslo'?")


def test_image_parts_reach_a_route_with_vision(platform, scripted):
    image = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    answer = platform.openai().chat.completions.create(model="scripted", messages=[{"role": "user", "content": image}])
    assert answer.choices[0].message.content == "Scripted reply to: What is this? I saw 1 image(s)."
    assert forwarded(scripted)["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/png")


REPLY = "Scripted reply to: What is the weather in 'Oslo'?"


def test_n_choices_come_back_as_the_route_made_them(platform, scripted):
    answer = platform.openai().chat.completions.create(model="scripted", messages=ASK, n=3, logprobs=True)
    assert forwarded(scripted)["n"] == 3
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert [c.message.content for c in answer.choices] == [REPLY, f"{REPLY} (choice 1)", f"{REPLY} (choice 2)"]
    assert [c.finish_reason for c in answer.choices] == ["stop"] * 3
    assert [len(c.logprobs.content) for c in answer.choices] == [9, 11, 11]
    # The upstream's usage: 6 prompt words; 9 + 11 + 11 completion words.
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (6, 31)
    [record] = [r for r in platform.rows(Usage.__table__) if r["response_id"] == answer.id]
    assert (record["prompt_tokens"], record["completion_tokens"], record["status"]) == (6, 31, "ok")


def test_n_choices_stream_each_under_its_index(platform, scripted):
    chunks = list(
        platform.openai().chat.completions.create(
            model="scripted", messages=ASK, n=2, stream=True, stream_options={"include_usage": True}
        )
    )
    texts: dict[int, str] = {}
    finished: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert texts == {0: REPLY, 1: f"{REPLY} (choice 1)"}
    assert finished == {0: "stop", 1: "stop"}
    assert len({chunk.id for chunk in chunks}) == 1
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (6, 20)


def test_n_choices_of_tool_calls(platform, scripted):
    answer = platform.openai().chat.completions.create(model="scripted", messages=ASK, n=2, tools=[WEATHER])
    for choice in answer.choices:
        [call] = choice.message.tool_calls
        assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Oslo"})
        assert choice.finish_reason == "tool_calls" and choice.message.content is None


@pytest.mark.parametrize("model", ["llamacpp", "ollama"])
def test_n_above_one_is_refused_by_a_route_without_it(platform, scripted, model):
    with pytest.raises(openai.BadRequestError) as caught:
        platform.openai().chat.completions.create(model=model, messages=ASK, n=2)
    assert (caught.value.param, caught.value.code) == ("n", "unsupported_parameter")
    assert model in caught.value.message and scripted.requests == []


def test_n_above_one_is_refused_with_a_conversation(platform, scripted):
    with pytest.raises(openai.BadRequestError) as caught:
        platform.openai().chat.completions.create(
            model="scripted", messages=ASK, n=2, extra_body={"conversation_id": "new"}
        )
    assert (caught.value.param, caught.value.code) == ("n", "unsupported_parameter")
    assert "conversation" in caught.value.message and scripted.requests == []


def test_n_one_is_not_forwarded(platform, scripted):
    platform.openai().chat.completions.create(model="llamacpp", messages=ASK, n=1)
    assert "n" not in forwarded(scripted)


# ---------------------------------------------------------------- the local model (llama.cpp)


def test_the_local_model_calls_a_forced_tool_and_fills_a_json_schema(server):
    client = server.openai()
    forced = {"type": "function", "function": {"name": "get_weather"}}
    called = client.chat.completions.create(
        model="gemma-3-270m", messages=ASK, tools=[WEATHER], tool_choice=forced, temperature=0, seed=1
    )
    [call] = called.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and set(json.loads(call.function.arguments)) == {"city"}
    schema = {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]}
    shaped = client.chat.completions.create(
        model="gemma-3-270m",
        messages=[{"role": "user", "content": "The capital of France, as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": schema}},
        temperature=0, seed=1, max_tokens=40,
    )  # fmt: skip
    assert set(json.loads(shaped.choices[0].message.content)) == {"capital"}  # grammar-constrained by llama.cpp
    scored = client.chat.completions.create(
        model="gemma-3-270m", messages=ASK, logprobs=True, top_logprobs=2, temperature=0, seed=1, max_tokens=4
    )
    assert all(len(t.top_logprobs) == 2 for t in scored.choices[0].logprobs.content)


def test_a_routes_features_are_shown_by_the_models_api(platform):
    with platform.http() as http:
        llamacpp = http.get("/v1/models/llamacpp").json()
        narrow = http.get("/v1/models/no-tools").json()
    assert (llamacpp["provider"], llamacpp["features"]["extra_params"]) == (
        "llama.cpp",
        ["min_p", "repeat_penalty", "top_k"],
    )
    assert llamacpp["features"]["vision"] is False and llamacpp["features"]["json_schema"] is True
    assert (llamacpp["features"]["n"], narrow["features"]["n"]) == (False, False)
    with platform.http() as http:
        assert http.get("/v1/models/scripted").json()["features"]["n"] is True
    assert (narrow["features"]["tools"], narrow["features"]["json_schema"], narrow["features"]["json_object"]) == (
        False,
        False,
        True,
    )


def test_langserve_takes_tool_messages_and_ai_tool_calls(platform, scripted):
    loop = [
        {"type": "human", "content": "What is the weather in 'Oslo'?"},
        {
            "type": "ai",
            "content": "",
            "tool_calls": [{"name": "get_weather", "args": {"city": "Oslo"}, "id": "call_1_0"}],
        },
        {"type": "tool", "content": "Sunny, 21 C", "tool_call_id": "call_1_0"},
    ]
    with platform.http() as http:
        response = http.post("/chat/invoke", json={"input": {"messages": loop}}, headers={"X-Model": "scripted"})
        assert response.status_code == 200, response.text
        assert response.json()["output"]["content"] == "Tool result: Sunny, 21 C"
        bad = http.post(
            "/chat/invoke",
            json={"input": {"messages": [*loop[:2], {"type": "tool", "content": "x"}]}},
            headers={"X-Model": "scripted"},
        )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input.messages[2].tool_call_id"
    sent = forwarded(scripted)["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}


def test_a_llama_cpp_route_gets_what_its_server_takes(platform, scripted):
    """llama.cpp forces only a named tool and takes string content: "required" with one tool becomes the named
    form, parallel_tool_calls false holds without being sent, text parts are joined; what it cannot do is refused."""
    history = [
        {"role": "user", "content": [{"type": "text", "text": "What is the weather in "}, {"type": "text", "text": "'Oslo'?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."}], "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        {"role": "user", "content": "And tomorrow?"},
    ]  # fmt: skip
    body = {
        "model": "llamacpp",
        "messages": history,
        "tools": [WEATHER],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }
    with platform.http() as http:
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        sent = forwarded(scripted)
        assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
        assert "parallel_tool_calls" not in sent
        assert [m["content"] for m in sent["messages"]] == [
            "What is the weather in 'Oslo'?",
            "Let me look.",
            "Sunny",
            "And tomorrow?",
        ]
        other = {
            "type": "function",
            "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
        }
        refused = http.post("/v1/chat/completions", json={**body, "tools": [WEATHER, other]})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "tool_choice"
