"""One bot process of the multi-process suite: `python -m tests.stress.mp_worker ...`.

It opens the real Services from the configuration (config.toml in the working folder and
BOT_* variables: the shared database, the fake OpenAI server's URL), starts the ledger's
maintenance (lease renewal and the sweeper, as the bot does), loads the real cogs and
drives them with the stand-in interaction: a fixed number of chats and avatar
generations, a few at a time. It prints "ready" once set up, waits for a line on
standard input (so that every process starts its work together), and prints one JSON
report as its last line of standard output. Logs go to standard error.

Every chat carries a unique tag into its request (the message; an avatar's style), so
the test can pair each request the fake answered with the reply a member read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import time
import traceback
from collections import Counter
from typing import Any

from bot.config import load
from bot.core.ai import AIGateway
from bot.front.app import AgentBot
from bot.front.standin import CommandRunner
from bot.services import Services
from tests.stress.load_replies import outcome, shown


def chat_tag(worker: int, number: int) -> str:
    return f"w{worker} chat {number}"


def avatar_tag(worker: int, number: int) -> str:
    return f"w{worker} avatar {number}"


async def work(args: argparse.Namespace, report: dict[str, Any]) -> None:
    config = load()
    services = await Services.open(
        config, ai=AIGateway(config.openai, "test-key", strict=True), kind="bot"
    )
    try:
        services.ledger.start_maintenance()  # as the bot does: renew the lease, sweep
        bot = AgentBot(config, services)
        await bot.load_cogs()
        agent = f"Worker{args.worker}"

        def runner(channel: int) -> CommandRunner:
            member = CommandRunner(
                bot, user_id=10 + args.worker, guild_id=args.guild, owner_id=1, manage_guild=True
            )
            member.channel_id = channel
            return member

        created = await runner(1).run(f'/agent create name:{agent} prompt:"A patient astronomer"')
        if "❌" in shown(created):
            report["errors"].append(f"setup: {shown(created)}")
            return
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        items = [("chat", chat_tag(args.worker, i)) for i in range(args.chats)]
        items += [("avatar", avatar_tag(args.worker, i)) for i in range(args.avatars)]
        random.Random(args.worker).shuffle(items)
        gate = asyncio.Semaphore(args.concurrency)

        async def one(index: int, kind: str, tag: str) -> None:
            async with gate:
                if kind == "chat":
                    # A channel of its own: a fresh conversation, so chats cost alike.
                    line = f'/chat agent:{agent} message:"{tag}"'
                    sent = await runner(1000 * (args.worker + 1) + index).run(line)
                else:
                    sent = await runner(1).run(f'/avatar generate agent:{agent} style:"{tag}"')
            result = outcome(kind, sent)
            report["outcomes"][f"{kind} {result}"] += 1
            report["tags"][result].append(tag)
            if result not in {"ok", "insufficient"}:
                report["errors"].append(f"{tag}: {shown(sent)}")

        began = time.monotonic()
        results = await asyncio.gather(
            *(one(i, kind, tag) for i, (kind, tag) in enumerate(items)), return_exceptions=True
        )
        report["seconds"] = round(time.monotonic() - began, 3)
        for result in results:
            if isinstance(result, BaseException):
                report["errors"].append("".join(traceback.format_exception(result)).strip()[-2000:])
    finally:
        await services.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--guild", type=int, required=True)
    parser.add_argument("--chats", type=int, required=True)
    parser.add_argument("--avatars", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    report: dict[str, Any] = {
        "worker": args.worker,
        "outcomes": Counter(),
        "tags": {"ok": [], "insufficient": [], "ai_busy": [], "error": []},
        "errors": [],
    }
    try:
        asyncio.run(work(args, report))
    except BaseException:
        report["errors"].append(traceback.format_exc()[-2000:])
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
