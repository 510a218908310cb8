"""Chunking: split page texts into overlapping passages of at most 250 tokens to embed.

Promises:
- Deterministic: the same pages always give the same chunks.
- Whitespace is normalized (runs become one space; a paragraph break becomes one
  newline) and no chunk is empty.
- Every chunk's `tokens` is `count_tokens(chunk.text, model)`, by the embedding model's
  real tokenizer, and is at most `target_tokens`; pieces are cut at paragraph boundaries
  first, then sentences, then words, and only a "word" longer than a chunk (text without
  spaces) is cut mid-word.
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
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from bot.core.tokens import count_tokens

__all__ = ["DEFAULT_OVERLAP_TOKENS", "DEFAULT_TARGET_TOKENS", "EMBEDDING_MODEL", "Chunk", "chunk"]

DEFAULT_TARGET_TOKENS = 250
DEFAULT_OVERLAP_TOKENS = 30
EMBEDDING_MODEL = "text-embedding-3-small"  # the configured default; callers pass theirs
# A first window of this many characters a token; technical text runs about 3, prose 4-5.
_CHARS_PER_TOKEN = 5

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
    tokens: int  # what embedding `text` costs, by the embedding model's tokenizer


Count = Callable[[str], int]


def chunk(
    pages: list[str],
    *,
    target_tokens: int = DEFAULT_TARGET_TOKENS,
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
    model: str = EMBEDDING_MODEL,
    separate_pages: bool = False,
) -> list[Chunk]:
    """Split `pages` (one string per page, page 1 first) into chunks of at most
    `target_tokens` tokens of `model`, each starting with up to `overlap_tokens` of the
    previous chunk's end. With `separate_pages` no chunk spans two pages: sections under
    different headings are cited apart."""
    if separate_pages:
        out: list[Chunk] = []
        for number, page_text in enumerate(pages, start=1):
            for piece in chunk(
                [page_text], target_tokens=target_tokens, overlap_tokens=overlap_tokens, model=model
            ):
                out.append(Chunk(len(out), number, piece.text, piece.tokens))
        return out
    if target_tokens < 16:
        raise ValueError("target_tokens must be at least 16")
    if not 0 <= overlap_tokens <= target_tokens // 2:
        raise ValueError("overlap_tokens must be between 0 and half of target_tokens")
    text, page_starts = _document(pages)
    count: Count = partial(count_tokens, model=model)

    chunks: list[Chunk] = []
    overlap = ""
    position, end = 0, len(text)
    while position < end:
        # The overlap and one separator come first; the new text gets the rest.
        separator = "\n" if position > 0 and text[position - 1] == "\n" else " "
        prefix = f"{overlap}{separator}" if overlap else ""
        cut, body, tokens = _next_cut(text, position, prefix, target_tokens, count)
        if body is not None:
            page = bisect_right(page_starts, position)  # 1-based: starts[0] is page 1's
            chunks.append(Chunk(len(chunks), page, body, tokens))
            overlap = _tail(body, overlap_tokens, count)
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


def _next_cut(
    text: str, position: int, prefix: str, budget: int, count: Count
) -> tuple[int, str | None, int]:
    """Where the chunk starting at `position` ends, its text (`prefix` then the new text;
    None when there is no new text) and its tokens: the longest window whose chunk is at
    most `budget` tokens, cut at its last paragraph break, else sentence end, else space,
    when that falls in the window's second half; mid-word only as the last resort."""
    length = max(1, budget * _CHARS_PER_TOKEN)
    grown = False
    while True:
        window = text[position : position + length]
        if position + len(window) >= len(text):
            cut = len(text)
        else:
            cut = position + _boundary(window)
        new = text[position:cut].strip()
        if not new:
            return cut, None, 0
        body = prefix + new
        tokens = count(body)
        if tokens <= budget and not grown and cut < len(text) and tokens * 10 < budget * 9:
            # Text denser in characters than the first guess (long words, repeated
            # letters): widen the window once, in proportion, then fit it again.
            grown = True
            length = length * budget // max(tokens, 1)
            continue
        if tokens <= budget or cut - position <= 1:
            return cut, body, tokens
        # Shrink in proportion to the excess; a token is at least one character, so the
        # loop ends, and a window that just fits is found in a few rounds.
        length = max(1, min(cut - position - 1, (cut - position) * budget // tokens))


def _boundary(window: str) -> int:
    half = len(window) // 2
    paragraph = window.rfind("\n")
    if paragraph > half:
        return paragraph
    sentence = max(window.rfind(mark) for mark in _SENTENCE_ENDS) + 1  # just after the mark
    if sentence > half:
        return sentence
    space = window.rfind(" ")
    if space > half:
        return space
    return len(window)


def _tail(text: str, budget: int, count: Count) -> str:
    """The end of `text`, at most `budget` tokens and at most half of it, starting at a
    word boundary (unless it is one long word: text without spaces)."""
    length = min(budget * _CHARS_PER_TOKEN, len(text) // 2)
    while True:
        tail = text[len(text) - length :]
        if length and not text[len(text) - length - 1].isspace():
            # The tail starts mid-word: drop that partial word if another one follows.
            space = min((i for i in (tail.find(" "), tail.find("\n")) if i >= 0), default=-1)
            if space >= 0:
                tail = tail[space + 1 :]
        tail = tail.strip()
        tokens = count(tail)
        if tokens <= budget:
            return tail
        length = max(0, min(length - 1, length * budget // tokens))
