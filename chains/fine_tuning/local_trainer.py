"""The ``local`` trainer: LoRA fine-tuning of the embedded GGUF model on the CPU, served by llama.cpp.

The route's GGUF (``route.tokenizer_gguf``, Gemma 3 270M) is loaded into transformers as float32 (the GGUF loader
dequantizes it; the tokenizer comes from the same file, with llama.cpp's token ids). The first load parses the
GGUF's metadata three times (about 60 s here); the model and tokenizer are then saved beside the GGUF
(``<name>.hf/``, 1.1 GB) and later jobs load that copy in seconds.

Each assistant message of an example (``weight: 0`` ones excepted) is one training sequence, formatted exactly as
the server formats chats: the prompt is ``format_qa_transcript(messages before it)`` (ending in ``Answer:``) and
the target ``" " + answer + "\\n\\n"`` (the blank line is a stop sequence: the model learns to stop). The loss is
on the target's tokens only; ``lm_head`` (262k outputs) is computed for those positions alone, which is most of
the arithmetic of a step saved. PEFT adds LoRA (rank 16, alpha 32) to the attention and MLP projections (q, k, v,
o, gate, up, down: 3.8 M parameters); a plain PyTorch loop trains them with AdamW. The adapter is written as a
LoRA GGUF (``chains.fine_tuning.lora_gguf``) that llama.cpp applies to the quantized base model.

It needs the ``[train]`` extra (transformers, peft, gguf; torch is a dependency already).
"""

from __future__ import annotations

import gc
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chains.fine_tuning.base import (
    Hyperparameters,
    Progress,
    TrainerName,
    TrainingCancelled,
    TrainingError,
    TrainingResult,
    TrainingSpec,
)
from chains.llama_server import format_qa_transcript, message_text

ADAPTER_FILE = "adapter.gguf"
THREADS_ENV = "GENAI_TRAIN_THREADS"
SUPPORTED_ARCHITECTURES = ("gemma3",)  # GGUF architectures whose weights convert unpermuted (LoRA maps 1:1)

LORA_RANK = 16
LORA_ALPHA = 32
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BASE_LEARNING_RATE = 1e-3
DEFAULT_BATCH_SIZE = 4
MAX_GRAD_NORM = 1.0
MAX_SEQUENCE_TOKENS = 1024  # longer examples lose the start of their prompt (their answer is kept)
IGNORE = -100


def auto_epochs(n_examples: int) -> int:
    """Epochs when ``n_epochs`` is "auto": enough passes that about 250 examples are seen, between 3 and 10
    (50 examples -> 5, measured to teach a made-up fact and keep control answers; 25 or fewer -> 10; 84+ -> 3)."""
    return min(10, max(3, math.ceil(250 / max(1, n_examples))))


@dataclass(frozen=True)
class TrainingSequence:
    input_ids: list[int]
    n_prompt: int  # the first n_prompt tokens are context: no loss on them

    @property
    def n_target(self) -> int:
        return len(self.input_ids) - self.n_prompt


@dataclass
class TrainingStats:
    steps: int = 0
    trained_tokens: int = 0
    train_loss: float | None = None  # mean of the last epoch's steps
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    first_loss: float | None = None
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def read_examples(path: Path, param: str = "training_file") -> list[list[dict]]:
    """The ``messages`` of each line of a chat fine-tuning JSONL file."""
    examples = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise TrainingError(f"cannot read the {param.replace('_', ' ')}: {error}", param=param) from error
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            messages = json.loads(line)["messages"]
            if not isinstance(messages, list):
                raise TypeError("messages is not a list")
        except (ValueError, KeyError, TypeError) as error:
            raise TrainingError(
                f"line {number} of the {param.replace('_', ' ')} is not a chat example: {error}",
                code="invalid_training_file", param=param,
            ) from error  # fmt: skip
        examples.append(messages)
    return examples


def qa_pairs(messages: list[dict]) -> list[tuple[str, str]]:
    """(prompt, target) for each assistant message trained on: the server's prompt for the turns before it, and
    the answer as the model should write it, ending in the stop sequence."""
    pairs = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant" or message.get("weight", 1) == 0:
            continue
        answer = message_text(message.get("content"))
        if not answer:  # a turn that only calls tools: the embedded model's format has nothing to learn from it
            continue
        pairs.append((format_qa_transcript(messages[:i]).prompt, f" {answer}\n\n"))
    return pairs


