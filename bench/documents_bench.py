"""Documents, in one run:

(a) the upload of a generated 100-page PDF through the whole pipeline (extraction in a
    thread, chunking, metered embeddings from the fake OpenAI server with zero latency in
    its own process, chunks stored in the charge's transaction) against bare PDFium
    (pypdfium2, the upload's engine) reading the same file's pages in this process: the
    ratio, and embedding requests per 100 chunks;
(b) retrieval of the top 5 over 10,000 and 100,000 chunks of 1,536 dimensions (the
    cached, normalised matrix and `top_indices`, as a chat does it): p50 and p99;
(c) the peak memory of (a): this process's peak RSS before and after it.
"""

from __future__ import annotations

import asyncio
import random
import resource
import tempfile
import time

import numpy as np
import pypdfium2 as pdfium
from pydantic import SecretStr

from bench.metering_bench import start_fake
from bench.report import Figure, cli, median, percentile
from bot.config import Config, OpenAISettings, PlanSettings, PlansSettings, Secrets, StorageSettings
from bot.core.documents.retrieval import normalise, top_indices
from bot.core.metering import Actor
from bot.services import Services
from tests.pdfs import make_pdf

BENCH = "documents"
WORDS = (
    "ledger token agent avatar retrieval chunk embedding period balance webhook server "
    "member persona document page sentence paragraph answer question model cost plan"
).split()


def _page(rng: random.Random, number: int) -> str:
    # About 45 lines of 70 characters: a dense page of prose, ~3,000 characters.
    lines = [f"Page {number}."]
    for _ in range(45):
        words = [rng.choice(WORDS) for _ in range(10)]
        lines.append(" ".join(words).capitalize() + ".")
    return "\n".join(lines)


def _bare_extract(data: bytes) -> int:
    """The floor: PDFium's text of every page, as the reader takes it, and nothing else
    (no worker process, no normalisation, no chunking, no embedding, no storage)."""
    document = pdfium.PdfDocument(data)
    try:
        total = 0
        for index in range(len(document)):
            page = document[index]
            textpage = page.get_textpage()
            total += len(textpage.get_text_bounded())
            textpage.close()
            page.close()
        return total
    finally:
        document.close()


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def _upload(quick: bool) -> list[Figure]:
    rng = random.Random(7)
    pages = 20 if quick else 100
    data = make_pdf([_page(rng, n + 1) for n in range(pages)])
    fake, base_url = start_fake()
    figures: list[Figure] = []
    try:
        with tempfile.TemporaryDirectory(prefix="documents-bench-") as tmp:
            config = Config(
                storage=StorageSettings(database=f"{tmp}/bench.db", data_dir=f"{tmp}/data"),
                openai=OpenAISettings(base_url=base_url, max_retries=0),
                plans=PlansSettings(pro=PlanSettings(monthly_tokens=10**12, max_agents=0)),
                secrets=Secrets(openai_api_key=SecretStr("bench"), _env_file=None),
            )
            services = await Services.open(config)
            try:
                requests = 0
                embed = services.ai.embed

                async def counted(texts: list[str]):  # type: ignore[no-untyped-def]
                    nonlocal requests
                    requests += 1
                    return await embed(texts)

                services.ai.embed = counted  # type: ignore[method-assign]
                actor = Actor("guild:1", 1, 1, can_manage=True)
                await services.ledger.set_plan("guild:1", "pro", actor="bench", reason="bench")
                await services.agents.create(actor, "Nova", "You answer from documents.")
                rounds = 2 if quick else 5
                bare: list[float] = []
                piped: list[float] = []
                chunks = 0
                before = _peak_mib()
                for n in range(rounds):  # alternate, so noise falls on both alike
                    started = time.perf_counter()
                    await asyncio.to_thread(_bare_extract, data)
                    bare.append(time.perf_counter() - started)
                    requests = 0
                    started = time.perf_counter()
                    result = await services.documents.upload(actor, "Nova", f"doc{n}.pdf", data)
                    piped.append(time.perf_counter() - started)
                    chunks = result.document.chunks
                after = _peak_mib()
            finally:
                await services.close()
    finally:
        fake.kill()
        fake.wait()
    ratio = median(piped) / median(bare)
    per_100 = requests / chunks * 100
    # A document under 100 chunks needs its one request: the aim is ceil(chunks / 100).
    fewest = max(1, -(-chunks // 100))
    figures += [
        Figure(BENCH, f"bare pypdfium2, {pages} pages", median(bare) * 1e3, "ms"),
        Figure(BENCH, f"whole upload, {pages} pages ({chunks} chunks)", median(piped) * 1e3, "ms"),
        # The aim is for 100 pages; the quick run's 20 pages are below the size at which
        # the PDF process pool starts, and the fixed cost of one embedding request weighs
        # more: its ratio keeps the benchmark working, it does not answer the aim.
        Figure(
            BENCH,
            "upload / bare pypdfium2",
            ratio,
            "x",
            *(("", None) if quick else ("<= 1.3", ratio <= 1.3)),
        ),
        # The aim as checked: ceil(chunks / 100) requests, per 100 chunks (one request
        # for a 50-chunk document is 2 per 100, and meets it).
        Figure(
            BENCH,
            "embedding requests per 100 chunks",
            per_100,
            "",
            f"<= {fewest / chunks * 100:.2f} (ceil(chunks / 100) requests)",
        ),
        Figure(BENCH, "peak RSS before upload", before, "MiB"),
        Figure(BENCH, "peak RSS after upload", after, "MiB"),
    ]
    return figures


def _retrieval(quick: bool) -> list[Figure]:
    rng = np.random.default_rng(3)
    figures: list[Figure] = []
    queries = 50 if quick else 300
    for size in (10_000,) if quick else (10_000, 100_000):
        matrix = normalise(rng.standard_normal((size, 1536), dtype=np.float32))
        asks = rng.standard_normal((queries, 1536), dtype=np.float32)
        times: list[float] = []
        for query in asks:
            started = time.perf_counter()
            top_indices(matrix, query, 5)
            times.append(time.perf_counter() - started)
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            value = percentile(times, q) * 1e3
            aim = "< 20 ms" if size == 100_000 else ""
            figures.append(
                Figure(
                    BENCH,
                    f"top 5 of {size:,} x 1536, {name}",
                    value,
                    "ms",
                    aim,
                    value < 20 if aim else None,
                )
            )
        del matrix
    return figures


def run(quick: bool) -> list[Figure]:
    figures = asyncio.run(_upload(quick))  # first: (c) is this process's peak so far
    return figures + _retrieval(quick)


if __name__ == "__main__":
    cli(run)
