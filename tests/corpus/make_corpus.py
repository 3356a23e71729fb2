"""The hostile-input corpus: its input files (built, never committed) and its manifest ``tests/corpus/cases.json``.

The files are built in memory by :func:`build_files` (fixed seeds, fixed encoders); the test writes
them into a temporary folder. The manifest is committed: run ``python tests/corpus/make_corpus.py``
from the repository root after changing a case, and tests/integration/test_bad_input_corpus.py checks
that the committed manifest is what this script writes. ``--inputs DIR`` also writes the files, to
look at them.

Each case in the manifest says how to send it and what the server must answer:

* ``input.kind``: ``encoded`` (``file`` from inputs/ as ``image.encoded``), ``raw`` (``file`` or ``fill``
  bytes as ``image.raw`` with ``height``/``width``/``channels``/``order``), ``path`` (``path`` as
  ``image.path``; ``{root}`` and ``{outside}`` are replaced by the image root and a folder next to it),
  ``oversize`` (``bytes`` zero bytes as ``image.encoded``, over the server's message limit) or ``none``.
* ``setup`` (path cases): what the test creates in its temporary image root first, because symlinks,
  FIFOs and permissions cannot be kept in git: ``file`` (a copy of ``from``), ``symlink`` (to ``target``,
  ``{outside}`` allowed), ``dir``, ``fifo``, ``unreadable`` (a copy with mode 000) or ``big`` (``bytes``
  zero bytes).
* ``request``: ``threshold`` (a number or "nan"/"inf"/"-inf"), ``model`` ("" to leave it empty; absent
  means the corpus's default model), ``version``.
* ``expect``: ``code`` (a grpc.StatusCode name), ``words`` the message must contain and ``absent`` words
  it must not (the message never names files outside the image root); for accepted
  images ``size`` [height, width], ``same_score_as`` (a file whose RGB decoding is the pixels the case must
  decode to; the raw scores must agree within ``tolerance`` times max(1, |raw score|)) and
  ``is_anomalous`` when it is certain.
  ``expect_as_root`` replaces ``expect`` when the server runs as root (see the ``unreadable`` case).
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "cases.json"
SCORE_TOLERANCE = 1e-5
WIDTH, HEIGHT = 64, 48
UNSUPPORTED = "not a PNG, JPEG, BMP, TIFF or GIF"


def pattern() -> np.ndarray:
    """A textured 48 x 64 RGB image, distinct in every channel (a swapped channel changes the score)."""
    rng = np.random.default_rng(20261129)
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = np.stack([rows * 5 + cols, 250 - cols * 3, (rows * 7 + cols * 11) % 256], axis=-1)
    noise = rng.integers(0, 40, (HEIGHT, WIDTH, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def raw_png(width: int, height: int, depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written by hand: for sizes and sample layouts no encoder here writes (0x0, bombs, 16-bit LA)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    idat = zlib.compress(rows, 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def crafted_tiff(width: int, height: int, pixels: bytes) -> bytes:
    """A minimal little-endian uncompressed 8-bit grey TIFF (one strip) declaring any size."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1)]
    entries += [(273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, len(pixels))]
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(entries) + 4
    body = struct.pack("<H", len(entries))
    for tag, kind, given in entries:
        value = data_offset if tag == 273 else given
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        body += struct.pack("<HHI", tag, kind, 1) + packed
    return b"II*\x00" + struct.pack("<I", ifd_offset) + body + b"\x00\x00\x00\x00" + pixels


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with its SOF0 frame header patched to declare another size."""
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def build_files() -> dict[str, bytes]:
    """Every corpus file by name."""
    rgb = pattern()
    grey = (rgb.astype(np.uint16).sum(axis=-1) // 3).astype(np.uint8)
    files: dict[str, bytes] = {}
    add_accepted(files, rgb, grey)
    add_refused(files, grey)
    return files


def add_accepted(files: dict[str, bytes], rgb: np.ndarray, grey: np.ndarray) -> None:
    """References (what accepted cases must decode to) and the images that must be accepted."""
    rgb_image = Image.fromarray(rgb)
    files["ref_rgb.png"] = encode(rgb_image, "PNG")
    files["ref_grey_as_rgb.png"] = encode(Image.fromarray(np.stack([grey] * 3, axis=-1)), "PNG")
    files["ref_rgb.raw"] = rgb.tobytes()
    files["ref_bgr.raw"] = np.ascontiguousarray(rgb[..., ::-1]).tobytes()
    files["ref_grey.raw"] = grey.tobytes()
    files["ref_rgba.raw"] = np.concatenate([rgb, np.full((HEIGHT, WIDTH, 1), 7, np.uint8)], axis=-1).tobytes()

    files["grey8.png"] = encode(Image.fromarray(grey), "PNG")
    files["grey_alpha.png"] = encode(Image.fromarray(np.stack([grey, 255 - grey], axis=-1), "LA"), "PNG")
    alpha = np.where(np.arange(WIDTH) % 2 == 0, 0, 255).astype(np.uint8)[np.newaxis, :, np.newaxis]
    rgba = np.concatenate([rgb, np.broadcast_to(alpha, (HEIGHT, WIDTH, 1))], axis=-1)
    files["rgba_half_transparent.png"] = encode(Image.fromarray(rgba, "RGBA"), "PNG")
    palette_image = rgb_image.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    files["palette.png"] = encode(palette_image, "PNG")
    files["ref_palette_as_rgb.png"] = encode(palette_image.convert("RGB"), "PNG")
    # 16-bit RGB: value * 256 + 200 has the 8-bit reference as its high byte.
    rgb16 = rgb.astype(np.uint16) * 256 + 200
    files["rgb16.png"] = raw_png(WIDTH, HEIGHT, 16, 2, b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16))
    # 16-bit grey: training (Pillow) clips to 255, so values up to 255 come through unchanged and the
    # rest saturate; the reference is what Pillow's convert("RGB") gives.
    grey16 = grey.astype(np.uint16)
    grey16[: HEIGHT // 4] = grey16[: HEIGHT // 4] * 257  # the top quarter uses the full range: clipped to 255
    grey16_png = raw_png(WIDTH, HEIGHT, 16, 0, b"".join(b"\x00" + row.astype(">u2").tobytes() for row in grey16))
    files["grey16.png"] = grey16_png
    files["ref_grey16_as_rgb.png"] = encode(Image.open(io.BytesIO(grey16_png)).convert("RGB"), "PNG")
    la16 = np.stack([grey.astype(np.uint16) * 257, np.full((HEIGHT, WIDTH), 65535, np.uint16)], axis=-1)
    files["grey_alpha16.png"] = raw_png(
        WIDTH, HEIGHT, 16, 4, b"".join(b"\x00" + row.astype(">u2").tobytes() for row in la16)
    )
    files["rgb.bmp"] = encode(rgb_image, "BMP")
    files["rgb.tiff"] = encode(rgb_image, "TIFF")
    files["rgb_lzw.tiff"] = encode(rgb_image, "TIFF", compression="tiff_lzw")
    other = Image.fromarray(np.ascontiguousarray(rgb[::-1, ::-1]))
    files["multipage.tiff"] = encode(rgb_image, "TIFF", save_all=True, append_images=[other])
    gif_first = rgb_image.quantize(colors=32, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    gif_second = other.quantize(colors=32, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    files["animated.gif"] = encode(gif_first, "GIF", save_all=True, append_images=[gif_second], duration=100, loop=0)
    files["ref_gif_first_frame.png"] = encode(Image.open(io.BytesIO(files["animated.gif"])).convert("RGB"), "PNG")
    files["rgb.jpg"] = encode(rgb_image, "JPEG", quality=90)
    files["grey.jpg"] = encode(Image.fromarray(grey), "JPEG", quality=90)
    files["cmyk.jpg"] = encode(rgb_image.convert("CMYK"), "JPEG", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation "rotate 90 CW": the server ignores it, as training does
    files["exif_rotated.jpg"] = encode(rgb_image, "JPEG", quality=90, exif=exif)
    files["one_pixel.png"] = encode(Image.fromarray(np.array([[[200, 30, 90]]], np.uint8)), "PNG")
    stripe = np.zeros((3, 100_000, 3), np.uint8)
    stripe[:, :, 0] = (np.arange(100_000) // 1000 % 2 * 200)[np.newaxis, :]
    files["wide_3x100000.png"] = encode(Image.fromarray(stripe), "PNG", optimize=True)
    files["tall_100000x3.png"] = encode(Image.fromarray(np.ascontiguousarray(stripe.transpose(1, 0, 2))), "PNG")


def add_refused(files: dict[str, bytes], grey: np.ndarray) -> None:
    """Inputs that must be refused (several are cut or patched from the accepted files)."""
    files["empty.bin"] = b""
    files["random.bin"] = np.random.default_rng(7).integers(0, 256, 2048, np.uint8).tobytes()
    files["text.txt"] = b"this is a text file, not an image\n"
    files["drawing.svg"] = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>\n'
    files["image.webp"] = encode(Image.open(io.BytesIO(files["ref_rgb.png"])), "WEBP", lossless=True)
    png = files["ref_rgb.png"]
    files["png_signature_only.png"] = png[:8]
    files["png_header_only.png"] = png[:33]  # signature + IHDR, no IDAT
    files["png_truncated_half.png"] = png[: len(png) // 2]
    idat = png.index(b"IDAT")
    (length,) = struct.unpack(">I", png[idat - 4 : idat])
    garbage = np.random.default_rng(11).integers(0, 256, length, np.uint8).tobytes()
    files["png_corrupt_body.png"] = png[: idat - 4] + png_chunk(b"IDAT", garbage) + png[idat + 8 + length :]
    bad_crc = bytearray(png)
    bad_crc[idat + 4 + length] ^= 0xFF  # one byte of the IDAT CRC
    files["png_bad_crc.png"] = bytes(bad_crc)
    files["png_zero_size.png"] = raw_png(0, 0, 8, 2, b"")
    files["png_bomb_50000x50000.png"] = raw_png(50_000, 50_000, 8, 2, b"\x00" * 1024)
    jpeg = files["rgb.jpg"]
    files["jpeg_soi_only.jpg"] = jpeg[:3]
    files["jpeg_truncated_half.jpg"] = jpeg[: len(jpeg) // 2]
    files["jpeg_no_end_marker.jpg"] = jpeg[:-2]
    sos = jpeg.index(b"\xff\xda")
    scan = np.random.default_rng(12).integers(0, 256, len(jpeg) - sos - 20, np.uint8).tobytes()
    files["jpeg_corrupt_scan.jpg"] = jpeg[: sos + 14] + scan + b"\xff\xd9"
    tables = np.random.default_rng(13).integers(0, 256, len(jpeg) - 100, np.uint8).tobytes()
    files["jpeg_corrupt_tables.jpg"] = jpeg[:100] + tables
    files["jpeg_bomb_60000x60000.jpg"] = jpeg_with_size(jpeg, 60_000, 60_000)
    files["tiff_bomb_60000x60000.tiff"] = crafted_tiff(60_000, 60_000, b"\x00" * 64)
    files["tiff_header_only.tiff"] = files["rgb.tiff"][:8]
    files["tiff_float32.tiff"] = encode(Image.fromarray(grey.astype(np.float32) / 255.0, "F"), "TIFF")
    gif = files["animated.gif"]
    files["gif_truncated.gif"] = gif[: len(gif) // 3]
    files["gif_bomb_60000x60000.gif"] = gif[:6] + struct.pack("<HH", 60_000, 60_000) + gif[10:]
    bmp = files["rgb.bmp"]
    files["bmp_truncated.bmp"] = bmp[: len(bmp) // 2]
    files["bmp_bomb_60000x60000.bmp"] = bmp[:18] + struct.pack("<ii", 60_000, 60_000) + bmp[26:]


def ok(size: tuple[int, int], same_score_as: str | None, **extra: Any) -> dict[str, Any]:
    expect: dict[str, Any] = {"code": "OK", "size": list(size)}
    if same_score_as is not None:
        expect.update(same_score_as=same_score_as, tolerance=SCORE_TOLERANCE)
    return expect | extra


def refused(code: str, *words: str) -> dict[str, Any]:
    return {"code": code, "words": list(words)}


def encoded(case_id: str, file: str, expect: dict[str, Any], why: str) -> dict[str, Any]:
    return {"id": case_id, "why": why, "input": {"kind": "encoded", "file": file}, "expect": expect}


def raw(case_id: str, source: dict[str, Any], shape: tuple[int, int, int], expect: dict[str, Any], why: str):
    """A raw-pixel case; ``source`` holds ``file`` (and ``trim``) or ``fill``, and ``order`` when not RGB."""
    height, width, channels = shape
    spec = {"kind": "raw", "order": "RGB", **source, "height": height, "width": width, "channels": channels}
    return {"id": case_id, "why": why, "input": spec, "expect": expect}


def path(case_id: str, requested: str, setup: list[dict[str, Any]], expect: dict[str, Any], why: str, **more: Any):
    return {
        "id": case_id,
        "why": why,
        "input": {"kind": "path", "path": requested},
        "setup": setup,
        "expect": expect,
    } | more


def build_cases() -> list[dict[str, Any]]:
    """The manifest: every case with how to send it and what the server must answer."""
    size = (HEIGHT, WIDTH)
    bad = "INVALID_ARGUMENT"
    big = "RESOURCE_EXHAUSTED"
    corrupt = "data is corrupt or truncated"
    header = "header is invalid or truncated"
    budget = "over the server's budget"
    ref = "ref_rgb.png"
    grey_ref = "ref_grey_as_rgb.png"
    copy_ref = [{"create": "file", "name": "good.png", "from": ref}]
    cases = [
        # ---- encoded bytes that are not a usable image
        encoded(
            "empty-bytes", "empty.bin", refused(bad, "it is empty", "send the bytes of an image file"), "nothing sent"
        ),
        encoded("random-bytes", "random.bin", refused(bad, UNSUPPORTED), "2 KB of noise"),
        encoded("text-file", "text.txt", refused(bad, UNSUPPORTED), "a text file"),
        encoded("svg", "drawing.svg", refused(bad, UNSUPPORTED), "vector image: size unknown before rendering"),
        encoded("webp", "image.webp", refused(bad, UNSUPPORTED), "a real image in an unsupported format"),
        encoded("png-signature-only", "png_signature_only.png", refused(bad, "PNG", header), "8 bytes"),
        encoded("png-header-only", "png_header_only.png", refused(bad, "PNG", header), "IHDR but no IDAT"),
        encoded("png-truncated", "png_truncated_half.png", refused(bad, "PNG", "truncated"), "first half of a PNG"),
        encoded("png-corrupt-body", "png_corrupt_body.png", refused(bad, "PNG", corrupt), "valid IHDR, noise IDAT"),
        encoded("png-bad-crc", "png_bad_crc.png", refused(bad, "PNG", "truncated"), "one IDAT CRC byte flipped"),
        encoded("png-zero-size", "png_zero_size.png", refused(bad, "PNG"), "declares 0x0 pixels"),
        encoded(
            "png-bomb-50000x50000",
            "png_bomb_50000x50000.png",
            refused(big, "50000x50000", budget, "send a smaller image"),
            "decompression bomb: refused from the header, before any allocation",
        ),
        encoded("jpeg-soi-only", "jpeg_soi_only.jpg", refused(bad, "JPEG", header), "3 bytes"),
        encoded("jpeg-truncated", "jpeg_truncated_half.jpg", refused(bad, "JPEG", corrupt), "first half of a JPEG"),
        encoded("jpeg-no-end-marker", "jpeg_no_end_marker.jpg", refused(bad, "JPEG", corrupt), "EOI missing"),
        encoded("jpeg-corrupt-tables", "jpeg_corrupt_tables.jpg", refused(bad, "JPEG"), "valid SOI/APP0, noise after"),
        encoded(
            "jpeg-corrupt-scan",
            "jpeg_corrupt_scan.jpg",
            ok(size, None),
            "defined behaviour: all headers valid, noise in the entropy-coded scan. libjpeg (and training's"
            " Pillow) decode it to garbage pixels with only a warning; nothing can tell it from an odd image",
        ),
        encoded(
            "jpeg-bomb", "jpeg_bomb_60000x60000.jpg", refused(big, "60000x60000", budget), "SOF0 declares 3.6 G px"
        ),
        encoded(
            "tiff-bomb", "tiff_bomb_60000x60000.tiff", refused(big, "60000x60000", budget), "IFD declares 3.6 G px"
        ),
        encoded("gif-bomb", "gif_bomb_60000x60000.gif", refused(big, "60000x60000", budget), "screen of 3.6 G px"),
        encoded("bmp-bomb", "bmp_bomb_60000x60000.bmp", refused(big, "60000x60000", budget), "header of 3.6 G px"),
        encoded("tiff-header-only", "tiff_header_only.tiff", refused(bad, "TIFF", header), "8 bytes"),
        encoded("tiff-float32", "tiff_float32.tiff", refused(bad, "float32", "8- or 16-bit"), "float samples"),
        encoded("gif-truncated", "gif_truncated.gif", refused(bad, "GIF"), "first third of a GIF"),
        encoded("bmp-truncated", "bmp_truncated.bmp", refused(bad, "BMP", corrupt), "first half of a BMP"),
        # ---- encoded images that must be accepted, decoded as training decodes them
        encoded("rgb-png", ref, ok(size, ref), "the reference"),
        encoded("one-pixel", "one_pixel.png", ok((1, 1), None), "1x1"),
        encoded("wide-3x100000", "wide_3x100000.png", ok((3, 100_000), None), "3 rows of 100000"),
        encoded("tall-100000x3", "tall_100000x3.png", ok((100_000, 3), None), "100000 rows of 3"),
        encoded("grey-png", "grey8.png", ok(size, grey_ref), "grey is replicated to RGB"),
        encoded("grey-alpha-png", "grey_alpha.png", ok(size, grey_ref), "alpha dropped, not composited"),
        encoded("rgba-png", "rgba_half_transparent.png", ok(size, ref), "alpha 0 on every other column: dropped"),
        encoded("palette-png", "palette.png", ok(size, "ref_palette_as_rgb.png"), "palette expanded"),
        encoded("rgb16-png", "rgb16.png", ok(size, ref), "16-bit RGB keeps the high byte, as Pillow"),
        encoded("grey16-png", "grey16.png", ok(size, "ref_grey16_as_rgb.png"), "16-bit grey clipped, as Pillow"),
        encoded("grey-alpha16-png", "grey_alpha16.png", ok(size, grey_ref), "16-bit LA keeps the high byte"),
        encoded("bmp", "rgb.bmp", ok(size, ref), "BMP"),
        encoded("tiff", "rgb.tiff", ok(size, ref), "uncompressed TIFF"),
        encoded("tiff-lzw", "rgb_lzw.tiff", ok(size, ref), "LZW TIFF"),
        encoded("multipage-tiff", "multipage.tiff", ok(size, ref), "defined behaviour: the first page"),
        encoded("animated-gif", "animated.gif", ok(size, "ref_gif_first_frame.png"), "the first frame"),
        encoded("jpeg", "rgb.jpg", ok(size, None), "baseline JPEG"),
        encoded("grey-jpeg", "grey.jpg", ok(size, None), "grey JPEG"),
        encoded("cmyk-jpeg", "cmyk.jpg", ok(size, None), "CMYK JPEG, converted by libjpeg"),
        encoded("exif-rotated-jpeg", "exif_rotated.jpg", ok(size, None), "orientation tag ignored: size as stored"),
        # ---- raw buffers
        raw("raw-rgb", {"file": "ref_rgb.raw"}, (HEIGHT, WIDTH, 3), ok(size, ref), "raw RGB"),
        raw("raw-bgr", {"file": "ref_bgr.raw", "order": "BGR"}, (HEIGHT, WIDTH, 3), ok(size, ref), "raw BGR"),
        raw("raw-grey", {"file": "ref_grey.raw"}, (HEIGHT, WIDTH, 1), ok(size, grey_ref), "raw grey"),
        raw("raw-rgba", {"file": "ref_rgba.raw"}, (HEIGHT, WIDTH, 4), ok(size, ref), "raw RGBA"),
        raw("raw-one-pixel", {"fill": 3}, (1, 1, 3), ok((1, 1), None), "raw 1x1"),
        raw(
            "raw-one-byte-short",
            {"file": "ref_rgb.raw", "trim": 1},
            (HEIGHT, WIDTH, 3),
            refused(bad, "9,215 bytes", "needs exactly 9,216", "height*width*channels"),
            "size disagrees with the declared shape",
        ),
        raw(
            "raw-shape-too-small",
            {"file": "ref_rgb.raw"},
            (10, 10, 3),
            refused(bad, "9,216 bytes", "needs exactly 300"),
            "more bytes than the shape holds",
        ),
        raw("raw-empty-data", {"fill": 0}, (4, 4, 3), refused(bad, "has 0 bytes", "needs exactly 48"), "no bytes"),
        raw("raw-two-channels", {"fill": 32}, (4, 4, 2), refused(bad, "1, 3 or 4 channels"), "2 channels"),
        raw("raw-zero-channels", {"fill": 0}, (4, 4, 0), refused(bad, "1, 3 or 4 channels"), "channels unset"),
        raw("raw-zero-size", {"fill": 0}, (0, 0, 3), refused(bad, "at least 1", "0x0"), "0x0"),
        raw("raw-over-budget", {"fill": 16}, (100_000, 100_000, 3), refused(big, budget), "10 G px declared"),
        # ---- request fields
        encoded("threshold-nan", ref, refused(bad, "threshold", "[0, 1]", "nan"), "NaN")
        | {"request": {"threshold": "nan"}},
        encoded("threshold-inf", ref, refused(bad, "threshold", "[0, 1]"), "infinity")
        | {"request": {"threshold": "inf"}},
        encoded("threshold-negative", ref, refused(bad, "threshold", "[0, 1]", "-0.1"), "negative")
        | {"request": {"threshold": -0.1}},
        encoded("threshold-above-one", ref, refused(bad, "threshold", "[0, 1]", "1.5"), "> 1")
        | {"request": {"threshold": 1.5}},
        encoded("threshold-one", ref, ok(size, ref, is_anomalous=False), "nothing is above 1")
        | {"request": {"threshold": 1.0}},
        encoded("threshold-zero", ref, ok(size, ref), "boundary accepted") | {"request": {"threshold": 0.0}},
        encoded("unknown-model", ref, refused("NOT_FOUND", "'no-such-model'", "is not served", "served models"), "typo")
        | {"request": {"model": "no-such-model"}},
        encoded("unknown-version", ref, refused("NOT_FOUND", "no loaded version 99", "loaded: [1]"), "version 99")
        | {"request": {"version": 99}},
        encoded("empty-model-several-served", ref, refused(bad, "several models are served", "name one"), "")
        | {"request": {"model": ""}},
        {
            "id": "no-image",
            "why": "image field unset",
            "input": {"kind": "none"},
            "expect": refused(bad, "no image", "image.encoded, image.raw or image.path"),
        },
        {
            "id": "message-over-size-limit",
            "why": "3 MB message; the test server allows 2 MB (refused by gRPC before the servicer)",
            "input": {"kind": "oversize", "bytes": 3_000_000},
            "expect": refused(big, "larger than max"),
        },
        # ---- path inputs (the test creates the files in a temporary image root)
        path("path-good", "good.png", copy_ref, ok(size, ref), "plain relative path"),
        path("path-absolute-inside", "{root}/good.png", copy_ref, ok(size, ref), "absolute, inside the root"),
        path("path-dot-dot", "../outside/secret.png", [], refused("PERMISSION_DENIED", "outside the image root"), ".."),
        path(
            "path-dot-dot-hidden",
            "sub/../../outside/secret.png",
            [{"create": "dir", "name": "sub"}],
            refused("PERMISSION_DENIED", "outside the image root"),
            ".. after a real folder",
        ),
        path(
            "path-absolute-outside",
            "{outside}/secret.png",
            [],
            refused("PERMISSION_DENIED", "outside the image root"),
            "absolute path to an existing file outside the root",
        ),
        path("path-etc-passwd", "/etc/passwd", [], refused("PERMISSION_DENIED", "outside the image root"), "classic"),
        path(
            "path-symlink-out",
            "escape.png",
            [{"create": "symlink", "name": "escape.png", "target": "{outside}/secret.png"}],
            refused("PERMISSION_DENIED", "'escape.png' is outside the image root") | {"absent": ["secret", "outside/"]},
            "a link leading out (the message must not name the target)",
        ),
        path(
            "path-symlink-inside",
            "link.png",
            [*copy_ref, {"create": "symlink", "name": "link.png", "target": "good.png"}],
            ok(size, ref),
            "a link staying inside is followed",
        ),
        path(
            "path-symlink-broken",
            "dangling.png",
            [{"create": "symlink", "name": "dangling.png", "target": "missing.png"}],
            refused("NOT_FOUND", "there is no file 'dangling.png'"),
            "link to nothing",
        ),
        path(
            "path-symlink-loop",
            "loop_a",
            [
                {"create": "symlink", "name": "loop_a", "target": "loop_b"},
                {"create": "symlink", "name": "loop_b", "target": "loop_a"},
            ],
            refused(bad, "symlink loop"),
            "two links pointing at each other",
        ),
        path(
            "path-missing",
            "missing.png",
            [],
            refused("NOT_FOUND", "there is no file 'missing.png'", "check the path"),
            "",
        ),
        path(
            "path-directory",
            "a_folder.png",
            [{"create": "dir", "name": "a_folder.png"}],
            refused(bad, "is a directory", "send the path of an image file"),
            "a folder named like an image",
        ),
        path("path-root-itself", ".", [], refused(bad, "is a directory"), "the image root"),
        path(
            "path-fifo",
            "pipe.png",
            [{"create": "fifo", "name": "pipe.png"}],
            refused(bad, "not a regular file"),
            "a FIFO: refused without opening it, so the request never blocks",
        ),
        path("path-device", "/dev/zero", [], refused("PERMISSION_DENIED", "outside the image root"), "device"),
        path(
            "path-parent-is-a-file",
            "good.png/inner.png",
            copy_ref,
            refused("NOT_FOUND", "there is no file 'good.png/inner.png'"),
            "a path through a regular file (ENOTDIR)",
        ),
        path(
            "path-unreadable",
            "locked.png",
            [{"create": "unreadable", "name": "locked.png", "from": ref}],
            refused("PERMISSION_DENIED", "not allowed to read 'locked.png'", "permissions"),
            "mode 000: refused for an ordinary user; root ignores permission bits, so a server running as root"
            " reads it (expect_as_root), as any root process would",
            expect_as_root=ok(size, ref),
        ),
        path(
            "path-over-file-limit",
            "huge.png",
            [{"create": "big", "name": "huge.png", "bytes": 1_500_000}],
            refused(big, "'huge.png' has 1,500,000 bytes", "limit of 1,000,000"),
            "the test server reads at most 1,000,000 bytes per file",
        ),
        path(
            "path-empty-file",
            "empty.png",
            [{"create": "big", "name": "empty.png", "bytes": 0}],
            refused(bad, "empty"),
            "",
        ),
        path(
            "path-not-an-image",
            "notes.png",
            [{"create": "file", "name": "notes.png", "from": "text.txt"}],
            refused(bad, UNSUPPORTED),
            "",
        ),
        path("path-empty", "", [], refused(bad, "image path is empty"), "empty string"),
        path("path-nul", "good.png\u0000.txt", copy_ref, refused(bad, "NUL character"), "NUL inside the path"),
        path(
            "path-space",
            "with space.png",
            [{"create": "file", "name": "with space.png", "from": ref}],
            ok(size, ref),
            "",
        ),
        path(
            "path-unicode",
            "Prüfteil 画像 ✓.png",
            [{"create": "file", "name": "Prüfteil 画像 ✓.png", "from": ref}],
            ok(size, ref),
            "",
        ),
        path(
            "path-newline",
            "new\nline.png",
            [{"create": "file", "name": "new\nline.png", "from": ref}],
            ok(size, ref),
            "",
        ),
        path(
            "path-shell-characters",
            "-rf $(id) 'q' \"d\";|&.png",
            [{"create": "file", "name": "-rf $(id) 'q' \"d\";|&.png", "from": ref}],
            ok(size, ref),
            "shell metacharacters are just characters",
        ),
        path(
            "path-percent-dots", "%2e%2e/x.png", [], refused("NOT_FOUND", "%2e%2e/x.png"), "URL encoding is not decoded"
        ),
        path(
            "path-backslash-dots",
            "..\\outside.png",
            [],
            refused("NOT_FOUND", "there is no file"),
            "a backslash is a plain character on POSIX",
        ),
    ]
    return cases


def manifest_text() -> str:
    """The manifest as committed in ``cases.json``."""
    return json.dumps({"cases": build_cases()}, indent=1, ensure_ascii=False) + "\n"


def write_files(inputs: Path) -> None:
    """Write every corpus file into ``inputs``."""
    inputs.mkdir(parents=True, exist_ok=True)
    for name, data in build_files().items():
        (inputs / name).write_bytes(data)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Rewrite cases.json; with --inputs, also write the input files.")
    parser.add_argument("--inputs", type=Path, help="folder to write the input files into")
    args = parser.parse_args()
    MANIFEST.write_text(manifest_text(), encoding="utf-8")
    if args.inputs is not None:
        write_files(args.inputs)
