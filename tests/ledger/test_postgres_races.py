"""PostgreSQL has no single writer: several processes and several ledgers on one database
must still never overspend, lose an update, or leave verify anything to find."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger import InsufficientTokens, Ledger, ManualClock
from ledger.errors import StoreBusy
from ledger.storage import Connection, postgres
from tests.children import bot_env
from tests.stores import fresh_schema

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "guild:9"

WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from ledger import InsufficientTokens, Ledger

    async def main(dsn, pairs, amount):
        admitted = 0
        async with await Ledger.open(dsn) as ledger:
            for n in range(pairs):
                try:
                    hold = await ledger.reserve("guild:9", amount, "chat", user_id=n % 5)
                except InsufficientTokens:
                    continue
                await ledger.commit(hold, amount)
                admitted += 1
        print(admitted)

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    """
)

HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from ledger import Ledger

    async def main(dsn):
        ledger = await Ledger.open(dsn, lease_seconds=2)
        await ledger.reserve("guild:9", 5000, "chat")
        print("held", flush=True)
        await asyncio.Event().wait()  # until killed

    asyncio.run(main(sys.argv[1]))
    """
)


# A `run` process up to its commands sync: its sharded client, its ledger, the leader
# question that decides whether it syncs (bot/front/app.py, setup_hook).
SHARD = textwrap.dedent(
    """
    import asyncio, json, sys
    from bot.config import Config, DiscordSettings
    from bot.front.app import make_bot
    from ledger import Ledger

    async def main(dsn, shard):
        bot = make_bot(Config(discord=DiscordSettings(shard_count=2, shard_ids=[shard])))
        async with await Ledger.open(dsn) as ledger:
            print("ready", flush=True)
            sys.stdin.readline()
            leads = await ledger.lead("commands")
            print(json.dumps({"shards": bot.shard_ids, "syncs": leads}), flush=True)
            sys.stdin.readline()  # keep the lease until the test has both answers

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    async with fresh_schema() as address:
        yield address


def _child(script: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=bot_env(PYTHONPATH=str(ROOT)),
    )


async def test_four_processes_reserve_and_commit_to_the_exact_total(dsn: str) -> None:
    async with await Ledger.open(dsn) as ledger:
        await ledger.balance(ACCOUNT)  # the schema, before the workers race to it
    # 4 x 80 attempts of 1,000 against a 250,000 allowance: exactly 250 fit.
    workers = [_child(WORKER, dsn, 80, 1_000) for _ in range(4)]
    admitted = 0
    for worker in workers:
        out, err = await asyncio.to_thread(worker.communicate, timeout=120)
        assert worker.returncode == 0, err
        admitted += int(out.split()[-1])

    assert admitted == 250
    async with await Ledger.open(dsn) as ledger:
        balance = await ledger.balance(ACCOUNT)
        assert (balance.tokens_used, balance.tokens_held, balance.available) == (250_000, 0, 0)
        assert await ledger.verify(full=True) == []


async def test_grants_revokes_plan_changes_and_rollovers_from_three_ledgers_verify_clean(
    dsn: str,
) -> None:
    clock = ManualClock()
    ledgers = [await Ledger.open(dsn, clock=clock) for _ in range(3)]
    try:
        rng = random.Random(13)
        granted = 0

        async def grants(ledger: Ledger) -> None:
            nonlocal granted
            for _ in range(15):
                await ledger.grant(ACCOUNT, 1_000, "cli:op", "race")
                granted += 1_000
                try:
                    await ledger.revoke(ACCOUNT, 400, "cli:op", "race")
                    granted -= 400
                except Exception:  # a revoke never takes the bonus below zero
                    pass

        async def plans(ledger: Ledger) -> None:
            for n in range(10):
                end = clock.now() + timedelta(days=rng.randint(1, 40))
                plan = "pro" if n % 2 == 0 else "free"
                await ledger.set_plan(ACCOUNT, plan, end, actor="billing", reason="race")

        async def spend(ledger: Ledger) -> None:
            for _ in range(20):
                try:
                    hold = await ledger.reserve(ACCOUNT, 2_000, "chat", user_id=1)
                except InsufficientTokens:
                    continue
                clock.advance(days=rng.randint(0, 12))  # rollovers in between
                await ledger.commit(hold, rng.randint(0, 2_500))

        await asyncio.gather(grants(ledgers[0]), plans(ledgers[1]), spend(ledgers[2]))

        assert await ledgers[0].verify(full=True) == []
        balance = await ledgers[1].balance(ACCOUNT)
        assert balance.tokens_held == 0
        history = await ledgers[2].history(ACCOUNT, 10_000)
        assert balance.bonus_tokens == sum(e.bonus_delta for e in history)
    finally:
        for ledger in ledgers:
            await ledger.close()


