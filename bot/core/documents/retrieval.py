"""Top-k retrieval over an agent's chunks: dense (cosine similarity) fused with BM25.

Hybrid: the dense ranking and SQLite FTS5's BM25 ranking of the same chunks are fused by
reciprocal rank (each list contributes 1 / (RRF_K + rank)); exact words a paraphrase
misses (names, options, error codes) are found by BM25, meanings by the embedding.
Chunks marked boilerplate (tables of contents, indexes, licence text) count at a
fraction, so they reach the prompt only when nothing else matches.

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
    label: str = ""  # where in the document: "page iv", or the nearest heading

    @property
    def source(self) -> str:
        """The citation: the document, and where in it when known."""
        return f"{self.document}, {self.label}" if self.label else self.document


@dataclass
class _Matrix:
    version: int
    ids: np.ndarray
    vectors: np.ndarray  # (n, d) float32, rows of unit length
    boilerplate: frozenset[int] = frozenset()  # chunk ids


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


RRF_K = 60  # the usual constant of reciprocal rank fusion
CANDIDATES = 50  # of each ranking, fused
BOILERPLATE_WEIGHT = 0.3


def fuse(rankings: list[list[int]], demoted: frozenset[int] = frozenset()) -> list[int]:
    """Reciprocal rank fusion of ranked id lists, best first; `demoted` ids count less."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, chunk_id in enumerate(ranking):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank + 1)
    for chunk_id in demoted & scores.keys():
        scores[chunk_id] *= BOILERPLATE_WEIGHT
    return sorted(scores, key=lambda c: -scores[c])


def _stacked_unit_rows(rows: list[tuple[int, bytes, bool]]) -> np.ndarray:
    """The blobs as one float32 matrix of unit rows, filled and normalised in place: a
    large agent's load then peaks at twice its matrix, not four times."""
    matrix = np.empty((len(rows), len(rows[0][1]) // 4), dtype=np.float32)
    for index, row in enumerate(rows):
        matrix[index] = np.frombuffer(row[1], dtype="<f4")  # ValueError if sizes differ
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
        boilerplate = frozenset(r[0] for r in rows if r[2])
        if rows:
            vectors = await asyncio.to_thread(_stacked_unit_rows, rows)
        else:
            vectors = np.empty((0, 0), dtype=np.float32)
        del rows  # the blobs: as large as the matrix itself
        matrix = _Matrix(version, ids, vectors, boilerplate)
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
        self,
        account_id: str,
        agent_id: int,
        query: np.ndarray,
        k: int = 5,
        text: str | None = None,
        *,
        mode: str = "hybrid",
    ) -> list[Hit]:
        """The k best chunks for the query's embedding and, in "hybrid" mode, its words
        (`text`); "dense" and "bm25" rank by one of the two alone (benchmarks)."""
        matrix = await self._matrix(account_id, agent_id)
        if matrix is None or len(matrix.ids) == 0:
            return []
        rankings: list[list[int]] = []
        scores: dict[int, float] = {}
        if mode in {"hybrid", "dense"} and matrix.vectors.shape[1] == query.shape[-1]:
            # (Stored with another embedding model: nothing comparable, words only.)
            order, _ = top_indices(matrix.vectors, query, max(k, CANDIDATES))
            rankings.append([int(matrix.ids[i]) for i in order])
        if mode in {"hybrid", "bm25"} and text:
            matches = await self.repo.chunk_matches(account_id, agent_id, text, max(k, CANDIDATES))
            rankings.append([chunk_id for chunk_id, _ in matches])
            for chunk_id, rank in matches:
                scores.setdefault(chunk_id, -rank)
        chosen = fuse(rankings, matrix.boilerplate)[:k]
        texts = await self.repo.chunk_texts(account_id, agent_id, chosen)
        if matrix.vectors.shape[1] == query.shape[-1]:
            # Every hit's score is its cosine similarity, found by BM25 or not.
            rows = np.searchsorted(matrix.ids, chosen)
            similarity = matrix.vectors[rows] @ normalise(query.astype(np.float32))
            scores = dict(zip(chosen, map(float, similarity), strict=True))
        return [
            Hit(
                cid,
                texts[cid][2],
                texts[cid][1],
                texts[cid][0],
                scores.get(cid, 0.0),
                texts[cid][3],
            )
            for cid in chosen
            if cid in texts
        ]
