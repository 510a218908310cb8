"""bot.core.avatars.images: every accepted type becomes a clean 512x512 PNG; everything else is refused
with a sentence a member understands, before any pixel of a bomb is decoded."""

from __future__ import annotations

import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image, PngImagePlugin

from bot.core.avatars.images import (
    MAX_PIXELS,
    SIZE,
    UnusableImage,
    normalize_avatar,
    normalize_generated,
)
from bot.errors import InvalidInput

MB = 1024 * 1024
LIMIT = 8 * MB
RED = (220, 20, 20)
BLUE = (20, 20, 220)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def picture(size: tuple[int, int] = (300, 200), color: tuple[int, ...] = RED) -> Image.Image:
    return Image.new("RGB", size, color)


def png_header_only(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose header claims width x height: a decompression bomb's shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def opened(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def refusal(data: bytes, max_bytes: int = LIMIT) -> str:
    with pytest.raises(InvalidInput) as caught:
        normalize_avatar(data, max_bytes=max_bytes)
    message = caught.value.user_message
    assert "Traceback" not in message and "Error" not in message
    return message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_each_accepted_type_becomes_a_512_png(fmt: str) -> None:
    result = opened(normalize_avatar(encode(picture(), fmt), max_bytes=LIMIT))
    assert result.format == "PNG"
    assert result.size == (SIZE, SIZE)
    assert result.mode in {"RGB", "RGBA"}


def test_small_pictures_are_scaled_up() -> None:
    result = opened(normalize_avatar(encode(picture((16, 16)), "PNG"), max_bytes=LIMIT))
    assert result.size == (SIZE, SIZE)


def test_transparency_is_kept_as_rgba() -> None:
    image = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    result = opened(normalize_avatar(encode(image, "PNG"), max_bytes=LIMIT))
    assert result.mode == "RGBA"
    assert result.getpixel((256, 256))[3] == 0


def test_wide_picture_is_centre_cropped() -> None:
    # Blue bands on the left and right quarters of a 400x200 image fall outside the
    # centred 200x200 square, so only red remains.
    image = picture((400, 200), RED)
    image.paste(BLUE, (0, 0, 100, 200))
    image.paste(BLUE, (300, 0, 400, 200))
    result = opened(normalize_avatar(encode(image, "PNG"), max_bytes=LIMIT))
    for x in (30, 256, 480):  # away from the edges, where resampling blends neighbours
        assert result.getpixel((x, 256)) == RED


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [picture((64, 64), RED), picture((64, 64), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    result = opened(normalize_avatar(data, max_bytes=LIMIT)).convert("RGB")
    red, _, blue = result.getpixel((256, 256))
    assert red > 200 and blue < 50


def test_type_is_decided_by_content_not_name() -> None:
    # A JPEG is a JPEG whatever it is called; the function never sees a file name.
    result = opened(normalize_avatar(encode(picture(), "JPEG"), max_bytes=LIMIT))
    assert result.size == (SIZE, SIZE)


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"<svg xmlns='http://www.w3.org/2000/svg'><rect width='9'/></svg>", "SVG"),
        (b"<?xml version='1.0'?>\n<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG"),
        (b"<!DOCTYPE html><html><body>not a picture</body></html>", "HTML"),
        (bytes(range(256)) * 8, ""),
        (b"just some text that is renamed to avatar.png", ""),
        (encode(picture(), "BMP"), "BMP"),
        (encode(picture(), "TIFF"), "TIFF"),
        (b"%PDF-1.7\n%...", "PDF"),
    ],
)
def test_unsupported_types_are_refused_naming_the_accepted_ones(data: bytes, named: str) -> None:
    message = refusal(data)
    assert "PNG, JPEG, WEBP or GIF" in message
    assert named in message


def test_empty_file_is_refused() -> None:
    assert "empty" in refusal(b"")


