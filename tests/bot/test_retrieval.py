"""The retrieval cache: unit rows, reloaded when an agent's documents change, bounded by
agents and by bytes, least recently used evicted first."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bot.config import Config
from bot.core.documents.retrieval import Retriever
from bot.core.repository import DocumentsVersion

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

    async def chunk_vectors(self, account_id: str, agent_id: int) -> list[tuple[int, bytes, bool]]:
        self.loads.append(agent_id)
        return [
            (agent_id * 1000 + i, v.astype("<f4").tobytes(), False)
            for i, v in enumerate(self.vectors.get(agent_id, []))
        ]

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
    matrix = await retriever._matrix(ACCOUNT, 1, 8)
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


async def test_a_chunk_ranks_by_its_best_piece() -> None:
    repo = StubRepo()
    rng = np.random.default_rng(3)
    wanted = rng.standard_normal(8).astype(np.float32)
    # Chunk 1000's second piece is the query; chunk 1001's one vector is merely close.
    repo.vectors[1] = [
        np.concatenate([rng.standard_normal(8).astype(np.float32), wanted]),
        (wanted + 0.3 * rng.standard_normal(8)).astype(np.float32),
    ]
    repo.versions[1] = 1
    retriever = Retriever(repo)  # type: ignore[arg-type]
    hits = await retriever.top_k(ACCOUNT, 1, wanted, k=2, mode="dense")
    assert [h.chunk_id for h in hits] == [1000, 1001]
    assert abs(hits[0].score - 1.0) < 1e-5 and hits[1].score < 1.0