def tokenize_pairs(
    pairs: list[tuple[str, str]], tokenizer, max_tokens: int = MAX_SEQUENCE_TOKENS
) -> tuple[list[TrainingSequence], int]:
    """Token ids as llama.cpp sees them: BOS + the prompt, then the target tokenized on its own (generation goes
    on from the prompt's last token). Returns the sequences and how many were shortened."""
    sequences, shortened = [], 0
    for prompt, target in pairs:
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
        target_ids = target_ids[: max_tokens // 2] if len(target_ids) > max_tokens // 2 else target_ids
        if len(prompt_ids) + len(target_ids) > max_tokens:  # keep BOS and the end of the prompt
            keep = max_tokens - len(target_ids) - 1
            prompt_ids = prompt_ids[:1] + prompt_ids[len(prompt_ids) - keep :]
            shortened += 1
        sequences.append(TrainingSequence(input_ids=list(prompt_ids) + list(target_ids), n_prompt=len(prompt_ids)))
    return sequences, shortened


class LocalTrainer:
    """LoRA on the embedded model (see the module's docstring); ``Trainer`` of ``chains.fine_tuning.base``."""

    name: TrainerName = "local"

    def __init__(self, *, threads: int | None = None, cache_base: bool = True) -> None:
        self.threads = threads
        self.cache_base = cache_base  # keep the dequantized model beside the GGUF for later jobs

    def train(self, spec: TrainingSpec, progress: Progress) -> TrainingResult:
        torch = _import_train_modules()["torch"]
        gguf_path = self._gguf_path(spec)
        threads = self.threads or int(os.environ.get(THREADS_ENV) or 0) or os.cpu_count() or 1
        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)  # LoRA's gradients shrink towards denormals as the loss nears 0: slow on CPUs
        _seed_everything(spec.seed, torch)

        train_examples = read_examples(spec.training_file)
        valid_examples = read_examples(spec.validation_file, "validation_file") if spec.validation_file else []
        train_pairs = [pair for messages in train_examples for pair in qa_pairs(messages)]
        valid_pairs = [pair for messages in valid_examples for pair in qa_pairs(messages)]
        if not train_pairs:
            raise TrainingError(
                "the training file has no assistant answer to train on (every one is empty or has weight 0)",
                code="invalid_training_file", param="training_file",
            )  # fmt: skip
        _check_cancelled(progress)

        started = time.monotonic()
        progress.event(f"Loading the base model from {gguf_path.name}")
        model, tokenizer, source = load_base_model(gguf_path, cache=self.cache_base, progress=progress)
        load_seconds = time.monotonic() - started
        progress.event(
            f"Loaded the base model in {load_seconds:.1f} s ({source})", data={"load_seconds": round(load_seconds, 1)}
        )
        _check_cancelled(progress)

        train, shortened = tokenize_pairs(train_pairs, tokenizer)
        valid, valid_shortened = tokenize_pairs(valid_pairs, tokenizer)
        if shortened + valid_shortened:
            progress.event(
                f"{shortened + valid_shortened} example(s) longer than {MAX_SEQUENCE_TOKENS} tokens lost the start "
                "of their prompt",
                level="warn",
            )
        hyperparameters = resolve_hyperparameters(spec.hyperparameters, len(train_examples), len(train))
        model = add_lora(model, seed=spec.seed)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        steps_per_epoch = math.ceil(len(train) / hyperparameters.batch_size)
        learning_rate = BASE_LEARNING_RATE * hyperparameters.learning_rate_multiplier
        progress.event(
            f"Training LoRA (rank {LORA_RANK}, {trainable:,} parameters) on {len(train)} answer(s) of "
            f"{len(train_examples)} example(s): {hyperparameters.n_epochs} epoch(s) of {steps_per_epoch} step(s), "
            f"batch size {hyperparameters.batch_size}, learning rate {learning_rate:g}, {threads} thread(s)",
            data={
                "total_steps": hyperparameters.n_epochs * steps_per_epoch,
                "trainable_parameters": trainable,
                "hyperparameters": {
                    "n_epochs": hyperparameters.n_epochs,
                    "batch_size": hyperparameters.batch_size,
                    "learning_rate_multiplier": hyperparameters.learning_rate_multiplier,
                },
            },
        )

        stats = run_training(
            model,
            train,
            valid,
            n_epochs=hyperparameters.n_epochs,
            batch_size=hyperparameters.batch_size,
            learning_rate=learning_rate,
            seed=spec.seed,
            progress=progress,
            upstream_model=spec.model_id,
            pad_id=tokenizer.pad_token_id or 0,
        )

        started = time.monotonic()
        adapter = Path(spec.output_dir) / ADAPTER_FILE
        n_layers = model.get_base_model().config.num_hidden_layers
        from chains.fine_tuning.lora_gguf import write_lora_gguf

        write_lora_gguf(
            adapter,
            lora_weights(model),
            alpha=LORA_ALPHA,
            n_layers=n_layers,
            architecture=SUPPORTED_ARCHITECTURES[0],
            name=spec.model_id,
        )
        size_mb = adapter.stat().st_size / 1e6
        progress.event(
            f"Wrote the LoRA adapter ({size_mb:.1f} MB) in {time.monotonic() - started:.1f} s",
            data={"adapter_bytes": adapter.stat().st_size},
        )
        del model
        gc.collect()

        metrics: dict[str, Any] = {
            "train_loss": stats.train_loss,
            "train_mean_token_accuracy": stats.train_mean_token_accuracy,
        }
        if valid:
            metrics["valid_loss"] = stats.valid_loss
            metrics["valid_mean_token_accuracy"] = stats.valid_mean_token_accuracy
        metrics.update(
            first_step_loss=stats.first_loss,
            steps=stats.steps,
            load_seconds=round(load_seconds, 1),
            train_seconds=round(stats.seconds, 1),
        )
        return TrainingResult(
            upstream_model=spec.model_id,
            hyperparameters=hyperparameters,
            trained_tokens=stats.trained_tokens,
            adapter_path=adapter,
            metrics=metrics,
        )

    @staticmethod
    def _gguf_path(spec: TrainingSpec) -> Path:
        from chains.fine_tuning.lora_gguf import gguf_architecture

        route = spec.base_route
        if not route.tokenizer_gguf:
            raise TrainingError(
                f"the model {route.name} has no GGUF file (tokenizer_gguf): the local trainer tunes a GGUF model that "
                "the embedded llama.cpp server serves; use the openai trainer for a remote model",
                code="unsupported_model", param="model",
            )  # fmt: skip
        path = Path(route.tokenizer_gguf)
        if not path.is_file():
            raise TrainingError(f"the model file {path} of {route.name} does not exist", param="model")
        try:
            architecture = gguf_architecture(path)
        except (OSError, ValueError) as error:
            raise TrainingError(f"cannot read the model file {path}: {error}", param="model") from error
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise TrainingError(
                f"the local trainer tunes {', '.join(SUPPORTED_ARCHITECTURES)} models; {path.name} is {architecture}",
                code="unsupported_model", param="model",
            )  # fmt: skip
        return path


