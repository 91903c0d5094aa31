"""Fine-tuning files: uploads with purpose ``fine-tune`` through the openai SDK (the file object, lists by purpose, the
content as uploaded, deletion), every bad file refused with a 400 naming its lines, and the validator itself."""

from __future__ import annotations

import json

import openai
import pytest

from chains.fine_tuning.dataset import (
    DatasetError,
    DatasetSummary,
    load_examples,
    message_text,
    token_counter,
    validate_jsonl,
)
from chains.model_routes import ModelRoute
from chains.tokens import ApproximateTokenCounter
from storage.tables import File


def example(answer: str = "Paris.", question: str = "What is the capital of France?", **extra) -> dict:
    messages = [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]
    return {"messages": messages, **extra}


def jsonl(*lines: dict | str | bytes) -> bytes:
    """One line per item: objects as JSON, strings as they are."""
    out = []
    for line in lines:
        if isinstance(line, bytes):
            out.append(line)
        elif isinstance(line, str):
            out.append(line.encode())
        else:
            out.append(json.dumps(line).encode())
    return b"\n".join(out) + b"\n"


GOOD = jsonl(example(), example("Berlin.", "And of Germany?"), "", example("Rome.", "And of Italy?"))


def refusal(client: openai.OpenAI, data: bytes, filename: str = "train.jsonl") -> dict:
    """The error body of an upload the platform refuses (a 400)."""
    with pytest.raises(openai.BadRequestError) as raised:
        client.files.create(file=(filename, data), purpose="fine-tune")
    assert raised.value.status_code == 400
    error = raised.value.body
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    return error


# ------------------------------------------------------------------------------------------------ through the API


def test_a_fine_tuning_file_round_trips(kb_server):
    client = kb_server.openai()
    notes = client.files.create(file=("notes.txt", b"Some notes."), purpose="assistants")
    file = client.files.create(file=("train.jsonl", GOOD), purpose="fine-tune")
    assert file.id.startswith("file-") and file.object == "file"
    assert (file.filename, file.purpose, file.bytes, file.status) == ("train.jsonl", "fine-tune", len(GOOD), "uploaded")
    assert client.files.retrieve(file.id) == file
    assert client.files.content(file.id).content == GOOD
    assert [f.id for f in client.files.list(purpose="fine-tune").data] == [file.id]
    assert [f.id for f in client.files.list(purpose="assistants").data] == [notes.id]
    assert [f.id for f in client.files.list().data] == [file.id, notes.id]
    (row,) = [row for row in kb_server.rows(File.__table__) if row["id"] == file.id]
    assert row["kind"] == "jsonl"

    # Deleting it goes through the knowledge base, which finds it in no vector store.
    deleted = client.files.delete(file.id)
    assert (deleted.id, deleted.deleted) == (file.id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file.id)
    assert [f.id for f in client.files.list().data] == [notes.id]
    assert not list((kb_server.settings.data_dir / "files").rglob(file.id))


def test_blank_lines_crlf_and_a_byte_order_mark_are_fine(kb_server):
    data = b"\xef\xbb\xbf" + GOOD.replace(b"\n", b"\r\n") + b"\r\n   \r\n"
    file = kb_server.openai().files.create(file=("train.JSONL", data), purpose="fine-tune")
    assert file.bytes == len(data)


LONG = "word " * 60  # 300 bytes: about 100 tokens with the approximate counter


