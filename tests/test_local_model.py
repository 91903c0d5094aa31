"""The genai-qa chat format that the embedded base model is served with."""

from chains.llama_server import STOP, format_qa_transcript


def test_transcript_has_system_example_turns_and_ends_on_answer():
    formatted = format_qa_transcript(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Who wrote Hamlet?"},
            {"role": "assistant", "content": "Shakespeare."},
            {"role": "user", "content": [{"type": "text", "text": "And\n\nMacbeth?"}]},
        ]
    )
    prompt = formatted.prompt
    assert prompt.startswith("Be brief.\n\nQuestion: What is the largest planet")
    assert prompt.endswith("Question: Who wrote Hamlet?\nAnswer: Shakespeare.\n\nQuestion: And Macbeth?\nAnswer:")
    assert formatted.stop == STOP
