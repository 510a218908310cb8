"""PDF: text by PDFium (pypdfium2), page labels for citations.

Chosen by measurement (bench/extraction.py, docs/benchmarks.md): against poppler's
pdftotext on Debian's doc-package PDFs, PDFium's words match at 0.98-1.00 where pypdf
runs words together (xdvipdfmx) and splits accents (Ghostscript), and it reads pages
faster than pdftotext, which pypdf does 5-15 times slower.

Promises:
- Text is NFC with accents composed (Ghostscript's "spacing accent, then letter" pairs
  become the accented letter; an accent drawn after its letter, as in TeX's typewriter
  fonts, is put on the letter it is drawn over, by the characters' boxes), ligatures
  and other presentation forms expanded ("ﬁ" -> "fi"), soft line-end hyphens rejoined,
  control characters removed.
- Paragraphs: a line clearly shorter than the page's lines that ends a sentence ends
  its paragraph (a blank line follows), so chunks can follow the document's paragraphs.
- Running headers and footers (a first or last line repeated, numbers aside, on many
  pages) are removed.
- Each page's label is the PDF's own page label when it defines labels ("iv", "T-1"),
  else its physical number.
- A PDF clearly beyond the balance (`Limits.token_budget`) is refused from pages
  sampled across it before the others are read (readers/budget.py).
- Refused with a sentence: damaged, password-protected (an empty user password opens),
  no pages, too many pages, no text on any page (scanned), more text than the limit.
- Work is bounded here by page count and characters; time and memory are bounded by
  the worker process this runs in (bot/core/documents/workers.py), which is the only
  bound a C library's font and CMap parsing can be held to.
"""

from __future__ import annotations

import contextlib
import logging
import re
import unicodedata

import pypdfium2 as pdfium

from bot.core.documents.readers import Extracted, Limits, Progress, budget
from bot.errors import InvalidInput

log = logging.getLogger(__name__)

DAMAGED = (
    "That PDF is damaged or incomplete and could not be read. "
    "Please save or export it again and upload it once more."
)
LOCKED = (
    "That PDF is password-protected, so its text cannot be read. Please remove "
    "the password (for example by printing it to a new PDF) and upload it again."
)


def too_much(limits: Limits) -> str:
    return (
        "That PDF holds more content than one document can (over "
        f"{limits.max_characters // 1_000_000} million characters of text, or pages too "
        "complex to read). Please split it into smaller files."
    )


# Spacing accents as TeX-made PDFs draw them, each with its combining form.
_ACCENTS = {
    "\u00b4": "\u0301",  # acute
    "\u02dd": "\u030b",  # double acute (Hungarian ő, ű)
    "\u00a8": "\u0308",  # diaeresis
    "\u02c6": "\u0302",  # circumflex
    "\u02dc": "\u0303",  # tilde
    "\u02c7": "\u030c",  # caron
    "\u02d8": "\u0306",  # breve
    "\u02da": "\u030a",  # ring
    "\u02d9": "\u0307",  # dot above
    "\u00af": "\u0304",  # macron
    "`": "\u0300",  # grave (only before a letter inside a word, see below)
    "\u00b8": "\u0327",  # cedilla (drawn before or after its letter)
    "\u02db": "\u0328",  # ogonek
}
_BEFORE = re.compile(
    r"([\u00b4\u02dd\u00a8\u02c6\u02dc\u02c7\u02d8\u02da\u02d9\u00af\u00b8\u02db])(\w)"
)
_GRAVE = re.compile(r"(?<=\w)`(\w)")
_AFTER = re.compile(r"(\w)([\u00b8\u02db])")  # cedilla and ogonek may follow their letter
# PDFium marks a hyphen it took for a line-end soft hyphen with U+0002 (or U+FFFE, the
# line break already removed): the word is whole again without it.
_SOFT_HYPHEN = re.compile(r"[\x02\ufffe]\s*")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f\x80-\x9f\uffff]")
# Presentation forms (ligatures, Arabic and CJK compatibility forms): NFKC expands them.
_PRESENTATION = re.compile(r"[\ufb00-\ufb4f\ufe70-\ufeff\uff00-\uffef]")


