"""Export a training run as a new, evaluated version in the model repository."""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from visinspect_api.model_repository import (
    IR_BIN_FILENAME,
    IR_XML_FILENAME,
    OPENVINO_RELEASE,
    OVMS_IMAGE,
    Backbone,
    DatasetInfo,
    Evaluation,
    InferencePrecision,
    IrPrecision,
    ModelMetadata,
    file_sha256,
    write_metadata,
)
from visinspect_api.ovms_config import PERFORMANCE_HINTS
from visinspect_training import ir
from visinspect_training.calibrate import ServedModel, ThresholdOptions, calibrate
from visinspect_training.data import build_datamodule
from visinspect_training.defaults import INFERENCE_PRECISIONS, IR_PRECISIONS
from visinspect_training.errors import ConfigError
from visinspect_training.evaluate import TestPredictions, anomalib_reference, evaluate_test_split
from visinspect_training.families import scoring_batch_size
from visinspect_training.repository import (
    check_model_precision,
    publish,
    staging_folder,
    write_ovms_config,
)
from visinspect_training.train import TrainedRun

log = logging.getLogger(__name__)

_INT8_REFUSAL = (
    "INT8 export is not supported: for PaDiM, anomalib's INT8 post-training quantisation also quantises "
    "the Gaussian (Mahalanobis) scoring, which collapses every score to zero; export FP32 (default) or FP16"
)


@dataclass(frozen=True)
class ExportOptions:
    """How to export: IR weight precision, the inference precision servers must use, thresholds, evaluation."""

    ir_precision: IrPrecision = "FP32"
    inference_precision: InferencePrecision = "f32"
    evaluate: bool = True
    performance_hint: str = "LATENCY"
    threshold: ThresholdOptions = field(default_factory=ThresholdOptions)

    def __post_init__(self) -> None:
        if self.ir_precision.upper() == "INT8":
            raise ConfigError(_INT8_REFUSAL)
        if self.ir_precision not in IR_PRECISIONS:
            raise ConfigError(f"IR precision must be one of {', '.join(IR_PRECISIONS)}, got {self.ir_precision!r}")
        if self.performance_hint not in PERFORMANCE_HINTS:
            hints = ", ".join(PERFORMANCE_HINTS)
            raise ConfigError(f"performance hint must be one of {hints}, got {self.performance_hint!r}")
        if self.inference_precision not in INFERENCE_PRECISIONS:
            raise ConfigError(
                f"inference precision must be one of {', '.join(INFERENCE_PRECISIONS)}, "
                f"got {self.inference_precision!r}"
            )


@dataclass(frozen=True)
class ExportResult:
    """The published version, and the test split's per-image predictions when it was evaluated."""

    version: int
    version_dir: Path
    metadata: ModelMetadata
    predictions: TestPredictions | None = None


def export_run(run: TrainedRun, repository: Path, options: ExportOptions | None = None) -> ExportResult:
    """Convert, calibrate, evaluate and atomically publish ``run`` as the model's next version.

    The thresholds come from good images scored at the serving precisions by models that did not fit
    them (``calibrate.py``).
    """
    options = options or ExportOptions()
    config = run.config
    check_model_precision(repository, config.model_name, options.inference_precision)
    _warn_unless_ovms_release()
    with staging_folder(repository, config.model_name) as staged:
        family = config.family
        model, input_contract, outputs = ir.convert(family.serving_graph(run.model, config), config.image_size)
        xml_path = staged / IR_XML_FILENAME
        ir.save(model, xml_path, options.ir_precision)
        precision = options.inference_precision
        compiled = ir.compile_ir(xml_path, precision)
        size = (config.image_size, config.image_size)
        data = build_datamodule(config.dataset, size, scoring_batch_size(run.model, config), config.num_workers)
        served = ServedModel(compiled, run.model, config, options.ir_precision, precision)
        calibration = calibrate(served, data, config.dataset, options.threshold, run.f1_calibration)
        for warning in calibration.warnings:
            log.info("%s", warning)
        evaluation: Evaluation | None = None
        predictions: TestPredictions | None = None
        if options.evaluate:
            evaluation, predictions = evaluate_test_split(
                compiled,
                data,
                calibration,
                precision,
                anomalib_reference(run.model, config),
            )
        metadata = ModelMetadata(
            model_name=config.model_name,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            input=input_contract,
            outputs=outputs,
            calibration=calibration,
            backbone=Backbone(
                name=config.backbone,
                layers=config.layers,
                n_features=family.feature_dimensions(run.model, config),
                weights=config.weights.source,
                weights_sha256=run.weights_sha256,
            ),
            dataset=DatasetInfo(
                kind=config.dataset.kind,
                name=config.dataset.display_name,
                location=config.dataset.location,
                category=config.dataset.category,
                val_split=config.dataset.val_split,
                seed=config.dataset.seed,
                counts=run.counts,
            ),
            inference_precision=options.inference_precision,
            ir_precision=options.ir_precision,
            ir_bin_sha256=file_sha256(staged / IR_BIN_FILENAME),
            software=_software_versions(),
            evaluation=evaluation,
            architecture=family.name,
            parameters={**family.parameters(run.model, config), "tiles": float(config.tiles)},
        )
        write_metadata(staged, metadata)
        version = publish(staged, repository / config.model_name)
    write_ovms_config(repository, {config.model_name: options.performance_hint})
    log.info("published %s version %d", config.model_name, version)
    return ExportResult(
        version=version,
        version_dir=repository / config.model_name / str(version),
        metadata=metadata,
        predictions=predictions,
    )


def _warn_unless_ovms_release() -> None:
    installed = importlib.metadata.version("openvino")
    if installed != OPENVINO_RELEASE:
        log.warning(
            "exporting with OpenVINO %s, but %s is built on %s: an IR written by a newer OpenVINO may use opsets "
            "that OVMS cannot read (the embedded server reads it); install openvino==%s for OVMS",
            installed, OVMS_IMAGE, OPENVINO_RELEASE, OPENVINO_RELEASE,
        )  # fmt: skip


def _software_versions() -> dict[str, str]:
    names = ("anomalib", "openvino", "torch", "timm", "visinspect-training")
    return {name: importlib.metadata.version(name) for name in names}
