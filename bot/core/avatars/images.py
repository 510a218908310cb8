"""Avatar images: check an untrusted picture and turn it into a clean 512x512 PNG.

Promises:
- The type is decided by the bytes (magic numbers and Pillow's own detection), never by
  a file name. PNG, JPEG, WEBP and GIF are accepted; a GIF or WEBP gives its first frame.
- Every refusal is an `InvalidInput` whose message a Discord member understands: empty,
  too large in bytes, an unsupported type (the message lists the accepted ones), damaged
  or cut-off data, too many pixels (decompression bombs), absurd dimensions.
- Pixels are never decoded before the header's size has been checked against
  `MAX_PIXELS`, so a small file that claims 30000x30000 costs nothing.
- The result is a PNG of exactly `SIZE`x`SIZE` (centre-cropped to a square, then
  resized), RGBA if the picture has transparency and RGB otherwise, with no metadata
  (no EXIF, no text chunks, no colour profile: the image is rebuilt from its pixels).

These are pure, blocking, CPU-bound functions with no I/O: async callers run them with
`await asyncio.to_thread(normalize_avatar, data, max_bytes=...)`.
"""

from __future__ import annotations

import io
import threading
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from bot.core.sizes import readable_size
from bot.errors import InvalidInput

__all__ = [
    "ACCEPTED",
    "MAX_ASPECT",
    "MAX_PIXELS",
    "MAX_SIDE",
    "SIZE",
    "UnusableImage",
    "normalize_avatar",
    "normalize_chat_image",
    "normalize_generated",
]

SIZE = 512
# Our own explicit limit, well under Pillow's global default (~89 MP warning, ~179 MP
# error): 40 MP covers any real photo (a 48 MP phone shot is the rare exception and is
# better resized by its owner than decoded into ~190 MB of RGBA here).
MAX_PIXELS = 40_000_000
MAX_SIDE = 16_384
# A 20:1 strip would be cropped to a sliver: refuse it rather than produce nonsense.
MAX_ASPECT = 20
# The image API's answer is trusted more than a member's upload, but it still must not
# be able to exhaust memory.
GENERATED_MAX_BYTES = 32 * 1024 * 1024

ACCEPTED = "PNG, JPEG, WEBP or GIF"
# Pillow names a multi-picture JPEG (from many cameras) "MPO"; it is a JPEG to a member.
_PILLOW_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
_OPENED_FORMATS = {"PNG", "JPEG", "MPO", "WEBP", "GIF"}

# Serializes the swap of the process-wide warning filters (catch_warnings is not
# thread-safe before Python 3.14); only the header parse runs under it, which is fast.
_OPEN_LOCK = threading.Lock()


class UnusableImage(ValueError):
    """The image API answered with something that is not a usable picture.

    The caller maps it to `AIUnavailable` ("the AI service is busy"): it is the
    provider's fault, not the member's, and nothing is charged.
    """


def normalize_avatar(data: bytes, *, max_bytes: int) -> bytes:
    """Check an uploaded picture and return it as a 512x512 PNG without metadata.

    Raises `InvalidInput` with a member-readable message for every refusal. Blocking:
    call it through `asyncio.to_thread`.
    """
    return _normalize(data, max_bytes=max_bytes, what="avatars")


def normalize_chat_image(data: bytes, *, max_bytes: int, side: int) -> tuple[bytes, int, int]:
    """Check a picture sent to an agent with the avatar's checks (type by content, size,
    bombs and damage refused before pixels are decoded) and return it as a PNG without
    metadata, at most `side` pixels on its longer side, with its width and height.
    Its shape is kept (a long screenshot is a fine question). Blocking, like the rest."""
    if not data:
        raise InvalidInput(f"That file is empty. Please send a {ACCEPTED} image.")
    if len(data) > max_bytes:
        limit = readable_size(max_bytes)
        raise InvalidInput(f"That image is larger than {limit}; images can be at most {limit}.")
    if _sniff(data) is None:
        raise InvalidInput(_unsupported(data))
    image = _open(data)
    try:
        width, height = image.size
        if width < 1 or height < 1 or width * height > MAX_PIXELS:
            raise InvalidInput(_too_many_pixels(image.size))
        try:
            if image.format in {"JPEG", "MPO"}:
                image.draft(None, (side, side))
            image.seek(0)
            image.load()
            picture = image.convert("RGBA" if _has_alpha(image) else "RGB")
            picture.thumbnail((side, side), Image.Resampling.LANCZOS)
            clean = Image.frombytes(picture.mode, picture.size, picture.tobytes())
            out = io.BytesIO()
            clean.save(out, format="PNG")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError):
            raise InvalidInput(_too_many_pixels(None)) from None
        except InvalidInput:
            raise
        except Exception:
            raise InvalidInput(_DAMAGED) from None
        return out.getvalue(), width, height
    finally:
        image.close()


def normalize_generated(png: bytes) -> bytes:
    """Normalize the image API's answer (a PNG of any size) to a 512x512 PNG.

    Raises `UnusableImage` if the answer is empty, corrupt or not a picture. Blocking:
    call it through `asyncio.to_thread`.
    """
    try:
        return _normalize(png, max_bytes=GENERATED_MAX_BYTES, what="generated images")
    except InvalidInput as refused:
        raise UnusableImage(refused.user_message) from refused


