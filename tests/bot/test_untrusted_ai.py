"""A misbehaving OpenAI-compatible server is trusted no further than it must be: usage
figures that are missing, negative or not whole numbers fail the call and charge nothing;
an answer is cut at the completion cap; a call ends by its wall-clock deadline even when
the body trickles (issue 10, finding 9)."""

from __future__ import annotations

from typing import Any

import pytest

from bot.config import OpenAISettings
from bot.core.ai import AIGateway
from bot.core.metering import Actor
from bot.core.tokens import count_tokens
from bot.errors import AIUnavailable, AIUnusable
from bot.front.standin import CommandRunner, StandInAttachment
from bot.services import Services
from tests.bot.conftest import GUILD
from tests.bot.helpers import text
from tests.fakes.openai_server import MISSING

ACCOUNT = f"guild:{GUILD}"
# Negative, absent, fractional, not a number, null, and beyond any model's context.
HOSTILE = [-5, MISSING, 1.5, "many", None, 10**30]


def _gateway(fake: Any, **settings: Any) -> AIGateway:
    options: dict[str, Any] = {"base_url": fake.base_url, "timeout_seconds": 5, "max_retries": 0}
    return AIGateway(OpenAISettings(**(options | settings)), "k")  # not strict: as deployed


async def _stored(services: Services) -> tuple[int, int, int]:
    rows = await services.ledger.store.reader.execute_fetchall(
        "SELECT (SELECT COUNT(*) FROM documents), (SELECT COUNT(*) FROM chunks),"
        " (SELECT COUNT(*) FROM turns)"
    )
    return tuple(rows[0])  # type: ignore[return-value]


async def test_negative_usage_on_an_upload_stores_nothing_and_charges_nothing(
    owner: CommandRunner, services: Services, fake_openai: Any
) -> None:
    await owner.run('/agent create name:Nova prompt:"A patient astronomer"')
    fake_openai.usage_override = {"total_tokens": -5, "prompt_tokens": -5}
    sent = await owner.invoke(
        ["docs", "upload"],
        {"agent": "Nova", "file": StandInAttachment("notes.txt", b"Comets have long tails. " * 20)},
    )
    told = text(sent)
    assert "could not use; nothing was charged" in told and "positive" not in told
    assert await _stored(services) == (0, 0, 0)
    balance = await services.ledger.balance(ACCOUNT)
    assert (balance.tokens_used, balance.tokens_held) == (0, 0)
    assert await services.ledger.verify() == []


async def test_negative_usage_on_a_chat_stores_no_turn_and_charges_nothing(
    services: Services, fake_openai: Any
) -> None:
    actor = Actor(ACCOUNT, 1, GUILD, can_manage=True)
    await services.agents.create(actor, "Nova", "An astronomer")
    fake_openai.usage_override = {"total_tokens": -5}
    with pytest.raises(AIUnusable):
        await services.chat.ask(actor, "Nova", "thread-1", "Hello there")
    assert await _stored(services) == (0, 0, 0)
    balance = await services.ledger.balance(ACCOUNT)
    assert (balance.tokens_used, balance.tokens_held) == (0, 0)
    assert await services.ledger.verify() == []


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("field", ["prompt_tokens", "completion_tokens", "total_tokens"])
async def test_chat_usage_must_be_present_whole_and_not_negative(
    fake_openai: Any, field: str, value: Any
) -> None:
    gateway = _gateway(fake_openai)
    try:
        fake_openai.usage_override = {field: value}
        with pytest.raises(AIUnusable):
            await gateway.chat([{"role": "user", "content": "hi"}])
        with pytest.raises(AIUnusable):
            await gateway.chat_stream([{"role": "user", "content": "hi"}], _ignore)
    finally:
        await gateway.close()


@pytest.mark.parametrize(
    "chunk",
    [
        [1, 2],  # not an object
        {"choices": "many"},
        {"choices": [{"index": 0}]},  # no delta
        {"choices": [{"index": 0, "delta": "text"}]},
        {"choices": [{"index": 0, "delta": {"content": 5}}]},
        {"choices": [], "usage": "lots"},
    ],
)
@pytest.mark.parametrize("strict", [False, True])
async def test_a_streamed_chunk_of_the_wrong_shape_fails_the_call(
    fake_openai: Any, chunk: Any, strict: bool
) -> None:
    """Chunks are read from the JSON as sent, not built into the SDK's models
    (bot/core/ai.py `_read_chunk`): a shape the API never sends is an unusable answer,
    never a TypeError escaping into the cog."""
    settings = OpenAISettings(base_url=fake_openai.base_url, timeout_seconds=5, max_retries=0)
    gateway = AIGateway(settings, "k", strict=strict)
    try:
        fake_openai.odd_chunk = chunk
        with pytest.raises(AIUnavailable):
            await gateway.chat_stream([{"role": "user", "content": "hi"}], _ignore)
        fake_openai.odd_chunk = None
        assert (await gateway.chat_stream([{"role": "user", "content": "hi"}], _ignore)).text
    finally:
        await gateway.close()


@pytest.mark.parametrize("value", HOSTILE)
async def test_embedding_usage_must_be_present_whole_and_not_negative(
    fake_openai: Any, value: Any
) -> None:
    gateway = _gateway(fake_openai)
    try:
        fake_openai.usage_override = {"total_tokens": value}
        with pytest.raises(AIUnusable):
            await gateway.embed(["a comet"])
    finally:
        await gateway.close()


async def test_a_total_below_its_parts_charges_the_parts(fake_openai: Any) -> None:
    gateway = _gateway(fake_openai)
    try:
        fake_openai.usage_override = {"total_tokens": 0}
        answer = await gateway.chat([{"role": "user", "content": "hi"}])
        assert answer.total_tokens == answer.prompt_tokens + answer.completion_tokens > 0
    finally:
        await gateway.close()


async def test_an_answer_past_the_completion_cap_is_cut_at_the_cap(fake_openai: Any) -> None:
    gateway = _gateway(fake_openai, max_completion_tokens=50)
    fake_openai.ignore_cap = True
    fake_openai.chat_answer = "The comet returns. " * 100_000  # about 2 MB
    model = gateway.settings.chat_model
    try:
        whole = await gateway.chat([{"role": "user", "content": "hi"}])
        assert 0 < count_tokens(whole.text, model) <= 50 and len(whole.text) < 1_000
        pieces: list[str] = []

        async def collect(piece: str) -> None:
            pieces.append(piece)

        fake_openai.chat_answer = "The comet returns. " * 1_000  # streamed a word a chunk
        streamed = await gateway.chat_stream([{"role": "user", "content": "hi"}], collect)
        assert streamed.text == "".join(pieces)
        assert 0 < count_tokens(streamed.text, model) <= 50
    finally:
        await gateway.close()


async def test_a_trickling_body_ends_at_the_call_deadline(fake_openai: Any) -> None:
    """Each byte comes well within the read timeout, so only a total deadline ends it; the
    whole body would take about a minute."""
    gateway = _gateway(fake_openai, timeout_seconds=5, deadline_seconds=1)
    fake_openai.trickle = 0.1
    try:
        with pytest.raises(AIUnavailable):
            await gateway.chat([{"role": "user", "content": "hi"}])
        with pytest.raises(AIUnavailable):
            await gateway.embed(["a comet"])
    finally:
        await gateway.close()


async def _ignore(_: str) -> None:
    return None
