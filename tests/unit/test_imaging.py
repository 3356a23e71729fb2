"""Image inputs: every format, pixel conversion, budget, path rule and refusal of visinspect_server.imaging."""

from __future__ import annotations

import importlib.util
import io
import os
import resource
import struct
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from visinspect_server import imaging
from visinspect_server.errors import (
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from visinspect_server.imaging import decode_image, raw_image, read_image_file, resize_to_model, resolve_path

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # the seeded fuzz below still runs
    given = None

BUDGET = 40_000_000
SKIMAGE_DATA = Path(importlib.util.find_spec("skimage").origin).parent / "data"  # ships sample GIF/TIFF files
BOTTLE = (
    Path(__file__).resolve().parents[3] / "shared" / "datasets" / "mvtec_ad" / "bottle" / "test" / "good" / "000.png"
)


# --------------------------------------------------------------------------- helpers


def rgb_pattern(height: int = 6, width: int = 5) -> np.ndarray:
    """Distinct values in every channel so a swapped or dropped channel is caught."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows * 40 + cols, 250 - cols * 30, (rows * 7 + cols * 11) % 256], axis=-1).astype(np.uint8)


def cv2_encode(image: np.ndarray, ext: str, params: list[int] | None = None) -> bytes:
    """Encode with OpenCV, which takes BGR(A) order for colour images."""
    ok, buffer = cv2.imencode(ext, image, params or [])
    assert ok
    return buffer.tobytes()


def pil_encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def crafted_png(width: int, height: int, idat: bytes) -> bytes:
    """An 8-bit RGB PNG that declares any size, with whatever IDAT payload it is given."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def crafted_tiff(width: int, height: int, pixels: bytes) -> bytes:
    """A minimal little-endian, uncompressed 8-bit grey TIFF (one strip) declaring any size."""
    entries = [
        (256, 4, width),  # ImageWidth, LONG
        (257, 4, height),  # ImageLength
        (258, 3, 8),  # BitsPerSample, SHORT
        (259, 3, 1),  # Compression: none
        (262, 3, 1),  # Photometric: BlackIsZero
        (273, 4, 0),  # StripOffsets: patched below
        (277, 3, 1),  # SamplesPerPixel
        (278, 4, height),  # RowsPerStrip
        (279, 4, len(pixels)),  # StripByteCounts
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size
    ifd = struct.pack("<H", len(entries))
    for tag, kind, given_value in entries:
        value = data_offset if tag == 273 else given_value
        packed = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + pixels


def patched_jpeg_size(width: int, height: int) -> bytes:
    """A real JPEG whose SOF0 segment is rewritten to declare another size."""
    data = bytearray(cv2_encode(np.zeros((8, 8, 3), np.uint8), ".jpg"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def patched_gif_size(width: int, height: int) -> bytes:
    data = bytearray(pil_encode(Image.new("P", (4, 4)), "GIF"))
    struct.pack_into("<HH", data, 6, width, height)  # logical screen
    return bytes(data)


def patched_bmp_size(width: int, height: int) -> bytes:
    data = bytearray(cv2_encode(np.zeros((4, 4, 3), np.uint8), ".bmp"))
    struct.pack_into("<ii", data, 18, width, height)
    return bytes(data)


def assert_rgb8(image: np.ndarray, height: int, width: int) -> None:
    assert image.shape == (height, width, 3)
    assert image.dtype == np.uint8
    assert image.flags.c_contiguous


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tiff"])
def test_lossless_rgb_formats_decode_to_exact_rgb(ext: str) -> None:
    rgb = rgb_pattern()
    decoded = decode_image(cv2_encode(rgb[..., ::-1], ext), BUDGET)
    assert_rgb8(decoded, 6, 5)
    np.testing.assert_array_equal(decoded, rgb)


def test_jpeg_decodes_to_rgb_in_the_right_channel_order() -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 200  # strong red, so a BGR mix-up would show as blue
    rgb[..., 2] = 30
    decoded = decode_image(cv2_encode(rgb[..., ::-1], ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]), BUDGET)
    assert_rgb8(decoded, 16, 16)
    assert np.abs(decoded.astype(int) - rgb).max() <= 2


def test_grey_is_replicated_to_three_channels() -> None:
    grey = np.array([[0, 17, 128, 255]], np.uint8)
    for data in (cv2_encode(grey, ".png"), cv2_encode(grey, ".tiff"), cv2_encode(grey, ".bmp")):
        decoded = decode_image(data, BUDGET)
        assert_rgb8(decoded, 1, 4)
        np.testing.assert_array_equal(decoded, np.repeat(grey[..., None], 3, axis=2))


def test_grey_jpeg_is_replicated_to_three_channels() -> None:
    decoded = decode_image(cv2_encode(np.full((8, 8), 77, np.uint8), ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 100]), BUDGET)
    assert_rgb8(decoded, 8, 8)
    assert np.abs(decoded.astype(int) - 77).max() <= 1
    assert (decoded[..., 0] == decoded[..., 1]).all() and (decoded[..., 1] == decoded[..., 2]).all()


def test_16_bit_grey_png_is_clipped_like_training_sees_it() -> None:
    values = np.array([[0, 200, 255, 256, 511, 32768, 65535]], np.uint16)
    data = cv2_encode(values, ".png")
    decoded = decode_image(data, BUDGET)
    assert_rgb8(decoded, 1, 7)
    expected = [0, 200, 255, 255, 255, 255, 255]  # min(v, 255): Pillow clips 16-bit grey, it does not scale
    for channel in range(3):
        assert decoded[0, :, channel].tolist() == expected
    np.testing.assert_array_equal(decoded, np.array(Image.open(io.BytesIO(data)).convert("RGB")))


def test_16_bit_grey_png_with_a_transparent_colour_is_clipped_too() -> None:
    values = np.array([0, 200, 1000, 65535], np.uint16)
    rows = b"\x00" + values.astype(">u2").tobytes()
    ihdr = struct.pack(">IIBBBBB", 4, 1, 16, 0, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"tRNS", struct.pack(">H", 1000))
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )
    decoded = decode_image(data, BUDGET)
    assert decoded[..., 0].tolist() == [[0, 200, 255, 255]]
    np.testing.assert_array_equal(decoded, np.array(Image.open(io.BytesIO(data)).convert("RGB")))


@pytest.mark.parametrize("ext", [".png", ".tiff"])
def test_16_bit_rgb_keeps_the_high_byte_in_every_format(ext: str) -> None:
    # OpenCV's own 8-bit conversion rounds 16-bit RGB TIFF (511 -> 2) but truncates PNG (511 -> 1); the
    # module converts 16-bit samples itself so every format gives the same v >> 8.
    rgb16 = np.array([[[511, 256, 65535], [33000, 255, 0]]], np.uint16)
    decoded = decode_image(cv2_encode(np.ascontiguousarray(rgb16[..., ::-1]), ext), BUDGET)
    assert_rgb8(decoded, 1, 2)
    assert decoded.tolist() == [[[1, 1, 255], [128, 0, 0]]]


@pytest.mark.parametrize("dtype", ["<u2", ">u2"])
def test_16_bit_grey_tiff_is_clipped_like_training_sees_it(dtype: str) -> None:
    data = pil_encode(Image.fromarray(np.array([[7, 255, 511, 40000]], dtype)), "TIFF")
    decoded = decode_image(data, BUDGET)
    assert decoded[..., 0].tolist() == [[7, 255, 255, 255]]
    np.testing.assert_array_equal(decoded, np.array(Image.open(io.BytesIO(data)).convert("RGB")))


def test_16_bit_grey_alpha_png_keeps_the_high_byte_like_pillow() -> None:
    values = np.array([[0, 255, 256, 40000, 65535]], np.uint16)
    pairs = np.stack([values, np.full_like(values, 65535)], axis=-1)
    rows = b"\x00" + pairs.astype(">u2").tobytes()
    ihdr = struct.pack(">IIBBBBB", 5, 1, 16, 4, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )
    decoded = decode_image(data, BUDGET)
    assert decoded[..., 0].tolist() == [[0, 0, 1, 156, 255]]
    np.testing.assert_array_equal(decoded, np.array(Image.open(io.BytesIO(data)).convert("RGB")))


def test_16_bit_rgba_png_drops_alpha_and_keeps_the_high_byte() -> None:
    bgra16 = np.array([[[1000, 2000, 60000, 0], [65535, 65535, 65535, 65535]]], np.uint16)
    decoded = decode_image(cv2_encode(bgra16, ".png"), BUDGET)
    assert decoded.tolist() == [[[234, 7, 3], [255, 255, 255]]]


def test_grey_alpha_png_drops_alpha_without_compositing() -> None:
    la = np.array([[[10, 0], [200, 255], [90, 128]]], np.uint8)
    decoded = decode_image(pil_encode(Image.fromarray(la, "LA"), "PNG"), BUDGET)
    assert decoded.tolist() == [[[10, 10, 10], [200, 200, 200], [90, 90, 90]]]


def test_rgba_png_drops_alpha_without_compositing() -> None:
    rgba = np.array([[[10, 20, 30, 0], [40, 50, 60, 128], [70, 80, 90, 255]]], np.uint8)
    decoded = decode_image(pil_encode(Image.fromarray(rgba, "RGBA"), "PNG"), BUDGET)
    assert decoded.tolist() == [[[10, 20, 30], [40, 50, 60], [70, 80, 90]]]


def test_rgba_tiff_drops_alpha_without_compositing() -> None:
    # Pillow writes ExtraSamples = unassociated alpha; OpenCV alone would premultiply (0, 0, 0 and 20, 25, 30).
    rgba = np.array([[[10, 20, 30, 0], [40, 50, 60, 128], [70, 80, 90, 255]]], np.uint8)
    decoded = decode_image(pil_encode(Image.fromarray(rgba, "RGBA"), "TIFF"), BUDGET)
    assert_rgb8(decoded, 1, 3)
    assert decoded.tolist() == [[[10, 20, 30], [40, 50, 60], [70, 80, 90]]]


def test_grey_alpha_tiff_drops_alpha() -> None:
    la = np.array([[[10, 0], [200, 128]]], np.uint8)
    decoded = decode_image(pil_encode(Image.fromarray(la, "LA"), "TIFF"), BUDGET)
    assert decoded.tolist() == [[[10, 10, 10], [200, 200, 200]]]


def test_16_bit_rgba_tiff_drops_alpha_and_keeps_the_high_byte() -> None:
    bgra16 = np.array([[[1000, 2000, 60000, 0], [65535, 512, 300, 30000]]], np.uint16)
    decoded = decode_image(cv2_encode(bgra16, ".tiff"), BUDGET)
    assert decoded.tolist() == [[[234, 7, 3], [1, 2, 255]]]


def test_32_bit_bmp_drops_alpha() -> None:
    bgra = np.array([[[30, 20, 10, 0], [60, 50, 40, 128]]], np.uint8)
    decoded = decode_image(cv2_encode(bgra, ".bmp"), BUDGET)
    assert decoded.tolist() == [[[10, 20, 30], [40, 50, 60]]]


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("PNG", {}), ("PNG", {"transparency": 1}), ("TIFF", {}), ("BMP", {}), ("GIF", {}), ("GIF", {"transparency": 1})],
)
def test_palette_images_give_their_colours(fmt: str, options: dict) -> None:
    palette = Image.new("P", (3, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0, 10, 20, 250] + [0] * 759)
    palette.putdata([0, 1, 2])
    decoded = decode_image(pil_encode(palette, fmt, **options), BUDGET)
    assert_rgb8(decoded, 1, 3)
    assert decoded.tolist() == [[[255, 0, 0], [0, 255, 0], [10, 20, 250]]]


