"""The forms of a text an injection can hide in, for the injection rules to read: normalised (NFKC, invisible
characters dropped, look-alike letters mapped), de-leeted, spaced-out letters joined, text hidden in Unicode tag
characters, and base64 or hex payloads decoded (see ``chains.safety.injection``)."""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata

# Zero-width and other invisible format characters (the tag block U+E0000..U+E007F is handled on its own).
_INVISIBLE = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff"
)
_INVISIBLE_RE = re.compile(f"[{_INVISIBLE}]")
INVISIBLE_IN_WORD_RE = re.compile(f"[A-Za-z][{_INVISIBLE}]+(?=[A-Za-z])")
_TAG_RUN_RE = re.compile("[\U000e0000-\U000e007f]+")

# Common Latin look-alikes from Cyrillic, Greek and a few other blocks (after NFKC, which handles fullwidth forms,
# mathematical alphanumerics and circled letters).
_CONFUSABLES = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
        "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w",
        "ɡ": "g", "һ": "h", "ӏ": "l", "ɩ": "i", "ո": "n", "ս": "u", "ց": "g", "ҽ": "e",
        "А": "A", "В": "B", "Е": "E", "Ё": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C",
        "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ї": "I", "Ј": "J", "Ԁ": "D", "Ԛ": "Q", "Ԝ": "W",
        "Ӏ": "I",
        # Greek
        "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u",
        "χ": "x", "γ": "y", "ω": "w",
        "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
        "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
        # Latin extensions and punctuation look-alikes
        "ı": "i", "ȷ": "j", "ℓ": "l", "ʟ": "L", "ɪ": "I", "ɴ": "N", "ʀ": "R", "ꜱ": "S", "ᴀ": "A", "ᴇ": "E",
        "ᴏ": "O", "ᴛ": "T", "ᴜ": "U",
    }
)  # fmt: skip

_LEET_I = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g",
                         "@": "a", "$": "s", "!": "i", "|": "l", "+": "t"})  # fmt: skip
_LEET_L = str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g",
                         "@": "a", "$": "s", "!": "i", "|": "l", "+": "t"})  # fmt: skip
# A token mixing letters and leet characters: "1gn0r3", "pr3v10us", "y0ur", "ru135".
LEET_TOKEN_RE = re.compile(
    r"(?<![A-Za-z0-9@$!|+])(?=[A-Za-z0-9@$!|+]{0,39}[A-Za-z])(?=[A-Za-z0-9@$!|+]{0,39}[0-9@$!|+])"
    r"[A-Za-z0-9@$!|+]{2,40}(?![A-Za-z0-9@$!|+])"
)

# Four or more single letters (or leet digits) separated by spaces or punctuation: "i g n o r e", "I.g.n.o.r.e".
SPACED_RE = re.compile(r"(?<![^\W_])(?:[^\W_][ \t.\-_*·•|/,~]{1,3}){3,}[^\W_](?![^\W_])")
_SEP_SPLIT_RE = re.compile(r"[ \t.\-_*·•|/,~]{1,3}")

# Encoded payloads: base64 (standard or URL-safe, padded or not) and hex (contiguous, spaced, \x-escaped).
_BASE64_RE = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,}={0,2}")
_HEX_RE = re.compile(
    r"(?:\\x[0-9a-fA-F]{2}){8,}"
    r"|(?<![0-9A-Za-z])(?:0x)?(?:[0-9a-fA-F]{2}){8,}(?![0-9A-Za-z])"
    r"|(?<![0-9A-Za-z])(?:[0-9a-fA-F]{2}[ :,-]){7,}[0-9a-fA-F]{2}(?![0-9A-Za-z])"
)
_MAX_BLOBS = 32
_MAX_BLOB_CHARS = 16_384


def normalise(text: str) -> str:
    """NFKC, invisibles stripped, look-alikes mapped to Latin."""
    text = unicodedata.normalize("NFKC", text)
    text = _INVISIBLE_RE.sub("", text)
    return text.translate(_CONFUSABLES)


def deleet(text: str, lexicon: frozenset[str]) -> str:
    """Read leet tokens as letters; "1" (also "|", "!") is "i" unless "l" makes a word of ``lexicon`` ("ru135")."""

    def word(match: re.Match[str]) -> str:
        token = match.group()
        as_i = token.translate(_LEET_I)
        if as_i.lower() in lexicon:
            return as_i
        as_l = token.translate(_LEET_L)
        return as_l if as_l.lower() in lexicon else as_i

    return LEET_TOKEN_RE.sub(word, text)


def despace(text: str) -> str:
    """Join spaced-out letters; a separator unlike the usual one (a double space, a space among dots) splits words."""

    def join(match: re.Match[str]) -> str:
        run = match.group()
        seps = _SEP_SPLIT_RE.findall(run)
        usual = max(set(seps), key=seps.count)
        letters = _SEP_SPLIT_RE.split(run)
        out = [letters[0]]
        for sep, letter in zip(seps, letters[1:], strict=True):
            out.append(letter if sep == usual else " " + letter)
        return "".join(out)

    return SPACED_RE.sub(join, text)


def tag_text(text: str) -> str:
    """Text smuggled in Unicode tag characters (U+E0020..U+E007E mirror ASCII), flag emoji sequences excluded."""
    hidden = []
    for match in _TAG_RUN_RE.finditer(text):
        decoded = "".join(chr(ord(c) - 0xE0000) for c in match.group() if 0xE0020 <= ord(c) <= 0xE007E)
        if len(decoded) >= 4 and not decoded.isalnum():  # flag sequences are short lowercase tags like "gbsct"
            hidden.append(decoded)
    return "\n".join(hidden)


def _printable_text(raw: bytes) -> str | None:
    """Decoded bytes as text when they are mostly printable words, else None."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(text) < 6:
        return None
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in text)
    letters = sum(ch.isalpha() for ch in text)
    if printable / len(text) < 0.95 or letters / len(text) < 0.5:
        return None
    return text


def decode_blobs(text: str) -> list[tuple[str, str]]:
    """(label, decoded text) for base64 and hex runs that decode to mostly printable text."""
    found: list[tuple[str, str]] = []
    tokens = text.split()
    # Cheap pre-check: a payload is one long token, or (spaced hex) many tokens of two or three characters.
    if max(map(len, tokens), default=0) < 16 and sum(len(t) <= 3 for t in tokens) < 8:
        return found
    seen = 0
    for match in _HEX_RE.finditer(text):
        seen += 1
        if seen > _MAX_BLOBS:
            break
        digits = re.sub(r"\\x|0x|[ :,-]", "", match.group()[:_MAX_BLOB_CHARS])
        if len(digits) % 2:
            continue
        decoded = _printable_text(bytes.fromhex(digits))
        if decoded:
            found.append(("hex", decoded))
    seen = 0
    for match in _BASE64_RE.finditer(text):
        seen += 1
        if seen > _MAX_BLOBS:
            break
        blob = match.group()[:_MAX_BLOB_CHARS].rstrip("=").replace("-", "+").replace("_", "/")
        if len(blob) % 4 == 1 or blob.isalpha() and (blob.islower() or blob.isupper()):
            continue
        try:
            raw = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        decoded = _printable_text(raw)
        if decoded:
            found.append(("base64", decoded))
    return found
