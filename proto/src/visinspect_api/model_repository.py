"""The model repository contract: folder layout and the metadata stored beside each IR version.

Layout (OpenVINO Model Server's)::

    <repository>/config.json                  OVMS model_config_list (generated)
    <repository>/<model>/<version>/model.xml  OpenVINO IR, raw outputs
    <repository>/<model>/<version>/model.bin
    <repository>/<model>/<version>/visinspect-metadata.json

Versions are positive integers. OVMS only reads ``.xml``/``.bin`` files, so the metadata file
rides along without affecting it. The metadata is validated field by field when read; an
invalid file raises :class:`MetadataError` naming the offending field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from visinspect_api.calibration import (
    ScoreSample,
    defect_recall,
    expected_false_reject_rate,
    normalize_score,
    raw_from_normalized,
    smallest_resolvable_rate,
    threshold_for_false_reject_rate,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

SCHEMA_VERSION = 3
# 1: F1 thresholds only, no score distributions; 2: thresholds by false-reject rate, calibration score
# distributions; 3: ``architecture`` may be "patchcore", and ``parameters`` holds the family's numeric parameters.
READABLE_SCHEMA_VERSIONS = (1, 2, 3)
METADATA_FILENAME = "visinspect-metadata.json"
IR_XML_FILENAME = "model.xml"
IR_BIN_FILENAME = "model.bin"
OVMS_CONFIG_FILENAME = "config.json"
STAGING_DIRNAME = ".staging"

# The OpenVINO release that exports the IR and the OVMS image that serves it, stated once. An IR reads in an
# OpenVINO at least as new as the one that wrote it (a newer writer may use opsets an older OVMS lacks), so
# training pins exactly this release, the embedded server needs at least it, and OVMS runs the image built
# on it. docker-compose.yml, deploy/kubernetes, training's and server's pyproject.toml and the Makefile's
# stand-in environment state the same pair: tests/unit/test_deployment_files.py checks that they agree.
OPENVINO_RELEASE = "2026.4.1"
OVMS_IMAGE = f"openvino/model_server:{OPENVINO_RELEASE}"

ArchitectureName = Literal["padim", "patchcore"]
InferencePrecision = Literal["f32", "bf16", "f16"]
IrPrecision = Literal["FP32", "FP16"]
WeightsSource = Literal["builtin", "hub", "file", "random"]
DatasetKind = Literal["mvtec", "folder", "synthetic"]
Interpolation = Literal["area", "bilinear"]
ThresholdMethod = Literal["false_reject_rate", "f1"]

_Schema = TypeVar("_Schema", bound="DataclassInstance")  # a dataclass of the metadata schema

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class MetadataError(ValueError):
    """A metadata file is missing, unreadable or does not follow the schema."""


@dataclass(frozen=True)
class InputContract:
    """What the IR's single input takes: a batch of resized 8-bit RGB images, channels last."""

    name: str
    height: int
    width: int
    layout: Literal["NHWC"] = "NHWC"
    dtype: Literal["uint8"] = "uint8"
    value_range: tuple[float, float] = (0.0, 255.0)
    color_order: Literal["RGB"] = "RGB"
    interpolation: Interpolation = "area"


@dataclass(frozen=True)
class OutputContract:
    """Names of the IR's raw (un-normalised) outputs."""

    anomaly_map: str = "anomaly_map"  # float32 [N, 1, H, W], same H, W as the input
    # float32 [N], the raw image score: the anomaly map's maximum (PaDiM; PatchCore by default), or PatchCore's
    # re-weighted patch distance as anomalib computes it (parameters["reweighted_score"] == 1)
    pred_score: str = "pred_score"


@dataclass(frozen=True)
class ExpectedRates:
    """What to expect at one threshold: the false-reject rate on good parts, the recall of defects."""

    threshold: float  # normalised
    false_reject_rate: float | None  # None without good calibration scores (version 1 metadata)
    defect_recall: float | None  # None without labelled defective calibration images


