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
from typing import Any, Literal, get_args, get_origin, get_type_hints

SCHEMA_VERSION = 1
METADATA_FILENAME = "visinspect-metadata.json"
IR_XML_FILENAME = "model.xml"
IR_BIN_FILENAME = "model.bin"
OVMS_CONFIG_FILENAME = "config.json"
STAGING_DIRNAME = ".staging"

InferencePrecision = Literal["f32", "bf16", "f16"]
IrPrecision = Literal["FP32", "FP16"]
WeightsSource = Literal["builtin", "hub", "file", "random"]
DatasetKind = Literal["mvtec", "folder", "synthetic"]
Interpolation = Literal["area", "bilinear"]

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
    pred_score: str = "pred_score"  # float32 [N], the maximum of the anomaly map


@dataclass(frozen=True)
class Calibration:
    """Raw-score statistics from anomalib's post-processor, fitted on the validation split.

    A raw score s normalises to ``clamp((s - threshold) / (max - min) + 0.5, 0, 1)``.
    """

    image_threshold: float
    pixel_threshold: float
    image_min: float
    image_max: float
    pixel_min: float
    pixel_max: float
    source: str
    overlaps_test: bool


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
class Evaluation:
    """Metrics of the exported IR run with OpenVINO at ``inference_precision``.

    A metric is null where it is undefined: AUROC without both classes, pixel AUROC without masks,
    score differences without the torch model to compare with.
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


@dataclass(frozen=True)
class ModelMetadata:
    """Everything the server needs besides the IR itself, for one model version."""

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
    architecture: Literal["padim"] = "padim"
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
        if version != SCHEMA_VERSION:
            raise MetadataError(f"unsupported schema_version {version!r} (this build reads {SCHEMA_VERSION})")
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
    if metadata.backbone.n_features < 1 or not metadata.backbone.layers:
        raise MetadataError("backbone needs at least one layer and n_features >= 1")
    digests = {"ir_bin_sha256": metadata.ir_bin_sha256, "backbone.weights_sha256": metadata.backbone.weights_sha256}
    for name, digest in digests.items():
        if digest is not None and not _SHA256.match(digest):
            raise MetadataError(f"{name} must be 64 lowercase hex digits")


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
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
    return cls(**values)


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
    if dataclasses.is_dataclass(hint):
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
