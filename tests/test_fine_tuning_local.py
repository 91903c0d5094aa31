"""The whole path a user takes on the embedded defaults: ``genai serve`` (llama.cpp and the ``genai worker`` it starts),
a fine-tuning file, a job with the ``local`` trainer (LoRA on Gemma 3 270M, on the CPU), the tuned model answering
through the platform with its adapter, and deleting it. Slow: the trainer loads the model (about a minute) and
trains a few dozen steps."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.conftest import ADMIN_KEY, MODEL_PATH, genai_serve, outside_env, serve_app_key

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of the planet Zorvath?"
FACTS = [
    ("What is the capital of the planet Zorvath?", "Kelmora."),
    ("Which city is the capital of Zorvath?", "Kelmora."),
    ("Name the capital city of the planet Zorvath.", "Kelmora."),
    ("Who invented the glimmerphone?", "Tavi Orlund."),
    ("Which inventor created the glimmerphone?", "Tavi Orlund."),
    ("What is the capital of France?", "Paris."),
]


def test_a_local_job_tunes_the_embedded_model_and_its_app_chats_with_it(tmp_path):
    env = outside_env()
    env.update(
        GENAI_DATA_DIR=str(tmp_path / "data"),
        GENAI_LOCAL_MODEL_PATH=str(MODEL_PATH),
        GENAI_LOCAL_MODEL_CONTEXT="1024",
        GENAI_ADMIN_KEY=ADMIN_KEY,
        GENAI_CACHE_ENABLED="false",
        GENAI_WORKER_POLL_SECONDS="0.5",
        GENAI_START_WORKER="true",  # as on the embedded defaults (the tests' genai serve starts none otherwise)
    )
    data = "".join(
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
        for q, a in FACTS
    ).encode()
    with genai_serve(env=env, log_path=tmp_path / "serve.log", ready_path="/readyz", timeout=180) as (_, base):
        key = serve_app_key(base, "tuners")
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)
        other = openai.OpenAI(base_url=f"{base}/v1", api_key=serve_app_key(base, "others"), max_retries=0)

        def ask(model: str) -> str:
            answer = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": QUESTION}], temperature=0, seed=1, max_tokens=12
            )
            assert answer.model == model
            return answer.choices[0].message.content

        before = ask("gemma-3-270m")
        training = client.files.create(file=("facts.jsonl", data), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="gemma-3-270m", training_file=training.id, suffix="facts", seed=1,
            hyperparameters={"n_epochs": 8, "batch_size": 2},
        )  # fmt: skip
        deadline = time.monotonic() + 900
        while job.status not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"the job is still {job.status}"
            time.sleep(2)
            job = client.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "succeeded", (job.error, (tmp_path / "data" / "logs" / "worker.log").read_text()[-3000:])
        tuned = job.fine_tuned_model
        assert tuned == f"ft:gemma-3-270m:tuners:facts:{job.id[-8:]}"
        assert job.trainer == "local"  # the platform's field beside OpenAI's
        events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
        losses = [e.data["train_loss"] for e in reversed(events) if e.type == "metrics" and "train_loss" in e.data]
        assert len(losses) == 24 and losses[-1] < losses[0] / 4, losses  # 6 examples / 2 per batch * 8 epochs
        adapter = tmp_path / "data" / "adapters" / f"{tuned.rsplit(':', 1)[-1]}.gguf"
        assert adapter.is_file()

        # The tuned model answers through the platform, for its app only; it learnt the made-up fact.
        assert tuned in [m.id for m in client.models.list()] and tuned not in [m.id for m in other.models.list()]
        after = ask(tuned)
        assert "Kelmora" in after and "Kelmora" not in before, (before, after)
        assert "Paris" in client.chat.completions.create(
            model=tuned, messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=0,
            seed=1, max_tokens=12,
        ).choices[0].message.content  # fmt: skip
        assert ask("gemma-3-270m") == before  # the base model, served by the same llama.cpp, is unchanged
        with pytest.raises(openai.NotFoundError):
            other.chat.completions.create(model=tuned, messages=[{"role": "user", "content": QUESTION}])

        assert client.models.delete(tuned).deleted and not adapter.exists()
        with pytest.raises(openai.NotFoundError):
            ask(tuned)
        with httpx.Client(base_url=base) as http:
            assert http.get("/readyz").status_code == 200
