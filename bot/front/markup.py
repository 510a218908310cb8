"""Discord markup as a person reads it in the client, for the console: timestamps as
dates, mentions as names, subtext, bold and inline code as plain text. Discord renders
these itself; printed raw (`<t:1798974285:D>`, `<@1>`, `-# ...`, `**Nova**`) they are
noise."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

_TIMESTAMP = re.compile(r"<t:(-?\d{1,13})(?::([tTdDfFR]))?>")
_USER = re.compile(r"<@!?(\d{1,20})>")
_ROLE = re.compile(r"<@&(\d{1,20})>")
_CHANNEL = re.compile(r"<#(\d{1,20})>")
_SUBTEXT = re.compile(r"^-# ", re.MULTILINE)
# Bold and inline code, as the client shows them: the words without their markers.
# (Code blocks keep their fences: they mark where code starts and ends.)
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_FENCED = re.compile(r"(```.*?```)", re.DOTALL)
_INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_STYLES = {
    "t": "%H:%M",
    "T": "%H:%M:%S",
    "d": "%Y-%m-%d",
    "D": "%-d %B %Y",
    "f": "%-d %B %Y %H:%M",
    "F": "%A, %-d %B %Y %H:%M",
}


def relative(moment: datetime, now: datetime) -> str:
    """Discord's `R` style: "in 3 days", "5 minutes ago"."""
    seconds = (moment - now).total_seconds()
    span = abs(seconds)
    for size, unit in (
        (86400 * 365, "year"),
        (86400 * 30, "month"),
        (86400, "day"),
        (3600, "hour"),
        (60, "minute"),
        (1, "second"),
    ):
        if span >= size or unit == "second":
            count = int(span // size)
            words = f"{count} {unit}{'s' if count != 1 else ''}"
            return f"in {words}" if seconds >= 0 else f"{words} ago"
    raise AssertionError("unreachable")


def plain(
    text: str,
    *,
    user: Callable[[int], str] = lambda i: f"user{i}",
    now: datetime | None = None,
) -> str:
    current = now or datetime.now(UTC)

    def timestamp(found: re.Match[str]) -> str:
        try:
            moment = datetime.fromtimestamp(int(found.group(1)), UTC)
        except (ValueError, OverflowError, OSError):
            # Past what a date holds (an AI's answer may write anything): the client
            # shows such a stamp as typed, and so do we.
            return found.group(0)
        style = found.group(2) or "f"
        if style == "R":
            return relative(moment, current)
        suffix = " UTC" if style in "tTfF" else ""
        return moment.strftime(_STYLES[style]) + suffix

    text = _TIMESTAMP.sub(timestamp, text)
    text = _USER.sub(lambda m: "@" + user(int(m.group(1))), text)
    text = _ROLE.sub(lambda m: f"@role{m.group(1)}", text)
    text = _CHANNEL.sub(lambda m: f"#channel{m.group(1)}", text)
    parts = _FENCED.split(text)  # odd items: the code blocks, kept as they are
    for n in range(0, len(parts), 2):
        parts[n] = _INLINE_CODE.sub(r"\1", _BOLD.sub(r"\1", parts[n]))
    return _SUBTEXT.sub("", "".join(parts))