def test_bigtiff_decodes() -> None:
    tifffile = pytest.importorskip("tifffile")
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, rgb_pattern(), photometric="rgb", bigtiff=True)
    assert buffer.getvalue()[:4] == b"II+\x00"
    np.testing.assert_array_equal(decode_image(buffer.getvalue(), BUDGET), rgb_pattern())


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 255, 0, 0], [0, 0, 0, 255]]], np.uint8)
    cmyk = np.repeat(np.repeat(cmyk, 8, axis=0), 8, axis=1)  # 8x8 blocks so JPEG keeps the colours
    data = pil_encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=100)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    decoded = decode_image(data, BUDGET)
    assert_rgb8(decoded, 8, 32)
    centres = [decoded[4, x].astype(int) for x in (4, 12, 20, 28)]
    for got, want in zip(centres, ([255, 255, 255], [0, 255, 255], [255, 0, 255], [0, 0, 0]), strict=True):
        assert np.abs(got - want).max() <= 3, (got, want)


def test_jpeg_exif_orientation_is_not_applied() -> None:
    # 4 rows x 8 columns stored; orientation 6 would turn it into 8x4. Training (Pillow convert) ignores the
    # tag too, so the stored orientation is the one the model knows.
    rgb = np.zeros((16, 32, 3), np.uint8)
    rgb[:, :16] = 250
    exif = Image.Exif()
    exif[0x0112] = 6
    data = pil_encode(Image.fromarray(rgb), "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == 6
    decoded = decode_image(data, BUDGET)
    assert_rgb8(decoded, 16, 32)
    assert decoded[8, 4].min() > 240 and decoded[8, 28].max() < 15


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (4, 3), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = pil_encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    decoded = decode_image(data, BUDGET)
    assert_rgb8(decoded, 3, 4)
    assert (decoded == [255, 0, 0]).all()


def test_skimage_animated_gif_first_frame_matches_pillow() -> None:
    data = (SKIMAGE_DATA / "no_time_for_that_tiny.gif").read_bytes()
    with Image.open(io.BytesIO(data)) as gif:
        assert gif.n_frames > 1
        first = np.array(gif.convert("RGB"))
    decoded = decode_image(data, BUDGET)
    assert_rgb8(decoded, 25, 14)
    np.testing.assert_array_equal(decoded, first)


def test_gif_never_needs_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIFs are decoded by Pillow (OpenCV < 4.11 cannot read them, and 4.11+ paints transparent pixels with
    # the background colour where training's Pillow keeps the palette colour).
    data = (SKIMAGE_DATA / "no_time_for_that_tiny.gif").read_bytes()
    expected = decode_image(data, BUDGET)
    monkeypatch.setattr(imaging.cv2, "imdecode", lambda *_: None)
    decoded = decode_image(data, BUDGET)
    assert_rgb8(decoded, 25, 14)
    assert decoded.flags.writeable
    np.testing.assert_array_equal(decoded, expected)


def test_truncated_gif_is_invalid_input() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    single = pil_encode(Image.fromarray(noise).convert("P"), "GIF")
    with pytest.raises(InvalidInputError, match="GIF data is corrupt or truncated"):
        decode_image(single[: len(single) // 2], BUDGET)


def test_opencv_exceptions_become_invalid_input(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_):
        raise cv2.error("boom")

    monkeypatch.setattr(imaging.cv2, "imdecode", broken)
    with pytest.raises(InvalidInputError, match="cannot decode the image: the PNG data is corrupt"):
        decode_image(cv2_encode(rgb_pattern(), ".png"), BUDGET)


def test_multipage_tiff_gives_its_first_page() -> None:
    data = (SKIMAGE_DATA / "multipage.tif").read_bytes()
    with Image.open(io.BytesIO(data)) as tiff:
        assert tiff.n_frames == 2
        first = np.array(tiff.convert("RGB"))
        tiff.seek(1)
        second = np.array(tiff.convert("RGB"))
    assert not np.array_equal(first, second)
    decoded = decode_image(data, BUDGET)
    assert_rgb8(decoded, 15, 10)
    np.testing.assert_array_equal(decoded, first)


def test_multipage_tiff_made_here_gives_its_first_page() -> None:
    pages = [Image.fromarray(np.full((3, 5, 3), value, np.uint8)) for value in (11, 99)]
    data = pil_encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert (decode_image(data, BUDGET) == 11).all()


def test_float_tiff_is_refused() -> None:
    # skimage's multipage_rgb.tif is float64 too; Pillow cannot even read its header.
    with pytest.raises(InvalidInputError, match="float32 samples are not supported"):
        decode_image(cv2_encode(np.ones((2, 2), np.float32), ".tiff"), BUDGET)
    with pytest.raises(InvalidInputError, match="TIFF header is invalid"):
        decode_image((SKIMAGE_DATA / "multipage_rgb.tif").read_bytes(), BUDGET)


def test_unexpected_channel_count_from_the_decoder_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imaging.cv2, "imdecode", lambda *_: np.zeros((6, 5, 2), np.uint8))
    with pytest.raises(InvalidInputError, match="2 channels"):
        decode_image(cv2_encode(rgb_pattern(), ".png"), BUDGET)


def test_crafted_tiff_helper_is_a_valid_tiff() -> None:
    pixels = bytes(range(12))
    decoded = decode_image(crafted_tiff(4, 3, pixels), BUDGET)
    assert decoded[..., 1].ravel().tolist() == list(range(12))


@pytest.mark.parametrize(("height", "width"), [(1, 1), (3, 100_000), (100_000, 3)])
def test_extreme_shapes_decode_and_resize(height: int, width: int) -> None:
    rgb = np.full((height, width, 3), (10, 20, 30), np.uint8)
    decoded = decode_image(cv2_encode(rgb[..., ::-1], ".png"), BUDGET)
    assert_rgb8(decoded, height, width)
    assert (decoded == (10, 20, 30)).all()
    resized = resize_to_model(decoded, 256, 256)
    assert_rgb8(resized, 256, 256)
    assert (resized == (10, 20, 30)).all()


def test_decoded_arrays_are_new_and_writable() -> None:
    data = cv2_encode(rgb_pattern()[..., ::-1], ".bmp")
    decoded = decode_image(data, BUDGET)
    assert decoded.flags.writeable
    assert not np.shares_memory(decoded, np.frombuffer(data, np.uint8))


# --------------------------------------------------------------------------- decoding refusals


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "it is empty"),
        (b"\x00", "not a PNG, JPEG, BMP, TIFF or GIF"),
        (bytes(np.random.default_rng(3).integers(0, 256, 4096, np.uint8)), "not a PNG, JPEG, BMP, TIFF or GIF"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "not a PNG, JPEG, BMP, TIFF or GIF"),
        (b"\x89PNG\r\n\x1a\n", "PNG header is invalid or truncated"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG header is invalid or truncated"),
        (b"BM" + b"\x00" * 10, "BMP header is invalid or truncated"),
        (b"GIF89a\x01", "GIF header is invalid or truncated"),
        (b"II*\x00\xff\xff\xff\x7f", "TIFF header is invalid or truncated"),
    ],
)
def test_undecodable_bytes_are_invalid_input(data: bytes, words: str) -> None:
    with pytest.raises(InvalidInputError, match="cannot decode the image") as caught:
        decode_image(data, BUDGET)
    assert words in str(caught.value)
    assert "Traceback" not in str(caught.value)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tiff", ".bmp"])
@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_truncated_files_are_invalid_input(ext: str, keep: float) -> None:
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (64, 80, 3), np.uint8), (5, 5), 0)
    data = cv2_encode(image, ext)
    with pytest.raises(
        InvalidInputError,
        match=r"cannot decode the image: (its|the) \w+ (header is invalid|data is corrupt) or truncated",
    ):
        decode_image(data[: int(len(data) * keep)], BUDGET)


