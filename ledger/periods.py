"""Monthly periods stepped from an anchor.

A period is [anchor + n months, anchor + n+1 months). Each boundary is computed from
the anchor itself, never from the previous boundary, so an anchor on the 31st gives
Feb 28/29 and then Mar 31 again instead of drifting to the 28th forever.
"""

from __future__ import annotations

import calendar
from datetime import datetime


def add_months(anchor: datetime, months: int) -> datetime:
    """`anchor` moved by whole calendar months, the day clamped to the month's last."""
    index = anchor.year * 12 + (anchor.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def period_containing(anchor: datetime, now: datetime) -> tuple[datetime, datetime]:
    """The monthly period that holds `now`, on the grid of whole months stepped from
    `anchor` either way: an annual subscription's grid is anchored at its renewal date,
    a year ahead, and its monthly periods are the steps back from it."""
    # A first guess from the month difference, then correct by at most a step or two.
    n = (now.year - anchor.year) * 12 + now.month - anchor.month - 1
    while add_months(anchor, n + 1) <= now:
        n += 1
    while add_months(anchor, n) > now:
        n -= 1
    return add_months(anchor, n), add_months(anchor, n + 1)
