"""Top-k retrieval over an agent's chunks: dense (cosine similarity) fused with BM25.

Dense: each chunk is embedded as pieces (its halves, bot/core/documents/pieces.py) and
ranks by its best piece. Hybrid: the dense ranking and SQLite FTS5's BM25 ranking of the
same chunks are fused by reciprocal rank (each list contributes weight / (RRF_K + rank));
exact words a paraphrase
misses (names, options, error codes) are found by BM25, meanings by the embedding.
Chunks marked boilerplate (tables of contents, indexes, licence text) count at a
fraction, so they reach the prompt only when nothing else matches.

Embeddings are stored as float32 (a chunk's pieces one after another) and loaded once
per agent into one row-normalised matrix of pieces, so a query is a single
matrix-vector product. The cache is keyed by the agent's
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
    ids: np.ndarray  # the agent's chunk ids, ascending
    vectors: np.ndarray  # (m, d) float32, rows of unit length: every chunk's pieces
    boilerplate: frozenset[int] = frozenset()  # chunk ids
    owners: np.ndarray | None = None  # (m,) the chunk id of each row (None: ids)

    def chunk_of(self, rows: np.ndarray) -> np.ndarray:
        return (self.ids if self.owners is None else self.owners)[rows]


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


# Reciprocal rank fusion's constant and the BM25 list's weight, chosen on half of the
# benchmark's questions and checked on the other half (docs/benchmarks.md): with the usual
# k = 60 a chunk ranked 5th by both lists beat the dense list's first, which was more
# often the answer; BM25 alone finds less than the dense ranking, so it counts half.
def _best(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, len(scores))
    best = np.argpartition(-scores, k - 1)[:k]
    return best[np.argsort(-scores[best])]


RRF_K = 10
BM25_WEIGHT = 0.5
CANDIDATES = 50  # of each ranking, fused
BOILERPLATE_WEIGHT = 0.3
PIECES_AT_MOST = 4  # pieces a chunk's blob may hold (bot/core/documents/pieces.py: 2)


def fuse(
    rankings: list[list[int]],
    demoted: frozenset[int] = frozenset(),
    weights: list[float] | None = None,
) -> list[int]:
    """Reciprocal rank fusion of ranked id lists, best first; `demoted` ids count less."""
    scores: dict[int, float] = {}
    for number, ranking in enumerate(rankings):
        weight = 1.0 if weights is None else weights[number]
        for rank, chunk_id in enumerate(ranking):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + weight / (RRF_K + rank + 1)
    for chunk_id in demoted & scores.keys():
        scores[chunk_id] *= BOILERPLATE_WEIGHT
    return sorted(scores, key=lambda c: -scores[c])


def _stacked_unit_rows(
    rows: list[tuple[int, bytes, bool]], dims: int
) -> tuple[np.ndarray, np.ndarray]:
    """The blobs as one float32 matrix of unit rows of `dims` (a chunk's blob holds its
    pieces' vectors, one after another), filled and normalised in place: a large agent's
    load then peaks at twice its matrix, not four times. Also each row's chunk id.
    Blobs of another size (stored with another embedding model) are left out."""
    width = dims * 4
    counts = [len(r[1]) // width if len(r[1]) % width == 0 else 0 for r in rows]
    matrix = np.empty((sum(counts), dims), dtype=np.float32)
    owners = np.empty(len(matrix), dtype=np.int64)
    at = 0
    for row, n in zip(rows, counts, strict=True):
        if n:
            matrix[at : at + n] = np.frombuffer(row[1], dtype="<f4").reshape(n, dims)
            owners[at : at + n] = row[0]
            at += n
    # Row norms without a squared copy of the whole matrix (np.linalg.norm makes one).
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))[:, None]
    norms[norms == 0] = 1
    matrix /= norms
    return matrix, owners


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

    async def _matrix(self, account_id: str, agent_id: int, dims: int) -> _Matrix | None:
        current = await self.repo.documents_version(account_id, agent_id)
        if current is None:  # deleted (in any process), or not this account's agent
            self._cache.pop(agent_id, None)
            return None
        version = current.version
        cached = self._cache.get(agent_id)
        if cached is not None and cached.version == version and cached.vectors.shape[1] == dims:
            self._cache[agent_id] = self._cache.pop(agent_id)  # most recently used: last
            return cached
        rows = await self.repo.chunk_vectors(account_id, agent_id)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        boilerplate = frozenset(r[0] for r in rows if r[2])
        vectors, owners = await asyncio.to_thread(_stacked_unit_rows, rows, dims)
        del rows  # the blobs: as large as the matrix itself
        order = np.argsort(ids, kind="stable")
        matrix = _Matrix(version, ids[order], vectors, boilerplate, owners)
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
        matrix = await self._matrix(account_id, agent_id, query.shape[-1])
        if matrix is None or len(matrix.ids) == 0:
            return []
        rankings: list[list[int]] = []
        scores: dict[int, float] = {}
        wanted = max(k, CANDIDATES)
        # (Stored with another embedding model: no rows, nothing comparable; words only.)
        similarity = (
            matrix.vectors @ normalise(query.astype(np.float32)) if len(matrix.vectors) else None
        )
        if mode in {"hybrid", "dense"} and similarity is not None:
            # A chunk ranks by its best piece: enough rows that `wanted` chunks are among
            # them however many pieces each has.
            order = _best(similarity, wanted * PIECES_AT_MOST)
            ranked = dict.fromkeys(int(c) for c in matrix.chunk_of(order))
            rankings.append(list(ranked)[:wanted])
        if mode in {"hybrid", "bm25"} and text:
            matches = await self.repo.chunk_matches(account_id, agent_id, text, wanted)
            rankings.append([chunk_id for chunk_id, _ in matches])
            for chunk_id, rank in matches:
                scores.setdefault(chunk_id, -rank)
        weights = [1.0] * len(rankings)
        if len(rankings) == 2:
            weights[1] = BM25_WEIGHT
        chosen = fuse(rankings, matrix.boilerplate, weights)[:k]
        texts = await self.repo.chunk_texts(account_id, agent_id, chosen)
        if similarity is not None:
            # Every hit's score is its best piece's cosine similarity, found by BM25 or not.
            owners = matrix.chunk_of(np.arange(len(matrix.vectors)))
            for chunk_id in chosen:
                mine = similarity[owners == chunk_id]
                if len(mine):
                    scores[chunk_id] = float(mine.max())
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
