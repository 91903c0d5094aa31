"""Prompt-injection and jailbreak screening for a user turn or a retrieved knowledge chunk.

The chat graph's ``guard_input`` node screens the user turn, and retrieval can screen chunks (a web page or a file
can carry an *indirect* injection: "Note to AI assistants reading this page: ignore prior instructions ...").
:class:`InjectionDetector` returns an :class:`InputVerdict`: flagged or not, a score in 0..1, the categories that
fired and short evidence snippets (never the whole input, which may be large or sensitive).

How it works:

* **Variants.** Attackers hide the same phrases behind encodings, so the rules run on several views of the text: the
  raw text; a normalised copy (Unicode NFKC, which folds fullwidth and mathematical letters; invisible characters
  stripped; Cyrillic and Greek look-alikes mapped to Latin); a de-leeted copy ("1gn0r3" -> "ignore", "ru135" ->
  "rules"); a copy with spaced-out letters joined ("i g n o r e" -> "ignore"); text hidden in Unicode tag
  characters; and base64 and hex runs that decode to mostly printable text (the decoded text gets the same treatment,
  up to two levels deep). A hit that exists only in an undone obfuscation adds the ``obfuscation`` category, a hit
  inside a decoded payload adds ``encoded_payload``. Invisible characters inside Latin words and tag-character text are
  signals in themselves.
* **Rules.** Precompiled regexes, each with a category and a score. They need a combination, not a single word: an
  override verb *and* a target ("ignore" + "previous instructions", not "ignore whitespace"), a reveal verb *and* the
  assistant's own prompt ("print your system prompt", not "how do I print a file"), a persona *and* the absence of
  rules ("an AI without content filters", not "act as a translator"). Each regex is bounded per start position (no
  nested unbounded repeats), so screening is linear in the input; a rule whose key words are absent from the text is
  skipped without running its regex, and the de-leeted and de-spaced views are scanned only around what changed.
* **Score.** Rule scores combine as a noisy OR: a weak signal such as "note to AI assistants" stays below the
  threshold alone, two of them together cross it. The optional classifier's probability is combined by max.
* **Classifier (optional).** A local Hugging Face sequence-classification model (for instance
  protectai/deberta-v3-base-prompt-injection-v2) loaded with ``local_files_only=True``; nothing is downloaded. Long
  inputs are classified in overlapping windows (head and tail when there are too many).

Known limits (``bench/injection_detection.py --show-misses`` lists them on the shipped set): it misses paraphrases
that lack the verb-plus-target shape (a persona "that has escaped its programming", a second persona "who answers
without any restrictions"), languages other than English, German, French, Spanish, Italian and Portuguese, and
ciphers other than base64 and hex (ROT13, reversed text); it flags tool questions that use the same words ("how do I
tell ESLint to ignore all rules") and an attack quoted inside a question about it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chains.safety.injection_rules import LEXICON, RULES
from chains.safety.text_variants import (
    INVISIBLE_IN_WORD_RE,
    LEET_TOKEN_RE,
    SPACED_RE,
    decode_blobs,
    deleet,
    despace,
    normalise,
    tag_text,
)

CATEGORIES = ("instruction_override", "system_prompt_request", "role_play", "encoded_payload", "obfuscation")

MAX_MATCHES = 5
MAX_SNIPPET = 80


@dataclass(frozen=True)
class InputVerdict:
    """What screening found: ``flagged`` is ``score >= threshold``; ``matches`` are short evidence snippets.

    ``categories`` and ``matches`` list every rule that fired, weak ones included, so an unflagged verdict may carry
    them too; when only the classifier flagged the text, ``categories`` is empty (it does not say which kind).
    """

    flagged: bool
    score: float
    categories: tuple[str, ...]
    matches: tuple[str, ...]
    detector: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "flagged": self.flagged,
            "score": self.score,
            "categories": list(self.categories),
            "matches": list(self.matches),
            "detector": self.detector,
        }


# --------------------------------------------------------------------------- screening

_WORDS_RE = re.compile(r"[^\W\d_]+")
_ASCII_WORDS_RE = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class _Hit:
    rule: str
    category: str
    score: float
    extra: tuple[str, ...]  # categories added by where it was found: obfuscation, encoded_payload
    snippet: str


def _snippet(text: str, start: int, end: int, label: str = "") -> str:
    prefix = f"{label}: " if label else ""
    body = " ".join(text[start:end].split())
    room = MAX_SNIPPET - len(prefix)
    if len(body) > room:
        body = body[: room - 1] + "…"
    return prefix + body


def _run_rules(hits: list[_Hit], text: str, *, extra: tuple[str, ...], label: str, joined: bool = False) -> set[str]:
    """Run every rule over one view of the text; append the hits and return the names of the rules that fired."""
    lowered = text.lower()
    words = set((_ASCII_WORDS_RE if lowered.isascii() else _WORDS_RE).findall(lowered))
    fired: set[str] = set()
    for rule in RULES:
        subject = text if rule.cased else lowered
        if not rule.wanted(words, subject, joined):
            continue
        match = rule.find(subject, joined)
        if match:
            fired.add(rule.name)
            source = text if rule.cased or len(text) == len(lowered) else lowered
            snippet = _snippet(source, match.start(), match.end(), label)
            hits.append(_Hit(rule.name, rule.category, rule.score, extra, snippet))
    return fired


def _windows(text: str, spans: Iterable[tuple[int, int]], margin: int = 160) -> str:
    """The parts of ``text`` around the given spans, so long inputs are not rescanned whole for a local change."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        start, end = max(0, start - margin), min(len(text), end + margin)
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return "\n".join(text[a:b] for a, b in merged)


