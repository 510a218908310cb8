"""Document text extraction: PDF, plain text and Markdown, from untrusted bytes.

Promises:
- The type is decided by the content: `%PDF-` near the start means PDF (read with
  pypdf); anything else must decode as text. The file name is used only to tell
  Markdown from plain text, never to accept a type.
- Text is decoded as UTF-8 (a BOM is removed), else UTF-32/UTF-16 when a BOM says so
  (or, for UTF-16, when the NUL bytes of Latin-script text say so without one),
  else cp1252/Latin-1 when the bytes look like text (almost no control characters) and
  not like Chinese, Japanese or Korean in a legacy encoding (refused: save as UTF-8).
- Every refusal is an `InvalidInput` with a sentence a member understands: empty, over
  the byte limit, not a supported type (images, archives, other binaries), a
  password-protected PDF, a damaged PDF, too many pages, no text (a PDF with pages but
  no text is said to look scanned: OCR is not supported).
- `Extracted.pages` holds one string per PDF page; a text or Markdown file is a single
  page (`page_count == 1`), so its chunks all cite page 1.
- The work of one PDF is bounded (content bytes, operators, characters of text): a small
  file that expands to gigabytes of text is refused as too much content, and quickly.
- `progress(page_index, page_count)` is called after each page (0-based index) so a
  caller can show "page n of m"; it runs on the extracting thread.

`extract` is pure, blocking and CPU-bound: async callers run it with
`await asyncio.to_thread(extract, data, ...)`.
"""

from __future__ import annotations

import codecs
import io
import logging
import math
import re
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Executor, Future, as_completed
from dataclasses import dataclass
from typing import Literal

from pypdf import PdfReader
from pypdf.generic import ContentStream

from bot.errors import InvalidInput

__all__ = ["MARKDOWN_SUFFIXES", "Extracted", "Kind", "Progress", "extract"]

log = logging.getLogger(__name__)

Kind = Literal["pdf", "text", "markdown"]
Progress = Callable[[int, int], None]

MARKDOWN_SUFFIXES = (".md", ".markdown", ".mdown", ".mkd", ".mkdn")
ACCEPTED = "a PDF, a plain-text (.txt) or a Markdown (.md) file"
# Real text has tabs and newlines but almost no other control characters; binary data
# decoded as Latin-1 is full of them. 1% tolerates a stray form feed or escape code.
MAX_CONTROL_RATIO = 0.01
# Some generators put junk before the header; readers accept it within the first 1 KB.
PDF_HEADER_WINDOW = 1024
# Work limits of one PDF. A few KB of PDF can expand into gigabytes of text: a zlib
# content stream expands up to 75 MB (pypdf's own limit), every page may show the same
# one, and a page may draw a text "form" 5,000 times. Real documents of 300 pages stay
# far below these: about 3 million characters, a million operators, 10 MB of content.
MAX_PDF_CONTENT_BYTES = 32 * 1024 * 1024
MAX_PDF_OPERATIONS = 5_000_000
MAX_PDF_TEXT_CHARS = 10_000_000

# A PDF of this many pages or more is read by a process pool, when one is given, in
# about PARALLEL_SLICES slices of at least PARALLEL_MIN_SLICE pages: pypdf is pure
# Python, so threads would share one core, and reading is most of an upload's time.
PARALLEL_MIN_PAGES = 24
PARALLEL_SLICES = 4
PARALLEL_MIN_SLICE = 8