def test_jpeg_missing_only_its_end_marker_is_invalid_input() -> None:
    data = cv2_encode(rgb_pattern(32, 32), ".jpg")
    assert data.endswith(b"\xff\xd9")
    with pytest.raises(InvalidInputError, match="JPEG data is corrupt or truncated"):
        decode_image(data[:-2], BUDGET)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_valid_header_with_corrupt_body_is_invalid_input(ext: str) -> None:
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 256, (64, 80, 3), np.uint8), (5, 5), 0)
    data = cv2_encode(image, ext)
    keep = 100  # the PNG IHDR or the JPEG SOI/APP0/DQT start: the header still parses
    corrupt = data[:keep] + rng.integers(0, 256, len(data) - keep, np.uint8).tobytes()
    with pytest.raises(InvalidInputError, match="cannot decode the image"):
        decode_image(corrupt, BUDGET)


def test_png_with_a_bad_crc_is_invalid_input() -> None:
    data = bytearray(cv2_encode(rgb_pattern(), ".png"))
    idat = data.index(b"IDAT")
    data[idat + 4] ^= 0xFF  # first byte of the compressed stream; the CRC no longer matches
    with pytest.raises(InvalidInputError, match="PNG data is corrupt or truncated"):
        decode_image(bytes(data), BUDGET)


