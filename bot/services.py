"""The application's services, built once per process from the configuration and shared
by every front end (the Discord bot, the console, the tests)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from bot.billing.service import Billing
from bot.config import Config
from bot.core.admin import AdminService
from bot.core.agents import AgentService
from bot.core.ai import AIGateway
from bot.core.avatars.service import AvatarService
from bot.core.balances import BalanceService
from bot.core.chat import ChatService
from bot.core.documents.retrieval import Retriever
from bot.core.documents.service import DocumentService
from bot.core.documents.vector_files import VectorFiles
from bot.core.limits import LimitsService
from bot.core.metering import Meter
from bot.core.repository import Repository
from bot.core.telemetry import Telemetry
from bot.core.usage import UsageService
from bot.runtime import open_ledger
from ledger import Clock, Ledger

log = logging.getLogger(__name__)

TIDY_DELAY_SECONDS = 60.0


@dataclass
class Services:
    config: Config
    ledger: Ledger
    repo: Repository
    ai: AIGateway
    meter: Meter
    agents: AgentService
    avatars: AvatarService
    balances: BalanceService
    retriever: Retriever
    documents: DocumentService
    chat: ChatService
    admin: AdminService
    billing: Billing
    limits: LimitsService
    usage: UsageService
    telemetry: Telemetry = field(default_factory=Telemetry)  # what /metrics counts here
    tidying: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        config: Config,
        *,
        ai: AIGateway | None = None,
        clock: Clock | None = None,
        kind: str = "bot",
        check_pages: bool = True,
    ) -> Services:
        ledger = await open_ledger(config, kind, clock=clock, check_pages=check_pages)
        try:
            repo = Repository(ledger.store)
            await repo.migrate()
            # Holds left by a process that died are released before we take new work.
            await ledger.sweep()
        except BaseException:
            await ledger.close()
            raise
        key = config.secrets.openai_api_key
        gateway = ai or AIGateway(config.openai, key.get_secret_value() if key else None)
        meter = Meter(ledger, config.costs)
        telemetry = Telemetry()
        meter.telemetry = telemetry
        ledger.store.on_batch = telemetry.write_batch
        agents = AgentService(config, ledger, repo)
        retriever = Retriever(repo, files=VectorFiles(config.data_path("vectors")))
        agents.forget = retriever.forget
        telemetry.watch_retrieval(retriever.stats, ledger.store.reader)
        balances = BalanceService(config, ledger)
        services = cls(
            config=config,
            ledger=ledger,
            repo=repo,
            ai=gateway,
            meter=meter,
            agents=agents,
            avatars=AvatarService(config, ledger, repo, agents, gateway, meter),
            balances=balances,
            retriever=retriever,
            documents=DocumentService(config, repo, agents, gateway, meter, retriever),
            chat=ChatService(config, repo, agents, gateway, meter, retriever),
            admin=AdminService(config, ledger, balances),
            billing=Billing(config, ledger),
            limits=LimitsService(config, ledger, repo, meter),
            usage=UsageService(ledger),
            telemetry=telemetry,
        )
        # A tidy-up whose cost grows with the agents: in the background, a while after
        # start-up, so starting costs the same with 30 or 30,000 agents.
        services.tidying = asyncio.get_running_loop().create_task(
            services._tidy_later(TIDY_DELAY_SECONDS), name="avatar-sweep"
        )
        return services

    async def _tidy_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self.avatars.sweep_files()
        except Exception:  # a tidy-up: never a reason to stop
            log.exception("could not sweep unused avatar files")
        try:
            await self.retriever.sweep_files()
        except Exception:
            log.exception("could not sweep stale vector files")

    async def close(self) -> None:
        if self.tidying is not None:
            self.tidying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.tidying
        try:
            await self.meter.drain()
            await self.ai.close()
            await self.billing.close()
        finally:
            try:
                await self.documents.close()  # its processes must not outlive us
                await self.retriever.settle()  # a vector file half written is not kept
            finally:
                await self.ledger.close()
