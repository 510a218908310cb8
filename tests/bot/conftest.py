"""Fixtures for the bot's tests: real services on a temporary database, the real openai
client against the fake server, the real cogs driven by the stand-in interaction."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.config import Config, LemonSqueezySettings, OpenAISettings, StorageSettings
from bot.core.ai import AIGateway
from bot.front.app import AgentBot
from bot.front.standin import CommandRunner
from bot.services import Services
from ledger.storage import Store, is_postgres
from tests.bot.helpers import on_virtual_time
from tests.stores import copy_migrated_sqlite

GUILD = 1000
OWNER = 1
MEMBER = 2
MANAGER = 3


@pytest.fixture
def app_config(tmp_path: Path, fake_openai: Any) -> Config:
    return Config(
        storage=StorageSettings(database=str(tmp_path / "bot.db"), data_dir=str(tmp_path / "data")),
        openai=OpenAISettings(base_url=fake_openai.base_url, timeout_seconds=2, max_retries=0),
        lemonsqueezy=LemonSqueezySettings(checkout_url="https://shop.example/checkout/buy/pro"),
    )


@pytest.fixture
async def services(
    app_config: Config, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Services]:
    database = app_config.storage.database
    if not is_postgres(database) and not Path(database).exists():
        # A new file, as the bot would make it, copied rather than migrated each test.
        await copy_migrated_sqlite(Path(database), tmp_path_factory.getbasetemp())
    ai = AIGateway(app_config.openai, "test-key", strict=True)
    opened = await Services.open(app_config, ai=ai)
    try:
        yield opened
        await assert_holds_covered(opened.ledger.store)
    finally:
        await opened.close()


async def assert_holds_covered(store: Store) -> None:
    """Every document and chat of the test was held at least what it cost: the fake counts
    usage with the real tokenizers, so an estimate that is too low fails here."""
    short = await store.reader.execute_fetchall(
        "SELECT operation_type, amount, charged FROM holds WHERE status = 'committed'"
        " AND operation_type IN ('chat', 'document_upload') AND charged > amount"
    )
    assert short == [], f"holds below the real cost (operation, held, charged): {short}"


@pytest.fixture
async def bot(app_config: Config, services: Services) -> AsyncIterator[AgentBot]:
    instance = AgentBot(app_config, services)
    await instance.load_cogs()
    on_virtual_time(instance)
    yield instance
    # services are closed by their own fixture


Run = Callable[..., Awaitable[list[Any]]]


@pytest.fixture
def as_user(bot: AgentBot) -> Callable[..., CommandRunner]:
    def make(
        user_id: int = OWNER,
        *,
        guild_id: int | None = GUILD,
        manage: bool = False,
        roles: list[int] | None = None,
    ) -> CommandRunner:
        return CommandRunner(
            bot,
            user_id=user_id,
            guild_id=guild_id,
            owner_id=OWNER,
            manage_guild=manage,
            roles=roles,
        )

    return make


@pytest.fixture
def owner(as_user: Callable[..., CommandRunner]) -> CommandRunner:
    return as_user(OWNER)
