"""``genai``: the command line. ``genai serve`` runs the platform (and the local model when no routes are set)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from server.settings import Settings

log = logging.getLogger("genai")


def serve(args: argparse.Namespace) -> int:
    settings = Settings()
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    workers = args.workers or settings.workers
    local = None
    if settings.uses_local_model and not settings.local_model_url:
        from chains.local_model import LocalModelServer

        logs = settings.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        print("starting the local model (Gemma 3 270M under llama.cpp)...", file=sys.stderr)
        local = LocalModelServer(
            settings.resolved_local_model_path,
            context_window=settings.local_model_context,
            threads=settings.local_model_threads,
            log_path=logs / "llama-server.log",
            startup_timeout=settings.local_model_startup_timeout,
        ).start()
        # Workers read their settings from the environment, so the URL travels there.
        os.environ["GENAI_LOCAL_MODEL_URL"] = local.base_url
        print(f"local model ready at {local.base_url}", file=sys.stderr)
    try:
        uvicorn.run(
            "server.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=settings.log_level,
            timeout_graceful_shutdown=10,
        )
    finally:
        if local is not None:
            local.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genai", description="genai-platform: chat and image APIs for many apps")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the HTTP server")
    serve_parser.add_argument("--host", help="bind address (default 127.0.0.1, setting GENAI_HOST)")
    serve_parser.add_argument("--port", type=int, help="port (default 8000, setting GENAI_PORT)")
    serve_parser.add_argument("--workers", type=int, help="worker processes (default 1, setting GENAI_WORKERS)")
    serve_parser.set_defaults(handler=serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
