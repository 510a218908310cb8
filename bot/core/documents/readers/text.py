"""Plain text and Markdown: decoding by charset-normalizer, sections by headings.

Promises:
- UTF-8 (a BOM is removed) is read as is; a UTF-16/32 BOM decides its codec; any other
  encoding is what charset-normalizer finds, and only when it is confident (little
  "chaos"): the text then has the right characters. Text it cannot place is refused
  with "save it as UTF-8", never embedded as mojibake.
- Binary files in disguise (images, archives, programs, NUL-filled data) are refused
  by name where the kind is known.
- Sections: Markdown's headings (`#` lines and underlined titles) and, in plain text,
  underlined titles and numbered headings ("2.3 Setup") start a section; a citation
  shows the nearest heading above the text.
"""

from __future__ import annotations

import codecs
import re

from charset_normalizer import CharsetMatch, from_bytes
from charset_normalizer.utils import is_multi_byte_encoding

from bot.core.documents.readers import ACCEPTED, Extracted, Kind, Limits
from bot.errors import InvalidInput

# Real text has tabs and newlines but almost no other control characters; binary data
# decoded as Latin-1 is full of them. 1% tolerates a stray form feed or escape code.
MAX_CONTROL_RATIO = 0.01
# charset-normalizer's "chaos" of its best guess: above this the guess is mojibake.
MAX_CHAOS = 0.2
CHAOS_TIE = 0.1
MIN_EVIDENCE = 10  # non-ASCII bytes needed before an encoding is guessed
# Detection reads this much of a long file: enough for any encoding, and bounded time.
DETECTION_BYTES = 256 * 1024
SAVE_AS_UTF8 = (
    "That text file is in an encoding that could not be recognised with confidence (an "
    "older encoding such as GBK, Big5, Shift-JIS or KOI8-R?), and would be read as "
    "nonsense. Please save it as UTF-8 and upload it again."
)

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f\x80-\x9f]")
# Characters that show nothing: zero-width spaces and joiners, direction marks and
# overrides, the word joiner, soft hyphen, BOM.
INVISIBLE = re.compile(r"[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")

_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_KNOWN_BINARIES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "an image"),
    (b"\xff\xd8\xff", "an image"),
    (b"GIF8", "an image"),
    (b"BM", "an image"),
    (b"II*\x00", "an image"),
    (b"MM\x00*", "an image"),
    (b"PK\x03\x04", "a ZIP archive (or an Excel or PowerPoint file)"),
    (b"\xd0\xcf\x11\xe0", "an old Office document"),
    (b"\x1f\x8b", "a compressed (gzip) file"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7fELF", "a program"),
    (b"MZ", "a program"),
)
_MARKDOWN_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_NUMBERED = re.compile(r"^(\d+(\.\d+)*\.?|[A-Z]\.|[IVX]+\.)[ \t]+\S.{0,78}$")


def decode(data: bytes) -> str:
    """The text of `data`, or InvalidInput: a binary, or an encoding not placed."""
    if _known_binary(data) is not None:
        raise InvalidInput(unsupported(data))
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                return _checked(data.decode(codec), data)
            except UnicodeDecodeError:
                raise InvalidInput(unsupported(data)) from None
    try:
        return _checked(data.decode("utf-8"), data)
    except UnicodeDecodeError:
        pass
    if b"\x00" in data and (utf16 := _bomless_utf16(data)) is not None:
        try:
            return _checked(data.decode(utf16), data)
        except UnicodeDecodeError:
            raise InvalidInput(unsupported(data)) from None
    best = _best_guess(data[:DETECTION_BYTES])
    if best is None or best.chaos > MAX_CHAOS:
        if b"\x00" in data:
            raise InvalidInput(unsupported(data))
        raise InvalidInput(SAVE_AS_UTF8)
    try:
        text = data.decode(best.encoding)
    except (UnicodeDecodeError, LookupError):
        raise InvalidInput(SAVE_AS_UTF8) from None
    return _checked(text, data)


