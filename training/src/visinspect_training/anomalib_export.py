"""anomalib's own OpenVINO export of a run, for comparisons: the graph anomalib bakes its
normalisation into, run by anomalib's ``OpenVINOInferencer``. Our export keeps raw outputs instead."""

from __future__ import annotations

from pathlib import Path

import torch
from anomalib.models import Padim

from visinspect_training.train import TrainedRun, _build_model


def anomalib_module(run: TrainedRun) -> Padim:
    """The run as anomalib's Lightning module, with the post-processor holding the run's calibration."""
    module = _build_model(run.config, pre_trained=False)
    module.model.load_state_dict(run.padim.state_dict())
    post = module.post_processor
    c = run.calibration
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


def export_with_anomalib(run: TrainedRun, folder: Path) -> Path:
    """``Padim.to_openvino`` at the run's input size (FP32); return the ``.xml`` path."""
    size = (run.config.image_size, run.config.image_size)
    return Path(anomalib_module(run).to_openvino(export_root=folder, input_size=size))