def test_zero_size_header_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="cannot decode the image"):
        decode_image(patched_bmp_size(0, 4), BUDGET)


# --------------------------------------------------------------------------- pixel budget


def test_png_declaring_50000x50000_is_refused_before_decoding() -> None:
    bomb = crafted_png(50_000, 50_000, zlib.compress(b"\x00" * 64))
    assert len(bomb) < 200
    peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        with pytest.raises(ResourceExhaustedError) as caught:
            decode_image(bomb, BUDGET)
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert "50000x50000 = 2,500,000,000 pixels" in message
    assert "budget of 40,000,000" in message and "send a smaller image" in message
    assert traced_peak < 1_000_000  # Python/NumPy allocations: no pixel buffer
    # The process never grew by anything close to the 7.5 GB an RGB decode would need (OpenCV's
    # C++ allocations are not traced, but they would show in the peak resident size).
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_rss_kib < 100_000


def test_pillow_decompression_bomb_limit_does_not_apply(recwarn: pytest.WarningsRecorder) -> None:
    # 200 M pixels is past Pillow's own hard limit (~179 M): our budget decides, and Pillow neither
    # raises nor warns. The tiny IDAT then fails to decode, which proves the header passed the check.
    bomb = crafted_png(20_000, 10_000, zlib.compress(b"\x00" * 64))
    with pytest.raises(ResourceExhaustedError, match="20000x10000"):
        decode_image(bomb, 199_999_999)
    with pytest.raises(InvalidInputError, match="PNG data is corrupt or truncated"):
        decode_image(bomb, 200_000_000)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (patched_jpeg_size(65_000, 65_000), "65000x65000"),
        (patched_gif_size(65_535, 65_535), "65535x65535"),
        (patched_bmp_size(60_000, 60_000), "60000x60000"),
        (patched_bmp_size(60_000, -60_000), "60000x60000"),  # top-down BMP
        (crafted_tiff(60_000, 60_000, b"\x00" * 16), "60000x60000"),
    ],
    ids=["jpeg", "gif", "bmp", "bmp-top-down", "tiff"],
)
def test_huge_declared_sizes_are_refused_in_every_format(data: bytes, size: str) -> None:
    with pytest.raises(ResourceExhaustedError, match=f"the image is {size} = .* over the server's budget"):
        decode_image(data, BUDGET)


