"""Retrieval of one agent with 20,000 chunks of 1,536 dimensions (issue 17, point 4), each
"before" measured in the same run as its "after":

- warm top-5 (the cached matrix: the version read, the product, the texts read) against
  the numpy floor (`top_indices` alone on the same matrix);
- the cold load against the same floor: an empty cache in a process whose vector file
  (bot/core/documents/vector_files.py) exists, timed through the first product (the
  mapped pages come in there); the first load from the database (one read on a reader
  thread into one buffer, normalised in place), which writes that file; and the old
  load (rows of blobs fetched to the event loop, copied one by one, stacked on a thread);
- the event loop's longest stall while a cold load runs, old and new;
- the slowest balance read of another account while a cold load runs, with one reader
  connection (as before) and with the pool;
- the cache's hit rate over the run.

BLAS runs one thread, as in the bot (bot/__main__.py). `--quick` uses 2,000 chunks.
"""

from __future__ import annotations

import os

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import asyncio  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from bench.report import Figure, cli, median  # noqa: E402
from bot.core.documents.retrieval import Retriever, top_indices  # noqa: E402
from bot.core.documents.vector_files import VectorFiles  # noqa: E402
from bot.core.repository import Repository  # noqa: E402
from ledger import Plan, queries  # noqa: E402
from ledger.clock import SystemClock  # noqa: E402
from ledger.storage.sqlite import SqliteStore  # noqa: E402

BENCH = "retrieval"
ACCOUNT = "guild:1"
DIMS = 1536
FREE = Plan("free", 10**9, 3)


async def _build(path: Path, chunks: int) -> None:
    store = await SqliteStore.open(path)
    try:
        repo = Repository(store)
        await repo.migrate()
        rng = np.random.default_rng(11)

        async def insert(conn: Any) -> None:
            agent = await repo.insert_agent_in(conn, ACCOUNT, "Nova", "p", "1")
            for start in range(0, chunks, 5_000):  # documents of 5,000 chunks
                rows = [
                    (i, 1, "", False, f"chunk {i} about the ledger", vector.tobytes())
                    for i, vector in enumerate(
                        rng.standard_normal((min(5_000, chunks - start), DIMS), dtype=np.float32)
                    )
                ]
                await repo.insert_document_in(conn, agent.id, f"d{start}", "text", 1, 1, "1", rows)

        await store.write(insert)
        await store.checkpoint()
    finally:
        await store.close()


def _old_stack(rows: list[tuple[int, bytes, bool]]) -> np.ndarray:
    matrix = np.empty((len(rows), len(rows[0][1]) // 4), dtype=np.float32)
    for index, row in enumerate(rows):
        matrix[index] = np.frombuffer(row[1], dtype="<f4")
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))[:, None]
    norms[norms == 0] = 1
    matrix /= norms
    return matrix


async def _old_load(store: SqliteStore, agent_id: int) -> np.ndarray:
    """The load before: the rows of blobs fetched to the loop, each copied there, then
    stacked and normalised on a thread."""
    await store.reader.execute_fetchall(
        "SELECT a.documents_version FROM agents a WHERE a.id = ? AND a.account_id = ?",
        (agent_id, ACCOUNT),
    )
    rows = await store.reader.execute_fetchall(
        "SELECT c.id, c.embedding, c.boilerplate FROM chunks c JOIN agents a ON a.id = c.agent_id"
        " WHERE c.agent_id = ? AND a.account_id = ? ORDER BY c.id",
        (agent_id, ACCOUNT),
    )
    copied = [(int(r[0]), bytes(r[1]), bool(r[2])) for r in rows]
    np.fromiter((r[0] for r in copied), dtype=np.int64, count=len(copied))
    return await asyncio.to_thread(_old_stack, copied)


def _old_job(store: SqliteStore, agent_id: int) -> Any:
    return lambda: _old_load(store, agent_id)


def _new_job(retriever: Retriever, agent_id: int) -> Any:
    return lambda: retriever._matrix(ACCOUNT, agent_id)


