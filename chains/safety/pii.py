"""PII redaction with Presidio, as a policy per app and as an output filter that works on streamed answers.

Presidio runs offline here. Its default analyzer loads a spaCy model (and downloads one when it is missing) and its
e-mail recognizer asks ``tldextract`` for the public suffix list, which that library fetches from the network on first
use. So the analyzer is built by hand:

* the NLP engine is Presidio's ``NoOpNlpEngine`` (no model, empty NLP artifacts) unless a spaCy model that is already
  installed is named, which adds names (PERSON) through Presidio's ``SpacyRecognizer``; nothing is ever downloaded;
* the recognizers are Presidio's pattern recognizers (regex + checksum: Luhn for cards, mod-97 for IBANs, ...) and its
  ``phonenumbers`` recognizer, a few of them tuned (see ``_PhoneRecognizer``, ``_IpRecognizer``, ``_EmailRecognizer``);
* context words are not used (no tokens without a model), so each recognizer's own score decides, against
  ``MIN_SCORE``: checksum-validated matches score 1.0, medium patterns 0.5, phonenumbers-validated numbers 0.4; the
  "weak" patterns Presidio meant to be raised by context words (bare 9-digit SSNs, 12-digit Aadhaar, ...) never pass.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers
import regex
import tldextract
from presidio_analyzer import AnalyzerEngine, Pattern, RecognizerRegistry, RecognizerResult
from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer
from presidio_analyzer.nlp_engine import NlpEngine, NoOpNlpEngine, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    EsNieRecognizer,
    EsNifRecognizer,
    FiPersonalIdentityCodeRecognizer,
    IbanRecognizer,
    IpRecognizer,
    ItFiscalCodeRecognizer,
    NhsRecognizer,
    PhoneRecognizer,
    PlPeselRecognizer,
    SgFinRecognizer,
    SpacyRecognizer,
    UkNinoRecognizer,
    UsItinRecognizer,
    UsSsnRecognizer,
)
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig

from chains.safety.pii_policy import NER_ENTITIES, PATTERN_ENTITIES, Action, PiiPolicy

MIN_SCORE = 0.4  # Presidio's phonenumbers score; below it are the weak patterns that need context words
DEFAULT_PHONE_REGIONS = ("US", "GB", "DE", "FR", "IN")  # national formats; "+<country code>" numbers match anywhere
HASH_CHARS = 8  # hex digits of the HMAC kept in a hash placeholder
_LANGUAGE = "en"


@dataclass
class RedactionResult:
    text: str
    found: dict[str, int] = field(default_factory=dict)  # entity type -> how many were redacted


# --------------------------------------------------------------------------- recognizers


class _EmailRecognizer(EmailRecognizer):
    """Presidio's, with tldextract's bundled suffix-list snapshot: its default extractor fetches the list from the
    network on first use (and hangs for as long as the network takes to fail)."""

    _tld = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)

    def validate_result(self, pattern_text: str) -> bool:
        return self._tld(pattern_text).fqdn != ""


_PHONE_CANDIDATE = re.compile(r"\+?\d(?:[ \t().\-/]{0,3}\d){6,}")  # 7+ digits (no number is shorter), separators
_PHONE_FORMATTED = re.compile(r"^\+|\d[ \t().\-/]+\d")  # an international prefix, or separators between digits
_PHONE_CONTEXT = re.compile(
    r"(?i)\b(?:phone|tel|telephone|mobile|cell|call|fax|whatsapp|sms|text|dial|contact|number|ring)\b\W*(?:\w+\W+){0,3}$"
)
PHONE_CONTEXT_CHARS = 48  # how far back the context word may be
# Phone candidates ending before this offset are not analysed: the streaming filter's left context, analysed before.
_PHONE_SKIP_BEFORE: ContextVar[int] = ContextVar("pii_phone_skip_before", default=0)
_IPV4_SHAPE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_PHONE_MARGIN = (2, 4)  # characters around a candidate that phonenumbers looks at (a letter, "(", a ":30" after it)


class _PhoneRecognizer(PhoneRecognizer):
    """Presidio's ``phonenumbers`` recognizer, cheaper and stricter about bare digit runs.

    ``phonenumbers`` is pure Python and tries every digit group of the text once per region (about 1 ms for a
    sentence and 5 regions), so it runs here only around runs of 7+ digits (a few separators allowed), and for a
    number written with "+" in one region only (the country code decides). A number written as bare digits
    (``4155550132``: order numbers, timestamps and ids look like that) scores below ``MIN_SCORE`` unless a word like
    "call" or "phone" comes just before it; formatted numbers (``+44 20 7946 0958``, ``(415) 555-0132``) keep
    Presidio's score. Leniency is ``STRICT_GROUPING`` (Presidio's default is ``VALID``): digits grouped as the
    country writes them, so an id like ``2024-000123`` (a valid Indian number, grouped wrongly) is not a phone.
    """

    def __init__(self, supported_regions: tuple[str, ...]) -> None:
        super().__init__(supported_regions=supported_regions, leniency=phonenumbers.Leniency.STRICT_GROUPING)

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[RecognizerResult]:
        results: dict[tuple[int, int], RecognizerResult] = {}
        skip_before = _PHONE_SKIP_BEFORE.get()
        for candidate in _PHONE_CANDIDATE.finditer(text):
            if candidate.end() + _PHONE_MARGIN[1] <= skip_before:
                continue  # nothing found there can reach the text after it
            low = max(0, candidate.start() - _PHONE_MARGIN[0])
            window = text[low : candidate.end() + _PHONE_MARGIN[1]]
            if _IPV4_SHAPE.fullmatch(candidate.group()):
                continue  # 192.168.1.20: an address, not a number
            regions = self.supported_regions[:1] if candidate.group().startswith("+") else self.supported_regions
            for region in regions:
                for match in phonenumbers.PhoneNumberMatcher(window, region, leniency=self.leniency):
                    start, end = low + match.start, low + match.end
                    if (start, end) not in results:
                        results[start, end] = self._result(text, start, end)
        return list(results.values())

    def _result(self, text: str, start: int, end: int) -> RecognizerResult:
        score = self.SCORE
        before = text[max(0, start - PHONE_CONTEXT_CHARS) : start]
        if not _PHONE_FORMATTED.search(text[start:end]) and not _PHONE_CONTEXT.search(before):
            score = 0.3
        return RecognizerResult(
            self.supported_entities[0],
            start,
            end,
            score,
            recognition_metadata={
                RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
            },
        )


class _IpRecognizer(IpRecognizer):
    """Presidio's, without the addresses that identify nobody: 0.0.0.0, ::, loopback (127.0.0.1, ::1)."""

    def invalidate_result(self, pattern_text: str) -> bool:
        if super().invalidate_result(pattern_text):
            return True
        address = ipaddress.ip_interface(pattern_text).ip
        return address.is_unspecified or address.is_loopback


