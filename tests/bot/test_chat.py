"""Chat: exact charges, retrieval, history, and no overspending."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from bot.core.chat import trim_history
from bot.core.documents.retrieval import normalise, top_indices
from bot.core.repository import Turn
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


def test_history_is_trimmed_to_the_budget() -> None:
    turns = [Turn("user" if i % 2 == 0 else "assistant", f"t{i}", 100) for i in range(50)]
    kept = trim_history(turns, 1000)
    assert len(kept) == 10 and kept[-1].content == "t49" and kept[0].content == "t40"


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
