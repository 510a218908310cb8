"""Document text extraction from untrusted bytes: the limits and the entry point.

The formats and their rules live in bot/core/documents/readers/ (one module each); the
upload path runs them in worker processes (bot/core/documents/workers.py), bounded in
time and memory. `extract` reads in this process: for tests, benchmarks and tools.

Limits: at most `max_bytes` of file, `max_pages` PDF pages, and MAX_PDF_TEXT_CHARS
characters of text (real documents of 300 pages hold about 3 million): a small file
that expands to gigabytes of text is refused as too much content, and quickly.
"""

from __future__ import annotations

from bot.core.documents.readers import ACCEPTED, Extracted, Kind, Limits, Progress, read
from bot.core.sizes import readable_size
from bot.errors import InvalidInput

__all__ = ["ACCEPTED", "MAX_PDF_TEXT_CHARS", "Extracted", "Kind", "Progress", "extract", "limits"]

MAX_PDF_TEXT_CHARS = 10_000_000


def limits(
    max_bytes: int,
    max_pages: int,
    token_budget: int | None = None,
    token_model: str = "text-embedding-3-small",
) -> Limits:
    """The limits of one document (read at call time, so a test may lower the text's)."""
    return Limits(max_bytes, max_pages, MAX_PDF_TEXT_CHARS, token_budget, token_model)


def check_size(data: bytes, max_bytes: int) -> None:
    if not data:
        raise InvalidInput(f"That file is empty. Please upload {ACCEPTED}.")
    if len(data) > max_bytes:
        limit = readable_size(max_bytes)
        raise InvalidInput(f"That file is larger than {limit}; documents can be at most {limit}.")


def extract(
    data: bytes,
    *,
    max_bytes: int,
    max_pages: int,
    filename: str | None = None,
    progress: Progress | None = None,
) -> Extracted:
    """Read the text of a document; raise `InvalidInput` to refuse it. Blocking."""
    check_size(data, max_bytes)
    return read(data, filename, limits(max_bytes, max_pages), progress)