# Card number groups as people write them: Presidio's pattern takes only a space or "-" between the groups.
_CARD_SEPARATORS = " \u00a0\u202f./_-"
_CARD_SEP = "[" + re.escape(_CARD_SEPARATORS) + "]?"


class _CardRecognizer(CreditCardRecognizer):
    """Presidio's (prefixes, lengths, Luhn), also with the groups separated by dots, slashes, underscores or
    no-break spaces."""

    def __init__(self) -> None:
        pattern = (
            r"\b(?!1\d{12}(?!\d))((4\d{3})|(5[0-5]\d{2})|(6\d{3})|(1\d{3})|(3\d{3}))"
            + _CARD_SEP + r"(\d{3,4})" + _CARD_SEP + r"(\d{3,4})" + _CARD_SEP + r"(\d{3,5})\b"
        )  # fmt: skip
        super().__init__(
            patterns=[Pattern("All Credit Cards (weak)", pattern, 0.3)],
            replacement_pairs=[(separator, "") for separator in _CARD_SEPARATORS],
        )


class _IbanRecognizer(IbanRecognizer):
    """Presidio's, also for an IBAN written in lower case (the checksum is computed on the upper-case form)."""

    def __init__(self) -> None:
        super().__init__(regex_flags=regex.M | regex.S | regex.IGNORECASE)

    def validate_result(self, pattern_text: str) -> bool | None:
        return super().validate_result(pattern_text.upper())


