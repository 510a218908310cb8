"""Documents: upload (extract, chunk, embed, store), list and remove.

Promises: the type is decided by the content; every refusal happens before any API call
and charges nothing; a document clearly beyond the balance is refused from a sample of
its pages, before all of them are read, with its estimate ("about N tokens"); the
estimate is held before the first embedding request; the charge is the embedding API's
own reported tokens; the document and its chunks are stored in the same transaction as
the charge, so a failure at any step leaves no document, no chunk and no charge.
Extraction runs in a worker process of a bounded pool, with a deadline and a memory
limit, at most `extraction_per_account` at once for one account.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from bot.config import Config, LimitsSettings
from bot.core.agents import AgentService
from bot.core.ai import AIGateway
from bot.core.documents import extract
from bot.core.documents.boilerplate import is_boilerplate
from bot.core.documents.chunking import Chunk, chunk
from bot.core.documents.readers import Extracted
from bot.core.documents.readers.budget import BeyondBudget
from bot.core.documents.retrieval import Retriever, to_blob
from bot.core.documents.workers import ExtractionPool, WorkerLimits
from bot.core.metering import Actor, Meter
from bot.core.repository import Agent, Document, Repository
from bot.errors import InvalidInput, NotFound
from ledger import InsufficientTokens
from ledger.storage import Connection

log = logging.getLogger(__name__)

# One embeddings request carries at most this many chunks and estimated tokens (the
# API accepts 2,048 inputs and 300,000 tokens; staying well under keeps a retry cheap).
BATCH_CHUNKS = 256
BATCH_TOKENS = 100_000
# The chunks' tokens are counted with the embedding model's own tokenizer, so they are
# the API's figure; the small margin covers an OpenAI-compatible server that counts a few
# more (and stays well inside the 10% a refusal's "about N tokens" may be off by).
ESTIMATE_MARGIN = 1.02
NAME_MAX = 100

Progress = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class UploadResult:
    document: Document
    charged: int
    available: int
    batches: int


def batches(chunks: list[Chunk]) -> list[list[Chunk]]:
    out: list[list[Chunk]] = []
    current: list[Chunk] = []
    tokens = 0
    for c in chunks:
        if current and (len(current) >= BATCH_CHUNKS or tokens + c.tokens > BATCH_TOKENS):
            out.append(current)
            current, tokens = [], 0
        current.append(c)
        tokens += c.tokens
    if current:
        out.append(current)
    return out


def clean_name(filename: str) -> str:
    name = " ".join(filename.replace("\\", "/").rsplit("/", 1)[-1].split())
    name = "".join(ch for ch in name if ch.isprintable() and ch not in "`*_~|<>@")
    return name[:NAME_MAX] or "document"


class DocumentService:
    def __init__(
        self,
        config: Config,
        repo: Repository,
        agents: AgentService,
        ai: AIGateway,
        meter: Meter,
        retriever: Retriever,
    ) -> None:
        self.config = config
        self.repo = repo
        self.agents = agents
        self.ai = ai
        self.meter = meter
        self.retriever = retriever
        limits = config.limits
        self.extraction = ExtractionPool(
            WorkerLimits(
                processes=max(1, limits.pdf_processes),
                per_account=limits.extraction_per_account,
                deadline_seconds=limits.extraction_seconds,
                memory_bytes=limits.extraction_memory_mb * 1024 * 1024,
            )
        )

    async def close(self) -> None:
        await self.extraction.close()

    def estimate(self, chunks: list[Chunk]) -> int:
        """The hold: the chunks' real tokens plus the margin, weighted like the charge."""
        return self._hold(sum(c.tokens for c in chunks))

    def _hold(self, tokens: int) -> int:
        """`tokens` of the embedding model plus the margin, weighted like the charge."""
        model = self.config.openai.embedding_model
        return self.meter.weighted(model, math.ceil(tokens * ESTIMATE_MARGIN))

    async def upload(
        self,
        actor: Actor,
        agent_name: str,
        filename: str,
        data: bytes,
        progress: Progress | None = None,
    ) -> UploadResult:
        agent = await self.agents.get_editable(actor, agent_name)
        limits = self.config.limits
        report = progress or _quiet
        loop = asyncio.get_running_loop()
        last_page = [-1.0]

        def page_done(index: int, count: int) -> None:
            # Called on the loop as the worker reports pages; at most one update a second.
            now = loop.time()
            if now - last_page[0] >= 1.0 or index + 1 == count:
                last_page[0] = now
                _fire(loop, report(f"Extracting text: page {index + 1} of {count}…"))

        extract.check_size(data, limits.max_document_bytes)
        model = self.config.openai.embedding_model
        # What the balance covers, in the embedding model's own tokens: a document
        # clearly beyond it is refused from a sample before all of it is read.
        balance = await self.meter.ledger.balance(actor.account_id)
        budget = math.floor(balance.available / self.meter.costs.weight(model) / ESTIMATE_MARGIN)
        try:
            extracted: Extracted = await self.extraction.extract(
                actor.account_id,
                data,
                filename,
                extract.limits(limits.max_document_bytes, limits.max_document_pages, budget, model),
                page_done,
            )
        except BeyondBudget as beyond:
            needed = self._hold(beyond.estimate)
            log.info(
                "document refused early on %s: about %d tokens, %d available",
                actor.account_id,
                needed,
                balance.available,
            )
            self.meter.refused(actor.account_id)
            raise InsufficientTokens(
                needed, balance.available, balance.plan_type, approximate=True
            ) from None
        chunks = await asyncio.to_thread(
            chunk, extracted.pages, model=model, separate_pages=extracted.kind != "pdf"
        )
        if not chunks:
            raise InvalidInput("That file has no text to learn from.")
        # Refused early, before any call; checked again in the commit, which decides:
        # uploads running side by side all pass this first check.
        _check_room(len(chunks), await self.repo.chunk_count(actor.account_id), limits)
        groups = batches(chunks)
        name = clean_name(filename)

        async def call() -> tuple[np.ndarray, int]:
            vectors: list[np.ndarray] = []
            tokens = 0
            for number, group in enumerate(groups, start=1):
                await report(f"Embedding: batch {number} of {len(groups)}…")
                result = await self.ai.embed([c.text for c in group])
                vectors.append(result.vectors)
                tokens += result.total_tokens
                await self.meter.keep_alive()  # progress: the hold must not lapse under it
            return np.vstack(vectors).astype(np.float32), tokens

        document_ids: list[int] = []

        async def store(conn: Connection, result: tuple[np.ndarray, int]) -> None:
            vectors, tokens = result
            await self.repo.require_agent_in(conn, actor.account_id, agent.id)
            _check_room(len(chunks), await self.repo.chunk_count_in(conn, actor.account_id), limits)
            rows = [
                (
                    c.index,
                    c.page,
                    extracted.label(c.page),
                    is_boilerplate(c.text),
                    c.text,
                    to_blob(v),
                )
                for c, v in zip(chunks, vectors, strict=True)
            ]
            document_ids.append(
                await self.repo.insert_document_in(
                    conn,
                    agent.id,
                    name,
                    extracted.kind,
                    extracted.page_count,
                    self.meter.weighted(model, tokens),
                    str(actor.user_id),
                    rows,
                )
            )

        try:
            metered = await self.meter.run(
                actor,
                "document_upload",
                self.estimate(chunks),
                model,
                call,
                cost=lambda result: self.meter.weighted(model, result[1]),
                store=store,
                agent=agent.name,
            )
        except InsufficientTokens as short:
            # The hold is the chunks' count plus a 2% margin; the bill is the API's own
            # count: the refusal says "about".
            raise InsufficientTokens(
                short.needed, short.available, short.plan, approximate=True
            ) from None
        await self.retriever.forget(agent.id)
        documents = {d.id: d for d in await self.repo.documents(agent.id)}
        return UploadResult(
            documents[document_ids[0]], metered.charged, metered.available, len(groups)
        )

    async def list(self, actor: Actor, agent_name: str) -> list[Document]:
        agent = await self.agents.get(actor, agent_name)
        return await self.repo.documents(agent.id)

    async def remove(self, actor: Actor, agent_name: str, document: str) -> Document:
        agent, found = await self.find(actor, agent_name, document)
        await self.repo.delete_document(agent.id, found.id)
        await self.retriever.forget(agent.id)
        return found

    async def find(self, actor: Actor, agent_name: str, document: str) -> tuple[Agent, Document]:
        """A document the member may remove (by id or name), before removing it."""
        agent = await self.agents.get_editable(actor, agent_name)
        documents = await self.repo.documents(agent.id)
        wanted = document.strip()
        match = [
            d for d in documents if str(d.id) == wanted or d.name.casefold() == wanted.casefold()
        ]
        if not match:
            raise NotFound(
                f"{agent.name} has no document {wanted[:NAME_MAX]}. `/docs list` shows them."
            )
        return agent, match[0]


def _check_room(new: int, stored: int, limits: LimitsSettings) -> None:
    """The account's chunk cap; a refusal raised in the commit stores and charges nothing."""
    if stored + new > limits.max_chunks_per_account:
        raise InvalidInput(
            f"This document has {new:,} chunks; the account holds {stored:,} of its "
            f"{limits.max_chunks_per_account:,}. Remove some documents first. "
            "Nothing was charged."
        )


def _fire(loop: asyncio.AbstractEventLoop, update: Awaitable[None]) -> None:
    task = asyncio.ensure_future(update, loop=loop)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # progress is best effort


async def _quiet(_: str) -> None:
    return None