_MB = 1024 * 1024
# C0 controls except tab, newline, carriage return and form feed, plus DEL; then C1
# controls, which decoded text only contains when bytes were misread.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f\x80-\x9f]")
# Characters that show nothing: zero-width spaces and joiners, direction marks and
# overrides, the word joiner, soft hyphen, BOM. A file of only these has no text to
# learn from, and embedding them would charge for nothing.
_INVISIBLE = re.compile(r"[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


@dataclass(frozen=True)
class Extracted:
    kind: Kind
    pages: list[str]
    page_count: int


def extract(
    data: bytes,
    *,
    max_bytes: int,
    max_pages: int,
    filename: str | None = None,
    progress: Progress | None = None,
    pool: Executor | None = None,
) -> Extracted:
    """Read the text of a PDF, text or Markdown file; raise `InvalidInput` to refuse it.

    `filename` only chooses "markdown" over "text"; the content decides everything else.
    With a process `pool`, a long PDF's pages are read by its processes in slices.
    Blocking: call it through `asyncio.to_thread`.
    """
    if not data:
        raise InvalidInput(f"That file is empty. Please upload {ACCEPTED}.")
    if len(data) > max_bytes:
        limit = _size(max_bytes)
        raise InvalidInput(f"That file is larger than {limit}; documents can be at most {limit}.")
    start = _pdf_start(data)
    if start is not None:
        return _extract_pdf(data[start:], max_pages=max_pages, progress=progress, pool=pool)
    text = _decode_text(data)
    if not _INVISIBLE.sub("", text).strip():
        raise InvalidInput("That file has no text in it.")
    if progress is not None:
        progress(0, 1)
    kind: Kind = "markdown" if _is_markdown(filename) else "text"
    return Extracted(kind, [text], 1)


# --- PDF ----------------------------------------------------------------------------


def _pdf_start(data: bytes) -> int | None:
    index = data.find(b"%PDF-", 0, PDF_HEADER_WINDOW)
    if index < 0:
        return None
    # A text file that merely mentions "%PDF-" on its first lines is still text: junk
    # before a real header is binary, so a printable prefix means this is not a PDF.
    prefix = data[:index]
    if index > 0 and prefix.strip() and _control_ratio(prefix.decode("latin-1")) == 0:
        return None
    return index


def _extract_pdf(
    data: bytes, *, max_pages: int, progress: Progress | None, pool: Executor | None = None
) -> Extracted:
    # pypdf raises PdfReadError and its subclasses on most damage, but on hostile or
    # truncated input it also raises ValueError, KeyError, TypeError, AssertionError,
    # RecursionError, zlib.error... Every one of them means "this PDF cannot be read",
    # so the broad excepts below are deliberate; the detail goes to the log only.
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        encrypted = reader.is_encrypted
    except Exception as error:
        log.info("unreadable PDF: %r", error)
        raise InvalidInput(_DAMAGED_PDF) from None
    if encrypted:
        _unlock(reader)
    try:
        count = len(reader.pages)
    except Exception as error:
        log.info("PDF page tree unreadable: %r", error)
        raise InvalidInput(_DAMAGED_PDF) from None
    if count == 0:
        raise InvalidInput("That PDF has no pages.")
    if count > max_pages:
        raise InvalidInput(
            f"That PDF has {count:,} pages; documents can have at most {max_pages:,} pages. "
            "Please split it into smaller files."
        )

    limits = _Limits(MAX_PDF_CONTENT_BYTES, MAX_PDF_OPERATIONS, MAX_PDF_TEXT_CHARS)
    read = None
    if pool is not None and count >= PARALLEL_MIN_PAGES:
        read = _read_in_slices(pool, data, count, limits, progress)
    if read is None:
        read = _read_pages(reader, 0, count, limits, progress)
    if read.over_budget:
        raise InvalidInput(_TOO_MUCH_PDF)
    pages, failed = read.pages, read.failed

    if failed == count:
        raise InvalidInput(_DAMAGED_PDF)
    if not any(page.strip() for page in pages):
        noun = "page" if count == 1 else "pages"
        raise InvalidInput(
            f"No text could be found in that PDF's {count:,} {noun}: it looks scanned "
            "(its pages are images only). Text recognition (OCR) is not supported; please "
            "upload a PDF with selectable text, or a .txt file."
        )
    return Extracted("pdf", pages, count)


@dataclass(frozen=True)
class _Limits:
    content_bytes: int
    operations: int
    characters: int

    def share(self, fraction: float) -> _Limits:
        return _Limits(
            math.ceil(self.content_bytes * fraction),
            math.ceil(self.operations * fraction),
            math.ceil(self.characters * fraction),
        )


@dataclass(frozen=True)
class _Read:
    pages: list[str]
    failed: int
    over_budget: bool = False


def _read_pages(
    reader: PdfReader, start: int, stop: int, limits: _Limits, progress: Progress | None
) -> _Read:
    pages: list[str] = []
    failed = 0
    budget = _Budget(limits)
    for index in range(start, stop):
        try:
            page = reader.pages[index]
            budget.content(page.get_contents())
            raw = (
                page.extract_text(visitor_operand_before=budget.operator, visitor_text=budget.text)
                or ""
            )
        except _OverBudget:
            return _Read([], 0, over_budget=True)
        except Exception as error:
            # One broken page should not lose the other 299: it counts as empty.
            log.info("PDF page %d unreadable: %r", index + 1, error)
            raw, failed = "", failed + 1
        pages.append(_clean(raw))
        if progress is not None:
            progress(index, stop)
    return _Read(pages, failed)


def _read_slice(data: bytes, start: int, stop: int, limits: _Limits) -> _Read:
    """In a pool's process: the text of pages [start, stop)."""
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            reader.decrypt("")  # the parent checked that an empty password opens it
    except Exception as error:
        log.info("unreadable PDF in a worker: %r", error)
        return _Read([""] * (stop - start), stop - start)
    return _read_pages(reader, start, stop, limits, None)


def _read_in_slices(
    pool: Executor, data: bytes, count: int, limits: _Limits, progress: Progress | None
) -> _Read | None:
    """Pages read by the pool's processes, slice by slice, in order; None if the pool
    cannot do it (broken or shut down), so the caller reads them itself."""
    size = max(PARALLEL_MIN_SLICE, math.ceil(count / PARALLEL_SLICES))
    bounds = [(start, min(count, start + size)) for start in range(0, count, size)]
    # Each slice may use twice its share of the document's work limits: real pages are
    # uneven, and a hostile file still meets a bound no more than twice the serial one.
    futures: dict[Future[_Read], int] = {}
    results: dict[int, _Read] = {}
    done_pages = 0
    try:
        for a, b in bounds:
            share = limits.share(min(1.0, 2 * (b - a) / count))
            futures[pool.submit(_read_slice, data, a, b, share)] = a
        for future in as_completed(futures):
            read = future.result()
            if read.over_budget:
                return read
            results[futures[future]] = read
            done_pages += len(read.pages)
            if progress is not None:
                progress(done_pages - 1, count)
    except (BrokenExecutor, RuntimeError) as error:  # RuntimeError: a pool shut down
        log.warning("PDF worker pool unusable (%r); reading in this thread", error)
        return None
    finally:
        for future in futures:
            future.cancel()
    ordered = [results[a] for a, _ in bounds]
    pages = [page for read in ordered for page in read.pages]
    total = sum(len(page) for page in pages)
    if total > limits.characters:
        return _Read([], 0, over_budget=True)
    return _Read(pages, sum(read.failed for read in ordered))


def _unlock(reader: PdfReader) -> None:
    """Open a PDF encrypted only against editing (empty user password), else refuse."""
    try:
        unlocked = bool(reader.decrypt(""))
    except Exception as error:
        # Includes pypdf's DependencyError for AES when no crypto library is installed.
        log.info("PDF decryption failed: %r", error)
        unlocked = False
    if not unlocked:
        raise InvalidInput(
            "That PDF is password-protected, so its text cannot be read. Please remove "
            "the password (for example by printing it to a new PDF) and upload it again."
        )


class _OverBudget(BaseException):
    """Stops a PDF's extraction at a work limit. A BaseException on purpose: pypdf
    catches Exception around each form it draws, which would only skip that form."""


class _Budget:
    """Counts the work of one PDF's extraction; pypdf calls it for each operator and
    piece of text (inside forms too), so no page can run on past the limits."""

    def __init__(self, limits: _Limits) -> None:
        self.limits = limits
        self.content_bytes = 0
        self.operations = 0
        self.characters = 0

    def content(self, stream: ContentStream | None) -> None:
        # Counted before parsing: a page's whole stream is parsed before any operator.
        self.content_bytes += len(stream.get_data()) if stream is not None else 0
        if self.content_bytes > self.limits.content_bytes:
            raise _OverBudget

    def operator(self, *_: object) -> None:
        self.operations += 1
        if self.operations > self.limits.operations:
            raise _OverBudget

    def text(self, text: str, *_: object) -> None:
        self.characters += len(text)
        if self.characters > self.limits.characters:
            raise _OverBudget


_TOO_MUCH_PDF = (
    "That PDF holds more content than one document can (over "
    f"{MAX_PDF_TEXT_CHARS // 1_000_000} million characters of text, or pages too complex "
    "to read). Please split it into smaller files."
)

_DAMAGED_PDF = (
    "That PDF is damaged or incomplete and could not be read. "
    "Please save or export it again and upload it once more."
)


# --- Text ---------------------------------------------------------------------------

# (BOM, codec), longest first: the UTF-32 LE BOM starts with the UTF-16 LE one.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)

# Binary types members commonly try, named in the refusal.
_KNOWN_BINARIES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "an image"),
    (b"\xff\xd8\xff", "an image"),
    (b"GIF8", "an image"),
    (b"BM", "an image"),
    (b"II*\x00", "an image"),
    (b"MM\x00*", "an image"),
    (b"PK\x03\x04", "a ZIP archive (or a Word, Excel or PowerPoint file)"),
    (b"\xd0\xcf\x11\xe0", "an old Office document"),
    (b"\x1f\x8b", "a compressed (gzip) file"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7fELF", "a program"),
    (b"MZ", "a program"),
)


