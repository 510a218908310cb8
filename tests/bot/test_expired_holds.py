"""Work done is never free (issue 10, finding 1): a call that outlives its hold is still
charged what it cost; a long upload keeps its hold alive while it makes progress; the
console renews its lease; a worker paused with SIGSTOP past its lease is charged in full
when it resumes."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import bot.core.documents.service as documents_service
from bot.config import Config
from bot.core.ai import AIGateway
from bot.core.metering import Actor
from bot.front.console import run_console
from bot.services import Services
from ledger import Ledger, ManualClock
from tests.children import bot_env

ACCOUNT = "guild:1000"
ACTOR = Actor(ACCOUNT, 1, 1000, can_manage=True)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def timed(app_config: Config) -> AsyncIterator[tuple[Services, ManualClock]]:
    """Services whose ledger runs on a manual clock: a hold's life passes when told."""
    clock = ManualClock(datetime.now(UTC))
    ai = AIGateway(app_config.openai, "k", strict=True)
    services = await Services.open(app_config, ai=ai, clock=clock)
    try:
        yield services, clock
    finally:
        await services.close()


async def _late_rows(services: Services) -> list[tuple[str, int]]:
    rows = await services.ledger.store.reader.execute_fetchall(
        "SELECT late_hold_id, tokens_used FROM token_usage WHERE late_hold_id IS NOT NULL"
    )
    return [(r[0], int(r[1])) for r in rows]


async def test_a_chat_that_outlives_its_hold_is_charged_what_it_cost(
    timed: tuple[Services, ManualClock], fake_openai: Any
) -> None:
    services, clock = timed
    await services.agents.create(ACTOR, "Nova", "An astronomer")
    gate = fake_openai.gate("chat")  # the API slowed past the hold's life
    asked = asyncio.ensure_future(services.chat.ask(ACTOR, "Nova", "thread-1", "Hello"))
    await fake_openai.received("chat")
    clock.advance(seconds=services.config.limits.hold_ttl_seconds + 1)
    assert (await services.ledger.sweep()).expired == 1
    gate.set()
    answer = await asked

    cost = fake_openai.reported_tokens("chat")
    assert answer.charged == cost > 0
    balance = await services.ledger.balance(ACCOUNT)
    assert (balance.tokens_used, balance.tokens_held) == (cost, 0)
    assert [tokens for _, tokens in await _late_rows(services)] == [cost]
    turns = await services.repo.store.reader.execute_fetchall("SELECT COUNT(*) FROM turns")
    assert turns[0][0] == 2
    assert await services.ledger.verify() == []


