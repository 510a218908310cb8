"""Costs that must grow with the right thing (issue 17), each "before" measured in the
same run as "after" so the ratios share the machine's load:

- the /tokens view (balance + usage by operation) on one account of 200, 10^4, 10^5
  audit rows (200 of them in the current period), and of 10^5 rows with 10^4 in the
  current period: read from the period counters, and the old way (the period's rows
  summed through the covering period index), all interleaved in one loop;
- export and verify of a 10^6-row ledger against a bare sqlite3+csv floor; the
  incremental verify after 1,000 new calls;
- the largest WAL and the pair p99 while another process exports that ledger (paged, and
  the old single-snapshot read);
- the slowest paid call while a 20k-chunk document is deleted (batched, and the old
  single DELETE with secure_delete on).

The ledger is built with bulk SQL (`_build`), consistent by construction, and checked
by the full verify it times. `--quick` (CI) uses sizes small enough to take seconds.
"""

from __future__ import annotations

import asyncio
import csv
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import aiosqlite

from bench.report import Figure, cli, median, percentile
from ledger import Ledger, Plan
from ledger.queries import _USAGE_COLUMNS
from ledger.schema import MIGRATIONS
from ledger.storage.migrate import split_statements

PLANS = {"free": Plan("free", 10**15, 3), "pro": Plan("pro", 10**15, 0)}
ACCOUNTS = 10_000
CHARGE = 700
NOW = "2026-06-01T00:00:00.000000Z"
EXPORT_REPEATS = 3
START, END = "2026-05-20T00:00:00.000000Z", "2099-01-01T00:00:00.000000Z"


# ---- building ledgers with bulk SQL ------------------------------------------------------


async def _schema(path: Path) -> None:
    async with await Ledger.open(path, PLANS):
        pass


def _fill_totals(conn: sqlite3.Connection) -> None:
    """The usage counters of rows written around the ledger: migration 10's own fill."""
    conn.execute("DELETE FROM usage_totals")
    (fill,) = [s for s in split_statements(MIGRATIONS[9]) if s.startswith("INSERT")]
    conn.execute(fill)


def _build(path: Path, rows: int, accounts: int = ACCOUNTS) -> float:
    """`rows` committed holds with their audit rows over `accounts` accounts, counters
    set to match: what a ledger looks like after `rows` paid calls."""
    asyncio.run(_schema(path))
    started = time.perf_counter()
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ? - 1)"
            " INSERT INTO usage_limits (account_id, plan_type, tokens_limit, tokens_used,"
            " period_start, period_end, period_anchor, created_at, updated_at)"
            " SELECT 'guild:' || i, 'pro', 1000000000000000, ? * ((? - i + ? - 1) / ?),"
            " ?, ?, ?, ?, ? FROM n",
            (accounts, CHARGE, rows, accounts, accounts, START, END, START, NOW, NOW),
        )
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ? - 1)"
            " INSERT INTO holds (hold_id, account_id, operation_type, model_used, amount,"
            " status, charged, instance_id, created_at, expires_at, resolved_at)"
            " SELECT printf('bench%010d', i), 'guild:' || (i % ?), 'chat', 'gpt-5.4-mini',"
            " 1000, 'committed', ?, 'bench', ?, '2099-01-01T00:00:00.000000Z', ? FROM n",
            (rows, accounts, CHARGE, NOW, NOW),
        )
        conn.execute(
            "INSERT INTO token_usage (account_id, operation_type, model_used, tokens_used,"
            " status, hold_id, period_seq, details, created_at, hold_amount)"
            " SELECT account_id, operation_type, model_used, charged, 'charged', hold_id, 1,"
            " 'bench', created_at, amount FROM holds ORDER BY rowid"
        )
        _fill_totals(conn)
        conn.execute("COMMIT")
    return time.perf_counter() - started


