"""Pure conversions between the SDK's values and the visinspect.v1 messages: request building and
response parsing, shared by the blocking and the asyncio clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict, cast

from visinspect_api import detection
from visinspect_api.calibration import ScoreSample
from visinspect_api.detection import MapSize, Region, Timing
from visinspect_api.model_repository import (
    ArchitectureName,
    Calibration,
    DefectTypeRecall,
    InferencePrecision,
    IrPrecision,
    ThresholdMethod,
    WeightsSource,
)
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_client import overlay
from visinspect_client.inputs import ImageLike, image_input
from visinspect_client.results import DetectionResult, ModelDetails, ModelInfo

SERVICE = pb.DESCRIPTOR.services_by_name["InspectionService"].full_name  # "visinspect.v1.InspectionService"

_MAP_SIZES = {"model": pb.MAP_SIZE_MODEL, "original": pb.MAP_SIZE_ORIGINAL}


@dataclass(frozen=True)
class DetectOptions(detection.DetectOptions):
    """Per-call choices of ``detect`` (everything but the image, the request id and the timeout)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.anomaly_map or self.mask:
            overlay.pillow()  # fail before the call when the PNGs could not be decoded


def detect_request(image: ImageLike, options: DetectOptions, request_id: str = "") -> pb.DetectRequest:
    """The DetectRequest for one image (raises InvalidImageError for local input problems)."""
    request = pb.DetectRequest(
        request_id=request_id,
        model=options.model,
        model_version=options.version,
        image=image_input(image),
        extras=pb.Extras(
            anomaly_map=options.anomaly_map,
            mask=options.mask,
            regions=options.regions,
            map_size=_MAP_SIZES[options.map_size],
        ),
    )
    if options.threshold is not None:
        request.threshold = float(options.threshold)
    return request


def detection_result(response: pb.DetectResponse, latency_ms: float = 0.0) -> DetectionResult:
    """A DetectResponse as a DetectionResult (heat map and mask PNGs decoded when present)."""
    timing = response.timing
    anomaly_map = overlay.decode_png(response.anomaly_map_png, "RGB") if response.anomaly_map_png else None
    mask = None
    if response.mask_png:
        mask = overlay.decode_png(response.mask_png, "L") > 127
        mask.setflags(write=False)
    return DetectionResult(
        request_id=response.request_id,
        is_anomalous=response.is_anomalous,
        score=response.score,
        confidence=response.confidence,
        raw_score=response.raw_score,
        threshold=response.threshold,
        model=response.model,
        version=response.model_version,
        regions=tuple(
            Region(
                x=r.box.x,
                y=r.box.y,
                width=r.box.width,
                height=r.box.height,
                area=r.area,
                peak_score=r.peak_score,
                mean_score=r.mean_score,
            )
            for r in response.regions
        ),
        image_width=response.image_width,
        image_height=response.image_height,
        timing=Timing(
            decode_ms=timing.decode_ms,
            preprocess_ms=timing.preprocess_ms,
            inference_ms=timing.inference_ms,
            postprocess_ms=timing.postprocess_ms,
            total_ms=timing.total_ms,
        ),
        anomaly_map=anomaly_map,
        mask=mask,
        latency_ms=latency_ms,
    )


def model_infos(response: pb.ListModelsResponse) -> list[ModelInfo]:
    """The served models."""
    return [
        ModelInfo(name=m.name, versions=tuple(m.versions), default_version=m.default_version) for m in response.models
    ]


def model_details(description: pb.ModelDescription) -> ModelDetails:
    """A ModelDescription as ModelDetails (fields an older server does not send become None or the F1 method)."""
    evaluation = description.evaluation if description.HasField("evaluation") else None

    def metric(name: str) -> float | None:
        return getattr(evaluation, name) if evaluation is not None and evaluation.HasField(name) else None

    return ModelDetails(
        name=description.name,
        version=description.version,
        architecture=cast(ArchitectureName, description.architecture),
        input_height=description.input.height,
        input_width=description.input.width,
        calibration=calibration(description.calibration),
        default_threshold=description.default_threshold,
        backbone=description.backbone,
        layers=tuple(description.layers),
        n_features=description.n_features,
        weights=cast(WeightsSource, description.weights),
        inference_precision=cast(InferencePrecision, description.inference_precision),
        ir_precision=cast(IrPrecision, description.ir_precision),
        dataset=description.dataset,
        created_at=description.created_at,
        parameters=dict(sorted(description.parameters.items())),
        image_auroc=metric("image_auroc"),
        image_f1=metric("image_f1"),
        pixel_auroc=metric("pixel_auroc"),
        evaluated_images=evaluation.num_images if evaluation is not None else None,
        evaluation_notes=tuple(evaluation.notes) if evaluation is not None else (),
        false_reject_rate=metric("false_reject_rate"),
        defect_recall=metric("defect_recall"),
        pixel_aupro=metric("pixel_aupro"),
        recall_by_defect_type={
            r.name: DefectTypeRecall(caught=r.caught, total=r.total)
            for r in (evaluation.recall_by_defect_type if evaluation is not None else ())
        },
    )


def calibration(spec: pb.CalibrationSpec) -> Calibration:
    """A CalibrationSpec as the contract's Calibration (an empty method, from an older server, means F1)."""
    return Calibration(
        image_threshold=spec.image_threshold,
        pixel_threshold=spec.pixel_threshold,
        image_min=spec.image_min,
        image_max=spec.image_max,
        pixel_min=spec.pixel_min,
        pixel_max=spec.pixel_max,
        source=spec.source,
        overlaps_test=spec.overlaps_test,
        method=cast(ThresholdMethod, spec.method or "f1"),
        target_false_reject_rate=spec.target_false_reject_rate if spec.HasField("target_false_reject_rate") else None,
        good_scores=score_sample(spec, "good_scores"),
        defect_scores=score_sample(spec, "defect_scores"),
        warnings=tuple(spec.warnings),
    )


def score_sample(spec: pb.CalibrationSpec, name: str) -> ScoreSample | None:
    """One of the spec's score distributions; None when absent or empty."""
    if not spec.HasField(name):
        return None
    distribution: pb.ScoreDistribution = getattr(spec, name)
    if distribution.count == 0:
        return None
    return ScoreSample(count=distribution.count, values=tuple(distribution.values))


class DetectKwargs(TypedDict, total=False):
    """The keyword options ``detect_many`` and ``stream`` pass on to every request (see ``detect``)."""

    model: str
    version: int
    threshold: float | None
    anomaly_map: bool
    mask: bool
    regions: bool
    map_size: MapSize
    request_id: str
    timeout: float | None


def split_options(kwargs: DetectKwargs) -> tuple[DetectOptions, str, float | None]:
    """(options, request id prefix, timeout) from ``detect_many``/``stream`` keywords; TypeError for unknown ones."""
    values: dict[str, Any] = dict(kwargs)
    request_id = str(values.pop("request_id", ""))
    timeout: float | None = values.pop("timeout", None)
    unknown = set(values) - set(DetectOptions.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unexpected detect option(s): {', '.join(sorted(unknown))}")
    return DetectOptions(**values), request_id, timeout
