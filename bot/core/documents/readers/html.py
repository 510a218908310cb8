"""HTML: the text without markup, scripts or styles; headings start sections.

The standard library's HTMLParser is enough: no rendering, only which text is shown
and where the headings are. Block elements end a line; <br> ends a line; text inside
script, style, template, noscript, svg, head (except its title) is dropped.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from bot.core.documents.readers import Extracted, Limits
from bot.core.documents.readers.text import INVISIBLE, too_many_characters
from bot.errors import InvalidInput

_HIDDEN = {"script", "style", "template", "noscript", "svg", "head", "iframe", "object"}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_BLOCKS = {
    "p", "div", "section", "article", "header", "footer", "nav", "aside", "main", "li",
    "ul", "ol", "dl", "dt", "dd", "table", "tr", "pre", "blockquote", "figure",
    "figcaption", "hr", "br", "caption", "form", "address", "details",
    "summary",
}  # fmt: skip
_START = re.compile(
    rb"^\s*(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body|meta|title)\b", re.I | re.S
)


def looks_like_html(text: str) -> bool:
    return bool(_START.match(text[:4096].lstrip("\ufeff").encode("utf-8", "replace")))


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[tuple[str, list[str]]] = [("", [])]
        self.hidden = 0
        self.heading: list[str] | None = None
        self.title: list[str] = []
        self.in_title = False
        self.line: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        elif tag in _HIDDEN:
            self.hidden += 1
        elif tag in _HEADINGS and not self.hidden:
            self._end_line()
            self.heading = []
        elif tag in _BLOCKS:
            self._end_line()
        elif tag in {"td", "th"} and "".join(self.line).strip():
            self.line.append(" | ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCKS:
            self._end_line()

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in _HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in _HEADINGS and self.heading is not None:
            title = " ".join("".join(self.heading).split())
            self.heading = None
            if title:
                self.sections.append((title[:120], [title]))
        elif tag in _BLOCKS:
            self._end_line()

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        elif self.hidden:
            return
        elif self.heading is not None:
            self.heading.append(data)
        else:
            self.line.append(data)

    def _end_line(self) -> None:
        line = " ".join("".join(self.line).split())
        self.line = []
        if line:
            self.sections[-1][1].append(line)

    def result(self) -> list[tuple[str, str]]:
        self._end_line()
        title = " ".join("".join(self.title).split())
        out = []
        for number, (heading, lines) in enumerate(self.sections):
            body = "\n\n".join(lines)
            if INVISIBLE.sub("", body).strip():
                out.append((heading or (title[:120] if number == 0 else ""), body))
        return out


def read_text(text: str, limits: Limits) -> Extracted:
    if len(text) > limits.max_characters:
        raise InvalidInput(too_many_characters(limits))
    parser = _Text()
    parser.feed(text)
    parser.close()
    sections = parser.result()
    if not sections:
        raise InvalidInput("That file has no text in it.")
    return Extracted(
        "html",
        [body for _, body in sections],
        1,
        [f"“{heading}”" if heading else "" for heading, _ in sections],
    )
