"""Image inputs (encoded bytes, raw pixels, files under the image root) as HxWx3 uint8 RGB arrays.

Decoding policy, the same for every request path:

* Formats: PNG, JPEG, BMP, TIFF and GIF, recognised by their signature. Anything else is refused,
  because its size could not be checked before decoding.
* Pixel budget: Pillow reads only the header (no pixel data) and the declared width x height is
  checked against ``max_pixels`` before anything is decoded. Pillow's header readers are called
  directly, so Pillow's own decompression-bomb limit (a warning past ~89 M pixels, an error past
  ~179 M) does not replace ours.
* Decoding is OpenCV's (``IMREAD_UNCHANGED``, then one ``cvtColor``), except two cases Pillow decodes
  so that pixels match what training (Pillow) sees: TIFFs with alpha, because OpenCV's libtiff RGBA
  path premultiplies unassociated alpha, and GIF, because OpenCV (4.11+; older builds cannot read GIF
  at all) paints transparent pixels with the background colour instead of their palette colour.
* Multi-frame files (animated GIF, multi-page TIFF): only the first frame or page is used.
* Damaged files are refused when the decoder reports an error (bad headers or tables, truncation, a
  PNG CRC mismatch). A JPEG whose headers are all valid but whose entropy-coded scan holds noise is
  decoded by libjpeg to garbage pixels with only a warning, and is accepted: nothing tells it from an
  odd image, and the model is the judge of odd images.
* 16-bit samples become 8-bit exactly as training's reader makes them (anomalib:
  ``Image.open(path).convert("RGB")``), so a model sees the same pixels at training and inference:

  - colour and grey+alpha (RGB, RGBA, LA): the high byte (``v >> 8``, i.e. ``floor(v / 256)``), as
    libpng's ``strip_16`` and Pillow's 16-bit readers do; not ``round(v / 257)`` (one level apart);
  - grey without alpha (Pillow mode ``I;16``): ``min(v, 255)``, because Pillow *clips* 16-bit grey to
    8 bits instead of scaling it. A grey image using the full 16-bit range therefore looks almost
    white, at training and here alike: convert such images to 8 bits before training and serving.
* Grey is replicated to RGB, palettes are expanded to their colours, alpha is dropped (never
  composited), CMYK JPEGs are converted to RGB by libjpeg.
* EXIF orientation is NOT applied: pixels are used in the order they are stored. Training reads
  images with Pillow's ``Image.open(...).convert("RGB")`` (anomalib), which ignores the tag too, so
  a rotated phone photo looks the same to the model at training and at inference.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Final

import cv2
import numpy as np
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
)

from visinspect_server.errors import (
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)

_SIGNATURES: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
)

# Pillow's per-format header readers, called directly: ``Image.open`` would also apply Pillow's
# global decompression-bomb limit (a warning, then an error) instead of our ``max_pixels``.
_HEADER_READERS: Final[dict[str, type[ImageFile.ImageFile]]] = {
    "PNG": PngImagePlugin.PngImageFile,
    "JPEG": JpegImagePlugin.JpegImageFile,
    "GIF": GifImagePlugin.GifImageFile,
    "TIFF": TiffImagePlugin.TiffImageFile,
    "BMP": BmpImagePlugin.BmpImageFile,
}

# OpenCV returns BGR(A) channel order; these turn each channel count into RGB, dropping alpha.
_TO_RGB: Final[dict[int, int]] = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}
_RAW_TO_RGB: Final[dict[tuple[int, bool], int]] = {
    (1, False): cv2.COLOR_GRAY2RGB,
    (1, True): cv2.COLOR_GRAY2RGB,
    (3, True): cv2.COLOR_BGR2RGB,
    (4, False): cv2.COLOR_RGBA2RGB,
    (4, True): cv2.COLOR_BGRA2RGB,
}

_ALPHA_MODES: Final[frozenset[str]] = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})

_SUPPORTED = "PNG, JPEG, BMP, TIFF or GIF"


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Encoded PNG/JPEG/BMP/TIFF (8 or 16 bit; grey, grey+alpha, RGB, RGBA, palette; CMYK JPEG) -> HxWx3 uint8 RGB.

    GIF is accepted too; multi-frame files give their first frame; EXIF orientation is not applied.
    The returned array is new and C-contiguous. Raises InvalidInputError for undecodable data and
    ResourceExhaustedError, before decoding, when the header declares more than ``max_pixels`` pixels.
    """
    if not data:
        raise InvalidInputError("cannot decode the image: it is empty; send the bytes of an image file")
    image_format = _sniff_format(data)
    width, height, mode = _read_header(data, image_format, max_pixels)
    _check_budget(width, height, max_pixels)
    if image_format == "GIF" or (image_format == "TIFF" and mode in _ALPHA_MODES):
        return _pillow_first_frame(data, image_format, max_pixels)  # see the module docstring
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        decoded = None
    if decoded is None:
        raise InvalidInputError(_corrupt(image_format))
    _check_budget(decoded.shape[1], decoded.shape[0], max_pixels)  # in case a decoder disagrees with its header
    return _to_rgb8(decoded)