async def test_a_killed_process_holds_are_freed_by_another_after_its_lease(dsn: str) -> None:
    async with await Ledger.open(dsn) as ledger:
        await ledger.balance(ACCOUNT)
    holder = _child(HOLDER, dsn)
    assert holder.stdout is not None
    line = await asyncio.to_thread(holder.stdout.readline)
    assert line.strip() == "held"
    holder.send_signal(signal.SIGKILL)
    await asyncio.to_thread(holder.wait, 30)

    # As if it ran on another host: its pid means nothing here, only its lease counts.
    clock = ManualClock(datetime.now(UTC))
    async with await Ledger.open(dsn, clock=clock) as ledger:
        await ledger.store.write(
            lambda conn: conn.execute(
                "UPDATE instances SET hostname = 'elsewhere' WHERE pid = ?", (holder.pid,)
            )
        )
        assert (await ledger.sweep()).orphaned == 0  # its 2 s lease still runs
        assert (await ledger.balance(ACCOUNT)).tokens_held == 5_000
        clock.advance(seconds=3)
        report = await ledger.sweep()
        assert (report.orphaned, report.tokens_freed) == (1, 5_000)
        balance = await ledger.balance(ACCOUNT)
        assert (balance.tokens_held, balance.tokens_used) == (0, 0)
        assert await ledger.verify(full=True) == []


async def test_incremental_verify_never_passes_a_lower_id_that_commits_late(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids are not handed out in commit order: a write that took the lower audit id can
    commit after one that took a higher id. A verify that summed through the higher id
    and recorded it would never count the late row (and report its account forever)."""
    monkeypatch.setattr(postgres, "FENCE_TIMEOUT_MS", 50)
    async with await Ledger.open(dsn) as ledger:
        await ledger.grant(ACCOUNT, 10, "cli:op", "before")
        assert await ledger.verify() == []
        took_id, finish = asyncio.Event(), asyncio.Event()

        async def slow(conn: Connection) -> None:
            await ledger.grant_in(conn, ACCOUNT, 1_000, "cli:op", "slow")
            took_id.set()
            await finish.wait()

        slow_write = asyncio.create_task(ledger.store.write(slow))
        try:
            await took_id.wait()
            await ledger.grant("guild:10", 7, "cli:op", "quick")  # a higher id, committed first
            with pytest.raises(StoreBusy):  # the fence waits for the open write, not past it
                await ledger.verify()
        finally:
            finish.set()
            await slow_write

        assert await ledger.verify() == []
        assert await ledger.verify() == []  # from the checkpoint the run above recorded
        assert (await ledger.balance(ACCOUNT)).bonus_tokens == 1_010


async def test_incremental_verifies_stay_clean_while_writers_run(dsn: str) -> None:
    clock = ManualClock()
    ledgers = [await Ledger.open(dsn, clock=clock) for _ in range(2)]
    try:
        await ledgers[0].verify()
        running = True
        rng = random.Random(7)

        async def write(ledger: Ledger, account: str) -> None:
            for _ in range(12):
                await ledger.grant(account, 100, "cli:op", "race")
                hold = await ledger.reserve(account, 50, "chat", user_id=1)
                await ledger.commit(hold, rng.randint(0, 60))

        async def verify() -> list[str]:
            found = []
            while running:
                found += [str(v) for v in await ledgers[1].verify()]
            return found

        checking = asyncio.create_task(verify())
        await asyncio.gather(*(write(ledgers[n % 2], f"guild:{n}") for n in range(4)))
        running = False
        assert await checking == []
        assert await ledgers[0].verify() == []
        assert await ledgers[0].verify(full=True) == []
    finally:
        for ledger in ledgers:
            await ledger.close()


async def test_two_shard_processes_share_one_database_and_one_of_them_syncs(dsn: str) -> None:
    async with await Ledger.open(dsn) as ledger:
        await ledger.balance(ACCOUNT)  # the schema, before the processes start
    shards = [_child(SHARD, dsn, shard) for shard in (0, 1)]
    try:
        for proc in shards:
            assert proc.stdout is not None and proc.stdin is not None
            ready = await asyncio.to_thread(proc.stdout.readline)
            assert ready == "ready\n", proc.communicate()[1]
        answers = []
        for proc in shards:  # both asked at once, both still running
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in shards:
            assert proc.stdout is not None
            answers.append(json.loads(await asyncio.to_thread(proc.stdout.readline)))
        assert [a["shards"] for a in answers] == [[0], [1]]
        assert sorted(a["syncs"] for a in answers) == [False, True]  # exactly one syncs
        for proc in shards:
            _, err = await asyncio.to_thread(proc.communicate, "\n", 60)
            assert proc.returncode == 0, err
    finally:
        for proc in shards:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
