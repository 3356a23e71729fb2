"""Pure conversions between the gRPC messages and the pipeline's domain objects."""

from __future__ import annotations

from visinspect_api.calibration import ScoreSample
from visinspect_api.detection import DetectOptions
from visinspect_api.model_repository import ModelMetadata
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_server.errors import InvalidInputError
from visinspect_server.pipeline import Detection, EncodedImage, ImagePath, ImageSource, RawPixels
from visinspect_server.registry import Loaded


def detect_request(request: pb.DetectRequest) -> tuple[ImageSource, DetectOptions]:
    """Read a DetectRequest into the pipeline's input and options."""
    kind = request.image.WhichOneof("source")
    source: ImageSource
    if kind == "encoded":
        source = EncodedImage(request.image.encoded)
    elif kind == "raw":
        raw = request.image.raw
        bgr = raw.channel_order == pb.CHANNEL_ORDER_BGR
        source = RawPixels(data=raw.data, height=raw.height, width=raw.width, channels=raw.channels, bgr=bgr)
    elif kind == "path":
        source = ImagePath(request.image.path)
    else:
        raise InvalidInputError("the request has no image: set image.encoded, image.raw or image.path")
    extras = request.extras
    options = DetectOptions(
        model=request.model,
        version=request.model_version,
        threshold=request.threshold if request.HasField("threshold") else None,
        anomaly_map=extras.anomaly_map,
        mask=extras.mask,
        regions=extras.regions,
        map_size="original" if extras.map_size == pb.MAP_SIZE_ORIGINAL else "model",
    )
    return source, options


def detect_response(detection: Detection, request_id: str) -> pb.DetectResponse:
    """Build the DetectResponse for a detection."""
    verdict = detection.verdict
    timing = detection.timing
    return pb.DetectResponse(
        request_id=request_id,
        is_anomalous=verdict.is_anomalous,
        score=verdict.score,
        confidence=verdict.confidence,
        raw_score=verdict.raw_score,
        threshold=verdict.threshold,
        model=detection.model,
        model_version=detection.version,
        anomaly_map_png=detection.anomaly_map_png,
        mask_png=detection.mask_png,
        regions=[
            pb.Region(
                box=pb.BoundingBox(x=r.x, y=r.y, width=r.width, height=r.height),
                area=r.area,
                peak_score=r.peak_score,
                mean_score=r.mean_score,
            )
            for r in detection.regions
        ],
        timing=pb.Timing(
            decode_ms=timing.decode_ms,
            preprocess_ms=timing.preprocess_ms,
            inference_ms=timing.inference_ms,
            postprocess_ms=timing.postprocess_ms,
            total_ms=timing.total_ms,
        ),
        image_width=detection.image_width,
        image_height=detection.image_height,
    )


def list_models_response(loaded: Loaded) -> pb.ListModelsResponse:
    """The served models with their loaded versions."""
    return pb.ListModelsResponse(
        models=[
            pb.ModelVersions(name=name, versions=sorted(versions), default_version=max(versions))
            for name, versions in sorted(loaded.items())
        ]
    )


def model_description(metadata: ModelMetadata, version: int) -> pb.ModelDescription:
    """Everything a caller may want to know about one model version."""
    c = metadata.calibration
    contract = metadata.input
    description = pb.ModelDescription(
        name=metadata.model_name,
        version=version,
        architecture=metadata.architecture,
        input=pb.InputSpec(
            height=contract.height,
            width=contract.width,
            layout=contract.layout,
            dtype=contract.dtype,
            color_order=contract.color_order,
            interpolation=contract.interpolation,
        ),
        calibration=pb.CalibrationSpec(
            image_threshold=c.image_threshold,
            pixel_threshold=c.pixel_threshold,
            image_min=c.image_min,
            image_max=c.image_max,
            pixel_min=c.pixel_min,
            pixel_max=c.pixel_max,
            source=c.source,
            overlaps_test=c.overlaps_test,
            method=c.method,
            target_false_reject_rate=c.target_false_reject_rate,
            good_scores=_distribution(c.good_scores),
            defect_scores=_distribution(c.defect_scores),
            warnings=list(c.warnings),
        ),
        default_threshold=0.5,
        backbone=metadata.backbone.name,
        layers=list(metadata.backbone.layers),
        n_features=metadata.backbone.n_features,
        weights=metadata.backbone.weights,
        inference_precision=metadata.inference_precision,
        ir_precision=metadata.ir_precision,
        dataset=metadata.dataset.name,
        created_at=metadata.created_at,
        parameters=metadata.parameters,
    )
    evaluation = metadata.evaluation
    if evaluation is not None:
        metrics = pb.EvaluationMetrics(
            num_images=evaluation.num_images,
            num_anomalous=evaluation.num_anomalous,
            inference_precision=evaluation.inference_precision,
            notes=list(evaluation.notes),
            recall_by_defect_type=[
                pb.DefectTypeRecall(name=name, caught=found.caught, total=found.total)
                for name, found in evaluation.recall_by_defect_type.items()
            ],
        )
        optional = {
            "image_auroc": evaluation.image_auroc,
            "image_f1": evaluation.image_f1,
            "pixel_auroc": evaluation.pixel_auroc,
            "max_rel_score_diff_vs_torch": evaluation.max_rel_score_diff_vs_torch,
            "false_reject_rate": evaluation.false_reject_rate,
            "defect_recall": evaluation.defect_recall,
            "pixel_aupro": evaluation.pixel_aupro,
        }
        for name, value in optional.items():
            if value is not None:
                setattr(metrics, name, value)
        description.evaluation.CopyFrom(metrics)
    return description


def _distribution(sample: ScoreSample | None) -> pb.ScoreDistribution | None:
    return None if sample is None else pb.ScoreDistribution(count=sample.count, values=sample.values)
