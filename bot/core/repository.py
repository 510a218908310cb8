"""The application's own tables (agents, documents, chunks, conversations, server rules), in the
ledger's database file and through the ledger's single writer, so that a charge and
the thing it paid for can commit in one transaction.

Its schema has its own numbered migrations, tracked in `app_schema` (ledger/storage/migrate.py
runs them on either engine). All the SQL of these tables lives in this module.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np

from bot.errors import NotFound
from ledger.storage import Connection, Row, Store, serialize

T = TypeVar("T")

APP_MIGRATIONS: list[str] = [
    # 1: agents with their avatar; documents, chunks and conversations for chat.
    """
    CREATE TABLE agents (
        id            INTEGER PRIMARY KEY,
        account_id    TEXT NOT NULL,
        name          TEXT NOT NULL,
        name_key      TEXT NOT NULL,  -- casefolded: names are unique per account, any case
        prompt        TEXT NOT NULL,
        creator_id    TEXT NOT NULL,
        avatar_path   TEXT,
        avatar_source TEXT CHECK (avatar_source IN ('generated', 'uploaded')),
        avatar_version INTEGER NOT NULL DEFAULT 0,
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL,
        UNIQUE (account_id, name_key)
    );
    CREATE TABLE documents (
        id          INTEGER PRIMARY KEY,
        agent_id    INTEGER NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
        name        TEXT NOT NULL,
        kind        TEXT NOT NULL,
        pages       INTEGER NOT NULL,
        chunks      INTEGER NOT NULL,
        tokens      INTEGER NOT NULL,
        uploader_id TEXT NOT NULL,
        created_at  TEXT NOT NULL
    );
    CREATE INDEX documents_agent ON documents(agent_id);
    CREATE TABLE chunks (
        id          INTEGER PRIMARY KEY,
        document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        agent_id    INTEGER NOT NULL,
        idx         INTEGER NOT NULL,
        page        INTEGER NOT NULL,
        text        TEXT NOT NULL,
        embedding   BLOB NOT NULL  -- float32, little-endian
    );
    CREATE INDEX chunks_agent ON chunks(agent_id);
    CREATE INDEX chunks_document ON chunks(document_id);
    CREATE TABLE conversations (
        id          INTEGER PRIMARY KEY,
        thread_key  TEXT NOT NULL UNIQUE,  -- a Discord thread id, or a console session
        agent_id    INTEGER NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
        account_id  TEXT NOT NULL,
        created_at  TEXT NOT NULL
    );
    CREATE TABLE turns (
        id              INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        role            TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        content         TEXT NOT NULL,
        tokens          INTEGER NOT NULL,
        created_at      TEXT NOT NULL
    );
    CREATE INDEX turns_conversation ON turns(conversation_id, id);
    """,
    # 2 (chat): a conversation whose agent was deleted is remembered, so that its
    # thread can say so instead of falling silent.
    """
    CREATE TABLE retired_conversations (
        thread_key  TEXT PRIMARY KEY,
        agent_name  TEXT NOT NULL,
        retired_at  TEXT NOT NULL
    );
    """,
    # 3: deleting an agent cascades to its conversations: found by index, not by a scan.
    """
    CREATE INDEX conversations_agent ON conversations(agent_id);
    """,
    # 4: ids are never reused (AUTOINCREMENT): a row deleted while work for it is in
    # flight must never be mistaken for a new one that took its id (issue 10, finding 3).
    # Each agent gets documents_version, bumped in the transaction of every change to its
    # documents: the retrieval cache's key. SQLite adds AUTOINCREMENT only by rebuilding
    # a table. The new tables are built beside the old ones, filled with the same ids, and
    # the old ones dropped children first, so no ON DELETE CASCADE fires on live rows;
    # renaming a table rewrites the references to it in the others.
    """
    CREATE TABLE agents_v2 (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id    TEXT NOT NULL,
        name          TEXT NOT NULL,
        name_key      TEXT NOT NULL,
        prompt        TEXT NOT NULL,
        creator_id    TEXT NOT NULL,
        avatar_path   TEXT,
        avatar_source TEXT CHECK (avatar_source IN ('generated', 'uploaded')),
        avatar_version INTEGER NOT NULL DEFAULT 0,
        documents_version INTEGER NOT NULL DEFAULT 0,
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL,
        UNIQUE (account_id, name_key)
    );
    CREATE TABLE documents_v2 (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        agent_id    INTEGER NOT NULL REFERENCES agents_v2(id) ON DELETE CASCADE,
        name        TEXT NOT NULL,
        kind        TEXT NOT NULL,
        pages       INTEGER NOT NULL,
        chunks      INTEGER NOT NULL,
        tokens      INTEGER NOT NULL,
        uploader_id TEXT NOT NULL,
        created_at  TEXT NOT NULL
    );
    CREATE TABLE chunks_v2 (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        document_id INTEGER NOT NULL REFERENCES documents_v2(id) ON DELETE CASCADE,
        agent_id    INTEGER NOT NULL,
        idx         INTEGER NOT NULL,
        page        INTEGER NOT NULL,
        text        TEXT NOT NULL,
        embedding   BLOB NOT NULL
    );
    CREATE TABLE conversations_v2 (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        thread_key  TEXT NOT NULL UNIQUE,
        agent_id    INTEGER NOT NULL REFERENCES agents_v2(id) ON DELETE CASCADE,
        account_id  TEXT NOT NULL,
        created_at  TEXT NOT NULL
    );
    CREATE TABLE turns_v2 (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id INTEGER NOT NULL REFERENCES conversations_v2(id) ON DELETE CASCADE,
        role            TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        content         TEXT NOT NULL,
        tokens          INTEGER NOT NULL,
        created_at      TEXT NOT NULL
    );
    INSERT INTO agents_v2 (id, account_id, name, name_key, prompt, creator_id, avatar_path,
        avatar_source, avatar_version, created_at, updated_at)
        SELECT id, account_id, name, name_key, prompt, creator_id, avatar_path, avatar_source,
        avatar_version, created_at, updated_at FROM agents;
    INSERT INTO documents_v2 SELECT id, agent_id, name, kind, pages, chunks, tokens,
        uploader_id, created_at FROM documents;
    INSERT INTO chunks_v2 SELECT id, document_id, agent_id, idx, page, text, embedding
        FROM chunks;
    INSERT INTO conversations_v2 SELECT id, thread_key, agent_id, account_id, created_at
        FROM conversations;
    INSERT INTO turns_v2 SELECT id, conversation_id, role, content, tokens, created_at
        FROM turns;
    DROP TABLE turns;
    DROP TABLE chunks;
    DROP TABLE documents;
    DROP TABLE conversations;
    DROP TABLE agents;
    ALTER TABLE agents_v2 RENAME TO agents;
    ALTER TABLE documents_v2 RENAME TO documents;
    ALTER TABLE chunks_v2 RENAME TO chunks;
    ALTER TABLE conversations_v2 RENAME TO conversations;
    ALTER TABLE turns_v2 RENAME TO turns;
    CREATE INDEX documents_agent ON documents(agent_id);
    CREATE INDEX chunks_agent ON chunks(agent_id);
    CREATE INDEX chunks_document ON chunks(document_id);
    CREATE INDEX turns_conversation ON turns(conversation_id, id);
    CREATE INDEX conversations_agent ON conversations(agent_id);
    """,
    # 5 (limits): a server's rules: where agents may talk, the role paid commands need,
    # and the channel low-balance alerts go to. Channels are space-separated ids.
    """
    CREATE TABLE server_rules (
        account_id    TEXT PRIMARY KEY,
        channels      TEXT NOT NULL DEFAULT '',
        paid_role     TEXT,
        alert_channel TEXT,
        updated_at    TEXT NOT NULL
    );
    """,
    # 6: each chunk's citation label (a PDF's page label, or the nearest heading), and a
    # full-text index of the chunks for BM25 retrieval beside the dense one. The index is
    # an external-content FTS5 table kept by triggers, so it changes in the transaction
    # that changes the chunks: an upload that fails, or a removed document or agent (its
    # chunks deleted in batches, each row firing the trigger), leaves it consistent.
    """
    ALTER TABLE chunks ADD COLUMN label TEXT NOT NULL DEFAULT '';
    ALTER TABLE chunks ADD COLUMN boilerplate INTEGER NOT NULL DEFAULT 0;
    CREATE VIRTUAL TABLE chunks_fts USING fts5(
        text, content='chunks', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
    );
    UPDATE chunks SET label = 'page ' || page
        WHERE document_id IN (SELECT id FROM documents WHERE kind = 'pdf');
    INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild');
    CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
        INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
        INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END;
    """,
]


_FTS_WORD = re.compile(r"\w+")
CHUNK_DELETE_BATCH = 500  # chunks per transaction when a document or an agent goes


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Agent:
    id: int
    account_id: str
    name: str
    prompt: str
    creator_id: str
    avatar_path: str | None
    avatar_source: str | None
    avatar_version: int
    created_at: str


def _agent(row: Row) -> Agent:
    return Agent(
        row["id"],
        row["account_id"],
        row["name"],
        row["prompt"],
        row["creator_id"],
        row["avatar_path"],
        row["avatar_source"],
        row["avatar_version"],
        row["created_at"],
    )


def name_key(name: str) -> str:
    return name.casefold()


class Repository:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def migrate(self) -> None:
        await self.store.migrate("app_schema", APP_MIGRATIONS)

    # ---- agents ---------------------------------------------------------------------

    async def count_agents_in(self, conn: Connection, account_id: str) -> int:
        # Counted, then checked against the plan's limit, then inserted: on PostgreSQL the
        # creations of one account take turns (SQLite's single writer already does).
        await serialize(conn, f"agents:{account_id}")
        rows = await conn.execute_fetchall(
            "SELECT COUNT(*) FROM agents WHERE account_id = ?", (account_id,)
        )
        return int(rows[0][0])

    async def agent_named_in(self, conn: Connection, account_id: str, name: str) -> Agent | None:
        rows = await conn.execute_fetchall(
            "SELECT * FROM agents WHERE account_id = ? AND name_key = ?",
            (account_id, name_key(name)),
        )
        return _agent(rows[0]) if rows else None

    async def insert_agent_in(
        self, conn: Connection, account_id: str, name: str, prompt: str, creator_id: str
    ) -> Agent:
        now = _now()
        rows = await conn.execute_fetchall(
            "INSERT INTO agents (account_id, name, name_key, prompt, creator_id, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
            (account_id, name, name_key(name), prompt, creator_id, now, now),
        )
        return _agent(rows[0])

    async def require_agent_in(self, conn: Connection, account_id: str, agent_id: int) -> None:
        """Inside a commit's transaction: the agent still exists in this account, or
        AgentGone, so nothing is stored into (or charged for) an agent deleted meanwhile."""
        rows = await conn.execute_fetchall(
            "SELECT 1 FROM agents WHERE id = ? AND account_id = ?", (agent_id, account_id)
        )
        if not rows:
            raise AgentGone(agent_id)

    async def agent(self, account_id: str, name: str) -> Agent | None:
        rows = await self.store.reader.execute_fetchall(
            "SELECT * FROM agents WHERE account_id = ? AND name_key = ?",
            (account_id, name_key(name)),
        )
        return _agent(rows[0]) if rows else None

    async def agent_by_id(self, agent_id: int) -> Agent | None:
        rows = await self.store.reader.execute_fetchall(
            "SELECT * FROM agents WHERE id = ?", (agent_id,)
        )
        return _agent(rows[0]) if rows else None

    async def agents(self, account_id: str, prefix: str = "", limit: int = 100) -> list[Agent]:
        escaped = prefix.casefold().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = await self.store.reader.execute_fetchall(
            "SELECT * FROM agents WHERE account_id = ? AND name_key LIKE ? ESCAPE '\\'"
            " ORDER BY name_key LIMIT ?",
            (account_id, f"%{escaped}%", limit),
        )
        return [_agent(r) for r in rows]

    async def update_prompt(self, agent_id: int, prompt: str) -> None:
        await self.store.write(
            lambda conn: conn.execute(
                "UPDATE agents SET prompt = ?, updated_at = ? WHERE id = ?",
                (prompt, _now(), agent_id),
            )
        )

    async def delete_agent(self, agent_id: int) -> None:
        async def op(conn: Connection) -> None:
            await conn.execute(
                "INSERT INTO retired_conversations (thread_key, agent_name, retired_at)"
                " SELECT c.thread_key, a.name, ? FROM conversations c JOIN agents a"
                " ON a.id = c.agent_id WHERE c.agent_id = ?"
                " ON CONFLICT (thread_key) DO NOTHING",
                (_now(), agent_id),
            )
            await conn.execute("DELETE FROM agents WHERE id = ?", (agent_id,))

        await self._delete_chunks("agent_id = ?", (agent_id,), agent_id)
        await self.store.write(op)

    async def agent_losses(self, agent_id: int) -> tuple[int, int, int]:
        """What deleting an agent loses: (documents, chunks, tokens spent on them)."""
        rows = await self.store.reader.execute_fetchall(
            "SELECT COUNT(*), COALESCE(SUM(chunks), 0), COALESCE(SUM(tokens), 0)"
            " FROM documents WHERE agent_id = ?",
            (agent_id,),
        )
        return int(rows[0][0]), int(rows[0][1]), int(rows[0][2])

    async def avatar_tokens(self, agent: Agent) -> int:
        """Tokens charged for generating this agent's avatars (every generation, replaced
        ones too): what deleting it throws away. Charges name their agent; the creation
        time keeps out an earlier, deleted agent of the same name."""
        rows = await self.store.reader.execute_fetchall(
            "SELECT COALESCE(SUM(tokens_used), 0) FROM token_usage WHERE account_id = ?"
            " AND agent = ? AND operation_type = 'avatar_generation' AND status = 'charged'"
            " AND created_at >= ?",
            (agent.account_id, agent.name, agent.created_at),
        )
        return int(rows[0][0])

    async def set_avatar_in(
        self, conn: Connection, agent_id: int, path: str, source: str
    ) -> str | None:
        """Point the agent at `path`; returns the file it pointed at until now."""
        rows = await conn.execute_fetchall(
            "SELECT avatar_path FROM agents WHERE id = ?", (agent_id,)
        )
        await conn.execute(
            "UPDATE agents SET avatar_path = ?, avatar_source = ?,"
            " avatar_version = avatar_version + 1, updated_at = ? WHERE id = ?",
            (path, source, _now(), agent_id),
        )
        return rows[0][0] if rows else None

    async def avatar_paths(self) -> set[str]:
        rows = await self.store.reader.execute_fetchall(
            "SELECT avatar_path FROM agents WHERE avatar_path IS NOT NULL"
        )
        return {r[0] for r in rows}

    # ---- documents and chunks -------------------------------------------------------

    async def insert_document_in(
        self,
        conn: Connection,
        agent_id: int,
        name: str,
        kind: str,
        pages: int,
        tokens: int,
        uploader_id: str,
        chunks: list[tuple[int, int, str, bool, str, bytes]],  # index, page, label,
        # boilerplate (a table of contents, index or licence), text, float32 embedding
    ) -> int:
        rows = await conn.execute_fetchall(
            "INSERT INTO documents (agent_id, name, kind, pages, chunks, tokens, uploader_id,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (agent_id, name, kind, pages, len(chunks), tokens, uploader_id, _now()),
        )
        document_id = int(rows[0][0])
        await conn.executemany(
            "INSERT INTO chunks (document_id, agent_id, idx, page, label, boilerplate, text,"
            " embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(document_id, agent_id, *row) for row in chunks],
        )
        await _bump_documents_version(conn, agent_id)
        return document_id

    async def documents(self, agent_id: int) -> list[Document]:
        rows = await self.store.reader.execute_fetchall(
            "SELECT * FROM documents WHERE agent_id = ? ORDER BY id", (agent_id,)
        )
        return [Document(**dict(r)) for r in rows]

    async def _delete_chunks(self, where: str, params: tuple[int, ...], agent_id: int) -> None:
        """Delete chunks a batch per transaction, so paid calls (which wait for the
        writer) wait for one batch, not for 20,000 chunks. The owner's row goes last: a
        process killed midway leaves chunks that still belong to their document, never
        orphans, and deleting again finishes the work."""
        while True:

            async def op(conn: Connection) -> int:
                cursor = await conn.execute(
                    f"DELETE FROM chunks WHERE id IN (SELECT id FROM chunks WHERE {where}"
                    f" LIMIT {CHUNK_DELETE_BATCH})",
                    params,
                )
                deleted = int(cursor.rowcount)
                if deleted:
                    await _bump_documents_version(conn, agent_id)
                return deleted

            if await self.store.write(op) < CHUNK_DELETE_BATCH:
                return

    async def delete_document(self, agent_id: int, document_id: int) -> None:
        await self._delete_chunks(
            "document_id = ? AND agent_id = ?", (document_id, agent_id), agent_id
        )

        async def op(conn: Connection) -> None:
            await conn.execute(
                "DELETE FROM documents WHERE id = ? AND agent_id = ?", (document_id, agent_id)
            )
            await _bump_documents_version(conn, agent_id)

        await self.store.write(op)

    async def chunk_count(self, account_id: str) -> int:
        return await self.chunk_count_in(self.store.reader, account_id)

    async def chunk_count_in(self, conn: Connection, account_id: str) -> int:
        # The caller checks the cap on this count and then inserts: uploads of one account
        # take turns through that on PostgreSQL (SQLite's single writer already does).
        await serialize(conn, f"chunks:{account_id}")
        rows = await conn.execute_fetchall(
            "SELECT COUNT(*) FROM chunks c JOIN agents a ON a.id = c.agent_id"
            " WHERE a.account_id = ?",
            (account_id,),
        )
        return int(rows[0][0])

    async def documents_version(self, account_id: str, agent_id: int) -> DocumentsVersion | None:
        """The retrieval cache's key: bumped in the transaction of every change to the
        agent's documents. None when the account has no such agent (deleted, or never
        its own), which every process sees at its next read."""
        return await self.documents_version_in(self.store.reader, account_id, agent_id)

    async def documents_version_in(
        self, conn: Connection, account_id: str, agent_id: int
    ) -> DocumentsVersion | None:
        rows = await conn.execute_fetchall(
            "SELECT a.documents_version, EXISTS (SELECT 1 FROM chunks c WHERE c.agent_id = a.id)"
            " FROM agents a WHERE a.id = ? AND a.account_id = ?",
            (agent_id, account_id),
        )
        return DocumentsVersion(int(rows[0][0]), bool(rows[0][1])) if rows else None

    async def documents_versions(self, agent_ids: list[int]) -> dict[int, int]:
        """agent -> documents version, of those of `agent_ids` that still exist."""
        found: dict[int, int] = {}
        for start in range(0, len(agent_ids), 500):
            part = agent_ids[start : start + 500]
            marks = ", ".join("?" * len(part))
            rows = await self.store.reader.execute_fetchall(
                f"SELECT id, documents_version FROM agents WHERE id IN ({marks})", tuple(part)
            )
            found.update((int(r[0]), int(r[1])) for r in rows)
        return found

    @property
    def has_one_read(self) -> bool:
        """Whether `in_one_read` runs its op (SQLite's reader pool) or answers None."""
        return hasattr(self.store.reader, "run_op")

    async def in_one_read(self, op: Callable[[Connection], Awaitable[T]]) -> T | None:
        """`op` run whole on a reader thread, its reads on one connection, on SQLite (it
        may await only that connection, and may compute between reads: a retrieval's
        product); None on PostgreSQL, whose reads are the server's: the caller reads
        the usual way."""
        run_op = getattr(self.store.reader, "run_op", None)
        return None if run_op is None else await run_op(op)

    async def chunk_matrix(self, account_id: str, agent_id: int) -> ChunkMatrix | None:
        """The agent's documents version and every chunk's (id, embedding, boilerplate),
        the embeddings as one contiguous buffer, all read in one snapshot (so the version
        is the one of these vectors). None when the account has no such agent.

        On SQLite the whole read is one job on a reader thread: the blobs are copied
        into the buffer as the cursor yields them, and nothing per chunk crosses to the
        event loop. On PostgreSQL the server concatenates them (string_agg): one value."""
        if self.store.dialect == "postgresql":
            return await self._chunk_matrix_pg(account_id, agent_id)
        run = self.store.reader.run
        return await run(lambda raw: _chunk_matrix_sqlite(raw, account_id, agent_id))

    async def _chunk_matrix_pg(self, account_id: str, agent_id: int) -> ChunkMatrix | None:
        reader = self.store.reader
        await reader.execute("BEGIN")
        try:
            rows = await reader.execute_fetchall(
                "SELECT documents_version FROM agents WHERE id = ? AND account_id = ?",
                (agent_id, account_id),
            )
            if not rows:
                return None
            (found,) = await reader.execute_fetchall(
                "SELECT MIN(length(embedding)), MAX(length(embedding)),"
                " array_agg(id ORDER BY id), array_agg(id) FILTER (WHERE boilerplate != 0),"
                " string_agg(embedding, ''::bytea ORDER BY id) FROM chunks WHERE agent_id = ?",
                (agent_id,),
            )
        finally:
            await reader.execute("COMMIT")
        shortest, longest, ids, boilerplate, vectors = found
        if shortest != longest:
            raise ValueError(f"agent {agent_id}'s embeddings differ in size")
        return ChunkMatrix(
            int(rows[0][0]),
            [int(i) for i in ids or ()],
            bytearray(vectors or b""),
            int(longest or 0),
            frozenset(int(i) for i in boilerplate or ()),
        )

    async def chunk_texts(
        self, account_id: str, agent_id: int, chunk_ids: list[int]
    ) -> dict[int, tuple[str, int, str, str]]:
        """id -> (text, page, document name, label), of this agent's chunks only."""
        return await self.chunk_texts_in(self.store.reader, account_id, agent_id, chunk_ids)

    async def chunk_texts_in(
        self, conn: Connection, account_id: str, agent_id: int, chunk_ids: list[int]
    ) -> dict[int, tuple[str, int, str, str]]:
        if not chunk_ids:
            return {}
        marks = ", ".join("?" * len(chunk_ids))
        rows = await conn.execute_fetchall(
            "SELECT c.id, c.text, c.page, d.name, c.label FROM chunks c"
            " JOIN documents d ON d.id = c.document_id JOIN agents a ON a.id = d.agent_id"
            f" WHERE c.agent_id = ? AND a.account_id = ? AND c.id IN ({marks})",
            (agent_id, account_id, *chunk_ids),
        )
        return {int(r[0]): (r[1], int(r[2]), r[3], r[4]) for r in rows}

    async def chunk_matches(
        self, account_id: str, agent_id: int, query: str, limit: int
    ) -> list[tuple[int, float]]:
        """(chunk id, BM25 rank: lower is better) of this agent's chunks matching any
        word of `query`, best first."""
        return await self.chunk_matches_in(self.store.reader, account_id, agent_id, query, limit)

    async def chunk_matches_in(
        self, conn: Connection, account_id: str, agent_id: int, query: str, limit: int
    ) -> list[tuple[int, float]]:
        words = [w for w in _FTS_WORD.findall(query.lower()) if len(w) > 1][:64]
        if not words:
            return []
        if self.store.dialect == "postgresql":
            # PostgreSQL's text search over the index of migration 6 (ledger/storage/
            # migrate.py makes it); ts_rank is higher-better, so negated like bm25().
            rows = await conn.execute_fetchall(
                "SELECT c.id, -ts_rank(to_tsvector('simple', c.text), q) AS rank"
                " FROM chunks c JOIN agents a ON a.id = c.agent_id,"
                " to_tsquery('simple', ?) AS q"
                " WHERE to_tsvector('simple', c.text) @@ q AND c.agent_id = ?"
                " AND a.account_id = ? ORDER BY rank, c.id LIMIT ?",
                (" | ".join(dict.fromkeys(words)), agent_id, account_id, limit),
            )
            return [(int(r[0]), float(r[1])) for r in rows]
        expression = " OR ".join(f'"{w}"' for w in dict.fromkeys(words))
        rows = await conn.execute_fetchall(
            "SELECT f.rowid, bm25(chunks_fts) AS rank FROM chunks_fts f"
            " JOIN chunks c ON c.id = f.rowid JOIN agents a ON a.id = c.agent_id"
            " WHERE chunks_fts MATCH ? AND c.agent_id = ? AND a.account_id = ?"
            " ORDER BY rank LIMIT ?",
            (expression, agent_id, account_id, limit),
        )
        return [(int(r[0]), float(r[1])) for r in rows]

    # ---- conversations --------------------------------------------------------------

    async def conversation(self, thread_key: str) -> Conversation | None:
        rows = await self.store.reader.execute_fetchall(
            "SELECT id, thread_key, agent_id, account_id FROM conversations WHERE thread_key = ?",
            (thread_key,),
        )
        return Conversation(*rows[0]) if rows else None

    async def open_conversation_in(
        self, conn: Connection, thread_key: str, agent_id: int, account_id: str
    ) -> int:
        rows = await conn.execute_fetchall(
            "INSERT INTO conversations (thread_key, agent_id, account_id, created_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (thread_key)"
            " DO UPDATE SET thread_key = excluded.thread_key"
            " RETURNING id",
            (thread_key, agent_id, account_id, _now()),
        )
        return int(rows[0][0])

    async def retired_agent(self, thread_key: str) -> str | None:
        """The name of the deleted agent this thread talked with, if it was one."""
        rows = await self.store.reader.execute_fetchall(
            "SELECT agent_name FROM retired_conversations WHERE thread_key = ?", (thread_key,)
        )
        return str(rows[0][0]) if rows else None

    async def delete_conversation(self, thread_key: str) -> int:
        """Forget a conversation (its turns go with it); returns the turns forgotten."""

        async def op(conn: Connection) -> int:
            rows = await conn.execute_fetchall(
                "SELECT COUNT(*) FROM turns t JOIN conversations c ON c.id = t.conversation_id"
                " WHERE c.thread_key = ?",
                (thread_key,),
            )
            await conn.execute(
                "DELETE FROM turns WHERE conversation_id IN"
                " (SELECT id FROM conversations WHERE thread_key = ?)",
                (thread_key,),
            )
            await conn.execute("DELETE FROM conversations WHERE thread_key = ?", (thread_key,))
            return int(rows[0][0])

        return await self.store.write(op)

    async def recent_turns(self, conversation_id: int, limit: int = 50) -> list[Turn]:
        rows = await self.store.reader.execute_fetchall(
            "SELECT role, content, tokens FROM turns WHERE conversation_id = ?"
            " ORDER BY id DESC LIMIT ?",
            (conversation_id, limit),
        )
        return [Turn(*r) for r in reversed(rows)]

    async def add_turns_in(self, conn: Connection, conversation_id: int, turns: list[Turn]) -> None:
        now = _now()
        await conn.executemany(
            "INSERT INTO turns (conversation_id, role, content, tokens, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [(conversation_id, t.role, t.content, t.tokens, now) for t in turns],
        )

    # ---- server rules (bot/core/limits.py) ------------------------------------------

    async def server_rules(self, account_id: str) -> ServerRules:
        rows = await self.store.reader.execute_fetchall(
            "SELECT channels, paid_role, alert_channel FROM server_rules WHERE account_id = ?",
            (account_id,),
        )
        return _rules(rows[0] if rows else None)

    async def update_rules(
        self, account_id: str, change: Callable[[ServerRules], ServerRules]
    ) -> ServerRules:
        """Read, change and store a server's rules in one write transaction."""

        async def op(conn: Connection) -> ServerRules:
            rows = await conn.execute_fetchall(
                "SELECT channels, paid_role, alert_channel FROM server_rules WHERE account_id = ?",
                (account_id,),
            )
            new = change(_rules(rows[0] if rows else None))
            await conn.execute(
                "INSERT INTO server_rules (account_id, channels, paid_role, alert_channel,"
                " updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET"
                " channels = excluded.channels, paid_role = excluded.paid_role,"
                " alert_channel = excluded.alert_channel, updated_at = excluded.updated_at",
                (
                    account_id,
                    " ".join(map(str, new.channels)),
                    _id_text(new.paid_role),
                    _id_text(new.alert_channel),
                    _now(),
                ),
            )
            return new

        return await self.store.write(op)


@dataclass(frozen=True)
class ServerRules:
    channels: tuple[int, ...] = ()  # where agents may talk (empty: anywhere)
    paid_role: int | None = None  # the role paid commands need (None: anyone)
    alert_channel: int | None = None  # where low-balance alerts go (None: the owner's DMs)


def _rules(row: Any) -> ServerRules:
    if row is None:
        return ServerRules()
    return ServerRules(
        tuple(int(c) for c in row[0].split()),
        None if row[1] is None else int(row[1]),
        None if row[2] is None else int(row[2]),
    )


def _id_text(value: int | None) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class DocumentsVersion:
    version: int
    has_chunks: bool


@dataclass(frozen=True)
class ChunkMatrix:
    """An agent's embeddings as read for retrieval: row i of `vectors` is chunk ids[i]."""

    version: int  # the agent's documents_version these vectors are of
    ids: list[int]  # ascending
    vectors: Any  # a writable buffer: len(ids) rows of `width` bytes (float32, little-endian)
    width: int  # bytes per row (0 when there are no chunks)
    boilerplate: frozenset[int]  # chunk ids


def _chunk_matrix_sqlite(raw: Any, account_id: str, agent_id: int) -> ChunkMatrix | None:
    """On a reader thread, in one read transaction (Repository.chunk_matrix)."""
    cursor = raw.cursor()
    cursor.row_factory = None
    raw.execute("BEGIN")
    try:
        found = cursor.execute(
            "SELECT documents_version FROM agents WHERE id = ? AND account_id = ?",
            (agent_id, account_id),
        ).fetchone()
        if found is None:
            return None
        (count,) = cursor.execute(
            "SELECT COUNT(*) FROM chunks WHERE agent_id = ?", (agent_id,)
        ).fetchone()
        ids: list[int] = []
        boilerplate: list[int] = []
        buffer, view, width = np.empty(0, dtype=np.uint8), memoryview(b""), 0
        rows = cursor.execute(
            "SELECT id, embedding, boilerplate FROM chunks WHERE agent_id = ? ORDER BY id",
            (agent_id,),
        )
        for index, (chunk_id, blob, demoted) in enumerate(rows):
            if index == 0:
                width = len(blob)
                # Not a bytearray: zeroing 117 MiB is one C call that holds the GIL
                # (and the event loop) while it faults every page in; np.empty does not
                # touch them, and the copies below fault them in a row at a time.
                buffer = np.empty(count * width, dtype=np.uint8)
                view = buffer.data
            if len(blob) != width:
                raise ValueError(f"agent {agent_id}'s embeddings differ in size")
            view[index * width : (index + 1) * width] = blob
            ids.append(chunk_id)
            if demoted:
                boilerplate.append(chunk_id)
        view.release()
        return ChunkMatrix(int(found[0]), ids, buffer, width, frozenset(boilerplate))
    finally:
        cursor.close()
        raw.execute("COMMIT")


class AgentGone(NotFound):
    """The agent was deleted while work for it was in flight: nothing is stored or charged."""

    def __init__(self, agent_id: int) -> None:
        super().__init__(
            "That agent was deleted while this was running, so nothing was stored and "
            "nothing was charged."
        )
        self.agent_id = agent_id


async def _bump_documents_version(conn: Connection, agent_id: int) -> None:
    await conn.execute(
        "UPDATE agents SET documents_version = documents_version + 1 WHERE id = ?", (agent_id,)
    )


@dataclass(frozen=True)
class Document:
    id: int
    agent_id: int
    name: str
    kind: str
    pages: int
    chunks: int
    tokens: int
    uploader_id: str
    created_at: str


@dataclass(frozen=True)
class Conversation:
    id: int
    thread_key: str
    agent_id: int
    account_id: str


@dataclass(frozen=True)
class Turn:
    role: str
    content: str
    tokens: int
