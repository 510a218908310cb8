"""Small readers of what the stand-in recorded."""

from __future__ import annotations

from bot.front.standin import Sent


def text(sent: list[Sent]) -> str:
    return "\n".join(s.text() for s in sent if s.kind != "defer")


def assert_mentions_disabled(sent: list[Sent]) -> None:
    for s in sent:
        if s.kind in {"defer", "modal"}:
            continue
        mentions = s.allowed_mentions
        assert mentions is not None, f"{s.kind} sent without allowed_mentions"
        assert not mentions.everyone and not mentions.users and not mentions.roles