async def _while(job: Any, store: SqliteStore) -> tuple[float, float, float]:
    """(job seconds, longest event-loop stall ms, slowest other account's balance read ms)
    while `job` runs."""
    done = asyncio.Event()
    stall = 0.0
    slowest = 0.0

    async def ticker() -> None:
        nonlocal stall
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            stall = max(stall, (now - last - 0.001) * 1000)
            last = now

    async def balances() -> None:
        nonlocal slowest
        clock = SystemClock()
        while not done.is_set():
            started = time.perf_counter()
            await queries.balance(store.reader, "guild:2", FREE, clock.now())
            slowest = max(slowest, (time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.002)

    async def timed() -> float:
        started = time.perf_counter()
        try:
            await job()
        finally:
            done.set()
        return time.perf_counter() - started

    took, _, _ = await asyncio.gather(timed(), ticker(), balances())
    return took, stall, slowest


async def _measure(path: Path, queries_n: int, colds: int) -> dict[str, Any]:
    found: dict[str, Any] = {}
    rng = np.random.default_rng(5)
    asks = rng.standard_normal((queries_n, DIMS), dtype=np.float32)
    for readers in (1, 4):
        store = await SqliteStore.open(path, readers_size=readers)
        try:
            repo = Repository(store)
            agent = await repo.agent(ACCOUNT, "Nova")
            assert agent is not None
            samples = []
            for _ in range(colds):
                if readers == 1:  # before: one reader, the old load
                    job = _old_job(store, agent.id)
                else:
                    job = _new_job(Retriever(repo), agent.id)
                samples.append(await _while(job, store))
            key = ("old", 1) if readers == 1 else ("new", 4)
            found[key] = [median([s[i] for s in samples]) for i in range(3)]
            if readers == 4:
                files = VectorFiles(path.parent / "vectors")
                writer = Retriever(repo, files=files)
                await writer._matrix(ACCOUNT, agent.id)  # a first load writes the file
                await writer.settle()
                mapped = []
                for query in asks[:colds]:
                    fresh = Retriever(repo, files=files)
                    started = time.perf_counter()
                    cold = await fresh._matrix(ACCOUNT, agent.id)
                    assert cold is not None and fresh.file_loads == 1
                    top_indices(cold.vectors, query, 5)  # the mapped pages come in here
                    mapped.append(time.perf_counter() - started)
                    del cold, fresh
                found["mapped"] = median(mapped)
                retriever = Retriever(repo)
                matrix = await retriever._matrix(ACCOUNT, agent.id)
                assert matrix is not None
                for query in asks[:5]:  # warm both paths
                    top_indices(matrix.vectors, query, 5)
                    await retriever.top_k(ACCOUNT, agent.id, query, 5, mode="dense")
                floor, warm = [], []
                for query in asks:
                    started = time.perf_counter()
                    top_indices(matrix.vectors, query, 5)
                    floor.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    await retriever.top_k(ACCOUNT, agent.id, query, 5, mode="dense")
                    warm.append(time.perf_counter() - started)
                found["floor"], found["warm"] = median(floor), median(warm)
                # Each query's warm time over the floor just before it: a pair shares the
                # machine's moment, so the median of the pairs' ratios sheds its swings.
                found["warm ratio"] = median([w / f for w, f in zip(warm, floor, strict=True)])
                found["stats"] = retriever.stats()
        finally:
            await store.close()
    return found


def run(quick: bool) -> list[Figure]:
    chunks = 2_000 if quick else 20_000
    with tempfile.TemporaryDirectory(prefix="retrieval-bench-") as tmp:
        path = Path(tmp) / "retrieval.db"
        asyncio.run(_build(path, chunks))
        found = asyncio.run(_measure(path, 50 if quick else 200, 3 if quick else 5))
    n = f"{chunks:,} chunks"
    floor = found["floor"]
    warm = found["warm ratio"]
    cold_db, cold_old = found[("new", 4)][0] / floor, found[("old", 1)][0] / floor
    cold_mapped = found["mapped"] / floor
    stats = found["stats"]
    figures = [
        Figure(BENCH, f"top-5 floor (numpy) at {n}", floor * 1e3, "ms"),
        Figure(BENCH, f"warm top-5 at {n}", found["warm"] * 1e3, "ms"),
        Figure(BENCH, f"warm top-5 / floor at {n} (median of paired ratios)", warm, "x", "<= 1.2"),
        Figure(BENCH, f"cold load at {n}, before", found[("old", 1)][0] * 1e3, "ms"),
        Figure(BENCH, f"first load from the database at {n}", found[("new", 4)][0] * 1e3, "ms"),
        Figure(
            BENCH, f"cold load + first product, vector file at {n}", found["mapped"] * 1e3, "ms"
        ),
        Figure(BENCH, f"cold load / floor at {n}, before", cold_old, "x"),
        Figure(BENCH, f"first load from the database / floor at {n}", cold_db, "x"),
        Figure(BENCH, f"cold load / floor at {n} (vector file)", cold_mapped, "x", "<= 5"),
        Figure(BENCH, "loop stall during a cold load, before", found[("old", 1)][1], "ms"),
        Figure(BENCH, "loop stall during a cold load", found[("new", 4)][1], "ms"),
        Figure(
            BENCH,
            "slowest balance read during a cold load, one reader (before)",
            found[("old", 1)][2],
            "ms",
        ),
        Figure(
            BENCH,
            "slowest balance read during a cold load, reader pool",
            found[("new", 4)][2],
            "ms",
        ),
        Figure(
            BENCH,
            f"cache hit rate ({stats.hits} hits, {stats.misses} loads)",
            stats.hit_rate * 100,
            "%",
        ),
    ]
    return figures


if __name__ == "__main__":
    cli(run)
