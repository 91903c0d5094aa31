"""LoRA adapters as GGUF files that llama.cpp applies to a base model (``llama_adapter_lora_init``).

What llama.cpp (``src/llama-adapter.cpp``) checks when it loads one: ``general.type`` is ``adapter``,
``general.architecture`` is the base model's, ``adapter.type`` is ``lora``, and ``adapter.lora.alpha`` is the
scale's numerator (it applies ``B @ A * alpha / rank``, as PEFT does with ``lora_alpha / r``). Each adapted weight
``<name>.weight`` of the base model (GGUF names: ``blk.0.attn_q.weight``, ...) has a pair of tensors
``<name>.weight.lora_a`` and ``<name>.weight.lora_b``; in ggml's order of dimensions ``lora_a`` is ``[n_in, rank]``
and ``lora_b`` is ``[rank, n_out]``, which is, as numpy arrays (rows first), PEFT's own ``lora_A.weight``
``(rank, n_in)`` and ``lora_B.weight`` ``(n_out, rank)`` as they are. This is what llama.cpp's
``convert_lora_to_gguf.py`` writes for models whose weights it does not permute (Gemma's); here it is written
directly from the trained tensors, with no Hugging Face model directory and no script.

Only numpy and ``gguf`` (the ``[train]`` extra) are needed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ADAPTER_SUFFIXES = (".lora_a", ".lora_b")
_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class LoraAdapterInfo:
    """What an adapter file says about itself."""

    architecture: str
    alpha: float
    rank: int
    tensors: dict[str, tuple[int, ...]]  # GGUF name -> numpy shape (rows first)
    name: str | None = None

    @property
    def weights(self) -> list[str]:
        """The base model's weights it adapts (``blk.0.attn_q.weight``, ...)."""
        return sorted({name.removesuffix(".lora_a") for name in self.tensors if name.endswith(".lora_a")})

    @property
    def parameters(self) -> int:
        return sum(int(np.prod(shape)) for shape in self.tensors.values())


def gguf_weight_name(hf_module: str, *, architecture: str = "gemma3", n_layers: int) -> str:
    """The GGUF name of a Hugging Face linear module's weight: ``model.layers.0.self_attn.q_proj`` ->
    ``blk.0.attn_q.weight``. A multimodal checkpoint's ``model.language_model.`` prefix is taken as ``model.``."""
    import gguf

    arch = _model_arch(architecture)
    names = gguf.get_tensor_name_map(arch, n_layers)
    candidates = [hf_module, hf_module.removeprefix("base_model.model.")]
    candidates += [c.replace("model.language_model.", "model.", 1) for c in candidates]
    for candidate in candidates:
        if (name := names.get_name(candidate + ".weight", try_suffixes=(".weight",))) is not None:
            return name
    raise ValueError(f"no GGUF tensor of a {architecture} model corresponds to {hf_module!r}")


