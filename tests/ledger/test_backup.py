"""`python -m bot ledger backup PATH` while the ledger is being written (issue 16, point
7): the copy is one consistent snapshot, restores, and verifies clean."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from ledger import Ledger
from tests.children import bot_env

ACCOUNTS = [f"guild:{n}" for n in range(1, 9)]


async def _load(ledger: Ledger, stop: asyncio.Event) -> int:
    """Reserve and commit on every account until told to stop; returns the calls made."""
    made = 0
    while not stop.is_set() or made < 50:
        account = ACCOUNTS[made % len(ACCOUNTS)]
        hold = await ledger.reserve(account, 100, "chat", 1, 1, "m")
        await ledger.commit(hold, 37 + made % 50)
        made += 1
        if made >= 5_000:  # bounded whatever the machine's speed
            break
    return made


async def _cli(*argv: str, database: Path) -> subprocess.CompletedProcess[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=bot_env(BOT_STORAGE__DATABASE=str(database)),
        cwd=database.parent,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return subprocess.CompletedProcess(argv, process.returncode, out.decode(), err.decode())


def _charged(database: Path) -> int:
    with closing(sqlite3.connect(database)) as conn:
        return int(
            conn.execute("SELECT COALESCE(SUM(tokens_used), 0) FROM token_usage").fetchone()[0]
        )


async def test_a_backup_taken_under_load_restores_and_verifies_clean(tmp_path: Path) -> None:
    live = tmp_path / "live" / "bot.db"
    copy = tmp_path / "backup.db"
    async with await Ledger.open(live) as ledger:
        stop = asyncio.Event()
        load = asyncio.gather(*(_load(ledger, stop) for _ in range(4)))
        done = await _cli("ledger", "backup", str(copy), database=live)
        stop.set()
        made = sum(await load)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"backup of {live} written to {copy}")
    assert made >= 200
    # Restore as docs/operations.md says: the copy in place of the database, then verify.
    restored = tmp_path / "restored" / "bot.db"
    restored.parent.mkdir()
    shutil.copyfile(copy, restored)
    verified = await _cli("ledger", "verify", "--full", database=restored)
    assert (verified.returncode, verified.stdout) == (0, "ledger ok\n"), verified.stdout
    # A snapshot of one moment: some of the load, not all of it, and nothing torn.
    assert 0 < _charged(restored) <= _charged(live)


async def test_a_backup_never_overwrites(tmp_path: Path) -> None:
    live = tmp_path / "bot.db"
    async with await Ledger.open(live):
        pass
    (tmp_path / "taken.db").write_text("keep me")
    done = await _cli("ledger", "backup", str(tmp_path / "taken.db"), database=live)
    assert done.returncode == 2 and "already exists" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert (tmp_path / "taken.db").read_text() == "keep me"
