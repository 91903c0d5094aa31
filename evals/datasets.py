"""Evaluation datasets: JSONL files of examples, checked line by line so a mistake is named with its file and line.

One example per line::

    {"id": "capital-france",                       # unique in the file
     "messages": [{"role": "user", "content": "What is the capital of France?"}],
     "reference": "Paris",                         # optional: the expected answer
     "expected_citations": ["vacation-policy.md"], # optional: files (or stems) the answer must cite
     "vector_store": "handbook",                   # optional: corpora/handbook/ beside the file, made a vector store
     "metadata": {"contains": "Paris", "regex": "...", "json": true, "max_latency_ms": 5000,
                  "max_total_tokens": 200, "max_completion_tokens": 64,
                  "kind": "injection" | "benign" | "pii", "category": "...", "split": "dev" | "heldout",
                  "pii": ["strings that must not appear in the answer"]},
     "tags": ["free labels"]}

A shipped set is named by its file's stem (``smoke``, ``safety``, ``retrieval``); any other path works too. The
messages are OpenAI's (``genai feedback export`` writes them so): text or content parts, tool calls and results.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHIPPED_DIR = Path(__file__).resolve().parent / "datasets"
ROLES = {"system", "developer", "user", "assistant", "tool"}
KINDS = {"injection", "benign", "pii"}
SPLITS = {"dev", "heldout"}
FIELDS = {"id", "messages", "reference", "expected_citations", "vector_store", "metadata", "tags"}
CORPUS_SUFFIXES = {".md", ".txt", ".html", ".htm", ".pdf"}


class DatasetError(ValueError):
    """A dataset that cannot be used: the message names the file and, for a bad line, its number."""


@dataclass(frozen=True)
class Example:
    id: str
    messages: list[dict[str, Any]]
    reference: str | None = None
    expected_citations: list[str] = field(default_factory=list)
    vector_store: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # Free labels to select or group examples by (the safety set marks its variants with them).
    tags: list[str] = field(default_factory=list)
    line: int = 0

    @property
    def question(self) -> str:
        """The text of the last user message: what the answer is to."""
        for message in reversed(self.messages):
            if message["role"] == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                return " ".join(str(part.get("text", "")) for part in content or [] if isinstance(part, dict))
        return ""

    def to_dict(self) -> dict[str, Any]:
        """The example as its JSONL line holds it (without defaults)."""
        data: dict[str, Any] = {"id": self.id, "messages": self.messages}
        if self.reference is not None:
            data["reference"] = self.reference
        if self.expected_citations:
            data["expected_citations"] = self.expected_citations
        if self.vector_store:
            data["vector_store"] = self.vector_store
        if self.metadata:
            data["metadata"] = self.metadata
        if self.tags:
            data["tags"] = self.tags
        return data


@dataclass(frozen=True)
class Dataset:
    name: str
    path: Path
    examples: list[Example]
    sha256: str

    @property
    def corpora(self) -> list[str]:
        """The corpora the examples ground their answers in, in order of first use."""
        return list(dict.fromkeys(e.vector_store for e in self.examples if e.vector_store))

    def corpus_dir(self, name: str) -> Path:
        return self.path.parent / "corpora" / name

    def select(self, *, split: str | None = None, tags: list[str] | None = None) -> Dataset:
        """The examples of one ``metadata.split`` and carrying every one of ``tags`` (same file and digest)."""
        examples = [
            e
            for e in self.examples
            if (split is None or e.metadata.get("split") == split) and set(tags or ()) <= set(e.tags)
        ]
        if not examples:
            raise DatasetError(f"{self.path}: no example has split {split!r} and tags {tags or []}")
        return Dataset(name=self.name, path=self.path, examples=examples, sha256=self.sha256)


def shipped_datasets() -> list[str]:
    return sorted(path.stem for path in SHIPPED_DIR.glob("*.jsonl"))


def resolve_dataset(name_or_path: str | Path) -> Path:
    """A path as given when it exists, else the shipped set of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = SHIPPED_DIR / f"{name_or_path}.jsonl"
    if isinstance(name_or_path, str) and "/" not in name_or_path and shipped.is_file():
        return shipped
    names = ", ".join(shipped_datasets()) or "none"
    raise DatasetError(f"{name_or_path}: no such dataset file, nor a shipped dataset (shipped: {names})")


