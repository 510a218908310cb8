"""/admin: operators only, checked on our side; changes journaled."""

from __future__ import annotations

from typing import Any

import pytest

from bot.errors import PermissionDenied
from bot.front.app import AgentBot
from bot.front.standin import CommandRunner, StandInUser
from bot.services import Services
from tests.bot.conftest import GUILD, OWNER
from tests.bot.helpers import text

OPERATOR = 99


@pytest.fixture
def operator(bot: AgentBot, services: Services) -> CommandRunner:
    services.admin.set_owners({OPERATOR})
    return CommandRunner(bot, user_id=OPERATOR, guild_id=GUILD, owner_id=OWNER)


async def test_non_operator_is_refused_by_the_check(
    owner: CommandRunner, services: Services
) -> None:
    sent = await owner.run("/admin grant amount:1000 reason:gift")
    assert "permission" in text(sent) and sent[-1].ephemeral
    assert (await services.ledger.balance(f"guild:{GUILD}")).bonus_tokens == 0


async def test_non_operator_is_refused_even_calling_the_callback(
    bot: AgentBot, services: Services
) -> None:
    cog: Any = bot.get_cog("AdminCog")
    runner = CommandRunner(bot, user_id=OWNER, guild_id=GUILD)
    from bot.front.standin import StandInInteraction, StandInPermissions, Transcript

    interaction = StandInInteraction(
        bot, StandInUser(OWNER), runner.guild, StandInPermissions(administrator=True), Transcript()
    )
    with pytest.raises(PermissionDenied):
        await cog.grant.callback(cog, interaction, 1000, "gift", None)
    assert (await services.ledger.balance(f"guild:{GUILD}")).bonus_tokens == 0


async def test_configured_operator_ids_count(bot: AgentBot, services: Services) -> None:
    services.config.admins.user_ids = [42]
    assert services.admin.is_operator(42) and not services.admin.is_operator(43)


async def test_grant_and_revoke_are_journaled(operator: CommandRunner, services: Services) -> None:
    sent = await operator.run("/admin grant amount:5000 reason:event member:7")
    assert "Granted 5,000 tokens to `user:7`" in text(sent) and sent[-1].ephemeral
    sent = await operator.run("/admin revoke amount:9000 reason:mistake member:7")
    assert "Revoked 5,000 of 9,000" in text(sent)
    balance = await services.ledger.balance("user:7")
    assert balance.bonus_tokens == 0
    rows = await services.ledger.store.reader.execute_fetchall(
        "SELECT action, amount, actor, reason FROM journal WHERE account_id = 'user:7' ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [
        ("grant", 5000, f"discord:{OPERATOR}", "event"),
        ("revoke", 5000, f"discord:{OPERATOR}", "mistake"),
    ]
    assert await services.ledger.verify() == []


async def test_grant_to_this_server_and_bounds(operator: CommandRunner, services: Services) -> None:
    await operator.run("/admin grant amount:100 reason:hello")
    assert (await services.ledger.balance(f"guild:{GUILD}")).bonus_tokens == 100
    sent = await operator.run(
        f"/admin grant amount:{services.config.limits.max_grant + 1} reason:x"
    )
    assert "whole number from 1 to" in text(sent)


async def test_plan_and_usage(operator: CommandRunner, services: Services) -> None:
    sent = await operator.run("/admin plan plan:pro reason:partner")
    assert "is on pro" in text(sent)
    assert (await services.ledger.balance(f"guild:{GUILD}")).tokens_limit == 10_000_000
    sent = await operator.run("/admin usage")
    assert f"guild:{GUILD}" in text(sent) and "Pro plan" in text(sent)