def test_budget_boundary_is_inclusive() -> None:
    data = cv2_encode(np.zeros((100, 100, 3), np.uint8), ".png")
    assert decode_image(data, 10_000).shape == (100, 100, 3)
    with pytest.raises(ResourceExhaustedError, match="100x100 = 10,000 pixels, over the server's budget of 9,999"):
        decode_image(data, 9_999)


# --------------------------------------------------------------------------- fuzz


def check_decode_outcome(data: bytes, max_pixels: int) -> None:
    try:
        image = decode_image(data, max_pixels)
    except (InvalidInputError, ResourceExhaustedError) as exc:
        assert str(exc)
        return
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    assert 1 <= image.shape[0] * image.shape[1] <= max_pixels


def fuzz_seeds() -> list[bytes]:
    rgb = rgb_pattern(12, 10)
    return [
        cv2_encode(rgb, ".png"),
        cv2_encode(rgb, ".jpg"),
        cv2_encode(rgb, ".bmp"),
        cv2_encode(rgb, ".tiff"),
        pil_encode(Image.fromarray(rgb).convert("P"), "GIF"),
        pil_encode(Image.fromarray(rgb), "TIFF", compression="tiff_deflate"),
    ]


def mutate(seed: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(seed)
    choice = rng.integers(4)
    if choice == 0:  # flip a few bytes
        for index in rng.integers(0, len(data), rng.integers(1, 8)):
            data[index] = int(rng.integers(256))
    elif choice == 1:  # truncate
        data = data[: rng.integers(0, len(data))]
    elif choice == 2:  # keep the signature, random rest
        data = data[:8] + bytearray(rng.integers(0, 256, rng.integers(0, 600), np.uint8).tobytes())
    else:  # overwrite a random span
        start = int(rng.integers(0, len(data)))
        span = rng.integers(0, 256, min(64, len(data) - start), np.uint8).tobytes()
        data[start : start + len(span)] = span
    return bytes(data)


def test_seeded_fuzz_only_raises_domain_errors() -> None:
    rng = np.random.default_rng(20240611)
    seeds = fuzz_seeds()
    for _ in range(100):
        check_decode_outcome(rng.integers(0, 256, rng.integers(0, 512), np.uint8).tobytes(), 1 << 20)
    for _ in range(400):
        check_decode_outcome(mutate(seeds[rng.integers(len(seeds))], rng), 1 << 20)


if given is not None:

    @settings(max_examples=200, deadline=None, database=None)
    @given(
        prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM"]),
        body=st.binary(max_size=2048),
    )
    def test_hypothesis_fuzz_only_raises_domain_errors(prefix: bytes, body: bytes) -> None:
        check_decode_outcome(prefix + body, 1 << 20)

else:

    @pytest.mark.skip(reason="hypothesis is not installed; test_seeded_fuzz_only_raises_domain_errors covers this")
    def test_hypothesis_fuzz_only_raises_domain_errors() -> None:
        pass


# --------------------------------------------------------------------------- raw pixels


def test_raw_rgb_bgr_grey_and_rgba_buffers_give_the_same_rgb() -> None:
    rgb = rgb_pattern(7, 9)
    grey = rgb[..., 1]
    alpha = np.full((7, 9, 1), 3, np.uint8)
    results = {
        "rgb": raw_image(rgb.tobytes(), 7, 9, 3, False, BUDGET),
        "bgr": raw_image(rgb[..., ::-1].tobytes(), 7, 9, 3, True, BUDGET),
        "rgba": raw_image(np.concatenate([rgb, alpha], 2).tobytes(), 7, 9, 4, False, BUDGET),
        "bgra": raw_image(np.concatenate([rgb[..., ::-1], alpha], 2).tobytes(), 7, 9, 4, True, BUDGET),
    }
    for name, image in results.items():
        assert_rgb8(image, 7, 9)
        np.testing.assert_array_equal(image, rgb, err_msg=name)
    for bgr in (False, True):
        image = raw_image(grey.tobytes(), 7, 9, 1, bgr, BUDGET)
        assert_rgb8(image, 7, 9)
        np.testing.assert_array_equal(image, np.repeat(grey[..., None], 3, axis=2))


def test_raw_rgb_is_a_zero_copy_view() -> None:
    data = rgb_pattern(4, 4).tobytes()
    image = raw_image(data, 4, 4, 3, False, BUDGET)
    assert np.shares_memory(image, np.frombuffer(data, np.uint8))
    assert not image.flags.writeable  # a view of immutable request bytes
    assert resize_to_model(image, 4, 4) is image


def test_raw_1x1_pixel() -> None:
    assert raw_image(b"\x01\x02\x03", 1, 1, 3, True, BUDGET).tolist() == [[[3, 2, 1]]]


@pytest.mark.parametrize("channels", [0, 2, 5, -3])
def test_raw_bad_channel_count_is_invalid_input(channels: int) -> None:
    with pytest.raises(InvalidInputError, match=f"1, 3 or 4 channels, got {channels}"):
        raw_image(b"\x00" * 8, 2, 2, channels, False, BUDGET)


@pytest.mark.parametrize(("height", "width"), [(0, 4), (4, 0), (-1, 4), (0, 0)])
def test_raw_empty_size_is_invalid_input(height: int, width: int) -> None:
    with pytest.raises(InvalidInputError, match="at least 1"):
        raw_image(b"", height, width, 3, False, BUDGET)


@pytest.mark.parametrize("size", [11, 13, 0])
def test_raw_wrong_byte_count_states_expected_and_got(size: int) -> None:
    with pytest.raises(InvalidInputError) as caught:
        raw_image(b"\x00" * size, 2, 2, 3, False, BUDGET)
    assert f"has {size:,} bytes" in str(caught.value)
    assert "needs exactly 12" in str(caught.value)


def test_raw_over_budget_is_resource_exhausted_before_looking_at_the_bytes() -> None:
    with pytest.raises(ResourceExhaustedError, match="50000x50000 = 2,500,000,000 pixels"):
        raw_image(b"", 50_000, 50_000, 3, False, BUDGET)
    assert raw_image(b"\x00" * 300, 10, 10, 3, False, 100).shape == (10, 10, 3)
    with pytest.raises(ResourceExhaustedError):
        raw_image(b"\x00" * 300, 10, 10, 3, False, 99)


# --------------------------------------------------------------------------- resize


def test_resize_uses_inter_area() -> None:
    image = rgb_pattern(64, 48)
    resized = resize_to_model(image, 16, 12)
    assert_rgb8(resized, 16, 12)
    np.testing.assert_array_equal(resized, cv2.resize(image, (12, 16), interpolation=cv2.INTER_AREA))
    # An exact 4x4 block average, rounded: what area interpolation means.
    block = image[:4, :4].reshape(-1, 3).mean(axis=0)
    assert np.abs(resized[0, 0] - block).max() <= 0.5


def test_resize_upsamples_tiny_images() -> None:
    resized = resize_to_model(np.array([[[9, 8, 7]]], np.uint8), 256, 256)
    assert_rgb8(resized, 256, 256)
    assert (resized == (9, 8, 7)).all()


def test_resize_at_size_returns_the_same_array() -> None:
    image = rgb_pattern(16, 16)
    assert resize_to_model(image, 16, 16) is image


def test_resize_accepts_non_contiguous_input() -> None:
    view = rgb_pattern(64, 96)[:, ::2]
    resized = resize_to_model(view, 16, 16)
    assert_rgb8(resized, 16, 16)
    np.testing.assert_array_equal(resized, resize_to_model(np.ascontiguousarray(view), 16, 16))


def test_resize_at_size_makes_non_contiguous_input_contiguous() -> None:
    wide = rgb_pattern(16, 32)
    view = wide[:, ::2]
    resized = resize_to_model(view, 16, 16)
    assert_rgb8(resized, 16, 16)
    np.testing.assert_array_equal(resized, view)


# --------------------------------------------------------------------------- paths


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(cv2_encode(rgb_pattern()[..., ::-1], ".png"))
    (root / "sub" / "b.png").write_bytes(b"b")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.png").write_bytes(b"secret")
    return root


def test_disabled_path_inputs_are_permission_denied() -> None:
    with pytest.raises(PermissionDeniedError, match="path inputs are disabled: start the server with an image root"):
        resolve_path(None, "a.png")


def test_relative_paths_resolve_under_the_root(image_root: Path) -> None:
    assert resolve_path(image_root, "a.png") == (image_root / "a.png").resolve()
    assert resolve_path(image_root, "sub/b.png") == (image_root / "sub" / "b.png").resolve()
    assert resolve_path(image_root, "sub/../a.png") == (image_root / "a.png").resolve()
    assert resolve_path(image_root, "./sub//b.png") == (image_root / "sub" / "b.png").resolve()


def test_absolute_paths_inside_the_root_are_allowed(image_root: Path) -> None:
    assert resolve_path(image_root, str(image_root / "sub" / "b.png")) == (image_root / "sub" / "b.png").resolve()


def test_root_given_through_a_symlink_works(image_root: Path, tmp_path: Path) -> None:
    (tmp_path / "root-link").symlink_to(image_root)
    assert resolve_path(tmp_path / "root-link", "a.png") == (image_root / "a.png").resolve()
    assert resolve_path(tmp_path / "root-link", str(tmp_path / "root-link" / "a.png")) == (image_root / "a.png")


def test_resolve_then_decode_end_to_end(image_root: Path) -> None:
    data = read_image_file(resolve_path(image_root, "a.png"), 1 << 20)
    np.testing.assert_array_equal(decode_image(data, BUDGET), rgb_pattern())


@pytest.mark.parametrize(
    "requested",
    ["../outside/secret.png", "sub/../../outside/secret.png", "..", "../outside/missing.png"],
)
def test_dot_dot_escapes_are_permission_denied(image_root: Path, requested: str) -> None:
    with pytest.raises(PermissionDeniedError, match="is outside the image root") as caught:
        resolve_path(image_root, requested)
    assert str(image_root.parent) not in str(caught.value)


def test_absolute_paths_outside_the_root_are_permission_denied(image_root: Path, tmp_path: Path) -> None:
    for requested in ("/etc/passwd", str(tmp_path / "outside" / "secret.png"), "/nonexistent/x.png"):
        with pytest.raises(PermissionDeniedError, match="outside the image root"):
            resolve_path(image_root, requested)


def test_symlinks_escaping_the_root_are_refused_without_naming_the_target(image_root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (image_root / "escape.png").symlink_to(outside / "secret.png")
    (image_root / "escape-dir").symlink_to(outside)
    (image_root / "escape-missing.png").symlink_to(outside / "missing.png")  # no existence oracle either
    for requested in ("escape.png", "escape-dir/secret.png", "escape-missing.png", str(image_root / "escape.png")):
        with pytest.raises(PermissionDeniedError, match="outside the image root") as caught:
            resolve_path(image_root, requested)
        assert str(outside) not in str(caught.value)
        assert "secret" not in str(caught.value).replace(requested, "")


def test_symlinks_staying_inside_the_root_are_followed(image_root: Path) -> None:
    (image_root / "link.png").symlink_to(image_root / "sub" / "b.png")
    (image_root / "relative-link.png").symlink_to(Path("sub") / "b.png")
    for name in ("link.png", "relative-link.png"):
        assert resolve_path(image_root, name) == (image_root / "sub" / "b.png").resolve()


def test_symlink_loop_is_invalid_input(image_root: Path) -> None:
    (image_root / "loop1").symlink_to(image_root / "loop2")
    (image_root / "loop2").symlink_to(image_root / "loop1")
    with pytest.raises(InvalidInputError, match="'loop1' cannot be"):
        resolve_path(image_root, "loop1")


def test_huge_requested_paths_are_cut_short_in_messages(image_root: Path) -> None:
    with pytest.raises(PermissionDeniedError) as caught:
        resolve_path(image_root, "../" * 2000 + "x.png")
    assert len(str(caught.value)) < 400
    assert "..." in str(caught.value)


@pytest.mark.parametrize("requested", ["", "a.png\x00.txt", "\x00"])
def test_empty_and_nul_paths_are_invalid_input(image_root: Path, requested: str) -> None:
    with pytest.raises(InvalidInputError, match="empty|NUL"):
        resolve_path(image_root, requested)


@pytest.mark.parametrize("requested", ["missing.png", "sub/missing.png", "nodir/x.png", "a.png/x.png"])
def test_missing_files_are_not_found(image_root: Path, requested: str) -> None:
    with pytest.raises(NotFoundError, match="under the image root") as caught:
        resolve_path(image_root, requested)
    assert requested in str(caught.value)
    assert str(image_root) not in str(caught.value)


@pytest.mark.parametrize("requested", ["sub", "sub/", ".", str(Path("sub") / ".")])
def test_directories_are_invalid_input(image_root: Path, requested: str) -> None:
    with pytest.raises(InvalidInputError, match="is a directory"):
        resolve_path(image_root, requested)


def test_fifos_are_invalid_input_and_never_block(image_root: Path) -> None:
    os.mkfifo(image_root / "pipe.png")
    with pytest.raises(InvalidInputError, match="not a regular file"):
        resolve_path(image_root, "pipe.png")
    with pytest.raises(InvalidInputError, match="not a regular file"):
        read_image_file(image_root / "pipe.png", 1 << 20)  # a blocking open would hang here


@pytest.mark.parametrize(
    "name",
    ["with space.png", "ünïcødé 图像.png", "quote'and\"double.png", "semi;colon $(x) `y`.png", "-dash.png", " .png"],
)
def test_odd_file_names_work(image_root: Path, name: str) -> None:
    (image_root / "sub" / name).write_bytes(name.encode())
    path = resolve_path(image_root, f"sub/{name}")
    assert path == (image_root / "sub" / name).resolve()
    assert read_image_file(path, 1 << 20) == name.encode()


# --------------------------------------------------------------------------- reading files


def test_read_image_file_returns_the_bytes_and_honours_the_limit(image_root: Path) -> None:
    path = image_root / "sub" / "exact.bin"
    path.write_bytes(b"x" * 1000)
    assert read_image_file(path, 1000) == b"x" * 1000
    with pytest.raises(ResourceExhaustedError, match="has 1,000 bytes, over the server's limit of 999") as caught:
        read_image_file(path, 999)
    assert str(image_root) not in str(caught.value)


def test_read_empty_file_gives_empty_bytes_that_decode_refuses(image_root: Path) -> None:
    (image_root / "empty.png").write_bytes(b"")
    data = read_image_file(image_root / "empty.png", 100)
    assert data == b""
    with pytest.raises(InvalidInputError, match="empty"):
        decode_image(data, BUDGET)


def test_read_missing_and_broken_symlink_are_not_found(image_root: Path) -> None:
    (image_root / "broken.png").symlink_to(image_root / "gone.png")
    for name in ("missing.png", "broken.png"):
        with pytest.raises(NotFoundError, match="does not exist") as caught:
            read_image_file(image_root / name, 100)
        assert str(image_root) not in str(caught.value)
    with pytest.raises(NotFoundError, match="under the image root"):
        resolve_path(image_root, "broken.png")


def test_read_directory_is_invalid_input(image_root: Path) -> None:
    with pytest.raises(InvalidInputError, match="is a directory"):
        read_image_file(image_root / "sub", 100)


def test_read_permission_error_is_permission_denied(image_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root here, so chmod 000 cannot block reading: simulate the kernel's EACCES instead.
    def refuse(*_):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(imaging.os, "open", refuse)
    with pytest.raises(PermissionDeniedError, match="not allowed to read 'a.png'; fix the file's permissions"):
        read_image_file(image_root / "a.png", 100)


def test_read_device_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="not a regular file"):
        read_image_file(Path("/dev/zero"), 100)


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not BOTTLE.is_file(), reason="MVTec AD bottle images are not in shared/datasets")
def test_real_mvtec_png_and_its_jpeg() -> None:
    data = BOTTLE.read_bytes()
    decoded = decode_image(data, BUDGET)
    assert_rgb8(decoded, 900, 900)
    reference = cv2.cvtColor(cv2.imread(str(BOTTLE), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decoded, reference)
    jpeg = decode_image(cv2_encode(reference[..., ::-1], ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90]), BUDGET)
    assert np.abs(jpeg.astype(int) - reference).mean() < 3
    assert_rgb8(resize_to_model(decoded, 256, 256), 256, 256)