class _NoContext(ContextAwareEnhancer):
    """Scores stay the recognizers' own: without a model there are no lemmas to find context words in (and the
    streaming filter needs an answer's PII found the same wherever the stream was split)."""

    def __init__(self) -> None:
        super().__init__(0, 0, 0, 0)

    def enhance_using_context(
        self,
        text: str,
        raw_results: list[RecognizerResult],
        nlp_artifacts: Any,
        recognizers: list,
        context: list[str] | None = None,
    ) -> list[RecognizerResult]:
        return raw_results


def _pattern_recognizers(phone_regions: tuple[str, ...]) -> list:
    # Some national ids are registered for their country's language by default; answers here are analysed as English.
    return [
        _EmailRecognizer(),
        _PhoneRecognizer(supported_regions=phone_regions),
        _CardRecognizer(),
        _IbanRecognizer(),
        _IpRecognizer(),
        UsSsnRecognizer(),
        UsItinRecognizer(),
        UkNinoRecognizer(),
        NhsRecognizer(),
        EsNifRecognizer(supported_language=_LANGUAGE),
        EsNieRecognizer(supported_language=_LANGUAGE),
        ItFiscalCodeRecognizer(supported_language=_LANGUAGE),
        PlPeselRecognizer(supported_language=_LANGUAGE),
        FiPersonalIdentityCodeRecognizer(supported_language=_LANGUAGE),
        SgFinRecognizer(),
    ]


def _spacy_engine(model: str) -> NlpEngine:
    import spacy.util

    if not (spacy.util.is_package(model) or Path(model).is_dir()):
        raise ValueError(
            f"spaCy model {model!r} is not installed: install its package (e.g. pip install {model}) or give the path "
            "of a saved pipeline; it is never downloaded at run time"
        )
    engine = SpacyNlpEngine(models=[{"lang_code": _LANGUAGE, "model_name": model}])
    engine.load()
    return engine


# --------------------------------------------------------------------------- redactor

_DIGIT = re.compile(r"\d")
_HEX_COLON = re.compile(r"[0-9A-Fa-f]:[0-9A-Fa-f:]|::")  # an IPv6 address without digits still has one
# What an entity cannot do without (a cheap test that spares running its recognizers, which cost 10-300 µs each):
_IP_SIGN = re.compile(r"\d\.\d|[0-9A-Fa-f]:[0-9A-Fa-f:]|::")
_IBAN_SIGN = re.compile(r"[A-Za-z]{2}\d{2}")
MIN_DIGITS = 6  # the other entities have at least this many digits (a NINO has 6, phone numbers 7, cards 12)


def _may_contain(entity: str, text: str) -> bool:
    if entity == "EMAIL_ADDRESS":
        return "@" in text
    if entity == "IP_ADDRESS":
        return _IP_SIGN.search(text) is not None
    if entity == "IBAN_CODE":
        return _IBAN_SIGN.search(text) is not None
    if entity in NER_ENTITIES:
        return True
    return sum(ch.isdigit() for ch in text) >= MIN_DIGITS


def may_hold_pii(text: str) -> bool:
    """Whether a pattern entity can be in ``text`` at all: all but e-mails need a digit (or an IPv6 colon)."""
    return _DIGIT.search(text) is not None or "@" in text or _HEX_COLON.search(text) is not None


_SAMPLE = (  # every recognizer's lazy setup (compiled patterns, tldextract's snapshot) happens at construction
    "Mail a.b@example.com, call +44 20 7946 0958 or (415) 555-0132, card 4111 1111 1111 1111, IBAN GB82 WEST 1234 "
    "5698 7654 32, IPs 192.168.1.20 and 2001:db8::1, SSN 219-09-9999, NINO AB 12 34 56 C."
)


