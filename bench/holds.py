"""Holds against real documents: for each PDF of the extraction corpus (Debian's doc
packages, installed by bench/extraction.py) and the retrieval benchmark's documents,

- the real cost of learning it: the tokens of every string the upload embeds, by the
  embedding model's own tokenizer (OpenAI bills text-embedding-3-small by cl100k_base),
  against the hold the upload places (`DocumentService.estimate`): the ratio must stay
  at or under 1;
- the early estimate a document clearly beyond the balance is refused with (pages
  sampled across it, bot/core/documents/readers/budget.py), against that real cost.

    python -m bench.holds [--json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.extraction import CORPUS, install
from bench.retrieval_quality import DOCUMENTS
from bench.retrieval_quality import PACKAGES as RETRIEVAL_PACKAGES
from bot.core.documents import extract
from bot.core.documents.chunking import chunk
from bot.core.documents.readers import budget, pdf
from bot.core.documents.service import ESTIMATE_MARGIN
from bot.core.tokens import count_tokens

MODEL = "text-embedding-3-small"


@dataclass(frozen=True)
class Row:
    document: str
    pages: int
    real: int  # tokens of every embedded string
    hold: int  # what the upload holds for it (weight 1)
    sampled: int | None  # the early estimate from sampled pages (None: too few pages)

    @property
    def cost_to_hold(self) -> float:
        return self.real / self.hold

    @property
    def sampled_to_real(self) -> float | None:
        return None if self.sampled is None else self.sampled / self.real


def measure(label: str, data: bytes, name: str) -> Row:
    extracted = extract.extract(data, max_bytes=1 << 30, max_pages=100_000, filename=name)
    chunks = chunk(extracted.pages, model=MODEL, separate_pages=extracted.kind != "pdf")
    real = sum(count_tokens(c.text, MODEL) for c in chunks)  # what the API bills
    hold = math.ceil(sum(c.tokens for c in chunks) * ESTIMATE_MARGIN)
    sampled = None
    if extracted.kind == "pdf" and extracted.page_count > budget.SAMPLE_PAGES:
        # The sample as the reader takes it: the same pages, normalised the same way.
        import pypdfium2 as pdfium

        document = pdfium.PdfDocument(data)
        count = len(document)
        try:
            indices = budget.pages_to_sample(count)
            texts = []
            for index in indices:
                page = document[index]
                textpage = page.get_textpage()
                texts.append(pdf.normalize(textpage.get_text_bounded()))
                textpage.close()
                page.close()
        finally:
            document.close()
        sampled = budget.estimate("\n".join(texts), count / len(indices), MODEL)
    return Row(label, extracted.page_count, real, hold, sampled)


def run() -> list[Row]:
    install()
    install(RETRIEVAL_PACKAGES)
    rows = []
    sources = [(label, Path(path)) for label, path in CORPUS]
    sources += [(name, Path(path)) for name, path in DOCUMENTS.items() if name != "R-intro.pdf"]
    for label, path in sources:
        if not path.exists():
            continue
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        name = path.name.removesuffix(".gz")
        rows.append(measure(label, data, name))
    return rows


def markdown(rows: list[Row]) -> str:
    lines = [
        "| document | pages | real tokens | hold | real / hold | sampled estimate / real |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        sampled = "-" if r.sampled_to_real is None else f"{r.sampled_to_real:.2f}"
        lines.append(
            f"| {r.document} | {r.pages} | {r.real:,} | {r.hold:,} | {r.cost_to_hold:.3f} "
            f"| {sampled} |"
        )
    ratios = [r.sampled_to_real for r in rows if r.sampled_to_real is not None]
    lines.append(
        f"\nLargest real cost / hold: {max(r.cost_to_hold for r in rows):.3f}. Sampled "
        f"estimate / real: {min(ratios):.2f} to {max(ratios):.2f} over {len(ratios)} PDFs."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.holds", description=__doc__)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = run()
    print(json.dumps([asdict(r) for r in rows]) if args.json else markdown(rows))


if __name__ == "__main__":
    main()