@dataclass(frozen=True)
class Calibration:
    """How raw scores become verdicts, and the calibration scores that vouch for the thresholds.

    A raw score s normalises to ``clamp((s - threshold) / (max - min) + 0.5, 0, 1)``, so the
    calibrated threshold is 0.5 on the normalised scale. ``method`` says what set the threshold:
    ``false_reject_rate`` (the score at ``target_false_reject_rate`` on good images, each scored by a
    model that did not fit it; see :mod:`visinspect_api.calibration`) or ``f1`` (anomalib's
    F1-adaptive threshold on a labelled validation split). ``good_scores`` and ``defect_scores`` are raw
    image scores of the calibration images; they let a client compute the rates to expect at any
    threshold.
    """

    image_threshold: float
    pixel_threshold: float
    image_min: float
    image_max: float
    pixel_min: float
    pixel_max: float
    source: str
    overlaps_test: bool
    method: ThresholdMethod = "f1"
    target_false_reject_rate: float | None = None
    good_scores: ScoreSample | None = None
    defect_scores: ScoreSample | None = None
    warnings: tuple[str, ...] = ()

    @property
    def smallest_resolvable_rate(self) -> float | None:
        """The lowest false-reject rate the good calibration images can vouch for: ``1 / (n + 1)``."""
        return None if self.good_scores is None else smallest_resolvable_rate(self.good_scores.count)

    def normalized(self, raw_score: float) -> float:
        """A raw image score on the normalised scale."""
        return normalize_score(raw_score, self.image_threshold, self.image_min, self.image_max)

    def expected_rates(self, threshold: float = 0.5) -> ExpectedRates:
        """The false-reject rate and defect recall to expect at a normalised ``threshold`` in [0, 1]."""
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        raw = self._raw(threshold)
        return ExpectedRates(
            threshold=threshold,
            false_reject_rate=None if self.good_scores is None else expected_false_reject_rate(self.good_scores, raw),
            defect_recall=None if self.defect_scores is None else defect_recall(self.defect_scores, raw),
        )

    def _raw(self, normalized: float) -> float:
        return raw_from_normalized(normalized, self.image_threshold, self.image_min, self.image_max)

    def threshold_for_false_reject_rate(self, rate: float) -> float:
        """The normalised threshold (for a request's ``threshold``) at which ``rate`` good parts are rejected.

        Raises ValueError when the metadata has no good calibration scores (version 1) or when the
        threshold lies beyond the normalised scale.
        """
        if self.good_scores is None:
            raise ValueError(
                "this model version has no good calibration scores (exported before thresholds by false-reject "
                "rate): export it again to choose a threshold by rate"
            )
        raw = threshold_for_false_reject_rate(self.good_scores, rate)
        value_range = self.image_max - self.image_min
        normalized = 0.5 if value_range == 0 else (raw - self.image_threshold) / value_range + 0.5
        # Round up until the threshold maps back to at least ``raw``: a good score equal to it stays accepted.
        while value_range and self._raw(normalized) < raw and normalized < 1.0:
            normalized = math.nextafter(normalized, 2.0)
        if not 0.0 <= normalized <= 1.0:
            raise ValueError(f"the threshold for a false-reject rate of {rate:g} lies outside the normalised scale")
        return normalized


@dataclass(frozen=True)
class Backbone:
    """The feature extractor and how its weights were obtained."""

    name: str
    layers: tuple[str, ...]
    n_features: int
    weights: WeightsSource
    weights_sha256: str | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """Where the model was trained and calibrated."""

    kind: DatasetKind
    name: str
    location: str
    category: str | None
    val_split: str
    seed: int
    counts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DefectTypeRecall:
    """Defective test images of one type, and how many scored above the calibrated threshold."""

    caught: int
    total: int


@dataclass(frozen=True)
class Evaluation:
    """Metrics of the exported IR run with OpenVINO at ``inference_precision``.

    A metric is null where it is undefined: AUROC without both classes, pixel AUROC and AUPRO (to a
    false-positive rate of 0.3) without masks, score differences without the torch model to compare
    with. ``false_reject_rate`` and ``defect_recall`` are measured at the calibrated threshold.
    """

    split: str
    num_images: int
    num_anomalous: int
    image_auroc: float | None
    image_f1: float | None
    pixel_auroc: float | None
    max_abs_score_diff_vs_torch: float | None
    max_rel_score_diff_vs_torch: float | None
    inference_precision: InferencePrecision
    notes: tuple[str, ...] = ()
    false_reject_rate: float | None = None
    defect_recall: float | None = None
    good_rejected: int | None = None
    defects_caught: int | None = None
    recall_by_defect_type: Mapping[str, DefectTypeRecall] = field(default_factory=dict)
    pixel_aupro: float | None = None


