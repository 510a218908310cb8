"""The retrieval cache: unit rows, reloaded when an agent's documents change, bounded by
agents and by bytes, least recently used evicted first, idle agents out; its hits and
loads counted for /metrics; the matrix read in one snapshot on each store; a large
agent's product off the event loop."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bot.config import Config
from bot.core.documents import retrieval
from bot.core.documents.retrieval import Retriever
from bot.core.repository import ChunkMatrix, DocumentsVersion
from bot.core.telemetry import Telemetry
from bot.services import Services

ACCOUNT = "guild:1"


@pytest.fixture
def app_config(app_config: Config, database: str) -> Config:
    """On each store in turn (the `database` fixture of tests/conftest.py)."""
    storage = app_config.storage.model_copy(update={"database": database})
    return app_config.model_copy(update={"storage": storage})


class StubRepo:
    """Agents' chunk vectors in memory; counts the loads the cache had to make."""

    def __init__(self, dims: int = 8) -> None:
        self.dims = dims
        self.vectors: dict[int, list[np.ndarray]] = {}
        self.versions: dict[int, int] = {}
        self.loads: list[int] = []

    def put(self, agent_id: int, count: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed + agent_id)
        self.vectors[agent_id] = [
            rng.standard_normal(self.dims).astype(np.float32) * 5 for _ in range(count)
        ]
        self.versions[agent_id] = self.versions.get(agent_id, 0) + 1

    async def documents_version(self, account_id: str, agent_id: int) -> DocumentsVersion | None:
        if account_id != ACCOUNT or agent_id not in self.versions:
            return None
        return DocumentsVersion(self.versions[agent_id], bool(self.vectors[agent_id]))

    async def chunk_matrix(self, account_id: str, agent_id: int) -> ChunkMatrix | None:
        if account_id != ACCOUNT or agent_id not in self.versions:
            return None
        self.loads.append(agent_id)
        vectors = self.vectors.get(agent_id, [])
        return ChunkMatrix(
            self.versions[agent_id],
            [agent_id * 1000 + i for i in range(len(vectors))],
            bytearray(b"".join(v.astype("<f4").tobytes() for v in vectors)),
            self.dims * 4 if vectors else 0,
            frozenset(),
        )

    has_one_read = False  # as on PostgreSQL: the reads one by one

    async def in_one_read(self, op: Any) -> None:
        return None

    async def chunk_texts(
        self, account_id: str, agent_id: int, ids: list[int]
    ) -> dict[int, tuple[str, int, str, str]]:
        return {i: (f"chunk {i}", 1, "doc.txt", "") for i in ids}


async def test_rows_are_unit_length_and_the_closest_chunk_comes_first() -> None:
    repo = StubRepo()
    repo.put(1, 20)
    retriever = Retriever(repo)  # type: ignore[arg-type]
    target = repo.vectors[1][7]
    hits = await retriever.top_k(ACCOUNT, 1, target * 3, k=3)
    assert hits[0].chunk_id == 1007 and abs(hits[0].score - 1.0) < 1e-5
    matrix = await retriever._matrix(ACCOUNT, 1)
    assert matrix is not None
    assert np.allclose(np.linalg.norm(matrix.vectors, axis=1), 1.0)


async def test_a_changed_agent_is_reloaded_and_others_stay_cached() -> None:
    repo = StubRepo()
    repo.put(1, 5)
    repo.put(2, 5)
    retriever = Retriever(repo)  # type: ignore[arg-type]
    query = np.ones(8, dtype=np.float32)
    for agent in (1, 2, 1, 2):
        await retriever.top_k(ACCOUNT, agent, query)
    assert repo.loads == [1, 2]
    repo.put(1, 6)  # a document added: a new version
    await retriever.top_k(ACCOUNT, 1, query)
    await retriever.top_k(ACCOUNT, 2, query)
    assert repo.loads == [1, 2, 1]


async def test_the_least_recently_used_agent_goes_first() -> None:
    repo = StubRepo()
    for agent in (1, 2, 3):
        repo.put(agent, 4)
    retriever = Retriever(repo, max_cached_agents=2)  # type: ignore[arg-type]
    query = np.ones(8, dtype=np.float32)
    await retriever.top_k(ACCOUNT, 1, query)
    await retriever.top_k(ACCOUNT, 2, query)
    await retriever.top_k(ACCOUNT, 1, query)  # 1 is now the most recent
    await retriever.top_k(ACCOUNT, 3, query)  # evicts 2, not 1
    await retriever.top_k(ACCOUNT, 1, query)
    assert repo.loads == [1, 2, 3]
    await retriever.top_k(ACCOUNT, 2, query)
    assert repo.loads == [1, 2, 3, 2]


