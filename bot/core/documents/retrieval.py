"""Top-k retrieval over an agent's chunks: dense (cosine similarity) fused with BM25.

Hybrid: the dense ranking and SQLite FTS5's BM25 ranking of the same chunks are fused by
reciprocal rank (each list contributes 1 / (RRF_K + rank)); exact words a paraphrase
misses (names, options, error codes) are found by BM25, meanings by the embedding.
Chunks marked boilerplate (tables of contents, indexes, licence text) count at a
fraction, so they reach the prompt only when nothing else matches.

Embeddings are stored as float32 and loaded once per agent into one row-normalised
matrix, so a query is a single matrix-vector product. The load is one read on a reader
thread into one contiguous buffer (Repository.chunk_matrix), normalised in place on a
thread; a large agent's product runs on a thread too, so neither stalls the event loop.
The cache keeps the agents in use (least recently used out first, within a count and a
byte budget; an agent idle for IDLE_SECONDS leaves), and counts its hits and loads
(`stats`, reported in /metrics). A large agent's matrix is also kept in a file beside the
database (bot/core/documents/vector_files.py), mapped on the next cold load instead of
read again from the database. The cache is keyed by the agent's
documents version, a counter bumped in the transaction of every change to its documents
and read (by agent and account) on every query: an upload or a removal, in this process
or another, invalidates it, and so does deleting the agent. Ids are never reused, and
every read of chunks filters by agent and account, so no cache entry or chunk id can
ever reach another agent's conversation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np

from bot.core.documents import vector_files
from bot.core.documents.vector_files import VectorFiles
from bot.core.repository import ChunkMatrix, Repository
from ledger.storage import Connection

log = logging.getLogger(__name__)


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


# An agent this large has its top-k product run on a thread: a 20k-chunk product takes
# milliseconds the event loop would stall for; below this the thread hop costs more.
OFF_LOOP_ROWS = 2_000
# An agent whose matrix no query used for this long leaves the cache at the next lookup:
# what stays in memory follows the agents in use, not every agent ever asked.
IDLE_SECONDS = 30 * 60


def _unit_rows(loaded: ChunkMatrix) -> np.ndarray:
    """The contiguous buffer as one float32 matrix of unit rows, normalised in place (a
    view of the buffer: a large agent's load peaks at once its matrix plus its norms)."""
    matrix = np.frombuffer(loaded.vectors, dtype="<f4").reshape(len(loaded.ids), -1)
    # Row norms without a squared copy of the whole matrix (np.linalg.norm makes one).
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))[:, None]
    norms[norms == 0] = 1
    matrix /= norms
    return matrix


def _comparable(matrix: _Matrix, query: np.ndarray) -> bool:
    return bool(matrix.vectors.shape[1] == query.shape[-1])


def _large(matrix: _Matrix) -> bool:
    return len(matrix.ids) >= OFF_LOOP_ROWS


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int  # loads: an agent not cached, or cached at an older documents version
    agents: int
    bytes: int
    load_seconds: float  # spent loading, in all

    @property
    def hit_rate(self) -> float:
        asked = self.hits + self.misses
        return self.hits / asked if asked else 0.0