def _build_account_history(path: Path, rows: int, current: int = 200) -> None:
    """One account whose `rows` audit rows are spread over two years of periods, the
    last `current` of them in the period it is in now."""
    asyncio.run(_schema(path))
    periods = 24
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO usage_limits (account_id, plan_type, tokens_limit, tokens_used,"
            " period_start, period_end, period_anchor, period_seq, created_at, updated_at)"
            " VALUES ('guild:1', 'pro', 1000000000000000, ?, '2026-05-20T00:00:00.000000Z',"
            " '2099-01-01T00:00:00.000000Z', '2024-05-20T00:00:00.000000Z', ?, ?, ?)",
            (current * CHARGE, periods + 1, NOW, NOW),
        )
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ? - 1)"
            " INSERT INTO token_usage (account_id, operation_type, model_used, tokens_used,"
            " status, period_seq, created_at)"
            " SELECT 'guild:1', CASE i % 3 WHEN 0 THEN 'chat' WHEN 1 THEN 'document_upload'"
            " ELSE 'avatar_generation' END, 'gpt-5.4-mini', ?, 'charged',"
            " CASE WHEN i >= ? THEN ? ELSE 1 + i * ? / ? END, ? FROM n",
            (rows, CHARGE, rows - current, periods + 1, periods, max(1, rows - current), NOW),
        )
        _fill_totals(conn)
        conn.execute("COMMIT")


# ---- the /tokens view ----------------------------------------------------------------------


async def _old_usage_by_operation(ledger: Ledger, account: str) -> dict[str, int]:
    """The read before the counters: the period's charge rows, summed through the
    covering period index (migration 8)."""
    conn = ledger.store.reader
    row = (
        await conn.execute_fetchall(
            "SELECT period_seq FROM usage_limits WHERE account_id = ?", (account,)
        )
    )[0]
    rows = await conn.execute_fetchall(
        "SELECT operation_type, SUM(tokens_used) FROM token_usage WHERE account_id = ?"
        " AND period_seq = ? AND status = 'charged' GROUP BY operation_type ORDER BY 2 DESC",
        (account, row[0]),
    )
    return {r[0]: int(r[1]) for r in rows}


async def _tokens_views(paths: list[Path], reps: int) -> dict[tuple[int, bool], float]:
    """Median ms of the /tokens view's reads (balance, usage by operation) on each
    ledger, the old read and the counters, interleaved sample by sample so that the
    machine's noise falls on every size alike."""
    ledgers = [await Ledger.open(path, PLANS) for path in paths]
    samples: dict[tuple[int, bool], list[float]] = {
        (i, old): [] for i in range(len(paths)) for old in (True, False)
    }
    try:
        for ledger in ledgers:  # warm: the first reads pay for opening and the page cache
            for _ in range(5):
                await ledger.usage_by_operation("guild:1")
                await _old_usage_by_operation(ledger, "guild:1")
        for _ in range(reps):
            for i, ledger in enumerate(ledgers):
                for old in (True, False):
                    started = time.perf_counter()
                    await ledger.balance("guild:1")
                    if old:
                        await _old_usage_by_operation(ledger, "guild:1")
                    else:
                        await ledger.usage_by_operation("guild:1")
                    samples[(i, old)].append((time.perf_counter() - started) * 1000)
    finally:
        for ledger in ledgers:
            await ledger.close()
    return {key: median(values) for key, values in samples.items()}


def _tokens_view(folder: Path, sizes: tuple[int, ...]) -> list[Figure]:
    paths = []
    for rows in sizes:
        paths.append(folder / f"history-{rows}.db")
        _build_account_history(paths[-1], rows)
    busy = sizes[-1] // 10  # a busy period: a tenth of the history in the current one
    paths.append(folder / "history-busy.db")
    _build_account_history(paths[-1], sizes[-1], current=busy)
    found = asyncio.run(_tokens_views(paths, 300))
    figures: list[Figure] = []
    for i, rows in enumerate(sizes):
        for old in (True, False):
            label = "before (period index)" if old else "after (period counters)"
            figures.append(
                Figure("cost", f"/tokens view at {rows:,} rows, {label}", found[(i, old)], "ms")
            )
    for old in (True, False):
        label = "before (period index)" if old else "after (period counters)"
        figures.append(
            Figure(
                "cost",
                f"/tokens view at {sizes[-1]:,} rows, {busy:,} this period, {label}",
                found[(len(sizes), old)],
                "ms",
            )
        )
    for old in (True, False):
        ratio = found[(len(sizes) - 1, old)] / found[(0, old)]
        figures.append(
            Figure(
                "cost",
                f"/tokens growth {sizes[-1]:,}/{sizes[0]:,} rows, {'before' if old else 'after'}",
                ratio,
                "x",
                "" if old else "<= 1.5",
            )
        )
    return figures


