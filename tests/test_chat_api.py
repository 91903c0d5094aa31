"""The chat path end to end: the official openai SDK against a live server and the real local model."""

from __future__ import annotations

import pytest

from tests.conftest import two_turns

pytestmark = pytest.mark.slow


def ask(client, content: str, **kwargs):
    return client.chat.completions.create(
        model="gemma-3-270m", messages=[{"role": "user", "content": content}], **kwargs
    )


def test_plain_completion_answers_with_openai_shape(server):
    completion = ask(server.openai(), "What is the capital of France?", max_tokens=16, temperature=0)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gemma-3-270m"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    # Stateless by default, like OpenAI: no conversation is created.
    assert (completion.model_extra or {}).get("conversation_id") is None


def test_default_model_is_used_when_omitted(server):
    response = server.http().post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    )
    assert response.status_code == 200
    assert response.json()["model"] == "gemma-3-270m"


def test_max_tokens_ends_with_length(server):
    completion = ask(server.openai(), "Write a long story about a dragon.", max_tokens=3, temperature=0)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens <= 3


def test_streaming_yields_deltas_then_done(server):
    stream = ask(server.openai(), "What is the capital of France?", stream=True, max_tokens=16, temperature=0)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.id == chunks[0].id for c in chunks)
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_streaming_usage_in_last_chunk(server):
    stream = ask(
        server.openai(), "Name a color.", stream=True, max_tokens=8, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_raw_sse_ends_with_done(server):
    with server.http().stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "gemma-3-270m", "stream": True, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"


@pytest.mark.parametrize("memory", ["sql", "redis"])
def test_conversation_remembers_prior_turns(request, memory):
    server = request.getfixturevalue("server" if memory == "sql" else "redis_server")
    client = server.openai()
    first, second, conversation_id = two_turns(
        client, "Who wrote Romeo and Juliet?", "What else did he write?", max_tokens=16, temperature=0
    )
    # The prior turn was in the prompt: more prompt tokens than the new message alone.
    alone = ask(client, "What else did he write?", max_tokens=1)
    assert second.usage.prompt_tokens > alone.usage.prompt_tokens

    stored = server.http().get(f"/v1/conversations/{conversation_id}").json()
    roles = [m["role"] for m in stored["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert stored["messages"][0]["content"] == "Who wrote Romeo and Juliet?"
    assert stored["messages"][1]["content"] == first.choices[0].message.content
    assert stored["messages"][3]["response_id"] == second.id


def test_streamed_conversation_is_stored(redis_server):
    client = redis_server.openai()
    stream = client.chat.completions.create(
        model="gemma-3-270m",
        messages=[{"role": "user", "content": "What is the capital of Italy?"}],
        extra_body={"conversation_id": "new"},
        stream=True,
        max_tokens=12,
    )
    chunks = list(stream)
    conversation_id = chunks[0].model_extra["conversation_id"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    stored = redis_server.http().get(f"/v1/conversations/{conversation_id}").json()
    assert [m["content"] for m in stored["messages"]] == ["What is the capital of Italy?", text]


def test_models_list_and_retrieve(server):
    client = server.openai()
    models = client.models.list()
    assert [m.id for m in models.data] == ["gemma-3-270m", "all-MiniLM-L6-v2"]  # the chat route, the embeddings
    model = client.models.retrieve("gemma-3-270m")
    assert model.id == "gemma-3-270m" and model.object == "model"


def test_health_and_readiness(server):
    http = server.http()
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "model:gemma-3-270m": "ok"}


def test_concurrent_requests_each_get_a_whole_answer(server):
    """llama.cpp's stock server interrupts a running answer when another arrives; ours must queue them."""
    from concurrent.futures import ThreadPoolExecutor

    client = server.openai()
    with ThreadPoolExecutor(max_workers=3) as pool:
        streams = [True, False, True]
        futures = [
            pool.submit(
                lambda stream: ask(client, "What is the capital of France?", max_tokens=16, temperature=0, stream=stream),
                stream,
            )
            for stream in streams
        ]
        results = [f.result() for f in futures]
    texts = [
        "".join(c.choices[0].delta.content or "" for c in r if c.choices) if stream else r.choices[0].message.content
        for r, stream in zip(results, streams)
    ]
    assert all("Paris" in text for text in texts), texts
