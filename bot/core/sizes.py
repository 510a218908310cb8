"""Byte counts as members read them, for the size limits of uploads."""

from __future__ import annotations

MB = 1024 * 1024


def readable_size(n: int) -> str:
    """A byte count as members read it: "8 MB", "1.5 MB", "500 KB"."""
    if n >= MB:
        value = n / MB
        return f"{value:.0f} MB" if value == int(value) else f"{value:.1f} MB"
    if n >= 1024:
        return f"{n // 1024} KB"
    return f"{n} bytes"
