"""The transport-free detection pipeline: decode → pre-process → backend → post-process."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
import typing
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from visinspect_api.detection import DetectOptions, Region, Timing
from visinspect_server import imaging, postprocess
from visinspect_server.backends.base import RawOutput
from visinspect_server.batching import Upstream
from visinspect_server.errors import InvalidInputError
from visinspect_server.observability import Metrics
from visinspect_server.registry import LoadedModel, ModelRegistry

T = TypeVar("T")


@dataclass(frozen=True)
class RawPixels:
    """An uncompressed 8-bit image as sent by the caller."""

    data: bytes
    height: int
    width: int
    channels: int
    bgr: bool = False


@dataclass(frozen=True)
class EncodedImage:
    """An image file's bytes (PNG, JPEG, BMP, TIFF, ...)."""

    data: bytes


@dataclass(frozen=True)
class ImagePath:
    """A path, relative to the image root, of an image file the server reads."""

    path: str


ImageSource = EncodedImage | RawPixels | ImagePath
"""Where a request's image comes from: exactly one kind, told apart by type."""


@dataclass(frozen=True)
class Detection:
    """The result of one detection."""

    model: str
    version: int
    verdict: postprocess.Verdict
    image_height: int
    image_width: int
    timing: Timing
    anomaly_map_png: bytes = b""
    mask_png: bytes = b""
    regions: tuple[Region, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class PipelineLimits:
    """Input limits enforced before any expensive work."""

    max_pixels: int
    max_file_bytes: int
    image_root: Path | None


class InspectionPipeline:
    """Runs detections; CPU-bound stages go to a thread pool so the event loop keeps serving."""

    def __init__(
        self,
        registry: ModelRegistry,
        executor: Executor,
        limits: PipelineLimits,
        upstream: Upstream | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._registry = registry
        self._executor = executor
        self._limits = limits
        self._upstream = upstream or Upstream()
        self._metrics = metrics

    async def detect(self, source: ImageSource, options: DetectOptions) -> Detection:
        """Score one image with the requested (or default) model version."""
        started = time.perf_counter()
        threshold = _check_threshold(options.threshold)
        model = self._registry.resolve(options.model, options.version)
        contract = model.metadata.input
        with self._upstream.coming():  # lets the batcher know another image is on its way
            prepared, resized = await self._run(self._prepare, source, contract.height, contract.width)
        batch, image_size, decoded = prepared
        output = await model.backend.infer(batch)
        inferred = time.perf_counter()
        if options.any_extras:
            detection, finished = await self._run(_postprocess, model, options, threshold, image_size, output)
        else:  # a verdict is a few float operations: not worth a thread hop
            detection = _postprocess(model, options, threshold, image_size, output)
            finished = time.perf_counter()
        timing = Timing(
            decode_ms=(decoded - started) * 1e3,
            preprocess_ms=(resized - decoded) * 1e3,
            inference_ms=(inferred - resized) * 1e3,
            postprocess_ms=(finished - inferred) * 1e3,
            total_ms=(finished - started) * 1e3,
        )
        detection = dataclasses.replace(detection, timing=timing)
        if self._metrics is not None:
            _record(self._metrics, detection)
        return detection

    async def _run(self, function: Callable[..., T], *args: object) -> tuple[T, float]:
        result = await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        return result, time.perf_counter()

    def _prepare(self, source: ImageSource, height: int, width: int) -> tuple[np.ndarray, tuple[int, int], float]:
        """Decode and resize in one worker hop: (the model's 1-image batch, original size, decode end time)."""
        image = self._decode(source)
        decoded = time.perf_counter()
        resized = imaging.resize_to_model(image, height, width)
        return resized[np.newaxis], (image.shape[0], image.shape[1]), decoded

    def _decode(self, source: ImageSource) -> np.ndarray:
        limits = self._limits
        match source:
            case EncodedImage(data):
                return imaging.decode_image(data, limits.max_pixels)
            case RawPixels(data, height, width, channels, bgr):
                return imaging.raw_image(data, height, width, channels, bgr, limits.max_pixels)
            case ImagePath(path):
                resolved = imaging.resolve_path(limits.image_root, path)
                return imaging.decode_image(imaging.read_image_file(resolved, limits.max_file_bytes), limits.max_pixels)
            case _:
                typing.assert_never(source)


def _record(metrics: Metrics, detection: Detection) -> None:
    """Stage times, the score and the verdict of a finished detection."""
    timing = detection.timing
    for stage, ms in (
        ("decode", timing.decode_ms),
        ("preprocess", timing.preprocess_ms),
        ("inference", timing.inference_ms),
        ("postprocess", timing.postprocess_ms),
    ):
        metrics.stage.labels(stage).observe(ms / 1e3)
    metrics.scores.labels(detection.model).observe(detection.verdict.score)
    if detection.verdict.is_anomalous:
        metrics.anomalies.labels(detection.model).inc()


def _check_threshold(threshold: float | None) -> float:
    if threshold is None:
        return 0.5
    if not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0:
        raise InvalidInputError(f"threshold must be a number in [0, 1] on the normalised scale, got {threshold}")
    return threshold


def _postprocess(
    model: LoadedModel,
    options: DetectOptions,
    threshold: float,
    image_size: tuple[int, int],
    output: RawOutput,
) -> Detection:
    raw_map = output.anomaly_maps[0]
    verdict = postprocess.verdict(float(output.scores[0]), model.calibration, threshold)
    heat_png = mask_png = b""
    regions: tuple[Region, ...] = ()
    if options.any_extras:
        pixel_map = postprocess.normalized_pixel_map(raw_map, model.calibration)
        size = image_size if options.map_size == "original" else None
        shown = pixel_map
        if size is not None and options.anomaly_map and options.mask:
            shown = postprocess.resize_map(pixel_map, size)  # once for both images
        if options.anomaly_map:
            heat_png = postprocess.heatmap_png(shown, size)
        if options.mask:
            mask_png = postprocess.mask_png(shown, threshold, size)
        if options.regions:
            regions = tuple(postprocess.find_regions(pixel_map, threshold, image_size))
    return Detection(
        model=model.name,
        version=model.version,
        verdict=verdict,
        image_height=image_size[0],
        image_width=image_size[1],
        timing=Timing(0.0, 0.0, 0.0, 0.0, 0.0),
        anomaly_map_png=heat_png,
        mask_png=mask_png,
        regions=regions,
    )
