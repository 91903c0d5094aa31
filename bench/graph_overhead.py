"""What LangChain and LangGraph cost a chat request, and what each config option and callback adds (issue #14).

    .venv/bin/python bench/graph_overhead.py [--runs 300] [--rounds 5]

In this process, no HTTP: the platform's chat graph (``graphs/chat``, every node as in production, SQLite transcripts,
the default safety checks) answering a stateless request with langchain-core's fake chat model instead of an
upstream, run after run. Each variant takes turns round by round; the best round's microseconds per run are printed:

* ``model alone``: the fake chat model's ``ainvoke``, the floor under any graph;
* ``empty graph``: four nodes that do nothing on the chat state (LangGraph's own cost per run);
* ``bare config``: the chat graph with no tags, metadata or run name;
* ``platform config``: with what the platform passes (tags and metadata naming the app and key, run name, run id);
* ``+ stream``: ``astream`` with the platform's stream modes, as a streamed request runs it;
* ``+ LangSmith``: LangSmith's tracer on every run (what ``LANGSMITH_TRACING=true`` adds), posting to a local
  endpoint that accepts every run, so that only the tracer's cost in this process is counted;
* ``+ LangSmith 10%``: the same with ``LANGSMITH_TRACING_SAMPLING_RATE=0.1`` (one trace in ten is sent).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from harness import ROOT  # noqa: F401  (puts the project on sys.path)
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tracers import LangChainTracer
from langgraph.graph import END, START, StateGraph
from langsmith import Client

from graphs.chat.state import ChatInput, ChatState
from server.services import Services
from server.settings import Settings


class AsyncFakeChatModel(GenericFakeChatModel):
    """The fake model, streamed natively async as ChatOpenAI does (the stock one runs its sync ``_stream`` in a
    thread per chunk, which would be most of what a streamed run measures)."""

    async def _astream(self, messages, stop=None, run_manager=None, **kwargs):
        for chunk in self._stream(messages, stop=stop, **kwargs):
            if run_manager is not None:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


class _AcceptEverything(BaseHTTPRequestHandler):
    """A LangSmith endpoint that takes every run and says nothing."""

    def _ok(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b"{}"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = _ok

    def log_message(self, *args: Any) -> None:
        return


def local_langsmith() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AcceptEverything)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def empty_graph():
    graph = StateGraph(ChatState, input_schema=ChatInput)

    async def nothing(state: ChatState) -> dict:
        return {}

    for name in ("preprocess", "load_memory", "call_model", "persist"):
        graph.add_node(name, nothing)
    graph.add_edge(START, "preprocess")
    graph.add_edge("preprocess", "load_memory")
    graph.add_edge("load_memory", "call_model")
    graph.add_edge("call_model", "persist")
    graph.add_edge("persist", END)
    return graph.compile()


async def measure(args: argparse.Namespace) -> dict[str, float]:
    data_dir = tempfile.mkdtemp(prefix="graph-overhead-")
    settings = Settings(
        _env_file=None,
        data_dir=data_dir,
        cache_enabled=False,
        model_routes=[{"name": "fake", "base_url": "http://127.0.0.1:9/v1", "api_key": "unused"}],
    )
    services = Services.build(settings)
    await services.open()
    chat, context = services.chat, services.chat.context
    fake = AsyncFakeChatModel(messages=itertools.repeat(AIMessage("A fixed answer from the fake model.")))
    for upstream in context.models.get("fake").upstreams:
        upstream.client = fake
    question = [HumanMessage("What is the capital of France?")]

    def state(stream: bool = False) -> dict:
        return {
            "messages": question, "model": "fake", "params": {}, "stream": stream, "app_id": "app_bench",
            "key_prefix": "sk-bench", "response_id": f"chatcmpl-{uuid.uuid4().hex}", "started_at": time.perf_counter(),
        }  # fmt: skip

    def platform_config() -> dict:
        return {
            "tags": ["app:bench", "key:sk-bench"],
            "metadata": {"app": "bench", "app_id": "app_bench", "key_prefix": "sk-bench", "user": None,
                         "request_id": "req_bench"},
            "run_name": "chat",
            "run_id": uuid.uuid4(),
        }  # fmt: skip

    empty = empty_graph()

    async def model_alone() -> None:
        await fake.ainvoke(question)

    async def empty_run() -> None:
        await empty.ainvoke(state(), platform_config())

    async def bare() -> None:
        await chat.graph.ainvoke(state(), {}, context=context)

    async def platform() -> None:
        await chat.graph.ainvoke(state(), platform_config(), context=context)

    async def streamed() -> None:
        async for _ in chat.graph.astream(
            state(stream=True), platform_config(), context=context, stream_mode=["custom", "updates"]
        ):
            pass

    variants = {
        "model alone": model_alone,
        "empty graph": empty_run,
        "bare config": bare,
        "platform config": platform,
        "+ stream": streamed,
    }
    best: dict[str, float] = {}

    async def rounds(names: list[str]) -> None:
        for name in names:  # warm up
            for _ in range(30):
                await variants[name]()
        for _ in range(args.rounds):
            for name in names:
                started = time.perf_counter()
                for _ in range(args.runs):
                    await variants[name]()
                per_run = (time.perf_counter() - started) / args.runs * 1e6
                best[name] = min(best.get(name, per_run), per_run)

    # LangSmith's tracer, as LANGSMITH_TRACING=true adds it to every run, here given explicitly (the environment is
    # read once per process); its client posts the runs from a background thread to the local endpoint.
    tracer = LangChainTracer(client=Client(api_url=local_langsmith(), api_key="lsv2_bench_unused"))

    async def traced() -> None:
        await chat.graph.ainvoke(state(), {**platform_config(), "callbacks": [tracer]}, context=context)

    sampled_tracer = LangChainTracer(
        client=Client(api_url=tracer.client.api_url, api_key="lsv2_bench_unused", tracing_sampling_rate=0.1)
    )

    async def sampled() -> None:  # LANGSMITH_TRACING_SAMPLING_RATE=0.1: one run in ten is sent
        await chat.graph.ainvoke(state(), {**platform_config(), "callbacks": [sampled_tracer]}, context=context)

    variants["+ LangSmith"] = traced
    variants["+ LangSmith 10%"] = sampled
    await rounds(list(variants))
    tracer.client.flush()
    sampled_tracer.client.flush()
    await services.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300, help="runs per variant and round (default 300)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best is printed (default 5)")
    args = parser.parse_args()
    best = asyncio.run(measure(args))
    print(f"chat graph in process, best of {args.rounds} rounds of {args.runs} runs, microseconds per run:")
    for name, value in best.items():
        print(f"  {name:<16} {value:8.0f} us")
    print(
        f"  LangGraph's own cost per run (empty graph): {best['empty graph']:.0f} us; the platform's nodes: "
        f"{best['platform config'] - best['empty graph'] - best['model alone']:.0f} us; "
        f"tags, metadata and run name: {best['platform config'] - best['bare config']:+.0f} us; "
        f"streaming: {best['+ stream'] - best['platform config']:+.0f} us; "
        f"LangSmith tracing: {best['+ LangSmith'] - best['platform config']:+.0f} us, sampled at 10%: "
        f"{best['+ LangSmith 10%'] - best['platform config']:+.0f} us"
    )


if __name__ == "__main__":
    main()
