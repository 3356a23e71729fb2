"""Evaluate an exported IR with OpenVINO on the test split, at the precision the server will use."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from anomalib.models.image.padim.torch_model import PadimModel
from scipy.stats import rankdata

from visinspect_api.model_repository import Calibration, Evaluation
from visinspect_training.data import build_datamodule
from visinspect_training.ir import AnomalibPadim, InferencePrecisionName, compile_ir, infer, torch_infer
from visinspect_training.train import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class _Collected:
    paths: list[str] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    all_maps: list[np.ndarray] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    torch_scores: list[np.ndarray] = field(default_factory=list)


@dataclass(frozen=True)
class SplitPredictions:
    """Per-image results of the IR on the test split (for plots and error analysis)."""

    paths: tuple[str, ...]
    labels: np.ndarray  # bool [N], True = anomalous
    raw_scores: np.ndarray  # float32 [N]
    scores: np.ndarray  # normalised [N], 0.5 at the calibrated threshold
    anomaly_maps: np.ndarray  # raw float32 [N, H, W]


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties averaged); None unless both classes occur."""
    positives = labels.astype(bool)
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def f1_score(predicted: np.ndarray, labels: np.ndarray) -> float | None:
    """F1 of the anomalous class; None when there is nothing anomalous to find."""
    truth = labels.astype(bool)
    if not truth.any():
        return None
    true_pos = int((predicted & truth).sum())
    denominator = int(predicted.sum()) + int(truth.sum())
    return 2.0 * true_pos / denominator


def evaluate_ir(
    xml_path: Path,
    config: TrainConfig,
    calibration: Calibration,
    precision: InferencePrecisionName,
    padim: PadimModel | None = None,
) -> Evaluation:
    """Score the test split with the IR; compare with the torch model on identical inputs when given."""
    return _summarise(_collect(xml_path, config, precision, padim), calibration, precision)


def predict_test_split(
    xml_path: Path, config: TrainConfig, calibration: Calibration, precision: InferencePrecisionName
) -> SplitPredictions:
    """Every test image's raw and normalised score and raw anomaly map, from the IR."""
    got = _collect(xml_path, config, precision, None, keep_maps=True)
    raw = np.concatenate(got.scores)
    value_range = calibration.image_max - calibration.image_min
    return SplitPredictions(
        paths=tuple(got.paths),
        labels=np.concatenate(got.labels),
        raw_scores=raw,
        scores=np.clip((raw - calibration.image_threshold) / value_range + 0.5, 0.0, 1.0),
        anomaly_maps=np.concatenate(got.all_maps),
    )


def _collect(
    xml_path: Path,
    config: TrainConfig,
    precision: InferencePrecisionName,
    padim: PadimModel | None,
    keep_maps: bool = False,
) -> _Collected:
    size = (config.image_size, config.image_size)
    datamodule = build_datamodule(config.dataset, size, config.batch_size, config.num_workers)
    compiled = compile_ir(xml_path, precision)
    wrapper = AnomalibPadim(padim) if padim is not None else None
    got = _Collected()
    for batch in datamodule.test_dataloader():
        images = _to_uint8_nhwc(batch.image)
        maps, scores = infer(compiled, images)
        got.paths.extend(str(path) for path in batch.image_path)
        got.scores.append(scores)
        got.labels.append(batch.gt_label.numpy().astype(bool))
        if keep_maps:
            got.all_maps.append(maps)
        if batch.gt_mask is not None:
            got.maps.append(maps)
            got.masks.append(batch.gt_mask.numpy().reshape(maps.shape).astype(bool))
        if wrapper is not None:
            got.torch_scores.append(torch_infer(wrapper, images))
    return got


def _to_uint8_nhwc(images: torch.Tensor) -> np.ndarray:
    pixels = images.permute(0, 2, 3, 1).mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return np.ascontiguousarray(pixels.numpy())


def _summarise(got: _Collected, calibration: Calibration, precision: InferencePrecisionName) -> Evaluation:
    scores = np.concatenate(got.scores)
    labels = np.concatenate(got.labels)
    pixel_auroc = None
    if got.masks:
        masks = np.concatenate(got.masks)
        if masks.any():
            pixel_auroc = auroc(np.concatenate(got.maps).ravel(), masks.ravel())
    max_abs: float | None = None
    max_rel: float | None = None
    if got.torch_scores:
        reference = np.concatenate(got.torch_scores)
        difference = np.abs(scores - reference)
        max_abs = float(difference.max())
        max_rel = float((difference / np.maximum(np.abs(reference), 1e-12)).max())
    notes = []
    if calibration.overlaps_test:
        notes.append("thresholds were fitted on the evaluated images: F1 is optimistic")
    if not got.torch_scores:
        notes.append("no torch model given: export fidelity not measured")
    return Evaluation(
        split="test",
        num_images=int(labels.size),
        num_anomalous=int(labels.sum()),
        image_auroc=auroc(scores, labels),
        image_f1=f1_score(scores > calibration.image_threshold, labels),
        pixel_auroc=pixel_auroc,
        max_abs_score_diff_vs_torch=max_abs,
        max_rel_score_diff_vs_torch=max_rel,
        inference_precision=precision,
        notes=tuple(notes),
    )
