"""Avatars: one per agent, generated (metered, a flat price) or uploaded (free).

Promises: a generation is paid only when its image was produced, checked and stored;
the new file is written before the old one is deleted, so an agent never loses its
avatar to a failed call; the charge and the agent's new avatar commit together.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from bot.config import Config
from bot.core.agents import AgentService
from bot.core.ai import AIGateway, ImageResult
from bot.core.avatars.images import UnusableImage, normalize_avatar, normalize_generated
from bot.core.metering import Actor, Meter
from bot.core.repository import Agent, Repository
from bot.errors import AIUnavailable
from ledger import InsufficientTokens, Ledger
from ledger.storage import Connection

log = logging.getLogger(__name__)

STYLE_MAX = 200


@dataclass(frozen=True)
class AvatarResult:
    agent: Agent
    png: bytes  # the image itself: the file may be replaced before the reply is sent
    charged: int
    available: int


class AvatarService:
    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        repo: Repository,
        agents: AgentService,
        ai: AIGateway,
        meter: Meter,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.repo = repo
        self.agents = agents
        self.ai = ai
        self.meter = meter
        self.folder = config.data_path("avatars")

    def prompt_for(self, agent: Agent, style: str | None) -> str:
        persona = " ".join(agent.prompt.split())[:600]
        look = f" Style: {style.strip()[:STYLE_MAX]}." if style and style.strip() else ""
        return (
            f"A square profile picture (avatar) for an AI character named {agent.name}. "
            f"Its personality: {persona}.{look} Centered subject, simple background, no text."
        )

    async def generate(
        self, actor: Actor, agent_name: str, style: str | None = None
    ) -> AvatarResult:
        agent = await self.agents.get_editable(actor, agent_name)
        cost = self.config.costs.avatar_generation
        prompt = self.prompt_for(agent, style)
        new_path = self._new_path(agent)
        replaced: list[str | None] = []

        async def call() -> bytes:
            image: ImageResult = await self.ai.image(prompt)
            try:
                png = await asyncio.to_thread(normalize_generated, image.png)
            except UnusableImage:
                log.warning("the image API returned an unusable image for agent %d", agent.id)
                raise AIUnavailable() from None
            await asyncio.to_thread(_write_atomically, new_path, png)
            return png

        async def store(conn: Connection, _png: bytes) -> None:
            await self.repo.require_agent_in(conn, actor.account_id, agent.id)
            replaced.append(
                await self.repo.set_avatar_in(conn, agent.id, str(new_path), "generated")
            )

        try:
            metered = await self.meter.run(
                actor,
                "avatar_generation",
                cost,
                self.config.openai.image_model,
                call,
                cost=lambda _png: cost,
                store=store,
                agent=agent.name,
            )
        except BaseException:
            new_path.unlink(missing_ok=True)
            raise
        self._delete_files(*replaced)
        updated = await self.repo.agent_by_id(agent.id)
        assert updated is not None
        return AvatarResult(updated, metered.result, metered.charged, metered.available)

    async def upload(self, actor: Actor, agent_name: str, data: bytes) -> AvatarResult:
        agent = await self.agents.get_editable(actor, agent_name)
        png = await asyncio.to_thread(
            normalize_avatar, data, max_bytes=self.config.limits.max_avatar_bytes
        )
        new_path = self._new_path(agent)
        await asyncio.to_thread(_write_atomically, new_path, png)

        async def op(conn: Connection) -> str | None:
            await self.repo.require_agent_in(conn, actor.account_id, agent.id)
            return await self.repo.set_avatar_in(conn, agent.id, str(new_path), "uploaded")

        try:
            replaced = await self.repo.store.write(op)
        except BaseException:
            new_path.unlink(missing_ok=True)
            raise
        await self.ledger.record(
            actor.account_id,
            "avatar_upload",
            actor.user_id,
            actor.guild_id,
            details=f"agent {agent.id}",
        )
        self._delete_files(replaced)
        updated = await self.repo.agent_by_id(agent.id)
        assert updated is not None
        balance = await self.ledger.balance(actor.account_id)
        return AvatarResult(updated, png, 0, balance.available)

    def _new_path(self, agent: Agent) -> Path:
        # A random name per version, no agent id in it: the sidecar serves avatars by
        # file name, so the name is the URL and must not be guessable (bot/http/avatars).
        return self.folder / f"{secrets.token_urlsafe(18)}.png"

    def remove_file(self, agent: Agent) -> None:
        """Delete a deleted agent's avatar file."""
        self._delete_files(agent.avatar_path)

    async def precheck(self, actor: Actor) -> None:
        """The spec's flow checks the balance before anything else, so a member who is
        short sees the refusal at once (and privately). The reserve still decides."""
        cost = self.config.costs.avatar_generation
        balance = await self.ledger.balance(actor.account_id)
        if balance.available < cost:
            self.meter.refused(actor.account_id)
            raise InsufficientTokens(cost, balance.available, balance.plan_type)

    def _delete_files(self, *paths: str | None) -> None:
        """Delete avatar files that no agent points at any more. After a commit, that is
        the file it replaced: the one the agent pointed at when our row changed, which
        another generation may have set after ours started. Replies carry the image's
        bytes, so no reply still needs a replaced file."""
        for path in paths:
            if path:
                try:
                    Path(path).unlink(missing_ok=True)
                    log.debug("🗑️ Deleted old avatar %s", Path(path).name)
                except OSError as error:
                    log.warning("could not delete old avatar %s: %s", path, error)

    async def sweep_files(self) -> int:
        """Delete avatar files no agent points at: left by a process killed between
        writing a new image and committing it, or before it deleted the one replaced.
        Only files older than a hold's time to live: a younger one may belong to a
        generation still running in another process, whose commit will claim it."""
        stored = await self.repo.avatar_paths()
        cutoff = time.time() - self.config.limits.hold_ttl_seconds

        def sweep() -> int:
            # Resolved: the data folder may be named relatively in one run and not another.
            keep = {Path(p).resolve() for p in stored}
            removed = 0
            if not self.folder.is_dir():
                return 0
            for path in self.folder.iterdir():
                if path.suffix not in {".png", ".tmp"} or path.resolve() in keep:
                    continue
                try:
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
            return removed

        removed = await asyncio.to_thread(sweep)
        if removed:
            log.info("🗑️ Deleted %d avatar files no agent uses", removed)
        return removed

    def file_for(self, agent: Agent) -> Path | None:
        if agent.avatar_path and Path(agent.avatar_path).is_file():
            return Path(agent.avatar_path)
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    temporary.replace(path)
