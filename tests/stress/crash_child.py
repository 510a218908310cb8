"""The child process of the crash suite (tests/stress/test_crash.py): metered work through
the real services and the real cogs, driven by the stand-in interaction, until the test
kills it with SIGKILL.

Run as a script (`python tests/stress/crash_child.py`) in a scratch folder, configured
by the environment like the bot (`BOT_STORAGE__DATABASE`, `BOT_STORAGE__DATA_DIR`,
`BOT_OPENAI__BASE_URL`, `OPENAI_API_KEY`).

Protocol. Standard input: one JSON line, the plan, read only after the imports, so the
test may start the next child while it still checks the last one's database:
`{"guild": G, "owner": O, "workers": [[{"n": 12, "kind": "chat", "agent": "Nova"}, ...]]}`.
Standard output, one line each, flushed at once (a line written before the SIGKILL is a
line the test reads): `ready`; `begin N`; `log N <message>` for each step the meter logs
for op N (reserve, call, deduct, deducted); `done N ok` once the member has the reply, or
`done N error <text>`; `finished` when every op is done, after which it waits for the
kill (or for the end of standard input).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sys
from pathlib import Path
from typing import Any

from bot.config import load
from bot.front.app import AgentBot
from bot.front.standin import CommandRunner
from bot.services import Services

# Each op runs as one member; the ledger records the member on the op's charge, so the
# test maps every charge back to the op that made it.
USER_BASE = 1_000_000

_current: contextvars.ContextVar[int | None] = contextvars.ContextVar("op", default=None)


def tag(n: int) -> str:
    """The mark of op N in everything it sends to the API (style, message, document)."""
    return f"op#{n}#"


def document_text(n: int, big: bool = False) -> str:
    """A text document for op N: small (one to seven chunks, one embeddings request) or
    big (382 chunks: two requests). Every sentence carries the op's mark, so every
    chunk, and so every embeddings request, names its op."""
    sentence = f"{tag(n)} Pulsars of catalogue {n} spin fast and sweep beams across the sky. "
    count = 4200 if big else 8 + (n * 7) % 60
    return f"{tag(n)} Notes on neutron stars.\n\n" + sentence * count


def chat_message(n: int) -> str:
    return f"{tag(n)} What do you know about pulsars and beams?"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class _Progress(logging.Handler):
    """Forwards the meter's log lines, marked with the op whose task logged them."""

    def emit(self, record: logging.LogRecord) -> None:
        n = _current.get()
        if n is not None:
            say(f"log {n} {record.getMessage()}")


def _failure(sent: list[Any]) -> str | None:
    texts = [s.text() for s in sent]
    for text in texts:
        if "❌" in text or "Insufficient" in text:
            return " ".join(text.split())[:300]
    if not any(s.kind != "defer" for s in sent):
        return "no reply at all"
    return None


async def _op(bot: AgentBot, plan: dict[str, Any], op: dict[str, Any], uploads: Path) -> None:
    n = int(op["n"])
    runner = CommandRunner(
        bot,
        user_id=USER_BASE + n,
        guild_id=int(plan["guild"]),
        owner_id=int(plan["owner"]),
        manage_guild=True,
    )
    match op["kind"]:
        case "avatar":
            path, options = ["avatar", "generate"], {"style": f"{tag(n)} watercolor"}
        case "document" | "big_document":
            file = uploads / f"op{n}.txt"
            file.write_text(document_text(n, op["kind"] == "big_document"), encoding="utf-8")
            path, options = ["docs", "upload"], {"file": str(file)}
        case "chat":
            path, options = ["chat"], {"message": chat_message(n)}
        case other:
            raise ValueError(f"unknown op kind {other!r}")
    sent = await runner.invoke(path, {"agent": op["agent"], **options})
    failure = _failure(sent)
    say(f"done {n} ok" if failure is None else f"done {n} error {failure}")


async def _worker(
    bot: AgentBot, plan: dict[str, Any], ops: list[dict[str, Any]], uploads: Path
) -> None:
    for op in ops:
        _current.set(int(op["n"]))  # this worker's task only: its own context
        say(f"begin {op['n']}")
        try:
            await _op(bot, plan, op, uploads)
        except Exception as error:  # an error that escaped the cogs' own handler
            say(f"done {op['n']} error {type(error).__name__}: {error}")
        _current.set(None)


async def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    meter_log = logging.getLogger("bot.core.metering")
    meter_log.setLevel(logging.DEBUG)  # its steps are DEBUG lines (one INFO per call)
    meter_log.addHandler(_Progress())
    meter_log.propagate = False  # standard error keeps the warnings only
    line = await asyncio.to_thread(sys.stdin.readline)
    if not line.strip():
        return 0  # the test had no more rounds for this spare child
    plan = json.loads(line)
    config = load()
    uploads = config.data_path("uploads")
    uploads.mkdir(parents=True, exist_ok=True)
    services = await Services.open(config)
    try:
        bot = AgentBot(config, services)
        await bot.load_cogs()
        say("ready")
        await asyncio.gather(*(_worker(bot, plan, ops, uploads) for ops in plan["workers"]))
        say("finished")
        # Wait to be killed (or told to stop by the end of standard input): the test's
        # kill at a late moment must still find a live process.
        await asyncio.to_thread(sys.stdin.readline)
    finally:
        await services.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
