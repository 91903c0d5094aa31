"""Token counting, for context-window checks and memory windows.

The local model's counts are exact (its GGUF vocabulary, loaded without
weights); for other routes a byte-based estimate errs on the high side, since
the upstream reports the true usage after the call anyway.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Protocol

from langchain_core.messages import BaseMessage

# Role markers and separators each message adds around its text (OpenAI's rule of thumb).
PER_MESSAGE_OVERHEAD = 4


class TokenCounter(Protocol):
    def count_text(self, text: str) -> int: ...

    def count_messages(self, messages: Sequence[BaseMessage]) -> int: ...


class _MessageCounting:
    def count_text(self, text: str) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def count_messages(self, messages: Sequence[BaseMessage]) -> int:
        return sum(self.count_text(m.text) + PER_MESSAGE_OVERHEAD for m in messages)

    __call__ = count_messages


class ApproximateTokenCounter(_MessageCounting):
    """About one token per 3 bytes of UTF-8: above the real count for English with BPE vocabularies."""

    def count_text(self, text: str) -> int:
        return math.ceil(len(text.encode("utf-8")) / 3) if text else 0


class GgufTokenCounter(_MessageCounting):
    """Exact counts with a GGUF model's own tokenizer (vocabulary only, a few MB)."""

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self._llama = None
        self._lock = threading.Lock()

    def _model(self):
        if self._llama is None:
            with self._lock:
                if self._llama is None:
                    from llama_cpp import Llama

                    self._llama = Llama(model_path=self.model_path, vocab_only=True, verbose=False)
        return self._llama

    def count_text(self, text: str) -> int:
        if not text:
            return 0
        return len(self._model().tokenize(text.encode("utf-8"), add_bos=False, special=False))
