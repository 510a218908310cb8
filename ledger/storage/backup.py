"""`python -m bot ledger backup PATH`: a consistent copy of the live database.

SQLite's online backup API copies the pages under one read transaction, so the copy is
the database as of one commit even while the bot and the sidecar keep writing (WAL lets
them). The copy is written beside its target and renamed into place only after its
`integrity_check` passes, so PATH is either absent or a whole, checked database."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ledger.storage.sqlite import BUSY_TIMEOUT_MS


class BackupError(Exception):
    """The copy could not be made; nothing was left at the target."""


@dataclass(frozen=True)
class BackupReport:
    path: Path
    pages: int
    size_bytes: int


def backup(database: str | Path, target: str | Path) -> BackupReport:
    target = Path(target)
    if target.exists():
        raise BackupError(f"{target} already exists; choose a new file")
    partial = target.with_name(f".{target.name}.partial")
    source = sqlite3.connect(f"file:{Path(database)}?mode=ro", uri=True)
    try:
        source.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        copy = sqlite3.connect(partial)
        try:
            source.backup(copy)  # all pages in one step: one consistent snapshot
            verdict = copy.execute("PRAGMA integrity_check").fetchone()[0]
            pages = copy.execute("PRAGMA page_count").fetchone()[0]
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            copy.close()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    if verdict != "ok":
        partial.unlink(missing_ok=True)
        raise BackupError(f"the copy failed its integrity check ({verdict})")
    os.replace(partial, target)
    return BackupReport(target, int(pages), target.stat().st_size)
