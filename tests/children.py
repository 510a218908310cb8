"""What child processes of the tests (the bot, the sidecar, the CLI) start from."""

from __future__ import annotations

import os

# The bot's own settings and secrets: a developer's shell must not leak them into a test.
# Compared in upper case, as pydantic-settings reads them.
_OURS = ("BOT_", "DISCORD_", "OPENAI_", "LEMONSQUEEZY_")


def bot_env(**settings: str) -> dict[str, str]:
    """This process's environment without any of the bot's variables, then `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(_OURS)}
    env.update(settings)
    return env
