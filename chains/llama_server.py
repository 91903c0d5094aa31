"""``python -m chains.llama_server``: llama-cpp-python's server with the ``genai-qa`` chat format.

Gemma 3 270M is a base model and its GGUF carries no chat template. Measured
on this model, the built-in formats give empty answers (no template), repeat
themselves (``gemma``) or drift off topic (``chatml``, ``zephyr``, ...), while
a plain question/answer transcript with stop sequences, opened by one worked
example, gives short, on-topic answers ("Paris.", "Shakespeare.", "red, blue
and yellow."). This module registers that format, then runs the stock server.
"""

from __future__ import annotations

from llama_cpp.llama_chat_format import ChatFormatterResponse, register_chat_format

from chains.local_model import CHAT_FORMAT
from prompts import load_prompt

STOP = ["\nQuestion:", "Question:", "\n\n"]
# One worked example (prompts/qa_example.txt): without it the model often answers with nothing or a new question.
EXAMPLE = load_prompt("qa_example") + "\n\n"


def format_qa_transcript(messages: list[dict], **_: object) -> ChatFormatterResponse:
    """System text, the worked example, then ``Question:``/``Answer:`` turns, ending in ``Answer:``."""
    parts: list[str] = [
        f"{_text(m.get('content'))}\n\n" for m in messages if m.get("role") in ("system", "developer")
    ]
    parts.append(EXAMPLE)
    for message in messages:
        content = _text(message.get("content"))
        role = message.get("role")
        if role == "user":
            parts.append(f"Question: {content}\n")
        elif role == "assistant" and content:  # a turn that only called tools shows as the tools' results
            parts.append(f"Answer: {content}\n\n")
        elif role == "tool":  # a tool's result, for the next answer to use
            parts.append(f"Tool result: {content}\n")
    parts.append("Answer:")
    return ChatFormatterResponse(prompt="".join(parts), stop=STOP)


def _text(content: object) -> str:
    if isinstance(content, list):
        content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    # Blank lines would end the answer early (they are stop sequences), so fold them.
    return " ".join(str(content or "").split())


register_chat_format(CHAT_FORMAT)(format_qa_transcript)


if __name__ == "__main__":
    import os

    from llama_cpp.server.__main__ import main

    from chains.local_model_process import PARENT_PID_ENV, terminate_self, watch_parent

    if parent := os.environ.get(PARENT_PID_ENV):  # started by the platform: never outlive it
        watch_parent(int(parent), terminate_self)
    main()