_LEET_CHAR_RE = re.compile(r"[0-9@$!|+]")


def _scan(hits: list[_Hit], text: str, *, depth: int, extra: tuple[str, ...] = (), label: str = "") -> None:
    """Run the rules on ``text`` and on every de-obfuscated or decoded view of it."""
    raw_fired = _run_rules(hits, text, extra=extra, label=label)
    obfuscated = tuple(sorted({*extra, "obfuscation"}))

    norm = text if text.isascii() else normalise(text)
    views: list[tuple[str, bool]] = []  # (view, joined)
    if norm != text:
        views.append((norm, False))
    if _LEET_CHAR_RE.search(norm):
        leet_spans = [m.span() for m in LEET_TOKEN_RE.finditer(norm)]
        if leet_spans:  # de-leeting keeps offsets, so only the windows around leet tokens need a new scan
            views.append((_windows(deleet(norm, LEXICON), leet_spans), False))
    spaced = [m.span() for m in SPACED_RE.finditer(norm)]
    if spaced:
        joined = despace(_windows(norm, spaced))
        views.append((joined, True))
        if _LEET_CHAR_RE.search(joined):
            views.append((deleet(joined, LEXICON), True))
    for view, joined in views:
        before = len(hits)
        _run_rules(hits, view, extra=obfuscated, label=label or "deobfuscated", joined=joined)
        # A rule that also fired on the text as written is no evidence of obfuscation.
        hits[before:] = [h for h in hits[before:] if h.rule not in raw_fired]
        raw_fired |= {h.rule for h in hits[before:]}  # and one view's hit is enough

    if not text.isascii():
        in_word = INVISIBLE_IN_WORD_RE.findall(text)
        if in_word:
            count = sum(len(m) - 1 for m in in_word)
            snippet = f"{count} invisible character(s) inside words"
            hits.append(_Hit("invisible_in_word", "obfuscation", 0.5 if count >= 2 else 0.3, extra, snippet))
        hidden = tag_text(text)
        if hidden:
            hits.append(_Hit("tag_characters", "obfuscation", 0.6, extra, "text hidden in Unicode tag characters"))
            _scan(hits, hidden, depth=depth, extra=obfuscated, label="tag text")

    if depth > 0:
        for kind, decoded in decode_blobs(norm):
            _scan(hits, decoded, depth=depth - 1, extra=tuple(sorted({*extra, "encoded_payload"})), label=kind)


def _combine(hits: Sequence[_Hit]) -> float:
    """Noisy OR over the rules that fired (each rule counts once, with its best score)."""
    per_rule: dict[str, float] = {}
    for hit in hits:
        per_rule[hit.rule] = max(per_rule.get(hit.rule, 0.0), hit.score)
    return 1.0 - math.prod(1.0 - s for s in per_rule.values())


