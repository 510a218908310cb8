"""`/chat` throughput of one bot process under closed-loop load (issue 17, point 5).

One event loop runs the real cogs through the stand-in interaction, as in production
minus Discord; the fake OpenAI server runs in its own process (so its CPU is not the
bot's) at 0 ms and at 100 ms of latency. 200 and 500 members chat at once, each in its
own conversation, each sending the next message as soon as the last answer is in.
Every conversation starts with 50 short turns of history, as a long-running short-turn
thread has: what each chat sends along is what the history bound keeps. Answers stream
(five words), with Discord's pacing loosened (0.2 s between edits, no channel budget):
pacing is waiting, which would bound the figure instead of the bot's work.

Reported: chats per second over a timed window (after a warm-up), the CPU time of the
bot's process per chat, and the event loop's stall: how late a task that sleeps 10 ms
at a time wakes (its p99 and worst), the delay every interaction waits behind.

Aims (issue 17): at least twice the throughput of the bot before the issue on the same
machine (measured on main with this same benchmark: see docs/benchmarks.md), and a
stall p99 at most 50 ms at 200 concurrent.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import io
import json
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from bench.report import Figure, cli, median, percentile
from bot.config import (
    ChatSettings,
    Config,
    OpenAISettings,
    PlanSettings,
    PlansSettings,
    StorageSettings,
)
from bot.core.ai import AIGateway
from bot.core.repository import Turn
from bot.front.app import AgentBot
from bot.front.standin import CommandRunner
from bot.logs import setup_logging
from bot.services import Services

BENCH = "chat load"
HISTORY_TURNS = 50  # rows already in each conversation when the load starts
# Main before issue 17's point 5: the same load runs through it in the same run (a copy
# from git), and the aim is twice its throughput.
BEFORE_COMMIT = "7d86916"


@dataclass(frozen=True)
class Load:
    latency: float
    concurrent: int
    chats_per_second: float
    cpu_ms_per_chat: float
    stall_p99_ms: float
    stall_worst_ms: float
    failed: int
    info_lines_per_chat: float = 0.0  # lines the bot logged at INFO and above, per chat


class _Fake:
    """The fake OpenAI server in a child process: `python -m tests.fakes.openai_server`."""

    def __init__(self, latency: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.openai_server", "--latency", str(latency)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert self.process.stdout is not None
        self.base_url = self.process.stdout.readline().strip()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


async def _stall_samples(samples: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(0.01)
        samples.append(loop.time() - before - 0.01)


async def _seed(services: Services, agent_name: str, account: str, keys: list[str]) -> None:
    agent = await services.repo.agent(account, agent_name)
    assert agent is not None
    turns = [
        Turn("user" if n % 2 == 0 else "assistant", f"Short turn number {n}.", 12)
        for n in range(HISTORY_TURNS)
    ]

    async def write(conn):  # type: ignore[no-untyped-def]
        for key in keys:
            conversation = await services.repo.open_conversation_in(conn, key, agent.id, account)
            await services.repo.add_turns_in(conn, conversation, turns)

    await services.ledger.store.write(write)


async def _load(
    base_url: str, latency: float, concurrent: int, seconds: float, level: str = "INFO"
) -> Load:
    logging.getLogger().setLevel(level)
    with tempfile.TemporaryDirectory() as folder:
        config = Config(
            storage=StorageSettings(
                database=str(Path(folder, "bot.db")), data_dir=str(Path(folder, "data"))
            ),
            openai=OpenAISettings(base_url=base_url, max_retries=0, timeout_seconds=120),
            plans=PlansSettings(free=PlanSettings(monthly_tokens=10**12, max_agents=0)),
            # Streamed, as members see answers, with Discord's pacing loose: the edit
            # interval and a channel's edit budget are time a member waits, not work,
            # and at their defaults one channel's back-to-back chats take 3 s each.
            chat=ChatSettings(stream=True, edit_interval_seconds=0.2, channel_edits=10_000),
        )
        services = await Services.open(config, ai=AIGateway(config.openai, "bench-key"))
        try:
            bot = AgentBot(config, services)
            await bot.load_cogs()
            if importlib.util.find_spec("bot.heap") is not None:  # the tree before had none
                importlib.import_module("bot.heap").settle(config)  # as setup_hook does
            owner = CommandRunner(bot, user_id=1)
            await owner.run('/agent create name:Nova prompt:"A patient astronomer"')
            runners = []
            for number in range(concurrent):
                runner = CommandRunner(bot, user_id=1)
                runner.channel_id = 1000 + number
                runners.append(runner)
            agent = await services.repo.agent("user:1", "Nova")
            assert agent is not None
            await _seed(services, "Nova", "user:1", [f"{r.channel_id}:{agent.id}" for r in runners])
            await owner.run('/chat agent:Nova message:"Hello"')  # the tokenizer, a connection

            counting = False
            done = 0
            failed = 0
            stop = asyncio.Event()

            async def member(runner: CommandRunner) -> None:
                nonlocal done, failed
                while not stop.is_set():
                    sent = await runner.run('/chat agent:Nova message:"What is a quasar?"')
                    ok = any("fake agent" in s.text() for s in sent)
                    if counting:
                        done += 1
                        failed += not ok

            samples: list[float] = []
            members = [asyncio.create_task(member(r)) for r in runners]
            await asyncio.sleep(min(2.0, seconds / 2))  # warm-up: every member under way
            counting = True
            stall = asyncio.create_task(_stall_samples(samples, stop))
            began, cpu_began = time.perf_counter(), time.process_time()
            await asyncio.sleep(seconds)
            counting = False
            took, cpu = time.perf_counter() - began, time.process_time() - cpu_began
            stop.set()
            await asyncio.gather(*members, stall)
        finally:
            await services.close()
    return Load(
        latency,
        concurrent,
        done / took,
        cpu * 1000 / max(done, 1),
        percentile(samples, 0.99) * 1000,
        max(samples, default=0.0) * 1000,
        failed,
    )


def _logging_to_file(folder: str) -> None:
    """The bot's own logging (its format, INFO unless told), into a file: the lines are
    formatted and written as in production, without a terminal's speed in the figures."""
    setup_logging()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(open(Path(folder, "bot.log"), "a", encoding="utf-8"))


