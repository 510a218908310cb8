"""Pieces: what of a chunk is embedded. A chunk is what a prompt shows (about 250
tokens, enough context to answer from); it is matched by the best of its pieces (its
halves), each embedded on its own.

Why: one embedding of a whole chunk averages all it says, so a question about one of
its sentences matches it weakly. Measured with all-MiniLM-L6-v2 on three real documents
and 45 questions (bench/retrieval_quality.py, docs/benchmarks.md), matching by the best
half found more gold passages than the whole chunk's one vector, and than chunks of
half the size, which put less context in each of the five prompt slots. The halves cost
the tokens of the chunk (a few more at the cut): the bill does not grow.

Promises:
- `split(text)` gives `PARTS` pieces cut at spaces near equal lengths, or the text
  whole when it is short (under `PARTS * MIN_PIECE_TOKENS` tokens) or has no space
  to cut at; pieces are never empty, and together they hold all of the text.
- `Embedded` holds each chunk's pieces and their real tokens: the hold is their sum.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.documents.chunking import Chunk
from bot.core.tokens import count_tokens

PARTS = 2
MIN_PIECE_TOKENS = 32


@dataclass(frozen=True)
class Embedded:
    chunk: Chunk
    pieces: tuple[str, ...]
    tokens: int  # the pieces' tokens: what embedding them costs


def split(text: str, tokens: int, parts: int = PARTS) -> list[str]:
    if parts < 2 or tokens < parts * MIN_PIECE_TOKENS:
        return [text]
    out: list[str] = []
    start = 0
    for part in range(1, parts):
        middle = len(text) * part // parts
        cut = text.rfind(" ", start + 1, middle + 1)
        if cut <= start:
            cut = text.find(" ", middle)
        if cut <= start:
            break
        out.append(text[start:cut])
        start = cut + 1
    out.append(text[start:])
    pieces = [p.strip() for p in out]
    return pieces if all(pieces) else [text]


def embedded(chunks: list[Chunk], model: str, parts: int = PARTS) -> list[Embedded]:
    out = []
    for c in chunks:
        pieces = split(c.text, c.tokens, parts)
        tokens = c.tokens if len(pieces) == 1 else sum(count_tokens(p, model) for p in pieces)
        out.append(Embedded(c, tuple(pieces), tokens))
    return out