async def test_a_long_upload_keeps_its_hold_alive_batch_by_batch(
    timed: tuple[Services, ManualClock], fake_openai: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch takes most of a hold's life; without the hold being pushed out after
    each one, the second batch would find it expired."""
    services, clock = timed
    monkeypatch.setattr(documents_service, "BATCH_CHUNKS", 1)
    await services.agents.create(ACTOR, "Nova", "An astronomer")
    text = "\n\n".join(f"Section {n}: " + "the orbit of a comet is long. " * 120 for n in range(6))
    gate = fake_openai.gate("embeddings")
    upload = asyncio.ensure_future(
        services.documents.upload(ACTOR, "Nova", "notes.txt", text.encode())
    )
    batches = 0
    while True:
        arrived = asyncio.ensure_future(fake_openai.received("embeddings", batches + 1))
        await asyncio.wait({upload, arrived}, return_when=asyncio.FIRST_COMPLETED)
        if upload.done():
            arrived.cancel()
            break
        batches += 1
        clock.advance(seconds=services.config.limits.hold_ttl_seconds * 0.6)
        report = await services.ledger.sweep()
        assert (report.expired, report.orphaned) == (0, 0), f"expired at batch {batches}"
        released, gate = gate, fake_openai.gate("embeddings")
        released.set()
    result = upload.result()

    assert batches >= 3
    assert result.charged == fake_openai.reported_tokens("embeddings") > 0
    assert await _late_rows(services) == []  # charged on its own hold, which never lapsed
    assert await services.ledger.verify() == []


async def test_the_console_renews_its_lease_while_a_call_runs(
    app_config: Config, tmp_path: Path, fake_openai: Any
) -> None:
    """The console used to register once and never renew: a sidecar beside it took its
    holds for a dead process's after one lease and its chats were free."""
    app_config.limits.hold_lease_seconds = 1
    services = await Services.open(app_config, ai=AIGateway(app_config.openai, "k", strict=True))
    renewed = asyncio.Event()
    renew = services.ledger.renew_lease

    async def renew_and_tell() -> None:
        await renew()
        renewed.set()

    services.ledger.renew_lease = renew_and_tell  # type: ignore[method-assign]
    sidecar = await Ledger.open(app_config.storage.database, lease_seconds=30, kind="webhooks")
    try:
        gate = fake_openai.gate("chat")
        output = io.StringIO()
        script = '/agent create name:Nova prompt:"An astronomer"\n/chat agent:Nova message:Hi\n'
        console = asyncio.ensure_future(
            run_console(
                app_config,
                user_id=1,
                guild_id=1000,
                out_dir=tmp_path / "out",
                lines=io.StringIO(script),
                output=output,
                services=services,
            )
        )
        await fake_openai.received("chat")
        renewed.clear()
        await asyncio.wait_for(renewed.wait(), timeout=30)  # renewed while the call runs
        assert (await sidecar.sweep()).orphaned == 0
        gate.set()
        assert await console == 0
        cost = fake_openai.reported_tokens("chat")
        assert f"{cost:,} tokens used" in output.getvalue()
        assert (await services.ledger.balance(ACCOUNT)).tokens_used == cost
        assert await _late_rows(services) == []
    finally:
        await sidecar.close()
        await services.close()


async def test_a_worker_paused_past_its_lease_is_charged_when_it_resumes(
    app_config: Config, tmp_path: Path, fake_openai: Any
) -> None:
    """SIGSTOP mid-chat: the sidecar's sweeper rightly sees a lapsed lease and expires the
    hold; once resumed, the worker delivers the answer, and it is charged in full."""
    database = app_config.storage.database
    env = bot_env(
        BOT_STORAGE__DATABASE=database,
        BOT_STORAGE__DATA_DIR=str(tmp_path / "data"),
        BOT_OPENAI__BASE_URL=fake_openai.base_url,
        BOT_OPENAI__MAX_RETRIES="0",
    )
    gate = fake_openai.gate("chat")
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "console",
        "--user",
        "1",
        "--guild",
        "1000",
        "--out",
        str(tmp_path / "out"),
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(ROOT)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert worker.stdin is not None
    worker.stdin.write(b'/agent create name:Nova prompt:"An astronomer"\n')
    worker.stdin.write(b"/chat agent:Nova message:Hello\n")
    await worker.stdin.drain()
    stopped = False
    try:
        await asyncio.wait_for(fake_openai.received("chat"), timeout=60)
        os.kill(worker.pid, signal.SIGSTOP)
        stopped = True
        # The sweeper's clock a minute on: the paused worker's lease has lapsed.
        later = ManualClock(datetime.now(UTC) + timedelta(minutes=1))
        async with await Ledger.open(database, clock=later, kind="webhooks") as sidecar:
            assert (await sidecar.sweep()).orphaned == 1
        os.kill(worker.pid, signal.SIGCONT)
        stopped = False
        gate.set()
        worker.stdin.close()
        out, _ = await asyncio.wait_for(worker.communicate(), timeout=60)
    finally:
        if stopped:
            os.kill(worker.pid, signal.SIGCONT)
        if worker.returncode is None:
            worker.kill()
            await worker.wait()

    cost = fake_openai.reported_tokens("chat")
    assert f"{cost:,} tokens used" in out.decode()
    async with await Ledger.open(database, kind="cli") as ledger:
        balance = await ledger.balance(ACCOUNT)
        assert (balance.tokens_used, balance.tokens_held) == (cost, 0)
        assert await ledger.verify() == []
        late = await ledger.store.reader.execute_fetchall(
            "SELECT COUNT(*) FROM token_usage WHERE late_hold_id IS NOT NULL"
        )
        assert late[0][0] == 1
