"""The extraction pool (issue 10, finding 6): a worker process per document, a wall-clock
deadline, a memory bound, and at most `per_account` workers for one account."""

from __future__ import annotations

import asyncio
import sys

import pytest

from bot.core.documents.readers import Limits
from bot.core.documents.workers import TOO_COMPLEX, ExtractionPool, WorkerLimits
from bot.errors import InvalidInput
from tests.hostile import pdf_cmap_bomb, pdf_form_bomb
from tests.pdfs import make_pdf

LIMITS = Limits(10 * 1024 * 1024, 300, 10_000_000)
# A stand-in reader that never answers: sleeps until killed.
SLEEPER = [sys.executable, "-c", "import sys, time; sys.stdin.buffer.read(); time.sleep(60)"]


async def test_a_document_is_read_in_a_worker_with_its_pages_reported() -> None:
    pool = ExtractionPool(WorkerLimits())
    seen: list[tuple[int, int]] = []
    result = await pool.extract(
        "guild:1", make_pdf(["One.", "Two."]), "a.pdf", LIMITS, lambda i, n: seen.append((i, n))
    )
    assert result.pages == ["One.", "Two."] and result.labels == ["page 1", "page 2"]
    assert seen == [(0, 2), (1, 2)]


async def test_the_cmap_bomb_is_read_well_within_its_deadline() -> None:
    # 300 pages sharing a font whose ToUnicode CMap inflates to 60 MB: PDFium parses the
    # font once; were it slow (pypdf took over a second a page), the deadline would end it.
    pool = ExtractionPool(WorkerLimits(deadline_seconds=20))
    result = await pool.extract("guild:1", pdf_cmap_bomb(), "cmap.pdf", LIMITS)
    assert result.page_count == 300


async def test_a_worker_past_its_deadline_is_killed_and_the_file_refused() -> None:
    pool = ExtractionPool(WorkerLimits(deadline_seconds=0.5), command=SLEEPER)
    with pytest.raises(InvalidInput) as refused:
        await pool.extract("guild:1", b"%PDF-1.4", "slow.pdf", LIMITS)
    assert refused.value.user_message == TOO_COMPLEX
    assert not pool._children  # killed and reaped


async def test_a_worker_over_its_memory_bound_dies_and_the_file_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # One page drawing a 100 KB text form 5,000 times: PDFium would take gigabytes. The
    # worker's address space ends it long before the (generous) deadline. A bound of 256 MB
    # (a document of megabytes reads within it) is reached in a quarter of the time of 1 GB.
    pool = ExtractionPool(WorkerLimits(deadline_seconds=300, memory_bytes=256 * 1024 * 1024))
    with pytest.raises(InvalidInput) as refused:
        await pool.extract("guild:1", pdf_form_bomb(), "form.pdf", LIMITS)
    assert refused.value.user_message == TOO_COMPLEX
    assert "ended without an answer" in caplog.text  # it died; the deadline did not fire
    assert "deadline" not in caplog.text


class _Watched(ExtractionPool):
    """Tells the test when a worker has started."""

    def __init__(self, limits: WorkerLimits) -> None:
        super().__init__(limits)
        self.started = asyncio.Event()

    async def _run(self, *args: object) -> object:
        self.started.set()
        return await super()._run(*args)  # type: ignore[arg-type]


async def test_one_account_cannot_take_every_worker() -> None:
    pool = _Watched(WorkerLimits(processes=2, per_account=1, deadline_seconds=30))
    pool.command = SLEEPER  # account A's uploads never finish
    hog = [asyncio.create_task(pool.extract("guild:A", b"x", f"{n}.pdf", LIMITS)) for n in range(6)]
    await pool.started.wait()
    # A holds one worker and queues the rest; B gets the other worker at once.
    pool.command = [sys.executable, "-m", "bot.core.documents.workers"]
    result = await pool.extract("guild:B", make_pdf(["Mine."]), "b.pdf", LIMITS)
    assert result.pages == ["Mine."]
    assert len(pool._children) == 1  # still only A's one sleeper
    for task in hog:
        task.cancel()
    await asyncio.gather(*hog, return_exceptions=True)
    await pool.close()