class PiiRedactor:
    """Presidio's analyzer and anonymizer, built once per process (heavy: recognizers, phone metadata, a spaCy model
    when one is named) and shared by every answer. Thread-safe: after construction (which runs one warm-up analysis,
    so no recognizer loads lazily later) calls share no mutable state. Importing this module takes seconds (Presidio
    imports spaCy): build it at start-up or off the event loop.

    ``hash_salt`` keys the hash placeholders: keep it secret and stable per deployment. Without one, a phone or card
    number's placeholder can be found by hashing every possible number."""

    def __init__(
        self,
        *,
        spacy_model: str | None = None,
        hash_salt: str = "",
        phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS,
        min_score: float = MIN_SCORE,
    ) -> None:
        registry = RecognizerRegistry(supported_languages=[_LANGUAGE])
        for recognizer in _pattern_recognizers(tuple(phone_regions)):
            registry.add_recognizer(recognizer)
        if spacy_model is None:
            nlp_engine: NlpEngine = NoOpNlpEngine(models=[{"lang_code": _LANGUAGE, "model_name": "no_op"}])
            nlp_engine.load()
        else:
            nlp_engine = _spacy_engine(spacy_model)
            registry.add_recognizer(SpacyRecognizer(supported_language=_LANGUAGE, supported_entities=["PERSON"]))
        self.analyzer = AnalyzerEngine(
            registry=registry,
            nlp_engine=nlp_engine,
            supported_languages=[_LANGUAGE],
            default_score_threshold=min_score,
            context_aware_enhancer=_NoContext(),
        )
        self.anonymizer = AnonymizerEngine()
        self.spacy_model = spacy_model
        self.supported_entities: tuple[str, ...] = PATTERN_ENTITIES + (NER_ENTITIES if spacy_model else ())
        self._salt = hash_salt.encode()
        self._operators: dict[PiiPolicy, dict[str, OperatorConfig]] = {}
        self.analyze(_SAMPLE, self.supported_entities)

    # ---- analysis

    def analyze(self, text: str, entities: Iterable[str], *, settled: int = 0) -> list[RecognizerResult]:
        """The PII spans of ``text`` among ``entities``, overlaps merged (a span two recognizers disagree on is
        covered whole, under the more certain one's type). Recognizers whose entities need a character the text
        lacks (a digit; "@" for e-mail) are not run. ``settled``: the first characters are context analysed before;
        phone numbers (the costly recognizer) are not looked for there again, only those that may reach past it."""
        wanted = [entity for entity in entities if entity in self.supported_entities]
        if not wanted:
            return []
        run = [entity for entity in wanted if _may_contain(entity, text)]
        if not run:
            return []
        token = _PHONE_SKIP_BEFORE.set(settled)
        try:
            return _merge_overlaps(self.analyzer.analyze(text, language=_LANGUAGE, entities=run))
        finally:
            _PHONE_SKIP_BEFORE.reset(token)

    def check(self, policy: PiiPolicy) -> None:
        """Raise ValueError when the policy names an entity this redactor cannot find (PERSON without spaCy): for the
        admin API, so that a policy is not stored that would silently redact less than it says."""
        missing = [entity for entity in policy.entities if entity not in self.supported_entities]
        if missing:
            raise ValueError(
                f"PII policy: entity {', '.join(missing)} needs a spaCy model, and this deployment has none configured"
            )

    # ---- anonymization

    def redact(self, text: str, policy: PiiPolicy) -> RedactionResult:
        """``text`` with the policy's entities redacted, and how many of each."""
        return self.apply(text, self.analyze(text, policy.entities), policy)

    def apply(self, text: str, results: list[RecognizerResult], policy: PiiPolicy) -> RedactionResult:
        """``text`` with the spans in ``results`` (non-overlapping, as ``analyze`` gives them) redacted."""
        if not results:
            return RedactionResult(text)
        found: dict[str, int] = {}
        for result in results:
            found[result.entity_type] = found.get(result.entity_type, 0) + 1
        anonymized = self.anonymizer.anonymize(
            text, results, operators=self._operators_for(policy), merge_entities_with_spaces=False
        )
        return RedactionResult(anonymized.text, found)

    def _operators_for(self, policy: PiiPolicy) -> dict[str, OperatorConfig]:
        operators = self._operators.get(policy)
        if operators is None:
            operators = {entity: self._operator(entity, policy.action) for entity in self.supported_entities}
            self._operators[policy] = operators  # a dict store of equal values: harmless if two threads race
        return operators

    def _operator(self, entity: str, action: Action) -> OperatorConfig:
        if action == "replace":
            return OperatorConfig("replace", {"new_value": f"<{entity}>"})
        if action == "mask":
            if entity == "CREDIT_CARD":
                return OperatorConfig("custom", {"lambda": _mask_card})
            return OperatorConfig("mask", {"masking_char": "*", "chars_to_mask": 1 << 30, "from_end": False})
        return OperatorConfig("custom", {"lambda": lambda value: f"<{entity}:{self.pseudonym(entity, value)}>"})

    def pseudonym(self, entity: str, value: str) -> str:
        """The short keyed hash of a value, as a hash placeholder shows it."""
        normal = value.casefold() if entity == "EMAIL_ADDRESS" else re.sub(r"[\W_]", "", value).upper()
        digest = hmac.new(self._salt, f"{entity}:{normal}".encode(), hashlib.sha256).hexdigest()
        return digest[:HASH_CHARS]


