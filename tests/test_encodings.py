"""Legacy encodings through charset-normalizer: real text decodes to the right characters,
or is refused with "save it as UTF-8"; mojibake is never returned."""

from __future__ import annotations

import pytest

from bot.core.documents.extract import extract
from bot.errors import InvalidInput

RUSSIAN = (
    "Это проверка кодировки. Документы на русском языке должны читаться правильно, без "
    "кракозябр. Каждая строка содержит обычный текст о погоде, книгах и работе.\n"
) * 4
GREEK = (
    "Αυτό είναι ένα δοκιμαστικό κείμενο στα ελληνικά. Τα έγγραφα πρέπει να διαβάζονται "
    "σωστά, χωρίς λάθη στους χαρακτήρες.\n"
) * 4
CHINESE = (
    "这是一个编码测试。中文文件应该被正确读取，而不是变成乱码。每一行都包含关于天气、书籍和工作的普通文字。\n"
    * 4
)
TRADITIONAL = (
    "這是一個編碼測試。中文文件應該被正確讀取，而不是變成亂碼。每一行都包含關於天氣、書籍和工作的普通文字。\n"
    * 4
)
JAPANESE = (
    "これは文字コードのテストです。日本語の文書は文字化けせずに正しく読まれるべきです。天気や本や仕事についての普通の文章です。\n"
    * 4
)
WESTERN = (
    "“Smart quotes” – 5€ … ‘done’. Café, naïve, façade and déjà vu are ordinary words "
    "in English text, and Größe, für and Übersetzung in German.\n"
) * 4
UNICODE = "Unicode text: café, Привет, Ελληνικά, 日本語 and a few emoji 🚀.\n" * 4


@pytest.mark.parametrize(
    ("codec", "text"),
    [
        ("koi8_r", RUSSIAN),
        ("cp1251", RUSSIAN),
        ("iso8859_7", GREEK),
        ("gb2312", CHINESE),
        ("shift_jis", JAPANESE),
        ("big5", TRADITIONAL),
        ("cp1252", WESTERN),
        ("utf-16", UNICODE),  # with a BOM
        ("utf-16-le", UNICODE.replace("🚀", "")),  # without one
        ("utf-16-be", UNICODE.replace("🚀", "")),
    ],
)
def test_legacy_text_decodes_to_the_right_characters(codec: str, text: str) -> None:
    # Each of these is placed by the library (none is refused), and exactly.
    result = extract(text.encode(codec), filename="notes.txt", max_bytes=1 << 20, max_pages=300)
    assert "\n".join(result.pages) == text.strip("\n")


@pytest.mark.parametrize(
    "data",
    [
        "“hi” – 5€".encode("cp1252"),  # seven bytes of evidence: too few to tell
        bytes(range(0xA0, 0x100)) * 10,  # every high byte: no language
        bytes(range(0x80, 0xA0)) * 10,
    ],
)
def test_what_cannot_be_placed_is_refused_not_read_as_mojibake(data: bytes) -> None:
    with pytest.raises(InvalidInput, match="save it as UTF-8"):
        extract(data, filename="notes.txt", max_bytes=1 << 20, max_pages=300)
