"""Streamed chat against the fake OpenAI server at 20 ms a chunk (one word a chunk).

- the time to the first visible text of a streamed answer, against the time of the
  same answer unstreamed (which shows nothing until all of it is written);
- the edits per streamed answer (at most one a second per message).

Through the real cog and the stand-in interaction, as the console runs it: what a
member sees is the first followup with text. Aim (issue 14): the first text in under
1.5 s of an 8 s answer.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from bench.report import Figure, cli, median
from bot.config import (
    ChatSettings,
    Config,
    OpenAISettings,
    PlanSettings,
    PlansSettings,
    StorageSettings,
)
from bot.core.ai import AIGateway
from bot.front.app import AgentBot
from bot.front.standin import CommandRunner, Sent
from bot.services import Services
from tests.fakes.openai_server import FakeOpenAI

BENCH = "chat"
CHUNK_SECONDS = 0.020


def _first_text(sent: list[Sent]) -> float:
    return next(s.at for s in sent if s.kind == "followup" and s.text())


async def _answers(words: int, runs: int) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {"first": [], "whole": [], "edits": [], "total": []}
    async with FakeOpenAI() as fake:
        fake.chunk_delay = CHUNK_SECONDS
        fake.chat_answer = " ".join(f"word{i}" for i in range(words))
        with tempfile.TemporaryDirectory() as folder:
            config = Config(
                storage=StorageSettings(
                    database=str(Path(folder, "bot.db")), data_dir=str(Path(folder, "data"))
                ),
                openai=OpenAISettings(
                    base_url=fake.base_url, max_completion_tokens=4000, max_retries=0
                ),
                plans=PlansSettings(free=PlanSettings(monthly_tokens=10_000_000, max_agents=0)),
                chat=ChatSettings(),
            )
            services = await Services.open(config, ai=AIGateway(config.openai, "bench-key"))
            try:
                bot = AgentBot(config, services)
                await bot.load_cogs()
                runner = CommandRunner(bot, user_id=1)
                await runner.run('/agent create name:Nova prompt:"An astronomer"')
                # Warm-up: the first call opens the connection and loads the tokenizer.
                runner.channel_id = 99
                await runner.run('/chat agent:Nova message:"Hello"')
                for run in range(runs):
                    for stream in (True, False):
                        config.chat.stream = stream
                        runner.channel_id = 100 + run * 2 + stream  # a fresh conversation
                        began = time.perf_counter()
                        sent = await runner.run('/chat agent:Nova message:"Count for me"')
                        took = time.perf_counter() - began
                        if stream:
                            figures["first"].append(_first_text(sent))
                            figures["edits"].append(sum(1 for s in sent if s.kind == "edit"))
                            figures["total"].append(took)
                        else:
                            figures["whole"].append(_first_text(sent))
            finally:
                await services.close()
    return figures


def run(quick: bool) -> list[Figure]:
    words, runs = (100, 1) if quick else (400, 2)  # 2 s or 8 s of writing at 20 ms a chunk
    got = asyncio.run(_answers(words, runs))
    first, whole = median(got["first"]), median(got["whole"])
    answer = f"{words * CHUNK_SECONDS:.0f} s answer"
    aim_met = first < 1.5 if not quick else None
    return [
        Figure(
            BENCH,
            f"first visible text, streamed ({answer})",
            first * 1000,
            "ms",
            "< 1500" if not quick else "",
            aim_met,
        ),
        Figure(BENCH, f"whole answer, unstreamed ({answer})", whole * 1000, "ms"),
        Figure(BENCH, "first text streamed / unstreamed", first / whole, "x"),
        Figure(BENCH, "streamed answer done", median(got["total"]) * 1000, "ms"),
        Figure(BENCH, "edits per streamed answer", median(got["edits"]), ""),
    ]


if __name__ == "__main__":
    cli(run)
