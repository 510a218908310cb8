"""The metered call: cancellation and failures release the hold; weights apply."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bot.core.metering import Actor
from bot.services import Services
from ledger import InsufficientTokens

ACTOR = Actor("guild:5", 1, 5)


async def test_cancelled_call_releases_its_hold(services: Services, fake_openai: Any) -> None:
    fake_openai.fail_next("images", "timeout")  # held until released
    task = asyncio.create_task(
        services.meter.run(
            ACTOR,
            "avatar_generation",
            5000,
            "m",
            lambda: services.ai.image("a cat"),
            cost=lambda _: 5000,
        )
    )
    while fake_openai.count("images") == 0:  # wait until the request is in flight
        await asyncio.sleep(0)
        if task.done():
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await services.meter.drain()
    balance = await services.ledger.balance(ACTOR.account_id)
    assert balance.tokens_held == 0 and balance.tokens_used == 0
    assert await services.ledger.verify() == []


async def test_refused_reserve_makes_no_call(services: Services) -> None:
    called = []

    async def call() -> int:
        called.append(1)
        return 1

    with pytest.raises(InsufficientTokens) as refused:
        await services.meter.run(ACTOR, "chat", 300_000, "m", call, cost=lambda r: r)
    assert refused.value.needed == 300_000 and refused.value.available == 250_000
    assert called == []


async def test_failure_in_store_charges_nothing(services: Services) -> None:
    async def call() -> int:
        return 100

    async def store(conn: Any, result: int) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        await services.meter.run(ACTOR, "chat", 500, "m", call, cost=lambda r: r, store=store)
    balance = await services.ledger.balance(ACTOR.account_id)
    assert balance.tokens_used == 0 and balance.tokens_held == 0


async def test_model_weight_multiplies_and_rounds_up(services: Services) -> None:
    services.config.costs.model_weights["heavy"] = 2.5

    async def call() -> int:
        return 101

    metered = await services.meter.run(
        ACTOR, "chat", 1000, "heavy", call, cost=lambda r: services.meter.weighted("heavy", r)
    )
    assert metered.charged == 253  # ceil(101 * 2.5)
    assert (await services.ledger.balance(ACTOR.account_id)).tokens_used == 253
