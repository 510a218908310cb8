"""Small PDFs built at test time, so no binary fixture has to be stored or trusted.

`make_pdf` writes a minimal, valid PDF by hand: one page per string, each line drawn
with the standard Helvetica font (WinAnsi encoding: Latin-1 text round-trips through
pypdf's extraction). An empty string gives a blank page.
"""

from __future__ import annotations

import io
import zlib

from pypdf import PdfReader, PdfWriter

__all__ = [
    "encrypt_pdf",
    "make_labelled_pdf",
    "make_pdf",
    "make_scanned_pdf",
    "pdf_from_objects",
    "pdf_page",
]


def _escape(line: str) -> bytes:
    raw = line.encode("cp1252", errors="replace")
    return raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")


def _text_stream(text: str) -> bytes:
    if not text:
        return b""
    ops = [b"BT /F1 11 Tf 14 TL 50 800 Td"]
    for line in text.split("\n"):
        ops.append(b"(" + _escape(line) + b") Tj T*")
    ops.append(b"ET")
    return b"\n".join(ops)


def _image_stream() -> bytes:
    # Paint the whole page with the image XObject /Im1, as a scanner's PDF does.
    return b"q 595 0 0 842 0 0 cm /Im1 Do Q"


def _build(streams: list[bytes], *, with_image: bool, catalog_extra: bytes = b"") -> bytes:
    """Objects: 1 catalog, 2 pages, 3 font, 4 image, then (page, content) pairs."""
    objects: dict[int, bytes] = {}
    first_page = 5
    kids = [first_page + 2 * i for i in range(len(streams))]
    objects[1] = b"<< /Type /Catalog /Pages 2 0 R " + catalog_extra + b">>"
    objects[2] = (
        b"<< /Type /Pages /Kids ["
        + b" ".join(b"%d 0 R" % k for k in kids)
        + b"] /Count %d >>" % len(kids)
    )
    objects[3] = (
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
    )
    pixels = zlib.compress(bytes(range(0, 256, 4)) * 64)  # a 64x64 grey gradient
    objects[4] = (
        b"<< /Type /XObject /Subtype /Image /Width 64 /Height 64 /ColorSpace /DeviceGray"
        b" /BitsPerComponent 8 /Filter /FlateDecode /Length %d >>\nstream\n"
        % len(pixels)
        + pixels
        + b"\nendstream"
    )
    resources = b"<< /Font << /F1 3 0 R >>" + (b" /XObject << /Im1 4 0 R >>" if with_image else b"")
    resources += b" >>"
    for page_obj, stream in zip(kids, streams, strict=True):
        objects[page_obj] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources "
            + resources
            + b" /Contents %d 0 R >>" % (page_obj + 1)
        )
        objects[page_obj + 1] = (
            b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
        )

    return pdf_from_objects(objects)


def pdf_from_objects(objects: dict[int, bytes], root: int = 1) -> bytes:
    """A PDF with exactly these numbered objects and a correct cross-reference table, so
    any damage in it is the one meant, not an accident of the writer."""
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: dict[int, int] = {}
    for number in sorted(objects):
        offsets[number] = out.tell()
        out.write(b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n")
    xref = out.tell()
    size = max(objects) + 1
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % size)
    for number in range(1, size):
        if number in offsets:
            out.write(b"%010d 00000 n \n" % offsets[number])
        else:
            out.write(b"0000000000 65535 f \n")
    out.write(
        b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, root, xref)
    )
    return out.getvalue()


def make_pdf(pages: list[str]) -> bytes:
    """A PDF with one page per string (lines split on "\\n"); "" is a blank page."""
    return _build([_text_stream(text) for text in pages], with_image=False)


def make_labelled_pdf(pages: list[str], labels: bytes) -> bytes:
    """A PDF whose catalog defines page labels, e.g. b"0 << /S /r >> 2 << /S /D >>"
    (i, ii, then 1, 2...)."""
    return _build(
        [_text_stream(text) for text in pages],
        with_image=False,
        catalog_extra=b"/PageLabels << /Nums [" + labels + b"] >> ",
    )


def make_scanned_pdf(page_count: int) -> bytes:
    """A PDF whose pages hold only an image, like a scan without OCR."""
    return _build([_image_stream()] * page_count, with_image=True)


def encrypt_pdf(data: bytes, user_password: str = "secret") -> bytes:
    """`data` re-saved with a user password (RC4-128: pypdf needs no extra library)."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password, owner_password="owner-" + user_password)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def pdf_page(stream: bytes) -> bytes:
    """A one-page PDF of this content stream, font /F1 (Helvetica, WinAnsi)."""
    return _build([stream], with_image=False)
