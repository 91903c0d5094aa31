"""Uploaded documents: which kind a file is (by its extension, checked against its content) and its text.

Kinds are ``text`` (.txt), ``markdown`` (.md), ``html`` (.html, .htm: the visible text) and ``pdf`` (.pdf, through
``pypdf``). ``detect_kind`` runs at upload and refuses what cannot be one of them (a 400 naming ``file``);
``extract_text`` runs at ingestion and raises ``DocumentError`` with OpenAI's ``last_error`` code for a file that
passed the upload check but holds no readable text (an empty, encrypted or corrupt PDF). Both are CPU work on the
whole file: call them off the event loop.
"""

from __future__ import annotations

import codecs
import io
import re
from html.parser import HTMLParser
from pathlib import PurePath
from typing import Literal

from errors import InvalidRequest

Kind = Literal["text", "markdown", "html", "pdf"]
KINDS: dict[str, Kind] = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
ACCEPTED = "text (.txt), Markdown (.md), HTML (.html, .htm) and PDF (.pdf)"
_LABELS = {"text": "plain text", "markdown": "Markdown text", "html": "HTML text"}
PDF_MAGIC = b"%PDF-"
# Control characters other than tab, newline, carriage return and form feed: text files have (almost) none.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


class DocumentError(Exception):
    """A file with no readable text; ``code`` is OpenAI's: ``invalid_file`` or ``unsupported_file``."""

    def __init__(self, code: Literal["invalid_file", "unsupported_file"], message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def detect_kind(filename: str, data: bytes) -> Kind:
    """The file's kind from its extension, when its content agrees (400 naming ``file`` otherwise)."""
    kind = KINDS.get(PurePath(filename).suffix.lower())
    if kind is None:
        raise InvalidRequest(
            f"Unsupported file type '{filename}': the platform accepts {ACCEPTED} files.",
            param="file",
            code="unsupported_file",
        )
    looks_like_pdf = PDF_MAGIC in data[:1024]  # the PDF header may follow up to 1 KB of junk
    if kind == "pdf":
        if data and not looks_like_pdf:
            raise InvalidRequest(
                f"'{filename}' is not a PDF: its content does not start with %PDF-.", param="file", code="invalid_file"
            )
        return kind
    if data.startswith(PDF_MAGIC):
        raise InvalidRequest(
            f"'{filename}' holds a PDF, not {_LABELS[kind]}: upload it with the extension .pdf.",
            param="file",
            code="invalid_file",
        )
    if decode_text(data) is None:
        raise InvalidRequest(
            f"'{filename}' is not {_LABELS[kind]}: it is binary or not in UTF-8 (or UTF-16 with a byte-order mark).",
            param="file",
            code="invalid_file",
        )
    return kind


def decode_text(data: bytes) -> str | None:
    """The text of a UTF-8 file (or UTF-16 with a byte-order mark); None for binary content."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        return None
    controls = len(_CONTROL.findall(text))
    if "\x00" in text or controls > max(8, len(text) // 200):
        return None
    return text


def extract_text(data: bytes, kind: Kind) -> str:
    """The text a file's chunks are made of; ``DocumentError`` when there is none to read."""
    if not data:
        raise DocumentError("invalid_file", "The file is empty.")
    if kind == "pdf":
        text = pdf_text(data)
    else:
        decoded = decode_text(data)
        if decoded is None:
            raise DocumentError("invalid_file", "The file is not UTF-8 text.")
        text = html_text(decoded) if kind == "html" else decoded
    if not text.strip():
        raise DocumentError("invalid_file", "The file has no text to index.")
    return text


def pdf_text(data: bytes) -> str:
    """Each page's text, pages separated by a blank line."""
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not _unlocks_without_password(reader):
            raise DocumentError(
                "invalid_file", "The PDF is encrypted with a password: upload a copy without encryption."
            )
        pages = [page.extract_text() or "" for page in reader.pages]
    except DocumentError:
        raise
    except Exception as exc:  # pypdf raises many kinds of errors on damaged files
        raise DocumentError("invalid_file", f"The PDF could not be read: {_reason(exc)}") from exc
    if not pages:
        raise DocumentError("invalid_file", "The PDF has no pages.")
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text:
        raise DocumentError(
            "unsupported_file",
            "The PDF has no extractable text (scanned pages are images, and the platform does not run OCR).",
        )
    return text


def _unlocks_without_password(reader) -> bool:
    """Many PDFs are encrypted with an empty user password (only to restrict printing or copying): readable."""
    try:
        return bool(reader.decrypt(""))
    except Exception:  # an algorithm pypdf cannot run without an optional dependency, or a damaged header
        return False


def _reason(exc: Exception) -> str:
    reason = " ".join(str(exc).split())[:200]
    return reason or type(exc).__name__


_SKIPPED = {"script", "style", "noscript", "template", "head", "svg", "canvas", "iframe", "object"}
_BLOCKS = {
    "address", "article", "aside", "blockquote", "br", "dd", "details", "div", "dl", "dt", "figcaption", "figure",
    "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre",
    "section", "summary", "table", "td", "th", "tr", "ul", "title",
}  # fmt: skip
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _VisibleText(HTMLParser):
    """Collects what a browser shows: text outside scripts, styles and the head, with line breaks at blocks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0
        self.title: list[str] = []
        self.in_title = False

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "title":
            self.in_title = True
        elif tag == "body":  # a head left open ends where the body starts, as in a browser
            self.hidden = 0
        elif tag in _SKIPPED and tag not in _VOID:
            self.hidden += 1
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in _SKIPPED and self.hidden:
            self.hidden -= 1
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        elif not self.hidden:
            self.parts.append(data)


def html_text(html: str) -> str:
    """The page's title and visible text, one line per block, whitespace folded."""
    parser = _VisibleText()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).split("\n"))
    body = "\n".join(line for line in lines if line)
    title = " ".join("".join(parser.title).split())
    return f"{title}\n\n{body}" if title and body else title or body
