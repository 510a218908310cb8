"""Chat with an agent: persona, retrieved chunks, recent history, then the message.

Metering: one hold covers the question's embedding, the estimated prompt and the
completion cap; the charge is the chat API's reported total tokens (times the model's
weight) plus the embedding's tokens. The two turns are stored in the charge's
transaction, so a restart loses nothing and a failed call leaves no half turn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiosqlite

from bot.config import Config
from bot.core.agents import AgentService
from bot.core.ai import AIGateway
from bot.core.documents.chunking import DEFAULT_TARGET_TOKENS
from bot.core.documents.retrieval import Hit, Retriever
from bot.core.metering import Actor, Meter
from bot.core.repository import Agent, Repository, Turn
from bot.core.tokens import MESSAGE_OVERHEAD, count_messages, count_tokens
from bot.errors import InvalidInput

log = logging.getLogger(__name__)

MESSAGE_MAX = 4000
TOP_K = 5
HISTORY_BUDGET = 2000  # tokens of earlier turns sent with each message
# Room held for one excerpt: a chunk (at most DEFAULT_TARGET_TOKENS of the embedding
# model's tokens; the chat model's encoding of the same text is close, o200k_base usually
# fewer) plus its "[document, page]" line. Doubled: the hold must never be below the cost.
EXCERPT_ROOM = 2 * DEFAULT_TARGET_TOKENS + 40
EXCERPTS_INTRO = 60  # the sentence that introduces the excerpts (about 25 tokens)


@dataclass(frozen=True)
class ChatAnswer:
    agent: Agent
    text: str
    sources: list[Hit]
    charged: int
    available: int
    history_sent: int  # earlier turns included in the prompt


@dataclass(frozen=True)
class _Reply:
    text: str
    chat_tokens: int
    embed_tokens: int


def trim_history(turns: list[Turn], budget: int) -> list[Turn]:
    """The most recent turns whose tokens fit `budget`, oldest first."""
    kept: list[Turn] = []
    used = 0
    for turn in reversed(turns):
        if used + turn.tokens > budget:
            break
        kept.append(turn)
        used += turn.tokens
    return list(reversed(kept))


def build_messages(
    agent: Agent, hits: list[Hit], history: list[Turn], message: str
) -> list[dict[str, str]]:
    system = agent.prompt
    if hits:
        excerpts = "\n\n".join(f"[{h.document}, page {h.page}]\n{h.text}" for h in hits)
        system += (
            "\n\nUse these excerpts from your documents when they help, and cite them as "
            f"(document, page):\n\n{excerpts}"
        )
    messages = [{"role": "system", "content": system}]
    messages += [{"role": t.role, "content": t.content} for t in history]
    messages.append({"role": "user", "content": message})
    return messages


def estimate_prompt(messages: list[dict[str, str]], model: str) -> int:
    return count_messages(messages, model)


class ChatService:
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

    async def agent_of_thread(self, thread_key: str) -> Agent | None:
        conversation = await self.repo.conversation(thread_key)
        return await self.repo.agent_by_id(conversation.agent_id) if conversation else None

    async def ask(self, actor: Actor, agent_name: str, thread_key: str, message: str) -> ChatAnswer:
        message = message.strip()
        if not message:
            raise InvalidInput("Say something to the agent.")
        if len(message) > MESSAGE_MAX:
            raise InvalidInput(f"Messages are at most {MESSAGE_MAX:,} characters.")
        agent = await self.agents.get(actor, agent_name)
        conversation = await self.repo.conversation(thread_key)
        if conversation is not None and conversation.agent_id != agent.id:
            other = await self.repo.agent_by_id(conversation.agent_id)
            raise InvalidInput(
                f"This conversation is with {other.name if other else 'another agent'}; "
                "start a new one outside this thread."
            )
        turns = await self.repo.recent_turns(conversation.id) if conversation else []
        history = trim_history(turns, HISTORY_BUDGET)
        use_documents = await self.retriever.has_chunks(agent.id)
        cap = self.config.openai.max_completion_tokens
        chat_model = self.config.openai.chat_model
        embed_model = self.config.openai.embedding_model
        # The excerpts are not known before the call: hold room for TOP_K full chunks.
        draft = build_messages(agent, [], history, message)
        excerpt_room = EXCERPTS_INTRO + TOP_K * EXCERPT_ROOM if use_documents else 0
        embed_estimate = count_tokens(message, embed_model) if use_documents else 0
        estimate = self.meter.weighted(
            chat_model, estimate_prompt(draft, chat_model) + excerpt_room + cap
        ) + self.meter.weighted(embed_model, embed_estimate)
        sources: list[Hit] = []

        async def call() -> _Reply:
            embed_tokens = 0
            if use_documents:
                query = await self.ai.embed([message])
                embed_tokens = query.total_tokens
                sources.extend(await self.retriever.top_k(agent.id, query.vectors[0], TOP_K))
            answer = await self.ai.chat(build_messages(agent, sources, history, message), cap)
            return _Reply(answer.text, answer.total_tokens, embed_tokens)

        def cost(reply: _Reply) -> int:
            return self.meter.weighted(chat_model, reply.chat_tokens) + self.meter.weighted(
                embed_model, reply.embed_tokens
            )

        async def store(conn: aiosqlite.Connection, reply: _Reply) -> None:
            conversation_id = await self.repo.open_conversation_in(
                conn, thread_key, agent.id, actor.account_id
            )
            await self.repo.add_turns_in(
                conn,
                conversation_id,
                [
                    Turn("user", message, count_tokens(message, chat_model) + MESSAGE_OVERHEAD),
                    Turn(
                        "assistant",
                        reply.text,
                        count_tokens(reply.text, chat_model) + MESSAGE_OVERHEAD,
                    ),
                ],
            )

        metered = await self.meter.run(
            actor, "chat", estimate, chat_model, call, cost=cost, store=store
        )
        return ChatAnswer(
            agent, metered.result.text, sources, metered.charged, metered.available, len(history)
        )
