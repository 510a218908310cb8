"""What metering adds to one AI call: N metered image calls against N bare SDK calls, 1 and
50 at a time, against the fake OpenAI server with zero latency, in one run.

Both sides make the identical SDK call (`client.images.generate`); the metered side wraps
it in `Meter.run` (reserve, call, commit on the real ledger file, durable). Bare and
metered rounds alternate so that a noisy neighbour hurts both alike. The fake runs in a
process of its own, so its image encoding does not share our event loop.

The overhead of a metered call is its time minus the time of the SDK call inside it:
reserving, committing and the metering code around them, including the wait for the
ledger's writer when 50 calls share it. Percentiles (p50, p99) are over those overheads;
the ratio is metered time over bare time for the whole run, and the added time per call
is their difference divided by the number of calls. At 50 at a time one event loop runs
all 50 SDK calls, so any await inside a call (metering has two) can wait behind the
others' work: the per-call figure includes that queueing, the throughput figure not.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai

from bench.report import Figure, cli, percentile
from bot.config import CostsSettings
from bot.core.metering import Actor, Meter
from ledger import Ledger, Plan

PLANS = {"free": Plan("free", 10**15, 3), "pro": Plan("pro", 10**15, 0)}
MODEL = "gpt-image-2.5-sunburst"
COST = 5_000


def start_fake() -> tuple[subprocess.Popen[str], str]:
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai_server", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert fake.stdout is not None
    base_url = fake.stdout.readline().strip()
    if not base_url.startswith("http"):
        fake.kill()
        raise RuntimeError("the fake OpenAI server did not start")
    return fake, base_url


async def _timed(call: Callable[[], Awaitable[Any]], into: list[float]) -> None:
    started = time.perf_counter()
    await call()
    into.append(time.perf_counter() - started)


async def _measure(quick: bool) -> list[Figure]:
    calls = 50 if quick else 1_000
    fake, base_url = start_fake()
    figures: list[Figure] = []
    try:
        client = openai.AsyncOpenAI(api_key="bench", base_url=base_url, max_retries=0)
        with tempfile.TemporaryDirectory(prefix="metering-bench-") as tmp:
            ledger = await Ledger.open(Path(tmp) / "bench.db", PLANS)
            meter = Meter(ledger, CostsSettings())
            actors = [Actor(f"guild:{n}", n, n) for n in range(1, 11)]

            def bare() -> Awaitable[Any]:
                return client.images.generate(model=MODEL, prompt="a fox", n=1, size="1024x1024")

            overheads: list[float] = []  # each metered call's time minus its SDK call's

            def metered(index: int) -> Callable[[], Awaitable[Any]]:
                actor = actors[index % len(actors)]

                async def timed() -> None:
                    inner = 0.0

                    async def call() -> Any:
                        nonlocal inner
                        started = time.perf_counter()
                        try:
                            return await bare()
                        finally:
                            inner = time.perf_counter() - started

                    started = time.perf_counter()
                    await meter.run(
                        actor, "avatar_generation", COST, MODEL, call, cost=lambda _r: COST
                    )
                    overheads.append(time.perf_counter() - started - inner)

                return timed

            try:
                for _ in range(5):  # warm the connection pool and the ledger's accounts
                    await bare()
                    await metered(0)()
                for width in (1, 50):
                    overheads.clear()
                    bare_times: list[float] = []
                    bare_total = metered_total = 0.0
                    for start in range(0, calls, width):
                        size = min(width, calls - start)
                        t0 = time.perf_counter()
                        await asyncio.gather(*(_timed(bare, bare_times) for _ in range(size)))
                        t1 = time.perf_counter()
                        await asyncio.gather(*(metered(start + i)() for i in range(size)))
                        bare_total += t1 - t0
                        metered_total += time.perf_counter() - t1
                    # Differences of latency percentiles would mostly measure the fake's
                    # queue, so each metered call's overhead is taken on its own.
                    for name, q in (("p50", 0.5), ("p99", 0.99)):
                        overhead = percentile(overheads, q) * 1e3
                        aim = "< 2 ms" if (width, name) == (50, "p99") else ""
                        noisy = "a short run's p99 is one stall of a shared runner"
                        figures.append(
                            Figure(
                                "metering", f"overhead {name}, {width} at a time", overhead, "ms",
                                aim, quick_reason=noisy,
                            )
                        )  # fmt: skip
                    figures.append(
                        Figure(
                            "metering",
                            f"bare call p50, {width} at a time",
                            percentile(bare_times, 0.5) * 1e3,
                            "ms",
                        )
                    )
                    figures.append(
                        Figure(
                            "metering",
                            f"added time per call, throughput, {width} at a time",
                            (metered_total - bare_total) / calls * 1e3,
                            "ms",
                        )
                    )
                    figures.append(
                        Figure(
                            "metering", f"metered/bare time, {width} at a time",
                            metered_total / bare_total, "x",
                        )
                    )  # fmt: skip
                problems = await ledger.verify()
                if problems:
                    raise RuntimeError(f"the ledger does not verify: {problems}")
            finally:
                await ledger.close()
                await client.close()
    finally:
        fake.kill()
        fake.wait()
    return figures


def run(quick: bool) -> list[Figure]:
    return asyncio.run(_measure(quick))


if __name__ == "__main__":
    cli(run)
