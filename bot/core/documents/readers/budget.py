"""A document clearly beyond the account's balance, told from a sample of it before the
whole of it is read.

A 300-page PDF takes most of a minute to extract on a busy machine; when the account
could not pay for a tenth of it, the member should hear so at once. The reader samples
pages spread over the document (or slices of a long text), counts their real tokens,
and scales by the page count: what the chunks of the whole would cost. Past
`CLEARLY` times what the balance covers, it refuses with that estimate
(`BeyondBudget`); nearer the line it reads on, and the exact count of the chunks
decides at the hold, as it does for every upload.

Promises:
- Nothing is held or charged: this runs before any call and any hold.
- Only a document larger than its sample is judged by one (a PDF of `SAMPLE_PAGES`
  pages or fewer, a text of the sample's size, is read whole: its exact chunks decide).
- The estimate is of the chunks' tokens: the text's tokens plus the overlap each chunk
  repeats from the one before.
"""

from __future__ import annotations

import math

from bot.core.documents.chunking import DEFAULT_OVERLAP_TOKENS, DEFAULT_TARGET_TOKENS
from bot.core.documents.readers import Limits
from bot.core.tokens import count_tokens

SAMPLE_PAGES = 16
# Slices of a long text: SAMPLE_SLICES of SLICE_CHARS each, spread over it.
SAMPLE_SLICES = 16
SLICE_CHARS = 4_000
# Sampled pages miss some of a document's density (a dense index, sparse title pages):
# on 12 of Debian's doc-package PDFs the estimate fell within 0.70x-1.20x of the real
# cost (`python -m bench.holds`, docs/benchmarks.md). Refusing only past twice the
# balance keeps every document that might fit on the exact path.
CLEARLY = 2.0
# Each chunk repeats the end of the previous one: chunk tokens per token of text.
OVERLAP_FACTOR = DEFAULT_TARGET_TOKENS / (DEFAULT_TARGET_TOKENS - DEFAULT_OVERLAP_TOKENS)


class BeyondBudget(Exception):
    """The document would cost about `estimate` tokens (the embedding model's own,
    unweighted), clearly more than the balance covers."""

    def __init__(self, estimate: int) -> None:
        super().__init__(f"about {estimate} tokens")
        self.estimate = estimate


def estimate(sample: str, scale: float, model: str) -> int:
    """The chunks' tokens of a document whose `sample` is 1/`scale` of it."""
    return math.ceil(count_tokens(sample, model) * scale * OVERLAP_FACTOR)


def check(sample: str, scale: float, limits: Limits) -> None:
    """Raise BeyondBudget when the document that `sample` stands for is clearly beyond
    `limits.token_budget` (None: no budget to keep, as in tests and tools)."""
    if limits.token_budget is None:
        return
    tokens = estimate(sample, scale, limits.token_model)
    if tokens > CLEARLY * limits.token_budget:
        raise BeyondBudget(tokens)


def pages_to_sample(count: int) -> list[int]:
    """0-based indices of the pages a document of `count` pages is judged by: spread
    evenly, first page included."""
    if count <= SAMPLE_PAGES:
        return list(range(count))
    return sorted({i * count // SAMPLE_PAGES for i in range(SAMPLE_PAGES)})


def check_text(text: str, limits: Limits) -> None:
    """The same for a whole text (text, Markdown, HTML, DOCX, EPUB): slices spread over
    a long one, so that no tokenizer pass over megabytes runs before the refusal."""
    if limits.token_budget is None or len(text) <= SAMPLE_SLICES * SLICE_CHARS:
        return
    step = len(text) // SAMPLE_SLICES
    sample = "\n".join(text[i * step : i * step + SLICE_CHARS] for i in range(SAMPLE_SLICES))
    check(sample, len(text) / len(sample), limits)