async def test_the_byte_bound_holds_but_never_evicts_the_agent_just_loaded() -> None:
    repo = StubRepo()
    repo.put(1, 100)  # 100 x 8 x 4 = 3,200 bytes
    repo.put(2, 100)
    retriever = Retriever(repo, max_cached_bytes=4_000)  # type: ignore[arg-type]
    query: Any = np.ones(8, dtype=np.float32)
    await retriever.top_k(ACCOUNT, 1, query)
    await retriever.top_k(ACCOUNT, 2, query)
    assert list(retriever._cache) == [2]  # 1 went to make room; 2 stays though alone
    await retriever.top_k(ACCOUNT, 2, query)
    assert repo.loads == [1, 2]


async def test_the_matrix_is_the_agents_blobs_in_id_order_in_one_read(services: Services) -> None:
    repo = services.repo
    rng = np.random.default_rng(5)
    blobs = [rng.standard_normal(4).astype("<f4").tobytes() for _ in range(7)]

    async def insert(conn: Any) -> tuple[int, int]:
        nova = await repo.insert_agent_in(conn, ACCOUNT, "Nova", "p", "1")
        empty = await repo.insert_agent_in(conn, ACCOUNT, "Mia", "p", "1")
        rows = [(i, 1, "", i == 3, f"chunk {i}", blob) for i, blob in enumerate(blobs)]
        await repo.insert_document_in(conn, nova.id, "a.txt", "text", 1, 9, "1", rows[:4])
        await repo.insert_document_in(conn, nova.id, "b.txt", "text", 1, 9, "1", rows[4:])
        return nova.id, empty.id

    nova, empty = await services.ledger.store.write(insert)
    loaded = await repo.chunk_matrix(ACCOUNT, nova)
    assert loaded is not None
    assert loaded.ids == sorted(loaded.ids) and len(loaded.ids) == 7
    assert bytes(loaded.vectors) == b"".join(blobs) and loaded.width == 16
    assert loaded.boilerplate == {loaded.ids[3]}
    version = await repo.documents_version(ACCOUNT, nova)
    assert version is not None and loaded.version == version.version
    assert await repo.chunk_matrix("guild:2", nova) is None  # another account's agent
    nothing = await repo.chunk_matrix(ACCOUNT, empty)
    assert nothing is not None and nothing.ids == [] and nothing.width == 0
    hits = await services.retriever.top_k(
        ACCOUNT, nova, np.frombuffer(blobs[5], "<f4"), k=1, mode="dense"
    )
    assert [h.chunk_id for h in hits] == [loaded.ids[5]]


async def test_hits_and_loads_are_counted_and_reported_in_metrics() -> None:
    repo = StubRepo()
    repo.put(1, 5)
    repo.put(2, 5)
    retriever = Retriever(repo)  # type: ignore[arg-type]
    query = np.ones(8, dtype=np.float32)
    for agent in (1, 1, 1, 2):
        await retriever.top_k(ACCOUNT, agent, query)
    stats = retriever.stats()
    assert (stats.hits, stats.misses, stats.agents) == (2, 2, 2)
    assert stats.hit_rate == 0.5 and stats.bytes == 2 * 5 * (8 * 4 + 8)
    telemetry = Telemetry()
    telemetry.watch_retrieval(retriever.stats)
    await retriever.top_k(ACCOUNT, 2, query)  # read at the scrape, not at registration
    found = {
        s.name: s.value
        for family in text_string_to_metric_families(generate_latest(telemetry.registry).decode())
        for s in family.samples
    }
    assert found["bot_retrieval_cache_hits_total"] == 3
    assert found["bot_retrieval_cache_loads_total"] == 2
    assert found["bot_retrieval_cache_hit_ratio"] == 0.6


