"""Streamed answers and their metering: a complete stream charges its usage chunk
exactly; a stream cut after some text charges the prompt plus the delivered tokens,
recorded as partial; a stream cut before any text charges nothing; a cancellation
mid-stream settles once. After each, `ledger verify` is clean and no hold is left."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from bot.config import Config
from bot.core.chat import AnswerCut, build_messages, count_delivered, estimate_prompt
from bot.core.metering import Actor
from bot.errors import AIUnavailable
from bot.services import Services

ACTOR = Actor("guild:77", 1, 77)
QUESTION = "What is a pulsar?"
ANSWER = "Pulsars are rapidly spinning neutron stars that sweep beams of radio waves. " * 4


@pytest.fixture
def app_config(app_config: Config, database: str) -> Config:
    """On each store in turn (the `database` fixture of tests/conftest.py)."""
    storage = app_config.storage.model_copy(update={"database": database})
    return app_config.model_copy(update={"storage": storage})


@pytest.fixture
async def nova(services: Services, fake_openai: Any) -> Any:
    fake_openai.chat_answer = ANSWER
    return await services.agents.create(ACTOR, "Nova", "A patient astronomer")


async def _clean(services: Services) -> None:
    await services.meter.drain()
    balance = await services.ledger.balance(ACTOR.account_id)
    assert balance.tokens_held == 0
    pending = await services.ledger.store.reader.execute_fetchall(
        "SELECT COUNT(*) FROM holds WHERE status = 'pending'"
    )
    assert pending[0][0] == 0
    assert await services.ledger.verify() == []


async def _charges(services: Services) -> list[Any]:
    return list(
        await services.ledger.store.reader.execute_fetchall(
            "SELECT tokens_used, status, details FROM token_usage"
            " WHERE account_id = ? AND operation_type = 'chat' AND status = 'charged'",
            (ACTOR.account_id,),
        )
    )


async def _ask_broken(services: Services, thread: str, fails: type[BaseException]) -> Any:
    """Ask on `thread` for an answer whose stream the fake was told to break; the ask must
    raise `fails`. Returns the error and the pieces that reached the member before it."""
    pieces: list[str] = []

    async def on_text(piece: str) -> None:
        pieces.append(piece)

    with pytest.raises(fails) as raised:
        await services.chat.ask(ACTOR, "Nova", thread, QUESTION, on_text=on_text)
    return raised.value, pieces


def _partial_cost(services: Services, nova: Any, message: str, delivered: str) -> int:
    model = services.config.openai.chat_model
    prompt = estimate_prompt(build_messages(nova, [], [], message), model)
    return math.ceil((prompt + count_delivered(delivered, model)) * 1.0)


async def test_a_complete_stream_charges_its_usage_chunk_exactly(
    services: Services, fake_openai: Any, nova: Any
) -> None:
    pieces: list[str] = []

    async def on_text(piece: str) -> None:
        pieces.append(piece)

    answer = await services.chat.ask(ACTOR, "Nova", "t1", QUESTION, on_text=on_text)

    assert len(pieces) > 10 and "".join(pieces) == answer.text == ANSWER
    (request,) = fake_openai.completed("chat")
    assert request.body["stream"] is True
    assert request.body["stream_options"] == {"include_usage": True}
    assert answer.charged == request.usage["total_tokens"]
    ((tokens, status, details),) = await _charges(services)
    assert (tokens, status, details) == (answer.charged, "charged", None)
    await _clean(services)


async def test_a_stream_cut_after_some_chunks_charges_prompt_plus_delivered(
    services: Services, fake_openai: Any, nova: Any
) -> None:
    fake_openai.cut_stream(after=5)
    cut, pieces = await _ask_broken(services, "t2", AnswerCut)

    delivered = "".join(pieces)
    assert len(pieces) == 5 and delivered == fake_openai.requests[-1].streamed
    expected = _partial_cost(services, nova, QUESTION, delivered)
    assert cut.charged == expected and cut.text == delivered
    ((tokens, status, details),) = await _charges(services)
    assert tokens == expected and status == "charged"
    assert details.startswith("partial")
    # The delivered part is kept as the turn, so the conversation goes on from it.
    turns = await services.repo.recent_turns((await services.repo.conversation("t2")).id)
    assert turns[-1].content == delivered
    await _clean(services)


async def test_a_stream_cut_before_any_text_charges_nothing(
    services: Services, fake_openai: Any, nova: Any
) -> None:
    fake_openai.cut_stream(after=0)
    _, pieces = await _ask_broken(services, "t3", AIUnavailable)

    assert pieces == []
    assert await _charges(services) == []
    assert (await services.ledger.balance(ACTOR.account_id)).tokens_used == 0
    await _clean(services)


async def test_a_cancellation_mid_stream_charges_what_was_generated_once(
    services: Services, fake_openai: Any, nova: Any
) -> None:
    fake_openai.stall_stream(after=4)
    pieces: list[str] = []
    four = asyncio.Event()

    async def on_text(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 4:
            four.set()

    task = asyncio.create_task(services.chat.ask(ACTOR, "Nova", "t4", QUESTION, on_text=on_text))
    await four.wait()  # the stream now stalls: the member deletes the thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await services.meter.drain()
    fake_openai.release()

    expected = _partial_cost(services, nova, QUESTION, "".join(pieces))
    rows = await _charges(services)
    assert [(r[0], r[1]) for r in rows] == [(expected, "charged")]
    assert rows[0][2] == "partial: cancelled"
    assert (await services.ledger.balance(ACTOR.account_id)).tokens_used == expected
    await _clean(services)


async def test_a_stream_without_its_usage_chunk_is_charged_as_partial(
    services: Services, fake_openai: Any, nova: Any
) -> None:
    # A server that ignores stream_options: the answer arrives but no usage does.
    fake_openai.omit_stream_usage = True
    cut, pieces = await _ask_broken(services, "t5", AnswerCut)
    assert "".join(pieces) == ANSWER  # the whole answer came; only its usage did not
    assert cut.charged == _partial_cost(services, nova, QUESTION, ANSWER)
    await _clean(services)
