"""Resident memory of the bot process, each figure taken in a fresh subprocess.

- a bare `import discord, openai, aiosqlite` (the baseline of the ratios);
- an idle bot: `Services.open` + `AgentBot(...).load_cogs()` on a fresh database;
- a loaded bot: the same on a database holding 1,000 agents and 100,000 chunks of 1,536
  float32 dimensions (built here in bulk, straight through SQL), measured after opening,
  then after a retrieval over a sample of agents with the retrieval cache at its default
  bounds (`Retriever.max_cached`, 64 agents, and `max_cached_bytes`), then, in another
  process, after a retrieval over every agent with both bounds lifted so that the cache
  holds them all (the defaults never allow that: this shows what the bounds save);
- the largest agents: three agents, each holding as many chunks as its account may
  (`limits.max_chunks_per_account`); one retrieval (one cold load), then all three with
  the default bounds, where the byte bound binds before the count does.

"current" is the resident set now (/proc/self/statm); "peak" is `ru_maxrss`, the most
the process ever held, which includes the transient copies made while loading.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import Figure, cli
from bot.config import LimitsSettings

BENCH = "memory"
DIMENSIONS = 1536  # text-embedding-3-small
MIB = 1024 * 1024
CHUNK_TEXT = ("Pulsars are rotating neutron stars that emit beams of radiation. " * 16)[:1000]


def _rss() -> tuple[float, float]:
    """(current, peak) resident set in MiB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    current = pages * os.sysconf("SC_PAGE_SIZE") / MIB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    # The kernel updates its high-water mark lazily: it can trail the current figure.
    return current, max(peak, current)


# ---- the measured process ---------------------------------------------------------------


def _cache_mib(retriever: Any) -> float:
    """The cache's own arrays, read from its private dict: what its bounds bound."""
    return sum(m.vectors.nbytes + m.ids.nbytes for m in retriever._cache.values()) / MIB


async def _bot_child(database: str, data_dir: str, sample: int, every: bool) -> dict[str, Any]:
    from bot.config import Config, StorageSettings
    from bot.core.documents.retrieval import top_indices
    from bot.front.app import AgentBot
    from bot.services import Services

    config = Config(storage=StorageSettings(database=database, data_dir=data_dir))
    services = await Services.open(config)
    try:
        await AgentBot(config, services).load_cogs()
        opened = _rss()
        result: dict[str, Any] = {"open": opened}
        if sample or every:
            rows = await services.repo.store.reader.execute_fetchall(
                "SELECT account_id, id FROM agents ORDER BY id"
            )
            agents = [(str(r[0]), int(r[1])) for r in rows]
            retriever = services.retriever
            if every:  # both bounds lifted, so that the cache holds everyone
                retriever.max_cached = len(agents)
                retriever.max_cached_bytes = 2**62
            else:
                agents = random.Random(6).sample(agents, min(sample, len(agents)))
            queries = np.random.default_rng(6).standard_normal((8, DIMENSIONS), dtype=np.float32)
            # Start the default executor's thread and numpy's BLAS outside the timing.
            await asyncio.to_thread(top_indices, queries, queries[0], 1)
            result["ready"] = _rss()
            started = time.perf_counter()
            for index, (account_id, agent_id) in enumerate(agents):
                query = queries[index % len(queries)]
                if not await retriever.top_k(account_id, agent_id, query, k=5):
                    raise RuntimeError(f"agent {agent_id} retrieved nothing")
                if index == 0:  # one cold load alone: its time, its peak, what it keeps
                    result["first"] = {
                        "seconds": time.perf_counter() - started,
                        "after": _rss(),
                        "cache_mib": _cache_mib(retriever),
                    }
            result["seconds"] = time.perf_counter() - started
            result["queried"] = len(agents)
            result["cached_agents"] = len(retriever._cache)
            result["cache_mib"] = _cache_mib(retriever)
            result["cap"] = retriever.max_cached
            result["budget_mib"] = retriever.max_cached_bytes / MIB
        result["after"] = _rss()
    finally:
        await services.close()
    return result


def _child_main(mode: str, database: str, data_dir: str, sample: int) -> None:
    """Entry point of the subprocess: one measurement, printed as one JSON line."""
    if mode == "bare":
        import aiosqlite  # noqa: F401
        import discord  # noqa: F401
        import openai  # noqa: F401

        result: dict[str, Any] = {"after": _rss()}
    else:
        result = asyncio.run(_bot_child(database, data_dir, sample, every=mode == "every"))
    print(json.dumps(result), flush=True)


