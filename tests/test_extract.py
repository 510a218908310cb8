"""bot.core.documents.extract: the type comes from the content, every refusal is a clear sentence, and
PDF pages keep their numbers."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.core.documents.extract import Extracted, extract
from bot.errors import InvalidInput
from tests.pdfs import encrypt_pdf, make_pdf, make_scanned_pdf

MB = 1024 * 1024
LIMIT = 10 * MB
PAGES = 300


def run(data: bytes, filename: str | None = None, **limits: int) -> Extracted:
    return extract(
        data,
        filename=filename,
        max_bytes=limits.get("max_bytes", LIMIT),
        max_pages=limits.get("max_pages", PAGES),
    )


def refusal(data: bytes, filename: str | None = None, **limits: int) -> str:
    with pytest.raises(InvalidInput) as caught:
        run(data, filename, **limits)
    message = caught.value.user_message
    assert "Traceback" not in message and "Error" not in message and "pypdf" not in message
    return message


# --- PDF ----------------------------------------------------------------------------


def test_pdf_pages_are_extracted_in_order() -> None:
    data = make_pdf(["First page about comets.", "", "Third page (with) a \\ backslash."])
    result = run(data, "notes.pdf")
    assert result.kind == "pdf" and result.page_count == 3 and len(result.pages) == 3
    assert "First page about comets." in result.pages[0]
    assert result.pages[1].strip() == ""
    assert "Third page (with) a \\ backslash." in result.pages[2]


def test_pdf_is_recognized_by_its_content_and_a_wrong_name_is_refused() -> None:
    assert run(make_pdf(["Hello."]), None).kind == "pdf"
    assert run(make_pdf(["Hello."]), "notes").kind == "pdf"
    assert "named like a text file but it is a PDF" in refusal(make_pdf(["Hi."]), "renamed.txt")


def test_progress_is_reported_per_page() -> None:
    seen: list[tuple[int, int]] = []
    extract(
        make_pdf(["a", "b", "c"]),
        max_bytes=LIMIT,
        max_pages=PAGES,
        progress=lambda *p: seen.append(p),
    )
    assert seen == [(0, 3), (1, 3), (2, 3)]


def test_password_protected_pdf_is_refused() -> None:
    message = refusal(encrypt_pdf(make_pdf(["Secret plans."]), "hunter2"))
    assert "password-protected" in message


def test_pdf_encrypted_without_a_user_password_is_read() -> None:
    # Only editing is restricted: every reader opens it, so should we.
    result = run(encrypt_pdf(make_pdf(["Open to read."]), ""))
    assert "Open to read." in result.pages[0]


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_truncated_pdf_is_refused(fraction: float) -> None:
    data = make_pdf([f"Page {n} has words on it." for n in range(10)])
    message = refusal(data[: int(len(data) * fraction)])
    assert "damaged or incomplete" in message


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.7\n",
        b"%PDF-1.4\n" + bytes(range(256)) * 40,
        b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 9 0 R >> endobj\ntrailer << /Root 1 0 R >>",
    ],
)
def test_garbage_pdf_is_refused(data: bytes) -> None:
    assert "damaged or incomplete" in refusal(data)


def test_too_many_pages_is_refused_with_the_limit() -> None:
    message = refusal(make_pdf(["p"] * 6), max_pages=5)
    assert "6 pages" in message and "at most 5 pages" in message


def test_scanned_pdf_is_refused_saying_ocr_is_not_supported() -> None:
    message = refusal(make_scanned_pdf(3))
    assert "scanned" in message and "OCR" in message and "3 pages" in message


def test_pdf_of_blank_pages_is_refused_the_same_way() -> None:
    assert "OCR" in refusal(make_pdf(["", ""]))


def test_pdf_header_after_leading_junk_is_still_a_pdf() -> None:
    assert run(b"\x00\x01\x02" + make_pdf(["Behind junk."])).kind == "pdf"


# --- Text ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("Plain UTF-8: café, naïve, 日本語.".encode(), "Plain UTF-8: café, naïve, 日本語."),
        (b"\xef\xbb\xbfWith a BOM: caf\xc3\xa9", "With a BOM: café"),
        ("UTF-16 text: café".encode("utf-16"), "UTF-16 text: café"),
        ("UTF-16 BE: café".encode("utf-16-be").join([b"\xfe\xff", b""]), "UTF-16 BE: café"),
    ],
)
def test_text_encodings_are_decoded(data: bytes, expected: str) -> None:
    result = run(data, "notes.txt")
    assert result.kind == "text" and result.page_count == 1
    assert result.pages == [expected]


def test_line_endings_are_normalized() -> None:
    assert run(b"one\r\ntwo\rthree\n").pages == ["one\ntwo\nthree"]


@pytest.mark.parametrize(
    ("filename", "kind"),
    [
        ("README.md", "markdown"),
        ("notes.MARKDOWN", "markdown"),
        ("notes.txt", "text"),
        ("no-extension", "text"),
        (None, "text"),
        ("picture.png", "text"),  # the name never refuses text
    ],
)
def test_filename_only_chooses_markdown_or_text(filename: str | None, kind: str) -> None:
    assert run(b"# Title\n\nSome *text*.", filename).kind == kind


def test_text_progress_is_one_page() -> None:
    seen: list[tuple[int, int]] = []
    extract(b"hello", max_bytes=LIMIT, max_pages=PAGES, progress=lambda *p: seen.append(p))
    assert seen == [(0, 1)]


def test_mentioning_pdf_in_text_does_not_make_it_a_pdf() -> None:
    assert run(b"Notes about the %PDF-1.7 header.", "notes.md").kind == "markdown"


# --- Refusals -----------------------------------------------------------------------


def test_empty_file_is_refused() -> None:
    assert "empty" in refusal(b"", "empty.txt")


def test_whitespace_only_text_is_refused() -> None:
    assert "no text" in refusal(b" \n\t\r\n  ", "blank.txt")


def test_oversize_is_refused_with_the_real_limit() -> None:
    message = refusal(b"a" * (LIMIT + 1))
    assert message == "That file is larger than 10 MB; documents can be at most 10 MB."


def test_nul_bytes_are_refused_as_unsupported() -> None:
    message = refusal(b"looks like text\x00but is not", "notes.txt")
    assert "not a supported document" in message and "PDF" in message


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (_png(), "image"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(200), "ZIP"),
        (b"\x1f\x8b\x08\x00" + bytes(50), "gzip"),
        (bytes(range(1, 32)) * 50, ""),  # control characters, no NUL
        (bytes(range(256)) * 50, ""),
    ],
)
def test_binary_files_are_refused(data: bytes, named: str) -> None:
    message = refusal(data, "document.txt")
    assert named in message and ".txt" in message


def test_bytes_in_no_language_are_refused_not_read_as_mojibake() -> None:
    # Every high byte in a row is no text in any encoding: refused, never embedded.
    assert "save it as UTF-8" in refusal(bytes(range(0xA0, 0x100)) * 10)
    assert "save it as UTF-8" in refusal(bytes(range(0x80, 0xA0)) * 10)


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_bom_is_read_when_its_nul_bytes_say_so(codec: str) -> None:
    text = "Notes on comets.\nTheir tails point away from the Sun. Café au lait."
    assert extract(text.encode(codec), max_bytes=LIMIT, max_pages=PAGES).pages == [text]


def test_binary_with_nul_bytes_is_still_refused() -> None:
    blob = bytes(range(256)) * 8  # NULs, but not in UTF-16's pattern
    with pytest.raises(InvalidInput, match="not a supported"):
        extract(blob, max_bytes=LIMIT, max_pages=PAGES)


def test_pdf_accents_drawn_after_their_letter_are_put_on_it() -> None:
    """TeX's typewriter fonts draw an accent after its letter (even after the word) and
    move it back over it: the characters' boxes put it on the letter it is drawn over."""
    from tests.pdfs import pdf_page

    stream = (
        b"BT /F1 11 Tf 50 800 Td [(opcio) 445 (\xb4)] TJ ( megadni) Tj ET\n"
        b"BT /F1 11 Tf 50 780 Td [(fajl) 888 (\xb4) -555 (n\xe9v)] TJ ET"
    )
    (text,) = run(pdf_page(stream)).pages
    assert text.split() == ["opció", "megadni", "fájlnév"]
