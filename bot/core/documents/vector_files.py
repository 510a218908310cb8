"""Chunk matrices on disk beside the database: the retrieval cache's second level.

Why: loading a 20,000-chunk agent from the database reads 117 MiB through SQLite's pages,
blob by blob: 0.2 s on the shared 2-core machine, 40-60 times the top-5 product itself,
and every process that starts (or evicts the agent) pays it again. The matrix as loaded
(unit rows, float32) is written once to `<agent>-<version>.f32.npy`, with its chunk ids
and boilerplate flags in `<agent>-<version>.ids.npy`; the next load maps the file
(`np.load(mmap_mode="r")`): nothing is read until the product touches the pages, which the
OS page cache keeps between processes.

A file is derived data, never the source of truth. Its name carries the documents version
its vectors were read with, in one snapshot (Repository.chunk_matrix), and it is used only
when the database says that version is the agent's current one (Retriever._matrix reads
the version first, every query): an upload or a removal bumps the version, so an old file
is never used again. A newer file, or a deleted agent seen by this process, removes the
agent's other files; the background sweep (`sweep`) removes those of agents changed or
deleted elsewhere. Writes are atomic (a temporary name, then os.replace), the vectors
before the ids, so a reader that finds the ids file finds its vectors.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Below this many chunks a load from the database is already quick: no file.
MIN_ROWS = 2_000
_NAME = re.compile(r"^(\d+)-(\d+)\.(f32|ids)\.npy$")
_PARTIAL = re.compile(r"^\.\d+-\d+\.(f32|ids)\.npy\.\d+\.[0-9a-f]{8}$")
PARTIAL_SECONDS = 3600.0
_META = np.dtype([("id", "<i8"), ("boilerplate", "?")])


@dataclass(frozen=True)
class Mapped:
    ids: np.ndarray  # int64, ascending
    vectors: np.ndarray  # (n, d) float32 unit rows, read-only (mapped)
    boilerplate: frozenset[int]


class VectorFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _paths(self, agent_id: int, version: int) -> tuple[Path, Path]:
        stem = f"{agent_id}-{version}"
        return self.folder / f"{stem}.f32.npy", self.folder / f"{stem}.ids.npy"

    def load(self, agent_id: int, version: int) -> Mapped | None:
        """The agent's matrix at `version`, mapped; None if no such file (or a damaged
        one, which is removed: the caller loads from the database and writes it again)."""
        vectors_path, ids_path = self._paths(agent_id, version)
        try:
            meta = np.load(ids_path, allow_pickle=False)
            vectors = np.load(vectors_path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            log.warning("dropping unreadable vector file of agent %d: %s", agent_id, error)
            self.drop(agent_id)
            return None
        if meta.dtype != _META or vectors.dtype != np.float32 or len(vectors) != len(meta):
            log.warning("dropping vector file of agent %d: its shapes disagree", agent_id)
            self.drop(agent_id)
            return None
        ids = np.ascontiguousarray(meta["id"])
        return Mapped(ids, vectors, frozenset(int(i) for i in ids[meta["boilerplate"]]))

    def save(
        self,
        agent_id: int,
        version: int,
        ids: np.ndarray,
        vectors: np.ndarray,
        boilerplate: frozenset[int],
    ) -> None:
        """Write the matrix for `version`, then remove the agent's other versions."""
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = np.empty(len(ids), dtype=_META)
        meta["id"] = ids
        meta["boilerplate"] = np.isin(ids, np.fromiter(boilerplate, dtype=np.int64))
        vectors_path, ids_path = self._paths(agent_id, version)
        for path, array in ((vectors_path, vectors), (ids_path, meta)):
            partial = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
            try:
                with open(partial, "wb") as out:
                    np.save(out, np.ascontiguousarray(array), allow_pickle=False)
                os.replace(partial, path)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        self.drop(agent_id, keep=version)

    def drop(self, agent_id: int, keep: int | None = None) -> None:
        """Remove the agent's files (but those of `keep`); the ids first, so a reader never
        finds ids without their vectors."""
        for version in sorted(self.versions().get(agent_id, set()) - {keep}):
            vectors_path, ids_path = self._paths(agent_id, version)
            ids_path.unlink(missing_ok=True)
            vectors_path.unlink(missing_ok=True)

    def versions(self) -> dict[int, set[int]]:
        """agent -> the versions it has files of."""
        found: dict[int, set[int]] = {}
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return found
        for name in names:
            match = _NAME.match(name)
            if match:
                found.setdefault(int(match[1]), set()).add(int(match[2]))
        return found

    def sweep(self, current: dict[int, int]) -> int:
        """Remove the files of agents not in `current` (agent -> documents version: the
        database's now) and of versions other than theirs, and what a write killed midway
        left (a partial file an hour old); returns the agents tidied."""
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            names = []
        for name in names:
            path = self.folder / name
            if _PARTIAL.match(name) and time.time() - path.stat().st_mtime > PARTIAL_SECONDS:
                path.unlink(missing_ok=True)
        tidied = 0
        for agent_id, versions in self.versions().items():
            keep = current.get(agent_id)
            if versions - {keep}:
                self.drop(agent_id, keep=keep)
                tidied += 1
        return tidied
