"""A detection's options and what it returns besides its verdict, as both the server and the client hold them
(the API's ``DetectRequest`` choices, ``Region`` and ``Timing`` messages as plain values)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

MapSize = Literal["model", "original"]  # the heat map's and mask's size: the model's input or the image's
MAP_SIZES: tuple[MapSize, ...] = get_args(MapSize)


@dataclass(frozen=True)
class DetectOptions:
    """Per-request choices: the model (name and version, 0 for the newest), a threshold on the normalised scale
    (None: the calibrated 0.5), and the extras asked for."""

    model: str = ""
    version: int = 0
    threshold: float | None = None
    anomaly_map: bool = False
    mask: bool = False
    regions: bool = False
    map_size: MapSize = "model"

    def __post_init__(self) -> None:
        if self.map_size not in MAP_SIZES:
            raise ValueError(f"map_size must be 'model' or 'original', got {self.map_size!r}")
        if self.version < 0:
            raise ValueError(f"version must be 0 (the newest) or a positive version number, got {self.version}")

    @property
    def any_extras(self) -> bool:
        """Whether a heat map, mask or regions are asked for (else the response is the verdict alone)."""
        return self.anomaly_map or self.mask or self.regions


@dataclass(frozen=True)
class Region:
    """One connected defect region: its box and area in original-image pixels, normalised pixel scores."""

    x: int
    y: int
    width: int
    height: int
    area: int
    peak_score: float
    mean_score: float


@dataclass(frozen=True)
class Timing:
    """Server-side time per stage, in milliseconds."""

    decode_ms: float
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float
    total_ms: float
