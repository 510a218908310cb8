"""Several OS processes on one database file: no overspend, no lock errors escaping, and
the holds of a killed process released once its lease lapses (never a live one's)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger import Ledger, ManualClock
from tests.children import bot_env
from tests.stores import execute, query

ACCOUNT = "guild:1"

# Opens the ledger, says "ready", waits for "go" so both processes start together, then
# reserves and commits; reports what it committed and every unexpected exception.
WORKER = textwrap.dedent(
    """
    import asyncio, json, sys, traceback
    from ledger import InsufficientTokens, Ledger

    async def main(path, operations, workers):
        report = {"committed": 0, "charges": 0, "refused": 0, "errors": []}
        try:
            async with await Ledger.open(path) as ledger:
                print("ready", flush=True)
                sys.stdin.readline()

                async def worker(w):
                    for i in range(operations // workers):
                        try:
                            hold = await ledger.reserve("guild:1", 1000, "chat", user_id=w)
                        except InsufficientTokens:
                            report["refused"] += 1
                            continue
                        actual = 500 + (i * 37 + w * 11) % 501
                        result = await ledger.commit(hold, actual)
                        if not result.first or result.charged != actual:
                            report["errors"].append(f"odd commit {result}")
                        report["committed"] += actual
                        report["charges"] += 1

                results = await asyncio.gather(
                    *(worker(w) for w in range(workers)), return_exceptions=True
                )
                for r in results:
                    if isinstance(r, BaseException):
                        report["errors"].append(repr(r))
        except BaseException:
            report["errors"].append(traceback.format_exc())
        print(json.dumps(report), flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    """
)

# Reserves `amount`, says "reserved <hold id>", then blocks on standard input. Its clock
# runs `behind` seconds late, so its lease can be made to look lapsed to the wall clock.
HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime, timedelta
    from ledger import Ledger

    class Late:
        def __init__(self, seconds):
            self.delta = timedelta(seconds=seconds)

        def now(self):
            return datetime.now(UTC) - self.delta

    async def main(path, amount, lease, behind):
        ledger = await Ledger.open(path, clock=Late(behind), lease_seconds=lease)
        try:
            hold = await ledger.reserve("guild:1", amount, "chat")
            print("reserved", hold.hold_id, flush=True)
            sys.stdin.readline()
        finally:
            await ledger.close()

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])))
    """
)


def _env(database: str) -> dict[str, str]:
    return bot_env(BOT_STORAGE__DATABASE=database)


class Children:
    """Child processes of one test; every one still running at the end is killed. Their
    database is a SQLite file, or a PostgreSQL address."""

    def __init__(self, tmp_path: Path, database: str) -> None:
        self.tmp_path = tmp_path
        self.database = database
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, script: str, *args: object) -> subprocess.Popen[str]:
        path = self.tmp_path / f"child{len(self.procs)}.py"
        path.write_text(script)
        proc = subprocess.Popen(
            [sys.executable, str(path), self.database, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.tmp_path,
            env=_env(self.database),
        )
        self.procs.append(proc)
        return proc

    def race(self, count: int, script: str, *args: object) -> list[dict[str, Any]]:
        """Start `count` copies of a worker that prints "ready", release them together
        with "go", and return the JSON report each prints last."""
        procs = [self.start(script, *args) for _ in range(count)]
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n", proc.communicate()[1]
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports

    def hold(
        self, amount: int, lease: float, behind: float = 0
    ) -> tuple[subprocess.Popen[str], str]:
        proc = self.start(HOLDER, amount, lease, behind)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("reserved "):
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"holder did not reserve: {line!r} {err}")
        return proc, line.split()[1]

    def kill(self, proc: subprocess.Popen[str]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.fixture
def children(tmp_path: Path, database: str) -> Iterator[Children]:
    """On each store in turn (the `database` fixture of tests/conftest.py)."""
    kids = Children(tmp_path, database)
    try:
        yield kids
    finally:
        kids.close()


async def _status(database: str, hold_id: str) -> str:
    ((status,),) = await query(database, "SELECT status FROM holds WHERE hold_id = ?", (hold_id,))
    return str(status)


async def test_two_processes_never_overspend(children: Children, database: str) -> None:
    async with await Ledger.open(database) as ledger:
        await ledger.record(ACCOUNT, "avatar_upload")  # create the account and the schema

    # 2 x 200 reserves of 1,000, committing 500..1,000 each: far more than 250,000.
    reports = children.race(2, WORKER, 200, 4)

    assert [r["errors"] for r in reports] == [[], []]
    committed = sum(r["committed"] for r in reports)
    assert all(r["charges"] > 0 for r in reports)
    assert sum(r["refused"] for r in reports) > 0  # the allowance did run out
    async with await Ledger.open(database) as ledger:
        balance = await ledger.balance(ACCOUNT)
        assert balance.tokens_used == committed
        assert committed <= 250_000
        assert balance.tokens_held == 0
        assert await ledger.verify() == []


async def test_a_killed_process_holds_are_released_after_its_lease_lapses(
    children: Children, database: str
) -> None:
    dead, dead_hold = children.hold(5_000, lease=60)
    live, live_hold = children.hold(7_000, lease=3_600)

    # While both run, another instance's sweep (on the wall clock) touches neither.
    async with await Ledger.open(database) as ledger:
        report = await ledger.sweep()
        assert (report.expired, report.orphaned, report.tokens_freed) == (0, 0, 0)
        assert (await ledger.balance(ACCOUNT)).tokens_held == 12_000
        assert await ledger.verify() == []

    children.kill(dead)
    assert await _status(database, dead_hold) == "pending"
    # As if it had run on another machine: its pid tells us nothing, only the lease does.
    await _move_to_another_host(database, dead.pid)
    async with await Ledger.open(database) as ledger:
        report = await ledger.sweep()
        assert (report.orphaned, report.tokens_freed) == (0, 0)

    # Past the dead one's 60 s lease, well within the live one's hour.
    later = ManualClock(datetime.now(UTC) + timedelta(seconds=600))
    async with await Ledger.open(database, clock=later) as ledger:
        report = await ledger.sweep()
        assert (report.expired, report.orphaned, report.tokens_freed) == (0, 1, 5_000)
        again = await ledger.sweep()
        assert (again.orphaned, again.tokens_freed) == (0, 0)
        balance = await ledger.balance(ACCOUNT)
        assert (balance.tokens_held, balance.tokens_used) == (7_000, 0)
        assert await ledger.verify() == []
    assert await _status(database, dead_hold) == "expired"
    assert await _status(database, live_hold) == "pending"
    assert live.poll() is None

    # The live one can still settle its own hold.
    assert live.stdin is not None
    live.stdin.write("\n")
    live.stdin.flush()
    _, err = live.communicate(timeout=30)
    assert live.returncode == 0, err
    assert await _status(database, live_hold) == "expired"  # closed cleanly: its holds expired


async def test_a_dead_process_on_this_host_is_swept_without_waiting_for_its_lease(
    children: Children, database: str
) -> None:
    dead, dead_hold = children.hold(5_000, lease=3_600)
    live, live_hold = children.hold(7_000, lease=3_600)
    children.kill(dead)

    # Both leases run for an hour, yet the dead pid frees its hold at once.
    async with await Ledger.open(database) as ledger:
        report = await ledger.sweep()
        assert (report.orphaned, report.tokens_freed) == (1, 5_000)
        assert (await ledger.balance(ACCOUNT)).tokens_held == 7_000
        assert await ledger.verify() == []
    assert await _status(database, dead_hold) == "expired"
    assert await _status(database, live_hold) == "pending"
    assert live.poll() is None


async def _move_to_another_host(database: str, pid: int) -> None:
    await execute(database, "UPDATE instances SET hostname = 'elsewhere' WHERE pid = ?", (pid,))


async def test_ledger_sweep_command_releases_only_a_dead_process_holds(
    children: Children, database: str, tmp_path: Path
) -> None:
    # The dead one's clock ran an hour late: its 60 s lease lapsed long before now.
    dead, dead_hold = children.hold(5_000, lease=60, behind=3_600)
    live, live_hold = children.hold(7_000, lease=60)
    children.kill(dead)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bot", "ledger", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=_env(database),
            timeout=60,
        )

    swept = cli("sweep")
    assert swept.returncode == 0, swept.stderr
    assert "released 1 holds of stopped processes and 0 expired holds (5000 tokens)" in swept.stdout
    assert await _status(database, dead_hold) == "expired"
    assert await _status(database, live_hold) == "pending"
    assert live.poll() is None

    verified = cli("verify")
    assert (verified.returncode, verified.stdout) == (0, "ledger ok\n"), verified.stderr
    balance = cli("balance", ACCOUNT, "--json")
    assert json.loads(balance.stdout)["tokens_held"] == 7_000
