"""Domino Model API entry point: score one image through the visual inspection facade.

Domino calls ``predict`` with the keys of the request's ``data`` object as keyword arguments and
returns its value as the response's ``result``::

    request   {"data": {"image": "/mnt/data/line-3/img_0042.png"}}
    call      predict(image="/mnt/data/line-3/img_0042.png")
    result    {"is_anomalous": true, "confidence": 0.93, "score": 0.93, "model": "bottle", "model_version": 3}

Optional keys: ``model`` (name; default VISINSPECT_MODEL) and ``threshold`` (normalised, in [0, 1]).
Relative image paths are taken under the image root. A path outside the root (``..``, an absolute path
elsewhere, a symlink leading out), a missing file or an undecodable image raises :class:`ScoringError`
with a message for the caller.

Environment, read once when Domino loads this file:
    VISINSPECT_SERVER      facade address, host:port           (default localhost:50051)
    VISINSPECT_IMAGE_ROOT  folder every image must be under    (default /mnt/data)
    VISINSPECT_MODEL       model name; empty = the only served (default empty)
    VISINSPECT_TIMEOUT_S   deadline per call, in seconds       (default 10)
"""

from __future__ import annotations

import os
from pathlib import Path

from visinspect_client import InspectionClient, VisInspectError

SERVER = os.environ.get("VISINSPECT_SERVER", "localhost:50051")
IMAGE_ROOT = Path(os.environ.get("VISINSPECT_IMAGE_ROOT", "/mnt/data")).resolve()
MODEL = os.environ.get("VISINSPECT_MODEL", "")
TIMEOUT_S = float(os.environ.get("VISINSPECT_TIMEOUT_S", "10"))

_client = InspectionClient(SERVER, timeout=TIMEOUT_S)


class ScoringError(ValueError):
    """The request cannot be scored; the message says why, for the caller."""


def predict(image: str, model: str | None = None, threshold: float | None = None) -> dict[str, object]:
    """Score the image at ``image`` (a path under the image root) and return the verdict as JSON-ready data."""
    data = _read_allowed(image)
    try:
        result = _client.detect(data, model=model or MODEL, threshold=threshold)
    except VisInspectError as exc:
        raise ScoringError(f"{image}: {exc}") from None
    return {
        "is_anomalous": result.is_anomalous,
        "confidence": result.confidence,
        "score": result.score,
        "model": result.model,
        "model_version": result.version,
    }


def _read_allowed(image: object) -> bytes:
    if not isinstance(image, str) or not image:
        raise ScoringError('\'image\' must be a non-empty path string, e.g. {"data": {"image": "line-3/img_0042.png"}}')
    requested = Path(image)
    resolved = (requested if requested.is_absolute() else IMAGE_ROOT / requested).resolve()
    if not resolved.is_relative_to(IMAGE_ROOT):
        raise ScoringError(f"{image} is outside the allowed image folder {IMAGE_ROOT}")
    if not resolved.is_file():
        raise ScoringError(f"{image} does not exist under {IMAGE_ROOT} (or is not a file)")
    try:
        return resolved.read_bytes()
    except OSError as exc:
        raise ScoringError(f"{image} cannot be read: {exc.strerror}") from None