class Retriever:
    def __init__(
        self,
        repo: Repository,
        max_cached_agents: int = 64,
        max_cached_bytes: int = 256 * 2**20,
        idle_seconds: float = IDLE_SECONDS,
        files: VectorFiles | None = None,
    ) -> None:
        self.repo = repo
        self.files = files
        self.file_loads = 0  # of the misses, those served by a vector file
        self._saving: set[asyncio.Task[None]] = set()
        self.max_cached = max_cached_agents
        # Agents differ a thousandfold in size: one may hold its account's 20,000 chunks
        # (117 MiB), so a count alone would let 64 of them keep 7 GiB. The bytes bound it too.
        self.max_cached_bytes = max_cached_bytes
        self.idle_seconds = idle_seconds
        self._cache: dict[int, _Matrix] = {}
        self._used: dict[int, float] = {}  # agent -> when a query last used its matrix
        self.hits = 0
        self.misses = 0
        self.load_seconds = 0.0

    def stats(self) -> CacheStats:
        return CacheStats(
            self.hits,
            self.misses,
            len(self._cache),
            sum(m.vectors.nbytes + m.ids.nbytes for m in self._cache.values()),
            self.load_seconds,
        )

    def invalidate(self, agent_id: int) -> None:
        self._cache.pop(agent_id, None)
        self._used.pop(agent_id, None)

    async def forget(self, agent_id: int) -> None:
        """The agent's documents changed here, or it was deleted: out of the cache, and
        its vector files removed now rather than at the next load or sweep (a removed
        document's embeddings do not stay on disk)."""
        self.invalidate(agent_id)
        if self.files is not None:
            await self.settle()  # a file being written would come back after the drop
            await asyncio.to_thread(self.files.drop, agent_id)

    async def has_chunks(self, account_id: str, agent_id: int) -> bool:
        current = await self.repo.documents_version(account_id, agent_id)
        return current is not None and current.has_chunks

    def _expire(self, now: float) -> None:
        for agent_id, used in list(self._used.items()):
            if now - used > self.idle_seconds:
                self.invalidate(agent_id)

    async def _matrix(self, account_id: str, agent_id: int) -> _Matrix | None:
        now = time.monotonic()
        self._expire(now)
        current = await self.repo.documents_version(account_id, agent_id)
        if current is None:  # deleted (in any process), or not this account's agent
            self.invalidate(agent_id)
            return None
        cached = self._cache.get(agent_id)
        if cached is not None and cached.version == current.version:
            self._cache[agent_id] = self._cache.pop(agent_id)  # most recently used: last
            self._used[agent_id] = now
            self.hits += 1
            return cached
        self.misses += 1
        started = time.perf_counter()
        matrix = await self._load(account_id, agent_id, current.version)
        self.load_seconds += time.perf_counter() - started
        if matrix is None:
            self.invalidate(agent_id)
            return None
        self._cache.pop(agent_id, None)  # a stale copy: replaced, not a reason to evict
        self._cache[agent_id] = matrix
        self._used[agent_id] = now
        # Least recently used first; the matrix just loaded stays, even alone over budget.
        while len(self._cache) > 1 and (
            len(self._cache) > self.max_cached
            or sum(m.vectors.nbytes for m in self._cache.values()) > self.max_cached_bytes
        ):
            self.invalidate(next(iter(self._cache)))
        return matrix

    async def _load(self, account_id: str, agent_id: int, version: int) -> _Matrix | None:
        """From the agent's matrix file at `version` (mapped, nothing read yet), or from
        the database, writing the file for the next load when the agent is large."""
        if self.files is not None:
            mapped = await asyncio.to_thread(self.files.load, agent_id, version)
            if mapped is not None:
                self.file_loads += 1
                return _Matrix(version, mapped.ids, mapped.vectors, mapped.boilerplate)
        loaded = await self.repo.chunk_matrix(account_id, agent_id)
        if loaded is None:
            if self.files is not None:
                await asyncio.to_thread(self.files.drop, agent_id)
            return None
        ids = np.asarray(loaded.ids, dtype=np.int64)
        if loaded.ids:
            vectors = await asyncio.to_thread(_unit_rows, loaded)
        else:
            vectors = np.empty((0, 0), dtype=np.float32)
        matrix = _Matrix(loaded.version, ids, vectors, loaded.boilerplate)
        if self.files is not None and len(ids) >= vector_files.MIN_ROWS:
            self._save_later(agent_id, matrix)
        return matrix

    def _save_later(self, agent_id: int, matrix: _Matrix) -> None:
        """Write the file in the background: the query that loaded it does not wait."""
        files = self.files
        assert files is not None

        async def save() -> None:
            try:
                await asyncio.to_thread(
                    files.save,
                    agent_id,
                    matrix.version,
                    matrix.ids,
                    matrix.vectors,
                    matrix.boilerplate,
                )
            except Exception:  # a cache: the next load reads the database again
                log.exception("could not write the vector file of agent %d", agent_id)

        task = asyncio.get_running_loop().create_task(save(), name="vector-file")
        self._saving.add(task)
        task.add_done_callback(self._saving.discard)

    async def settle(self) -> None:
        """Wait for the vector files being written (tests, close)."""
        while self._saving:
            await asyncio.gather(*list(self._saving), return_exceptions=True)

    async def sweep_files(self) -> int:
        """Remove vector files of agents deleted or changed since (any process)."""
        if self.files is None:
            return 0
        on_disk = await asyncio.to_thread(self.files.versions)
        current = await self.repo.documents_versions(sorted(on_disk))
        return await asyncio.to_thread(self.files.sweep, current)

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
        wanted = max(k, CANDIDATES)
        dense = mode in {"hybrid", "dense"}
        self._expire(time.monotonic())
        early = self._cache.get(agent_id)
        # The cached matrix of a large agent, comparable with the query, or None.
        large = (
            early
            if dense and early is not None and _comparable(early, query) and _large(early)
            else None
        )
        if large is not None and self.repo.has_one_read:
            words_text = text if mode == "hybrid" else None
            warm = await self._in_one_read(account_id, agent_id, large, query, k, words_text)
            if warm is not None:
                return warm
        # On PostgreSQL a large cached agent's product starts on a thread before its
        # version is read, and the version read and the BM25 query run beside it: the
        # query waits for the product plus one read, not for each in turn. A stale guess
        # is dropped. (On SQLite the one read above has just found the agent changed: a
        # guess from the old matrix would be thrown away.)
        guess: asyncio.Future[tuple[np.ndarray, np.ndarray]] | None = None
        if large is not None and not self.repo.has_one_read:
            guess = asyncio.ensure_future(
                asyncio.to_thread(top_indices, large.vectors, query, wanted)
            )
        try:
            matrix = await self._matrix(account_id, agent_id)
            if matrix is None or len(matrix.ids) == 0:
                return []
            words = None
            if mode in {"hybrid", "bm25"} and text:
                words = asyncio.ensure_future(
                    self.repo.chunk_matches(account_id, agent_id, text, wanted)
                )
            rankings: list[list[int]] = []
            scores: dict[int, float] = {}
            if dense and _comparable(matrix, query):
                # (Stored with another embedding model: nothing comparable, words only.)
                if guess is not None and matrix is early:
                    order, _ = await guess
                elif _large(matrix):
                    order, _ = await asyncio.to_thread(top_indices, matrix.vectors, query, wanted)
                else:
                    order, _ = top_indices(matrix.vectors, query, wanted)
                rankings.append([int(matrix.ids[i]) for i in order])
            if words is not None:
                matches = await words
                rankings.append([chunk_id for chunk_id, _ in matches])
                for chunk_id, rank in matches:
                    scores.setdefault(chunk_id, -rank)
        finally:
            if guess is not None and not guess.done():
                guess.cancel()  # its thread finishes alone; nobody waits for it
        chosen = fuse(rankings, matrix.boilerplate)[:k]
        texts = await self.repo.chunk_texts(account_id, agent_id, chosen)
        return _hits(matrix, query, chosen, texts, scores)

    async def _in_one_read(
        self,
        account_id: str,
        agent_id: int,
        cached: _Matrix,
        query: np.ndarray,
        k: int,
        text: str | None,
    ) -> list[Hit] | None:
        """A warm query of a large agent as one job on a reader thread (SQLite): the
        version read, the product, the BM25 query and the texts read one after the other
        on one connection, so the query crosses to a thread and back once. None when the
        agent changed (the caller reloads it) or on PostgreSQL."""
        wanted = max(k, CANDIDATES)

        async def op(conn: Connection) -> Ranked | None:
            current = await self.repo.documents_version_in(conn, account_id, agent_id)
            if current is None or current.version != cached.version:
                return None
            order, _ = top_indices(cached.vectors, query, wanted)
            rankings = [[int(cached.ids[i]) for i in order]]
            scores: dict[int, float] = {}
            if text:
                matches = await self.repo.chunk_matches_in(conn, account_id, agent_id, text, wanted)
                rankings.append([chunk_id for chunk_id, _ in matches])
                for chunk_id, rank in matches:
                    scores.setdefault(chunk_id, -rank)
            chosen = fuse(rankings, cached.boilerplate)[:k]
            texts = await self.repo.chunk_texts_in(conn, account_id, agent_id, chosen)
            return chosen, texts, scores

        ranked = await self.repo.in_one_read(op)
        if ranked is None or self._cache.get(agent_id) is not cached:
            return None
        self._cache[agent_id] = self._cache.pop(agent_id)  # most recently used: last
        self._used[agent_id] = time.monotonic()
        self.hits += 1
        return _hits(cached, query, *ranked)


Ranked = tuple[list[int], dict[int, tuple[str, int, str, str]], dict[int, float]]


def _hits(
    matrix: _Matrix,
    query: np.ndarray,
    chosen: list[int],
    texts: dict[int, tuple[str, int, str, str]],
    scores: dict[int, float],
) -> list[Hit]:
    """The chosen chunks as hits, in order, each scored by its cosine similarity."""
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