BAD_FILES = [  # (the file, its problem as the message says it)
    (jsonl(example(), b'{"messages": [{"role": "user", "content": "caf\xe9"}]}'), "line 2: not valid UTF-8 (byte 0xe9 at column 47)"),
    (jsonl(example(), example(), '{"messages": [}'), "line 3: not valid JSON (Expecting value at column 15)"),
    (jsonl(example(), example(), example(), "{} {}"), "line 4: not valid JSON (Extra data at column 4)"),
    (jsonl('[{"role": "user"}]', example()), "line 1: not a JSON object (a list)"),
    (jsonl(example(), {"conversation": []}), "line 2: unknown field 'conversation'"),
    (jsonl(example(), {"prompt": "Hi", "completion": "Hello"}), "line 2: the prompt/completion format is not supported"),
    (jsonl(example(), example(functions=[])), "line 2: unknown field 'functions' (use 'tools')"),
    (jsonl({}), "line 1: no 'messages'"),
    (jsonl(example(), {"messages": []}), "line 2: 'messages' is empty"),
    (jsonl(example(), {"messages": "hello"}), "line 2: 'messages' is a string, not a list of messages"),
    (jsonl({"messages": [{"content": "hi"}]}), "line 1: messages[0] has no 'role'"),
    (jsonl(example(), {"messages": [{"role": "bot", "content": "hi"}]}), 'line 2: messages[0].role "bot" is not one of system, developer, user, assistant, tool'),
    (jsonl({"messages": [{"role": "user", "content": 42}]}), "line 1: messages[0].content must be a string or a list of text parts, not a number"),
    (jsonl({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}), "line 1: messages[0] (user) has no 'content'"),
    (jsonl({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}), 'line 1: messages[0].content[0] has type "image_url": only text parts are supported'),
    (jsonl(example(), example(), {"messages": [{"role": "user", "content": "Hi"}]}), "line 3: no assistant answer to learn from"),
    (jsonl({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]}), "line 1: no assistant answer to learn from"),
    (jsonl({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "x", "weight": 0}]}), "line 1: no assistant answer to learn from"),
    (jsonl(example(), {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "x", "weight": 0.5}]}), "line 2: messages[1].weight must be 0 or 1, not 0.5"),
    (jsonl({"messages": [{"role": "user", "content": "Hi", "weight": 1}, {"role": "assistant", "content": "x"}]}), "line 1: messages[0].weight: only assistant messages have a weight"),
    (jsonl({"messages": [{"role": "tool", "content": "42"}, {"role": "assistant", "content": "x"}]}), "line 1: messages[0] (tool) needs a 'tool_call_id'"),
    (b"", "it holds no examples"),
    (b"\n\n  \n", "it holds no examples"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "words"), BAD_FILES)
def test_bad_files_are_found_with_their_line(data, words):
    with pytest.raises(DatasetError) as raised:
        validate_jsonl(data, count_tokens=count, context_window=8192)
    assert raised.value.total == 1 and len(raised.value.errors) == 1
    assert str(raised.value) == f"The fine-tuning file has a problem: {raised.value.errors[0]}."
    assert words in raised.value.errors[0]


def test_bad_files_are_refused_with_their_line(kb_server):
    """Every bad file of BAD_FILES through the API (one server for all): a 400 naming ``file``, nothing stored."""
    client = kb_server.openai()
    for data, words in BAD_FILES:
        error = refusal(client, data)
        assert (error["param"], error["code"]) == ("file", "invalid_file")
        assert error["message"].startswith("The fine-tuning file has a problem: ")
        assert words in error["message"], (words, error["message"])
    assert not client.files.list().data


def test_every_problem_is_listed_up_to_ten(kb_server):
    client = kb_server.openai()
    error = refusal(client, jsonl(example(), "nope", example(), {"messages": []}, {"messages": [{"role": "x"}]}))
    assert error["message"] == (
        "The fine-tuning file has 3 problems: line 2: not valid JSON (Expecting value at column 1); "
        "line 4: 'messages' is empty; "
        'line 5: messages[0].role "x" is not one of system, developer, user, assistant, tool.'
    )
    error = refusal(client, jsonl(*["{"] * 25))
    assert error["message"].startswith("The fine-tuning file has 25 problems (the first 10): line 1: not valid JSON")
    assert "line 10: " in error["message"] and "line 11: " not in error["message"]


def test_an_example_longer_than_the_context_window(live_server, mock_upstream):
    route = ModelRoute(name="small", base_url=mock_upstream, context_window=64, max_retries=0)
    client = live_server(model_routes=[route]).openai()
    error = refusal(client, jsonl(example(), example(LONG)))
    assert error["message"].startswith(
        "The fine-tuning file has a problem: line 2: the example is 130 tokens long, more than the model's context "
        "window (64 tokens)"
    )
    assert client.files.create(file=("ok.jsonl", jsonl(example())), purpose="fine-tune").purpose == "fine-tune"


def test_fine_tuning_files_need_the_jsonl_extension(kb_server):
    error = refusal(kb_server.openai(), GOOD, filename="train.json")
    assert (error["param"], error["code"]) == ("file", "unsupported_file")
    assert "upload JSON Lines with the extension .jsonl" in error["message"]


def test_other_purposes_are_refused_naming_both(kb_server):
    with pytest.raises(openai.BadRequestError) as raised:
        kb_server.openai().files.create(file=("a.jsonl", GOOD), purpose="batch")
    assert raised.value.body["param"] == "purpose"
    assert "accepts 'assistants' (files for vector stores) and 'fine-tune'" in raised.value.body["message"]


def test_a_fine_tuning_file_cannot_go_into_a_vector_store(kb_server):
    client = kb_server.openai()
    file = client.files.create(file=("train.jsonl", GOOD), purpose="fine-tune")
    store = client.vector_stores.create(name="docs")
    with pytest.raises(openai.BadRequestError) as raised:
        client.vector_stores.files.create(vector_store_id=store.id, file_id=file.id)
    assert raised.value.body["param"] == "file_id" and "fine-tune" in raised.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.vector_stores.create(name="more", file_ids=[file.id])
    assert [s.id for s in client.vector_stores.list().data] == [store.id]


