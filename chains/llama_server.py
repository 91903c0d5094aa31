"""``python -m chains.llama_server``: llama-cpp-python's server with the ``genai-qa`` chat format and tuned models.

Gemma 3 270M is a base model and its GGUF carries no chat template. Measured
on this model, the built-in formats give empty answers (no template), repeat
themselves (``gemma``) or drift off topic (``chatml``, ``zephyr``, ...), while
a plain question/answer transcript with stop sequences, opened by one worked
example, gives short, on-topic answers ("Paris.", "Shakespeare.", "red, blue
and yellow."). This module registers that format, then runs the stock server.

Tuned models (fine-tuning jobs of the ``local`` trainer) are LoRA adapters on the one base model, served by
the same process without a restart: with ``--adapters_dir DIR`` (or ``GENAI_ADAPTERS_DIR``), a request whose
``model`` is ``ft:<base>:<app>:<suffix>:<id>`` is answered by the base model with the adapter ``DIR/<id>.gguf``
applied (``AdapterLlamaProxy``); any other model name is the base model with no adapter, as before. A tuned
model whose file is missing is a 404 in OpenAI's error shape, streamed or not.

llama.cpp keeps the key-value cache of the previous request and re-reads only what follows the longest prefix that
the next prompt shares with it (``Llama.generate``); a long conversation whose history keeps its start from turn to
turn (graphs/chat/history_window.py) is answered without re-reading it. ``GET /genai/prompt_stats`` counts the prompt
tokens read and those reused, so that tests and benchmarks can see it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_cpp.llama_chat_format import ChatFormatterResponse, register_chat_format

from chains.local_model import CHAT_FORMAT
from prompts import load_prompt

log = logging.getLogger(__name__)

STOP = ["\nQuestion:", "Question:", "\n\n"]
# One worked example (prompts/qa_example.txt): without it the model often answers with nothing or a new question.
EXAMPLE = load_prompt("qa_example") + "\n\n"

ADAPTERS_DIR_ENV = "GENAI_ADAPTERS_DIR"
TUNED_PREFIX = "ft:"
ADAPTER_ID = re.compile(r"[A-Za-z0-9_-]+")
# Loaded adapters kept in memory (about 15 MB each for rank 16 on the 270M model); the least recently used goes.
MAX_LOADED_ADAPTERS = 8
_CHECKED_PATHS = ("/v1/chat/completions", "/v1/completions")


def format_qa_transcript(messages: list[dict], **_: object) -> ChatFormatterResponse:
    """System text, the worked example, then ``Question:``/``Answer:`` turns, ending in ``Answer:``."""
    parts: list[str] = [
        f"{message_text(m.get('content'))}\n\n" for m in messages if m.get("role") in ("system", "developer")
    ]
    parts.append(EXAMPLE)
    for message in messages:
        content = message_text(message.get("content"))
        role = message.get("role")
        if role == "user":
            parts.append(f"Question: {content}\n")
        elif role == "assistant" and content:  # a turn that only called tools shows as the tools' results
            parts.append(f"Answer: {content}\n\n")
        elif role == "tool":  # a tool's result, for the next answer to use
            parts.append(f"Tool result: {content}\n")
    parts.append("Answer:")
    return ChatFormatterResponse(prompt="".join(parts), stop=STOP)


def message_text(content: object) -> str:
    """A message's content as the transcript shows it: text parts joined, whitespace folded to single spaces."""
    if isinstance(content, list):
        content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    # Blank lines would end the answer early (they are stop sequences), so fold them.
    return " ".join(str(content or "").split())


register_chat_format(CHAT_FORMAT)(format_qa_transcript)


# --- tuned models: LoRA adapters applied per request -------------------------------------------------------------


class AdapterNotFound(Exception):
    """A tuned model that this server has no adapter for (bad id, or no file)."""

    def __init__(self, model: str) -> None:
        super().__init__(f"Adapter not found: The model `{model}` does not exist")
        self.model = model


def tuned_adapter_id(model: str | None) -> str | None:
    """The adapter id of a tuned model's name (``ft:<base>:<app>:<suffix>:<id>`` -> ``<id>``), None for any other
    name; AdapterNotFound when it is a tuned model's name whose id is not ``[A-Za-z0-9_-]+`` (no paths)."""
    if not model or not model.startswith(TUNED_PREFIX):
        return None
    adapter_id = model.rsplit(":", 1)[-1]
    if not ADAPTER_ID.fullmatch(adapter_id):
        raise AdapterNotFound(model)
    return adapter_id


