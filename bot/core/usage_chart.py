"""The daily usage chart of `/usage`, drawn with Pillow (already a dependency, so no
plotting library is added for one figure).

One bar per day of the period: its height is what the server had used by the end of that
day, its dark top the day's own usage; a dashed red line marks the monthly allowance, so
a manager sees at a glance how fast the pool is going and when it would run out. The
geometry is returned with the PNG so tests can check the axes without reading pixels
by guesswork.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 960, 480
LEFT, RIGHT, TOP, BOTTOM = 80, 24, 48, 56  # margins around the plot
BACKGROUND = (255, 255, 255)
AXIS = (40, 40, 40)
GRID = (225, 225, 225)
CUMULATIVE = (160, 190, 235)
DAILY = (40, 90, 170)
ALLOWANCE = (210, 40, 40)


@dataclass(frozen=True)
class Chart:
    png: bytes
    width: int
    height: int
    plot: tuple[int, int, int, int]  # left, top, right, bottom (the axes' corner pixels)
    allowance_y: int  # the allowance line's row
    days: int  # bars drawn (days of the period)


def short(tokens: float) -> str:
    if tokens >= 1_000_000:
        return f"{tokens / 1_000_000:.1f}M".replace(".0M", "M")
    if tokens >= 1_000:
        return f"{tokens / 1_000:.1f}k".replace(".0k", "k")
    return f"{tokens:.0f}"


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def daily_chart(
    by_day: list[tuple[str, int]], start: datetime, end: datetime, allowance: int
) -> Chart:
    """`by_day`: (YYYY-MM-DD, tokens) of the period's charges, from the ledger."""
    first = start.date()
    count = max(1, (end.date() - first).days + (1 if end.time() != datetime.min.time() else 0))
    days = [first + timedelta(days=n) for n in range(count)]
    per_day = {date.fromisoformat(d): n for d, n in by_day if d}
    running, totals = 0, []
    for day in days:
        running += per_day.get(day, 0)
        totals.append(running)
    top_value = max(allowance, running, 1) * 1.1

    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM

    def y_of(value: float) -> int:
        return round(bottom - (bottom - top) * value / top_value)

    small, title = _font(13), _font(17)
    for quarter in range(5):  # grid lines and labels at each quarter of the allowance
        value = allowance * quarter / 4
        y = y_of(value)
        if quarter:
            draw.line([(left + 1, y), (right, y)], fill=GRID)
        draw.text((left - 8, y), short(value), fill=AXIS, font=small, anchor="rm")

    slot = (right - left) / count
    width = max(1, int(slot * 0.7))
    for n, day in enumerate(days):
        x0 = round(left + n * slot + (slot - width) / 2)
        if day <= max(per_day, default=first) and totals[n]:
            draw.rectangle([x0, y_of(totals[n]), x0 + width, bottom - 1], fill=CUMULATIVE)
            if per_day.get(day):
                draw.rectangle(
                    [x0, y_of(totals[n]), x0 + width, y_of(totals[n] - per_day[day])], fill=DAILY
                )
        if n % 5 == 0:
            draw.text(
                (x0 + width / 2, bottom + 8),
                f"{day:%b} {day.day}",
                fill=AXIS,
                font=small,
                anchor="mt",
            )

    allowance_y = y_of(allowance)
    for x in range(left, right, 12):  # dashed
        draw.line([(x, allowance_y), (min(x + 7, right), allowance_y)], fill=ALLOWANCE, width=2)
    draw.text(
        (right - 4, allowance_y - 4),
        f"allowance {allowance:,}",
        fill=ALLOWANCE,
        font=small,
        anchor="rb",
    )
    draw.line([(left, top), (left, bottom)], fill=AXIS, width=1)  # y axis
    draw.line([(left, bottom), (right, bottom)], fill=AXIS, width=1)  # x axis
    draw.text(
        (left, top - 14),
        f"Tokens used, {first:%b} {first.day} to {end:%b} {end.day}: {running:,}"
        "  (dark: each day's own)",
        fill=AXIS,
        font=title,
        anchor="lb",
    )
    out = io.BytesIO()
    image.save(out, "PNG", optimize=True)
    return Chart(out.getvalue(), WIDTH, HEIGHT, (left, top, right, bottom), allowance_y, count)
