"""PDF text extraction against poppler's `pdftotext`, on real PDFs from Debian's doc
packages (installed by this benchmark with apt-get, never committed).

For each PDF and each engine: word recall (the share of pdftotext's words the engine
found) and word precision (the share of the engine's words that pdftotext has), over the
first PAGES pages, as multisets of lower-cased NFC words. Words run together lower both;
split accents and kept ligatures lower both. Also the engine's time relative to
pdftotext's on the same pages, in one run.

    python -m bench.extraction [--pages 40] [--engines bot,pypdfium2,pypdf,...] [--json]

Needs root (apt-get) or the packages already installed; `pdftotext` from poppler-utils.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

PACKAGES = [
    "poppler-utils",
    "r-doc-pdf",
    "auto-multiple-choice-doc-pdf",
    "lilypond-doc-pdf-de",
    "lilypond-doc-pdf-hu",
    "docbook-xsl-doc-pdf",
    "camlidl-doc",
    "freefem-doc",
    "gri-pdf-doc",
    "python-reportlab-doc",
    "libtasn1-doc",
]
# (label, path): the corpus, smallest manual of each family where there are many.
CORPUS = [
    ("R-intro", "/usr/share/R/doc/manual/R-intro.pdf"),
    ("R-data", "/usr/share/R/doc/manual/R-data.pdf"),
    ("AMC en", "/usr/share/doc/auto-multiple-choice/auto-multiple-choice.en.pdf"),
    ("AMC fr", "/usr/share/doc/auto-multiple-choice/auto-multiple-choice.fr.pdf"),
    ("LilyPond usage de", "/usr/share/doc/lilypond/html/Documentation/usage.de.pdf"),
    ("LilyPond usage hu", "/usr/share/doc/lilypond/html/Documentation/usage.hu.pdf"),
    ("docbook-xsl reference", "/usr/share/doc/docbook-xsl-doc-pdf/doc/reference.pdf.gz"),
    ("camlidl", "/usr/share/doc/camlidl/camlidl-1.04.doc.pdf"),
    ("freefem", "/usr/share/doc/freefem-doc/freefem.pdf"),
    ("gri", "/usr/share/doc/gri/gri.pdf.gz"),
    ("ReportLab guide", "/usr/share/doc/python-reportlab-doc/reportlab-userguide.pdf"),
    ("libtasn1", "/usr/share/doc/libtasn1-doc/libtasn1.pdf"),
]
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Row:
    document: str
    engine: str
    pages: int
    recall: float
    precision: float
    time_ratio: float  # engine's seconds / pdftotext's seconds
    # Against pdftotext's text with its own split accents joined (TeX's dotless "ı" then
    # a combining accent, which it leaves as two: "frissı́tés" is the words "frissı" and
    # "tés"); None where pdftotext has none.
    recall_joined: float | None = None
    precision_joined: float | None = None


# pdftotext leaves TeX's dotless i (U+0131) and the accent drawn over it as two
# characters, which no Unicode normalisation composes: read them as the accented i.
_DOTLESS_ACCENTED = re.compile("\u0131([\u0300-\u036f])")


def joined_accents(text: str) -> str:
    return _DOTLESS_ACCENTED.sub(lambda m: unicodedata.normalize("NFC", "i" + m.group(1)), text)


def install(packages: list[str] = PACKAGES) -> None:
    """Install the Debian packages that are missing (as root), or say which to install."""
    missing = [p for p in packages if not _installed(p)]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"install these Debian packages first: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def _installed(package: str) -> bool:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    )
    return "install ok installed" in done.stdout


def words(text: str) -> Counter[str]:
    return Counter(_WORD.findall(unicodedata.normalize("NFC", text).lower()))


def score(reference: Counter[str], found: Counter[str]) -> tuple[float, float]:
    common = sum((reference & found).values())
    return common / max(1, sum(reference.values())), common / max(1, sum(found.values()))


def pdftotext(path: Path, pages: int) -> str:
    done = subprocess.run(
        ["pdftotext", "-q", "-enc", "UTF-8", "-l", str(pages), str(path), "-"],
        capture_output=True,
        check=True,
    )
    return done.stdout.decode("utf-8", "replace")


def _bot(data: bytes, pages: int) -> str:
    from bot.core.documents.extract import extract

    return "\n".join(extract(data, max_bytes=1 << 30, max_pages=100_000).pages[:pages])


def _pypdfium2(data: bytes, pages: int) -> str:
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(data)
    out = []
    for index in range(min(pages, len(document))):
        out.append(document[index].get_textpage().get_text_bounded())
    return "\n".join(out)


def _pypdf(data: bytes, pages: int, mode: str = "plain") -> str:
    import io

    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    return "\n".join(
        (page.extract_text(extraction_mode=mode) or "") for page in reader.pages[:pages]
    )


def _pdfminer(data: bytes, pages: int) -> str:
    import io

    from pdfminer.high_level import extract_text

    return extract_text(io.BytesIO(data), maxpages=pages)


ENGINES: dict[str, Callable[[bytes, int], str]] = {
    "bot": _bot,
    "pypdfium2": _pypdfium2,
    "pypdf": _pypdf,
    "pypdf-layout": lambda data, pages: _pypdf(data, pages, "layout"),
    "pdfminer.six": _pdfminer,
}


def run(pages: int, engines: list[str]) -> list[Row]:
    install()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as scratch:
        for label, name in CORPUS:
            path = Path(name)
            if not path.exists():
                print(f"missing: {path}", file=sys.stderr)
                continue
            if path.suffix == ".gz":
                plain = Path(scratch) / path.stem
                with gzip.open(path) as source, plain.open("wb") as target:
                    shutil.copyfileobj(source, target)
                path = plain
            data = path.read_bytes()
            started = time.perf_counter()
            reference_text = pdftotext(path, pages)
            reference_time = time.perf_counter() - started
            reference = words(reference_text)
            joined = joined_accents(reference_text)
            joined_reference = words(joined) if joined != reference_text else None
            for engine in engines:
                started = time.perf_counter()
                try:
                    text = ENGINES[engine](data, pages)
                except Exception as error:  # an engine that fails scores 0
                    print(f"{label} / {engine}: {error!r}", file=sys.stderr)
                    text = ""
                took = time.perf_counter() - started
                found = words(text)
                recall, precision = score(reference, found)
                fixed = score(joined_reference, found) if joined_reference else (None, None)
                rows.append(
                    Row(
                        label,
                        engine,
                        pages,
                        recall,
                        precision,
                        took / max(reference_time, 1e-6),
                        *fixed,
                    )
                )
                print(
                    f"{label:24} {engine:13} recall {recall:.3f} precision {precision:.3f}"
                    f" time x{rows[-1].time_ratio:.1f}",
                    file=sys.stderr,
                )
    return rows


def markdown(rows: list[Row]) -> str:
    engines = list(dict.fromkeys(r.engine for r in rows))
    documents = list(dict.fromkeys(r.document for r in rows))
    by = {(r.document, r.engine): r for r in rows}
    head = "| PDF | " + " | ".join(f"{e} R / P" for e in engines) + " |"
    lines = [head, "|" + " --- |" * (len(engines) + 1)]
    for document in documents:
        cells = [
            f"{by[document, e].recall:.3f} / {by[document, e].precision:.3f}"
            if (document, e) in by
            else "-"
            for e in engines
        ]
        lines.append(f"| {document} | " + " | ".join(cells) + " |")
    times = [
        f"x{sorted(r.time_ratio for r in rows if r.engine == e)[len(documents) // 2]:.1f}"
        for e in engines
    ]
    lines.append("| time vs pdftotext (median) | " + " | ".join(times) + " |")
    joined = [r for r in rows if r.recall_joined is not None]
    if joined:
        lines += [
            "",
            "Against pdftotext with its split dotless-i accents joined:",
            "",
            "| PDF | engine | R / P |",
            "| --- | --- | --- |",
        ]
        lines += [
            f"| {r.document} | {r.engine} | {r.recall_joined:.3f} / {r.precision_joined:.3f} |"
            for r in joined
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.extraction", description=__doc__)
    parser.add_argument("--pages", type=int, default=40)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = run(args.pages, args.engines.split(","))
    print(json.dumps([asdict(r) for r in rows]) if args.json else markdown(rows))


if __name__ == "__main__":
    main()
