"""Boilerplate: text that matches many questions and answers none (tables of contents,
indexes, licence text). Such chunks are kept (a member may ask about the licence) but
marked, and retrieval counts them at a fraction, so they reach the prompt only when
nothing better matches."""

from __future__ import annotations

import re

# "Introduction . . . . . 12", "2.3 Setup ........ iv"
_LEADER = re.compile(r"(?:\.\s?){4,}\s*(?:\d{1,4}|[ivxlc]{1,6})\b", re.I)
# An index: "orbit, 12, 45–47" -- a word followed by page numbers
_INDEX_ENTRY = re.compile(
    r"[^\W\d]{2,}[^\n\d]{0,40}?,\s*\d{1,4}(?:\s*[-–]\s*\d{1,4})?(?:,\s*\d{1,4})*"
)
_NUMBER = re.compile(r"\b\d{1,4}\b")
_WORD = re.compile(r"\w+")
_LICENCE = re.compile(
    r"GNU (?:Free Documentation|(?:Lesser |Library )?General Public) License|Creative Commons"
    r"|Permission is (?:hereby )?granted|WITHOUT ANY WARRANTY|PROVIDED \W?AS IS\W?"
    r"|Invariant Sections|Front-Cover Texts|Back-Cover Texts|MERCHANTABILITY"
    r"|redistribute it and/or modify|Licensed under the Apache License",
    re.I,
)


def is_boilerplate(text: str) -> bool:
    words = len(_WORD.findall(text)) or 1
    if len(_LEADER.findall(text)) >= 3:
        return True
    numbers = len(_NUMBER.findall(text))
    if len(_INDEX_ENTRY.findall(text)) >= 8 and numbers / words > 0.2:
        return True
    return len({m.group().lower() for m in _LICENCE.finditer(text)}) >= 2
