"""Chat with an agent: persona, retrieved chunks, recent history, then the message (and,
optionally, one image).

Metering: one hold covers the question's embedding, the estimated prompt, the image and
the completion cap; the charge is the chat API's reported total tokens (times the model's
weight) plus the embedding's tokens. The two turns are stored in the charge's
transaction, so a restart loses nothing and a failed call leaves no half turn.

Streaming: with `on_text`, each piece of the answer goes to it as it arrives and the
charge comes from the stream's usage chunk. A stream that breaks (or is cancelled) after
some text arrived is charged the prompt plus the tokens of that text, counted with the
model's tokenizer, recorded as partial; the member keeps the text (`AnswerCut`). Nothing
arrived: nothing is charged.

An image is sent once, in the turn it came with; later turns keep a short note of it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bot.config import Config
from bot.core.agents import AgentService
from bot.core.ai import AIGateway
from bot.core.avatars.images import normalize_chat_image
from bot.core.documents.chunking import DEFAULT_TARGET_TOKENS
from bot.core.documents.retrieval import Hit, Retriever
from bot.core.metering import Actor, Meter, Salvaged
from bot.core.repository import Agent, Repository, Turn
from bot.core.tokens import MESSAGE_OVERHEAD, REPLY_PRIMING, count_tokens
from bot.errors import BotError, InvalidInput, NotFound
from ledger.storage import Connection

log = logging.getLogger(__name__)

MESSAGE_MAX = 4000
# Room held for one excerpt: a chunk (at most DEFAULT_TARGET_TOKENS of the embedding
# model's tokens; the chat model's encoding of the same text is close, o200k_base usually
# fewer) plus its "[document, page]" line. Doubled: the hold must never be below the cost.
EXCERPT_ROOM = 2 * DEFAULT_TARGET_TOKENS + 40
EXCERPTS_INTRO = 60  # the sentence that introduces the excerpts (about 25 tokens)
HISTORY_SHOWN = 10  # turns /chat-history shows


@dataclass(frozen=True)
class ChatAnswer:
    agent: Agent
    text: str
    sources: list[Hit]
    charged: int
    available: int
    history_sent: int  # earlier turns included in the prompt


@dataclass(frozen=True)
class ChatImage:
    """A picture sent with a message, already checked and re-encoded."""

    name: str
    png: bytes
    width: int
    height: int

    def note(self) -> str:
        """What later turns keep of it: a line, never the picture again."""
        return f"[image sent: {self.name[:60]}, {self.width}x{self.height}]"

    def data_url(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()


class AnswerCut(BotError):
    """The answer broke off partway; the part delivered was charged."""

    def __init__(self, text: str, charged: int, available: int) -> None:
        super().__init__(
            "The AI service stopped partway through this answer. You were charged "
            f"{charged:,} tokens for the part above ({available:,} remaining)."
        )
        self.text = text
        self.charged = charged
        self.available = available


@dataclass(frozen=True)
class _Reply:
    text: str
    chat_tokens: int
    embed_tokens: int


def trim_history(turns: list[Turn], budget: int, max_messages: int) -> list[Turn]:
    """The most recent exchanges (a question with its answer) that fit both `budget`
    tokens and `max_messages` messages, oldest first. An exchange goes whole or not at
    all: the model never sees an answer without its question, nor a question whose
    answer was cut (the window that `turns` came from may have cut either)."""
    exchanges: list[list[Turn]] = []
    for turn in turns:
        if turn.role == "user" or not exchanges:
            exchanges.append([turn])
        else:
            exchanges[-1].append(turn)
    if exchanges and exchanges[0][0].role != "user":
        exchanges.pop(0)  # an answer whose question is older than the window
    kept: list[Turn] = []
    used = 0
    for exchange in reversed(exchanges):
        tokens = sum(t.tokens for t in exchange)
        if used + tokens > budget or len(kept) + len(exchange) > max_messages:
            break
        kept[:0] = exchange
        used += tokens
    return kept


def build_messages(
    agent: Agent,
    hits: list[Hit],
    history: list[Turn],
    message: str,
    image: ChatImage | None = None,
) -> list[dict[str, Any]]:
    system = agent.prompt
    if hits:
        excerpts = "\n\n".join(
            f"[{number}] {h.source}\n{h.text}" for number, h in enumerate(hits, 1)
        )
        system += (
            "\n\nUse these numbered excerpts from your documents when they help, and cite "
            f"each one you use by its number in brackets, like [1]:\n\n{excerpts}"
        )
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    messages += [{"role": t.role, "content": t.content} for t in history]
    if image is None:
        messages.append({"role": "user", "content": message})
    else:
        parts = [
            {"type": "text", "text": message},
            {"type": "image_url", "image_url": {"url": image.data_url(), "detail": "auto"}},
        ]
        messages.append({"role": "user", "content": parts})
    return messages


_CITATION = re.compile(r"\[(\d{1,2}(?:\s*[,;]\s*\d{1,2})*)\]")
RELEVANCE_FLOOR = 0.2  # cosine similarity below which an uncited excerpt is not listed


def cited(answer: str, hits: list[Hit]) -> list[Hit]:
    """The excerpts the answer cites by number ([2], [1, 3]), in the prompt's order;
    with no citation at all, those above the relevance floor."""
    numbers = {
        int(n) for group in _CITATION.findall(answer) for n in re.split(r"\s*[,;]\s*", group)
    }
    chosen = [h for number, h in enumerate(hits, 1) if number in numbers]
    return chosen or [h for h in hits if h.score >= RELEVANCE_FLOOR]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def estimate_prompt(messages: list[dict[str, Any]], model: str) -> int:
    """The prompt's tokens by the model's tokenizer, never below what the API reports (an
    image part is held separately)."""
    return REPLY_PRIMING + sum(
        count_tokens(_text_of(m["content"]), model) + MESSAGE_OVERHEAD for m in messages
    )


def count_delivered(text: str, model: str) -> int:
    """The tokens of text the model produced, as its tokenizer counts them: what a
    broken stream charges for the part that arrived."""
    return count_tokens(text, model)


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
        # Answers worked on at once; the rest wait their turn, already deferred. As many
        # as the AI client has connections: a streamed answer holds one from start to
        # end, so more could not run anyway, and each waiting one would hold tokens and
        # add its steps to every turn of the event loop (200 at once made a turn 130 ms;
        # the load bench's stall p99 at 0 ms latency went from 93-142 ms to 56-70 ms).
        self._working = asyncio.Semaphore(config.openai.max_connections)

    async def agent_of_thread(self, thread_key: str) -> Agent | None:
        conversation = await self.repo.conversation(thread_key)
        return await self.repo.agent_by_id(conversation.agent_id) if conversation else None

    async def retired_agent(self, thread_key: str) -> str | None:
        return await self.repo.retired_agent(thread_key)

    async def check_image(self, name: str, data: bytes) -> ChatImage:
        """Refuse a bad picture before anything is held or charged."""
        png, width, height = await asyncio.to_thread(
            normalize_chat_image,
            data,
            max_bytes=self.config.limits.max_avatar_bytes,
            side=self.config.chat.image_side,
        )
        return ChatImage(name, png, width, height)

    async def reset(self, actor: Actor, agent_name: str, thread_key: str) -> int:
        """Forget this conversation with the agent; returns the turns forgotten."""
        await self.agents.get(actor, agent_name)
        return await self.repo.delete_conversation(thread_key)

    async def history(self, actor: Actor, agent_name: str, thread_key: str) -> list[Turn]:
        """The last turns of this conversation, oldest first."""
        agent = await self.agents.get(actor, agent_name)
        conversation = await self.repo.conversation(thread_key)
        if conversation is None or conversation.agent_id != agent.id:
            return []
        return await self.repo.recent_turns(conversation.id, HISTORY_SHOWN)

    async def _check_thread(self, agent: Agent, thread_key: str) -> Any:
        conversation = await self.repo.conversation(thread_key)
        if conversation is None:
            retired = await self.repo.retired_agent(thread_key)
            if retired is not None:
                raise NotFound(
                    f"This conversation's agent, {retired}, was deleted. "
                    "Start a new conversation with `/chat` outside this thread."
                )
        elif conversation.agent_id != agent.id:
            other = await self.repo.agent_by_id(conversation.agent_id)
            raise InvalidInput(
                f"This conversation is with {other.name if other else 'another agent'}; "
                "start a new one outside this thread."
            )
        return conversation

    async def ask(
        self,
        actor: Actor,
        agent_name: str,
        thread_key: str,
        message: str,
        *,
        on_text: Callable[[str], Awaitable[None]] | None = None,
        image: ChatImage | None = None,
    ) -> ChatAnswer:
        async with self._working:
            return await self._ask(
                actor, agent_name, thread_key, message, on_text=on_text, image=image
            )

    async def _ask(
        self,
        actor: Actor,
        agent_name: str,
        thread_key: str,
        message: str,
        *,
        on_text: Callable[[str], Awaitable[None]] | None,
        image: ChatImage | None,
    ) -> ChatAnswer:
        message = message.strip()
        if not message and image is None:
            raise InvalidInput("Say something to the agent.")
        if len(message) > MESSAGE_MAX:
            raise InvalidInput(f"Messages are at most {MESSAGE_MAX:,} characters.")
        message = message or "What is in this image?"
        agent = await self.agents.get(actor, agent_name)
        conversation = await self._check_thread(agent, thread_key)
        settings = self.config.chat
        # One row more than can be sent: the oldest exchange in the window is then whole
        # or dropped, never sent cut in half.
        window = settings.history_messages + 1
        turns = await self.repo.recent_turns(conversation.id, window) if conversation else []
        history = trim_history(turns, settings.history_budget, settings.history_messages)
        depth = settings.retrieval_depth
        use_documents = depth > 0 and await self.retriever.has_chunks(agent.account_id, agent.id)
        cap = self.config.openai.max_completion_tokens
        chat_model = self.config.openai.chat_model
        if image is not None:
            chat_model = self.config.openai.vision_model or chat_model
        embed_model = self.config.openai.embedding_model
        # The excerpts are not known before the call: hold room for `depth` full chunks.
        # The earlier turns' tokens were counted when they were stored (with the chat
        # model, plus the message overhead): only the system prompt and the message are
        # counted again, not the whole history on every chat.
        draft = build_messages(agent, [], [], message)
        excerpt_room = EXCERPTS_INTRO + depth * EXCERPT_ROOM if use_documents else 0
        embed_estimate = count_tokens(message, embed_model) if use_documents else 0
        image_room = settings.image_hold_tokens if image is not None else 0
        history_tokens = sum(turn.tokens for turn in history)
        prompt_room = (
            estimate_prompt(draft, chat_model) + history_tokens + excerpt_room + image_room
        )
        estimate = self.meter.weighted(chat_model, prompt_room + cap) + self.meter.weighted(
            embed_model, embed_estimate
        )
        sources: list[Hit] = []
        received: list[str] = []  # what the stream delivered so far
        sent: list[list[dict[str, Any]]] = []  # the messages, once built
        embedded: list[int] = []

        async def deliver(piece: str) -> None:
            received.append(piece)
            assert on_text is not None
            await on_text(piece)

        async def call() -> _Reply:
            embed_tokens = 0
            if use_documents:
                query = await self.ai.embed([message])
                embed_tokens = query.total_tokens
                embedded.append(embed_tokens)
                sources.extend(
                    await self.retriever.top_k(
                        agent.account_id, agent.id, query.vectors[0], depth, message
                    )
                )
            messages = build_messages(agent, sources, history, message, image)
            sent.append(messages)
            if on_text is None:
                answer = await self.ai.chat(messages, cap, model=chat_model)
            else:
                answer = await self.ai.chat_stream(messages, deliver, cap, model=chat_model)
            return _Reply(answer.text, answer.total_tokens, embed_tokens)

        def salvage(error: BaseException) -> _Reply | None:
            text = "".join(received)
            if not text or not sent:
                return None  # nothing delivered: nothing charged
            prompt = estimate_prompt(sent[0], chat_model) + image_room
            chat_tokens = prompt + count_delivered(text, chat_model)
            return _Reply(text, chat_tokens, sum(embedded))

        def cost(reply: _Reply) -> int:
            return self.meter.weighted(chat_model, reply.chat_tokens) + self.meter.weighted(
                embed_model, reply.embed_tokens
            )

        asked = message if image is None else f"{message}\n{image.note()}"

        async def store(conn: Connection, reply: _Reply) -> None:
            await self.repo.require_agent_in(conn, actor.account_id, agent.id)
            conversation_id = await self.repo.open_conversation_in(
                conn, thread_key, agent.id, actor.account_id
            )
            await self.repo.add_turns_in(
                conn,
                conversation_id,
                [
                    Turn("user", asked, count_tokens(asked, chat_model) + MESSAGE_OVERHEAD),
                    Turn(
                        "assistant",
                        reply.text,
                        count_tokens(reply.text, chat_model) + MESSAGE_OVERHEAD,
                    ),
                ],
            )

        try:
            metered = await self.meter.run(
                actor,
                "chat",
                estimate,
                chat_model,
                call,
                cost=cost,
                store=store,
                salvage=salvage,
                agent=agent.name,
            )
        except Salvaged as cut:
            raise AnswerCut(
                cut.metered.result.text, cut.metered.charged, cut.metered.available
            ) from cut
        return ChatAnswer(
            agent,
            metered.result.text,
            cited(metered.result.text, sources),
            metered.charged,
            metered.available,
            len(history),
        )