def _decode_text(data: bytes) -> str:
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                text = data.decode(codec)
            except UnicodeDecodeError:
                raise InvalidInput(_unsupported(data)) from None
            return _checked_text(text, data)
    if b"\x00" in data:
        codec = _bomless_utf16(data)
        if codec is None:
            # No other text encoding without a BOM puts NUL bytes in text.
            raise InvalidInput(_unsupported(data))
        try:
            return _checked_text(data.decode(codec), data)
        except UnicodeDecodeError:
            raise InvalidInput(_unsupported(data)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        if _legacy_cjk(data):
            raise InvalidInput(_LEGACY_CJK) from None
        # Legacy Windows/Western text. cp1252 leaves five bytes undefined; Latin-1
        # decodes anything, which is why the control-character check follows.
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
    return _checked_text(text, data)


def _bomless_utf16(data: bytes) -> str | None:
    """UTF-16 saved without a BOM (some Windows tools do): text in Latin script has a
    NUL in nearly every high byte of its code units and almost none in the low ones.
    A binary file does not keep that pattern across its whole length."""
    if len(data) < 4 or len(data) % 2:
        return None
    even, odd = data[0::2], data[1::2]
    half = len(data) // 2
    for zeros, others, codec in ((odd, even, "utf-16-le"), (even, odd, "utf-16-be")):
        if zeros.count(0) >= 0.9 * half and others.count(0) <= 0.01 * half:
            return codec
    return None


# Chinese, Japanese and Korean text saved in a pre-Unicode encoding (GBK, Big5,
# Shift-JIS, EUC-JP, EUC-KR) decodes as cp1252/Latin-1 without an error, as nonsense
# that would be embedded and charged. Western text has few non-ASCII bytes, and they are
# rarely all valid pairs of a double-byte encoding, so both together say "CJK".
_CJK_CODECS = ("gbk", "big5", "shift_jis", "euc_jp", "cp949")
_CJK_MIN_HIGH_RATIO = 0.3
_LEGACY_CJK = (
    "That text file seems to be Chinese, Japanese or Korean text saved in an older "
    "encoding (such as GBK, Big5 or Shift-JIS), which would be read as nonsense. "
    "Please save it as UTF-8 and upload it again."
)


def _legacy_cjk(data: bytes) -> bool:
    high = len(data.translate(None, bytes(range(128))))  # bytes >= 0x80, counted in C
    if high < _CJK_MIN_HIGH_RATIO * len(data):
        return False
    for codec in _CJK_CODECS:
        try:
            data.decode(codec)
        except UnicodeDecodeError:
            continue
        return True
    return False


def _checked_text(text: str, data: bytes) -> str:
    text = text.removeprefix("\ufeff")
    if "\x00" in text or _control_ratio(text) > MAX_CONTROL_RATIO:
        raise InvalidInput(_unsupported(data))
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _control_ratio(text: str) -> float:
    if not text:
        return 0.0
    # subn counts in C without building a list of matches (binary input has millions).
    return _CONTROL.subn("", text)[1] / len(text)


def _clean(text: str) -> str:
    """Remove control characters pypdf sometimes yields (NULs, stray escapes)."""
    return _CONTROL.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n"))


def _unsupported(data: bytes) -> str:
    if data[8:12] == b"WEBP" and data.startswith(b"RIFF"):
        name: str | None = "an image"
    else:
        name = next((label for magic, label in _KNOWN_BINARIES if data.startswith(magic)), None)
    if name is None:
        return f"That file is not a supported document. Please upload {ACCEPTED}."
    return f"That file is {name}, which is not supported. Please upload {ACCEPTED}."


def _is_markdown(filename: str | None) -> bool:
    return filename is not None and filename.strip().lower().endswith(MARKDOWN_SUFFIXES)


def _size(n: int) -> str:
    """A byte count as members read it: "10 MB", "1.5 MB", "500 KB"."""
    if n >= _MB:
        value = n / _MB
        return f"{value:.0f} MB" if value == int(value) else f"{value:.1f} MB"
    if n >= 1024:
        return f"{n // 1024} KB"
    return f"{n} bytes"