def adapter_path(adapters_dir: Path | None, model: str | None) -> Path | None:
    """Where a tuned model's adapter is (None for the base model); AdapterNotFound when there is none."""
    adapter_id = tuned_adapter_id(model)
    if adapter_id is None:
        return None
    path = adapters_dir / f"{adapter_id}.gguf" if adapters_dir is not None else None
    if path is None or not path.is_file():
        raise AdapterNotFound(model or "")
    return path


@dataclass
class _LoadedAdapter:
    handle: Any  # llama_adapter_lora_p
    path: Path
    stamp: tuple[int, int]  # (mtime_ns, size) of the file it was loaded from


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size)


def _adapter_proxy_class():
    """``LlamaProxy`` with tuned models; built lazily so that importing this module does not import the server."""
    import llama_cpp
    from llama_cpp.server.model import LlamaProxy

    class AdapterLlamaProxy(LlamaProxy):
        """The stock proxy (one base model) that applies a tuned model's LoRA adapter to its requests.

        Adapters are loaded on first use (``llama_adapter_lora_init``) and kept, up to ``MAX_LOADED_ADAPTERS``;
        switching adapters (``llama_set_adapters_lora``) resets the model's prompt-prefix reuse, since the KV
        cache of the previous request was computed with other weights. A file that changed is reloaded, one that
        was deleted is unloaded and its model answers 404. Requests are serialised by the server's lock."""

        adapters_dir: Path | None = None  # set by main() before the app builds the proxy

        def __init__(self, models: list, adapters_dir: Path | None = None) -> None:
            super().__init__(models)
            if adapters_dir is not None:
                self.adapters_dir = Path(adapters_dir)
            self._adapters: OrderedDict[str, _LoadedAdapter] = OrderedDict()
            self._active: str | None = None  # the adapter id set on the context, None for none
            self._adapters_model: llama_cpp.Llama | None = None  # the Llama the adapters belong to

        def __call__(self, model: str | None = None) -> llama_cpp.Llama:
            requested = model
            adapter_id = tuned_adapter_id(requested)
            if adapter_id is not None:
                model = None  # the base model (the default one), with the adapter
            target = model if model in self._model_settings_dict else self._default_model_alias
            if target != self._current_model_alias:
                self.unload_adapters()  # they belong to the model the stock proxy is about to close
            llama = super().__call__(model)
            count_prefix_reuse(llama)
            logits_when_asked(llama)
            lean_saved_states(llama)
            if llama is not self._adapters_model:
                self._adapters.clear()
                self._active = None
                self._adapters_model = llama
            self._forget_deleted()
            if adapter_id is None:
                self._activate(llama, None)
                return llama
            path = adapter_path(self.adapters_dir, requested)
            assert path is not None
            loaded = self._adapters.get(adapter_id)
            if loaded is not None and loaded.stamp != _stamp(path):  # replaced since it was loaded
                self._unload(adapter_id)
                loaded = None
            if loaded is None:
                loaded = self._load(llama, adapter_id, path)
            self._adapters.move_to_end(adapter_id)
            self._activate(llama, adapter_id)
            return llama

        @property
        def loaded_adapters(self) -> list[str]:
            return list(self._adapters)

        @property
        def active_adapter(self) -> str | None:
            return self._active

        def _load(self, llama: llama_cpp.Llama, adapter_id: str, path: Path) -> _LoadedAdapter:
            stamp = _stamp(path)
            handle = llama_cpp.llama_adapter_lora_init(llama.model, str(path).encode("utf-8"))
            if not handle or stamp is None:
                raise RuntimeError(f"could not load the LoRA adapter {path.name} (not a LoRA adapter of this model?)")
            loaded = self._adapters[adapter_id] = _LoadedAdapter(handle=handle, path=path, stamp=stamp)
            log.info("loaded the LoRA adapter %s", path)
            while len(self._adapters) > MAX_LOADED_ADAPTERS:  # the least recently used (the new one is last)
                self._unload(next(iter(self._adapters)))
            return loaded

        def _activate(self, llama: llama_cpp.Llama, adapter_id: str | None) -> None:
            if adapter_id == self._active:
                return
            if adapter_id is None:
                status = llama_cpp.llama_set_adapters_lora(llama.ctx, None, 0, None)
            else:
                handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._adapters[adapter_id].handle)
                scales = (ctypes.c_float * 1)(1.0)
                status = llama_cpp.llama_set_adapters_lora(llama.ctx, handles, 1, scales)
            # Whatever happened, the KV cache and saved states were computed with other weights: never reuse them.
            self._active = None
            llama.reset()
            _clear_state_cache(llama)
            if status != 0:
                raise RuntimeError(f"llama.cpp refused the LoRA adapter {adapter_id} (status {status})")
            self._active = adapter_id

        def _unload(self, adapter_id: str) -> None:
            loaded = self._adapters.pop(adapter_id, None)
            if loaded is None:
                return
            if self._active == adapter_id and self._current_model is not None:
                self._activate(self._current_model, None)
            llama_cpp.llama_adapter_lora_free(loaded.handle)
            log.info("unloaded the LoRA adapter %s", loaded.path)

        def _forget_deleted(self) -> None:
            for adapter_id, loaded in list(self._adapters.items()):
                if not loaded.path.is_file():
                    self._unload(adapter_id)

        def unload_adapters(self) -> None:
            for adapter_id in list(self._adapters):
                self._unload(adapter_id)

        def free(self) -> None:
            self.unload_adapters()  # before the model they belong to
            super().free()

    return AdapterLlamaProxy