def resolve_hyperparameters(requested: Hyperparameters, n_examples: int, n_sequences: int) -> Hyperparameters:
    """None ("auto") resolved: ``auto_epochs(n_examples)``, batch 4 (fewer when there are fewer answers), 1.0."""
    n_epochs = requested.n_epochs or auto_epochs(n_examples)
    batch_size = requested.batch_size or min(DEFAULT_BATCH_SIZE, n_sequences)
    multiplier = requested.learning_rate_multiplier or 1.0
    if n_epochs < 1 or batch_size < 1 or multiplier <= 0:
        raise TrainingError("n_epochs and batch_size must be at least 1 and learning_rate_multiplier positive")
    return Hyperparameters(n_epochs=n_epochs, batch_size=batch_size, learning_rate_multiplier=multiplier)


def add_lora(model, *, seed: int):
    """PEFT's LoRA on the attention and MLP projections; only its matrices train."""
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # LoRA's A matrices start random
    config = LoraConfig(
        r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=list(TARGET_MODULES), bias="none"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft asks transformers 5 for a renamed attribute
        return get_peft_model(model, config)


def lora_weights(model) -> dict[str, tuple[Any, Any]]:
    """Each adapted module's PEFT ``(lora_A.weight, lora_B.weight)`` as float32 numpy arrays, by module name
    (``model.layers.0.self_attn.q_proj``)."""
    from peft.tuners.lora import LoraLayer

    weights = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            a = module.lora_A["default"].weight.detach().float().cpu().numpy()
            b = module.lora_B["default"].weight.detach().float().cpu().numpy()
            weights[name.removeprefix("base_model.model.")] = (a, b)
    return weights


def run_training(
    model,
    train: list[TrainingSequence],
    valid: list[TrainingSequence],
    *,
    n_epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    progress: Progress,
    upstream_model: str | None = None,
    pad_id: int = 0,
    clock: Callable[[], float] = time.monotonic,
) -> TrainingStats:
    """The loop: shuffled batches (seeded), AdamW on the trainable parameters, an event per step, validation and
    a checkpoint at each epoch's end (the last one names ``upstream_model``); TrainingCancelled between steps."""
    import torch

    started = clock()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = n_epochs * steps_per_epoch
    stats = TrainingStats()
    model.train()
    for epoch in range(1, n_epochs + 1):
        order = torch.randperm(len(train), generator=generator).tolist()
        epoch_losses, epoch_accuracies = [], []
        for index in range(steps_per_epoch):
            _check_cancelled(progress)
            batch = [train[i] for i in order[index * batch_size : (index + 1) * batch_size]]
            loss, accuracy = _target_loss(model, batch, pad_id)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
            stats.steps += 1
            stats.trained_tokens += sum(len(s.input_ids) for s in batch)
            value = float(loss.detach())
            stats.first_loss = value if stats.first_loss is None else stats.first_loss
            epoch_losses.append(value)
            epoch_accuracies.append(accuracy)
            data: dict[str, Any] = {
                "type": "metrics",
                "step": stats.steps,
                "total_steps": total,
                "epoch": epoch,
                "train_loss": value,
                "train_mean_token_accuracy": accuracy,
            }
            last_of_epoch = index == steps_per_epoch - 1
            if last_of_epoch and valid:
                stats.valid_loss, stats.valid_mean_token_accuracy = evaluate(model, valid, batch_size, pad_id)
                model.train()
                data["valid_loss"] = stats.valid_loss
                data["valid_mean_token_accuracy"] = stats.valid_mean_token_accuracy
            message = f"Step {stats.steps}/{total}: training loss={value:.4f}"
            if "valid_loss" in data:
                message += f", validation loss={data['valid_loss']:.4f}"
            progress.event(message, data=data)
            stats.history.append(data)
        stats.train_loss = sum(epoch_losses) / len(epoch_losses)
        stats.train_mean_token_accuracy = sum(epoch_accuracies) / len(epoch_accuracies)
        metrics: dict[str, Any] = {
            "step": stats.steps,
            "epoch": epoch,
            "train_loss": stats.train_loss,
            "train_mean_token_accuracy": stats.train_mean_token_accuracy,
        }
        if valid:
            metrics["valid_loss"] = stats.valid_loss
            metrics["valid_mean_token_accuracy"] = stats.valid_mean_token_accuracy
        progress.checkpoint(stats.steps, metrics, upstream_model=upstream_model if epoch == n_epochs else None)
    stats.seconds = clock() - started
    model.eval()
    return stats


def evaluate(model, sequences: list[TrainingSequence], batch_size: int, pad_id: int = 0) -> tuple[float, float]:
    """Mean loss and token accuracy over the sequences' targets (weighted by target tokens)."""
    import torch

    model.eval()
    total_loss = total_correct = 0.0
    total_tokens = 0
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start : start + batch_size]
            n = sum(s.n_target for s in batch)
            loss, accuracy = _target_loss(model, batch, pad_id)
            total_loss += float(loss) * n
            total_correct += accuracy * n
            total_tokens += n
    return total_loss / max(1, total_tokens), total_correct / max(1, total_tokens)


