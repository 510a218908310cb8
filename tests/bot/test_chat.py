"""Chat: exact charges, retrieval, history, and no overspending."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from bot.config import Config
from bot.core.ai import AIGateway
from bot.core.chat import trim_history
from bot.core.documents.retrieval import normalise, top_indices
from bot.core.repository import Turn
from bot.front.app import AgentBot
from bot.front.standin import CommandRunner, StandInAttachment
from bot.services import Services
from tests.bot.conftest import GUILD
from tests.bot.helpers import assert_mentions_disabled, text

ACCOUNT = f"guild:{GUILD}"
FACTS = (
    "Jupiter has a great red spot, a storm larger than Earth.\n\n"
    "Saturn is famous for its bright rings of ice and rock.\n\n"
    "Mars is called the red planet because of iron oxide dust.\n\n"
    "Neptune has the strongest winds measured in the solar system."
)


@pytest.fixture
async def nova(owner: CommandRunner) -> None:
    await owner.run('/agent create name:Nova prompt:"A patient astronomer"')


async def test_chat_charges_total_tokens_and_continues(
    owner: CommandRunner, services: Services, fake_openai: Any, nova: None
) -> None:
    fake_openai.chat_answer = "Pulsars are spinning neutron stars."
    sent = await owner.run('/chat agent:Nova message:"What is a pulsar?"')
    assert "Pulsars are spinning neutron stars." in text(sent)
    assert_mentions_disabled(sent)
    charged = fake_openai.reported_tokens("chat")
    assert fake_openai.count("embeddings") == 0  # no documents: no query embedding
    assert (await services.ledger.balance(ACCOUNT)).tokens_used == charged

    await owner.run('/chat agent:Nova message:"And a magnetar?"')
    second = fake_openai.completed("chat")[-1].body["messages"]
    contents = [m["content"] for m in second]
    assert "What is a pulsar?" in contents and "Pulsars are spinning neutron stars." in contents
    assert (await services.ledger.balance(ACCOUNT)).tokens_used == fake_openai.reported_tokens(
        "chat"
    )
    assert await services.ledger.verify() == []


async def test_chat_with_documents_retrieves_and_cites(
    owner: CommandRunner, services: Services, fake_openai: Any, nova: None
) -> None:
    await owner.invoke(
        ["docs", "upload"],
        {"agent": "Nova", "file": StandInAttachment("planets.txt", FACTS.encode())},
    )
    before = (await services.ledger.balance(ACCOUNT)).tokens_used
    embed_before = fake_openai.reported_tokens("embeddings")
    sent = await owner.run('/chat agent:Nova message:"Which planet has rings of ice?"')
    assert "Sources: planets.txt\n" in text(sent)  # no heading: the document alone
    system = fake_openai.completed("chat")[-1].body["messages"][0]["content"]
    assert "Saturn is famous for its bright rings" in system
    query_tokens = fake_openai.reported_tokens("embeddings") - embed_before
    assert query_tokens > 0
    charged = (await services.ledger.balance(ACCOUNT)).tokens_used - before
    assert charged == fake_openai.reported_tokens("chat") + query_tokens


async def test_short_on_tokens_no_chat_request(
    owner: CommandRunner, services: Services, fake_openai: Any, nova: None
) -> None:
    hold = await services.ledger.reserve(ACCOUNT, 249_900, "chat", 1, GUILD, "m")
    await services.ledger.commit(hold, 249_900)
    sent = await owner.run("/chat agent:Nova message:hello")
    assert "Insufficient Tokens" in text(sent)
    assert fake_openai.count("chat") == 0


async def test_failed_chat_charges_nothing_and_stores_no_turn(
    owner: CommandRunner, services: Services, fake_openai: Any, nova: None
) -> None:
    fake_openai.fail_next("chat", "500")
    sent = await owner.run("/chat agent:Nova message:hello")
    assert "nothing was charged" in text(sent).lower()
    balance = await services.ledger.balance(ACCOUNT)
    assert balance.tokens_used == 0 and balance.tokens_held == 0
    rows = await services.ledger.store.reader.execute_fetchall("SELECT COUNT(*) FROM turns")
    assert rows[0][0] == 0


async def test_many_chats_with_little_balance_never_overspend(
    owner: CommandRunner, services: Services, fake_openai: Any, nova: None
) -> None:
    hold = await services.ledger.reserve(ACCOUNT, 245_000, "chat", 1, GUILD, "m")
    await services.ledger.commit(hold, 245_000)
    fake_openai.chat_answer = "x" * 3000
    results = await asyncio.gather(
        *(owner.run(f"/chat agent:Nova message:question{i}") for i in range(30))
    )
    answered = sum(1 for r in results if "xxxx" in text(r))
    balance = await services.ledger.balance(ACCOUNT)
    assert 0 < answered < 30
    assert balance.tokens_used <= 250_000 and balance.tokens_held == 0
    assert balance.tokens_used == 245_000 + fake_openai.reported_tokens("chat")
    assert await services.ledger.verify() == []


def _exchanges(count: int, tokens: int = 100) -> list[Turn]:
    """`count` turns, a question then its answer, as the store keeps them."""
    return [Turn("user" if i % 2 == 0 else "assistant", f"t{i}", tokens) for i in range(count)]


def test_history_is_trimmed_to_the_budget() -> None:
    kept = trim_history(_exchanges(50), 1000, 50)
    assert len(kept) == 10 and kept[-1].content == "t49" and kept[0].content == "t40"


def test_short_turns_are_bounded_by_message_count() -> None:
    # 50 turns of 10 tokens fit a 2,000-token budget many times over: the count bounds.
    kept = trim_history(_exchanges(50, tokens=10), 2000, 20)
    assert [t.content for t in kept] == [f"t{i}" for i in range(30, 50)]


def test_an_exchange_is_never_split() -> None:
    turns = _exchanges(6)
    # 350 tokens hold three turns, 5 messages hold five: both keep whole pairs only.
    assert [t.content for t in trim_history(turns, 350, 50)] == ["t4", "t5"]
    assert [t.content for t in trim_history(turns, 10_000, 5)] == ["t2", "t3", "t4", "t5"]
    # A window that begins with an answer has lost its question: the answer goes too.
    assert [t.content for t in trim_history(turns[1:], 10_000, 50)] == ["t2", "t3", "t4", "t5"]
    assert trim_history(turns, 10_000, 0) == [] and trim_history([], 100, 10) == []


async def test_a_long_thread_sends_the_last_whole_exchanges(
    as_user: Any, services: Services, fake_openai: Any
) -> None:
    dm: CommandRunner = as_user(7, guild_id=None)
    await dm.run('/agent create name:Nova prompt:"An astronomer"')
    agent = await services.repo.agent("user:7", "Nova")
    assert agent is not None

    async def seed(conn: Any) -> None:
        conversation = await services.repo.open_conversation_in(
            conn, f"{dm.channel_id}:{agent.id}", agent.id, "user:7"
        )
        await services.repo.add_turns_in(conn, conversation, _exchanges(60, tokens=8))

    await services.ledger.store.write(seed)
    services.config.chat.history_messages = 9  # odd: four whole exchanges fit
    await dm.run('/chat agent:Nova message:"And now?"')
    messages = fake_openai.completed("chat")[-1].body["messages"]
    history = messages[1:-1]
    assert [m["content"] for m in history] == [f"t{i}" for i in range(52, 60)]
    assert history[0]["role"] == "user" and messages[-1]["content"] == "And now?"


async def test_long_history_is_trimmed_in_the_request(
    owner: CommandRunner, fake_openai: Any, nova: None
) -> None:
    fake_openai.chat_answer = "y" * 1500
    for i in range(12):
        await owner.run(f"/chat agent:Nova message:turn{i}")
    messages = fake_openai.completed("chat")[-1].body["messages"]
    assert len(messages) < 2 + 2 * 11  # not every earlier turn fits the budget
    assert messages[-1]["content"] == "turn11"


def test_top_indices_finds_the_closest() -> None:
    rng = np.random.default_rng(1)
    matrix = normalise(rng.normal(size=(1000, 64)).astype(np.float32))
    order, scores = top_indices(matrix, matrix[123] * 3, 5)
    assert order[0] == 123 and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert list(scores) == sorted(scores, reverse=True)


async def test_no_more_answers_are_worked_on_at_once_than_the_client_has_connections(
    app_config: Config, fake_openai: Any
) -> None:
    """The rest wait their turn before anything is held: five chats on a client of two
    connections hold tokens for two while the API keeps both busy."""
    app_config.openai.max_connections = 2
    app_config.chat.stream = False  # no edit interval to wait out
    services = await Services.open(app_config, ai=AIGateway(app_config.openai, "k", strict=True))
    try:
        bot = AgentBot(app_config, services)
        await bot.load_cogs()
        dm = CommandRunner(bot, user_id=9)
        await dm.run('/agent create name:Nova prompt:"An astronomer"')
        held = fake_openai.gate("chat")
        chats = []
        for n in range(5):
            runner = CommandRunner(bot, user_id=9)
            runner.channel_id = 100 + n
            chats.append(asyncio.ensure_future(runner.run(f'/chat agent:Nova message:"q{n}"')))
        await fake_openai.received("chat", 2)
        rows = await services.ledger.store.reader.execute_fetchall(
            "SELECT COUNT(*) FROM holds WHERE status = 'pending'"
        )
        assert rows[0][0] == 2 and fake_openai.count("chat") == 2
        held.set()
        answers = await asyncio.gather(*chats)
        assert all("fake agent" in text(sent) for sent in answers)
        assert fake_openai.count("chat") == 5
    finally:
        await services.close()
