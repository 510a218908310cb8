"""Start-up time of the bot process, without Discord.

- `python -m bot check` wall time (a subprocess, median of a few runs), with no database
  yet (check creates none) and on an existing one;
- a cold bot process: a subprocess that imports the bot, opens its services, loads every
  cog and closes (what `python -m bot run` does before it logs in to Discord);
- in this process, with the modules already imported: `Services.open` and
  `AgentBot(...).load_cogs()` on a fresh database and on an existing one.

The baseline of the ratios is `python -c "import discord, openai, aiosqlite"`: the price
of the dependencies alone, which the bot cannot start faster than.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import Figure, cli, median
from bot.config import Config, OpenAISettings, StorageSettings
from bot.core.ai import AIGateway
from bot.front.app import AgentBot
from bot.services import Services

BENCH = "startup"
BARE_IMPORT = "import discord, openai, aiosqlite"
# A cold bot process short of logging in: imports, services, cogs, then a clean close.
COLD_BOT = """
import asyncio, sys
from bot.front.app import AgentBot
from bot.core.ai import AIGateway
from bot.config import Config, OpenAISettings, StorageSettings
from bot.services import Services

async def main() -> None:
    config = Config(storage=StorageSettings(database=sys.argv[1], data_dir=sys.argv[2]))
    services = await Services.open(config)
    try:
        await AgentBot(config, services).load_cogs()
    finally:
        await services.close()

asyncio.run(main())
"""


def _environment(folder: Path) -> dict[str, str]:
    """This environment without secrets or BOT_* settings: every run sees the same config."""
    secrets = {"DISCORD_TOKEN", "OPENAI_API_KEY", "LEMONSQUEEZY_API_KEY"}
    secrets.add("LEMONSQUEEZY_WEBHOOK_SECRET")
    env = {
        k: v for k, v in os.environ.items() if k.upper() not in secrets and not k.startswith("BOT_")
    }
    env["BOT_CONFIG"] = str(folder / "config.toml")
    # Stand-ins for what `run` needs, so `check` measures its work rather than refusing.
    env["DISCORD_TOKEN"] = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GAbcde.abcdefghijklmnopqrstuvwxyz0123456789AB"
    env["OPENAI_API_KEY"] = "sk-bench"
    return env


def _wall(command: list[str], folder: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    # cwd is the temp folder: no .env or config.toml of the checkout is read.
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[1:]} exited {done.returncode}: {done.stderr[-2000:]}")
    return took


async def _create(database: Path) -> None:
    storage = StorageSettings(database=str(database), data_dir=str(database.parent / "data"))
    services = await Services.open(Config(storage=storage))
    await services.close()


def _subprocess_figures(folder: Path, runs: int) -> list[Figure]:
    # The existing database: made here, since `check` creates none (issue 16).
    database = folder / "existing.db"
    asyncio.run(_create(database))
    (folder / "config.toml").write_text(
        f'[storage]\ndatabase = "{database}"\ndata_dir = "{folder / "data"}"\n', encoding="utf-8"
    )
    env = _environment(folder)
    python = sys.executable
    check = [python, "-m", "bot", "check"]
    bare, checks, fresh, cold = [], [], [], []
    # Interleaved, so that a noisy moment on a shared machine hits every kind alike.
    for run in range(runs):
        bare.append(_wall([python, "-c", BARE_IMPORT], folder, env))
        fresh_env = env | {"BOT_STORAGE__DATABASE": str(folder / f"fresh-{run}.db")}
        fresh.append(_wall(check, folder, fresh_env))
        checks.append(_wall(check, folder, env))
        cold_db = str(folder / f"cold-{run}.db")
        cold.append(_wall([python, "-c", COLD_BOT, cold_db, str(folder / "data")], folder, env))
    base = median(bare)
    return [
        Figure(BENCH, f"bare `{BARE_IMPORT}` (baseline)", base * 1e3, "ms"),
        Figure(BENCH, "`python -m bot check`, existing database", median(checks) * 1e3, "ms"),
        Figure(BENCH, "`python -m bot check`, no database yet", median(fresh) * 1e3, "ms"),
        Figure(BENCH, "check (existing) / bare import", median(checks) / base, "x"),
        Figure(BENCH, "cold bot process to cogs loaded, fresh db", median(cold) * 1e3, "ms"),
        Figure(BENCH, "cold bot process / bare import", median(cold) / base, "x"),
    ]


async def _open_bot(config: Config) -> tuple[float, float]:
    """Seconds for Services.open, then for AgentBot(...).load_cogs()."""
    started = time.perf_counter()
    services = await Services.open(config)
    try:
        opened = time.perf_counter()
        await AgentBot(config, services).load_cogs()
        loaded = time.perf_counter()
    finally:
        await services.close()
    return opened - started, loaded - opened


async def _in_process_figures(folder: Path, runs: int) -> list[Figure]:
    def config(name: str) -> Config:
        return Config(
            storage=StorageSettings(database=str(folder / name), data_dir=str(folder / "data"))
        )

    await _open_bot(config("warm-up.db"))  # the first load_cogs also reads the cogs' .pyc
    fresh = [await _open_bot(config(f"in-process-{run}.db")) for run in range(runs)]
    existing = [await _open_bot(config("in-process-0.db")) for _ in range(runs)]
    # Most of Services.open is the OpenAI client's TLS context (it loads the CA bundle).
    gateways: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        await AIGateway(OpenAISettings(), None).close()
        gateways.append(time.perf_counter() - started)
    figures: list[Figure] = []
    for label, samples in (("fresh", fresh), ("existing", existing)):
        services = median([s for s, _ in samples])
        cogs = median([c for _, c in samples])
        figures += [
            Figure(BENCH, f"in-process Services.open, {label} database", services * 1e3, "ms"),
            Figure(BENCH, f"in-process load_cogs, {label} database", cogs * 1e3, "ms"),
        ]
    figures.append(
        Figure(BENCH, "  of Services.open: the OpenAI client alone", median(gateways) * 1e3, "ms")
    )
    return figures


def run(quick: bool) -> list[Figure]:
    runs = 1 if quick else 5  # each run is four processes of about a second
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as name:
        folder = Path(name)
        figures = _subprocess_figures(folder, runs)
        figures += asyncio.run(_in_process_figures(folder, 2 if quick else 15))
    return figures


if __name__ == "__main__":
    cli(run)
