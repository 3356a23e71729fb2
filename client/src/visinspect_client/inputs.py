"""What ``detect`` accepts as an image, and how each kind becomes an ``ImageInput`` message.

Local problems (an unsupported type, an unreadable file, a wrong array shape or dtype) raise
:class:`InvalidImageError` here, before any call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_client.errors import InvalidImageError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage


@dataclass(frozen=True)
class ServerPath:
    """A file path the *server* resolves under its configured image root (a shared drop folder, a Domino
    dataset volume). Nothing is read locally."""

    path: str

    def __post_init__(self) -> None:
        if not isinstance(self.path, str | os.PathLike) or not str(self.path):
            raise InvalidImageError("ServerPath needs a non-empty path relative to the server's image root")
        object.__setattr__(self, "path", os.fspath(self.path))

    def __str__(self) -> str:
        return self.path


ImageLike: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray | PILImage | ServerPath"
"""A local file path, encoded file bytes, an HxW / HxWxC uint8 RGB(A) array, a PIL image, or a ServerPath."""

_CHANNELS = (1, 3, 4)


def image_input(image: ImageLike) -> pb.ImageInput:
    """Build the ``ImageInput`` for an image (see :data:`ImageLike`)."""
    if isinstance(image, ServerPath):
        return pb.ImageInput(path=image.path)
    if isinstance(image, str | os.PathLike):
        return pb.ImageInput(encoded=read_local_file(image))
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
        if not data:
            raise InvalidImageError("the image bytes are empty; pass the contents of an image file")
        return pb.ImageInput(encoded=data)
    if isinstance(image, np.ndarray):
        return pb.ImageInput(raw=raw_image(image))
    if _is_pil_image(image):
        return pb.ImageInput(raw=raw_image(pil_to_rgb_array(image)))
    raise InvalidImageError(
        f"unsupported image type {type(image).__name__}; pass a file path, encoded bytes, a uint8 numpy array "
        "(HxW grey or HxWx3/4 RGB), a PIL image or ServerPath('relative/path.png')"
    )


def raw_image(array: np.ndarray) -> pb.RawImage:
    """An HxW or HxWxC (C in 1, 3, 4) uint8 RGB(A) array as a RawImage; alpha and grey are converted by the server.

    The pixels are copied once into the message (protobuf needs ``bytes``); a non-contiguous view is made
    contiguous first.
    """
    check_array(array)
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    data = array.tobytes()  # C order; one copy whether or not the array is contiguous
    return pb.RawImage(data=data, height=height, width=width, channels=channels, channel_order=pb.CHANNEL_ORDER_RGB)


def check_array(array: np.ndarray) -> None:
    """Raise :class:`InvalidImageError` unless ``array`` is a non-empty uint8 HxW or HxWxC image with C in 1, 3, 4."""
    if array.dtype != np.uint8:
        raise InvalidImageError(
            f"image arrays must be uint8, got {array.dtype}; convert first (for example "
            "(a * 255).round().astype(np.uint8) for floats in [0, 1], or a >> 8 for 16-bit)"
        )
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in _CHANNELS):
        raise InvalidImageError(
            f"image arrays must be HxW (grey) or HxWxC with C in 1, 3 or 4 (RGB order), got shape {array.shape}"
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise InvalidImageError(f"the image array is empty (shape {array.shape})")


def read_local_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a local image file, or :class:`InvalidImageError` saying why it cannot be read."""
    location = Path(path)
    try:
        data = location.read_bytes()
    except FileNotFoundError as exc:
        raise InvalidImageError(
            f"the local image file {str(location)!r} does not exist; check the path "
            "(for a file on the server, pass ServerPath(...))"
        ) from exc
    except IsADirectoryError as exc:
        raise InvalidImageError(f"{str(location)!r} is a directory; pass the path of an image file") from exc
    except OSError as exc:
        raise InvalidImageError(f"cannot read the local image file {str(location)!r}: {exc.strerror}") from exc
    if not data:
        raise InvalidImageError(f"the local image file {str(location)!r} is empty")
    return data


def describe(image: object) -> str:
    """A short label for an image in messages and reports: the path, or the kind and size."""
    if isinstance(image, ServerPath):
        return f"server:{image.path}"
    if isinstance(image, str | os.PathLike):
        return str(os.fspath(image))
    if isinstance(image, bytes | bytearray | memoryview):
        return f"<{len(image)} bytes>"
    if isinstance(image, np.ndarray):
        return f"<array {'x'.join(map(str, image.shape))} {image.dtype}>"
    if _is_pil_image(image):
        pil: Any = image
        return f"<PIL {pil.mode} {pil.width}x{pil.height}>"
    return f"<{type(image).__name__}>"


def pil_to_rgb_array(image: Any) -> np.ndarray:
    """A PIL image as an HxWx3 uint8 RGB array (alpha dropped, grey and palettes expanded)."""
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def _is_pil_image(image: object) -> bool:
    # Checked without importing Pillow: it is an optional dependency.
    return any(cls.__module__ == "PIL.Image" and cls.__name__ == "Image" for cls in type(image).__mro__)
