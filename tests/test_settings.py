"""Settings: embedded defaults, model routes from JSON env or a YAML file, env over file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from server.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ("GENAI_MODEL_ROUTES", "GENAI_CONFIG_FILE", "GENAI_DATA_DIR", "GENAI_DEFAULT_MODEL", "GENAI_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_are_embedded():
    settings = Settings()
    assert settings.host == "127.0.0.1" and settings.port == 8000
    assert settings.uses_local_model
    assert settings.resolved_database_url == "sqlite+aiosqlite:///data/genai.db"
    assert settings.redis_url is None
    assert [route.name for route in settings.routes()] == ["gemma-3-270m"]
    assert settings.resolved_default_model == "gemma-3-270m"


def test_routes_from_json_env_turn_off_the_local_model(monkeypatch):
    routes = [
        {"name": "gpt-4o-mini", "base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY"},
        {"name": "llama3", "base_url": "http://127.0.0.1:11434/v1", "model": "llama3.1:8b", "defaults": {"temperature": 0.2}},
    ]
    monkeypatch.setenv("GENAI_MODEL_ROUTES", json.dumps(routes))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    settings = Settings()
    assert not settings.uses_local_model
    assert [r.name for r in settings.routes()] == ["gpt-4o-mini", "llama3"]
    assert settings.routes()[0].resolve_api_key() == "sk-test"
    assert settings.routes()[1].upstream_model == "llama3.1:8b"
    assert settings.resolved_default_model == "gpt-4o-mini"


def test_yaml_config_file_with_env_taking_precedence(monkeypatch, tmp_path: Path):
    config = tmp_path / "genai.yaml"
    config.write_text(
        "model_routes:\n"
        "  - name: vllm-qwen\n"
        "    base_url: http://10.0.0.5:8000/v1\n"
        "    model: Qwen/Qwen2.5-7B-Instruct\n"
        "    context_window: 32768\n"
        "default_model: vllm-qwen\n"
        "memory_max_tokens: 1000\n"
    )
    monkeypatch.setenv("GENAI_CONFIG_FILE", str(config))
    monkeypatch.setenv("GENAI_MEMORY_MAX_TOKENS", "500")
    settings = Settings()
    assert [r.name for r in settings.routes()] == ["vllm-qwen"]
    assert settings.routes()[0].context_window == 32768
    assert settings.default_model == "vllm-qwen"
    assert settings.memory_max_tokens == 500


def test_invalid_route_is_rejected(monkeypatch):
    monkeypatch.setenv("GENAI_MODEL_ROUTES", json.dumps([{"name": "x"}]))
    with pytest.raises(ValidationError):
        Settings()


# ---------------------------------------------------------------- worker processes of genai serve

ROUTE = {"name": "remote", "base_url": "http://127.0.0.1:9/v1"}


@pytest.mark.parametrize(
    ("overrides", "cores", "expected"),
    [
        ({}, 4, 1),  # no Redis: each worker would count its own limits
        ({"redis_url": "redis://127.0.0.1:6379/0", "model_routes": [ROUTE]}, 4, 4),
        ({"redis_url": "redis://127.0.0.1:6379/0", "model_routes": [ROUTE]}, 32, 8),  # MAX_DEFAULT_WORKERS
        # The embedded llama.cpp server takes local_model_threads cores.
        ({"redis_url": "redis://127.0.0.1:6379/0", "local_model_threads": 2}, 4, 2),
        ({"redis_url": "redis://127.0.0.1:6379/0", "local_model_threads": 2}, 2, 1),
        # A llama.cpp server of its own (local_model_url) leaves every core to the workers.
        ({"redis_url": "redis://127.0.0.1:6379/0", "local_model_url": "http://127.0.0.1:9/v1"}, 4, 4),
        ({"redis_url": "redis://127.0.0.1:6379/0", "model_routes": [ROUTE], "workers": 3}, 32, 3),
        ({"workers": 2}, 4, 2),
    ],
)
def test_genai_serve_starts_a_worker_per_core_when_redis_is_configured(
    tmp_path, monkeypatch, overrides, cores, expected
):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))
    settings = Settings(_env_file=None, data_dir=tmp_path, **overrides)
    assert settings.resolved_workers == expected