async def test_an_agent_idle_past_the_limit_leaves_the_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1_000.0]
    monkeypatch.setattr(retrieval.time, "monotonic", lambda: now[0])
    repo = StubRepo()
    repo.put(1, 5)
    repo.put(2, 5)
    retriever = Retriever(repo, idle_seconds=60)  # type: ignore[arg-type]
    query = np.ones(8, dtype=np.float32)
    await retriever.top_k(ACCOUNT, 1, query)
    now[0] += 50
    await retriever.top_k(ACCOUNT, 2, query)
    now[0] += 50  # 1 idle for 100 s, 2 for 50 s
    await retriever.top_k(ACCOUNT, 2, query)
    assert list(retriever._cache) == [2]
    await retriever.top_k(ACCOUNT, 1, query)
    assert repo.loads == [1, 2, 1]


async def test_a_large_agents_product_runs_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[int] = []
    kernel = retrieval.top_indices

    def watched(*args: Any) -> Any:
        threads.append(threading.get_ident())
        return kernel(*args)

    monkeypatch.setattr(retrieval, "top_indices", watched)
    repo = StubRepo()
    repo.put(1, 30)
    repo.put(2, 5)
    monkeypatch.setattr(retrieval, "OFF_LOOP_ROWS", 10)
    retriever = Retriever(repo)  # type: ignore[arg-type]
    target = repo.vectors[1][17]
    large = await retriever.top_k(ACCOUNT, 1, target, k=2)
    small = await retriever.top_k(ACCOUNT, 2, repo.vectors[2][3], k=2)
    loop_thread = threading.get_ident()
    assert threads[0] != loop_thread and threads[1] == loop_thread
    assert large[0].chunk_id == 1017 and small[0].chunk_id == 2003


async def test_a_guess_on_a_stale_matrix_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A large agent's product starts before its version is read: after a change, the
    answer comes from the reloaded matrix, not from the guess on the old one."""
    monkeypatch.setattr(retrieval, "OFF_LOOP_ROWS", 10)
    repo = StubRepo()
    repo.put(1, 30, seed=1)
    retriever = Retriever(repo)  # type: ignore[arg-type]
    await retriever.top_k(ACCOUNT, 1, np.ones(8, dtype=np.float32))
    repo.put(1, 30, seed=2)  # new vectors, a new version
    target = repo.vectors[1][9]
    hits = await retriever.top_k(ACCOUNT, 1, target, k=1, mode="dense")
    assert repo.loads == [1, 1]
    assert hits[0].chunk_id == 1009 and abs(hits[0].score - 1.0) < 1e-5


async def test_a_warm_large_agent_is_answered_alike_in_one_read_or_read_by_read(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite a warm query of a large agent is one job on a reader thread; on
    PostgreSQL its reads go one by one: the same hits either way, and the same as a
    small agent's path on the loop."""
    repo = services.repo
    rng = np.random.default_rng(8)
    vectors = rng.standard_normal((40, 6)).astype("<f4")
    words = ["saturn", "rings", "ice", "moon", "orbit"]

    async def insert(conn: Any) -> int:
        agent = await repo.insert_agent_in(conn, ACCOUNT, "Nova", "p", "1")
        rows = [
            (i, 1, "", i % 9 == 0, f"{words[i % 5]} chunk {i}", vectors[i].tobytes())
            for i in range(40)
        ]
        await repo.insert_document_in(conn, agent.id, "a.txt", "text", 1, 9, "1", rows)
        return agent.id

    nova = await services.ledger.store.write(insert)
    one_reads: list[object] = []
    original = repo.in_one_read

    async def counted(op: Any) -> Any:
        found = await original(op)
        one_reads.append(found)
        return found

    monkeypatch.setattr(repo, "in_one_read", counted)
    query = vectors[17] + 0.01
    answers = []
    for rows in (10**9, 10):  # the small path, then the large one (cold, warm)
        monkeypatch.setattr(retrieval, "OFF_LOOP_ROWS", rows)
        retriever = Retriever(repo)
        for _ in range(2):
            hits = await retriever.top_k(ACCOUNT, nova, query, k=4, text="rings of ice")
            answers.append([(h.chunk_id, h.text, round(h.score, 5)) for h in hits])
    assert all(answer == answers[0] for answer in answers) and len(answers[0]) == 4
    used = [r for r in one_reads if r is not None]
    assert len(used) == (1 if services.ledger.store.dialect == "sqlite" else 0)