def _one(argv: list[str]) -> None:
    """The child: one load in this process (so each load is one fresh bot process, as in
    production), its result as one JSON line."""
    base_url, latency, concurrent, seconds, level = argv
    with tempfile.TemporaryDirectory() as folder:
        _logging_to_file(folder)
        load = asyncio.run(_load(base_url, float(latency), int(concurrent), float(seconds), level))
        lines = Path(folder, "bot.log").read_text(encoding="utf-8").splitlines()
    paid = sum("paid call:" in line for line in lines)  # one a chat, warm-up included
    load = replace(load, info_lines_per_chat=len(lines) / paid if paid else 0.0)
    print(json.dumps(asdict(load)), flush=True)


def _line_cost_us(lines: int = 20_000) -> float:
    """CPU microseconds of one INFO line through the bot's own logging into a file: the
    paid-call line, the one a chat writes at INFO."""
    with tempfile.TemporaryDirectory() as folder:
        _logging_to_file(folder)
        logging.getLogger().setLevel("INFO")
        log = logging.getLogger("bot.core.metering")
        began = time.process_time()
        for n in range(lines):
            log.info(
                "paid call: %s user %s %s %s: %d tokens, %s, %d ms",
                "user:1",
                1,
                "chat",
                "gpt-5.4-mini",
                100 + n,
                "ok",
                12.5,
            )
        took = time.process_time() - began
        logging.getLogger().handlers[0].flush()
    return took * 1e6 / lines


def _before_tree(folder: str) -> Path | None:
    """The checkout at BEFORE_COMMIT, with this very benchmark copied in: the load runs
    through the old code in the same run, so the ratio compares like with like. None
    outside a git checkout (an installed copy), or if git cannot produce it."""
    root = Path(__file__).resolve().parent.parent
    tree = Path(folder, "before")
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", "--format=tar", BEFORE_COMMIT],
        capture_output=True,
    )
    if archive.returncode != 0:
        print(f"no before tree: {archive.stderr.decode()[:200]}", file=sys.stderr)
        return None
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")
    shutil.copy(__file__, tree / "bench" / Path(__file__).name)
    return tree


def _child(
    tree: Path, base_url: str, latency: float, concurrent: int, seconds: float, level: str = "INFO"
) -> Load:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.chat_load_bench",
            "--one",
            base_url,
            str(latency),
            str(concurrent),
            str(seconds),
            level,
        ],
        cwd=tree,  # `-m` puts the working directory first on the path: that tree's code
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the load in {tree} failed:\n{done.stderr[-2000:]}")
    return Load(**json.loads(done.stdout.splitlines()[-1]))


def _median_load(runs: list[Load]) -> Load:
    first = runs[0]
    return Load(
        first.latency,
        first.concurrent,
        median([r.chats_per_second for r in runs]),
        median([r.cpu_ms_per_chat for r in runs]),
        median([r.stall_p99_ms for r in runs]),
        max(r.stall_worst_ms for r in runs),
        sum(r.failed for r in runs),
    )


@dataclass(frozen=True)
class Compared:
    now: Load
    before: Load | None