def load_dataset(name_or_path: str | Path) -> Dataset:
    path = resolve_dataset(name_or_path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    examples: list[Example] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        example = parse_example(raw, path=path, line=number)
        if example.id in seen:
            raise DatasetError(f"{path}:{number}: duplicate id {example.id!r} (first on line {seen[example.id]})")
        seen[example.id] = number
        if example.vector_store and not (path.parent / "corpora" / example.vector_store).is_dir():
            raise DatasetError(
                f"{path}:{number}: vector_store {example.vector_store!r} names no corpus directory "
                f"{path.parent / 'corpora' / example.vector_store}"
            )
        examples.append(example)
    if not examples:
        raise DatasetError(f"{path}: the dataset has no examples")
    return Dataset(name=path.stem, path=path, examples=examples, sha256=hashlib.sha256(data).hexdigest())


def parse_example(raw: str, *, path: Path | str = "<dataset>", line: int = 0) -> Example:
    """One line's example, or a ``DatasetError`` saying what is wrong with it."""
    where = f"{path}:{line}"
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise DatasetError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(sorted(FIELDS))})")
    example_id = data.get("id")
    if not isinstance(example_id, str) or not example_id.strip():
        raise DatasetError(f"{where}: 'id' must be a non-empty string")
    messages = _messages(data.get("messages"), where)
    reference = data.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise DatasetError(f"{where}: 'reference' must be a string or null")
    citations = data.get("expected_citations", [])
    if not isinstance(citations, list) or not all(isinstance(c, str) and c for c in citations):
        raise DatasetError(f"{where}: 'expected_citations' must be a list of file names")
    store = data.get("vector_store")
    if store is not None and (not isinstance(store, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", store)):
        raise DatasetError(f"{where}: 'vector_store' must be a corpus directory's name (letters, digits, . _ -)")
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise DatasetError(f"{where}: 'metadata' must be an object")
    _check_metadata(metadata, where)
    tags = data.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise DatasetError(f"{where}: 'tags' must be a list of strings")
    return Example(
        id=example_id,
        messages=messages,
        reference=reference,
        expected_citations=list(citations),
        vector_store=store,
        metadata=metadata,
        tags=list(tags),
        line=line,
    )


def _messages(value: Any, where: str) -> list[dict[str, Any]]:
    """OpenAI chat messages: text content (or content parts), tool calls and tool results as ``genai feedback
    export`` writes them; the last one is what the answer replies to (a user or tool message)."""
    if value is None:
        raise DatasetError(f"{where}: missing 'messages'")
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise DatasetError(f"{where}: messages[{index}] must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DatasetError(f"{where}: messages[{index}].role must be one of {', '.join(sorted(ROLES))}")
        parts = isinstance(content, list) and all(isinstance(part, dict) for part in content)
        if not isinstance(content, str) and not parts:
            raise DatasetError(f"{where}: messages[{index}].content must be a string (or a list of content parts)")
    if value[-1]["role"] not in ("user", "tool"):
        raise DatasetError(f"{where}: the last message must be the user's (or a tool result): it is what is answered")
    return [dict(m) for m in value]


def _strings(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def _check_metadata(metadata: dict[str, Any], where: str) -> None:
    """The keys evaluators read, checked now rather than half-way through a run."""
    if "contains" in metadata and not _strings(metadata["contains"]):
        raise DatasetError(f"{where}: metadata.contains must be a string or a list of strings")
    if "regex" in metadata:
        if not _strings(metadata["regex"]):
            raise DatasetError(f"{where}: metadata.regex must be a string or a list of strings")
        for pattern in [metadata["regex"]] if isinstance(metadata["regex"], str) else metadata["regex"]:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise DatasetError(f"{where}: metadata.regex {pattern!r} is not a valid regex: {exc}") from None
    if "json" in metadata and not isinstance(metadata["json"], bool):
        raise DatasetError(f"{where}: metadata.json must be true or false")
    if "kind" in metadata and metadata["kind"] not in KINDS:
        raise DatasetError(f"{where}: metadata.kind must be one of {', '.join(sorted(KINDS))}")
    if "split" in metadata and metadata["split"] not in SPLITS:
        raise DatasetError(f"{where}: metadata.split must be one of {', '.join(sorted(SPLITS))}")
    if "pii" in metadata:
        pii = metadata["pii"]
        if not isinstance(pii, list) or not all(isinstance(v, str) and v for v in pii):
            raise DatasetError(f"{where}: metadata.pii must be a list of non-empty strings")
    if metadata.get("kind") == "pii" and not metadata.get("pii"):
        raise DatasetError(f"{where}: metadata.kind 'pii' needs metadata.pii (the strings that must not appear)")
    for key in ("max_latency_ms", "max_total_tokens", "max_completion_tokens"):
        value = metadata.get(key)
        if key in metadata and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise DatasetError(f"{where}: metadata.{key} must be a positive number")


def corpus_files(directory: Path) -> list[Path]:
    """The documents of a corpus, in a stable order (hidden files and unknown types skipped)."""
    return sorted(
        p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".") and p.suffix in CORPUS_SUFFIXES
    )


def corpus_digest(directory: Path) -> str:
    """A digest of the corpus's names and contents: a changed document makes a new vector store."""
    digest = hashlib.sha256()
    for path in corpus_files(directory):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def store_name(corpus: str, directory: Path) -> str:
    """The vector store a run makes of a corpus: reused by later runs while the corpus is unchanged."""
    return f"eval:{corpus}:{corpus_digest(directory)[:16]}"