def raw_image(  # noqa: PLR0917 - the pipeline passes the raw message fields in order
    data: bytes, height: int, width: int, channels: int, bgr: bool, max_pixels: int
) -> np.ndarray:
    """Raw interleaved 8-bit pixels (channels 1, 3 or 4; alpha ignored) -> HxWx3 uint8 RGB.

    ``bgr`` gives the channel order of 3- and 4-channel buffers. RGB input is returned as a
    zero-copy, read-only view of ``data``; every other layout is converted into a new array.
    """
    if channels not in (1, 3, 4):
        raise InvalidInputError(f"raw images must have 1, 3 or 4 channels, got {channels}; set channels accordingly")
    if height < 1 or width < 1:
        raise InvalidInputError(f"raw image width and height must be at least 1, got {width}x{height}")
    _check_budget(width, height, max_pixels)
    expected = height * width * channels
    if len(data) != expected:
        raise InvalidInputError(
            f"the raw buffer has {len(data):,} bytes but a {width}x{height} image with {channels} channel(s) "
            f"needs exactly {expected:,}; send height*width*channels bytes of 8-bit pixels"
        )
    pixels = np.frombuffer(data, np.uint8)
    if channels == 3 and not bgr:
        return pixels.reshape(height, width, 3)
    shape = (height, width) if channels == 1 else (height, width, channels)
    return cv2.cvtColor(pixels.reshape(shape), _RAW_TO_RGB[channels, bgr])


def resolve_path(root: Path | None, requested: str) -> Path:
    """Resolve a requested path under the image root, refusing escapes.

    Relative paths are taken from the root; absolute paths only if they lie inside it. Symlinks are
    resolved first, so ``..`` or a link that leads out of the root is refused. Returns the resolved
    path of an existing regular file.
    """
    if root is None:
        raise PermissionDeniedError("path inputs are disabled: start the server with an image root")
    if not requested:
        raise InvalidInputError("the image path is empty; send a path relative to the image root")
    if "\x00" in requested:
        raise InvalidInputError("the image path contains a NUL character; send a plain file path")
    shown = _shown(requested)
    base = root.resolve()
    try:
        target = (base / requested).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise InvalidInputError(
            f"the image path {shown} cannot be resolved (a symlink loop?); send the path of an image file"
        ) from exc
    if not target.is_relative_to(base):
        # Never name the resolved target: it would tell the caller about files outside the root.
        raise PermissionDeniedError(
            f"the image path {shown} is outside the image root; send a path inside the image root"
        )
    try:
        mode = target.stat().st_mode
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise NotFoundError(f"there is no file {shown} under the image root; check the path") from exc
    except PermissionError as exc:
        raise PermissionDeniedError(f"the server is not allowed to read {shown}; fix the file's permissions") from exc
    except OSError as exc:
        raise InvalidInputError(f"the image path {shown} cannot be read ({exc.strerror}); check it") from exc
    if stat.S_ISDIR(mode):
        raise InvalidInputError(f"{shown} is a directory; send the path of an image file")
    if not stat.S_ISREG(mode):
        raise InvalidInputError(f"{shown} is not a regular file; send the path of an image file")
    return target


def read_image_file(path: Path, max_bytes: int) -> bytes:
    """Read a whole image file of at most ``max_bytes`` bytes.

    Opened without blocking, so a FIFO or device is refused instead of hanging the request; the
    size limit is checked before reading and again after, in case the file grew in between.
    Messages name only the file's base name, never the server's directories.
    """
    name = path.name
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise NotFoundError(f"the image file {name!r} does not exist; check the path") from exc
    except PermissionError as exc:
        raise PermissionDeniedError(f"the server is not allowed to read {name!r}; fix the file's permissions") from exc
    except OSError as exc:
        raise InvalidInputError(f"the image file {name!r} cannot be opened ({exc.strerror}); check the path") from exc
    try:
        status = os.fstat(descriptor)
        if stat.S_ISDIR(status.st_mode):
            raise InvalidInputError(f"{name!r} is a directory; send the path of an image file")
        if not stat.S_ISREG(status.st_mode):
            raise InvalidInputError(f"{name!r} is not a regular file; send the path of an image file")
        if status.st_size > max_bytes:
            raise ResourceExhaustedError(_too_many_bytes(name, status.st_size, max_bytes))
        with open(descriptor, "rb", closefd=False) as file:
            data = file.read(status.st_size + 1)
    except OSError as exc:
        raise InvalidInputError(f"the image file {name!r} cannot be read ({exc.strerror}); check it") from exc
    finally:
        os.close(descriptor)
    if len(data) > max_bytes:
        raise ResourceExhaustedError(_too_many_bytes(name, len(data), max_bytes))
    return data