def _mask_card(value: str) -> str:
    """Digits masked but the last 4; separators kept (``**** **** **** 1111``)."""
    total = sum(ch.isdigit() for ch in value)
    seen = 0
    out = []
    for ch in value:
        if ch.isdigit():
            seen += 1
            out.append(ch if seen > total - 4 else "*")
        else:
            out.append(ch)
    return "".join(out)


def _merge_overlaps(results: list[RecognizerResult]) -> list[RecognizerResult]:
    """Overlapping spans as one span covering both, typed by the higher score (then the longer span). Presidio's
    anonymizer would otherwise trim one of two partly overlapping spans and leave part of it in clear."""
    merged: list[RecognizerResult] = []
    for result in sorted(results, key=lambda r: (r.start, -r.end)):
        if merged and result.start < merged[-1].end:
            last = merged[-1]
            stronger = max((last, result), key=lambda r: (r.score, r.end - r.start))
            merged[-1] = RecognizerResult(
                stronger.entity_type, last.start, max(last.end, result.end), max(last.score, result.score)
            )
        else:
            merged.append(result)
    return merged


# --------------------------------------------------------------------------- streaming filter

_TOKEN = re.compile(r"\S+")
_SEPARATORS = re.compile(r"[-+()./:–—\[\]~]+")  # phonenumbers reads across brackets and tildes too
_GROUP = re.compile(r"[A-Z0-9]{1,4}|[A-Da-d]")  # an IBAN group (WEST), a NINO's suffix letter (C)
_EXTENSION = re.compile(r"(?i)(?:#|x|ext\.?|extn\.?|extension)\d*")  # a phone's extension ("ext. 12", "#12")
_NINO_PREFIX = re.compile(r"(?:^|\W)[^\W\d_]{2}$")  # AB, (AB
_OPENS = re.compile(r"[(+\[]$")  # a word ending where a phone number may start: "in(", "at+"
CONTEXT_CHARS = 64  # released text kept as left context for the next analysis (>= PHONE_CONTEXT_CHARS)
MAX_HELD = 256  # a run of PII-ish words longer than this (a table of numbers) is released in part ...
KEEP_HELD = 80  # ... keeping this much, more than the longest PII (an IBAN in groups: 42)
INLINE_CHARS = 160  # analyses of longer windows run in a worker thread (see bench/output_filters.py)
_SENTENCE_END = re.compile(r"[.!?\n][\"')\]]*\s+")


def _piiish(token: str) -> bool:
    """Whether a whitespace-separated word can be one group of a PII written in groups (phone, card, IBAN, NINO)."""
    core = token.rstrip(",.;:!?)'\"")
    return bool(
        _DIGIT.search(token) or _SEPARATORS.fullmatch(token) or _GROUP.fullmatch(core) or _EXTENSION.fullmatch(core)
    )


def safe_cut(text: str) -> int:
    """How much of ``text`` (the unreleased part of an answer) may be analysed and released now: everything but what
    a PII may still be growing from. That is the trailing unfinished word (an e-mail's local part looks like any
    word until its "@" comes), and before it a run of words that may be groups of one number ("+44 20 7946",
    "GB82 WEST 1234", "AB 12 34 56 C"): words with digits, separators and IBAN-like groups, from the first word with
    a digit (with a "+", "(" or 2-letter NINO prefix just before it), and a phone's extension after it."""
    spans = [(m.start(), m.end()) for m in _TOKEN.finditer(text)]
    words = [text[start:end] for start, end in spans]
    if not words:
        return len(text)
    open_end = not text[-1].isspace()
    cut = spans[-1][0] if open_end else len(text)
    run_start = len(words)  # the run of PII-ish words at the end
    while run_start > 0 and _piiish(words[run_start - 1]):
        run_start -= 1
    first_digit = next((i for i in range(run_start, len(words)) if _DIGIT.search(words[i])), None)
    if first_digit is None:
        # No number has started: only what may start one ("+", "(", a NINO prefix) waits for the next word.
        last = index = len(words) - (2 if open_end else 1)
        while index >= 0 and _SEPARATORS.fullmatch(words[index]):
            cut, index = spans[index][0], index - 1
        if index >= 0 and (_OPENS.search(words[index]) or (index == last and _NINO_PREFIX.search(words[index]))):
            cut = spans[index][0]
        return cut
    keep = first_digit
    while keep > 0 and _SEPARATORS.fullmatch(words[keep - 1]):
        keep -= 1
    if keep > 0 and (_NINO_PREFIX.search(words[keep - 1]) or _OPENS.search(words[keep - 1])):
        keep -= 1
    return min(cut, spans[keep][0])