def test_oversize_is_refused_with_the_real_limit() -> None:
    data = encode(picture(), "PNG")
    assert refusal(data + b"\x00" * LIMIT) == (
        "That image is larger than 8 MB; avatars can be at most 8 MB."
    )
    assert "1.5 MB" in refusal(b"\x89PNG" + b"0" * (3 * MB // 2 + 1), max_bytes=3 * MB // 2)


@pytest.mark.parametrize("cut", [60, 200, 0.5])
def test_truncated_png_is_refused(cut: float) -> None:
    # Noise does not compress, so the pixel data spans the whole file and any cut hurts.
    noisy = Image.frombytes("RGB", (200, 200), bytes((i * 7919) % 251 for i in range(120_000)))
    data = encode(noisy, "PNG")
    end = int(len(data) * cut) if cut < 1 else int(cut)
    assert "damaged or incomplete" in refusal(data[:end])


def test_corrupt_jpeg_is_refused() -> None:
    data = bytearray(encode(picture((200, 200)), "JPEG"))
    data[3:60] = b"\x00" * 57  # the JPEG magic stays, the markers after it are gone
    assert "damaged" in refusal(bytes(data))


@pytest.mark.parametrize(
    "side",
    [
        7_000,  # 49 MP: over our limit, under Pillow's own warning threshold
        10_000,  # 100 MP: Pillow warns, and the warning is an error here
        30_000,  # 900 MP: Pillow's DecompressionBombError
    ],
)
def test_decompression_bomb_is_refused_before_decoding(side: int) -> None:
    data = png_header_only(side, side)
    assert len(data) < 200
    assert side * side > MAX_PIXELS
    message = refusal(data)
    assert "40 megapixels" in message and "smaller picture" in message


def test_absurd_dimensions_are_refused() -> None:
    assert "16,384" in refusal(png_header_only(20_000, 100))
    assert "narrow" in refusal(encode(picture((2000, 50)), "PNG"))


def test_metadata_is_stripped() -> None:
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x8825] = {2: (48.0, 51.0, 24.0)}  # GPS latitude
    jpeg = encode(picture(), "JPEG", exif=exif.tobytes(), comment=b"where I live")
    text = PngImagePlugin.PngInfo()
    text.add_text("Author", "Someone Private")
    png = encode(picture(), "PNG", pnginfo=text, icc_profile=b"fake-profile")
    for data in (jpeg, png):
        assert b"Secret" in data or b"Private" in data
        out = normalize_avatar(data, max_bytes=LIMIT)
        result = opened(out)
        assert set(result.info) <= {"dpi"}, result.info
        assert not result.getexif()
        assert b"Secret" not in out and b"Private" not in out and b"where I live" not in out
        assert b"tEXt" not in out and b"iCCP" not in out and b"eXIf" not in out


def test_exif_rotation_is_applied_before_stripping() -> None:
    image = picture((200, 200), RED)
    image.paste(BLUE, (100, 0, 200, 200))  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 3  # Orientation: rotate 180°
    result = opened(normalize_avatar(encode(image, "PNG", exif=exif), max_bytes=LIMIT))
    assert result.getpixel((20, 256)) == BLUE and result.getpixel((490, 256)) == RED


def test_generated_image_is_normalized() -> None:
    result = opened(normalize_generated(encode(picture((1024, 1024)), "PNG")))
    assert result.format == "PNG" and result.size == (SIZE, SIZE)


@pytest.mark.parametrize("answer", [b"", b"<html>502 Bad Gateway</html>", b"\x89PNG\r\n\x1a\n"])
def test_unusable_generated_image_raises_unusable_image(answer: bytes) -> None:
    with pytest.raises(UnusableImage):
        normalize_generated(answer)
    assert issubclass(UnusableImage, ValueError)


def test_safe_to_run_in_threads_concurrently() -> None:
    good = encode(picture(), "PNG")
    bomb = png_header_only(10_000, 10_000)

    def run(data: bytes) -> str:
        try:
            return opened(normalize_avatar(data, max_bytes=LIMIT)).format or ""
        except InvalidInput:
            return "refused"

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, [good, bomb] * 8))
    assert results == ["PNG", "refused"] * 8