def _clear_state_cache(llama) -> None:
    """Drop the states ``--cache`` saved (computed with the previous adapter); off by default."""
    cache = getattr(llama, "cache", None)
    if cache is None:
        return
    if hasattr(cache, "cache_state"):  # LlamaRAMCache
        cache.cache_state.clear()
    elif hasattr(getattr(cache, "cache", None), "clear"):  # LlamaDiskCache
        cache.cache.clear()


# --- how much of each prompt llama.cpp reused ----------------------------------------------------------------------


@dataclass
class PromptStats:
    """Prompt tokens of the completions served, and how many of them came from the key-value cache (reused)."""

    requests: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    prompt_seconds: float = 0.0  # evaluating the tokens not reused
    last: dict[str, Any] = field(default_factory=dict)

    def add(self, prompt_tokens: int, reused_tokens: int, seconds: float) -> None:
        self.requests += 1
        self.prompt_tokens += prompt_tokens
        self.reused_tokens += reused_tokens
        self.prompt_seconds += seconds
        self.last = {"prompt_tokens": prompt_tokens, "reused_tokens": reused_tokens, "prompt_seconds": seconds}

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "reused_tokens": self.reused_tokens,
            "prompt_seconds": self.prompt_seconds,
            "last": self.last or {"prompt_tokens": 0, "reused_tokens": 0, "prompt_seconds": 0.0},
        }


PROMPT_STATS = PromptStats()


def count_prefix_reuse(llama, stats: PromptStats = PROMPT_STATS) -> None:
    """Count, for each completion of ``llama``, the prompt tokens it did not have to evaluate.

    ``Llama.generate`` first drops the part of its key-value cache after the prefix it shares with the prompt, then
    evaluates the rest in one ``eval`` call: the prompt's length less that call's tokens is what was reused (from the
    previous request, or from a state ``--cache`` restored), and that call's time is what reading the prompt took.
    Requests are serialised by the server's lock."""
    if getattr(llama, "_genai_counts_reuse", False):
        return
    generate, evaluate = llama.generate, llama.eval
    pending: list[int] = []  # the prompt's length, until its evaluation

    def counting_generate(tokens, *args, **kwargs):
        pending[:] = [len(tokens)]
        return generate(tokens, *args, **kwargs)

    def counting_eval(tokens) -> None:
        if not pending:
            return evaluate(tokens)
        prompt, started = pending.pop(), time.perf_counter()
        try:
            return evaluate(tokens)
        finally:
            stats.add(prompt, prompt - len(tokens), time.perf_counter() - started)

    llama.generate, llama.eval = counting_generate, counting_eval
    llama._genai_counts_reuse = True


def logits_when_asked(llama) -> None:
    """Compute the logits of every prompt token only for the requests that ask for logprobs.

    The stock server builds its model with ``logits_all`` (so that any request may ask for logprobs): every prompt
    token then goes through the output layer (a 262,144-token vocabulary for Gemma 3) and writes 1 MB of float32
    scores. Measured here: 1,000 prompt tokens took 1.6 s without and 6.5 s with it (7.1 and 13.0 s on a busier
    machine), and the server's memory grew by 1 MB a token of context (to 2.9 GB at 2,000 tokens). Sampling needs
    only the last token's logits, so other requests run without; a request that asks for logprobs re-reads its whole
    prompt with them (earlier requests kept none)."""
    if getattr(llama, "_genai_logits_when_asked", False) or not llama._logits_all or llama.draft_model is not None:
        return  # already done, not asked for, or needed by speculative decoding
    create_completion = llama.create_completion

    def create(*args, **kwargs):
        wanted = kwargs.get("logprobs") is not None
        llama._logits_all = wanted
        if wanted:
            llama.reset()
        return create_completion(*args, **kwargs)

    llama.create_completion = create
    llama._genai_logits_when_asked = True


