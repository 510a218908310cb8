"""Chunking: split page texts into overlapping passages of about 250 tokens to embed.

Promises:
- Deterministic: the same pages always give the same chunks.
- Whitespace is normalized (runs become one space; a paragraph break becomes one
  newline) and no chunk is empty.
- Every chunk's `token_estimate` is `estimate_tokens(chunk.text)` and is at most
  `target_tokens`; pieces are cut at paragraph boundaries first, then sentences, then
  words, and only a "word" longer than a chunk (text without spaces) is cut mid-word.
- Consecutive chunks share a small overlap (the last words of the previous chunk, at
  most `overlap_tokens`), so a sentence cut at a boundary is still found whole.
- `Chunk.page` is the 1-based page where the chunk's new text starts (the overlap
  repeated from the previous chunk does not count); chunks may run into the next page.
- Linear time: megabytes of text on one line are cut with C-level string searches,
  never word by word or with quadratic re-joining.

Pure and CPU-bound: async callers run `chunk` through `asyncio.to_thread`.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass

__all__ = ["DEFAULT_OVERLAP_TOKENS", "DEFAULT_TARGET_TOKENS", "Chunk", "chunk", "estimate_tokens"]

DEFAULT_TARGET_TOKENS = 250
DEFAULT_OVERLAP_TOKENS = 30

# A blank line (it may hold spaces or tabs) separates paragraphs.
_PARAGRAPH = re.compile(r"\n[^\S\n]*\n")
# Latin sentence ends are followed by a space; CJK full stops by nothing. The cut falls
# just after the mark.
_SENTENCE_ENDS = (". ", "! ", "? ", "… ", "。", "！", "？")


@dataclass(frozen=True)
class Chunk:
    index: int  # 0-based position in the document
    page: int  # 1-based page where the chunk's new text starts
    text: str
    token_estimate: int


def estimate_tokens(text: str) -> int:
    """A cheap, deliberately generous estimate of the tokens `text` costs to embed.

    ASCII text runs about 4 characters a token in OpenAI's tokenizers; other scripts
    run closer to one token a character, so each non-ASCII character counts as one.
    Over-counting is the safe side: the estimate sizes the hold taken before paying.
    """
    if text.isascii():
        return (len(text) + 3) // 4
    ascii_count = len(text.encode("ascii", "ignore"))
    return _estimate(ascii_count, len(text) - ascii_count)


def chunk(
    pages: list[str],
    *,
    target_tokens: int = DEFAULT_TARGET_TOKENS,
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
) -> list[Chunk]:
    """Split `pages` (one string per page, page 1 first) into chunks of at most
    `target_tokens` estimated tokens, each starting with up to `overlap_tokens` of the
    previous chunk's end."""
    if target_tokens < 16:
        raise ValueError("target_tokens must be at least 16")
    if not 0 <= overlap_tokens <= target_tokens // 2:
        raise ValueError("overlap_tokens must be between 0 and half of target_tokens")
    text, page_starts = _document(pages)

    chunks: list[Chunk] = []
    overlap = ""
    position, end = 0, len(text)
    while position < end:
        # The overlap and one separator come first; the new text gets the rest.
        budget = target_tokens - (estimate_tokens(overlap) + 1 if overlap else 0)
        cut = _next_cut(text, position, budget)
        new = text[position:cut].strip()
        if new:
            separator = "\n" if position > 0 and text[position - 1] == "\n" else " "
            body = f"{overlap}{separator}{new}" if overlap else new
            page = bisect_right(page_starts, position)  # 1-based: starts[0] is page 1's
            chunks.append(Chunk(len(chunks), page, body, estimate_tokens(body)))
            overlap = _tail(body, overlap_tokens)
        position = cut
        # Resume after the space or newline the cut stopped at.
        while position < end and text[position] in " \n":
            position += 1
    return chunks


def _document(pages: list[str]) -> tuple[str, list[int]]:
    """All pages normalized and joined by newlines, with the offset where each starts.

    Within a page a blank line separates paragraphs and becomes one newline; any other
    run of whitespace (a wrapped line, as in PDF text, tabs, spaces) becomes one space.
    `str.split` and `str.join` do the work in C, however long a line is.
    """
    parts: list[str] = []
    starts: list[int] = []
    offset = 0
    for page in pages:
        paragraphs = _PARAGRAPH.split(page.replace("\r\n", "\n").replace("\r", "\n"))
        normalized = "\n".join(
            joined for joined in (" ".join(p.split()) for p in paragraphs) if joined
        )
        if parts and normalized:
            offset += 1  # the newline that joins it to the previous page
        starts.append(offset)
        if normalized:
            parts.append(normalized)
            offset += len(normalized)
    return "\n".join(parts), starts


def _next_cut(text: str, position: int, budget: int) -> int:
    """Where the chunk starting at `position` ends: the longest window of at most
    `budget` tokens, cut at its last paragraph break, else sentence end, else space,
    when that falls in the window's second half; mid-word only as the last resort."""
    length = budget * 4  # an all-ASCII window of exactly `budget` tokens
    window = text[position : position + length]
    estimate = estimate_tokens(window)
    while estimate > budget:
        # Shrink in proportion; at `budget` characters it always fits, because no
        # character counts more than one token.
        length = max(budget, min(length - 1, length * budget // estimate))
        window = text[position : position + length]
        estimate = estimate_tokens(window)
    if position + len(window) >= len(text):
        return len(text)
    half = len(window) // 2
    paragraph = window.rfind("\n")
    if paragraph > half:
        return position + paragraph
    sentence = max(window.rfind(mark) for mark in _SENTENCE_ENDS) + 1  # just after the mark
    if sentence > half:
        return position + sentence
    space = window.rfind(" ")
    if space > half:
        return position + space
    return position + len(window)


def _tail(text: str, budget: int) -> str:
    """The end of `text`, at most `budget` tokens and at most half of it, starting at a
    word boundary (unless it is one long word: text without spaces)."""
    length = min(budget * 4, len(text) // 2)
    tail = text[len(text) - length :]
    estimate = estimate_tokens(tail)
    while estimate > budget:
        length = max(budget, min(length - 1, length * budget // estimate))
        tail = text[len(text) - length :]
        estimate = estimate_tokens(tail)
    if length and not text[len(text) - length - 1].isspace():
        # The tail starts mid-word: drop that partial word if another one follows.
        space = min((i for i in (tail.find(" "), tail.find("\n")) if i >= 0), default=-1)
        if space >= 0:
            tail = tail[space + 1 :]
    return tail.strip()


def _estimate(ascii_count: int, other: int) -> int:
    return (ascii_count + 3) // 4 + other
