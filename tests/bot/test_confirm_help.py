"""Confirmations before losing paid work (/agent delete, /docs remove: confirm, cancel,
timeout), and /help."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import bot.front.confirm as confirm
from bot.config import Config
from bot.front.standin import CommandRunner, StandInAttachment
from bot.services import Services
from tests.bot.conftest import GUILD
from tests.bot.helpers import text
from tests.fakes.openai_server import _png

ACCOUNT = f"guild:{GUILD}"


@pytest.fixture
def app_config(app_config: Config, database: str) -> Config:
    """On each store in turn: the losses named are read from the ledger's charges."""
    storage = app_config.storage.model_copy(update={"database": database})
    return app_config.model_copy(update={"storage": storage})


@pytest.fixture
async def taught(owner: CommandRunner, tmp_path: Path, fake_openai: Any) -> int:
    """Nova with a generated avatar and one document; returns the document's tokens."""
    await owner.run('/agent create name:Nova prompt:"An astronomer"')
    await owner.run("/avatar generate agent:Nova")
    notes = tmp_path / "notes.md"
    notes.write_text("# Comets\n\n" + "Comets are icy bodies from the outer system. " * 60)
    await owner.run(f"/docs upload agent:Nova file:{notes}")
    return fake_openai.reported_tokens("embeddings")


async def test_agent_delete_names_what_is_lost_and_deletes_only_when_confirmed(
    owner: CommandRunner, services: Services, taught: int
) -> None:
    asked = await owner.run("/agent delete name:Nova confirm:no")
    question = asked[0]
    assert question.ephemeral and [b[0] for b in question.buttons()] == ["Confirm", "Cancel"]
    shown = question.text()
    assert "Delete Nova?" in shown
    assert "generated avatar (5,000 tokens were spent generating avatars)" in shown
    assert "1 document and " in shown and f"({taught:,} tokens were spent" in shown
    assert "Confirm within 60 seconds." in shown and confirm.CONFIRM_SECONDS == 60
    assert "Cancelled: nothing was changed." in text(asked)
    assert await services.repo.agent(ACCOUNT, "Nova") is not None

    await owner.run("/avatar generate agent:Nova")  # a second one replaces the first
    asked = await owner.run("/agent delete name:Nova confirm:no")
    assert "(10,000 tokens were spent generating avatars)" in asked[0].text()

    sent = await owner.run("/agent delete name:Nova confirm:yes")
    assert "Deleted **Nova**" in text(sent)
    assert await services.repo.agent(ACCOUNT, "Nova") is None
    # A new agent of the same name owes nothing to the old one's avatars.
    await owner.run('/agent create name:Nova prompt:"Another astronomer"')
    await owner.run("/avatar generate agent:Nova")
    asked = await owner.run("/agent delete name:Nova confirm:no")
    assert "(5,000 tokens were spent generating avatars)" in asked[0].text()


async def test_an_unanswered_confirmation_changes_nothing(
    owner: CommandRunner, services: Services, taught: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No confirm: option: the console's question expires at once, as an unanswered one.
    sent = await owner.run("/agent delete name:Nova")
    assert "No answer in time: nothing was changed." in text(sent)
    # The view's own timeout (60 s in use; short here), with nobody pressing anything.
    monkeypatch.setattr(confirm, "CONFIRM_SECONDS", 0.05)
    sent = await owner.run("/docs remove agent:Nova document:notes.md confirm:wait")
    assert "No answer in time: nothing was changed." in text(sent)
    assert await services.repo.agent(ACCOUNT, "Nova") is not None
    agent = await services.repo.agent(ACCOUNT, "Nova")
    assert len(await services.repo.documents(agent.id)) == 1


async def test_only_the_member_who_asked_can_answer(owner: CommandRunner) -> None:
    view = confirm.ConfirmView(user_id=1)
    other = type("I", (), {"user": type("U", (), {"id": 2})()})()
    me = type("I", (), {"user": type("U", (), {"id": 1})()})()
    assert not await view.interaction_check(other)  # type: ignore[arg-type]
    assert await view.interaction_check(me)  # type: ignore[arg-type]


async def test_docs_remove_asks_first(
    owner: CommandRunner, services: Services, taught: int
) -> None:
    asked = await owner.run("/docs remove agent:Nova document:notes.md confirm:no")
    assert "Remove notes.md?" in asked[0].text() and f"{taught:,} tokens" in asked[0].text()
    agent = await services.repo.agent(ACCOUNT, "Nova")
    assert len(await services.repo.documents(agent.id)) == 1
    sent = await owner.run("/docs remove agent:Nova document:notes.md confirm:yes")
    assert "Removed **notes.md**" in text(sent)
    assert await services.repo.documents(agent.id) == []


async def test_help_lists_commands_costs_plan_balance_and_upgrade(
    owner: CommandRunner, as_user: Any
) -> None:
    await owner.run('/agent create name:Nova prompt:"An astronomer"')
    await owner.invoke(
        ["avatar", "upload"], {"agent": "Nova", "image": StandInAttachment("a.png", _png())}
    )
    sent = await owner.run("/help")
    (answer,) = sent
    assert answer.ephemeral and answer.embeds
    shown = answer.text()
    for line in (
        "`/chat agent message image`",
        "`/agent delete name`",
        "`/avatar generate agent style`: ",
        "(5,000 tokens)",
        "`/docs upload agent file`",
        "`/chat-reset agent`",
        "This server: Free, 250,000 tokens remaining",
        "Use `/upgrade`",
    ):
        assert line in shown, line
    assert "/admin" not in shown
    assert ("Upgrade to Pro", answer.buttons()[0][1]) == answer.buttons()[0]
    dm = as_user(5, guild_id=None)
    assert "You: Free" in text(await dm.run("/help"))