def measure(
    latencies: list[float], loads: list[int], seconds: float, repeats: int, before: Path | None
) -> list[Compared]:
    """Each (latency, concurrency) `repeats` times through this tree and, alternating
    which goes first, through the before tree: the medians."""
    here = Path(__file__).resolve().parent.parent
    results: list[Compared] = []
    for latency in latencies:
        fake = _Fake(latency)
        try:
            for concurrent in loads:
                runs: dict[Path, list[Load]] = {here: []}
                if before is not None:
                    runs[before] = []
                for repeat in range(repeats):
                    trees = list(runs) if repeat % 2 == 0 else list(reversed(runs))
                    for tree in trees:
                        runs[tree].append(_child(tree, fake.base_url, latency, concurrent, seconds))
                results.append(
                    Compared(
                        _median_load(runs[here]),
                        _median_load(runs[before]) if before is not None else None,
                    )
                )
        finally:
            fake.stop()
    return results


def logging_cost(concurrent: int, seconds: float, repeats: int) -> tuple[float, float]:
    """Throughput logging at INFO over throughput at WARNING, at 0 ms: the median of
    `repeats` ratios, each from an adjacent pair of runs (alternating which goes first);
    and, steadier on a shared machine, the share of a chat's CPU its INFO lines take
    (lines per chat in the INFO runs' log, times one line's CPU measured alone)."""
    here = Path(__file__).resolve().parent.parent
    line_us = _line_cost_us()
    fake = _Fake(0.0)
    ratios: list[float] = []
    shares: list[float] = []
    try:
        for repeat in range(repeats):
            levels = ["INFO", "WARNING"] if repeat % 2 == 0 else ["WARNING", "INFO"]
            got = {
                level: _child(here, fake.base_url, 0.0, concurrent, seconds, level)
                for level in levels
            }
            ratios.append(got["INFO"].chats_per_second / got["WARNING"].chats_per_second)
            shares.append(
                got["INFO"].info_lines_per_chat * line_us / 1000 / got["INFO"].cpu_ms_per_chat
            )
    finally:
        fake.stop()
    return median(ratios), median(shares)


def _figures(results: list[Compared], quick: bool) -> list[Figure]:
    figures: list[Figure] = []
    for result in results:
        r = result.now
        where = f"{r.latency * 1000:.0f} ms latency, {r.concurrent} concurrent"
        figures.append(Figure(BENCH, f"/chat per second, {where}", r.chats_per_second, "/s"))
        if result.before is not None:
            b = result.before
            figures.append(
                Figure(BENCH, f"/chat per second before, {where}", b.chats_per_second, "/s")
            )
            figures.append(
                Figure(
                    BENCH,
                    f"/chat per second now / before, {where}",
                    r.chats_per_second / b.chats_per_second,
                    "x",
                    ">= 2" if not quick else "",
                )
            )
        figures.append(Figure(BENCH, f"CPU per chat, {where}", r.cpu_ms_per_chat, "ms"))
        if result.before is not None:
            figures.append(
                Figure(BENCH, f"CPU per chat before, {where}", result.before.cpu_ms_per_chat, "ms")
            )
        figures.append(
            Figure(
                BENCH,
                f"event-loop stall p99, {where}",
                r.stall_p99_ms,
                "ms",
                "<= 50" if r.concurrent == 200 and not quick else "",
            )
        )
        if result.before is not None:
            figures.append(
                Figure(
                    BENCH, f"event-loop stall p99 before, {where}", result.before.stall_p99_ms, "ms"
                )
            )
        figures.append(Figure(BENCH, f"event-loop stall worst, {where}", r.stall_worst_ms, "ms"))
        figures.append(
            Figure(BENCH, f"failed chats, {where}", r.failed, "", "== 0" if not quick else "")
        )
    return figures


def run(quick: bool) -> list[Figure]:
    concurrent = 50 if quick else 200
    with tempfile.TemporaryDirectory() as folder:
        before = _before_tree(folder)
        if quick:
            results = measure([0.0], [concurrent], seconds=2.0, repeats=1, before=before)
            info, share = logging_cost(concurrent, 2.0, 1)
        else:
            results = measure([0.0, 0.1], [200, 500], seconds=8.0, repeats=3, before=before)
            info, share = logging_cost(concurrent, 8.0, 3)
    figures = _figures(results, quick)
    figures.append(
        Figure(
            BENCH,
            f"/chat per second logging at INFO / at WARNING, 0 ms, {concurrent} concurrent",
            info,
            "x",
            ">= 0.97" if not quick else "",
        )
    )
    figures.append(
        Figure(
            BENCH,
            "INFO lines' CPU, share of a chat's CPU, 0 ms",
            share * 100,
            "%",
            "<= 3" if not quick else "",
        )
    )
    return figures


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        _one(sys.argv[2:])
    else:
        cli(run)
