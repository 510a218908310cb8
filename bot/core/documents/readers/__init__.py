"""Readers: one module per format, behind one small registry.

Promises:
- The content decides the format (`sniff`): `%PDF-` near the start is a PDF, a ZIP
  holding `word/document.xml` is DOCX, a ZIP whose `mimetype` says EPUB is EPUB,
  anything else must decode as text (HTML when it starts like HTML, Markdown when the
  name says so, plain text otherwise).
- A file whose name claims a format its content is not (`report.pdf` that is HTML) is
  refused with a sentence that says both; nothing is read further.
- A document clearly beyond `Limits.token_budget` raises `budget.BeyondBudget` (readers/
  budget.py), a PDF before all its pages are read.
- Every reader returns `Extracted`: sections of text, each with the label a citation
  shows (a PDF's page label, or the nearest heading of a text, Markdown, HTML or DOCX
  file), and raises `InvalidInput` with a sentence a member understands.

A new format is one module with a `read(data, limits) -> Extracted` and one entry in
READERS (and, if its name suffix is its own, in SUFFIXES).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from bot.errors import InvalidInput

Kind = Literal["pdf", "text", "markdown", "html", "docx", "epub"]
Progress = Callable[[int, int], None]

ACCEPTED = "a PDF, Word (.docx), EPUB, HTML, Markdown (.md) or plain-text (.txt) file"
PDF_HEADER_WINDOW = 1024  # generators may put junk before the header; readers accept 1 KB

# What a file's name says it is; other names (.log, .csv, none) are read as their content.
SUFFIXES: dict[str, Kind] = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".epub": "epub",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdown": "markdown",
    ".mkd": "markdown",
    ".mkdn": "markdown",
    ".txt": "text",
    ".text": "text",
}
NAMES: dict[Kind, str] = {
    "pdf": "a PDF",
    "docx": "a Word document",
    "epub": "an EPUB book",
    "html": "an HTML page",
    "markdown": "a Markdown file",
    "text": "a text file",
}


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_pages: int
    max_characters: int
    # The embedding tokens the account's balance covers (None: none to keep), and the
    # model they are counted for: a document clearly beyond it is refused from a
    # sample, before all of it is read (readers/budget.py).
    token_budget: int | None = None
    token_model: str = "text-embedding-3-small"


@dataclass(frozen=True)
class Extracted:
    kind: Kind
    pages: list[str]  # one string per section: a PDF page, or the text under one heading
    page_count: int  # physical pages of a PDF; 1 for other formats
    labels: list[str] = field(default_factory=list)  # per section: "page iv", "“Setup”"

    def label(self, section: int) -> str:
        """Where 1-based `section` is, as a citation shows it ("" when nothing says)."""
        if 0 < section <= len(self.labels):
            return self.labels[section - 1]
        return f"page {section}" if self.kind == "pdf" else ""


def suffix_kind(filename: str | None) -> Kind | None:
    if not filename:
        return None
    name = filename.strip().lower()
    dot = name.rfind(".")
    return SUFFIXES.get(name[dot:]) if dot >= 0 else None


def sniff(data: bytes) -> Kind | None:
    """The format the bytes are, or None for "not a container: decode it as text"."""
    index = data.find(b"%PDF-", 0, PDF_HEADER_WINDOW)
    if index == 0 or (index > 0 and _binary_prefix(data[:index])):
        return "pdf"
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = set(archive.namelist())
                if "word/document.xml" in names:
                    return "docx"
                if "mimetype" in names and archive.read("mimetype").strip() == (
                    b"application/epub+zip"
                ):
                    return "epub"
        except (zipfile.BadZipFile, OSError, KeyError, ValueError):
            return None
    return None


def _binary_prefix(prefix: bytes) -> bool:
    # A text file that merely mentions "%PDF-" on its first lines is still text: junk
    # before a real header is binary.
    text = prefix.decode("latin-1")
    return not prefix.strip() or any(ord(c) < 9 or 13 < ord(c) < 32 or ord(c) > 126 for c in text)


def mislabelled(claimed: Kind, found: Kind) -> str:
    return (
        f"That file is named like {NAMES[claimed]} but it is {NAMES[found]}. Please rename it "
        f"or export it again, then upload it once more. Nothing was charged."
    )


def read(data: bytes, filename: str | None, limits: Limits, progress: Progress | None) -> Extracted:
    """Sniff the format, check the name agrees, and read the text with its reader."""
    from bot.core.documents.readers import budget, docx, epub, html, pdf, text

    if not data:
        raise InvalidInput(f"That file is empty. Please upload {ACCEPTED}.")
    found = sniff(data)
    claimed = suffix_kind(filename)
    if found is None:
        if claimed in {"pdf", "docx", "epub"}:
            decoded = text.decode(data)  # what it really is, for the sentence
            actual: Kind = "html" if html.looks_like_html(decoded) else "text"
            raise InvalidInput(mislabelled(claimed, actual))
        decoded = text.decode(data)
        # Markup is never learned as text, whatever the name says.
        if claimed == "html" or html.looks_like_html(decoded):
            found = "html"
        elif claimed == "markdown":
            found = "markdown"
        else:
            found = "text"
        if found == "html":
            result = html.read_text(decoded, limits)
        else:
            result = text.read_text(decoded, found, limits)
    else:
        if claimed is not None and claimed != found:
            raise InvalidInput(mislabelled(claimed, found))
        reader = {"pdf": pdf.read, "docx": docx.read, "epub": epub.read}[found]
        result = reader(data, limits, progress)
    if not any(page.strip() for page in result.pages):
        raise InvalidInput("That file has no text in it.")
    if found != "pdf":  # a PDF is judged from sampled pages as it is read
        budget.check_text("\n".join(result.pages), limits)
    if progress is not None and found != "pdf":
        progress(0, 1)
    return result