def lean_saved_states(llama) -> None:
    """States saved for ``--cache`` without the logits matrix: the prompt cache then costs what it counts.

    ``Llama.save_state`` copies ``scores``, the prompt's logits (a vocabulary of 262,144 float32 a token for Gemma 3,
    up to 4 GB at 4,096 tokens), which the cache does not count against ``--cache_size``: measured here, 16 saved
    states of two interleaved conversations took the server from 0.5 to 15.8 GB with a 2 GB cache. A restored state
    is evaluated again before sampling, so only a request for logprobs would read those scores back, and such a
    request starts afresh (``logits_when_asked``): the states keep the key-value cache (about 18 KB a token) and the
    tokens, and a request for logprobs restores none."""
    if getattr(llama, "_genai_lean_states", False) or getattr(llama, "cache", None) is None:
        return
    save_state, load_state = llama.save_state, llama.load_state

    def lean_save_state():
        scores = llama.scores
        llama.scores = scores[:0]
        try:
            return save_state()
        finally:
            llama.scores = scores

    def lean_load_state(state) -> None:
        if llama._logits_all:  # a request for logprobs: it evaluates its whole prompt, with them
            return None
        if len(state.scores):
            return load_state(state)
        scores = llama.scores
        llama.scores = scores[:0]
        try:
            load_state(state)
        finally:
            llama.scores = scores

    llama.save_state, llama.load_state = lean_save_state, lean_load_state
    llama._genai_lean_states = True


class AdapterCheck:
    """ASGI middleware: a completion request for a tuned model without an adapter file is a 404 before it starts
    (a streamed answer cannot change its status once it has begun); other requests pass as they came."""

    def __init__(self, app, adapters_dir: Path | None) -> None:
        self.app = app
        self.adapters_dir = adapters_dir

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith(_CHECKED_PATHS):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            model = json.loads(body).get("model")
        except (ValueError, AttributeError):
            model = None  # the server answers a malformed body itself
        try:
            adapter_path(self.adapters_dir, model if isinstance(model, str) else None)
        except AdapterNotFound as error:
            await _send_json(send, 404, _not_found_body(error.model))
            return

        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _not_found_body(model: str) -> dict:
    return {
        "error": {
            "message": f"The model `{model}` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def install(adapters_dir: Path | None) -> None:
    """Make the stock server (``llama_cpp.server``) serve tuned models: our proxy, our 404s."""
    import llama_cpp.server.__main__ as server_main
    import llama_cpp.server.app as server_app
    from llama_cpp.server.errors import ErrorResponse, RouteErrorHandler

    proxy_class = _adapter_proxy_class()
    proxy_class.adapters_dir = adapters_dir
    server_app.LlamaProxy = proxy_class  # set_llama_proxy() builds it by this name

    # An adapter deleted between the middleware's check and the request's turn: 404 too (non-streamed).
    def adapter_not_found(request, match) -> tuple[int, ErrorResponse]:
        return 404, ErrorResponse(**_not_found_body(match.group(1))["error"])

    RouteErrorHandler.pattern_and_formatters[re.compile(r"Adapter not found: The model `(.+)` does not exist")] = (
        adapter_not_found
    )

    create_app = server_main.create_app

    def create_app_with_adapters(*args, **kwargs):
        app = create_app(*args, **kwargs)
        app.add_middleware(AdapterCheck, adapters_dir=adapters_dir)
        app.add_api_route("/genai/prompt_stats", lambda: PROMPT_STATS.as_dict(), methods=["GET"])
        return app

    server_main.create_app = create_app_with_adapters


def _pop_adapters_dir(argv: list[str]) -> Path | None:
    """Take ``--adapters_dir DIR`` (or ``--adapters_dir=DIR``) out of ``argv``; else ``GENAI_ADAPTERS_DIR``."""
    value = os.environ.get(ADAPTERS_DIR_ENV) or None
    for i, arg in enumerate(argv):
        if arg == "--adapters_dir" and i + 1 < len(argv):
            value = argv[i + 1]
            del argv[i : i + 2]
            break
        if arg.startswith("--adapters_dir="):
            value = arg.split("=", 1)[1]
            del argv[i]
            break
    return Path(value) if value else None


if __name__ == "__main__":
    from llama_cpp.server.__main__ import main

    from chains.local_model_process import PARENT_PID_ENV, terminate_self, watch_parent

    if parent := os.environ.get(PARENT_PID_ENV):  # started by the platform: never outlive it
        watch_parent(int(parent), terminate_self)
    install(_pop_adapters_dir(sys.argv))
    main()
