"""`discord.shard_count` and `discord.shard_ids`: a `run` process takes just its shards."""

from __future__ import annotations

import pytest

from bot.config import Config, DiscordSettings
from bot.front.app import AgentBot, ShardedAgentBot, make_bot


def test_shards_make_a_sharded_bot_of_just_those_shards() -> None:
    sharded = make_bot(Config(discord=DiscordSettings(shard_count=4, shard_ids=[1, 3])))
    assert isinstance(sharded, ShardedAgentBot)
    assert (sharded.shard_count, sharded.shard_ids) == (4, [1, 3])
    assert type(make_bot(Config())) is AgentBot
    with pytest.raises(ValueError, match="shard_count"):
        DiscordSettings(shard_ids=[0])
    with pytest.raises(ValueError, match=r"0 \.\. shard_count - 1"):
        DiscordSettings(shard_count=2, shard_ids=[2])
