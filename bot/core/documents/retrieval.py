"""Top-k retrieval over an agent's chunks by cosine similarity.

Embeddings are stored as float32 and loaded once per agent into one row-normalised
matrix, so a query is a single matrix-vector product. The cache is keyed by the agent's
documents version, a counter bumped in the transaction of every change to its documents
and read (by agent and account) on every query: an upload or a removal, in this process
or another, invalidates it, and so does deleting the agent. Ids are never reused, and
every read of chunks filters by agent and account, so no cache entry or chunk id can
ever reach another agent's conversation.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from bot.core.repository import Repository


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    document: str
    page: int
    text: str
    score: float


@dataclass
class _Matrix:
    version: int
    ids: np.ndarray
    vectors: np.ndarray  # (n, d) float32, rows of unit length


def to_blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def top_indices(matrix: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the k rows most similar to `query`, best first."""
    scores = matrix @ normalise(query.astype(np.float32))
    k = min(k, len(scores))
    if k == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    best = np.argpartition(-scores, k - 1)[:k]
    order = best[np.argsort(-scores[best])]
    return order, scores[order]


def _stacked_unit_rows(rows: list[tuple[int, bytes]]) -> np.ndarray:
    """The blobs as one float32 matrix of unit rows, filled and normalised in place: a
    large agent's load then peaks at twice its matrix, not four times."""
    matrix = np.empty((len(rows), len(rows[0][1]) // 4), dtype=np.float32)
    for index, (_, blob) in enumerate(rows):
        matrix[index] = np.frombuffer(blob, dtype="<f4")  # ValueError if sizes differ
    # Row norms without a squared copy of the whole matrix (np.linalg.norm makes one).
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))[:, None]
    norms[norms == 0] = 1
    matrix /= norms
    return matrix


class Retriever:
    def __init__(
        self, repo: Repository, max_cached_agents: int = 64, max_cached_bytes: int = 256 * 2**20
    ) -> None:
        self.repo = repo
        self.max_cached = max_cached_agents
        # Agents differ a thousandfold in size: one may hold its account's 20,000 chunks
        # (117 MiB), so a count alone would let 64 of them keep 7 GiB. The bytes bound it too.
        self.max_cached_bytes = max_cached_bytes
        self._cache: dict[int, _Matrix] = {}

    def invalidate(self, agent_id: int) -> None:
        self._cache.pop(agent_id, None)

    async def has_chunks(self, account_id: str, agent_id: int) -> bool:
        current = await self.repo.documents_version(account_id, agent_id)
        return current is not None and current.has_chunks

    async def _matrix(self, account_id: str, agent_id: int) -> _Matrix | None:
        current = await self.repo.documents_version(account_id, agent_id)
        if current is None:  # deleted (in any process), or not this account's agent
            self._cache.pop(agent_id, None)
            return None
        version = current.version
        cached = self._cache.get(agent_id)
        if cached is not None and cached.version == version:
            self._cache[agent_id] = self._cache.pop(agent_id)  # most recently used: last
            return cached
        rows = await self.repo.chunk_vectors(account_id, agent_id)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if rows:
            vectors = await asyncio.to_thread(_stacked_unit_rows, rows)
        else:
            vectors = np.empty((0, 0), dtype=np.float32)
        del rows  # the blobs: as large as the matrix itself
        matrix = _Matrix(version, ids, vectors)
        self._cache.pop(agent_id, None)  # a stale copy: replaced, not a reason to evict
        self._cache[agent_id] = matrix
        # Least recently used first; the matrix just loaded stays, even alone over budget.
        while len(self._cache) > 1 and (
            len(self._cache) > self.max_cached
            or sum(m.vectors.nbytes for m in self._cache.values()) > self.max_cached_bytes
        ):
            self._cache.pop(next(iter(self._cache)))
        return matrix

    async def top_k(
        self, account_id: str, agent_id: int, query: np.ndarray, k: int = 5
    ) -> list[Hit]:
        matrix = await self._matrix(account_id, agent_id)
        if matrix is None or len(matrix.ids) == 0:
            return []
        if matrix.vectors.shape[1] != query.shape[-1]:
            return []  # stored with another embedding model: nothing comparable
        order, scores = top_indices(matrix.vectors, query, k)
        chosen = [int(matrix.ids[i]) for i in order]
        texts = await self.repo.chunk_texts(account_id, agent_id, chosen)
        return [
            Hit(cid, texts[cid][2], texts[cid][1], texts[cid][0], float(score))
            for cid, score in zip(chosen, scores, strict=True)
            if cid in texts
        ]
