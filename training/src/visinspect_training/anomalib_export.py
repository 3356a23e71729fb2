"""anomalib's own OpenVINO export of a run, for comparisons: the graph anomalib bakes its
normalisation into, run by anomalib's ``OpenVINOInferencer``. Our export keeps raw outputs instead."""

from __future__ import annotations

from pathlib import Path

import torch
from anomalib.models.components import AnomalibModule

from visinspect_api.model_repository import Calibration
from visinspect_training.errors import TrainingError
from visinspect_training.train import TrainedRun, build_module, post_processor


def anomalib_module(run: TrainedRun, calibration: Calibration | None = None) -> AnomalibModule:
    """The run as anomalib's Lightning module, its post-processor holding ``calibration`` (default: the run's F1)."""
    module = build_module(run.config, pre_trained=False)
    module.model.load_state_dict(run.model.state_dict())
    post = post_processor(module)
    c = calibration or run.f1_calibration
    if c is None:
        raise TrainingError("no calibration for anomalib's post-processor: the run had no labelled validation split")
    for buffer, value in (
        (post._image_threshold, c.image_threshold),
        (post._pixel_threshold, c.pixel_threshold),
        (post.image_min, c.image_min),
        (post.image_max, c.image_max),
        (post.pixel_min, c.pixel_min),
        (post.pixel_max, c.pixel_max),
    ):
        buffer.copy_(torch.tensor(value))
    return module.eval()


def export_with_anomalib(run: TrainedRun, folder: Path, calibration: Calibration | None = None) -> Path:
    """anomalib's ``to_openvino`` at the run's input size (FP32) with ``calibration`` baked in; return the ``.xml``."""
    size = (run.config.image_size, run.config.image_size)
    return Path(anomalib_module(run, calibration).to_openvino(export_root=folder, input_size=size))