def _bomless_utf16(data: bytes) -> str | None:
    """UTF-16 saved without a BOM (some Windows tools do), told by its structure rather
    than guessed: Latin-script text has a NUL in nearly every high byte of its code
    units and almost none in the low ones; no binary keeps that across its length."""
    if len(data) < 4 or len(data) % 2:
        return None
    even, odd = data[0::2], data[1::2]
    half = len(data) // 2
    for zeros, others, codec in ((odd, even, "utf-16-le"), (even, odd, "utf-16-be")):
        if zeros.count(0) >= 0.9 * half and others.count(0) <= 0.01 * half:
            return codec
    return None


def _best_guess(sample: bytes) -> CharsetMatch | None:
    """charset-normalizer's best guess (least chaos), except that cp1252 wins among
    guesses nearly as clean: it is by far the most common legacy encoding, and short
    Western text is otherwise often read as a Baltic code page ("naļve" for "naïve").
    A handful of non-ASCII bytes is too little to tell encodings apart: no guess."""
    if len(sample.translate(None, bytes(range(128)))) < MIN_EVIDENCE:
        return None
    # A single-byte code page decodes anything; its guess must read as some language.
    # (Coherence is not measured for multi-byte CJK encodings, whose structure is proof.)
    matches = [
        m for m in from_bytes(sample) if m.coherence > 0 or is_multi_byte_encoding(m.encoding)
    ]
    if not matches:
        return None
    best = matches[0]
    western = [m for m in matches if m.encoding == "cp1252" and m.chaos <= best.chaos + CHAOS_TIE]
    return western[0] if western else best


def read_text(text: str, kind: Kind, limits: Limits) -> Extracted:
    if len(text) > limits.max_characters:
        raise InvalidInput(too_many_characters(limits))
    sections = split_sections(text.splitlines(), markdown=kind == "markdown")
    pages = [body for _, body in sections]
    labels = [f"“{title}”" if title else "" for title, _ in sections]
    return Extracted(kind, pages, 1, labels)


def split_sections(lines: list[str], *, markdown: bool) -> list[tuple[str, str]]:
    """(heading, text under it) in order; the text before any heading has heading ""."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    previous_blank = True
    for number, line in enumerate(lines):
        heading = None
        stripped = line.strip()
        if markdown and (match := _MARKDOWN_HEADING.match(line)):
            heading = match.group(2).strip()
        elif (
            _UNDERLINE.match(line)
            and sections[-1][1]
            and sections[-1][1][-1].strip()
            and (markdown or len(stripped) >= 3)
        ):
            # The line above, underlined, is the title.
            title = sections[-1][1].pop().strip()
            sections.append((title[:120], []))
            previous_blank = False
            continue
        elif (
            not markdown
            and previous_blank
            and _NUMBERED.match(stripped)
            and (number + 1 >= len(lines) or not lines[number + 1].strip())
        ):
            heading = stripped
        if heading is not None:
            sections.append((heading[:120], [line]))
        else:
            sections[-1][1].append(line)
        previous_blank = not stripped
    joined = [(title, "\n".join(body)) for title, body in sections]
    return [(title, body) for title, body in joined if INVISIBLE.sub("", body).strip()] or [
        ("", "")
    ]


def too_many_characters(limits: Limits) -> str:
    return (
        f"That file holds more text than one document can (over "
        f"{limits.max_characters:,} characters). Please split it into smaller files."
    )


def _checked(text: str, data: bytes) -> str:
    text = text.removeprefix("\ufeff")
    if "\x00" in text or _control_ratio(text) > MAX_CONTROL_RATIO:
        raise InvalidInput(unsupported(data))
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _control_ratio(text: str) -> float:
    if not text:
        return 0.0
    return _CONTROL.subn("", text)[1] / len(text)


def _known_binary(data: bytes) -> str | None:
    if data[8:12] == b"WEBP" and data.startswith(b"RIFF"):
        return "an image"
    return next((label for magic, label in _KNOWN_BINARIES if data.startswith(magic)), None)


def unsupported(data: bytes) -> str:
    name = _known_binary(data)
    if name is None:
        return f"That file is not a supported document. Please upload {ACCEPTED}."
    return f"That file is {name}, which is not supported. Please upload {ACCEPTED}."