def normalize(text: str) -> str:
    text = _SOFT_HYPHEN.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub(" ", text)
    text = _PRESENTATION.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
    text = _AFTER.sub(lambda m: _compose(m.group(1), _ACCENTS[m.group(2)], m.group()), text)
    text = _BEFORE.sub(lambda m: _compose(m.group(2), _ACCENTS[m.group(1)], m.group()), text)
    text = _GRAVE.sub(lambda m: _compose(m.group(1), "\u0300", m.group()), text)
    return unicodedata.normalize("NFC", text)


def _compose(letter: str, mark: str, original: str) -> str:
    """The accented letter, if Unicode has it as one character; else the text as it was."""
    base = "i" if letter == "ı" else "j" if letter == "ȷ" else letter  # TeX's dotless i, j
    composed = unicodedata.normalize("NFC", base + mark)
    return composed if len(composed) == 1 else original


def read(data: bytes, limits: Limits, progress: Progress | None) -> Extracted:
    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as error:
        log.info("unreadable PDF: %s", error)
        raise InvalidInput(LOCKED if "password" in str(error).lower() else DAMAGED) from None
    try:
        return _read(document, limits, progress)
    finally:
        document.close()


def _read(document: pdfium.PdfDocument, limits: Limits, progress: Progress | None) -> Extracted:
    count = len(document)
    if count == 0:
        raise InvalidInput("That PDF has no pages.")
    if count > limits.max_pages:
        raise InvalidInput(
            f"That PDF has {count:,} pages; documents can have at most {limits.max_pages:,} "
            "pages. Please split it into smaller files."
        )
    # Pages read (and normalized) early, as (text, characters parsed): kept for the loop.
    read_early: dict[int, tuple[str, int]] = {}
    if limits.token_budget is not None and count > budget.SAMPLE_PAGES:
        # Judged by pages spread over it before the rest is read.
        for index in budget.pages_to_sample(count):
            with contextlib.suppress(pdfium.PdfiumError):  # the main loop tells of it
                raw, chars = _page_text(document, index, limits.max_characters, limits)
                read_early[index] = normalize(raw), chars
        if read_early:
            sample = "\n".join(text for text, _ in read_early.values())
            budget.check(sample, count / len(read_early), limits)
    pages: list[str] = []
    labels: list[str] = []
    characters = failed = 0  # every character PDFium parsed, shown on the page or not
    for index in range(count):
        try:
            room = limits.max_characters - characters
            early = read_early.pop(index, None)
            if early is not None:
                text, chars = early
            else:
                raw, chars = _page_text(document, index, room, limits)
                text = normalize(raw)
            characters += chars
            if characters > limits.max_characters:
                raise InvalidInput(too_much(limits))
        except pdfium.PdfiumError as error:
            # One broken page should not lose the other 299: it counts as empty.
            log.info("PDF page %d unreadable: %s", index + 1, error)
            text, failed = "", failed + 1
        pages.append(text)
        labels.append(_label(document, index))
        if progress is not None:
            progress(index, count)
    if failed == count:
        raise InvalidInput(DAMAGED)
    pages = [_paragraphs(page) for page in _without_running_lines(pages)]
    if not any(page.strip() for page in pages):
        noun = "page" if count == 1 else "pages"
        raise InvalidInput(
            f"No text could be found in that PDF's {count:,} {noun}: it looks scanned "
            "(its pages are images only). Text recognition (OCR) is not supported; please "
            "upload a PDF with selectable text, or a .txt file."
        )
    return Extracted("pdf", pages, count, labels)


def _page_text(
    document: pdfium.PdfDocument, index: int, room: int, limits: Limits
) -> tuple[str, int]:
    """What page `index` shows (as pdftotext reads it), and every character PDFium
    parsed on it, shown or not: refused, before its text is built, past `room` of them."""
    page = document[index]
    try:
        textpage = page.get_textpage()
        try:
            characters = textpage.count_chars()
            if characters > room:
                raise InvalidInput(too_much(limits))
            text = textpage.get_text_bounded()
            if _DISPLACED.search(text):
                text = _accents_placed(textpage, text) or text
            return text, characters
        finally:
            textpage.close()
    finally:
        page.close()


# A spacing accent not followed by a letter: drawn after it, as TeX does in a
# typewriter font ("f´ajln´ev" in prose, "fajln ´ ev´" in code). The grave is left out:
# a backtick in code is not an accent.
_DISPLACED = re.compile(r"[\u00b4\u02dd\u00a8\u02c6\u02dc\u02c7\u02d8\u02da\u02d9\u00af](?!\w)")
_WINDOW = 16  # characters either side where an accent's letter is looked for
_TOUCHING = 1.5  # points between two glyphs of one word (a word's space is about 3)