def write_lora_gguf(
    path: Path,
    weights: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    alpha: float,
    n_layers: int,
    architecture: str = "gemma3",
    name: str | None = None,
    dtype: str = "f32",
) -> Path:
    """Write a LoRA adapter: ``weights`` maps each adapted Hugging Face module (``model.layers.0.self_attn.q_proj``)
    to PEFT's ``(lora_A.weight, lora_B.weight)`` as numpy arrays, shapes ``(rank, n_in)`` and ``(n_out, rank)``.

    The file appears at ``path`` whole or not at all (written beside it, then renamed), so that a server
    reading the directory never sees half of it. ``dtype`` is ``f32`` or ``f16`` (half the size)."""
    import gguf

    if not weights:
        raise ValueError("no LoRA weights to write")
    if dtype not in ("f32", "f16"):
        raise ValueError(f"dtype must be f32 or f16, not {dtype!r}")
    np_dtype = np.float32 if dtype == "f32" else np.float16
    tensors: list[tuple[str, np.ndarray]] = []
    for module, (lora_a, lora_b) in sorted(weights.items(), key=lambda item: _module_order(item[0])):
        lora_a, lora_b = np.asarray(lora_a), np.asarray(lora_b)
        if lora_a.ndim != 2 or lora_b.ndim != 2 or lora_a.shape[0] != lora_b.shape[1]:
            raise ValueError(
                f"{module}: lora_A {lora_a.shape} and lora_B {lora_b.shape} are not (rank, n_in) and (n_out, rank)"
            )
        base = gguf_weight_name(module, architecture=architecture, n_layers=n_layers)
        tensors.append((base + ".lora_a", np.ascontiguousarray(lora_a, dtype=np_dtype)))
        tensors.append((base + ".lora_b", np.ascontiguousarray(lora_b, dtype=np_dtype)))
    if len({t[0] for t in tensors}) != len(tensors):
        raise ValueError("two modules map to the same GGUF tensor")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(partial, architecture)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        if name:
            writer.add_name(name)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
        for tensor_name, data in tensors:
            writer.add_tensor(tensor_name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    try:
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def read_lora_gguf(path: Path) -> LoraAdapterInfo:
    """Read an adapter's metadata and tensor shapes back; ValueError when it is not a LoRA adapter llama.cpp takes."""
    import gguf

    reader = gguf.GGUFReader(path)

    def field(key: str):
        value = reader.fields.get(key)
        return None if value is None else value.contents()

    if field(gguf.Keys.General.TYPE) != gguf.GGUFType.ADAPTER:
        raise ValueError(f"{path}: general.type is {field(gguf.Keys.General.TYPE)!r}, not 'adapter'")
    if field(gguf.Keys.Adapter.TYPE) != "lora":
        raise ValueError(f"{path}: adapter.type is {field(gguf.Keys.Adapter.TYPE)!r}, not 'lora'")
    alpha = field(gguf.Keys.Adapter.LORA_ALPHA)
    architecture = field(gguf.Keys.General.ARCHITECTURE)
    if alpha is None or not architecture:
        raise ValueError(f"{path}: adapter.lora.alpha or general.architecture is missing")
    # GGUFReader reports ggml's order of dimensions (innermost first); numpy's is the reverse.
    shapes = {t.name: tuple(int(n) for n in reversed(t.shape.tolist())) for t in reader.tensors}
    ranks = set()
    for name, shape in shapes.items():
        if not name.endswith(ADAPTER_SUFFIXES):
            raise ValueError(f"{path}: tensor {name!r} is neither .lora_a nor .lora_b")
        base = name[: -len(".lora_a")]
        a, b = shapes.get(base + ".lora_a"), shapes.get(base + ".lora_b")
        if a is None or b is None:
            raise ValueError(f"{path}: {base} lacks its lora_a or lora_b")
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise ValueError(f"{path}: {base}: lora_a {a} and lora_b {b} are not (rank, n_in) and (n_out, rank)")
        ranks.add(a[0])
    if len(ranks) != 1:
        raise ValueError(f"{path}: expected one rank, found {sorted(ranks)}")
    return LoraAdapterInfo(
        architecture=str(architecture),
        alpha=float(alpha),
        rank=ranks.pop(),
        tensors=shapes,
        name=field(gguf.Keys.General.NAME),
    )


def gguf_architecture(path: Path) -> str | None:
    """A GGUF file's ``general.architecture``, read from its header alone (``GGUFReader`` parses every field,
    the tokenizer's 262k tokens included: 15 s for the embedded model; this stops at the key, microseconds)."""
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF's fixed-size value types
    with open(path, "rb") as file:

        def read(n: int) -> bytes:
            data = file.read(n)
            if len(data) != n:
                raise ValueError(f"{path}: truncated GGUF header")
            return data

        def number(n: int) -> int:
            return int.from_bytes(read(n), "little")

        def skip(value_type: int) -> None:
            if value_type == 8:  # string
                file.seek(number(8), os.SEEK_CUR)
            elif value_type == 9:  # array
                item_type, count = number(4), number(8)
                if item_type in sizes:
                    file.seek(sizes[item_type] * count, os.SEEK_CUR)
                else:
                    for _ in range(count):
                        skip(item_type)
            elif value_type in sizes:
                file.seek(sizes[value_type], os.SEEK_CUR)
            else:
                raise ValueError(f"{path}: unknown GGUF value type {value_type}")

        if read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        if number(4) < 2:
            raise ValueError(f"{path}: GGUF version 1 is not supported")
        number(8)  # tensor count
        for _ in range(number(8)):
            key = read(number(8)).decode("utf-8", "replace")
            value_type = number(4)
            if key == "general.architecture" and value_type == 8:
                return read(number(8)).decode("utf-8")
            skip(value_type)
    return None


def _model_arch(architecture: str):
    import gguf

    for arch, arch_name in gguf.MODEL_ARCH_NAMES.items():
        if arch_name == architecture:
            return arch
    raise ValueError(f"unknown GGUF architecture {architecture!r}")


def _module_order(module: str) -> tuple[int, str]:
    match = _LAYER.search(module)
    return (int(match.group(1)) if match else -1, module)