# ------------------------------------------------------------------------------------------------ the validator


def count(messages: list[dict]) -> int:
    return token_counter(ApproximateTokenCounter())(messages)


def test_a_summary_counts_examples_and_tokens():
    assert validate_jsonl(GOOD) == DatasetSummary(examples=3)
    summary = validate_jsonl(GOOD, count_tokens=count, context_window=1000)
    expected = [count(example(*pair)["messages"]) for pair in (("Paris.", "What is the capital of France?"),
                                                                 ("Berlin.", "And of Germany?"), ("Rome.", "And of Italy?"))]  # fmt: skip
    assert summary == DatasetSummary(examples=3, total_tokens=sum(expected), max_example_tokens=max(expected))
    with pytest.raises(DatasetError) as raised:
        validate_jsonl(GOOD, count_tokens=count, context_window=max(expected) - 1)
    assert raised.value.errors == [
        f"line 1: the example is {max(expected)} tokens long, more than the model's context window "
        f"({max(expected) - 1} tokens): shorten it or split it"
    ]


def test_tools_tool_calls_developer_and_weights_are_accepted():
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    line = {
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Use the tools."}]},
            {"role": "user", "content": "Weather in Paris?", "name": "ann"},
            {"role": "assistant", "content": "Let me look.", "weight": 0},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
            {"role": "assistant", "content": "Sunny.", "weight": 1},
        ],
        "tools": [tool],
        "parallel_tool_calls": False,
    }
    only_a_call = {"messages": [{"role": "user", "content": "Weather?"}, {"role": "assistant", "tool_calls": [call]}]}
    summary = validate_jsonl(jsonl(line, only_a_call), count_tokens=count)
    assert summary.examples == 2
    # The tools count as one more message holding their JSON; tool calls by their JSON.
    tools = count([{"role": "system", "content": json.dumps([tool])}])
    assert summary.total_tokens == count(line["messages"]) + tools + count(only_a_call["messages"])
    calls = ApproximateTokenCounter().count_text(json.dumps([call]))
    assert count([line["messages"][3]]) == count([{"role": "assistant", "content": None}]) + calls > calls


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ({"messages": example()["messages"], "tools": {}}, "'tools' is an object, not a list of tools"),
        ({"messages": example()["messages"], "tools": [{"name": "x"}]}, "tools[0] is not a tool"),
        ({"messages": example()["messages"], "parallel_tool_calls": "yes"}, "'parallel_tool_calls' must be true or false"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"id": "c"}]}]}, "messages[1].tool_calls[0] is not a tool call"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "refusal": None}]}, "messages[1] (assistant) has an unknown field 'refusal'"),
        ({"messages": [{"role": "user", "content": "x", "name": 3}, {"role": "assistant", "content": "y"}]}, "messages[0].name must be a string"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}, {"role": "assistant", "content": "y"}]}, "messages[0].content[0] is not a text part"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": True}]}, "messages[1].weight must be 0 or 1, not true"),
        ({"messages": [None]}, "messages[0] is null, not a message object"),
        ('{"messages": NaN}', "not valid JSON (NaN is not a JSON number)"),
        ("[" * 100_000, "not valid JSON"),
    ],
)  # fmt: skip
def test_validator_problems(line, words):
    with pytest.raises(DatasetError) as raised:
        validate_jsonl(jsonl(example(), line))
    assert raised.value.errors[0].startswith("line 2: ") and words in raised.value.errors[0]
    assert raised.value.total == 1 and raised.value.status_code == 400


def test_a_dataset_error_reads_well():
    error = DatasetError(["line 2: not valid JSON (Expecting value at column 1)", "line 5: 'messages' is empty"])
    assert str(error) == (
        "The fine-tuning file has 2 problems: line 2: not valid JSON (Expecting value at column 1); "
        "line 5: 'messages' is empty."
    )
    assert error.to_dict()["error"] == {"message": str(error), "type": "invalid_request_error", "param": "file",
                                        "code": "invalid_file"}  # fmt: skip
    assert DatasetError(["line 1: x"], param="training_file").param == "training_file"


def test_load_examples(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(GOOD)
    examples = load_examples(path)
    assert [message_text(e["messages"][-1]) for e in examples] == ["Paris.", "Berlin.", "Rome."]
    assert examples[0] == example()
    path.write_bytes(GOOD + b"oops\n")
    with pytest.raises(DatasetError, match="line 5: not valid JSON"):
        load_examples(path)
    path.write_bytes(b"\n")
    with pytest.raises(DatasetError, match="no examples"):
        load_examples(path)
    assert (
        message_text({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]})
        == "ab"
    )