class PiiFilter:
    """An output filter (``chains.output_stage``) redacting one answer's PII, streamed or not.

    It holds back only what a PII may still be growing from (``safe_cut``), analyses what it releases with the text
    held after it as right context and some released text as left context, so a PII split across chunks is redacted
    as in the whole text. A released piece with no digit, "@" or hex colon is released without calling Presidio.
    With PERSON in the policy (a spaCy model), whole sentences are held instead: names need the sentence around them.
    Analyses of windows longer than ``INLINE_CHARS`` (a long non-streamed answer) run in a worker thread; shorter ones
    (a few hundred µs, see bench/output_filters.py) inline. ``found`` counts the entities redacted in this answer.
    """

    def __init__(self, redactor: PiiRedactor, policy: PiiPolicy) -> None:
        self.redactor = redactor
        self.policy = policy
        self.entities = tuple(e for e in policy.entities if e in redactor.supported_entities)
        self.by_sentence = "PERSON" in self.entities
        self.found: dict[str, int] = {}
        self._held = ""  # not released yet, as the model wrote it
        self._context = ""  # the end of what was released, as the model wrote it

    async def feed(self, text: str) -> str:
        if not self.entities:
            return text  # a policy with nothing (this deployment can find) to redact
        self._held += text
        cut = safe_cut(self._held)
        if self.by_sentence:
            cut = min(cut, self._sentence_cut())
        if len(self._held) - cut > MAX_HELD:
            cut = self._forced_cut()
        return await self._release(cut, final=False) if cut else ""

    async def finish(self) -> str:
        return await self._release(len(self._held), final=True) if self._held else ""

    def _sentence_cut(self) -> int:
        ends = [m.end() for m in _SENTENCE_END.finditer(self._held)]
        return ends[-1] if ends else 0

    def _forced_cut(self) -> int:
        """A long run of PII-ish words: release all but its last ``KEEP_HELD`` characters (from a word start)."""
        space = self._held.rfind(" ", 0, len(self._held) - KEEP_HELD)
        return space + 1 if space >= 0 else 0

    async def _release(self, cut: int, *, final: bool) -> str:
        segment = self._held[:cut]
        if not self.by_sentence and not may_hold_pii(segment):
            return self._emit(segment, segment, cut)  # nothing a PII needs: no Presidio call
        window = self._context + self._held
        offset = len(self._context)
        if len(window) > INLINE_CHARS:
            results = await asyncio.to_thread(self.redactor.analyze, window, self.entities, settled=offset)
        else:
            results = self.redactor.analyze(window, self.entities, settled=offset)
        spans = []
        for result in results:
            start, end = result.start - offset, result.end - offset
            if end <= 0:
                continue  # released already, redacted then
            if not final and start < cut < end:
                cut = max(start, 0)  # growing into the held text: wait for it
            spans.append(RecognizerResult(result.entity_type, max(start, 0), end, result.score))
        spans = [span for span in spans if span.end <= cut]
        redacted = self.redactor.apply(self._held[:cut], spans, self.policy)
        for entity, count in redacted.found.items():
            self.found[entity] = self.found.get(entity, 0) + count
        return self._emit(self._held[:cut], redacted.text, cut)

    def _emit(self, raw: str, text: str, cut: int) -> str:
        self._held = self._held[cut:]
        context = self._context + raw
        if len(context) > CONTEXT_CHARS:
            context = context[-CONTEXT_CHARS:]
            space = context.find(" ")  # start at a word
            context = context[space + 1 :] if space >= 0 else context
        self._context = context
        return text
