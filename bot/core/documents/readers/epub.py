"""EPUB: its XHTML chapters in spine order, each read by the HTML reader."""

from __future__ import annotations

import io
import posixpath
import re
import zipfile

from bot.core.documents.readers import Extracted, Limits, Progress, html
from bot.core.documents.readers.text import too_many_characters
from bot.errors import InvalidInput

DAMAGED = "That EPUB book is damaged or incomplete and could not be read."
MAX_UNPACKED_BYTES = 200 * 1024 * 1024
_ROOTFILE = re.compile(rb'full-path="([^"]+)"')
_ITEM = re.compile(rb"<item\b[^>]*>", re.I)
_ATTR = re.compile(rb'(id|href|media-type)="([^"]*)"')
_ITEMREF = re.compile(rb'<itemref\b[^>]*idref="([^"]+)"', re.I)


def read(data: bytes, limits: Limits, progress: Progress | None) -> Extracted:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if sum(info.file_size for info in archive.infolist()) > MAX_UNPACKED_BYTES:
                raise InvalidInput(too_many_characters(limits))
            container = archive.read("META-INF/container.xml")
            rootfile = _ROOTFILE.search(container)
            if rootfile is None:
                raise InvalidInput(DAMAGED)
            opf_path = rootfile.group(1).decode()
            opf = archive.read(opf_path)
            items = {}
            for tag in _ITEM.findall(opf):
                attrs = dict(_ATTR.findall(tag))
                if b"id" in attrs and b"href" in attrs:
                    items[attrs[b"id"]] = attrs[b"href"].decode()
            base = posixpath.dirname(opf_path)
            chapters = [
                archive.read(posixpath.normpath(posixpath.join(base, items[ref])))
                for ref in _ITEMREF.findall(opf)
                if ref in items
            ]
    except InvalidInput:
        raise
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, UnicodeDecodeError):
        raise InvalidInput(DAMAGED) from None
    pages: list[str] = []
    labels: list[str] = []
    characters = 0
    for chapter in chapters:
        try:
            part = html.read_text(chapter.decode("utf-8", "replace"), limits)
        except InvalidInput:
            continue  # an empty chapter (a cover image, a blank page)
        characters += sum(len(p) for p in part.pages)
        if characters > limits.max_characters:
            raise InvalidInput(too_many_characters(limits))
        pages += part.pages
        labels += part.labels
    if not pages:
        raise InvalidInput("That file has no text in it.")
    return Extracted("epub", pages, 1, labels)
