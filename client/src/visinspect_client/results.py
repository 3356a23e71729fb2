"""What the SDK returns: immutable dataclasses, free of gRPC types."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from visinspect_api.detection import Region, Timing
from visinspect_api.model_repository import (
    ArchitectureName,
    Calibration,
    DefectTypeRecall,
    ExpectedRates,
    InferencePrecision,
    IrPrecision,
    WeightsSource,
)
from visinspect_client import overlay as _overlay
from visinspect_client.errors import VisInspectError

if TYPE_CHECKING:
    from visinspect_client.inputs import ImageLike


@dataclass(frozen=True)
class DetectionResult:
    """One image's verdict.

    ``score`` is normalised to [0, 1] with 0.5 at the model's calibrated threshold; ``confidence`` is in
    [0.5, 1]. ``anomaly_map`` (HxWx3 uint8 RGB jet heat map) and ``mask`` (HxW bool) are present only when
    requested, at the model's or the original size (``map_size``); ``regions`` are in original-image pixels,
    largest first. ``latency_ms`` is the round trip measured by the client.
    """

    request_id: str
    is_anomalous: bool
    score: float
    confidence: float
    raw_score: float
    threshold: float
    model: str
    version: int
    regions: tuple[Region, ...]
    image_width: int
    image_height: int
    timing: Timing
    anomaly_map: np.ndarray | None = field(default=None, repr=False, compare=False)
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    latency_ms: float = field(default=0.0, compare=False)

    @property
    def verdict(self) -> str:
        """``"anomalous"`` or ``"normal"``."""
        return "anomalous" if self.is_anomalous else "normal"

    def overlay(self, image: ImageLike, alpha: float = 0.45) -> np.ndarray:
        """The heat map blended on ``image`` at the image's size, region boxes outlined (HxWx3 uint8 RGB).

        Needs a result requested with ``anomaly_map=True`` (and ``regions=True`` for the boxes) and the
        ``images`` extra. ``image`` is the picture that was scored: a local path, bytes, an array or a PIL image.
        """
        if self.anomaly_map is None:
            raise ValueError("this result has no anomaly map: call detect(..., anomaly_map=True) to draw overlays")
        rgb = _overlay.load_rgb(image)
        return _overlay.render(rgb, self.anomaly_map, self.regions, (self.image_height, self.image_width), alpha)

    def save_overlay(self, image: ImageLike, path: str | os.PathLike[str], alpha: float = 0.45) -> None:
        """Write :meth:`overlay` as a PNG file."""
        _overlay.save_png(self.overlay(image, alpha), path)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the fields but the arrays (``has_anomaly_map``, ``has_mask`` tell if present)."""
        data = {name: value for name, value in asdict_shallow(self).items() if name not in ("anomaly_map", "mask")}
        data["regions"] = [asdict(region) for region in self.regions]
        data["timing"] = asdict(self.timing)
        data["verdict"] = self.verdict
        data["has_anomaly_map"] = self.anomaly_map is not None
        data["has_mask"] = self.mask is not None
        return data


@dataclass(frozen=True)
class DetectionFailure:
    """An image of a batch or stream that could not be scored; the others still were."""

    index: int
    image_label: str
    error: VisInspectError

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict: index, label, status name and message."""
        return {
            "index": self.index,
            "image_label": self.image_label,
            "code": self.error.code.name,
            "error": str(self.error),
        }


@dataclass(frozen=True)
class ModelInfo:
    """A served model: its loaded versions (ascending) and the one used when a request names none."""

    name: str
    versions: tuple[int, ...]
    default_version: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {"name": self.name, "versions": list(self.versions), "default_version": self.default_version}


@dataclass(frozen=True)
class ModelDetails:
    """One model version: architecture, input contract, calibration, backbone, evaluation metrics (None when absent).

    ``architecture`` is ``"padim"`` or ``"patchcore"``; ``parameters`` are its numeric parameters by name (for
    example ``n_features``, or ``coreset_ratio`` and ``num_neighbors``), empty for models exported before version 3
    metadata or described by an older server. ``calibration`` is the contract's
    :class:`~visinspect_api.model_repository.Calibration`: its good and defect score distributions answer
    :meth:`expected_rates` and :meth:`threshold_for_false_reject_rate`. The evaluation metrics were measured on
    the test split at the calibrated threshold; ``recall_by_defect_type`` maps a defect type to the test images
    caught and their number.
    """

    name: str
    version: int
    architecture: ArchitectureName
    input_height: int
    input_width: int
    calibration: Calibration
    default_threshold: float
    backbone: str
    layers: tuple[str, ...]
    n_features: int
    weights: WeightsSource
    inference_precision: InferencePrecision
    ir_precision: IrPrecision
    dataset: str
    created_at: str
    image_auroc: float | None = None
    image_f1: float | None = None
    pixel_auroc: float | None = None
    evaluated_images: int | None = None
    evaluation_notes: tuple[str, ...] = ()
    false_reject_rate: float | None = None
    defect_recall: float | None = None
    pixel_aupro: float | None = None
    recall_by_defect_type: Mapping[str, DefectTypeRecall] = field(default_factory=dict, hash=False)
    parameters: Mapping[str, float] = field(default_factory=dict, hash=False)

    def expected_rates(self, threshold: float | None = None) -> ExpectedRates:
        """The false-reject rate and defect recall to expect at a normalised ``threshold`` (None: the default).

        A rate is None when the calibration has no such scores (models exported before version 2 metadata).
        Raises ValueError for a threshold outside [0, 1].
        """
        chosen = self.default_threshold if threshold is None else threshold
        try:
            return self.calibration.expected_rates(chosen)
        except ValueError as exc:
            raise ValueError(f"{self._label}: {exc}") from exc

    def threshold_for_false_reject_rate(self, rate: float) -> float:
        """The normalised threshold (a request's ``threshold``) at which ``rate`` of the good parts are expected
        to be rejected.

        Raises ValueError when ``rate`` is not in (0, 1), when the model has no good calibration scores
        (exported before version 2 metadata), or when the threshold lies beyond the normalised scale.
        """
        try:
            return self.calibration.threshold_for_false_reject_rate(rate)
        except ValueError as exc:
            raise ValueError(f"{self._label}: {exc}") from exc

    @property
    def _label(self) -> str:
        return f"model {self.name} version {self.version}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (score distributions as ``{"count", "values"}``, tuples as lists)."""
        return {name: _json_ready(value) for name, value in asdict(self).items()}


def asdict_shallow(instance: object) -> dict[str, Any]:
    """A dataclass's fields without recursing or copying arrays (``dataclasses.asdict`` deep-copies them)."""
    return {name: getattr(instance, name) for name in instance.__dataclass_fields__}  # type: ignore[attr-defined]


def _json_ready(value: Any) -> Any:
    """``dataclasses.asdict`` output with tuples turned into lists, recursively."""
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    return value