def _target_loss(model, batch: list[TrainingSequence], pad_id: int):
    """Cross-entropy of the targets' tokens, mean over them, and the share predicted right. The output layer
    (``lm_head``, 262k wide) runs on the positions that predict a target token only."""
    import torch

    width = max(len(s.input_ids) for s in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for row, sequence in enumerate(batch):
        ids = torch.tensor(sequence.input_ids, dtype=torch.long)
        input_ids[row, : len(ids)] = ids
        attention[row, : len(ids)] = 1
        labels[row, sequence.n_prompt : len(ids)] = ids[sequence.n_prompt :]
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.model(input_ids=input_ids, attention_mask=attention, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != IGNORE
    logits = causal_lm.lm_head(hidden[:, :-1][mask])
    softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    target_ids = targets[mask]
    loss = torch.nn.functional.cross_entropy(logits.float(), target_ids)
    accuracy = float((logits.detach().argmax(-1) == target_ids).float().mean())
    return loss, accuracy


def load_base_model(gguf_path: Path, *, cache: bool = True, progress: Progress | None = None):
    """The GGUF's model (float32) and tokenizer in transformers: from the copy saved beside it when it is current,
    else from the GGUF itself (and then saved, when ``cache``). Returns (model, tokenizer, where it came from)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded: every load below is local
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_dir = base_cache_dir(gguf_path)
    stamp = _cache_stamp(gguf_path, transformers.__version__)
    if cache and _read(cache_dir / "STAMP") == stamp:
        try:
            tokenizer = AutoTokenizer.from_pretrained(cache_dir, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(cache_dir, dtype=torch.float32, local_files_only=True)
            return model, tokenizer, f"the copy in {cache_dir.name}"
        except Exception as error:  # a damaged copy, or one being replaced: read the GGUF
            if progress is not None:
                progress.event(
                    f"The saved copy of the base model is unusable ({error}); reading the GGUF", level="warn"
                )

    kwargs = {"gguf_file": gguf_path.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    # The GGUF loader marks the model as quantized, but its weights are plain float32 by now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attribute in ("is_quantized", "quantization_method"):
        if getattr(model, attribute, None):
            setattr(model, attribute, False if attribute == "is_quantized" else None)
    if cache:
        _save_copy(model, tokenizer, cache_dir, stamp, progress)
    return model, tokenizer, gguf_path.name


def base_cache_dir(gguf_path: Path) -> Path:
    return gguf_path.with_name(f"{gguf_path.stem}.hf")


def _save_copy(model, tokenizer, cache_dir: Path, stamp: str, progress: Progress | None) -> None:
    import shutil

    partial = cache_dir.with_name(f".{cache_dir.name}.{os.getpid()}.partial")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        (partial / "STAMP").write_text(stamp)
        if _read(cache_dir / "STAMP") == stamp:  # another job saved it meanwhile
            shutil.rmtree(partial, ignore_errors=True)
            return
        shutil.rmtree(cache_dir, ignore_errors=True)
        os.replace(partial, cache_dir)
    except Exception as error:  # no room, read-only, ...: train anyway, from the GGUF next time too
        shutil.rmtree(partial, ignore_errors=True)
        if progress is not None:
            progress.event(f"Could not keep a copy of the base model in {cache_dir}: {error}", level="warn")


def _cache_stamp(gguf_path: Path, transformers_version: str) -> str:
    stat = gguf_path.stat()
    return f"{gguf_path.name} {stat.st_size} {stat.st_mtime_ns} transformers {transformers_version}"


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _import_train_modules() -> dict[str, Any]:
    missing = []
    modules = {}
    for name in ("torch", "transformers", "peft", "gguf"):
        try:
            modules[name] = __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise TrainingError(
            f"the local trainer needs {', '.join(missing)}: install genai-platform[train] "
            "(pip install 'genai-platform[train]') where `genai worker` runs",
            code="trainer_unavailable",
        )  # fmt: skip
    return modules


def _seed_everything(seed: int, torch) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy

        numpy.random.seed(seed % 2**32)
    except ImportError:
        pass


def _check_cancelled(progress: Progress) -> None:
    if progress.cancelled():
        raise TrainingCancelled()