def _soft(text: str) -> str:
    return text.replace("\ufffe", "\x02")  # the two marks PDFium gives a soft hyphen


def _accents_placed(textpage: pdfium.PdfTextPage, bounded: str) -> str | None:
    """The page's text with each displaced spacing accent put on the letter it is drawn
    over (by the characters' boxes, as pdftotext places them), and the spaces PDFium made
    up around it removed; None when that text is not the bounded one's (characters off
    the page) or nothing moved."""
    count = textpage.count_chars()
    full = textpage.get_text_range(0, count)
    if len(full) != count or _soft(full) != _soft(bounded):
        return None
    boxes = [textpage.get_charbox(i) for i in range(count)]
    marks: dict[int, list[str]] = {}
    dropped: set[int] = set()
    for at, char in enumerate(full):
        if char not in _ACCENTS or char == "`":
            continue
        left, bottom, right, _ = boxes[at]
        if right <= left:
            continue
        centre = (left + right) / 2
        letter = None
        for j in range(max(0, at - _WINDOW), min(count, at + _WINDOW)):
            if j == at or not full[j].isalpha():
                continue
            l2, b2, r2, t2 = boxes[j]
            # Over the letter: across its width, above its foot, near its top.
            if l2 - 0.5 <= centre <= r2 + 0.5 and b2 < bottom and bottom - t2 < 4:
                if letter is None or abs(j - at) < abs(letter - at):
                    letter = j
        if letter is None or letter == at + 1:
            continue  # not over a letter, or before it: normalize() composes that
        marks.setdefault(letter, []).append(_ACCENTS[char])
        dropped.add(at)
        # PDFium makes up spaces (boxes of no width) around an accent drawn out of
        # order; they go when the characters either side of them touch (one word),
        # and one stays when they are a word's space apart.
        before, after = at - 1, at + 1
        while before >= 0 and full[before] == " " and boxes[before][2] <= boxes[before][0]:
            before -= 1
        while after < count and full[after] == " " and boxes[after][2] <= boxes[after][0]:
            after += 1
        made_up = [*range(before + 1, at), *range(at + 1, after)]
        if 0 <= before and after < count and made_up:
            touching = 0 <= boxes[after][0] - boxes[before][2] < _TOUCHING
            dropped.update(made_up if touching else made_up[1:])
    if not marks:
        return None
    return "".join(
        char + "".join(marks.get(i, ())) for i, char in enumerate(full) if i not in dropped
    )


_DIGITS = re.compile(r"\d+")
_ENDS_SENTENCE = (".", "!", "?", ":", "。", "！", "？")


def _without_running_lines(pages: list[str]) -> list[str]:
    """Pages without the first and last lines that repeat (digits aside) on at least a
    third of them, and on three pages or more: running headers, footers, page numbers."""

    def key(line: str) -> str:
        return _DIGITS.sub("#", " ".join(line.split()).lower())

    ends: dict[str, int] = {}
    split = [page.split("\n") for page in pages]
    for lines in split:
        for line in {key(lines[0]), key(lines[-1])} if lines else set():
            ends[line] = ends.get(line, 0) + 1
    running = {
        line for line, n in ends.items() if n >= 3 and n * 3 >= len(pages) and len(line) < 120
    }
    if not running:
        return pages
    out = []
    for lines in split:
        if len(lines) > 2 and key(lines[0]) in running:
            lines = lines[1:]
        if len(lines) > 2 and key(lines[-1]) in running:
            lines = lines[:-1]
        out.append("\n".join(lines))
    return out


def _paragraphs(page: str) -> str:
    lines = page.split("\n")
    lengths = sorted(len(line.strip()) for line in lines if line.strip())
    if len(lengths) < 3:
        return page
    typical = lengths[len(lengths) * 4 // 5]  # most lines of a column run this long
    out = []
    for line in lines:
        out.append(line)
        stripped = line.rstrip()
        if stripped.endswith(_ENDS_SENTENCE) and len(stripped.strip()) < 0.8 * typical:
            out.append("")
    return "\n".join(out)


def _label(document: pdfium.PdfDocument, index: int) -> str:
    try:
        label = document.get_page_label(index)
    except pdfium.PdfiumError:
        label = ""
    label = " ".join(_CONTROL.sub(" ", label or "").split())[:40]
    return f"page {label}" if label else f"page {index + 1}"