# ---- export and verify -----------------------------------------------------------------------


def _floor_export(path: Path) -> float:
    started = time.perf_counter()
    with closing(sqlite3.connect(path)) as conn, open(os.devnull, "w") as out:
        writer = csv.writer(out)
        writer.writerow([c.strip() for c in _USAGE_COLUMNS.split(",")])
        writer.writerows(conn.execute(f"SELECT {_USAGE_COLUMNS} FROM token_usage ORDER BY id"))
    return time.perf_counter() - started


async def _old_export(path: Path | str, out: Any) -> None:
    """The export before paging: one cursor, one snapshot, rows fetched in small steps on
    the single aiosqlite reader the store had then."""
    writer = csv.writer(out)
    async with aiosqlite.connect(str(path)) as conn:
        async with conn.execute(f"SELECT {_USAGE_COLUMNS} FROM token_usage ORDER BY id") as cursor:
            async for r in cursor:
                writer.writerow(list(r))


async def _timed(job: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await job()
    return time.perf_counter() - started, result


async def _jobs(path: Path, new_calls: int) -> dict[str, float]:
    found: dict[str, float] = {}
    async with await Ledger.open(path, PLANS) as ledger:
        with open(os.devnull, "w") as out:
            floors, exports = [], []
            for _ in range(EXPORT_REPEATS):  # alternate, so noise falls on both alike
                floors.append(_floor_export(path))
                exports.append((await _timed(lambda: ledger.export_csv(out)))[0])
            found["floor"], found["export"] = median(floors), median(exports)
            found["old export"], _ = await _timed(lambda: _old_export(path, out))
        found["full verify"], violations = await _timed(lambda: ledger.verify(full=True))
        assert violations == [], violations[:3]
        for n in range(new_calls):
            account = f"guild:{(n * 7919) % ACCOUNTS}"
            hold = await ledger.reserve(account, 1_000, "chat")
            await ledger.commit(hold, CHARGE)
        found["incremental verify"], violations = await _timed(ledger.verify)
        assert violations == [], violations[:3]
    return found


def _export_verify(folder: Path, rows: int) -> tuple[Path, list[Figure]]:
    path = folder / "big.db"
    built = _build(path, rows)
    _floor_export(path)  # once to warm the page cache, so neither side pays for it
    found = asyncio.run(_jobs(path, 1_000))
    floor = found["floor"]
    n = f"{rows:,} rows"
    ratio, before = found["export"] / floor, found["old export"] / floor
    figures = [
        Figure("cost", f"build {n} (bulk SQL)", built, "s", "< 60" if rows >= 10**6 else ""),
        Figure("cost", f"export {n}, sqlite3+csv floor", floor, "s"),
        Figure("cost", f"export {n}", found["export"], "s"),
        Figure("cost", f"export {n} / floor, before (one cursor)", before, "x"),
        Figure("cost", f"export {n} / floor", ratio, "x", "<= 1.2", ratio <= 1.2),
        Figure("cost", f"verify --full {n}", found["full verify"], "s"),
    ]
    incremental = found["incremental verify"] * 1000
    figures.append(
        Figure(
            "cost",
            f"verify after 1,000 new calls on {n}",
            incremental,
            "ms",
            "< 100",
            incremental < 100,
        )
    )
    if rows >= 10**6:
        figures[0] = Figure(figures[0].bench, figures[0].name, built, "s", "< 60", built < 60)
    return path, figures


# ---- the WAL while another process exports ----------------------------------------------------


def _export_child(path: str, old: bool) -> None:
    async def go() -> None:
        async with await Ledger.open(path, PLANS, kind="cli") as ledger:
            with open(os.devnull, "w") as out:
                if old:
                    await _old_export(path, out)
                else:
                    await ledger.export_csv(out)

    asyncio.run(go())


async def _pay_while(
    path: Path, child: subprocess.Popen[bytes] | None, pairs: int
) -> tuple[list[float], int]:
    """Pairs from 10 tasks until the child exits (or `pairs` of them); latencies in ms
    and the largest WAL seen."""
    wal = Path(f"{path}-wal")
    latencies: list[float] = []
    largest = 0
    async with await Ledger.open(path, PLANS) as ledger:

        async def worker(index: int) -> None:
            nonlocal largest
            n = 0
            while (child is not None and child.poll() is None) or (
                child is None and len(latencies) < pairs
            ):
                started = time.perf_counter()
                hold = await ledger.reserve(f"guild:{(index * 1000 + n) % ACCOUNTS}", 1_000, "chat")
                await ledger.commit(hold, CHARGE)
                latencies.append((time.perf_counter() - started) * 1000)
                n += 1
                if n % 10 == 0:
                    largest = max(largest, wal.stat().st_size if wal.exists() else 0)

        await asyncio.gather(*(worker(i) for i in range(10)))
    return latencies, largest


def _wal_bound(path: Path, quiet_pairs: int) -> list[Figure]:
    quiet, _ = asyncio.run(_pay_while(path, None, quiet_pairs))
    figures = [Figure("cost", "pair p99 while nothing else reads", percentile(quiet, 0.99), "ms")]
    for old in (True, False):
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.cost_bench", "--export-child", str(path)]
            + (["old"] if old else [])
        )
        latencies, largest = asyncio.run(_pay_while(path, child, 0))
        child.wait()
        label = ", before (one snapshot)" if old else ""
        mib = largest / 2**20
        p99 = percentile(latencies, 0.99) / percentile(quiet, 0.99)
        figures += [
            Figure(
                "cost",
                f"largest WAL during an export{label}",
                mib,
                "MiB",
                "" if old else "<= 64",
                None if old else mib <= 64,
            ),
            Figure(
                "cost",
                f"pair p99 during an export / without{label}",
                p99,
                "x",
                "" if old else "<= 1.5",
                None if old else p99 <= 1.5,
            ),
        ]
    return figures


