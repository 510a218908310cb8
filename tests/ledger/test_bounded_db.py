"""A bounded database: resolved holds archived into their audit rows, the WAL emptied
and capped, free pages given back online, secure_delete off unless asked for."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from ledger import Ledger, ManualClock
from ledger import ledger as ledger_module
from ledger.storage.sqlite import JOURNAL_SIZE_LIMIT
from ledger.storage.sqlite import SqliteStore as Store


@pytest.fixture
def database(db_path: Path) -> str:
    """SQLite only: these cases tamper with (or measure) the file itself."""
    return str(db_path)


def _count(db_path: Path, sql: str) -> int:
    with closing(sqlite3.connect(db_path)) as conn:
        return int(conn.execute(sql).fetchone()[0])


async def _calls(ledger: Ledger, n: int) -> list[str]:
    ids = []
    for i in range(n):
        hold = await ledger.reserve("user:1", 1_000, "chat", user_id=i)
        if i % 3 == 2:
            await ledger.release(hold, "the API failed")
        else:
            await ledger.commit(hold, 400 + i)
        ids.append(hold.hold_id)
    return ids


async def test_archiving_keeps_every_invariant_and_refuses_a_second_resolution(
    ledger: Ledger, clock: ManualClock, db_path: Path
) -> None:
    old = await _calls(ledger, 12)
    assert await ledger.verify() == []
    clock.advance(seconds=ledger.hold_ttl.total_seconds() + 1)
    pending = await ledger.reserve("user:1", 2_000, "chat")  # never archived
    young = await _calls(ledger, 3)  # resolved within their time to live: kept
    before = await ledger.balance("user:1")

    assert await ledger.archive_holds() == 12
    left = {r for r in _hold_ids(db_path)}
    assert left == {pending.hold_id, *young}
    assert await ledger.verify() == [] and await ledger.verify(full=True) == []

    again = await ledger.commit(old[0], 999_999)  # committed, then archived
    assert (again.first, again.status, again.charged) == (False, "committed", 400)
    assert (await ledger.release(old[2])).status == "released"  # released, archived
    assert not (await ledger.release(old[2])).first
    assert await ledger.balance("user:1") == before
    assert _count(db_path, "SELECT COUNT(*) FROM token_usage") == 15
    assert await ledger.verify(full=True) == []

    await ledger.commit(pending, 1_500)
    assert await ledger.verify() == [] and await ledger.verify(full=True) == []


def _hold_ids(db_path: Path) -> list[str]:
    with closing(sqlite3.connect(db_path)) as conn:
        return [r[0] for r in conn.execute("SELECT hold_id FROM holds")]


async def test_archiving_never_takes_the_newest_hold_and_resumes_where_it_stopped(
    ledger: Ledger, clock: ManualClock, db_path: Path
) -> None:
    ids = await _calls(ledger, 5)
    clock.advance(seconds=ledger.hold_ttl.total_seconds() + 1)
    assert await ledger.archive_holds(max_batches=1) == 4
    assert _hold_ids(db_path) == [ids[-1]]  # rowids must only grow (verify's mark)
    assert await ledger.archive_holds() == 0
    newer = await _calls(ledger, 2)
    clock.advance(seconds=ledger.hold_ttl.total_seconds() + 1)
    assert await ledger.archive_holds() == 2
    assert _hold_ids(db_path) == [newer[-1]]
    assert await ledger.verify(full=True) == []


async def test_a_hold_deleted_above_the_archive_mark_is_a_violation(
    ledger: Ledger, clock: ManualClock, db_path: Path
) -> None:
    ids = await _calls(ledger, 4)
    with closing(sqlite3.connect(db_path)) as conn, conn:  # foreign keys off by default
        conn.execute("DELETE FROM holds WHERE hold_id = ?", (ids[1],))
    found = await ledger.verify(full=True)
    assert [f"audit row of hold {ids[1]} has no hold" in v.message for v in found] == [True]


async def test_checkpoint_empties_the_wal_and_never_waits_for_a_reader(
    ledger: Ledger, db_path: Path
) -> None:
    await _calls(ledger, 20)
    wal = Path(f"{db_path}-wal")
    assert wal.stat().st_size > 0
    with closing(sqlite3.connect(db_path, isolation_level=None)) as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM token_usage").fetchone()
        await _calls(ledger, 2)  # frames the open snapshot does not have
        assert (await ledger.store.checkpoint()).busy  # at once, not after busy_timeout
        reader.execute("COMMIT")
    done = await ledger.store.checkpoint()
    assert not done.busy and done.log_frames == 0 and wal.stat().st_size == 0


async def test_maintenance_empties_the_wal_once_the_writer_rests(
    ledger: Ledger, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_module, "IDLE_CHECKPOINT_SECONDS", 0.0)
    await _calls(ledger, 3)
    wal = Path(f"{db_path}-wal")
    assert wal.stat().st_size > 0
    await ledger._checkpoint_when_idle()
    assert wal.stat().st_size == 0


async def test_pragmas_bound_the_journal_and_leave_secure_delete_off(tmp_path: Path) -> None:
    for secure, expected in ((False, 0), (True, 1)):
        store = await Store.open(tmp_path / f"s{secure}.db", secure_delete=secure)
        try:
            for conn in (store.writer.raw,):
                assert conn.execute("PRAGMA secure_delete").fetchone()[0] == expected
                assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == JOURNAL_SIZE_LIMIT
                assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
            rows = await store.reader.execute_fetchall("PRAGMA secure_delete")
            assert rows[0][0] == expected
        finally:
            await store.close()


async def test_compact_gives_pages_back_online(
    ledger: Ledger, clock: ManualClock, db_path: Path
) -> None:
    await _calls(ledger, 300)
    clock.advance(seconds=ledger.hold_ttl.total_seconds() + 1)
    await ledger.store.checkpoint()  # everything in the file, to measure it
    size = db_path.stat().st_size
    report = await ledger.compact(step_pages=2)
    assert report.archived_holds == 299 and not report.converted and report.wal_emptied
    assert report.bytes_freed > 0 and db_path.stat().st_size <= size - report.bytes_freed
    assert _count(db_path, "PRAGMA freelist_count") == 0
    assert await ledger.verify(full=True) == []


async def test_compact_converts_a_database_made_without_incremental_vacuum(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA auto_vacuum=NONE")
        conn.execute("CREATE TABLE placeholder (x)")
        conn.execute("DROP TABLE placeholder")
    async with await Ledger.open(path, clock=clock) as ledger:
        await _calls(ledger, 5)
        report = await ledger.compact()
        assert report.converted
        assert (await ledger.compact()).converted is False
        assert await ledger.verify(full=True) == []
