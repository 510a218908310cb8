"""Agents: a persona (name + system prompt) owned by an account.

Promises: names are 1 to 32 letters, digits, spaces and . ' - (no mentions, no markdown,
no invisible or direction-changing characters), unique per account whatever their case;
the plan's agent limit holds even when members create agents at the same moment (count
and insert share one transaction); only the creator or a member who may manage the
server edits or deletes an agent, whatever the client sent.
"""

from __future__ import annotations

import builtins
import re
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.config import Config
from bot.core.metering import Actor
from bot.core.repository import Agent, Repository
from bot.errors import AgentLimitReached, InvalidInput, NotFound, PermissionDenied
from ledger import Ledger, LedgerError
from ledger.storage import Connection

NAME_MAX = 32
PROMPT_MAX = 4000  # a Discord modal's long text field holds at most 4,000 characters
_DISCORD_REFUSES = ("discord", "clyde")
_NAME = re.compile(r"[^\W_](?:[^\W_]|[ .'-](?=[^\W_]))*")


def check_name(raw: str) -> str:
    name = unicodedata.normalize("NFC", raw.strip())
    if not name:
        raise InvalidInput("An agent needs a name.")
    if len(name) > NAME_MAX:
        raise InvalidInput(f"Agent names are at most {NAME_MAX} characters.")
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            "Agent names may use letters, digits, single spaces and . ' - between them "
            "(no mentions, markdown or invisible characters)."
        )
    folded = name.casefold()
    for word in _DISCORD_REFUSES:
        if word in folded:
            # Discord refuses webhook usernames containing these: the agent could not speak.
            raise InvalidInput(f'Discord does not allow names containing "{word}"; pick another.')
    return name


def check_prompt(raw: str) -> str:
    prompt = raw.strip()
    # Invisible characters alone (zero-width, direction marks: category Cf) are empty too.
    if not any(not ch.isspace() and unicodedata.category(ch) != "Cf" for ch in prompt):
        raise InvalidInput("The agent's persona (its system prompt) cannot be empty.")
    if len(prompt) > PROMPT_MAX:
        raise InvalidInput(
            f"The persona is {len(prompt):,} characters; the limit is {PROMPT_MAX:,}."
        )
    if "\x00" in prompt:
        raise InvalidInput("The persona contains a NUL character.")
    return prompt


@dataclass(frozen=True)
class AgentSummary:
    """What an agent holds, and so what deleting it loses."""

    agent: Agent
    documents: int
    chunks: int
    document_tokens: int = 0  # spent on learning its documents
    avatar_tokens: int = 0  # spent on generating its avatars


class AgentService:
    def __init__(self, config: Config, ledger: Ledger, repo: Repository) -> None:
        self.config = config
        self.ledger = ledger
        self.repo = repo
        # Told of each agent deleted here (the retriever forgets its matrix and files).
        self.forget: Callable[[int], Awaitable[None]] | None = None

    async def create(self, actor: Actor, name: str, prompt: str) -> Agent:
        name = check_name(name)
        prompt = check_prompt(prompt)
        plan = (await self.ledger.balance(actor.account_id)).plan_type
        limit = self.config.plans.as_ledger_plans()[plan].max_agents

        async def op(conn: Connection) -> Agent:
            if await self.repo.agent_named_in(conn, actor.account_id, name):
                raise _Refused(InvalidInput(f"There is already an agent named {name} here."))
            if limit and await self.repo.count_agents_in(conn, actor.account_id) >= limit:
                pro = self.config.plans.pro.agents_text
                raise _Refused(AgentLimitReached(limit, plan, pro))
            return await self.repo.insert_agent_in(
                conn, actor.account_id, name, prompt, str(actor.user_id)
            )

        try:
            return await self.repo.store.write(op)
        except _Refused as refused:
            raise refused.error from None

    async def get(self, actor: Actor, name: str) -> Agent:
        """The agent of the acting account, by name; anyone in the account may use it."""
        agent = await self.repo.agent(actor.account_id, name.strip())
        if agent is None:
            typed = unicodedata.normalize("NFC", name.strip())[:NAME_MAX].strip()
            # Echoed only when it could be a name: never markdown or mention syntax.
            named = f" named {typed}" if _NAME.fullmatch(typed) else " by that name"
            raise NotFound(f"No agent{named} here. `/agent list` shows them.")
        return agent

    async def get_editable(self, actor: Actor, name: str) -> Agent:
        agent = await self.get(actor, name)
        if not (actor.can_manage or agent.creator_id == str(actor.user_id)):
            raise PermissionDenied(
                f"Only {agent.name}'s creator or a member with Manage Server can change it."
            )
        return agent

    async def edit(self, actor: Actor, name: str, prompt: str) -> Agent:
        agent = await self.get_editable(actor, name)
        await self.repo.update_prompt(agent.id, check_prompt(prompt))
        updated = await self.repo.agent_by_id(agent.id)
        assert updated is not None
        return updated

    async def delete(self, actor: Actor, name: str) -> Agent:
        agent = await self.get_editable(actor, name)
        await self.repo.delete_agent(agent.id)
        if self.forget is not None:
            await self.forget(agent.id)
        return agent

    async def summary(self, actor: Actor, name: str) -> AgentSummary:
        """The agent a member may delete, with what deleting it would lose."""
        agent = await self.get_editable(actor, name)
        documents, chunks, tokens = await self.repo.agent_losses(agent.id)
        avatars = await self.repo.avatar_tokens(agent)
        return AgentSummary(agent, documents, chunks, tokens, avatars)

    async def list(self, actor: Actor) -> builtins.list[Agent]:
        return await self.repo.agents(actor.account_id)

    async def names(self, actor: Actor, typed: str) -> builtins.list[str]:
        """Autocomplete: at most 25 names of this account's agents containing `typed`."""
        return [a.name for a in await self.repo.agents(actor.account_id, typed.strip(), 25)]


class _Refused(LedgerError):
    """Carries a refusal out of a write op. A LedgerError, so the store treats it as a
    domain outcome (it wrote nothing) and not as a failure to roll the batch back for."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error
