"""The metered call: cancellation and failures release the hold; weights apply."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bot.core import metering
from bot.core.metering import Actor
from bot.services import Services
from ledger import InsufficientTokens
from tests.pdfs import make_pdf

ACTOR = Actor("guild:5", 1, 5)


async def test_cancelled_call_releases_its_hold(services: Services, fake_openai: Any) -> None:
    fake_openai.fail_next("images", "timeout")  # held until released
    task = asyncio.create_task(
        services.meter.run(
            ACTOR,
            "avatar_generation",
            5000,
            "m",
            lambda: services.ai.image("a cat"),
            cost=lambda _: 5000,
        )
    )
    while fake_openai.count("images") == 0:  # wait until the request is in flight
        await asyncio.sleep(0)
        if task.done():
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await services.meter.drain()
    balance = await services.ledger.balance(ACTOR.account_id)
    assert balance.tokens_held == 0 and balance.tokens_used == 0
    assert await services.ledger.verify() == []


async def test_refused_reserve_makes_no_call(services: Services) -> None:
    called = []

    async def call() -> int:
        called.append(1)
        return 1

    with pytest.raises(InsufficientTokens) as refused:
        await services.meter.run(ACTOR, "chat", 300_000, "m", call, cost=lambda r: r)
    assert refused.value.needed == 300_000 and refused.value.available == 250_000
    assert called == []


async def test_failure_in_store_charges_nothing(services: Services) -> None:
    async def call() -> int:
        return 100

    async def store(conn: Any, result: int) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        await services.meter.run(ACTOR, "chat", 500, "m", call, cost=lambda r: r, store=store)
    balance = await services.ledger.balance(ACTOR.account_id)
    assert balance.tokens_used == 0 and balance.tokens_held == 0


async def test_model_weight_multiplies_and_rounds_up(services: Services) -> None:
    services.config.costs.model_weights["heavy"] = 2.5

    async def call() -> int:
        return 101

    metered = await services.meter.run(
        ACTOR, "chat", 1000, "heavy", call, cost=lambda r: services.meter.weighted("heavy", r)
    )
    assert metered.charged == 253  # ceil(101 * 2.5)
    assert (await services.ledger.balance(ACTOR.account_id)).tokens_used == 253


REPOSITORY = Path(__file__).resolve().parents[2]
# Real texts of the repository (technical prose, tables, code) and other scripts: what the
# old characters-over-four estimate under-held.
REAL_TEXTS = {
    "README.md": (REPOSITORY / "README.md").read_text(encoding="utf-8"),
    "benchmarks.md": (REPOSITORY / "docs" / "benchmarks.md").read_text(encoding="utf-8"),
    "ledger.py.txt": (REPOSITORY / "ledger" / "ledger.py").read_text(encoding="utf-8"),
    "russian.txt": "Токены считаются настоящим токенизатором модели. " * 300,
    "japanese.txt": "文書はモデルの本当のトークナイザーで数えます。" * 300,
}


async def _holds(services: Services) -> list[tuple[str, int, int]]:
    rows = await services.ledger.store.reader.execute_fetchall(
        "SELECT operation_type, amount, charged FROM holds WHERE status = 'committed'"
        " ORDER BY created_at"
    )
    return [(r[0], r[1], r[2]) for r in rows]


async def test_holds_cover_the_fakes_real_token_usage(services: Services, fake_openai: Any) -> None:
    """The fake counts usage with the real tokenizers; every document and chat hold covers
    it, and a document's hold (the "about N tokens" of a refusal) is within 10% of it."""
    actor = Actor("guild:7", 1, 7, can_manage=True)
    await services.ledger.grant(actor.account_id, 5_000_000, "test", "real test documents")
    await services.agents.create(actor, "Nova", "A patient astronomer")
    fake_openai.chat_answer = "Per the excerpts, the tokens are counted for real. " * 40
    for name, body in REAL_TEXTS.items():
        await services.documents.upload(actor, "Nova", name, body.encode())
        await services.chat.ask(actor, "Nova", f"thread-{name}", f"What does {name} say?")
    await services.documents.upload(actor, "Nova", "paper.pdf", make_pdf([REAL_TEXTS["README.md"]]))
    holds = await _holds(services)
    assert [op for op, _, _ in holds].count("document_upload") == len(REAL_TEXTS) + 1
    assert [op for op, _, _ in holds].count("chat") == len(REAL_TEXTS)
    embedded = sum(c for op, _, c in holds if op == "document_upload")
    chats = sum(c for op, _, c in holds if op == "chat")
    assert embedded + chats == fake_openai.reported_tokens("embeddings") + (
        fake_openai.reported_tokens("chat")
    )
    for operation, held, charged in holds:
        assert charged <= held, (operation, held, charged)
        if operation == "document_upload":
            assert held <= charged * 1.10, (held, charged)


async def test_a_release_that_fails_is_retried_and_the_member_told_the_real_error(
    services: Services, owner: Any, fake_openai: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10, finding 8: with the file table exhausted a release failed, the member
    got "Something went wrong" and the hold's tokens stayed held until the sweep."""
    monkeypatch.setattr(metering, "RELEASE_RETRY_SECONDS", (0.0, 0.0, 0.0))
    release = services.ledger.release
    failures = [sqlite3.OperationalError("unable to open database file")] * 2

    async def flaky(hold: Any, reason: str | None = None) -> Any:
        if failures:
            raise failures.pop()
        return await release(hold, reason)

    monkeypatch.setattr(services.ledger, "release", flaky)
    await owner.run('/agent create name:Nova prompt:"An astronomer"')
    fake_openai.fail_next("images", "500")
    said = "\n".join(s.text() for s in await owner.run("/avatar generate agent:Nova"))
    assert "busy right now; nothing was charged" in said, said
    assert "Something went wrong" not in said
    await services.meter.drain()  # the retries, in the background
    assert failures == []
    balance = await services.ledger.balance("guild:1000")
    assert (balance.tokens_held, balance.tokens_used) == (0, 0)
    assert await services.ledger.verify() == []
