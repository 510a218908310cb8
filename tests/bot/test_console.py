"""The console front end: a scripted session prints what the bot would send."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from PIL import Image

from bot.config import Config
from bot.front.console import run_console
from bot.services import Services
from tests.children import bot_env


async def test_scripted_session(tmp_path: Path, app_config: Config, services: Services) -> None:
    picture = tmp_path / "me.png"
    Image.new("RGB", (80, 60), (10, 120, 200)).save(picture)
    script = "\n".join(
        [
            "# a comment, skipped",
            '/agent create name:Nova prompt:"You are a patient astronomer"',
            "/avatar generate agent:Nova",
            f"/avatar upload agent:Nova image:{picture}",
            "/tokens",
            "/agent info name:Nova",
            "/nonsense",
        ]
    )
    output = io.StringIO()
    code = await run_console(
        app_config,
        user_id=1,
        guild_id=None,
        out_dir=tmp_path / "out",
        lines=io.StringIO(script),
        output=output,
        services=services,
    )
    printed = output.getvalue()
    assert code == 0
    assert "Created Nova." in printed  # bold rendered, as the client shows it
    assert "✅ Avatar generated successfully!" in printed
    assert "Used 5,000 tokens. 245,000 remaining." in printed
    assert "✅ Avatar uploaded!" in printed
    assert "Tokens: Free plan" in printed and "5,000 / 250,000" in printed
    assert "error: no command /nonsense" in printed
    saved = [
        line.removeprefix("file: ") for line in printed.splitlines() if line.startswith("file: ")
    ]
    assert len(saved) >= 3 and all(Path(p).is_file() for p in saved)
    balance = await services.ledger.balance("user:1")
    assert balance.tokens_used == 5000
    assert await services.ledger.verify() == []


def test_console_process_runs_without_a_discord_token(tmp_path: Path) -> None:
    env = bot_env(
        BOT_STORAGE__DATABASE=str(tmp_path / "bot.db"),
        BOT_STORAGE__DATA_DIR=str(tmp_path / "data"),
        BOT_OPENAI__BASE_URL="http://127.0.0.1:9/v1",  # no AI call in this script
        OPENAI_API_KEY="test-key",
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bot",
            "console",
            "--user",
            "5",
            "--guild",
            "77",
            "--out",
            str(tmp_path / "o"),
        ],
        input="/agent create name:Vega prompt:bright\n/agent list\n/tokens\n",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Created Vega." in done.stdout
    assert "Tokens: Free plan" in done.stdout
    assert "test-key" not in done.stdout + done.stderr
