"""How many examples a property test tries: all of them under `pytest --slow`, half in the
default run, which must stay quick (the README's three minutes for the whole suite).

The count is read when a test module is imported, after tests/conftest.py has set `LONG`
from the command line."""

from __future__ import annotations

LONG = False  # set by tests/conftest.py: pytest --slow


def examples(full: int) -> int:
    """`full` under --slow; otherwise half of it, and never fewer than five."""
    return full if LONG else max(5, full // 2)