def _measure(mode: str, database: Path, data_dir: Path, sample: int = 0) -> dict[str, Any]:
    code = (
        "import sys; from bench.memory_bench import _child_main;"
        " _child_main(*sys.argv[1:4], int(sys.argv[4]))"
    )
    env = dict(os.environ)
    # The checkout's root, so that the child finds `bench` as this process did.
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", code, mode, str(database), str(data_dir), str(sample)],
        env=env,
        cwd=data_dir.parent,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory child {mode} exited {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the loaded database ----------------------------------------------------------------


async def _schema(database: Path) -> None:
    from bot.core.repository import Repository
    from ledger import Ledger

    ledger = await Ledger.open(database)
    try:
        await Repository(ledger.store).migrate()
    finally:
        await ledger.close()


def build_database(database: Path, agents: int, chunks: int, per_account: int = 10) -> None:
    """`agents` agents (`per_account` to an account), one document each, `chunks` chunks shared
    evenly, random unit-free float32 embeddings, inserted in bulk with plain SQL."""
    asyncio.run(_schema(database))
    per_agent = chunks // agents
    rng = np.random.default_rng(6)
    now = "2026-11-24T12:00:00.000000Z"
    conn = sqlite3.connect(database)
    try:
        # A bench fixture, not a ledger write: no fsync per page is needed to build it.
        conn.execute("PRAGMA synchronous=OFF")
        with conn:
            conn.executemany(
                "INSERT INTO agents (id, account_id, name, name_key, prompt, creator_id,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (
                        i,
                        f"guild:{i // per_account}",
                        f"Agent{i}",
                        f"agent{i}",
                        "Be kind.",
                        "1",
                        now,
                        now,
                    )
                    for i in range(1, agents + 1)
                ),
            )
            conn.executemany(
                "INSERT INTO documents (id, agent_id, name, kind, pages, chunks, tokens,"
                " uploader_id, created_at) VALUES (?, ?, ?, 'pdf', 10, ?, ?, '1', ?)",
                (
                    (i, i, f"paper{i}.pdf", per_agent, per_agent * 250, now)
                    for i in range(1, agents + 1)
                ),
            )
            for agent_id in range(1, agents + 1):
                vectors = rng.standard_normal((per_agent, DIMENSIONS), dtype=np.float32)
                conn.executemany(
                    "INSERT INTO chunks (document_id, agent_id, idx, page, text, embedding)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        (
                            agent_id,
                            agent_id,
                            i,
                            i // 10,
                            CHUNK_TEXT,
                            vectors[i].astype("<f4").tobytes(),
                        )
                        for i in range(per_agent)
                    ),
                )
    finally:
        conn.close()


# ---- the figures ------------------------------------------------------------------------


def run(quick: bool) -> list[Figure]:
    agents, chunks, sample = (50, 2_000, 10) if quick else (1_000, 100_000, 100)
    # One agent may hold as many chunks as its account (limits.max_chunks_per_account).
    limit = LimitsSettings().max_chunks_per_account
    largest = 1_000 if quick else limit
    size = f"{agents:,} agents, {chunks:,} chunks"
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as name:
        folder = Path(name)
        data = folder / "data"
        data.mkdir()
        bare = _measure("bare", folder / "unused.db", data)
        idle = _measure("idle", folder / "idle.db", data)
        started = time.perf_counter()
        loaded_db = folder / "loaded.db"
        build_database(loaded_db, agents, chunks)
        built = time.perf_counter() - started
        loaded = _measure("sample", loaded_db, data, sample)
        every = _measure("every", loaded_db, data)
        big_db = folder / "largest.db"
        build_database(big_db, 3, 3 * largest, per_account=1)  # each within its limit
        bigs = _measure("sample", big_db, data, 3)
        big = bigs["first"]
        base = bare["after"][0]
        bounds = f"cap {loaded['cap']} agents, {loaded['budget_mib']:,.0f} MiB"  # defaults
        at_limit = " (the account limit)" if largest == limit else ""
        idle_now, idle_peak = idle["after"]
        figures += [
            Figure(BENCH, "bare `import discord, openai, aiosqlite` (baseline)", base, "MiB"),
            Figure(BENCH, "idle bot, current", idle_now, "MiB"),
            Figure(BENCH, "idle bot, peak", idle_peak, "MiB"),
            Figure(BENCH, "idle bot / bare import", idle_now / base, "x"),
            Figure(BENCH, f"database build ({size})", built, "s"),
            Figure(BENCH, f"database file ({size})", loaded_db.stat().st_size / MIB, "MiB"),
            Figure(BENCH, f"bot on {size}, opened, current", loaded["open"][0], "MiB"),
            Figure(
                BENCH,
                f"after retrieval over {loaded['queried']} agents (cache {bounds}: "
                f"{loaded['cached_agents']} cached), current",
                loaded["after"][0],
                "MiB",
            ),
            Figure(BENCH, "  same, peak", loaded["after"][1], "MiB"),
            Figure(BENCH, "  same, retrieval cache arrays", loaded["cache_mib"], "MiB"),
            Figure(
                BENCH,
                f"after retrieval over every agent (bounds lifted: "
                f"{every['cached_agents']} cached), current",
                every["after"][0],
                "MiB",
            ),
            Figure(BENCH, "  same, peak", every["after"][1], "MiB"),
            Figure(BENCH, "  same, retrieval cache arrays", every["cache_mib"], "MiB"),
            Figure(
                BENCH,
                "  same, ms per agent (cold cache)",
                every["seconds"] / every["queried"] * 1e3,
                "ms",
            ),
            Figure(
                BENCH,
                f"one agent of {largest:,} chunks{at_limit}, its cache arrays",
                big["cache_mib"],
                "MiB",
            ),
            Figure(BENCH, "  same, first retrieval (loads the cache)", big["seconds"] * 1e3, "ms"),
            Figure(BENCH, "  same, current after the load", big["after"][0], "MiB"),
            Figure(BENCH, "  same, peak", big["after"][1], "MiB"),
            # What loading it cost on top of the bot before the load, per byte it keeps: the
            # fetched blobs and the matrix they are copied into are alive at once.
            Figure(
                BENCH,
                "  same, (peak - before the load) / cache arrays",
                (big["after"][1] - bigs["ready"][0]) / big["cache_mib"],
                "x",
            ),
            Figure(
                BENCH,
                f"3 such agents queried (cache {bounds}: {bigs['cached_agents']} cached), current",
                bigs["after"][0],
                "MiB",
            ),
            Figure(BENCH, "  same, peak", bigs["after"][1], "MiB"),
            Figure(BENCH, "  same, retrieval cache arrays", bigs["cache_mib"], "MiB"),
        ]
    return figures


if __name__ == "__main__":
    cli(run)
