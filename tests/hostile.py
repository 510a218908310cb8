"""The hostile input corpus: files and strings that members (or attackers) may send.

Small items are committed under `tests/data/hostile/` (written by `write_small`, kept so
that a reviewer can open the exact bytes); large ones (huge page counts, megabytes of
one line, decompression bombs) are built by `write_large` into a temporary folder when
the suite runs, so the repository holds no bomb. Every builder is deterministic apart
from the random file ids pypdf puts in encrypted PDFs.

    python -m tests.hostile OUTDIR            # write every large item into OUTDIR
    python -m tests.hostile --small OUTDIR    # rewrite the committed small items

The expected outcome of each item lives with the tests (tests/bot/test_hostile.py).
"""

from __future__ import annotations

import argparse
import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from tests.pdfs import encrypt_pdf, make_pdf, make_scanned_pdf, pdf_from_objects

__all__ = [
    "DATA",
    "LARGE",
    "SMALL",
    "long_text",
    "pdf_from_objects",
    "write_large",
    "write_small",
]

DATA = Path(__file__).parent / "data" / "hostile"
MB = 1024 * 1024

Builder = Callable[[], bytes]


def long_text(length: int = 10_000, unit: str = "Nova ") -> str:
    """A string of exactly `length` characters (the 10,000-character names and prompts)."""
    return (unit * (length // len(unit) + 1))[:length]


# --- PDF building blocks ----------------------------------------------------------------

_FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
_RESOURCES = b"<< /Font << /F1 3 0 R >> >>"


def _page(parent: int, contents: int, resources: bytes = _RESOURCES) -> bytes:
    return (
        b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 595 842] /Resources " % parent
        + resources
        + b" /Contents %d 0 R >>" % contents
    )


def _stream(data: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s>>\nstream\n" % (len(data), extra) + data + b"\nendstream"


def _flate(data: bytes, extra: bytes = b"") -> bytes:
    packed = zlib.compress(data, 9)
    return _stream(packed, b"/Filter /FlateDecode " + extra)


def _flate_repeated(unit: bytes, total: int, prefix: bytes, suffix: bytes) -> bytes:
    """A FlateDecode stream of `prefix + unit * n + suffix` about `total` bytes long,
    compressed piece by piece so building a 40 MB bomb never holds 40 MB."""
    packer = zlib.compressobj(9)
    block = unit * (MB // len(unit))
    parts = [packer.compress(prefix)]
    parts += [packer.compress(block) for _ in range(max(1, total // len(block)))]
    parts += [packer.compress(suffix), packer.flush()]
    return _stream(b"".join(parts), b"/Filter /FlateDecode ")


def _text_ops(text: bytes) -> bytes:
    return b"BT /F1 11 Tf 50 800 Td (" + text + b") Tj ET"


def _pages_sharing(
    stream: bytes,
    pages: int,
    page_resources: bytes = _RESOURCES,
    font: bytes = _FONT,
    more: dict[int, bytes] | None = None,
) -> bytes:
    """`pages` pages that all show the same content stream (object 5) in one font
    (object 3); `more` objects are numbered 6 to 9."""
    kids = [10 + i for i in range(pages)]
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids ["
        + b" ".join(b"%d 0 R" % k for k in kids)
        + b"] /Count %d >>" % pages,
        3: font,
        5: stream,
        **(more or {}),
    }
    for kid in kids:
        objects[kid] = _page(2, 5, page_resources)
    return pdf_from_objects(objects)


def _one_page(page: bytes, contents: bytes, count: int = 1) -> bytes:
    return pdf_from_objects(
        {
            1: b"<< /Type /Catalog /Pages 2 0 R >>",
            2: b"<< /Type /Pages /Kids [4 0 R] /Count %d >>" % count,
            3: _FONT,
            4: page,
            5: contents,
        }
    )


# --- Small PDFs (committed) -----------------------------------------------------------


def _pages_of_text(count: int) -> list[str]:
    return [
        "\n".join(f"Page {p} line {i}: the comet returns every {p + i} years." for i in range(20))
        for p in range(1, count + 1)
    ]


def pdf_truncated() -> bytes:
    data = make_pdf(_pages_of_text(10))
    return data[: len(data) * 6 // 10]


def pdf_cyclic_page_tree() -> bytes:
    # The page tree lists itself among its kids: a naive walk never ends.
    return pdf_from_objects(
        {
            1: b"<< /Type /Catalog /Pages 2 0 R >>",
            2: b"<< /Type /Pages /Kids [2 0 R 4 0 R] /Count 2 >>",
            3: _FONT,
            4: _page(2, 5),
            5: _stream(_text_ops(b"Round and round.")),
        }
    )


def pdf_count_lie() -> bytes:
    # /Count claims a billion pages; the tree holds one. The tree is the truth.
    return _one_page(_page(2, 5), _stream(_text_ops(b"Only one page here.")), 999_999_999)


def pdf_no_pages() -> bytes:
    return pdf_from_objects(
        {1: b"<< /Type /Catalog /Pages 2 0 R >>", 2: b"<< /Type /Pages /Kids [] /Count 0 >>"}
    )


# --- Small images (committed) -----------------------------------------------------------


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose header claims width x height (1-bit grey)."""
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def gif_raw(screen: tuple[int, int], frame: tuple[int, int], at: tuple[int, int] = (0, 0)) -> bytes:
    """A one-frame GIF with this logical screen and this frame size and position: the
    header is tiny whatever size it claims."""
    header = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    descriptor = b"," + struct.pack("<HHHHB", *at, *frame, 0)
    pixels = b"\x02\x02\x44\x01\x00"  # LZW: code size 2, clear, one pixel, end
    return header + descriptor + pixels + b";"


def _encode(image: Image.Image | list[Image.Image], fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    if isinstance(image, list):
        image[0].save(out, fmt, save_all=True, append_images=image[1:], **params)
    else:
        image.save(out, fmt, **params)
    return out.getvalue()


def _red_blue() -> list[Image.Image]:
    return [Image.new("RGB", (64, 64), (220, 20, 20)), Image.new("RGB", (64, 64), (20, 20, 220))]


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encode(Image.new("RGB", (16, 16), (9, 9, 9)), "JPEG"))
    frame = data.find(b"\xff\xc0")
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_truncated() -> bytes:
    noise = Image.frombytes("RGB", (120, 120), bytes((i * 7919) % 251 for i in range(43_200)))
    data = _encode(noise, "PNG")
    return data[: len(data) // 2]


# --- Small texts (committed) ------------------------------------------------------------

_JAPANESE = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。" * 8
_CHINESE = "天文学是研究宇宙空间天体的科学。彗星绕太阳运行，周期很长。" * 8
_ENGLISH = "Comets return to the inner solar system on long orbits, and some every few years.\n"
_FRENCH = "Crème brûlée, naïve façade, déjà vu: l'été à Besançon était très agréable.\n"


SMALL: dict[str, Builder] = {
    # PDFs
    "truncated.pdf": pdf_truncated,
    "encrypted_user_password.pdf": lambda: encrypt_pdf(make_pdf(["Secret orbits."]), "hunter2"),
    "encrypted_no_user_password.pdf": lambda: encrypt_pdf(make_pdf(["Open to every reader."]), ""),
    "zero_byte.pdf": lambda: b"",
    "header_only.pdf": lambda: b"%PDF-1.7\n",
    "garbage_after_header.pdf": lambda: b"%PDF-1.4\n" + bytes(range(256)) * 40,
    "cyclic_page_tree.pdf": pdf_cyclic_page_tree,
    "count_lie.pdf": pdf_count_lie,
    "no_pages.pdf": pdf_no_pages,
    "scanned.pdf": lambda: make_scanned_pdf(2),
    # images
    "bomb_header_50000x50000.png": lambda: png_header_only(50_000, 50_000),
    "bomb_header_maxint.png": lambda: png_header_only(2**31 - 1, 2**31 - 1),
    "zero_width.png": lambda: png_header_only(0, 10),
    "gif_huge_logical_screen.gif": lambda: gif_raw((65_535, 65_535), (1, 1)),
    "gif_frame_far_outside.gif": lambda: gif_raw((10, 10), (10, 10), (65_000, 65_000)),
    "jpeg_claiming_65000x65000.jpg": lambda: jpeg_claiming(65_000, 65_000),
    "animated.gif": lambda: _encode(_red_blue(), "GIF", duration=100, loop=0),
    "animated_apng.png": lambda: _encode(_red_blue(), "PNG", duration=100),
    "animated.webp": lambda: _encode(_red_blue(), "WEBP", duration=100),
    "svg_renamed.png": lambda: (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="50000" height="50000">'
        b'<rect width="100%" height="100%"/></svg>'
    ),
    "svg_xml_prolog_renamed.png": lambda: (
        b"\xef\xbb\xbf<?xml version='1.0'?>\n<!-- an icon -->\n"
        b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"
    ),
    "html_renamed.png": lambda: (
        b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>"
    ),
    "zero_byte.png": lambda: b"",
    "truncated.png": png_truncated,
    "pdf_renamed.png": lambda: make_pdf(["Not a picture."]),
    "long_strip.png": lambda: _encode(Image.new("RGB", (2000, 50), (1, 2, 3)), "PNG"),
    # texts
    "utf16le_bom.txt": lambda: ("\ufeff" + _ENGLISH + _FRENCH).encode("utf-16-le"),
    "utf16be_bom.txt": lambda: ("\ufeff" + _ENGLISH + _FRENCH).encode("utf-16-be"),
    "utf16le_no_bom.txt": lambda: (_ENGLISH + _FRENCH).encode("utf-16-le"),
    "utf16be_no_bom.txt": lambda: (_ENGLISH + _FRENCH).encode("utf-16-be"),
    "utf32_bom.txt": lambda: (_ENGLISH + _FRENCH).encode("utf-32"),
    "latin1.txt": lambda: (_ENGLISH + _FRENCH).encode("latin-1"),
    "cp1252_quotes.txt": lambda: "“Smart quotes” – 5€ … ‘done’.\n".encode("cp1252"),
    "shift_jis.txt": lambda: _JAPANESE.encode("shift_jis"),
    "euc_jp.txt": lambda: _JAPANESE.encode("euc_jp"),
    "gbk.txt": lambda: _CHINESE.encode("gbk"),
    "big5.txt": lambda: _CHINESE.encode("big5", errors="replace"),
    "nul_bytes.txt": lambda: b"looks like text\x00but is binary\x00" * 50,
    "png_renamed.txt": lambda: _encode(Image.new("RGB", (8, 8)), "PNG"),
    "elf_renamed.txt": lambda: b"\x7fELF\x02\x01\x01" + bytes(120),
    "zero_width_only.txt": lambda: ("\u200b\u2060\u200b\u202e\ufeff\n" * 500).encode(),
    "bom_only.txt": lambda: b"\xef\xbb\xbf",
    "whitespace_only.md": lambda: b" \n\t\r\n  \n",
    "mentions_and_rtl.md": lambda: (
        "# Notes @everyone @here <@123> <@&456> <#789>\n\n"
        "**Bold** `code` [link](https://evil.example) \u202eevil\u202c zero\u200bwidth.\n\n"
        "نص عربي قصير. טקסט בעברית. " + _ENGLISH
    ).encode(),
}


# --- Large items (generated) ------------------------------------------------------------


def pdf_many_pages(count: int = 5_000) -> bytes:
    """A real PDF of `count` distinct pages (~1.4 MB for 5,000)."""
    return make_pdf(["p"] * count)


def pdf_same_page_repeated(count: int = 5_000) -> bytes:
    """The page tree lists one page object `count` times: 5,000 pages in ~25 KB."""
    return pdf_from_objects(
        {
            1: b"<< /Type /Catalog /Pages 2 0 R >>",
            2: b"<< /Type /Pages /Kids [" + b"4 0 R " * count + b"] /Count %d >>" % count,
            3: _FONT,
            4: _page(2, 5),
            5: _stream(_text_ops(b"The same page again.")),
        }
    )


def pdf_deep_page_tree(depth: int = 5_000) -> bytes:
    """One page at the bottom of `depth` nested /Pages nodes."""
    objects = {1: b"<< /Type /Catalog /Pages 10 0 R >>", 3: _FONT}
    for level in range(depth):
        number = 10 + level
        kid = number + 1 if level < depth - 1 else 8
        parent = b"/Parent %d 0 R " % (number - 1) if level else b""
        objects[number] = b"<< /Type /Pages /Kids [%d 0 R] /Count 1 %s>>" % (kid, parent)
    objects[8] = _page(10 + depth - 1, 9)
    objects[9] = _stream(_text_ops(b"Deep down."))
    return pdf_from_objects(objects)


def pdf_nested_arrays(depth: int = 50_000) -> bytes:
    page = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Junk "
        + b"[" * depth
        + b"]" * depth
        + b" /Resources "
        + _RESOURCES
        + b" /Contents 5 0 R >>"
    )
    return _one_page(page, _stream(_text_ops(b"Nested.")))


def pdf_nested_dicts(depth: int = 50_000) -> bytes:
    page = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Junk "
        + b"<< /A " * depth
        + b">>" * depth
        + b" /Resources "
        + _RESOURCES
        + b" /Contents 5 0 R >>"
    )
    return _one_page(page, _stream(_text_ops(b"Nested.")))


def pdf_one_line(size: int = 2 * MB) -> bytes:
    """One page whose text is one line of `size` characters (words, no line break)."""
    words = (b"orbit " * (size // 6 + 1))[:size]
    return make_pdf([words.decode()])


def pdf_shared_text_bomb(pages: int = 300, text_bytes: int = MB) -> bytes:
    """300 pages showing one compressed stream of 1 MB of text: ~50 KB of file, 300
    million characters to extract."""
    stream = _flate_repeated(b"comet ", text_bytes, b"BT /F1 11 Tf 50 800 Td (", b") Tj ET")
    return _pages_sharing(stream, pages)


def pdf_form_bomb(invocations: int = 5_000, form_bytes: int = 100 * 1024) -> bytes:
    """One page drawing a 100 KB text form 5,000 times: ~1 KB of file, 500 million
    characters."""
    form_text = _text_ops(b"comet " * (form_bytes // 6))
    form = _flate(
        form_text,
        b"/Type /XObject /Subtype /Form /BBox [0 0 595 842] /Resources " + _RESOURCES + b" ",
    )
    page = _page(2, 5, b"<< /Font << /F1 3 0 R >> /XObject << /Fm 6 0 R >> >>")
    contents = _flate(_text_ops(b"Cover.") + b"\n" + b"/Fm Do\n" * invocations)
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
        3: _FONT,
        4: page,
        5: contents,
        6: form,
    }
    return pdf_from_objects(objects)


def pdf_content_bomb(pages: int = 300, content_bytes: int = 40 * MB) -> bytes:
    """300 pages sharing a 40 MB (decompressed) stream of drawing operators."""
    return _pages_sharing(_flate_repeated(b"0 0 m 9 9 l S\n", content_bytes, b"", b""), pages)


def pdf_cmap_bomb(pages: int = 300, cmap_bytes: int = 60 * MB) -> bytes:
    """300 pages sharing one font whose ToUnicode CMap inflates to 60 MB: a small file
    that costs a reader seconds and gigabytes per page if it parses the CMap each time.
    Its entries are few (60,000) but long, under readers' limits on the entry count."""
    entry = b"<0041> <" + b"0042" * 250 + b">\n"
    count = cmap_bytes // len(entry)
    cmap = _flate_repeated(
        entry,
        cmap_bytes,
        b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n"
        b"1 begincodespacerange <00> <FF> endcodespacerange\n"
        b"%d beginbfchar\n" % count,
        b"endbfchar\nendcmap CMapName currentdict /CMap defineresource pop end end\n",
    )
    font = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /ToUnicode 6 0 R >>"
    return _pages_sharing(_stream(_text_ops(b"AAAA comet")), pages, font=font, more={6: cmap})


def png_pixel_bomb(side: int = 20_000) -> bytes:
    """A real 1-bit PNG of side x side pixels, all black: ~50 KB, 400 megapixels."""
    row = b"\x00" + bytes((side + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def png_text_chunk_bomb(expanded: int = 50 * MB) -> bytes:
    """A 16x16 PNG with a zTXt chunk that inflates to 50 MB."""
    packer = zlib.compressobj(9)
    block = b"a" * MB
    text = b"".join(packer.compress(block) for _ in range(expanded // MB)) + packer.flush()
    png = _encode(Image.new("RGB", (16, 16), (5, 5, 5)), "PNG")
    after_header = 8 + 25  # signature, then the IHDR chunk
    return png[:after_header] + _png_chunk(b"zTXt", b"Comment\x00\x00" + text) + png[after_header:]


def png_large_allowed(side: int = 6_000) -> bytes:
    """36 megapixels: under the 40 MP limit, so a (slow) picture that must be accepted."""
    return _encode(Image.new("1", (side, side), 1), "PNG")


def text_one_line(size: int = 9 * MB) -> bytes:
    return (b"orbit " * (size // 6 + 1))[:size]


LARGE: dict[str, Builder] = {
    "pages_5000.pdf": pdf_many_pages,
    "same_page_5000_times.pdf": pdf_same_page_repeated,
    "deep_page_tree_5000.pdf": pdf_deep_page_tree,
    "nested_arrays_50000.pdf": pdf_nested_arrays,
    "nested_dicts_50000.pdf": pdf_nested_dicts,
    "one_line_2mb.pdf": pdf_one_line,
    "one_line_200kb.pdf": lambda: pdf_one_line(200 * 1024),
    "shared_text_bomb.pdf": pdf_shared_text_bomb,
    "form_bomb.pdf": pdf_form_bomb,
    "content_bomb.pdf": pdf_content_bomb,
    "cmap_bomb.pdf": pdf_cmap_bomb,
    "pixel_bomb_20000x20000.png": png_pixel_bomb,
    "ztxt_bomb.png": png_text_chunk_bomb,
    "large_allowed_6000x6000.png": png_large_allowed,
    "one_line_9mb.txt": text_one_line,
    "over_limit_10mb.txt": lambda: b"a" * (10 * MB + 1),
}


def _write(folder: Path, builders: dict[str, Builder], names: list[str] | None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names if names is not None else list(builders):
        path = folder / name
        path.write_bytes(builders[name]())
        written.append(path)
    return written


def write_large(folder: Path, names: list[str] | None = None) -> list[Path]:
    """Write the large items (all, or those named) into `folder`."""
    return _write(folder, LARGE, names)


def write_small(folder: Path = DATA, names: list[str] | None = None) -> list[Path]:
    """Write the small items (committed under tests/data/hostile) into `folder`."""
    return _write(folder, SMALL, names)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.hostile", description=__doc__)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--small", action="store_true", help="write the committed small items")
    args = parser.parse_args(argv)
    written = write_small(args.outdir) if args.small else write_large(args.outdir)
    for path in written:
        print(f"{path.stat().st_size:>12,}  {path}")


if __name__ == "__main__":
    main()
