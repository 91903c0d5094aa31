"""The loop from data to a better model, measured: made-up facts -> a fine-tuning job on the local model -> the eval
before and after -> the promote gate.

Runs ``genai serve`` on the embedded defaults (llama.cpp with Gemma 3 270M, and the ``genai worker`` it starts) in a
fresh data dir, then, as a user would:

1. ``genai eval run made_up_facts`` on the base model: the held-out paraphrases of the made-up facts (``heldout``,
   which the base model cannot know) and control questions it does know (``control``);
2. uploads the ``train`` split (two phrasings of each fact) as a fine-tuning file and creates a job
   (``POST /v1/fine_tuning/jobs``), and waits for the tuned model;
3. the same eval runs on the tuned model, then ``genai models promote ... --gate contains>=X --baseline``;
4. tokens/s of the tuned route against the base route through the platform (streamed, same prompts).

Prints training time, the trainer's peak memory, both eval scores per split, tokens/s and their ratio, and the
gate's verdict. Needs the ``[train]`` extra. About 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import openai  # noqa: E402
from harness import ROOT, Children, add_common_args, child_env, free_port, run, start_platform

DATASET = ROOT / "evals" / "datasets" / "made_up_facts.jsonl"
BASE = "gemma-3-270m"
PROMPTS = [
    "Describe the water cycle.",
    "Write two sentences about the history of Rome.",
    "What is the capital of France, and what is it known for?",
    "Explain what a computer does.",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--epochs", type=int, default=5, help="n_epochs of the job (default 5)")
    parser.add_argument("--gate", default="contains>=0.5", help="the promote gate on the held-out split")
    parser.add_argument("--tokens-runs", type=int, default=2, help="streamed answers per prompt for tokens/s")
    args = parser.parse_args()
    plan = [
        f"dataset: {DATASET.relative_to(ROOT)} (train: 36 lines, 12 made-up facts in two phrasings and 12 ordinary questions; heldout: 12 paraphrases of the made-up facts and 6 known facts as controls)",
        f"job: local trainer, n_epochs {args.epochs}; gate {args.gate} with the base run as baseline",
    ]
    return run(
        args, "Fine-tuning the local model: the loop, measured", plan, {"platform": args.platform_ref}, measure, report
    )


def measure(args: argparse.Namespace, children: Children, roots: dict[str, Path]) -> dict:
    root = roots["platform"]
    data_dir = children.workdir / "data"
    model_path = ROOT / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"
    env = child_env(
        GENAI_DATA_DIR=str(data_dir),
        GENAI_CACHE_ENABLED="false",
        **({"GENAI_LOCAL_MODEL_PATH": str(model_path)} if model_path.exists() else {}),
    )
    url, key = start_platform(children, "platform", free_port(), env, root)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)
    results: dict = {}

    def genai(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "server", *argv], cwd=root, env=env, capture_output=True, text=True, timeout=1800
        )

    def evaluate(model: str, split: str, tag: str | None = None) -> float:
        name = f"{split}-{tag}" if tag else split
        out = children.workdir / f"eval-{model.replace(':', '_')}-{name}"
        done = genai(
            "eval", "run", str(DATASET), "--split", split, *(["--tag", tag] if tag else []), "--target", url, "--api-key", key, "--model", model,
            "--evaluators", "contains", "--concurrency", "1", "--max-tokens", "24", "--out", str(out), "-q",
        )  # fmt: skip
        if done.returncode not in (0, 1):
            raise RuntimeError(f"eval run failed: {done.stderr[-2000:]}")
        summary = json.loads((out / "summary.json").read_text())
        results[f"run:{model}:{name}"] = str(out)
        return summary["evaluators"]["contains"]["pass_rate"]

    def evaluate_all(model: str, label: str) -> None:
        results[f"{label}:heldout"] = evaluate(model, "heldout")  # what the promote gate reads
        results[f"{label}:made-up"] = evaluate(model, "heldout", "made-up")
        results[f"{label}:control"] = evaluate(model, "heldout", "control")
        results[f"{label}:train"] = evaluate(model, "dev", "train")

    evaluate_all(BASE, "base")

    lines = [json.loads(line) for line in DATASET.read_text().splitlines() if line.strip()]
    training = [
        {"messages": [*line["messages"], {"role": "assistant", "content": line["reference"]}]}
        for line in lines
        if "train" in line.get("tags", [])
    ]
    data = "".join(json.dumps(example) + "\n" for example in training).encode()
    file = client.files.create(file=("made_up_facts.jsonl", data), purpose="fine-tune")
    started = time.monotonic()
    job = client.fine_tuning.jobs.create(
        model=BASE, training_file=file.id, suffix="facts", seed=1234, hyperparameters={"n_epochs": args.epochs}
    )
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(1)
        job = client.fine_tuning.jobs.retrieve(job.id)
    results["job_seconds"] = time.monotonic() - started
    if job.status != "succeeded":
        raise RuntimeError(f"the job {job.status}: {job.error}")
    tuned = job.fine_tuned_model
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    for event in events:
        if event.data and "training_seconds" in event.data:
            results["training_seconds"] = event.data["training_seconds"]
            results["peak_rss_mib"] = event.data["peak_rss_mib"]
    losses = [e.data for e in reversed(events) if e.type == "metrics"]
    results["first_loss"], results["last_loss"] = losses[0].get("train_loss"), losses[-1].get("train_loss")
    results["steps"] = losses[-1].get("step")
    results["trained_tokens"] = job.trained_tokens
    results["tuned"] = tuned

    evaluate_all(tuned, "tuned")
    for model, name in ((BASE, "base"), (tuned, "tuned")):
        results[f"tokens_per_s:{name}"] = tokens_per_second(client, model, args.tokens_runs)
    promote = genai(
        "models", "promote", tuned, "--app", "bench", "--run", results[f"run:{tuned}:heldout"], "--gate", args.gate,
        "--baseline", results[f"run:{BASE}:heldout"],
    )  # fmt: skip
    results["promote_status"] = promote.returncode
    results["promote_output"] = (promote.stdout + promote.stderr).strip()
    return results


def tokens_per_second(client: openai.OpenAI, model: str, runs: int) -> float:
    """Completion tokens per second of decoding (first token to last), streamed through the platform."""
    tokens = 0
    seconds = 0.0
    for _ in range(runs):
        for prompt in PROMPTS:
            stream = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}], max_tokens=64, temperature=0.7,
                seed=1, stream=True, stream_options={"include_usage": True},
            )  # fmt: skip
            first = last = None
            used = 0
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    last = time.perf_counter()
                    first = first or last
                if chunk.usage:
                    used = chunk.usage.completion_tokens
            if first is not None and last is not None and last > first and used > 1:
                tokens += used - 1  # the first token's time is the prompt's
                seconds += last - first
    return tokens / seconds if seconds else 0.0


def report(results: dict, args: argparse.Namespace) -> None:
    print(f"tuned model: {results['tuned']}")
    print(
        f"job: {results['job_seconds']:.0f} s from create to succeeded; training {results.get('training_seconds', 0):.0f} s "
        f"(model load included), {results['steps']} steps, loss {results['first_loss']:.3f} -> {results['last_loss']:.4f}, "
        f"{results['trained_tokens']} tokens trained; trainer peak memory {results.get('peak_rss_mib', 0)} MiB"
    )
    print("eval (contains, pass rate):     base    tuned")
    rows = (
        ("made-up", "made-up facts, paraphrased"),
        ("control", "control questions (not taught)"),
        ("heldout", "held-out split (both)"),
        ("train", "training questions"),
    )
    for split, label in rows:
        print(f"  {label:<30} {results[f'base:{split}']:.2f}    {results[f'tuned:{split}']:.2f}")
    base, tuned = results["tokens_per_s:base"], results["tokens_per_s:tuned"]
    print(
        f"decoding through the platform: base {base:.1f} tokens/s, tuned {tuned:.1f} tokens/s (ratio {tuned / base:.2f})"
    )
    verdict = "promoted" if results["promote_status"] == 0 else "refused"
    print(f"promote gate ({args.gate}, no worse than base): {verdict}")
    for line in results["promote_output"].splitlines():
        print(f"  {line}")


if __name__ == "__main__":
    sys.exit(main())