# ---- document delete --------------------------------------------------------------------------


async def _delete_latency(path: Path, chunks: int, batched: bool) -> float:
    from bot.core.repository import Repository

    async with await Ledger.open(path, PLANS, secure_delete=not batched) as ledger:
        repo = Repository(ledger.store)
        await repo.migrate()

        async def insert(conn: Any) -> tuple[int, int]:
            agent = await repo.insert_agent_in(conn, "guild:1", "Nova", "p", "1")
            rows = [
                (i, 1, "", False, f"chunk {i} " * 40, os.urandom(1536 * 4)) for i in range(chunks)
            ]
            return agent.id, await repo.insert_document_in(
                conn, agent.id, "d", "text", 1, 1, "1", rows
            )

        agent_id, document = await ledger.store.write(insert)
        await ledger.store.checkpoint()
        done = asyncio.Event()
        slowest = 0.0

        async def delete() -> None:
            if batched:
                await repo.delete_document(agent_id, document)
            else:
                await ledger.store.write(
                    lambda conn: conn.execute("DELETE FROM documents WHERE id = ?", (document,))
                )
            done.set()

        async def pay() -> None:
            nonlocal slowest
            while not done.is_set():
                started = time.perf_counter()
                hold = await ledger.reserve("guild:2", 1_000, "chat")
                await ledger.commit(hold, CHARGE)
                slowest = max(slowest, (time.perf_counter() - started) * 1000)

        await asyncio.gather(delete(), pay())
        return slowest


def _document_delete(folder: Path, chunks: int) -> list[Figure]:
    before = asyncio.run(_delete_latency(folder / "delete-old.db", chunks, False))
    after = asyncio.run(_delete_latency(folder / "delete.db", chunks, True))
    n = f"{chunks:,}-chunk document"
    return [
        Figure("cost", f"slowest paid call while a {n} is deleted, before", before, "ms"),
        Figure(
            "cost", f"slowest paid call while a {n} is deleted", after, "ms", "<= 50", after <= 50
        ),
    ]


def run(quick: bool) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="cost-bench-") as tmp:
        folder = Path(tmp)
        figures = _tokens_view(folder, (200, 2_000, 10_000) if quick else (200, 10**4, 10**5))
        path, more = _export_verify(folder, 20_000 if quick else 10**6)
        figures += more
        figures += _wal_bound(path, 300 if quick else 3_000)
        figures += _document_delete(folder, 2_000 if quick else 20_000)
        return figures


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--export-child":
        _export_child(sys.argv[2], old=sys.argv[3:] == ["old"])
    else:
        cli(run)