def resize_to_model(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv2.INTER_AREA resize (the model's input contract) to height x width, returning a C-contiguous uint8 HxWx3.

    No copy when the image already has that size (a read-only input stays read-only).
    """
    if image.shape[:2] == (height, width):
        return image if image.flags.c_contiguous else np.ascontiguousarray(image)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _sniff_format(data: bytes) -> str:
    for signature, image_format in _SIGNATURES:
        if data.startswith(signature):
            return image_format
    raise InvalidInputError(f"cannot decode the image: it is not a {_SUPPORTED} file; send one of those formats")


def _read_header(data: bytes, image_format: str, max_pixels: int) -> tuple[int, int, str]:
    """Width, height and Pillow mode from the header alone (Pillow parses lazily and reads no pixels)."""
    try:
        with _HEADER_READERS[image_format](io.BytesIO(data)) as header:
            return header.width, header.height, header.mode
    except Image.DecompressionBombError as exc:
        # Only GIF frames that overflow their canvas still reach Pillow's own check (> ~179 M pixels).
        raise ResourceExhaustedError(_bomb(max_pixels)) from exc
    except Exception as exc:  # any failure to parse untrusted bytes means "not a valid header"
        raise InvalidInputError(
            f"cannot decode the image: its {image_format} header is invalid or truncated; send a complete image file"
        ) from exc


def _check_budget(width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise InvalidInputError(
            f"cannot decode the image: it declares a size of {width}x{height} pixels; send a non-empty image"
        )
    if width * height > max_pixels:
        raise ResourceExhaustedError(
            f"the image is {width}x{height} = {width * height:,} pixels, over the server's budget of "
            f"{max_pixels:,}; send a smaller image"
        )


def _to_rgb8(decoded: np.ndarray) -> np.ndarray:
    """OpenCV's IMREAD_UNCHANGED result (1, 3 or 4 channels in BGR(A) order, 8 or 16 bit) -> RGB uint8.

    16-bit grey is clipped to 255, other 16-bit samples keep their high byte (see the module docstring).
    """
    if decoded.dtype == np.uint16 and decoded.ndim == 2:  # 16-bit grey: clipped, as Pillow does
        decoded = np.minimum(decoded, 255).astype(np.uint8)
    elif decoded.dtype == np.uint16:
        decoded = np.right_shift(decoded, 8, out=np.empty(decoded.shape, np.uint8), casting="unsafe")
    elif decoded.dtype != np.uint8:
        raise InvalidInputError(
            f"cannot decode the image: {decoded.dtype} samples are not supported; send 8- or 16-bit integer pixels"
        )
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    if channels not in _TO_RGB:
        raise InvalidInputError(f"cannot decode the image: it has {channels} channels; send grey, RGB or RGBA pixels")
    return cv2.cvtColor(decoded, _TO_RGB[channels])


def _pillow_first_frame(data: bytes, image_format: str, max_pixels: int) -> np.ndarray:
    """Decode the first frame with Pillow and drop any alpha (Pillow keeps the high byte of 16-bit RGBA)."""
    try:
        with _HEADER_READERS[image_format](io.BytesIO(data)) as image:
            return np.array(image.convert("RGB"))
    except Image.DecompressionBombError as exc:
        raise ResourceExhaustedError(_bomb(max_pixels)) from exc
    except Exception as exc:  # any decoder failure on untrusted bytes is bad input
        raise InvalidInputError(_corrupt(image_format)) from exc


def _corrupt(image_format: str) -> str:
    return f"cannot decode the image: the {image_format} data is corrupt or truncated; send a complete image file"


def _bomb(max_pixels: int) -> str:
    return f"the image is larger than the server's budget of {max_pixels:,} pixels; send a smaller image"


def _shown(requested: str) -> str:
    """The requested path as quoted in messages, cut short so a huge request does not make a huge message."""
    return repr(requested if len(requested) <= 200 else requested[:200] + "...")


def _too_many_bytes(name: str, size: int, max_bytes: int) -> str:
    return f"the image file {name!r} has {size:,} bytes, over the server's limit of {max_bytes:,}; send a smaller file"
