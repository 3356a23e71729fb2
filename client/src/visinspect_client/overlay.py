"""Heat-map overlays and PNG decoding (Pillow + numpy; needs the ``images`` extra)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from visinspect_client.errors import InvalidImageError
from visinspect_client.inputs import ServerPath, check_array, pil_to_rgb_array, read_local_file

if TYPE_CHECKING:
    from visinspect_api.detection import Region
    from visinspect_client.inputs import ImageLike

BOX_COLOR: tuple[int, int, int] = (255, 0, 255)
"""Region outlines are magenta: a colour the jet heat map never uses."""


def pillow() -> ModuleType:
    """``PIL.Image``, or an ImportError saying which extra to install."""
    try:
        from PIL import Image  # noqa: PLC0415 - optional dependency, imported when needed
    except ImportError as exc:
        raise ImportError(
            "decoding anomaly maps and masks, PIL inputs and overlays need Pillow: "
            "pip install 'visinspect-client[images]'"
        ) from exc
    return Image


def decode_png(data: bytes, mode: str) -> np.ndarray:
    """Decode PNG bytes to a read-only uint8 array in Pillow ``mode`` ("RGB" → HxWx3, "L" → HxW)."""
    with pillow().open(io.BytesIO(data)) as image:
        array = np.asarray(image.convert(mode) if image.mode != mode else image.copy())
    array.setflags(write=False)
    return array


def load_rgb(image: ImageLike) -> np.ndarray:
    """Any local image (path, encoded bytes, array, PIL image) as an HxWx3 uint8 RGB array (alpha dropped)."""
    if isinstance(image, ServerPath):
        raise InvalidImageError(
            "an overlay needs the image's pixels: pass the local file, bytes or array, not ServerPath"
        )
    if isinstance(image, np.ndarray):
        check_array(image)
        if image.ndim == 2 or image.shape[2] == 1:
            return np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
        return image[..., :3]
    if isinstance(image, str | os.PathLike | bytes | bytearray | memoryview):
        data = read_local_file(image) if isinstance(image, str | os.PathLike) else bytes(image)
        try:
            with pillow().open(io.BytesIO(data)) as opened:
                return pil_to_rgb_array(opened)
        except (OSError, SyntaxError, ValueError) as exc:  # Pillow's ways of saying "not an image"
            raise InvalidImageError(f"cannot decode the image for the overlay: {exc}") from exc
    if hasattr(image, "convert") and hasattr(image, "mode"):
        return pil_to_rgb_array(image)
    raise InvalidImageError(f"cannot draw an overlay on a {type(image).__name__}; pass a path, bytes or an array")


def render(
    image: np.ndarray,
    heat_map: np.ndarray,
    regions: Sequence[Region],
    regions_size: tuple[int, int],
    alpha: float = 0.45,
) -> np.ndarray:
    """Blend ``heat_map`` over the HxWx3 RGB ``image`` (``(1 - alpha) * image + alpha * heat``, rounded) at the
    image's size, then outline each region in :data:`BOX_COLOR`.

    ``regions_size`` is the (height, width) the region boxes are expressed in (the original image's).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    height, width = image.shape[:2]
    if heat_map.shape[:2] != (height, width):
        resized = pillow().fromarray(np.ascontiguousarray(heat_map)).resize((width, height), resample=2)  # bilinear
        heat_map = np.asarray(resized)
    blended = image.astype(np.float32) * (1.0 - alpha) + heat_map.astype(np.float32) * alpha
    out = np.rint(blended).clip(0, 255).astype(np.uint8)
    scale_y = height / regions_size[0]
    scale_x = width / regions_size[1]
    thickness = max(1, round(max(height, width) / 256))
    for region in regions:
        _outline(out, region, scale_x, scale_y, thickness)
    return out


def save_png(array: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write an RGB (HxWx3) or grey (HxW) uint8 array as a PNG, creating parent folders."""
    target = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    pillow().fromarray(np.ascontiguousarray(array)).save(target, format="PNG")


def _outline(out: np.ndarray, region: Region, scale_x: float, scale_y: float, thickness: int) -> None:
    height, width = out.shape[:2]
    x0 = min(int(region.x * scale_x), width - 1)
    y0 = min(int(region.y * scale_y), height - 1)
    x1 = min(max(int(np.ceil((region.x + region.width) * scale_x)), x0 + 1), width)  # exclusive
    y1 = min(max(int(np.ceil((region.y + region.height) * scale_y)), y0 + 1), height)
    color = np.array(BOX_COLOR, dtype=np.uint8)
    t_y = min(thickness, y1 - y0)
    t_x = min(thickness, x1 - x0)
    out[y0 : y0 + t_y, x0:x1] = color
    out[y1 - t_y : y1, x0:x1] = color
    out[y0:y1, x0 : x0 + t_x] = color
    out[y0:y1, x1 - t_x : x1] = color