@dataclass(frozen=True)
class ModelMetadata:
    """Everything the server needs besides the IR itself, for one model version.

    ``parameters`` are the architecture's numeric parameters, by name (PaDiM: ``n_features``; PatchCore:
    ``coreset_ratio``, ``num_neighbors``, ``reweighted_score`` (1: anomalib's re-weighted distance is the image
    score; 0: the map's maximum is; absent from earlier exports, which used the re-weighted distance),
    ``memory_bank_size``, ``embedding_dim``; both: ``tiles`` per side of the input, 1 when untiled, absent
    from earlier exports); empty before schema 3.
    """

    model_name: str
    created_at: str
    input: InputContract
    outputs: OutputContract
    calibration: Calibration
    backbone: Backbone
    dataset: DatasetInfo
    inference_precision: InferencePrecision
    ir_precision: IrPrecision
    ir_bin_sha256: str
    software: Mapping[str, str]
    evaluation: Evaluation | None = None
    architecture: ArchitectureName = "padim"
    parameters: Mapping[str, float] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        """Serialise to indented JSON."""
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        """Parse and validate JSON text; raise :class:`MetadataError` on any violation."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"metadata is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise MetadataError("metadata must be a JSON object")
        version = data.get("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS:
            readable = ", ".join(map(str, READABLE_SCHEMA_VERSIONS))
            raise MetadataError(f"unsupported schema_version {version!r} (this build reads {readable})")
        metadata = _build(cls, data, "")
        _check_semantics(metadata)
        return metadata


def read_metadata(version_dir: Path) -> ModelMetadata:
    """Read and validate the metadata of one version folder."""
    path = version_dir / METADATA_FILENAME
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MetadataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return ModelMetadata.from_json(text)
    except MetadataError as exc:
        raise MetadataError(f"{path}: {exc}") from exc


def write_metadata(version_dir: Path, metadata: ModelMetadata) -> Path:
    """Validate and write the metadata file into ``version_dir``."""
    _check_semantics(metadata)
    path = version_dir / METADATA_FILENAME
    path.write_text(metadata.to_json(), encoding="utf-8")
    return path


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (``ir_bin_sha256`` and weights digests)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def list_versions(model_dir: Path) -> list[int]:
    """Published versions of a model, ascending (folders named by a positive integer)."""
    if not model_dir.is_dir():
        return []
    return sorted(
        int(entry.name)
        for entry in model_dir.iterdir()
        if entry.is_dir() and entry.name.isdecimal() and int(entry.name) > 0
    )


def list_models(repository: Path) -> list[str]:
    """Model folders of a repository (hidden folders such as the staging area excluded)."""
    if not repository.is_dir():
        return []
    return sorted(e.name for e in repository.iterdir() if e.is_dir() and not e.name.startswith("."))


def is_valid_model_name(name: str) -> bool:
    """Model names are folder names and OVMS model names: letters, digits, ``_.-``, at most 64."""
    return bool(_MODEL_NAME.match(name))


def _check_semantics(metadata: ModelMetadata) -> None:
    if not is_valid_model_name(metadata.model_name):
        raise MetadataError(f"model_name {metadata.model_name!r} is not a valid model name")
    if metadata.input.height < 1 or metadata.input.width < 1:
        raise MetadataError("input.height and input.width must be positive")
    calibration = metadata.calibration
    for name in ("image_threshold", "pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max"):
        if not math.isfinite(getattr(calibration, name)):
            raise MetadataError(f"calibration.{name} must be a finite number")
    if calibration.image_min > calibration.image_max or calibration.pixel_min > calibration.pixel_max:
        raise MetadataError("calibration min must not exceed max")
    rate = calibration.target_false_reject_rate
    if rate is not None and not 0.0 < rate < 1.0:
        raise MetadataError("calibration.target_false_reject_rate must be between 0 and 1")
    if calibration.method == "false_reject_rate" and (rate is None or calibration.good_scores is None):
        raise MetadataError("a false_reject_rate calibration needs target_false_reject_rate and good_scores")
    if metadata.backbone.n_features < 1 or not metadata.backbone.layers:
        raise MetadataError("backbone needs at least one layer and n_features >= 1")
    _check_parameters(metadata.parameters)
    digests = {"ir_bin_sha256": metadata.ir_bin_sha256, "backbone.weights_sha256": metadata.backbone.weights_sha256}
    for name, digest in digests.items():
        if digest is not None and not _SHA256.match(digest):
            raise MetadataError(f"{name} must be 64 lowercase hex digits")


def _check_parameters(parameters: Mapping[str, float]) -> None:
    for name, value in parameters.items():
        if not name:
            raise MetadataError("parameters must not have an empty name")
        if not math.isfinite(value):
            raise MetadataError(f"parameters.{name} must be a finite number")


def _build(cls: type[_Schema], data: Mapping[str, Any], where: str) -> _Schema:
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise MetadataError(f"unknown field {where}{unknown[0]}")
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        path = f"{where}{spec.name}"
        if spec.name not in data:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise MetadataError(f"missing field {path}")
            continue
        values[spec.name] = _convert(hints[spec.name], data[spec.name], path)
    try:
        return cls(**values)
    except ValueError as exc:  # a type's own invariant (ScoreSample)
        raise MetadataError(f"{where.rstrip('.') or 'metadata'}: {exc}") from exc


def _convert(hint: Any, value: Any, path: str) -> Any:  # noqa: PLR0911 - one branch per JSON type
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _convert(inner, value, path)
    if origin is Literal:
        if value not in get_args(hint):
            raise MetadataError(f"{path} must be one of {list(get_args(hint))}, got {value!r}")
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise MetadataError(f"{path} must be an object")
        return _build(hint, value, f"{path}.")
    if origin is tuple:
        if not isinstance(value, list):
            raise MetadataError(f"{path} must be a list")
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], item, f"{path}[{i}]") for i, item in enumerate(value))
        if len(value) != len(args):
            raise MetadataError(f"{path} must have {len(args)} items")
        return tuple(_convert(arg, item, f"{path}[{i}]") for i, (arg, item) in enumerate(zip(args, value, strict=True)))
    if origin is Mapping:
        if not isinstance(value, dict):
            raise MetadataError(f"{path} must be an object")
        _, value_type = get_args(hint)
        return {str(k): _convert(value_type, v, f"{path}.{k}") for k, v in value.items()}
    return _scalar(hint, value, path)


def _scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise MetadataError(f"{path} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MetadataError(f"{path} must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MetadataError(f"{path} must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise MetadataError(f"{path} must be a string")
        return value
    raise TypeError(f"unsupported schema type {hint!r} at {path}")
