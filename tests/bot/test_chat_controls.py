"""Conversations members control: /chat-reset and /chat-history, the history budget and
retrieval depth as settings, and the console printing a streamed answer as it comes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from bot.config import Config
from bot.front.console import run_console
from bot.front.standin import CommandRunner
from bot.services import Services
from tests.bot.helpers import text
from tests.bot.test_chat_threads import FakeChannel


def _contents(fake: Any) -> list[str]:
    return [str(m["content"]) for m in fake.completed("chat")[-1].body["messages"]]


async def test_reset_starts_over_in_a_dm_and_history_shows_the_turns(
    as_user: Any, fake_openai: Any
) -> None:
    dm: CommandRunner = as_user(1, guild_id=None)
    await dm.run('/agent create name:Nova prompt:"An astronomer"')
    fake_openai.chat_answer = "Jupiter is the largest planet."
    await dm.run('/chat agent:Nova message:"Which planet is largest?"')
    fake_openai.chat_answer = "Mercury is the smallest."
    await dm.run('/chat agent:Nova message:"And the smallest?"')
    assert "Which planet is largest?" in _contents(fake_openai)

    history = await dm.run("/chat-history agent:Nova")
    shown = text(history)
    assert history[0].ephemeral
    for line in ("Which planet is largest?", "Jupiter is the largest planet.", "Mercury"):
        assert line in shown
    assert shown.index("Which planet") < shown.index("Mercury")  # oldest first

    reset = await dm.run("/chat-reset agent:Nova")
    assert "4 earlier messages forgotten" in text(reset) and reset[0].ephemeral
    assert "No conversation with **Nova** here yet." in text(
        await dm.run("/chat-history agent:Nova")
    )
    fake_openai.chat_answer = "Hello again."
    await dm.run('/chat agent:Nova message:"Do you remember me?"')
    assert len(_contents(fake_openai)) == 2  # the persona and this message, nothing older


async def test_reset_in_a_thread_points_outside_it(owner: CommandRunner, fake_openai: Any) -> None:
    await owner.run('/agent create name:Nova prompt:"An astronomer"')
    channel = FakeChannel(800, webhooks_allowed=False)
    owner.channel = channel
    await owner.run('/chat agent:Nova message:"Hi"')
    owner.channel = channel.threads_made[0]
    sent = await owner.run("/chat-reset agent:Nova")
    assert "use `/chat` in a channel outside this thread" in text(sent)
    assert "Hi" in text(await owner.run("/chat-history agent:Nova"))


async def test_history_budget_and_retrieval_depth_are_settings(
    as_user: Any, services: Services, fake_openai: Any, tmp_path: Path
) -> None:
    dm: CommandRunner = as_user(1, guild_id=None)
    await dm.run('/agent create name:Nova prompt:"An astronomer"')
    notes = tmp_path / "notes.txt"
    notes.write_text("Comets are icy bodies. " * 40 + "\n\n" + "Nebulae are gas clouds. " * 40)
    await dm.run(f"/docs upload agent:Nova file:{notes}")
    for n in range(4):
        await dm.run(f'/chat agent:Nova message:"Tell me about comets, part {n}"')
    assert len(_contents(fake_openai)) > 2 and fake_openai.count("embeddings") >= 2

    services.config.chat.history_budget = 0
    services.config.chat.retrieval_depth = 0
    embeddings = fake_openai.count("embeddings")
    await dm.run('/chat agent:Nova message:"Comets again?"')
    assert len(_contents(fake_openai)) == 2  # no earlier turn
    assert "excerpts" not in _contents(fake_openai)[0]  # no document retrieved
    assert fake_openai.count("embeddings") == embeddings  # nor any query embedded


async def test_the_console_prints_a_streamed_answer_as_it_comes(
    tmp_path: Path, app_config: Config, services: Services, fake_openai: Any
) -> None:
    services.config.chat.edit_interval_seconds = 0.2
    services.config.chat.channel_edits = 100  # the channel's budget is not this test's: no wait
    fake_openai.chunk_delay = 0.01
    answer = " ".join(f"word{i}" for i in range(80))
    fake_openai.chat_answer = answer

    writes: list[str] = []

    class Watching(io.StringIO):
        """Keeps each write, to see the answer arrive in pieces."""

        def write(self, s: str) -> int:
            writes.append(s)
            return super().write(s)

    output = Watching()
    script = '/agent create name:Nova prompt:"An astronomer"\n/chat agent:Nova message:"Count"\n'
    await run_console(
        app_config,
        user_id=1,
        guild_id=None,
        out_dir=tmp_path / "out",
        lines=io.StringIO(script),
        output=output,
        services=services,
    )
    printed = output.getvalue()
    assert printed.count("word0 ") == 1  # printed once, not once per edit
    assert answer in printed.splitlines()  # whole, in order, on one line as it grew
    pieces = [w for w in writes if "word" in w]
    assert len(pieces) >= 2  # it arrived in more than one piece: it streamed
