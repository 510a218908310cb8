"""The heap of a long-running process, settled once it has started.

Start-up builds most of what a process will ever hold: modules, the SDK's and
discord.py's types, pydantic models, the cogs, the tokenizers. Left in the collector's
generations, every full collection walks all of them again; one took 62 ms of the event
loop under load (issue 17), time every interaction waits. `settle` collects once and
freezes what survives (`gc.freeze`): those objects are never scanned again, while
objects made afterwards are collected as before.
"""

from __future__ import annotations

import gc

from bot.config import Config
from bot.core.tokens import encoding


def settle(config: Config) -> int:
    """Load what the first calls would (the tokenizers), collect, freeze. Returns the
    number of objects frozen."""
    # Loaded here, not on the first chat: a load takes a few hundred ms of the event loop.
    for model in {
        config.openai.chat_model,
        config.openai.vision_model or config.openai.chat_model,
        config.openai.embedding_model,
    }:
        encoding(model)
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