def _normalize(data: bytes, *, max_bytes: int, what: str) -> bytes:
    if not data:
        raise InvalidInput(f"That file is empty. Please upload a {ACCEPTED} image.")
    if len(data) > max_bytes:
        limit = readable_size(max_bytes)
        raise InvalidInput(f"That image is larger than {limit}; {what} can be at most {limit}.")
    kind = _sniff(data)
    if kind is None:
        raise InvalidInput(_unsupported(data))

    image = _open(data)
    try:
        _check_dimensions(image.size)
        return _to_png(image)
    finally:
        image.close()


def _open(data: bytes) -> Image.Image:
    """Parse the header only (no pixels are decoded) and check the type Pillow found."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            # Pillow only warns between its two bomb limits; a warning that merely prints
            # would let the decode go on, so it is made an exception here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(_too_many_pixels(None)) from None
    except UnidentifiedImageError:
        # The magic bytes said PNG/JPEG/WEBP/GIF but no decoder accepted the header.
        raise InvalidInput(_DAMAGED) from None
    except Exception:
        # Pillow's parsers raise many types on hostile input (SyntaxError, struct.error,
        # OSError, ValueError, EOFError...): all of them mean "cannot be read".
        raise InvalidInput(_DAMAGED) from None
    if image.format not in _OPENED_FORMATS:
        image.close()
        raise InvalidInput(_unsupported(data))
    return image


def _check_dimensions(size: tuple[int, int]) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise InvalidInput(_DAMAGED)
    if width * height > MAX_PIXELS:
        raise InvalidInput(_too_many_pixels(size))
    if width > MAX_SIDE or height > MAX_SIDE:
        raise InvalidInput(
            f"That image is {width:,}×{height:,} pixels; a side can be at most "
            f"{MAX_SIDE:,} pixels. Please upload a smaller picture."
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise InvalidInput(
            f"That image is {width:,}×{height:,} pixels, too long and narrow for a square "
            "avatar. Please upload a picture closer to a square."
        )


def _to_png(image: Image.Image) -> bytes:
    try:
        if image.format in {"JPEG", "MPO"}:
            # Let the JPEG decoder scale down by 1/2, 1/4 or 1/8 while decoding (never
            # below SIZE on either side): a 40 MP photo then decodes in a fraction.
            image.draft(None, (SIZE, SIZE))
        image.seek(0)  # the first frame of a GIF or WEBP animation
        image.load()
        # A GIF frame may extend the canvas while loading; check the real size again.
        _check_dimensions(image.size)
        # Phones store rotation in EXIF; apply it now because the EXIF is dropped below.
        try:
            upright = ImageOps.exif_transpose(image)
        except Exception:
            upright = image  # a broken EXIF block must not cost the member their picture
        mode = "RGBA" if _has_alpha(upright) else "RGB"
        converted = upright.convert(mode)
        square = ImageOps.fit(
            converted, (SIZE, SIZE), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5)
        )
        # Rebuilt from raw pixels: `info` (EXIF, ICC, text chunks, comments) stays behind.
        clean = Image.frombytes(mode, (SIZE, SIZE), square.tobytes())
        out = io.BytesIO()
        clean.save(out, format="PNG")
    except InvalidInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(_too_many_pixels(None)) from None
    except MemoryError:
        raise InvalidInput(_too_many_pixels(None)) from None
    except Exception:
        # Truncated data surfaces only when pixels are decoded ("image file is
        # truncated", broken zlib/LZW streams, bad Huffman tables): all mean damaged.
        raise InvalidInput(_DAMAGED) from None
    return out.getvalue()


def _has_alpha(image: Image.Image) -> bool:
    if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        return True
    # Palette and single-colour transparency (GIF, some PNGs) live in `info`.
    return "transparency" in image.info


# --- Type sniffing ------------------------------------------------------------------

_DAMAGED = (
    "That image is damaged or incomplete and could not be read. "
    "Please save it again and upload it once more."
)

# (prefix, offset, name) of types we accept, checked before Pillow sees the data so an
# unknown format never reaches a decoder at all.
_ACCEPTED_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"WEBP", 8, "WEBP"),  # after b"RIFF" and a 4-byte length
)

# Types members commonly try, named in the refusal so they know what went wrong.
_KNOWN_OTHERS: tuple[tuple[bytes, str], ...] = (
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x00\x00\x01\x00", "an icon (ICO)"),
    (b"8BPS", "a Photoshop file"),
    (b"%PDF-", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
)


def _sniff(data: bytes) -> str | None:
    for magic, offset, name in _ACCEPTED_MAGIC:
        if data[offset : offset + len(magic)] == magic:
            if name == "WEBP" and not data.startswith(b"RIFF"):
                continue
            return name
    return None


def _unsupported(data: bytes) -> str:
    head = data[:512].removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    name: str | None = None
    if b"<svg" in head or (head.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        name = "an SVG drawing"
    elif head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        name = "a web page (HTML)"
    elif data[4:8] == b"ftyp":
        name = "an HEIC/AVIF picture or a video"
    else:
        name = next((label for magic, label in _KNOWN_OTHERS if data.startswith(magic)), None)
    if name is None:
        return f"That file is not a supported image. Avatars can be {ACCEPTED} images."
    return f"That file is {name}, which is not supported. Avatars can be {ACCEPTED} images."


def _too_many_pixels(size: tuple[int, int] | None) -> str:
    limit = f"{MAX_PIXELS // 1_000_000} megapixels"
    if size is None:
        return (
            f"That image has too many pixels to process safely (the limit is {limit}). "
            "Please upload a smaller picture."
        )
    width, height = size
    return (
        f"That image is {width:,}×{height:,} pixels, more than the {limit} we can "
        "process. Please upload a smaller picture."
    )
