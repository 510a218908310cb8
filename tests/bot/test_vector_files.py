"""Vector files (bot/core/documents/vector_files.py): a large agent's matrix written once
and mapped on the next cold load, used only at its own documents version, and swept
when its agent changes or goes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bot.core.documents import vector_files
from bot.core.documents.retrieval import Retriever
from bot.core.documents.vector_files import VectorFiles
from bot.core.metering import Actor
from bot.services import Services
from tests.bot.test_retrieval import ACCOUNT, StubRepo


class FileRepo(StubRepo):
    async def documents_versions(self, agent_ids: list[int]) -> dict[int, int]:
        return {a: self.versions[a] for a in agent_ids if a in self.versions}


@pytest.fixture(autouse=True)
def small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector_files, "MIN_ROWS", 10)


async def _retriever(repo: FileRepo, folder: Path) -> Retriever:
    return Retriever(repo, files=VectorFiles(folder))  # type: ignore[arg-type]


async def test_a_cold_load_maps_the_file_the_first_load_wrote(tmp_path: Path) -> None:
    repo = FileRepo()
    repo.put(1, 30)
    first = await _retriever(repo, tmp_path)
    target = repo.vectors[1][12]
    before = await first.top_k(ACCOUNT, 1, target, k=3, mode="dense")
    await first.settle()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1-1.f32.npy", "1-1.ids.npy"]
    again = await _retriever(repo, tmp_path)  # another process, or the agent evicted
    after = await again.top_k(ACCOUNT, 1, target, k=3, mode="dense")
    assert repo.loads == [1] and again.file_loads == 1
    assert [(h.chunk_id, round(h.score, 5)) for h in after] == [
        (h.chunk_id, round(h.score, 5)) for h in before
    ]
    matrix = await again._matrix(ACCOUNT, 1)
    assert matrix is not None and isinstance(matrix.vectors, np.memmap)


async def test_a_file_of_an_older_version_is_never_used_and_goes(tmp_path: Path) -> None:
    repo = FileRepo()
    repo.put(1, 30, seed=1)
    first = await _retriever(repo, tmp_path)
    await first.top_k(ACCOUNT, 1, np.ones(8, dtype=np.float32))
    await first.settle()
    repo.put(1, 30, seed=2)  # a document changed: version 2
    second = await _retriever(repo, tmp_path)
    target = repo.vectors[1][4]
    hits = await second.top_k(ACCOUNT, 1, target, k=1, mode="dense")
    await second.settle()
    assert repo.loads == [1, 1] and second.file_loads == 0
    assert hits[0].chunk_id == 1004 and abs(hits[0].score - 1.0) < 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1-2.f32.npy", "1-2.ids.npy"]


async def test_a_damaged_file_is_dropped_and_the_database_read(tmp_path: Path) -> None:
    repo = FileRepo()
    repo.put(1, 30)
    first = await _retriever(repo, tmp_path)
    await first.top_k(ACCOUNT, 1, np.ones(8, dtype=np.float32))
    await first.settle()
    (tmp_path / "1-1.f32.npy").write_bytes(b"not an array")
    second = await _retriever(repo, tmp_path)
    hits = await second.top_k(ACCOUNT, 1, repo.vectors[1][3], k=1, mode="dense")
    assert repo.loads == [1, 1] and hits[0].chunk_id == 1003


async def test_the_sweep_removes_files_of_gone_and_changed_agents(tmp_path: Path) -> None:
    repo = FileRepo()
    for agent in (1, 2, 3):
        repo.put(agent, 30)
    retriever = await _retriever(repo, tmp_path)
    for agent in (1, 2, 3):
        await retriever.top_k(ACCOUNT, agent, np.ones(8, dtype=np.float32))
    await retriever.settle()
    (tmp_path / "not-ours.txt").write_text("left alone")
    partial = tmp_path / ".1-1.f32.npy.4242.0123abcd"  # a write killed midway, long ago
    partial.write_bytes(b"x")
    os.utime(partial, (0, 0))
    fresh = tmp_path / ".1-1.ids.npy.4243.0123abcd"  # one being written now: kept
    fresh.write_bytes(b"x")
    del repo.versions[2], repo.vectors[2]  # agent 2 deleted by another process
    repo.put(3, 30)  # agent 3 changed there
    assert await retriever.sweep_files() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".1-1.ids.npy.4243.0123abcd",
        "1-1.f32.npy",
        "1-1.ids.npy",
        "not-ours.txt",
    ]


async def test_a_small_agent_gets_no_file(tmp_path: Path) -> None:
    repo = FileRepo()
    repo.put(1, 5)
    retriever = await _retriever(repo, tmp_path)
    await retriever.top_k(ACCOUNT, 1, np.ones(8, dtype=np.float32))
    await retriever.settle()
    assert list(tmp_path.iterdir()) == []


async def test_removing_a_document_or_the_agent_removes_its_files_at_once(
    services: Services, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Through the services: a removed document's embeddings do not wait on disk for the
    next load or the next start's sweep; nor do a deleted agent's."""
    folder = services.config.data_path("vectors")
    repo = services.repo
    blobs = [np.full(4, i + 1, dtype="<f4").tobytes() for i in range(12)]

    async def insert(conn: Any) -> int:
        agent = await repo.insert_agent_in(conn, "guild:1", "Nova", "p", "1")
        rows = [(i, 1, "", False, f"chunk {i}", blob) for i, blob in enumerate(blobs)]
        await repo.insert_document_in(conn, agent.id, "a.txt", "text", 1, 9, "1", rows)
        return agent.id

    nova = await services.ledger.store.write(insert)
    actor = Actor("guild:1", 1, 1, can_manage=True)
    for remove in ("document", "agent"):
        await services.retriever.top_k("guild:1", nova, np.ones(4, dtype=np.float32))
        await services.retriever.settle()
        assert any(folder.iterdir())
        if remove == "document":
            await services.documents.remove(actor, "Nova", "a.txt")
            assert list(folder.iterdir()) == []
            await services.ledger.store.write(
                lambda conn: repo.insert_document_in(
                    conn,
                    nova,
                    "b.txt",
                    "text",
                    1,
                    9,
                    "1",
                    [(i, 1, "", False, f"chunk {i}", b) for i, b in enumerate(blobs)],
                )
            )
        else:
            await services.agents.delete(actor, "Nova")
            assert list(folder.iterdir()) == []
