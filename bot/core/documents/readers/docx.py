"""DOCX: paragraphs and tables in document order (python-docx); Word's heading styles
start sections, so a citation names the nearest heading."""

from __future__ import annotations

import io
import logging
import zipfile

from bot.core.documents.readers import Extracted, Limits, Progress
from bot.core.documents.readers.text import INVISIBLE, too_many_characters
from bot.errors import InvalidInput

log = logging.getLogger(__name__)

DAMAGED = (
    "That Word document is damaged or incomplete and could not be read. "
    "Please save it again (as .docx) and upload it once more."
)
# A .docx is a ZIP: its parts may inflate far beyond the upload. Refuse past this.
MAX_UNPACKED_BYTES = 200 * 1024 * 1024


def read(data: bytes, limits: Limits, progress: Progress | None) -> Extracted:
    from docx import Document
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if sum(info.file_size for info in archive.infolist()) > MAX_UNPACKED_BYTES:
                raise InvalidInput(too_many_characters(limits))
        document = Document(io.BytesIO(data))
    except InvalidInput:
        raise
    except Exception as error:  # python-docx raises many kinds on damaged files
        log.info("unreadable DOCX: %r", error)
        raise InvalidInput(DAMAGED) from None
    sections: list[tuple[str, list[str]]] = [("", [])]
    characters = 0
    for block in document.iter_inner_content():
        if isinstance(block, Paragraph):
            line = " ".join(block.text.split())
            style = (block.style.name if block.style is not None else "") or ""
            if line and (style.startswith("Heading") or style == "Title"):
                sections.append((line[:120], [line]))
                continue
            lines = [line] if line else []
        elif isinstance(block, Table):
            lines = [
                " | ".join(" ".join(cell.text.split()) for cell in row.cells) for row in block.rows
            ]
        else:
            continue
        for line in lines:
            characters += len(line)
            if characters > limits.max_characters:
                raise InvalidInput(too_many_characters(limits))
            sections[-1][1].append(line)
    kept = [
        (title, "\n\n".join(lines))
        for title, lines in sections
        if INVISIBLE.sub("", "".join(lines)).strip()
    ]
    if not kept:
        raise InvalidInput("That file has no text in it.")
    return Extracted(
        "docx", [body for _, body in kept], 1, [f"“{t}”" if t else "" for t, _ in kept]
    )
