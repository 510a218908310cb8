"""Documents: metered embeddings, refusals that charge nothing, all or nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bot.config import Config
from bot.front.standin import CommandRunner, StandInAttachment
from bot.services import Services
from tests.bot.conftest import GUILD
from tests.bot.helpers import text
from tests.pdfs import encrypt_pdf, make_labelled_pdf, make_pdf, make_scanned_pdf

ACCOUNT = f"guild:{GUILD}"


@pytest.fixture
def app_config(app_config: Config, database: str) -> Config:
    """On each store in turn (the `database` fixture of tests/conftest.py)."""
    storage = app_config.storage.model_copy(update={"database": database})
    return app_config.model_copy(update={"storage": storage})


def _pages(n: int) -> list[str]:
    return [
        "\n".join(
            f"Page {p} line {i}: the orbit of comet number {p * 100 + i} is long."
            for i in range(30)
        )
        for p in range(1, n + 1)
    ]


@pytest.fixture
async def nova(owner: CommandRunner) -> None:
    await owner.run('/agent create name:Nova prompt:"A patient astronomer"')


async def _upload(runner: CommandRunner, name: str, data: bytes) -> list[Any]:
    return await runner.invoke(
        ["docs", "upload"], {"agent": "Nova", "file": StandInAttachment(name, data)}
    )


async def _stored(services: Services) -> tuple[int, int]:
    rows = await services.ledger.store.reader.execute_fetchall(
        "SELECT (SELECT COUNT(*) FROM documents), (SELECT COUNT(*) FROM chunks)"
    )
    return rows[0][0], rows[0][1]


async def test_upload_charges_exactly_the_reported_embedding_tokens(
    owner: CommandRunner, services: Services, fake_openai: Any, nova: None
) -> None:
    sent = await _upload(owner, "paper.pdf", make_pdf(_pages(10)))
    body = text(sent)
    assert "✅ Learned paper.pdf" in body and "10 pages" in body
    reported = fake_openai.reported_tokens("embeddings")
    assert reported > 0
    balance = await services.ledger.balance(ACCOUNT)
    assert balance.tokens_used == reported and balance.tokens_held == 0
    assert f"Used {reported:,} tokens." in body
    edits = [s.content for s in sent if s.kind == "edit" and s.content]
    assert any("Extracting text: page" in e for e in edits)
    assert any("Embedding: batch 1 of 1" in e for e in edits)
    documents, chunks = await _stored(services)
    assert documents == 1 and chunks > 0
    assert fake_openai.count("embeddings") <= max(1, chunks // 100 + 1)
    assert await services.ledger.verify() == []


async def test_text_and_markdown_upload(
    owner: CommandRunner, services: Services, nova: None
) -> None:
    assert "Learned notes.md" in text(
        await _upload(owner, "notes.md", b"# Notes\n\nPulsars spin fast.")
    )
    latin = (
        "Café au lait, crème brûlée et tarte à la rhubarbe: le menu du déjeuner change chaque "
        "été, après la récolte des pêches."
    ).encode("latin-1")
    assert "Learned menu.txt" in text(await _upload(owner, "menu.txt", latin))
    listing = text(await owner.run("/docs list agent:Nova"))
    assert "notes.md" in listing and "menu.txt" in listing


async def test_short_on_tokens_no_embedding_request(
    owner: CommandRunner, services: Services, fake_openai: Any, nova: None
) -> None:
    hold = await services.ledger.reserve(ACCOUNT, 249_990, "chat", 1, GUILD, "m")
    await services.ledger.commit(hold, 249_990)
    sent = await _upload(owner, "paper.pdf", make_pdf(_pages(5)))
    assert "Insufficient Tokens" in text(sent) and "requires about " in text(sent)
    assert fake_openai.count("embeddings") == 0
    assert await _stored(services) == (0, 0)


async def test_a_document_clearly_beyond_the_balance_is_refused_before_its_pages_are_read(
    owner: CommandRunner, services: Services, fake_openai: Any, nova: None
) -> None:
    hold = await services.ledger.reserve(ACCOUNT, 248_000, "chat", 1, GUILD, "m")
    await services.ledger.commit(hold, 248_000)
    before = await services.ledger.balance(ACCOUNT)
    paper = make_pdf(_pages(20))
    sent = await _upload(owner, "paper.pdf", paper)
    body = text(sent)
    assert "Insufficient Tokens" in body and "requires about " in body, body
    assert f"You have {before.available:,} tokens remaining" in body
    # Judged from sampled pages: the page-by-page extraction never started.
    assert not any("Extracting text: page" in (s.content or "") for s in sent)
    assert fake_openai.count("embeddings") == 0
    assert await _stored(services) == (0, 0)
    after = await services.ledger.balance(ACCOUNT)
    assert (after.tokens_used, after.tokens_held) == (before.tokens_used, 0)
    # The estimate is the real cost, within 10%: the same file learned once it fits.
    about = int(body.split("requires about ", 1)[1].split(" ", 1)[0].replace(",", ""))
    await services.ledger.grant(ACCOUNT, 100_000, "test", "room for the paper")
    learned = text(await _upload(owner, "paper.pdf", paper))
    charged = int(learned.split("Used ", 1)[1].split(" ", 1)[0].replace(",", ""))
    assert abs(about - charged) <= 0.1 * charged, (about, charged)


async def test_a_long_text_beyond_the_balance_is_refused_from_its_size(
    owner: CommandRunner, services: Services, fake_openai: Any, nova: None
) -> None:
    hold = await services.ledger.reserve(ACCOUNT, 249_000, "chat", 1, GUILD, "m")
    await services.ledger.commit(hold, 249_000)
    sent = await _upload(owner, "notes.txt", "\n\n".join(_pages(40)).encode())
    assert "requires about " in text(sent)
    assert fake_openai.count("embeddings") == 0 and await _stored(services) == (0, 0)


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("secret.pdf", lambda: encrypt_pdf(make_pdf(["hidden"])), "password"),
        ("cut.pdf", lambda: make_pdf(_pages(3))[:200], ""),
        ("empty.txt", lambda: b"", "empty"),
        ("scan.pdf", lambda: make_scanned_pdf(2), "scanned"),
        ("photo.pdf", lambda: b"\x89PNG\r\n\x1a\n" + b"\0" * 100, ""),
        ("nul.txt", lambda: b"abc\x00def" * 100, ""),
        ("big.txt", lambda: b"a" * (10 * 1024 * 1024 + 1), "10 MB"),
    ],
)
async def test_refusals_charge_nothing_and_store_nothing(
    owner: CommandRunner,
    services: Services,
    fake_openai: Any,
    nova: None,
    name: str,
    make: Any,
    message: str,
) -> None:
    sent = await _upload(owner, name, make())
    body = text(sent)
    assert "❌" in body and message.lower() in body.lower()
    assert "Traceback" not in body
    assert fake_openai.count("embeddings") == 0
    assert await _stored(services) == (0, 0)
    balance = await services.ledger.balance(ACCOUNT)
    assert balance.tokens_used == 0 and balance.tokens_held == 0


async def test_failure_in_the_middle_leaves_nothing(
    owner: CommandRunner, services: Services, fake_openai: Any, nova: None, monkeypatch: Any
) -> None:
    import bot.core.documents.service

    monkeypatch.setattr(
        bot.core.documents.service, "BATCH_CHUNKS", 4
    )  # make three batches of a small file
    fake_openai.fail_request("embeddings", 2, "500")
    sent = await _upload(owner, "notes.txt", "\n\n".join(_pages(3)).encode())
    assert "nothing was charged" in text(sent).lower()
    assert fake_openai.count("embeddings") == 2
    assert await _stored(services) == (0, 0)
    balance = await services.ledger.balance(ACCOUNT)
    assert balance.tokens_used == 0 and balance.tokens_held == 0
    assert await services.ledger.verify() == []


async def test_remove_frees_storage_without_refund(
    owner: CommandRunner, services: Services, nova: None
) -> None:
    await _upload(owner, "notes.md", b"Pulsars spin fast.")
    used = (await services.ledger.balance(ACCOUNT)).tokens_used
    sent = await owner.run("/docs remove agent:Nova document:notes.md confirm:yes")
    assert "Removed **notes.md**" in text(sent) and "not refunded" in text(sent)
    assert await _stored(services) == (0, 0)
    assert (await services.ledger.balance(ACCOUNT)).tokens_used == used


async def _fts_consistent(services: Services) -> tuple[int, int]:
    """(chunks, index rows); FTS5's own integrity check raises if the index and the
    chunks it indexes disagree."""
    reader = services.ledger.store.reader
    if services.ledger.store.dialect == "postgresql":  # an index on chunks: always whole
        rows = await reader.execute_fetchall(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE to_tsvector('simple', text) IS NOT NULL)"
            " FROM chunks"
        )
        return rows[0][0], rows[0][1]
    await services.ledger.store.write(
        lambda conn: conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')")
    )
    rows = await reader.execute_fetchall(
        "SELECT (SELECT COUNT(*) FROM chunks), (SELECT COUNT(*) FROM chunks_fts)"
    )
    return rows[0][0], rows[0][1]


async def _matching(services: Services, word: str) -> int:
    if services.ledger.store.dialect == "postgresql":
        sql = "SELECT COUNT(*) FROM chunks WHERE to_tsvector('simple', text) @@ to_tsquery('simple', ?)"
    else:
        sql = "SELECT COUNT(*) FROM chunks_fts WHERE chunks_fts MATCH ?"
    rows = await services.ledger.store.reader.execute_fetchall(sql, (word,))
    return rows[0][0]


async def test_the_full_text_index_follows_uploads_removals_and_failures(
    owner: CommandRunner, services: Services, fake_openai: Any, nova: None, monkeypatch: Any
) -> None:
    import bot.core.documents.service

    await _upload(owner, "pulsars.md", b"Pulsars spin fast and beam radio waves.")
    await _upload(owner, "comets.md", b"Comets grow tails near the Sun.")
    chunks, indexed = await _fts_consistent(services)
    assert chunks == indexed == 2 and await _matching(services, "pulsars") == 1
    await owner.run("/docs remove agent:Nova document:pulsars.md confirm:yes")
    assert await _fts_consistent(services) == (1, 1)
    assert await _matching(services, "pulsars") == 0 and await _matching(services, "comets") == 1
    # A failed upload (the second embedding batch fails) leaves the index as it was.
    monkeypatch.setattr(bot.core.documents.service, "BATCH_CHUNKS", 4)
    fake_openai.fail_request("embeddings", 2, "500")
    sent = await _upload(owner, "notes.txt", "\n\n".join(_pages(3)).encode())
    assert "nothing was charged" in text(sent).lower()
    assert await _fts_consistent(services) == (1, 1)
    assert await _matching(services, "orbit") == 0


def _docx() -> bytes:
    from tests.test_readers import docx_bytes

    return docx_bytes()


@pytest.mark.parametrize(
    ("name", "make", "question", "cites"),
    [
        (
            "manual.html",
            lambda: (
                b"<html><head><script>var secret = 1;</script></head><body>"
                b"<h1>Setup</h1><p>Install the tripod first.</p>"
                b"<h2>Mirror care</h2><p>Clean the mirror with a soft bulb of air.</p>"
                b"</body></html>"
            ),
            "How do I clean the mirror?",
            "manual.html, “Mirror care”",
        ),
        (
            "guide.docx",
            _docx,
            "What magnification does the 25 mm eyepiece give?",
            "guide.docx, “Caring for the mirror”",
        ),
        (
            "notes.md",
            lambda: (
                b"# Setup\n\nInstall the tripod first.\n\n## Mirror care\n\nClean the mirror with air."
            ),
            "How do I clean the mirror?",
            "notes.md, “Mirror care”",
        ),
        (
            "book.pdf",
            lambda: make_labelled_pdf(
                [
                    "\n".join(["A preface about the history of telescopes and lenses."] * 40),
                    "\n".join(["Contents: chapters on optics, mounts and eyepieces."] * 40),
                    "\n".join(["Chapter one is about mounts and tripods."] * 60)
                    + "\nThe mirror is cleaned with a soft bulb of air.",
                ],
                b"0 << /S /r >> 2 << /S /D >>",
            ),
            "How is the mirror cleaned?",
            "book.pdf, page 1",
        ),
    ],
)
async def test_each_format_is_learned_and_cited_where_the_answer_is(
    owner: CommandRunner,
    services: Services,
    fake_openai: Any,
    nova: None,
    name: str,
    make: Any,
    question: str,
    cites: str,
) -> None:
    assert "✅ Learned" in text(await _upload(owner, name, make()))

    def answer(messages: list[dict[str, Any]]) -> str:
        # Cite the excerpt that holds the answer, by its number, as the prompt asks.
        system = messages[0]["content"]
        for number in range(1, 6):
            start = system.find(f"[{number}] ")
            if start >= 0 and cites in system[start : system.find("\n", start)]:
                return f"Here is how [{number}]."
        return "I do not know."

    fake_openai.chat_answer = answer
    sent = await owner.run(f'/chat agent:Nova message:"{question}"')
    body = text(sent)
    assert "Here is how" in body, body
    assert f"Sources: {cites}\n" in body  # the cited excerpt only
    system = fake_openai.completed("chat")[-1].body["messages"][0]["content"]
    assert "secret" not in system and "<" not in system.split("[1]", 1)[1]


async def test_a_mislabelled_file_is_refused_and_nothing_is_charged(
    owner: CommandRunner, services: Services, fake_openai: Any, nova: None
) -> None:
    page = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>"
    body = text(await _upload(owner, "report.pdf", page))
    assert "named like a PDF but it is an HTML page" in body and "Nothing was charged" in body
    assert fake_openai.count("embeddings") == 0 and await _stored(services) == (0, 0)
    assert (await services.ledger.balance(ACCOUNT)).tokens_used == 0


async def test_concurrent_uploads_never_pass_the_chunk_cap(
    owner: CommandRunner, services: Services, fake_openai: Any, nova: None
) -> None:
    """Issue 10, finding 10: four uploads at once all passed the early check. The commit
    checks the cap again, in its transaction: two fit, two are refused and pay nothing."""
    document = "\n\n".join(_pages(3)).encode()
    await _upload(owner, "first.txt", document)
    _, per_document = await _stored(services)
    assert per_document > 1
    await owner.run("/docs remove agent:Nova document:first.txt confirm:yes")
    services.config.limits.max_chunks_per_account = 2 * per_document
    before = fake_openai.count("embeddings")
    gate = fake_openai.gate("embeddings")
    # The gate holds the first request while the other three are read, one worker per
    # account at a time: on a loaded machine that outlasts the suite's 2 s request timeout.
    services.ai.client.timeout = 60.0
    uploads = [asyncio.ensure_future(_upload(owner, f"copy{n}.txt", document)) for n in range(4)]
    await fake_openai.received("embeddings", before + 4)  # all four past the early check
    gate.set()
    told = [text(await upload) for upload in uploads]
    assert sum("✅ Learned" in t for t in told) == 2
    assert sum("Nothing was charged" in t for t in told) == 2, told
    documents, chunks = await _stored(services)
    assert (documents, chunks) == (2, 2 * per_document)
    charges = [e.tokens_used for e in await services.ledger.history(ACCOUNT) if e.tokens_used]
    assert len(charges) == 3 and len(set(charges)) == 1  # the first upload, the two stored
    balance = await services.ledger.balance(ACCOUNT)
    assert balance.tokens_held == 0 and balance.tokens_used == sum(charges)
    assert await services.ledger.verify() == []
