"""bot.core.documents.readers: one reader per format; citations point to the place (a PDF's
page label, the nearest heading); a name that disagrees with the content is refused."""

from __future__ import annotations

import io
import zipfile

import pytest
from docx import Document

from bot.core.documents.extract import Extracted, extract
from bot.core.documents.readers.pdf import normalize
from bot.errors import InvalidInput
from tests.pdfs import make_labelled_pdf, make_pdf

LIMIT = 10 * 1024 * 1024


def run(data: bytes, filename: str | None) -> Extracted:
    return extract(data, filename=filename, max_bytes=LIMIT, max_pages=300)


def refusal(data: bytes, filename: str | None) -> str:
    with pytest.raises(InvalidInput) as caught:
        run(data, filename)
    return caught.value.user_message


def docx_bytes() -> bytes:
    document = Document()
    document.add_heading("Installing the telescope", level=1)
    document.add_paragraph("Screw the tripod legs tight before mounting the tube.")
    document.add_heading("Caring for the mirror", level=2)
    document.add_paragraph("Never touch the mirror; blow dust away with a bulb.")
    table = document.add_table(rows=2, cols=2)
    table.rows[0].cells[0].text = "Eyepiece"
    table.rows[0].cells[1].text = "Magnification"
    table.rows[1].cells[0].text = "25 mm"
    table.rows[1].cells[1].text = "48x"
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def epub_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as book:
        book.writestr("mimetype", "application/epub+zip")
        book.writestr(
            "META-INF/container.xml",
            '<container><rootfiles><rootfile full-path="OEBPS/book.opf"/></rootfiles></container>',
        )
        book.writestr(
            "OEBPS/book.opf",
            '<package><manifest><item id="c1" href="one.xhtml" media-type="application/xhtml+xml"/>'
            '<item id="c2" href="two.xhtml" media-type="application/xhtml+xml"/></manifest>'
            '<spine><itemref idref="c1"/><itemref idref="c2"/></spine></package>',
        )
        book.writestr(
            "OEBPS/one.xhtml", "<html><body><h1>Comets</h1><p>Icy visitors.</p></body></html>"
        )
        book.writestr(
            "OEBPS/two.xhtml", "<html><body><h1>Meteors</h1><p>Falling sand.</p></body></html>"
        )
    return out.getvalue()


HTML = b"""<!DOCTYPE html><html><head><title>Manual</title><style>p { color: red }</style>
<script>alert("never learned")</script></head><body>
<nav><a href="/">Home</a></nav>
<h1>Getting started</h1><p>Install the <b>package</b> first.</p>
<h2>Configuration</h2><p>Edit &amp; save <code>config.toml</code>.</p>
<table><tr><th>Key</th><th>Default</th></tr><tr><td>port</td><td>8080</td></tr></table>
</body></html>"""


def test_pdf_citations_use_the_pdfs_page_labels() -> None:
    pdf = make_labelled_pdf(
        ["Preface text.", "Contents.", "Chapter one.", "Chapter two."],
        b"0 << /S /r >> 2 << /S /D >>",
    )
    assert run(pdf, "book.pdf").labels == ["page i", "page ii", "page 1", "page 2"]
    # Without labels: the physical page.
    assert run(make_pdf(["a", "b"]), "plain.pdf").labels == ["page 1", "page 2"]


def test_pdf_text_is_composed_and_expanded() -> None:
    assert normalize("haszn´alata k¨onnen Lehet˝os´eg") == "használata können Lehetőség"
    assert normalize("ﬁle ﬂow eﬀort") == "file flow effort"
    assert normalize("De\x02scription, meg\x02\njelen, compo\ufffenents") == (
        "Description, megjelen, components"
    )
    assert normalize("fa¸cade, `code` and ¨ alone") == "façade, `code` and ¨ alone"


def test_html_loses_markup_scripts_and_styles_and_keeps_headings() -> None:
    result = run(HTML, "manual.html")
    text = "\n".join(result.pages)
    assert result.kind == "html"
    assert "<" not in text and "alert" not in text and "color" not in text
    assert "Install the package first." in text and "Edit & save config.toml." in text
    assert "Key | Default\n\nport | 8080" in text
    assert result.labels == ["“Manual”", "“Getting started”", "“Configuration”"]
    # Markup is known by its content too: never learned as text, whatever the name.
    assert run(HTML, "manual.txt").kind == "html"
    assert run(HTML, None).kind == "html"


def test_docx_reads_headings_and_tables() -> None:
    result = run(docx_bytes(), "guide.docx")
    assert result.kind == "docx"
    assert result.labels == ["“Installing the telescope”", "“Caring for the mirror”"]
    assert "Screw the tripod legs" in result.pages[0]
    assert "Eyepiece | Magnification" in result.pages[1] and "25 mm | 48x" in result.pages[1]


def test_epub_chapters_in_spine_order() -> None:
    result = run(epub_bytes(), "book.epub")
    assert result.kind == "epub" and result.labels == ["“Comets”", "“Meteors”"]
    assert "Icy visitors." in result.pages[0] and "Falling sand." in result.pages[1]


def test_markdown_and_text_cite_the_nearest_heading() -> None:
    markdown = b"Intro line.\n\n# Setup\n\nRun it.\n\n## Tuning\n\nTurn the knob.\n"
    assert run(markdown, "notes.md").labels == ["", "“Setup”", "“Tuning”"]
    text = b"Observing Guide\n===============\n\nLook up.\n\n2.1 Finding Mars\n\nLook south.\n"
    result = run(text, "guide.txt")
    assert result.labels == ["“Observing Guide”", "“2.1 Finding Mars”"]
    assert "Look south." in result.pages[1]


@pytest.mark.parametrize(
    ("data", "name", "says"),
    [
        (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "report.pdf", "an HTML page"),
        (b"Just some notes, not a PDF at all.", "report.pdf", "a text file"),
        (make_pdf(["Real PDF."]), "notes.docx", "it is a PDF"),
        (docx_bytes(), "guide.pdf", "it is a Word document"),
    ],
)
def test_a_name_that_disagrees_with_the_content_is_refused(
    data: bytes, name: str, says: str
) -> None:
    message = refusal(data, name)
    assert "named like" in message and says in message and "Nothing was charged" in message