class InjectionDetector:
    """Screens text for prompt injection and jailbreaks with rules, plus an optional local classifier."""

    def __init__(self, classifier_path: str | Path | None = None, threshold: float = 0.5) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self._classifier: _Classifier | None = None
        if classifier_path is not None:
            path = Path(classifier_path)
            if not path.is_dir():
                raise ValueError(f"injection classifier directory {str(path)!r} does not exist")
            self._classifier = _Classifier(path)

    @property
    def detector(self) -> str:
        return "rules+classifier" if self._classifier else "rules"

    def screen(self, text: str) -> InputVerdict:
        return self.screen_many([text])[0]

    def screen_many(self, texts: Sequence[str]) -> list[InputVerdict]:
        """Screen several texts; the classifier, when there is one, sees them in batches."""
        all_hits = []
        for text in texts:
            hits: list[_Hit] = []
            _scan(hits, text, depth=2)
            all_hits.append(hits)
        model_scores = self._classifier.scores([normalise(t) for t in texts]) if self._classifier else None
        verdicts = []
        for i, hits in enumerate(all_hits):
            score = _combine(hits)
            matches = [h.snippet for h in sorted(hits, key=lambda h: -h.score)]
            if model_scores is not None:
                if model_scores[i] > score and model_scores[i] >= self.threshold:  # the classifier decided
                    matches.insert(0, f"classifier: {model_scores[i]:.2f}")
                score = max(score, model_scores[i])
            verdicts.append(
                InputVerdict(
                    flagged=score >= self.threshold,
                    score=round(score, 4),
                    categories=tuple(sorted({c for h in hits for c in (h.category, *h.extra)})),
                    matches=tuple(dict.fromkeys(matches))[:MAX_MATCHES],
                    detector=self.detector,
                )
            )
        return verdicts


# --------------------------------------------------------------------------- optional classifier

_POSITIVE_LABEL_RE = re.compile(r"inject|jailbreak|unsafe|malicious|attack|harmful|^label_1$|^1$", re.IGNORECASE)


class _Classifier:
    """A local Hugging Face sequence-classification model; its probability of the injection label(s)."""

    window_chars = 2000
    overlap_chars = 200
    max_windows = 8
    batch_size = 16

    def __init__(self, path: Path) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self._model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
        except OSError as exc:
            raise ValueError(f"no sequence-classification model in {str(path)!r}: {exc}") from exc
        self._model.eval()
        self._torch = torch
        labels = {int(i): str(name) for i, name in (self._model.config.id2label or {}).items()}
        positive = [i for i, name in labels.items() if _POSITIVE_LABEL_RE.search(name)]
        if not positive and self._model.config.num_labels == 2:
            positive = [1]
        if not positive and self._model.config.num_labels != 1:
            raise ValueError(f"cannot tell which label of {labels} means injection (model in {str(path)!r})")
        self._positive = positive
        limits = (
            512,
            getattr(self._tokenizer, "model_max_length", None),
            getattr(self._model.config, "max_position_embeddings", None),
        )
        self._max_length = min(int(n) for n in limits if n)

    def _windows(self, text: str) -> list[str]:
        step = self.window_chars - self.overlap_chars
        starts = list(range(0, max(1, len(text) - self.overlap_chars), step)) or [0]
        if len(starts) > self.max_windows:  # head and tail; the rules cover the middle
            half = self.max_windows // 2
            starts = starts[:half] + starts[-half:]
        return [text[s : s + self.window_chars] for s in starts]

    def scores(self, texts: Sequence[str]) -> list[float]:
        windows: list[str] = []
        owners: list[int] = []
        for i, text in enumerate(texts):
            for window in self._windows(text):
                windows.append(window)
                owners.append(i)
        out = [0.0] * len(texts)
        torch = self._torch
        for start in range(0, len(windows), self.batch_size):
            batch = windows[start : start + self.batch_size]
            encoded = self._tokenizer(
                batch, truncation=True, max_length=self._max_length, padding=True, return_tensors="pt"
            )
            with torch.inference_mode():
                logits = self._model(**encoded).logits
            if logits.shape[-1] == 1:
                probs = torch.sigmoid(logits[:, 0])
            else:
                probs = torch.softmax(logits, dim=-1)[:, self._positive].sum(dim=-1)
            for offset, p in enumerate(probs.tolist()):
                owner = owners[start + offset]
                out[owner] = max(out[owner], float(p))
        return out
